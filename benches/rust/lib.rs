//! Nothing: this package exists for its benchmarks (`rust/alloc.rs`, `rust/inregion.rs`).
