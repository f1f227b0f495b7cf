//! The Rust API of persistent device tiers: `Tier` methods for durability, roots, offsets and
//! a walk over live blocks, and the offline checker.
//!
//! ```no_run
//! // TIERMALLOC_TIERS=pmr:path=/var/tmp/data.pmr,size=64M,create
//! use tiermalloc::{Kind, Tier};
//! let pmr = Tier::new(Kind::Pmr).expect("pmr configured");
//! let counter = match pmr.root("counter") {
//!     Some(p) => p.cast::<u64>(),              // a previous run left it
//!     None => {
//!         let p = pmr.allocate_block(8).expect("space").cast::<u64>();
//!         unsafe { p.as_ptr().write(0) };
//!         pmr.set_root("counter", Some(p.cast())).expect("root");
//!         p
//!     }
//! };
//! unsafe { *counter.as_ptr() += 1 };
//! pmr.persist(counter.cast(), 8).expect("durable");
//! ```

use crate::device::{self, DeviceTier};
use crate::front::api::Tier;
use crate::place;
use core::ptr::NonNull;

pub use crate::device::persist::{
    check_file, check_image, check_image_with_progress, extent_map, heap_region_len, repair_file,
    ExtentKind, HeapReport, MapExtent, Repaired,
};

/// A position in a device tier's region, from its start: what a program stores inside
/// persistent blocks, since the region may map at another address next run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub u64);

/// Why a persistence call failed: the `errno` the C API would set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersistError(pub i32);

impl core::fmt::Display for PersistError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let what = match self.0 {
            libc::EINVAL => "invalid argument (not on this tier, bad name or block)",
            libc::ENOSPC => "the roots table is full",
            libc::ENODEV => "not a device tier",
            _ => "the kernel refused to flush",
        };
        write!(f, "{what} (errno {})", self.0)
    }
}

impl Tier {
    fn device(&self) -> Result<&'static DeviceTier, PersistError> {
        device::get(self.kind()).ok_or(PersistError(libc::ENODEV))
    }

    /// A block of at least `size` bytes on this tier (16-byte aligned), not zeroed; free it
    /// with `tiermalloc::free_block` (or `tm_free`).
    pub fn allocate_block(&self, size: usize) -> Option<NonNull<u8>> {
        NonNull::new(place::alloc_on(self.kind(), size, 16, false))
    }

    /// Makes `[p, p + len)`, and every write to this tier before it, durable (`tm_persist`).
    pub fn persist(&self, p: NonNull<u8>, len: usize) -> Result<(), PersistError> {
        self.device()?
            .persist(p.as_ptr(), len)
            .map_err(PersistError)
    }

    /// How the run before this process's open ended: `Some(true)` if it closed the heap
    /// cleanly (exited normally), `Some(false)` if it was killed or crashed with the heap open
    /// (recovery made the heap consistent either way), `None` if this open formatted the
    /// region.
    pub fn previous_run_clean(&self) -> Result<Option<bool>, PersistError> {
        Ok(self.device()?.previous_run_clean())
    }

    /// Maps durable root `name` (1 to 63 bytes, no NUL) to live block `block` of this tier,
    /// or removes it (`None`).
    pub fn set_root(&self, name: &str, block: Option<NonNull<u8>>) -> Result<(), PersistError> {
        self.device()?
            .root_set(name.as_bytes(), block.map(NonNull::as_ptr))
            .map_err(PersistError)
    }

    /// The live block root `name` names, if any.
    pub fn root(&self, name: &str) -> Option<NonNull<u8>> {
        NonNull::new(self.device().ok()?.root_get(name.as_bytes())?)
    }

    /// The offset of `p` from the start of this tier's region, if it lies there.
    pub fn offset_of(&self, p: *const u8) -> Option<Offset> {
        self.device().ok()?.offset_in_region(p).map(Offset)
    }

    /// The address of `offset` in this tier's region, if inside it.
    pub fn at_offset(&self, offset: Offset) -> Option<NonNull<u8>> {
        NonNull::new(self.device().ok()?.at_offset(offset.0)?)
    }

    /// The live blocks of this tier in address order (host metadata; no device read).
    pub fn blocks(&self) -> Blocks {
        Blocks {
            tier: device::get(self.kind()),
            prev: None,
        }
    }
}

/// Frees a block of any tier (`tm_free`).
///
/// # Safety
/// `p` is a live block of ours, not used afterwards.
pub unsafe fn free_block(p: NonNull<u8>) {
    // SAFETY: the caller's contract.
    unsafe { crate::tier::free(p.as_ptr()) }
}

/// The iterator of `Tier::blocks`. Freeing the block just returned is allowed; other blocks
/// allocated or freed during the walk may or may not be seen.
pub struct Blocks {
    tier: Option<&'static DeviceTier>,
    prev: Option<*mut u8>,
}

impl Iterator for Blocks {
    type Item = NonNull<u8>;
    fn next(&mut self) -> Option<NonNull<u8>> {
        let next = self.tier?.next_block(self.prev)?;
        self.prev = Some(next);
        NonNull::new(next)
    }
}
