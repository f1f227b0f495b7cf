//! One word of thread-local storage per thread (the thread's heap), read with the initial-exec
//! TLS model, and the pthread key whose destructor tells us a thread is exiting.
//!
//! glibc requires an interposed malloc to use initial-exec TLS: the general-dynamic model that
//! Rust gives a cdylib goes through `__tls_get_addr`, which may itself call `malloc`. Stable
//! Rust cannot choose the TLS model, so on x86_64 the word is declared in assembly in `.tbss`
//! and read through a `@GOTTPOFF` relocation, exactly what a C compiler emits for
//! `__attribute__((tls_model("initial-exec")))`. Other targets use a const-initialised,
//! destructor-free `thread_local!`.
//!
//! The slot holds 0 until the thread gets a heap. The pthread key is registered only after the
//! slot is set, so that an allocation made by `pthread_setspecific` itself finds a usable heap.

use core::ffi::c_void;
use core::sync::atomic::{AtomicU32, Ordering};

#[cfg(target_arch = "x86_64")]
mod word {
    core::arch::global_asm!(
        ".pushsection .tbss.tiermalloc_thread_word,\"awT\",@nobits",
        ".p2align 3",
        ".globl __tiermalloc_thread_word",
        ".hidden __tiermalloc_thread_word",
        ".type __tiermalloc_thread_word,@object",
        ".size __tiermalloc_thread_word,8",
        "__tiermalloc_thread_word:",
        ".zero 8",
        ".popsection",
    );

    #[inline(always)]
    pub fn get() -> usize {
        let value: usize;
        // SAFETY: reads this thread's copy of the 8-byte TLS word declared above; the GOT entry
        // holds its offset from the thread pointer (fs).
        unsafe {
            core::arch::asm!(
                "mov {v}, qword ptr [rip + __tiermalloc_thread_word@GOTTPOFF]",
                "mov {v}, qword ptr fs:[{v}]",
                v = out(reg) value,
                options(nostack, readonly, preserves_flags, pure),
            );
        }
        value
    }

    #[inline(always)]
    pub fn set(value: usize) {
        // SAFETY: writes this thread's copy of the TLS word declared above.
        unsafe {
            core::arch::asm!(
                "mov {t}, qword ptr [rip + __tiermalloc_thread_word@GOTTPOFF]",
                "mov qword ptr fs:[{t}], {v}",
                t = out(reg) _,
                v = in(reg) value,
                options(nostack, preserves_flags),
            );
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod word {
    use core::cell::Cell;
    thread_local! {
        static WORD: Cell<usize> = const { Cell::new(0) };
    }
    #[inline(always)]
    pub fn get() -> usize {
        WORD.with(|w| w.get())
    }
    #[inline(always)]
    pub fn set(value: usize) {
        WORD.with(|w| w.set(value))
    }
}

/// This thread's word (0 until set).
#[inline(always)]
pub fn get() -> usize {
    word::get()
}

/// Sets this thread's word.
#[inline(always)]
pub fn set(value: usize) {
    word::set(value)
}

const KEY_NONE: u32 = u32::MAX;
const KEY_BUSY: u32 = u32::MAX - 1;
static EXIT_KEY: AtomicU32 = AtomicU32::new(KEY_NONE);

/// Arranges for `on_exit(value)` to run when this thread exits (pthread key destructor; glibc
/// runs them up to four rounds while values are re-set). The first call creates the key; a
/// concurrent first call waits for it. Returns false if no key could be created.
pub fn call_at_exit(value: *mut c_void, on_exit: unsafe extern "C" fn(*mut c_void)) -> bool {
    let key = loop {
        match EXIT_KEY.load(Ordering::Acquire) {
            KEY_NONE => {
                if EXIT_KEY
                    .compare_exchange(KEY_NONE, KEY_BUSY, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                let mut key: libc::pthread_key_t = 0;
                // SAFETY: `key` is a valid out-pointer; the destructor is a plain function.
                let rc = unsafe { libc::pthread_key_create(&mut key, Some(on_exit)) };
                if rc != 0 || key >= KEY_BUSY {
                    EXIT_KEY.store(KEY_NONE, Ordering::Release);
                    return false;
                }
                EXIT_KEY.store(key, Ordering::Release);
                break key;
            }
            KEY_BUSY => core::hint::spin_loop(),
            key => break key,
        }
    };
    // SAFETY: `key` was created above; setspecific stores a pointer-sized value.
    unsafe { libc::pthread_setspecific(key, value) == 0 }
}
