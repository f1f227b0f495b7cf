//! The unprefixed malloc family (feature `override`, on by default): what `LD_PRELOAD` and
//! programs linking the library get in place of glibc's, plus the `__libc_*` names some
//! programs call directly.
//!
//! Behaviour follows glibc's manual ("Replacing malloc"): `malloc(0)` gives a unique pointer,
//! `free` keeps `errno`, overflow gives `NULL` + `ENOMEM`, a bad alignment `EINVAL`, a failed
//! `realloc` keeps the old block, `pvalloc` rounds up to a page.

use crate::dram;
use crate::front::capi::{out_of_memory, plain, realloc_moving, tm_free, tm_usable_size};
use crate::os::PAGE_SIZE;
use crate::place;
use core::ffi::{c_int, c_void};

/// Brings the process start and exit hooks into a static link (see `runtime::HOOKS`).
#[used]
static LINK_RUNTIME_HOOKS: super::runtime::Hooks = super::runtime::HOOKS;

/// # Safety
/// As C `malloc`.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    let p = dram::try_pop(size);
    if !p.is_null() {
        return p.cast();
    }
    malloc_general(size)
}

/// Everything `malloc`'s inline pop does not cover; a separate function so that the fast path
/// needs no stack frame and reaches it with a tail jump. While plain requests stay on DRAM it
/// goes on down into the DRAM tier (the thread heap's slow path, without a second pop), else
/// to placement.
#[cold]
#[inline(never)]
fn malloc_general(size: usize) -> *mut c_void {
    if place::routed() {
        return plain(size, 16, false);
    }
    let p = dram::alloc_after_miss(size);
    if p.is_null() {
        out_of_memory()
    } else {
        p.cast()
    }
}

/// # Safety
/// As C `free`.
#[no_mangle]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    // SAFETY: forwarded.
    unsafe { crate::tier::free(ptr.cast()) }
}

/// # Safety
/// As C `calloc`.
#[no_mangle]
pub unsafe extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        Some(total) => plain(total, 16, true),
        None => out_of_memory(),
    }
}

/// # Safety
/// As C `realloc`.
#[no_mangle]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    if ptr.is_null() {
        // `realloc(NULL, n)` is `malloc(n)`, and gets its inline pop: programs with one
        // realloc-style allocation function (Lua's `l_alloc`) allocate every block this way.
        // SAFETY: forwarded.
        return unsafe { malloc(size) };
    }
    // SAFETY: forwarded.
    unsafe { realloc_moving(ptr, size, crate::place::plain_move()) }
}

/// # Safety
/// As C `reallocarray`.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(ptr: *mut c_void, count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        // SAFETY: forwarded.
        Some(total) => unsafe { realloc(ptr, total) },
        None => out_of_memory(),
    }
}

/// # Safety
/// As C `posix_memalign`: `out` valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || align % core::mem::size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    let rc = crate::os::keep_errno(|| {
        let p = plain(size, align, false);
        if p.is_null() {
            return libc::ENOMEM;
        }
        // SAFETY: `out` is valid (contract).
        unsafe { out.write(p) };
        0
    });
    // glibc's also leaves errno at ENOMEM when it fails for want of memory, and programs
    // written against it test errno (glibc's tst-malloc-thread-fail aborts otherwise); a
    // success leaves errno alone.
    if rc == libc::ENOMEM {
        crate::os::set_errno(libc::ENOMEM);
    }
    rc
}

/// # Safety
/// As C `aligned_alloc`.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        crate::os::set_errno(libc::EINVAL);
        return core::ptr::null_mut();
    }
    plain(size, align, false)
}

/// As glibc: an alignment that is not a power of two is rounded up to one; one above
/// `SIZE_MAX / 2 + 1` gives `EINVAL`.
///
/// # Safety
/// As C `memalign`.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    match align.max(1).checked_next_power_of_two() {
        Some(align) => plain(size, align, false),
        None => {
            crate::os::set_errno(libc::EINVAL);
            core::ptr::null_mut()
        }
    }
}

/// # Safety
/// As C `valloc`.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    plain(size, PAGE_SIZE, false)
}

/// # Safety
/// As C `pvalloc`.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    match size.max(1).checked_next_multiple_of(PAGE_SIZE) {
        Some(rounded) => plain(rounded, PAGE_SIZE, false),
        None => out_of_memory(),
    }
}

/// # Safety
/// As glibc's `malloc_usable_size`.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(ptr: *mut c_void) -> usize {
    // SAFETY: forwarded.
    unsafe { tm_usable_size(ptr) }
}

/// C23 `free_sized`: `size` must be the size the block was requested with. It is not needed
/// (the page map knows the block), but it is checked: a size larger than the block, or (on
/// DRAM) less than half of it, which no `malloc`, `calloc` or `realloc` of that size could
/// have given, is reported as a misuse (see `misuse`).
///
/// # Safety
/// As C `free`.
#[no_mangle]
pub unsafe extern "C" fn free_sized(ptr: *mut c_void, size: usize) {
    // SAFETY: forwarded.
    if unsafe { size_fits("free_sized", ptr, size, true) } {
        // SAFETY: forwarded.
        unsafe { tm_free(ptr) }
    }
}

/// C23 `free_aligned_sized`: the size is checked as in `free_sized`, except that alignment may
/// have made the block much larger than asked.
///
/// # Safety
/// As C `free`.
#[no_mangle]
pub unsafe extern "C" fn free_aligned_sized(ptr: *mut c_void, _align: usize, size: usize) {
    // SAFETY: forwarded.
    if unsafe { size_fits("free_aligned_sized", ptr, size, false) } {
        // SAFETY: forwarded.
        unsafe { tm_free(ptr) }
    }
}

/// Whether `size` can be what block `ptr` was requested with (true for null and for pointers
/// that are not ours, which `free` then judges); reports the misuse otherwise. Without
/// alignment, a DRAM block holds less than twice its request: the size classes above 16 bytes
/// are less than twice their predecessor, and `realloc` keeps a block only for a size of at
/// least half of it; a block of a page that lent to smaller classes may hold up to
/// `2 * LEND_RATIO` times its request (`lent_and_fits`).
///
/// # Safety
/// `ptr` must be null, foreign or a block of ours.
unsafe fn size_fits(call: &str, ptr: *mut c_void, size: usize, unaligned: bool) -> bool {
    // SAFETY: forwarded.
    let usable = unsafe { tm_usable_size(ptr) };
    if usable == 0 {
        return true;
    }
    let on_dram = crate::tier::kind_of(ptr.cast()) == Some(crate::kind::Kind::Dram);
    // SAFETY: `lent_and_fits` is asked only for a block of ours on DRAM.
    let too_small = unaligned
        && on_dram
        && usable > 16
        && size < usable / 2
        && unsafe { !lent_and_fits(ptr, size, usable) };
    if size > usable || too_small {
        crate::misuse::report(
            call,
            ptr.cast(),
            crate::misuse::Misuse::SizeMismatch {
                given: size,
                usable,
            },
        );
        return false;
    }
    true
}

/// Whether DRAM block `ptr` (`usable` bytes) lies on a page that lent blocks to smaller
/// classes (`dram::fast::lent_blocks`) and `size` fits what such a block may hold: up to
/// `LEND_RATIO` times its request.
///
/// # Safety
/// `ptr` must be a block of ours on DRAM.
unsafe fn lent_and_fits(ptr: *mut c_void, size: usize, usable: usize) -> bool {
    use crate::dram::fast::lent_blocks::LEND_RATIO;
    if crate::pagemap::owner_of(ptr as usize) != crate::pagemap::Owner::Segment {
        return false;
    }
    // SAFETY: a block of a segment (contract, page map).
    unsafe { dram::fast::may_hold_a_lent_block(ptr.cast()) && size >= usable / (2 * LEND_RATIO) }
}

/// Defines `__libc_NAME` forwarding to `NAME`, for programs that call glibc's internal names.
macro_rules! libc_alias {
    ($($alias:ident => $target:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty;)*) => {$(
        /// # Safety
        /// As the function it forwards to.
        #[no_mangle]
        pub unsafe extern "C" fn $alias($($arg: $ty),*) -> $ret {
            // SAFETY: forwarded.
            unsafe { $target($($arg),*) }
        }
    )*};
}

libc_alias! {
    __libc_malloc => malloc(size: usize) -> *mut c_void;
    __libc_free => free(ptr: *mut c_void) -> ();
    __libc_calloc => calloc(count: usize, size: usize) -> *mut c_void;
    __libc_realloc => realloc(ptr: *mut c_void, size: usize) -> *mut c_void;
    __libc_memalign => memalign(align: usize, size: usize) -> *mut c_void;
    __libc_valloc => valloc(size: usize) -> *mut c_void;
    __libc_pvalloc => pvalloc(size: usize) -> *mut c_void;
}
