//! A mutual-exclusion lock for host-local state that spins briefly and then sleeps in the
//! kernel (a private futex), in place of a pure spin lock.
//!
//! A spin lock's waiter at `SCHED_FIFO` livelocks when its holder shares its CPU and cannot run
//! there: a holder of lower priority, or one of equal priority that slept while holding it
//! (a page fault on a device mapping, `mremap`) and whose wake-up cannot preempt the spinning
//! waiter. This lock's waiter sleeps, so the holder runs and its unlock wakes the waiter.
//! The uncontended cost is the spin lock's: one compare-and-swap to lock, a load and a plain
//! store to unlock (`unlock` says why a missed wake-up costs a waiter at most a millisecond).
//!
//! The word's states (the classic three-state futex lock): 0 free, 1 locked, 2 locked and a
//! waiter may sleep; whoever unlocks a 2 wakes one sleeper. The lock lives in this process's
//! private memory, never on a device (state shared through a device is coordinated by atomics
//! there). Nothing here allocates.

use crate::futex;
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, Ordering};

const FREE: u32 = 0;
const LOCKED: u32 = 1;
const CONTENDED: u32 = 2;

/// Spins on a held lock before sleeping: the callers' critical sections are short, so a
/// holder running on another CPU usually lets go within them.
const SPINS: u32 = 100;

/// Spins of `lock_patient` before it sleeps: about 25 us at 12 ns a `pause` (the session-17
/// VM). Bounded, so a waiter at `SCHED_FIFO` on its holder's CPU still sleeps and lets it run.
const PATIENT_SPINS: u32 = 2000;

/// The longest a waiter sleeps before it looks at the lock again, in case its wake-up was
/// missed (see `unlock`): a millisecond, long beside a critical section, short beside a hang.
const NAP_NANOS: i64 = 1_000_000;

/// `value` guarded by a spin-then-sleep lock.
pub(crate) struct Mutex<T> {
    state: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands `value` to one thread at a time.
unsafe impl<T: Send> Sync for Mutex<T> {}
// SAFETY: moving the lock moves `value`.
unsafe impl<T: Send> Send for Mutex<T> {}

/// Exclusive access to a `Mutex`'s value until dropped.
pub(crate) struct MutexGuard<'a, T> {
    lock: &'a Mutex<T>,
}

impl<T> Mutex<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self {
            state: AtomicU32::new(FREE),
            value: UnsafeCell::new(value),
        }
    }

    /// A lock that is held from the start and never let go (no guard owns it): a stand-in
    /// whose `try_lock` always fails, for a fast path's table entry that means "none".
    pub(crate) const fn new_held(value: T) -> Self {
        Self {
            state: AtomicU32::new(LOCKED),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the lock, spinning briefly and then sleeping while another thread holds it.
    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        if self
            .state
            .compare_exchange(FREE, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        MutexGuard { lock: self }
    }

    /// Takes the lock as `lock` does, but spins `PATIENT_SPINS` times before sleeping: for a
    /// lock whose holders, on another CPU, let go within a few microseconds, and whose waiters
    /// would otherwise pay a sleep and a wake (an inter-processor interrupt, costly in a VM)
    /// for each hand-off (the device heap's, `device::DeviceTier`).
    #[inline]
    pub(crate) fn lock_patient(&self) -> MutexGuard<'_, T> {
        if self
            .state
            .compare_exchange(FREE, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended_patient();
        }
        MutexGuard { lock: self }
    }

    #[cold]
    fn lock_contended(&self) {
        self.spin_then_sleep(SPINS)
    }

    #[cold]
    fn lock_contended_patient(&self) {
        self.spin_then_sleep(PATIENT_SPINS)
    }

    /// Spins `spins` times on the held lock, then sleeps until it is let go; returns holding it.
    #[inline(always)]
    fn spin_then_sleep(&self, spins: u32) {
        for _spun in 0..spins {
            if self.state.load(Ordering::Relaxed) == FREE
                && self
                    .state
                    .compare_exchange(FREE, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
            core::hint::spin_loop();
            #[cfg(test)]
            tests::SPUN.with(|s| s.set(_spun + 1));
        }
        // Mark the lock contended; whoever held it wakes a sleeper on unlock. Taking it here
        // leaves it marked contended, which costs at most one needless wake.
        while self.state.swap(CONTENDED, Ordering::Acquire) != FREE {
            futex::sleep_while_equal_at_most(&self.state, CONTENDED, NAP_NANOS);
        }
    }

    /// Takes the lock if it is free.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        self.state
            .compare_exchange(FREE, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| MutexGuard { lock: self })
    }

    /// Releases the lock without a guard, waking a sleeper as an unlock does (in a `fork`'s
    /// parent, threads may have gone to sleep on a lock its prepare handler kept).
    ///
    /// # Safety
    /// The caller must own the lock in place of a guard: a guard it forgot (`fork`'s prepare
    /// handler), or, in a forked child, whose only thread uses no guard, a lock held at the
    /// fork.
    pub(crate) unsafe fn force_unlock(&self) {
        self.unlock();
    }

    /// The common case, nobody asleep, is a plain store, as a spin lock's unlock: a swap here
    /// cost 8-12 ns per device slab pair (two locked instructions more per malloc/free pair).
    /// A waiter that marks the lock contended between the load and the store below is not
    /// woken by it; it finds the lock free when its sleep of at most `NAP_NANOS` ends (or at
    /// once, if the store came before its sleep began: the kernel sees the word changed).
    #[inline]
    fn unlock(&self) {
        let contended = self.state.load(Ordering::Relaxed) == CONTENDED;
        self.state.store(FREE, Ordering::Release);
        if contended {
            self.wake_one();
        }
    }

    /// Wakes a sleeper (`unlock` of a contended lock): out of line, so that an uncontended
    /// unlock inlined at the end of a fast path leaves it no call to save registers around.
    #[cold]
    #[inline(never)]
    pub(crate) fn wake_one(&self) {
        futex::wake_one(&self.state);
    }
}

impl<T> MutexGuard<'_, T> {
    /// Lets go of the lock without waking anyone: true if a sleeper may be waiting, and the
    /// caller must then `wake_one` (a fast path that does so last, from out of line, keeps
    /// its values in registers across no call).
    #[inline]
    pub(crate) fn unlock_unwoken(self) -> bool {
        let lock = self.lock;
        core::mem::forget(self);
        let contended = lock.state.load(Ordering::Relaxed) == CONTENDED;
        lock.state.store(FREE, Ordering::Release);
        contended
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock: no other reference to the value exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock: no other reference to the value exists.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::futex::tests::lower_priority_thread_on_cpu0_must_run;

    std::thread_local! {
        /// The spins this thread's last contended `lock` made before it slept or took the lock.
        pub(super) static SPUN: core::cell::Cell<u32> = const { core::cell::Cell::new(0) };
    }

    #[test]
    fn counts_under_contention() {
        static COUNT: Mutex<u64> = Mutex::new(0);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..20_000 {
                        *COUNT.lock() += 1;
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(*COUNT.lock(), 80_000);
        assert!(COUNT.try_lock().is_some());
        let held = COUNT.lock();
        assert!(COUNT.try_lock().is_none());
        drop(held);
    }

    /// A SCHED_FIFO thread waits for the lock that a lower-priority thread on its CPU holds
    /// (issue 16): a spin lock livelocks there; this one sleeps and the holder lets go.
    #[test]
    fn a_fifo_waiter_lets_a_lower_priority_holder_on_its_cpu_unlock() {
        static LOCK: Mutex<u32> = Mutex::new(0);
        static HELD: AtomicU32 = AtomicU32::new(0); // 1 held, 2 the waiter takes it
        HELD.store(0, Ordering::Release);
        lower_priority_thread_on_cpu0_must_run(
            || {
                // The holder: takes the lock, then waits for the waiter to say it is about
                // to take it. It runs again only when the waiter sleeps (same CPU, lower
                // priority), so it lets go only while the waiter waits for the lock, however
                // long the waiter took to start.
                let mut guard = LOCK.lock();
                HELD.store(1, Ordering::Release);
                while HELD.load(Ordering::Acquire) != 2 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                *guard += 1;
            },
            || {
                while HELD.load(Ordering::Acquire) == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                HELD.store(2, Ordering::Release);
                *LOCK.lock() += 1;
            },
            || {
                // Rescue: a waiter livelocked on the lock is freed by releasing it by force.
                // SAFETY: test only; the holder's later unlock then frees a free lock.
                unsafe { LOCK.force_unlock() }
            },
        );
    }

    /// `lock_patient` (the device heap's) spins `PATIENT_SPINS` times on a held lock before it
    /// sleeps, `lock` `SPINS` times: the lock is held until the waiter has marked it
    /// contended (it gave up spinning), so each waiter spins its whole count.
    #[test]
    fn a_patient_waiter_spins_longer_before_it_sleeps() {
        static LOCK: Mutex<u32> = Mutex::new(0);
        for (patient, want) in [(false, SPINS), (true, PATIENT_SPINS)] {
            let held = LOCK.lock();
            let waiter = std::thread::spawn(move || {
                SPUN.with(|s| s.set(0));
                let mut guard = if patient {
                    LOCK.lock_patient()
                } else {
                    LOCK.lock()
                };
                *guard += 1;
                SPUN.with(|s| s.get())
            });
            while LOCK.state.load(Ordering::Acquire) != CONTENDED {
                std::thread::yield_now();
            }
            drop(held);
            assert_eq!(waiter.join().unwrap(), want, "patient: {patient}");
        }
        assert_eq!(*LOCK.lock(), 2);
    }

    /// As `a_fifo_waiter_lets_a_lower_priority_holder_on_its_cpu_unlock`, with the device
    /// heap's `lock_patient`: its longer spin is bounded, so the waiter still sleeps.
    #[test]
    fn a_patient_fifo_waiter_lets_a_lower_priority_holder_on_its_cpu_unlock() {
        static LOCK: Mutex<u32> = Mutex::new(0);
        static HELD: AtomicU32 = AtomicU32::new(0); // 1 held, 2 the waiter takes it
        HELD.store(0, Ordering::Release);
        lower_priority_thread_on_cpu0_must_run(
            || {
                let mut guard = LOCK.lock();
                HELD.store(1, Ordering::Release);
                while HELD.load(Ordering::Acquire) != 2 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                *guard += 1;
            },
            || {
                while HELD.load(Ordering::Acquire) == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                HELD.store(2, Ordering::Release);
                *LOCK.lock_patient() += 1;
            },
            || {
                // SAFETY: test only; the holder's later unlock then frees a free lock.
                unsafe { LOCK.force_unlock() }
            },
        );
    }
}
