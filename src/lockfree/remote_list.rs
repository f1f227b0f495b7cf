//! `RemoteList`: a multi-producer, single-consumer list of nodes, plus one flag bit.
//!
//! Producers push one node at a time with a compare-and-swap; the single consumer takes the
//! whole list at once with one `swap`. Because the consumer never pops a single node, there is
//! no ABA problem: a node's `next` is written only by the producer that owns it before the
//! pushing CAS publishes it (Release), and read only after the consumer's swap (Acquire).
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

/// Invariant: `head == 0`, or `head == FLAG` (empty, flagged), or `head & !FLAG` points to the
/// first node of a null-terminated chain whose links were written before publication, with
/// `head & FLAG == 0` (a push always clears the flag).
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
        unsafe { self.push_with(node, node, Ordering::Release) }
    }

    /// Pushes a chain of nodes linked from `first` to `last` (the producer linked them; `last`'s
    /// link is overwritten) with one CAS: a producer that gathers several nodes for the same
    /// list pays one contended atomic for all of them.
    ///
    /// # Safety
    /// As for `push`, for every node of the chain; following links from `first` must reach
    /// `last`.
    #[inline]
    pub unsafe fn push_chain<N: Link>(&self, first: *mut N, last: *mut N) -> Pushed {
        // SAFETY: forwarded from the caller.
        unsafe { self.push_with(first, last, Ordering::Release) }
    }

    /// `push_chain` with the ordering of the publishing CAS given: the loom model passes a
    /// weaker one to prove it is caught.
    #[inline]
    pub(crate) unsafe fn push_with<N: Link>(
        &self,
        first: *mut N,
        last: *mut N,
        publish: Ordering,
    ) -> Pushed {
        debug_assert!(first as usize & FLAG == 0);
        let mut old = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: the caller owns the chain until the CAS below publishes it.
            unsafe { N::set_next(last, (old & !FLAG) as *mut N) };
            match self
                .head
                .compare_exchange_weak(old, first as usize, publish, Ordering::Relaxed)
            {
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
        (self.head.swap(0, Ordering::Acquire) & !FLAG) as *mut N
    }

    /// Whether nodes are waiting (a cheap, racy look for the consumer).
    #[inline]
    pub fn has_nodes(&self) -> bool {
        self.head.load(Ordering::Relaxed) & !FLAG != 0
    }

    /// The first node without taking anything, for push-only lists that are walked in place.
    #[inline]
    pub fn first<N>(&self) -> *mut N {
        (self.head.load(Ordering::Acquire) & !FLAG) as *mut N
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

    /// Drains `list`, checking every payload, and frees the nodes; returns the payload sum.
    fn drain(list: &RemoteList) -> usize {
        let mut sum = 0;
        let mut n: *mut Node = list.take_all();
        while !n.is_null() {
            // SAFETY: taken nodes belong to the consumer now.
            unsafe {
                sum += (*n).payload.with(|p| *p);
                let next = Node::next(n);
                drop(Box::from_raw(n));
                n = next;
            }
        }
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
                        unsafe { list.push_with(first, last, publish) }
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
