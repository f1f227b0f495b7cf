//! Initial-exec thread-local words for the fast paths, and the pthread key whose destructor
//! tells us a thread is exiting.
//!
//! glibc requires an interposed malloc to use initial-exec TLS: the general-dynamic model that
//! Rust gives a cdylib goes through `__tls_get_addr`, which may itself call `malloc`. Stable
//! Rust cannot choose the TLS model, so on x86_64 `initial_exec_word!` declares the word in
//! assembly in `.tdata` and reads it through a `@GOTTPOFF` relocation, exactly what a C
//! compiler emits for `__attribute__((tls_model("initial-exec")))`. Other targets use a
//! const-initialised, destructor-free `thread_local!`.
//!
//! A word starts, in every thread, as the address of a static the caller names, so that the
//! value read on the fast path is always a valid pointer and needs no null check. (The loader
//! applies the relocation to the TLS image before it copies the image into any thread.)

/// Declares `mod $module` with `get() -> usize` and `set(usize)` for one word of
/// initial-exec TLS named `$symbol`, which holds the address of the static `$initial` until
/// the thread first sets it. `$initial` must be a path that resolves from inside `$module`
/// (e.g. `crate::...`). The form `value = N` starts the word at the non-zero constant `N`
/// instead.
macro_rules! initial_exec_word {
    ($module:ident, $symbol:literal, value = $value:expr) => {
        $crate::thread_slot::initial_exec_word!(@word $module, $symbol, (const $value), ($value));
    };
    ($module:ident, $symbol:literal, $initial:path) => {
        $crate::thread_slot::initial_exec_word!(
            @word $module, $symbol, (sym $initial), (core::ptr::addr_of!($initial) as usize)
        );
    };
    (@word $module:ident, $symbol:literal, ($($initial:tt)*), ($fallback:expr)) => {
        #[cfg(target_arch = "x86_64")]
        mod $module {
            core::arch::global_asm!(
                concat!(".pushsection .tdata.", $symbol, ",\"awT\",@progbits"),
                ".p2align 3",
                concat!(".globl ", $symbol),
                concat!(".hidden ", $symbol),
                concat!(".type ", $symbol, ",@object"),
                concat!(".size ", $symbol, ",8"),
                concat!($symbol, ":"),
                ".quad {initial}",
                ".popsection",
                initial = $($initial)*,
            );

            #[inline(always)]
            pub fn get() -> usize {
                let value: usize;
                // SAFETY: reads this thread's copy of the 8-byte TLS word declared above; the
                // GOT entry holds its offset from the thread pointer (fs).
                unsafe {
                    core::arch::asm!(
                        concat!("mov {v}, qword ptr [rip + ", $symbol, "@GOTTPOFF]"),
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
                        concat!("mov {t}, qword ptr [rip + ", $symbol, "@GOTTPOFF]"),
                        "mov qword ptr fs:[{t}], {v}",
                        t = out(reg) _,
                        v = in(reg) value,
                        options(nostack, preserves_flags),
                    );
                }
            }
        }

        #[cfg(not(target_arch = "x86_64"))]
        mod $module {
            use core::cell::Cell;
            thread_local! {
                /// 0 stands for the initial value (a static's address, which a const
                /// initialiser cannot turn into an integer).
                static WORD: Cell<usize> = const { Cell::new(0) };
            }
            #[inline(always)]
            pub fn get() -> usize {
                match WORD.with(|w| w.get()) {
                    0 => $fallback,
                    value => value,
                }
            }
            #[inline(always)]
            pub fn set(value: usize) {
                WORD.with(|w| w.set(value))
            }
        }
    };
}
pub(crate) use initial_exec_word;

use crate::futex;
use core::ffi::c_void;
use core::sync::atomic::{AtomicU32, Ordering};

const KEY_NONE: u32 = u32::MAX;
const KEY_BUSY: u32 = u32::MAX - 1;

/// A pthread key created on first use, whose destructor is the function its first
/// `call_at_exit` names (each user with its own destructor needs its own key).
pub struct ExitKey(AtomicU32);

static EXIT_KEY: ExitKey = ExitKey::new();

/// `EXIT_KEY.call_at_exit` (the DRAM heaps' key).
pub fn call_at_exit(value: *mut c_void, on_exit: unsafe extern "C" fn(*mut c_void)) -> bool {
    EXIT_KEY.call_at_exit(value, on_exit)
}

impl ExitKey {
    pub const fn new() -> ExitKey {
        ExitKey(AtomicU32::new(KEY_NONE))
    }

    /// Arranges for `on_exit(value)` to run when this thread exits (pthread key destructor;
    /// glibc runs them up to four rounds while values are re-set). The first call creates the
    /// key; a concurrent first call waits for it, sleeping in the kernel after a short spin
    /// (a spinning SCHED_FIFO waiter would keep the creator from running on its CPU). Returns
    /// false if no key could be created.
    pub fn call_at_exit(
        &self,
        value: *mut c_void,
        on_exit: unsafe extern "C" fn(*mut c_void),
    ) -> bool {
        let exit_key = &self.0;
        let key = loop {
            match exit_key.load(Ordering::Acquire) {
                KEY_NONE => {
                    if exit_key
                        .compare_exchange(KEY_NONE, KEY_BUSY, Ordering::Acquire, Ordering::Relaxed)
                        .is_err()
                    {
                        continue;
                    }
                    let mut key: libc::pthread_key_t = 0;
                    // SAFETY: `key` is a valid out-pointer; the destructor is a plain function.
                    let rc = unsafe { libc::pthread_key_create(&mut key, Some(on_exit)) };
                    if rc != 0 || key >= KEY_BUSY {
                        exit_key.store(KEY_NONE, Ordering::Release);
                        futex::wake_all(exit_key);
                        return false;
                    }
                    exit_key.store(key, Ordering::Release);
                    futex::wake_all(exit_key);
                    break key;
                }
                KEY_BUSY => futex::wait_while_equal(exit_key, KEY_BUSY),
                key => break key,
            }
        };
        // SAFETY: `key` was created above; setspecific stores a pointer-sized value.
        unsafe { libc::pthread_setspecific(key, value) == 0 }
    }
}
