//! Per-lane caches of freed extents of 4 KiB to 256 KiB, and the live bit of every such
//! extent, so that a device block of that size is freed and allocated again without the
//! tier's heap lock (two threads on one tier paid 7.5-7.9x one thread's time per pair on
//! 16..65535-byte blocks, all of it on that lock and on heap metadata moving between cores).
//!
//! **Which extents.** A *cached-size* extent is one of `MIN_LEN..MAX_LEN` bytes holding one
//! block (not a slab) of alignment 16, on a tier under best fit (a cached extent is a good
//! fit, less than a quarter longer than asked; worst fit's point is the largest hole, so the
//! lanes are off under it, `DeviceTier::set_lanes`). Each has an entry in `table`, one
//! `AtomicU64` per 4 KiB bucket of the region, in the bucket of its start: extents of 4 KiB and
//! more are at least 4 KiB apart, so no two share a bucket. The entry holds the extent's start
//! within the bucket, its length and a *live bit*; nothing else writes it while the extent
//! lives.
//!
//! **Free.** One atomic bit operation (`lock btr`) clears the live bit (`lockfree::live_bit`;
//! a second free of the same block finds it clear: a double free, refused before anything is
//! written), the caller writes the header's state "free" (the device write of every free, as
//! before), and the extent goes to this thread's lane, in the bin of its length. The heap
//! still counts it allocated: nobody else can take it, and the device already holds its
//! header with its size.
//!
//! **Alloc.** Bins are 1/32 of a doubling wide, and each lane keeps a map of its non-empty
//! ones. A request takes the newest extent of the first non-empty bin among the `WINDOW`
//! bins from the first whose every extent holds it: two map words, a shift and a bit scan, no
//! bin searched (the hit path of `try_pop`). Only when none of them holds one does the
//! waiting `pop` search the request's own bin for one long enough (a block freed and asked
//! for again at the same size). A hit writes the whole header (its size is the extent's,
//! unchanged since it was carved) and sets the live bit with one store. A miss goes to the
//! heap as before.
//!
//! **Stashes first.** A thread with a stash of its own (`extent_stash`, at most `STASHES` per
//! tier) frees into it and takes from it with no lock; the lanes serve the other threads, a
//! stash's misses (`pop`) and what a stash's thread had freed before it had one.
//!
//! **Without waiting.** Both take the lane with one `try_lock` (`try_pop`, `try_push`), inlined
//! into the tier's paths, which then call nothing; a busy lane, a thread without a lane yet
//! (its word `lane_offset` names a stand-in lane whose lock is always held) or a miss fall back
//! to `pop` and `push`, which wait for the lock; a full bin or lane goes to `push_held` with
//! the lane still held. A lane's figures (bytes, blocks freed into it: `LaneFigures`) are
//! plain fields under its lock, one add each (statistics take the lock to read them, and count
//! the blocks handed out from what went in and out), so no counter every lane shares is on
//! these paths.
//!
//! **Back to the heap, in batches.** A bin that is full, or a lane over its byte budget, gives
//! the older half of the bin back to the heap under one heap lock (`Evicted`); so does
//! `take_lane` (statistics, a tier that ran out of room or was switched to worst fit), and
//! `withdraw` one extent (a block behind it grows in place into its space). The entry is
//! cleared under the heap lock before the heap frees the extent, so a stale entry never names
//! free space.
//!
//! **Crash order.** A cached extent is, on the device, a free extent with its own header
//! (state "free", size unchanged), exactly what a free wrote before; recovery merges it with
//! free neighbours as it always did. A hit writes one 16-byte header over it, the same store
//! as a block cut from free space without a split. No device byte is ever read.
//!
//! Lock order: a slab class's lock (a slab made while the lanes hold the room it needs), then
//! a lane's, then the heap's; a lane's lock is never held while another lane's is taken
//! (but by `fork`'s prepare handler, which takes them all in order).

use super::extent_heap::FreeError;
use super::slabs::{Lane, LANES};
use crate::lockfree::live_bit::{self, Cleared, LIVE};
use crate::os;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The shortest cached-size extent (header included).
pub(crate) const MIN_LEN: u64 = 4096;
/// Cached-size extents are shorter than this.
pub(crate) const MAX_LEN: u64 = 256 << 10;
/// Bytes of the region per table entry: at most one cached-size extent starts in each.
const BUCKET: u64 = MIN_LEN;
/// Bins per doubling of the length (a bin is 1/32 of its doubling wide, 128 bytes at 4 KiB,
/// 4 KiB at 128 KiB).
const STEPS: u32 = 32;
/// Bins: `STEPS` per doubling from `MIN_LEN` to `MAX_LEN`.
pub(crate) const BINS: usize =
    (STEPS * (MAX_LEN.trailing_zeros() - MIN_LEN.trailing_zeros())) as usize;
/// How many bins a request looks at, from the first whose every extent holds it (`CEIL`): the
/// first of them that holds an extent answers. Seven bins keep a taken extent less than a
/// quarter longer than the request: `want > low(ceil - 1)` and the extent is shorter than
/// `low(ceil + WINDOW)`, at most `(STEPS + 1 + WINDOW) / STEPS` = 1.25 times `low(ceil - 1)`.
const WINDOW: u32 = 7;
/// Extents a bin holds.
pub(super) const BIN_SLOTS: usize = 8;
/// The most extents `drain_cache` gives back under one heap lock (`take_lane`).
pub(crate) const DRAIN_BATCH: usize = 128;
/// The most extents one `push` gives back.
pub(crate) const PUSH_EVICTS: usize = BIN_SLOTS + 1;
/// The most bytes a lane holds, whatever the tier's size.
const LANE_BYTES_MAX: u64 = 8 << 20;

const PRESENT: u64 = 1 << 63;
/// Entry bits: start within the bucket in granules (8 bits), then the length in granules.
const START_BITS: u32 = 8;
const GRANULE_SHIFT: u32 = 4;

const _: () = assert!(BUCKET >> GRANULE_SHIFT <= 1 << START_BITS);
const _: () = assert!(BINS == 192);
const _: () = assert!((STEPS + 1 + WINDOW) * 4 <= STEPS * 5, "a quarter at most");

/// The bin of an extent of `len` bytes (`MIN_LEN..MAX_LEN`): the largest bin whose lower
/// bound is at most `len`. The definition; the paths read it from `FLOOR`.
const fn bin_floor_of(len: u64) -> usize {
    let log = 63 - len.leading_zeros();
    let step = (len >> (log - STEPS.trailing_zeros())) & (STEPS as u64 - 1);
    ((log - MIN_LEN.trailing_zeros()) * STEPS) as usize + step as usize
}

/// The shortest length of bin `bin`.
const fn bin_low(bin: usize) -> u64 {
    let (doubling, step) = (bin as u32 / STEPS, bin as u64 % STEPS as u64);
    (STEPS as u64 + step) << (LOW_SHIFT + doubling)
}

/// Every bin's lower bound is a multiple of `1 << LOW_SHIFT` (128 bytes), so a length's bins
/// are a table's entry for its multiple of 128 (rounded down for its own bin, up for the
/// first bin whose every extent holds it): one load each instead of ~20 instructions of
/// arithmetic. `LOWS` lengths below `MAX_LEN`, a power of two: the index is masked, not
/// bounds-checked.
const LOW_SHIFT: u32 = MIN_LEN.trailing_zeros() - STEPS.trailing_zeros();
const LOWS: usize = (MAX_LEN >> LOW_SHIFT) as usize;
const _: () = assert!(LOWS.is_power_of_two());

/// `FLOOR[len >> LOW_SHIFT]` is `bin_floor_of(len)` (0 below `MIN_LEN`, never asked).
static FLOOR: [u8; LOWS] = {
    let mut t = [0u8; LOWS];
    let mut k = (MIN_LEN >> LOW_SHIFT) as usize;
    while k < LOWS {
        t[k] = bin_floor_of((k as u64) << LOW_SHIFT) as u8;
        k += 1;
    }
    t
};

/// `CEIL[(want - 1) >> LOW_SHIFT]`: the first bin whose lower bound is at least `want`, or
/// `BINS` (the lower bounds are multiples of `1 << LOW_SHIFT`, so that is the first bin whose
/// bound is at least `((want - 1) >> LOW_SHIFT) + 1` multiples).
static CEIL: [u8; LOWS] = {
    let mut t = [BINS as u8; LOWS];
    let mut k = 0;
    while k < LOWS {
        let mut bin = 0;
        while bin < BINS && bin_low(bin) < (k as u64 + 1) << LOW_SHIFT {
            bin += 1;
        }
        t[k] = bin as u8;
        k += 1;
    }
    t
};

const _: () = assert!(bin_low(0) == MIN_LEN && bin_low(BINS) == MAX_LEN);

/// The bin of an extent of `len` bytes (`MIN_LEN..MAX_LEN`).
#[inline(always)]
pub(super) fn bin_floor(len: u64) -> usize {
    debug_assert!((MIN_LEN..MAX_LEN).contains(&len));
    FLOOR[(len >> LOW_SHIFT) as usize % LOWS] as usize
}

/// The first bin whose every extent is at least `want` bytes long (`BINS` if there is none),
/// for a request of `want` bytes (`MIN_LEN..MAX_LEN`).
#[inline(always)]
fn bin_ceil(want: u64) -> usize {
    debug_assert!((MIN_LEN..MAX_LEN).contains(&want));
    CEIL[((want - 1) >> LOW_SHIFT) as usize % LOWS] as usize
}

/// Whether an extent of `len` bytes holding a block of alignment `align` is cached-size.
#[inline]
pub(crate) fn cached_size(len: u64, align: u64) -> bool {
    align <= 1 << GRANULE_SHIFT && (MIN_LEN..MAX_LEN).contains(&len)
}

/// The cached-size lengths, as `len - MIN_LEN < SPAN` (see `served`).
pub(crate) const SPAN: u64 = MAX_LEN - MIN_LEN;

/// `cached_size` while the lanes are on (`span` is `SPAN`), always false while they are off
/// (`span` is 0): one compare (wrapping: a length below `MIN_LEN` is past the span).
#[inline(always)]
pub(crate) fn served(len: u64, align: u64, span: u64) -> bool {
    debug_assert!(span == 0 || span == SPAN);
    align <= 1 << GRANULE_SHIFT && len.wrapping_sub(MIN_LEN) < span
}

#[inline(always)]
fn entry(offset: u64, len: u64, live: bool) -> u64 {
    PRESENT
        | if live { LIVE } else { 0 }
        | (len >> GRANULE_SHIFT) << START_BITS
        | (offset % BUCKET) >> GRANULE_SHIFT
}

/// Whether `e` is the entry of the extent starting at `offset`.
#[inline]
fn names(e: u64, offset: u64) -> bool {
    e & PRESENT != 0 && e & ((1 << START_BITS) - 1) == (offset % BUCKET) >> GRANULE_SHIFT
}

/// `names` of a live entry: a live entry is present (`entry`), so only its start is tested.
#[inline(always)]
fn starts_at(e: u64, offset: u64) -> bool {
    debug_assert!(e & LIVE == 0 || e & PRESENT != 0);
    e & ((1 << START_BITS) - 1) == (offset % BUCKET) >> GRANULE_SHIFT
}

/// The length of a present entry's extent (below `MAX_LEN`, so its granules fit `LEN_BITS`:
/// a 32-bit mask, no 64-bit constant).
#[inline]
fn len_of(e: u64) -> u64 {
    (e >> (START_BITS - GRANULE_SHIFT)) & (((1 << LEN_BITS) - 1) << GRANULE_SHIFT)
}

/// One bin: `n` cached extents, roughly oldest first (`take` takes the last), each as its
/// offset and, apart, its length, so that a request finds one without touching the table, and
/// neither side packs or unpacks them (a free stores the two, a request loads the two: six
/// instructions fewer a pair than one word of both, for 104 bytes a bin instead of 72).
#[derive(Clone, Copy)]
struct Bin {
    offsets: [u64; BIN_SLOTS],
    lens: [u32; BIN_SLOTS],
    n: u32,
}

/// Bits of a table entry that hold the length in granules (lengths are below `MAX_LEN`).
const LEN_BITS: u32 = 16;
const _: () = assert!(MAX_LEN >> GRANULE_SHIFT <= 1 << LEN_BITS);
const _: () = assert!(MAX_LEN <= u32::MAX as u64, "a bin's lengths are u32");

impl Bin {
    /// Extent `i`: `(offset, length)`.
    #[inline(always)]
    fn get(&self, i: usize) -> (u64, u64) {
        (self.offsets[i], self.lens[i] as u64)
    }
}

/// Words of a lane's map of bins holding an extent: one bit per bin, and a zero word past the
/// last, so that the window of any first bin (`BINS` included) lies in two words.
const MAP_WORDS: usize = BINS / 64 + 2;

/// One lane's bins, and which of them hold an extent.
///
/// Invariant: bit `b` of `nonempty` (word `b / 64`, bit `b % 64`) is set exactly while
/// `bins[b].n > 0`; the bits past `BINS` are clear.
pub(super) struct LaneCache {
    nonempty: [u64; MAP_WORDS],
    bins: [Bin; BINS],
    figures: LaneFigures,
}

impl LaneCache {
    /// No extent in any bin, no figures (zeroed memory is the same).
    pub(super) const EMPTY: LaneCache = LaneCache {
        nonempty: [0; MAP_WORDS],
        bins: [Bin {
            offsets: [0; BIN_SLOTS],
            lens: [0; BIN_SLOTS],
            n: 0,
        }; BINS],
        figures: LaneFigures {
            room: 0,
            given_back: 0,
            frees: 0,
        },
    };

    /// The newest extent of the first bin of `want`'s window (`WINDOW` bins from `bin_ceil`,
    /// every extent of which holds `want` bytes, `MIN_LEN..MAX_LEN`) that holds one: taken
    /// out of its bin, `(offset, length)`. Two map words, a shift and a bit scan: no bin is
    /// searched.
    // Always: inlined into `try_pop`, whose hit path then calls nothing.
    #[inline(always)]
    pub(super) fn take(&mut self, want: u64) -> Option<(u64, u64)> {
        let ceil = bin_ceil(want);
        let word = ceil / 64;
        // Bins `ceil..`, in two words (the second is a zero word past the last bin's).
        let pair = (self.nonempty[(word + 1) % MAP_WORDS] as u128) << 64
            | self.nonempty[word % MAP_WORDS] as u128;
        let window = (pair >> (ceil % 64)) as u64 & ((1 << WINDOW) - 1);
        if window == 0 {
            return None;
        }
        let bin = ceil + window.trailing_zeros() as usize;
        debug_assert!(bin < BINS && self.bins[bin].n > 0);
        // SAFETY: the bit of `bin` is set, so `bin < BINS` (the map's invariant).
        let b = unsafe { self.bins.get_unchecked_mut(bin) };
        let n = b.n as usize;
        debug_assert!((1..=BIN_SLOTS).contains(&n));
        // SAFETY: at least one (its bit is set: the map's invariant), at most `BIN_SLOTS`
        // (`put` stops there), so `n - 1` is a slot (unchecked: a mask cost one instruction).
        let e = unsafe {
            (
                *b.offsets.get_unchecked(n - 1),
                *b.lens.get_unchecked(n - 1) as u64,
            )
        };
        b.n -= 1;
        if n == 1 {
            self.nonempty[bin / 64] &= !(1 << (bin % 64));
        }
        Some(e)
    }

    /// `take`, else (no bin of the window holds an extent) the newest extent of `want`'s own
    /// bin (below the window, `bin_floor`) that is long enough, such as a block freed and asked
    /// for again at the same size. Searched: `pop`'s, after `try_pop` found nothing.
    pub(super) fn take_or_own_bin(&mut self, want: u64) -> Option<(u64, u64)> {
        if let Some(e) = self.take(want) {
            return Some(e);
        }
        let bin = bin_floor(want);
        let b = &self.bins[bin];
        let i = b.lens[..b.n as usize]
            .iter()
            .rposition(|&len| len as u64 >= want)?;
        let e = b.get(i);
        self.remove(bin, i..i + 1);
        Some(e)
    }

    /// Puts `[offset, offset + len)` in its bin if the bin has room; false if it is full.
    #[inline(always)]
    pub(super) fn put(&mut self, offset: u64, len: u64) -> bool {
        let bin = bin_floor(len);
        debug_assert!(bin < BINS);
        // SAFETY: `FLOOR`'s entries are bins (`bins_bound_their_extents` checks every one).
        let b = unsafe { self.bins.get_unchecked_mut(bin) };
        let n = b.n as usize;
        if n >= BIN_SLOTS {
            return false;
        }
        b.offsets[n] = offset;
        b.lens[n] = len as u32;
        b.n += 1;
        if n == 0 {
            // Only a bin that was empty changes the map (a test where the update took four).
            self.nonempty[bin / 64] |= 1 << (bin % 64);
        }
        true
    }

    /// Takes the older half of bin `bin` (rounded up: a bin of one gives it) into `evicted`:
    /// how many extents, and their bytes.
    pub(super) fn give_older_half(
        &mut self,
        bin: usize,
        evicted: &mut Evicted<PUSH_EVICTS>,
    ) -> (usize, u64) {
        let give = (self.bins[bin].n as usize).div_ceil(2);
        let mut bytes = 0;
        for i in 0..give {
            let (off, len) = self.bins[bin].get(i);
            bytes += len;
            evicted.push(off);
        }
        self.remove(bin, 0..give);
        (give, bytes)
    }

    /// Takes extents out of the bins into `evicted` until it is full: whether the bins are
    /// empty now, and the bytes taken.
    pub(super) fn take_into<const N: usize>(&mut self, evicted: &mut Evicted<N>) -> (bool, u64) {
        let mut bytes = 0u64;
        for bin in 0..BINS {
            while self.bins[bin].n > 0 {
                if evicted.n == N {
                    return (false, bytes);
                }
                let last = self.bins[bin].n as usize - 1;
                let (offset, len) = self.bins[bin].get(last);
                self.remove(bin, last..last + 1);
                evicted.push(offset);
                bytes += len;
            }
        }
        (true, bytes)
    }

    /// Forgets every extent in the bins (a stash reclaimed after its tier went: tests).
    pub(super) fn clear(&mut self) {
        self.nonempty = [0; MAP_WORDS];
        for b in &mut self.bins {
            b.n = 0;
        }
    }

    /// Whether bin `bin` holds `BIN_SLOTS` extents.
    #[inline]
    pub(super) fn bin_full(&self, bin: usize) -> bool {
        self.bins[bin].n as usize == BIN_SLOTS
    }

    /// Takes the extent `[offset, offset + len)` out of its bin if it is there: true if it
    /// was (`withdraw`, a lane's or a stash's).
    pub(super) fn remove_extent(&mut self, offset: u64, len: u64) -> bool {
        let bin = bin_floor(len);
        let b = &self.bins[bin];
        let Some(i) = b.offsets[..b.n as usize].iter().position(|&x| x == offset) else {
            return false;
        };
        self.remove(bin, i..i + 1);
        true
    }

    /// Takes the extents `range` out of bin `bin` (the rest move down), keeping the map.
    pub(super) fn remove(&mut self, bin: usize, range: core::ops::Range<usize>) {
        let b = &mut self.bins[bin];
        b.offsets.copy_within(range.end..b.n as usize, range.start);
        b.lens.copy_within(range.end..b.n as usize, range.start);
        b.n -= range.len() as u32;
        if b.n == 0 {
            self.nonempty[bin / 64] &= !(1 << (bin % 64));
        }
    }
}

/// What a lane has, for statistics and the lane's budget: plain fields under the lane's
/// lock (statistics take it), so that a frequent free or request adds to them with one
/// instruction each, no atomic one, and no counter shared by every lane moves between cores.
/// The bytes in the bins are kept as the room left under the lane's budget (`room`, counted
/// down), so that a free's budget test is one compare with no load of the budget; statistics
/// find the bytes as the budget less the room.
/// The blocks handed out are not counted where they are handed out: every extent freed into
/// the lane is in a bin, was handed out, or went back to the heap, so they are `frees -
/// given_back - ` the extents in the bins (`ExtentCache::figures` counts those), and a
/// request's hit path only subtracts its bytes.
#[derive(Clone, Copy, Default)]
struct LaneFigures {
    /// The lane's budget less the bytes of the extents in the bins (never below 0: a free
    /// that would take it below gives extents back first).
    room: u64,
    /// Of the blocks freed into the lane, those that went back to the heap without being
    /// handed out (evicted, taken by `take_lane` or `withdraw`, or given back at once by a
    /// full lane). Between the two a free adds to (two adjacent ones were vectorised into five
    /// SSE instructions).
    given_back: u64,
    /// Blocks freed into the lane.
    frees: u64,
}

impl LaneFigures {
    /// One extent of `len` bytes out of the bins, handed out.
    #[inline(always)]
    fn taken(&mut self, len: u64) {
        self.room = self.room.wrapping_add(len);
    }

    /// `n` extents of `bytes` bytes in all out of the bins, back to the heap.
    #[inline]
    fn gone(&mut self, n: usize, bytes: u64) {
        self.room += bytes;
        self.given_back += n as u64;
    }

    /// One freed extent of `len` bytes into the bins.
    #[inline(always)]
    fn put(&mut self, len: u64) {
        self.room = self.room.wrapping_sub(len);
        self.frees = self.frees.wrapping_add(1);
    }
}

/// One lane: its bins and figures behind its lock. A cache line apart from the next lane.
#[repr(align(64))]
struct LaneSlot {
    cache: crate::futex_mutex::Mutex<LaneCache>,
}

/// Bytes of one lane (the stride of `ExtentCache::lanes`).
const SLOT_BYTES: usize = core::mem::size_of::<LaneSlot>();

/// `lane_offset`'s value before the thread's first `pop` or `push`: the stand-in's.
pub(crate) const STAND_IN_WORD: usize = LANES * SLOT_BYTES;

// This thread's lane of the extent caches for the paths that do not wait (`own_lane`), as
// the byte offset of its slot in `lanes`, `lane * SLOT_BYTES`, or `STAND_IN_WORD` (the
// stand-in, always held) before the thread's first waiting `pop` or `push`, which sets it from
// `Lane::of_this_thread`. A byte offset rather than the slabs' lane word: no multiply by the
// 19.6 KiB slot on a hit path. A word left stale by a later change of the thread's lane
// (tests) still names a lane, which any thread may use. (On targets without the TLS word, 0
// reads back as the initial value: a thread in lane 0 finds the stand-in and takes the waiting
// paths, correct but slower; the slabs' lane word has the same trait there.)
crate::thread_slot::initial_exec_word!(
    lane_offset,
    "__tiermalloc_device_extent_lane",
    value = crate::device::extent_cache::STAND_IN_WORD
);

/// Extents to give back to the heap (the caller does, under the heap lock: `ExtentCache::forget`
/// then `ExtentHeap::free` for each).
///
/// Invariant: the first `n` offsets are written.
pub(crate) struct Evicted<const N: usize> {
    n: usize,
    // Not zeroed first: every free makes one, and almost none evicts anything.
    offsets: [core::mem::MaybeUninit<u64>; N],
}

impl<const N: usize> Evicted<N> {
    #[inline]
    pub const fn new() -> Evicted<N> {
        Evicted {
            n: 0,
            offsets: [core::mem::MaybeUninit::uninit(); N],
        }
    }

    pub(super) fn push(&mut self, offset: u64) {
        self.offsets[self.n].write(offset);
        self.n += 1;
    }

    #[inline]
    pub fn as_slice(&self) -> &[u64] {
        // SAFETY: the first `n` are written (invariant); `MaybeUninit<u64>` has `u64`'s layout.
        unsafe { core::slice::from_raw_parts(self.offsets.as_ptr().cast::<u64>(), self.n) }
    }
}

/// A lane's lock, held between `try_push` and `push_held`.
pub(crate) struct Held<'a>(crate::futex_mutex::MutexGuard<'a, LaneCache>);

/// What `try_push` did.
pub(crate) enum Pushed<'a> {
    /// The extent is in this thread's lane.
    Done,
    /// Nothing: no lane yet, or the lane was busy.
    Busy,
    /// Nothing: the lane (held) has no room for it.
    Full(Held<'a>),
}

/// What a free found in the table.
pub(crate) enum CacheFree {
    /// Not a cached-size extent's start: the heap decides, under its lock.
    NotCached,
    /// The live bit was cleared: the caller owns the extent of this length and must `push` it.
    Taken(u64),
    Refused(FreeError),
}

/// The caches and live bits of one device tier. `table` maps `buckets` zeroed entries.
///
/// Invariants: a table entry is present exactly while the heap holds its extent allocated
/// (set after the heap hands the extent out, cleared under the heap lock before the heap
/// frees it); its live bit is clear exactly while the extent sits in a lane's bin; a lane's
/// `lane_budget - figures.room` is the sum of its extents' lengths. `lanes[LANES]` is a
/// stand-in whose lock is always held (`Mutex::new_held`) and whose bins stay empty: the lane
/// of a thread that has none yet (`lane_offset`), so that `try_pop` and `try_push` find "no
/// lane" and "lane busy" with the one `try_lock`.
pub(crate) struct ExtentCache {
    table: NonNull<AtomicU64>,
    buckets: usize,
    lanes: [LaneSlot; LANES + 1],
    /// The most bytes one lane holds.
    lane_budget: u64,
    /// Threads' stashes naming this cache (`extent_stash`): at most `STASHES`, so that the
    /// bytes they keep out of the heap's and `withdraw`'s reach are at most `STASHES *
    /// lane_budget`.
    stashes: AtomicUsize,
}

/// The most threads' stashes one tier's cache has at once (a thread past them uses the lanes).
pub(crate) const STASHES: usize = LANES;

// SAFETY: the table is shared through atomics, the bins through the lane locks.
unsafe impl Send for ExtentCache {}
// SAFETY: as above.
unsafe impl Sync for ExtentCache {}

fn map_bytes(buckets: usize) -> usize {
    os::page_round(buckets.max(1) * core::mem::size_of::<AtomicU64>())
}

impl ExtentCache {
    /// The caches of a region of `region_len` bytes; `None` without host memory. Whether
    /// frees and requests use them is the tier's (`DeviceTier::lanes`).
    pub fn new(region_len: u64) -> Option<ExtentCache> {
        let buckets = region_len.div_ceil(BUCKET) as usize;
        // Zeroed memory is `buckets` absent entries.
        let table = os::map_anonymous(map_bytes(buckets))?.cast::<AtomicU64>();
        const CACHE: LaneCache = LaneCache::EMPTY;
        let mut lanes = [const {
            LaneSlot {
                cache: crate::futex_mutex::Mutex::new(CACHE),
            }
        }; LANES + 1];
        let lane_budget = (region_len / 32).min(LANE_BYTES_MAX);
        lanes[LANES] = LaneSlot {
            cache: crate::futex_mutex::Mutex::new_held(CACHE),
        };
        // Every lane's room is the whole budget (the stand-in's bins stay empty).
        for slot in &lanes[..LANES] {
            slot.cache.lock().figures.room = lane_budget;
        }
        Some(ExtentCache {
            table,
            buckets,
            lanes,
            lane_budget,
            stashes: AtomicUsize::new(0),
        })
    }

    /// The most bytes one lane, or one thread's stash, holds.
    #[inline]
    pub fn lane_budget(&self) -> u64 {
        self.lane_budget
    }

    /// One more thread's stash for this cache, if there are fewer than `STASHES`.
    pub fn claim_stash(&self) -> bool {
        let mut n = self.stashes.load(Ordering::Relaxed);
        while n < STASHES {
            let relaxed = Ordering::Relaxed;
            match self
                .stashes
                .compare_exchange_weak(n, n + 1, relaxed, relaxed)
            {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
        false
    }

    /// A stash `claim_stash` gave is gone (emptied first).
    pub fn release_stash(&self) {
        self.stashes.fetch_sub(1, Ordering::Relaxed);
    }

    #[inline]
    fn slot(&self, offset: u64) -> &AtomicU64 {
        let i = (offset / BUCKET) as usize;
        debug_assert!(i < self.buckets);
        // SAFETY: `offset` lies in the region, so its bucket is one of the table's.
        unsafe { &*self.table.as_ptr().add(i) }
    }

    /// Records the extent `[offset, offset + len)` just allocated from the heap (cached-size,
    /// see `cached_size`) as live. The caller holds it; nothing else names its bucket.
    #[inline]
    pub fn adopt(&self, offset: u64, len: u64) {
        self.slot(offset)
            .store(entry(offset, len, true), Ordering::Release);
    }

    /// Forgets the extent at `offset` if the table names it (before the heap frees it or
    /// changes its length; under the heap lock).
    #[inline]
    pub fn forget(&self, offset: u64) {
        let slot = self.slot(offset);
        if names(slot.load(Ordering::Relaxed), offset) {
            slot.store(0, Ordering::Release);
        }
    }

    /// A free of the block whose extent starts at `offset`: clears its live bit if it is a
    /// cached-size extent.
    #[inline]
    pub fn free(&self, offset: u64) -> CacheFree {
        let names_live = |e| starts_at(e, offset);
        match live_bit::clear(self.slot(offset), names_live, |e| names(e, offset)) {
            Cleared::Now(e) => CacheFree::Taken(len_of(e)),
            Cleared::Already => CacheFree::Refused(FreeError::DoubleFree),
            Cleared::NotNamed => CacheFree::NotCached,
        }
    }

    /// Whether the table names the extent at `offset` as a live block.
    #[inline]
    pub fn names_live(&self, offset: u64) -> bool {
        let e = self.slot(offset).load(Ordering::Acquire);
        names(e, offset) && e & LIVE != 0
    }

    /// The length of the extent at `offset` if the table names it: `Some(Some(len))` while
    /// its block is live, `Some(None)` while it waits in a lane; `None`: ask the heap.
    #[inline]
    pub fn named_len(&self, offset: u64) -> Option<Option<u64>> {
        let e = self.slot(offset).load(Ordering::Acquire);
        names(e, offset).then(|| (e & LIVE != 0).then(|| len_of(e)))
    }

    /// The length of the extent at `offset` if the table names it freed (in a lane or a
    /// stash, or being taken out of one).
    pub fn freed_len(&self, offset: u64) -> Option<u64> {
        let e = self.slot(offset).load(Ordering::Acquire);
        (names(e, offset) && e & LIVE == 0).then(|| len_of(e))
    }

    /// Puts the freed extent `[offset, offset + len)` (`free` returned `Taken(len)`) in this
    /// thread's lane; fills `evicted` with what the lane gives back to the heap to make room.
    pub fn push(&self, offset: u64, len: u64, evicted: &mut Evicted<PUSH_EVICTS>) {
        let slot = self.lane(Lane::of_this_thread());
        self.push_held(Held(slot.cache.lock()), offset, len, evicted);
    }

    /// `push` into the lane `try_push` found full and still holds.
    pub fn push_held(
        &self,
        lane: Held<'_>,
        offset: u64,
        len: u64,
        evicted: &mut Evicted<PUSH_EVICTS>,
    ) {
        let mut lane = lane.0;
        let bin = bin_floor(len);
        let full = |lane: &LaneCache| lane.bins[bin].n as usize == BIN_SLOTS;
        let over = |lane: &LaneCache| len > lane.figures.room;
        if full(&lane) || over(&lane) {
            let (give, bytes) = lane.give_older_half(bin, evicted);
            lane.figures.gone(give, bytes);
        }
        if full(&lane) || over(&lane) {
            // Still no room (a budget smaller than this bin's extents): this one goes back too
            // (a free all the same).
            evicted.push(offset);
            lane.figures.frees += 1;
            lane.figures.given_back += 1;
            return;
        }
        let put = lane.put(offset, len);
        debug_assert!(put, "the bin has room");
        lane.figures.put(len);
    }

    /// `push` without waiting and without giving anything back: `Busy` (nothing done) if this
    /// thread has no lane yet or its lane is busy (the caller then `push`es), `Full` with the
    /// lane still held if the extent's bin or the lane's budget is full (the caller then
    /// `push_held`s: no unlock and lock again, and no call on this path but tail calls). The
    /// path of almost every free of a cached-size block.
    #[inline(always)]
    pub fn try_push(&self, offset: u64, len: u64) -> Pushed<'_> {
        let Some(mut cache) = self.own_lane().cache.try_lock() else {
            return Pushed::Busy;
        };
        if len > cache.figures.room || !cache.put(offset, len) {
            return Pushed::Full(Held(cache));
        }
        cache.figures.put(len);
        Pushed::Done
    }

    /// This thread's lane (`Lane` values are below `LANES`; the mask spares a bounds check),
    /// which `own_lane` finds from now on.
    #[inline(always)]
    fn lane(&self, lane: Lane) -> &LaneSlot {
        let i = lane.0 as usize % LANES;
        lane_offset::set(i * SLOT_BYTES);
        &self.lanes[i]
    }

    /// This thread's lane for the paths that do not wait, or the stand-in whose lock is always
    /// held (`lanes[LANES]`) before its first `lane`: no test of its own.
    #[inline(always)]
    fn own_lane(&self) -> &LaneSlot {
        let offset = lane_offset::get();
        debug_assert!(offset % SLOT_BYTES == 0 && offset <= STAND_IN_WORD);
        let at = self.lanes.as_ptr().cast::<u8>().wrapping_add(offset);
        // SAFETY: the word is `i * SLOT_BYTES` for a slot `i <= LANES` (only `lane`, with
        // `i < LANES`, and its initial value, `i == LANES`, write it), and there are
        // `LANES + 1` slots: `at` is slot `i`'s.
        unsafe { &*at.cast::<LaneSlot>() }
    }

    /// The lanes, without the stand-in.
    #[inline]
    fn real_lanes(&self) -> &[LaneSlot] {
        &self.lanes[..LANES]
    }

    /// A freed extent of at least `want` bytes (`MIN_LEN..MAX_LEN`) from this thread's lane
    /// (`LaneCache::take_or_own_bin`): `(offset, length)`; its live bit stays clear until
    /// `revive`.
    pub fn pop(&self, want: u64) -> Option<(u64, u64)> {
        let slot = self.lane(Lane::of_this_thread());
        let mut cache = slot.cache.lock();
        let found = cache.take_or_own_bin(want)?;
        cache.figures.taken(found.1);
        drop(cache);
        Some(found)
    }

    /// `pop` without waiting and without searching a bin (`LaneCache::take`): `None` also when
    /// this thread has no lane yet or its lane is busy (the caller then `pop`s). The path of
    /// almost every cached-size request.
    ///
    /// The third value: the lane's lock may have a sleeper, whom the caller wakes with
    /// `wake_own_lane` once it is done (last, so that its hit path calls nothing in between).
    #[inline(always)]
    pub fn try_pop(&self, want: u64) -> Option<(u64, u64, bool)> {
        let mut cache = self.own_lane().cache.try_lock()?;
        let found = cache.take(want)?;
        cache.figures.taken(found.1);
        Some((found.0, found.1, cache.unlock_unwoken()))
    }

    /// Wakes a thread waiting for this thread's lane (`try_pop` said one may be).
    #[cold]
    pub fn wake_own_lane(&self) {
        self.own_lane().cache.wake_one();
    }

    /// Sets the live bit of the extent `[offset, offset + len)` `pop` returned, its header
    /// written: one store (`live_bit::set`) of the entry it had, as the thread that took it
    /// out of its lane is the entry's only writer until then.
    #[inline(always)]
    pub fn revive(&self, offset: u64, len: u64) {
        let slot = self.slot(offset);
        // Its own entry, read back (host memory): cheaper than making it again.
        let cleared = slot.load(Ordering::Relaxed);
        debug_assert_eq!(cleared, entry(offset, len, false));
        live_bit::set(slot, cleared);
    }

    /// Takes the freed extent at `offset` out of whichever lane holds it, for the caller to
    /// give back to the heap (a block behind it grows into its space); false if no lane holds
    /// it (no freed extent there, or another thread is taking it).
    pub fn withdraw(&self, offset: u64) -> bool {
        let e = self.slot(offset).load(Ordering::Acquire);
        if !names(e, offset) || e & LIVE != 0 {
            return false;
        }
        let len = len_of(e);
        for slot in self.real_lanes() {
            let mut lane = slot.cache.lock();
            if lane.remove_extent(offset, len) {
                lane.figures.gone(1, len);
                return true;
            }
        }
        false
    }

    /// Takes up to `N` extents out of lane `lane` into `evicted`; true once the lane is empty.
    /// (In parts: a whole lane's `LANE_SLOTS` offsets would make a 6 KiB stack frame on the
    /// path of a request that found the tier full.)
    pub fn take_lane<const N: usize>(&self, lane: usize, evicted: &mut Evicted<N>) -> bool {
        let slot = &self.real_lanes()[lane];
        let mut lane = slot.cache.lock();
        let first = evicted.n;
        let (emptied, bytes) = lane.take_into(evicted);
        lane.figures.gone(evicted.n - first, bytes);
        emptied
    }

    /// The lanes' figures, summed (each lane's read under its lock): bytes in the bins,
    /// blocks handed out from them and blocks freed into them.
    fn figures(&self) -> (u64, u64, u64) {
        self.real_lanes().iter().fold((0, 0, 0), |sum, l| {
            let lane = l.cache.lock();
            let f = lane.figures;
            let waiting: u64 = lane.bins.iter().map(|b| b.n as u64).sum();
            let handed_out = f.frees.wrapping_sub(f.given_back).wrapping_sub(waiting);
            let bytes = self.lane_budget - f.room;
            (sum.0 + bytes, sum.1 + handed_out, sum.2 + f.frees)
        })
    }

    /// Bytes of freed extents waiting in the lanes.
    pub fn cached_bytes(&self) -> u64 {
        self.figures().0
    }

    /// Blocks handed out from the lanes, and freed into them, so far.
    pub fn counts(&self) -> (u64, u64) {
        let (_, allocations, frees) = self.figures();
        (allocations, frees)
    }

    /// Takes every lane lock and keeps it (`fork` prepare handler).
    pub fn lock_all(&self) {
        for lane in self.real_lanes() {
            core::mem::forget(lane.cache.lock());
        }
    }

    /// Releases the locks `lock_all` kept.
    pub fn unlock_all(&self) {
        for lane in self.real_lanes() {
            // SAFETY: `lock_all` of this same fork took the lock and forgot its guard.
            unsafe { lane.cache.force_unlock() };
        }
    }
}

impl Drop for ExtentCache {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length; nothing uses it any more.
        unsafe { os::unmap(self.table.as_ptr().cast(), map_bytes(self.buckets)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_bound_their_extents() {
        for len in (MIN_LEN..MAX_LEN).step_by(16) {
            let floor = bin_floor(len);
            assert_eq!(
                floor,
                bin_floor_of(len),
                "{len}: the table is the definition"
            );
            assert!(floor < BINS);
            assert!(bin_low(floor) <= len, "{len} in bin {floor}");
            if floor + 1 < BINS {
                assert!(len < bin_low(floor + 1), "{len} in bin {floor}");
            }
            let ceil = bin_ceil(len);
            assert!(
                ceil == 0 || bin_low(ceil - 1) < len,
                "{len}: bin {ceil} is the first"
            );
            if ceil < BINS {
                // Every extent of the window's bins is long enough, and less than a quarter
                // too long.
                assert!(bin_low(ceil) >= len);
                let past = (ceil + WINDOW as usize).min(BINS);
                assert!(bin_low(past) <= len + len / 4, "{len}: bins {ceil}..{past}");
            }
        }
        assert_eq!(bin_ceil(MIN_LEN), 0);
        assert_eq!(bin_ceil(MAX_LEN - 16), BINS, "no bin holds it whole");
    }

    /// A request takes the newest extent of the first bin of its window that holds one, and
    /// finds none past the window; the map follows the bins.
    #[test]
    fn a_request_takes_from_the_first_bin_of_its_window_that_holds_one() {
        let mut lane = LaneCache::EMPTY;
        let want = 20_000;
        let ceil = bin_ceil(want);
        let low = |k: usize| bin_low(ceil + k);
        // Two extents three bins up, one six up, one a bin below (too short for some of its
        // lengths), one past the window.
        assert!(lane.put(4096, low(3)));
        assert!(lane.put(8192, low(3) + 16));
        assert!(lane.put(12288, low(6)));
        assert!(lane.put(16384, bin_low(ceil - 1)));
        assert!(lane.put(20480, low(WINDOW as usize)));
        let taken = |lane: &mut LaneCache| lane.take(want).map(|e| e.0);
        assert_eq!(taken(&mut lane), Some(8192), "the newest of the first bin");
        assert_eq!(taken(&mut lane), Some(4096));
        assert_eq!(
            lane.nonempty[(ceil + 3) / 64] >> ((ceil + 3) % 64) & 1,
            0,
            "bin emptied"
        );
        assert_eq!(taken(&mut lane), Some(12288));
        assert_eq!(taken(&mut lane), None, "below and past the window");
        assert_eq!(lane.take(bin_low(ceil - 1)).map(|e| e.0), Some(16384));
        for k in 0..BIN_SLOTS as u64 {
            assert!(lane.put(65536 + 4096 * k, MAX_LEN - 4096));
        }
        assert!(!lane.put(1 << 20, MAX_LEN - 4096), "a full bin");
        assert_eq!(
            lane.take(MAX_LEN - 4096 - 16).map(|e| e.0),
            Some(65536 + 4096 * 7)
        );
        lane.remove(BINS - 1, 0..BIN_SLOTS - 1);
        assert_eq!(lane.nonempty[(BINS - 1) / 64], 0, "the last bin emptied");
    }

    #[test]
    fn a_second_free_is_refused_and_a_freed_extent_comes_back() {
        let cache = ExtentCache::new(1 << 20).unwrap();
        let (a, b) = (4096 + 32, 3 * 4096);
        cache.adopt(a, 5000 & !15);
        cache.adopt(b, 8192);
        assert!(
            matches!(cache.free(a + 16), CacheFree::NotCached),
            "not a start"
        );
        assert!(matches!(cache.free(a), CacheFree::Taken(4992)));
        assert!(matches!(
            cache.free(a),
            CacheFree::Refused(FreeError::DoubleFree)
        ));
        assert_eq!(
            (cache.named_len(a), cache.named_len(b)),
            (Some(None), Some(Some(8192)))
        );
        let mut evicted = Evicted::new();
        cache.push(a, 4992, &mut evicted);
        assert_eq!(evicted.n, 0);
        let mut all = Evicted::<4>::new();
        assert_eq!(cache.cached_bytes(), 4992);
        assert_eq!(cache.pop(5000), None, "4992 bytes do not hold 5000");
        assert_eq!(cache.pop(4992 - 128 * 2), Some((a, 4992)), "two bins up");
        cache.revive(a, 4992);
        assert!(matches!(cache.free(a), CacheFree::Taken(4992)));
        cache.push(a, 4992, &mut evicted);
        assert_eq!(cache.pop(4096), None, "past the window");
        assert_eq!(
            cache.pop(4096 + 16),
            Some((a, 4992)),
            "the last bin of the window"
        );
        cache.revive(a, 4992);
        assert!(matches!(cache.free(a), CacheFree::Taken(4992)));
        cache.push(a, 4992, &mut evicted);
        assert_eq!(
            cache.pop(4992),
            Some((a, 4992)),
            "the same size, from its own bin"
        );
        cache.revive(a, 4992);
        assert!(matches!(cache.free(a), CacheFree::Taken(4992)));
        cache.push(a, 4992, &mut evicted);
        assert!(cache.take_lane(Lane::of_this_thread().0 as usize, &mut all));
        assert_eq!(all.as_slice(), &[a]);
        assert_eq!(cache.cached_bytes(), 0);
        cache.forget(a);
        assert!(matches!(cache.free(a), CacheFree::NotCached));
    }

    #[test]
    fn a_lane_is_taken_in_parts() {
        let cache = ExtentCache::new(64 << 20).unwrap();
        let mut evicted = Evicted::new();
        // Five extents in three bins.
        let extents = [
            (8192, 4096),
            (16384, 4096),
            (32768, 8192),
            (65536, 8192),
            (98304, 12288),
        ];
        for &(o, len) in &extents {
            cache.adopt(o, len);
            assert!(matches!(cache.free(o), CacheFree::Taken(_)));
            cache.push(o, len, &mut evicted);
        }
        assert_eq!(evicted.n, 0);
        let lane = Lane::of_this_thread().0 as usize;
        let mut taken = std::vec::Vec::new();
        let mut parts = 0;
        loop {
            let mut part = Evicted::<2>::new();
            let emptied = cache.take_lane(lane, &mut part);
            taken.extend_from_slice(part.as_slice());
            parts += 1;
            if emptied {
                break;
            }
        }
        taken.sort_unstable();
        assert_eq!(taken, extents.map(|(o, _)| o));
        assert_eq!(parts, 3);
        assert_eq!(cache.cached_bytes(), 0);
    }

    /// A bin's worth of 4 KiB extents and one more, each allocated and freed (not yet put in
    /// a lane): their offsets.
    fn freed_bin_and_one(cache: &ExtentCache) -> std::vec::Vec<u64> {
        let offsets: std::vec::Vec<u64> = (1..=BIN_SLOTS as u64 + 1).map(|i| i * 8192).collect();
        for &o in &offsets {
            cache.adopt(o, 4096);
            assert!(matches!(cache.free(o), CacheFree::Taken(4096)));
        }
        offsets
    }

    /// What a bin that was full when `offsets`' last came gives back (`freed_bin_and_one`):
    /// its older half; the newer half and the last stay.
    fn gave_its_older_half_back(
        cache: &ExtentCache,
        evicted: &Evicted<PUSH_EVICTS>,
        offsets: &[u64],
    ) {
        assert_eq!(evicted.as_slice(), &offsets[..BIN_SLOTS / 2]);
        assert_eq!(cache.cached_bytes(), 4096 * (BIN_SLOTS as u64 / 2 + 1));
    }

    #[test]
    fn a_full_bin_gives_its_older_half_back() {
        let cache = ExtentCache::new(64 << 20).unwrap();
        let mut evicted = Evicted::new();
        let offsets = freed_bin_and_one(&cache);
        for &o in &offsets {
            cache.push(o, 4096, &mut evicted);
        }
        gave_its_older_half_back(&cache, &evicted, &offsets);
    }

    /// A thread without a lane yet indexes the stand-in lane, whose lock is always held: its
    /// paths that do not wait do nothing (no extent lands where no lane would take it out),
    /// and its waiting paths give it a lane.
    #[test]
    fn a_thread_without_a_lane_finds_the_stand_in_held() {
        let cache = ExtentCache::new(64 << 20).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(
                    lane_offset::get(),
                    STAND_IN_WORD,
                    "a new thread has no lane"
                );
                cache.adopt(8192, 4096);
                assert!(matches!(cache.free(8192), CacheFree::Taken(4096)));
                assert!(matches!(cache.try_push(8192, 4096), Pushed::Busy));
                assert_eq!(cache.try_pop(4096), None);
                let mut evicted = Evicted::new();
                cache.push(8192, 4096, &mut evicted);
                let mine = Lane::of_this_thread().0 as usize;
                assert_eq!(
                    lane_offset::get(),
                    mine * SLOT_BYTES,
                    "the waiting path's lane"
                );
                assert_eq!(
                    cache.try_pop(4096).map(|(o, l, _)| (o, l)),
                    Some((8192, 4096))
                );
            });
        });
        assert!(
            cache.lanes[LANES].cache.try_lock().is_none(),
            "the stand-in stays held"
        );
    }

    /// A free that finds its bin full without waiting (`try_push`) keeps the lane and gives
    /// the bin's older half back (`push_held`), as `push` does, and lets the lane go.
    #[test]
    fn a_full_bin_found_without_waiting_gives_its_older_half_back() {
        let cache = ExtentCache::new(64 << 20).unwrap();
        let mut evicted = Evicted::new();
        let offsets = freed_bin_and_one(&cache);
        // The waiting path first: this thread then has a lane.
        cache.push(offsets[0], 4096, &mut evicted);
        for &o in &offsets[1..BIN_SLOTS] {
            assert!(matches!(cache.try_push(o, 4096), Pushed::Done));
        }
        let last = offsets[BIN_SLOTS];
        match cache.try_push(last, 4096) {
            Pushed::Full(lane) => cache.push_held(lane, last, 4096, &mut evicted),
            _ => panic!("the bin is full"),
        }
        gave_its_older_half_back(&cache, &evicted, &offsets);
        let free = cache
            .real_lanes()
            .iter()
            .all(|l| l.cache.try_lock().is_some());
        assert!(free, "no lane left held");
    }
}
