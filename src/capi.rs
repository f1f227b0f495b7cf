//! The C interface of `include/tiermalloc.h`: the `tm_*` functions and their types.
//!
//! Every function checks its arguments and answers bad ones with `NULL` or `-1` and `errno`;
//! a successful call leaves `errno` untouched. The unprefixed malloc family is in
//! `override_libc.rs` and forwards here.

#![allow(non_camel_case_types)]

use crate::config::Kind;
use crate::os::set_errno;
use crate::stats::TierStats;
use crate::{dram, place};
use core::ffi::{c_int, c_void};
use core::ptr;

/// The memory kinds (tiers).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum tm_kind {
    TM_DRAM = 0,
    TM_CXL = 1,
    TM_CMB = 2,
    TM_PMR = 3,
}

/// Fit policies of a device tier.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum tm_fit {
    TM_BEST_FIT = 0,
    TM_WORST_FIT = 1,
}

/// A `tm_kind` as passed by C: any integer may arrive, so it is checked, never trusted.
/// (The header names it `tm_kind`; see cbindgen.toml.)
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct KindArg(pub u32);

/// A `tm_fit` as passed by C, checked likewise.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct FitArg(pub u32);

/// Bytes of the header before each device-tier block.
pub const TM_HEADER_SIZE: usize = 16;

/// The header written immediately before each block on CXL, CMB and PMR:
/// `((const tm_block_header *)p)[-1].size == tm_usable_size(p)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct tm_block_header {
    /// Usable bytes of the block.
    pub size: u64,
    /// A fixed value marking a header written by tiermalloc.
    pub magic: u32,
    /// The block's `tm_kind`.
    pub kind: u16,
    /// Allocated or free.
    pub state: u16,
}

const _: () = assert!(core::mem::size_of::<tm_block_header>() == TM_HEADER_SIZE);

/// Sets `ENOMEM`, counts the failure, returns null.
#[cold]
pub(crate) fn out_of_memory() -> *mut c_void {
    place::FAILURES.add(1);
    set_errno(libc::ENOMEM);
    ptr::null_mut()
}

#[cold]
fn invalid() -> *mut c_void {
    set_errno(libc::EINVAL);
    ptr::null_mut()
}

/// The kind `k` names and can serve: `Err(errno)` otherwise.
fn usable_kind(k: KindArg) -> Result<Kind, c_int> {
    let kind = Kind::from_u32(k.0).ok_or(libc::EINVAL)?;
    if place::is_configured(kind) {
        Ok(kind)
    } else {
        Err(libc::ENODEV)
    }
}

/// Allocates `size` bytes on tier `kind` only; NULL + ENOMEM if that tier cannot (also when it
/// is not configured), NULL + EINVAL for an unknown kind.
#[no_mangle]
pub extern "C" fn tm_malloc(kind: KindArg, size: usize) -> *mut c_void {
    tm_aligned_alloc(kind, 16, size)
}

/// Like `tm_malloc` for `count * size` zeroed bytes; NULL + ENOMEM on overflow.
#[no_mangle]
pub extern "C" fn tm_calloc(kind: KindArg, count: usize, size: usize) -> *mut c_void {
    let Some(total) = count.checked_mul(size) else {
        return out_of_memory();
    };
    match usable_kind(kind) {
        Ok(Kind::Dram) => zeroed(total, 16),
        Ok(_) => out_of_memory(),
        Err(libc::EINVAL) => invalid(),
        Err(_) => out_of_memory(),
    }
}

pub(crate) fn zeroed(total: usize, align: usize) -> *mut c_void {
    let p = zeroed_quiet(total, align);
    if p.is_null() {
        out_of_memory()
    } else {
        p.cast()
    }
}

/// Zeroed DRAM without touching `errno` (the Rust allocator's `alloc_zeroed`).
pub(crate) fn zeroed_quiet(total: usize, align: usize) -> *mut u8 {
    if total > dram::MAX_REQUEST {
        return ptr::null_mut();
    }
    dram::alloc_zeroed(total, align)
}

/// `size` bytes on tier `kind` aligned to `alignment` (a power of two); NULL + EINVAL for a bad
/// alignment or kind, NULL + ENOMEM if the tier cannot serve it.
#[no_mangle]
pub extern "C" fn tm_aligned_alloc(kind: KindArg, alignment: usize, size: usize) -> *mut c_void {
    if !alignment.is_power_of_two() {
        return invalid();
    }
    match usable_kind(kind) {
        Ok(Kind::Dram) => aligned(alignment, size),
        Ok(_) => out_of_memory(),
        Err(libc::EINVAL) => invalid(),
        Err(_) => out_of_memory(),
    }
}

/// DRAM allocation with `align` a power of two; NULL + ENOMEM on failure.
#[inline(always)]
pub(crate) fn aligned(align: usize, size: usize) -> *mut c_void {
    if size > dram::MAX_REQUEST {
        return out_of_memory();
    }
    let p = dram::alloc_aligned(size, align);
    if p.is_null() {
        out_of_memory()
    } else {
        p.cast()
    }
}

/// Resizes `ptr` on its own tier. `tm_realloc(NULL, n)` allocates on DRAM; `size == 0` frees
/// and returns NULL (as glibc's `realloc`). On failure returns NULL + ENOMEM and leaves `ptr`
/// intact; NULL + EINVAL if `ptr` is not ours.
///
/// # Safety
/// `ptr` must be NULL or a live block of ours.
#[no_mangle]
pub unsafe extern "C" fn tm_realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    if ptr.is_null() {
        return aligned(16, size);
    }
    if size == 0 {
        // SAFETY: forwarded.
        unsafe { tm_free(ptr) };
        return ptr::null_mut();
    }
    if !dram::owns(ptr.cast()) {
        return invalid();
    }
    // SAFETY: a live block of ours (contract).
    let q = unsafe { dram::realloc(ptr.cast(), size, 16) };
    if q.is_null() {
        out_of_memory()
    } else {
        q.cast()
    }
}

/// Frees any block of ours, whatever its tier; NULL and foreign pointers are ignored. Keeps
/// `errno`.
///
/// # Safety
/// `ptr` must be NULL or a live block, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn tm_free(ptr: *mut c_void) {
    // SAFETY: forwarded; freeing never sets errno.
    unsafe { dram::free(ptr.cast()) }
}

/// The usable size of block `ptr` (0 for NULL or a pointer that is not ours).
///
/// # Safety
/// `ptr` must be NULL, foreign, or a live block of ours.
#[no_mangle]
pub unsafe extern "C" fn tm_usable_size(ptr: *const c_void) -> usize {
    // SAFETY: forwarded.
    unsafe { dram::usable_size(ptr as *mut u8) }
}

/// The `tm_kind` of block `ptr`, or -1 if it is not ours.
#[no_mangle]
pub extern "C" fn tm_kind_of(ptr: *const c_void) -> c_int {
    match place::kind_of(ptr.cast()) {
        Some(kind) => kind as c_int,
        None => -1,
    }
}

/// Chooses the fit policy of tier `kind`: 0, or -1 + EINVAL (unknown kind or fit) / ENODEV
/// (kind not configured).
#[no_mangle]
pub extern "C" fn tm_set_fit(kind: KindArg, fit: FitArg) -> c_int {
    if fit.0 > tm_fit::TM_WORST_FIT as u32 {
        set_errno(libc::EINVAL);
        return -1;
    }
    match usable_kind(kind) {
        // The DRAM tier has no extent heap to choose for: every fit is trivially satisfied.
        Ok(_) => 0,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

/// Fills `*out` with tier `kind`'s statistics: 0, or -1 + EINVAL (unknown kind, NULL out) /
/// ENODEV (kind not configured).
///
/// # Safety
/// `out` must be NULL or valid for writing a `tm_stats` (`TierStats`).
#[no_mangle]
pub unsafe extern "C" fn tm_get_stats(kind: KindArg, out: *mut TierStats) -> c_int {
    if out.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    let stats = match usable_kind(kind).map(place::stats) {
        Ok(Some(s)) => s,
        Ok(None) => {
            set_errno(libc::ENODEV);
            return -1;
        }
        Err(e) => {
            set_errno(e);
            return -1;
        }
    };
    // SAFETY: `out` is valid for writes (contract).
    unsafe { out.write(stats) };
    0
}

/// Prints every configured tier's statistics on stderr.
#[no_mangle]
pub extern "C" fn tm_print_stats() {
    place::print_stats();
}
