//! The C programs in `c-tests/`, compiled with `cc` and run against the tiermalloc cdylib.
//!
//! Each `c-tests/NAME.c` is one `#[test]` named `NAME`. A program returns 0 when all of its
//! checks pass and prints one `FAIL file:line: ...` line on stderr per failed check (see
//! `c-tests/check.h`). It is compiled with
//! `cc -O1 -g -Wall -Werror -pthread -I include c-tests/NAME.c` and, by default, run twice:
//!
//! - **link**: linked against the library (`-L DIR -ltiermalloc -Wl,-rpath,DIR`), so the
//!   program's malloc family and the `tm_*` API come from it;
//! - **preload**: compiled without the library and run with `LD_PRELOAD=DIR/libtiermalloc.so`,
//!   as an unmodified program would be.
//!
//! In both modes the program gets `TIERMALLOC_TEST_EXPECT_LIB=<library>` and `check.h` then
//! verifies that every name of the malloc family really resolves to that library, so a preload
//! that failed to load (ld.so only warns) or a missing export cannot make a run test glibc.
//!
//! A first-line comment changes the modes: `/* mode: link-only */`, `/* mode: preload-only */`,
//! or `/* mode: plain */` (neither linked nor preloaded: the program gets the library's path as
//! `argv[1]` and in `TIERMALLOC_LIB`, e.g. to `dlopen` it).
//!
//! The library is found next to this test executable (`<target>/<profile>/deps/c_programs-HASH`):
//! `<target>/<profile>/deps/libtiermalloc.so`, which `cargo test` (re)builds before integration
//! tests, else `<target>/<profile>/libtiermalloc.so`. `TIERMALLOC_TEST_PRELOAD=/path/to/lib.so`
//! replaces it, e.g. `/usr/lib/x86_64-linux-gnu/libmimalloc.so.2` to see which checks another
//! allocator fails (programs that need the `tm_*` API then fail to link or to dlsym).
//!
//! Every run has a timeout and its own process group, killed as a whole on timeout, so a
//! deadlock fails the test instead of hanging the suite. `TIERMALLOC_*`, `LD_PRELOAD`, `MALLOC_*`
//! and `GLIBC_TUNABLES` are removed from the environment: the programs test the default
//! configuration (no tiers but DRAM). On failure the build directory is kept and named in the
//! message, so a program can be rerun by hand.

mod support;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{
    describe_status, excerpt, library, run_with_timeout, scrubbed_env, show_cmd, Scrub, TempDir,
};

/// Per run of one program. The slowest program takes a few seconds; the programs' own
/// watchdogs fire at 30-50 s with a clearer message than this one.
const TIMEOUT: Duration = Duration::from_secs(90);

/// Removed from the programs' environment besides what `scrubbed_env` always removes
/// (`TIERMALLOC_*`, `MIMALLOC_*`, `LD_PRELOAD`): glibc's and jemalloc's allocator configuration.
const SCRUB: Scrub = Scrub {
    prefixes: &["MALLOC_"],
    keep: &[],
    exact: &[
        "LD_LIBRARY_PATH",
        "GLIBC_TUNABLES",
        "JE_MALLOC_CONF",
        "MALLOC_CONF",
    ],
};

// ---------------------------------------------------------------------------------------------
// Locating things
// ---------------------------------------------------------------------------------------------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// How a program is built and run; from its first line.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Link,
    Preload,
    Plain,
}

fn modes_of(source: &str, path: &Path) -> Vec<Mode> {
    let first = source.lines().next().unwrap_or("").trim();
    let tag = first
        .strip_prefix("/*")
        .and_then(|s| s.strip_suffix("*/"))
        .map(str::trim)
        .and_then(|s| s.strip_prefix("mode:"))
        .map(str::trim);
    match tag {
        None => vec![Mode::Link, Mode::Preload],
        Some("link-only") => vec![Mode::Link],
        Some("preload-only") => vec![Mode::Preload],
        Some("plain") => vec![Mode::Plain],
        Some(other) => panic!(
            "{}: unknown mode `{other}` (want link-only, preload-only or plain)",
            path.display()
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Compiling and running one C program
// ---------------------------------------------------------------------------------------------

fn compile(src: &Path, out: &Path, link_with: Option<&Path>) -> Result<(), String> {
    let root = repo();
    let mut cmd = Command::new("cc");
    cmd.current_dir(&root)
        .args(["-O1", "-g", "-Wall", "-Werror", "-pthread", "-I"])
        .arg(root.join("include"))
        .arg(src)
        .arg("-o")
        .arg(out);
    if let Some(lib) = link_with {
        let dir = lib.parent().expect("library has a directory");
        let mut rpath = OsString::from("-Wl,-rpath,");
        rpath.push(dir);
        cmd.arg("-Wl,--no-as-needed");
        if lib.file_name().is_some_and(|n| n == "libtiermalloc.so") {
            cmd.arg("-L").arg(dir).arg("-ltiermalloc");
        } else {
            cmd.arg(lib); // an override library, linked by path
        }
        cmd.arg(rpath);
    }
    let shown = show_cmd(&cmd);
    let out = run_with_timeout(cmd, None, Duration::from_secs(120))
        .map_err(|e| format!("{shown}\n{e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "compiling failed ({}):\n{shown}\n{}{}",
            describe_status(&out.status),
            String::from_utf8_lossy(&out.stdout),
            excerpt(&out.stderr)
        ))
    }
}

fn run_c_test(name: &str) {
    let root = repo();
    let src = root.join("c-tests").join(format!("{name}.c"));
    let source = fs::read_to_string(&src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
    let modes = modes_of(&source, &src);
    let lib = library().path;
    // Kept when a test fails (a panic is unwinding), so the binaries can be rerun by hand.
    let mut dir = TempDir::new("ct", name).kept_on_panic();

    let mut failures = Vec::new();
    let mut plain_exe: Option<PathBuf> = None;
    for mode in modes {
        // Build (the unlinked binary serves both preload and plain modes).
        let exe = match mode {
            Mode::Link => {
                let exe = dir.path().join(format!("{name}-linked"));
                if let Err(e) = compile(&src, &exe, Some(&lib)) {
                    failures.push(format!("[{mode:?}] {e}"));
                    continue;
                }
                exe
            }
            Mode::Preload | Mode::Plain => match &plain_exe {
                Some(p) => p.clone(),
                None => {
                    let exe = dir.path().join(name);
                    if let Err(e) = compile(&src, &exe, None) {
                        failures.push(format!("[{mode:?}] {e}"));
                        continue;
                    }
                    plain_exe = Some(exe.clone());
                    exe
                }
            },
        };
        let mut cmd = Command::new(&exe);
        cmd.current_dir(dir.path())
            .env_clear()
            .envs(scrubbed_env(&SCRUB));
        match mode {
            Mode::Link => {
                cmd.env("TIERMALLOC_TEST_EXPECT_LIB", &lib);
            }
            Mode::Preload => {
                cmd.env("LD_PRELOAD", &lib)
                    .env("TIERMALLOC_TEST_EXPECT_LIB", &lib);
            }
            Mode::Plain => {
                cmd.arg(&lib).env("TIERMALLOC_LIB", &lib);
            }
        }
        let shown = show_cmd(&cmd);
        match run_with_timeout(cmd, None, TIMEOUT) {
            Err(e) => failures.push(format!("[{mode:?}] {shown}\n{e}")),
            Ok(out) => {
                eprintln!(
                    "c-tests/{name}.c [{mode:?}]: {} in {:.2} s: {}",
                    describe_status(&out.status),
                    out.elapsed.as_secs_f64(),
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .last()
                        .unwrap_or("")
                );
                if !out.status.success() {
                    failures.push(format!(
                        "[{mode:?}] {shown}\n{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                        describe_status(&out.status),
                        excerpt(&out.stdout),
                        excerpt(&out.stderr)
                    ));
                }
            }
        }
    }
    if !failures.is_empty() {
        dir.keep();
        panic!(
            "c-tests/{name}.c failed against {} (binaries kept in {}):\n\n{}",
            lib.display(),
            dir.path().display(),
            failures.join("\n\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// One test per C file
// ---------------------------------------------------------------------------------------------

macro_rules! c_tests {
    ($($name:ident),* $(,)?) => {
        const C_TESTS: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                run_c_test(stringify!($name));
            }
        )*
    };
}

c_tests! {
    big_class_pages,
    zero_and_errno,
    huge_and_overflow,
    alignment,
    realloc_semantics,
    calloc_zero,
    usable_size,
    tm_api,
    stats_json,
    device_tiers,
    persist,
    evacuate,
    fork_stdio,
    fork_signal,
    thread_churn,
    cross_thread_free,
    thread_exit_alloc,
    process_lifecycle,
    out_of_memory,
    dlopen_lib,
    stress_mt,
    heap_misuse,
    address_limit,
    malloc_introspection,
    tier_files,
    secure_mode,
    secure_reuse,
    pool_spaces,
    traffic_counts,
    double_free_race,
    double_free_threads,
    secure_large_guard,
    free_list_links,
    cxx_delete,
    first_pages_shared,
    thread_lifetime_kernel,
    idle_pages,
    big_blocks_shared,
    big_block_cache,
    realloc_placement,
}

/// A new `c-tests/*.c` must be added to the list above, or it would silently never run.
#[test]
fn every_c_program_has_a_test() {
    let dir = repo().join("c-tests");
    let mut on_disk: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| {
            let p = e.ok()?.path();
            if p.extension()? != "c" {
                return None;
            }
            Some(p.file_stem()?.to_string_lossy().into_owned())
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = C_TESTS.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "the c_tests! list in tests/c_programs.rs must name every c-tests/*.c exactly once"
    );
}

#[test]
fn mode_lines_are_understood() {
    let p = Path::new("x.c");
    assert_eq!(
        modes_of("/* mode: link-only */\nint x;", p),
        vec![Mode::Link]
    );
    assert_eq!(modes_of("/* mode: preload-only */", p), vec![Mode::Preload]);
    assert_eq!(modes_of("/*mode:plain*/", p), vec![Mode::Plain]);
    assert_eq!(
        modes_of("/* stress.c — no mode */", p),
        vec![Mode::Link, Mode::Preload]
    );
}
