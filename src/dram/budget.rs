//! The DRAM tier's `limit=` (`TIERMALLOC_TIERS="dram:limit=4G;…"`): what DRAM holds for
//! blocks, and the cap on it.
//!
//! Held bytes are counted where DRAM takes memory for blocks, never per block:
//! - every page a thread heap cuts from a segment for a size class (its whole slices, 64 KiB
//!   or more), from the cut until the page is given back empty (`fast::heap`);
//! - every live large block's usable bytes (`large`);
//! - the slices of a segment's half made one huge page (`huge_pages`) that no page has taken
//!   yet: the populate makes the whole half present at once, so DRAM holds them from then
//!   until a page takes them (counted as the page's from then on) or the decay gives them
//!   back (`fast::segment`).
//!
//! The cap is checked at the same places, before memory is taken: a new page, a new large
//! block, a large block growing, a half about to be made huge (one the cap does not admit
//! stays on small pages, which only the pages cut from it make present). A request is
//! admitted when what it adds fits exactly too (`admits`: resident + bytes <= limit, below),
//! and a page the cap refuses is still cut over a huge half's untaken slices if the heap has a
//! run of them: held already, they add nothing (`fast::heap`'s `cut_held_page`). A thread
//! keeps filling the pages it already holds, so the bytes in blocks never exceed the held
//! bytes, and the held bytes exceed the limit only by what threads take at the same instant
//! (check and count are two steps: at most one page or block per racing thread). A request
//! the cap refuses fails on DRAM: a plain `malloc` passes on to the next tier (`place`),
//! `tm_malloc(TM_DRAM, …)` returns `NULL` + `ENOMEM`.
//!
//! The peak of the held bytes is kept where they grow (`peak_held`).
//!
//! With a limit set, what the cap bounds is what DRAM keeps resident for blocks
//! (`resident`): the held bytes, plus what the process keeps resident in no block and may
//! reuse without a fault: thread heaps' free slices not yet purged (`FREE_SLICE_BYTES`, less
//! the huge halves' untaken ones, held already) and the cache of freed large mappings
//! (`LARGE_CACHED_BYTES`, which `large` keeps). A request those would push over the limit
//! gives them back first (the large cache, then the requesting thread's free slices: the
//! callers do, `fast::heap` and `dram`'s large paths, this module only counts), and is refused
//! only if it still does not fit. Without a limit none of this runs: `admits` is one load and
//! compare.
//!
//! Not counted: segment descriptors, the allocator's metadata, other threads' free slices
//! beyond the figure (they are counted, but only their own thread gives them back).

use crate::stats::SharedCounter;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Bytes of the pages thread heaps hold for size classes.
pub static PAGE_BYTES: HeldCounter = HeldCounter::new();
/// Usable bytes of live large blocks.
pub static LARGE_LIVE_BYTES: HeldCounter = HeldCounter::new();
/// Bytes of huge halves' slices no page has taken yet (see the module comment).
pub static HUGE_UNTAKEN_BYTES: HeldCounter = HeldCounter::new();

/// Bytes of the free slices thread heaps keep resident (their dirty slices, the huge halves'
/// untaken ones included): kept by `fast::heap` wherever a heap's `dirty_bytes` changes.
pub static FREE_SLICE_BYTES: SharedCounter = SharedCounter::new();

/// Bytes the cache of freed large mappings keeps resident (kept by `large`, which gives them
/// back with `large::release_cached`).
pub static LARGE_CACHED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The most `held()` has been: DRAM's peak, the figure a user sizes a `limit=` or a cgroup by.
static PEAK_HELD: AtomicU64 = AtomicU64::new(0);

/// A part of the held bytes. Adding to it (a new page, a new or grown large block: never the
/// per-block fast path) raises the peak when the total passes it: one more load and compare,
/// and a read-modify-write only while the peak is being set.
pub struct HeldCounter(SharedCounter);

impl HeldCounter {
    const fn new() -> Self {
        HeldCounter(SharedCounter::new())
    }
    /// Adds `n` (wrapping: a release adds the two's complement).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.add(n);
        if n < 1 << 63 {
            let now = held();
            if now > PEAK_HELD.load(Ordering::Relaxed) {
                PEAK_HELD.fetch_max(now, Ordering::Relaxed);
            }
        }
        crate::live::tick();
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// The most DRAM has held for blocks at once since the process started.
pub fn peak_held() -> u64 {
    PEAK_HELD.load(Ordering::Relaxed).max(held())
}

/// The cap; `u64::MAX` when none is configured.
static LIMIT: AtomicU64 = AtomicU64::new(u64::MAX);

/// Caps the bytes DRAM holds for blocks (once, while the tiers are opened).
pub fn set_limit(bytes: u64) {
    LIMIT.store(bytes, Ordering::Relaxed);
}

/// The configured cap, if any.
pub fn limit() -> Option<u64> {
    Some(LIMIT.load(Ordering::Relaxed)).filter(|&l| l != u64::MAX)
}

/// Bytes held for blocks now.
pub fn held() -> u64 {
    PAGE_BYTES
        .get()
        .wrapping_add(LARGE_LIVE_BYTES.get())
        .wrapping_add(HUGE_UNTAKEN_BYTES.get())
}

/// What DRAM keeps resident for blocks now: the held bytes, the free slices heaps have not
/// purged (but the huge halves' untaken ones, held already), the large cache's pages.
#[inline(never)]
#[link_section = ".text.tiermalloc_limit"]
pub fn resident() -> u64 {
    let free = FREE_SLICE_BYTES
        .get()
        .saturating_sub(HUGE_UNTAKEN_BYTES.get());
    held()
        .wrapping_add(free.min(1 << 62))
        .wrapping_add(LARGE_CACHED_BYTES.load(Ordering::Relaxed) as u64)
}

/// Whether `bytes` more may be taken for blocks: without a limit, always; with one, if they
/// fit in it beside what DRAM keeps resident (a caller refused gives back the large cache and
/// its thread's free slices, then asks again).
#[inline]
pub fn admits(bytes: u64) -> bool {
    let limit = LIMIT.load(Ordering::Relaxed);
    limit == u64::MAX || fits_under(limit, bytes)
}

#[cold]
#[inline(never)]
// Run only under a limit: a section of its own keeps it out of the code every process runs
// (`link/hot_text.ld`, which takes every other `dram` function).
#[link_section = ".text.tiermalloc_limit"]
fn fits_under(limit: u64, bytes: u64) -> bool {
    resident().saturating_add(bytes) <= limit
}
