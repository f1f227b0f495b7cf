//! Small, generic lock-free structures, each with its loom model beside it.
//!
//! They know nothing of the allocator: they link nodes through a `Link` the caller provides,
//! so the models can run them on plain test nodes while the allocator runs them on blocks,
//! pages and heaps.

pub mod lease_lock;
// Its models run; nothing in the library uses it yet (lending is not yet behind a tier).
#[allow(dead_code)]
pub mod lend_table;
pub mod live_bit;
pub mod live_bitmap;
pub mod mark_claim;
pub mod published;
pub mod redo_log;
pub mod remote_list;
pub mod run_records;
pub mod tagged_stack;

/// Runs a model that was deliberately broken and checks that loom reports a causality
/// violation (not some other failure): the proof that a model can fail.
#[cfg(all(test, loom))]
pub(crate) fn assert_loom_catches(model: impl FnOnce() + std::panic::UnwindSafe) {
    assert_loom_fails(model, "Causality violation")
}

/// Runs a model that was deliberately broken and checks that loom finds an execution where
/// the model's own assertion, whose message contains `expected`, fails.
#[cfg(all(test, loom))]
pub(crate) fn assert_loom_fails(model: impl FnOnce() + std::panic::UnwindSafe, expected: &str) {
    let caught = std::panic::catch_unwind(model).expect_err("loom must catch the broken model");
    let message = caught
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| caught.downcast_ref::<&str>().copied())
        .unwrap_or("");
    assert!(message.contains(expected), "unexpected failure: {message}");
}
