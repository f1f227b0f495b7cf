//! The statistics report as a program under `LD_PRELOAD` sees it: the destinations and
//! variables of `src/report.rs` (`TIERMALLOC_SHOW_STATS`, `_STATS_FILE` with `%p`,
//! `_STATS_FORMAT`, `_STATS_SIGNAL`), the pid and program name, the peak that survives frees,
//! and the check that descriptor 2 is still stderr. The programs are bash (dash ends with
//! `_exit`, which runs no exit hooks, so it never makes an at-exit report) and a small C program.
//! `tm_stats_json` and `tm_version` from C are in `c-tests/stats_json.c`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{library, run_with_timeout, scrubbed_env, Output, Scrub, TempDir};

const SCRUB: Scrub = Scrub {
    prefixes: &[],
    keep: &[],
    exact: &[],
};

/// Runs `argv` with the library preloaded and `env` added.
fn preloaded(argv: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(scrubbed_env(&SCRUB))
        .env("LD_PRELOAD", &library().path)
        .envs(env.iter().copied());
    let out = run_with_timeout(cmd, None, Duration::from_secs(60)).unwrap();
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A C program that holds 100 blocks of 100 KB at once, frees them, and exits.
fn peak_program(dir: &Path) -> PathBuf {
    let src = dir.join("peak.c");
    std::fs::write(
        &src,
        "#include <stdlib.h>\n#include <string.h>\nint main(void) {\n  void *p[100];\n  \
         for (int i = 0; i < 100; i++) { p[i] = malloc(100000); if (!p[i]) return 1; memset(p[i], 1, 100000); }\n  \
         for (int i = 0; i < 100; i++) free(p[i]);\n  return 0;\n}\n",
    )
    .unwrap();
    let exe = dir.join("peak");
    let st = Command::new("cc")
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap();
    assert!(st.success());
    exe
}

#[test]
fn show_stats_names_the_process_and_takes_only_real_booleans() {
    let out = preloaded(&["bash", "-c", "true"], &[("TIERMALLOC_SHOW_STATS", "yes")]);
    let text = stderr(&out);
    assert!(
        text.contains("(bash): statistics at exit") && text.contains("tiermalloc: pid "),
        "{text}"
    );
    assert!(
        text.contains("reserved") && text.contains("of address space"),
        "{text}"
    );
    assert!(
        text.contains(" KiB") || text.contains(" MiB"),
        "no human units: {text}"
    );

    for off in ["no", "0", "off", "false"] {
        let out = preloaded(&["bash", "-c", "true"], &[("TIERMALLOC_SHOW_STATS", off)]);
        assert_eq!(stderr(&out), "", "TIERMALLOC_SHOW_STATS={off}");
    }
    let out = preloaded(
        &["bash", "-c", "true"],
        &[("TIERMALLOC_SHOW_STATS", "maybe")],
    );
    let text = stderr(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("TIERMALLOC_SHOW_STATS") && text.contains("'maybe'"),
        "{text}"
    );
}

#[test]
fn stats_file_takes_percent_p_and_its_format() {
    let dir = TempDir::new("stats", "file").kept_on_panic();
    let json_path = dir.path().join("r-%p.json");
    let out = preloaded(
        &["bash", "-c", "echo $$"],
        &[("TIERMALLOC_STATS_FILE", json_path.to_str().unwrap())],
    );
    assert_eq!(stderr(&out), "", "the report went to the file, not stderr");
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let written = std::fs::read_to_string(dir.path().join(format!("r-{pid}.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&written).unwrap();
    assert_eq!(v["pid"].to_string(), pid);
    assert_eq!(v["program"], "bash");
    assert_eq!(v["event"], "exit");
    let dram = &v["tiers"][0];
    assert_eq!(dram["kind"], "dram");
    for key in [
        "in_use",
        "peak",
        "capacity",
        "reserved",
        "allocations",
        "frees",
    ] {
        assert!(dram[key].is_u64(), "{key} in {written}");
    }
    assert!(dram["peak"].as_u64() >= dram["in_use"].as_u64());

    let text_path = dir.path().join("r.txt");
    preloaded(
        &["bash", "-c", "true"],
        &[("TIERMALLOC_STATS_FILE", text_path.to_str().unwrap())],
    );
    let text = std::fs::read_to_string(&text_path).unwrap();
    assert!(text.starts_with("tiermalloc: pid "), "{text}");
    preloaded(
        &["bash", "-c", "true"],
        &[
            ("TIERMALLOC_STATS_FILE", text_path.to_str().unwrap()),
            ("TIERMALLOC_STATS_FORMAT", "json"),
        ],
    );
    assert!(std::fs::read_to_string(&text_path)
        .unwrap()
        .starts_with("{\"pid\":"));
}

#[test]
fn peak_outlives_the_frees() {
    let dir = TempDir::new("stats", "peak").kept_on_panic();
    let exe = peak_program(dir.path());
    let file = dir.path().join("peak.json");
    preloaded(
        &[exe.to_str().unwrap()],
        &[("TIERMALLOC_STATS_FILE", file.to_str().unwrap())],
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let dram = &v["tiers"][0];
    let (peak, in_use) = (
        dram["peak"].as_u64().unwrap(),
        dram["in_use"].as_u64().unwrap(),
    );
    assert!(
        peak >= 10_000_000,
        "peak {peak} below the 10 MB held at once"
    );
    assert!(
        in_use < 1_000_000,
        "in_use {in_use} at exit after freeing everything"
    );
}

#[test]
fn the_report_never_goes_into_a_reused_descriptor_2() {
    let dir = TempDir::new("stats", "fd2").kept_on_panic();
    let data = dir.path().join("data");
    // The shell closes stderr and reopens descriptor 2 on a data file before it exits.
    let script = format!("exec 2>&-; exec 2>{}; echo data >&2", data.display());
    let out = preloaded(&["bash", "-c", &script], &[("TIERMALLOC_SHOW_STATS", "1")]);
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "data\n");
    assert_eq!(stderr(&out), "");
}

#[test]
fn a_signal_makes_a_report_and_the_program_runs_on() {
    let out = preloaded(
        &["bash", "-c", "kill -USR1 $$; echo after"],
        &[("TIERMALLOC_STATS_SIGNAL", "USR1")],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "after\n");
    let text = stderr(&out);
    assert!(text.contains("(bash): statistics on signal"), "{text}");
    assert!(!text.contains("at exit"), "{text}");

    let out = preloaded(
        &["bash", "-c", "true"],
        &[("TIERMALLOC_STATS_SIGNAL", "KILL")],
    );
    let text = stderr(&out);
    assert!(
        text.contains("TIERMALLOC_STATS_SIGNAL") && text.lines().count() == 1,
        "{text}"
    );
}

/// A `TIERMALLOC_STATS_FILE` that cannot be opened: one line naming the file and why, then the
/// report on stderr. The line said "cannot open it (errno 0)": the errno was read after the
/// library had put the program's back.
#[test]
fn an_unopenable_stats_file_is_named_with_its_reason() {
    let dir = TempDir::new("stats", "unopenable").kept_on_panic();
    let path = dir.path().join("no-such-dir").join("r.json");
    let out = preloaded(
        &["bash", "-c", "true"],
        &[("TIERMALLOC_STATS_FILE", path.to_str().unwrap())],
    );
    let err = stderr(&out);
    let first = err.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!(
            "tiermalloc: TIERMALLOC_STATS_FILE: cannot open '{}': No such file or directory; \
             report on stderr",
            path.display()
        ),
        "{err}"
    );
    assert!(err.contains("statistics at exit"), "{err}");
}
