//! Large blocks: requests above the largest size class (or aligned beyond a slice) get a
//! mapping of their own.
//!
//! The mapping covers whole chunks and starts with a `LargeHeader` (host DRAM: the mapping is
//! ours); the block starts `offset` bytes later. Pages past the block's end are reserved but
//! untouched, so `realloc` within the mapping is free; beyond it, `mremap` grows the mapping
//! in place or moves its pages to a new chunk-aligned place without copying.
//!
//! A freed mapping of up to `CACHE_ENTRY_MAX` bytes is kept, still resident, in a small
//! lock-free cache: programs that allocate and free big buffers in a loop then pay no `mmap`,
//! `munmap` or page faults. A new block takes the cached mapping whose resident pages cover
//! most of it: a longer one is split and its rest cached again, a shorter one grown by
//! `mremap` (its pages move), its growth filled with the resident pages of other cached
//! mappings, moved there by `mremap` too (`gather`): only what they cannot fill faults.
//! Each header bounds the pages its blocks touched (`resident`), so a shrink gives back an
//! earlier block's pages too, and the cache counts what it holds resident (the pages
//! `mincore` finds present in that bound when a mapping is cached: a block never written
//! counts its header's page, not its length): at most half the bytes of live large blocks,
//! within `CACHE_BYTES_MIN..=CACHE_BYTES_MAX`; when full, it unmaps the entry with the
//! fewest resident pages for one with more, or the new one.
//! The cache decays: a mapping no request took within `CACHE_DECAY_NS` of its free is unmapped
//! by the next large allocation or free, or a thread heap's next page miss, so a program that
//! stops using big buffers does not keep them resident; `malloc_trim` empties it at once.

use super::large_guard;
use crate::chunk::{self, CHUNK_SIZE};
use crate::os;
use crate::pagemap::{self, ChunkTag};
use crate::profile::reserve;
use crate::stats::SharedCounter;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Bytes between the chunk start and a block aligned to at most this.
const MIN_OFFSET: usize = 64;

/// Largest mapping the cache keeps, and the bounds of what it keeps resident in all (see the
/// module comment). Measured on mimalloc-bench's malloc-large (BENCHMARKS.md, session 7):
/// 96 MiB fixed and a 100 ms decay, 943 k faults; 160 MiB and 1 s, 581 k faults and 531 MiB
/// peak RSS (glibc 534); half the live bytes within these bounds, 630 k and 522 MiB, while
/// the `large` workload's 4 live blocks keep 64 MiB.
const CACHE_ENTRY_MAX: usize = 32 << 20;
const CACHE_BYTES_MAX: usize = 160 << 20;
const CACHE_BYTES_MIN: usize = 64 << 20;
const CACHE_SLOTS: usize = 16;

/// Each slot is 0 or an `Entry` word: the header's address (chunk-aligned), the mapping's
/// length in chunks and its resident pages (`resident_bytes`, when it was cached), so that a
/// slot is chosen and taken whole with one compare-and-swap, without reading the mapping
/// (which its taker may already have freed).
static CACHE: [AtomicUsize; CACHE_SLOTS] = [const { AtomicUsize::new(0) }; CACHE_SLOTS];
/// When each slot's mapping was cached (coarse monotonic ns): written after the slot, so a
/// reader may see an older time for a newer entry, and then only unmaps it sooner.
static CACHED_AT: [AtomicU64; CACHE_SLOTS] = [const { AtomicU64::new(0) }; CACHE_SLOTS];
/// A cached mapping older than this is unmapped (see the module comment).
const CACHE_DECAY_NS: u64 = 1_000_000_000;
/// The earliest time an entry may have to decay (0: none cached); lets `decay` skip the scan.
static NEXT_DECAY: AtomicU64 = AtomicU64::new(0);
/// Bytes the cached mappings hold resident (the sum of their entries' resident pages, each
/// counted when it was cached): what the cache costs in memory, bounded by `CACHE_BYTES_MAX`.
/// Kept in `budget`, whose `limit=` counts it.
use super::budget::LARGE_CACHED_BYTES as CACHED_RESIDENT;
pub(crate) static CACHE_HITS: SharedCounter = SharedCounter::new();

/// A cache slot's word: `header | len_chunks << RESIDENT_BITS | resident_pages`.
#[derive(Clone, Copy)]
struct Entry(usize);

const RESIDENT_BITS: u32 = 14;
const _: () = assert!(CACHE_ENTRY_MAX / os::PAGE_SIZE < 1 << RESIDENT_BITS);
const _: () = assert!((CACHE_ENTRY_MAX / CHUNK_SIZE) << RESIDENT_BITS < CHUNK_SIZE);

impl Entry {
    fn new(h: usize, len: usize, resident: usize) -> Entry {
        let pages = resident.div_ceil(os::PAGE_SIZE);
        Entry(h | (len / CHUNK_SIZE) << RESIDENT_BITS | pages)
    }
    fn header(self) -> usize {
        self.0 & !(CHUNK_SIZE - 1)
    }
    fn len(self) -> usize {
        ((self.0 & (CHUNK_SIZE - 1)) >> RESIDENT_BITS) * CHUNK_SIZE
    }
    fn resident(self) -> usize {
        (self.0 & ((1 << RESIDENT_BITS) - 1)) * os::PAGE_SIZE
    }
}

/// Takes the cached mapping that best serves a block needing a mapping of `need` bytes: the
/// one whose resident pages cover most of the block (of those, the shortest), where one of
/// at least `need` bytes beats a shorter one (`fit_cached` splits off its rest, or grows the
/// shorter one, only when `or_shorter`). Any cached mapping's resident pages are worth more
/// than a fresh mapping's, every page of which faults.
fn cache_take(need: usize, or_shorter: bool) -> Option<(usize, usize)> {
    if CACHED_RESIDENT.load(Ordering::Relaxed) == 0 {
        return None;
    }
    // Larger is better: (resident pages the block can use, fits, shorter).
    let score = |e: Entry| {
        (
            e.resident().min(need),
            e.len() >= need,
            usize::MAX - e.len(),
        )
    };
    // A few tries: a slot can be taken between the scan and the compare-and-swap.
    for _ in 0..4 {
        let mut best: Option<(&AtomicUsize, Entry)> = None;
        for slot in &CACHE {
            let entry = Entry(slot.load(Ordering::Relaxed));
            if entry.0 == 0 || !(or_shorter || entry.len() >= need) {
                continue;
            }
            if !matches!(best, Some((_, b)) if score(b) >= score(entry)) {
                best = Some((slot, entry));
            }
        }
        let (slot, entry) = best?;
        if slot
            .compare_exchange(entry.0, 0, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            CACHED_RESIDENT.fetch_sub(entry.resident(), Ordering::Relaxed);
            CACHE_HITS.add(1);
            return Some((entry.header(), entry.len()));
        }
    }
    None
}

/// Makes the cached mapping `[h, h + len)` (taken from the cache) `map_len` bytes long for a
/// new block, keeping its resident pages: a longer one is split, its rest cached again as a
/// mapping of its own (or unmapped when none of its pages is resident), with no system call;
/// a shorter one is grown by `mremap`, in place or by moving its pages. Returns where the
/// mapping now starts, its header's `map_len` and `resident` updated, or `None` if growing
/// failed (the mapping is then unmapped).
///
/// # Safety
/// `[h, h + len)` must be a cached mapping the caller has taken.
unsafe fn fit_cached(h: usize, len: usize, map_len: usize) -> Option<usize> {
    // SAFETY: per the contract: the mapping and its header are ours alone, its bytes dead.
    unsafe {
        let header = h as *mut LargeHeader;
        if len > map_len {
            let resident = (*header).resident;
            let (rest, rest_len) = (h + map_len, len - map_len);
            (*header).map_len = map_len;
            (*header).resident = resident.min(map_len);
            pagemap::set(h, map_len, ChunkTag::LargeHead, ChunkTag::LargeTail);
            if resident > map_len {
                (rest as *mut LargeHeader).write(LargeHeader {
                    map_len: rest_len,
                    offset: usize::MAX,
                    usable: 0,
                    resident: resident - map_len,
                    gathered: (*header).gathered,
                });
                pagemap::set(rest, rest_len, ChunkTag::LargeHead, ChunkTag::LargeTail);
                if cache_put(rest, rest_len) {
                    CACHE_SPLITS.add(1);
                    return Some(h);
                }
            }
            pagemap::clear(rest, rest_len);
            os::unmap(rest as *mut u8, rest_len);
            return Some(h);
        }
        if len < map_len {
            let Some(new_h) = place_mapping(h, len, map_len) else {
                pagemap::clear(h, len);
                os::unmap(h as *mut u8, len);
                return None;
            };
            CACHE_GROWN.add(1);
            let header = new_h as *mut LargeHeader;
            (*header).map_len = map_len;
            gather(new_h, len, map_len);
            return Some(new_h);
        }
        Some(h)
    }
}

/// Fills `[h + from, h + to)`, the unfaulted growth of a mapping `fit_cached` took and grew,
/// with resident pages of other cached mappings, moved there by `mremap` (page tables move,
/// no page faults or zeroing): the pages of freed blocks gather into one mapping for a block
/// larger than any of them, where growing alone faulted every page of the growth. A donor is
/// moved from its start (its header's page goes along as dead bytes); a rest with resident
/// pages is cached again with a header of its own, one without is unmapped. Stops when the
/// cache has no mapping with resident pages left, or a move fails (everything then as it was).
///
/// # Safety
/// `[h, h + to)` must be a tagged mapping of ours that no live block uses, with a valid header
/// whose `resident` bounds its resident pages; `from` and `to` chunk multiples.
unsafe fn gather(h: usize, mut from: usize, to: usize) {
    while from < to {
        let need = to - from;
        let Some((d, d_len)) = cache_take(need, true) else {
            return;
        };
        // SAFETY: a cached mapping is ours alone once taken; its header is valid, and the
        // caller's mapping is ours; the two are disjoint (one was taken from the cache, the
        // other is the caller's).
        unsafe {
            let d_resident = (*(d as *const LargeHeader)).resident;
            if d_resident == 0 {
                cache_or_unmap(d, d_len);
                return;
            }
            let moved = need.min(d_len);
            // Tags come off first: once moved, another thread's mapping may land at `d`.
            pagemap::clear(d, moved);
            if !os::remap_to(d as *mut u8, moved, (h + from) as *mut u8, moved) {
                pagemap::set(d, d_len, ChunkTag::LargeHead, ChunkTag::LargeTail);
                cache_or_unmap(d, d_len);
                return;
            }
            CACHE_GATHERED.add(1);
            let header = h as *mut LargeHeader;
            (*header).resident = (*header).resident.max(from + d_resident.min(moved));
            (*header).gathered = true;
            if d_len > moved {
                let (rest, rest_len) = (d + moved, d_len - moved);
                (rest as *mut LargeHeader).write(LargeHeader {
                    map_len: rest_len,
                    offset: usize::MAX,
                    usable: 0,
                    resident: d_resident.saturating_sub(moved),
                    gathered: true,
                });
                pagemap::set(rest, rest_len, ChunkTag::LargeHead, ChunkTag::LargeTail);
                cache_or_unmap(rest, rest_len);
            }
            from += moved;
        }
    }
}

/// Caches a dead mapping that has resident pages, or unmaps it.
///
/// # Safety
/// As `cache_put`.
unsafe fn cache_or_unmap(h: usize, map_len: usize) {
    // SAFETY: per the contract, the header is ours to read and the mapping ours to unmap.
    unsafe {
        if (*(h as *const LargeHeader)).resident == 0 || !cache_put(h, map_len) {
            pagemap::clear(h, map_len);
            os::unmap(h as *mut u8, map_len);
        }
    }
}

/// Offers a dead mapping, its header's `resident` set, to the cache; false if it does not fit
/// (the caller unmaps it).
///
/// # Safety
/// `[h, h + map_len)` must be a dead mapping of ours, tagged, its header valid.
unsafe fn cache_put(h: usize, map_len: usize) -> bool {
    if map_len > CACHE_ENTRY_MAX {
        return false;
    }
    // SAFETY: per the contract, the header is ours to read.
    let bound = unsafe { (*(h as *const LargeHeader)).resident };
    let entry = Entry::new(h, map_len, resident_bytes(h, bound));
    let resident = entry.resident();
    // Each round either caches the mapping or evicts one with fewer resident pages: a full
    // cache keeps the mappings that save the most page faults.
    for _ in 0..=CACHE_SLOTS {
        if CACHED_RESIDENT.fetch_add(resident, Ordering::Relaxed) + resident <= cache_cap() {
            for (slot, at) in CACHE.iter().zip(&CACHED_AT) {
                if slot
                    .compare_exchange(0, entry.0, Ordering::Release, Ordering::Relaxed)
                    .is_ok()
                {
                    let now = os::coarse_now_ns();
                    at.store(now, Ordering::Relaxed);
                    let _ = NEXT_DECAY.compare_exchange(
                        0,
                        now + CACHE_DECAY_NS,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    return true;
                }
            }
        }
        CACHED_RESIDENT.fetch_sub(resident, Ordering::Relaxed);
        if !evict_below(resident) {
            return false;
        }
    }
    false
}

/// Bytes of `[h, h + len)` (`h` page-aligned, `len` a page multiple) present in memory now,
/// by `mincore`: what a mapping about to be cached really holds, where its header's
/// `resident` only bounds the pages its blocks may have written (a block never written counts
/// whole there). `len` if the kernel does not say. One system call per 8 MiB.
fn resident_bytes(h: usize, len: usize) -> usize {
    const PAGES: usize = 2048;
    let mut vec = [0u8; PAGES];
    let mut present = 0;
    let mut at = 0;
    while at < len {
        let bytes = (len - at).min(PAGES * os::PAGE_SIZE);
        // SAFETY: a range of our own mapping; `vec` holds a byte for each of its pages.
        let asked = os::keep_errno(|| unsafe {
            libc::mincore((h + at) as *mut libc::c_void, bytes, vec.as_mut_ptr())
        });
        if asked != 0 {
            return len;
        }
        let pages = bytes.div_ceil(os::PAGE_SIZE);
        present += vec[..pages].iter().filter(|&&b| b & 1 != 0).count() * os::PAGE_SIZE;
        at += bytes;
    }
    present
}

/// The most the cached mappings may hold resident now: half the bytes of live large blocks,
/// within `CACHE_BYTES_MIN..=CACHE_BYTES_MAX`.
fn cache_cap() -> usize {
    let half = (LARGE_LIVE_BYTES.get() / 2) as usize;
    half.clamp(CACHE_BYTES_MIN, CACHE_BYTES_MAX)
}

/// Unmaps the cached mapping with the fewest resident pages, if it has fewer than
/// `resident` bytes; false if none has.
fn evict_below(resident: usize) -> bool {
    let mut victim: Option<(&AtomicUsize, Entry)> = None;
    for slot in &CACHE {
        let entry = Entry(slot.load(Ordering::Relaxed));
        if entry.0 != 0
            && entry.resident() < resident
            && !matches!(victim, Some((_, v)) if v.resident() <= entry.resident())
        {
            victim = Some((slot, entry));
        }
    }
    let Some((slot, entry)) = victim else {
        return false;
    };
    if slot
        .compare_exchange(entry.0, 0, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
    {
        CACHED_RESIDENT.fetch_sub(entry.resident(), Ordering::Relaxed);
        CACHE_EVICTED.add(1);
        pagemap::clear(entry.header(), entry.len());
        // SAFETY: a cached mapping is ours alone once taken; no live block is in it.
        unsafe { os::unmap(entry.header() as *mut u8, entry.len()) };
    }
    // Lost the race: another thread took it, which made room as well.
    true
}

/// Unmaps every cached mapping older than `CACHE_DECAY_NS`. Called on the large paths (each
/// costs a system call or page faults anyway) and on a thread heap's page misses (so that a
/// program that stops using big blocks but goes on allocating small ones gets the memory back);
/// one relaxed load when nothing is cached.
#[inline]
pub(crate) fn decay() {
    // Tested here, in the caller: the call cost more than the test on every page miss
    // (callgrind, `sliding_window`).
    if NEXT_DECAY.load(Ordering::Relaxed) != 0 {
        decay_older_than(CACHE_DECAY_NS);
    }
}

/// Unmaps every cached mapping now (`malloc_trim`, a request `limit=` refused); the bytes it
/// held resident.
pub(crate) fn release_cached() -> usize {
    let before = CACHED_RESIDENT.load(Ordering::Relaxed);
    if before != 0 {
        NEXT_DECAY.store(1, Ordering::Relaxed);
        decay_older_than(0);
    }
    before.saturating_sub(CACHED_RESIDENT.load(Ordering::Relaxed))
}

fn decay_older_than(age_ns: u64) {
    let due = NEXT_DECAY.load(Ordering::Relaxed);
    if due == 0 {
        return;
    }
    let now = os::coarse_now_ns();
    if now < due
        || NEXT_DECAY
            .compare_exchange(due, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    let mut next = 0u64;
    for (slot, at) in CACHE.iter().zip(&CACHED_AT) {
        let entry = Entry(slot.load(Ordering::Relaxed));
        if entry.0 == 0 {
            continue;
        }
        let expires = at.load(Ordering::Relaxed) + age_ns;
        if expires > now {
            next = if next == 0 {
                expires
            } else {
                next.min(expires)
            };
            continue;
        }
        if slot
            .compare_exchange(entry.0, 0, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            let (h, len) = (entry.header(), entry.len());
            CACHED_RESIDENT.fetch_sub(entry.resident(), Ordering::Relaxed);
            CACHE_DECAYED.add(1);
            pagemap::clear(h, len);
            // SAFETY: a cached mapping is ours alone once taken; no live block is in it.
            unsafe { os::unmap(h as *mut u8, len) };
        }
    }
    if next != 0 {
        // Another free may have set an earlier time meanwhile; keep the earlier.
        let _ = NEXT_DECAY.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
            Some(if d == 0 { next } else { d.min(next) })
        });
    }
}

pub(crate) static CACHE_DECAYED: SharedCounter = SharedCounter::new();
/// Cached mappings unmapped to make room for one with more resident pages.
pub(crate) static CACHE_EVICTED: SharedCounter = SharedCounter::new();
/// Cached mappings split for a smaller block (`fit_cached`), and grown for a larger one.
pub(crate) static CACHE_SPLITS: SharedCounter = SharedCounter::new();
pub(crate) static CACHE_GROWN: SharedCounter = SharedCounter::new();
/// Cached mappings whose pages `gather` moved into another one grown for a larger block.
pub(crate) static CACHE_GATHERED: SharedCounter = SharedCounter::new();
pub static LARGE_ALLOCATIONS: SharedCounter = SharedCounter::new();
pub static LARGE_FREES: SharedCounter = SharedCounter::new();
pub use crate::dram::budget::LARGE_LIVE_BYTES;

/// Invariants: the header sits at the chunk start `owner_chunk(block)`; the mapping is
/// `[header, header + map_len)` with `map_len` a multiple of `CHUNK_SIZE`, so no one else's
/// memory ever shares a chunk the page map tags as ours; `block = header + offset` and
/// `offset + usable <= map_len`, `offset + usable` a multiple of the page size; the page map
/// tags the first chunk `LargeHead` and the rest `LargeTail`. Pages past `offset + usable` are
/// reserved address space, untouched by a live block, but may still be resident from an
/// earlier block of a cached mapping: none past `resident`, where
/// `offset + usable <= resident <= map_len` (kept in a cached mapping's header too).
#[repr(C)]
struct LargeHeader {
    map_len: usize,
    offset: usize,
    usable: usize,
    resident: usize,
    /// Whether `gather` moved pages of other mappings in (this mapping's or the one it was
    /// split from): the mapping then spans several kernel mappings (VMAs), which `mremap`
    /// cannot resize in place (it fails with EFAULT), so `place_mapping` does not try.
    gathered: bool,
}

fn round_to_page(n: usize) -> Option<usize> {
    Some(n.checked_add(os::PAGE_SIZE - 1)? & !(os::PAGE_SIZE - 1))
}

fn round_to_chunk(n: usize) -> Option<usize> {
    Some(n.checked_add(CHUNK_SIZE - 1)? & !(CHUNK_SIZE - 1))
}

/// The offset of the block from its header for `align`.
///
/// Written as a clamp, not as `if align <= MIN_OFFSET { .. } else { align.min(..) }`: rustc
/// 1.95 at opt-level 1 and 2 with several codegen units folds that form to
/// `align.min(CHUNK_SIZE)`, dropping the lower bound (seen as 16-byte offsets in dev builds).
fn offset_for(align: usize) -> usize {
    align.clamp(MIN_OFFSET, CHUNK_SIZE)
}

/// Maps `map_len` bytes at a chunk-aligned address `h` such that `h + offset` is aligned to
/// `align`; its first `touched` bytes come pre-faulted from the profile's reserve when it
/// has them.
fn map_for(map_len: usize, offset: usize, align: usize, touched: usize) -> Option<usize> {
    if align <= CHUNK_SIZE {
        return reserve::map_chunks(map_len, touched).map(|p| p.as_ptr() as usize);
    }
    // offset == CHUNK_SIZE here, so h = block - CHUNK_SIZE is chunk-aligned whenever the block
    // is `align`-aligned.
    let total = map_len.checked_add(align)?;
    let raw = os::map_anonymous(total)?.as_ptr() as usize;
    let block = (raw + offset + align - 1) & !(align - 1);
    let h = block - offset;
    // SAFETY: trimming the unused ends of our fresh mapping.
    unsafe {
        if h > raw {
            os::unmap(raw as *mut u8, h - raw);
        }
        if raw + total > h + map_len {
            os::unmap((h + map_len) as *mut u8, raw + total - (h + map_len));
        }
    }
    Some(h)
}

/// Writes the header of a block in the mapping at `h` and counts it. A `cached` mapping's
/// header already bounds the pages an earlier block left resident and says whether it was
/// gathered: both are kept; a fresh mapping has none resident.
///
/// # Safety
/// `[h, h + map_len)` must be a mapping of ours, tagged, that no live block uses; if `cached`,
/// with a valid header.
unsafe fn start_block(
    h: usize,
    map_len: usize,
    offset: usize,
    usable: usize,
    cached: bool,
) -> *mut u8 {
    let header = h as *mut LargeHeader;
    // SAFETY: the header fits in the mapping's first bytes (offset ≥ 64); a cached mapping's
    // is valid.
    unsafe {
        let (resident, gathered) = if cached {
            ((*header).resident, (*header).gathered)
        } else {
            (0, false)
        };
        header.write(LargeHeader {
            map_len,
            offset,
            usable,
            resident: resident.max(offset + usable),
            gathered,
        })
    };
    LARGE_ALLOCATIONS.add(1);
    LARGE_LIVE_BYTES.add(usable as u64);
    reserve::observe(super::budget::held());
    (h + offset) as *mut u8
}

/// A block of at least `size` bytes aligned to `align` (a power of two), all zero if `zero`;
/// null on failure.
pub fn alloc(size: usize, align: usize, zero: bool) -> *mut u8 {
    let offset = offset_for(align);
    let Some(end) = size.checked_add(offset).and_then(round_to_page) else {
        return core::ptr::null_mut();
    };
    let Some(map_len) = large_guard::room(end).and_then(round_to_chunk) else {
        return core::ptr::null_mut();
    };
    let usable = end - offset;
    decay();
    if offset == MIN_OFFSET {
        // A mapping too long to be cached again would take cached pages with it to `munmap`.
        if let Some((h, cached_len)) = cache_take(map_len, map_len <= CACHE_ENTRY_MAX) {
            // SAFETY: a cached mapping is ours alone once taken, its tags still set.
            if let Some(h) = unsafe { fit_cached(h, cached_len, map_len) } {
                // SAFETY: the mapping fitted to `map_len`, its tags set.
                unsafe {
                    let resident = (*(h as *mut LargeHeader)).resident;
                    let p = start_block(h, map_len, offset, usable, true);
                    if zero {
                        // Pages past `resident` were never written since the kernel zeroed
                        // them: writing zeroes there would only fault them in.
                        p.write_bytes(0, resident.min(end).saturating_sub(offset));
                    }
                    large_guard::set(h + end);
                    return p;
                }
            }
        }
    }
    let Some(h) = map_for(map_len, offset, align, end) else {
        return core::ptr::null_mut();
    };
    if !chunk::covers(h, map_len) {
        // SAFETY: fresh and unused.
        unsafe { os::unmap(h as *mut u8, map_len) };
        return core::ptr::null_mut();
    }
    pagemap::set(h, map_len, ChunkTag::LargeHead, ChunkTag::LargeTail);
    // SAFETY: a fresh, tagged mapping (zero-filled by the kernel), with room for the guard.
    unsafe {
        let p = start_block(h, map_len, offset, usable, false);
        large_guard::set(h + end);
        p
    }
}

/// A block of at least `size` bytes aligned to `align` (a power of two) from a cached mapping,
/// contents undefined; null when the cache has none long enough. Makes no system call.
pub fn alloc_cached(size: usize, align: usize) -> *mut u8 {
    let offset = offset_for(align);
    let Some(end) = size.checked_add(offset).and_then(round_to_page) else {
        return core::ptr::null_mut();
    };
    let Some(map_len) = round_to_chunk(end) else {
        return core::ptr::null_mut();
    };
    // Under the secure level blocks carry a guard page: `alloc` sets it.
    if offset != MIN_OFFSET || large_guard::enabled() {
        return core::ptr::null_mut();
    }
    let Some((h, cached_len)) = cache_take(map_len, false) else {
        return core::ptr::null_mut();
    };
    // SAFETY: a cached mapping is ours alone once taken, its tags and header still set; at
    // least `map_len` long, so fitting it only splits it.
    unsafe {
        let Some(h) = fit_cached(h, cached_len, map_len) else {
            return core::ptr::null_mut();
        };
        start_block(h, map_len, offset, end - offset, true)
    }
}

/// The header of large block `p`, if `p` really is the start of one.
fn header_of(p: *mut u8) -> Option<*mut LargeHeader> {
    let h = pagemap::owner_chunk(p as usize);
    let header = h as *mut LargeHeader;
    // SAFETY: the page map says a large mapping starts at `h`, so its header is readable.
    (unsafe { (*header).offset } == p as usize - h).then_some(header)
}

/// Whether `p` was the start of a large block that has been freed (its mapping waits in the
/// cache, marked so that a stale pointer cannot pass for a block). The page map must tag `p`'s
/// chunk `LargeHead`.
pub fn was_freed(p: *mut u8) -> bool {
    // SAFETY: the page map says a large mapping starts at `p`'s owner chunk: its header is
    // readable.
    unsafe { (*(pagemap::owner_chunk(p as usize) as *const LargeHeader)).offset == usize::MAX }
}

/// The usable size of large block `p` (0 if `p` is not the start of one). The page map must
/// tag `p`'s chunk `LargeHead`.
pub fn usable_size(p: *mut u8) -> usize {
    match header_of(p) {
        // SAFETY: a valid header.
        Some(header) => unsafe { (*header).usable },
        None => 0,
    }
}

/// Frees large block `p`; false if `p` is not the start of a large block (a free that loses
/// a race to another free of `p` is reported here, and true). The page map must
/// tag `p`'s chunk `LargeHead`.
///
/// # Safety
/// `p` must not be used after this.
pub unsafe fn free(p: *mut u8) -> bool {
    let Some(header) = header_of(p) else {
        return false;
    };
    // SAFETY: a valid header of a mapping whose block dies here.
    unsafe {
        let LargeHeader {
            map_len,
            offset,
            usable,
            ..
        } = header.read();
        // A stale pointer to a cached mapping must not pass for a block. Swapped in
        // atomically: of two frees racing (a double free from two threads), one only passes.
        let offset_word = &*core::ptr::addr_of!((*header).offset).cast::<AtomicUsize>();
        if offset_word
            .compare_exchange(offset, usize::MAX, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            crate::misuse::report("free", p, crate::misuse::Misuse::DoubleFree);
            return true;
        }
        large_guard::lift(header as usize + offset + usable);
        LARGE_FREES.add(1);
        LARGE_LIVE_BYTES.add((usable as u64).wrapping_neg());
        decay();
        cache_or_unmap(header as usize, map_len);
    }
    true
}

/// Resizes large block `p` to hold `size` bytes without copying: within its mapping, by
/// growing or shrinking the mapping in place, or by moving its pages. Returns the (possibly
/// moved) block, or null if it could not (`p` is then intact). Under the secure level its
/// guard page moves to the new end (`large_guard`).
///
/// # Safety
/// `p` must be a live large block.
pub unsafe fn resize(p: *mut u8, size: usize) -> *mut u8 {
    if !large_guard::enabled() {
        // SAFETY: forwarded.
        return unsafe { resize_unguarded(p, size) };
    }
    let Some(header) = header_of(p) else {
        return core::ptr::null_mut();
    };
    // SAFETY: a valid header; the guard sits at the block's end while it lives.
    unsafe {
        let end_of = |h: usize| {
            let header = h as *const LargeHeader;
            h + (*header).offset + (*header).usable
        };
        large_guard::lift(end_of(header as usize));
        let q = resize_unguarded(p, size);
        let h = if q.is_null() {
            header as usize
        } else {
            pagemap::owner_chunk(q as usize)
        };
        large_guard::set(end_of(h));
        q
    }
}

/// `resize` with no guard page at the block's end.
///
/// # Safety
/// As `resize`.
unsafe fn resize_unguarded(p: *mut u8, size: usize) -> *mut u8 {
    let Some(header) = header_of(p) else {
        return core::ptr::null_mut();
    };
    // SAFETY: a valid header.
    let LargeHeader {
        map_len,
        offset,
        usable,
        resident,
        ..
    } = unsafe { header.read() };
    let Some(end) = size.checked_add(offset).and_then(round_to_page) else {
        return core::ptr::null_mut();
    };
    let Some(new_len) = large_guard::room(end).and_then(round_to_chunk) else {
        return core::ptr::null_mut();
    };
    let h = header as usize;
    let new_usable = end - offset;
    let old_end = offset + usable;
    if new_len != map_len {
        // SAFETY: our whole mapping; `place_mapping` keeps it intact on failure.
        match unsafe { place_mapping(h, map_len, new_len) } {
            Some(new_h) if new_h == h => {}
            Some(new_h) => {
                // SAFETY: the header moved with its pages.
                unsafe {
                    let moved = new_h as *mut LargeHeader;
                    (*moved).usable = new_usable;
                    (*moved).resident = resident.max(end).min(new_len);
                }
                LARGE_LIVE_BYTES.add((new_usable as u64).wrapping_sub(usable as u64));
                reserve::observe(super::budget::held());
                return (new_h + offset) as *mut u8;
            }
            None => return core::ptr::null_mut(),
        }
    }
    let mut resident = resident.max(end).min(new_len);
    if end < old_end {
        // Shrinking: the dropped pages, and any an earlier block left, go back to the kernel
        // (`resident >= end`).
        // SAFETY: pages past the new end hold nothing the block keeps.
        unsafe { os::discard((h + end) as *mut u8, resident - end) };
        resident = end;
    }
    // SAFETY: the header is where it was.
    unsafe {
        (*header).map_len = new_len;
        (*header).usable = new_usable;
        (*header).resident = resident;
    }
    LARGE_LIVE_BYTES.add((new_usable as u64).wrapping_sub(usable as u64));
    reserve::observe(super::budget::held());
    p
}

/// Makes the mapping `[h, h + map_len)` `new_len` bytes long (both chunk multiples): in place,
/// or by moving its pages to a fresh chunk-aligned place. Returns where it now starts, with
/// the page map updated, or `None` with the mapping untouched.
///
/// # Safety
/// `[h, h + map_len)` must be a whole tagged mapping of ours.
unsafe fn place_mapping(h: usize, map_len: usize, new_len: usize) -> Option<usize> {
    let tag =
        |at: usize, len: usize| pagemap::set(at, len, ChunkTag::LargeHead, ChunkTag::LargeTail);
    // Tags come off address space before it is given back: once unmapped, another thread's
    // mapping may land there and tag it.
    if new_len < map_len {
        pagemap::clear(h + new_len, map_len - new_len);
    }
    // SAFETY: our whole mapping with a valid header; mremap without MAYMOVE resizes it where
    // it is or fails. A shrink only unmaps the tail, which works on a gathered mapping too.
    if (new_len < map_len || !unsafe { (*(h as *const LargeHeader)).gathered })
        && unsafe { os::remap_in_place(h as *mut u8, map_len, new_len) }
    {
        tag(h, new_len);
        return Some(h);
    }
    // Move the pages (offset < CHUNK_SIZE keeps the block's alignment up to a chunk; larger
    // alignments are not promised by realloc) into the start of a fresh reservation of
    // `new_len`, which keeps its zero-filled rest. A move that does not resize: a mapping whose
    // pages `gather` moved in spans several kernel mappings (VMAs), which `mremap` moves
    // (Linux 6.17 and later) but does not resize.
    let moved = map_len.min(new_len);
    let Some(dst) = os::map_aligned(new_len, CHUNK_SIZE) else {
        tag(h, map_len);
        return None;
    };
    let dst = dst.as_ptr() as usize;
    pagemap::clear(h, moved);
    // SAFETY: `[h, h + map_len)` is our mapping and `[dst, dst + new_len)` our fresh
    // reservation, which is unmapped again if anything fails.
    unsafe {
        if !chunk::covers(dst, new_len) || !os::remap_to(h as *mut u8, moved, dst as *mut u8, moved)
        {
            os::unmap(dst as *mut u8, new_len);
            tag(h, map_len);
            return None;
        }
        if map_len > moved {
            // A shrink that could not happen in place: the pages past the new length stayed.
            os::unmap((h + moved) as *mut u8, map_len - moved);
        }
    }
    tag(dst, new_len);
    // SAFETY: the header moved with its pages.
    unsafe { (*(dst as *mut LargeHeader)).map_len = new_len };
    Some(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_honour_alignment_and_resize() {
        for align in [16usize, 4096, 1 << 20, 4 << 20, 16 << 20] {
            let p = alloc(1 << 20, align, false);
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0, "align {align}");
            assert!(usable_size(p) >= 1 << 20);
            assert_eq!(pagemap::tag_of_block(p as usize), ChunkTag::LargeHead);
            // SAFETY: the block is ours and at least 1 MiB.
            unsafe {
                p.write_bytes(0x5a, 1 << 20);
                let q = resize(p, 9 << 20);
                assert!(!q.is_null());
                assert_eq!(*q.add((1 << 20) - 1), 0x5a);
                assert!(usable_size(q) >= 9 << 20);
                q.add(9 << 20).sub(1).write(1);
                let r = resize(q, 2 << 20);
                assert_eq!(r, q);
                assert_eq!(*r, 0x5a);
                assert!(free(r));
                // Unmapped, or cached with its header invalidated: no longer a block.
                if pagemap::tag_of_block(r as usize) == ChunkTag::LargeHead {
                    assert_eq!(usable_size(r), 0);
                    assert!(!free(r));
                }
            }
        }
    }

    #[test]
    fn freed_mappings_are_reused_zeroed_when_asked_and_never_freed_twice() {
        let p = alloc(3 << 20, 16, false);
        // SAFETY: our block of 3 MiB.
        unsafe {
            p.write_bytes(0xee, 3 << 20);
            assert!(free(p));
            assert!(!free(p), "a cached mapping is not a live block");
        }
        let hits = CACHE_HITS.get();
        let q = alloc(3 << 20, 16, true);
        // Another test may take the cached mapping first; only a hit must be zeroed.
        if CACHE_HITS.get() > hits && q == p {
            // SAFETY: our block of 3 MiB.
            assert!(unsafe { core::slice::from_raw_parts(q, 3 << 20) }
                .iter()
                .all(|&b| b == 0));
        }
        // SAFETY: live block.
        unsafe { assert!(free(q)) };
    }

    #[test]
    fn a_block_from_the_cache_does_not_keep_an_earlier_blocks_pages() {
        let p = alloc(24 << 20, 16, false);
        // SAFETY: our block of 24 MiB, then a block that may reuse its mapping.
        unsafe {
            p.write_bytes(1, 24 << 20);
            let h = pagemap::owner_chunk(p as usize);
            assert!(free(p));
            let q = alloc(7 << 20, 16, false);
            if pagemap::owner_chunk(q as usize) == h {
                let resident = (*(h as *mut LargeHeader)).resident;
                let end = (7 << 20) + os::PAGE_SIZE;
                assert!(resident <= end + end / 2, "{resident} bytes resident");
            }
            assert!(free(q));
        }
    }

    #[test]
    fn cached_mappings_decay() {
        // The lib tests run on several threads and share the cache: another test's large
        // block can take our mapping from it, or land at its address after the decay. Only
        // such interference gets another attempt; a cache that never decays fails all three.
        let mut outcome = Err("not run");
        for _ in 0..3 {
            outcome = decay_once();
            if outcome.is_ok() {
                break;
            }
        }
        outcome.unwrap();
    }

    fn decay_once() -> Result<(), &'static str> {
        // 31 MiB: a mapping of 32 MiB, which no other test's request fits within four times.
        let p = alloc(31 << 20, 16, false);
        let h = pagemap::owner_chunk(p as usize);
        let decayed = CACHE_DECAYED.get();
        // SAFETY: our block.
        unsafe { assert!(free(p)) };
        let cached = |h: usize| {
            CACHE
                .iter()
                .any(|s| s.load(Ordering::Relaxed) & !(CHUNK_SIZE - 1) == h)
        };
        if !cached(h) {
            return Err("a freed 32 MiB mapping is cached");
        }
        std::thread::sleep(std::time::Duration::from_nanos(CACHE_DECAY_NS + 30_000_000));
        // Any large allocation runs the decay.
        let q = alloc(5 << 20, 4 << 20, false);
        let outcome = if cached(h) {
            Err("the mapping is still cached after the decay time")
        } else if CACHE_DECAYED.get() <= decayed {
            Err("the decay counted nothing")
        } else {
            Ok(())
        };
        // SAFETY: our block.
        unsafe { assert!(free(q)) };
        outcome
    }

    #[test]
    fn the_cache_counts_the_pages_resident_not_the_blocks_length() {
        // The lib tests share the cache: another test may take our mapping before we look.
        // Only that gets another attempt; a count of the block's length fails all three.
        let mut failures = Vec::new();
        for _ in 0..3 {
            match cached_resident_once() {
                Ok(()) => return,
                Err(why) => failures.push(why),
            }
        }
        panic!("{failures:#?}");
    }

    /// Frees a 31 MiB block never written, then one whose first 8 MiB were: each cached entry
    /// counts what is resident (the header's page, or one huge page where the kernel backs
    /// it so), not the 31 MiB its header bounds.
    fn cached_resident_once() -> Result<(), String> {
        let entry_of = |h: usize| {
            CACHE
                .iter()
                .map(|s| Entry(s.load(Ordering::Relaxed)))
                .find(|e| e.0 != 0 && e.header() == h)
        };
        for written in [0usize, 8 << 20] {
            // Aligned past the minimum offset: a fresh mapping, never one from the cache,
            // which may hold pages other tests' blocks wrote (resident, and counted so).
            let p = alloc(31 << 20, 4096, false);
            let h = pagemap::owner_chunk(p as usize);
            // SAFETY: our block of 31 MiB.
            unsafe {
                p.write_bytes(7, written);
                assert!(free(p));
            }
            let Some(entry) = entry_of(h) else {
                return Err(format!(
                    "the mapping of a freed block ({written} B written) is not cached"
                ));
            };
            let (low, high) = (written, written + HUGE_PAGE_BYTES);
            if entry.resident() < low || entry.resident() > high {
                return Err(format!(
                    "{} bytes counted resident for a 31 MiB block of which {written} were written",
                    entry.resident()
                ));
            }
        }
        Ok(())
    }

    /// A huge page: the header's first write may fault one in where the kernel's
    /// transparent huge pages are `always`.
    const HUGE_PAGE_BYTES: usize = 2 << 20;

    #[test]
    fn small_alignments_get_the_minimum_offset() {
        for align in [1, 16, 32, 64] {
            assert_eq!(offset_for(align), MIN_OFFSET);
        }
        assert_eq!(offset_for(4096), 4096);
        assert_eq!(offset_for(64 << 20), CHUNK_SIZE);
    }

    #[test]
    fn interior_pointers_are_not_blocks() {
        let p = alloc(100_000, 16, false);
        // SAFETY: probing the header of our own mapping.
        unsafe {
            assert_eq!(usable_size(p.add(16)), 0);
            assert!(!free(p.add(16)));
            assert!(free(p));
        }
    }
}
