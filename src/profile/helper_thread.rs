//! The profile's helper threads (the DRAM reserve's pre-fault thread, the device tiers' fill
//! thread), started waiting in the library's constructor before the tiers open, and released
//! (or dismissed) once the profile knows what to reserve.
//!
//! Why before the tiers open: `pthread_create` allocates the new thread's TLS vector with
//! `malloc`, and glibc keeps it for the process's life. Once a device tier serves plain
//! `malloc`, that block would land there, and a persistent heap would keep it: a block that a
//! run without a reserve does not leave (`tests/profile.rs`,
//! `a_persistent_tier_recovers_the_same_after_an_unused_reserve`, failed with the fill thread
//! started after the tiers opened). Before the tiers open, it is DRAM's.
//!
//! Invariant: `go` goes `WAIT` -> `RUN` or `EXIT`, once, after `spawn`; the thread runs its
//! body only on `RUN`. Nothing here allocates.

use crate::futex;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

const WAIT: u32 = 0;
const RUN: u32 = 1;
const EXIT: u32 = 2;

/// A thread started waiting, running `body` once released.
pub(crate) struct HelperThread {
    go: AtomicU32,
    started: AtomicBool,
}

impl HelperThread {
    pub(crate) const fn new() -> HelperThread {
        HelperThread {
            go: AtomicU32::new(WAIT),
            started: AtomicBool::new(false),
        }
    }

    /// Starts the thread (waiting); `trampoline` must call `self.wait_for_go()` first and run
    /// its body only if that returns true. The errno of `pthread_create` if it did not start.
    pub(crate) fn spawn(
        &'static self,
        trampoline: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
    ) -> Result<(), i32> {
        let mut thread: libc::pthread_t = 0;
        // SAFETY: `trampoline` takes no argument and touches only statics; default attributes.
        let e = unsafe {
            libc::pthread_create(
                &mut thread,
                core::ptr::null(),
                trampoline,
                core::ptr::null_mut(),
            )
        };
        if e != 0 {
            return Err(e);
        }
        // SAFETY: a thread we created and never join.
        unsafe { libc::pthread_detach(thread) };
        self.started.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the thread was started (whatever it does now).
    pub(crate) fn was_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Whether the thread was started (and not yet released or dismissed: it waits).
    pub(crate) fn is_waiting(&self) -> bool {
        self.started.load(Ordering::Acquire) && self.go.load(Ordering::Acquire) == WAIT
    }

    /// Lets the thread run its body.
    pub(crate) fn release(&self) {
        self.set(RUN);
    }

    /// Lets the thread end without running its body.
    pub(crate) fn dismiss(&self) {
        self.set(EXIT);
    }

    fn set(&self, what: u32) {
        if self
            .go
            .compare_exchange(WAIT, what, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            futex::wake_all(&self.go);
        }
    }

    /// In the thread: waits until released (true) or dismissed (false).
    pub(crate) fn wait_for_go(&self) -> bool {
        loop {
            match self.go.load(Ordering::Acquire) {
                WAIT => futex::wait_while_equal(&self.go, WAIT),
                RUN => return true,
                _ => return false,
            }
        }
    }
}
