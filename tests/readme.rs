//! README.md's C and C++ examples, compiled and run as written (its Rust examples are doctests:
//! `src/lib.rs` includes the README under `cfg(doctest)`). The C examples are compiled against
//! the header and linked with the library under test; the device example runs twice: without
//! `TIERMALLOC_TIERS` it must stop with its message (the NULL check), and with the README's
//! own `export TIERMALLOC_TIERS=...` line (its `/dev/shm/` files renamed for this test) it must
//! put its block on PMR. The persistent counter runs twice on its own PMR file and must count
//! to 2; the pool example must succeed.

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

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fenced blocks of `markdown` whose info string is `lang`.
fn blocks(markdown: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, l) if l == format!("```{lang}") => current = Some(String::new()),
            (Some(_), "```") => out.push(current.take().unwrap()),
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            _ => {}
        }
    }
    out
}

fn build(dir: &Path, name: &str, source: &str, cpp: bool) -> PathBuf {
    let lib = library().path;
    let lib_dir = lib.parent().unwrap();
    let src = dir.join(format!("{name}.{}", if cpp { "cpp" } else { "c" }));
    std::fs::write(&src, source).unwrap();
    let exe = dir.join(name);
    let mut cmd = Command::new(if cpp { "c++" } else { "cc" });
    if cpp {
        cmd.arg("-std=c++17");
    }
    let out = cmd
        .args(["-Wall", "-Werror", "-I"])
        .arg(repo().join("include"))
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(lib_dir)
        .arg("-ltiermalloc")
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "README example {name} does not compile:\n{source}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn run(exe: &Path, env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(exe);
    cmd.env_clear()
        .envs(scrubbed_env(&SCRUB))
        .envs(env.iter().map(|(k, v)| (k, v)));
    run_with_timeout(cmd, None, Duration::from_secs(30)).unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn c_and_cpp_examples_compile_and_run() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let c = blocks(&readme, "c");
    let cpp = blocks(&readme, "cpp");
    assert_eq!((c.len(), cpp.len()), (5, 1), "the examples this test knows");
    let dir = TempDir::new("readme", "examples").kept_on_panic();

    // DRAM: a whole program that needs no configuration.
    let dram = build(dir.path(), "dram", &c[0], false);
    let out = run(&dram, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("bytes in use"), "{stdout}");
    assert!(
        stdout.contains(&format!("tiermalloc {}", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );

    // The device example: its NULL check without tiers, its output with the README's tiers.
    assert!(c[1].contains("TM_PMR"));
    let device = build(dir.path(), "device", &c[1], false);
    let out = run(&device, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with("tm_malloc(TM_PMR)"),
        "{}",
        text(&out.stderr)
    );
    let export = readme
        .lines()
        .find_map(|l| l.strip_prefix("export TIERMALLOC_TIERS=\""))
        .and_then(|l| l.split('"').next())
        .expect("README exports TIERMALLOC_TIERS");
    let files = format!("/dev/shm/tiermalloc-readme-{}-", std::process::id());
    let tiers = export.replace("/dev/shm/", &files);
    let out = run(&device, &[("TIERMALLOC_TIERS", tiers)]);
    for f in ["pmr0", "cxl0"] {
        let _ = std::fs::remove_file(format!("{files}{f}"));
    }
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("kind 3, "), "{stdout}");
    assert!(
        stdout.contains("pmr: ") && stdout.contains("bytes in use"),
        "{stdout}"
    );

    // The persistent counter: two runs on the README's PMR file (moved into our directory).
    assert!(c[2].contains("tm_root_get"));
    let counter = build(dir.path(), "counter", &c[2], false);
    let export = readme
        .lines()
        .filter_map(|l| l.strip_prefix("export TIERMALLOC_TIERS=\""))
        .find(|l| l.contains("state.pmr"))
        .and_then(|l| l.split('"').next())
        .expect("README exports the counter's TIERMALLOC_TIERS");
    let state_file = dir.path().join("state.pmr");
    let tiers = export.replace("/var/tmp/state.pmr", state_file.to_str().unwrap());
    for run_number in 1..=2 {
        let out = run(&counter, &[("TIERMALLOC_TIERS", tiers.clone())]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout),
            format!("run {run_number}: written by the first run\n")
        );
    }

    // The pool: publish, open from four children, collect (it names its own /dev/shm file).
    assert!(c[3].contains("tm_space_create"));
    let pool = build(dir.path(), "pool", &c[3], false);
    let out = run(&pool, &[]);
    let _ = std::fs::remove_file("/dev/shm/example-pool");
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Shares of the pool: the README's exports (its pool file renamed), a lender and the
    // borrower it runs.
    assert!(c[4].contains("tm_pool_nodes"));
    let lend = build(dir.path(), "lend", &c[4], false);
    let export = |var: &str| {
        readme
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter(|l| l.starts_with(var))
            .find(|l| l.contains("cxl:pool") || l.contains("example-shares"))
            .and_then(|l| l.split('"').nth(1))
            .unwrap_or_else(|| panic!("README exports {var} for the shares example"))
            .to_owned()
    };
    let pool_file = format!("/dev/shm/tiermalloc-readme-shares-{}", std::process::id());
    let out = run(
        &lend,
        &[
            (
                "TIERMALLOC_POOL",
                export("TIERMALLOC_POOL").replace("/dev/shm/example-shares", &pool_file),
            ),
            ("TIERMALLOC_TIERS", export("TIERMALLOC_TIERS")),
        ],
    );
    let _ = std::fs::remove_file(&pool_file);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stdout),
        "borrower: 7 blocks, borrowed 3145728 bytes, then ENOMEM\nlender: 1 node(s) live, lent 0 \
         bytes\n"
    );

    // C++: the memory resource.
    let pmr = build(dir.path(), "resource", &cpp[0], true);
    let out = run(&pmr, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "3 ints on tier 0\n");
}
