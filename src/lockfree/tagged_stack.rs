//! `TaggedStack`: a lock-free LIFO stack of long-lived nodes (Treiber stack) whose head carries
//! a 16-bit generation tag beside a 48-bit pointer, so that a pop racing with a pop-and-push of
//! the same node fails its CAS instead of installing a stale `next` (the ABA problem).
//!
//! Nodes are never freed while the stack exists (the allocator's heaps live for the whole
//! process), so a pop may read the `next` of a node that another thread has just popped: the
//! read is of an atomic and its value is discarded when the tagged CAS fails.

use crate::sync::{AtomicPtr, AtomicU64, Ordering};

/// How a node reaches its stack link.
pub trait StackLink: Sized {
    fn link(&self) -> &AtomicPtr<Self>;
}

const PTR_BITS: u32 = 48;
const PTR_MASK: u64 = (1 << PTR_BITS) - 1;

/// Invariant: `head & PTR_MASK` is null or the top node; following links from it reaches every
/// pushed-and-not-popped node once; `head >> 48` changes on every successful push and pop.
pub struct TaggedStack<N> {
    head: AtomicU64,
    _nodes: core::marker::PhantomData<*mut N>,
}

// SAFETY: the stack only hands out node pointers; all shared state is atomic.
unsafe impl<N> Sync for TaggedStack<N> {}
// SAFETY: as above.
unsafe impl<N> Send for TaggedStack<N> {}

#[inline]
fn next_tag(head: u64) -> u64 {
    (head >> PTR_BITS).wrapping_add(1) << PTR_BITS
}

impl<N: StackLink> Default for TaggedStack<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<N: StackLink> TaggedStack<N> {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        TaggedStack {
            head: AtomicU64::new(0),
            _nodes: core::marker::PhantomData,
        }
    }

    #[cfg(loom)]
    pub fn new() -> Self {
        TaggedStack {
            head: AtomicU64::new(0),
            _nodes: core::marker::PhantomData,
        }
    }

    /// Pushes `node`.
    ///
    /// # Safety
    /// `node` must be valid for the life of the stack, below 2^48, and not on the stack.
    pub unsafe fn push(&self, node: *mut N) {
        // SAFETY: forwarded.
        unsafe { self.push_with(node, Ordering::Release) }
    }

    /// `push` with the ordering of the publishing CAS given (the loom model passes a weaker
    /// one to prove it is caught).
    ///
    /// # Safety
    /// As for `push`.
    pub(crate) unsafe fn push_with(&self, node: *mut N, publish: Ordering) {
        let addr = node as u64;
        debug_assert!(addr & !PTR_MASK == 0, "node above 2^48");
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: the caller owns `node` until the CAS publishes it.
            unsafe {
                (*node)
                    .link()
                    .store((head & PTR_MASK) as *mut N, Ordering::Relaxed)
            };
            let new = addr | next_tag(head);
            match self
                .head
                .compare_exchange_weak(head, new, publish, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Pops the top node, which then belongs to the caller; `None` if the stack is empty.
    pub fn pop(&self) -> Option<*mut N> {
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            let top = (head & PTR_MASK) as *mut N;
            if top.is_null() {
                return None;
            }
            // SAFETY: nodes stay valid for the life of the stack (push's contract), so reading
            // the link of a node another thread may have popped meanwhile is sound; a stale
            // value is discarded by the tagged CAS below.
            let next = unsafe { (*top).link().load(Ordering::Relaxed) } as u64;
            let new = next | next_tag(head);
            match self
                .head
                .compare_exchange_weak(head, new, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => return Some(top),
                Err(now) => head = now,
            }
        }
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use loom::thread;

    struct Node {
        link: AtomicPtr<Node>,
        owner_data: UnsafeCell<usize>,
    }

    impl StackLink for Node {
        fn link(&self) -> &AtomicPtr<Node> {
            &self.link
        }
    }

    fn model(publish: Ordering) {
        loom::model(move || {
            let stack = Arc::new(TaggedStack::<Node>::new());
            let nodes: Vec<*mut Node> = (0..2)
                .map(|_| {
                    Box::into_raw(Box::new(Node {
                        link: AtomicPtr::new(core::ptr::null_mut()),
                        owner_data: UnsafeCell::new(0),
                    }))
                })
                .collect();
            for &n in &nodes {
                // SAFETY: nodes live until the end of the model.
                unsafe { stack.push(n) };
            }
            let workers: Vec<_> = (0..2usize)
                .map(|i| {
                    let stack = stack.clone();
                    thread::spawn(move || {
                        // Take a node, use it exclusively, give it back.
                        if let Some(n) = stack.pop() {
                            // SAFETY: a popped node belongs to this thread alone; loom
                            // reports any concurrent access to the cell.
                            unsafe {
                                (*n).owner_data.with_mut(|d| *d = i + 1);
                                stack.push_with(n, publish);
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().unwrap();
            }
            let mut count = 0;
            while let Some(n) = stack.pop() {
                // SAFETY: every node is back on the stack and now ours.
                unsafe { (*n).owner_data.with(|d| assert!(*d <= 2)) };
                count += 1;
            }
            assert_eq!(count, 2, "no node lost or duplicated");
            for n in nodes {
                // SAFETY: allocated above with Box, no longer on the stack.
                drop(unsafe { Box::from_raw(n) });
            }
        });
    }

    #[test]
    fn pop_use_push_keeps_nodes_exclusive() {
        model(Ordering::Release);
    }

    /// With a Relaxed push, the next owner's use of the node is not ordered after the previous
    /// owner's: loom must report it.
    #[test]
    fn relaxed_push_is_caught() {
        crate::lockfree::assert_loom_catches(|| model(Ordering::Relaxed));
    }
}
