//! How a device tier uses the calling thread's extent stash (`extent_stash`, kept in its
//! `slot_cache` block): finding or claiming it on a miss of the one-compare lookup, a request's
//! search of it, a free into it or past it into the lanes, taking one out for a block growing
//! in place, and giving its extents back (for statistics, a full tier, the lanes turned off,
//! and its thread's exit through the registry).
//! Above both `slot_cache` (which holds the stashes) and `extent_stash` (what one is).

use super::extent_cache::{self, Evicted, ExtentCache, PUSH_EVICTS};
use super::extent_stash::{current_for, ExtentStash};
use super::DeviceTier;
use core::sync::atomic::Ordering;

impl DeviceTier {
    /// This thread's stash for this tier (whose lanes are on: `cache` is its cache), made
    /// `current`: claimed now if this thread's stash of the kind is unused and the tier has
    /// room for one more. `None`: the lanes serve this thread.
    #[inline(never)]
    fn own_stash(&self, cache: &ExtentCache) -> Option<&'static ExtentStash> {
        if let Some(stash) = current_for(cache) {
            return Some(stash);
        }
        let id = self.slot_cache_id.load(Ordering::Relaxed);
        if id == 0 {
            return None;
        }
        let stash = super::slot_cache::stash_of_this_thread(self.kind)?;
        // SAFETY: this thread's stash.
        if !unsafe { stash.claim(self, cache, id) } {
            return None;
        }
        Some(stash)
    }

    /// A freed extent of at least `len` bytes from this thread's stash, searched (the request's
    /// slow path, after `take` found none or the stash was not `current`): `(offset, length)`.
    pub(super) fn take_from_stash(&self, cache: &ExtentCache, len: u64) -> Option<(u64, u64)> {
        let stash = self.own_stash(cache)?;
        // SAFETY: this thread's stash.
        unsafe { stash.take_searching(len) }
    }

    /// The end of a free of a cached-size block whose extent the `current` stash could not
    /// take: this thread's stash (its bin's older half given back to make room), or the lanes.
    #[inline(never)]
    pub(super) fn free_to_stash_or_lane(&self, cache: &ExtentCache, offset: u64, len: u64) {
        let Some(stash) = self.own_stash(cache) else {
            return self.free_to_lane(cache, offset, len);
        };
        // SAFETY: this thread's stash; the caller cleared the extent's live bit.
        if unsafe { stash.try_put(offset, len) } {
            return;
        }
        let mut evicted = Evicted::<PUSH_EVICTS>::new();
        // SAFETY: as above.
        unsafe { stash.put_evicting(offset, len, &mut evicted) };
        self.free_cached(cache, evicted.as_slice());
    }

    /// This thread's stash if it has one and it holds this tier's extents; none is made.
    fn own_stash_if_made(&self) -> Option<&'static ExtentStash> {
        let id = self.slot_cache_id.load(Ordering::Relaxed);
        super::slot_cache::stash_if_made(self.kind).filter(|stash| stash.is_for(id))
    }

    /// Gives every extent of this thread's stash for this tier back to the heap (statistics,
    /// a full tier, the lanes turned off). A thread without a stash gets none made.
    pub(super) fn give_back_own_stash(&self) {
        if let Some(stash) = self.own_stash_if_made() {
            // SAFETY: this thread's stash, naming this tier.
            unsafe { self.give_back_stash(stash) };
        }
    }

    /// Takes the freed extent at `offset` out of this thread's stash for this tier if it is
    /// there, for the caller to give back to the heap (a block before it grows into its
    /// space): true if it did. Other threads' stashes are not searched: only their owners
    /// touch them, with no lock, and a lock or a claim word there would cost every stashed
    /// request and free an instruction or more for the rare `realloc` that meets them.
    pub(super) fn withdraw_from_own_stash(&self, cache: &ExtentCache, offset: u64) -> bool {
        let Some(len) = cache.freed_len(offset) else {
            return false;
        };
        let Some(stash) = self.own_stash_if_made() else {
            return false;
        };
        // SAFETY: this thread's stash, naming this tier. An extent it holds is its owner's
        // alone, so its entry (and `len`) cannot change under us; one it does not hold is
        // not found.
        unsafe { stash.withdraw(offset, len) }
    }

    /// Bytes in this thread's stash for this tier (0 without one).
    pub(super) fn own_stash_bytes(&self) -> u64 {
        self.own_stash_if_made()
            .map_or(0, |stash| stash.figures().0)
    }

    /// Gives every extent of `stash` back to the heap.
    ///
    /// # Safety
    /// As `ExtentStash::bins`; the stash names this tier.
    pub(super) unsafe fn give_back_stash(&self, stash: &ExtentStash) {
        let Some(cache) = &self.cache else {
            return;
        };
        loop {
            let mut evicted = Evicted::<{ extent_cache::DRAIN_BATCH }>::new();
            // SAFETY: per the contract.
            let emptied = unsafe { stash.take_into(&mut evicted) };
            self.free_cached(cache, evicted.as_slice());
            if emptied {
                break;
            }
        }
    }

    /// Gives `stash`'s extents back, folds its counts into the tier's and lets the stash go
    /// (its thread is gone or exiting).
    ///
    /// # Safety
    /// As `ExtentStash::bins`; the stash names this tier.
    pub(super) unsafe fn retire_stash(&self, stash: &ExtentStash) {
        // SAFETY: per the contract.
        unsafe { self.give_back_stash(stash) };
        let (_, allocations, frees) = stash.figures();
        self.allocations.add(allocations);
        self.frees.add(frees);
        stash.forget();
        if let Some(cache) = &self.cache {
            cache.release_stash();
        }
    }
}
