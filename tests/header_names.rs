//! Every name the C header defines is the library's own: `tm_`/`TM_` or `tiermalloc`/
//! `TIERMALLOC_`. cbindgen also exported two internal constants as macros, `IDLE` (as `1 << 63`,
//! an overflow in C's `int`) and `MAX_LOANS`, so a user's own `enum { IDLE, BUSY }` no longer
//! compiled once `<tiermalloc.h>` was included.

use std::path::Path;
use std::process::Command;

fn header() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join("include/tiermalloc.h")).unwrap()
}

#[test]
fn every_macro_of_the_header_has_the_librarys_prefix() {
    let foreign: Vec<String> = header()
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("#define "))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter(|name| !name.starts_with("TM_") && !name.starts_with("TIERMALLOC_"))
        .map(String::from)
        .collect();
    assert!(foreign.is_empty(), "macros without the prefix: {foreign:?}");
}

#[test]
fn a_users_own_idle_and_max_loans_compile_beside_the_header() {
    let dir = std::env::temp_dir().join(format!("tiermalloc-header-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("names.c");
    std::fs::write(
        &source,
        "#include <tiermalloc.h>\n\
         enum state { IDLE, BUSY };\n\
         static const int MAX_LOANS = 4;\n\
         int main(void) { return IDLE + MAX_LOANS - 4; }\n",
    )
    .unwrap();
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let out = Command::new("cc")
        .args(["-fsyntax-only", "-Wall", "-Werror", "-I"])
        .arg(&include)
        .arg(&source)
        .output()
        .expect("cc runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
