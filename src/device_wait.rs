//! Waiting for another process, on this host or another, through a word of shared device
//! memory (the pool lock, a directory entry being rewritten): a short spin, then sleeps of at
//! most `SLEEP_NS` each, until the caller sees what it waits for.
//!
//! Why not spin or `sched_yield` until then: a `SCHED_FIFO` waiter never lets a process of
//! lower priority run on its CPU, nor one of equal priority that was preempted there, and
//! `sched_yield` yields only to the caller's own priority; if the holder is such a process,
//! the wait never ends. A sleep lets it run (as `futex` does for the threads of one process).
//!
//! Correctness is in the device atomics alone: the sleep is only a hint. Each sleep is a
//! FUTEX_WAIT on the device word itself without FUTEX_PRIVATE_FLAG, so the kernel keys it on
//! the file page, and a process of this host that changes the word and calls `wake_all` ends
//! it at once, whatever address each process mapped the pool at. A process on another host
//! cannot wake us: the waiter looks again after at most `SLEEP_NS`, which is also all a lost
//! wake costs. Where the kernel cannot sleep on the memory (a PCI BAR has no pages: EFAULT),
//! the sleep is a plain `nanosleep` of `SLEEP_NS`.
//!
//! Owns only the wait's policy; the words belong to their callers. Nothing here allocates.

use core::sync::atomic::{AtomicU32, AtomicU64};

/// Rounds spent spinning before the first sleep: the usual case, a holder running on another
/// CPU that finishes a critical section of a few stores, ends within them (each round is one
/// `pause` after the caller's own check) and costs no system call.
const SPINS: u32 = 100;

/// The longest sleep: how late a waiter notices a change made by another host (or a wake
/// lost), and how often it re-checks a holder's liveness at most.
pub(crate) const SLEEP_NS: i64 = 1_000_000;

/// A wait in progress: the rounds done so far. Invariant: `rounds < SPINS` means spinning.
pub(crate) struct DeviceWait {
    rounds: u32,
}

impl DeviceWait {
    pub(crate) const fn new() -> DeviceWait {
        DeviceWait { rounds: 0 }
    }

    /// Rounds waited so far.
    pub(crate) fn rounds(&self) -> u32 {
        self.rounds
    }

    /// Sleeps done so far (0 while spinning).
    pub(crate) fn sleeps(&self) -> u32 {
        self.rounds.saturating_sub(SPINS)
    }

    /// Whether the next `pause` sleeps: a lock's waiter announces itself before it (so that
    /// the holder's release wakes it).
    pub(crate) fn sleeps_next(&self) -> bool {
        self.rounds >= SPINS
    }

    /// One round, after the caller found `word` holding `seen`, which is not what it waits
    /// for: a `pause` while spinning, then a sleep that ends at once if the word no longer
    /// holds `seen`, on a `wake_all`, or after `SLEEP_NS`. The caller checks again and loops.
    pub(crate) fn pause(&mut self, word: &AtomicU64, seen: u64) {
        self.rounds = self.rounds.saturating_add(1);
        if self.rounds <= SPINS {
            core::hint::spin_loop();
            return;
        }
        sleep_on(word, seen, SLEEP_NS);
    }
}

/// One sleep of at most `nanos` (< 1 s) while `word` holds `seen`.
fn sleep_on(word: &AtomicU64, seen: u64, nanos: i64) {
    if !crate::futex::sleep_shared_while_equal_at_most(low_half(word), seen as u32, nanos) {
        let nap = libc::timespec {
            tv_sec: 0,
            tv_nsec: nanos,
        };
        // SAFETY: `nap` is a valid relative time; the remainder is not asked for.
        unsafe { libc::nanosleep(&nap, core::ptr::null_mut()) };
    }
}

/// Wakes the processes of this host sleeping on `word`; call it after changing the word.
pub(crate) fn wake_all(word: &AtomicU64) {
    crate::futex::wake_all_shared(low_half(word));
}

/// The half of `word` that holds its low 32 bits: the futex compares and keys 32-bit words.
/// Both users' words change there on every change waited for (a lock tag's slot byte, a
/// publish word's state byte).
fn low_half(word: &AtomicU64) -> &AtomicU32 {
    let offset = if cfg!(target_endian = "little") { 0 } else { 1 };
    // SAFETY: an AtomicU64 is 8 bytes, 8-aligned, so each of its 4-byte halves is a valid,
    // aligned AtomicU32 for the same lifetime; both are only ever accessed atomically (the
    // kernel reads the half atomically).
    unsafe { &*(word.as_ptr() as *const AtomicU32).add(offset) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    /// A sleeper on a word of a shared file mapping is woken by another process's change and
    /// `wake_all`, long before its timeout (900 ms here, so only a wake ends it early).
    #[test]
    fn a_wake_from_another_process_ends_the_sleep() {
        // SAFETY: a new shared anonymous mapping (shared with the forked child, and a
        // shared-memory page to the kernel, as a pool file's is).
        let page = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(page, libc::MAP_FAILED);
        // SAFETY: the page is 8-aligned, mapped for the test's life, accessed only atomically.
        let word = unsafe { &*(page as *const AtomicU64) };
        word.store(1, Ordering::Release);
        const ROUNDS: u64 = 3;
        // SAFETY: fork in a test: the child only waits on the word, stores and exits.
        let child = unsafe { libc::fork() };
        if child == 0 {
            for round in 1..=ROUNDS {
                while word.load(Ordering::Acquire) != round * 2 {
                    core::hint::spin_loop();
                }
                std::thread::sleep(Duration::from_millis(20)); // let the parent fall asleep
                word.store(round * 2 + 1, Ordering::Release);
                wake_all(word);
            }
            // SAFETY: ends the forked child without running the parent's exit handlers.
            unsafe { libc::_exit(0) };
        }
        let mut slowest = Duration::ZERO;
        for round in 1..=ROUNDS {
            word.store(round * 2, Ordering::Release);
            let start = Instant::now();
            while word.load(Ordering::Acquire) == round * 2 {
                sleep_on(word, round * 2, 900_000_000);
            }
            slowest = slowest.max(start.elapsed());
        }
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(child, &mut status, 0) };
        assert_eq!(status, 0);
        assert!(
            slowest < Duration::from_millis(600),
            "a sleep ran to its timeout: the other process's wake did not reach it ({slowest:?})"
        );
    }
}
