//! SIGBUS from a device tier: a tier file that was truncated (or whose storage went away)
//! under a live mapping faults with SIGBUS at the next touch, which the kernel delivers as a
//! bare "Bus error". With a device tier open, a handler says which tier, in one line, and then
//! lets the signal take its course: the program's own handler if one was installed before the
//! tiers were opened, else the default action (the fault repeats with the default disposition
//! restored, and the process dies of SIGBUS, with a core dump if enabled). A SIGBUS outside
//! every tier goes the same way without a line.
//!
//! A handler the program installs later replaces this one, as it should.

use crate::os;
use crate::pagemap;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};

static INSTALLED: AtomicBool = AtomicBool::new(false);
/// The disposition found when ours was installed; written once, before ours can run.
static mut PREVIOUS: core::mem::MaybeUninit<libc::sigaction> = core::mem::MaybeUninit::zeroed();

/// Installs the handler (once; called when a device tier has been opened).
pub fn install() {
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: all-zero is a valid sigaction; the handler has the SA_SIGINFO signature;
    // PREVIOUS is written here, before the handler can run, and never again.
    unsafe {
        let mut action: libc::sigaction = core::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(
            libc::SIGBUS,
            &action,
            core::ptr::addr_of_mut!(PREVIOUS).cast(),
        );
    }
}

extern "C" fn on_sigbus(sig: i32, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    // The chunk holding `addr` is the owner chunk of `addr + 1`.
    if let pagemap::Owner::Device(kind) = pagemap::owner_of(addr.wrapping_add(1)) {
        let path = crate::config::get()
            .tiers()
            .iter()
            .find(|t| t.kind == kind)
            .and_then(|t| t.path())
            .and_then(|p| core::str::from_utf8(p).ok())
            .unwrap_or("?");
        // Async-signal-safe: formatting into a stack buffer and one write(2).
        let mut line = os::LineBuf::new();
        let _ = writeln!(
            line,
            "tiermalloc: SIGBUS at {addr:#x} in tier '{}' ({path}): its file was truncated or its storage is gone",
            kind.name()
        );
        line.flush();
    }
    // SAFETY: PREVIOUS was written before this handler was installed.
    let previous = unsafe { (*core::ptr::addr_of!(PREVIOUS)).assume_init_ref() };
    let handler = previous.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // A fault cannot be ignored: back to the default, and the faulting access repeats.
        // SAFETY: all-zero is SIG_DFL with an empty mask.
        unsafe {
            let mut default: libc::sigaction = core::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGBUS, &default, core::ptr::null_mut());
        }
    } else if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the program installed this function with the SA_SIGINFO signature.
        let f: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { core::mem::transmute(handler) };
        f(sig, info, context);
    } else {
        // SAFETY: the program installed this function with the plain signature.
        let f: extern "C" fn(i32) = unsafe { core::mem::transmute(handler) };
        f(sig);
    }
}
