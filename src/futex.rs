//! Waiting for another thread of this process without starving it: a short spin, then a sleep
//! in the kernel (a private futex) until the word changes.
//!
//! A pure spin-wait (or a `sched_yield` loop) is a livelock for real-time threads: a
//! `SCHED_FIFO` waiter never gives its CPU to a holder of lower priority on the same CPU, nor to
//! one of equal priority that was preempted or slept there, and `sched_yield` only yields to
//! threads of the caller's own priority. Sleeping in the kernel lets whichever thread the
//! waiter waits for run, as glibc's and mimalloc's locks do. The spin comes first because the
//! usual case, a holder running on another CPU, ends within it and costs no system call.
//!
//! The same two calls exist for a word in memory shared with other processes (`*_shared`: no
//! FUTEX_PRIVATE_FLAG, so the kernel keys the sleep on the mapped page, and every process
//! mapping that file page meets on it); `device_wait` builds the waits on device memory on
//! them.
//!
//! Owns nothing but these calls; the words belong to their callers. Nothing here allocates.

use core::sync::atomic::{AtomicU32, Ordering};

/// Spins before the first sleep: about a microsecond of `pause`, far more than the few stores
/// the callers' critical sections take when their holder is running.
const SPINS: u32 = 100;

/// Returns once `word` no longer holds `value` (read with Acquire). Spins briefly, then sleeps
/// until a `wake_all` on the word; whoever changes the word must call `wake_all` after.
pub(crate) fn wait_while_equal(word: &AtomicU32, value: u32) {
    for _ in 0..SPINS {
        if word.load(Ordering::Acquire) != value {
            return;
        }
        core::hint::spin_loop();
    }
    // A change made before a sleep is never slept through (the kernel compares first);
    // EINTR and spurious wake-ups loop to the check.
    while word.load(Ordering::Acquire) == value {
        sleep_if_equal(word, value, None);
    }
}

/// Sleeps until a wake on `word`, or `nanos` have passed, unless `word` no longer holds `value`
/// (then it returns at once). One sleep: the caller checks its condition and loops.
pub(crate) fn sleep_while_equal_at_most(word: &AtomicU32, value: u32, nanos: i64) {
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: nanos,
    };
    sleep_if_equal(word, value, Some(&timeout));
}

/// `sleep_while_equal_at_most` for a word other processes map too (a shared file mapping):
/// a `wake_all_shared` on the same file page from any process of this host ends the sleep.
/// False if the kernel cannot sleep on this memory (a PCI BAR or other mapping without pages
/// answers EFAULT): the caller must sleep otherwise.
pub(crate) fn sleep_shared_while_equal_at_most(word: &AtomicU32, value: u32, nanos: i64) -> bool {
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: nanos,
    };
    let refused = sleep_with(word, value, Some(&timeout), libc::FUTEX_WAIT) != 0
        && !matches!(
            crate::os::errno(),
            libc::ETIMEDOUT | libc::EAGAIN | libc::EINTR
        );
    !refused
}

/// One FUTEX_WAIT on `word` while it holds `value`, for at most `timeout` (relative) if given.
/// Returns on a wake, at once if the word no longer holds `value` (EAGAIN), on a signal
/// (EINTR) or when the time is up (ETIMEDOUT): every caller re-checks its condition.
fn sleep_if_equal(word: &AtomicU32, value: u32, timeout: Option<&libc::timespec>) {
    sleep_with(
        word,
        value,
        timeout,
        libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
    );
}

/// The FUTEX_WAIT call (`op` private or not); the system call's result.
fn sleep_with(word: &AtomicU32, value: u32, timeout: Option<&libc::timespec>, op: i32) -> i64 {
    let timeout = timeout.map_or(core::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned u32 for the call, and `timeout` null or a valid
    // relative time that outlives it; FUTEX_WAIT only reads the word.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), op, value, timeout) }
}

/// Wakes every thread sleeping in `wait_while_equal` on `word`; call it after changing the word.
pub(crate) fn wake_all(word: &AtomicU32) {
    wake(word, i32::MAX);
}

/// Wakes one thread sleeping on `word` (in `wait_while_equal` or `sleep_while_equal_at_most`:
/// a lock's next holder).
pub(crate) fn wake_one(word: &AtomicU32) {
    wake(word, 1);
}

/// Wakes every process of this host sleeping in `sleep_shared_while_equal_at_most` on
/// `word` (the same file page and offset, whatever address each process mapped it at).
pub(crate) fn wake_all_shared(word: &AtomicU32) {
    wake_with(word, i32::MAX, libc::FUTEX_WAKE);
}

fn wake(word: &AtomicU32, threads: i32) {
    wake_with(word, threads, libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG);
}

fn wake_with(word: &AtomicU32, threads: i32, op: i32) {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE only wakes sleepers on its address
    // (an address the kernel cannot key answers EFAULT, which changes nothing).
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), op, threads);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use core::sync::atomic::AtomicU64;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    /// Pins the calling thread to CPU 0 and makes it SCHED_FIFO at `priority`; false if the
    /// system refuses (not root, no RT budget in this cgroup).
    pub(crate) fn fifo_on_cpu0(priority: i32) -> bool {
        // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and the calls get valid pointers
        // and act on the calling thread (0).
        unsafe {
            let mut set: libc::cpu_set_t = core::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            if libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return false;
            }
            let param = libc::sched_param {
                sched_priority: priority,
            };
            libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0
        }
    }

    /// Runs `low` on a thread at SCHED_FIFO 1 and then `high` on one at SCHED_FIFO 2, both
    /// pinned to CPU 0, and fails unless `high` returns within 2 s of becoming SCHED_FIFO.
    /// `high` waits for something `low` does, which `low` can only do while `high` sleeps: a
    /// spinning or yielding wait in `high` livelocks CPU 0. The calling thread (normal policy,
    /// any CPU) is the watchdog: past the deadline it calls `rescue` to end `high`'s wait, so a
    /// broken wait fails the test instead of holding CPU 0 for long. Skipped with a line where
    /// SCHED_FIFO is refused. Both threads are real-time before `high` waits, so neither needs
    /// the CFS time on CPU 0 that real-time throttling leaves.
    ///
    /// The time is taken by `high` itself, from its first instant at SCHED_FIFO to its return:
    /// only the two real-time threads run in that span, whatever the load. The watchdog and
    /// the spawns run at the caller's policy, which under `nice -n 19` beside busy programs
    /// can wait seconds for a CPU; they are timed by nothing (a watchdog that wakes late only
    /// rescues a broken wait later, which still fails).
    pub(crate) fn lower_priority_thread_on_cpu0_must_run(low: fn(), high: fn(), rescue: fn()) {
        static LOW_READY: AtomicU32 = AtomicU32::new(0); // 1 ready, 2 refused
                                                         // 0 not yet, 1 SCHED_FIFO, 2 refused.
        static HIGH_FIFO: AtomicU32 = AtomicU32::new(0);
        // `high`'s wait in microseconds, as `high`'s thread measured it.
        static HIGH_TOOK_US: AtomicU64 = AtomicU64::new(u64::MAX);
        // When `high` became SCHED_FIFO, in nanoseconds from `base` below, for the watchdog
        // (no lock: the watchdog, preempted holding one, would hold `high` up).
        static HIGH_STARTED_NS: AtomicU64 = AtomicU64::new(0);
        // One pair on CPU 0 at a time: the tests that call this run at once, and share the
        // statics above.
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        LOW_READY.store(0, Ordering::Release);
        HIGH_FIFO.store(0, Ordering::Release);
        HIGH_TOOK_US.store(u64::MAX, Ordering::Release);
        let low_thread = std::thread::spawn(move || {
            if !fifo_on_cpu0(1) {
                LOW_READY.store(2, Ordering::Release);
                return;
            }
            LOW_READY.store(1, Ordering::Release);
            low();
        });
        while LOW_READY.load(Ordering::Acquire) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        if LOW_READY.load(Ordering::Acquire) == 2 {
            low_thread.join().unwrap();
            eprintln!("skipped: SCHED_FIFO on CPU 0 refused (needs root and an RT budget)");
            return;
        }
        let base = Instant::now();
        let high_thread = std::thread::spawn(move || {
            let fifo = fifo_on_cpu0(2);
            let started = Instant::now();
            HIGH_STARTED_NS.store((started - base).as_nanos() as u64, Ordering::Relaxed);
            HIGH_FIFO.store(if fifo { 1 } else { 2 }, Ordering::Release);
            high();
            HIGH_TOOK_US.store(started.elapsed().as_micros() as u64, Ordering::Release);
        });
        let deadline = Duration::from_secs(2);
        // No bound on the spawn: the new thread runs at the caller's policy until it is
        // real-time.
        while HIGH_FIFO.load(Ordering::Acquire) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let started = base + Duration::from_nanos(HIGH_STARTED_NS.load(Ordering::Relaxed));
        while !high_thread.is_finished() && started.elapsed() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !high_thread.is_finished() {
            rescue();
        }
        high_thread.join().unwrap();
        low_thread.join().unwrap();
        assert_eq!(
            HIGH_FIFO.load(Ordering::Acquire),
            1,
            "the waiter could not become SCHED_FIFO"
        );
        let took = Duration::from_micros(HIGH_TOOK_US.load(Ordering::Acquire));
        assert!(
            took < deadline,
            "the SCHED_FIFO waiter kept CPU 0 from the thread it waited for for {took:?}"
        );
    }

    #[test]
    fn wakes_on_change_and_returns_at_once_when_changed() {
        static WORD: AtomicU32 = AtomicU32::new(1);
        wait_while_equal(&WORD, 0); // already different: no sleep
        let t = std::thread::spawn(|| wait_while_equal(&WORD, 1));
        std::thread::sleep(Duration::from_millis(20)); // let it reach the futex
        WORD.store(2, Ordering::Release);
        wake_all(&WORD);
        t.join().unwrap();
    }

    /// The case that motivated this module (issue 16): a SCHED_FIFO thread waits for a word
    /// that a lower-priority thread on its CPU is to change.
    #[test]
    fn a_fifo_waiter_lets_a_lower_priority_setter_on_its_cpu_run() {
        static WORD: AtomicU32 = AtomicU32::new(0);
        static WAITING: AtomicBool = AtomicBool::new(false);
        const BUSY: u32 = 1;
        WORD.store(BUSY, Ordering::Release);
        lower_priority_thread_on_cpu0_must_run(
            || {
                while !WAITING.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                WORD.store(2, Ordering::Release);
                wake_all(&WORD);
            },
            || {
                WAITING.store(true, Ordering::Release);
                wait_while_equal(&WORD, BUSY);
            },
            || {
                WORD.store(3, Ordering::Release);
                wake_all(&WORD);
            },
        );
    }
}
