//! The loom shim: every atomic the lock-free modules use comes from here, so that
//! `RUSTFLAGS="--cfg loom"` swaps in loom's model-checked versions without touching them.
//!
//! Only the modules under `lockfree/` are compiled under loom; the rest of the allocator needs
//! `const` statics, mmap and thread-local storage, none of which loom can model.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicPtr, AtomicU64, AtomicUsize};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{fence, AtomicPtr, AtomicU64, AtomicUsize};

pub(crate) use core::sync::atomic::Ordering;
