//! Per-thread caches of slab slots (device blocks of up to 4080 bytes), so that a thread frees
//! and allocates small device blocks without taking a lock: two threads on one tier paid
//! 1.6-1.7x one thread's time per pair with a lock per class and lane, most of it on the lock
//! and slab descriptors moving between cores, and on slabs of few slots retired and remade
//! through the heap's lock at every turn.
//!
//! **Free.** The slot's live bit is cleared with one atomic AND (`Slabs::kill`; a second free
//! finds it clear and is refused before anything is written), the free writes the header's
//! state "free" on the device (as every free did), and the slot goes onto this thread's stack
//! for its class. It stays *held* in its slab's bitmap: nobody else can hand it out, and its
//! slab cannot be retired under it. A full stack, or a thread over its byte budget, gives the
//! older half of the stack back to the slabs (`Slabs::release`, one class lock per run of
//! slots of one lane): the batched free.
//!
//! **Alloc.** A request pops the newest slot of its class, writes the whole header (one
//! 16-byte store, as an allocation from the slab does) and sets the live bit. An empty stack
//! takes `REFILL` slots from the thread's lane under one class lock (`Slabs::take`).
//!
//! **Crash order.** A slot in a cache is, on the device, a slot whose header says "free" (or a
//! slot never written): recovery sees it as free, and a slab whose slots are all free or
//! cached as free space, as it always did. A completed free is free after a crash whether its
//! slot was cached or not; a cached slot handed out again is written exactly as a slot taken
//! from the slab. No device byte is read, none more is written.
//!
//! **Who sees cached slots.** They sit inside allocated slab extents, so evacuation copies
//! them with their slabs and the extent heap never hands them out; `next_block`,
//! `usable_size` and the statistics ask the live bits, and count the cached bytes as idle
//! (`cached_totals`). A thread's cache goes back to the slabs when the thread exits
//! (`on_thread_exit`), when it asks for statistics, and when its tier is full; in a forked
//! child, the caches of the threads that did not come along go back at once.
//!
//! **Which tiers.** Only tiers given an id by `enable` (the tiers `device::open` keeps for the
//! process, which never move nor go away; tests enable leaked ones). Each thread has one
//! entry per device kind; an entry names its tier by that id.
//!
//! Lock order: the registry's lock, then a slab class's, then the heap's.

use super::extent_stash::{self, ExtentStash};
use super::slabs::{self, CLASS_COUNT};
use super::DeviceTier;
use crate::futex_mutex::Mutex;
use crate::os;
use crate::thread_slot::ExitKey;
use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// Slots a class's stack holds.
pub(crate) const CLASS_SLOTS: usize = 8;
/// Slots an empty stack takes from the slabs at once (one of them is handed out).
const REFILL: usize = CLASS_SLOTS / 2;
/// The most bytes (slots, headers included) one thread holds for one tier, whatever the
/// tier's size.
const BUDGET_MAX: u64 = 256 << 10;
/// Device kinds (`Cxl`, `Cmb`, `Pmr`): a thread's entries, by `kind - 1`.
const KINDS: usize = 3;

/// One class's cached slots, oldest first.
#[derive(Clone, Copy)]
struct Stack {
    n: u32,
    offsets: [u64; CLASS_SLOTS],
}

/// One thread's cache for one tier.
///
/// Invariants: `tier_id` is 0 or the id of a live tier whose slabs hold every slot on the
/// stacks, each held, not live, and on the stack of its class; `bytes` is the sum of their slot
/// bytes. Only the owning thread writes any field, but for `tier_id` set to 0 by the tier's
/// drop (tests) and a forked child's handler (the owner is gone there); the counters are
/// read by other threads (statistics).
#[repr(align(64))]
struct Entry {
    tier_id: AtomicU64,
    /// The tier, as of the entry's last use (for the thread's exit).
    tier: AtomicPtr<DeviceTier>,
    bytes: AtomicU64,
    allocations: AtomicU64,
    frees: AtomicU64,
    stacks: UnsafeCell<[Stack; CLASS_COUNT]>,
}

/// A thread's caches, one mapping per thread, linked in the registry: slots, and extents
/// (`extent_stash`), each by device kind. `repr(C)`: the slot entries first, at the block's
/// start, as the slot paths address them (reordered, they paid one more add each).
#[repr(C)]
struct ThreadSlots {
    entries: [Entry; KINDS],
    stashes: [ExtentStash; KINDS],
    prev: *mut ThreadSlots,
    next: *mut ThreadSlots,
}

/// Every thread's caches (for statistics, a forked child and a tier's drop).
struct Registry {
    head: *mut ThreadSlots,
}

// SAFETY: the list is only walked and changed under the registry's lock.
unsafe impl Send for Registry {}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    head: core::ptr::null_mut(),
});
static EXIT_KEY: ExitKey = ExitKey::new();
/// Ids handed to tiers by `enable` (0: none).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The cache word's values before a thread has caches and after it has exited (addresses).
pub(crate) static UNSET: u8 = 0;
pub(crate) static EXITED: u8 = 0;
crate::thread_slot::initial_exec_word!(
    cache_word,
    "__tiermalloc_device_slot_cache",
    crate::device::slot_cache::UNSET
);

/// A fresh id for a tier whose slots threads may cache.
pub(crate) fn new_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The byte budget of one thread's entry for a tier of `region_len` bytes.
pub(crate) fn budget_of(region_len: u64) -> u64 {
    (region_len / 64).min(BUDGET_MAX)
}

/// Adds `n` to a counter only its owner writes (a load and a store, no locked instruction).
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// This thread's caches, made at its first call; `None` once it is exiting, or without host
/// memory.
#[inline]
fn this_thread() -> Option<&'static ThreadSlots> {
    let word = cache_word::get();
    if word == core::ptr::addr_of!(UNSET) as usize {
        return make_for_this_thread();
    }
    if word == core::ptr::addr_of!(EXITED) as usize {
        return None;
    }
    // SAFETY: the word holds this thread's mapping until its exit handler runs.
    Some(unsafe { &*(word as *const ThreadSlots) })
}

#[cold]
fn make_for_this_thread() -> Option<&'static ThreadSlots> {
    let size = os::page_round(core::mem::size_of::<ThreadSlots>());
    // Zeroed: every entry unused, every stack empty, no links.
    let block = os::map_anonymous(size)?.cast::<ThreadSlots>().as_ptr();
    {
        let mut registry = REGISTRY.lock();
        // SAFETY: our fresh mapping, and the head under the lock.
        unsafe {
            (*block).next = registry.head;
            if !registry.head.is_null() {
                (*registry.head).prev = block;
            }
        }
        registry.head = block;
    }
    // Usable before the key is registered: registering may allocate.
    cache_word::set(block as usize);
    EXIT_KEY.call_at_exit(block.cast(), on_thread_exit);
    // SAFETY: the mapping lives until this thread's exit handler.
    Some(unsafe { &*block })
}

/// The pthread key's destructor: gives the exiting thread's cached slots back and forgets its
/// caches; the thread's later frees and requests (other destructors) go to the slabs.
///
/// # Safety
/// Called once per thread, by pthread, with the value registered for it: its `ThreadSlots`
/// block, in the registry.
unsafe extern "C" fn on_thread_exit(value: *mut c_void) {
    cache_word::set(core::ptr::addr_of!(EXITED) as usize);
    extent_stash::forget_current();
    let block = value.cast::<ThreadSlots>();
    let mut registry = REGISTRY.lock();
    // SAFETY: the value registered for this thread is its caches, in the registry.
    unsafe { retire(&mut registry, block) };
}

/// Gives every slot of `block`'s entries back to their tiers, folds its counts into theirs,
/// unlinks it and unmaps it. Its thread is gone or exiting.
///
/// # Safety
/// `block` is in the registry, whose lock the caller holds; nobody uses it any more.
unsafe fn retire(registry: &mut Registry, block: *mut ThreadSlots) {
    // SAFETY: per the contract.
    let slots = unsafe { &*block };
    for entry in &slots.entries {
        if entry.tier_id.load(Ordering::Relaxed) == 0 {
            continue;
        }
        // SAFETY: an entry in use names a live tier, at the address of its last use.
        let tier = unsafe { &*entry.tier.load(Ordering::Relaxed) };
        // SAFETY: the owner is gone: the stacks are ours.
        unsafe { tier.give_back_all(entry) };
        tier.allocations
            .add(entry.allocations.load(Ordering::Relaxed));
        tier.frees.add(entry.frees.load(Ordering::Relaxed));
        entry.tier_id.store(0, Ordering::Relaxed);
    }
    for stash in &slots.stashes {
        if let Some(tier) = stash.tier() {
            // SAFETY: the owner is gone: the stash is ours (under the registry's lock).
            unsafe { tier.retire_stash(stash) };
        }
    }
    // SAFETY: links under the lock, per the contract.
    unsafe {
        let (prev, next) = ((*block).prev, (*block).next);
        if prev.is_null() {
            registry.head = next;
        } else {
            (*prev).next = next;
        }
        if !next.is_null() {
            (*next).prev = prev;
        }
        os::unmap(
            block.cast(),
            os::page_round(core::mem::size_of::<ThreadSlots>()),
        );
    }
}

/// The cached slots and stashed extents of every thread for the tier `tier_id`:
/// `(bytes, allocations, frees)` counted by the caches (the slabs, lanes and heap count the
/// rest); `None` if `wait` is false and the registry is locked.
pub(crate) fn cached_totals(tier_id: u64, wait: bool) -> Option<(u64, u64, u64)> {
    if tier_id == 0 {
        return Some((0, 0, 0));
    }
    let registry = if wait {
        REGISTRY.lock()
    } else {
        REGISTRY.try_lock()?
    };
    let mut totals = (0, 0, 0);
    let mut at = registry.head;
    while !at.is_null() {
        // SAFETY: a registered block, under the lock.
        let slots = unsafe { &*at };
        for e in slots
            .entries
            .iter()
            .filter(|e| e.tier_id.load(Ordering::Relaxed) == tier_id)
        {
            totals.0 += e.bytes.load(Ordering::Relaxed);
            totals.1 += e.allocations.load(Ordering::Relaxed);
            totals.2 += e.frees.load(Ordering::Relaxed);
        }
        for stash in slots.stashes.iter().filter(|s| s.is_for(tier_id)) {
            let (bytes, allocations, frees) = stash.figures();
            totals = (totals.0 + bytes, totals.1 + allocations, totals.2 + frees);
        }
        at = slots.next;
    }
    Some(totals)
}

/// Forgets every thread's entry and stash for the tier `tier_id`, which is going away
/// (tests): its slots and extents go with it.
#[cfg(test)]
pub(crate) fn forget_tier(tier_id: u64) {
    if tier_id == 0 {
        return;
    }
    let registry = REGISTRY.lock();
    let mut at = registry.head;
    while !at.is_null() {
        // SAFETY: a registered block, under the lock.
        let slots = unsafe { &*at };
        for e in &slots.entries {
            if e.tier_id.load(Ordering::Relaxed) == tier_id {
                e.tier_id.store(0, Ordering::Relaxed);
            }
        }
        for stash in slots.stashes.iter().filter(|s| s.is_for(tier_id)) {
            stash.forget();
        }
        at = slots.next;
    }
}

/// This thread's extent stash for device kind `kind`, its caches made now if need be; `None`
/// once it is exiting, or without host memory.
pub(crate) fn stash_of_this_thread(kind: crate::kind::Kind) -> Option<&'static ExtentStash> {
    Some(&this_thread()?.stashes[kind as usize - 1])
}

/// This thread's extent stash for device kind `kind` if its caches are made (none is made).
pub(crate) fn stash_if_made(kind: crate::kind::Kind) -> Option<&'static ExtentStash> {
    let word = cache_word::get();
    let (unset, exited) = (core::ptr::addr_of!(UNSET), core::ptr::addr_of!(EXITED));
    if word == unset as usize || word == exited as usize {
        return None;
    }
    // SAFETY: the word holds this thread's mapping until its exit handler runs.
    Some(&unsafe { &*(word as *const ThreadSlots) }.stashes[kind as usize - 1])
}

/// Takes the registry's lock and keeps it across `fork` (prepare handler; before the tiers').
pub(crate) fn lock_for_fork() {
    core::mem::forget(REGISTRY.lock());
}

/// Releases the lock `lock_for_fork` kept (parent handler).
pub(crate) fn unlock_after_fork() {
    // SAFETY: the prepare handler of this same fork took it and forgot its guard.
    unsafe { REGISTRY.force_unlock() };
}

/// The child handler, after the tiers': the caches of every thread but this one belong to
/// threads the child does not have, and go back to the slabs; then the lock is released.
pub(crate) fn after_fork_in_child() {
    let mine = cache_word::get() as *mut ThreadSlots;
    // The child has one thread: the lock the prepare handler kept guards nothing now.
    unlock_after_fork();
    let mut registry = REGISTRY.lock();
    let mut at = registry.head;
    while !at.is_null() {
        // SAFETY: a registered block; the child has one thread, which holds the lock.
        let next = unsafe { (*at).next };
        if at != mine {
            // SAFETY: as above; its thread does not exist here.
            unsafe { retire(&mut registry, at) };
        }
        at = next;
    }
}

impl Entry {
    /// The stacks.
    ///
    /// # Safety
    /// The caller is the entry's thread (or its thread is gone), and holds no other reference.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    unsafe fn stacks(&self) -> &mut [Stack; CLASS_COUNT] {
        // SAFETY: per the contract.
        unsafe { &mut *self.stacks.get() }
    }
}

impl DeviceTier {
    /// This thread's entry for this tier, if the tier caches slots (claimed now if unused).
    #[inline]
    fn slot_entry(&self) -> Option<&'static Entry> {
        let id = self.slot_cache_id.load(Ordering::Relaxed);
        if id == 0 {
            return None;
        }
        let entry = &this_thread()?.entries[self.kind as usize - 1];
        let named = entry.tier_id.load(Ordering::Relaxed);
        if named != id {
            if named != 0 {
                return None; // another tier of the same kind (tests)
            }
            // SAFETY: our own entry, unused: its stacks are ours.
            unsafe {
                *entry.stacks() = [Stack {
                    n: 0,
                    offsets: [0; CLASS_SLOTS],
                }; CLASS_COUNT]
            };
            entry.bytes.store(0, Ordering::Relaxed);
            entry.allocations.store(0, Ordering::Relaxed);
            entry.frees.store(0, Ordering::Relaxed);
            entry.tier_id.store(id, Ordering::Relaxed);
        }
        entry.tier.store(
            self as *const DeviceTier as *mut DeviceTier,
            Ordering::Relaxed,
        );
        Some(entry)
    }

    /// Gives the held slots at `offsets` back to their slabs (a slab emptied is retired).
    fn release_slots(&self, offsets: &[u64]) {
        self.slabs
            .release(offsets, |slab| self.retire_slab(slab), false);
    }

    /// The offset of a live slot of `class` for this thread, its header written: from its
    /// cache when it has one (no lock), else from the slabs (`REFILL` at a time).
    pub(super) fn alloc_slot(&self, class: usize) -> Option<u64> {
        let slot = slabs::usable_of(class) + super::HEADER_SIZE;
        let Some(entry) = self.slot_entry() else {
            let (offset, slot) = self.slabs.alloc(class, |lane| self.new_slab(class, lane))?;
            self.write_header(offset, slot);
            return Some(offset);
        };
        // SAFETY: this thread's entry.
        let stack = &mut unsafe { entry.stacks() }[class - 1];
        let offset = if stack.n > 0 {
            stack.n -= 1;
            bump(&entry.bytes, slot.wrapping_neg());
            stack.offsets[stack.n as usize]
        } else {
            let mut batch = [0u64; REFILL];
            let mut taken = self
                .slabs
                .take(class, &mut batch, |lane| self.new_slab(class, lane));
            if taken == 0 {
                // Full: this thread's cached slots may hold slabs that would make room.
                self.give_back_own_slots();
                taken = self
                    .slabs
                    .take(class, &mut batch, |lane| self.new_slab(class, lane));
                if taken == 0 {
                    return None;
                }
            }
            // SAFETY: this thread's entry (again: `give_back_own_slots` used it).
            let stack = &mut unsafe { entry.stacks() }[class - 1];
            for &o in batch[1..taken].iter().rev() {
                stack.offsets[stack.n as usize] = o;
                stack.n += 1;
            }
            bump(&entry.bytes, slot * (taken as u64 - 1));
            batch[0]
        };
        self.write_header(offset, slot);
        // After the header: a free that clears the bit sees it written (`live_bitmap`).
        self.slabs.revive(offset);
        bump(&entry.allocations, 1);
        Some(offset)
    }

    /// Frees the slot whose header is at `offset`, if it is in a slab: `None` when it is not
    /// (the extent heap's), else whether it was a live slot (refused: why not).
    pub(super) fn free_slot(&self, offset: u64) -> Option<Result<(), super::FreeError>> {
        // Blocks outside the slabs leave at the first test, before the thread's cache is
        // looked up.
        let class = match self.slabs.kill(offset) {
            slabs::SlabKill::NotSlab => return None,
            slabs::SlabKill::Refused(e) => return Some(Err(e)),
            slabs::SlabKill::Killed { class } => class,
        };
        // The slot is still held: nobody else writes its header now.
        self.mark_free(offset);
        let Some(entry) = self.slot_entry() else {
            self.slabs
                .release(&[offset], |slab| self.retire_slab(slab), true);
            return Some(Ok(()));
        };
        bump(&entry.frees, 1);
        let slot = slabs::usable_of(class) + super::HEADER_SIZE;
        // SAFETY: this thread's entry.
        let stack = &mut unsafe { entry.stacks() }[class - 1];
        let over = entry.bytes.load(Ordering::Relaxed) + slot > self.slot_budget;
        if stack.n as usize == CLASS_SLOTS || over {
            // The older half back to the slabs: batched.
            let give = (stack.n as usize).div_ceil(2);
            let mut back = [0u64; CLASS_SLOTS];
            back[..give].copy_from_slice(&stack.offsets[..give]);
            stack.offsets.copy_within(give..stack.n as usize, 0);
            stack.n -= give as u32;
            bump(&entry.bytes, (slot * give as u64).wrapping_neg());
            self.release_slots(&back[..give]);
        }
        // SAFETY: as above (`release_slots` does not touch the stacks).
        let stack = &mut unsafe { entry.stacks() }[class - 1];
        if entry.bytes.load(Ordering::Relaxed) + slot > self.slot_budget {
            // Still over budget (other classes' slots fill it, or a tiny tier's budget is
            // below one slot): straight back, as without a cache.
            self.release_slots(&[offset]);
        } else {
            stack.offsets[stack.n as usize] = offset;
            stack.n += 1;
            bump(&entry.bytes, slot);
        }
        Some(Ok(()))
    }

    /// Gives every slot of this thread's cache for this tier back to the slabs (statistics,
    /// a full tier). A thread without caches gets none made.
    pub(super) fn give_back_own_slots(&self) {
        let word = cache_word::get();
        if word == core::ptr::addr_of!(UNSET) as usize
            || word == core::ptr::addr_of!(EXITED) as usize
        {
            return;
        }
        if let Some(entry) = self.slot_entry() {
            // SAFETY: this thread's entry.
            unsafe { self.give_back_all(entry) };
        }
    }

    /// Gives every slot on `entry`'s stacks back to the slabs.
    ///
    /// # Safety
    /// The caller is the entry's thread, or its thread is gone; the entry names this tier.
    unsafe fn give_back_all(&self, entry: &Entry) {
        // SAFETY: per the contract.
        let stacks = unsafe { entry.stacks() };
        for stack in stacks.iter_mut() {
            let n = stack.n as usize;
            stack.n = 0;
            self.release_slots(&stack.offsets[..n]);
        }
        entry.bytes.store(0, Ordering::Relaxed);
    }

    /// Lets threads cache this tier's slots (see the module comment).
    ///
    /// # Safety
    /// The tier is not moved from now on (but into its drop), and outlives every thread that
    /// uses it, or is dropped only once those threads no longer use it (its drop forgets
    /// their entries).
    pub(crate) unsafe fn enable_slot_cache(&self) {
        self.slot_cache_id.store(new_id(), Ordering::Relaxed);
    }
}

const _: () = assert!(REFILL >= 1 && REFILL <= CLASS_SLOTS);
const _: () = assert!(CLASS_SLOTS < u32::MAX as usize);
