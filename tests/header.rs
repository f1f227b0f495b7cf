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
