//! The C interface of the shared pool (`tm_space_*`, DESIGN.md "The shared pool"), over the
//! pool `TIERMALLOC_POOL` names. Every function answers bad arguments and failures with NULL
//! or -1 and `errno` (ENODEV when no pool is configured), and leaves `errno` untouched on
//! success.

#![allow(non_camel_case_types)]

use crate::os::{errno, set_errno};
use crate::pool::{self, Errno, Pool};
use core::ffi::{c_char, c_int, c_void, CStr};
use core::ptr;

/// How `tm_space_open` maps a shared space.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum tm_map {
    /// The device itself, read-only: no copy; a write faults (SIGSEGV).
    TM_MAP_READ = 0,
    /// Copy-on-write: pages are copied into this process's memory when it writes them.
    TM_MAP_PRIVATE = 1,
}

/// A `tm_map` as passed by C, checked. (The header names it `tm_map`; see cbindgen.toml.)
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct MapArg(pub u32);

/// `state` of a space still private to its creator (read-write).
pub const TM_SPACE_PRIVATE: u32 = 1;
/// `state` of a published space (read-only, shared).
pub const TM_SPACE_SHARED: u32 = 2;

/// A space as `tm_space_stat` and `tm_space_list` report it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct tm_space_info {
    /// NUL-terminated, at most 63 bytes.
    pub name: [c_char; 64],
    /// Unique, never reused.
    pub id: u64,
    pub size: u64,
    /// TM_SPACE_PRIVATE or TM_SPACE_SHARED.
    pub state: u32,
    /// Live mappings held by processes, the creator's included.
    pub refs: u32,
    /// CLOCK_REALTIME of creation.
    pub created_ns: u64,
}

impl From<&pool::api::Space> for tm_space_info {
    fn from(s: &pool::api::Space) -> Self {
        let mut name = [0 as c_char; 64];
        for (d, &b) in name.iter_mut().zip(s.name.as_bytes().iter().take(63)) {
            *d = b as c_char;
        }
        tm_space_info {
            name,
            id: s.id,
            size: s.size,
            state: match s.state {
                pool::api::SpaceState::Private => TM_SPACE_PRIVATE,
                pool::api::SpaceState::Shared => TM_SPACE_SHARED,
            },
            refs: s.refs.min(u32::MAX as u64) as u32,
            created_ns: s.created_ns,
        }
    }
}

/// Runs `f` on the configured pool: its answer with `errno` kept on success, or `fail` with
/// `errno` set.
pub(super) fn with_pool<T>(fail: T, f: impl FnOnce(&Pool) -> Result<T, Errno>) -> T {
    let saved = errno();
    match pool::global().ok_or(libc::ENODEV).and_then(|p| f(p)) {
        Ok(v) => {
            set_errno(saved);
            v
        }
        Err(e) => {
            set_errno(e);
            fail
        }
    }
}

/// The bytes of a C name; EINVAL for NULL.
///
/// # Safety
/// `name` must be NULL or a NUL-terminated string.
unsafe fn name_of<'a>(name: *const c_char) -> Result<&'a [u8], Errno> {
    if name.is_null() {
        return Err(libc::EINVAL);
    }
    // SAFETY: NUL-terminated (contract).
    Ok(unsafe { CStr::from_ptr(name) }.to_bytes())
}

/// Creates a private read-write space of `size` bytes (zeroed) named `name`; its base, or
/// NULL + EEXIST (name taken) / ENOSPC (no room now, or a `size` larger than the pool's data
/// area, `SIZE_MAX` included; said in one line on stderr naming `name` and `size`) /
/// ENAMETOOLONG (over 63 bytes) / EINVAL (NULL or empty name, `size` 0) / ENODEV (no pool).
///
/// # Safety
/// `name` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn tm_space_create(name: *const c_char, size: usize) -> *mut c_void {
    with_pool(ptr::null_mut(), |p| {
        // SAFETY: forwarded.
        let name = unsafe { name_of(name) }?;
        p.create(name, size as u64).map(|b| b as *mut c_void)
    })
}

/// Publishes the private space at `base` (its creator's mapping): it becomes shared and
/// read-only, the creator's mapping included. 0, or -1 + EINVAL (not a private space of ours).
#[no_mangle]
pub extern "C" fn tm_space_publish(base: *mut c_void) -> c_int {
    with_pool(-1, |p| p.publish(base as usize).map(|_| 0))
}

/// Opens the shared space `name`: TM_MAP_READ maps the device read-only, TM_MAP_PRIVATE maps
/// it copy-on-write. Its base (and its size in `*size` unless NULL), or NULL + ENOENT /
/// ENAMETOOLONG / EINVAL / ENODEV.
///
/// # Safety
/// `name` must be NULL or a NUL-terminated string; `size` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn tm_space_open(
    name: *const c_char,
    how: MapArg,
    size: *mut usize,
) -> *mut c_void {
    with_pool(ptr::null_mut(), |p| {
        // SAFETY: forwarded.
        let name = unsafe { name_of(name) }?;
        let how = match how.0 {
            0 => pool::api::MapMode::Read,
            1 => pool::api::MapMode::Private,
            _ => return Err(libc::EINVAL),
        };
        let (base, bytes) = p.open_shared(name, how)?;
        if !size.is_null() {
            // SAFETY: valid for a write (contract).
            unsafe { size.write(bytes as usize) };
        }
        Ok(base as *mut c_void)
    })
}

/// Unmaps a mapping `tm_space_create`, `tm_space_open` or `tm_space_republish` returned and
/// gives its reference back. 0, or -1 + EINVAL.
#[no_mangle]
pub extern "C" fn tm_space_close(base: *mut c_void) -> c_int {
    with_pool(-1, |p| p.close(base as usize).map(|_| 0))
}

/// The current contents of the PRIVATE mapping at `base` as a new shared space `name`,
/// returned opened READ; NULL + errno as `tm_space_create`, or EINVAL if `base` is not a
/// PRIVATE mapping of ours.
///
/// # Safety
/// `name` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn tm_space_republish(base: *mut c_void, name: *const c_char) -> *mut c_void {
    with_pool(ptr::null_mut(), |p| {
        // SAFETY: forwarded.
        let name = unsafe { name_of(name) }?;
        p.republish(base as usize, name).map(|b| b as *mut c_void)
    })
}

/// Fills `*out` with the space `name`: 0, or -1 + ENOENT / ENAMETOOLONG / EINVAL / ENODEV.
///
/// # Safety
/// `name` must be NULL or a NUL-terminated string; `out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn tm_space_stat(name: *const c_char, out: *mut tm_space_info) -> c_int {
    with_pool(-1, |p| {
        // SAFETY: forwarded.
        let name = unsafe { name_of(name) }?;
        if out.is_null() {
            return Err(libc::EINVAL);
        }
        let space = pool::api::Space::from(p.stat(name)?);
        // SAFETY: valid for a write (contract).
        unsafe { out.write(tm_space_info::from(&space)) };
        Ok(0)
    })
}

/// Fills `out[0..min(n, max)]` with the pool's spaces: returns n, the number of spaces (which
/// may exceed `max`), or -1 + ENODEV.
///
/// # Safety
/// `out` must be valid for `max` writes (NULL when `max` is 0).
#[no_mangle]
pub unsafe extern "C" fn tm_space_list(out: *mut tm_space_info, max: usize) -> c_int {
    with_pool(-1, |p| {
        let mut n = 0usize;
        p.list(|v| {
            if n < max && !out.is_null() {
                let space = pool::api::Space::from(v);
                // SAFETY: n < max, and `out` is valid for `max` writes (contract).
                unsafe { out.add(n).write(tm_space_info::from(&space)) };
            }
            n += 1;
        });
        Ok(n.min(c_int::MAX as usize) as c_int)
    })
}

/// Deletes the shared spaces with refs == 0 and age >= `min_age_ms`, and private spaces whose
/// creator died: how many, or -1 + ENODEV.
#[no_mangle]
pub extern "C" fn tm_space_collect(min_age_ms: u64) -> c_int {
    with_pool(-1, |p| p.collect(min_age_ms).map(|n| n as c_int))
}
