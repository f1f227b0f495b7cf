//! `TierMalloc`, the Rust global allocator:
//! `#[global_allocator] static A: TierMalloc = TierMalloc;`
//!
//! Serves DRAM through the same paths as `malloc`. `realloc` keeps the block where it fits and
//! resizes large blocks by remapping their pages; `alloc_zeroed` skips the clearing of fresh
//! mappings, which the kernel zeroes.

use crate::dram::{self, fast};
use crate::{pagemap, place, tier};
use core::alloc::{GlobalAlloc, Layout};

/// The global allocator handle.
#[derive(Clone, Copy, Debug, Default)]
pub struct TierMalloc;

// SAFETY: every block returned is at least `layout.size()` bytes, aligned to `layout.align()`,
// and stays valid until passed to `dealloc`/`realloc`; failures return null.
unsafe impl GlobalAlloc for TierMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= 16 && layout.size() <= fast::size_class::SMALL_MAX && !place::routed()
        {
            return fast::alloc(layout.size());
        }
        place::alloc_plain(layout.size(), layout.align(), false)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // A block of at most `GROW_TO_CACHED` bytes at 16-byte alignment, while plain requests
        // go to DRAM alone, was cut from a segment: `alloc` and `alloc_zeroed` take it from the
        // size classes, and `realloc` keeps or moves blocks of that size there (only a block
        // growing past `GROW_TO_CACHED` moves to a large mapping, and a large block shrinking
        // to it moves back). So the page-map lookup `free` needs for arbitrary pointers is
        // skipped: Rust hands back only our own blocks.
        if layout.size() <= dram::GROW_TO_CACHED && layout.align() <= 16 && !place::routed() {
            debug_assert!(pagemap::tag_of_block(ptr as usize) == pagemap::ChunkTag::Segment);
            // SAFETY: a live block of a segment, per the above and the GlobalAlloc contract.
            return unsafe { fast::free(ptr) };
        }
        // SAFETY: `ptr` is a live block of ours (GlobalAlloc contract).
        unsafe { tier::free(ptr) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        place::alloc_plain(layout.size(), layout.align(), true)
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is a live block of ours and `new_size` is non-zero (GlobalAlloc contract).
        unsafe { tier::realloc(ptr, new_size, layout.align(), place::plain_move()) }
            .unwrap_or(core::ptr::null_mut())
    }
}
