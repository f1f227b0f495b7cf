//! The `TIERMALLOC_*` variables a user exported are for the programs the command runs, not for
//! the command itself. The command links the library (its `malloc` is the library's), and the
//! library reads its configuration from the environment before `main`: with
//! `TIERMALLOC_TIERS` naming a persistent tier exported, `tiermalloc inspect` opened that tier
//! itself and called its heap "not closed (open now)", `check --repair` refused it as "in use
//! by a running process", and the program `tiermalloc run` started found its tier "in use by
//! another process" (the command) and ran without it.
//!
//! So a function that runs before the library's start-up takes those variables out of the
//! environment and holds them; `run` gives them back to its program. `TIERMALLOC_LIB`, which
//! only the command reads, stays. It is a `.preinit_array` entry: the dynamic loader runs those
//! of the executable before the constructors of every shared object. An `.init_array` entry
//! (the command's own copy of the library starts from one) came too late when the user had
//! also exported `LD_PRELOAD` of the library: the preloaded copy's constructor ran first and
//! opened the exported tiers in the command ("in use by another process" for its program).

use std::ffi::{c_char, c_int, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;

/// The most variables held; any beyond stay in the environment (the library has 18).
const MAX_HELD: usize = 64;

/// The held entries (`NAME=value`, pointers into the environment strings the kernel gave the
/// process, which stay valid for its life). Invariant: written only by `hold`, before `main`
/// and before any other thread exists; read-only afterwards.
struct Held {
    entries: [*const c_char; MAX_HELD],
    count: usize,
}

static mut HELD: Held = Held {
    entries: [std::ptr::null(); MAX_HELD],
    count: 0,
};

/// Whether the entry `NAME=value` configures the library.
fn configures_the_library(entry: &[u8]) -> bool {
    entry.starts_with(b"TIERMALLOC_") && !entry.starts_with(b"TIERMALLOC_LIB=")
}

/// Moves the library's variables out of the environment `env` (the array the kernel gave the
/// process, which libc's `environ` points to) into `HELD`, keeping the others in order.
extern "C" fn hold(_argc: c_int, _argv: *const *const c_char, env: *mut *const c_char) {
    // SAFETY: before any constructor, one thread: nothing else reads or writes the
    // environment or `HELD`. `env` is null or a null-terminated array of NUL-terminated
    // strings; removing entries and moving the terminator down keeps it so (as `unsetenv`
    // does, without allocating).
    unsafe {
        if env.is_null() {
            return;
        }
        let held = &mut *std::ptr::addr_of_mut!(HELD);
        let (mut read, mut write) = (0, 0);
        loop {
            let entry = *env.add(read);
            if entry.is_null() {
                break;
            }
            if held.count < MAX_HELD && configures_the_library(CStr::from_ptr(entry).to_bytes()) {
                held.entries[held.count] = entry;
                held.count += 1;
            } else {
                *env.add(write) = entry;
                write += 1;
            }
            read += 1;
        }
        *env.add(write) = std::ptr::null();
    }
}

/// Before every constructor: the library's start-up hook, in this executable or preloaded, and
/// std's (which records the arguments, not the environment). glibc passes a preinit function
/// the arguments and the environment.
#[used]
#[link_section = ".preinit_array"]
static HOLD: extern "C" fn(c_int, *const *const c_char, *mut *const c_char) = hold;

/// The variables taken out of the command's environment, as (name, value), for `run` to give
/// its program.
pub fn held() -> impl Iterator<Item = (&'static OsStr, &'static OsStr)> {
    // SAFETY: `HELD` is read-only after `hold` (invariant); its entries are NUL-terminated
    // strings that live as long as the process.
    let held = unsafe { &*std::ptr::addr_of!(HELD) };
    held.entries[..held.count].iter().map(|&entry| {
        // SAFETY: as above.
        let bytes = unsafe { CStr::from_ptr(entry) }.to_bytes();
        let eq = bytes.iter().position(|&b| b == b'=').unwrap_or(bytes.len());
        let value = bytes.get(eq + 1..).unwrap_or(&[]);
        (OsStr::from_bytes(&bytes[..eq]), OsStr::from_bytes(value))
    })
}
