//! Per-thread stashes of freed extents of 4 KiB to 256 KiB, in front of the extent cache's
//! lanes (`extent_cache`), so that a thread frees and allocates such device blocks without a
//! lock: the lanes are shared round-robin (`LANES` of them), and a lane's lock was about 26
//! host instructions of a pair's 252 (BENCHMARKS.md, session 13, `extent6`).
//!
//! **Whose.** A stash is one thread's: only its owner takes extents out or puts them in, so
//! there is no new cross-thread protocol. Its figures are atomics only the owner writes (a
//! load and a store, folded into one `add` to memory), which statistics read. Each thread has
//! one stash per device kind, in its `slot_cache` block (whose registry gives a stash back when
//! its thread exits, and in a forked child for the threads that did not come along). Only
//! tiers whose slots threads may cache (`enable_slot_cache`: tiers that never move nor go
//! away) get stashes.
//!
//! **Lookup.** The TLS word `current_word` names the stash the thread used last (of any kind),
//! or `NO_STASH` (which names no cache) before its first: a request or free compares the
//! stash's cache with the tier's, one compare. A mismatch (no stash yet, another kind used
//! last, a busy tier's stashes all taken) goes the slow way (`DeviceTier::own_stash`, in
//! `stash_use` with the rest of a tier's use of its thread's stash), which finds or claims
//! this kind's stash (`ExtentStash::claim`) and makes the word name it, or uses the lanes.
//!
//! **Bound.** A stash holds at most a lane's budget of bytes (`ExtentCache::lane_budget`), and a
//! tier has at most `extent_cache::STASHES` of them (`ExtentCache::claim_stash`; a thread past
//! them uses the lanes): stashes keep at most `STASHES * lane_budget` bytes out of the heap's
//! and `withdraw`'s reach (an eighth of the region, 32 MiB at most). A block growing in place
//! (`resize_in_place`, `realloc`) takes the freed extent behind it out of its own thread's
//! stash as out of a lane (`withdraw_from_own_stash`); other threads' stashes are not searched
//! (only their owners touch them, with no lock), so a block behind an extent another thread
//! stashed moves instead.
//!
//! **Live bits, headers, recovery.** As in a lane: a stashed extent keeps its table entry with
//! the live bit clear (a second free of its block is refused by the bit clear), the
//! free wrote "free" into its header on the device (recovery sees free space, as after any
//! free), and the heap counts it allocated. A hit writes its header and sets its live bit as a
//! lane's hit does. No device byte is read.
//!
//! **Back to the heap.** A full bin, or a stash over its budget, gives the bin's older half
//! back under one heap lock (as a lane does); the owner gives its whole stash back for
//! statistics, when the tier is full and when the lanes are turned off (`drain_cache`).

use super::extent_cache::{self, Evicted, ExtentCache, LaneCache, PUSH_EVICTS};
use super::DeviceTier;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// One thread's stash for one tier's extent cache.
///
/// Invariants: `cache` is null or the cache of a live tier (`tier`) that counts this stash in
/// its `claim_stash`; every extent in `bins` is one of that cache's, allocated in its heap, with
/// its table entry's live bit clear; `budget - room` is the sum of their lengths. Only the
/// owning thread writes any field (or, its thread gone, the registry under its lock; `cache`
/// also a tier's drop in tests).
#[repr(C)]
pub(crate) struct ExtentStash {
    /// First (`repr(C)`): the TLS word names a stash by its head.
    head: StashHead,
    bins: UnsafeCell<LaneCache>,
}

/// A stash's figures and owner: the part `NO_STASH` has too (a whole stand-in stash would put
/// 19.6 KiB of `.bss` among the small statics: `tests/hot_text.rs`).
#[repr(C, align(64))]
pub(crate) struct StashHead {
    /// The cache whose extents this stash holds; null: none (always, in `NO_STASH`).
    cache: AtomicPtr<ExtentCache>,
    /// The tier of `cache`, as of the stash's last claim (a thread's exit gives the extents
    /// back), and its id (`slot_cache_id`: tests move a tier after its first use).
    tier: AtomicPtr<DeviceTier>,
    tier_id: AtomicU64,
    /// The budget less the bytes in the bins (counted down, so a free's test is one compare).
    room: AtomicU64,
    budget: AtomicU64,
    /// Blocks handed out from the stash, and freed into it.
    allocations: AtomicU64,
    frees: AtomicU64,
}

impl core::ops::Deref for ExtentStash {
    type Target = StashHead;
    #[inline(always)]
    fn deref(&self) -> &StashHead {
        &self.head
    }
}

// SAFETY: the bins are only touched by the owning thread (or, that thread gone, under the
// registry's lock); the rest are atomics.
unsafe impl Sync for ExtentStash {}

/// The stash head a thread names before its first stash: no cache, so every compare fails.
pub(crate) static NO_STASH: StashHead = StashHead {
    cache: AtomicPtr::new(core::ptr::null_mut()),
    tier: AtomicPtr::new(core::ptr::null_mut()),
    tier_id: AtomicU64::new(0),
    room: AtomicU64::new(0),
    budget: AtomicU64::new(0),
    allocations: AtomicU64::new(0),
    frees: AtomicU64::new(0),
};

crate::thread_slot::initial_exec_word!(
    current_word,
    "__tiermalloc_device_extent_stash",
    crate::device::extent_stash::NO_STASH
);

/// The stash this thread used last if it holds `cache`'s extents (one compare); `None` also
/// before its first stash and after its exit (the word names `NO_STASH`).
#[inline(always)]
pub(crate) fn current_for(cache: &ExtentCache) -> Option<&'static ExtentStash> {
    let head = current_word::get() as *const StashHead;
    // SAFETY: the word holds `NO_STASH`'s address or the head of one of this thread's stashes,
    // which live in its `slot_cache` block until its exit handler (which sets the word back
    // first).
    let named = unsafe { (*head).cache.load(Ordering::Relaxed) };
    if !core::ptr::eq(named, cache) {
        return None;
    }
    // SAFETY: only a real stash's head names a cache (`NO_STASH`'s never does), and a head is
    // the first field of its `ExtentStash` (`repr(C)`), from whose address the word was set.
    Some(unsafe { &*(head as *const ExtentStash) })
}

/// Makes this thread's word name `NO_STASH` (its exit).
pub(crate) fn forget_current() {
    current_word::set(core::ptr::addr_of!(NO_STASH) as usize);
}

/// Adds `n` to a counter only its owner writes (a load and a store, no locked instruction).
#[inline(always)]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// A counter only its owner writes, read by the owner: a plain load, which the compiler folds
/// into the instruction that uses it (an atomic load it keeps apart: one more instruction).
#[inline(always)]
fn owned(counter: &AtomicU64) -> u64 {
    // SAFETY: the caller is the counter's only writer (the owning thread), so no write races
    // with this read; other threads' reads of it do not race with it either.
    unsafe { counter.as_ptr().read() }
}

impl ExtentStash {
    /// The bins.
    ///
    /// # Safety
    /// The caller is the owning thread (or its thread is gone and it holds the registry's
    /// lock), and holds no other reference to them.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    unsafe fn bins(&self) -> &mut LaneCache {
        // SAFETY: per the contract.
        unsafe { &mut *self.bins.get() }
    }

    /// An extent of at least `want` bytes (`MIN_LEN..MAX_LEN`) from the first bin of its window
    /// that holds one (`LaneCache::take`): `(offset, length)`, its live bit still clear (the
    /// caller `revive`s it). The hit path: no lock, no call.
    ///
    /// # Safety
    /// The caller is the owning thread.
    #[inline(always)]
    pub unsafe fn take(&self, want: u64) -> Option<(u64, u64)> {
        // SAFETY: per the contract.
        let found = unsafe { self.bins() }.take(want)?;
        bump(&self.room, found.1);
        bump(&self.allocations, 1);
        Some(found)
    }

    /// `take`, else the newest long enough extent of `want`'s own bin (the slow path's).
    ///
    /// # Safety
    /// The caller is the owning thread.
    pub(super) unsafe fn take_searching(&self, want: u64) -> Option<(u64, u64)> {
        // SAFETY: per the contract.
        let found = unsafe { self.bins() }.take_or_own_bin(want)?;
        bump(&self.room, found.1);
        bump(&self.allocations, 1);
        Some(found)
    }

    /// Puts the freed extent `[offset, offset + len)` in its bin if the bin and the budget have
    /// room; false (nothing done) if not. The free's path: no lock, no call.
    ///
    /// # Safety
    /// The caller is the owning thread, and owns the extent (its live bit just cleared).
    #[inline(always)]
    pub unsafe fn try_put(&self, offset: u64, len: u64) -> bool {
        // SAFETY: per the contract.
        if len > owned(&self.room) || !unsafe { self.bins() }.put(offset, len) {
            return false;
        }
        bump(&self.room, len.wrapping_neg());
        bump(&self.frees, 1);
        true
    }

    /// `try_put` that found no room: the bin's older half goes into `evicted` (for the heap),
    /// then the extent in, or into `evicted` too if there is still no room (a budget smaller
    /// than the bin's extents).
    ///
    /// # Safety
    /// As `try_put`.
    pub(super) unsafe fn put_evicting(
        &self,
        offset: u64,
        len: u64,
        evicted: &mut Evicted<PUSH_EVICTS>,
    ) {
        // SAFETY: per the contract.
        let bins = unsafe { self.bins() };
        let bin = extent_cache::bin_floor(len);
        let over = |room: &AtomicU64| len > room.load(Ordering::Relaxed);
        if bins.bin_full(bin) || over(&self.room) {
            let (_, bytes) = bins.give_older_half(bin, evicted);
            bump(&self.room, bytes);
        }
        bump(&self.frees, 1);
        if bins.bin_full(bin) || over(&self.room) {
            evicted.push(offset);
            return;
        }
        let put = bins.put(offset, len);
        debug_assert!(put, "the bin has room");
        bump(&self.room, len.wrapping_neg());
    }

    /// Takes the freed extent `[offset, offset + len)` out of the stash if it holds it, for
    /// the caller to give back to the heap (`realloc` grows the block before it in place):
    /// true if it did.
    ///
    /// # Safety
    /// The caller is the owning thread.
    pub(super) unsafe fn withdraw(&self, offset: u64, len: u64) -> bool {
        // SAFETY: per the contract.
        if !unsafe { self.bins() }.remove_extent(offset, len) {
            return false;
        }
        bump(&self.room, len);
        true
    }

    /// Takes extents out into `evicted` until it is full: true once the stash is empty.
    ///
    /// # Safety
    /// As `bins`.
    pub(super) unsafe fn take_into<const N: usize>(&self, evicted: &mut Evicted<N>) -> bool {
        // SAFETY: per the contract.
        let (emptied, bytes) = unsafe { self.bins() }.take_into(evicted);
        bump(&self.room, bytes);
        emptied
    }

    /// Makes this stash hold `tier`'s extents (`cache` its cache, `id` its `slot_cache_id`)
    /// and the one this thread's word names: kept if it already names the tier (moved, in
    /// tests), claimed if unused and the tier has room for one more stash. False: it names
    /// another tier of the kind, or the tier's bound is reached (the lanes serve the thread).
    ///
    /// # Safety
    /// `self` is the calling thread's stash.
    pub(super) unsafe fn claim(&self, tier: &DeviceTier, cache: &ExtentCache, id: u64) -> bool {
        let named = self.cache.load(Ordering::Relaxed);
        let tier = tier as *const DeviceTier as *mut DeviceTier;
        let cache_ptr = cache as *const ExtentCache as *mut ExtentCache;
        if !named.is_null() && self.tier_id.load(Ordering::Relaxed) == id {
            // Ours, claimed before the tier moved (tests): the same tier at a new address.
            self.tier.store(tier, Ordering::Relaxed);
            self.cache.store(cache_ptr, Ordering::Relaxed);
        } else {
            if !named.is_null() || !cache.claim_stash() {
                return false; // another tier of the kind (tests), or the tier's bound reached
            }
            // SAFETY: this thread's stash, unused: its bins are ours.
            unsafe { self.bins() }.clear();
            let budget = cache.lane_budget();
            self.budget.store(budget, Ordering::Relaxed);
            self.room.store(budget, Ordering::Relaxed);
            self.allocations.store(0, Ordering::Relaxed);
            self.frees.store(0, Ordering::Relaxed);
            self.tier.store(tier, Ordering::Relaxed);
            self.tier_id.store(id, Ordering::Relaxed);
            self.cache.store(cache_ptr, Ordering::Relaxed);
        }
        current_word::set(self as *const ExtentStash as usize);
        true
    }
}

impl StashHead {
    /// Whether the stash holds the extents of the tier whose id is `tier_id` (nonzero).
    pub fn is_for(&self, tier_id: u64) -> bool {
        let named = self.tier_id.load(Ordering::Relaxed);
        !self.cache.load(Ordering::Relaxed).is_null() && named == tier_id
    }

    /// `(bytes, allocations, frees)`: bytes of the extents in the stash, blocks handed out
    /// from it and freed into it (read by any thread; exact once the owner is still).
    pub fn figures(&self) -> (u64, u64, u64) {
        let bytes = self.budget.load(Ordering::Relaxed) - self.room.load(Ordering::Relaxed);
        let allocations = self.allocations.load(Ordering::Relaxed);
        (bytes, allocations, self.frees.load(Ordering::Relaxed))
    }

    /// The tier the stash holds extents of, if any (the registry's, after its owner is gone).
    pub fn tier(&self) -> Option<&DeviceTier> {
        if self.cache.load(Ordering::Relaxed).is_null() {
            return None;
        }
        // SAFETY: a stash in use names a live tier (the invariant).
        Some(unsafe { &*self.tier.load(Ordering::Relaxed) })
    }

    /// Forgets the tier (which is going away, tests): its extents go with it.
    pub fn forget(&self) {
        self.cache.store(core::ptr::null_mut(), Ordering::Relaxed);
    }
}
