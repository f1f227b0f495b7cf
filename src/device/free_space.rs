//! A device tier's free space as address ranges, for a workload profile's reserve
//! (`profile::device_reserve`), which makes the pages the next allocations will be cut from
//! present before the workload touches them.
//!
//! The heap cuts blocks and slabs from the end of the free extent it picks
//! (`set_carve_from_end`), so a fresh or fully freed region is used from its top down: the
//! ranges are handed out from the highest free extent downward. Only whole pages inside a free
//! extent are named: a page shared with an allocated extent may be written by another thread
//! without the heap lock (a slab's slots, a cached block's header). The free extents
//! themselves are written only under the heap lock (`publish`, `free`, `resize_in_place`), which
//! is held while the caller works on the ranges, so nothing reads or writes them meanwhile.
//! The reserve's fill thread names a few MiB per call (`with_free_pages_below`, one step), so
//! the lock is held for one step at a time and allocations go on between steps.

use super::DeviceTier;
use crate::os::PAGE_SIZE;
use core::sync::atomic::Ordering;

impl DeviceTier {
    /// Calls `f(address, len)` on the highest `bytes` (rounded up to pages) of whole pages of
    /// free space below the address `below`, or all there is, in address order, under the heap
    /// lock; `f` may make the pages present (it must change no byte). Returns the bytes named;
    /// `None` for a tier whose free space is not its own (lent from the pool, or inherited
    /// from a parent).
    pub(crate) fn with_free_pages_below(
        &self,
        below: usize,
        bytes: u64,
        mut f: impl FnMut(usize, usize),
    ) -> Option<u64> {
        if self.outside.is_some() || self.inherited.load(Ordering::Relaxed) {
            return None;
        }
        let (base, region_len) = (self.region.base, self.region.len as u64);
        // The whole pages of a free extent: [lo, hi) addresses.
        let pages = |offset: u64, len: u64| {
            let lo = (base + offset as usize).next_multiple_of(PAGE_SIZE);
            let hi = ((base + (offset + len) as usize) / PAGE_SIZE * PAGE_SIZE).min(below);
            (lo, hi.max(lo))
        };
        // Two walks, allocating nothing (the host allocator may be this very tier, whose lock
        // is held): the free pages in all, then the top `bytes` of them.
        let region_len = region_len.min(below.saturating_sub(base) as u64);
        let heap = self.heap.lock();
        let mut total = 0u64;
        let mut hint = 0;
        heap.for_each_extent_between(0, region_len, &mut hint, |offset, len, free| {
            if free {
                let (lo, hi) = pages(offset, len);
                total += (hi - lo) as u64;
            }
        });
        let mut skip = total.saturating_sub(bytes.next_multiple_of(PAGE_SIZE as u64));
        let mut named = 0u64;
        let mut hint = 0;
        heap.for_each_extent_between(0, region_len, &mut hint, |offset, len, free| {
            let (lo, hi) = pages(offset, len);
            if !free || hi == lo {
                return;
            }
            let n = (hi - lo) as u64;
            if skip >= n {
                skip -= n;
                return;
            }
            let lo = lo + skip as usize;
            skip = 0;
            f(lo, hi - lo);
            named += (hi - lo) as u64;
        });
        drop(heap);
        Some(named)
    }

    /// Whether the tier's region is its own (not capacity lent from the pool).
    pub(crate) fn is_private(&self) -> bool {
        self.outside.is_none()
    }

    /// Whether the kernel maps the whole region at once (a PCI BAR): no page of it faults.
    pub(crate) fn mapped_whole(&self) -> bool {
        self.region.media == crate::backend::Media::Bar
    }

    /// The region's base address and length.
    pub(crate) fn region_span(&self) -> (usize, usize) {
        (self.region.base, self.region.len)
    }
}
