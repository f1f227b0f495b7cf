//! A free's claim on its block, so that two threads freeing one block at the same moment (an
//! incorrect program's double free, raced) cannot both push it.
//!
//! The default checks read a block's free mark (`Block::tag`) on the fast path and write it
//! later, when the block is pushed: two frees of one block that both read it before either
//! writes both pass, and the block lands on the lists twice (the heap then hands it out twice).
//! Frees from a thread other than the block's owner, and every free under
//! `TIERMALLOC_SECURE=1` (which takes that path), claim the block before anything else:
//!
//! 1. the freeing heap publishes the block in its `freeing` slot;
//! 2. it swaps the free mark in atomically: a mark already there means that another free
//!    claimed the block first (after this free's fast path read it), and this one is the
//!    double free;
//! 3. once the block is in a batch, a quarantine or a list, the slot is cleared.
//!
//! A free that finds the mark already set on its fast path walks where freed blocks wait
//! (`check_block`): it looks in the other heaps' `freeing` slots first, so that a block
//! between another free's claim (step 2) and its list (step 3) is found. The slot is written
//! before the swap (a locked instruction, which orders it), the walk reads it after the mark,
//! so a walk that saw the mark sees the slot or, after step 3, the block where it went.
//!
//! Not covered here: the owner's own free on the fast path, which reads and writes the mark
//! without an atomic instruction (a locked swap there costs a full barrier on every free; see
//! BENCHMARKS.md, "Hardening"): a free by the owner racing a free by another thread can still
//! both pass. The block then sits on two lists; for blocks over 1 KiB it is caught when it is
//! handed out from the second, whose copy has lost its mark (`page::Block::take_mark` in
//! `Page::pop_validated`); for smaller ones only under `TIERMALLOC_SECURE=1`, where the owner's
//! frees claim too (the mark test at their hand-out costs one instruction per pair, `guard`).
//!
//! The ordering itself (publish, then swap; fence, then read the slots) is
//! `lockfree::mark_claim`, whose loom models check it and catch its broken variants.

use super::heap::Heap;
use super::page::{Block, Page};
use crate::lockfree::mark_claim;
use core::sync::atomic::AtomicUsize;

/// Claims dead block `p` of `page` for a free by `heap`'s thread: true if this free is the
/// first, false if another free claimed it already (a double free). On true the caller must
/// call `release` once the block is where freed blocks wait.
///
/// # Safety
/// `p` must be a block start of `page` (16 readable bytes) and `heap` the calling thread's.
#[inline]
pub unsafe fn claim(heap: *mut Heap, page: *const Page, p: *mut u8) -> bool {
    if !super::guard::FREE_MARK {
        return true;
    }
    // SAFETY: the calling thread's heap; the block's second word is aligned, and every other
    // thread that writes it at the same time is a claim (atomic) too.
    unsafe {
        let tag = &*Block::tag_of(p).cast::<AtomicUsize>();
        mark_claim::claim(&(*heap).freeing, tag, p as usize, page as usize)
    }
}

/// Ends `heap`'s claim (see `claim`).
///
/// # Safety
/// `heap` must be the calling thread's.
#[inline]
pub unsafe fn release(heap: *mut Heap) {
    // SAFETY: the calling thread's heap.
    mark_claim::release(unsafe { &(*heap).freeing })
}

/// Whether some heap's free has claimed `p` and not yet put it where freed blocks wait. Called
/// after `p`'s free mark was seen.
pub fn being_freed(p: *mut u8) -> bool {
    mark_claim::being_claimed(p as usize, |holds| {
        super::binding::any_heap(|heap| {
            // SAFETY: registered heaps live forever.
            holds(unsafe { &(*heap).freeing })
        })
    })
}
