//! Counters, and the statistics report.
//!
//! Counters that sit on the malloc/free fast path belong to one thread heap each and are
//! bumped with a relaxed load and store, not a read-modify-write: only the owning thread
//! writes them, other threads only read them for a report. Counters of slow paths (large
//! blocks, frees from threads without a heap) are shared atomics.

use core::sync::atomic::{AtomicU64, Ordering};

/// A counter written by one thread and read by any.
#[derive(Default)]
pub struct OwnedCounter(AtomicU64);

impl OwnedCounter {
    /// Adds `n`; only the owning thread may call this.
    #[inline(always)]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A counter any thread may bump.
pub struct SharedCounter(AtomicU64);

impl SharedCounter {
    pub const fn new() -> Self {
        SharedCounter(AtomicU64::new(0))
    }
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Allocation and free counts and bytes (block sizes as handed out). All-zero is the
/// initial state (heaps start as zeroed memory).
pub struct Traffic {
    pub allocations: OwnedCounter,
    pub allocated_bytes: OwnedCounter,
    pub frees: OwnedCounter,
    pub freed_bytes: OwnedCounter,
}

impl Traffic {
    #[inline(always)]
    pub fn on_alloc(&self, bytes: usize) {
        self.allocations.add(1);
        self.allocated_bytes.add(bytes as u64);
    }
    #[inline(always)]
    pub fn on_free(&self, bytes: usize) {
        self.frees.add(1);
        self.freed_bytes.add(bytes as u64);
    }
}

/// A tier's figures as `tm_get_stats` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub capacity: u64,
    pub in_use: u64,
    pub free_bytes: u64,
    pub largest_free: u64,
    pub allocations: u64,
    pub frees: u64,
    pub failures: u64,
    pub spilled_in: u64,
    pub spilled_out: u64,
    /// Bytes mapped from the kernel for blocks (segments and large blocks), for the report.
    pub mapped: u64,
}
