//! C++ `operator new` and `operator delete` in every form come from the library, and a `new`
//! that fails still calls the program's `new_handler` and throws `std::bad_alloc` through the
//! library's stub (`src/front/override_cxx_new.rs`): `tests/programs/cxx_operators.cpp`,
//! compiled with `c++` and run linked with the library and under `LD_PRELOAD`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::{library, run_with_timeout, scrubbed_env, show_cmd, Scrub, TempDir};

const SCRUB: Scrub = Scrub {
    prefixes: &["MALLOC_"],
    keep: &[],
    exact: &["LD_LIBRARY_PATH", "GLIBC_TUNABLES"],
};

fn compile(dir: &Path, out: &str, linked_with: Option<&Path>) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = dir.join(out);
    let mut cxx = Command::new("c++");
    // -O0: the compiler may not pair up and drop the operator calls the program makes.
    cxx.args(["-std=c++17", "-O0", "-g", "-Wall", "-Werror"])
        .arg("-I")
        .arg(root.join("include"))
        .arg(root.join("tests/programs/cxx_operators.cpp"))
        .arg("-o")
        .arg(&exe);
    if let Some(lib) = linked_with {
        let d = lib.parent().unwrap();
        cxx.arg(format!("-L{}", d.display()))
            .arg("-ltiermalloc")
            .arg(format!("-Wl,-rpath,{}", d.display()));
    }
    cxx.arg("-ldl");
    let shown = show_cmd(&cxx);
    let out = cxx.output().expect("c++ runs");
    assert!(
        out.status.success(),
        "{shown} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Runs `exe` in the scrubbed environment (plus `LD_PRELOAD=preload`) and wants "ok".
fn run_ok(exe: &Path, preload: Option<&Path>) {
    let mut cmd = Command::new(exe);
    cmd.env_clear().envs(scrubbed_env(&SCRUB));
    if let Some(lib) = preload {
        cmd.env("LD_PRELOAD", lib);
    }
    let shown = show_cmd(&cmd);
    let out = run_with_timeout(cmd, None, Duration::from_secs(120)).unwrap();
    assert!(
        out.status.success() && out.stdout == b"ok\n",
        "{shown}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_new_and_delete_form_is_ours_and_a_failed_new_throws_bad_alloc() {
    let lib = library();
    if !lib.is_tiermalloc {
        return; // another allocator under test: the checks name the library's file
    }
    let dir = TempDir::new("cxx-operators", "all").kept_on_panic();

    let linked = compile(dir.path(), "linked", Some(&lib.path));
    run_ok(&linked, None);
    let plain = compile(dir.path(), "plain", None);
    run_ok(&plain, Some(&lib.path));
}
