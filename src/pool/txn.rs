//! The pool lock and the redo log: every change to the pool's metadata is a `Txn` — a list of
//! 8-byte stores — committed under the lock through the on-device `RedoLog`, so that it
//! happens whole or not at all whatever instruction its process dies at.
//!
//! `Pool::lock` takes the lock word (`LeaseLock`), waiting while its holder lives and
//! stealing it from a holder found dead (`registry::tag_live`), then replays a log left
//! committed by a dead holder. `Locked::commit` records the stores, commits, applies them in
//! order (each with Release and written back, so that a directory entry's publish word, stored
//! last, reaches the device after its fields), and clears the log.

use super::layout::*;
use super::{testing, Errno, Pool};
use crate::device_wait::{self, DeviceWait};
use crate::lockfree::lease_lock::{holder_of, LeaseLock};
use crate::lockfree::published::{self, store_in_sequence, BUSY};
use crate::lockfree::redo_log::RedoLog;
use core::sync::atomic::AtomicU64;

/// The stores of one operation, in the order they are applied.
pub(crate) struct Txn {
    stores: [(u64, u64); LOG_ENTRIES],
    len: usize,
}

impl Txn {
    pub fn new() -> Txn {
        Txn {
            stores: [(0, 0); LOG_ENTRIES],
            len: 0,
        }
    }

    /// Adds the store `meta[off] = value`. The operations are sized so that none exceeds
    /// LOG_ENTRIES stores (a create makes 22).
    pub fn set(&mut self, off: usize, value: u64) {
        debug_assert!(off % 8 == 0 && off < META_END && self.len < LOG_ENTRIES);
        if self.len < LOG_ENTRIES {
            self.stores[self.len] = (off as u64, value);
            self.len += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The pool lock, held; released on drop.
pub(crate) struct Locked<'a> {
    pub pool: &'a Pool,
    pub tag: u64,
}

impl Pool {
    fn lease_lock(&self) -> &LeaseLock {
        // SAFETY: SB_LOCK is an 8-aligned word of the metadata mapping, which outlives the
        // borrow, accessed only atomically.
        unsafe { LeaseLock::at(self.meta_ptr(SB_LOCK) as *mut u64) }
    }

    fn log(&self) -> &RedoLog<LOG_ENTRIES> {
        // SAFETY: LOG_AT..LOG_AT + size_of RedoLog lies in the metadata mapping (layout's
        // assertion), 8-aligned, accessed only atomically.
        unsafe { RedoLog::at(self.meta_ptr(LOG_AT) as *mut u8) }
    }

    /// Takes the pool lock for this process's node: waits (`device_wait`: a short spin, then
    /// sleeps) while its holder lives, steals it from a holder found dead.
    pub(crate) fn lock(&self) -> Result<Locked<'_>, Errno> {
        let tag = self.me()?;
        let lock = self.lease_lock();
        let mut wait = DeviceWait::new();
        loop {
            self.invalidate_meta(SB_LOCK, 8);
            let Err(seen) = lock.try_acquire(tag) else {
                break;
            };
            let holder = holder_of(seen);
            // Whether the holder lives is asked every 16 sleeps (about 16 ms: it costs a look
            // at /proc for a holder of this host, more than a usual hand-off's whole wait).
            let ask = wait.sleeps() % 16 == 15;
            if ask && holder != tag && !self.tag_live(holder) {
                if lock.steal(seen, tag).is_ok() {
                    break;
                }
            } else if !wait.sleeps_next() {
                wait.pause(lock.word(), seen);
            } else if let Ok(marked) = lock.announce_waiter(seen) {
                self.write_back_meta(SB_LOCK, 8);
                wait.pause(lock.word(), marked);
            }
        }
        self.write_back_meta(SB_LOCK, 8);
        // Whatever the previous holder (maybe on another host) wrote is on the device: drop
        // this CPU's copies of the metadata so every read under the lock sees it. Directory
        // entries are not included: every read of one invalidates it first (`read_entry`,
        // `refs`, `free_entry_index`), which spares 768 lines per lock.
        self.invalidate_meta(0, DIRECTORY_AT);
        self.invalidate_meta(HOLDINGS_AT, META_END - HOLDINGS_AT);
        testing::step();
        let locked = Locked { pool: self, tag };
        locked.replay();
        Ok(locked)
    }
}

impl Locked<'_> {
    fn write_back(&self) -> impl Fn(&AtomicU64) + '_ {
        move |w: &AtomicU64| {
            testing::step();
            super::coherence::write_back(self.pool.coherent(), w.as_ptr() as *const u8, 8)
        }
    }

    /// Finishes an operation a dead holder committed but did not complete.
    fn replay(&self) {
        self.pool.invalidate_meta(LOG_AT, 16 + LOG_ENTRIES * 16);
        let log = self.pool.log();
        let mut stores = [(0u64, 0u64); LOG_ENTRIES];
        let n = log.pending(&mut stores);
        if n > 0 {
            self.apply(&stores[..n]);
        }
        if log.state() != 0 {
            log.clear(&self.write_back());
        }
    }

    fn apply(&self, stores: &[(u64, u64)]) {
        for &(off, value) in stores {
            let off = off as usize;
            if off % 8 != 0 || off >= META_END {
                continue; // not a store this code records: refuse to scribble
            }
            if (DIRECTORY_AT..HOLDINGS_AT).contains(&off) {
                // The lock invalidated no directory line: fetch this one afresh, so that the
                // write-back below does not carry stale neighbours of the stored word.
                self.pool.invalidate_meta(off, 8);
            }
            store_in_sequence(self.pool.word(off), value);
            self.pool.write_back_meta(off, 8);
            if is_publish_word(off) {
                self.publish_word_stored(off, value);
            }
            testing::step();
        }
    }

    /// Called by the lock holder after it stored (and wrote back) `value` into the publish
    /// word at `off`: a publication ends the sleeps of this host's readers of the entry
    /// (`directory::read_entry`).
    fn publish_word_stored(&self, off: usize, value: u64) {
        if published::state_of(value) == BUSY {
            testing::stall_if_asked();
        } else {
            device_wait::wake_all(self.pool.word(off));
        }
    }

    /// Makes `txn`'s stores, all or none.
    pub fn commit(&self, txn: &Txn) {
        if txn.is_empty() {
            return;
        }
        let stores = &txn.stores[..txn.len];
        let log = self.pool.log();
        log.commit(stores, &self.write_back());
        self.apply(stores);
        log.clear(&self.write_back());
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        testing::step();
        let lock = self.pool.lease_lock();
        let waiters = lock.release();
        self.pool.write_back_meta(SB_LOCK, 8);
        if waiters {
            device_wait::wake_all(lock.word());
        }
    }
}
