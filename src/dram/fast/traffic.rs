//! The small-object path's traffic figures (blocks allocated and freed, bytes in use), derived
//! instead of counted on every call: the fast paths pay one instruction per malloc/free pair
//! for them (callgrind, `sliding_window`: a per-class count on both sides cost four).
//!
//! - An allocation bumps its page's `allocs` (`Page::pop`, the page is in a register); a page
//!   retired folds its count into its heap's `retired_allocs` first.
//! - A free by the owner's thread counts nothing: the page's `used` falls anyway.
//! - A free from another thread is counted by the freeing thread's heap (`remote_frees`, on
//!   the remote path, which is out of line), or in `UNBOUND_FREES` by a thread without a heap;
//!   the owner counts what it moves from a page's remote list (`collected`).
//! - A block in its heap's cache of freed big blocks (`block_cache`) still counts as used on
//!   its page: the heap counts it in `cached` while it waits there, and a block taken back out
//!   bumps its page's `allocs`.
//!
//! So, per class: allocated = retired + Σ pages' `allocs`; live = Σ pages' `used` − (remote
//! frees − collected) − cached; freed = allocated − live. `totals` walks every page descriptor
//! (`Segment::for_each_page`, safe from any thread) and every heap's counters. Read while
//! threads allocate, each figure is one that held at some moment of the walk; at rest exact.

use crate::dram::fast::page::Page;
use crate::dram::fast::segment::Segment;
use crate::dram::fast::size_class::{class_size, CLASS_COUNT};
use crate::stats::{OwnedCounter, SharedCounter};
use core::ptr::addr_of;

/// Frees made by threads that have no heap of their own (never allocated, or exiting).
pub static UNBOUND_FREES: SharedCounter = SharedCounter::new();
pub static UNBOUND_FREED_BYTES: SharedCounter = SharedCounter::new();

/// A heap's share of the figures (see the module comment). All-zero is the initial state
/// (heaps start as zeroed memory). Written by the heap's owner only.
pub struct Traffic {
    /// Allocations from pages of this heap that it has retired since.
    pub retired_allocs: [OwnedCounter; CLASS_COUNT],
    /// Blocks this heap's thread freed into other heaps' pages (pushed on a remote list).
    pub remote_frees: [OwnedCounter; CLASS_COUNT],
    /// Blocks this heap moved from its pages' remote lists onto their free lists.
    pub collected: [OwnedCounter; CLASS_COUNT],
    /// Blocks freed by this heap's thread that wait in its `block_cache` (still counted used
    /// on their pages).
    pub cached: [OwnedCounter; CLASS_COUNT],
}

impl Traffic {
    /// A free pushed on the remote list of a page of `class`, by this heap's thread.
    #[inline(always)]
    pub fn on_remote_free(&self, class: usize) {
        // SAFETY: class indices come from `size_class` and are below CLASS_COUNT.
        unsafe { self.remote_frees.get_unchecked(class) }.add(1);
    }
}

/// The small-block figures of the whole process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub allocations: u64,
    pub frees: u64,
    /// Bytes of live blocks, at their class size.
    pub live_bytes: u64,
}

/// Adds up the figures (see the module comment); `each_heap` calls its argument on every
/// heap's counters (`binding::for_each_traffic`, passed in by `fast`, which sits above both).
pub fn totals(each_heap: impl FnOnce(&mut dyn FnMut(&Traffic))) -> Totals {
    let mut allocated = [0u64; CLASS_COUNT];
    // Blocks live per class, as wrapping arithmetic: pages' `used` plus collected less remote
    // frees (a remote free counted before its page is seen can make a term negative a while).
    let mut live = [0u64; CLASS_COUNT];
    Segment::for_each_page(|page| {
        // SAFETY: a descriptor in use at some moment of the walk, in a chunk that stays
        // mapped; its owner may be writing it, so each field is read once, as it is then.
        let (class, used, allocs) = unsafe {
            (
                addr_of!((*page).class).read_volatile() as usize,
                addr_of!((*page).used).read_volatile(),
                Page::allocs_of(page),
            )
        };
        if class < CLASS_COUNT {
            allocated[class] += allocs;
            live[class] = live[class].wrapping_add(u64::from(Page::used_without_flag(used)));
        }
    });
    each_heap(&mut |t| {
        for class in 0..CLASS_COUNT {
            allocated[class] += t.retired_allocs[class].get();
            live[class] = live[class]
                .wrapping_add(t.collected[class].get())
                .wrapping_sub(t.remote_frees[class].get())
                .wrapping_sub(t.cached[class].get());
        }
    });
    let mut totals = Totals::default();
    let mut live_count = 0i64;
    let mut live_bytes = 0i64;
    for class in 0..CLASS_COUNT {
        totals.allocations += allocated[class];
        live_count += live[class] as i64;
        live_bytes += live[class] as i64 * class_size(class) as i64;
    }
    live_count -= UNBOUND_FREES.get() as i64;
    live_bytes -= UNBOUND_FREED_BYTES.get() as i64;
    let live_count = (live_count.max(0) as u64).min(totals.allocations);
    totals.frees = totals.allocations - live_count;
    totals.live_bytes = live_bytes.max(0) as u64;
    totals
}
