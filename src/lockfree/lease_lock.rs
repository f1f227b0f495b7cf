//! `LeaseLock`: a lock word that lives in shared (device) memory and names its holder, so that
//! a holder that died can be recognised and the lock taken over.
//!
//! The word is 0 when free, else the holder's tag (non-zero; the shared pool uses its node
//! tag: registry slot and incarnation). There is no futex and no host-OS state: any process on
//! any host that maps the word can take it, wait for it, or, when the caller has decided that
//! the tag it saw belongs to a dead holder, steal it with one compare-and-swap from exactly
//! that tag (so two stealers cannot both win, and a holder that released in the meantime is
//! not robbed). Whoever steals must repair what the dead holder left half-done before relying
//! on the protected state (the pool replays its redo log).
//!
//! Waiters that sleep (`device_wait`: a sleep in the kernel keyed on the word, or a timed
//! nap) first set `WAITERS` in the word with one compare-and-swap from the value they saw
//! (`announce_waiter`); `release` swaps the word to 0 and reports whether the bit was set, and
//! then its caller wakes the sleepers. Both are read-modify-writes of the one word, so a
//! waiter that announced before the release is always told (no lost wake), and one that comes
//! after sees the lock free. The bit is a hint for sleeping only: taking and stealing compare
//! whole words, a steal drops the bit (the robbed holder's sleepers look again within their
//! timeout), and a lock whose tags may use bit 63 (a device tier's claim word) must never be
//! announced on.
//!
//! Orderings: acquiring (and stealing) is Acquire, releasing is Release, so everything the
//! previous holder wrote under the lock is visible to the next one.

use crate::sync::{AtomicU64, Ordering};

/// Set in the word by a waiter about to sleep, so that the release wakes it; never part of a
/// tag of a lock that is waited on.
pub(crate) const WAITERS: u64 = 1 << 63;

/// The holder's tag in a word seen (the word without `WAITERS`).
pub(crate) const fn holder_of(word: u64) -> u64 {
    word & !WAITERS
}

/// Invariant: `word == 0` (free) or `holder_of(word) == tag` of the one holder, with
/// `WAITERS` set iff a waiter announced itself since the holder took it.
#[repr(transparent)]
pub struct LeaseLock {
    word: AtomicU64,
}

impl LeaseLock {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        LeaseLock {
            word: AtomicU64::new(0),
        }
    }

    #[cfg(loom)]
    pub fn new() -> Self {
        LeaseLock {
            word: AtomicU64::new(0),
        }
    }

    /// The lock whose word is at `p`.
    ///
    /// # Safety
    /// `p` must be 8-aligned, valid for the returned lifetime, and accessed only atomically.
    #[cfg(not(loom))]
    pub unsafe fn at<'a>(p: *mut u64) -> &'a LeaseLock {
        // SAFETY: LeaseLock is a transparent AtomicU64, which has the layout of a u64; the
        // caller guarantees alignment, validity and atomic-only access.
        unsafe { &*(p as *const LeaseLock) }
    }

    /// The word itself, for sleeping on it (`device_wait`).
    #[cfg(not(loom))]
    pub fn word(&self) -> &AtomicU64 {
        &self.word
    }

    /// Takes the lock for `tag` (non-zero) if it is free; else the word seen (the holder's tag,
    /// with `WAITERS` if a waiter announced itself).
    pub fn try_acquire(&self, tag: u64) -> Result<(), u64> {
        debug_assert!(tag != 0);
        self.word
            .compare_exchange(0, tag, Ordering::Acquire, Ordering::Relaxed)
            .map(|_| ())
    }

    /// Takes the lock from `dead` (the word as seen), a holder the caller found dead; fails
    /// (with the current word) if the word no longer holds `dead`. `WAITERS` is dropped.
    pub fn steal(&self, dead: u64, tag: u64) -> Result<(), u64> {
        self.word
            .compare_exchange(dead, tag, Ordering::Acquire, Ordering::Relaxed)
            .map(|_| ())
    }

    /// The current holder's tag, 0 if free.
    // Read by the model; nothing in the library asks yet (the module is crate-private).
    #[cfg_attr(not(loom), allow(dead_code))]
    pub fn holder(&self) -> u64 {
        self.word.load(Ordering::Relaxed)
    }

    /// Before sleeping: marks the word, which held `seen` (a holder's tag, the lock taken),
    /// so that the holder's `release` reports a waiter. Ok(the word now, to sleep on), or
    /// Err(the word) if it changed meanwhile (the caller looks again instead of sleeping).
    pub fn announce_waiter(&self, seen: u64) -> Result<u64, u64> {
        debug_assert!(seen != 0);
        let marked = seen | WAITERS;
        if seen == marked {
            return Ok(marked);
        }
        self.word
            .compare_exchange(seen, marked, Ordering::Relaxed, Ordering::Relaxed)
            .map(|_| marked)
    }

    /// Releases the lock if `tag` still holds it (a holder that may have been found dead and
    /// robbed, whose release must not free the thief's lock); false if it did not. For locks
    /// nobody announces a wait on: a word with `WAITERS` added is not `tag`'s.
    pub fn release_if(&self, tag: u64) -> bool {
        self.word
            .compare_exchange(tag, 0, Ordering::Release, Ordering::Relaxed)
            .is_ok()
    }

    /// Releases the lock held by the caller: true if a waiter announced itself, which the
    /// caller must then wake (after making the release visible).
    #[must_use]
    pub fn release(&self) -> bool {
        self.release_with(Ordering::Release)
    }

    /// `release` with its ordering given: the loom model passes a weaker one to show that it
    /// is caught.
    pub fn release_with(&self, ordering: Ordering) -> bool {
        self.word.swap(0, ordering) & WAITERS != 0
    }
}

#[cfg(not(loom))]
impl Default for LeaseLock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use loom::thread;

    struct Guarded {
        lock: LeaseLock,
        /// What the lock protects: the pool's directory and extent records.
        value: UnsafeCell<u64>,
    }

    // SAFETY: `value` is touched only under `lock`.
    unsafe impl Sync for Guarded {}

    fn locked_increment(g: &Guarded, tag: u64, release: Ordering) {
        while g.lock.try_acquire(tag).is_err() {
            thread::yield_now();
        }
        // SAFETY: the model's threads touch the value only under the lock or after the join.
        g.value.with_mut(|v| unsafe { *v += 1 });
        let _ = g.lock.release_with(release);
    }

    fn two_holders(release: Ordering) {
        loom::model(move || {
            let g = Arc::new(Guarded {
                lock: LeaseLock::new(),
                value: UnsafeCell::new(0),
            });
            let other = g.clone();
            let t = thread::spawn(move || locked_increment(&other, 2, release));
            locked_increment(&g, 1, release);
            t.join().unwrap();
            // SAFETY: the model's threads touch the value only under the lock or after the join.
            assert_eq!(g.value.with(|v| unsafe { *v }), 2);
        });
    }

    #[test]
    fn holders_see_each_others_writes() {
        two_holders(Ordering::Release);
    }

    #[test]
    fn relaxed_release_is_caught() {
        crate::lockfree::assert_loom_catches(|| two_holders(Ordering::Relaxed));
    }

    /// A holder dies with the lock held (it never releases); a second process, told that tag 1
    /// is dead, steals it, sees the dead holder's writes, and a third contender racing the
    /// steal either steals first or waits: never both.
    #[test]
    fn a_dead_holder_is_stolen_from_once() {
        loom::model(|| {
            let g = Arc::new(Guarded {
                lock: LeaseLock::new(),
                value: UnsafeCell::new(0),
            });
            g.lock.try_acquire(1).unwrap();
            // SAFETY: the model's threads touch the value only under the lock or after the join.
            g.value.with_mut(|v| unsafe { *v = 7 });
            // Holder 1 dies here, holding the lock.
            let stealers: Vec<_> = [2u64, 3]
                .into_iter()
                .map(|tag| {
                    let g = g.clone();
                    thread::spawn(move || {
                        if g.lock.steal(1, tag).is_ok() {
                            // SAFETY: the model's threads touch the value only under the lock or
                            // after the join.
                            g.value.with_mut(|v| unsafe { *v += 1 });
                            let _ = g.lock.release();
                            1
                        } else {
                            0
                        }
                    })
                })
                .collect();
            let won: u32 = stealers.into_iter().map(|t| t.join().unwrap()).sum();
            assert_eq!(won, 1, "exactly one stealer wins");
            // SAFETY: the model's threads touch the value only under the lock or after the join.
            assert_eq!(g.value.with(|v| unsafe { *v }), 8);
            assert_eq!(g.lock.holder(), 0);
        });
    }

    /// A holder taken for dead but still running (a device tier's owner whose lease ran out
    /// while it could not run) releases at its exit with `release_if`, racing the thief: the
    /// thief keeps the lock whatever the order, and the holder's release fails iff it was
    /// robbed.
    #[test]
    fn a_robbed_holder_cannot_release_the_thiefs_lock() {
        loom::model(|| {
            let lock = Arc::new(LeaseLock::new());
            lock.try_acquire(1).unwrap();
            let thief = {
                let lock = lock.clone();
                thread::spawn(move || lock.steal(1, 2).is_ok())
            };
            let released = lock.release_if(1);
            let stole = thief.join().unwrap();
            assert!(
                released != stole,
                "exactly one of the release and the theft took effect"
            );
            assert_eq!(lock.holder(), if stole { 2 } else { 0 });
        });
    }

    /// The kernel's side of a sleep on the word, as the futex does it: the word is compared and
    /// the sleeper queued under the bucket's lock, which a wake takes too. No timeout here: a
    /// wake the protocol loses leaves the waiter asleep for ever, which loom reports.
    struct Futex {
        wakes: loom::sync::Mutex<u64>,
        woken: loom::sync::Condvar,
    }

    impl Futex {
        fn sleep_while(&self, word: &AtomicU64, value: u64) {
            let mut wakes = self.wakes.lock().unwrap();
            if word.load(Ordering::SeqCst) != value {
                return;
            }
            let seen = *wakes;
            while *wakes == seen {
                wakes = self.woken.wait(wakes).unwrap();
            }
        }

        fn wake_all(&self) {
            *self.wakes.lock().unwrap() += 1;
            self.woken.notify_all();
        }
    }

    struct Sleepers {
        lock: LeaseLock,
        futex: Futex,
        value: UnsafeCell<u64>,
    }

    // SAFETY: `value` is touched only under `lock`.
    unsafe impl Sync for Sleepers {}

    /// Holder 1 releases with `release` while waiter 2 spins no more: it announces itself and
    /// sleeps (`device_wait` past its spin). The waiter must get the lock and see the holder's
    /// write.
    fn a_sleeping_waiter_is_woken(release: fn(&Sleepers)) {
        loom::model(move || {
            let s = Arc::new(Sleepers {
                lock: LeaseLock::new(),
                futex: Futex {
                    wakes: loom::sync::Mutex::new(0),
                    woken: loom::sync::Condvar::new(),
                },
                value: UnsafeCell::new(0),
            });
            s.lock.try_acquire(1).unwrap();
            let holder = {
                let s = s.clone();
                thread::spawn(move || {
                    // SAFETY: the model's threads touch the value only under the lock or after
                    // the join.
                    s.value.with_mut(|v| unsafe { *v = 7 });
                    release(&s);
                })
            };
            while let Err(seen) = s.lock.try_acquire(2) {
                if let Ok(marked) = s.lock.announce_waiter(seen) {
                    s.futex.sleep_while(&s.lock.word, marked);
                }
            }
            // SAFETY: the model's threads touch the value only under the lock or after the join.
            assert_eq!(s.value.with(|v| unsafe { *v }), 7);
            holder.join().unwrap();
        });
    }

    #[test]
    fn a_waiter_that_announced_itself_is_woken_by_the_release() {
        a_sleeping_waiter_is_woken(|s| {
            if s.lock.release() {
                s.futex.wake_all();
            }
        });
    }

    /// The wake issued before the release is made: a waiter that announced itself and fell
    /// asleep in between is never woken.
    #[test]
    fn a_wake_before_the_release_is_caught() {
        crate::lockfree::assert_loom_fails(
            || {
                a_sleeping_waiter_is_woken(|s| {
                    s.futex.wake_all();
                    let _ = s.lock.release();
                })
            },
            "deadlock",
        );
    }
}
