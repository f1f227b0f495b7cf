//! The `tiermalloc` command: `run` (preloading, tiers, the program's status, the kept report),
//! `stats` (the last run, a live process, a file, `--json`), `inspect` and `check` (a
//! persistent tier's file, read-only), and its errors (one line, non-zero). The command finds the library under test through `TIERMALLOC_LIB`, except in
//! the test of its own search (`run_finds_the_library_installed_beside_it`); state goes to a
//! temporary `XDG_RUNTIME_DIR`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{library, run_with_timeout, scrubbed_env, Output, Scrub, TempDir};

const SCRUB: Scrub = Scrub {
    prefixes: &[],
    keep: &[],
    exact: &["XDG_RUNTIME_DIR"],
};

fn tiermalloc(state: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tiermalloc"));
    cmd.args(args)
        .env_clear()
        .envs(scrubbed_env(&SCRUB))
        .env("XDG_RUNTIME_DIR", state)
        .env("TIERMALLOC_LIB", &library().path);
    cmd
}

fn output(cmd: Command) -> Output {
    run_with_timeout(cmd, None, Duration::from_secs(60)).unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn run_preloads_the_library_keeps_the_status_and_reports() {
    let state = TempDir::new("cli", "run").kept_on_panic();
    let out = output(tiermalloc(
        state.path(),
        &[
            "run",
            "--stats",
            "--",
            "bash",
            "-c",
            "echo $LD_PRELOAD; exit 3",
        ],
    ));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), library().path.to_str().unwrap());
    let err = text(&out.stderr);
    assert!(err.contains("(bash): statistics at exit"), "{err}");
    assert!(err.contains("dram in use"), "{err}");

    // The last run's report, again, as text and as JSON.
    let out = output(tiermalloc(state.path(), &["stats"]));
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("(bash): statistics at exit"));
    let out = output(tiermalloc(state.path(), &["stats", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["program"], "bash");
    assert_eq!(v["tiers"][0]["kind"], "dram");
    // Only the kept report is left in the state directory.
    let left: Vec<_> = std::fs::read_dir(state.path().join("tiermalloc"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["last.json"]);
}

#[test]
fn run_removes_the_live_files_of_processes_that_ended_with_exit() {
    // dash ends with _exit, which runs no exit hook: its live file stays until `run` sweeps.
    let state = TempDir::new("cli", "sweep").kept_on_panic();
    let out = output(tiermalloc(
        state.path(),
        &["run", "--", "dash", "-c", "echo $$"],
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pid = text(&out.stdout).trim().to_string();
    assert!(!pid.is_empty());
    assert!(!Path::new(&format!("/dev/shm/tiermalloc-live.{pid}")).exists());
}

#[test]
fn run_leaves_the_programs_signals_alone() {
    // ^C must reach the program: `run` ignores SIGINT itself, but not in the program it starts.
    let state = TempDir::new("cli", "signals").kept_on_panic();
    let out = output(tiermalloc(
        state.path(),
        &["run", "--", "bash", "-c", "grep SigIgn /proc/self/status"],
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ignored =
        u64::from_str_radix(text(&out.stdout).split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(
        ignored & (1 << (libc::SIGINT - 1)),
        0,
        "SIGINT ignored in the program"
    );
    assert_eq!(
        ignored & (1 << (libc::SIGQUIT - 1)),
        0,
        "SIGQUIT ignored in the program"
    );
}

#[test]
fn run_passes_tiers_and_placement() {
    let state = TempDir::new("cli", "tiers").kept_on_panic();
    let pmr = format!("/dev/shm/tiermalloc-cli-test-{}-%p", std::process::id());
    let spec = format!("dram;pmr:path={pmr},size=8M,create");
    let out = output(tiermalloc(
        state.path(),
        &[
            "run",
            "--tiers",
            &spec,
            "--place",
            "pmr:min=1M",
            "--stats",
            "--json",
            "--",
            "bash",
            "-c",
            "echo $TIERMALLOC_PLACE; x=$(printf '%*s' 2000000 a); echo ${#x}",
        ],
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "pmr:min=1M\n2000000\n");
    let v: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    let pmr_figures = &v["tiers"][1];
    assert_eq!(pmr_figures["kind"], "pmr");
    assert!(pmr_figures["peak"].as_u64().unwrap() >= 1 << 20, "{v}");
    for entry in std::fs::read_dir("/dev/shm").unwrap() {
        let name = entry.unwrap().file_name();
        let prefix = format!("tiermalloc-cli-test-{}-", std::process::id());
        if name.to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(Path::new("/dev/shm").join(name));
        }
    }
}

#[test]
fn stats_reads_a_running_process_without_stopping_it() {
    let state = TempDir::new("cli", "live").kept_on_panic();
    let mut run = tiermalloc(state.path(), &["run", "--", "sleep", "30"]);
    let mut child = run.spawn().unwrap();
    // The sleeping process is the command's child; its live file appears at its start.
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
            .unwrap_or_default();
        if let Some(pid) = children.split_whitespace().next() {
            if Path::new(&format!("/dev/shm/tiermalloc-live.{pid}")).exists() {
                break pid.to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no live file for the child of the run"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = output(tiermalloc(state.path(), &["stats", &pid]));
    let report = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        report.starts_with(&format!("tiermalloc: pid {pid} (sleep): statistics live")),
        "{report}"
    );
    let out = output(tiermalloc(state.path(), &["stats", "--json", &pid]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["event"], "live");
    assert!(v["tiers"][0]["allocations"].as_u64().is_some());
    // Still running: the reads did not stop it.
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap()
            .split_whitespace()
            .nth(2),
        Some("S")
    );
    // SAFETY: plain kill(2) of our grandchild.
    unsafe { libc::kill(pid.parse().unwrap(), libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    // Killed by a signal: its file stays, and `stats` says so and removes it (unless the
    // `run` of a test running meanwhile swept it first: then there is no file to read).
    let out = output(tiermalloc(state.path(), &["stats", &pid]));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("is gone") || err.contains("publishes no live statistics"),
        "{err}"
    );
    assert!(!Path::new(&format!("/dev/shm/tiermalloc-live.{pid}")).exists());
}

#[test]
fn run_finds_the_library_installed_beside_it() {
    let prefix = TempDir::new("cli", "prefix").kept_on_panic();
    std::fs::create_dir_all(prefix.path().join("bin")).unwrap();
    std::fs::create_dir_all(prefix.path().join("lib")).unwrap();
    let exe = prefix.path().join("bin/tiermalloc");
    std::fs::copy(env!("CARGO_BIN_EXE_tiermalloc"), &exe).unwrap();
    std::fs::copy(
        &library().path,
        prefix.path().join("lib/libtiermalloc.so.0"),
    )
    .unwrap();
    let mut cmd = Command::new(&exe);
    cmd.args(["run", "--", "bash", "-c", "echo $LD_PRELOAD"])
        .env_clear()
        .envs(scrubbed_env(&SCRUB))
        .env("XDG_RUNTIME_DIR", prefix.path());
    let out = output(cmd);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = prefix.path().join("lib/libtiermalloc.so.0");
    assert_eq!(
        text(&out.stdout).trim(),
        std::fs::canonicalize(want).unwrap().to_str().unwrap()
    );

    std::fs::remove_file(prefix.path().join("lib/libtiermalloc.so.0")).unwrap();
    let mut cmd = Command::new(&exe);
    cmd.args(["run", "--", "true"])
        .env_clear()
        .envs(scrubbed_env(&SCRUB))
        .env("XDG_RUNTIME_DIR", prefix.path());
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("tiermalloc: cannot find libtiermalloc.so") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn errors_are_one_line_and_a_failure_status() {
    let state = TempDir::new("cli", "errors").kept_on_panic();
    let bad_json = state.path().join("bad.json");
    std::fs::write(&bad_json, "{\"pid\": 1}").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["frobnicate"], "unrecognized subcommand"),
        (&["run"], "required"),
        (
            &["run", "--", "/nonexistent/program"],
            "cannot run /nonexistent/program",
        ),
        (&["stats"], "no last run recorded"),
        (&["stats", "1"], "publishes no live statistics"),
        (&["stats", "/nonexistent.json"], "/nonexistent.json"),
        (
            &["stats", bad_json.to_str().unwrap()],
            "not a tiermalloc JSON report",
        ),
    ];
    for (args, expect) in cases {
        let out = output(tiermalloc(state.path(), args));
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("tiermalloc: ") && err.contains(expect),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = output(tiermalloc(state.path(), &["--version"]));
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("tiermalloc {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn inspect_and_check_read_a_persistent_tier_file_without_changing_it() {
    let state = TempDir::new("cli", "offline").kept_on_panic();
    let file = state.path().join("pmr");
    let spec = format!("dram;pmr:path={},size=4M,create", file.display());
    // Strings of 2000 bytes and more go to PMR while bash runs; the heap stays in the file.
    let out = output(tiermalloc(
        state.path(),
        &[
            "run",
            "--tiers",
            &spec,
            "--place",
            "pmr:min=2000",
            "--",
            "bash",
            "-c",
            "x=$(printf '%*s' 5000 a); echo ${#x}",
        ],
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = std::fs::read(&file).unwrap();

    let out = output(tiermalloc(
        state.path(),
        &["inspect", file.to_str().unwrap()],
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains(": tiermalloc heap ") && shown.contains("region 4.0 MiB"),
        "{shown}"
    );

    let out = output(tiermalloc(
        state.path(),
        &["check", "--json", file.to_str().unwrap()],
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["region_len"], 4 << 20);
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(0));
    assert_eq!(std::fs::read(&file).unwrap(), before, "the file changed");

    // Not a heap: one line, a failure status.
    let junk = state.path().join("junk");
    std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
    for cmd in ["check", "inspect"] {
        let out = output(tiermalloc(state.path(), &[cmd, junk.to_str().unwrap()]));
        let err = text(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.lines().count() == 1 && err.contains("no tiermalloc superblock"),
            "{err}"
        );
    }
}
