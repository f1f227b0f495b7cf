//! Workload profiles (seed 003, DESIGN.md "Lending … and reservation"): `TIERMALLOC_PROFILE`
//! records the DRAM a workload used at its peak; the next run reserves and pre-faults it.
//!
//! The workload is `tests/programs/grow.c`, compiled with `cc` and run under `LD_PRELOAD` of
//! the tiermalloc cdylib: it grows to 300 MiB of live blocks and prints the minor faults of
//! the growth (`ru_minflt`) of its own thread (`RUSAGE_THREAD`: the workload's critical path)
//! and of the whole process (`RUSAGE_SELF`: the pre-fault thread's population included), and
//! its time. Each test
//! has its own profile directory (`TIERMALLOC_PROFILE_DIR`); the figures are read from the
//! `TIERMALLOC_SHOW_STATS=1` report.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;
use support::{compile_test_program, library, run_with_timeout, scrubbed_env, Scrub, TempDir};

const MIB: u64 = 1 << 20;
const SCRUB: Scrub = Scrub {
    prefixes: &["MALLOC_"],
    keep: &[],
    exact: &["GLIBC_TUNABLES", "XDG_STATE_HOME"],
};

/// The compiled workload (once per test binary).
fn workload() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| compile_test_program("grow", "profile-grow"))
}

/// One run's figures.
#[derive(Debug, Default)]
struct Run {
    /// The workload thread's minor faults during the growth.
    minflt: u64,
    /// The whole process's.
    process_minflt: u64,
    /// The CPU time (user and system) of the workload thread, and of the whole process (the
    /// pre-fault thread included), during the growth, in microseconds.
    thread_cpu_us: u64,
    process_cpu_us: u64,
    ms: f64,
    reserved: u64,
    reserve_used: u64,
    reserve_miss: u64,
    peak: u64,
    stderr: String,
}

fn command(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    command_via(None, dir, env, args)
}

/// `command`, run by `wrapper` (a program that execs its arguments) when there is one.
fn command_via(wrapper: Option<&Path>, dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let cmd = match wrapper {
        Some(w) => {
            let mut c = Command::new(w);
            c.arg(workload());
            c
        }
        None => Command::new(workload()),
    };
    profiled_command(cmd, dir, env, args)
}

/// `cmd` with the library preloaded, its statistics shown, profiles in `dir`, then `env`
/// and `args`.
fn profiled_command(mut cmd: Command, dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    cmd.env_clear()
        .envs(scrubbed_env(&SCRUB))
        .env("LD_PRELOAD", &library().path)
        .env("TIERMALLOC_SHOW_STATS", "1")
        .env("TIERMALLOC_PROFILE_DIR", dir)
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// The number after `key ` in `text` (`key 123` or `key 123 B`).
fn figure(text: &str, key: &str) -> Option<u64> {
    let at = text.find(&format!("{key} "))? + key.len() + 1;
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits.parse::<f64>().ok().map(|f| f as u64)
}

/// The `tiermalloc: dram  profile NAME: ...` line of a report, or "".
fn profile_line(stderr: &str) -> &str {
    stderr
        .lines()
        .filter(|l| l.starts_with("tiermalloc: dram  profile "))
        .last()
        .unwrap_or("")
}

fn parse(stdout: &str, stderr: &str) -> Run {
    let ms = stdout
        .split("ms ")
        .nth(1)
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no time in {stdout:?}"));
    Run {
        minflt: figure(stdout, "thread_minflt")
            .unwrap_or_else(|| panic!("no faults in {stdout:?}")),
        process_minflt: figure(stdout, "grown minflt")
            .unwrap_or_else(|| panic!("no faults in {stdout:?}")),
        thread_cpu_us: figure(stdout, "thread_cpu_us")
            .unwrap_or_else(|| panic!("no CPU time in {stdout:?}")),
        process_cpu_us: figure(stdout, "process_cpu_us")
            .unwrap_or_else(|| panic!("no CPU time in {stdout:?}")),
        ms,
        // The profile's own line: the statistics report above it has peak and reserved too.
        reserved: figure(profile_line(stderr), "reserved").unwrap_or(0),
        reserve_used: figure(profile_line(stderr), "reserve_used").unwrap_or(0),
        reserve_miss: figure(profile_line(stderr), "reserve_miss").unwrap_or(0),
        peak: figure(profile_line(stderr), "peak").unwrap_or(0),
        stderr: stderr.to_owned(),
    }
}

/// Runs the workload `cmd` to its end (2 minutes at most), which must succeed: its (stdout,
/// stderr).
fn outputs(cmd: Command) -> (String, String) {
    let out =
        run_with_timeout(cmd, None, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "workload failed: {stderr}");
    (stdout, stderr)
}

fn run(dir: &Path, env: &[(&str, &str)]) -> Run {
    run_via(None, dir, env)
}

fn run_via(wrapper: Option<&Path>, dir: &Path, env: &[(&str, &str)]) -> Run {
    let cmd = command_via(wrapper, dir, env, &["300"]);
    let (stdout, stderr) = outputs(cmd);
    parse(&stdout, &stderr)
}

fn profiled(dir: &Path, name: &str) -> Run {
    run(dir, &[("TIERMALLOC_PROFILE", name)])
}

/// `after` is at most a tenth of `before` (the "90 % fewer").
fn assert_90_percent_fewer(before: u64, after: u64, what: &str) {
    assert!(
        after * 10 <= before,
        "{what} {before} then {after}: not 90% fewer"
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[test]
fn the_second_run_faults_90_percent_less_and_is_not_slower() {
    let dir = TempDir::new("profile", "faults").kept_on_panic();
    let first = profiled(dir.path(), "w");
    assert_eq!(first.reserved, 0, "nothing recorded yet: {}", first.stderr);
    assert!(first.peak >= 300 * MIB, "peak recorded: {first:?}");
    assert!(
        first.reserve_miss >= 300 * MIB,
        "the whole use missed: {first:?}"
    );
    let second = profiled(dir.path(), "w");
    assert!(
        second.reserved >= first.peak,
        "reserves the recorded peak: {second:?}"
    );
    assert_90_percent_fewer(first.minflt, second.minflt, "minor faults");
    // The measure on the whole process (`RUSAGE_SELF`, the filling thread included):
    // the reserve's pages are put in place by `UFFDIO_COPY`, which takes no fault. Where
    // userfaultfd is refused the library says so and populates with `MADV_POPULATE_WRITE`,
    // whose faults the kernel counts as the process's: then only the thread's fall.
    if second.stderr.contains("UFFDIO_COPY refused") {
        eprintln!("userfaultfd refused here: the process's faults are not expected to fall");
    } else {
        assert!(
            second.stderr.contains("by UFFDIO_COPY"),
            "{}",
            profile_line(&second.stderr)
        );
        assert!(
            second.process_minflt * 10 <= first.process_minflt,
            "process minor faults {} then {}: not 90% fewer",
            first.process_minflt,
            second.process_minflt
        );
    }
    // Cost: the same workload without a profile and with one, alternately, five times each.
    // The "not slower" figure itself (0.91x in wall time on a quiet machine) is BENCHMARKS.md's.
    // Here the bounds are on CPU time, which the load does not stretch: beside other tests on
    // two cores the wall times of one binary varied tenfold (1.3 to 3.0 s, where unloaded runs
    // take 0.2 s), and a reserved run, whose workload waits for the pre-fault thread, paid
    // twice for every moment that thread waited for a CPU (medians 282 against 172 ms, one run
    // 2.25 s, in a full run); the CPU times of the same runs moved by at most 1.3x. What this
    // must catch is a reservation that stalls the program: pre-faulting or compacting on the
    // workload's thread keeps (or adds to) the work the reserve takes off it, and a costlier
    // fill (a compaction, a second pass) shows in the whole process's time. Measured here
    // (BENCHMARKS.md, session 15, `hyg3`): the workload thread 0.28x, the process 0.8-1.2x.
    let (mut plain, mut reserved) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let (p, r) = (run(dir.path(), &[]), profiled(dir.path(), "w"));
        eprintln!(
            "plain {} ms, cpu {} us (thread {} us); reserved {} ms, cpu {} us (thread {} us)",
            p.ms, p.process_cpu_us, p.thread_cpu_us, r.ms, r.process_cpu_us, r.thread_cpu_us
        );
        plain.push(p);
        reserved.push(r);
    }
    let cpu = |runs: &[Run], of: fn(&Run) -> u64| -> (f64, Vec<u64>) {
        let v: Vec<u64> = runs.iter().map(of).collect();
        (median(v.iter().map(|&x| x as f64).collect()), v)
    };
    let (p_thread, p_threads) = cpu(&plain, |r| r.thread_cpu_us);
    let (r_thread, r_threads) = cpu(&reserved, |r| r.thread_cpu_us);
    assert!(
        r_thread <= p_thread * 0.5,
        "the workload thread's CPU time did not halve: {r_threads:?} us against {p_threads:?} us"
    );
    let (p_process, p_processes) = cpu(&plain, |r| r.process_cpu_us);
    let (r_process, r_processes) = cpu(&reserved, |r| r.process_cpu_us);
    assert!(
        r_process <= p_process * 1.5,
        "reserved runs cost more CPU: {r_processes:?} us against {p_processes:?} us"
    );
}

/// `TIERMALLOC_PROFILE_HUGE=1` populates the reserve with `MADV_POPULATE_WRITE` on huge
/// pages: its faults count in the process's (`RUSAGE_SELF`), one per 2 MiB. Not timed:
/// building huge pages costs from nothing to seconds on this VM (its host takes back the
/// guest's free 2 MiB blocks: BENCHMARKS.md, "Filling the reserve without faults"). With
/// `=0` (small pages), one per 4 KiB: the process's count does not fall.
#[test]
fn with_huge_pages_the_process_faults_90_percent_less() {
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !thp.contains("[always]") && !thp.contains("[madvise]") {
        eprintln!("transparent huge pages are off here ({thp:?}): nothing to measure");
        return;
    }
    let dir = TempDir::new("profile", "huge").kept_on_panic();
    let huge = [
        ("TIERMALLOC_PROFILE", "h"),
        ("TIERMALLOC_PROFILE_HUGE", "1"),
    ];
    let first = run(dir.path(), &huge);
    let second = run(dir.path(), &huge);
    assert!(second.reserved >= first.peak, "{second:?}");
    assert_90_percent_fewer(
        first.process_minflt,
        second.process_minflt,
        "process minor faults",
    );
    assert!(
        second
            .stderr
            .contains("by MADV_POPULATE_WRITE on huge pages"),
        "{}",
        second.stderr
    );
    let small = run(
        dir.path(),
        &[
            ("TIERMALLOC_PROFILE", "h"),
            ("TIERMALLOC_PROFILE_HUGE", "0"),
        ],
    );
    assert!(small.reserved >= first.peak, "{small:?}");
    assert!(small.minflt * 10 <= first.minflt, "{small:?}");
    assert!(
        small.process_minflt * 10 > first.process_minflt,
        "small pages populated by MADV_POPULATE_WRITE count their faults: {small:?}"
    );
}

/// Where userfaultfd is refused (a seccomp filter, as containers may have), the reserve is
/// populated with `MADV_POPULATE_WRITE` instead and one line says so: the workload thread's
/// faults still fall, the process's do not (with small pages) or do (huge pages granted
/// cheaply), and nothing fails.
#[cfg(target_arch = "x86_64")]
#[test]
fn without_userfaultfd_the_reserve_is_populated_and_a_line_says_so() {
    let wrapper = compile_test_program("no_userfaultfd", "profile-nouffd");
    let dir = TempDir::new("profile", "nouffd").kept_on_panic();
    let env = [("TIERMALLOC_PROFILE", "n")];
    let first = run_via(Some(&wrapper), dir.path(), &env);
    let second = run_via(Some(&wrapper), dir.path(), &env);
    assert!(second.reserved >= first.peak, "{second:?}");
    assert!(
        second
            .stderr
            .contains("UFFDIO_COPY refused (Operation not permitted")
            && second
                .stderr
                .contains("by MADV_POPULATE_WRITE, huge pages while cheaper"),
        "{}",
        second.stderr
    );
    assert!(second.minflt * 10 <= first.minflt, "{second:?}");
    // Only the library's own blocks cut before the fill thread started.
    assert!(second.reserve_miss <= MIB, "{second:?}");
}

#[test]
fn over_reservation_is_at_most_10_percent_after_three_runs() {
    let dir = TempDir::new("profile", "over").kept_on_panic();
    for _ in 0..3 {
        profiled(dir.path(), "w");
    }
    let fourth = profiled(dir.path(), "w");
    assert!(fourth.reserved > 0 && fourth.peak > 0, "{fourth:?}");
    assert!(
        fourth.reserved as f64 <= fourth.peak as f64 * 1.10,
        "reserved {} B for a peak of {} B",
        fourth.reserved,
        fourth.peak
    );
    assert!(
        fourth.reserve_used as f64 >= fourth.reserved as f64 * 0.90,
        "used {} of {} reserved",
        fourth.reserve_used,
        fourth.reserved
    );
    assert_eq!(fourth.reserve_miss, 0, "{fourth:?}");

    // The JSON report (TIERMALLOC_STATS_FILE, in place of the text and the profile's line)
    // carries the same reserve.
    let json = dir.path().join("fifth.json");
    run(
        dir.path(),
        &[
            ("TIERMALLOC_PROFILE", "w"),
            ("TIERMALLOC_STATS_FILE", json.to_str().unwrap()),
        ],
    );
    let report = std::fs::read_to_string(&json).unwrap();
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    let field = |key: &str| v["tiers"][0][key].as_u64().unwrap_or(0);
    assert_eq!(v["tiers"][0]["kind"], "dram");
    let (reserved, used) = (field("profile_reserved"), field("reserve_used"));
    assert!(
        reserved as f64 >= fourth.reserved as f64 * 0.9
            && reserved as f64 <= fourth.reserved as f64 * 1.1,
        "JSON reserve {reserved} B, the profile line's {} B: {report}",
        fourth.reserved
    );
    assert!(used as f64 >= reserved as f64 * 0.9, "{report}");
    assert_eq!(field("reserve_miss"), 0, "{report}");
}

#[test]
fn no_reservation_beyond_the_cap() {
    let dir = TempDir::new("profile", "cap").kept_on_panic();
    profiled(dir.path(), "w");
    let capped = run(
        dir.path(),
        &[
            ("TIERMALLOC_PROFILE", "w"),
            ("TIERMALLOC_PROFILE_MAX", "100M"),
            ("TIERMALLOC_VERBOSE", "1"),
        ],
    );
    assert!(
        capped.reserved > 0 && capped.reserved <= 100 * MIB,
        "{capped:?}"
    );
    assert!(
        capped.stderr.contains("capped by TIERMALLOC_PROFILE_MAX"),
        "{}",
        capped.stderr
    );
    // What the cap left out is grown on demand, and counted as missed.
    assert!(capped.reserve_miss >= 190 * MIB, "{capped:?}");
    let bad = run(
        dir.path(),
        &[
            ("TIERMALLOC_PROFILE", "w"),
            ("TIERMALLOC_PROFILE_MAX", "lots"),
        ],
    );
    assert_eq!(bad.reserved, 0);
    assert!(
        bad.stderr
            .contains("TIERMALLOC_PROFILE_MAX=lots: not a size"),
        "{}",
        bad.stderr
    );
    let bad = run(dir.path(), &[("TIERMALLOC_PROFILE", "../w")]);
    assert!(
        bad.stderr
            .contains("TIERMALLOC_PROFILE=../w: a profile name is"),
        "{}",
        bad.stderr
    );
}

/// Starts a profiled workload that grows and then waits; returns it once grown.
fn start_peer(dir: &Path, name: &str) -> std::process::Child {
    start_peer_with(dir, &[("TIERMALLOC_PROFILE", name)])
}

/// `start_peer` with the environment `env`.
fn start_peer_with(dir: &Path, env: &[(&str, &str)]) -> std::process::Child {
    start_peer_growing(dir, env, "300")
}

/// `start_peer_with`, growing to `mib` MiB.
fn start_peer_growing(dir: &Path, env: &[(&str, &str)], mib: &str) -> std::process::Child {
    let mut child = command(dir, env, &[mib, "wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("grown"), "peer said {line:?}");
    child
}

#[test]
fn live_peers_come_first_and_dead_peers_are_ignored() {
    let dir = TempDir::new("profile", "peers").kept_on_panic();
    let verbose = [("TIERMALLOC_PROFILE", "p"), ("TIERMALLOC_VERBOSE", "1")];
    // A live peer of the name, no history: its peak is the estimate.
    let mut peer = start_peer(dir.path(), "p");
    let with_peer = run(dir.path(), &verbose);
    assert!(
        with_peer.stderr.contains("from the peak of 1 live peer(s)"),
        "{}",
        with_peer.stderr
    );
    assert!(with_peer.reserved >= 300 * MIB, "{with_peer:?}");
    peer.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(peer.wait().unwrap().success());
    // A peer killed at its peak leaves its live record behind: ignored (and removed).
    let other = TempDir::new("profile", "dead").kept_on_panic();
    let mut dead = start_peer(other.path(), "p");
    dead.kill().unwrap();
    dead.wait().unwrap();
    let records = |d: &Path| {
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("p.live.")
            })
            .count()
    };
    assert_eq!(
        records(other.path()),
        1,
        "the killed peer's record is there"
    );
    let after = run(other.path(), &verbose);
    assert_eq!(
        after.reserved, 0,
        "a dead peer's record was used: {}",
        after.stderr
    );
    assert!(
        after.stderr.contains("from nothing recorded yet"),
        "{}",
        after.stderr
    );
    assert_eq!(records(other.path()), 0, "the dead record was removed");
}

/// With `TIERMALLOC_POOL` the records live in the pool (its space `tiermalloc.profiles`), not
/// in the directory: the second process of the name reserves what the first used, reading it
/// from the pool, and the directory stays empty. A process claiming to run on another host
/// (the pool's test key `host=`) reads the same records.
#[test]
fn records_live_in_the_pool_when_there_is_one() {
    let dir = TempDir::new("profile", "pool").kept_on_panic();
    let pool_path = format!("/dev/shm/tm-lend-profile-pool-{}", std::process::id());
    let _ = std::fs::remove_file(&pool_path);
    let spec = format!("path={pool_path},size=8M,create");
    let other_host = format!("{spec},host=77");
    fn env(pool: &str) -> Vec<(&'static str, &str)> {
        vec![
            ("TIERMALLOC_PROFILE", "inpool"),
            ("TIERMALLOC_POOL", pool),
            ("TIERMALLOC_VERBOSE", "1"),
        ]
    }
    let first = run(dir.path(), &env(&spec));
    assert_eq!(first.reserved, 0, "{}", first.stderr);
    assert!(first.peak > 250 * MIB, "{first:?}");
    assert!(
        first
            .stderr
            .contains("records in the pool's space tiermalloc.profiles"),
        "{}",
        first.stderr
    );
    for (run_no, pool) in [(2, &spec), (3, &other_host)] {
        let next = run(dir.path(), &env(pool));
        assert!(
            next.reserved >= first.peak && next.reserved <= first.peak + 4 * MIB,
            "run {run_no} reserved {} B after a first run's peak of {} B: {}",
            next.reserved,
            first.peak,
            next.stderr
        );
    }
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        files.is_empty(),
        "records written to the directory: {files:?}"
    );
    let _ = std::fs::remove_file(&pool_path);
}

/// In the pool too, a live peer's peak is the estimate, and a peer killed at its peak (its
/// live entry left behind under its registry tag) is ignored: its pid is gone.
#[test]
fn in_the_pool_live_peers_count_and_dead_ones_do_not() {
    let dir = TempDir::new("profile", "poolpeers").kept_on_panic();
    let pool_path = format!("/dev/shm/tm-lend-profile-peers-{}", std::process::id());
    let _ = std::fs::remove_file(&pool_path);
    let spec = format!("path={pool_path},size=8M,create");
    let env = [
        ("TIERMALLOC_PROFILE", "pp"),
        ("TIERMALLOC_POOL", spec.as_str()),
        ("TIERMALLOC_VERBOSE", "1"),
    ];
    let mut peer = start_peer_with(dir.path(), &env);
    let with_peer = run(dir.path(), &env);
    assert!(
        with_peer.stderr.contains("from the peak of 1 live peer(s)")
            && with_peer.reserved >= 300 * MIB,
        "{}",
        with_peer.stderr
    );
    peer.kill().unwrap();
    peer.wait().unwrap();
    // The killed peer recorded no run; the run above did, so use a new name for the rest.
    let env = [
        ("TIERMALLOC_PROFILE", "pd"),
        ("TIERMALLOC_POOL", spec.as_str()),
        ("TIERMALLOC_VERBOSE", "1"),
    ];
    let mut dead = start_peer_with(dir.path(), &env);
    dead.kill().unwrap();
    dead.wait().unwrap();
    let after = run(dir.path(), &env);
    assert_eq!(
        after.reserved, 0,
        "a dead peer's entry was used: {}",
        after.stderr
    );
    assert!(
        after.stderr.contains("from nothing recorded yet"),
        "{}",
        after.stderr
    );
    let _ = std::fs::remove_file(&pool_path);
}

/// A pool that cannot be opened: the records go to the directory, and a line says so.
#[test]
fn without_a_usable_pool_the_records_go_to_the_directory_and_a_line_says_why() {
    let dir = TempDir::new("profile", "nopool").kept_on_panic();
    let out = run_with_timeout(
        command(
            dir.path(),
            &[
                ("TIERMALLOC_PROFILE", "fallback"),
                ("TIERMALLOC_POOL", "path=/nonexistent/tm-lend-pool"),
            ],
            &["8"],
        ),
        None,
        Duration::from_secs(60),
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "profile fallback: records not in the pool (the pool could not be opened); kept in"
        ),
        "{stderr}"
    );
    assert!(dir.path().join("fallback.runs").exists(), "{stderr}");
}

// Private device tiers (`cxl:path=…`, `pmr:path=…`): the profile records each one's peak, and
// the next run makes that much of its free space present at start, the top of the region down
// where the heap cuts first.

/// A device-tier run's figures: its `tiermalloc: KIND  profile` line and the workload's.
#[derive(Debug)]
struct DeviceRun {
    process_minflt: u64,
    reserved: u64,
    reserve_used: u64,
    reserve_miss: u64,
    peak: u64,
    /// Faults taken making the reserve present.
    fill_faults: u64,
    /// Slabs cut ahead, how many of them a slot was taken from, and slabs made on an
    /// allocation's path.
    slabs_ahead: u64,
    slabs_ahead_used: u64,
    slabs_on_demand: u64,
    stderr: String,
}

/// Runs `grow MIB` with `tiers` (a private device tier only: every block goes there).
fn run_on_device(dir: &Path, tiers: &str, env: &[(&str, &str)], mib: &str) -> DeviceRun {
    let mut all = vec![("TIERMALLOC_TIERS", tiers)];
    all.extend_from_slice(env);
    let cmd = command(dir, &all, &[mib]);
    let (stdout, stderr) = outputs(cmd);
    device_run(&tiers[..3], stdout, stderr)
}

/// A device-tier run's figures from its outputs.
fn device_run(kind: &str, stdout: String, stderr: String) -> DeviceRun {
    let line = stderr
        .lines()
        .filter(|l| l.starts_with(&format!("tiermalloc: {kind}   profile ")))
        .last()
        .unwrap_or("");
    DeviceRun {
        process_minflt: figure(&stdout, "grown minflt").unwrap_or(0),
        reserved: figure(line, "reserved").unwrap_or(0),
        reserve_used: figure(line, "reserve_used").unwrap_or(0),
        reserve_miss: figure(line, "reserve_miss").unwrap_or(0),
        peak: figure(line, "peak").unwrap_or(0),
        fill_faults: line
            .rsplit(", ")
            .next()
            .and_then(|f| f.strip_suffix(" faults"))
            .and_then(|f| f.parse().ok())
            .unwrap_or(u64::MAX),
        slabs_ahead: figure(line, "slabs_ahead").unwrap_or(0),
        slabs_ahead_used: line
            .split("slabs_ahead ")
            .nth(1)
            .and_then(|r| r.split_once('(')?.1.split(' ').next()?.parse().ok())
            .unwrap_or(0),
        slabs_on_demand: figure(line, "slabs_on_demand").unwrap_or(0),
        stderr,
    }
}

/// `run_on_device` that lets the workload exit only once `fill` bytes of shared memory are
/// mapped in it (the reserve made present while it runs; 0: at once, 2 minutes at most).
/// Also returns the kB of shared memory mapped when its `main` started. With `one_cpu`, the
/// workload's threads all run on one CPU (the first this process may use).
fn run_on_device_filled(
    dir: &Path,
    tiers: &str,
    env: &[(&str, &str)],
    mib: &str,
    fill: u64,
    one_cpu: bool,
) -> (DeviceRun, u64) {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut all = vec![("TIERMALLOC_TIERS", tiers), ("GROW_START_SHMEM", "1")];
    all.extend_from_slice(env);
    let mut cmd = command(dir, &all, &[mib, "wait"]);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if one_cpu {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let mut set: libc::cpu_set_t = core::mem::zeroed();
                let size = core::mem::size_of::<libc::cpu_set_t>();
                if libc::sched_getaffinity(0, size, &mut set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let first = (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &set));
                let mut one: libc::cpu_set_t = core::mem::zeroed();
                libc::CPU_SET(first.unwrap_or(0), &mut one);
                if libc::sched_setaffinity(0, size, &one) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().expect("spawn the workload");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let start_kb = figure(&first, "start shmem_kb").unwrap_or_else(|| panic!("{first:?}"));
    let mut grown = String::new();
    out.read_line(&mut grown).unwrap();
    let pid = child.id();
    let shmem_kb = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssShmem:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while shmem_kb() * 1024 < fill {
        if std::time::Instant::now() > deadline {
            let kb = shmem_kb();
            let _ = child.kill();
            panic!("the reserve was not made present in 2 minutes: {kb} kB");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(child.wait().unwrap().success(), "workload failed: {stderr}");
    (device_run(&tiers[..3], grown + &rest, stderr), start_kb)
}

/// A file in /dev/shm for one test's device tier, removed when dropped.
struct ShmFile(PathBuf);

impl ShmFile {
    fn new(name: &str) -> ShmFile {
        let p = PathBuf::from(format!(
            "/dev/shm/tiermalloc-profile-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&p);
        ShmFile(p)
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_private_device_tier_is_made_present_and_the_second_run_faults_90_percent_less() {
    let dir = TempDir::new("profile", "device").kept_on_panic();
    let file = ShmFile::new("cxl");
    let tiers = format!("cxl:path={},size=512M,create", file.0.display());
    let profile = [("TIERMALLOC_PROFILE", "d")];
    let first = run_on_device(dir.path(), &tiers, &profile, "200");
    assert_eq!(first.reserved, 0, "nothing recorded yet: {}", first.stderr);
    assert!(
        first.peak >= 200 * MIB,
        "the tier's peak is recorded: {first:?}"
    );
    assert!(
        first.reserve_miss >= 200 * MIB,
        "the whole use missed: {first:?}"
    );
    let second = run_on_device(dir.path(), &tiers, &profile, "200");
    assert!(
        // Less what the tier holds at start (the blocks of the library's own start-up).
        second.reserved >= first.peak - MIB,
        "reserves the recorded peak: {second:?}"
    );
    assert!(
        second.reserve_used as f64 >= second.reserved as f64 * 0.95,
        "the reserve is where the heap cuts: {second:?}"
    );
    assert!(second.reserve_miss <= 4 * MIB, "{second:?}");
    // The statistics report's tier lines carry the reserve too.
    assert!(
        second.stderr.contains("cxl  profile reserve "),
        "{}",
        second.stderr
    );
    // The whole process's faults (`RUSAGE_SELF`) while the workload grows.
    assert_90_percent_fewer(
        first.process_minflt,
        second.process_minflt,
        "process minor faults",
    );
    // And making the reserve present took none either, unless userfaultfd was refused (which
    // a line says).
    if second.stderr.contains("userfaultfd refused") {
        eprintln!("userfaultfd refused here: the reserve was populated with faults");
    } else {
        assert!(
            second.stderr.contains("by userfaultfd"),
            "{}",
            second.stderr
        );
        assert!(second.fill_faults < 200, "{second:?}");
    }
    // Records in the pool (TIERMALLOC_POOL) keep the device tier's peak too.
    let pool = ShmFile::new("device-pool");
    let spec = format!("path={},size=8M,create", pool.0.display());
    let in_pool = [
        ("TIERMALLOC_PROFILE", "d"),
        ("TIERMALLOC_POOL", spec.as_str()),
    ];
    let first_in_pool = run_on_device(dir.path(), &tiers, &in_pool, "100");
    assert_eq!(first_in_pool.reserved, 0, "{}", first_in_pool.stderr);
    let second_in_pool = run_on_device(dir.path(), &tiers, &in_pool, "100");
    assert!(
        second_in_pool.reserved >= first_in_pool.peak - MIB
            && second_in_pool.reserved <= first_in_pool.peak + 4 * MIB,
        "{second_in_pool:?}"
    );
    // Capped: no reservation beyond TIERMALLOC_PROFILE_MAX on a device tier either.
    let capped = run_on_device(
        dir.path(),
        &tiers,
        &[
            ("TIERMALLOC_PROFILE", "d"),
            ("TIERMALLOC_PROFILE_MAX", "50M"),
        ],
        "200",
    );
    assert!(
        capped.reserved <= 50 * MIB && capped.reserved >= 49 * MIB,
        "{capped:?}"
    );
}

/// The reserve is made present while the program runs: `main` starts before it is (with a
/// sequential fill in the constructor the whole reserve was mapped at `main`'s first line),
/// and it is all made present while `main` waits, without a miss. The workload runs on one
/// CPU: on two, a loaded machine can keep `main`'s thread off both for the whole fill (seen:
/// 2 runs in 5 at load 16); on one, the scheduler shares it between `main` and the fill
/// thread, and the fill needs some 100 times the CPU `main` needs to reach its first line.
#[test]
fn main_starts_while_the_device_reserve_is_made_present() {
    let dir = TempDir::new("profile", "device-start").kept_on_panic();
    let file = ShmFile::new("cxl-start");
    let tiers = format!("cxl:path={},size=512M,create", file.0.display());
    let profile = [("TIERMALLOC_PROFILE", "s")];
    let first = run_on_device(dir.path(), &tiers, &profile, "200");
    assert!(first.peak >= 200 * MIB, "{first:?}");
    // A fresh file: every page of the reserve is a new one (the slower fill).
    std::fs::remove_file(&file.0).unwrap();
    let (second, start_kb) = run_on_device_filled(
        dir.path(),
        &tiers,
        &profile,
        "0",
        first.peak - 2 * MIB,
        true,
    );
    assert!(
        start_kb * 1024 < first.peak / 2,
        "main started after {start_kb} kB of the reserve were present: {second:?}"
    );
    assert!(second.reserved >= first.peak - 2 * MIB, "{second:?}");
    // Only the library's own blocks cut before the fill thread started.
    assert!(second.reserve_miss <= MIB, "{second:?}");
}

/// A persistent tier's reserve changes nothing a recovery finds: a run that reserves 100 MiB
/// (its slabs cut ahead, their markers written) and uses 1 leaves a heap that recovers
/// exactly as the same run without the reserve does.
#[test]
fn a_persistent_tier_recovers_the_same_after_an_unused_reserve() {
    let dir = TempDir::new("profile", "device-persist").kept_on_panic();
    // The `pmr` line of the statistics report's figures a recovery determines.
    let heap_figures = |stderr: &str| -> String {
        let line = stderr
            .lines()
            .find(|l| l.starts_with("tiermalloc:   pmr  in use"))
            .unwrap_or_else(|| panic!("no pmr line: {stderr}"));
        line.to_owned()
    };
    let mut last = Vec::new();
    for (name, cap) in [("reserved", None), ("plain", Some("0"))] {
        let file = ShmFile::new(&format!("pmr-{name}"));
        let profiles = dir.path().join(name);
        let tiers = format!("pmr:path={},size=256M,create", file.0.display());
        let mut env = vec![("TIERMALLOC_PROFILE", "p")];
        let first = run_on_device(&profiles, &tiers, &env, "100");
        assert!(first.peak >= 100 * MIB, "{first:?}");
        if let Some(cap) = cap {
            env.push(("TIERMALLOC_PROFILE_MAX", cap));
        }
        // Exits once the reserve is present (it is made present while the program runs).
        let fill = if cap.is_none() { 100 * MIB } else { 0 };
        let (small, _) = run_on_device_filled(&profiles, &tiers, &env, "1", fill, false);
        match cap {
            // With slabs cut ahead, whose markers are the reserve's only device writes: an
            // empty slab is free space to the recovery.
            None => assert!(
                small.reserved >= 100 * MIB && small.slabs_ahead > 10,
                "{small:?}"
            ),
            Some(_) => assert_eq!((small.reserved, small.slabs_ahead), (0, 0), "{small:?}"),
        }
        let after = run_on_device(&profiles, &tiers, &[], "0");
        assert!(
            after.stderr.contains("tiermalloc:   pmr  in use"),
            "recovered: {}",
            after.stderr
        );
        last.push(heap_figures(&after.stderr));
    }
    assert_eq!(
        last[0], last[1],
        "the heap after a reserve, and without one"
    );
}

/// A live peer's use of a private device tier is what the next process of the name reserves
/// there (before any history: the seed's "a running instance of it first"); a peer killed
/// at its peak leaves a record that is ignored.
#[test]
fn a_live_peers_device_use_is_reserved_and_a_dead_peers_is_not() {
    let dir = TempDir::new("profile", "device-peers").kept_on_panic();
    let (peer_file, own_file) = (ShmFile::new("peer-cxl"), ShmFile::new("own-cxl"));
    let peer_tiers = format!("cxl:path={},size=256M,create", peer_file.0.display());
    let own_tiers = format!("cxl:path={},size=256M,create", own_file.0.display());
    let profile = [("TIERMALLOC_PROFILE", "dp"), ("TIERMALLOC_VERBOSE", "1")];
    let mut peer_env = vec![("TIERMALLOC_TIERS", peer_tiers.as_str())];
    peer_env.extend_from_slice(&profile);
    let mut peer = start_peer_growing(dir.path(), &peer_env, "100");
    let with_peer = run_on_device(dir.path(), &own_tiers, &profile, "0");
    assert!(
        with_peer
            .stderr
            .contains("of tier 'cxl' from the peak of 1 live peer(s)"),
        "{}",
        with_peer.stderr
    );
    // What it reserves (the workload exits at once: the fill is stopped partway).
    let reserving = with_peer
        .stderr
        .lines()
        .filter(|l| l.contains("of tier 'cxl'"))
        .find_map(|l| l.strip_prefix("tiermalloc: profile dp: reserving "))
        .and_then(|l| l.split(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        reserving >= 100 * MIB && reserving <= 110 * MIB,
        "reserves the peer's peak: {with_peer:?}"
    );
    // Killed at its peak: its live record stays behind, with no run recorded.
    peer.kill().unwrap();
    peer.wait().unwrap();
    // The next process has only the history of the run above (which used almost nothing).
    let after = run_on_device(dir.path(), &own_tiers, &profile, "0");
    assert!(
        after.reserved < MIB,
        "a dead peer's use was reserved: {}",
        after.stderr
    );
    assert!(!after.stderr.contains("live peer"), "{}", after.stderr);
}

/// `tests/programs/count_threads.c` built as a library to preload (once per test binary).
fn thread_counter() -> &'static Path {
    static SO: OnceLock<PathBuf> = OnceLock::new();
    SO.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("tiermalloc-count-threads-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let so = dir.join("count_threads.so");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/count_threads.c");
        let status = Command::new("cc")
            .args(["-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o"])
            .arg(&so)
            .arg(&src)
            .arg("-ldl")
            .status()
            .expect("cc runs");
        assert!(status.success(), "compiling {} failed", src.display());
        so
    })
}

/// The threads a `grow 20` run created (its `pthread_create` calls), and the run.
fn threads_created(dir: &Path, env: &[(&str, &str)]) -> (u64, Run) {
    let preload = format!(
        "{} {}",
        thread_counter().display(),
        library().path.display()
    );
    let mut all = vec![("LD_PRELOAD", preload.as_str())];
    all.extend_from_slice(env);
    let (stdout, stderr) = outputs(command(dir, &all, &["20"]));
    let n = figure(&stderr, "threads_created").unwrap_or_else(|| panic!("{stderr}"));
    (n, parse(&stdout, &stderr))
}

/// The profile's helper threads start only when there is something to reserve: a process
/// with no record and no live peer of its name, or capped at 0, creates no more threads than
/// one without a profile; the next run, which reserves, does.
#[test]
fn a_profile_with_nothing_to_reserve_starts_no_thread() {
    let dir = TempDir::new("profile", "threads").kept_on_panic();
    let (plain, _) = threads_created(dir.path(), &[]);
    let profile = [("TIERMALLOC_PROFILE", "t")];
    let (first, run) = threads_created(dir.path(), &profile);
    assert_eq!(first, plain, "nothing recorded yet: {}", run.stderr);
    assert_eq!(run.reserved, 0);
    let (capped, run) = threads_created(
        dir.path(),
        &[("TIERMALLOC_PROFILE", "t"), ("TIERMALLOC_PROFILE_MAX", "0")],
    );
    assert_eq!(capped, plain, "capped at 0: {}", run.stderr);
    let (second, run) = threads_created(dir.path(), &profile);
    assert!(run.reserved >= 20 * MIB, "{run:?}");
    assert_eq!(
        second,
        plain + 1,
        "the DRAM reserve's thread: {}",
        run.stderr
    );
    // A private device tier's first run: nothing recorded for it, no thread either.
    let file = ShmFile::new("threads-cxl");
    let tiers = format!("cxl:path={},size=64M,create", file.0.display());
    let device_dir = dir.path().join("device");
    let (on_device, run) = threads_created(
        &device_dir,
        &[
            ("TIERMALLOC_PROFILE", "t"),
            ("TIERMALLOC_TIERS", tiers.as_str()),
        ],
    );
    assert_eq!(on_device, plain, "{}", run.stderr);
}

/// The first allocations of each slab class (`tests/programs/first_allocs.c`, after 500 ms
/// of start-up) on a private device tier, profiled.
fn first_allocs(dir: &Path, tiers: &str, name: &str) -> (DeviceRun, String) {
    first_allocs_with(dir, tiers, name, &[])
}

/// `first_allocs` with `more` in its environment.
fn first_allocs_with(
    dir: &Path,
    tiers: &str,
    name: &str,
    more: &[(&str, &str)],
) -> (DeviceRun, String) {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    let exe = EXE.get_or_init(|| compile_test_program("first_allocs", "profile-first-allocs"));
    let mut env = vec![("TIERMALLOC_TIERS", tiers), ("TIERMALLOC_PROFILE", name)];
    env.extend_from_slice(more);
    let (stdout, stderr) = outputs(profiled_command(Command::new(exe), dir, &env, &["500"]));
    let run = device_run(&tiers[..3], String::new(), stderr);
    (run, stdout)
}

/// A profiled run's slabs (per lane and size class, the most in use at once) are cut ahead by
/// the next run's fill thread: its first allocation of each class takes a slot of a slab
/// already there, and the heap makes (nearly) no slab on an allocation's path; the slabs cut
/// ahead are the workload's, not more: the recorded peak does not grow run after run.
#[test]
fn the_next_run_finds_its_slabs_cut_ahead() {
    let dir = TempDir::new("profile", "slabs-ahead").kept_on_panic();
    let file = ShmFile::new("slabs-cxl");
    let tiers = format!("cxl:path={},size=64M,create", file.0.display());
    let (first, out) = first_allocs(dir.path(), &tiers, "s");
    assert!(out.starts_with("first_allocs 44"), "{out}");
    assert_eq!(first.slabs_ahead, 0, "{}", first.stderr);
    assert!(
        first.slabs_on_demand >= 44,
        "one slab per class at least: {first:?}"
    );
    let mut peaks = vec![first.peak];
    for _ in 0..2 {
        let (next, _) = first_allocs(dir.path(), &tiers, "s");
        assert!(next.slabs_ahead >= 35, "{next:?}");
        // Every class of `main` but those the library's own start-up left a slab of.
        assert!(next.slabs_ahead_used >= 35, "{next:?}");
        assert!(
            next.slabs_on_demand + 30 <= first.slabs_on_demand,
            "slabs made on an allocation's path: {} then {}: {next:?}",
            first.slabs_on_demand,
            next.slabs_on_demand
        );
        peaks.push(next.peak);
    }
    assert!(
        peaks.iter().all(|&p| p <= first.peak + 64 * 1024),
        "the recorded peak grew: {peaks:?}"
    );
}

/// With the records in the pool (`TIERMALLOC_POOL`), a run's slabs are recorded too, and the
/// next run finds them cut ahead, as from a directory's records.
#[test]
fn with_records_in_the_pool_the_next_run_finds_its_slabs_cut_ahead() {
    let dir = TempDir::new("profile", "slabs-ahead-pool").kept_on_panic();
    let file = ShmFile::new("slabs-pool-cxl");
    let pool = ShmFile::new("slabs-pool");
    let spec = format!("path={},size=8M,create", pool.0.display());
    let tiers = format!("cxl:path={},size=64M,create", file.0.display());
    let in_pool = [("TIERMALLOC_POOL", spec.as_str())];
    let (first, out) = first_allocs_with(dir.path(), &tiers, "sp", &in_pool);
    assert!(out.starts_with("first_allocs 44"), "{out}");
    assert_eq!(first.slabs_ahead, 0, "{}", first.stderr);
    let (next, _) = first_allocs_with(dir.path(), &tiers, "sp", &in_pool);
    assert!(next.slabs_ahead >= 35, "{next:?}");
    assert!(next.slabs_ahead_used >= 35, "{next:?}");
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        files.is_empty(),
        "records written to the directory: {files:?}"
    );
}
