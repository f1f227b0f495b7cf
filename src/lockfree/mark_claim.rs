//! Claiming an item by swapping in its mark, with the claim published in the claimer's slot:
//! of two threads that claim one item at once exactly one wins, and a thread that sees the mark
//! set finds the item either in the winner's slot or wherever the winner put it afterwards.
//!
//! The claimer's rule (`claim`): store the item in its own slot, then swap the mark in with
//! one atomic swap (SeqCst: a Release that orders the slot's store before the mark); the swap
//! returning the mark already set means that another claim came first. Once the item is where
//! it goes next, `release` clears the slot (Release: a checker that reads the cleared slot
//! sees the item where it went).
//!
//! The checker's rule (`being_claimed`), for a thread that read the mark set (with a plain or
//! Relaxed load): fence (SeqCst, which acquires the swap it read), then read every slot
//! (Acquire); if no slot holds the item, look where a claimed item goes next, in the order
//! items move. The fence makes the winner's slot store visible: the checker reads the item in
//! the slot, or the cleared slot and then the item where it went.
//!
//! The allocator uses it for a free's claim on its block (`dram::fast::claim`: the slot is
//! the freeing heap's `freeing`, the mark the block's free mark). The loom models below check
//! both rules, and that each broken ordering the `_with` forms can select is caught.

use crate::sync::{fence, AtomicUsize, Ordering};

/// Claims `item` by swapping `marked` into `mark`, published in `slot` first: true if this
/// claim is the first, false if the mark was already set (the slot is then cleared). On true
/// the caller must `release` the slot once the item is where it goes next.
#[inline(always)]
pub(crate) fn claim(slot: &AtomicUsize, mark: &AtomicUsize, item: usize, marked: usize) -> bool {
    claim_with(slot, mark, item, marked, ClaimOrder::Protocol)
}

/// How `claim_with` orders its steps: the protocol's, or one of the broken orderings the
/// models must catch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ClaimOrder {
    /// The slot, then the mark's swap (SeqCst).
    Protocol,
    /// Broken: the swap first, the slot after it.
    SlotAfterSwap,
    /// Broken: the slot first, but a Relaxed swap (nothing orders the slot before the mark).
    RelaxedSwap,
}

/// `claim` with a selectable ordering (the models break it on purpose).
#[inline(always)]
pub(crate) fn claim_with(
    slot: &AtomicUsize,
    mark: &AtomicUsize,
    item: usize,
    marked: usize,
    order: ClaimOrder,
) -> bool {
    let swap = if order == ClaimOrder::RelaxedSwap {
        Ordering::Relaxed
    } else {
        Ordering::SeqCst
    };
    if order != ClaimOrder::SlotAfterSwap {
        slot.store(item, Ordering::Relaxed);
    }
    let first = mark.swap(marked, swap) != marked;
    if order == ClaimOrder::SlotAfterSwap {
        slot.store(item, Ordering::Relaxed);
    }
    if !first {
        slot.store(0, Ordering::Relaxed);
    }
    first
}

/// Ends a successful claim: the item is where it goes next.
#[inline(always)]
pub(crate) fn release(slot: &AtomicUsize) {
    slot.store(0, Ordering::Release)
}

/// Whether a slot holds `item`, for a thread that read `item`'s mark set: `any_slot` asks its
/// argument of each slot and says whether one answered true. If false, the caller must look
/// where claimed items go next (after this call, not before).
#[inline]
pub(crate) fn being_claimed(
    item: usize,
    any_slot: impl FnOnce(&dyn Fn(&AtomicUsize) -> bool) -> bool,
) -> bool {
    being_claimed_with(item, any_slot, true)
}

/// `being_claimed`, optionally without its fence: the loom model shows that it is needed.
#[inline]
pub(crate) fn being_claimed_with(
    item: usize,
    any_slot: impl FnOnce(&dyn Fn(&AtomicUsize) -> bool) -> bool,
    with_fence: bool,
) -> bool {
    if with_fence {
        fence(Ordering::SeqCst);
    }
    any_slot(&|slot| slot.load(Ordering::Acquire) == item)
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// The item (a block's address) and its mark (the free mark: its page).
    const ITEM: usize = 0x40;
    const MARKED: usize = 0x1000;

    /// One block, two freeing heaps' slots, and where freed blocks go (`listed` counts the
    /// times the block was put there: the page's list, a batch, a quarantine).
    struct World {
        mark: AtomicUsize,
        slots: [AtomicUsize; 2],
        listed: AtomicUsize,
        reports: AtomicUsize,
    }

    impl World {
        fn new() -> Arc<Self> {
            Arc::new(World {
                mark: AtomicUsize::new(0),
                slots: [AtomicUsize::new(0), AtomicUsize::new(0)],
                listed: AtomicUsize::new(0),
                reports: AtomicUsize::new(0),
            })
        }

        /// `free(ITEM)` by heap `me`, as `dram::fast` does it: the fast path's plain read of
        /// the mark; a set mark is looked up (slots first, then where blocks go) and reported
        /// if found, else taken for program data equal to the mark (cleared, freed); then the
        /// claim, the list, the release.
        fn free(&self, me: usize, order: ClaimOrder, check_fence: bool) {
            if self.mark.load(Ordering::Relaxed) == MARKED {
                let slots = |holds: &dyn Fn(&AtomicUsize) -> bool| self.slots.iter().any(holds);
                if being_claimed_with(ITEM, slots, check_fence)
                    || self.listed.load(Ordering::Acquire) > 0
                {
                    self.reports.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.mark.store(0, Ordering::Relaxed);
            }
            if !claim_with(&self.slots[me], &self.mark, ITEM, MARKED, order) {
                self.reports.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.listed.fetch_add(1, Ordering::Release);
            release(&self.slots[me]);
        }
    }

    /// Two threads free the one block at once: exactly one is reported as the double free,
    /// and the block is listed once.
    fn two_frees(order: ClaimOrder, check_fence: bool) {
        loom::model(move || {
            let w = World::new();
            let other = w.clone();
            let t = thread::spawn(move || other.free(1, order, check_fence));
            w.free(0, order, check_fence);
            t.join().unwrap();
            assert_eq!(
                w.listed.load(Ordering::Relaxed),
                1,
                "the block was listed twice"
            );
            assert_eq!(w.reports.load(Ordering::Relaxed), 1, "reports");
        });
    }

    #[test]
    fn of_two_racing_frees_one_is_the_double_free() {
        two_frees(ClaimOrder::Protocol, true);
    }

    #[test]
    fn a_slot_written_after_the_swap_is_caught() {
        crate::lockfree::assert_loom_fails(
            || two_frees(ClaimOrder::SlotAfterSwap, true),
            "listed twice",
        );
    }

    #[test]
    fn a_relaxed_swap_is_caught() {
        crate::lockfree::assert_loom_fails(
            || two_frees(ClaimOrder::RelaxedSwap, true),
            "listed twice",
        );
    }

    #[test]
    fn a_check_without_its_fence_is_caught() {
        crate::lockfree::assert_loom_fails(
            || two_frees(ClaimOrder::Protocol, false),
            "listed twice",
        );
    }

    /// A free by another thread (heap 1) puts the block on the list; the owner, if it finds it
    /// there, allocates it again (off the list, mark cleared with a plain store, as
    /// `Page::alloc` does) and frees it once more from heap 0: that free is no double free,
    /// whatever the first free's slot still says.
    #[test]
    fn a_free_after_the_owner_reallocates_is_no_double_free() {
        loom::model(|| {
            let w = World::new();
            let other = w.clone();
            let t = thread::spawn(move || other.free(1, ClaimOrder::Protocol, true));
            let reallocated = w.listed.load(Ordering::Acquire) == 1;
            if reallocated {
                w.listed.store(0, Ordering::Relaxed);
                w.mark.store(0, Ordering::Relaxed);
                w.free(0, ClaimOrder::Protocol, true);
            }
            t.join().unwrap();
            assert_eq!(w.reports.load(Ordering::Relaxed), 0, "a false double free");
            assert_eq!(w.listed.load(Ordering::Relaxed), 1);
        });
    }
}
