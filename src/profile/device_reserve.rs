//! The reserve of a private device tier (`cxl:path=…`, `pmr:path=…`, any device tier whose
//! region is its own, not a share of the pool): what a profile records of it and what the
//! next run of the workload makes ready at start.
//!
//! - **Recording**: while a profile is active, every extent the tier cuts from its free space
//!   (a slab, a block outside the slabs: `DeviceTier::alloc_extent`) is noted
//!   (`device::reserve_use::note_carved`, which owns these counts) with the tier's use after
//!   the cut; the peak of that use and when it was reached are what the run records.
//! - **The reserve**: the estimate (the p90 of the recorded peaks, capped by
//!   `TIERMALLOC_PROFILE_MAX`, less what the tier already holds) is made present in the free
//!   space the heap will cut from first, the top of the region down
//!   (`DeviceTier::with_free_pages_below`) by a thread (`fill_thread`, started waiting before
//!   the tiers open: `helper_thread`) while the program runs: `main` does not wait for it. It
//!   works in steps of `STEP` bytes, each under the heap lock (the pages it names stay free
//!   until the step ends: a cut needs that lock); the heap's cuts wait behind it
//!   (`device::reserve_use::wait_for_fill`), so the workload's first allocations take no page
//!   fault and wait only when they catch up with the step in progress. At exit the thread is
//!   stopped after its step in progress (`stop_filling`). On a file in /dev/shm (shmem) and on
//!   anonymous memory the pages are put in place by userfaultfd (`CopyFill::map_free_space`), which
//!   takes no fault at all; elsewhere by `MADV_POPULATE_WRITE`, whose faults the kernel counts as
//!   the process's, said in one line at exit. A PCI BAR is mapped whole by the kernel: nothing to
//!   do. Making the pages present changes no byte of the device.
//! - **Slabs cut ahead**: the run records, per lane and size class, the most slabs it had in
//!   use at once (`record::SlabPeak`); the next run's fill thread, once its first step is
//!   present, cuts that many (the p90 of the recorded runs, within the reserve) before the
//!   workload asks (`DeviceTier::cut_slabs_ahead`, `device::slabs_ahead`), so that the first
//!   allocation of each class takes a slot without the heap lock. On a persistent heap these
//!   cuts write each slab's marker, as any slab's cut does: an empty slab is free space to a
//!   recovery (see `device::slabs_ahead`). They are the reserve's only device writes: a
//!   persistent tier recovers the same blocks as it would have, and a reserve never used
//!   leaves only free space behind (`tests/profile.rs`).
//! - **How good the estimate was**: `reserved` (bytes made present), `reserve_used` (pages of
//!   the reserve the tier has cut from, once each), `reserve_miss` (pages the tier cut from for
//!   the first time while the profile was active and the fill had not made present: outside
//!   the estimate, or cut before the fill reached them, e.g. by the library's own start-up),
//!   per page of the region, in two bitmaps (made present, cut since).
//!
//! `start`, `say_fallbacks` and `report` run at start and exit, where allocating is allowed;
//! the fill thread allocates nothing and says nothing (the host allocator may be the tier it
//! fills, whose lock it holds during a step).

use super::copy_fill::CopyFill;
use super::helper_thread::HelperThread;
use super::record::SlabPeak;
use crate::device::reserve_use::{
    fill_stepped, mark, publish_peak, TierReserve, BY_MAPPED_WHOLE, BY_POPULATE, BY_USERFAULTFD,
    FILL_ENDED, FILL_IDLE, FILL_RUNNING, RESERVES,
};
pub(crate) use crate::device::reserve_use::{peaks, KINDS};
use crate::device::slabs::{Lane, SLAB_BYTES};
use crate::device::{self, DeviceTier};
use crate::os::{self, PAGE_SIZE};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// The private device tiers this process opened, with their reserve state.
fn private_tiers() -> impl Iterator<Item = (usize, &'static DeviceTier, &'static TierReserve)> {
    KINDS.iter().enumerate().filter_map(|(i, &kind)| {
        let tier = device::get(kind).filter(|t| t.is_private())?;
        Some((i, tier, &RESERVES[i]))
    })
}

/// Bytes each tier's fill thread is to make present (by `KINDS` index).
static WANT: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
/// The slabs each tier's fill thread is to cut ahead, by `KINDS` index and lane-and-class key
/// (`slabs::Lane::key`): set by `start` before the thread is released.
static SLAB_TARGETS: [[AtomicU32; 256]; 3] = [const { [const { AtomicU32::new(0) }; 256] }; 3];
/// Set at exit: the fill thread stops after its step in progress.
static STOP: AtomicBool = AtomicBool::new(false);
/// Bytes made present per step, under the heap lock: what a cut that catches up with the fill
/// waits for at most (about 1 ms of CPU by `UFFDIO_COPY`, BENCHMARKS.md).
const STEP: u64 = 2 << 20;

/// Starts recording every private device tier, and releases the fill thread to make
/// `estimates[i]` bytes (for kind `KINDS[i]`; 0: none) of its free space present while the program
/// runs. Problems are said in one line each, naming the profile `name`; the tier runs on without
/// (that part of) its reserve.
pub(crate) fn start(name: &str, estimates: [u64; 3], slabs: &[SlabPeak]) {
    for p in slabs {
        if let Some(targets) = SLAB_TARGETS.get(p.device as usize) {
            targets[p.key as usize].store(p.slabs, Ordering::Relaxed);
        }
    }
    let mut any = false;
    for (i, tier, r) in private_tiers() {
        let (_, len) = tier.region_span();
        let words = (len / PAGE_SIZE).div_ceil(64);
        let (Some(filled), Some(seen)) =
            (os::map_anonymous(words * 8), os::map_anonymous(words * 8))
        else {
            os::say(format_args!(
                "tiermalloc: profile {name}: no host memory to record tier '{}'; its use is \
                 not recorded",
                KINDS[i].name()
            ));
            continue;
        };
        r.filled.store(filled.as_ptr().cast(), Ordering::Relaxed);
        r.seen.store(seen.as_ptr().cast(), Ordering::Relaxed);
        r.words.store(words, Ordering::Relaxed);
        let in_use = tier.stats().in_use;
        r.peak.store(in_use, Ordering::Relaxed);
        r.peak_at_ns.store(os::coarse_now_ns(), Ordering::Relaxed);
        // What the tier holds already (a persistent heap's live blocks) needs no reserve.
        let want = estimates[i].saturating_sub(in_use);
        if want > 0 {
            WANT[i].store(want, Ordering::Relaxed);
            // SAFETY: getpid has no preconditions.
            r.filler_pid
                .store(unsafe { libc::getpid() } as u64, Ordering::Relaxed);
            any = true;
        }
        r.active.store(true, Ordering::Release);
    }
    if any && !FILLER.was_started() {
        // `profile::spawn_early` found nothing to reserve before the tiers opened (a peer
        // started in between): the thread cannot be started now (`helper_thread` says why).
        os::say(format_args!(
            "tiermalloc: profile {name}: nothing was to be reserved in device tiers when the \
             process started; their reserve fills in as used"
        ));
    }
    if !any || !FILLER.is_waiting() {
        FILLER.dismiss();
        return;
    }
    FILLER.release();
    // The tiers' cuts wait for the fill from here; unless the thread has ended already.
    for (i, _, r) in private_tiers() {
        if WANT[i].load(Ordering::Relaxed) > 0 {
            let _ = r.fill_state.compare_exchange(
                FILL_IDLE,
                FILL_RUNNING,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }
}

/// Publishes each recorded tier's peak to `words` (by `KINDS` index: this process's live
/// record, which peers read), from now on; null words stop it.
pub(crate) fn publish_peaks_to(words: [*mut AtomicU64; 3]) {
    for (r, word) in RESERVES.iter().zip(words) {
        r.live_peak.store(word, Ordering::Release);
        if !word.is_null() && r.active.load(Ordering::Acquire) {
            publish_peak(r, r.peak.load(Ordering::Relaxed));
        }
    }
}

/// The fill thread, started waiting before the tiers open (`super::helper_thread`).
pub(crate) static FILLER: HelperThread = HelperThread::new();

/// Starts the fill thread, waiting (in the constructor, before the tiers open). Said in one
/// line if it cannot start; the reserves then fault in as used.
pub(crate) fn spawn_early() {
    if let Err(e) = FILLER.spawn(fill_thread) {
        os::say(format_args!(
            "tiermalloc: TIERMALLOC_PROFILE: cannot start the thread that makes device tiers' \
             reserves present: {}; they fault in as used",
            std::io::Error::from_raw_os_error(e)
        ));
    }
}

/// Marks `r`'s fill ended and wakes the cuts waiting for it.
fn end_fill(r: &TierReserve) {
    r.fill_state.store(FILL_ENDED, Ordering::Release);
    fill_stepped(r);
}

/// The fill thread: each tier's reserve in turn (see `fill`). Allocates nothing (the host
/// allocator may be the very tier it fills) and says nothing: what went wrong is kept for
/// `say_fallbacks` at exit.
extern "C" fn fill_thread(_: *mut libc::c_void) -> *mut libc::c_void {
    if !FILLER.wait_for_go() {
        return core::ptr::null_mut();
    }
    for (i, tier, r) in private_tiers() {
        let want = WANT[i].load(Ordering::Relaxed);
        if want > 0 {
            fill(i, tier, r, want);
            end_fill(r);
        }
    }
    core::ptr::null_mut()
}

/// Makes `want` bytes of `tier`'s free space present (see the module comment), in steps of
/// `STEP` bytes from the top of the region down, each under the heap lock (the free pages it
/// names stay free until it ends: a cut needs the lock), then published (`fill_stepped`) to
/// the cuts waiting in `wait_for_fill`. A page the heap cut before the fill reached it
/// (`wait_for_fill` lets a cut bigger than what is left of the fill go ahead, and a freed
/// block is cut again anywhere) is counted as missed, and the fill stops once what it made
/// present and what the heap missed cover `want`.
fn fill(i: usize, tier: &DeviceTier, r: &TierReserve, want: u64) {
    let started = os::coarse_now_ns();
    let faults_before = super::reserve::thread_minflt();
    let mut copier = match CopyFill::for_shared() {
        Ok(c) => Some(c),
        Err(e) => {
            r.refused_errno.store(e as u32, Ordering::Relaxed);
            None
        }
    };
    let (base, len) = tier.region_span();
    let words = r.words.load(Ordering::Relaxed);
    // SAFETY: the bitmap was mapped by `start` with `words` words and lives for the process.
    let filled = unsafe { core::slice::from_raw_parts(r.filled.load(Ordering::Relaxed), words) };
    let mapped_whole = tier.mapped_whole();
    // Everything at or above `below` has been made present or was not free when named.
    let mut below = base + len;
    let mut slabs = SlabsAhead::new(i, want);
    loop {
        let done = r.reserved.load(Ordering::Relaxed) + r.miss.load(Ordering::Relaxed);
        if done >= want || STOP.load(Ordering::Acquire) {
            break;
        }
        let mut lowest = below;
        let named = tier.with_free_pages_below(below, STEP.min(want - done), |at, len| {
            lowest = lowest.min(at);
            if mapped_whole {
                r.filled_by.store(BY_MAPPED_WHOLE, Ordering::Relaxed);
            } else if r.populate_errno.load(Ordering::Relaxed) != 0 {
                return; // populating failed once: the rest faults in as it is used
            } else if let Some(c) = &copier {
                match c.map_free_space(at, len) {
                    Ok(()) => r.filled_by.store(BY_USERFAULTFD, Ordering::Relaxed),
                    Err(e) => {
                        // Not shmem nor anonymous memory (EINVAL), or refused partway:
                        // populated.
                        r.refused_errno.store(e as u32, Ordering::Relaxed);
                        copier = None;
                        populate(r, at, len);
                    }
                }
            } else {
                populate(r, at, len);
            }
            if r.populate_errno.load(Ordering::Relaxed) == 0 {
                mark(filled, (at - base) / PAGE_SIZE, len / PAGE_SIZE);
                r.reserved.fetch_add(len as u64, Ordering::Release);
            }
        });
        fill_stepped(r);
        // Present pages are there now (from the top of the free space, where the heap cuts):
        // the slabs go into what the heap has not cut of them.
        slabs.cut_within(r, tier);
        r.fill_ns
            .store(os::coarse_now_ns() - started, Ordering::Relaxed);
        if r.populate_errno.load(Ordering::Relaxed) != 0 {
            break;
        }
        if named.unwrap_or(0) == 0 {
            // No free page left below: the tier has less free space than the reserve.
            r.short.store(true, Ordering::Relaxed);
            break;
        }
        below = lowest;
    }
    r.fill_faults.store(
        super::reserve::thread_minflt() - faults_before,
        Ordering::Relaxed,
    );
    r.fill_ns
        .store(os::coarse_now_ns() - started, Ordering::Relaxed);
}

/// The slabs `SLAB_TARGETS[i]` names, cut ahead by the fill thread for tier `KINDS[i]`, lane by
/// lane and class by class, at most `want` bytes of them in all: each only once the fill has
/// made present more than the heap has cut (as `reserve_use::wait_for_fill` asks of the
/// heap's own cuts), so that it lands in present pages; what does not fit yet is cut after a
/// later step.
struct SlabsAhead {
    i: usize,
    /// The next lane-and-class key to cut for, and how many more slabs may be cut.
    key: usize,
    budget: u32,
}

impl SlabsAhead {
    fn new(i: usize, want: u64) -> SlabsAhead {
        SlabsAhead {
            i,
            key: 0,
            budget: (want / SLAB_BYTES) as u32,
        }
    }

    /// Cuts the next slabs while they fit in what is present and not cut.
    fn cut_within(&mut self, r: &TierReserve, tier: &DeviceTier) {
        let room = || {
            let cut = r.used.load(Ordering::Relaxed) + r.miss.load(Ordering::Relaxed);
            cut + SLAB_BYTES <= r.reserved.load(Ordering::Acquire)
        };
        while self.key < 256 && self.budget > 0 && !STOP.load(Ordering::Acquire) {
            let target = SLAB_TARGETS[self.i][self.key].load(Ordering::Relaxed);
            let (lane, class) = Lane::of_key(self.key as u8);
            if target == 0 {
                self.key += 1;
            } else if !room() {
                return;
            } else if tier.cut_slabs_ahead(lane.0, class, target, 1) == 1 {
                self.budget -= 1;
            } else {
                self.key += 1; // at its target, or the tier is full
            }
        }
    }
}

/// The most slabs of each lane and class each private device tier had in use at once.
pub(crate) fn slab_peaks() -> Vec<SlabPeak> {
    let mut peaks = Vec::new();
    for (i, tier, r) in private_tiers() {
        if r.active.load(Ordering::Acquire) {
            tier.slab_peaks(|lane, class, slabs| {
                peaks.push(SlabPeak {
                    device: i as u8,
                    key: lane.key(class),
                    slabs,
                });
            });
        }
    }
    peaks
}

/// At exit, before the report and before the tiers close: stops the fill thread after its
/// step in progress, and waits for that (at most one `STEP`), so that the figures reported are
/// final and no step runs while a persistent heap is marked closed.
pub(crate) fn stop_filling() {
    STOP.store(true, Ordering::Release);
    for r in &RESERVES {
        loop {
            let steps = r.fill_steps.load(Ordering::Acquire);
            // SAFETY: getpid has no preconditions.
            let ours = unsafe { libc::getpid() } as u64 == r.filler_pid.load(Ordering::Relaxed);
            if !ours || r.fill_state.load(Ordering::Acquire) != FILL_RUNNING {
                break;
            }
            crate::futex::wait_while_equal(&r.fill_steps, steps);
        }
    }
}

/// `MADV_POPULATE_WRITE` on `[at, at + len)`, free space of a tier's shared mapping (it
/// changes no byte); a failure is kept to be said at exit.
fn populate(r: &TierReserve, at: usize, len: usize) {
    // SAFETY: pages of the tier's mapping that no one uses (free space, under the heap lock).
    if unsafe { libc::madvise(at as *mut _, len, libc::MADV_POPULATE_WRITE) } == 0 {
        r.filled_by.store(BY_POPULATE, Ordering::Relaxed);
    } else {
        r.populate_errno
            .store(os::errno() as u32, Ordering::Relaxed);
    }
}

/// At exit: says how a reserve made with faults was made, and what stopped one.
pub(crate) fn say_fallbacks(name: &str) {
    for (i, r) in RESERVES.iter().enumerate() {
        let kind = KINDS[i].name();
        if r.short.load(Ordering::Relaxed) && crate::config::get().verbose {
            os::say(format_args!(
                "tiermalloc: profile {name}: tier '{kind}' had {} B of free space for a \
                 reserve of {} B",
                r.reserved.load(Ordering::Relaxed),
                WANT[i].load(Ordering::Relaxed)
            ));
        }
        let e = r.populate_errno.load(Ordering::Relaxed);
        if e != 0 {
            os::say(format_args!(
                "tiermalloc: profile {name}: making tier '{kind}''s reserve present stopped: \
                 {}; the rest faulted in as used",
                std::io::Error::from_raw_os_error(e as i32)
            ));
        }
        let e = r.refused_errno.load(Ordering::Relaxed);
        if e != 0 && r.filled_by.load(Ordering::Relaxed) == BY_POPULATE {
            os::say(format_args!(
                "tiermalloc: profile {name}: userfaultfd refused tier '{kind}''s reserve ({}): \
                 it was populated with MADV_POPULATE_WRITE instead, whose page faults count \
                 in the process's",
                std::io::Error::from_raw_os_error(e as i32)
            ));
        }
    }
}

/// The statistics report's line for each device tier a profile records.
pub(crate) fn report(name: &str, started_ns: u64) {
    for (i, tier, r) in private_tiers() {
        if !r.active.load(Ordering::Acquire) {
            continue;
        }
        let cuts = tier.slab_cuts();
        let by = match r.filled_by.load(Ordering::Relaxed) {
            BY_USERFAULTFD => "userfaultfd",
            BY_POPULATE => "MADV_POPULATE_WRITE",
            BY_MAPPED_WHOLE => "the kernel's whole mapping",
            _ => "nothing",
        };
        os::say(format_args!(
            "tiermalloc: {:<5} profile {name}: reserved {} B, reserve_used {} B, reserve_miss \
             {} B, slabs_ahead {} ({} used), slabs_on_demand {}, peak {} B after {} ms, made \
             present in {} ms by {by}, {} faults",
            KINDS[i].name(),
            r.reserved.load(Ordering::Relaxed),
            r.used.load(Ordering::Relaxed),
            r.miss.load(Ordering::Relaxed),
            cuts.ahead,
            cuts.ahead_used,
            cuts.on_demand,
            r.peak.load(Ordering::Relaxed),
            r.peak_at_ns
                .load(Ordering::Relaxed)
                .saturating_sub(started_ns)
                / 1_000_000,
            r.fill_ns.load(Ordering::Relaxed) / 1_000_000,
            r.fill_faults.load(Ordering::Relaxed),
        ));
    }
}
