//! The library's first read-only window (its dynamic symbols, relocations and the start of
//! `.rodata`) holds only the pages a process reads after start-up (`src/file_pages.rs`).
//!
//! `tests/programs/file_pages.c` makes three allocations and reads `/proc/self/smaps` at its
//! end. Fails when the window is mapped whole again (64 KiB: the kernel's fault-around maps it
//! at the loader's first read): the start-up hook no longer splits and drops it, or something
//! after start-up reads most of its pages. Measured (BENCHMARKS.md "Session 13, branch rss3"):
//! 12 KiB in 16 mappings (release build; debug 8), 64 KiB in one mapping without the change.

mod support;

use std::process::Command;
use support::{compile_test_program, library, run_with_timeout, scrubbed_env, show_cmd, Scrub};

/// `(window KiB, mappings)` of one run of the program with the library preloaded.
fn window(exe: &std::path::Path, lib: &std::path::Path) -> (u64, u64) {
    let mut cmd = Command::new(exe);
    cmd.env_clear()
        .envs(scrubbed_env(&Scrub {
            prefixes: &["MALLOC_"],
            keep: &[],
            exact: &["GLIBC_TUNABLES"],
        }))
        .env("TIERMALLOC_FOOTPRINT_LIB", lib)
        .env("LD_PRELOAD", lib);
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
fn the_first_read_only_window_keeps_only_the_pages_read_after_start_up() {
    let lib = library();
    if !lib.is_tiermalloc {
        return;
    }
    let exe = compile_test_program("file_pages", "file-pages");
    // The most of three runs: a page read once more only adds to it.
    let runs: Vec<(u64, u64)> = (0..3).map(|_| window(&exe, &lib.path)).collect();
    let (kib, mappings) = runs.iter().copied().max().unwrap();
    eprintln!("first read-only window: {kib} KiB resident in {mappings} mappings");
    assert!(
        mappings > 0 && kib > 0,
        "no read-only mapping of {} found: was it preloaded?",
        lib.path.display()
    );
    assert!(
        kib <= 48,
        "the library's first read-only window holds {kib} KiB resident in {mappings} mappings \
         (bound 48 of its 64): start-up no longer drops its unused pages (src/file_pages.rs)?"
    );
}
