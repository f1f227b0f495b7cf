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
//! Orderings: acquiring (and stealing) is Acquire, releasing is Release, so everything the
//! previous holder wrote under the lock is visible to the next one.

use crate::sync::{AtomicU64, Ordering};

/// Invariant: `word == 0` (free) or `word == tag` of the one holder.
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

    /// Takes the lock for `tag` (non-zero) if it is free; else the holder's tag.
    pub fn try_acquire(&self, tag: u64) -> Result<(), u64> {
        debug_assert!(tag != 0);
        self.word
            .compare_exchange(0, tag, Ordering::Acquire, Ordering::Relaxed)
            .map(|_| ())
    }

    /// Takes the lock from `dead`, a holder the caller found dead; fails (with the current
    /// holder) if the word no longer holds `dead`.
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

    /// Releases the lock if `tag` still holds it (a holder that may have been found dead and
    /// robbed, whose release must not free the thief's lock); false if it did not.
    pub fn release_if(&self, tag: u64) -> bool {
        self.word
            .compare_exchange(tag, 0, Ordering::Release, Ordering::Relaxed)
            .is_ok()
    }

    /// Releases the lock held by the caller.
    pub fn release(&self) {
        self.release_with(Ordering::Release)
    }

    /// `release` with its ordering given: the loom model passes a weaker one to show that it
    /// is caught.
    pub fn release_with(&self, ordering: Ordering) {
        self.word.store(0, ordering)
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
        g.value.with_mut(|v| unsafe { *v += 1 });
        g.lock.release_with(release);
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
            g.value.with_mut(|v| unsafe { *v = 7 });
            // Holder 1 dies here, holding the lock.
            let stealers: Vec<_> = [2u64, 3]
                .into_iter()
                .map(|tag| {
                    let g = g.clone();
                    thread::spawn(move || {
                        if g.lock.steal(1, tag).is_ok() {
                            g.value.with_mut(|v| unsafe { *v += 1 });
                            g.lock.release();
                            1
                        } else {
                            0
                        }
                    })
                })
                .collect();
            let won: u32 = stealers.into_iter().map(|t| t.join().unwrap()).sum();
            assert_eq!(won, 1, "exactly one stealer wins");
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
}
