//! Building an extent heap from the extents a recovery scan found (a persistent device tier,
//! `device::persist`), and walking its allocated extents one at a time (`tm_next_block`).
//!
//! The builder takes the extents in address order and allocates nothing but the heap's own
//! metadata (nodes, start-table slots, size classes: host memory it maps itself), so it can
//! run inside the first `malloc` of a process.

use super::{link_after, ExtentHeap, Fit, Node};
use core::ptr;

#[cfg(test)]
#[path = "rebuild_tests.rs"]
mod tests;

/// A heap being filled from offset 0 upward. Invariants: the extents pushed so far tile
/// `[0, end)` with no two free ones adjacent, listed in address order from `first`; `last` is
/// the one ending at `end` (both null before the first push); `extents` counts them. The
/// start table and the size index stay empty until `finish`, which fills them in one pass:
/// inserted while the scan runs, each extent's random slot was a cache miss between the scan's
/// sequential reads (a tenth of a large recovery); in a tight loop of their own, with the slots
/// asked for a few extents ahead, the misses overlap. A free extent grown by the next push is
/// then inserted in the size index once, at its final length.
pub(crate) struct HeapBuilder {
    heap: ExtentHeap,
    first: *mut Node,
    last: *mut Node,
    end: u64,
    extents: usize,
}

impl ExtentHeap {
    /// A builder for a heap of `[0, capacity)` (arguments as for `new`).
    pub fn builder(capacity: u64, granule: u64, fit: Fit) -> Option<HeapBuilder> {
        let mut heap = ExtentHeap::empty(capacity, granule, fit)?;
        // The builder fills its node chunks front to back: each made present in one call
        // rather than a fault per page (recovery of 1 M blocks: ~1 000 faults fewer).
        heap.pool.set_prefault(true);
        Some(HeapBuilder {
            heap,
            first: ptr::null_mut(),
            last: ptr::null_mut(),
            end: 0,
            extents: 0,
        })
    }

    /// The first allocated extent starting after `after` (from 0 when `None`), in address
    /// order: `(offset, length)`. O(1) per step when `after` is an extent's start.
    pub fn next_allocated(&self, after: Option<u64>) -> Option<(u64, u64)> {
        let mut node = match after {
            None => self.starts.get(0),
            Some(offset) => {
                let n = self.starts.get(offset);
                if n.is_null() {
                    return None;
                }
                // SAFETY: the start table holds live nodes.
                unsafe { (*n).next }
            }
        };
        // SAFETY: list nodes are live.
        unsafe {
            while !node.is_null() {
                if !(*node).free {
                    return Some(((*node).offset, (*node).len));
                }
                node = (*node).next;
            }
        }
        None
    }
}

impl HeapBuilder {
    /// Appends the extent `[end, end + len)`, merged with the one before if both are free.
    /// False (nothing changed) if `len` is 0 or not a multiple of the granule, reaches past
    /// the capacity, or host memory for the metadata runs out.
    pub fn push(&mut self, len: u64, free: bool) -> bool {
        let h = &mut self.heap;
        // The granule is a power of two (`ExtentHeap::new`): a mask, not a division per extent.
        if len == 0 || len & (h.granule - 1) != 0 || len > h.capacity - self.end {
            return false;
        }
        // SAFETY (whole body): `last` is a live node of ours, listed, in the size index iff
        // free; a new node and its slot come from the reservations just made.
        unsafe {
            if free && !self.last.is_null() && (*self.last).free {
                (*self.last).len += len;
            } else {
                if !h.pool.reserve(1) {
                    return false;
                }
                let n = h.pool.take(self.end, len, free);
                if self.last.is_null() {
                    self.first = n;
                } else {
                    link_after(self.last, n);
                }
                self.extents += 1;
                self.last = n;
            }
        }
        if !free {
            h.in_use += len;
        }
        self.end += len;
        true
    }

    /// The heap, once the extents reach its capacity (`None` before, or when host memory for
    /// the start table runs out): the start table sized once for every extent and filled.
    pub fn finish(mut self) -> Option<ExtentHeap> {
        let h = &mut self.heap;
        h.pool.set_prefault(false);
        if self.end != h.capacity || !h.starts.reserve(self.extents) {
            return None;
        }
        // Every page of the table is about to be written (hashed slots): present at once.
        h.starts.prefault();
        /// Extents between the one whose start-table slot is asked for and the one inserted.
        const AHEAD: usize = 8;
        let (mut n, mut ahead) = (self.first, self.first);
        // SAFETY: the list from `first` holds exactly the `extents` live nodes pushed, each
        // keyed by its own offset, in no size class yet; the reservation leaves room for all
        // of them in the start table.
        unsafe {
            for _ in 0..AHEAD {
                if !ahead.is_null() {
                    h.starts.prefetch((*ahead).offset);
                    ahead = (*ahead).next;
                }
            }
            while !n.is_null() {
                if !ahead.is_null() {
                    h.starts.prefetch((*ahead).offset);
                    ahead = (*ahead).next;
                }
                h.starts.insert((*n).offset, n);
                if (*n).free {
                    h.sizes.insert(n);
                }
                n = (*n).next;
            }
        }
        Some(self.heap)
    }
}
