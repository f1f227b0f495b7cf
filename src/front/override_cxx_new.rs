//! C++ `operator new` in its eight forms (feature `override`, x86_64): a C++ program's `new`
//! reaches the library's allocation in one call, instead of through libstdc++'s operator and
//! its call to `malloc` through the PLT.
//!
//! The catch is failure. libstdc++'s `operator new` calls the program's `new_handler` and throws
//! `std::bad_alloc` when memory runs out; a Rust function cannot throw, and a C++ exception
//! must not unwind through a Rust frame (with `panic = "abort"` it aborts the process). So each
//! exported operator is a small assembly stub that keeps no frame of its own on failure:
//!
//! - it calls a Rust function (`new_block` and friends) which allocates as `malloc` (or
//!   `aligned_alloc`) does and, only if that failed, also returns the address of the operator
//!   it stands in for: the next definition of the same symbol, libstdc++'s, found with
//!   `dlsym(RTLD_NEXT)` once and kept;
//! - on success it returns the block; on failure it restores its arguments, pops what it
//!   pushed and *jumps* to that operator, as if the program had called it. libstdc++'s operator
//!   then does exactly what it always does: tries `malloc` (ours) again, calls the
//!   `new_handler`, throws `std::bad_alloc` or, for the `nothrow` forms, returns null. The
//!   exception unwinds from libstdc++'s frame straight into the program's, never through ours.
//!
//! If no such operator exists (no libstdc++ in the process, which cannot happen for a program
//! that calls `operator new`, or a static one that shadows ours anyway), the `nothrow` forms
//! return null and the throwing forms print one line and abort.
//!
//! The stubs carry call-frame information (`.cfi_*`), so a backtrace taken inside the
//! allocation (the heap profiler, a debugger) walks through them.
//!
//! Measured: BENCHMARKS.md, "Session 8, branch rows".

use crate::front::override_libc::{aligned_alloc, malloc};
use core::ffi::c_void;
use core::sync::atomic::{AtomicUsize, Ordering};

/// What a stub's Rust half answers, in `rax:rdx` (a 16-byte `repr(C)` struct of two integers
/// is returned in those two registers on x86_64 SysV).
///
/// Invariant: `block` is null exactly when `otherwise` is the address of a function with the
/// stub's own signature (libstdc++'s operator, or `no_operator_*` below).
#[repr(C)]
struct NewAnswer {
    block: *mut c_void,
    otherwise: usize,
}

/// The eight forms, indices into `NEXT` and `NAMES`.
#[derive(Clone, Copy)]
#[repr(usize)]
enum Form {
    New = 0,
    NewArray,
    NewNothrow,
    NewArrayNothrow,
    NewAligned,
    NewArrayAligned,
    NewAlignedNothrow,
    NewArrayAlignedNothrow,
}

impl Form {
    fn is_nothrow(self) -> bool {
        matches!(
            self,
            Form::NewNothrow
                | Form::NewArrayNothrow
                | Form::NewAlignedNothrow
                | Form::NewArrayAlignedNothrow
        )
    }
}

/// The mangled names, NUL-terminated for `dlsym`, in `Form` order.
const NAMES: [&core::ffi::CStr; 8] = [
    c"_Znwm",
    c"_Znam",
    c"_ZnwmRKSt9nothrow_t",
    c"_ZnamRKSt9nothrow_t",
    c"_ZnwmSt11align_val_t",
    c"_ZnamSt11align_val_t",
    c"_ZnwmSt11align_val_tRKSt9nothrow_t",
    c"_ZnamSt11align_val_tRKSt9nothrow_t",
];

/// The operator each form falls back to, 0 until first needed. Racing threads store the same
/// address, so relaxed order is enough.
static NEXT: [AtomicUsize; 8] = [const { AtomicUsize::new(0) }; 8];

/// The operator `form` stands in for (cold: only after an allocation failed).
#[cold]
#[inline(never)]
fn otherwise(form: Form) -> usize {
    let known = NEXT[form as usize].load(Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    // SAFETY: a NUL-terminated name; RTLD_NEXT searches the objects loaded after this one, so
    // it cannot find these stubs themselves. dlsym may allocate (through our malloc): no lock
    // of ours is held here.
    let found = unsafe { libc::dlsym(libc::RTLD_NEXT, NAMES[form as usize].as_ptr()) } as usize;
    let next = if found != 0 {
        found
    } else if form.is_nothrow() {
        no_operator_nothrow as *const () as usize
    } else {
        no_operator_throwing as *const () as usize
    };
    NEXT[form as usize].store(next, Ordering::Relaxed);
    next
}

/// Stands in for a missing libstdc++ `nothrow` operator: the allocation failed, so null.
extern "C" fn no_operator_nothrow() -> *mut c_void {
    core::ptr::null_mut()
}

/// Stands in for a missing libstdc++ throwing operator: nothing can throw `std::bad_alloc`.
extern "C" fn no_operator_throwing() -> *mut c_void {
    crate::os::write_stderr(
        b"tiermalloc: operator new: out of memory, and no libstdc++ operator new to throw \
          std::bad_alloc; aborting\n",
    );
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

#[inline(always)]
fn answer(block: *mut c_void, form: Form) -> NewAnswer {
    if !block.is_null() {
        return NewAnswer {
            block,
            otherwise: 0,
        };
    }
    NewAnswer {
        block,
        otherwise: otherwise(form),
    }
}

// The Rust halves. `extern "C"`: they never unwind (the allocator does not panic on these
// paths, and an unwind out of an `extern "C"` function aborts).

extern "C" fn new_block(size: usize) -> NewAnswer {
    // SAFETY: malloc has no preconditions.
    answer(unsafe { malloc(size) }, Form::New)
}

extern "C" fn new_array_block(size: usize) -> NewAnswer {
    // SAFETY: as above.
    answer(unsafe { malloc(size) }, Form::NewArray)
}

extern "C" fn new_nothrow_block(size: usize) -> NewAnswer {
    // SAFETY: as above.
    answer(unsafe { malloc(size) }, Form::NewNothrow)
}

extern "C" fn new_array_nothrow_block(size: usize) -> NewAnswer {
    // SAFETY: as above.
    answer(unsafe { malloc(size) }, Form::NewArrayNothrow)
}

// The aligned forms: C++ requires `align` to be a power of two; one that is not gives null
// here and libstdc++'s operator decides.

extern "C" fn new_aligned_block(size: usize, align: usize) -> NewAnswer {
    // SAFETY: aligned_alloc has no preconditions.
    answer(unsafe { aligned_alloc(align, size) }, Form::NewAligned)
}

extern "C" fn new_array_aligned_block(size: usize, align: usize) -> NewAnswer {
    // SAFETY: as above.
    answer(unsafe { aligned_alloc(align, size) }, Form::NewArrayAligned)
}

extern "C" fn new_aligned_nothrow_block(size: usize, align: usize) -> NewAnswer {
    // SAFETY: as above.
    answer(
        unsafe { aligned_alloc(align, size) },
        Form::NewAlignedNothrow,
    )
}

extern "C" fn new_array_aligned_nothrow_block(size: usize, align: usize) -> NewAnswer {
    // SAFETY: as above.
    answer(
        unsafe { aligned_alloc(align, size) },
        Form::NewArrayAlignedNothrow,
    )
}

/// The stub of one form: saves the argument registers the form uses (`push`, for the size only
/// `rdi`, else all three, an odd count so that the stack is 16-aligned at the call), calls the
/// Rust half, moves the fallback address to `r11` (not an argument register), restores them
/// (`pop`, the reverse order) and returns the block, or on failure jumps to the fallback.
macro_rules! stub {
    ($name:ident, $half:ident, push [$($push:literal),*], pop [$($pop:literal),*]) => {
        /// # Safety
        /// As the C++ operator of this name.
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C" fn $name() -> *mut c_void {
            core::arch::naked_asm!(
                ".cfi_startproc",
                $(concat!("push ", $push), ".cfi_adjust_cfa_offset 8",)*
                "call {half}",
                "mov r11, rdx",
                $(concat!("pop ", $pop), ".cfi_adjust_cfa_offset -8",)*
                "test rax, rax",
                "jz 2f",
                "ret",
                "2:",
                "jmp r11",
                ".cfi_endproc",
                half = sym $half,
            )
        }
    };
    ($name:ident, $half:ident, size only) => {
        stub!($name, $half, push ["rdi"], pop ["rdi"]);
    };
    ($name:ident, $half:ident, three) => {
        stub!($name, $half, push ["rdi", "rsi", "rdx"], pop ["rdx", "rsi", "rdi"]);
    };
}

stub!(_Znwm, new_block, size only);
stub!(_Znam, new_array_block, size only);
stub!(_ZnwmRKSt9nothrow_t, new_nothrow_block, three);
stub!(_ZnamRKSt9nothrow_t, new_array_nothrow_block, three);
stub!(_ZnwmSt11align_val_t, new_aligned_block, three);
stub!(_ZnamSt11align_val_t, new_array_aligned_block, three);
stub!(
    _ZnwmSt11align_val_tRKSt9nothrow_t,
    new_aligned_nothrow_block,
    three
);
stub!(
    _ZnamSt11align_val_tRKSt9nothrow_t,
    new_array_aligned_nothrow_block,
    three
);
