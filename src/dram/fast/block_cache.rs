//! The big classes' cache of freed blocks: a few blocks of each big class (over
//! `size_class::BIG_MIN`, pages of 1-6 blocks) that the heap's own thread freed, kept in
//! front of their pages, so that its next `malloc` of the class takes one back without
//! touching a page queue.
//!
//! Why: a big class's page holds few blocks (`size_class::page_slices`), so a program that
//! frees and allocates big blocks of random sizes moves a page between its queue, `full`,
//! empty and retired every few operations (a remote flag's CAS each way, a page cut and
//! retired again; BENCHMARKS.md, session 16, branch `bigcache`). A block here keeps its page
//! as it was: it still counts as used there (so the page is neither retired nor handed back
//! from `full`), and carries the free mark (`page::Block::mark_free`), so that a second `free`
//! of it is suspected and `holds` finds it (`fast::check_block`: reported as a double free).
//!
//! Owns `BlockCache`: per big class a stack of at most `SLOTS` blocks, and at most `BYTES`
//! bytes in all. Only the owner's `free` puts a block here (`fast::free_suspect`, where its
//! page's failed fast test sends it: `Page::extend` gives big pages no fast limit), never a
//! remote one, and never under `TIERMALLOC_SECURE=1` (whose segments' tagged owner is no
//! thread's heap). The heap gives every block back to its page (`Heap::flush_block_cache`)
//! when it purges (`malloc_trim`, the decay, `limit=`) and when its thread leaves.

use crate::dram::fast::size_class::{class_size, CLASS_COUNT};
use core::sync::atomic::{AtomicUsize, Ordering};

/// Blocks of one class the cache holds at most.
pub(crate) const SLOTS: usize = 16;
/// Bytes (block sizes) the cache holds at most, all classes together: as many as a heap keeps
/// of free slices without purging (`heap::PURGE_THRESHOLD`).
pub(crate) const BYTES: usize = 2 << 20;
/// The first class cached: the first big one (`lent_blocks::big`).
pub(crate) const FIRST: usize = {
    let mut c = 0;
    while class_size(c) <= crate::dram::fast::size_class::BIG_MIN {
        c += 1;
    }
    c
};
/// Classes cached: every big one.
const CLASSES: usize = CLASS_COUNT - FIRST;

/// Whether blocks of `block_size` bytes are cached (the empty page's 0 is not).
#[inline(always)]
pub fn caches_size(block_size: u32) -> bool {
    block_size as usize > crate::dram::fast::size_class::BIG_MIN
}

/// Invariants: `len[i] <= SLOTS`; `slots[i][..len[i]]` are dead blocks of class `FIRST + i`,
/// each carrying its page's free mark and counted used on its page, the other slots 0;
/// `bytes` is the sum of their block sizes, at most `BYTES`; `low <= bytes`. Zeroed memory is
/// an empty cache (heaps start zeroed). Slots and lengths are atomics only so that other
/// threads may look for a block (`holds`); the owner's relaxed loads and stores are plain moves.
#[repr(C)]
pub struct BlockCache {
    len: [AtomicUsize; CLASSES],
    slots: [[AtomicUsize; SLOTS]; CLASSES],
    bytes: usize,
    /// The fewest `bytes` since the last `take_low` (the heap's decay window): what no
    /// allocation took meanwhile.
    low: usize,
}

impl BlockCache {
    /// Takes block `p` of `class` in, if the class has a slot free and the bytes allow:
    /// false otherwise (the caller frees it to its page). The caller marks it free.
    #[inline]
    pub fn push(&mut self, class: usize, p: *mut u8) -> bool {
        let size = class_size(class);
        let i = class - FIRST;
        let n = self.len[i].load(Ordering::Relaxed);
        if n >= SLOTS || self.bytes + size > BYTES {
            return false;
        }
        self.slots[i][n].store(p as usize, Ordering::Relaxed);
        self.len[i].store(n + 1, Ordering::Relaxed);
        self.bytes += size;
        true
    }

    /// The block of `class` freed last, or null.
    #[inline]
    pub fn pop(&mut self, class: usize) -> *mut u8 {
        let i = class - FIRST;
        let n = self.len[i].load(Ordering::Relaxed);
        if n == 0 {
            return core::ptr::null_mut();
        }
        // A load and a store, not a `swap` (an `xchg`, locked): only the owner writes.
        let p = self.slots[i][n - 1].load(Ordering::Relaxed) as *mut u8;
        self.slots[i][n - 1].store(0, Ordering::Relaxed);
        self.len[i].store(n - 1, Ordering::Relaxed);
        self.bytes -= class_size(class);
        self.low = self.low.min(self.bytes);
        p
    }

    /// The fewest bytes the cache held since the last call: blocks that long unused (the
    /// heap gives that many back at its decay window's end). Starts the next count.
    pub fn take_low(&mut self) -> usize {
        core::mem::replace(&mut self.low, self.bytes)
    }

    /// Whether no block is cached.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Takes out of the cache the first block for which `lost(class, block)` holds (a block
    /// whose free mark was overwritten), keeping the order of the others: `None` when no block
    /// is lost.
    // Run only by programs that free blocks over 8 KiB: out of the code every process runs
    // (`link/hot_text.ld`, which takes every other `dram` function).
    #[link_section = ".text.tiermalloc_big"]
    pub fn take_first(
        &mut self,
        lost: impl Fn(usize, *mut u8) -> bool,
    ) -> Option<(usize, *mut u8)> {
        for i in 0..CLASSES {
            let n = self.len[i].load(Ordering::Relaxed);
            let slots = &self.slots[i];
            let Some(at) =
                (0..n).find(|&k| lost(FIRST + i, slots[k].load(Ordering::Relaxed) as *mut u8))
            else {
                continue;
            };
            let p = slots[at].load(Ordering::Relaxed) as *mut u8;
            for k in at..n - 1 {
                slots[k].store(slots[k + 1].load(Ordering::Relaxed), Ordering::Relaxed);
            }
            slots[n - 1].store(0, Ordering::Relaxed);
            self.len[i].store(n - 1, Ordering::Relaxed);
            self.bytes -= class_size(FIRST + i);
            self.low = self.low.min(self.bytes);
            return Some((FIRST + i, p));
        }
        None
    }

    /// Any block, or null when the cache is empty (to give them all back).
    // Run only by programs that free blocks over 8 KiB: out of the code every process runs
    // (`link/hot_text.ld`, which takes every other `dram` function).
    #[link_section = ".text.tiermalloc_big"]
    pub fn pop_any(&mut self) -> Option<(usize, *mut u8)> {
        if self.bytes == 0 {
            return None;
        }
        let i = self
            .len
            .iter()
            .position(|n| n.load(Ordering::Relaxed) != 0)?;
        let p = self.pop(FIRST + i);
        Some((FIRST + i, p))
    }

    /// Whether block `p` of `class` sits in the cache at `this` (any thread: the owner may be
    /// changing it, so a block moving in or out at that moment may be missed).
    ///
    /// # Safety
    /// `this` must point to a live cache.
    // Run only by programs that free blocks over 8 KiB: out of the code every process runs
    // (`link/hot_text.ld`, which takes every other `dram` function).
    #[link_section = ".text.tiermalloc_big"]
    pub unsafe fn holds(this: *const BlockCache, class: usize, p: *mut u8) -> bool {
        if class < FIRST || class >= CLASS_COUNT {
            return false;
        }
        // SAFETY: the slots are atomics; only they are read.
        let slots = unsafe { &(*this).slots[class - FIRST] };
        slots
            .iter()
            .any(|s| s.load(Ordering::Relaxed) == p as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> BlockCache {
        // SAFETY: all-zero is an empty cache (invariant).
        unsafe { core::mem::zeroed() }
    }

    #[test]
    fn the_first_class_cached_is_the_first_big_one() {
        assert!(class_size(FIRST) > crate::dram::fast::size_class::BIG_MIN);
        assert!(class_size(FIRST - 1) <= crate::dram::fast::size_class::BIG_MIN);
        assert!(
            caches_size(class_size(FIRST) as u32) && !caches_size(class_size(FIRST - 1) as u32)
        );
        assert!(!caches_size(0));
    }

    #[test]
    fn every_cached_class_is_big_and_its_pages_one_slice_only_if_uncached() {
        use crate::dram::fast::size_class::page_slices;
        // `Page::extend` gives the fast test to the pages `caches_size` refuses: those must be
        // of one slice (the test takes the offset within a slice).
        for class in 0..CLASS_COUNT {
            let cached = caches_size(class_size(class) as u32);
            assert_eq!(cached, class >= FIRST, "class {class}");
            assert!(cached || page_slices(class) == 1, "class {class}");
        }
    }

    #[test]
    fn the_low_water_is_what_no_pop_took_since_the_last_look() {
        let mut c = empty();
        for i in 0..4 {
            assert!(c.push(FIRST, (0x1000 * (i + 1)) as *mut u8));
        }
        assert_eq!(c.take_low(), 0, "nothing was held at the start");
        c.pop(FIRST);
        c.pop(FIRST);
        assert!(c.push(FIRST, 0x9000 as *mut u8));
        assert_eq!(
            c.take_low(),
            2 * class_size(FIRST),
            "two blocks stayed the whole time"
        );
        assert_eq!(c.take_low(), 3 * class_size(FIRST), "untouched since");
    }

    #[test]
    fn take_first_removes_the_first_lost_block_and_keeps_the_others_order() {
        let mut c = empty();
        for i in 1..=4 {
            assert!(c.push(FIRST + 1, (0x1000 * i) as *mut u8));
        }
        let lost = |_: usize, p: *mut u8| p as usize == 0x2000 || p as usize == 0x3000;
        assert_eq!(c.take_first(lost), Some((FIRST + 1, 0x2000 as *mut u8)));
        assert_eq!(c.take_first(lost), Some((FIRST + 1, 0x3000 as *mut u8)));
        assert_eq!(c.take_first(lost), None);
        assert_eq!(c.pop(FIRST + 1), 0x4000 as *mut u8);
        assert_eq!(c.pop(FIRST + 1), 0x1000 as *mut u8);
        assert!(c.is_empty());
    }

    #[test]
    fn holds_at_most_its_slots_and_bytes_last_in_first_out() {
        let mut c = empty();
        let class = FIRST;
        for i in 0..SLOTS {
            assert!(c.push(class, (0x1000 * (i + 1)) as *mut u8));
        }
        assert!(
            !c.push(class, 0x9_0000 as *mut u8),
            "a class holds at most SLOTS"
        );
        // SAFETY: a live cache.
        unsafe {
            assert!(BlockCache::holds(&c, class, 0x3000 as *mut u8));
            assert!(!BlockCache::holds(&c, class + 1, 0x3000 as *mut u8));
        }
        assert_eq!(c.pop(class), (0x1000 * SLOTS) as *mut u8);
        // The largest class: the byte bound stops it before its slots.
        let big = CLASS_COUNT - 1;
        let mut n = 0;
        while c.push(big, (0x10_0000 + n) as *mut u8) {
            n += 1;
        }
        assert!(n < SLOTS && c.bytes <= BYTES && c.bytes + class_size(big) > BYTES);
        let mut taken = 0;
        while let Some((_, p)) = c.pop_any() {
            assert!(!p.is_null());
            taken += 1;
        }
        assert_eq!(taken, SLOTS - 1 + n);
        assert_eq!(c.take_low(), 0, "emptied meanwhile");
        assert_eq!(c.bytes, 0);
        assert!(c.pop(class).is_null());
        // SAFETY: a live cache.
        assert!(unsafe { !BlockCache::holds(&c, class, 0x3000 as *mut u8) });
    }
}
