//! The DRAM tier: small blocks from the thread heaps (`fast`), large blocks mapped one by one
//! (`large`), and the operations that must tell them apart (free, usable size, realloc).
//!
//! Pointers that are not ours (the page map says `Foreign`) are ignored by `free` and have no
//! usable size: under `LD_PRELOAD` they can only come from before we were loaded.

use crate::dram_budget;
use crate::fast::{self, size_class};
use crate::large;
use crate::pagemap::{self, ChunkTag};
use crate::stats::TierStats;

/// Requests above this fail at once: no machine maps that much, and it keeps size arithmetic
/// far from overflow.
pub(crate) const MAX_REQUEST: usize = 1 << 46;

#[cold]
#[inline(never)]
fn alloc_large(size: usize, align: usize, zero: bool) -> *mut u8 {
    if size > MAX_REQUEST || !dram_budget::admits(size as u64) {
        return core::ptr::null_mut();
    }
    large::alloc(size, align, zero)
}

/// A block of at least `size` bytes aligned to `align` (a power of two); null on failure.
pub fn alloc_aligned(size: usize, align: usize) -> *mut u8 {
    alloc_aligned_maybe_zeroed(size, align, false)
}

/// A zeroed block of `size` bytes aligned to `align`.
pub fn alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    alloc_aligned_maybe_zeroed(size, align, true)
}

#[inline]
fn alloc_aligned_maybe_zeroed(size: usize, align: usize, zero: bool) -> *mut u8 {
    let class = if align <= 16 && size <= size_class::SMALL_MAX {
        Some(size_class::class_of(size))
    } else if align <= size_class::MAX_NATURAL_ALIGN {
        size_class::class_for_aligned(size, align)
    } else {
        None
    };
    match class {
        Some(class) => {
            let p = fast::alloc_class(class);
            if zero && !p.is_null() {
                // SAFETY: the block holds at least `size` bytes.
                unsafe { p.write_bytes(0, size) };
            }
            p
        }
        // Large mappings come zeroed from the kernel; `large` clears reused ones.
        None if align <= MAX_REQUEST => alloc_large(size, align.max(16), zero),
        None => core::ptr::null_mut(),
    }
}

/// Frees `p` (null and foreign pointers are ignored).
///
/// # Safety
/// `p` must be null, foreign, or a live block of ours not used after this.
#[inline(always)]
pub unsafe fn free(p: *mut u8) {
    match pagemap::tag_of_block(p as usize) {
        // SAFETY: the page map says a segment owns `p`.
        ChunkTag::Segment => unsafe { fast::free(p) },
        // SAFETY: forwarded.
        _ => unsafe { free_other(p) },
    }
}

#[cold]
#[inline(never)]
unsafe fn free_other(p: *mut u8) {
    if pagemap::tag_of_block(p as usize) == ChunkTag::LargeHead {
        // SAFETY: forwarded; `large::free` checks `p` is a block start.
        unsafe { large::free(p) };
    }
}

/// The usable size of `p`: 0 for null and foreign pointers.
///
/// # Safety
/// `p` must be null, foreign, or a live block of ours.
pub unsafe fn usable_size(p: *mut u8) -> usize {
    match pagemap::tag_of_block(p as usize) {
        // SAFETY: a segment owns `p`.
        ChunkTag::Segment => unsafe { fast::usable_size(p) },
        ChunkTag::LargeHead => large::usable_size(p),
        _ => 0,
    }
}

/// Whether a block of `old` usable bytes serves a resize to `size` where it is: it fits and
/// would not waste more than half of itself.
#[inline]
pub fn keeps_block(size: usize, old: usize) -> bool {
    size <= old && size >= old / 2
}

/// Resizes `p` to `size` bytes (`p` non-null, `size` non-zero), keeping `align` (≤ 16 for the
/// C `realloc`). Returns null and leaves `p` intact on failure or if `p` is not ours.
///
/// # Safety
/// `p` must be a live block of ours, foreign, or null.
pub unsafe fn realloc(p: *mut u8, size: usize, align: usize) -> *mut u8 {
    if size > MAX_REQUEST {
        return core::ptr::null_mut();
    }
    let old = match pagemap::tag_of_block(p as usize) {
        ChunkTag::Segment => {
            // SAFETY: a segment owns `p`.
            let old = unsafe { fast::usable_size(p) };
            if keeps_block(size, old) {
                return p;
            }
            old
        }
        ChunkTag::LargeHead => {
            let old = large::usable_size(p);
            if old == 0 {
                return core::ptr::null_mut();
            }
            if size > size_class::SMALL_MAX && align <= pagemap::CHUNK_SIZE {
                if keeps_block(size, old) {
                    return p;
                }
                if !dram_budget::admits(size.saturating_sub(old) as u64) {
                    return core::ptr::null_mut();
                }
                // SAFETY: a live large block of ours.
                let q = unsafe { large::resize(p, size) };
                if !q.is_null() {
                    return q;
                }
            }
            old
        }
        _ => return core::ptr::null_mut(),
    };
    let q = alloc_aligned(size, align);
    if !q.is_null() {
        // SAFETY: both blocks are ours, distinct, and hold at least the bytes copied.
        unsafe {
            core::ptr::copy_nonoverlapping(p, q, old.min(size));
            free(p);
        }
    }
    q
}

/// The DRAM tier's figures (failures and spills are counted by `place`).
pub fn stats() -> TierStats {
    let mut s = TierStats::default();
    let mut small_allocated = 0u64;
    let mut small_freed = 0u64;
    fast::thread_heap::for_each_traffic(|t| {
        for class in 0..fast::size_class::CLASS_COUNT {
            let (allocated, freed) = (t.allocations[class].get(), t.frees[class].get());
            let size = fast::size_class::class_size(class) as u64;
            s.allocations += allocated;
            s.frees += freed;
            small_allocated += allocated * size;
            small_freed += freed * size;
        }
    });
    s.frees += fast::UNBOUND_FREES.get();
    small_freed += fast::UNBOUND_FREED_BYTES.get();
    s.allocations += large::LARGE_ALLOCATIONS.get();
    s.frees += large::LARGE_FREES.get();
    s.in_use = small_allocated.saturating_sub(small_freed) + large::LARGE_LIVE_BYTES.get();
    s.capacity = dram_budget::limit().map_or(physical_memory(), |l| l.min(physical_memory()));
    s.free_bytes = s.capacity.saturating_sub(s.in_use);
    // New blocks need new pages or mappings once the ones held are full.
    s.largest_free = s.capacity.saturating_sub(dram_budget::held().max(s.in_use));
    s
}

fn physical_memory() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages > 0 && size > 0 {
        pages as u64 * size as u64
    } else {
        0
    }
}
