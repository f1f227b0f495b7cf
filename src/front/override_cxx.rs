//! C++ `operator delete` in its plain, sized, aligned and `nothrow` forms (feature
//! `override`): exported here so that a C++ program's `delete p` reaches `free` in one call
//! instead of through libstdc++'s own `operator delete` and its call to `free` through the PLT.
//! `operator new` is in `override_cxx_new` (it must be able to throw, which needs a stub).
//!
//! `delete` never throws: every form is `free`, with the size and the alignment ignored (the
//! page map knows the block), as libstdc++'s does.
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

/// The forms that carry more than the pointer (`std::align_val_t`, a size, `std::nothrow_t`),
/// each `free` with the rest ignored.
macro_rules! delete_ignoring_rest {
    ($($name:ident($($rest:ident: $ty:ty),*);)*) => {$(
        /// # Safety
        /// As C `free`.
        #[no_mangle]
        pub unsafe extern "C" fn $name(p: *mut c_void, $($rest: $ty),*) {
            $(let _ = $rest;)*
            // SAFETY: forwarded.
            unsafe { crate::tier::free(p.cast()) }
        }
    )*};
}

delete_ignoring_rest! {
    _ZdlPvSt11align_val_t(align: usize);
    _ZdaPvSt11align_val_t(align: usize);
    _ZdlPvmSt11align_val_t(size: usize, align: usize);
    _ZdaPvmSt11align_val_t(size: usize, align: usize);
    _ZdlPvRKSt9nothrow_t(nothrow: *const c_void);
    _ZdaPvRKSt9nothrow_t(nothrow: *const c_void);
    _ZdlPvSt11align_val_tRKSt9nothrow_t(align: usize, nothrow: *const c_void);
    _ZdaPvSt11align_val_tRKSt9nothrow_t(align: usize, nothrow: *const c_void);
}
