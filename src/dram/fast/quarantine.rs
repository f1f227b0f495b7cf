//! Delayed reuse under `TIERMALLOC_SECURE=1`: a freed small block waits in its freeing
//! thread's quarantine before it goes back to its page, so that a use-after-free write lands
//! in a block nobody holds, and is found when the block leaves.
//!
//! Owns `Quarantine`, a ring in each heap of at most `BLOCKS` blocks and `BYTES` bytes,
//! oldest out first. A block entering is filled with `FILL` over its first `CHECKED_BYTES`
//! (its second word keeps the free mark, `page::Block::mark_free`, so a second `free` of it is
//! suspected and `holds` finds it: double frees stay exact); leaving, those bytes are compared
//! with what was written, and any difference is reported ("written after free", `misuse`)
//! and the block is leaked instead of reused (`TIERMALLOC_ON_ERROR=ignore`).
//!
//! Only secure segments send blocks here (their tagged owner routes every free to
//! `free_remote`, see `mod.rs`); the default level never reaches this module. Blocks in
//! quarantine still count as used on their page (statistics show them live), which also keeps
//! their page from being retired while they wait. A heap's quarantine is drained when its
//! thread leaves (`Heap::tidy_for_next_owner`). A thread that cannot get a heap at all (out
//! of memory for one) frees without delay.

use crate::dram::fast::page::Page;
use crate::dram::fast::segment::Segment;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Blocks a quarantine holds at most: a block is handed out again only after at least this
/// many other frees by the same thread.
pub(crate) const BLOCKS: usize = 64;
/// Bytes (block sizes) a quarantine holds at most: big blocks leave sooner.
pub(crate) const BYTES: usize = 1 << 20;
/// Bytes of a block filled on entry and checked on exit (the whole block when smaller).
pub(crate) const CHECKED_BYTES: usize = 64;
/// The fill word: no address, no small integer, not a repeated byte.
pub(crate) const FILL: usize = 0xF4EE_D0C5_A1DE_AD5B;

/// Invariants: `count <= BLOCKS`; the `count` slots from `oldest` (modulo `BLOCKS`) hold the
/// quarantined blocks, oldest first, each a dead block with the free mark whose first
/// `min(size, CHECKED_BYTES)` bytes but the mark are `FILL`; the other slots hold 0; `bytes`
/// is the sum of their block sizes. Zeroed memory is an empty quarantine (heaps are zeroed).
/// Slots are atomics only so that other threads may look for a block in them (`holds`).
#[repr(C)]
pub struct Quarantine {
    slots: [AtomicUsize; BLOCKS],
    oldest: usize,
    count: usize,
    bytes: usize,
}

/// The page of block `p` of a live segment.
#[inline]
fn page_of(p: *mut u8) -> *mut Page {
    Segment::page_of(Segment::of(p as usize), p as usize)
}

/// Words of block `p` (of `size` bytes) that are filled and checked.
#[inline]
fn checked_words(size: usize) -> usize {
    size.min(CHECKED_BYTES) / core::mem::size_of::<usize>()
}

impl Quarantine {
    /// Fills dead block `p` of `page` as a quarantined block (`FILL`, and the free mark).
    ///
    /// # Safety
    /// `p` must be a block of `page` the caller frees (handed out, not used after this).
    pub unsafe fn fill(page: *mut Page, p: *mut u8) {
        // SAFETY: `page` is the live page of `p` (contract).
        let size = unsafe { (*page).block_size } as usize;
        let words = p.cast::<usize>();
        // SAFETY: a dead block of `size >= 16` bytes, ours now.
        unsafe {
            words.write(FILL);
            crate::dram::fast::page::Block::mark_free(p, page);
            if size >= CHECKED_BYTES {
                // A constant count, which the compiler unrolls (most blocks).
                for i in 2..CHECKED_BYTES / 8 {
                    words.add(i).write(FILL);
                }
            } else {
                for i in 2..checked_words(size) {
                    words.add(i).write(FILL);
                }
            }
        }
    }

    /// Whether the oldest block must leave before one of `size` bytes comes in.
    #[inline]
    pub fn must_leave(&self, size: usize) -> bool {
        self.count == BLOCKS || (self.count > 0 && self.bytes + size > BYTES)
    }

    /// Takes filled block `p` of `size` bytes in (after `must_leave` said there is room).
    pub fn insert(&mut self, p: *mut u8, size: usize) {
        debug_assert!(self.count < BLOCKS);
        let at = (self.oldest + self.count) % BLOCKS;
        self.slots[at].store(p as usize, Ordering::Relaxed);
        self.count += 1;
        self.bytes += size;
    }

    /// Blocks waiting here.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Takes the oldest block out (there is one), to be checked with `verify`.
    // Run only under `TIERMALLOC_SECURE=1`: kept out of the code every process runs
    // (`link/hot_text.ld`).
    #[link_section = ".text.tiermalloc_secure"]
    pub fn take_oldest(&mut self) -> *mut u8 {
        debug_assert!(self.count > 0);
        let out = self.slots[self.oldest].swap(0, Ordering::Relaxed) as *mut u8;
        self.oldest = (self.oldest + 1) % BLOCKS;
        self.count -= 1;
        // SAFETY: a quarantined block of a live page (its page cannot retire while it waits).
        self.bytes -= unsafe { (*page_of(out)).block_size } as usize;
        out
    }

    /// Whether block `p` waits in the quarantine at `this` (any thread may ask, while the
    /// owner changes it: exact for the owner's thread, as `waits_in_a_batch` otherwise).
    ///
    /// # Safety
    /// `this` must point to a live quarantine (heaps live forever).
    pub unsafe fn holds(this: *const Quarantine, p: *mut u8) -> bool {
        // SAFETY: the slots are atomics; only they are read.
        let slots = unsafe { &(*this).slots };
        slots
            .iter()
            .any(|s| s.load(Ordering::Relaxed) == p as usize)
    }
}

/// Whether quarantined block `p` is as it was filled; reports it otherwise (and the caller
/// leaks it, if the program goes on).
///
/// # Safety
/// `p` must be a block that sat in a quarantine.
// Run only under `TIERMALLOC_SECURE=1`: kept out of the code every process runs
// (`link/hot_text.ld`).
#[link_section = ".text.tiermalloc_secure"]
pub unsafe fn verify(p: *mut u8) -> bool {
    let page = page_of(p);
    // SAFETY: the block's page is live (the block counts as used on it).
    let size = unsafe { (*page).block_size } as usize;
    let words = p.cast::<usize>();
    // SAFETY: the block's first `checked_words` words are ours to read.
    let intact = unsafe {
        words.read() == FILL
            && words.add(1).read() == page as usize
            && if size >= CHECKED_BYTES {
                // A constant count, unrolled; one comparison of the words' OR of differences.
                (2..CHECKED_BYTES / 8).fold(0, |d, i| d | (words.add(i).read() ^ FILL)) == 0
            } else {
                (2..checked_words(size)).all(|i| words.add(i).read() == FILL)
            }
    };
    if !intact {
        crate::misuse::report("free", p, crate::misuse::Misuse::WrittenAfterFree);
    }
    intact
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_words_cover_small_blocks_whole() {
        assert_eq!(checked_words(16), 2);
        assert_eq!(checked_words(48), 6);
        assert_eq!(checked_words(100_000), CHECKED_BYTES / 8);
    }
}
