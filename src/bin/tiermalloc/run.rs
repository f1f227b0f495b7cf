//! `tiermalloc run`: starts a program with the library preloaded, its tiers and placement set,
//! live statistics on, and its at-exit report written as JSON into the state directory, where
//! `tiermalloc stats` finds it (`last.json`). When the program has exited, the live files its
//! processes left without running exit hooks (`_exit`) are removed.

use crate::stats::{self, state_dir};
use crate::Failure;
use clap::ArgMatches;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The library: `TIERMALLOC_LIB` if set; else next to this command (a build directory:
/// `target/release/tiermalloc` beside `libtiermalloc.so`); else installed, in `../lib` of the
/// command's directory (`PREFIX/bin/tiermalloc`, `PREFIX/lib/libtiermalloc.so.0`).
pub fn find_library() -> Result<PathBuf, Failure> {
    if let Some(lib) = std::env::var_os("TIERMALLOC_LIB").filter(|l| !l.is_empty()) {
        let lib = PathBuf::from(lib);
        return if lib.is_file() {
            Ok(lib)
        } else {
            Err(format!("TIERMALLOC_LIB={}: no such file", lib.display()))
        };
    }
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find this command's path: {e}"))?;
    let exe = exe.canonicalize().unwrap_or(exe);
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let mut candidates = vec![dir.join("libtiermalloc.so"), dir.join("libtiermalloc.so.0")];
    if let Some(prefix) = dir.parent() {
        candidates.push(prefix.join("lib/libtiermalloc.so.0"));
        candidates.push(prefix.join("lib64/libtiermalloc.so.0"));
        candidates.push(prefix.join("lib/libtiermalloc.so"));
    }
    candidates
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .ok_or_else(|| {
            format!(
                "cannot find libtiermalloc.so next to {} or in {}/lib; set \
                 TIERMALLOC_LIB=/path/to/libtiermalloc.so",
                exe.display(),
                dir.parent().unwrap_or(dir).display()
            )
        })
}

pub fn run(m: &ArgMatches) -> Result<ExitCode, Failure> {
    let lib = find_library()?;
    let mut argv = m.get_many::<String>("cmd").into_iter().flatten();
    let program = argv.next().ok_or("run: no command given")?;
    let dir = state_dir()?;
    // Every process of the run writes its report here as PID.json; the first one's is kept.
    let reports = dir.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&reports)
        .map_err(|e| format!("cannot create {}: {e}", reports.display()))?;

    let mut preload = OsString::from(&lib);
    if let Some(outer) = std::env::var_os("LD_PRELOAD").filter(|p| !p.is_empty()) {
        preload.push(":");
        preload.push(outer);
    }
    let mut cmd = Command::new(program);
    // The user's TIERMALLOC_* variables, which this command kept from the library (own_env),
    // are the program's.
    cmd.args(argv).envs(crate::own_env::held());
    cmd.env("LD_PRELOAD", preload)
        .env("TIERMALLOC_STATS_LIVE", "1")
        .env("TIERMALLOC_STATS_FILE", reports.join("%p.json"))
        .env("TIERMALLOC_STATS_FORMAT", "json");
    if let Some(t) = m.get_one::<String>("tiers") {
        cmd.env("TIERMALLOC_TIERS", t);
    }
    if let Some(p) = m.get_one::<String>("place") {
        cmd.env("TIERMALLOC_PLACE", p);
    }
    let child = cmd.spawn();
    // The terminal's ^C and ^\ go to the program; this command waits for it to finish. Set
    // after the spawn: an ignored signal stays ignored across exec, and the program must not
    // inherit that.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    if let Ok(c) = &child {
        forward_signals_to(c.id());
    }
    // A program that cannot be started exits as a shell's would: 127 when it is not found,
    // 126 when it is found but cannot be executed (POSIX `sh`, "Command Search and Execution").
    let not_started = |e: &std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    };
    let mut start_status = None;
    let result = child
        .map_err(|e| {
            start_status = Some(not_started(&e));
            format!("cannot run {program}: {e}")
        })
        .and_then(|mut c| {
            let pid = c.id();
            c.wait()
                .map(|status| (pid, status))
                .map_err(|e| format!("waiting for {program}: {e}"))
        });
    let last = dir.join("last.json");
    let outcome = result.map(|(pid, status)| {
        let report = reports.join(format!("{pid}.json"));
        let kept = std::fs::rename(&report, &last).is_ok();
        (kept, status)
    });
    let _ = std::fs::remove_dir_all(&reports);
    stats::sweep_stale_live_files();
    let (kept, status) = match (outcome, start_status) {
        (Err(why), Some(code)) => {
            eprintln!("tiermalloc: {why}");
            return Ok(ExitCode::from(code));
        }
        (outcome, _) => outcome?,
    };
    if m.get_flag("stats") {
        if kept {
            let snap = stats::read_file(&last)?;
            eprint!("{}", stats::render(&snap, m.get_flag("json")));
        } else {
            eprintln!(
                "tiermalloc: {program} left no statistics (it did not exit normally, or does not \
                 load the library)"
            );
        }
    }
    Ok(exit_code_of(status))
}

/// The program's pid, for `forward`.
static PROGRAM: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Signals sent to this command itself (not by a terminal, which signals the whole foreground
/// group: ^C and ^\ reach the program directly) are passed on to the program: `kill` of a
/// `tiermalloc run -- ./server &` (its `$!`), a service manager's SIGTERM, a hang-up. Before,
/// the command died of them and left the program running on its own.
fn forward_signals_to(pid: u32) {
    extern "C" fn forward(sig: libc::c_int) {
        let pid = PROGRAM.load(std::sync::atomic::Ordering::Relaxed);
        if pid > 0 {
            // SAFETY: kill(2) is async-signal-safe; the pid is our child's, not yet reaped
            // (PROGRAM is set before the handlers and the wait reaps it only after).
            unsafe { libc::kill(pid, sig) };
        }
    }
    PROGRAM.store(pid as i32, std::sync::atomic::Ordering::Relaxed);
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2] {
        // SAFETY: an all-zero sigaction is valid; we set a handler that only calls kill(2);
        // SA_RESTART lets the wait go on.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The program's status as this command's: its exit code, or 128 + the signal that killed it.
fn exit_code_of(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(c as u8),
        (None, Some(s)) => ExitCode::from((128 + s) as u8),
        _ => ExitCode::FAILURE,
    }
}
