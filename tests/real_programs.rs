//! Real programs under `LD_PRELOAD=libtiermalloc.so`.
//!
//! Each test runs an ordinary, allocation-heavy program (python3, perl, git, sqlite3, gcc,
//! cargo) twice: once as the system ships it (baseline) and once with the tiermalloc cdylib
//! preloaded, so that every `malloc`/`free`/`realloc`/... of the program and of every child it
//! spawns goes through tiermalloc. Both runs must produce the same transcript, byte for byte:
//! exit status, stdout and (where the program's stderr is deterministic) stderr of every step.
//!
//! The library is found next to this test executable
//! (`<target>/<profile>/deps/real_programs-HASH`): `<target>/<profile>/deps/libtiermalloc.so`,
//! where cargo builds the cdylib before integration tests, else
//! `<target>/<profile>/libtiermalloc.so`. `TIERMALLOC_TEST_PRELOAD=/path/to/other.so` replaces it,
//! e.g. to check the workloads against another allocator
//! (`/usr/lib/x86_64-linux-gnu/libmimalloc.so.2`) or to compare timings (run with `--nocapture`).
//!
//! `TIERMALLOC_*` variables are stripped from the children's environment, so the runs use the
//! default configuration and print no statistics, except in `show_stats_report_goes_to_stderr`.
//!
//! Every command runs in its own process group with a timeout; on timeout the whole group is
//! killed and the test fails (a deadlock in the allocator must fail, not hang, the suite).
//! A missing program fails the test with the Debian package that provides it: the CI image is
//! expected to have python3, perl, git, sqlite3 and gcc installed.
//!
//! On a mismatch both transcripts are written to `<target>/<profile>/real-programs-out/`.

mod support;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{
    describe_status, library, profile_dir, run_with_timeout, scrubbed_env, show_cmd, tail, Library,
    Output, Scrub, TempDir, OVERRIDE_VAR,
};

/// Per command. Generous: the slowest step takes a few seconds on an idle 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Programs and their environment
// ---------------------------------------------------------------------------------------------

/// Full path of `prog` on PATH, or a test failure naming the package that provides it.
fn require(prog: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let cand = dir.join(prog);
        if let Ok(md) = fs::metadata(&cand) {
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                return cand;
            }
        }
    }
    panic!(
        "`{prog}` is not on PATH; this test needs it: install it with \
         `apt-get install {package}` (the CI image must provide python3, perl, git, sqlite3, gcc)"
    );
}

/// Removed from the environment every child starts from, besides what `scrubbed_env` always
/// removes (allocator config: `TIERMALLOC_*`, `MIMALLOC_*`; an outer `LD_PRELOAD`): anything else
/// that would change what the programs do (the variables `cargo test` sets for this test,
/// compiler wrappers, git/python/perl overrides, locale and time zone).
const SCRUB: Scrub = Scrub {
    prefixes: &["CARGO_", "GIT_", "PYTHON", "LC_"],
    keep: &["CARGO_HOME"],
    exact: &[
        "CARGO",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_BOOTSTRAP",
        "OUT_DIR",
        "MAKEFLAGS",
        "MFLAGS",
        "PERL5OPT",
        "PERL_HASH_SEED",
        "PERL_PERTURB_KEYS",
        "LANG",
        "LANGUAGE",
        "TZ",
    ],
};

// ---------------------------------------------------------------------------------------------
// A run of a workload: a sequence of steps recorded into a transcript
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Stderr {
    /// Part of the transcript: must be identical with and without the preload.
    Compare,
    /// Nondeterministic (timings): only checked for dynamic-loader errors.
    Ignore,
}

struct Run {
    test: &'static str,
    /// Library preloaded in this run, or None for the baseline.
    preload: Option<PathBuf>,
    dir: TempDir,
    /// Extra variables for every step (after the base environment).
    env: Vec<(OsString, OsString)>,
    transcript: Vec<u8>,
    elapsed: Duration,
}

impl Run {
    fn new(test: &'static str, preload: Option<PathBuf>) -> Run {
        let tag = if preload.is_some() { "pre" } else { "base" };
        Run {
            test,
            preload,
            dir: TempDir::new("rp", &format!("{test}-{tag}")),
            env: vec![("LC_ALL".into(), "C".into()), ("TZ".into(), "UTC".into())],
            transcript: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn label(&self) -> &'static str {
        if self.preload.is_some() {
            "with LD_PRELOAD"
        } else {
            "baseline"
        }
    }

    fn setenv(&mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) {
        let k = k.as_ref().to_os_string();
        self.env.retain(|(x, _)| *x != k);
        self.env.push((k, v.as_ref().to_os_string()));
    }

    /// A command for `prog` with the cleaned environment, this run's variables, the preload
    /// (if any) and the run's directory as working directory.
    fn cmd(&self, prog: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(prog);
        c.env_clear();
        for (k, v) in scrubbed_env(&SCRUB) {
            c.env(k, v);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(lib) = &self.preload {
            c.env("LD_PRELOAD", lib);
        }
        c.current_dir(self.dir());
        c
    }

    /// Replaces this run's directory (which differs between runs) by a fixed token.
    fn normalize(&self, bytes: &[u8]) -> Vec<u8> {
        let needle = self.dir().as_os_str().as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i..].starts_with(needle) {
                out.extend_from_slice(b"<WORKDIR>");
                i += needle.len();
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        out
    }

    /// Runs one step; it must exit 0. Its status, stdout and (if `stderr` is Compare) stderr go
    /// into the transcript.
    fn step(&mut self, name: &str, cmd: Command, stdin: Option<Vec<u8>>, stderr: Stderr) -> Output {
        let shown = show_cmd(&cmd);
        let out = match run_with_timeout(cmd, stdin, TIMEOUT) {
            Ok(o) => o,
            Err(e) => panic!(
                "[{}] {} ({}): step `{name}`: {e}\ncommand: {shown}",
                self.test,
                self.label(),
                self.lib_note()
            ),
        };
        self.elapsed += out.elapsed;
        let err_text = String::from_utf8_lossy(&out.stderr);
        if self.preload.is_some()
            && (err_text.contains("cannot be preloaded") || err_text.contains("ERROR: ld.so"))
        {
            panic!(
                "[{}] step `{name}`: the dynamic loader did not preload the library, the run \
                 would prove nothing:\n{}",
                self.test,
                tail(&out.stderr, 2000)
            );
        }
        if !out.status.success() {
            panic!(
                "[{}] {} ({}): step `{name}` failed: {}\ncommand: {shown}\n\
                 --- stdout tail ---\n{}\n--- stderr tail ---\n{}",
                self.test,
                self.label(),
                self.lib_note(),
                describe_status(&out.status),
                tail(&out.stdout, 2000),
                tail(&out.stderr, 4000)
            );
        }
        let mut t = Vec::new();
        let _ = writeln!(t, "===== {name}: {}", describe_status(&out.status));
        let _ = writeln!(t, "----- stdout");
        t.extend_from_slice(&self.normalize(&out.stdout));
        match stderr {
            Stderr::Compare => {
                let _ = writeln!(t, "\n----- stderr");
                t.extend_from_slice(&self.normalize(&out.stderr));
            }
            Stderr::Ignore => {
                let _ = writeln!(t, "\n----- stderr (not compared)");
            }
        }
        t.push(b'\n');
        self.transcript.extend_from_slice(&t);
        out
    }

    /// Records a value computed by the test itself (a file digest, ...) in the transcript.
    fn note(&mut self, line: &str) {
        self.transcript
            .extend_from_slice(format!("===== note: {line}\n").as_bytes());
    }

    fn lib_note(&self) -> String {
        match &self.preload {
            Some(p) => format!("LD_PRELOAD={}", p.display()),
            None => "no preload".to_string(),
        }
    }
}

/// Where transcripts of a failed comparison are written.
fn save_transcripts(test: &str, base: &[u8], pre: &[u8]) -> String {
    let dir = profile_dir().join("real-programs-out");
    let _ = fs::create_dir_all(&dir);
    let b = dir.join(format!("{test}.baseline.txt"));
    let p = dir.join(format!("{test}.preload.txt"));
    let _ = fs::write(&b, base);
    let _ = fs::write(&p, pre);
    format!("{} and {}", b.display(), p.display())
}

/// Describes where two transcripts first differ, with a few lines of context.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    let la: Vec<&[u8]> = a.split(|&c| c == b'\n').collect();
    let lb: Vec<&[u8]> = b.split(|&c| c == b'\n').collect();
    let n = la.iter().zip(lb.iter()).take_while(|(x, y)| x == y).count();
    let show = |lines: &[&[u8]]| {
        let mut s = String::new();
        for (i, l) in lines.iter().enumerate().skip(n.saturating_sub(3)).take(8) {
            let l = String::from_utf8_lossy(l);
            let l: String = l.chars().take(200).collect();
            let _ = writeln!(s, "{}{:6}: {}", if i == n { ">" } else { " " }, i + 1, l);
        }
        s
    };
    // The last "=====" header at or before the difference names the step.
    let step = la[..n.min(la.len())]
        .iter()
        .rev()
        .find(|l| l.starts_with(b"====="))
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .unwrap_or_default();
    format!(
        "first difference at line {} (in {step}); transcript sizes {} vs {} bytes\n\
         --- baseline ---\n{}--- with LD_PRELOAD ---\n{}",
        n + 1,
        a.len(),
        b.len(),
        show(&la),
        show(&lb)
    )
}

/// Runs `workload` once without and once with the preload and requires equal transcripts.
fn compare_runs(test: &'static str, workload: impl Fn(&mut Run)) {
    let lib = library().path;
    let mut base = Run::new(test, None);
    workload(&mut base);
    let mut pre = Run::new(test, Some(lib.clone()));
    workload(&mut pre);
    eprintln!(
        "[{test}] baseline {:.2}s, with LD_PRELOAD={} {:.2}s, transcript {} bytes",
        base.elapsed.as_secs_f64(),
        lib.display(),
        pre.elapsed.as_secs_f64(),
        base.transcript.len()
    );
    if base.transcript != pre.transcript {
        let saved = save_transcripts(test, &base.transcript, &pre.transcript);
        panic!(
            "[{test}] output differs under LD_PRELOAD={}\n{}\nfull transcripts: {saved}",
            lib.display(),
            first_difference(&base.transcript, &pre.transcript)
        );
    }
}

/// FNV-1a, 64-bit: a digest of files the test compares (object files, archives).
fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn file_digest(path: &Path) -> String {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    format!(
        "{} {} bytes fnv64={:016x}",
        path.file_name().unwrap().to_string_lossy(),
        bytes.len(),
        fnv64(&bytes)
    )
}

/// The crate's one test generator (`src/test_rng.rs`), for the test's own file contents.
#[path = "../src/test_rng.rs"]
#[allow(dead_code)]
mod test_rng;
use test_rng::Rng;

/// Words and text made from `Rng`'s numbers.
trait Text {
    fn word(&mut self) -> String;
}

impl Text for Rng {
    fn word(&mut self) -> String {
        const SYL: [&str; 16] = [
            "ka", "lo", "mi", "ter", "al", "lo", "cat", "or", "si", "ze", "page", "heap", "free",
            "span", "bin", "map",
        ];
        let n = 1 + self.below(3);
        (0..n).map(|_| SYL[self.below(16) as usize]).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Sanity: the preload really happens
// ---------------------------------------------------------------------------------------------

/// Without this, a library the loader refuses (wrong path, wrong ELF class) would let every
/// other test pass vacuously: ld.so prints an error and runs the program with glibc malloc.
/// (`Run::step` additionally fails on the loader's "cannot be preloaded" message.)
#[test]
fn preload_is_effective() {
    let lib = library().path;
    let cat = require("cat", "coreutils");
    let mut run = Run::new("preload_is_effective", Some(lib.clone()));
    let mut c = run.cmd(&cat);
    c.arg("/proc/self/maps");
    let out = run.step("cat /proc/self/maps", c, None, Stderr::Compare);
    let maps = String::from_utf8_lossy(&out.stdout);
    let name = lib.to_string_lossy();
    assert!(
        maps.lines().any(|l| l.ends_with(name.as_ref())),
        "{} is not mapped into a process started with LD_PRELOAD={}:\n{maps}",
        name,
        name
    );
}

// ---------------------------------------------------------------------------------------------
// python3
// ---------------------------------------------------------------------------------------------

/// An input of the real programs, shared with `benches/run.py --real`.
fn real_input(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/real")
        .join(name)
}

/// One step: `benches/real/workload.py` under `python`, every allocation through `malloc`.
fn python_workload(run: &mut Run, python: &Path, step: &str) {
    run.setenv("PYTHONMALLOC", "malloc");
    run.setenv("PYTHONHASHSEED", "0");
    run.setenv("PYTHONDONTWRITEBYTECODE", "1");
    run.setenv("PYTHONIOENCODING", "utf-8");
    let mut c = run.cmd(python);
    c.arg(real_input("workload.py"));
    run.step(step, c, None, Stderr::Compare);
}

#[test]
fn python3() {
    let python = require("python3", "python3");
    compare_runs("python3", |run| {
        python_workload(run, &python, "python3 workload.py")
    });
}

/// A shell script that forks for every command substitution and pipeline while its own heap
/// lives on a device tier: the forked children share the tier's bytes with the parent.
const BASH_SCRIPT: &str = r#"
total=0
words=""
for i in $(seq 1 300); do
    w=$(printf 'w%05d-%s' "$i" "$(echo "$i" | rev)")
    words="$words $w"
    total=$(( total + ${#w} ))
done
echo "words $total $(echo "$words" | wc -w)"
echo "$words" | tr ' ' '\n' | sort -r | head -3
declare -A seen
for w in $words; do seen[${w:0:4}]=$(( ${seen[${w:0:4}]:-0} + 1 )); done
for k in $(printf '%s\n' "${!seen[@]}" | sort); do printf '%s=%s ' "$k" "${seen[$k]}"; done
echo
"#;

/// The python3, perl and bash workloads with every request of 64 bytes or more placed on a
/// CXL tier backed by a file (one per process: `%p`): the device path (extent heap, headers)
/// under real programs, and `fork` of a process whose heap is on a shared mapping (python's
/// `os.fork`, bash's `$(...)`): each child must get a private copy, as of DRAM.
#[test]
fn python3_perl_and_bash_on_a_device_tier() {
    let python = require("python3", "python3");
    let perl = require("perl", "perl");
    let bash = require("bash", "bash");
    compare_runs("device_tier", |run| {
        let cxl = run.dir().join("cxl-tier");
        run.setenv(
            "TIERMALLOC_TIERS",
            format!("dram;cxl:path={}-%p,size=512M,create", cxl.display()),
        );
        run.setenv("TIERMALLOC_PLACE", "cxl:min=64");
        python_workload(run, &python, "python3 workload.py on cxl");
        perl_workload(run, &perl, "perl workload.pl on cxl");
        let mut c = run.cmd(&bash);
        c.arg("-c").arg(BASH_SCRIPT);
        run.step("bash script on cxl", c, None, Stderr::Compare);
    });
}

// ---------------------------------------------------------------------------------------------
// perl
// ---------------------------------------------------------------------------------------------

/// One step: `benches/real/workload.pl` under `perl`, with Perl's hash order fixed.
fn perl_workload(run: &mut Run, perl: &Path, step: &str) {
    run.setenv("PERL_HASH_SEED", "0");
    run.setenv("PERL_PERTURB_KEYS", "0");
    let mut c = run.cmd(perl);
    c.arg(real_input("workload.pl"));
    run.step(step, c, None, Stderr::Compare);
}

#[test]
fn perl() {
    let perl = require("perl", "perl");
    compare_runs("perl", |run| perl_workload(run, &perl, "perl workload.pl"));
}

// ---------------------------------------------------------------------------------------------
// git
// ---------------------------------------------------------------------------------------------

/// Writes the tree for commit `round` (0, 1, 2): the test process writes the files (the same
/// in both runs), git does everything else.
fn git_write_tree(dir: &Path, round: u32) -> (Vec<String>, Vec<(String, String)>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(round));
    let mut removed = Vec::new();
    let mut renamed = Vec::new();
    for d in 0..16 {
        let sub = dir.join(format!("src/mod{d:02}"));
        fs::create_dir_all(&sub).unwrap();
        for f in 0..25 {
            let name = format!("src/mod{d:02}/file{f:02}.txt");
            let path = dir.join(&name);
            let touch = match round {
                0 => true,
                _ => (d * 25 + f) % (7 + round as usize) == 0,
            };
            if round == 1 && (d * 25 + f) % 41 == 5 {
                removed.push(name);
                continue;
            }
            if round == 2 && (d * 25 + f) % 53 == 7 && path.exists() {
                renamed.push((name.clone(), format!("src/mod{d:02}/renamed{f:02}.txt")));
                continue;
            }
            if !touch || (round > 0 && !path.exists()) {
                continue;
            }
            let mut body = String::new();
            let lines = 40 + rng.below(120);
            for l in 0..lines {
                let _ = write!(body, "{d:02}/{f:02}:{l:04} ");
                for _ in 0..(3 + rng.below(9)) {
                    body.push_str(&rng.word());
                    body.push(' ');
                }
                body.push('\n');
            }
            if round > 0 {
                // Keep most of the old content so that diffs and deltas are interesting.
                let old = fs::read_to_string(&path).unwrap_or_default();
                let keep: Vec<&str> = old.lines().filter(|l| !l.contains("ka")).collect();
                body = format!("{}\n{body}", keep.join("\n"));
            }
            fs::write(&path, body).unwrap();
        }
    }
    if round == 1 {
        for i in 0..20 {
            let mut body = String::new();
            for l in 0..200 {
                let _ = writeln!(body, "new {i} line {l} {}", rng.word());
            }
            fs::write(
                dir.join(format!("src/mod{:02}/added{i:02}.txt", i % 16)),
                body,
            )
            .unwrap();
        }
    }
    (removed, renamed)
}

#[test]
fn git() {
    let git = require("git", "git");
    compare_runs("git", |run| {
        let home = run.dir().join("home");
        fs::create_dir_all(&home).unwrap();
        let repo = run.dir().join("repo");
        fs::create_dir_all(&repo).unwrap();
        run.setenv("HOME", &home);
        run.setenv("XDG_CONFIG_HOME", home.join(".config"));
        run.setenv("GIT_CONFIG_NOSYSTEM", "1");
        run.setenv("GIT_AUTHOR_NAME", "Tier Malloc");
        run.setenv("GIT_AUTHOR_EMAIL", "tier@example.com");
        run.setenv("GIT_COMMITTER_NAME", "Real Programs");
        run.setenv("GIT_COMMITTER_EMAIL", "real@example.com");
        run.setenv("GIT_PAGER", "cat");
        run.setenv("PAGER", "cat");
        run.setenv("GIT_TERMINAL_PROMPT", "0");

        let g = |run: &Run, args: &[&str]| {
            let mut c = run.cmd(&git);
            c.arg("-C")
                .arg(&repo)
                .args(["-c", "gc.autoDetach=false", "-c", "core.autocrlf=false"]);
            c.args(args);
            c
        };
        let st = |run: &mut Run, args: &[&str]| {
            let c = g(run, args);
            run.step(&format!("git {}", args.join(" ")), c, None, Stderr::Compare);
        };

        st(run, &["init", "-q", "-b", "main"]);
        let dates = [
            "2024-01-02T03:04:05+00:00",
            "2024-02-03T04:05:06+00:00",
            "2024-03-04T05:06:07+00:00",
        ];
        for (round, date) in dates.iter().enumerate() {
            let (removed, renamed) = git_write_tree(&repo, round as u32);
            for r in &removed {
                st(run, &["rm", "-q", r]);
            }
            for (from, to) in &renamed {
                st(run, &["mv", from, to]);
            }
            run.setenv("GIT_AUTHOR_DATE", date);
            run.setenv("GIT_COMMITTER_DATE", date);
            st(run, &["add", "-A"]);
            let msg = format!("round {round}: deterministic content\n\nBody of commit {round}.");
            let c = g(run, &["commit", "-m", &msg]);
            run.step(
                &format!("git commit (round {round})"),
                c,
                None,
                Stderr::Compare,
            );
        }
        st(run, &["log", "--stat", "-C", "--find-copies-harder"]);
        st(
            run,
            &["log", "-p", "--word-diff=porcelain", "-M", "HEAD~2..HEAD"],
        );
        st(run, &["diff", "--numstat", "HEAD~2", "HEAD"]);
        st(run, &["grep", "-c", "heapspan", "HEAD"]);
        st(run, &["blame", "--porcelain", "src/mod00/file00.txt"]);
        st(run, &["ls-tree", "-r", "-l", "HEAD"]);
        st(run, &["gc", "--prune=now"]);
        st(run, &["fsck", "--full", "--strict", "--no-progress"]);
        st(
            run,
            &["archive", "--format=tar", "-o", "../head.tar", "HEAD"],
        );
        st(
            run,
            &["rev-parse", "HEAD", "HEAD^{tree}", "HEAD~1", "HEAD~2"],
        );
        let tar = run.dir().join("head.tar");
        let d = file_digest(&tar);
        run.note(&d);
    });
}

// ---------------------------------------------------------------------------------------------
// sqlite3
// ---------------------------------------------------------------------------------------------

#[test]
fn sqlite3() {
    let sqlite = require("sqlite3", "sqlite3");
    compare_runs("sqlite3", |run| {
        let mut c = run.cmd(&sqlite);
        c.arg("-batch").arg("-bail").arg(run.dir().join("test.db"));
        run.step(
            "sqlite3 test.db < workload.sql",
            c,
            Some(fs::read(real_input("workload.sql")).unwrap()),
            Stderr::Compare,
        );
    });
}

// ---------------------------------------------------------------------------------------------
// gcc
// ---------------------------------------------------------------------------------------------

/// A few thousand lines of C that exercise different parts of the optimiser: hashing loops
/// (vectoriser/unroller), switch-heavy state machines, structs with qsort callbacks, and
/// string formatting with malloc/free. `main` prints a checksum per function.
fn generate_c_source() -> String {
    let mut rng = Rng(0x00c0_ffee_1234_5678);
    let mut s = String::from(
        "#include <stdint.h>\n#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n\n\
         static uint32_t data[4096];\n\n",
    );
    const N: usize = 160;
    for i in 0..N {
        let a = rng.next() | 1;
        let r = 1 + rng.below(62);
        match i % 4 {
            0 => {
                let _ = write!(
                    s,
                    "uint64_t f{i}(const uint32_t *a, size_t n) {{\n\
                     \tuint64_t h = {a}ull;\n\
                     \tfor (size_t k = 0; k < n; k++) {{\n\
                     \t\th ^= a[k] + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);\n\
                     \t\th *= {m}ull;\n\
                     \t\th = (h << {r}) | (h >> {r2});\n\
                     \t}}\n\
                     \tuint64_t v[8] = {{0}};\n\
                     \tfor (size_t k = 0; k + 8 <= n; k += 8)\n\
                     \t\tfor (int j = 0; j < 8; j++)\n\
                     \t\t\tv[j] += (uint64_t)a[k + j] * {c}u;\n\
                     \tfor (int j = 0; j < 8; j++)\n\
                     \t\th ^= v[j] << j;\n\
                     \treturn h;\n}}\n\n",
                    m = rng.next() | 1,
                    r2 = 64 - r,
                    c = rng.below(1000) + 1
                );
            }
            1 => {
                let _ = writeln!(
                    s,
                    "uint64_t f{i}(const uint32_t *a, size_t n) {{\n\
                     \tint state = {};\n\
                     \tuint64_t acc = 0;",
                    rng.below(16)
                );
                let _ = writeln!(
                    s,
                    "\tfor (size_t k = 0; k < n; k++) {{\n\t\tswitch ((state + a[k]) & 15) {{"
                );
                for c in 0..16 {
                    let _ = writeln!(
                        s,
                        "\t\tcase {c}: acc = acc * {} + a[k] + {}; state = {}; break;",
                        rng.below(97) + 2,
                        rng.below(10000),
                        rng.below(16)
                    );
                }
                let _ = writeln!(s, "\t\t}}\n\t}}\n\treturn acc ^ {a}ull;\n}}\n");
            }
            2 => {
                let _ = write!(
                    s,
                    "struct s{i} {{ uint32_t key; uint32_t val; char tag[12]; }};\n\
                     static int cmp{i}(const void *x, const void *y) {{\n\
                     \tconst struct s{i} *p = x, *q = y;\n\
                     \tif (p->key != q->key) return p->key < q->key ? -1 : 1;\n\
                     \treturn strcmp(p->tag, q->tag);\n}}\n\
                     uint64_t f{i}(const uint32_t *a, size_t n) {{\n\
                     \tsize_t m = n < 512 ? n : 512;\n\
                     \tstruct s{i} *v = malloc(m * sizeof *v);\n\
                     \tif (!v) return 0;\n\
                     \tfor (size_t k = 0; k < m; k++) {{\n\
                     \t\tv[k].key = (a[k] * {mul}u) % {md}u;\n\
                     \t\tv[k].val = a[(k * 7) % n];\n\
                     \t\tsnprintf(v[k].tag, sizeof v[k].tag, \"%x\", (unsigned)(a[k] ^ {x}u));\n\
                     \t}}\n\
                     \tqsort(v, m, sizeof *v, cmp{i});\n\
                     \tuint64_t h = 0;\n\
                     \tfor (size_t k = 0; k < m; k++) h = h * 31 + v[k].key + v[k].val + (uint8_t)v[k].tag[0];\n\
                     \tfree(v);\n\
                     \treturn h;\n}}\n\n",
                    mul = rng.below(100_000) + 3,
                    md = rng.below(5000) + 17,
                    x = rng.below(1 << 30)
                );
            }
            _ => {
                let _ = write!(
                    s,
                    "uint64_t f{i}(const uint32_t *a, size_t n) {{\n\
                     \tsize_t cap = 64, len = 0;\n\
                     \tchar *buf = malloc(cap);\n\
                     \tif (!buf) return 0;\n\
                     \tfor (size_t k = 0; k < n; k += {step}) {{\n\
                     \t\tchar tmp[48];\n\
                     \t\tint w = snprintf(tmp, sizeof tmp, \"%u-%llu;\", a[k] % {md}u, (unsigned long long)k * {mul}u);\n\
                     \t\tif (len + (size_t)w + 1 > cap) {{\n\
                     \t\t\tcap *= 2;\n\
                     \t\t\tchar *nb = realloc(buf, cap);\n\
                     \t\t\tif (!nb) {{ free(buf); return 0; }}\n\
                     \t\t\tbuf = nb;\n\
                     \t\t}}\n\
                     \t\tmemcpy(buf + len, tmp, (size_t)w + 1);\n\
                     \t\tlen += (size_t)w;\n\
                     \t}}\n\
                     \tuint64_t h = 1469598103934665603ull;\n\
                     \tfor (size_t k = 0; k < len; k++) h = (h ^ (uint8_t)buf[k]) * 1099511628211ull;\n\
                     \tfree(buf);\n\
                     \treturn h ^ len;\n}}\n\n",
                    step = rng.below(5) + 1,
                    md = rng.below(100_000) + 7,
                    mul = rng.below(1000) + 1
                );
            }
        }
    }
    s.push_str(
        "typedef uint64_t (*fn_t)(const uint32_t *, size_t);\nstatic const fn_t fns[] = {\n",
    );
    for i in 0..N {
        let _ = writeln!(s, "\tf{i},");
    }
    s.push_str(
        "};\n\nint main(void) {\n\
         \tuint32_t x = 2463534242u;\n\
         \tfor (size_t k = 0; k < 4096; k++) { x ^= x << 13; x ^= x >> 17; x ^= x << 5; data[k] = x; }\n\
         \tuint64_t total = 0;\n\
         \tfor (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {\n\
         \t\tuint64_t h = fns[i](data, 4096);\n\
         \t\ttotal ^= h + i;\n\
         \t\tprintf(\"f%zu %016llx\\n\", i, (unsigned long long)h);\n\
         \t}\n\
         \tprintf(\"total %016llx\\n\", (unsigned long long)total);\n\
         \treturn 0;\n}\n",
    );
    s
}

#[test]
fn gcc() {
    let cc = require("cc", "gcc");
    let source = generate_c_source();
    compare_runs("gcc", |run| {
        fs::write(run.dir().join("gen.c"), &source).unwrap();
        let mut c = run.cmd(&cc);
        c.args(["-O2", "-S", "gen.c", "-o", "gen.s"]);
        run.step("cc -O2 -S gen.c", c, None, Stderr::Compare);
        let d = file_digest(&run.dir().join("gen.s"));
        run.note(&d);
        let mut c = run.cmd(&cc);
        c.args(["-O2", "-Wall", "-c", "gen.c", "-o", "gen.o"]);
        run.step("cc -O2 -Wall -c gen.c", c, None, Stderr::Compare);
        let d = file_digest(&run.dir().join("gen.o"));
        run.note(&d);
        let mut c = run.cmd(&cc);
        c.args(["gen.o", "-o", "gen"]);
        run.step("cc gen.o -o gen", c, None, Stderr::Compare);
        let gen = run.dir().join("gen");
        let c = run.cmd(&gen);
        run.step("./gen", c, None, Stderr::Compare);
    });
}

// ---------------------------------------------------------------------------------------------
// cargo (self-hosting: the Rust toolchain under the allocator)
// ---------------------------------------------------------------------------------------------

fn small_crate() -> BTreeMap<&'static str, &'static str> {
    let mut m = BTreeMap::new();
    m.insert(
        "Cargo.toml",
        r#"[package]
name = "rp_small"
version = "0.1.0"
edition = "2021"

[dependencies]
"#,
    );
    m.insert(
        "src/main.rs",
        r#"mod matrix;
mod shapes;
mod text;
mod workers;

use std::collections::BTreeMap;

fn main() {
    let shapes = shapes::make(2000);
    let area: f64 = shapes.iter().map(|s| s.area()).sum();
    println!("shapes {} area {:.3}", shapes.len(), area);
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &shapes {
        *by_kind.entry(s.name()).or_default() += 1;
    }
    println!("kinds {:?}", by_kind);

    let a = matrix::Matrix::<u64>::from_fn(48, 48, |i, j| (i * 7 + j * 13) as u64 % 101);
    let b = matrix::Matrix::<u64>::from_fn(48, 48, |i, j| (i ^ j) as u64);
    let c = a.mul(&b);
    println!("matrix trace {} sum {}", c.trace(), c.sum());
    let f = matrix::Matrix::<f64>::from_fn(20, 20, |i, j| 1.0 / ((i + j + 1) as f64));
    println!("hilbert trace {:.9}", f.mul(&f).trace());

    let corpus = text::corpus(60_000);
    let freq = text::word_freq(&corpus);
    let mut top: Vec<_> = freq.iter().collect();
    top.sort_by(|x, y| y.1.cmp(x.1).then(x.0.cmp(y.0)));
    println!("words {} distinct {} top {:?}", corpus.len(), freq.len(), &top[..8]);
    println!("digest {:016x}", text::digest(&corpus));

    let results = workers::run(4, 40, 5_000);
    println!("workers {} checksum {:016x}", results.len(), results.iter().fold(0u64, |a, r| a.rotate_left(5) ^ r));
}
"#,
    );
    m.insert(
        "src/shapes.rs",
        r#"pub trait Shape {
    fn area(&self) -> f64;
    fn name(&self) -> &'static str;
}

pub struct Circle(pub f64);
pub struct Rect(pub f64, pub f64);
pub struct Poly(pub Vec<(f64, f64)>);

impl Shape for Circle {
    fn area(&self) -> f64 { 3.0 * self.0 * self.0 }
    fn name(&self) -> &'static str { "circle" }
}
impl Shape for Rect {
    fn area(&self) -> f64 { self.0 * self.1 }
    fn name(&self) -> &'static str { "rect" }
}
impl Shape for Poly {
    fn area(&self) -> f64 {
        let n = self.0.len();
        let mut s = 0.0;
        for i in 0..n {
            let (x1, y1) = self.0[i];
            let (x2, y2) = self.0[(i + 1) % n];
            s += x1 * y2 - x2 * y1;
        }
        s.abs() / 2.0
    }
    fn name(&self) -> &'static str { "poly" }
}

pub fn make(n: usize) -> Vec<Box<dyn Shape>> {
    (0..n)
        .map(|i| -> Box<dyn Shape> {
            let f = (i % 17) as f64 + 0.5;
            match i % 3 {
                0 => Box::new(Circle(f)),
                1 => Box::new(Rect(f, f * 2.0)),
                _ => Box::new(Poly((0..(3 + i % 9)).map(|k| ((k as f64) * f, ((k * k) % 7) as f64)).collect())),
            }
        })
        .collect()
}
"#,
    );
    m.insert(
        "src/matrix.rs",
        r#"use std::ops::{Add, Mul};

#[derive(Clone, Debug)]
pub struct Matrix<T> {
    rows: usize,
    cols: usize,
    data: Vec<T>,
}

impl<T> Matrix<T>
where
    T: Copy + Default + Add<Output = T> + Mul<Output = T>,
{
    pub fn from_fn(rows: usize, cols: usize, f: impl Fn(usize, usize) -> T) -> Self {
        let mut data = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for j in 0..cols {
                data.push(f(i, j));
            }
        }
        Matrix { rows, cols, data }
    }

    pub fn get(&self, i: usize, j: usize) -> T {
        self.data[i * self.cols + j]
    }

    pub fn mul(&self, other: &Self) -> Self {
        assert_eq!(self.cols, other.rows);
        Matrix::from_fn(self.rows, other.cols, |i, j| {
            (0..self.cols).fold(T::default(), |acc, k| acc + self.get(i, k) * other.get(k, j))
        })
    }

    pub fn trace(&self) -> T {
        (0..self.rows.min(self.cols)).fold(T::default(), |acc, i| acc + self.get(i, i))
    }

    pub fn sum(&self) -> T {
        self.data.iter().fold(T::default(), |acc, &x| acc + x)
    }
}
"#,
    );
    m.insert(
        "src/text.rs",
        r#"use std::collections::HashMap;

pub fn corpus(n: usize) -> Vec<String> {
    let syl = ["ka", "lo", "mi", "ter", "al", "cat", "or", "si", "ze", "heap", "bin", "map"];
    let mut x: u64 = 0x1234_5678_9abc_def1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = 1 + (x % 3) as usize;
            (0..k).map(|j| syl[((x >> (8 * j)) % syl.len() as u64) as usize]).collect::<String>()
        })
        .collect()
}

pub fn word_freq(words: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for w in words {
        *m.entry(w.clone()).or_insert(0) += 1;
    }
    m
}

pub fn digest(words: &[String]) -> u64 {
    let mut sorted: Vec<&String> = words.iter().collect();
    sorted.sort();
    sorted.dedup();
    let joined = sorted.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",");
    joined.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}
"#,
    );
    m.insert(
        "src/workers.rs",
        r#"use std::sync::mpsc;
use std::thread;

/// `threads` workers each build `jobs` vectors and send them to the main thread, which frees
/// them: memory allocated on one thread is released on another.
pub fn run(threads: usize, jobs: usize, len: usize) -> Vec<u64> {
    let (tx, rx) = mpsc::channel::<(usize, usize, Vec<u64>)>();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let tx = tx.clone();
            thread::spawn(move || {
                for j in 0..jobs {
                    let v: Vec<u64> = (0..len + j).map(|k| (k as u64 * 31 + t as u64) ^ j as u64).collect();
                    let s: Vec<String> = v.iter().take(50).map(|x| x.to_string()).collect();
                    let extra = s.join("").len() as u64;
                    let mut v = v;
                    v.push(extra);
                    tx.send((t, j, v)).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let mut out: Vec<(usize, usize, u64)> = rx.iter().map(|(t, j, v)| (t, j, v.iter().fold(0u64, |a, &x| a.wrapping_mul(1_000_003) ^ x))).collect();
    for h in handles {
        h.join().unwrap();
    }
    out.sort();
    out.into_iter().map(|(_, _, h)| h).collect()
}
"#,
    );
    m
}

#[test]
fn cargo_build() {
    let cargo = require("cargo", "cargo (or install Rust with rustup)");
    compare_runs("cargo_build", |run| {
        let krate = run.dir().join("rp_small");
        for (path, body) in small_crate() {
            let p = krate.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, body).unwrap();
        }
        let target = run.dir().join("target");
        let mut c = run.cmd(&cargo);
        c.args(["build", "--offline", "--quiet"])
            .current_dir(&krate)
            .env("CARGO_TARGET_DIR", &target);
        // cargo prints timings on stderr: only its status and stdout are compared.
        run.step("cargo build --offline", c, None, Stderr::Ignore);
        let bin = target.join("debug").join("rp_small");
        assert!(
            bin.is_file(),
            "cargo build succeeded but {} is missing",
            bin.display()
        );
        let c = run.cmd(&bin);
        run.step("target/debug/rp_small", c, None, Stderr::Compare);
    });
}

// ---------------------------------------------------------------------------------------------
// TIERMALLOC_SHOW_STATS
// ---------------------------------------------------------------------------------------------

#[test]
fn show_stats_report_goes_to_stderr() {
    let perl = require("perl", "perl");
    let Library {
        path: lib,
        is_tiermalloc,
    } = library();
    let script =
        "my %h; my $s = ''; for my $i (1 .. 200000) { $h{\"k$i\"} = 'v' x ($i % 50); $s .= $i } \
                  print scalar(keys %h), ' ', length($s), \"\\n\";";

    let base = Run::new("show_stats", None);
    let mut c = base.cmd(&perl);
    c.args(["-e", script]);
    let b = run_with_timeout(c, None, TIMEOUT).unwrap_or_else(|e| panic!("baseline perl: {e}"));
    assert!(
        b.status.success(),
        "baseline perl failed: {}",
        describe_status(&b.status)
    );

    let mut pre = Run::new("show_stats", Some(lib.clone()));
    pre.setenv("TIERMALLOC_SHOW_STATS", "1");
    let mut c = pre.cmd(&perl);
    c.args(["-e", script]);
    let p = run_with_timeout(c, None, TIMEOUT).unwrap_or_else(|e| {
        panic!(
            "perl with LD_PRELOAD={} TIERMALLOC_SHOW_STATS=1: {e}",
            lib.display()
        )
    });
    let perr = String::from_utf8_lossy(&p.stderr);
    assert_eq!(
        describe_status(&p.status),
        describe_status(&b.status),
        "exit status differs with TIERMALLOC_SHOW_STATS=1; stderr:\n{}",
        tail(&p.stderr, 3000)
    );
    assert!(
        p.stdout == b.stdout,
        "stdout differs with TIERMALLOC_SHOW_STATS=1 (the report must go to stderr):\n\
         baseline: {:?}\npreload:  {:?}",
        tail(&b.stdout, 500),
        tail(&p.stdout, 500)
    );
    if is_tiermalloc {
        assert!(
            perr.to_lowercase().contains("tiermalloc"),
            "TIERMALLOC_SHOW_STATS=1 produced no stats report on stderr (expected it to mention \
             \"tiermalloc\"); stderr was:\n{}",
            tail(&p.stderr, 3000)
        );
        assert!(!String::from_utf8_lossy(&b.stderr)
            .to_lowercase()
            .contains("tiermalloc"));
    } else {
        eprintln!(
            "[show_stats] {OVERRIDE_VAR}={} is not tiermalloc: only stdout and status were \
             compared, the stats report check needs libtiermalloc.so",
            lib.display()
        );
    }
}
