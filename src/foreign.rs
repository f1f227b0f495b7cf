//! Pointers that are not ours (the page map says `Foreign`) reaching `free` or `realloc`.
//!
//! Two cases, told apart by asking the dynamic linker which `free` the process uses:
//! - tiermalloc **is** the process's allocator (`LD_PRELOAD`, or linked ahead of libc): every
//!   block the program holds came from us, so a foreign pointer is a bug in the program (a
//!   stack or static address, a pointer into another mapping, a block already unmapped). It is
//!   reported (`misuse`), as glibc and every other allocator report it.
//! - tiermalloc was **loaded later** (`dlopen` into a program whose malloc stays glibc's): the
//!   pointer may be a block of the program's allocator, legitimately handed to the library. It
//!   goes to that allocator's `free`/`realloc`, which frees it or reports it as it would have
//!   without us.
//!
//! The answer is looked up once, on the first foreign pointer (never on a fast path), and kept.

use crate::misuse::{self, Misuse};
use core::ffi::c_void;
use core::sync::atomic::{AtomicUsize, Ordering};

const UNKNOWN: usize = 0;
/// We are the process's allocator: there is nobody to forward to.
const OURS: usize = 1;
/// Otherwise: the address of the process's `free`; its `realloc` in `PROCESS_REALLOC`.
static PROCESS_FREE: AtomicUsize = AtomicUsize::new(UNKNOWN);
static PROCESS_REALLOC: AtomicUsize = AtomicUsize::new(UNKNOWN);

type FreeFn = unsafe extern "C" fn(*mut c_void);
type ReallocFn = unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void;

/// The process's `free` and `realloc` when they are not ours.
fn process_allocator() -> Option<(FreeFn, ReallocFn)> {
    let mut free = PROCESS_FREE.load(Ordering::Acquire);
    if free == UNKNOWN {
        let (f, r) = look_up();
        PROCESS_REALLOC.store(r, Ordering::Relaxed);
        PROCESS_FREE.store(f, Ordering::Release);
        free = f;
    }
    let realloc = PROCESS_REALLOC.load(Ordering::Relaxed);
    if free == OURS || realloc == UNKNOWN {
        return None;
    }
    // SAFETY: both are addresses of the process's `free` and `realloc`, as dlsym found them.
    Some(unsafe {
        (
            core::mem::transmute::<usize, FreeFn>(free),
            core::mem::transmute::<usize, ReallocFn>(realloc),
        )
    })
}

#[cfg(feature = "override")]
fn look_up() -> (usize, usize) {
    // SAFETY: dlsym with NUL-terminated names; RTLD_DEFAULT searches the global scope, which
    // is where the program's own calls to `free` resolve.
    let (free, realloc) = unsafe {
        (
            libc::dlsym(libc::RTLD_DEFAULT, c"free".as_ptr()) as usize,
            libc::dlsym(libc::RTLD_DEFAULT, c"realloc".as_ptr()) as usize,
        )
    };
    // Whether that `free` is in our own object. (Not by comparing it with the address of our
    // `free`: inside this library that address resolves through the GOT to the process's
    // `free`, whichever it is.)
    if free == 0 || object_of(free) == object_of(look_up as *const () as usize) {
        (OURS, UNKNOWN)
    } else {
        (free, realloc)
    }
}

/// The base address of the loaded object holding code address `addr` (0 if none).
#[cfg(feature = "override")]
fn object_of(addr: usize) -> usize {
    // SAFETY: all-zero is a valid `Dl_info`; dladdr only writes it.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::dladdr(addr as *const c_void, &mut info) } == 0 {
        return 0;
    }
    info.dli_fbase as usize
}

/// Without the unprefixed names the program's `free` is never ours, but nothing of the
/// program's reaches us either: `tm_free` and the Rust allocator take only our blocks.
#[cfg(not(feature = "override"))]
fn look_up() -> (usize, usize) {
    (OURS, UNKNOWN)
}

/// `free` of foreign pointer `p` (non-null).
///
/// # Safety
/// As C `free`.
#[cold]
#[inline(never)]
pub unsafe fn free(p: *mut u8) {
    match process_allocator() {
        // SAFETY: the process's own free, for what may be its own block.
        Some((free, _)) => unsafe { free(p.cast()) },
        None => misuse::report("free", p, Misuse::NotOurs),
    }
}

/// `realloc` of foreign pointer `p` (non-null) to `size` bytes (non-zero): the process's
/// realloc's answer, or `None` after the misuse was reported and ignored.
///
/// # Safety
/// As C `realloc`.
#[cold]
#[inline(never)]
pub unsafe fn realloc(p: *mut u8, size: usize) -> Option<*mut u8> {
    match process_allocator() {
        // SAFETY: the process's own realloc, for what may be its own block.
        Some((_, realloc)) => Some(unsafe { realloc(p.cast(), size) }.cast()),
        None => {
            misuse::report("realloc", p, Misuse::NotOurs);
            None
        }
    }
}
