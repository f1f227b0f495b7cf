//! `RemoteList`: a multi-producer, single-consumer list of nodes, plus one flag bit.
//!
//! Producers push one node at a time with a compare-and-swap; the single consumer takes the
//! whole list at once with one `swap`. Because the consumer never pops a single node, there is
//! no ABA problem: a node's `next` is written only by the producer that owns it before the
//! pushing CAS publishes it (Release), and read only after the consumer's swap (Acquire).
//!
//! The head word also counts the nodes on the list (its top 16 bits), added by the same CAS
//! that publishes them, so that the consumer learns how many it took without walking them: the
//! walk was one cache miss per node freed on another core, taken one after another (`perf` on
//! `prodcons`: 86% of the owner's slow path).
//!
//! The flag bit (bit 0 of the head; nodes are at least 2-aligned) lets the consumer ask to be
//! told about the next push: `try_flag` sets it on an empty list, and the producer whose push
//! clears it learns so from `push`'s result. The allocator uses this for pages that sit in
//! their heap's "full" queue: the first remote free to such a page hands the page back to its
//! heap.

use crate::sync::{AtomicUsize, Ordering};

/// How a node links to the next one. Implementors store the link inside the node.
///
/// # Safety
/// `set_next` followed by `next` on the same node must return the stored pointer, and the
/// link must not overlap anything else a concurrent user of the node touches.
pub unsafe trait Link {
    /// Stores `next` in `node`.
    ///
    /// # Safety
    /// `node` must be valid for writes and owned by the caller.
    unsafe fn set_next(node: *mut Self, next: *mut Self);
    /// Reads the link stored in `node`.
    ///
    /// # Safety
    /// `node` must be valid for reads and its link written before it was published.
    // The list's consumers walk a taken chain with their own field access; the models use this.
    #[allow(dead_code)]
    unsafe fn next(node: *mut Self) -> *mut Self;
}

const FLAG: usize = 1;
/// Where the count starts: node addresses fit below it (user-space addresses on Linux are
/// below 2^47 unless a program maps above on purpose, with a hint past 2^48).
const COUNT_SHIFT: u32 = 48;
/// The bits of the head that hold a node's address.
const NODE_MASK: usize = ((1usize << COUNT_SHIFT) - 1) & !FLAG;
/// The bits of the head that hold the count.
const COUNT_MASK: usize = !((1usize << COUNT_SHIFT) - 1);

/// Invariant: `head == 0`, or `head == FLAG` (empty, flagged), or `head & NODE_MASK` points to
/// the first node of a null-terminated chain whose links were written before publication, with
/// `head & FLAG == 0` (a push always clears the flag) and `head >> COUNT_SHIFT` the number of
/// nodes on the chain modulo 2^16 (the pushes' counts added up; exact for lists that never hold
/// 2^16 nodes, such as a page's remote list, whose blocks are at most 4096).
pub struct RemoteList {
    head: AtomicUsize,
}

/// What a push found.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Pushed {
    /// The list was not flagged.
    Plain,
    /// This push cleared the flag: the caller must tell the consumer.
    ClearedFlag,
}

impl Default for RemoteList {
    fn default() -> Self {
        Self::new()
    }
}

impl RemoteList {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        RemoteList {
            head: AtomicUsize::new(0),
        }
    }

    #[cfg(loom)]
    pub fn new() -> Self {
        RemoteList {
            head: AtomicUsize::new(0),
        }
    }

    /// Pushes `node` (at least 2-aligned, owned by the caller until this returns).
    ///
    /// # Safety
    /// `node` must be valid, not on any list, and stay valid until the consumer is done with it.
    #[inline]
    pub unsafe fn push<N: Link>(&self, node: *mut N) -> Pushed {
        // SAFETY: forwarded from the caller; one node is a chain from itself to itself.
        unsafe { self.push_with(node, node, 1, Ordering::Release) }
    }

    /// Pushes a chain of `count` nodes linked from `first` to `last` (the producer linked them;
    /// `last`'s link is overwritten) with one CAS: a producer that gathers several nodes for the
    /// same list pays one contended atomic for all of them.
    ///
    /// # Safety
    /// As for `push`, for every node of the chain; following links from `first` must reach
    /// `last` in `count` nodes.
    #[inline]
    pub unsafe fn push_chain<N: Link>(&self, first: *mut N, last: *mut N, count: u32) -> Pushed {
        // SAFETY: forwarded from the caller.
        unsafe { self.push_with(first, last, count, Ordering::Release) }
    }

    /// `push_chain` with the ordering of the publishing CAS given: the loom model passes a
    /// weaker one to prove it is caught.
    ///
    /// # Safety
    /// As for `push_chain`.
    #[inline]
    pub(crate) unsafe fn push_with<N: Link>(
        &self,
        first: *mut N,
        last: *mut N,
        count: u32,
        publish: Ordering,
    ) -> Pushed {
        debug_assert!(first as usize & !NODE_MASK == 0);
        let mut old = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: the caller owns the chain until the CAS below publishes it.
            unsafe { N::set_next(last, (old & NODE_MASK) as *mut N) };
            // The count's bits wrap among themselves: a carry leaves the word at its top.
            let counted = (old & COUNT_MASK).wrapping_add((count as usize) << COUNT_SHIFT);
            match self.head.compare_exchange_weak(
                old,
                first as usize | counted,
                publish,
                Ordering::Relaxed,
            ) {
                Ok(_) if old & FLAG != 0 => return Pushed::ClearedFlag,
                Ok(_) => return Pushed::Plain,
                Err(now) => old = now,
            }
        }
    }

    /// Takes every node pushed so far (null if none) and leaves the list empty and unflagged.
    /// Only the single consumer may call this.
    #[inline]
    pub fn take_all<N>(&self) -> *mut N {
        self.take_all_counted().0
    }

    /// `take_all`, with the number of nodes taken (modulo 2^16, see the invariant).
    #[inline]
    pub fn take_all_counted<N>(&self) -> (*mut N, u32) {
        let head = self.head.swap(0, Ordering::Acquire);
        ((head & NODE_MASK) as *mut N, (head >> COUNT_SHIFT) as u32)
    }

    /// Whether nodes are waiting (a cheap, racy look for the consumer).
    #[inline]
    pub fn has_nodes(&self) -> bool {
        self.head.load(Ordering::Relaxed) & NODE_MASK != 0
    }

    /// The first node without taking anything, for push-only lists that are walked in place.
    #[inline]
    pub fn first<N>(&self) -> *mut N {
        (self.head.load(Ordering::Acquire) & NODE_MASK) as *mut N
    }

    /// Sets the flag if the list is empty; false if nodes arrived first (take them instead).
    /// Only the single consumer may call this.
    #[inline]
    pub fn try_flag(&self) -> bool {
        self.head
            .compare_exchange(0, FLAG, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Clears the flag if no push has cleared it yet; false if a producer got there first
    /// (that producer was told `ClearedFlag` and will notify the consumer).
    /// Only the single consumer may call this.
    #[inline]
    pub fn try_unflag(&self) -> bool {
        self.head
            .compare_exchange(FLAG, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use loom::thread;

    struct Node {
        next: UnsafeCell<*mut Node>,
        payload: UnsafeCell<usize>,
    }

    // SAFETY: the link is the `next` cell only, which nothing else touches.
    unsafe impl Link for Node {
        unsafe fn set_next(node: *mut Self, next: *mut Self) {
            // SAFETY: the caller owns the node.
            unsafe { (*node).next.with_mut(|p| *p = next) }
        }
        unsafe fn next(node: *mut Self) -> *mut Self {
            // SAFETY: the caller may read the node.
            unsafe { (*node).next.with(|p| *p) }
        }
    }

    fn node(payload: usize) -> *mut Node {
        Box::into_raw(Box::new(Node {
            next: UnsafeCell::new(core::ptr::null_mut()),
            payload: UnsafeCell::new(payload),
        }))
    }

    /// Drains `list`, checking every payload and that the head counted the nodes taken, and
    /// frees the nodes; returns the payload sum.
    fn drain(list: &RemoteList) -> usize {
        let mut sum = 0;
        let (mut n, count): (*mut Node, u32) = list.take_all_counted();
        let mut walked = 0;
        while !n.is_null() {
            walked += 1;
            // SAFETY: taken nodes belong to the consumer now.
            unsafe {
                sum += (*n).payload.with(|p| *p);
                let next = Node::next(n);
                drop(Box::from_raw(n));
                n = next;
            }
        }
        assert_eq!(walked, count, "the head counts the nodes it publishes");
        sum
    }

    fn two_producers(publish: Ordering) {
        loom::model(move || {
            let list = Arc::new(RemoteList::new());
            // The first producer pushes one node, the second a chain of two (a batch of
            // remote frees): the chain's inner link is published by the same CAS.
            let producers: Vec<_> = [(1usize, 0usize), (10, 100)]
                .into_iter()
                .map(|(v, w)| {
                    let list = list.clone();
                    thread::spawn(move || {
                        let first = node(0);
                        // SAFETY: we own `first` until it is pushed.
                        unsafe { (*first).payload.with_mut(|p| *p = v) };
                        let mut last = first;
                        if w != 0 {
                            last = node(0);
                            // SAFETY: we own both nodes until they are pushed.
                            unsafe {
                                (*last).payload.with_mut(|p| *p = w);
                                Node::set_next(first, last);
                            }
                        }
                        // SAFETY: the chain is fresh and valid and leads from first to last.
                        unsafe { list.push_with(first, last, if w != 0 { 2 } else { 1 }, publish) }
                    })
                })
                .collect();
            let mut seen = drain(&list);
            for t in producers {
                assert_eq!(t.join().unwrap(), Pushed::Plain);
            }
            seen += drain(&list);
            assert_eq!(seen, 111, "every pushed node is taken exactly once");
        });
    }

    #[test]
    fn exactly_one_push_clears_the_flag() {
        loom::model(|| {
            let list = Arc::new(RemoteList::new());
            assert!(list.try_flag());
            let producers: Vec<_> = (0..2)
                .map(|_| {
                    let list = list.clone();
                    // SAFETY: the node is fresh and valid.
                    thread::spawn(move || unsafe { list.push(node(1)) })
                })
                .collect();
            let cleared = producers
                .into_iter()
                .map(|t| t.join().unwrap())
                .filter(|r| *r == Pushed::ClearedFlag)
                .count();
            assert_eq!(cleared, 1);
            assert!(!list.try_flag(), "a non-empty list cannot be flagged");
            assert!(!list.try_unflag(), "a push has cleared the flag already");
            assert_eq!(drain(&list), 2);
            assert!(list.try_flag());
        });
    }

    #[test]
    fn pushes_race_with_take_all() {
        two_producers(Ordering::Release);
    }

    /// The same model with the publishing CAS weakened to Relaxed must fail: the consumer then
    /// reads a payload and link whose writes it has not synchronised with.
    #[test]
    fn relaxed_publication_is_caught() {
        crate::lockfree::assert_loom_catches(|| two_producers(Ordering::Relaxed));
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[repr(align(8))]
    struct Node {
        next: *mut Node,
    }

    // SAFETY: the link is `next` only.
    unsafe impl Link for Node {
        unsafe fn set_next(node: *mut Self, next: *mut Self) {
            // SAFETY: the caller owns the node.
            unsafe { (*node).next = next }
        }
        unsafe fn next(node: *mut Self) -> *mut Self {
            // SAFETY: the caller may read the node.
            unsafe { (*node).next }
        }
    }

    /// The head counts single pushes and chains, keeps the flag protocol, and starts from zero
    /// after each take.
    #[test]
    fn the_head_counts_what_was_pushed() {
        let mut nodes: Vec<Node> = (0..5)
            .map(|_| Node {
                next: core::ptr::null_mut(),
            })
            .collect();
        let n: Vec<*mut Node> = nodes.iter_mut().map(|x| x as *mut Node).collect();
        let list = RemoteList::new();
        assert!(list.try_flag());
        // SAFETY: the nodes live through the test and sit on no other list.
        unsafe {
            Node::set_next(n[0], n[1]);
            Node::set_next(n[1], n[2]);
            assert_eq!(list.push_chain(n[0], n[2], 3), Pushed::ClearedFlag);
            assert_eq!(list.push(n[3]), Pushed::Plain);
        }
        assert!(list.has_nodes());
        assert_eq!(list.first::<Node>(), n[3]);
        let (first, count) = list.take_all_counted::<Node>();
        assert_eq!((first, count), (n[3], 4));
        // SAFETY: the taken chain's links were written by the pushes.
        unsafe {
            assert_eq!(Node::next(n[3]), n[0]);
            assert!(Node::next(n[2]).is_null());
        }
        assert!(!list.has_nodes());
        assert!(list.try_flag() && list.try_unflag());
        // SAFETY: as above.
        unsafe { list.push(n[4]) };
        assert_eq!(list.take_all_counted::<Node>(), (n[4], 1));
    }
}
