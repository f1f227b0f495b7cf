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
use crate::lockfree::lease_lock::LeaseLock;
use crate::lockfree::published::store_in_sequence;
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

    /// Takes the pool lock for this process's node.
    pub(crate) fn lock(&self) -> Result<Locked<'_>, Errno> {
        let tag = self.me()?;
        let lock = self.lease_lock();
        let mut spins = 0u32;
        loop {
            self.invalidate_meta(SB_LOCK, 8);
            match lock.try_acquire(tag) {
                Ok(()) => break,
                Err(holder) => {
                    spins += 1;
                    if spins % 64 == 0 && holder != tag && !self.tag_live(holder) {
                        if lock.steal(holder, tag).is_ok() {
                            break;
                        }
                    } else if spins > 1000 {
                        std::thread::sleep(std::time::Duration::from_micros(50));
                    } else {
                        std::thread::yield_now();
                    }
                }
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
            testing::step();
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
        self.pool.lease_lock().release();
        self.pool.write_back_meta(SB_LOCK, 8);
    }
}
