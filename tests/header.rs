//! The committed `include/tiermalloc.h` must be exactly what cbindgen generates from the source
//! (`TIERMALLOC_BLESS=1 cargo test --test header` rewrites it).
//!
//! cbindgen follows `mod` declarations from `lib.rs`, but not into the one macro that
//! declares the modules loom does not build (`not_under_loom!`, which cbindgen does not
//! expand): those modules are handed to it one by one, read from that macro's body.

use std::path::{Path, PathBuf};

/// The root file of every module `lib.rs` declares inside `not_under_loom!`.
fn modules_behind_the_macro(root: &Path) -> Vec<PathBuf> {
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let body = lib
        .split_once("not_under_loom! {")
        .expect("lib.rs declares its modules in not_under_loom!")
        .1;
    let body = &body[..body.find("\n}").expect("the macro call ends")];
    body.lines()
        .filter_map(|line| {
            let line = line.trim().trim_start_matches("pub ");
            let name = line.strip_prefix("mod ")?.strip_suffix(';')?;
            let file = root.join("src").join(format!("{name}.rs"));
            Some(if file.exists() {
                file
            } else {
                root.join("src").join(name).join("mod.rs")
            })
        })
        .collect()
}

#[test]
fn committed_header_matches_cbindgen() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let modules = modules_behind_the_macro(root);
    assert!(modules.iter().any(|m| m.ends_with("front/mod.rs")));
    let mut generated = Vec::new();
    modules
        .into_iter()
        .fold(
            cbindgen::Builder::new()
                .with_config(config)
                .with_crate(root),
            |b, m| b.with_src(m),
        )
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
