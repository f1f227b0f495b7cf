//! The C interface of `include/tiermalloc.h`: the `tm_*` functions and their types.
//!
//! Every function checks its arguments and answers bad ones with `NULL` or `-1` and `errno`;
//! a successful call leaves `errno` untouched. The unprefixed malloc family is in
//! `override_libc.rs` and forwards here.

#![allow(non_camel_case_types)]

use crate::kind::{Fit, Kind};
use crate::os::set_errno;
use crate::place;
use crate::stats::TierStats;
use crate::tier;
use core::ffi::{c_int, c_void};
use core::ptr;

/// Brings the process start and exit hooks into a static link (see `runtime::HOOKS`).
#[used]
static LINK_RUNTIME_HOOKS: super::runtime::Hooks = super::runtime::HOOKS;

/// The memory kinds (tiers).
#[allow(dead_code)] // declared for the C header; Rust receives kinds as `KindArg`
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum tm_kind {
    TM_DRAM = 0,
    TM_CXL = 1,
    TM_CMB = 2,
    TM_PMR = 3,
}

/// Fit policies of a device tier: which free extent a block of 4 KiB or more (or aligned to
/// more than 16) takes. Smaller blocks share 16 KiB slabs of their size class, and the slabs
/// are placed by the policy.
#[allow(dead_code)] // declared for the C header; Rust receives fits as `FitArg`
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

const _: () = assert!(core::mem::size_of::<crate::device::header::BlockHeader>() == TM_HEADER_SIZE);

/// Sets `ENOMEM` and returns null (the failure is counted where it happened).
#[cold]
pub(crate) fn out_of_memory() -> *mut c_void {
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

/// `size` bytes at `align` on tier `k` only; NULL + EINVAL for an unknown kind, NULL + ENOMEM
/// if that tier cannot serve it (not configured, full, at its limit).
fn explicit(k: KindArg, size: usize, align: usize, zero: bool) -> *mut c_void {
    match usable_kind(k) {
        Ok(kind) => {
            let p = place::alloc_on(kind, size, align, zero);
            if p.is_null() {
                out_of_memory()
            } else {
                p.cast()
            }
        }
        Err(libc::EINVAL) => invalid(),
        Err(_) => out_of_memory(),
    }
}

/// Allocates `size` bytes on tier `kind` only; NULL + ENOMEM if that tier cannot (also when it
/// is not configured), NULL + EINVAL for an unknown kind.
#[no_mangle]
pub extern "C" fn tm_malloc(kind: KindArg, size: usize) -> *mut c_void {
    explicit(kind, size, 16, false)
}

/// Like `tm_malloc` for `count * size` zeroed bytes; NULL + ENOMEM on overflow.
#[no_mangle]
pub extern "C" fn tm_calloc(kind: KindArg, count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        Some(total) => explicit(kind, total, 16, true),
        None => out_of_memory(),
    }
}

/// `size` bytes on tier `kind` aligned to `alignment` (a power of two); NULL + EINVAL for a bad
/// alignment or kind, NULL + ENOMEM if the tier cannot serve it.
#[no_mangle]
pub extern "C" fn tm_aligned_alloc(kind: KindArg, alignment: usize, size: usize) -> *mut c_void {
    if !alignment.is_power_of_two() {
        return invalid();
    }
    explicit(kind, size, alignment, false)
}

/// A plain request (the malloc family): `size` bytes at `align` (a power of two), zeroed if
/// asked, wherever placement puts it; NULL + ENOMEM on failure.
#[inline]
pub(crate) fn plain(size: usize, align: usize, zero: bool) -> *mut c_void {
    let p = place::alloc_plain(size, align, zero);
    if p.is_null() {
        out_of_memory()
    } else {
        p.cast()
    }
}

/// Resizes `ptr` on its own tier. `tm_realloc(NULL, n)` is a plain `malloc(n)`; `size == 0`
/// frees and returns NULL (as glibc's `realloc`). On failure returns NULL + ENOMEM and leaves
/// `ptr` intact. A pointer that is not a live block of ours is reported as `tm_free` reports
/// it (NULL + EINVAL if ignored), unless the library was loaded after the program's own
/// malloc (`dlopen`), when the program's `realloc` gets it.
///
/// # Safety
/// `ptr` must be NULL or a live block of ours.
#[no_mangle]
pub unsafe extern "C" fn tm_realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { realloc_moving(ptr, size, None) }
}

/// `tm_realloc`, a block that cannot be resized in place moving onto `move_to`'s block instead
/// of its own tier's (`place::plain_move`: the plain `realloc`).
///
/// # Safety
/// As `tm_realloc`.
pub(crate) unsafe fn realloc_moving(
    ptr: *mut c_void,
    size: usize,
    move_to: Option<tier::MoveTo>,
) -> *mut c_void {
    if ptr.is_null() {
        return plain(size, 16, false);
    }
    if size == 0 {
        // SAFETY: forwarded.
        unsafe { tm_free(ptr) };
        return ptr::null_mut();
    }
    // SAFETY: a live block of ours (contract).
    match unsafe { tier::realloc(ptr.cast(), size, 16, move_to) } {
        // Not ours: the program's realloc when the library was loaded late, else reported.
        // SAFETY: forwarded.
        None => match unsafe { crate::foreign::realloc(ptr.cast(), size) } {
            Some(q) => q.cast(),
            None => invalid(),
        },
        Some(q) if q.is_null() => out_of_memory(),
        Some(q) => q.cast(),
    }
}

/// Frees any block of ours, whatever its tier; NULL is ignored. Keeps `errno`. A double free,
/// a pointer into a block, a corrupted free list or a pointer that is not ours is detected
/// from host metadata: one line on stderr, then an abort (or, with
/// `TIERMALLOC_ON_ERROR=ignore`, reported, counted and ignored).
///
/// # Safety
/// `ptr` must be NULL or a live block, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn tm_free(ptr: *mut c_void) {
    // SAFETY: forwarded; freeing never sets errno.
    unsafe { tier::free(ptr.cast()) }
}

/// The usable size of block `ptr` (0 for NULL or a pointer that is not ours). On a device tier
/// it equals the `size` field of the block's header.
///
/// # Safety
/// `ptr` must be NULL, foreign, or a live block of ours.
#[no_mangle]
pub unsafe extern "C" fn tm_usable_size(ptr: *const c_void) -> usize {
    // SAFETY: forwarded.
    unsafe { tier::usable_size(ptr as *mut u8) }
}

/// The `tm_kind` of block `ptr`, or -1 if it is not ours.
#[no_mangle]
pub extern "C" fn tm_kind_of(ptr: *const c_void) -> c_int {
    match tier::kind_of(ptr.cast()) {
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
    let fit = if fit.0 == 0 { Fit::Best } else { Fit::Worst };
    match usable_kind(kind) {
        Ok(kind) if tier::set_fit(kind, fit) => 0,
        Ok(_) => {
            set_errno(libc::ENODEV);
            -1
        }
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
    let stats = match usable_kind(kind).map(tier::stats) {
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

/// Prints every configured tier's statistics on stderr: in use, peak, capacity, reserved
/// address space and counts, in human units, under a line naming the process.
#[no_mangle]
pub extern "C" fn tm_print_stats() {
    super::report::print_stats();
}
