//! The heartbeat thread: refreshes the owner record (`persist::owner`) of every device tier
//! this process opened on device memory another host could map (`persist::owner::beats`),
//! every quarter lease, so that such a host sees the owner alive. Started once at start-up
//! (`front::runtime`, after the tiers opened), never on a malloc path; only when some tier has a
//! record. A plain `pthread_create` with a function that allocates nothing. A forked child has no
//! such thread (it owns no tier: its parent does).

use super::persist::owner::LEASE_MS;
use core::sync::atomic::{AtomicBool, Ordering};

static STARTED: AtomicBool = AtomicBool::new(false);

/// Starts the thread if a tier needs it and it is not running. Says so in one line if the
/// thread cannot start (the tiers then look dead to other hosts after a lease).
pub fn start() {
    let mut needed = false;
    super::for_each_device(|tier| needed |= tier.needs_heartbeat());
    if !needed || STARTED.swap(true, Ordering::AcqRel) {
        return;
    }
    spawn_beat();
}

/// Starts the heartbeat thread: out of line and cold, so that the code every process runs
/// (link/hot_text.ld) holds only the check above.
#[cold]
#[inline(never)]
fn spawn_beat() {
    let mut thread: libc::pthread_t = 0;
    // SAFETY: `beat` takes no argument and touches only the opened tiers; default attributes.
    let r = unsafe {
        libc::pthread_create(&mut thread, core::ptr::null(), beat, core::ptr::null_mut())
    };
    if r != 0 {
        let mut line = crate::os::LineBuf::new();
        use core::fmt::Write;
        let _ = write!(
            line,
            "tiermalloc: the device tiers' heartbeat thread did not start"
        );
        crate::os::write_errno_text(&mut line, r);
        let _ = writeln!(
            line,
            "; other hosts will take the tiers for abandoned after {} s",
            LEASE_MS / 1000
        );
        line.flush();
        return;
    }
    // SAFETY: a thread we created and never join.
    unsafe { libc::pthread_detach(thread) };
}

extern "C" fn beat(_: *mut libc::c_void) -> *mut libc::c_void {
    let period = libc::timespec {
        tv_sec: (LEASE_MS / 4 / 1000) as libc::time_t,
        tv_nsec: ((LEASE_MS / 4 % 1000) * 1_000_000) as libc::c_long,
    };
    let mut lost = false;
    loop {
        // SAFETY: `period` is valid; an interrupted sleep just beats early.
        unsafe { libc::nanosleep(&period, core::ptr::null_mut()) };
        super::for_each_device(|tier| {
            if tier.needs_heartbeat() && !tier.heartbeat() && !lost {
                lost = true;
                let mut line = crate::os::LineBuf::new();
                use core::fmt::Write;
                let _ = writeln!(
                    line,
                    "tiermalloc: tier '{}': another process took over its device (this one's \
                     heartbeat was older than the lease); its blocks are no longer safe",
                    tier.kind.name()
                );
                line.flush();
            }
        });
    }
}
