//! Workload profiles (seed 003): `TIERMALLOC_PROFILE=NAME` records, per tier, what a workload
//! used at its peak and how long it took to get there (the DRAM tier, the pool tier
//! `cxl:pool,share=`, and private device tiers); the next process of that name reserves that
//! much at start — DRAM pre-faulted off the critical path, the pool tier's share raised to it,
//! a private device tier's free space made present — and grows on demand beyond it.
//!
//! - `estimate`: how much to reserve, from live peers of the name, else the history, capped
//!   by `TIERMALLOC_PROFILE_MAX`;
//! - `store`: where the records live: the pool when `TIERMALLOC_POOL` names one
//!   (`pool::profiles`), else the directory of `record`;
//! - `record`: the records in `TIERMALLOC_PROFILE_DIR` (finished runs, live processes);
//! - `reserve`: the reserve the DRAM tier maps from, the pre-fault thread, and the use and
//!   peak it records;
//! - `device_reserve`: the same for each private device tier (`cxl:path=…`): its free space
//!   made present at start, its use and peak.
//!
//! `start` runs from the library's constructor (`runtime`), `finish` from its destructor.
//! Every problem — a bad name, a bad cap, a directory that cannot be written, a reserve the
//! kernel refuses, pre-faulting that failed — is said in one line on stderr and the program
//! runs on without that part: nothing falls back silently. With `TIERMALLOC_VERBOSE=1` the
//! estimate and its source are printed too.

mod copy_fill;
pub(crate) mod device_reserve;
mod estimate;
mod helper_thread;
mod record;
pub(crate) mod reserve;
mod store;

const _: () = assert!(crate::pool::profiles::RUNS == record::HISTORY_RUNS);

use crate::chunk::CHUNK_SIZE;
use crate::config;
use crate::os::{self, say};
use core::sync::atomic::Ordering;
use estimate::Source;
use std::sync::Mutex;

/// The active profile of this process.
struct Active {
    store: store::Store,
    live: Option<store::Live>,
    /// The pool tier's share after the reservation, if one was made.
    pool_reserved: u64,
    name: String,
    started_ns: u64,
    pid: u32,
}

static ACTIVE: Mutex<Option<Active>> = Mutex::new(None);

/// The profile the environment asks for: its name (`TIERMALLOC_PROFILE`, checked) and cap
/// (`TIERMALLOC_PROFILE_MAX`; a cap that is not a size reserves nothing: `Some(0)`). `None`
/// when there is none. Problems are said only if `say_problems`.
fn settings(say_problems: bool) -> Option<(String, Option<u64>)> {
    let name = os::getenv(b"TIERMALLOC_PROFILE")?;
    named_settings(name, say_problems)
}

/// `settings` once `TIERMALLOC_PROFILE` is set: out of line and cold (see `start_configured`).
#[cold]
#[inline(never)]
fn named_settings(name: &[u8], say_problems: bool) -> Option<(String, Option<u64>)> {
    let shown = String::from_utf8_lossy(name).into_owned();
    if !record::valid_name(name) {
        if say_problems {
            say(format_args!(
                "tiermalloc: TIERMALLOC_PROFILE={shown}: a profile name is 1 to 63 characters \
                 of A-Z a-z 0-9 . _ - not starting with a dot; no profile"
            ));
        }
        return None;
    }
    let max = match os::getenv(b"TIERMALLOC_PROFILE_MAX") {
        None => None,
        Some(v) => match config::parse_size(v) {
            Some(m) => Some(m),
            None => {
                if say_problems {
                    say(format_args!(
                        "tiermalloc: TIERMALLOC_PROFILE_MAX={}: not a size (e.g. 512M, 2G); \
                         profile {shown} records but reserves nothing",
                        String::from_utf8_lossy(v)
                    ));
                }
                Some(0)
            }
        },
    };
    Some((shown, max))
}

/// Reads `TIERMALLOC_PROFILE*`, reserves the estimate and starts recording.
pub(crate) fn start() {
    let _dismiss = DismissUnreleased;
    let started_ns = os::coarse_now_ns();
    let Some((shown, max)) = settings(true) else {
        return;
    };
    start_configured(shown, max, started_ns);
}

/// `start` once a profile is configured: out of line and cold, so that the code every process
/// runs (link/hot_text.ld) holds only the check above.
#[cold]
#[inline(never)]
fn start_configured(shown: String, max: Option<u64>, started_ns: u64) {
    let Some(store) = open_store(&shown) else {
        return;
    };
    let peers = store.live_peers();
    let runs = store.history();
    let plan = estimate::plan(&peers, &runs, max);
    let estimate = plan.dram;
    if estimate.bytes > 0 {
        reserve(&shown, estimate.bytes as usize);
    }
    let pool_estimate = plan.pool;
    let mut pool_reserved = 0;
    if pool_estimate.bytes > 0 {
        match crate::pool::share::reserve(pool_estimate.bytes) {
            Ok(share) => pool_reserved = share,
            Err(why) => say(format_args!(
                "tiermalloc: profile {shown}: its runs used {} B of a pool tier: {why}; \
                 nothing reserved there",
                pool_estimate.bytes
            )),
        }
    }
    let device_estimates = plan.devices;
    let device_bytes = device_estimates.map(|e| e.bytes);
    device_reserve::start(&shown, device_bytes, &plan.slabs);
    let live = match store.publish_live(estimate.bytes) {
        Ok(l) => Some(l),
        Err(e) => {
            say(format_args!(
                "tiermalloc: profile {shown}: cannot write its live record in {}: {e}; peers \
                 will not see this process",
                store.place()
            ));
            None
        }
    };
    let (dram_word, pool_word) = live
        .as_ref()
        .map_or((core::ptr::null_mut(), core::ptr::null_mut()), |l| {
            l.peak_words()
        });
    crate::pool::share::publish_peak_to(pool_word);
    device_reserve::publish_peaks_to(
        live.as_ref()
            .map_or([core::ptr::null_mut(); 3], |l| l.device_peak_words()),
    );
    reserve::start_profiling(dram_word);
    if config::get().verbose {
        let from = |source| match source {
            Source::Peers(n) => format!("the peak of {n} live peer(s)"),
            Source::History(n) => format!("the p90 of {n} recorded run(s)"),
            Source::Nothing => "nothing recorded yet".to_owned(),
        };
        say(format_args!(
            "tiermalloc: profile {shown}: reserving {} B of dram from {}{}; records in {}",
            estimate.bytes,
            from(estimate.source),
            if estimate.capped {
                ", capped by TIERMALLOC_PROFILE_MAX"
            } else {
                ""
            },
            store.place()
        ));
        for (i, e) in device_estimates
            .iter()
            .enumerate()
            .filter(|(_, e)| e.bytes > 0)
        {
            say(format_args!(
                "tiermalloc: profile {shown}: reserving {} B of tier '{}' from {}{}",
                e.bytes,
                device_reserve::KINDS[i].name(),
                from(e.source),
                if e.capped {
                    ", capped by TIERMALLOC_PROFILE_MAX"
                } else {
                    ""
                }
            ));
        }
        if pool_estimate.bytes > 0 {
            say(format_args!(
                "tiermalloc: profile {shown}: reserving {} B of the pool tier{}",
                pool_estimate.bytes,
                if pool_estimate.capped {
                    ", capped by TIERMALLOC_PROFILE_MAX"
                } else {
                    ""
                }
            ));
        }
    }
    *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Active {
        store,
        live,
        pool_reserved,
        name: shown,
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
    // By default the pages are put in place without faults (`reserve::Pages::Copied`), so the
    // process's minor faults fall with the workload thread's (BENCHMARKS.md, "Filling the
    // reserve without faults"); `TIERMALLOC_PROFILE_HUGE` picks `MADV_POPULATE_WRITE` on huge
    // (1) or small (0) pages instead.
    let pages = match os::getenv(b"TIERMALLOC_PROFILE_HUGE") {
        None => reserve::Pages::Copied,
        v => match config::parse_bool("TIERMALLOC_PROFILE_HUGE", v, &mut config::Stderr) {
            true => reserve::Pages::Huge,
            false => reserve::Pages::Small,
        },
    };
    if let Err(e) = reserve::install(base, len, pages) {
        say(format_args!(
            "tiermalloc: profile {name}: cannot start the pre-fault thread: {}; the reserve \
             faults in as it is used",
            std::io::Error::from_raw_os_error(e)
        ));
    }
}

/// In the constructor, before the tiers open: the threads that will fill the reserves, waiting
/// (`helper_thread` says why then), each only if there may be something for it to fill.
/// `start` releases or dismisses them.
pub(crate) fn spawn_early() {
    let Some((name, max)) = settings(false) else {
        return;
    };
    let (dram, devices) = helpers_needed(&name, max);
    if dram {
        reserve::spawn_early();
    }
    if devices {
        device_reserve::spawn_early();
    }
}

/// Whether profile `name` may reserve (DRAM, device tiers) at start: what `start` will
/// estimate, read early. Records in the pool cannot be read before the tiers open (the pool
/// opens with them): then both may. A process with nothing recorded and no live peer needs
/// neither, and starts no thread (`tests/profile.rs`).
fn helpers_needed(name: &str, max: Option<u64>) -> (bool, bool) {
    if os::getenv(b"TIERMALLOC_POOL").is_some() {
        return (true, true);
    }
    let Some(dir) = record::directory(os::getenv(b"TIERMALLOC_PROFILE_DIR")) else {
        return (false, false);
    };
    let store = record::Store::at(dir, name);
    let plan = estimate::plan(&store.live_peers(), &store.history(), max);
    (
        plan.dram.bytes > 0,
        plan.devices.iter().any(|e| e.bytes > 0),
    )
}

/// Dismisses the helper threads `start` did not release, however it returns.
struct DismissUnreleased;

impl Drop for DismissUnreleased {
    fn drop(&mut self) {
        reserve::POPULATER.dismiss();
        device_reserve::FILLER.dismiss();
    }
}

/// At exit, first: stops the threads that make device tiers' reserves present (after their
/// step in progress), so that the report's figures are final.
pub(crate) fn stop_filling() {
    device_reserve::stop_filling();
}

/// Records this run (peak and time to peak) and removes the live record.
pub(crate) fn finish() {
    let Some(active) = ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    finish_active(active);
}

/// `finish` for a process whose profile started: out of line and cold (see `start_configured`).
#[cold]
#[inline(never)]
fn finish_active(active: Active) {
    if active.pid != std::process::id() {
        return; // a forked child: its parent records the run
    }
    reserve::stop_live();
    crate::pool::share::publish_peak_to(core::ptr::null_mut());
    device_reserve::publish_peaks_to([core::ptr::null_mut(); 3]);
    let (peak, at) = reserve::peak();
    let (pool_peak, pool_at) = crate::pool::share::peak();
    let unix_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let run = record::Run {
        peak,
        ms_to_peak: at.saturating_sub(active.started_ns) / 1_000_000,
        pool_peak,
        pool_ms_to_peak: pool_at.saturating_sub(active.started_ns) / 1_000_000,
        devices: device_reserve::peaks()
            .map(|(peak, at)| (peak, at.saturating_sub(active.started_ns) / 1_000_000)),
        slabs: device_reserve::slab_peaks(),
        unix_secs,
        pid: active.pid,
    };
    if let Err(e) = active.store.append(run) {
        say(format_args!(
            "tiermalloc: profile {}: cannot record this run in {}: {e}",
            active.name,
            active.store.place()
        ));
    }
    if let Some(live) = active.live {
        live.remove();
    }
    device_reserve::say_fallbacks(&active.name);
    let e = reserve::COPY_REFUSED_ERRNO.load(Ordering::Relaxed);
    if e != 0 {
        say(format_args!(
            "tiermalloc: profile {}: UFFDIO_COPY refused ({}): the reserve was populated with \
             MADV_POPULATE_WRITE instead, whose page faults count in the process's",
            active.name,
            std::io::Error::from_raw_os_error(e as i32)
        ));
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
         peak {} B after {} ms, filled in {} ms by {}, {} B of it with the huge-page advice, \
         {} faults (CPU per MiB: small pages {} us, huge pages {} us)",
        active.name,
        reserve::RESERVED.get(),
        reserve::RESERVE_USED.get(),
        reserve::RESERVE_MISS.get(),
        peak,
        at.saturating_sub(active.started_ns) / 1_000_000,
        reserve::PREFAULT_NS.load(Ordering::Relaxed) / 1_000_000,
        reserve::filled_by(),
        reserve::PREFAULT_HUGE_BYTES.load(Ordering::Relaxed),
        reserve::PREFAULT_FAULTS.load(Ordering::Relaxed),
        reserve::SMALL_NS_PER_MIB.load(Ordering::Relaxed) / 1000,
        reserve::HUGE_NS_PER_MIB.load(Ordering::Relaxed) / 1000,
    ));
    device_reserve::report(&active.name, active.started_ns);
    let (pool_peak, pool_at) = crate::pool::share::peak();
    if active.pool_reserved > 0 || pool_peak > 0 {
        say(format_args!(
            "tiermalloc: pool  profile {}: share reserved {} B, peak {} B after {} ms",
            active.name,
            active.pool_reserved,
            pool_peak,
            pool_at.saturating_sub(active.started_ns) / 1_000_000,
        ));
    }
}

/// The store of profile `name`: the pool's when `TIERMALLOC_POOL` is set and the pool can
/// hold it, else the directory (saying why it is not the pool); `None` (said) when neither.
fn open_store(name: &str) -> Option<store::Store> {
    let mut why_not_pool = None;
    if os::getenv(b"TIERMALLOC_POOL").is_some() {
        match store::Store::in_pool(name) {
            Ok(s) => return Some(s),
            Err(why) => why_not_pool = Some(why),
        }
    }
    let Some(dir) = record::directory(os::getenv(b"TIERMALLOC_PROFILE_DIR")) else {
        say(format_args!(
            "tiermalloc: profile {name}: no directory for its records (set \
             TIERMALLOC_PROFILE_DIR, XDG_STATE_HOME or HOME); no profile"
        ));
        return None;
    };
    if let Some(why) = why_not_pool {
        say(format_args!(
            "tiermalloc: profile {name}: records not in the pool ({why}); kept in {} instead",
            dir.display()
        ));
    }
    match store::Store::in_dir(dir.clone(), name) {
        Ok(s) => Some(s),
        Err(e) => {
            say(format_args!(
                "tiermalloc: profile {name}: cannot create {}: {e}; no profile",
                dir.display()
            ));
            None
        }
    }
}
