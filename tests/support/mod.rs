//! Support code shared by the integration tests that run other programs against the tiermalloc
//! cdylib (`tests/c_programs.rs`, `tests/real_programs.rs`), included by each with `mod support;`.
//! Being in a subdirectory, it is not a test target of its own.
//!
//! It owns:
//! - locating the library under test, `libtiermalloc.so` next to the test executable, or the
//!   file named by `TIERMALLOC_TEST_PRELOAD` ([`library`], [`profile_dir`], [`OVERRIDE_VAR`]);
//! - the environment children start from, minus allocator configuration and outer preloads plus
//!   what each test file adds ([`scrubbed_env`], [`Scrub`]);
//! - temporary directories, removed on drop unless kept for a failure ([`TempDir`]);
//! - running a child in its own process group with a timeout, killing the whole group when it
//!   expires ([`run_with_timeout`], [`Output`]);
//! - describing what happened in failure messages ([`describe_status`], [`show_cmd`], [`tail`],
//!   [`excerpt`]).
//!
//! Each test crate compiles this module separately and uses a part of it, hence the
//! module-wide `allow(dead_code)`.

#![allow(dead_code)]

pub mod lackey;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Replaces the library under test (read by the tests only, never passed to the children).
pub const OVERRIDE_VAR: &str = "TIERMALLOC_TEST_PRELOAD";

extern "C" {
    // libc's kill(2); std links libc, so no extra crate is needed. pid_t is i32 on Linux.
    fn kill(pid: i32, sig: i32) -> i32;
    fn sysconf(name: i32) -> i64;
}
const SIGKILL: i32 = 9;
/// `_SC_CLK_TCK` of glibc and musl on Linux.
const SC_CLK_TCK: i32 = 2;

// ---------------------------------------------------------------------------------------------
// Locating the library
// ---------------------------------------------------------------------------------------------

/// `<target>/<profile>`, derived from this executable's path `<target>/<profile>/deps/<exe>`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in <target>/<profile>/deps/")
        .to_path_buf()
}

/// Compiles `tests/programs/NAME.c` (`cc -O2 -Wall -Werror`) into `tiermalloc-TAG-PID` in the
/// temporary directory and returns the executable's path; panics if it does not compile.
pub fn compile_test_program(name: &str, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tiermalloc-{tag}-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let exe = dir.join(name);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/programs/{name}.c"));
    let status = Command::new("cc")
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("cc runs");
    assert!(status.success(), "compiling {} failed", src.display());
    exe
}

/// The library under test.
pub struct Library {
    /// Canonical path of the shared object.
    pub path: PathBuf,
    /// Whether it is a tiermalloc build (not some other allocator given by [`OVERRIDE_VAR`]), so
    /// that tiermalloc-specific checks apply.
    pub is_tiermalloc: bool,
}

/// The library under test: the file named by [`OVERRIDE_VAR`] if that is set and not empty,
/// else `<target>/<profile>/deps/libtiermalloc.so`, else `<target>/<profile>/libtiermalloc.so`.
/// Panics if none of them exists.
pub fn library() -> Library {
    if let Some(p) = std::env::var_os(OVERRIDE_VAR).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{OVERRIDE_VAR}={} does not name a file",
            p.display()
        );
        // An override that is itself a tiermalloc build (another target dir, a release
        // build) still gets the tiermalloc-specific checks.
        let is_tiermalloc = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("tiermalloc"));
        return Library {
            path: fs::canonicalize(&p).unwrap_or(p),
            is_tiermalloc,
        };
    }
    // `cargo test` writes the cdylib to deps/ (and rebuilds it there whenever src/ changed);
    // only `cargo build` also links it up into <profile>/, where it may be older. So deps/ first.
    let dir = profile_dir();
    let candidates = [
        dir.join("deps").join("libtiermalloc.so"),
        dir.join("libtiermalloc.so"),
    ];
    for c in &candidates {
        if c.is_file() {
            soname_link_next_to(c);
            return Library {
                path: fs::canonicalize(c).unwrap_or_else(|_| c.clone()),
                is_tiermalloc: true,
            };
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

/// The library's soname (`build.rs`): what a program linked with `-ltiermalloc` asks the
/// loader for.
pub const SONAME: &str = "libtiermalloc.so.0";

/// Makes `SONAME` next to `lib` a link to it, as `install.sh` does, so that programs linked
/// against the build directory find the library through their rpath. A link made by another
/// test at the same time is as good as ours.
fn soname_link_next_to(lib: &Path) {
    let link = lib.with_file_name(SONAME);
    if fs::symlink_metadata(&link).is_err() {
        let _ = std::os::unix::fs::symlink("libtiermalloc.so", &link);
    }
}

// ---------------------------------------------------------------------------------------------
// The children's environment
// ---------------------------------------------------------------------------------------------

/// Removed from every child's environment: tiermalloc's configuration (the children run the
/// default one), mimalloc's (a usual override library) and an outer preload.
const SCRUB_ALWAYS_PREFIXES: &[&str] = &["TIERMALLOC_", "MIMALLOC_"];
const SCRUB_ALWAYS_EXACT: &[&str] = &["LD_PRELOAD"];

/// What a test file removes from the environment on top of what [`scrubbed_env`] always does.
pub struct Scrub {
    /// Variables whose names start with one of these are removed...
    pub prefixes: &'static [&'static str],
    /// ...except these (checked after `exact`).
    pub keep: &'static [&'static str],
    /// Variables with exactly these names are removed.
    pub exact: &'static [&'static str],
}

/// The environment a child starts from (to be set after `Command::env_clear`): ours, minus
/// `TIERMALLOC_*`, `MIMALLOC_*` and `LD_PRELOAD`, minus what `extra` names.
pub fn scrubbed_env(extra: &Scrub) -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            let k = k.as_ref();
            if SCRUB_ALWAYS_EXACT.contains(&k) || extra.exact.contains(&k) {
                return false;
            }
            if extra.keep.contains(&k) {
                return true;
            }
            !SCRUB_ALWAYS_PREFIXES
                .iter()
                .chain(extra.prefixes)
                .any(|p| k.starts_with(p))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------------

/// A fresh directory `<tmp>/tiermalloc-<kind>-<name>-<pid>-<counter>-<nanos>`, removed on drop
/// unless [`TempDir::keep`] was called, or it was made [`TempDir::kept_on_panic`] and the thread
/// is panicking (a test failing), so that what it holds can be examined or rerun by hand.
pub struct TempDir {
    path: PathBuf,
    keep: bool,
    keep_on_panic: bool,
}

impl TempDir {
    /// Creates the directory; `kind` tells the test files apart, `name` the tests.
    pub fn new(kind: &str, name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "tiermalloc-{kind}-{name}-{}-{}-{nanos:x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir {
            path,
            keep: false,
            keep_on_panic: false,
        }
    }

    /// Keeps the directory if it is dropped while the thread panics.
    pub fn kept_on_panic(mut self) -> TempDir {
        self.keep_on_panic = true;
        self
    }

    /// Keeps the directory when it is dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let wanted = self.keep || (self.keep_on_panic && thread::panicking());
        if !wanted {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running with a timeout
// ---------------------------------------------------------------------------------------------

/// What a finished child left behind.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// From spawning to collecting the status and both outputs.
    pub elapsed: Duration,
}

/// `exit status N` or `killed by signal N [(core dumped)]`.
pub fn describe_status(status: &ExitStatus) -> String {
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
pub fn excerpt(bytes: &[u8]) -> String {
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

/// The last `n` bytes of `bytes`, as text, after a line saying how much was cut if anything was.
pub fn tail(bytes: &[u8], n: usize) -> String {
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

/// `VAR=value ... prog arg arg ...  (in DIR)`, with the variables that decide the allocator
/// (`TIERMALLOC_*`, `LD_PRELOAD`) among those set on `cmd`, and the working directory if set.
/// (Command's Debug output would list the whole environment.)
pub fn show_cmd(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            let k = k.to_string_lossy();
            if k.starts_with("TIERMALLOC_") || k == "LD_PRELOAD" {
                let _ = write!(s, "{k}={} ", v.to_string_lossy());
            }
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    if let Some(d) = cmd.get_current_dir() {
        let _ = write!(s, "  (in {})", d.display());
    }
    s
}

/// Runs `cmd` in its own process group, feeding it `stdin` (or /dev/null) and collecting stdout
/// and stderr; kills the whole group (forked children included, any grandchild that still holds
/// the pipes) if it is not done within `timeout`, and then returns an error with the output's
/// tails.
pub fn run_with_timeout(
    cmd: Command,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Output, String> {
    run_with_limits(cmd, stdin, timeout, None)
}

/// [`run_with_timeout`], and the group is also killed when the child itself (the group's
/// leader) has used more than `cpu` of CPU time (user + system, from `/proc/PID/stat`, looked
/// at once a second): a limit that means the same on an idle machine and on a loaded one, where
/// a wall-clock limit tight enough to catch a spinning child would also kill one that only got
/// a small share of the cores.
pub fn run_with_limits(
    mut cmd: Command,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    cpu: Option<Duration>,
) -> Result<Output, String> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", show_cmd(&cmd)))?;
    let pid = child.id() as i32;

    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A child that exits early closes the pipe: ignore EPIPE, the status tells the story.
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
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
    let mut cpu_checked = start;
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
        let mut over = (start.elapsed() > timeout).then(|| format!("after {timeout:?}"));
        if let (Some(limit), None) = (cpu, status) {
            if cpu_checked.elapsed() >= Duration::from_secs(1) {
                cpu_checked = Instant::now();
                if let Some(used) = cpu_time(pid).filter(|used| *used > limit) {
                    over = Some(format!("having used {used:.0?} of CPU (limit {limit:?})"));
                }
            }
        }
        if let Some(over) = over {
            // SAFETY (of the FFI call): plain kill(2) on the process group we created. The group
            // id cannot have been reused: either the leader is unreaped, or a member still holds
            // our pipes, and the kernel does not hand out a pid that is an active group id.
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
                "TIMED OUT {over} (deadlock or livelock?): process group killed\n\
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

/// The CPU time (user + system) process `pid` has used so far: fields 14 and 15 of
/// `/proc/PID/stat`, in clock ticks. `None` once it is gone.
fn cpu_time(pid: i32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY (of the FFI call): sysconf reads a constant of the C library.
    let ticks = unsafe { sysconf(SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis((utime + stime) * 1000 / ticks))
}
