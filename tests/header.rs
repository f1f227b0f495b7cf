//! The committed `include/tiermalloc.h` must be exactly what cbindgen generates from the source
//! (`TIERMALLOC_BLESS=1 cargo test --test header` rewrites it).
//!
//! cbindgen follows the `mod` declarations from `lib.rs` (each module's `cfg(not(loom))` is
//! written on it, not in a macro cbindgen would not expand).

use std::path::Path;

#[test]
fn committed_header_matches_cbindgen() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_crate(root)
        .generate()
        .expect("cbindgen runs on the crate")
        .write(&mut generated);
    let path = root.join("include/tiermalloc.h");
    if std::env::var_os("TIERMALLOC_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/tiermalloc.h differs from cbindgen's output; run \
         TIERMALLOC_BLESS=1 cargo test --test header and commit the result.\n--- generated ---\n{}",
        String::from_utf8_lossy(&generated)
    );
}

/// The comment the header gives a C function: the `/* ... */` right before its declaration
/// (`decl`, e.g. "int tm_evacuate("), its lines joined by single spaces.
fn comment_of(header: &str, decl: &str) -> String {
    let at = header
        .find(decl)
        .unwrap_or_else(|| panic!("{decl} declared"));
    let before = &header[..at];
    let start = before.rfind("/*").expect("a comment before it");
    before[start + 2..]
        .trim_end()
        .trim_end_matches("*/")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The refusals a user meets and the tests check (tests/evacuate.rs
/// `an_empty_target_is_refused_as_empty`, `a_move_onto_the_tiers_own_device_says_so`) are
/// in the comments C programmers read; `tm_evacuate`'s named neither the empty target's EINVAL
/// nor the tier's own device's EBUSY.
#[test]
fn the_header_names_the_refusals_the_functions_give() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header = std::fs::read_to_string(root.join("include/tiermalloc.h")).unwrap();
    let evacuate = comment_of(&header, "int tm_evacuate(");
    for named in [
        "an empty `target`)",
        "ENAMETOOLONG (a `target` over 255 bytes",
        "or the target is the tier's own device)",
    ] {
        assert!(evacuate.contains(named), "{named}: {evacuate}");
    }
    let create = comment_of(&header, "void *tm_space_create(");
    assert!(
        create.contains("ENOSPC (no room now, or a `size` larger than the pool's data area"),
        "{create}"
    );
}
