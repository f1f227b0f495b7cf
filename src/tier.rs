//! One interface every tier implements (`Tier`), the tiers by kind (`get`), and the operations
//! on an existing block, each dispatched from the page map's one answer about the pointer
//! (`pagemap::owner_of`): `free`, `usable_size`, `realloc`, `kind_of`.
//!
//! Dispatch is static: `TierRef` is an enum over the DRAM tier and a device tier, and each
//! call is a `match` the compiler inlines, never a `dyn` call. The implementations are written
//! here, over the tiers' own inherent operations, so that `dram` and `device` import nothing
//! from this layer.
//!
//! `free` of a small DRAM block (the most frequent call of all) reads the page map once and
//! jumps to the small-object path; everything else goes through `TierRef`.

use crate::config::TierSpec;
use crate::device::{self, DeviceTier};
use crate::dram::{self, DramTier, DRAM};
use crate::kind::{Fit, Kind};
use crate::pagemap::{self, Owner};
use crate::stats::{TierCounters, TierStats};

/// What every tier does. Pointer arguments come with the page map's answer for them, so a
/// tier never asks the page map again.
pub trait Tier {
    /// A block of at least `size` bytes aligned to `align` (a power of two), zeroed if asked;
    /// null if this tier cannot serve it (full, at its limit). Failures are counted by the
    /// caller, which knows whether the request spills on.
    fn alloc(&self, size: usize, align: usize, zero: bool) -> *mut u8;

    /// Frees `p`. A device tier refuses (and reports) a pointer its metadata does not know as
    /// a live block start.
    ///
    /// # Safety
    /// `p` is owned by this tier (`owner`) and, if a live block, not used after this.
    unsafe fn free(&self, p: *mut u8, owner: Owner);

    /// The usable size of `p`, 0 if it is not a live block start of this tier.
    ///
    /// # Safety
    /// As `free`, but `p` stays live.
    unsafe fn usable_size(&self, p: *mut u8, owner: Owner) -> usize;

    /// Resizes live block `p` (`old` usable bytes) to `size` bytes without an
    /// allocate-copy-free by the caller: the new address, or null (`p` intact) if it must move.
    ///
    /// # Safety
    /// `p` is a live block of this tier.
    unsafe fn resize_in_place(
        &self,
        p: *mut u8,
        owner: Owner,
        old: usize,
        size: usize,
        align: usize,
    ) -> *mut u8;

    /// The tier's figures, its own counters included.
    fn stats(&self) -> TierStats;

    /// The tier's failure and spill counters.
    fn counters(&self) -> &TierCounters;

    /// Chooses the fit policy of the tier's extent heap (DRAM has none: any fit is its policy).
    fn set_fit(&self, fit: Fit);
}

impl Tier for DramTier {
    #[inline]
    fn alloc(&self, size: usize, align: usize, zero: bool) -> *mut u8 {
        DramTier::alloc(self, size, align, zero)
    }
    unsafe fn free(&self, p: *mut u8, owner: Owner) {
        // SAFETY: forwarded.
        unsafe { DramTier::free(self, p, owner) }
    }
    unsafe fn usable_size(&self, p: *mut u8, owner: Owner) -> usize {
        // SAFETY: forwarded.
        unsafe { DramTier::usable_size(self, p, owner) }
    }
    unsafe fn resize_in_place(
        &self,
        p: *mut u8,
        owner: Owner,
        old: usize,
        size: usize,
        align: usize,
    ) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { DramTier::resize_in_place(self, p, owner, old, size, align) }
    }
    fn stats(&self) -> TierStats {
        DramTier::stats(self)
    }
    fn counters(&self) -> &TierCounters {
        &self.counters
    }
    fn set_fit(&self, _fit: Fit) {}
}

impl Tier for DeviceTier {
    fn alloc(&self, size: usize, align: usize, zero: bool) -> *mut u8 {
        match DeviceTier::alloc(self, size, align.max(16)) {
            Some(p) => {
                if zero {
                    // SAFETY: the block holds at least `size` bytes; this writes, never reads.
                    unsafe { p.write_bytes(0, size) };
                }
                p
            }
            None => core::ptr::null_mut(),
        }
    }
    unsafe fn free(&self, p: *mut u8, _owner: Owner) {
        self.free_or_report(p);
    }
    unsafe fn usable_size(&self, p: *mut u8, _owner: Owner) -> usize {
        DeviceTier::usable_size(self, p).unwrap_or(0)
    }
    unsafe fn resize_in_place(
        &self,
        p: *mut u8,
        _owner: Owner,
        _old: usize,
        size: usize,
        _align: usize,
    ) -> *mut u8 {
        // In place, the block keeps its address, hence its alignment.
        if DeviceTier::resize_in_place(self, p, size) {
            p
        } else {
            core::ptr::null_mut()
        }
    }
    fn stats(&self) -> TierStats {
        DeviceTier::stats(self)
    }
    fn counters(&self) -> &TierCounters {
        &self.counters
    }
    fn set_fit(&self, fit: Fit) {
        DeviceTier::set_fit(self, fit)
    }
}

/// A configured tier, whichever it is (static dispatch over the two kinds of tier).
#[derive(Clone, Copy)]
pub enum TierRef {
    Dram(&'static DramTier),
    Device(&'static DeviceTier),
}

/// Forwards every `Tier` method to the tier inside.
macro_rules! forward {
    ($self:ident, $t:ident => $call:expr) => {
        match $self {
            TierRef::Dram($t) => $call,
            TierRef::Device($t) => $call,
        }
    };
}

impl Tier for TierRef {
    #[inline]
    fn alloc(&self, size: usize, align: usize, zero: bool) -> *mut u8 {
        forward!(self, t => Tier::alloc(*t, size, align, zero))
    }
    unsafe fn free(&self, p: *mut u8, owner: Owner) {
        // SAFETY: forwarded.
        forward!(self, t => unsafe { Tier::free(*t, p, owner) })
    }
    unsafe fn usable_size(&self, p: *mut u8, owner: Owner) -> usize {
        // SAFETY: forwarded.
        forward!(self, t => unsafe { Tier::usable_size(*t, p, owner) })
    }
    unsafe fn resize_in_place(
        &self,
        p: *mut u8,
        owner: Owner,
        old: usize,
        size: usize,
        align: usize,
    ) -> *mut u8 {
        // SAFETY: forwarded.
        forward!(self, t => unsafe { Tier::resize_in_place(*t, p, owner, old, size, align) })
    }
    fn stats(&self) -> TierStats {
        forward!(self, t => Tier::stats(*t))
    }
    fn counters(&self) -> &TierCounters {
        forward!(self, t => Tier::counters(*t))
    }
    fn set_fit(&self, fit: Fit) {
        forward!(self, t => Tier::set_fit(*t, fit))
    }
}

/// Opens the tier `spec` describes: DRAM takes its `limit=`; a device tier is mapped (or
/// reported in one line and skipped: false).
pub fn open(spec: &TierSpec) -> bool {
    if spec.kind == Kind::Dram {
        if let Some(limit) = spec.limit {
            DRAM.set_limit(limit);
        }
        true
    } else if spec.pool {
        open_share(spec)
    } else {
        open_device(spec)
    }
}

// The two below are kept out of line: a device tier is built on the stack before it moves
// into its static slot, and inlined here those frames (over 100 KiB with probes touching each
// page) were entered at every process start, device tiers or not: +80 KiB of resident stack
// for a DRAM-only program.

/// A share of the shared pool (`pool::share`): capacity from the pool, not from a file.
#[inline(never)]
fn open_share(spec: &TierSpec) -> bool {
    crate::pool::share::open_tier(spec)
        .map_err(|problem| device::report_tier(spec.kind, Some(b"pool"), problem))
        .is_ok()
}

/// A device tier over the file or device `spec` names.
#[inline(never)]
fn open_device(spec: &TierSpec) -> bool {
    device::open(spec)
}

/// Tier `kind`, if this process can allocate from it (DRAM always can).
#[inline]
pub fn get(kind: Kind) -> Option<TierRef> {
    match kind {
        Kind::Dram => Some(TierRef::Dram(&DRAM)),
        kind => device::get(kind).map(TierRef::Device),
    }
}

/// `get` of a kind it answered before: no test of whether the tier is open.
///
/// # Safety
/// `get(kind)` answered `Some` before (in this process).
#[inline(always)]
pub unsafe fn get_configured(kind: Kind) -> TierRef {
    match kind {
        Kind::Dram => TierRef::Dram(&DRAM),
        // SAFETY: per the contract.
        kind => TierRef::Device(unsafe { device::get_opened(kind) }),
    }
}

/// The tier that owns a block, from the page map's answer.
#[inline]
fn of(owner: Owner) -> Option<TierRef> {
    get(owner.kind()?)
}

/// Frees any block of ours; null is ignored, anything but a live block start reported (or
/// handed to the program's own `free`: `foreign`).
///
/// # Safety
/// `p` must be null, foreign, or a live block of ours not used after this; an address above
/// the user half faults (`pagemap::block_chunk_index`), as in glibc.
#[inline(always)]
pub unsafe fn free(p: *mut u8) {
    let chunk = pagemap::block_chunk_index(p as usize);
    // SAFETY: null or an address of the user half (contract). The entry holds this thread's
    // tag only for a segment its heap owns: the owner's free without an owner test.
    if unsafe { pagemap::is_own_segment_at_index(chunk, dram::fast::thread_tag()) } {
        // SAFETY: a segment of this thread's heap owns `p`, and starts at chunk `chunk`.
        return unsafe { dram::fast::free_own_in_chunk(chunk, p) };
    }
    // SAFETY: as above.
    let tag = unsafe { pagemap::entry_at_index(chunk) };
    if tag.wrapping_sub(pagemap::SEGMENT_TAG_MIN)
        < pagemap::SHARED_SEGMENT_TAG - pagemap::SEGMENT_TAG_MIN
    {
        // SAFETY: a segment of another heap owns `p`, and starts at chunk `chunk`.
        unsafe { dram::fast::free_remote_in_chunk(chunk, p) }
    } else if tag == pagemap::SHARED_SEGMENT_TAG {
        // SAFETY: a segment owns `p`, and starts at chunk `chunk`.
        unsafe { free_in_shared_segment(chunk, p) }
    } else {
        // SAFETY: forwarded.
        unsafe { free_other(p) }
    }
}

/// `free` of block `p` of a segment whose page-map entry is the tag heaps share
/// (`pagemap::SHARED_SEGMENT_TAG`): a second copy of the owner's path, out of line and outside
/// the code every process runs (its name is not in `link/hot_text.ld`), as only heaps past the
/// last tag and `TIERMALLOC_SECURE=1` come here.
///
/// # Safety
/// As for `free`; a segment starts at chunk `chunk`.
#[cold]
#[inline(never)]
unsafe fn free_in_shared_segment(chunk: isize, p: *mut u8) {
    // SAFETY: forwarded.
    unsafe { dram::fast::free_in_chunk(chunk, p) }
}

/// `free` of a pointer that is not in a segment: a large block, a device tier's block, a
/// foreign pointer (the program's own malloc's, or reported), or null (nothing).
///
/// # Safety
/// As for `free`.
#[cold]
#[inline(never)]
unsafe fn free_other(p: *mut u8) {
    let owner = pagemap::owner_of(p as usize);
    match of(owner) {
        // SAFETY: forwarded.
        Some(tier) => unsafe { tier.free(p, owner) },
        // SAFETY: forwarded.
        None if !p.is_null() => unsafe { crate::foreign::free(p) },
        None => {}
    }
}

/// A block of tier `tier` with its usable size (`None` if the tier cannot serve it): a device
/// tier knows the size as it hands the block out, DRAM is asked afterwards. Non-null as the
/// device tier's paths make it: a block found is not tested for null again.
#[inline]
pub fn alloc_sized(
    tier: TierRef,
    size: usize,
    align: usize,
    zero: bool,
) -> Option<(core::ptr::NonNull<u8>, usize)> {
    match tier {
        TierRef::Device(device) => {
            let (p, usable) = device.alloc_sized(size, align.max(16))?;
            if zero {
                // SAFETY: the block holds `usable >= size` bytes; this writes, never reads.
                unsafe { p.as_ptr().write_bytes(0, size) };
            }
            Some((p, usable))
        }
        TierRef::Dram(dram) => {
            let p = core::ptr::NonNull::new(Tier::alloc(dram, size, align, zero))?;
            // SAFETY: a live block of ours.
            Some((p, unsafe { usable_size(p.as_ptr()) }))
        }
    }
}

/// Frees block `p` of tier `tier` (held by the caller: the Rust `Allocator` of one tier), which
/// the caller says was asked for `size` bytes aligned to `align` (with its layout): a device
/// tier's block goes to its tier without the page map, with that hint
/// (`DeviceTier::free_sized_or_report`); anything else as `free`.
///
/// # Safety
/// As `free`.
#[inline]
pub unsafe fn free_on_tier_sized(tier: TierRef, p: *mut u8, size: usize, align: usize) {
    match tier {
        TierRef::Device(device) if device.holds(p) => {
            // SAFETY: the tier holds `p` (tested).
            unsafe { device.free_sized_or_report(p, size, align.max(16)) }
        }
        // SAFETY: forwarded.
        _ => unsafe { free(p) },
    }
}

/// The usable size of `p`: 0 for null and foreign pointers.
///
/// # Safety
/// `p` must be null, foreign, or a live block of ours.
pub unsafe fn usable_size(p: *mut u8) -> usize {
    // A DRAM segment's block first, as `free` does (one map read, one descriptor read):
    // programs that count their memory ask on every malloc and free (Redis's zmalloc).
    if pagemap::tag_of_block(p as usize) == pagemap::ChunkTag::Segment {
        // SAFETY: a segment owns `p`.
        return unsafe { dram::fast::usable_size(p) };
    }
    let owner = pagemap::owner_of(p as usize);
    // SAFETY: forwarded.
    of(owner).map_or(0, |tier| unsafe { tier.usable_size(p, owner) })
}

/// The tier of block `p`, if it is ours.
pub fn kind_of(p: *const u8) -> Option<Kind> {
    pagemap::owner_of(p as usize).kind()
}

/// Where a block that cannot be resized in place moves: a new block of `size` bytes at `align`
/// (the caller's choice of tier; `place` passes the plain requests' placement).
pub type MoveTo = fn(usize, usize) -> *mut u8;

/// Resizes `p` (non-null) to `size` (non-zero) bytes at `align`: in place, else moved onto a
/// new block of its own tier, or of `move_to` when given. `None` if `p` is not ours, else the
/// block, null with `p` intact on failure.
///
/// # Safety
/// `p` must be a live block of ours, or foreign.
pub unsafe fn realloc(
    p: *mut u8,
    size: usize,
    align: usize,
    move_to: Option<MoveTo>,
) -> Option<*mut u8> {
    let owner = pagemap::owner_of(p as usize);
    let tier = of(owner)?;
    // A freed or interior pointer is reported, never resized (it would alias a live block).
    let live = match tier {
        // SAFETY: the page map said `owner`.
        TierRef::Dram(dram) => unsafe { dram.check_realloc(p, owner) },
        TierRef::Device(device) => {
            // SAFETY: `p` is in this tier's region (owner).
            let live = unsafe { Tier::usable_size(device, p, owner) } != 0;
            if !live {
                crate::misuse::report_on(
                    "realloc",
                    p,
                    owner.kind().map_or("?", Kind::name),
                    crate::misuse::Misuse::NotABlockStart,
                );
            }
            live
        }
    };
    if !live {
        return Some(core::ptr::null_mut());
    }
    // SAFETY: `p` is ours (owner) and live (checked).
    let old = unsafe { tier.usable_size(p, owner) };
    // SAFETY: as above.
    let q = unsafe { tier.resize_in_place(p, owner, old, size, align) };
    if !q.is_null() {
        return Some(q);
    }
    let q = match move_to {
        // Counts its own failure.
        Some(alloc) => alloc(size, align),
        None => tier.alloc(size, align, false),
    };
    if q.is_null() {
        if move_to.is_none() {
            tier.counters().failures.add(1);
        }
        return Some(q);
    }
    // SAFETY: two live blocks of ours, distinct, each holding the bytes copied; `p` is freed
    // once, with the owner it was classified with.
    unsafe {
        core::ptr::copy_nonoverlapping(p, q, old.min(size));
        tier.free(p, owner);
    }
    Some(q)
}

/// Chooses tier `kind`'s fit policy; false if the kind is not configured.
pub fn set_fit(kind: Kind, fit: Fit) -> bool {
    get(kind).map(|t| t.set_fit(fit)).is_some()
}

/// The figures of tier `kind`, if configured.
pub fn stats(kind: Kind) -> Option<TierStats> {
    get(kind).map(|t| t.stats())
}

#[cfg(test)]
mod tests;
