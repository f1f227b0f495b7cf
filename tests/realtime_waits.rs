//! Real-time threads are not starved by the library's own waits (issue 16): where a thread waits
//! for another thread of ours, it sleeps in the kernel after a short spin, so a waiter at
//! `SCHED_FIFO` lets the thread it waits for run on its CPU (`src/futex.rs`; its unit test covers
//! the primitive). Here the wait of the workload-profile reserve for its pre-fault thread:
//! `tests/programs/rt_reserve.c` puts both on CPU 0, the allocating thread at FIFO 2 and the
//! pre-fault thread at FIFO 1. A spinning or `sched_yield`-ing wait never lets the pre-fault
//! thread run there (a livelock the timeout ends); a sleeping one finishes in milliseconds.
//! Skipped with a line where SCHED_FIFO is refused (not root, no real-time budget).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::{compile_test_program, library, run_with_timeout, scrubbed_env, Scrub, TempDir};

const SCRUB: Scrub = Scrub {
    prefixes: &["MALLOC_"],
    keep: &[],
    exact: &["GLIBC_TUNABLES", "XDG_STATE_HOME"],
};

fn command(exe: &Path, dir: &Path, mib: &str) -> Command {
    let mut cmd = Command::new(exe);
    cmd.env_clear()
        .envs(scrubbed_env(&SCRUB))
        .env("LD_PRELOAD", &library().path)
        .env("TIERMALLOC_SHOW_STATS", "1")
        .env("TIERMALLOC_PROFILE_DIR", dir)
        .env("TIERMALLOC_PROFILE", "rt")
        .arg(mib);
    cmd
}

#[test]
fn a_fifo_thread_waiting_for_the_reserve_lets_the_prefault_thread_run() {
    let dir = TempDir::new("realtime", "reserve");
    // First run records a peak of about 256 MiB, so the second reserves that much and its
    // pre-fault thread is usually still at work when the workload pins it.
    let grow = compile_test_program("grow", "realtime");
    let first = run_with_timeout(
        command(&grow, dir.path(), "256"),
        None,
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(first.status.success(), "recording run failed");
    let rt = compile_test_program("rt_reserve", "realtime");
    // The workload must catch the pre-fault thread at work. Filling the reserve by
    // `UFFDIO_COPY` takes a few hundred milliseconds, and on a loaded machine the workload's
    // `main` can start after that: such a run tested nothing, so it is run again (up to 8
    // times), and only a run that caught the thread counts.
    let mut attempts = 0;
    let out = loop {
        attempts += 1;
        let out = match run_with_timeout(
            command(&rt, dir.path(), "128"),
            None,
            Duration::from_secs(5),
        ) {
            Ok(out) => out,
            Err(e) => panic!("the FIFO thread waiting for the reserve livelocked CPU 0: {e}"),
        };
        if !String::from_utf8_lossy(&out.stdout).contains("no pre-fault thread") {
            break out;
        }
        assert!(
            attempts < 8,
            "the pre-fault thread had always finished before the workload looked for it"
        );
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stdout.contains("refused") {
        eprintln!("skipped: SCHED_FIFO on CPU 0 refused (needs root and an RT budget)");
        return;
    }
    assert!(out.status.success(), "workload failed: {stdout}{stderr}");
    assert!(stdout.contains("allocated 128 MiB"), "{stdout}");
    let used = stderr
        .lines()
        .filter(|l| l.starts_with("tiermalloc: dram  profile "))
        .find_map(|l| l.split("reserve_used ").nth(1))
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        used > 0.0,
        "the reserve served nothing, so nothing waited for it: {stderr}"
    );
}
