//! Idle empty pages: a class's current page whose blocks are all free and from which nothing
//! was allocated for a while gives its memory back, and stays the class's current page.
//!
//! A class's current page is never retired when it empties (its next request would cut a new
//! page), so it keeps resident every block it ever carved: the class's high water. A program
//! that works through sizes one phase after another (glibc's `bench-malloc-simple`: 1 600
//! blocks of 16, then of 32, then of 64 bytes) held the sum of every phase's high water at its
//! peak, where a coalescing heap holds the largest. Here, when a heap is about to cut a new
//! page and has fewer resident free slices than the page needs (fresh memory will be touched),
//! every other class's current page that is empty and handed out no block since the previous
//! such look is reset to uncarved (`Page::uncarve`) and its carved memory discarded: its next
//! request carves again from the page's start, one OS page at a time, as a fresh page does.
//!
//! The same look happens, once every `CARVES_PER_LOOK` times, when a page carves fresh memory
//! while the heap has no resident free slice: a page given back and used again touches its
//! memory by carving, not by a cut (the phases' second round).
//!
//! Cost: a look at every class's current page, only when fresh memory is touched (a heap
//! reusing its resident slices never looks). A page given back and used again pays its page
//! faults again, so only pages idle between two looks are given back.
//!
//! Owned state: per class, the current page's allocation count at the previous look
//! (`IdleWatch`), zero in a fresh heap. Only the heap's own thread reads or writes it.

use crate::dram::fast::page::Page;
use crate::dram::fast::size_class::CLASS_COUNT;

/// Per class, the `allocs` of its current page at the heap's last look (`give_back_idle`).
/// Invariant: read and written only by the heap's owner thread, on its slow path.
pub struct IdleWatch {
    seen: [u64; CLASS_COUNT],
    /// Carves of fresh OS pages still to pass before `on_carve` looks again.
    carves_until_look: u8,
}

/// `on_carve` looks once per this many carves of fresh memory: a carve touches one OS page, a
/// look reads every class's current page.
const CARVES_PER_LOOK: u8 = 8;

impl IdleWatch {
    /// `give_back_idle` once every `CARVES_PER_LOOK` calls: for a page about to carve fresh
    /// memory, where a cut of a new page calls `give_back_idle` every time.
    ///
    /// # Safety
    /// As for `give_back_idle`.
    #[inline]
    pub unsafe fn on_carve(&mut self, current: &[*mut Page], carving: usize) {
        if self.carves_until_look > 0 {
            self.carves_until_look -= 1;
            return;
        }
        self.carves_until_look = CARVES_PER_LOOK - 1;
        // SAFETY: per the contract.
        unsafe { self.give_back_idle(current, carving) };
    }

    /// Gives back the memory of every current page but `cutting`'s that is empty and handed out
    /// nothing since the last call, and notes each current page's count for the next call.
    /// Returns the bytes discarded.
    ///
    /// # Safety
    /// `current` must be the calling heap's current pages (its pages or the empty page), and
    /// the caller its owner thread.
    #[cold]
    #[inline(never)]
    pub unsafe fn give_back_idle(&mut self, current: &[*mut Page], cutting: usize) -> usize {
        let mut discarded = 0;
        for (class, &page) in current.iter().enumerate().take(CLASS_COUNT) {
            if page == Page::empty_page() {
                continue;
            }
            // SAFETY: a current page of this heap (the caller's contract); the owner's thread.
            unsafe {
                let allocs = (*page).allocs();
                if class != cutting && allocs == self.seen[class] {
                    discarded += (*page).uncarve();
                }
                self.seen[class] = allocs;
            }
        }
        discarded
    }
}
