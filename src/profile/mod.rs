//! Workload profiles (seed 003): `TIERMALLOC_PROFILE=NAME` records the DRAM a workload used at
//! its peak and how long it took to get there; the next process of that name reserves that
//! much at start, pre-faulted off the critical path, and grows on demand beyond it.
//!
//! - `estimate`: how much to reserve, from live peers of the name, else the history, capped
//!   by `TIERMALLOC_PROFILE_MAX`;
//! - `record`: the records in `TIERMALLOC_PROFILE_DIR` (finished runs, live processes);
//! - `reserve`: the reserve the DRAM tier maps from, the pre-fault thread, and the use and
//!   peak it records.
//!
//! `start` runs from the library's constructor (`runtime`), `finish` from its destructor.
//! Every problem — a bad name, a bad cap, a directory that cannot be written, a reserve the
//! kernel refuses, pre-faulting that failed — is said in one line on stderr and the program
//! runs on without that part: nothing falls back silently. With `TIERMALLOC_VERBOSE=1` the
//! estimate and its source are printed too.

mod estimate;
mod record;
pub(crate) mod reserve;

use crate::config;
use crate::os::{self, LineBuf};
use crate::chunk::CHUNK_SIZE;
use core::fmt::Write;
use core::sync::atomic::Ordering;
use estimate::Source;
use std::sync::Mutex;

/// The active profile of this process.
struct Active {
    store: record::Store,
    live: Option<record::Live>,
    name: String,
    started_ns: u64,
    pid: u32,
}

static ACTIVE: Mutex<Option<Active>> = Mutex::new(None);

fn say(args: core::fmt::Arguments) {
    let mut line = LineBuf::new();
    let _ = line.write_fmt(args);
    let _ = line.write_str("\n");
    line.flush();
}

/// Reads `TIERMALLOC_PROFILE*`, reserves the estimate and starts recording.
pub(crate) fn start() {
    let started_ns = os::coarse_now_ns();
    let Some(name) = os::getenv(b"TIERMALLOC_PROFILE") else {
        return;
    };
    let shown = String::from_utf8_lossy(name);
    if !record::valid_name(name) {
        say(format_args!(
            "tiermalloc: TIERMALLOC_PROFILE={shown}: a profile name is 1 to 63 characters of \
             A-Z a-z 0-9 . _ - not starting with a dot; no profile"
        ));
        return;
    }
    let mut reserve_allowed = true;
    let max = match os::getenv(b"TIERMALLOC_PROFILE_MAX") {
        None => None,
        Some(v) => match config::parse_size(v) {
            Some(m) => Some(m),
            None => {
                say(format_args!(
                    "tiermalloc: TIERMALLOC_PROFILE_MAX={}: not a size (e.g. 512M, 2G); \
                     profile {shown} records but reserves nothing",
                    String::from_utf8_lossy(v)
                ));
                reserve_allowed = false;
                Some(0)
            }
        },
    };
    let Some(dir) = record::directory(os::getenv(b"TIERMALLOC_PROFILE_DIR")) else {
        say(format_args!(
            "tiermalloc: profile {shown}: no directory for its records (set \
             TIERMALLOC_PROFILE_DIR, XDG_STATE_HOME or HOME); no profile"
        ));
        return;
    };
    let store = match record::Store::open(dir.clone(), &shown) {
        Ok(s) => s,
        Err(e) => {
            say(format_args!(
                "tiermalloc: profile {shown}: cannot create {}: {e}; no profile",
                dir.display()
            ));
            return;
        }
    };
    let peers = store.live_peers();
    let history: Vec<u64> = store.history().iter().map(|r| r.peak).collect();
    let estimate = estimate::estimate(&peers, &history, max);
    if estimate.bytes > 0 && reserve_allowed {
        reserve(&shown, estimate.bytes as usize);
    }
    let live = match store.publish_live(estimate.bytes) {
        Ok(l) => Some(l),
        Err(e) => {
            say(format_args!(
                "tiermalloc: profile {shown}: cannot write its live record in {}: {e}; peers \
                 will not see this process",
                dir.display()
            ));
            None
        }
    };
    reserve::start_profiling(live.as_ref().map_or(core::ptr::null_mut(), |l| l.peak_word()));
    if config::get().verbose {
        let from = match estimate.source {
            Source::Peers(n) => format!("the peak of {n} live peer(s)"),
            Source::History(n) => format!("the p90 of {n} recorded run(s)"),
            Source::Nothing => "nothing recorded yet".to_owned(),
        };
        say(format_args!(
            "tiermalloc: profile {shown}: reserving {} B of dram from {from}{}",
            estimate.bytes,
            if estimate.capped { ", capped by TIERMALLOC_PROFILE_MAX" } else { "" }
        ));
    }
    *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Active {
        store,
        live,
        name: shown.into_owned(),
        started_ns,
        pid: std::process::id(),
    });
}

/// Maps the reserve and starts pre-faulting it.
fn reserve(name: &str, len: usize) {
    let Some(base) = os::map_aligned(len, CHUNK_SIZE) else {
        say(format_args!(
            "tiermalloc: profile {name}: cannot reserve {len} B of dram: {}; growing on demand",
            std::io::Error::from_raw_os_error(os::errno())
        ));
        return;
    };
    let base = base.as_ptr() as usize;
    // Small pages by default, no MADV_HUGEPAGE: with the usual `defrag=madvise` setting the
    // kernel compacts memory synchronously to build huge pages for such a range, and
    // pre-faulting 460 MiB then took 4 s instead of 0.2 s on a busy machine (tests/profile.rs
    // saw it). `TIERMALLOC_PROFILE_HUGE=1` asks for huge pages anyway: one fault per 2 MiB
    // (the process's minor faults fall 500-fold), at whatever building them costs on this
    // machine (BENCHMARKS.md, "Workload profiles").
    let huge = os::getenv(b"TIERMALLOC_PROFILE_HUGE");
    if config::parse_bool("TIERMALLOC_PROFILE_HUGE", huge, &mut config::Stderr) {
        // SAFETY: advice on our own fresh mapping; it changes no byte.
        if unsafe { libc::madvise(base as *mut libc::c_void, len, libc::MADV_HUGEPAGE) } != 0 {
            say(format_args!(
                "tiermalloc: TIERMALLOC_PROFILE_HUGE=1: no transparent huge pages ({}); the reserve uses small pages",
                std::io::Error::from_raw_os_error(os::errno())
            ));
        }
    }
    if let Err(e) = reserve::install(base, len) {
        say(format_args!(
            "tiermalloc: profile {name}: cannot start the pre-fault thread: {}; the reserve \
             faults in as it is used",
            std::io::Error::from_raw_os_error(e)
        ));
    }
}

/// Records this run (peak and time to peak) and removes the live record.
pub(crate) fn finish() {
    let Some(active) = ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    if active.pid != std::process::id() {
        return; // a forked child: its parent records the run
    }
    reserve::stop_live();
    let (peak, at) = reserve::peak();
    let unix_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let run = record::Run {
        peak,
        ms_to_peak: at.saturating_sub(active.started_ns) / 1_000_000,
        unix_secs,
        pid: active.pid,
    };
    if let Err(e) = active.store.append(run) {
        say(format_args!(
            "tiermalloc: profile {}: cannot record this run in {}: {e}",
            active.name,
            active.store.runs_path().display()
        ));
    }
    if let Some(live) = active.live {
        live.remove();
    }
    let e = reserve::PREFAULT_ERRNO.load(Ordering::Relaxed);
    if e != 0 {
        say(format_args!(
            "tiermalloc: profile {}: pre-faulting the reserve stopped: {}",
            active.name,
            std::io::Error::from_raw_os_error(e as i32)
        ));
    }
}

/// The statistics report's profile line (nothing when no profile is active).
pub(crate) fn report() {
    let guard = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(active) = guard.as_ref() else { return };
    let (peak, at) = reserve::peak();
    say(format_args!(
        "tiermalloc: dram  profile {}: reserved {} B, reserve_used {} B, reserve_miss {} B, \
         peak {} B after {} ms, pre-faulted in {} ms",
        active.name,
        reserve::RESERVED.get(),
        reserve::RESERVE_USED.get(),
        reserve::RESERVE_MISS.get(),
        peak,
        at.saturating_sub(active.started_ns) / 1_000_000,
        reserve::PREFAULT_NS.load(Ordering::Relaxed) / 1_000_000,
    ));
}
