//! The DRAM tier: small blocks from the thread heaps (`fast`), large blocks mapped one by one
//! (`large`), the cap on what DRAM holds (`budget`), and the operations that tell small from
//! large by the page map's answer they are given (`pagemap::Owner`), never asking again.
//!
//! `realloc` keeps a block where it fits; a growing one above `GROW_TO_CACHED` moves to a large
//! mapping when the cache has one, where it then grows without copying.
//!
//! A pointer in DRAM of ours that is not the start of a live block is reported by `free`
//! (`misuse`); `tier` reports `realloc`'s and hands pointers that are not ours to `foreign`.

pub mod budget;
pub mod fast;
pub(crate) mod huge_pages;
pub mod large;
pub mod large_guard;

use crate::chunk::CHUNK_SIZE;
use crate::misuse::{self, Misuse};
use crate::pagemap::Owner;
use crate::stats::{TierCounters, TierStats};
use fast::size_class;

/// Requests above this fail at once: no machine maps that much, and it keeps size arithmetic
/// far from overflow.
pub(crate) const MAX_REQUEST: usize = 1 << 46;

/// The DRAM tier. There is one, always usable; its state is the thread heaps, the large
/// blocks and the budget, all static.
pub struct DramTier {
    /// Failures and spills, bumped by placement.
    pub counters: TierCounters,
}

pub static DRAM: DramTier = DramTier {
    counters: TierCounters::new(),
};

/// The `malloc` fast path: a block for a request of up to `DIRECT_MAX` bytes popped from the
/// current page, or null when anything more is needed (see `fast::try_pop`); the caller then
/// calls `alloc_after_miss` (if plain requests stay on DRAM) or placement.
#[inline(always)]
pub fn try_pop(size: usize) -> *mut u8 {
    fast::try_pop(size)
}

/// What `malloc` does when `try_pop(size)` missed and plain requests stay on DRAM: for a
/// request `try_pop` covers, the thread heap's slow path at once, without popping the page
/// found empty again; for a big class's (`fast::alloc_big`), the heap's cache of freed big
/// blocks first; for any other, the DRAM tier's `alloc`. Counts the failure if memory
/// ran out.
#[cold]
#[inline(never)]
pub fn alloc_after_miss(size: usize) -> *mut u8 {
    let p = if size <= size_class::DIRECT_MAX {
        fast::alloc_after_miss(size)
    } else if size.wrapping_sub(size_class::BIG_MIN + 1)
        < size_class::SMALL_MAX - size_class::BIG_MIN
    {
        fast::alloc_big(size)
    } else {
        DRAM.alloc(size, 16, false)
    };
    if p.is_null() {
        DRAM.counters.failures.add(1);
    }
    p
}

/// Makes every plain request take the general path (placement routes them: a device tier or a
/// capped DRAM is in use). Set once, from the library's constructor.
pub fn turn_direct_paths_off() {
    fast::route_all_requests();
}

/// Whether `turn_direct_paths_off` was called: the one record of "placement routes plain
/// requests" (`place::routed`).
#[inline(always)]
pub fn direct_paths_off() -> bool {
    fast::direct_off()
}

/// Bytes of segments currently mapped (for the statistics report).
pub fn segments_mapped() -> u64 {
    fast::heap::SEGMENT_BYTES.get()
}

#[cold]
#[inline(never)]
fn alloc_large(size: usize, align: usize, zero: bool) -> *mut u8 {
    if size > MAX_REQUEST || !admits_large(size as u64) {
        return core::ptr::null_mut();
    }
    if fast::guard::DEFAULT_CHECKS {
        fast::check_list_heads();
    }
    large::alloc(size, align, zero)
}

/// Whether DRAM's `limit=` admits `bytes` more for a large block (`budget::admits`), once the
/// large cache's pages, then the calling thread's free slices, are given back if they stand
/// in the way.
#[inline]
fn admits_large(bytes: u64) -> bool {
    budget::admits(bytes) || admits_after_purge(bytes)
}

#[cold]
#[inline(never)]
// Run only under `limit=` (see `budget::admits`).
#[link_section = ".text.tiermalloc_limit"]
fn admits_after_purge(bytes: u64) -> bool {
    let heap = fast::binding::current();
    // SAFETY: this thread's own heap, used by no other thread while it is bound here (no
    // method of it is running: the large paths are entered from the tier, not from the heap).
    (large::release_cached() > 0 && budget::admits(bytes))
        || (!heap.is_null() && unsafe { (*heap).purge() } > 0 && budget::admits(bytes))
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
fn keeps_block(size: usize, old: usize) -> bool {
    size <= old && size >= old / 2
}

impl DramTier {
    /// A block of at least `size` bytes aligned to `align` (a power of two), zeroed if asked;
    /// null on failure (not counted here: placement counts).
    #[inline]
    pub fn alloc(&self, size: usize, align: usize, zero: bool) -> *mut u8 {
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

    /// Frees `p`, whose owner the page map said is `owner` (`Segment` is the fast path's);
    /// anything but a live block start is reported (`misuse`).
    ///
    /// # Safety
    /// `p` must be a live block of ours not used after this, or not a block start.
    #[inline]
    pub unsafe fn free(&self, p: *mut u8, owner: Owner) {
        match owner {
            // SAFETY: the page map says a segment owns `p`.
            Owner::Segment => unsafe { fast::free(p) },
            Owner::LargeHead => {
                // SAFETY: forwarded; `large::free` checks `p` is a block start.
                if unsafe { !large::free(p) } {
                    misuse::report("free", p, large_misuse(p));
                }
            }
            Owner::LargeInterior => misuse::report("free", p, Misuse::NotABlockStart),
            _ => {}
        }
    }

    /// Whether `p` (owned by `owner`) is a live block start that `realloc` may resize; if not,
    /// the misuse is reported and false returned.
    ///
    /// # Safety
    /// The page map must say `owner` for `p`.
    pub unsafe fn check_realloc(&self, p: *mut u8, owner: Owner) -> bool {
        let misuse = match owner {
            // SAFETY: forwarded.
            Owner::Segment => return unsafe { fast::check_live("realloc", p) },
            Owner::LargeHead if large::usable_size(p) != 0 => return true,
            Owner::LargeHead => large_misuse(p),
            _ => Misuse::NotABlockStart,
        };
        misuse::report("realloc", p, misuse);
        false
    }

    /// The usable size of `p` owned by `owner`: 0 if it is not a block start of ours.
    ///
    /// # Safety
    /// `p` must be a live block of ours, or not a block start.
    pub unsafe fn usable_size(&self, p: *mut u8, owner: Owner) -> usize {
        match owner {
            // SAFETY: a segment owns `p`.
            Owner::Segment => unsafe { fast::usable_size(p) },
            Owner::LargeHead => large::usable_size(p),
            _ => 0,
        }
    }

    /// Resizes block `p` (owned by `owner`, `old` usable bytes) to `size` bytes at `align`
    /// without the caller's allocate-copy-free: where it lies, by moving a large block's pages
    /// (`mremap`), or into a cached large mapping (`GROW_TO_CACHED`). The new address, or null
    /// (`p` intact) when the caller must move the block itself.
    ///
    /// # Safety
    /// `p` must be a live block of ours.
    pub unsafe fn resize_in_place(
        &self,
        p: *mut u8,
        owner: Owner,
        old: usize,
        size: usize,
        align: usize,
    ) -> *mut u8 {
        if size > MAX_REQUEST {
            return core::ptr::null_mut();
        }
        match owner {
            Owner::Segment => {
                if keeps_block(size, old) {
                    return p;
                }
                if size > old && size > GROW_TO_CACHED && align <= CHUNK_SIZE {
                    // SAFETY: forwarded.
                    return unsafe { move_to_cached_large(p, old, size, align) };
                }
                core::ptr::null_mut()
            }
            Owner::LargeHead => {
                // A growing block stays large (it may have come from the cache above
                // `GROW_TO_CACHED`); a shrinking one goes back to the size classes at or below
                // `SMALL_MAX`, freeing its mapping for reuse.
                let stays = if size > old {
                    size > GROW_TO_CACHED
                } else {
                    size > size_class::SMALL_MAX
                };
                if !stays || align > CHUNK_SIZE {
                    return core::ptr::null_mut();
                }
                if keeps_block(size, old) {
                    return p;
                }
                if !admits_large(size.saturating_sub(old) as u64) {
                    return core::ptr::null_mut();
                }
                // SAFETY: a live large block of ours.
                unsafe { large::resize(p, size) }
            }
            _ => core::ptr::null_mut(),
        }
    }

    /// Caps the bytes DRAM holds for blocks (`limit=`; once, while the tiers are opened).
    pub fn set_limit(&self, bytes: u64) {
        budget::set_limit(bytes);
    }

    /// The DRAM tier's figures.
    pub fn stats(&self) -> TierStats {
        let mut s = TierStats::default();
        let small = fast::traffic_totals();
        s.allocations = small.allocations;
        s.frees = small.frees;
        s.allocations += large::LARGE_ALLOCATIONS.get();
        s.frees += large::LARGE_FREES.get();
        s.in_use = small.live_bytes + large::LARGE_LIVE_BYTES.get();
        s.capacity = budget::limit().map_or(physical_memory(), |l| l.min(physical_memory()));
        s.free_bytes = s.capacity.saturating_sub(s.in_use);
        // New blocks need new pages or mappings once the ones held are full.
        s.largest_free = s.capacity.saturating_sub(budget::held().max(s.in_use));
        s.reserved = crate::profile::reserve::RESERVED.get();
        s.reserve_used = crate::profile::reserve::RESERVE_USED.get();
        s.reserve_miss = crate::profile::reserve::RESERVE_MISS.get();
        s.failures = self.counters.failures.get();
        s.spilled_in = self.counters.spilled_in.get();
        s.spilled_out = self.counters.spilled_out.get();
        s
    }
}

/// What `p`, in a large mapping but not the start of its live block, is.
fn large_misuse(p: *mut u8) -> Misuse {
    if large::was_freed(p) {
        Misuse::DoubleFree
    } else {
        Misuse::NotABlockStart
    }
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
    if !admits_large(size as u64) {
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
