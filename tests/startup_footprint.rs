//! What a small program has resident because it preloads the library: the library's own
//! mappings (its headers, the code every process runs, its relocated data) and the anonymous
//! memory it adds (heap, metadata, `.bss`), against the same program without a preload.
//!
//! `tests/programs/startup_footprint.c` makes three allocations and reads `/proc/self/smaps`
//! at its end. Fails when the start-up footprint grows back: the text spread over windows again
//! (session 8: 572 KiB of text for 55 KiB run), metadata or first pages touched eagerly.
//! Measured (BENCHMARKS.md "Session 11, branch rssbase"): release library 164 KiB of its own
//! mappings and 68 KiB of anonymous memory over glibc's; the debug build 560 and 116.

mod support;

use std::process::Command;
use support::{compile_test_program, library, run_with_timeout, scrubbed_env, show_cmd, Scrub};

/// `(library KiB, anonymous KiB)` of one run, with `preload` or without a preload.
fn footprint(exe: &std::path::Path, lib: &std::path::Path, preload: bool) -> (u64, u64) {
    let mut cmd = Command::new(exe);
    cmd.env_clear()
        .envs(scrubbed_env(&Scrub {
            prefixes: &["MALLOC_"],
            keep: &[],
            exact: &["GLIBC_TUNABLES"],
        }))
        .env("TIERMALLOC_FOOTPRINT_LIB", lib);
    if preload {
        cmd.env("LD_PRELOAD", lib);
    }
    let shown = show_cmd(&cmd);
    let out = run_with_timeout(cmd, None, std::time::Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown}: {}",
        support::describe_status(&out.status)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let f: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(f.len(), 2, "{shown} printed {text:?}");
    (f[0], f[1])
}

#[test]
fn a_small_program_pays_a_bounded_start_up_footprint() {
    let lib = library();
    if !lib.is_tiermalloc {
        return;
    }
    // The library's release build, or the tests' own (debug: a larger text, no inlining).
    let (lib_max, anon_max) = if cfg!(debug_assertions) {
        (768, 176)
    } else {
        (256, 112)
    };
    let exe = compile_test_program("startup_footprint", "footprint");
    // The least of three runs each: nothing of ours varies between runs, but another
    // library's anonymous pages could.
    let ours: Vec<(u64, u64)> = (0..3).map(|_| footprint(&exe, &lib.path, true)).collect();
    let bare = (0..3)
        .map(|_| footprint(&exe, &lib.path, false).1)
        .min()
        .unwrap();
    let lib_kib = ours.iter().map(|o| o.0).min().unwrap();
    let anon_kib = ours.iter().map(|o| o.1).min().unwrap();
    eprintln!("library {lib_kib} KiB, anonymous {anon_kib} KiB against {bare} KiB without it");
    assert!(
        lib_kib > 0,
        "no mapping of {} found: was it preloaded?",
        lib.path.display()
    );
    assert!(
        lib_kib <= lib_max,
        "the library's own mappings hold {lib_kib} KiB resident in a small program (bound \
         {lib_max}): the code every process runs no longer fits its window (link/hot_text.ld)?"
    );
    assert!(
        anon_kib.saturating_sub(bare) <= anon_max,
        "preloading the library adds {} KiB of anonymous memory to a small program (bound \
         {anon_max}; {anon_kib} against {bare} without it)",
        anon_kib.saturating_sub(bare)
    );
}
