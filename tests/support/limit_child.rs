//! Runs one test of the calling binary again as a child under a DRAM `limit=` (the limit is
//! set once, when the tiers open) and reads the figures it prints (`KEY value` words).
//! Shared by `tests/dram_limit_*.rs` (by `#[path]`).

use std::process::Command;

/// The child's standard output: `test` of this binary run alone with `child` set to `value`
/// and `TIERMALLOC_TIERS="dram:limit=<limit_kib>K"`; panics if it failed.
pub fn run_child(test: &str, child: &str, value: &str, limit_kib: u64) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(child, value)
        .env("TIERMALLOC_TIERS", format!("dram:limit={limit_kib}K"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The number after the word `key` in `stdout`.
pub fn figure(stdout: &str, key: &str) -> u64 {
    stdout
        .split_whitespace()
        .skip_while(|w| *w != key)
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {stdout}"))
}
