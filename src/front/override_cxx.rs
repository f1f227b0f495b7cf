//! C++ `operator delete` in its four plain forms (feature `override`): exported here so that a
//! C++ program's `delete p` reaches `free` in one call instead of through libstdc++'s own
//! `operator delete` and its call to `free` through the PLT.
//!
//! Why delete and not new: libstdc++'s `operator new` loops over the program's `new_handler`
//! and throws `std::bad_alloc` when memory runs out, which a Rust function cannot do, and an
//! exception must not unwind through one. `delete` never throws: it is `free`, with the size
//! of the sized forms ignored (the page map knows the block), as libstdc++'s does. The aligned
//! forms (`std::align_val_t`) stay libstdc++'s: they free through `free` already.
//!
//! Measured: callgrind of mimalloc-bench's alloc-test 1 (`new[]`/`delete[]` of up to 1 KiB)
//! spent 7.6 % of its instructions in libstdc++'s four operators under this library, a quarter
//! of them in the two deletes (BENCHMARKS.md, session 7, branch `rows`).

use core::ffi::c_void;

/// `operator delete(void*)`.
///
/// # Safety
/// As C `free`: `p` null or a live block, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn _ZdlPv(p: *mut c_void) {
    // SAFETY: forwarded.
    unsafe { crate::tier::free(p.cast()) }
}

/// `operator delete[](void*)`.
///
/// # Safety
/// As C `free`.
#[no_mangle]
pub unsafe extern "C" fn _ZdaPv(p: *mut c_void) {
    // SAFETY: forwarded.
    unsafe { crate::tier::free(p.cast()) }
}

/// `operator delete(void*, std::size_t)` (sized deallocation); the size is not needed.
///
/// # Safety
/// As C `free`.
#[no_mangle]
pub unsafe extern "C" fn _ZdlPvm(p: *mut c_void, _size: usize) {
    // SAFETY: forwarded.
    unsafe { crate::tier::free(p.cast()) }
}

/// `operator delete[](void*, std::size_t)`; the size is not needed.
///
/// # Safety
/// As C `free`.
#[no_mangle]
pub unsafe extern "C" fn _ZdaPvm(p: *mut c_void, _size: usize) {
    // SAFETY: forwarded.
    unsafe { crate::tier::free(p.cast()) }
}
