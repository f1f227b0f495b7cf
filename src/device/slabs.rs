//! Slabs for small device blocks: 16 KiB extents of a device tier, each cut into equal slots
//! of one size class, with every piece of their metadata in host DRAM.
//!
//! A block of up to `SLAB_MAX_USABLE` bytes (16-byte alignment) is a slot: its 16-byte header,
//! then the block. A slab starts with a 16-byte marker header (`SLAB_MARKER`, written by the
//! tier: its class, for a recovery scan), then its slots. The extent heap (`heap`) serves the
//! slab itself, aligned to its own size, so the slab of a block is found by dividing its offset: `descs[offset / SLAB_BYTES]`, one
//! descriptor per 16 KiB window of the region, in host memory mapped once (`MAP_NORESERVE`,
//! so a window that never holds a slab costs nothing). A descriptor holds the slab's class,
//! a bitmap of live slots and their count.
//!
//! Each size class has its own locks, one per lane (`lane`: every thread allocates from one
//! lane of each class), each over the lane's list of slabs with free slots and every bitmap
//! of the lane's slabs; threads allocating or freeing different sizes, or the same size in
//! different lanes, never meet, and none of them takes the tier's heap lock but to make or
//! retire a slab. Below, "the class's lock" of a slab means the lock of its class in its
//! lane. A slab whose last block is freed goes back to the extent heap at once (it coalesces
//! with its neighbours, so a tier whose blocks are all freed is one free extent again).
//!
//! A free finds the descriptor of its window without a lock (its `class`, atomic), then takes
//! that class's lock and reads the class again: a slab is made and retired under its class's
//! lock, so once locked, the descriptor says truly whether the window is a slab of that class.
//! The class is set (`claim`) and cleared (`unclaim`) by the tier while it also holds the
//! extent heap's lock, in the same step that takes the slab's extent from the heap or gives it
//! back: a free that found no slab and asks the heap instead can never see the slab's extent
//! as an ordinary allocated block.
//! A double free finds its slot's bit clear; a pointer that is not a slot's block start is
//! refused. Device memory is only written: the header on `alloc`, its state on `free` (by the
//! caller, while the class lock still holds the slot, so a retired slab's next owner never
//! sees a late write).

use crate::device::extent_heap::FreeError;
use crate::os;
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, Ordering};
pub(crate) use lane::{Lane, LANES};

pub(crate) mod lane;

/// Bytes of a slab, and the alignment of its offset in the region. 16 KiB rather than 64:
/// on the fragmentation replay of a gcc trace (7 MiB live), best fit's footprint was 1.39x
/// the live bytes with 64 KiB slabs, 1.23x with 16 KiB, 1.17x without slabs; python3's 1.19,
/// 1.16 and 1.16 (`benches/device/fragmentation.py`; slabs up to 512 bytes then). Slabs up to
/// 4080 bytes made those 1.27x and 1.17x, and a device pair twice as fast (throughput.c,
/// 16..4095 B: 105 -> 50 ns with one thread, 1.1 us -> 0.33 us with two).
pub(crate) const SLAB_BYTES: u64 = 16 << 10;
/// The largest block a slab serves (a 4 KiB slot with its header); larger ones are extents
/// of their own, placed by the tier's fit.
pub(crate) const SLAB_MAX_USABLE: usize = 4080;
/// Bytes of a slot's header.
const HEADER: u64 = 16;
/// Bytes at the start of a slab before its first slot: the slab's own header on the device,
/// the marker a recovery scan recognises it by (`device::persist`).
pub(crate) const SLAB_MARKER: u64 = 16;
/// Classes `1..=EXACT_CLASSES` have `16 * class` usable bytes; above 512 bytes, four classes
/// per power of two (up to a quarter of a block unused), so that few classes keep few partly
/// used slabs: those are `WIDE_USABLE`.
const EXACT_CLASSES: usize = 32;
const WIDE_USABLE: [u64; 12] = [
    640, 768, 896, 1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584, 4080,
];
const CLASSES: usize = EXACT_CLASSES + WIDE_USABLE.len();

const _: () = assert!(WIDE_USABLE[WIDE_USABLE.len() - 1] == SLAB_MAX_USABLE as u64);
/// Slots of the smallest class (32-byte slots).
const MAX_SLOTS: usize = ((SLAB_BYTES - SLAB_MARKER) / (16 + HEADER)) as usize;
const WORDS: usize = MAX_SLOTS.div_ceil(64);
/// "No slab" in the lists (descriptor indices are below the window count).
const NONE: u32 = u32::MAX;
/// Words of a slab's bitmap of live slots.
pub(crate) const SLAB_WORDS: usize = WORDS;

/// The state of one 16 KiB window of the region.
///
/// Invariants: `class == 0` unless the window is the extent of a live slab, and then it is
/// `Lane::key(class)` of the slab's lane and class; every other field is read and written
/// only under the lock of that class in that lane (`class` is set and cleared under it
/// too). In a slab, `live` counts the set bits of `bitmap`, which lie below
/// `slots = SLAB_BYTES / slot_bytes(class)`; the slab is in its lane's partial list of its
/// class exactly when `live < slots`, linked by `prev`/`next`.
// A cache line each, as `ClassList`: slabs cut one after another have adjacent descriptors,
// often of classes other threads are using.
#[repr(align(64))]
struct SlabDesc {
    class: AtomicU8,
    fields: UnsafeCell<SlabFields>,
}

struct SlabFields {
    live: u32,
    /// Lowest word that may have a clear bit (a search hint, never past one).
    hint: u32,
    prev: u32,
    next: u32,
    bitmap: [u64; WORDS],
}

/// Per class: the slabs with a free slot, the bytes of its slabs not in live slots (free
/// slots and each slab's tail), and its traffic (counted here, under the lock already held,
/// rather than in atomics every thread would write).
// A cache line each: two threads working in two classes must not share one (throughput.c,
// 16..511 B, two threads: 226-235 ns per pair packed, 192-203 aligned).
#[repr(align(64))]
struct ClassList {
    partial: u32,
    idle_bytes: u64,
    allocations: u64,
    frees: u64,
}

/// The figures of all classes together.
#[derive(Default)]
pub(crate) struct SlabTotals {
    pub idle_bytes: u64,
    pub allocations: u64,
    pub frees: u64,
}

impl SlabTotals {
    fn add(&mut self, class: &ClassList) {
        self.idle_bytes += class.idle_bytes;
        self.allocations += class.allocations;
        self.frees += class.frees;
    }
}

/// The slabs of one device tier. `descs` maps `windows` descriptors (zeroed: no slab).
pub(crate) struct Slabs {
    descs: NonNull<SlabDesc>,
    windows: usize,
    /// `classes[lane][class - 1]`.
    classes: [[crate::futex_mutex::Mutex<ClassList>; CLASSES]; LANES],
}

// SAFETY: descriptors are shared through atomics and the class locks (see SlabDesc).
unsafe impl Send for Slabs {}
// SAFETY: as above.
unsafe impl Sync for Slabs {}

/// Usable bytes of a block of `class`.
pub(crate) const fn usable_of(class: usize) -> u64 {
    if class <= EXACT_CLASSES {
        16 * class as u64
    } else {
        WIDE_USABLE[class - EXACT_CLASSES - 1]
    }
}

/// Bytes of a slot of `class` (header included).
const fn slot_bytes(class: usize) -> u64 {
    usable_of(class) + HEADER
}

/// Host bytes mapped for the descriptors of `windows` windows.
fn map_bytes(windows: usize) -> usize {
    os::page_round(windows.max(1) * core::mem::size_of::<SlabDesc>())
}

/// Slots of a slab of `class`: slot `n`'s header is at `SLAB_MARKER + n * slot_bytes(class)`
/// from the slab's start.
pub(crate) const fn slots_of(class: usize) -> usize {
    ((SLAB_BYTES - SLAB_MARKER) / slot_bytes(class)) as usize
}

/// The offset in the region of slot `n` of the slab at window `index`.
const fn slot_offset(index: usize, class: usize, n: usize) -> u64 {
    index as u64 * SLAB_BYTES + SLAB_MARKER + n as u64 * slot_bytes(class)
}

/// The number of classes (1..=CLASSES).
pub(crate) const CLASS_COUNT: usize = CLASSES;

/// What a free of an offset found.
pub(crate) enum SlabFree {
    /// The offset is not in a slab: the extent heap owns it.
    NotSlab,
    /// The slot was freed.
    Freed,
    Refused(FreeError),
}

impl Slabs {
    /// Descriptors for a region of `region_len` bytes; `None` without host memory.
    pub fn new(region_len: u64) -> Option<Slabs> {
        let windows = (region_len / SLAB_BYTES) as usize;
        // Zeroed memory is `windows` descriptors of class 0 (no slab).
        let descs = os::map_anonymous(map_bytes(windows))?.cast::<SlabDesc>();
        Some(Slabs {
            descs,
            windows,
            classes: [const {
                [const {
                    crate::futex_mutex::Mutex::new(ClassList {
                        partial: NONE,
                        idle_bytes: 0,
                        allocations: 0,
                        frees: 0,
                    })
                }; CLASSES]
            }; LANES],
        })
    }

    /// The class serving `size` bytes at `align`, if slabs serve it.
    #[inline]
    pub fn class_of(size: usize, align: usize) -> Option<usize> {
        if size > SLAB_MAX_USABLE || align > 16 {
            return None;
        }
        if size <= 16 * EXACT_CLASSES {
            return Some(size.max(1).div_ceil(16));
        }
        let wide = WIDE_USABLE.iter().position(|&u| u >= size as u64)?;
        Some(EXACT_CLASSES + 1 + wide)
    }

    /// The lock of `class`'s list in `lane`.
    fn list(&self, lane: Lane, class: usize) -> &crate::futex_mutex::Mutex<ClassList> {
        &self.classes[lane.0 as usize][class - 1]
    }

    /// Every list lock, lane by lane.
    fn all_lists(&self) -> impl Iterator<Item = &crate::futex_mutex::Mutex<ClassList>> {
        self.classes.iter().flatten()
    }

    fn desc(&self, index: usize) -> &SlabDesc {
        debug_assert!(index < self.windows);
        // SAFETY: `index < windows`; the descriptors live as long as `self`.
        unsafe { &*self.descs.as_ptr().add(index) }
    }

    /// The fields of descriptor `index`.
    ///
    /// # Safety
    /// The caller holds the lock of the class the descriptor belongs to (or is about to).
    #[allow(clippy::mut_from_ref)]
    unsafe fn fields(&self, index: usize) -> &mut SlabFields {
        // SAFETY: per the contract, nobody else touches them.
        unsafe { &mut *self.desc(index).fields.get() }
    }

    /// Marks the window at `offset` (a fresh `SLAB_BYTES` extent) as a slab of `class` in
    /// `lane` (the lane `alloc` passed to its `new_slab`). The caller holds the extent heap's
    /// lock that gave it the extent.
    pub fn claim(&self, offset: u64, class: usize, lane: Lane) {
        self.desc((offset / SLAB_BYTES) as usize)
            .class
            .store(lane.key(class), Ordering::Release);
    }

    /// Marks the window at `offset` as no slab. The caller holds the extent heap's lock and
    /// gives the slab's extent back under it.
    pub fn unclaim(&self, offset: u64) {
        self.desc((offset / SLAB_BYTES) as usize)
            .class
            .store(0, Ordering::Release);
    }

    /// A slot of `class`, from this thread's lane: `(slot offset, slot bytes)`; the header
    /// goes at the slot offset. `new_slab(lane)` gets a `SLAB_BYTES` extent aligned to
    /// `SLAB_BYTES` from the extent heap, and `claim`s it for `class` in `lane`, when every
    /// slab of the lane's class is full (`None`: the tier is full or at its limit).
    pub fn alloc(
        &self,
        class: usize,
        new_slab: impl FnOnce(Lane) -> Option<u64>,
    ) -> Option<(u64, u64)> {
        let slot = slot_bytes(class);
        let slots = slots_of(class);
        let lane = Lane::of_this_thread();
        let mut list = self.list(lane, class).lock();
        if list.partial == NONE {
            let offset = new_slab(lane)?;
            let index = (offset / SLAB_BYTES) as usize;
            debug_assert!(offset % SLAB_BYTES == 0 && index < self.windows);
            // SAFETY: the window was free space until now: no lock guards it but ours.
            let f = unsafe { self.fields(index) };
            *f = SlabFields {
                live: 0,
                hint: 0,
                prev: NONE,
                next: NONE,
                bitmap: [0; WORDS],
            };
            debug_assert_eq!(
                self.desc(index).class.load(Ordering::Relaxed),
                lane.key(class)
            );
            list.partial = index as u32;
            list.idle_bytes += SLAB_BYTES;
        }
        let index = list.partial as usize;
        // SAFETY: a slab of this class; we hold its lock.
        let f = unsafe { self.fields(index) };
        let mut word = f.hint as usize;
        while f.bitmap[word] == u64::MAX {
            word += 1;
        }
        let bit = (!f.bitmap[word]).trailing_zeros() as usize;
        let n = word * 64 + bit;
        debug_assert!(n < slots, "a partial slab has a free slot below `slots`");
        f.bitmap[word] |= 1 << bit;
        f.hint = word as u32;
        f.live += 1;
        if f.live as usize == slots {
            // Full: off the partial list (it is the head).
            list.partial = f.next;
            if f.next != NONE {
                // SAFETY: a slab of this class.
                unsafe { self.fields(f.next as usize) }.prev = NONE;
            }
            f.next = NONE;
        }
        list.idle_bytes -= slot;
        list.allocations += 1;
        Some((slot_offset(index, class, n), slot))
    }

    /// Whether the live block whose header is at `offset` is a slot of a slab. No lock: a slab
    /// holding a live block is neither made nor retired until that block is freed.
    pub fn holds_live(&self, offset: u64) -> bool {
        self.class_at(offset).is_some()
    }

    /// The window, lane and class of the slab holding `offset` (`None`: no slab there).
    fn class_at(&self, offset: u64) -> Option<(usize, Lane, usize)> {
        let index = (offset / SLAB_BYTES) as usize;
        if index >= self.windows {
            return None;
        }
        match self.desc(index).class.load(Ordering::Acquire) {
            0 => None,
            key => {
                let (lane, class) = Lane::of_key(key);
                Some((index, lane, class))
            }
        }
    }

    /// Runs `f` on the slot whose header is at `offset` under its class's lock, with the
    /// slot's number (or the reason it is no live slot's start). `None`: no slab there.
    fn with_slot<R>(
        &self,
        offset: u64,
        f: impl FnOnce(&mut ClassList, usize, usize, Result<usize, FreeError>) -> R,
    ) -> Option<R> {
        loop {
            let (index, lane, class) = self.class_at(offset)?;
            let mut list = self.list(lane, class).lock();
            if self.desc(index).class.load(Ordering::Relaxed) != lane.key(class) {
                continue; // retired or remade since it was read: look again
            }
            let within = (offset - index as u64 * SLAB_BYTES).wrapping_sub(SLAB_MARKER);
            let slot = slot_bytes(class);
            let n = (within / slot) as usize;
            let found = if within % slot != 0 || n >= slots_of(class) {
                Err(FreeError::NotAllocated)
            } else {
                // SAFETY: a slab of `class`; we hold its lock.
                let bits = unsafe { self.fields(index) }.bitmap[n / 64];
                if bits & (1 << (n % 64)) == 0 {
                    Err(FreeError::DoubleFree)
                } else {
                    Ok(n)
                }
            };
            return Some(f(&mut list, index, class, found));
        }
    }

    /// The slot bytes (header included) of the live slot whose header is at `offset`.
    /// `None`: no slab there; `Some(None)`: a slab, but no live slot starts there.
    pub fn slot_len(&self, offset: u64) -> Option<Option<u64>> {
        self.with_slot(offset, |_, _, class, found| {
            found.ok().map(|_| slot_bytes(class))
        })
    }

    /// Frees the slot whose header is at `offset`. `mark_free` runs first, under the class
    /// lock, when the slot is a live one (it writes the header's state). When that was the
    /// slab's last block, `retire(slab offset)` runs, still under the class lock: it must
    /// `unclaim` the slab and give its extent back to the heap, under the heap's lock.
    pub fn free(
        &self,
        offset: u64,
        mark_free: impl FnOnce(),
        retire: impl FnOnce(u64),
    ) -> SlabFree {
        let freed = self.with_slot(offset, |list, index, class, found| {
            let n = match found {
                Ok(n) => n,
                Err(e) => return SlabFree::Refused(e),
            };
            mark_free();
            // SAFETY: a slab of `class`; we hold its lock.
            let f = unsafe { self.fields(index) };
            let was_full = f.live as usize == slots_of(class);
            f.bitmap[n / 64] &= !(1 << (n % 64));
            f.hint = f.hint.min((n / 64) as u32);
            f.live -= 1;
            list.idle_bytes += slot_bytes(class);
            list.frees += 1;
            if f.live == 0 {
                if !was_full {
                    self.unlink(list, index);
                }
                list.idle_bytes -= SLAB_BYTES;
                retire(index as u64 * SLAB_BYTES);
                // No check of the slab's class here: once `retire` has handed the window back
                // to the heap, another lane may already have claimed it as a new slab.
                return SlabFree::Freed;
            }
            if was_full {
                // Back on the partial list, at its head.
                f.prev = NONE;
                f.next = list.partial;
                if list.partial != NONE {
                    // SAFETY: a slab of this class.
                    unsafe { self.fields(list.partial as usize) }.prev = index as u32;
                }
                list.partial = index as u32;
            }
            SlabFree::Freed
        });
        freed.unwrap_or(SlabFree::NotSlab)
    }

    /// Takes slab `index` off its class's partial list (the caller holds the class lock).
    fn unlink(&self, list: &mut ClassList, index: usize) {
        // SAFETY: `index` and its neighbours are slabs of the locked class.
        unsafe {
            let (prev, next) = {
                let f = self.fields(index);
                (f.prev, f.next)
            };
            if prev == NONE {
                list.partial = next;
            } else {
                self.fields(prev as usize).next = next;
            }
            if next != NONE {
                self.fields(next as usize).prev = prev;
            }
        }
    }

    /// Installs a slab found by a recovery scan: the window at `offset` (an allocated extent
    /// of the heap) is a slab of `class`, in lane 0, whose live slots are the set bits of
    /// `live`. False (nothing changed) for a bad class, window or bitmap.
    pub fn adopt(&self, offset: u64, class: usize, live: &[u64; SLAB_WORDS]) -> bool {
        let index = (offset / SLAB_BYTES) as usize;
        if class == 0 || class > CLASSES || offset % SLAB_BYTES != 0 || index >= self.windows {
            return false;
        }
        let slots = slots_of(class);
        let count: u32 = live.iter().map(|w| w.count_ones()).sum();
        // A word at a time (a bit loop over the words past the slots cost a tenth of a large
        // recovery): the bits of word `w` that name no slot must be clear.
        let beyond = live.iter().enumerate().any(|(w, &bits)| {
            let slots_here = slots.saturating_sub(64 * w).min(64);
            let no_slot = if slots_here == 64 { 0 } else { u64::MAX << slots_here };
            bits & no_slot != 0
        });
        if count == 0 || beyond {
            return false;
        }
        let mut list = self.list(Lane(0), class).lock();
        // SAFETY: the window is no slab yet (its class is 0); we hold the class lock.
        let f = unsafe { self.fields(index) };
        *f = SlabFields {
            live: count,
            hint: 0,
            prev: NONE,
            next: NONE,
            bitmap: *live,
        };
        if (count as usize) < slots {
            f.next = list.partial;
            if list.partial != NONE {
                // SAFETY: a slab of this class.
                unsafe { self.fields(list.partial as usize) }.prev = index as u32;
            }
            list.partial = index as u32;
        }
        list.idle_bytes += SLAB_BYTES - count as u64 * slot_bytes(class);
        self.claim(offset, class, Lane(0));
        true
    }

    /// Makes the descriptors of windows `[first, first + count)` (clipped to the region)
    /// present in one call (`os::prefault_write`): a recovery scan about to `adopt` slabs
    /// there asks ahead, instead of a page fault every 32 descriptors.
    pub fn prefault_descs(&self, first: usize, count: usize) {
        let size = core::mem::size_of::<SlabDesc>();
        let base = self.descs.as_ptr() as usize;
        let from = (base + first.min(self.windows) * size) & !(os::PAGE_SIZE - 1);
        let to = os::page_round(base + (first + count).min(self.windows) * size);
        if to > from {
            os::prefault_write(from as *mut u8, to - from);
        }
    }

    /// The first live slot of the slab at `slab` (an extent offset) after slot offset
    /// `after` (from the first slot when `None`); `None` when there is none or no slab there.
    pub fn next_live(&self, slab: u64, after: Option<u64>) -> Option<u64> {
        let (index, lane, class) = self.class_at(slab)?;
        let list = self.list(lane, class).lock();
        if self.desc(index).class.load(Ordering::Relaxed) != lane.key(class) {
            return None;
        }
        let from = match after {
            None => 0,
            Some(o) => ((o - slab - SLAB_MARKER) / slot_bytes(class)) as usize + 1,
        };
        // SAFETY: a slab of `class`; we hold its lock.
        let f = unsafe { self.fields(index) };
        let n = (from..slots_of(class)).find(|&n| f.bitmap[n / 64] & (1 << (n % 64)) != 0)?;
        drop(list);
        Some(slot_offset(index, class, n))
    }

    /// The class of the live slab at `offset` (a window start), if one is there.
    pub fn slab_class(&self, offset: u64) -> Option<usize> {
        if offset % SLAB_BYTES != 0 {
            return None;
        }
        self.class_at(offset).map(|(_, _, class)| class)
    }

    /// Bytes of slabs that hold no live block (free slots, slab tails), and the blocks
    /// allocated and freed in slabs.
    pub fn totals(&self) -> SlabTotals {
        let mut t = SlabTotals::default();
        for list in self.all_lists() {
            t.add(&list.lock());
        }
        t
    }

    /// The totals, or `None` if a class lock is held (a statistics report from a signal
    /// handler must not wait for the thread it interrupted).
    pub fn try_totals(&self) -> Option<SlabTotals> {
        let mut t = SlabTotals::default();
        for list in self.all_lists() {
            t.add(&*list.try_lock()?);
        }
        Some(t)
    }

    /// Takes every class lock and keeps it (`fork` prepare handler).
    pub fn lock_all(&self) {
        for list in self.all_lists() {
            core::mem::forget(list.lock());
        }
    }

    /// Releases the locks `lock_all` kept.
    pub fn unlock_all(&self) {
        for list in self.all_lists() {
            // SAFETY: `lock_all` of this same fork took the lock and forgot its guard.
            unsafe { list.force_unlock() };
        }
    }
}

impl Slabs {
    /// Checks every invariant of `SlabDesc` and `ClassList` by walking all windows and every
    /// class's partial list, each class under its lock (tests only: it reads every
    /// descriptor).
    #[cfg(test)]
    pub fn check_invariants(&self) {
        for (lane, class) in (0..LANES as u8).flat_map(|l| (1..=CLASSES).map(move |c| (l, c))) {
            let key = Lane(lane).key(class);
            let list = self.list(Lane(lane), class).lock();
            let (slot, slots) = (slot_bytes(class), slots_of(class));
            // The partial list: slabs of this class with a free slot, doubly linked.
            let mut partial = std::collections::BTreeSet::new();
            let (mut prev, mut at) = (NONE, list.partial);
            while at != NONE {
                assert!(partial.insert(at), "class {class}: partial list loops at {at}");
                assert_eq!(self.desc(at as usize).class.load(Ordering::Relaxed), key);
                // SAFETY: a slab of this class, whose lock we hold.
                let f = unsafe { self.fields(at as usize) };
                assert_eq!(f.prev, prev, "class {class}: slab {at}'s prev");
                (prev, at) = (at, f.next);
            }
            let mut idle = 0;
            for index in 0..self.windows {
                if self.desc(index).class.load(Ordering::Relaxed) != key {
                    continue;
                }
                // SAFETY: as above.
                let f = unsafe { self.fields(index) };
                let ones: u32 = f.bitmap.iter().map(|w| w.count_ones()).sum();
                assert_eq!(f.live, ones, "slab {index}: live counts the bitmap");
                assert!(f.live > 0, "slab {index}: an empty slab is retired at once");
                for n in slots..WORDS * 64 {
                    assert_eq!(f.bitmap[n / 64] & 1 << (n % 64), 0, "slab {index}: bit {n}");
                }
                for word in 0..f.hint as usize {
                    let full = u64::MAX >> (64 - (slots - 64 * word).min(64));
                    assert_eq!(f.bitmap[word] & full, full, "slab {index}: hint past a free slot");
                }
                let is_partial = partial.contains(&(index as u32));
                assert_eq!((f.live as usize) < slots, is_partial, "slab {index} in the list");
                idle += SLAB_BYTES - u64::from(f.live) * slot;
            }
            assert_eq!(list.idle_bytes, idle, "class {class}: idle bytes");
            assert!(list.frees <= list.allocations);
        }
    }
}

impl Drop for Slabs {
    fn drop(&mut self) {
        // SAFETY: our own mapping; nothing refers to it once the tier is dropped.
        unsafe { os::unmap(self.descs.as_ptr().cast(), map_bytes(self.windows)) };
    }
}

#[cfg(test)]
mod tests;
