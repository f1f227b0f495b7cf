//! The reserve of a private device tier (`cxl:path=…`, `pmr:path=…`, any device tier whose
//! region is its own, not a share of the pool): what a profile records of it and what the
//! next run of the workload makes ready at start.
//!
//! - **Recording**: while a profile is active, every extent the tier cuts from its free space
//!   (a slab, a block outside the slabs: `DeviceTier::alloc_extent`) is noted
//!   (`device::reserve_use::note_carved`, which owns these counts) with the tier's use after
//!   the cut; the peak of that use and when it was reached are what the run records.
//! - **The reserve**: at start, the estimate (the p90 of the recorded peaks, capped by
//!   `TIERMALLOC_PROFILE_MAX`, less what the tier already holds) is made present in the free
//!   space the heap will cut from first, the top of the region down
//!   (`DeviceTier::with_free_pages_from_top`), before the program runs: its first allocations
//!   then take no page fault. On a file in /dev/shm (shmem) and on anonymous memory the pages
//!   are put in place by userfaultfd (`CopyFill::map_free_space`), which takes no fault at
//!   all; elsewhere by `MADV_POPULATE_WRITE`, whose faults the kernel counts as the process's,
//!   said in one line at exit. A PCI BAR is mapped whole by the kernel: nothing to do. No byte
//!   of the device changes, and nothing is written to it: a persistent tier recovers exactly as
//!   it would have, and a reserve never used leaves nothing behind.
//! - **How good the estimate was**: `reserved` (bytes made present), `reserve_used` (pages of
//!   the reserve the tier has cut from, once each), `reserve_miss` (pages outside it the tier
//!   cut from for the first time while the profile was active), per page of the region, in two
//!   bitmaps (present at start, cut since).
//!
//! `start`, `say_fallbacks` and `report` run at start and exit, where allocating is allowed;
//! the filling itself, under the tier's heap lock, allocates nothing (the host allocator may
//! be that tier).

use super::copy_fill::CopyFill;
use crate::device::reserve_use::{
    mark, TierReserve, BY_MAPPED_WHOLE, BY_POPULATE, BY_USERFAULTFD, RESERVES,
};
pub(crate) use crate::device::reserve_use::{peaks, KINDS};
use crate::device::{self, DeviceTier};
use crate::kind::Kind;
use crate::os::{self, PAGE_SIZE};
use core::sync::atomic::Ordering;

/// The private device tiers this process opened, with their reserve state.
fn private_tiers() -> impl Iterator<Item = (usize, &'static DeviceTier, &'static TierReserve)> {
    KINDS.iter().enumerate().filter_map(|(i, &kind)| {
        let tier = device::get(kind).filter(|t| t.is_private())?;
        Some((i, tier, &RESERVES[i]))
    })
}

/// Starts recording every private device tier, and makes `estimates[i]` bytes (for kind
/// `KINDS[i]`; 0: none) of its free space present. Problems are said in one line each, naming
/// the profile `name`; the tier runs on without (that part of) its reserve.
pub(crate) fn start(name: &str, estimates: [u64; 3]) {
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
            fill(name, KINDS[i], tier, r, want);
        }
        r.active.store(true, Ordering::Release);
    }
}

/// Makes `want` bytes of `tier`'s free space present (see the module comment).
fn fill(name: &str, kind: Kind, tier: &DeviceTier, r: &TierReserve, want: u64) {
    let started = os::coarse_now_ns();
    let faults_before = super::reserve::thread_minflt();
    let mut copier = match CopyFill::for_shared() {
        Ok(c) => Some(c),
        Err(e) => {
            r.refused_errno.store(e as u32, Ordering::Relaxed);
            None
        }
    };
    let (base, _) = tier.region_span();
    let words = r.words.load(Ordering::Relaxed);
    // SAFETY: the bitmap was mapped above with `words` words and lives for the process.
    let filled = unsafe { core::slice::from_raw_parts(r.filled.load(Ordering::Relaxed), words) };
    let mapped_whole = tier.mapped_whole();
    let named = tier.with_free_pages_from_top(want, |at, len| {
        if mapped_whole {
            r.filled_by.store(BY_MAPPED_WHOLE, Ordering::Relaxed);
        } else if r.populate_errno.load(Ordering::Relaxed) != 0 {
            return; // populating failed once: the rest faults in as it is used
        } else if let Some(c) = &copier {
            match c.map_free_space(at, len) {
                Ok(()) => r.filled_by.store(BY_USERFAULTFD, Ordering::Relaxed),
                Err(e) => {
                    // Not shmem nor anonymous memory (EINVAL), or refused partway: populated.
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
            r.reserved.fetch_add(len as u64, Ordering::Relaxed);
        }
    });
    r.fill_faults.store(super::reserve::thread_minflt() - faults_before, Ordering::Relaxed);
    r.fill_ns.store(os::coarse_now_ns() - started, Ordering::Relaxed);
    if named.is_some_and(|n| n < want) && crate::config::get().verbose {
        os::say(format_args!(
            "tiermalloc: profile {name}: tier '{}' has {} B of free space for a reserve of \
             {want} B",
            kind.name(),
            named.unwrap_or(0)
        ));
    }
}

/// `MADV_POPULATE_WRITE` on `[at, at + len)`, free space of a tier's shared mapping (it
/// changes no byte); a failure is kept to be said at exit.
fn populate(r: &TierReserve, at: usize, len: usize) {
    // SAFETY: pages of the tier's mapping that no one uses (free space, under the heap lock).
    if unsafe { libc::madvise(at as *mut _, len, libc::MADV_POPULATE_WRITE) } == 0 {
        r.filled_by.store(BY_POPULATE, Ordering::Relaxed);
    } else {
        r.populate_errno.store(os::errno() as u32, Ordering::Relaxed);
    }
}

/// At exit: says how a reserve made with faults was made, and what stopped one.
pub(crate) fn say_fallbacks(name: &str) {
    for (i, r) in RESERVES.iter().enumerate() {
        let kind = KINDS[i].name();
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
    for (i, r) in RESERVES.iter().enumerate() {
        if !r.active.load(Ordering::Acquire) {
            continue;
        }
        let by = match r.filled_by.load(Ordering::Relaxed) {
            BY_USERFAULTFD => "userfaultfd",
            BY_POPULATE => "MADV_POPULATE_WRITE",
            BY_MAPPED_WHOLE => "the kernel's whole mapping",
            _ => "nothing",
        };
        os::say(format_args!(
            "tiermalloc: {:<5} profile {name}: reserved {} B, reserve_used {} B, reserve_miss \
             {} B, peak {} B after {} ms, made present in {} ms by {by}, {} faults",
            KINDS[i].name(),
            r.reserved.load(Ordering::Relaxed),
            r.used.load(Ordering::Relaxed),
            r.miss.load(Ordering::Relaxed),
            r.peak.load(Ordering::Relaxed),
            r.peak_at_ns.load(Ordering::Relaxed).saturating_sub(started_ns) / 1_000_000,
            r.fill_ns.load(Ordering::Relaxed) / 1_000_000,
            r.fill_faults.load(Ordering::Relaxed),
        ));
    }
}
