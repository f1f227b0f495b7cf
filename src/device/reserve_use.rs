//! What a workload profile counts of a private device tier's use: which pages of the region
//! its reserve made present (`profile::device_reserve` fills them) and which the heap has cut
//! from since, the tier's peak use and when, and how the reserve was made. Kept here, under the
//! device, because the heap's cuts report to it (`note_carved`, from `DeviceTier::alloc_extent`
//! under the heap lock): the profile reads it, and the device never calls up into the profile.
//!
//! The reserve is made present by a thread (`profile::device_reserve`) while the program runs;
//! `wait_for_fill` keeps the heap's new cuts behind it (as the DRAM reserve's `take` waits for
//! its pre-fault thread), so the workload's first allocations neither fault nor wait for the
//! whole fill, only for the step in progress when they catch up with it.
//!
//! Invariants: a tier's bitmaps are set before `active`, and never freed (the process's life);
//! `used <= reserved`; `fill_state` goes `FILL_IDLE` -> `FILL_RUNNING` (once the fill thread
//! is created; never if it is not) -> `FILL_ENDED` (when that thread ends, whatever ends it;
//! then `fill_steps` is bumped and its waiters woken), or straight to `FILL_ENDED` if the
//! thread ends first: never back, so no cut waits for a thread that has ended. `note_carved`
//! and `wait_for_fill` allocate nothing.

use crate::kind::Kind;
use crate::os::{self, PAGE_SIZE};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// The device kinds, by `Kind as usize - 1`.
pub(crate) const KINDS: [Kind; 3] = [Kind::Cxl, Kind::Cmb, Kind::Pmr];

/// How a reserve was made present (`TierReserve::filled_by`).
pub(crate) const BY_NOTHING: u32 = 0;
pub(crate) const BY_USERFAULTFD: u32 = 1;
pub(crate) const BY_POPULATE: u32 = 2;
pub(crate) const BY_MAPPED_WHOLE: u32 = 3;

/// `TierReserve::fill_state`.
pub(crate) const FILL_IDLE: u32 = 0;
pub(crate) const FILL_RUNNING: u32 = 1;
pub(crate) const FILL_ENDED: u32 = 2;

pub(crate) struct TierReserve {
    /// A profile records this tier (its bitmaps are set).
    pub(crate) active: AtomicBool,
    /// One bit per page of the region: made present at start (`filled`), cut from since the
    /// profile started (`seen`).
    pub(crate) filled: AtomicPtr<AtomicU64>,
    pub(crate) seen: AtomicPtr<AtomicU64>,
    /// Words in each bitmap.
    pub(crate) words: AtomicUsize,
    pub(crate) reserved: AtomicU64,
    pub(crate) used: AtomicU64,
    pub(crate) miss: AtomicU64,
    /// The tier's use (bytes of extents) at its highest, and `os::coarse_now_ns` then.
    pub(crate) peak: AtomicU64,
    pub(crate) peak_at_ns: AtomicU64,
    /// The word of this process's live profile record that peers read as this tier's peak
    /// (a shared mapping; null when there is none).
    pub(crate) live_peak: AtomicPtr<AtomicU64>,
    /// Making the reserve present: wall nanoseconds, the thread's minor faults, how, and the
    /// errno userfaultfd or populating was refused with (0: none).
    pub(crate) fill_ns: AtomicU64,
    pub(crate) fill_faults: AtomicU64,
    pub(crate) filled_by: AtomicU32,
    pub(crate) refused_errno: AtomicU32,
    pub(crate) populate_errno: AtomicU32,
    /// Whether the fill thread is making this tier's reserve present (in process
    /// `filler_pid`): a `FILL_*`.
    pub(crate) fill_state: AtomicU32,
    pub(crate) filler_pid: AtomicU64,
    /// Bumped after every step of the fill thread (and when it ends): the word a waiting cut
    /// sleeps on.
    pub(crate) fill_steps: AtomicU32,
    /// The fill found no free page left before it made its estimate present.
    pub(crate) short: AtomicBool,
}

impl TierReserve {
    const fn new() -> TierReserve {
        TierReserve {
            active: AtomicBool::new(false),
            filled: AtomicPtr::new(core::ptr::null_mut()),
            seen: AtomicPtr::new(core::ptr::null_mut()),
            words: AtomicUsize::new(0),
            reserved: AtomicU64::new(0),
            used: AtomicU64::new(0),
            miss: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            peak_at_ns: AtomicU64::new(0),
            live_peak: AtomicPtr::new(core::ptr::null_mut()),
            fill_ns: AtomicU64::new(0),
            fill_faults: AtomicU64::new(0),
            filled_by: AtomicU32::new(BY_NOTHING),
            refused_errno: AtomicU32::new(0),
            populate_errno: AtomicU32::new(0),
            fill_state: AtomicU32::new(FILL_IDLE),
            filler_pid: AtomicU64::new(0),
            fill_steps: AtomicU32::new(0),
            short: AtomicBool::new(false),
        }
    }
}

pub(crate) static RESERVES: [TierReserve; 3] =
    [TierReserve::new(), TierReserve::new(), TierReserve::new()];

pub(crate) fn of(kind: Kind) -> Option<&'static TierReserve> {
    RESERVES.get((kind as usize).wrapping_sub(1))
}

/// A device tier's reserve figures for its statistics: (reserved, used, miss), zeros when no
/// profile records it.
#[derive(Clone, Copy, Default)]
pub(crate) struct Figures {
    pub reserved: u64,
    pub used: u64,
    pub miss: u64,
}

pub(crate) fn figures(kind: Kind) -> Figures {
    of(kind).map_or_else(Figures::default, |r| Figures {
        reserved: r.reserved.load(Ordering::Relaxed),
        used: r.used.load(Ordering::Relaxed),
        miss: r.miss.load(Ordering::Relaxed),
    })
}

/// Sets bits `[first, first + n)` of `bitmap`.
pub(crate) fn mark(bitmap: &[AtomicU64], first: usize, n: usize) {
    for_words(first, n, |w, mask| {
        if let Some(word) = bitmap.get(w) {
            word.fetch_or(mask, Ordering::Relaxed);
        }
    });
}

/// Calls `f(word, mask)` for the words covering bits `[first, first + n)`.
fn for_words(first: usize, n: usize, mut f: impl FnMut(usize, u64)) {
    let end = first + n;
    let mut bit = first;
    while bit < end {
        let (w, b) = (bit / 64, bit % 64);
        let take = (64 - b).min(end - bit);
        let mask = if take == 64 {
            u64::MAX
        } else {
            ((1u64 << take) - 1) << b
        };
        f(w, mask);
        bit += take;
    }
}

/// Tier `kind` cut the extent `[offset, offset + len)` from its free space; its use is now
/// `in_use` bytes. Counts the pages cut for the first time as used (in the reserve) or missed
/// (outside it), and raises the peak. Under the tier's heap lock; allocates nothing.
#[inline]
pub(crate) fn note_carved(kind: Kind, offset: u64, len: u64, in_use: u64) {
    let Some(r) = of(kind) else { return };
    if !r.active.load(Ordering::Acquire) {
        return;
    }
    if in_use > r.peak.load(Ordering::Relaxed) {
        r.peak.store(in_use, Ordering::Relaxed);
        r.peak_at_ns.store(os::coarse_now_ns(), Ordering::Relaxed);
        publish_peak(r, in_use);
    }
    let words = r.words.load(Ordering::Relaxed);
    // SAFETY: both bitmaps hold `words` words for the process's life (set before `active`).
    let (filled, seen) = unsafe {
        (
            core::slice::from_raw_parts(r.filled.load(Ordering::Relaxed), words),
            core::slice::from_raw_parts(r.seen.load(Ordering::Relaxed), words),
        )
    };
    let page = PAGE_SIZE as u64;
    let first = (offset / page) as usize;
    let n = ((offset + len).div_ceil(page) - offset / page) as usize;
    let (mut used, mut miss) = (0u64, 0u64);
    for_words(first, n, |w, mask| {
        let (Some(seen), Some(filled)) = (seen.get(w), filled.get(w)) else {
            return;
        };
        let new = mask & !seen.fetch_or(mask, Ordering::Relaxed);
        let in_reserve = new & filled.load(Ordering::Relaxed);
        used += in_reserve.count_ones() as u64;
        miss += (new & !in_reserve).count_ones() as u64;
    });
    if used > 0 {
        r.used.fetch_add(used * page, Ordering::Relaxed);
    }
    if miss > 0 {
        r.miss.fetch_add(miss * page, Ordering::Relaxed);
    }
}

/// Stores `peak` in `r`'s word of the live profile record, if there is one.
pub(crate) fn publish_peak(r: &TierReserve, peak: u64) {
    let word = r.live_peak.load(Ordering::Acquire);
    if !word.is_null() {
        // SAFETY: a word of the live record's shared mapping, which is never unmapped.
        unsafe { (*word).store(peak, Ordering::Relaxed) };
    }
}

/// Before tier `kind` cuts `len` bytes from its free space (without its heap lock: the fill
/// thread takes it per step): while its reserve is being made present, waits until the fill
/// has made at least as many bytes present as the heap has cut new pages since the profile
/// started, this cut included, so that the cut lands in pages made present (both go from the
/// top of the region down). A forked child has no fill thread: it never waits.
#[inline]
pub(crate) fn wait_for_fill(kind: Kind, len: u64) {
    let Some(r) = of(kind) else { return };
    while r.fill_state.load(Ordering::Acquire) == FILL_RUNNING {
        // Read before the figures: a step published after this read changes the word, so the
        // wait below returns at once instead of missing it.
        let steps = r.fill_steps.load(Ordering::Acquire);
        let cut = r.used.load(Ordering::Relaxed) + r.miss.load(Ordering::Relaxed);
        if cut.saturating_add(len) <= r.reserved.load(Ordering::Acquire)
            || r.fill_state.load(Ordering::Acquire) != FILL_RUNNING
            // SAFETY: getpid has no preconditions.
            || unsafe { libc::getpid() } as u64 != r.filler_pid.load(Ordering::Relaxed)
        {
            return;
        }
        crate::futex::wait_while_equal(&r.fill_steps, steps);
    }
}

/// The fill thread made another step of `r` present (or ended): wakes the cuts waiting.
pub(crate) fn fill_stepped(r: &TierReserve) {
    r.fill_steps.fetch_add(1, Ordering::Release);
    crate::futex::wake_all(&r.fill_steps);
}

/// The (peak, `os::coarse_now_ns` at the peak) of each device kind a profile recorded; zeros
/// for kinds it did not.
pub(crate) fn peaks() -> [(u64, u64); 3] {
    core::array::from_fn(|i| {
        let r = &RESERVES[i];
        if r.active.load(Ordering::Acquire) {
            (
                r.peak.load(Ordering::Relaxed),
                r.peak_at_ns.load(Ordering::Relaxed),
            )
        } else {
            (0, 0)
        }
    })
}
