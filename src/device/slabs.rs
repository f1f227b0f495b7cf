//! Slabs for small device blocks: 16 KiB extents of a device tier, each cut into equal slots
//! of one size class, with every piece of their metadata in host DRAM.
//!
//! A block of up to `SLAB_MAX_USABLE` bytes (16-byte alignment) is a slot: its 16-byte header,
//! then the block. A slab starts with a 16-byte marker header (`SLAB_MARKER`, written by the
//! tier: its class, for a recovery scan), then its slots. The extent heap (`heap`) serves the
//! slab itself, aligned to its own size, so the slab of a block is found by dividing its offset:
//! `descs[offset / SLAB_BYTES]`, one descriptor per 16 KiB window of the region, in host memory
//! mapped once (`MAP_NORESERVE`, so a window that never holds a slab costs nothing). A descriptor
//! holds the slab's class, a bitmap of live slots and their count.
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
//! A slot is *held* while its bit in the descriptor's bitmap is set (under the class lock):
//! live, or waiting in a thread's cache (`slot_cache`). It is *live* while its bit in `live`,
//! one bit per 16 bytes of the region at the slot's header, is set (`lockfree::live_bitmap`,
//! no lock): live slots are held ones. A free clears the live bit with one atomic AND and so
//! needs no lock: a double free finds it clear, and two racing frees of one block cannot both
//! win; a pointer that is not a slot's block start is refused. The bit is keyed by the
//! header's place in the region, not by the slab, so a bit found set names a live block
//! starting there whatever slab holds it now. Giving a held slot back to its slab
//! (`release`) and taking free slots (`take`) are under the class lock, in batches. Device
//! memory is only written: the header on `alloc`, its state on `free` (by the caller, while
//! the slot is still held, so a retired slab's next owner never sees a late write).

use crate::device::extent_heap::FreeError;
use crate::lockfree::live_bitmap;
use crate::os;
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
pub(crate) use lane::{Lane, LANES};

mod adopt;
#[cfg(test)]
pub(crate) use adopt::headers_of;
pub(crate) use adopt::WINDOW_LIVE_WORDS;
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
/// too). In a slab, `bitmap` has a bit set per held slot (live, or in a thread's cache), and
/// `live` counts its set bits, which lie below
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
    /// Empty slabs cut ahead (`add_ahead`) that no slot was taken from yet: in the partial
    /// list. The only empty slabs (a slab emptied by a free is retired at once).
    ahead: u32,
    /// Slabs a slot was taken from that are not retired (made on demand or cut ahead), and
    /// the most of them at once: what a workload profile records per lane and class.
    slabs: u32,
    peak_slabs: u32,
    /// Slabs made because the list was empty (`take`'s `new_slab`: the heap lock on an
    /// allocation's path), slabs cut ahead, and cut-ahead slabs a slot was taken from.
    cut_on_demand: u32,
    ahead_cut: u32,
    ahead_used: u32,
    idle_bytes: u64,
    allocations: u64,
    frees: u64,
}

const _: () = assert!(core::mem::size_of::<ClassList>() == 64);

/// The figures of all classes together.
#[derive(Default)]
pub(crate) struct SlabTotals {
    pub idle_bytes: u64,
    pub allocations: u64,
    pub frees: u64,
    /// Slabs made on an allocation's path, cut ahead, and cut ahead then used.
    pub cut_on_demand: u64,
    pub ahead_cut: u64,
    pub ahead_used: u64,
}

impl SlabTotals {
    fn add(&mut self, class: &ClassList) {
        self.idle_bytes += class.idle_bytes;
        self.allocations += class.allocations;
        self.frees += class.frees;
        self.cut_on_demand += u64::from(class.cut_on_demand);
        self.ahead_cut += u64::from(class.ahead_cut);
        self.ahead_used += u64::from(class.ahead_used);
    }
}

/// The slabs of one device tier. `descs` maps `windows` descriptors (zeroed: no slab);
/// `live` maps `live_words` words of live bits, one per 16 bytes of the region.
///
/// Invariant: a live bit is set only at the header of a held slot of a live slab.
pub(crate) struct Slabs {
    descs: NonNull<SlabDesc>,
    windows: usize,
    live: NonNull<AtomicU64>,
    live_words: usize,
    /// `classes[lane][class - 1]`.
    classes: [[crate::futex_mutex::Mutex<ClassList>; CLASSES]; LANES],
    /// Bytes of the slabs cut ahead that no slot was taken from yet (every class's `ahead`):
    /// held by the heap, but not used by the workload (`ahead_unused_bytes`).
    ahead_bytes: AtomicU64,
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

/// Words of live bits for a region of `region_len` bytes (a bit per 16 bytes).
fn live_words_of(region_len: u64) -> usize {
    (region_len / HEADER).div_ceil(64).max(1) as usize
}

/// Host bytes mapped for `words` words of live bits.
fn live_map_bytes(words: usize) -> usize {
    os::page_round(words * core::mem::size_of::<AtomicU64>())
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

/// What clearing the live bit of an offset found (`Slabs::kill`).
pub(crate) enum SlabKill {
    /// The offset is not in a slab: the extent heap owns it.
    NotSlab,
    /// The live slot of this class at the offset is no longer live: the caller holds it and
    /// must give it back (`release`) or hand it out again (`revive`).
    Killed {
        class: usize,
    },
    Refused(FreeError),
}

/// What a free of an offset found.
#[cfg(test)]
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
        let live_words = live_words_of(region_len);
        // Zeroed memory: no live bit set.
        let Some(live) = os::map_anonymous(live_map_bytes(live_words)) else {
            // SAFETY: mapped just above, with this length; nothing refers to it.
            unsafe { os::unmap(descs.as_ptr().cast(), map_bytes(windows)) };
            return None;
        };
        Some(Slabs {
            descs,
            windows,
            live: live.cast::<AtomicU64>(),
            live_words,
            classes: [const {
                [const {
                    crate::futex_mutex::Mutex::new(ClassList {
                        partial: NONE,
                        ahead: 0,
                        slabs: 0,
                        peak_slabs: 0,
                        cut_on_demand: 0,
                        ahead_cut: 0,
                        ahead_used: 0,
                        idle_bytes: 0,
                        allocations: 0,
                        frees: 0,
                    })
                }; CLASSES]
            }; LANES],
            ahead_bytes: AtomicU64::new(0),
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
        // Four classes per power of two (`WIDE_USABLE`), found by arithmetic rather than a
        // search of the table (13 instructions a request on 16..4095-byte blocks).
        let s = size - 1;
        let log = usize::BITS - 1 - s.leading_zeros();
        let wide = (log as usize - 9) * 4 + (s >> (log - 2)) - 4;
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

    /// The live bits.
    fn live(&self) -> &[AtomicU64] {
        // SAFETY: mapped in `new` for `live_words` words; they live as long as `self`.
        unsafe { core::slice::from_raw_parts(self.live.as_ptr(), self.live_words) }
    }

    /// A slot of `class`, from this thread's lane, live: `(slot offset, slot bytes)`; the
    /// header goes at the slot offset (the caller writes it). `new_slab` as for `take`.
    pub fn alloc(
        &self,
        class: usize,
        new_slab: impl FnOnce(Lane) -> Option<u64>,
    ) -> Option<(u64, u64)> {
        let mut one = [0];
        if self.take_counted(class, &mut one, new_slab, true) == 0 {
            return None;
        }
        self.revive(one[0]);
        Some((one[0], slot_bytes(class)))
    }

    /// Holds up to `out.len()` free slots of `class` from this thread's lane, under one lock,
    /// and writes their offsets into `out`: how many (0 only when a slab was needed and
    /// `new_slab` gave none). The slots are not live (`revive` makes one so, its header
    /// written). `new_slab(lane)` gets a `SLAB_BYTES` extent aligned to `SLAB_BYTES` from the
    /// extent heap, and `claim`s it for `class` in `lane`, when every slab of the lane's class
    /// is full (`None`: the tier is full or at its limit); at most one slab is made per call.
    pub fn take(
        &self,
        class: usize,
        out: &mut [u64],
        new_slab: impl FnOnce(Lane) -> Option<u64>,
    ) -> usize {
        self.take_counted(class, out, new_slab, false)
    }

    /// `take`, counting the slots as allocations if `count`.
    fn take_counted(
        &self,
        class: usize,
        out: &mut [u64],
        new_slab: impl FnOnce(Lane) -> Option<u64>,
        count: bool,
    ) -> usize {
        let slot = slot_bytes(class);
        let slots = slots_of(class);
        let lane = Lane::of_this_thread();
        let mut list = self.list(lane, class).lock();
        let mut made = NONE;
        if list.partial == NONE {
            let Some(offset) = new_slab(lane) else {
                return 0;
            };
            made = self.start_slab(offset, lane, class);
            list.partial = made;
            list.idle_bytes += SLAB_BYTES;
            list.cut_on_demand += 1;
        }
        let mut taken = 0;
        while taken < out.len() && list.partial != NONE {
            let index = list.partial as usize;
            // SAFETY: a slab of this class; we hold its lock.
            let f = unsafe { self.fields(index) };
            if f.live == 0 {
                // The slab's first slot: in use from now. Empty, and not the one just made:
                // cut ahead (the only other empty slabs).
                if index as u32 != made {
                    list.ahead -= 1;
                    list.ahead_used += 1;
                    self.ahead_bytes.fetch_sub(SLAB_BYTES, Ordering::Relaxed);
                }
                list.slabs += 1;
                list.peak_slabs = list.peak_slabs.max(list.slabs);
            }
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
            out[taken] = slot_offset(index, class, n);
            taken += 1;
        }
        list.idle_bytes -= slot * taken as u64;
        if count {
            list.allocations += taken as u64;
        }
        taken
    }

    /// The descriptor of the fresh slab of `class` in `lane` at `offset` (a `SLAB_BYTES`
    /// extent just claimed), its fields reset and unlinked; its index. Under the class lock.
    fn start_slab(&self, offset: u64, lane: Lane, class: usize) -> u32 {
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
        index as u32
    }

    /// Cuts a slab of `class` for `lane` ahead of need (a workload profile's reserve, from a
    /// helper thread): `new_slab(lane)` as for `take`, which must also `note_ahead` the
    /// extent under the heap lock. The slab stays empty in the lane's partial list, second
    /// (after the slab allocations take from now, so that that one fills first), until a
    /// `take` of the lane takes its first slot without the heap's lock. False if no slab was
    /// made: the lane's class has `target` slabs in use or cut ahead already (a recovered
    /// heap's, the library's own), or the tier is full or at its limit.
    pub fn add_ahead(
        &self,
        class: usize,
        lane: Lane,
        target: u32,
        new_slab: impl FnOnce(Lane) -> Option<u64>,
    ) -> bool {
        let mut list = self.list(lane, class).lock();
        if list.slabs + list.ahead >= target {
            return false;
        }
        let Some(offset) = new_slab(lane) else {
            return false;
        };
        let index = self.start_slab(offset, lane, class);
        let head = list.partial;
        if head == NONE {
            list.partial = index;
        } else {
            // SAFETY: slabs of this class; we hold its lock.
            let next = unsafe { self.fields(head as usize) }.next;
            // SAFETY: as above.
            unsafe {
                let f = self.fields(index as usize);
                f.prev = head;
                f.next = next;
                self.fields(head as usize).next = index;
                if next != NONE {
                    self.fields(next as usize).prev = index;
                }
            }
        }
        list.idle_bytes += SLAB_BYTES;
        list.ahead += 1;
        list.ahead_cut += 1;
        true
    }

    /// Counts the extent of a slab being cut ahead (`add_ahead`'s `new_slab`, under the heap
    /// lock, before the cut's use is noted) as held but not used.
    pub fn note_ahead(&self) {
        self.ahead_bytes.fetch_add(SLAB_BYTES, Ordering::Relaxed);
    }

    /// Bytes of slabs cut ahead that no slot was taken from yet.
    #[inline]
    pub fn ahead_unused_bytes(&self) -> u64 {
        self.ahead_bytes.load(Ordering::Relaxed)
    }

    /// `f(lane, class, slabs)` for every lane and class whose slabs were in use
    /// (`ClassList::peak_slabs`): at most that many at once.
    pub fn slab_peaks(&self, mut f: impl FnMut(Lane, usize, u32)) {
        for (lane, classes) in self.classes.iter().enumerate() {
            for (i, list) in classes.iter().enumerate() {
                let peak = list.lock().peak_slabs;
                if peak > 0 {
                    f(Lane(lane as u8), i + 1, peak);
                }
            }
        }
    }

    /// Makes the held slot whose header is at `offset` live (its header written).
    #[inline]
    pub fn revive(&self, offset: u64) {
        live_bitmap::set(self.live(), (offset / HEADER) as usize);
    }

    /// Whether a live block's header is at `offset` (a snapshot).
    #[inline]
    fn is_live(&self, offset: u64) -> bool {
        live_bitmap::get(self.live(), (offset / HEADER) as usize)
    }

    /// The slot number of `offset` in the slab at window `index` of `class`, if a slot's
    /// header starts there.
    #[inline]
    fn slot_number(index: usize, class: usize, offset: u64) -> Option<usize> {
        let within = (offset - index as u64 * SLAB_BYTES).wrapping_sub(SLAB_MARKER);
        let slot = slot_bytes(class);
        let n = within / slot;
        // `within` wraps for an offset inside the marker: `n` is then past every slot.
        (n * slot == within && n < (SLAB_BYTES - SLAB_MARKER) / slot).then_some(n as usize)
    }

    /// A free of the block whose header is at `offset`, without a lock: clears its live bit
    /// if it is a live slot; the caller then holds the slot (see `SlabKill`).
    #[inline]
    pub fn kill(&self, offset: u64) -> SlabKill {
        let Some((index, _, class)) = self.class_at(offset) else {
            return SlabKill::NotSlab;
        };
        // Live bits are set only at slots' headers (`Slabs`' invariant), so a bit found set
        // is a slot's start; which refusal a clear bit means is worked out only then.
        if !live_bitmap::clear(self.live(), (offset / HEADER) as usize) {
            return SlabKill::Refused(match Self::slot_number(index, class, offset) {
                Some(_) => FreeError::DoubleFree,
                None => FreeError::NotAllocated,
            });
        }
        // The slot is ours now, so its slab stays: its class, read again, is the truth (the
        // first read may be of a slab retired and remade since, if `offset` was no live
        // block then and became one).
        match Lane::of_key(self.desc(index).class.load(Ordering::Acquire)) {
            (_, 0) => {
                debug_assert!(false, "a live bit outside a slab");
                SlabKill::Refused(FreeError::NotAllocated)
            }
            (_, class) => SlabKill::Killed { class },
        }
    }

    /// The slot bytes (header included) of the live slot whose header is at `offset`.
    /// `None`: no slab there; `Some(None)`: a slab, but no live slot starts there.
    pub fn slot_len(&self, offset: u64) -> Option<Option<u64>> {
        loop {
            let (index, lane, class) = self.class_at(offset)?;
            let live = Self::slot_number(index, class, offset).is_some() && self.is_live(offset);
            if self.desc(index).class.load(Ordering::Acquire) != lane.key(class) {
                continue; // retired or remade meanwhile: look again
            }
            return Some(live.then(|| slot_bytes(class)));
        }
    }

    /// Frees the slot whose header is at `offset` as the tier does without a thread cache:
    /// clears its live bit (`kill`), runs `mark_free` (which writes the header's state), then
    /// gives the slot back to its slab (`release`, counted as a free).
    #[cfg(test)]
    pub fn free(&self, offset: u64, mark_free: impl FnOnce(), retire: impl FnMut(u64)) -> SlabFree {
        match self.kill(offset) {
            SlabKill::NotSlab => SlabFree::NotSlab,
            SlabKill::Refused(e) => SlabFree::Refused(e),
            SlabKill::Killed { .. } => {
                mark_free();
                self.release(&[offset], retire, true);
                SlabFree::Freed
            }
        }
    }

    /// Gives the held, not live, slots at `offsets` back to their slabs, under one class lock
    /// for each run of slots of one lane and class. When that empties a slab, `retire(slab
    /// offset)` runs, still under the class lock: it must `unclaim` the slab and give its
    /// extent back to the heap, under the heap's lock. The slots count as frees if `count`
    /// (a free that no thread's cache took).
    pub fn release(&self, offsets: &[u64], mut retire: impl FnMut(u64), count: bool) {
        let mut locked: Option<(u8, crate::futex_mutex::MutexGuard<'_, ClassList>)> = None;
        for &offset in offsets {
            // A held slot keeps its slab: the class read without the lock stays true.
            let Some((index, lane, class)) = self.class_at(offset) else {
                debug_assert!(false, "a held slot outside a slab");
                continue;
            };
            let key = lane.key(class);
            if locked.as_ref().map(|(k, _)| *k) != Some(key) {
                drop(locked.take()); // never two class locks at once
                locked = Some((key, self.list(lane, class).lock()));
            }
            let Some((_, list)) = locked.as_mut() else {
                continue;
            };
            let Some(n) = Self::slot_number(index, class, offset) else {
                debug_assert!(false, "a held slot at no slot's start");
                continue;
            };
            debug_assert!(!self.is_live(offset), "released a live slot");
            // SAFETY: a slab of `class`; we hold its lock.
            let f = unsafe { self.fields(index) };
            debug_assert!(
                f.bitmap[n / 64] & (1 << (n % 64)) != 0,
                "released a free slot"
            );
            let was_full = f.live as usize == slots_of(class);
            f.bitmap[n / 64] &= !(1 << (n % 64));
            f.hint = f.hint.min((n / 64) as u32);
            f.live -= 1;
            list.idle_bytes += slot_bytes(class);
            if count {
                list.frees += 1;
            }
            if f.live == 0 {
                if !was_full {
                    self.unlink(list, index);
                }
                list.idle_bytes -= SLAB_BYTES;
                list.slabs -= 1;
                retire(index as u64 * SLAB_BYTES);
                // Once `retire` has handed the window back to the heap, another lane may
                // already have claimed it as a new slab: nothing of it is touched again.
                continue;
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
        }
    }

    /// Whether the live block whose header is at `offset` is a slot of a slab. No lock: a slab
    /// holding a live block is neither made nor retired until that block is freed.
    pub fn holds_live(&self, offset: u64) -> bool {
        self.class_at(offset).is_some()
    }

    /// The window, lane and class of the slab holding `offset` (`None`: no slab there).
    #[inline]
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
        // Held and live: a slot waiting in a thread's cache is held but no block.
        let n = (from..slots_of(class)).find(|&n| {
            f.bitmap[n / 64] & (1 << (n % 64)) != 0 && self.is_live(slot_offset(index, class, n))
        })?;
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
                assert!(
                    partial.insert(at),
                    "class {class}: partial list loops at {at}"
                );
                assert_eq!(self.desc(at as usize).class.load(Ordering::Relaxed), key);
                // SAFETY: a slab of this class, whose lock we hold.
                let f = unsafe { self.fields(at as usize) };
                assert_eq!(f.prev, prev, "class {class}: slab {at}'s prev");
                (prev, at) = (at, f.next);
            }
            let (mut idle, mut empty, mut used) = (0, 0, 0);
            for index in 0..self.windows {
                if self.desc(index).class.load(Ordering::Relaxed) != key {
                    continue;
                }
                // SAFETY: as above.
                let f = unsafe { self.fields(index) };
                let ones: u32 = f.bitmap.iter().map(|w| w.count_ones()).sum();
                assert_eq!(f.live, ones, "slab {index}: live counts the bitmap");
                for n in 0..slots {
                    if self.is_live(slot_offset(index, class, n)) {
                        assert!(
                            f.bitmap[n / 64] & 1 << (n % 64) != 0,
                            "slab {index}: slot {n} live, not held"
                        );
                    }
                }
                // An empty slab is retired at once, unless it was cut ahead and never used.
                match f.live {
                    0 => empty += 1,
                    _ => used += 1,
                }
                for n in slots..WORDS * 64 {
                    assert_eq!(f.bitmap[n / 64] & 1 << (n % 64), 0, "slab {index}: bit {n}");
                }
                for word in 0..f.hint as usize {
                    let full = u64::MAX >> (64 - (slots - 64 * word).min(64));
                    assert_eq!(
                        f.bitmap[word] & full,
                        full,
                        "slab {index}: hint past a free slot"
                    );
                }
                let is_partial = partial.contains(&(index as u32));
                assert_eq!(
                    (f.live as usize) < slots,
                    is_partial,
                    "slab {index} in the list"
                );
                idle += SLAB_BYTES - u64::from(f.live) * slot;
            }
            assert_eq!(list.idle_bytes, idle, "class {class}: idle bytes");
            assert_eq!(
                list.ahead, empty,
                "class {class}: empty slabs are the ones cut ahead"
            );
            assert_eq!(list.slabs, used, "class {class}: slabs in use");
            assert!(list.slabs <= list.peak_slabs && list.ahead_used <= list.ahead_cut);
            assert!(list.frees <= list.allocations);
        }
    }
}

impl Drop for Slabs {
    fn drop(&mut self) {
        // SAFETY: our own mapping; nothing refers to it once the tier is dropped.
        unsafe { os::unmap(self.descs.as_ptr().cast(), map_bytes(self.windows)) };
        // SAFETY: as above.
        unsafe { os::unmap(self.live.as_ptr().cast(), live_map_bytes(self.live_words)) };
    }
}

#[cfg(test)]
mod tests;
