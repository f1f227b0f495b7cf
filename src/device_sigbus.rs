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
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static INSTALLED: AtomicBool = AtomicBool::new(false);
/// The device layer's `DevicePath` (a tier's device now, which a move changes), as a
/// function address; 0 until `install`.
static DEVICE_PATH: AtomicUsize = AtomicUsize::new(0);

/// Writes the path of the file or device behind tier `kind` now into the buffer and returns
/// its length, or 0 if unknown. Must be async-signal-safe.
pub type DevicePath = fn(crate::kind::Kind, &mut [u8]) -> usize;
/// The disposition found when ours was installed; written once, before ours can run.
static mut PREVIOUS: core::mem::MaybeUninit<libc::sigaction> = core::mem::MaybeUninit::zeroed();

/// Installs the handler (once; called when a device tier has been opened). `device_path`
/// names a tier's device now, for the line.
pub fn install(device_path: DevicePath) {
    DEVICE_PATH.store(device_path as usize, Ordering::Release);
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
        // The device behind the tier now (after a move, not the configured path), else the
        // configured path.
        let mut now = [0u8; 256];
        let f = DEVICE_PATH.load(Ordering::Acquire);
        let now_len = if f == 0 {
            0
        } else {
            // SAFETY: `DEVICE_PATH` only ever holds a `DevicePath` (`install`).
            let f: DevicePath = unsafe { core::mem::transmute(f) };
            f(kind, &mut now)
        };
        let path = if now_len > 0 {
            core::str::from_utf8(&now[..now_len]).ok()
        } else {
            crate::config::get()
                .tiers()
                .iter()
                .find(|t| t.kind == kind)
                .and_then(|t| t.path())
                .and_then(|p| core::str::from_utf8(p).ok())
        }
        .unwrap_or("?");
        // Async-signal-safe: formatting into a stack buffer and one write(2).
        let mut line = os::LineBuf::new();
        let _ = writeln!(
            line,
            "tiermalloc: SIGBUS at {addr:#x} in tier '{}' ({path}): its file was truncated or its \
             storage is gone",
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

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" fn plain_handler(_: i32) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(42) }
    }

    extern "C" fn siginfo_handler(sig: i32, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // SAFETY: the siginfo the kernel passed to this handler.
        let from_fault = sig == libc::SIGBUS && unsafe { !(*info).si_addr().is_null() };
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(if from_fault { 43 } else { 1 }) }
    }

    /// A forked child installs `handler` (with `flags`), then ours over it (as a tier's
    /// opening would), and touches a mapping of a truncated file: the exit status the
    /// program's handler chose, if ours passed the signal on to it.
    fn child_status(handler: usize, flags: i32) -> i32 {
        let path = format!("/dev/shm/tiermalloc-sigbus-test-{}\0", std::process::id());
        // SAFETY: plain libc calls on a file of our own; the child uses only async-signal-safe
        // calls (sigaction, ftruncate, _exit) and memory mapped before the fork.
        unsafe {
            let fd = libc::open(path.as_ptr().cast(), libc::O_RDWR | libc::O_CREAT, 0o600);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, 4096), 0);
            let map = libc::mmap(
                core::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            libc::unlink(path.as_ptr().cast());
            let pid = libc::fork();
            if pid == 0 {
                let mut action: libc::sigaction = core::mem::zeroed();
                action.sa_sigaction = handler;
                action.sa_flags = flags;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(libc::SIGBUS, &action, core::ptr::null_mut());
                INSTALLED.store(false, Ordering::Relaxed);
                install(|_, _| 0);
                libc::ftruncate(fd, 0);
                core::ptr::write_volatile(map.cast::<u8>(), 1);
                libc::_exit(0);
            }
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            libc::munmap(map, 4096);
            libc::close(fd);
            status
        }
    }

    #[test]
    fn sigbus_reaches_the_handler_the_program_installed_before() {
        let status = child_status(plain_handler as *const () as usize, 0);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 42,
            "status {status:#x}"
        );
        let status = child_status(siginfo_handler as *const () as usize, libc::SA_SIGINFO);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 43,
            "status {status:#x}"
        );
    }

    #[test]
    fn without_a_handler_of_the_program_sigbus_keeps_its_default_action() {
        let status = child_status(libc::SIG_DFL, 0);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGBUS,
            "status {status:#x}"
        );
    }
}
