//! The `TIERMALLOC_*` variables a user exported are for the programs the command runs, not for
//! the command itself. The command links the library (its `malloc` is the library's), and the
//! library reads its configuration from the environment before `main`: with
//! `TIERMALLOC_TIERS` naming a persistent tier exported, `tiermalloc inspect` opened that tier
//! itself and called its heap "not closed (open now)", `check --repair` refused it as "in use
//! by a running process", and the program `tiermalloc run` started found its tier "in use by
//! another process" (the command) and ran without it.
//!
//! So a constructor that runs before the library's takes those variables out of `environ`
//! (glibc runs `.init_array` entries with a priority before those without, as the library's
//! start-up hook is) and holds them; `run` gives them back to its program. `TIERMALLOC_LIB`,
//! which only the command reads, stays.

use std::ffi::{c_char, CStr, OsStr};
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

extern "C" {
    static mut environ: *mut *const c_char;
}

/// Whether the entry `NAME=value` configures the library.
fn configures_the_library(entry: &[u8]) -> bool {
    entry.starts_with(b"TIERMALLOC_") && !entry.starts_with(b"TIERMALLOC_LIB=")
}

/// Moves the library's variables out of `environ` into `HELD`, keeping the others in order.
extern "C" fn hold() {
    // SAFETY: before `main`, one thread: nothing else reads or writes `environ` or `HELD`.
    // `environ` is null or a null-terminated array of NUL-terminated strings; removing entries
    // and moving the terminator down keeps it so (as `unsetenv` does, without allocating).
    unsafe {
        let env = environ;
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

/// Before the library's start-up hook (an `.init_array` entry without priority) and after
/// std's own (priority 99, which records the arguments).
#[used]
#[link_section = ".init_array.00100"]
static HOLD: extern "C" fn() = hold;

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
