//! The C interface's version and machine-readable statistics: `tm_version`, the
//! `TIERMALLOC_VERSION*` macros and `tm_stats_json`. (The rest of `tm_*` is in `capi.rs`.)

// The constants are the header's macros (cbindgen emits them); Rust code has no use for them.
#![allow(dead_code)]

use core::ffi::c_char;

/// The major version; the shared library's soname is `libtiermalloc.so.<major>`.
pub const TIERMALLOC_VERSION_MAJOR: u32 = 0;
pub const TIERMALLOC_VERSION_MINOR: u32 = 1;
pub const TIERMALLOC_VERSION_PATCH: u32 = 0;
/// `MAJOR * 10000 + MINOR * 100 + PATCH`, for `#if TIERMALLOC_VERSION >= 100`.
pub const TIERMALLOC_VERSION: u32 =
    TIERMALLOC_VERSION_MAJOR * 10000 + TIERMALLOC_VERSION_MINOR * 100 + TIERMALLOC_VERSION_PATCH;

/// The version string, as in Cargo.toml.
static VERSION: &core::ffi::CStr = c"0.1.0";

/// The library's version as `"MAJOR.MINOR.PATCH"` (a static string): the version of the library
/// actually loaded, where `TIERMALLOC_VERSION` is the one compiled against.
#[no_mangle]
pub extern "C" fn tm_version() -> *const c_char {
    VERSION.as_ptr()
}

/// Writes every configured tier's statistics as one JSON object into `buf` (at most
/// `len - 1` bytes and a NUL), as `snprintf` does, and returns the length of the whole report
/// (without the NUL): call with a larger buffer when that is `>= len`. `buf` may be NULL when
/// `len` is 0. Fields: `pid`, `program`, `event`, `time_ns`, `complete`, and `tiers`, an array
/// of objects with `kind`, `in_use`, `peak`, `capacity`, `capacity_source`, `free`,
/// `largest_free`, `reserved`, `allocations`, `frees`, `failures`, `spilled_in`,
/// `spilled_out` (bytes and counts as integers).
///
/// # Safety
/// `buf` is valid for `len` bytes of writes, or `len` is 0.
#[no_mangle]
pub unsafe extern "C" fn tm_stats_json(buf: *mut c_char, len: usize) -> usize {
    let out: &mut [u8] = if buf.is_null() || len == 0 {
        &mut []
    } else {
        // SAFETY: valid for `len` bytes (contract).
        unsafe { core::slice::from_raw_parts_mut(buf.cast(), len) }
    };
    super::report::json_into(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_matches_cargo_toml() {
        let parts = [
            TIERMALLOC_VERSION_MAJOR,
            TIERMALLOC_VERSION_MINOR,
            TIERMALLOC_VERSION_PATCH,
        ];
        let cargo: Vec<u32> = env!("CARGO_PKG_VERSION")
            .split('.')
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(parts[..], cargo[..]);
        assert_eq!(VERSION.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
        // SAFETY: a static NUL-terminated string.
        let v = unsafe { core::ffi::CStr::from_ptr(tm_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
