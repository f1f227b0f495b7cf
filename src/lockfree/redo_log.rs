//! `RedoLog`: makes a group of 8-byte stores to shared memory all-or-nothing for a writer
//! that may be killed at any instruction.
//!
//! Under a lock, the writer records every store it is about to make (target offset and
//! value) with a checksum, then *commits* with one store of the entry count into the state
//! word (Release), then applies the stores in order and clears the state. Whoever takes the
//! lock next (after the writer died, or normally) calls `pending`: a committed log is applied
//! again, whole (stores of absolute values are idempotent), and cleared. A writer killed before
//! its commit store left nothing visible: the targets are untouched and the log is ignored.
//! The checksum refuses a log whose entries reached memory only in part (a non-coherent
//! writer that died before writing them back): its commit cannot have been written back
//! either, because the writer writes entries back before storing the commit.

use crate::sync::{AtomicU64, Ordering};

/// Invariant: `state == 0` (nothing pending) or `state == count` with `1 <= count <= N` and
/// `sum == checksum(entries[..count])`, all written before `state`.
#[repr(C)]
pub struct RedoLog<const N: usize> {
    state: AtomicU64,
    sum: AtomicU64,
    entries: [[AtomicU64; 2]; N],
}

/// FNV-1a over the words: cheap, and any changed word changes it.
pub fn checksum(words: impl IntoIterator<Item = u64>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in words {
        for b in w.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl<const N: usize> RedoLog<N> {
    /// The log at `p`.
    ///
    /// # Safety
    /// `p` must be 8-aligned, valid for `size_of::<Self>()` bytes for the returned lifetime,
    /// and accessed only atomically.
    #[cfg(not(loom))]
    pub unsafe fn at<'a>(p: *mut u8) -> &'a Self {
        // SAFETY: the layout is N * 2 + 2 AtomicU64s, each the layout of a u64; the caller
        // guarantees alignment, validity and atomic-only access.
        unsafe { &*(p as *const Self) }
    }

    #[cfg(loom)]
    pub fn new() -> Self {
        RedoLog {
            state: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            entries: core::array::from_fn(|_| [AtomicU64::new(0), AtomicU64::new(0)]),
        }
    }

    /// Records `stores` and commits them; `write_back(word)` is called on every word written,
    /// the commit word last. `false` (nothing recorded) if there are more than N.
    pub fn commit(&self, stores: &[(u64, u64)], write_back: &dyn Fn(&AtomicU64)) -> bool {
        self.commit_with(stores, write_back, Ordering::Release)
    }

    /// `commit` with the commit store's ordering given (the loom model weakens it).
    pub fn commit_with(
        &self,
        stores: &[(u64, u64)],
        write_back: &dyn Fn(&AtomicU64),
        ordering: Ordering,
    ) -> bool {
        if stores.is_empty() || stores.len() > N {
            return false;
        }
        for (slot, &(target, value)) in self.entries.iter().zip(stores) {
            slot[0].store(target, Ordering::Relaxed);
            slot[1].store(value, Ordering::Relaxed);
            write_back(&slot[0]);
            write_back(&slot[1]);
        }
        let sum = checksum(stores.iter().flat_map(|&(t, v)| [t, v]));
        self.sum.store(sum, Ordering::Relaxed);
        write_back(&self.sum);
        self.state.store(stores.len() as u64, ordering);
        write_back(&self.state);
        true
    }

    /// The committed stores not yet cleared, copied into `out`: how many (0 if none, or if
    /// the log is not whole, which can only be a log whose commit never happened).
    pub fn pending(&self, out: &mut [(u64, u64); N]) -> usize {
        let count = self.state.load(Ordering::Acquire) as usize;
        if count == 0 || count > N {
            return 0;
        }
        for (o, slot) in out.iter_mut().zip(&self.entries[..count]) {
            *o = (
                slot[0].load(Ordering::Relaxed),
                slot[1].load(Ordering::Relaxed),
            );
        }
        let sum = checksum(out[..count].iter().flat_map(|&(t, v)| [t, v]));
        if sum != self.sum.load(Ordering::Relaxed) {
            return 0;
        }
        count
    }

    /// Marks the log applied.
    pub fn clear(&self, write_back: &dyn Fn(&AtomicU64)) {
        self.state.store(0, Ordering::Release);
        write_back(&self.state);
    }

    /// The raw commit word (the consistency checker reports a pending log).
    pub fn state(&self) -> u64 {
        self.state.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// A writer commits a log of two stores and dies before applying it; a recoverer running
    /// at the same time (it found the writer dead) either sees no commit, or the whole log.
    fn recover_during_commit(ordering: Ordering) {
        loom::model(move || {
            let log = Arc::new(RedoLog::<2>::new());
            let writer = log.clone();
            let t = thread::spawn(move || {
                writer.commit_with(&[(8, 80), (16, 160)], &|_| {}, ordering);
            });
            let mut out = [(0, 0); 2];
            let committed = log.state.load(Ordering::Relaxed) != 0;
            let n = log.pending(&mut out);
            assert!(
                !committed || n == 2,
                "a committed log was refused: its entries were not visible"
            );
            if n != 0 {
                assert_eq!(
                    &out[..n],
                    &[(8, 80), (16, 160)],
                    "a recoverer replayed a partial log"
                );
            }
            t.join().unwrap();
        });
    }

    #[test]
    fn recovery_sees_whole_logs_only() {
        recover_during_commit(Ordering::Release);
    }

    /// With a Relaxed commit the recoverer may see the count before the entries: the checksum
    /// then refuses a log that was committed, which the model reports.
    #[test]
    fn a_relaxed_commit_is_caught() {
        crate::lockfree::assert_loom_fails(
            || recover_during_commit(Ordering::Relaxed),
            "committed log was refused",
        );
    }
}
