//! The Rust API: tiers as `Kind`, statistics as `TierStats`, errors as `Result`.
//!
//! ```
//! let stats = tiermalloc::stats(tiermalloc::Kind::Dram).unwrap();
//! assert!(stats.capacity > 0);
//! ```

pub use crate::kind::{Fit, Kind};
use crate::{place, tier};

pub use crate::stats::TierStats;

/// Why a tier operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierError {
    /// The kind is not configured in this process.
    NotConfigured(Kind),
}

impl core::fmt::Display for TierError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TierError::NotConfigured(k) => write!(f, "tier {} is not configured", k.name()),
        }
    }
}

impl std::error::Error for TierError {}

/// The statistics of tier `kind`.
pub fn stats(kind: Kind) -> Result<TierStats, TierError> {
    tier::stats(kind).ok_or(TierError::NotConfigured(kind))
}

/// Chooses device tier `kind`'s fit policy: which free extent a block of 4 KiB or more
/// takes (`TIERMALLOC_TIERS` key `fit=`; `tm_set_fit` in C). DRAM accepts either and has no
/// extent heap to apply it to.
///
/// ```
/// use tiermalloc::{Fit, Kind, TierError};
/// assert_eq!(tiermalloc::set_fit(Kind::Dram, Fit::Worst), Ok(()));
/// if std::env::var_os("TIERMALLOC_TIERS").is_none() {
///     assert_eq!(
///         tiermalloc::set_fit(Kind::Cxl, Fit::Best),
///         Err(TierError::NotConfigured(Kind::Cxl))
///     );
/// }
/// ```
pub fn set_fit(kind: Kind, fit: Fit) -> Result<(), TierError> {
    if tier::set_fit(kind, fit) {
        Ok(())
    } else {
        Err(TierError::NotConfigured(kind))
    }
}

/// Prints every configured tier's statistics on stderr (the text report).
pub fn print_stats() {
    super::report::print_stats()
}

/// The tier of a block, `None` if it is not ours.
pub fn kind_of<T: ?Sized>(p: *const T) -> Option<Kind> {
    tier::kind_of(p.cast())
}

/// What a live evacuation did (`evacuate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evacuation {
    /// Bytes copied: live extents and slabs, and the headers of the device's header chain
    /// inside free space.
    pub copied: u64,
    /// Bytes the kernel copied from the source file into the target file
    /// (`copy_file_range`), counting a page copied again (touched during its pre-copy) each
    /// time; 0 when every copy went through the two mappings (files on different file
    /// systems, a hugetlbfs source, `TIERMALLOC_EVACUATE_COPY=mapped`).
    pub file_copied: u64,
    /// The tier's region, which now lies on the target.
    pub region: u64,
    /// Chunks moved one after another.
    pub chunks: u64,
    /// The longest time one chunk was held write-protected (nanoseconds): the most any
    /// writer could have waited.
    pub longest_hold_ns: u64,
    /// The median and 99th percentile of the chunks' hold times (nanoseconds, within 12.5%).
    pub hold_p50_ns: u64,
    pub hold_p99_ns: u64,
    /// The whole move (nanoseconds).
    pub total_ns: u64,
    /// Holds during which the evacuating thread lost its core to another thread.
    pub preempted_holds: u64,
    /// Holds run at real-time priority (`SCHED_FIFO` 1, where the thread may have it and
    /// `TIERMALLOC_EVACUATE_RT` is not off), so that no ordinary thread preempts them.
    pub raised_holds: u64,
}

/// Why `evacuate` failed: the `errno` `tm_evacuate` would set (the reason was printed on
/// stderr in one line). The tier is left as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvacuateError(pub i32);

/// Moves device tier `kind` onto `target` (its `spare=` path if `None`) while the program's
/// threads keep using its blocks at the same addresses; see `tm_evacuate`.
pub fn evacuate(kind: Kind, target: Option<&core::ffi::CStr>) -> Result<Evacuation, EvacuateError> {
    let r = crate::device::evacuate_kind(kind, target).map_err(EvacuateError)?;
    Ok(Evacuation {
        copied: r.copied,
        file_copied: r.file_copied,
        region: r.region,
        chunks: r.chunks,
        longest_hold_ns: r.longest_hold_ns,
        hold_p50_ns: r.hold_quantile(0.5),
        hold_p99_ns: r.hold_quantile(0.99),
        total_ns: r.total_ns,
        preempted_holds: r.preempted_holds,
        raised_holds: r.raised_holds,
    })
}

/// One tier as an allocator: collections from `allocator_api2` and `hashbrown` live on it.
///
/// ```no_run
/// use allocator_api2::vec::Vec;
/// let pmr = tiermalloc::Tier::new(tiermalloc::Kind::Pmr).expect("TIERMALLOC_TIERS lists pmr");
/// let mut v: Vec<u64, _> = Vec::new_in(pmr);
/// v.push(1);
/// ```
///
/// Requests go to that tier only (no spilling); a full tier answers `AllocError`.
///
/// Invariant: `tier::get(kind)` answered `Some` when the handle was made (`new`), so its
/// requests and frees find the tier without asking whether it is open (`get_configured`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tier {
    kind: Kind,
}

impl Tier {
    /// A handle on tier `kind`, if this process has it configured.
    pub fn new(kind: Kind) -> Result<Tier, TierError> {
        if place::is_configured(kind) {
            Ok(Tier { kind })
        } else {
            Err(TierError::NotConfigured(kind))
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Chooses this tier's fit policy (see [`set_fit`]).
    pub fn set_fit(&self, fit: Fit) {
        // A `Tier` exists only for a configured kind, so this cannot fail.
        let _ = set_fit(self.kind, fit);
    }

    fn allocate_with(
        &self,
        layout: core::alloc::Layout,
        zero: bool,
    ) -> Result<core::ptr::NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        // The usable size comes with the block (no second lookup of it).
        // SAFETY: `new` found the tier (the invariant).
        let tier = unsafe { tier::get_configured(self.kind) };
        let (size, align) = (layout.size(), layout.align().max(16));
        let (p, usable) = place::alloc_on_tier_sized(tier, size, align, zero)
            .ok_or(allocator_api2::alloc::AllocError)?;
        Ok(core::ptr::NonNull::slice_from_raw_parts(p, usable))
    }
}

// SAFETY: blocks come from `place::alloc_on` for this tier, are at least `layout.size()`
// bytes (the slice length is the usable size), aligned to at least `layout.align()`, and stay
// valid until `deallocate`; copies of a `Tier` are interchangeable (same tier).
unsafe impl allocator_api2::alloc::Allocator for Tier {
    fn allocate(
        &self,
        layout: core::alloc::Layout,
    ) -> Result<core::ptr::NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        self.allocate_with(layout, false)
    }

    fn allocate_zeroed(
        &self,
        layout: core::alloc::Layout,
    ) -> Result<core::ptr::NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        self.allocate_with(layout, true)
    }

    unsafe fn deallocate(&self, ptr: core::ptr::NonNull<u8>, layout: core::alloc::Layout) {
        // SAFETY: `new` found the tier (the invariant).
        let tier = unsafe { tier::get_configured(self.kind) };
        // SAFETY: a live block from `allocate` (Allocator contract). The layout only orders
        // the lookups (a device tier's extent cache before its slabs for a size no slab
        // serves); a wrong one frees the block all the same.
        unsafe { tier::free_on_tier_sized(tier, ptr.as_ptr(), layout.size(), layout.align()) }
    }
}
