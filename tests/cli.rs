//! The `tiermalloc` command: `run` (preloading, tiers, the program's status, the kept report),
//! `stats` (the last run, a live process, a file, `--json`), `inspect` and `check` (a
//! persistent tier's file, read-only), and its errors (one line, non-zero). The command finds the
//! library under test through `TIERMALLOC_LIB`, except in the test of its own search
//! (`run_finds_the_library_installed_beside_it`); state goes to a temporary `XDG_RUNTIME_DIR`.

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

/// Asserts that the command succeeded and said `words` on stdout.
fn succeeds_saying(out: &Output, words: &str) {
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(words), "{}", text(&out.stdout));
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
    // ^C must reach the program: `run` ignores SIGINT itself, but not in the program it starts,
    // which gets the dispositions it would get without `run` (this test's own, which a shell
    // sets to ignored for a background job).
    let state = TempDir::new("cli", "signals").kept_on_panic();
    let ignored = |out: Output| {
        assert!(out.status.success(), "{}", text(&out.stderr));
        let mask = text(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string();
        u64::from_str_radix(&mask, 16).unwrap()
            & (1 << (libc::SIGINT - 1) | 1 << (libc::SIGQUIT - 1))
    };
    let probe = ["bash", "-c", "grep SigIgn /proc/self/status"];
    let under_run = ignored(output(tiermalloc(
        state.path(),
        &[&["run", "--"][..], &probe[..]].concat(),
    )));
    let mut plain = Command::new(probe[0]);
    plain.args(&probe[1..]);
    let without = ignored(output(plain));
    assert_eq!(
        under_run, without,
        "SIGINT/SIGQUIT ignored under run: {under_run:#x}, without: {without:#x}"
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

/// Python (ctypes on the library `tiermalloc run` preloads) against the PMR heap in `file`
/// (1 MiB): `script` runs after `tm` (the library) and `PMR` (3) are set up.
fn python_on_heap(state: &Path, file: &Path, script: &str) -> Output {
    let spec = format!("dram;pmr:path={},size=1M,create", file.display());
    output(python_on_tiers(state, &spec, script))
}

/// `tiermalloc run --tiers SPEC` of Python, whose `script` runs after `tm` (the library, with
/// the argument and result types of the functions the tests call) and `PMR` (3) are set up.
fn python_on_tiers(state: &Path, spec: &str, script: &str) -> Command {
    let program = format!(
        "import ctypes, os, sys\n\
         tm = ctypes.CDLL(None)\n\
         PMR = 3\n\
         tm.tm_malloc.restype = ctypes.c_void_p\n\
         tm.tm_malloc.argtypes = [ctypes.c_int, ctypes.c_size_t]\n\
         tm.tm_root_set.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p]\n\
         tm.tm_root_get.restype = ctypes.c_void_p\n\
         tm.tm_root_get.argtypes = [ctypes.c_int, ctypes.c_char_p]\n\
         tm.tm_next_block.restype = ctypes.c_void_p\n\
         tm.tm_next_block.argtypes = [ctypes.c_int, ctypes.c_void_p]\n\
         tm.tm_offset_of.restype = ctypes.c_uint64\n\
         tm.tm_offset_of.argtypes = [ctypes.c_void_p]\n\
         {script}"
    );
    tiermalloc(
        state,
        &[
            "run",
            "--tiers",
            spec,
            "--",
            "/usr/bin/python3",
            "-c",
            &program,
        ],
    )
}

/// Blocks of 20000 bytes filled with their name's letter: a, b, c named by roots, d not.
const MAKE_HEAP: &str = "\
for name in [b'a', b'b', b'c', b'd']:
    p = tm.tm_malloc(PMR, 20000)
    assert p, 'no pmr block'
    ctypes.memset(p, name[0], 20000)
    if name != b'd':
        assert tm.tm_root_set(PMR, name, p) == 0
    print(name.decode(), tm.tm_offset_of(p))
";

/// Each root's block (`a:ok` when it holds its 20000 letters, `a:gone` when the root is gone),
/// the live blocks, and a new block allocated and freed.
const READ_HEAP: &str = "\
out = []
for name in [b'a', b'b', b'c']:
    p = tm.tm_root_get(PMR, name)
    out.append(name.decode() + (':gone' if not p else ':ok' if ctypes.string_at(p, 20000) == name * 20000 else ':changed'))
n, p = 0, None
while True:
    p = tm.tm_next_block(PMR, p)
    if not p: break
    n += 1
q = tm.tm_malloc(PMR, 100000)
out.append('blocks=%d new=%s' % (n, 'yes' if q else 'no'))
print(' '.join(out))
";

/// `check PATH --repair` on each kind of damage a heap's file can come to, crafted on copies
/// of a real heap: `check` names it, `--repair` mends it in one line a change, `check` then
/// passes, and the library opens the file as the heap the repair says.
#[test]
fn check_repair_mends_each_kind_of_damage_and_the_heap_opens_after() {
    let state = TempDir::new("cli", "repair").kept_on_panic();
    let base = state.path().join("base");
    let made = python_on_heap(state.path(), &base, MAKE_HEAP);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let offsets: std::collections::HashMap<String, u64> = text(&made.stdout)
        .lines()
        .map(|l| {
            let (n, o) = l.split_once(' ').unwrap();
            (n.to_string(), o.parse().unwrap())
        })
        .collect();
    let image = std::fs::read(&base).unwrap();
    let root_entry = |name: &[u8]| {
        (0..48)
            .map(|i| 256 + 80 * i)
            .find(|&at| image[at..at + 64].starts_with(name) && image[at + name.len()] == 0)
            .unwrap()
    };
    let check = |file: &Path, repair: bool| {
        let mut args = vec!["check", file.to_str().unwrap()];
        if repair {
            args.push("--repair");
        }
        output(tiermalloc(state.path(), &args))
    };

    type Damage<'a> = Box<dyn Fn(&mut Vec<u8>) + 'a>;
    let header_of = |name: &str| offsets[name] as usize - 16;
    let cases: Vec<(&str, Damage, &str, &str, &str)> = vec![
        (
            "dirty",
            Box::new(|i| i[52] = 1),
            "not closed by its last run",
            "dirty flag",
            "a:ok b:ok c:ok blocks=4",
        ),
        (
            "dangling-root",
            Box::new(move |i| {
                let at = root_entry(b"c") + 64;
                i[at..at + 8].copy_from_slice(&(4096u64 + 48).to_le_bytes());
            }),
            "root \"c\" names offset 4144, which is no live block",
            "root \"c\" named offset 4144, which is no live block: removed",
            "a:ok b:ok c:gone blocks=4",
        ),
        (
            "torn-named-header",
            Box::new(move |i| i[header_of("b")..header_of("b") + 16].fill(0)),
            "no block header",
            "made one live block, as the root naming it says",
            "a:ok b:ok c:ok blocks=4",
        ),
        (
            "torn-header",
            Box::new(move |i| i[header_of("d")..header_of("d") + 16].fill(0)),
            "no block header",
            "made free space",
            "a:ok b:ok c:ok blocks=3",
        ),
        (
            "torn-tail",
            Box::new(move |i| i.truncate(header_of("a"))),
            "the superblock is for a region of 1048576 bytes",
            "extended with zeroes",
            "a:gone b:ok c:ok blocks=3",
        ),
    ];
    // The heap as made: sound, closed cleanly, nothing to repair.
    let out = check(&base, true);
    succeeds_saying(&out, "nothing to repair");
    assert!(
        std::fs::read(&base).unwrap() == image,
        "nothing to repair, yet the file changed"
    );

    for (name, damage, found, repaired, after) in cases {
        let file = state.path().join(name);
        let mut bytes = image.clone();
        damage(&mut bytes);
        std::fs::write(&file, &bytes).unwrap();
        let out = check(&file, false);
        let said = text(&out.stdout) + &text(&out.stderr);
        assert!(said.contains(found), "{name}: check said {said}");
        assert_eq!(out.status.success(), name == "dirty", "{name}: {said}");
        assert!(
            std::fs::read(&file).unwrap() == bytes,
            "{name}: check wrote"
        );

        let out = check(&file, true);
        let said = text(&out.stdout);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let lines: Vec<_> = said
            .lines()
            .filter(|l| l.contains(": repaired: "))
            .collect();
        assert!(
            !lines.is_empty() && lines.iter().any(|l| l.contains(repaired)),
            "{name}: --repair said {said}"
        );
        let out = check(&file, false);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("closed cleanly"), "{name}");

        let out = python_on_heap(state.path(), &file, READ_HEAP);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout).trim(),
            format!("{after} new=yes"),
            "{name}"
        );
        let out = check(&file, false);
        assert!(
            out.status.success(),
            "{name} after a run: {}",
            text(&out.stderr)
        );
    }

    // Never a foreign file, never a heap in use.
    let junk = state.path().join("junk");
    std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
    let out = check(&junk, true);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("left untouched"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        std::fs::read(&junk).unwrap() == vec![0x5a; 8192],
        "wrote a foreign file"
    );

    let busy = state.path().join("busy");
    std::fs::write(&busy, &image).unwrap();
    let spec = format!("dram;pmr:path={},size=1M", busy.display());
    let mut holder = python_on_tiers(
        state.path(),
        &spec,
        "assert tm.tm_malloc(PMR, 64)\nprint('open', flush=True)\nsys.stdin.read()",
    );
    let mut child = holder
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "open");
    let before = std::fs::read(&busy).unwrap();
    let out = check(&busy, true);
    let after = std::fs::read(&busy).unwrap();
    drop(child.stdin.take());
    child.wait().unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("in use by a running process"),
        "{}",
        text(&out.stderr)
    );
    assert!(after == before, "repaired a heap in use");
}

/// `spaces PATH` lists a real pool's spaces as the library sees them, `--collect` applies the
/// deletion rule (with `--min-age`), and a file holding no pool is neither listed nor formatted.
///
/// A space's `refs` count every process that maps it, and a child that another test of this
/// process forks while our pool is open (a spawn with `pre_exec` is a `fork`, whose handler
/// counts the inherited mappings as the child's own, `pool::fork`) holds references to our
/// spaces until the program it execs exits: 4 on `weights`, 2 on `draft`, more likely the
/// longer the tests overlap on a loaded machine. The refs asserted here are this test's
/// alone only in a process where nothing else forks, so it runs in a child of its own.
#[test]
fn spaces_lists_a_pools_spaces_and_collects_the_unused_ones() {
    const ALONE: &str = "TIERMALLOC_TEST_SPACES_ALONE";
    const NAME: &str = "spaces_lists_a_pools_spaces_and_collects_the_unused_ones";
    if std::env::var_os(ALONE).is_none() {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([NAME, "--nocapture", "--test-threads=1"])
            .env(ALONE, "1");
        let out = run_with_timeout(cmd, None, Duration::from_secs(300)).unwrap();
        assert!(
            out.status.success() && text(&out.stdout).contains("1 passed"),
            "the test alone in a child:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        return;
    }
    use tiermalloc::pool::{MapMode, Pool};
    let state = TempDir::new("cli", "spaces").kept_on_panic();
    let file = state.path().join("pool");
    let pool = Pool::open_str(&format!("path={},size=8M,create", file.display())).unwrap();
    let mut weights = pool.create_space("weights", 1 << 20).unwrap();
    weights.publish().unwrap();
    let reader = pool.open_space("weights", MapMode::Read).unwrap();
    let mut old = pool.create_space("old", 64 << 10).unwrap();
    old.publish().unwrap();
    drop(old);
    let _draft = pool.create_space("draft", 256 << 10).unwrap();
    let spaces = |args: &[&str]| {
        let mut all = vec!["spaces", file.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = output(tiermalloc(state.path(), &all));
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };

    let v: serde_json::Value = serde_json::from_str(&spaces(&["--json"])).unwrap();
    let mut listed: Vec<(String, u64, u64, String)> = v["spaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert!(s["age_ms"].as_u64().unwrap() < 60_000, "{s}");
            (
                s["name"].as_str().unwrap().to_string(),
                s["size"].as_u64().unwrap(),
                s["refs"].as_u64().unwrap(),
                s["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    listed.sort();
    let mut expected: Vec<_> = pool
        .spaces()
        .into_iter()
        .map(|s| {
            (
                s.name,
                s.size,
                s.refs,
                format!("{:?}", s.state).to_lowercase(),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(
        listed
            .iter()
            .map(|s| (s.0.as_str(), s.2, s.3.as_str()))
            .collect::<Vec<_>>(),
        [
            ("draft", 1, "private"),
            ("old", 0, "shared"),
            ("weights", 2, "shared")
        ]
    );
    assert_eq!(v["free"], pool.free_space());

    let shown = spaces(&[]);
    assert!(
        shown.contains(": 3 space(s), ") && shown.contains("NAME"),
        "{shown}"
    );
    let row = shown.lines().find(|l| l.contains("weights")).unwrap();
    assert!(
        row.contains("1.0 MiB") && row.contains(" 2 ") && row.ends_with("shared"),
        "{row}"
    );

    // Too young for an hour's minimum age; then the unmapped published space goes.
    assert!(spaces(&["--collect", "--min-age", "1h"]).contains("collected 0 space(s)"));
    let shown = spaces(&["--collect"]);
    assert!(
        shown.contains("collected 1 space(s)") && !shown.contains("old"),
        "{shown}"
    );
    assert!(pool.space("old").is_err() && pool.space("weights").is_ok());
    drop((reader, weights));

    // A file of zeroes: no pool, refused in one line, and still zeroes (opening would format it).
    let zeroes = state.path().join("zeroes");
    std::fs::write(&zeroes, vec![0; 1 << 20]).unwrap();
    let out = output(tiermalloc(
        state.path(),
        &["spaces", zeroes.to_str().unwrap()],
    ));
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.lines().count() == 1 && err.contains("no tiermalloc pool"),
        "{err}"
    );
    assert!(
        std::fs::read(&zeroes).unwrap().iter().all(|&b| b == 0),
        "formatted a file of zeroes"
    );

    // inspect and check of the pool (a user's first guess: DESIGN.md's inspect shows spaces)
    // said only "no tiermalloc superblock (magic TMHEAP)"; the line names the command that
    // reads a pool.
    for cmd in ["inspect", "check"] {
        let out = output(tiermalloc(state.path(), &[cmd, file.to_str().unwrap()]));
        let err = text(&out.stderr);
        assert!(
            !out.status.success()
                && err.lines().count() == 1
                && err.contains("holds a shared pool")
                && err.contains(&format!("tiermalloc spaces {}", file.display())),
            "{cmd}: {err}"
        );
    }
}

/// `inspect PATH --map FILE.svg` draws a real, fragmented heap: the SVG parses as XML, its
/// extents tile the region in order, and its free, in-use, largest-free and fragmentation
/// figures are the checker's.
#[test]
fn inspect_map_draws_the_regions_extents_with_the_checkers_figures() {
    let state = TempDir::new("cli", "map").kept_on_panic();
    let file = state.path().join("heap");
    let made = python_on_heap(
        state.path(),
        &file,
        "tm.tm_free.argtypes = [ctypes.c_void_p]\n\
         small = [tm.tm_malloc(PMR, 100) for i in range(30)]\n\
         big = []\n\
         while True:\n\
         \x20   p = tm.tm_malloc(PMR, 10000)\n\
         \x20   if not p: break\n\
         \x20   big.append(p)\n\
         assert all(small) and len(big) > 60\n\
         for p in big[:40:2] + big[50:56] + small[::3]: tm.tm_free(p)\n",
    );
    assert!(made.status.success(), "{}", text(&made.stderr));
    let svg = state.path().join("map.svg");
    let out = output(tiermalloc(
        state.path(),
        &[
            "inspect",
            "--json",
            file.to_str().unwrap(),
            "--map",
            svg.to_str().unwrap(),
        ],
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let parse = "import xml.etree.ElementTree as E, json, sys\n\
                 r = E.parse(sys.argv[1]).getroot()\n\
                 ns = '{http://www.w3.org/2000/svg}'\n\
                 ex = [(int(g.get('data-offset')), int(g.get('data-len')), g.get('data-state'), int(g.get('data-live-bytes') or 0)) for g in r.iter(ns + 'g') if g.get('class') == 'extent']\n\
                 print(json.dumps({'root': dict(r.attrib), 'extents': ex, 'figures': [t.text for t in r.iter(ns + 'text') if t.get('id') == 'figures'][0]}))\n";
    let out = Command::new("/usr/bin/python3")
        .args(["-c", parse, svg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "not well-formed XML: {}",
        text(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let root = |k: &str| v["root"][k].as_str().unwrap().parse::<f64>().unwrap();
    let mut at = 0;
    let (mut free, mut in_use, mut largest, mut run, mut blocks, mut slabs) = (0, 0, 0, 0, 0, 0);
    for e in v["extents"].as_array().unwrap() {
        let (offset, len, kind, live) = (
            e[0].as_u64().unwrap(),
            e[1].as_u64().unwrap(),
            e[2].as_str().unwrap(),
            e[3].as_u64().unwrap(),
        );
        assert_eq!(offset, at, "the extents tile the region in order");
        at += len;
        match kind {
            "free" => {
                free += len;
                run += len;
                largest = largest.max(run);
                continue;
            }
            "block" => (in_use, blocks) = (in_use + len, blocks + 1),
            "slab" => (in_use, slabs) = (in_use + live, slabs + 1),
            "superblock" => assert_eq!(offset, 0),
            other => panic!("extent state {other} in a sound heap"),
        }
        run = 0;
    }
    assert_eq!(at, report["region_len"].as_u64().unwrap());
    assert_eq!(free, report["free"].as_u64().unwrap());
    assert_eq!(in_use, report["in_use"].as_u64().unwrap());
    assert_eq!(largest, report["largest_free"].as_u64().unwrap());
    assert_eq!(
        (blocks, slabs),
        (
            report["blocks"].as_u64().unwrap(),
            report["slabs"].as_u64().unwrap()
        )
    );
    assert!(blocks >= 20 && slabs >= 1, "{blocks} blocks, {slabs} slabs");
    assert_eq!(root("data-largest-free") as u64, largest);
    let fragmentation = 1.0 - largest as f64 / free as f64;
    assert!(
        fragmentation > 0.0,
        "freeing every other block leaves holes"
    );
    assert!((root("data-fragmentation") - fragmentation).abs() < 1e-3);
    let figures = v["figures"].as_str().unwrap();
    assert!(
        figures.contains(&format!("fragmentation {:.1}%", fragmentation * 100.0))
            && figures.contains("largest free extent"),
        "{figures}"
    );
}

/// `stats FILE` keeps the workload profile's reserve figures of a JSON report, as JSON and as
/// text (tests/profile.rs checks that the library writes them).
#[test]
fn stats_keeps_the_profile_reserve_figures() {
    let state = TempDir::new("cli", "reserve").kept_on_panic();
    let file = state.path().join("report.json");
    std::fs::write(
        &file,
        r#"{"pid":7,"program":"grow","event":"exit","time_ns":1,"complete":true,"tiers":[{"kind":"dram","in_use":4592,"peak":335781568,"capacity":25276182528,"capacity_source":"machine","free":25276177936,"largest_free":25265762304,"reserved":88080384,"allocations":2129,"frees":2123,"failures":0,"spilled_in":0,"spilled_out":0,"profile_reserved":339738624,"reserve_used":338681856,"reserve_miss":4096}]}"#,
    )
    .unwrap();
    let out = output(tiermalloc(
        state.path(),
        &["stats", "--json", file.to_str().unwrap()],
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dram = &v["tiers"][0];
    assert_eq!(
        (
            &dram["profile_reserved"],
            &dram["reserve_used"],
            &dram["reserve_miss"]
        ),
        (&339738624.into(), &338681856.into(), &4096.into())
    );
    let out = output(tiermalloc(state.path(), &["stats", file.to_str().unwrap()]));
    let shown = text(&out.stdout);
    assert!(
        shown.contains(
            "dram profile reserve 324.0 MiB, 323.0 MiB of it used, 4.0 KiB mapped beyond it"
        ),
        "{shown}"
    );
}

/// On a terminal (a pty made by `script`), `check` of a large region shows a progress bar on
/// stderr and clears it; into a pipe, it shows none.
#[test]
fn check_shows_a_progress_bar_only_on_a_terminal() {
    let state = TempDir::new("cli", "progress").kept_on_panic();
    let file = state.path().join("big");
    // 512 MiB, sparse: blocks of 8 MiB spread headers over the region, their bytes untouched.
    let spec = format!("dram;pmr:path={},size=512M,create", file.display());
    let made = output(python_on_tiers(
        state.path(),
        &spec,
        "assert all(tm.tm_malloc(PMR, 8 << 20) for i in range(60))",
    ));
    assert!(made.status.success(), "{}", text(&made.stderr));

    let piped = output(tiermalloc(state.path(), &["check", file.to_str().unwrap()]));
    assert!(
        piped.status.success() && piped.stderr.is_empty(),
        "{}",
        text(&piped.stderr)
    );

    let line = format!(
        "{} check {}",
        env!("CARGO_BIN_EXE_tiermalloc"),
        file.to_str().unwrap()
    );
    let mut script = Command::new("script");
    script.args(["-qec", &line, "/dev/null"]).env_clear().envs(
        tiermalloc(state.path(), &[])
            .get_envs()
            .filter_map(|(k, v)| Some((k, v?))),
    );
    let out = output(script);
    let tty = text(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(
        tty.contains("scanning ") && tty.contains("MiB/512"),
        "no bar on a terminal: {tty:?}"
    );
    assert!(tty.contains("tiermalloc heap"), "{tty}");
}

/// A user who exported `TIERMALLOC_TIERS` (as the README's persistent-tier recipe does) and
/// then runs the command: the variables are the program's, not the command's. The command
/// links the library, which opened the exported tier in the command itself: its program then
/// found the tier "in use by another process" (the command) and ran without it, `inspect`
/// called the heap "not closed (open now)", `check --repair` refused it as in use, and
/// `TIERMALLOC_SHOW_STATS=1` printed the command's own statistics.
#[test]
fn exported_library_variables_are_the_programs_not_the_commands() {
    let state = TempDir::new("cli", "exported").kept_on_panic();
    let file = state.path().join("pmr");
    let with_exported = |args: &[&str]| {
        let mut cmd = tiermalloc(state.path(), args);
        cmd.env(
            "TIERMALLOC_TIERS",
            format!("dram;pmr:path={},size=4M,create", file.display()),
        )
        .env("TIERMALLOC_PLACE", "pmr:min=2000")
        .env("TIERMALLOC_SHOW_STATS", "1");
        output(cmd)
    };
    let out = with_exported(&[
        "run",
        "--stats",
        "--json",
        "--",
        "bash",
        "-c",
        "x=$(printf '%*s' 5000 a); echo ${#x} $TIERMALLOC_SHOW_STATS",
    ]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(text(&out.stdout), "5000 1\n");
    assert!(!err.contains("in use by another process"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&err).expect("only the program's report");
    assert_eq!(v["tiers"][1]["kind"], "pmr", "{v}");
    assert!(v["tiers"][1]["allocations"].as_u64() > Some(0), "{v}");

    let out = with_exported(&["inspect", file.to_str().unwrap()]);
    succeeds_saying(&out, "closed cleanly");
    assert_eq!(text(&out.stderr), "", "the command's own statistics");

    let out = with_exported(&["check", "--repair", file.to_str().unwrap()]);
    succeeds_saying(&out, "nothing to repair");
}

/// The man page's example: `tiermalloc run -- ./server &` then `tiermalloc stats $!`. `$!` is
/// the command's pid, not its program's; `stats` said the process "publishes no live
/// statistics ... start it with `tiermalloc run`" of a process started just so.
#[test]
fn stats_of_a_run_commands_pid_shows_its_program() {
    let state = TempDir::new("cli", "bang").kept_on_panic();
    let mut child = tiermalloc(state.path(), &["run", "--", "sleep", "30"])
        .spawn()
        .unwrap();
    let run_pid = child.id().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let out = output(tiermalloc(state.path(), &["stats", &run_pid]));
        if out.status.success() {
            break text(&out.stdout);
        }
        // Until the program has started and published (a failure names no other problem).
        assert!(
            Instant::now() < deadline,
            "no live statistics through the run's pid: {}",
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let program_pid: i32 = report
        .strip_prefix("tiermalloc: pid ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(report.contains("(sleep): statistics live"), "{report}");
    assert_ne!(program_pid.to_string(), run_pid);
    // SAFETY: plain kill(2) of our grandchild.
    unsafe { libc::kill(program_pid, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(128 + libc::SIGTERM));
}

/// `tiermalloc stats PID` of a program that allocated in a burst and then went idle (a
/// server after loading its data): the live figures were refreshed only when DRAM took memory
/// and 50 ms had passed since the last refresh, so they stayed those of before the burst for
/// as long as the program idled (python holding 50 MiB showed "1.7 MiB in use").
#[test]
fn live_statistics_catch_up_with_a_burst_when_the_program_idles() {
    use std::io::BufRead;
    let state = TempDir::new("cli", "burst").kept_on_panic();
    let mut child = tiermalloc(
        state.path(),
        &[
            "run",
            "--",
            "python3",
            "-c",
            "import time\n\
             x = [bytearray(1 << 20) for i in range(64)]\n\
             print('ready', flush=True)\n\
             time.sleep(30)",
        ],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    // Several refresh periods (50 ms) of idling.
    std::thread::sleep(Duration::from_millis(500));
    let out = output(tiermalloc(
        state.path(),
        &["stats", "--json", &child.id().to_string()],
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let program_pid = v["pid"].as_i64().unwrap() as i32;
    // SAFETY: plain kill(2) of our grandchild.
    unsafe { libc::kill(program_pid, libc::SIGTERM) };
    let _ = child.wait();
    let in_use = v["tiers"][0]["in_use"].as_u64().unwrap();
    assert!(
        in_use >= 64 << 20,
        "in use {in_use} after 64 MiB of blocks: {v}"
    );
}

/// `kill` of `tiermalloc run -- ./server &` (its `$!`): the command died of the SIGTERM and
/// left its program running on its own. It passes it on, and exits with the program's status.
#[test]
fn run_passes_a_signal_sent_to_it_on_to_its_program() {
    let state = TempDir::new("cli", "forward").kept_on_panic();
    let mut child = tiermalloc(state.path(), &["run", "--", "sleep", "30"])
        .spawn()
        .unwrap();
    // The program is running once its live statistics are there (`stats` of the run's pid).
    let deadline = Instant::now() + Duration::from_secs(20);
    let program_pid: i32 = loop {
        let out = output(tiermalloc(
            state.path(),
            &["stats", "--json", &child.id().to_string()],
        ));
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            break v["pid"].as_i64().unwrap() as i32;
        }
        assert!(Instant::now() < deadline, "{}", text(&out.stderr));
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: plain kill(2) of our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let orphan = Path::new(&format!("/proc/{program_pid}")).exists();
    if orphan {
        // SAFETY: plain kill(2) of the program the test started, left running.
        unsafe { libc::kill(program_pid, libc::SIGKILL) };
    }
    assert!(
        !orphan,
        "the program outlived its killed run (status {status:?})"
    );
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
}

/// `tiermalloc run -- PROG` of a program it cannot start exits as a shell does (127 not found,
/// 126 found but not executable), so scripts that test for those codes work the same with and
/// without the command; it exited 1 for both.
#[test]
fn run_of_a_program_it_cannot_start_exits_127_or_126_as_a_shell() {
    let state = TempDir::new("cli", "nostart").kept_on_panic();
    let not_executable = state.path().join("data.txt");
    std::fs::write(&not_executable, "not a program\n").unwrap();
    let cases = [
        ("/nonexistent/program", 127),
        ("no-such-program-on-the-path", 127),
        (not_executable.to_str().unwrap(), 126),
    ];
    for (program, code) in cases {
        let out = output(tiermalloc(state.path(), &["run", "--", program]));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{program}: {err}");
        assert!(
            err.starts_with(&format!("tiermalloc: cannot run {program}: "))
                && err.lines().count() == 1,
            "{program}: {err}"
        );
    }
    // A program that starts and exits 126 itself is still passed through.
    let out = output(tiermalloc(
        state.path(),
        &["run", "--", "sh", "-c", "exit 126"],
    ));
    assert_eq!(out.status.code(), Some(126));
}

/// The same user as `exported_library_variables_are_the_programs_not_the_commands`, who has
/// also exported `LD_PRELOAD` of the library (to run everything on it). The preloaded copy's
/// start-up ran before the command could hold the variables back, and opened the exported
/// tier in the command: `inspect` called a cleanly closed heap "not closed by its last run",
/// and `run`'s program found its tier "in use by another process" and ran without it.
#[test]
fn exported_variables_stay_the_programs_with_the_library_preloaded_into_the_command() {
    let state = TempDir::new("cli", "preloaded").kept_on_panic();
    let file = state.path().join("pmr");
    let exported = |args: &[&str]| {
        let mut cmd = tiermalloc(state.path(), args);
        cmd.env(
            "TIERMALLOC_TIERS",
            format!("dram;pmr:path={},size=4M,create", file.display()),
        )
        .env("TIERMALLOC_PLACE", "pmr:min=2000")
        .env("LD_PRELOAD", &library().path);
        output(cmd)
    };
    let out = exported(&[
        "run",
        "--stats",
        "--json",
        "--",
        "bash",
        "-c",
        "x=$(printf '%*s' 5000 a); echo ${#x}",
    ]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(text(&out.stdout), "5000\n");
    assert!(!err.contains("in use by another process"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&err).expect("only the program's report");
    assert!(v["tiers"][1]["allocations"].as_u64() > Some(0), "{v}");

    let out = exported(&["inspect", file.to_str().unwrap()]);
    succeeds_saying(&out, "closed cleanly");
}

/// `tiermalloc` alone, a newcomer's first command: it printed only "tiermalloc: Run programs
/// on tiermalloc and read their memory statistics" (the help cut to one line as if it were an
/// error message), with no word of the subcommands. It prints the help, on stderr, status 2.
#[test]
fn the_command_alone_prints_its_help_with_the_subcommands() {
    let state = TempDir::new("cli", "alone").kept_on_panic();
    let out = output(tiermalloc(state.path(), &[]));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("Usage: tiermalloc <COMMAND>"), "{err}");
    for sub in ["run", "inspect", "check", "spaces", "stats"] {
        assert!(
            err.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub}: {err}"
        );
    }
}

/// A malformed `--offset` or `--min-age` is a usage error (status 2, as the man page says of
/// usage errors and clap gives any other bad value), not a failure (1). `--min-age` is checked
/// before the pool is opened.
#[test]
fn a_malformed_offset_or_age_is_a_usage_error() {
    let state = TempDir::new("cli", "usage").kept_on_panic();
    let cases: &[(&[&str], &str)] = &[
        (
            &["inspect", "--offset", "abc", "/nonexistent"],
            "not a number of bytes",
        ),
        (
            &["check", "--offset", "12x", "/nonexistent"],
            "--offset <BYTES>",
        ),
        (
            &["spaces", "--collect", "--min-age", "xyz", "/nonexistent"],
            "not an age",
        ),
    ];
    for (args, expect) in cases {
        let out = output(tiermalloc(state.path(), args));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("tiermalloc: ") && err.contains(expect),
            "{args:?}: {err}"
        );
    }
}

/// A device tier's capacity was labelled "(limit=)" (`capacity_source` "limit") whenever it
/// was below the bytes mapped, which the superblock makes true of every pmr and cxl tier: a
/// user who gave no `limit=` read of one. `device` unless a `limit=` below the region is
/// what bounds it.
#[test]
fn a_device_tiers_capacity_is_the_devices_unless_a_limit_bounds_it() {
    let state = TempDir::new("cli", "capsource").kept_on_panic();
    let file = state.path().join("dev");
    let source = |kind: &str, keys: &str| {
        let tiers = format!("dram;{kind}:path={},size=4M,create{keys}", file.display());
        let out = output(tiermalloc(
            state.path(),
            &["run", "--stats", "--json", "--tiers", &tiers, "--", "true"],
        ));
        let err = text(&out.stderr);
        assert!(out.status.success(), "{err}");
        let v: serde_json::Value = serde_json::from_str(&err).expect("one JSON report");
        let _ = std::fs::remove_file(&file);
        v["tiers"][1]["capacity_source"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(source("pmr", ""), "device");
    assert_eq!(source("cxl", ""), "device");
    assert_eq!(source("cxl", ",limit=1M"), "limit");
    assert_eq!(source("pmr", ",limit=64M"), "device");
}

/// `tiermalloc inspect /tmp` (a directory) said "No such device (os error 19)": the
/// directory opened read-only as a file does, and only its mapping failed. `inspect`, `check`
/// and `spaces` each say in one line that the path is a directory.
#[test]
fn a_directory_is_named_as_one_not_as_a_device() {
    let state = TempDir::new("cli", "directory").kept_on_panic();
    let dir = state.path().to_str().unwrap();
    for cmd in ["inspect", "check", "spaces"] {
        let out = output(tiermalloc(state.path(), &[cmd, dir]));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        assert_eq!(err.lines().count(), 1, "{cmd}: {err}");
        assert!(
            err.contains(&format!("{dir}: is a directory, not a")),
            "{cmd}: {err}"
        );
    }
}
