//! The DRAM tier: small blocks from the thread heaps (`fast`), large blocks mapped one by one
//! (`large`), and the operations that must tell them apart (free, usable size, realloc).
//!
//! `realloc` keeps a block where it fits; a growing one above `GROW_TO_CACHED` moves to a large
//! mapping when the cache has one, where it then grows without copying.
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

/// Above this, a growing realloc moves a small block to a large mapping (`large`) if the cache
/// of freed mappings has one: no system call, and its pages are likely still resident. The
/// mapping covers whole chunks and its pages past the block are reserved but untouched, so the
/// block's later growth is a header update or an `mremap`, never a copy; growth below this
/// copies between size classes, about this many bytes in all. Without a cached mapping the
/// block stays in the size classes: a fresh mapping (three system calls and page faults) costs
/// more than the copies it saves, and a program keeping many such buffers would hold one
/// mapping each (measured: +40% CPU for 10 000 buffers grown to 128 KiB and kept).
pub(crate) const GROW_TO_CACHED: usize = 16 << 10;

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
            if size > old && size > GROW_TO_CACHED && align <= pagemap::CHUNK_SIZE {
                // SAFETY: forwarded.
                let q = unsafe { move_to_cached_large(p, old, size, align) };
                if !q.is_null() {
                    return q;
                }
            }
            old
        }
        ChunkTag::LargeHead => {
            let old = large::usable_size(p);
            if old == 0 {
                return core::ptr::null_mut();
            }
            // A growing block stays large (it may have come from the cache above
            // `GROW_TO_CACHED`); a shrinking one goes back to the size classes at or below
            // `SMALL_MAX`, freeing its mapping for reuse.
            let stays = if size > old {
                size > GROW_TO_CACHED
            } else {
                size > size_class::SMALL_MAX
            };
            if stays && align <= pagemap::CHUNK_SIZE {
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

/// Moves small block `p` of `old` usable bytes to a large block of `size > old` bytes aligned
/// to `align` in a cached mapping (see `GROW_TO_CACHED`); null with `p` intact if the cache has
/// none, and the caller then copies within the size classes.
///
/// # Safety
/// `p` must be a live small block of ours.
#[cold]
#[inline(never)]
unsafe fn move_to_cached_large(p: *mut u8, old: usize, size: usize, align: usize) -> *mut u8 {
    if !dram_budget::admits(size as u64) {
        return core::ptr::null_mut();
    }
    let q = large::alloc_cached(size, align.max(16));
    if !q.is_null() {
        // SAFETY: both blocks are ours, distinct, and `q` holds more than `old` bytes.
        unsafe {
            core::ptr::copy_nonoverlapping(p, q, old);
            fast::free(p);
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

/// The machine's memory, or the process's cgroup memory limit if that is smaller.
fn physical_memory() -> u64 {
    machine_memory().min(crate::cgroup::memory_limit().unwrap_or(u64::MAX))
}

fn machine_memory() -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn byte_at(k: usize, seed: usize) -> u8 {
        (k.wrapping_mul(131) ^ (k >> 12) ^ seed) as u8
    }

    /// Checks the first `n` bytes of `p` (all of them up to 1 MiB, then one in 509 and the last
    /// page).
    ///
    /// # Safety
    /// `p` must hold at least `n` bytes.
    unsafe fn prefix_ok(p: *const u8, n: usize, seed: usize) -> bool {
        // SAFETY: within the first `n` bytes.
        let at = |k: usize| unsafe { *p.add(k) } == byte_at(k, seed);
        let full = n.min(1 << 20);
        (0..full).all(at)
            && (full..n).step_by(509).all(at)
            && (n.saturating_sub(4096).max(full)..n).all(at)
    }

    /// # Safety
    /// `p` must hold at least `to` bytes.
    unsafe fn fill(p: *mut u8, from: usize, to: usize, seed: usize) {
        for k in from..to {
            // SAFETY: within the block.
            unsafe { *p.add(k) = byte_at(k, seed) };
        }
    }

    #[test]
    fn growth_by_doubling_and_shrinking_back_keeps_every_byte() {
        // Three chains: the later ones find the earlier ones' freed mappings in the cache.
        for seed in 0..3 {
            let mut cur = 8;
            let p = alloc_aligned(cur, 16);
            // SAFETY: every pointer is the live block of the previous step, holding `cur`
            // bytes.
            unsafe {
                fill(p, 0, cur, seed);
                let mut p = p;
                while cur < 16 << 20 {
                    let next = cur * 2;
                    p = realloc(p, next, 16);
                    assert!(!p.is_null());
                    assert!(usable_size(p) >= next);
                    assert!(prefix_ok(p, cur, seed), "growing {cur} -> {next}");
                    fill(p, cur, next, seed);
                    cur = next;
                }
                while cur > 8 {
                    let next = cur / 2;
                    p = realloc(p, next, 16);
                    assert!(!p.is_null());
                    assert!(usable_size(p) >= next);
                    assert!(prefix_ok(p, next, seed), "shrinking {cur} -> {next}");
                    cur = next;
                }
                assert_eq!(pagemap::tag_of_block(p as usize), ChunkTag::Segment);
                free(p);
            }
        }
    }

    /// Whether the page at `p` is resident.
    fn resident(p: usize) -> bool {
        let mut v = 0u8;
        // SAFETY: one page of a mapping of ours; `v` receives one byte.
        let r = unsafe { libc::mincore(p as *mut libc::c_void, 4096, &mut v) };
        assert_eq!(r, 0);
        v & 1 == 1
    }

    #[test]
    fn growth_past_the_cached_threshold_moves_once_then_grows_in_place() {
        let big = 4 << 20;
        let mut promoted = 0;
        // The cache is shared with tests running alongside: try until one of our freed
        // mappings is taken by our own realloc.
        for attempt in 0..50 {
            // A freed mapping of one chunk, almost all resident, goes to the cache.
            let m = large::alloc(big - 2 * 4096, 16, false);
            assert!(!m.is_null());
            // SAFETY: our block of that size; freed once.
            unsafe {
                m.write_bytes(0xcd, big - 2 * 4096);
                free(m);
            }
            let mut cur = GROW_TO_CACHED;
            let p = alloc_aligned(cur, 16);
            // SAFETY: live blocks of at least `cur` bytes, each the result of the last call.
            unsafe {
                fill(p, 0, cur, attempt);
                let q = realloc(p, 2 * cur, 16);
                assert!(prefix_ok(q, cur, attempt));
                fill(q, cur, 2 * cur, attempt);
                cur *= 2;
                if pagemap::tag_of_block(q as usize) == ChunkTag::LargeHead {
                    promoted += 1;
                    let h = q as usize - 64;
                    assert!(resident(h + (1 << 20)), "kept within CACHED_RESIDENT_KEEP");
                    assert!(
                        !resident(h + (3 << 20)),
                        "dropped past CACHED_RESIDENT_KEEP"
                    );
                    // Growth within the mapping (4 MiB, header included) stays where it is.
                    for next in [64 << 10, 1 << 20, 3 << 20, big - 4096 - 64] {
                        let r = realloc(q, next, 16);
                        assert_eq!(r, q, "growing {cur} -> {next} within the mapping");
                        assert!(usable_size(r) >= next);
                        assert!(prefix_ok(r, cur, attempt));
                        fill(r, cur, next, attempt);
                        cur = next;
                    }
                    // Past it, the pages move (or the mapping grows) without losing a byte.
                    let r = realloc(q, 3 * big, 16);
                    assert!(!r.is_null() && prefix_ok(r, cur, attempt));
                    free(r);
                } else {
                    assert_eq!(pagemap::tag_of_block(q as usize), ChunkTag::Segment);
                    free(q);
                }
            }
            if promoted >= 3 {
                break;
            }
        }
        assert!(
            promoted > 0,
            "no growing realloc took a cached mapping in 50 attempts"
        );
    }

    #[test]
    fn growth_below_the_threshold_stays_in_the_size_classes() {
        let p = alloc_aligned(1000, 16);
        // SAFETY: live blocks, each the result of the last call.
        unsafe {
            let q = realloc(p, GROW_TO_CACHED, 16);
            assert_eq!(pagemap::tag_of_block(q as usize), ChunkTag::Segment);
            // Within its block and not below half of it: in place.
            let r = realloc(q, GROW_TO_CACHED - 100, 16);
            assert_eq!(r, q);
            free(r);
        }
    }
}
