//! The unwinder's entry points that Rust's standard library names, resolved on first use, so
//! that a `panic = "abort"` build of the shared library does not list `libgcc_s.so.1` as needed.
//!
//! Why: std is shipped compiled with unwinding, so its code names `_Unwind_Resume` (landing
//! pads), `_Unwind_Backtrace` and `_Unwind_GetIP` (backtraces) and the getters and setters its
//! personality routine uses, and the link adds `-lgcc_s` for them. With `panic = "abort"` none
//! of them runs unless a backtrace is printed, yet every process that preloads the library
//! mapped libgcc_s and touched 92 KiB of it (BENCHMARKS.md, "Session 9, branch rss"): a C
//! program's peak RSS grew by that much for nothing.
//!
//! How: this module defines each of those names as a *weak, hidden* symbol: a two-instruction
//! stub that jumps through a slot. A definition in the library's own object satisfies std's
//! references before the linker reaches `libgcc_s`, and `--as-needed` (rustc's default) then
//! drops it from `DT_NEEDED`. Hidden: the names are not exported, so the program's own C++
//! code keeps binding to the real unwinder. Weak: a static link of the `staticlib` with
//! `libgcc_eh.a` takes the archive's strong definitions instead of failing on duplicates.
//!
//! A slot is filled the first time its stub runs (`resolve`): the real function from the
//! process's global scope (`dlsym(RTLD_DEFAULT)`: libgcc_s, when a C++ runtime loaded it), or
//! else from `libgcc_s.so.1` loaded then with `dlopen`. Stubs *jump* to it with the caller's
//! arguments and return address untouched, so `_Unwind_Resume` and `_Unwind_Backtrace` see the
//! frames they would see when called directly, never one of ours. If no unwinder can be found
//! at all, one line on stderr and `abort` (only a backtrace or an unwind could get there, and
//! in this build both end in `abort` anyway).
//!
//! Built for Linux with glibc on x86_64, in every profile: a `panic = "unwind"` build (the
//! tests) still needs libgcc_s for `_Unwind_RaiseException`, and its panics and backtraces run
//! through these stubs, which is how the tests below exercise them. `tests/hot_text.rs`
//! (`no_unwinder_is_needed_for_an_abort_build`) checks the library's dynamic section.

use core::ffi::CStr;
use core::sync::atomic::{AtomicUsize, Ordering};

/// The names std refers to, in slot order (the stubs below use the same indices).
const NAMES: [&CStr; 10] = [
    c"_Unwind_Resume",
    c"_Unwind_Backtrace",
    c"_Unwind_GetIP",
    c"_Unwind_GetIPInfo",
    c"_Unwind_GetDataRelBase",
    c"_Unwind_GetTextRelBase",
    c"_Unwind_GetRegionStart",
    c"_Unwind_GetLanguageSpecificData",
    c"_Unwind_SetGR",
    c"_Unwind_SetIP",
];

/// The real function of each name, 0 until its stub first runs. Racing threads store the same
/// address, so relaxed order is enough (dlsym's own locking publishes the library's text).
static REAL: [AtomicUsize; 10] = [const { AtomicUsize::new(0) }; 10];

/// The real function of slot `index`, found and kept (see the module comment). Called by the
/// shared stub with the caller's argument registers saved; may allocate (dlopen), which is
/// fine: no lock of ours is held by a caller of the unwinder.
extern "C" fn resolve(index: usize) -> usize {
    let name = NAMES[index].as_ptr();
    // SAFETY: a NUL-terminated name; RTLD_DEFAULT searches the global scope, where these
    // hidden stubs are not visible.
    let mut found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name) } as usize;
    if found == 0 {
        // SAFETY: a NUL-terminated library name; the handle is kept for the process's life.
        let lib = unsafe { libc::dlopen(c"libgcc_s.so.1".as_ptr(), libc::RTLD_NOW) };
        if !lib.is_null() {
            // SAFETY: a handle dlopen returned and a NUL-terminated name.
            found = unsafe { libc::dlsym(lib, name) } as usize;
        }
    }
    if found == 0 {
        crate::os::write_stderr(
            b"tiermalloc: no unwinder (libgcc_s.so.1) for a backtrace or an unwind; aborting\n",
        );
        // SAFETY: abort has no preconditions.
        unsafe { libc::abort() }
    }
    REAL[index].store(found, Ordering::Relaxed);
    found
}

// The shared path: `rax` = the slot's index, `r11` = the slot. A filled slot is one jump; an
// empty one saves the six argument registers (six pushes plus the return address: the stack
// is 16-aligned at the call), asks `resolve`, restores them and jumps. No frame of ours stays
// on the stack when the real function runs.
core::arch::global_asm!(
    ".pushsection .text.tm_unwind_lazy,\"ax\",@progbits",
    ".p2align 4",
    ".local tm_unwind_lazy_common",
    ".type tm_unwind_lazy_common,@function",
    "tm_unwind_lazy_common:",
    ".cfi_startproc",
    "mov r10, qword ptr [r11]",
    "test r10, r10",
    "jz 2f",
    "jmp r10",
    "2:",
    "push rdi",
    ".cfi_adjust_cfa_offset 8",
    "push rsi",
    ".cfi_adjust_cfa_offset 8",
    "push rdx",
    ".cfi_adjust_cfa_offset 8",
    "push rcx",
    ".cfi_adjust_cfa_offset 8",
    "push r8",
    ".cfi_adjust_cfa_offset 8",
    "push r9",
    ".cfi_adjust_cfa_offset 8",
    "sub rsp, 8",
    ".cfi_adjust_cfa_offset 8",
    "mov rdi, rax",
    "call {resolve}",
    "add rsp, 8",
    ".cfi_adjust_cfa_offset -8",
    "pop r9",
    ".cfi_adjust_cfa_offset -8",
    "pop r8",
    ".cfi_adjust_cfa_offset -8",
    "pop rcx",
    ".cfi_adjust_cfa_offset -8",
    "pop rdx",
    ".cfi_adjust_cfa_offset -8",
    "pop rsi",
    ".cfi_adjust_cfa_offset -8",
    "pop rdi",
    ".cfi_adjust_cfa_offset -8",
    "jmp rax",
    ".cfi_endproc",
    ".size tm_unwind_lazy_common, .-tm_unwind_lazy_common",
    ".popsection",
    resolve = sym resolve,
);

/// One weak, hidden stub per name: its slot index in `rax`, the slot's address in `r11`.
macro_rules! lazy_stub {
    ($name:literal, $index:literal) => {
        core::arch::global_asm!(
            ".pushsection .text.tm_unwind_lazy,\"ax\",@progbits",
            ".p2align 4",
            concat!(".weak ", $name),
            concat!(".hidden ", $name),
            concat!(".type ", $name, ",@function"),
            concat!($name, ":"),
            ".cfi_startproc",
            concat!("mov eax, ", $index),
            concat!("lea r11, [rip + {real} + ", $index, " * 8]"),
            "jmp tm_unwind_lazy_common",
            ".cfi_endproc",
            concat!(".size ", $name, ", .-", $name),
            ".popsection",
            real = sym REAL,
        );
    };
}

lazy_stub!("_Unwind_Resume", 0);
lazy_stub!("_Unwind_Backtrace", 1);
lazy_stub!("_Unwind_GetIP", 2);
lazy_stub!("_Unwind_GetIPInfo", 3);
lazy_stub!("_Unwind_GetDataRelBase", 4);
lazy_stub!("_Unwind_GetTextRelBase", 5);
lazy_stub!("_Unwind_GetRegionStart", 6);
lazy_stub!("_Unwind_GetLanguageSpecificData", 7);
lazy_stub!("_Unwind_SetGR", 8);
lazy_stub!("_Unwind_SetIP", 9);

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A panic unwound through a frame with a destructor and caught: the personality routine's
    /// getters and setters and `_Unwind_Resume` all run through the stubs (a wrong slot jumps
    /// to the wrong function and the process dies).
    #[test]
    fn a_panic_unwinds_through_a_destructor_and_is_caught() {
        static DROPPED: AtomicUsize = AtomicUsize::new(0);
        struct Counted;
        impl Drop for Counted {
            fn drop(&mut self) {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
        #[inline(never)]
        fn inner() {
            let _c = Counted;
            std::hint::black_box(());
            panic!("unwound on purpose");
        }
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r = std::panic::catch_unwind(|| {
            let _outer = Counted;
            inner();
        });
        std::panic::set_hook(hook);
        assert!(r.is_err());
        assert_eq!(DROPPED.load(Ordering::Relaxed), 2);
    }

    /// A backtrace walks the stack through `_Unwind_Backtrace` and `_Unwind_GetIP(Info)`.
    #[test]
    fn a_backtrace_has_this_test_in_it() {
        let bt = std::backtrace::Backtrace::force_capture();
        let text = format!("{bt}");
        assert!(text.contains("a_backtrace_has_this_test_in_it"), "{text}");
    }
}
