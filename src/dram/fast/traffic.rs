//! The small-object path's traffic counters: one set per thread heap, bumped by its owner on
//! every allocation and free without a read-modify-write (`stats::OwnedCounter`).

use crate::dram::fast::size_class::CLASS_COUNT;
use crate::stats::OwnedCounter;

/// Blocks allocated and freed, per size class. All-zero is the initial state (heaps start as
/// zeroed memory). One counter bump per operation; bytes follow from the class sizes.
pub struct Traffic {
    pub allocations: [OwnedCounter; CLASS_COUNT],
    pub frees: [OwnedCounter; CLASS_COUNT],
}

impl Traffic {
    #[inline(always)]
    pub fn on_alloc(&self, class: usize) {
        // SAFETY: class indices come from `size_class` and are below CLASS_COUNT.
        unsafe { self.allocations.get_unchecked(class) }.add(1);
    }
    #[inline(always)]
    pub fn on_free(&self, class: usize) {
        // SAFETY: as in `on_alloc`.
        unsafe { self.frees.get_unchecked(class) }.add(1);
    }
}
