//! Packaging as a user meets it: `install.sh` into a temporary prefix (the library under its
//! soname `libtiermalloc.so.0`, the header, `tiermalloc.pc`, the command, the man pages), a C
//! program built with `pkg-config --cflags --libs tiermalloc` against that copy, the C++
//! `tiermalloc::memory_resource` and aligned `new` through it, and the man pages: rendered
//! without a groff warning, naming every variable, key and function that exists and nothing
//! that does not.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{library, profile_dir, run_with_timeout, scrubbed_env, Output, Scrub, TempDir};

const SCRUB: Scrub = Scrub {
    prefixes: &[],
    keep: &[],
    exact: &["PKG_CONFIG_PATH", "LD_LIBRARY_PATH"],
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = run_with_timeout(cmd, None, Duration::from_secs(120)).unwrap();
    assert!(
        out.status.success(),
        "{shown} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Installs the build under test into `prefix` with `install.sh`, from a build directory
/// holding this test run's library, static library and command.
fn install(prefix: &Path, build: &Path) {
    std::fs::create_dir_all(build).unwrap();
    std::fs::copy(library().path, build.join("libtiermalloc.so")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_tiermalloc"), build.join("tiermalloc")).unwrap();
    let static_lib = profile_dir().join("deps/libtiermalloc.a");
    if static_lib.exists() {
        std::fs::copy(static_lib, build.join("libtiermalloc.a")).unwrap();
    }
    let mut cmd = Command::new("sh");
    cmd.arg(repo().join("install.sh"))
        .arg(prefix)
        .env_clear()
        .envs(scrubbed_env(&SCRUB))
        .env("TIERMALLOC_BUILD_DIR", build);
    run(cmd);
}

fn pkg_config(prefix: &Path) -> Vec<String> {
    let mut cmd = Command::new("pkg-config");
    cmd.args(["--cflags", "--libs", "tiermalloc"])
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"));
    let out = run(cmd);
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn readelf_dynamic(file: &Path) -> String {
    let mut cmd = Command::new("readelf");
    cmd.arg("-d").arg(file);
    String::from_utf8(run(cmd).stdout).unwrap()
}

const C_PROGRAM: &str = r#"#include <stdio.h>
#include <string.h>
#include <tiermalloc.h>

int main(void) {
    char *p = tm_malloc(TM_DRAM, 1000);
    if (p == NULL) { perror("tm_malloc"); return 1; }
    memset(p, 7, 1000);
    if (tm_kind_of(p) != TM_DRAM) return 2;
    char expect[32];
    snprintf(expect, sizeof expect, "%d.%d.%d", TIERMALLOC_VERSION_MAJOR,
             TIERMALLOC_VERSION_MINOR, TIERMALLOC_VERSION_PATCH);
    if (strcmp(tm_version(), expect) != 0) return 3;
    tm_free(p);
    printf("tiermalloc %s\n", tm_version());
    return 0;
}
"#;

const CPP_PROGRAM: &str = r#"#include <cstdint>
#include <cstdio>
#include <vector>
#include <tiermalloc_pmr.hpp>

struct alignas(256) Wide { char bytes[256]; };

int main() {
    tiermalloc::memory_resource dram(TM_DRAM), dram_too(TM_DRAM), pmr(TM_PMR);
    if (!dram.is_equal(dram_too) || dram.is_equal(pmr)) return 1;
    std::pmr::vector<std::uint64_t> v(&dram);
    for (std::uint64_t i = 0; i < 10000; i++) v.push_back(i);
    if (tm_kind_of(v.data()) != TM_DRAM) return 2;
    void *aligned = dram.allocate(100, 4096);
    if (reinterpret_cast<std::uintptr_t>(aligned) % 4096 != 0) return 3;
    dram.deallocate(aligned, 100, 4096);
    // Aligned and sized new/delete reach tiermalloc through libstdc++'s aligned_alloc/free.
    Wide *w = new Wide;
    if (reinterpret_cast<std::uintptr_t>(w) % 256 != 0 || tm_kind_of(w) != TM_DRAM) return 4;
    delete w;
    bool pmr_configured = tm_kind_of(nullptr) == -1 && std::getenv("TIERMALLOC_TIERS") != nullptr;
    try {
        std::pmr::vector<int> on_pmr({1, 2, 3}, &pmr);
        if (!pmr_configured || tm_kind_of(on_pmr.data()) != TM_PMR) return 5;
    } catch (const std::bad_alloc &) {
        if (pmr_configured) return 6;
    }
    std::puts(pmr_configured ? "pmr" : "no pmr");
    return 0;
}
"#;

#[test]
fn installed_copy_builds_c_and_cpp_programs_through_pkg_config() {
    let dir = TempDir::new("packaging", "install").kept_on_panic();
    let prefix = dir.path().join("prefix");
    install(&prefix, &dir.path().join("build"));

    // The soname and its links, as the loader and the linker look for them.
    let lib = prefix.join("lib");
    let versioned = format!("libtiermalloc.so.{}", env!("CARGO_PKG_VERSION"));
    assert!(lib.join(&versioned).is_file());
    assert_eq!(
        std::fs::read_link(lib.join("libtiermalloc.so.0")).unwrap(),
        Path::new(&versioned)
    );
    assert_eq!(
        std::fs::read_link(lib.join("libtiermalloc.so")).unwrap(),
        Path::new("libtiermalloc.so.0")
    );
    let dynamic = readelf_dynamic(&lib.join(&versioned));
    assert!(dynamic.contains("Library soname: [libtiermalloc.so.0]"));
    for f in [
        "include/tiermalloc.h",
        "include/tiermalloc_pmr.hpp",
        "bin/tiermalloc",
        "share/man/man1/tiermalloc.1",
        "share/man/man3/tiermalloc.3",
    ] {
        assert!(prefix.join(f).is_file(), "{f} not installed");
    }

    let flags = pkg_config(&prefix);
    assert!(
        flags.contains(&format!("-I{}", prefix.join("include").display())),
        "{flags:?}"
    );
    assert!(flags.contains(&"-ltiermalloc".to_string()), "{flags:?}");

    let c_src = dir.path().join("prog.c");
    std::fs::write(&c_src, C_PROGRAM).unwrap();
    let c_exe = dir.path().join("prog");
    let mut cc = Command::new("cc");
    cc.arg("-Wall")
        .arg("-Werror")
        .arg(&c_src)
        .arg("-o")
        .arg(&c_exe)
        .args(&flags);
    run(cc);
    assert!(readelf_dynamic(&c_exe).contains("Shared library: [libtiermalloc.so.0]"));
    let mut prog = Command::new(&c_exe);
    prog.env_clear()
        .envs(scrubbed_env(&SCRUB))
        .env("LD_LIBRARY_PATH", &lib);
    let out = run(prog);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("tiermalloc {}\n", env!("CARGO_PKG_VERSION"))
    );

    let cpp_src = dir.path().join("prog.cpp");
    std::fs::write(&cpp_src, CPP_PROGRAM).unwrap();
    let cpp_exe = dir.path().join("prog-cpp");
    let mut cxx = Command::new("c++");
    cxx.args(["-std=c++17", "-Wall", "-Werror"])
        .arg(&cpp_src)
        .arg("-o")
        .arg(&cpp_exe)
        .args(&flags);
    run(cxx);
    let mut prog = Command::new(&cpp_exe);
    prog.env_clear()
        .envs(scrubbed_env(&SCRUB))
        .env("LD_LIBRARY_PATH", &lib);
    assert_eq!(String::from_utf8_lossy(&run(prog).stdout), "no pmr\n");
    let pmr_file = dir.path().join("pmr");
    let mut prog = Command::new(&cpp_exe);
    prog.env_clear()
        .envs(scrubbed_env(&SCRUB))
        .env("LD_LIBRARY_PATH", &lib)
        .env(
            "TIERMALLOC_TIERS",
            format!("dram;pmr:path={},size=4M,create", pmr_file.display()),
        );
    assert_eq!(String::from_utf8_lossy(&run(prog).stdout), "pmr\n");
}

/// Words of `text` that start with `prefix` and go on with `[A-Za-z0-9_]`.
fn words_with_prefix(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before_ok = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if before_ok && end > prefix.len() {
            out.insert(tail[..end].to_string());
        }
        rest = &rest[i + end.max(1)..];
    }
    out
}

fn source_text() -> String {
    let mut all = String::new();
    let mut stack = vec![repo().join("src")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                all += &std::fs::read_to_string(p).unwrap();
            }
        }
    }
    all
}

/// The environment variables the library and the command read (string literals in `src/`).
fn variables_read() -> BTreeSet<String> {
    let src = source_text();
    words_with_prefix(&src, "TIERMALLOC_")
        .into_iter()
        .filter(|v| {
            src.contains(&format!("\"{v}\""))
                && !v.starts_with("TIERMALLOC_SURELY")
                && !v.starts_with("TIERMALLOC_TEST_")
        })
        .collect()
}

#[test]
fn man_pages_render_cleanly_and_name_what_exists() {
    for page in ["tiermalloc.1", "tiermalloc.3"] {
        let path = repo().join("man").join(page);
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&path)
            .output()
            .expect("groff runs");
        assert!(out.status.success(), "groff failed on {page}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "",
            "groff warnings on {page}"
        );
    }
    let page1 = std::fs::read_to_string(repo().join("man/tiermalloc.1")).unwrap();
    let page3 = std::fs::read_to_string(repo().join("man/tiermalloc.3")).unwrap();
    let header = std::fs::read_to_string(repo().join("include/tiermalloc.h")).unwrap();

    // Every function of the header is in tiermalloc.3, and nothing else named tm_*( is.
    let declared: BTreeSet<String> = words_with_prefix(&header, "tm_")
        .into_iter()
        .filter(|f| header.contains(&format!(" {f}(")) || header.contains(&format!("*{f}(")))
        .collect();
    let documented: BTreeSet<String> = words_with_prefix(&page3, "tm_")
        .into_iter()
        .filter(|f| page3.contains(&format!("{f}(")))
        .collect();
    assert_eq!(
        documented, declared,
        "tiermalloc.3's SYNOPSIS against include/tiermalloc.h"
    );

    // Variables: every one the code reads is documented, and every one documented is read.
    let read = variables_read();
    let in_pages: BTreeSet<String> = words_with_prefix(&format!("{page1}{page3}"), "TIERMALLOC_")
        .into_iter()
        .filter(|w| !w.starts_with("TIERMALLOC_VERSION"))
        .collect();
    assert_eq!(
        in_pages, read,
        "variables in the man pages against those the code reads"
    );

    // The command: every subcommand and each of its long options is in tiermalloc.1.
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tiermalloc"))
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = help(&["--help"]);
    let commands: Vec<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 5, "{top}");
    for command in commands {
        assert!(
            page1.contains(&format!(".B tiermalloc {command}")),
            "tiermalloc.1 lacks {command}"
        );
        for option in help(&[command, "--help"]).split_whitespace() {
            let Some(long) = option.strip_prefix("--") else {
                continue;
            };
            let long = long.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
            if !["help", ""].contains(&long) {
                let roff = format!("\\-\\-{}", long.replace('-', "\\-"));
                assert!(
                    page1.contains(&roff),
                    "tiermalloc.1 lacks {command} --{long}"
                );
            }
        }
    }

    // Tier keys: those config.rs accepts, each named as `.B key` or `.B key=` in tiermalloc.3.
    for key in [
        "path", "size", "offset", "create", "keep", "numa", "limit", "fit", "spare",
    ] {
        assert!(
            source_text().contains(&format!("(b\"{key}\"")),
            "config.rs no longer accepts {key}"
        );
        assert!(
            page3.contains(&format!(".B {key}=")) || page3.contains(&format!(".B {key}\n")),
            "tiermalloc.3 does not document the key {key}"
        );
    }
}
