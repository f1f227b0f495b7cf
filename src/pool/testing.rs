//! Hooks for the crash and write-back tests: a process can be told to kill itself at the Nth
//! step of the pool's protocol (every lock taken, log word written, store applied, lock
//! released is a step), and publish can be told to write back too little so that the
//! `check_flush` debug mode is seen to catch it, or leave no debt for a dead node's host so
//! that its reader-side shadow is seen to catch that. Off unless a test turns them on.

use core::sync::atomic::{AtomicU64, Ordering};

static STEPS: AtomicU64 = AtomicU64::new(0);
static DIE_AT: AtomicU64 = AtomicU64::new(0);
static SHORT_FLUSH: AtomicU64 = AtomicU64::new(0);
static FORGET_DEBTS: AtomicU64 = AtomicU64::new(0);

/// Kill this process (SIGKILL, no clean-up of any kind) at step `n` from now (1 = the next
/// step); 0 turns it off.
pub fn die_at_step(n: u64) {
    STEPS.store(0, Ordering::Relaxed);
    DIE_AT.store(n, Ordering::Relaxed);
}

/// Steps taken since `die_at_step` (to learn how many steps an operation has).
pub fn steps() -> u64 {
    STEPS.load(Ordering::Relaxed)
}

/// Make publish write back `bytes` fewer bytes of the space than it must.
pub fn short_flush(bytes: u64) {
    SHORT_FLUSH.store(bytes, Ordering::Relaxed);
}

/// Break the cache protocol on purpose: a node found dead from another host leaves no debt
/// for its host (so the `check_flush` shadow must catch the stale read that follows).
pub fn forget_debts(on: bool) {
    FORGET_DEBTS.store(on as u64, Ordering::Relaxed);
}

pub(crate) fn debts_forgotten() -> bool {
    FORGET_DEBTS.load(Ordering::Relaxed) != 0
}

pub(crate) fn short_flush_bytes() -> u64 {
    SHORT_FLUSH.load(Ordering::Relaxed)
}

/// One step of the protocol.
#[inline]
pub(crate) fn step() {
    let n = STEPS.fetch_add(1, Ordering::Relaxed) + 1;
    if n == DIE_AT.load(Ordering::Relaxed) {
        // SAFETY: killing ourselves; no preconditions.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

static STALL_IN_PUBLISH_NS: AtomicU64 = AtomicU64::new(0);
static STALL_STARTS: std::sync::Mutex<Option<fn()>> = std::sync::Mutex::new(None);

/// Make the next commits call `starting` and then burn `cpu_ns` of this thread's CPU time
/// (0: off) right after a directory entry's publish word goes BUSY: the pool lock is held and
/// the entry is being rewritten, so other processes wait for the lock and readers for the
/// entry. The real-time wait tests use it: a holder that needs the CPU to finish, and tells a
/// waiter when to start.
pub fn stall_in_publish(cpu_ns: u64, starting: fn()) {
    *STALL_STARTS.lock().unwrap_or_else(|e| e.into_inner()) = Some(starting);
    STALL_IN_PUBLISH_NS.store(cpu_ns, Ordering::Relaxed);
}

/// Burns the CPU time `stall_in_publish` asked for, if any (called with the entry BUSY).
pub(crate) fn stall_if_asked() {
    let ns = STALL_IN_PUBLISH_NS.load(Ordering::Relaxed);
    if ns == 0 {
        return;
    }
    if let Some(starting) = *STALL_STARTS.lock().unwrap_or_else(|e| e.into_inner()) {
        starting();
    }
    let cpu_now = || crate::os::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
    let until = cpu_now() + ns;
    while cpu_now() < until {
        core::hint::spin_loop();
    }
}

/// Takes the pool lock, runs `held`, releases the lock: for the hand-off benchmark and the
/// real-time tests (the lock itself is the crate's).
pub fn with_lock(pool: &super::Pool, held: impl FnOnce()) -> std::io::Result<()> {
    let locked = pool.lock().map_err(std::io::Error::from_raw_os_error)?;
    held();
    drop(locked);
    Ok(())
}
