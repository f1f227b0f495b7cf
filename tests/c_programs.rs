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

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Per run of one program. The slowest program takes a few seconds; the programs' own
/// watchdogs fire at 30-50 s with a clearer message than this one.
const TIMEOUT: Duration = Duration::from_secs(90);

/// Replaces the library under test (read by this test only, never passed to the programs).
const OVERRIDE_VAR: &str = "TIERMALLOC_TEST_PRELOAD";

extern "C" {
    // kill(2) from libc, which std already links. pid_t is i32 on Linux.
    fn kill(pid: i32, sig: i32) -> i32;
}
const SIGKILL: i32 = 9;

// ---------------------------------------------------------------------------------------------
// Locating things
// ---------------------------------------------------------------------------------------------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `<target>/<profile>`, from this executable's path `<target>/<profile>/deps/<exe>`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in <target>/<profile>/deps/")
        .to_path_buf()
}

/// The library under test (canonical path).
fn library() -> PathBuf {
    if let Some(p) = std::env::var_os(OVERRIDE_VAR).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{OVERRIDE_VAR}={} does not name a file",
            p.display()
        );
        return fs::canonicalize(&p).unwrap_or(p);
    }
    // deps/ first: `cargo test` rebuilds the cdylib there; only `cargo build` also copies it
    // up into <profile>/, where it may be older.
    let dir = profile_dir();
    let candidates = [
        dir.join("deps").join("libtiermalloc.so"),
        dir.join("libtiermalloc.so"),
    ];
    for c in &candidates {
        if c.is_file() {
            return fs::canonicalize(c).unwrap_or_else(|_| c.clone());
        }
    }
    panic!(
        "libtiermalloc.so not found (looked at {} and {}); cargo builds the cdylib before \
         integration tests, so check that crate-type still includes \"cdylib\" \
         (or set {OVERRIDE_VAR}=/path/to/lib.so)",
        candidates[0].display(),
        candidates[1].display()
    );
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

/// Environment for the programs: ours minus allocator configuration and outer preloads.
fn clean_env() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            !(k.starts_with("TIERMALLOC_")
                || k.starts_with("MALLOC_")
                || k.starts_with("MIMALLOC_")
                || k == "LD_PRELOAD"
                || k == "LD_LIBRARY_PATH"
                || k == "GLIBC_TUNABLES"
                || k == "JE_MALLOC_CONF"
                || k == "MALLOC_CONF")
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Build directory
// ---------------------------------------------------------------------------------------------

struct BuildDir {
    path: PathBuf,
    keep: bool,
}

impl BuildDir {
    fn new(name: &str) -> BuildDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "tiermalloc-ct-{name}-{}-{}-{nanos:x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        BuildDir { path, keep: false }
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        // Kept when a test fails (a panic is unwinding), so the binaries can be rerun by hand.
        if !self.keep && !thread::panicking() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running with a timeout
// ---------------------------------------------------------------------------------------------

struct Output {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    elapsed: Duration,
}

fn describe(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!(
            "killed by signal {sig}{}",
            if status.core_dumped() {
                " (core dumped)"
            } else {
                ""
            }
        ),
        _ => format!("{status:?}"),
    }
}

/// `bytes` as text, shortened to its first ~7000 and last ~2000 bytes if longer: the first
/// failures are usually the telling ones, the last lines hold the summary.
fn excerpt(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.len() <= 10_000 {
        return s.into_owned();
    }
    let mut head_end = 7000;
    while !s.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let mut tail_start = s.len() - 2000;
    while !s.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    format!(
        "{}\n[... {} bytes cut ...]\n{}",
        &s[..head_end],
        tail_start - head_end,
        &s[tail_start..]
    )
}

/// The last `n` bytes of `bytes`, as text.
fn tail(bytes: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    if start > 0 {
        format!("[... {start} bytes cut ...]\n{}", &s[start..])
    } else {
        s.into_owned()
    }
}

fn show(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            let k = k.to_string_lossy();
            if k.starts_with("TIERMALLOC_") || k == "LD_PRELOAD" {
                s.push_str(&format!("{k}={} ", v.to_string_lossy()));
            }
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` in its own process group, collecting stdout and stderr; kills the whole group
/// (forked children included) if it is not finished within `timeout`.
fn run(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", show(&cmd)))?;
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel::<(usize, Vec<u8>)>();
    let readers: [(usize, Box<dyn Read + Send>); 2] = [
        (0, Box::new(child.stdout.take().expect("stdout is piped"))),
        (1, Box::new(child.stderr.take().expect("stderr is piped"))),
    ];
    for (i, mut r) in readers {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            let _ = tx.send((i, buf));
        });
    }
    drop(tx);
    let mut status = None;
    let mut outs: [Option<Vec<u8>>; 2] = [None, None];
    loop {
        if status.is_none() {
            status = child.try_wait().map_err(|e| format!("wait: {e}"))?;
        }
        while let Ok((i, b)) = rx.try_recv() {
            outs[i] = Some(b);
        }
        if status.is_some() && outs.iter().all(Option::is_some) {
            break;
        }
        if start.elapsed() > timeout {
            // SAFETY: kill(2) has no memory-safety preconditions. The target is the process
            // group we created for this child; its id is not reused while the leader is
            // unreaped or a member still holds our pipes.
            unsafe {
                kill(-pid, SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            let deadline = Instant::now() + Duration::from_secs(5);
            while outs.iter().any(Option::is_none) {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok((i, b)) => outs[i] = Some(b),
                    Err(_) => break,
                }
            }
            return Err(format!(
                "TIMED OUT after {timeout:?} (deadlock?): process group killed\n\
                 --- stdout (tail) ---\n{}\n--- stderr (tail) ---\n{}",
                tail(outs[0].as_deref().unwrap_or_default(), 3000),
                tail(outs[1].as_deref().unwrap_or_default(), 6000)
            ));
        }
        // A group member that outlives the leader while holding the pipes is waited for
        // (and killed at the timeout) rather than leaking.
        thread::sleep(Duration::from_millis(5));
    }
    let [o, e] = outs;
    Ok(Output {
        status: status.expect("exited"),
        stdout: o.expect("stdout collected"),
        stderr: e.expect("stderr collected"),
        elapsed: start.elapsed(),
    })
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
    let shown = show(&cmd);
    let out = run(cmd, Duration::from_secs(120)).map_err(|e| format!("{shown}\n{e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "compiling failed ({}):\n{shown}\n{}{}",
            describe(&out.status),
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
    let lib = library();
    let mut dir = BuildDir::new(name);

    let mut failures = Vec::new();
    let mut plain_exe: Option<PathBuf> = None;
    for mode in modes {
        // Build (the unlinked binary serves both preload and plain modes).
        let exe = match mode {
            Mode::Link => {
                let exe = dir.path.join(format!("{name}-linked"));
                if let Err(e) = compile(&src, &exe, Some(&lib)) {
                    failures.push(format!("[{mode:?}] {e}"));
                    continue;
                }
                exe
            }
            Mode::Preload | Mode::Plain => match &plain_exe {
                Some(p) => p.clone(),
                None => {
                    let exe = dir.path.join(name);
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
        cmd.current_dir(&dir.path).env_clear().envs(clean_env());
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
        let shown = show(&cmd);
        match run(cmd, TIMEOUT) {
            Err(e) => failures.push(format!("[{mode:?}] {shown}\n{e}")),
            Ok(out) => {
                eprintln!(
                    "c-tests/{name}.c [{mode:?}]: {} in {:.2} s: {}",
                    describe(&out.status),
                    out.elapsed.as_secs_f64(),
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .last()
                        .unwrap_or("")
                );
                if !out.status.success() {
                    failures.push(format!(
                        "[{mode:?}] {shown}\n{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                        describe(&out.status),
                        excerpt(&out.stdout),
                        excerpt(&out.stderr)
                    ));
                }
            }
        }
    }
    if !failures.is_empty() {
        dir.keep = true;
        panic!(
            "c-tests/{name}.c failed against {} (binaries kept in {}):\n\n{}",
            lib.display(),
            dir.path.display(),
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
    zero_and_errno,
    huge_and_overflow,
    alignment,
    realloc_semantics,
    calloc_zero,
    usable_size,
    tm_api,
    fork_stdio,
    fork_signal,
    thread_churn,
    cross_thread_free,
    thread_exit_alloc,
    process_lifecycle,
    out_of_memory,
    dlopen_lib,
    stress_mt,
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
