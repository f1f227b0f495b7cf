//! Counters, and the figures of a tier (`TierStats`, the C header's `tm_stats`).
//!
//! Counters that sit on the malloc/free fast path belong to one thread heap each and are
//! bumped with a relaxed load and store, not a read-modify-write (`OwnedCounter`): only the
//! owning thread writes them, other threads only read them for a report. Counters of slow
//! paths (large blocks, frees from threads without a heap, device tiers) are shared atomics.

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

/// A tier's figures: what `tm_get_stats` fills in, laid out as the C header's `tm_stats`
/// (cbindgen gives it that name).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Bytes the tier can hold.
    pub capacity: u64,
    /// Bytes taken by live blocks: their usable sizes, plus on CXL, CMB and PMR their 16-byte
    /// headers (so that `capacity == in_use + free_bytes` there).
    pub in_use: u64,
    /// Bytes the tier can still hand out.
    pub free_bytes: u64,
    /// The largest single block the tier can still hand out.
    pub largest_free: u64,
    /// Blocks handed out since this process opened the tier. A persistent tier (pmr, or
    /// `persist`) counts the live blocks its open recovered among them, as handed out then,
    /// so that frees of recovered blocks never make `frees` exceed `allocations`.
    pub allocations: u64,
    /// Blocks freed since this process opened the tier.
    pub frees: u64,
    /// Requests the tier could not serve.
    pub failures: u64,
    /// Requests served here because the tier placement chose was full.
    pub spilled_in: u64,
    /// Requests this tier passed on because it was full or at its limit.
    pub spilled_out: u64,
    /// Bytes reserved at start for the workload profile (`TIERMALLOC_PROFILE`): DRAM
    /// pre-faulted, or a private device tier's free space made present.
    pub reserved: u64,
    /// Bytes of the reserve handed out for blocks so far.
    pub reserve_used: u64,
    /// Bytes mapped beyond the reserve while a profile is active: what the estimate missed.
    pub reserve_miss: u64,
    /// A tier from the shared pool (`cxl:pool,share=`): bytes of this process's share that
    /// other processes have borrowed, and bytes of other processes' shares it has borrowed.
    pub lent: u64,
    pub borrowed: u64,
}

/// What every tier counts of its own (`tier::Tier::counters`): requests it could not serve, and
/// its share of spilling. Placement bumps them; the tier reports them in its `TierStats`.
pub struct TierCounters {
    pub failures: SharedCounter,
    pub spilled_in: SharedCounter,
    pub spilled_out: SharedCounter,
}

impl TierCounters {
    pub const fn new() -> Self {
        TierCounters {
            failures: SharedCounter::new(),
            spilled_in: SharedCounter::new(),
            spilled_out: SharedCounter::new(),
        }
    }
}
