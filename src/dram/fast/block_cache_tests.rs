//! Tests of the big classes' cache of freed blocks (`block_cache`) inside a heap: what goes in
//! (the owner's frees only), what it holds at most, and that every way a heap gives memory
//! back empties it first (purge, the thread leaving).

use super::*;
use crate::dram::fast::block_cache::{BlockCache, SLOTS};

const BIG: usize = 20_000;

/// Blocks of `BIG` bytes' class this thread's heap holds in its cache, by its counter.
fn cached_here() -> u64 {
    let heap = binding::current();
    // SAFETY: this thread's heap.
    unsafe { (*heap).traffic.cached[class_of(BIG)].get() }
}

#[test]
fn the_owners_frees_fill_the_cache_up_to_its_bound_and_purge_and_leaving_empty_it() {
    std::thread::spawn(|| {
        let blocks: Vec<*mut u8> = (0..40).map(|_| alloc(BIG)).collect();
        let heap = binding::current();
        for &p in &blocks {
            // SAFETY: live blocks of ours.
            unsafe { free(p) };
        }
        assert_eq!(
            cached_here(),
            SLOTS as u64,
            "the first SLOTS frees are cached"
        );
        // SAFETY: this thread's heap and live pages of it.
        unsafe {
            let cache = core::ptr::addr_of!((*heap).block_cache);
            assert!(BlockCache::holds(cache, class_of(BIG), blocks[0]));
            assert!(!BlockCache::holds(cache, class_of(BIG), blocks[39]));
            // A cached block is a freed one: a second free or a realloc of it is reported.
            let p = blocks[3];
            let page = Segment::page_of(Segment::of(p as usize), p as usize);
            assert_eq!(check_block(page, p), Err(crate::misuse::Misuse::DoubleFree));
            (*heap).check_invariants();
            (*heap).purge();
            assert!((*heap).block_cache.is_empty());
            assert!(!BlockCache::holds(cache, class_of(BIG), blocks[0]));
            (*heap).check_invariants();
        }
        assert_eq!(cached_here(), 0);
        let again: Vec<*mut u8> = (0..4).map(|_| alloc(BIG)).collect();
        for &p in &again {
            // SAFETY: live blocks of ours.
            unsafe { free(p) };
        }
        assert_eq!(cached_here(), 4);
        // SAFETY: this thread's heap; what its thread's exit does, then what an adopting
        // thread does (so that the pool's budget is counted once).
        unsafe {
            (*heap).tidy_for_next_owner();
            assert!((*heap).block_cache.is_empty());
            (*heap).leave_pool();
        }
        assert_eq!(cached_here(), 0);
    })
    .join()
    .unwrap();
}

#[test]
fn another_threads_frees_are_not_cached() {
    let blocks: Vec<usize> = (0..8).map(|_| alloc(BIG) as usize).collect();
    std::thread::spawn(move || {
        // This thread's heap exists, with no cached block.
        // SAFETY: a live block of ours.
        unsafe { free(alloc(16)) };
        for &p in &blocks {
            // SAFETY: live blocks of the other thread's heap.
            unsafe { free(p as *mut u8) };
        }
        let heap = binding::current();
        // SAFETY: this thread's heap.
        unsafe {
            assert!((*heap).block_cache.is_empty());
            assert!(!BlockCache::holds(
                core::ptr::addr_of!((*heap).block_cache),
                class_of(BIG),
                blocks[0] as *mut u8
            ));
        }
        assert_eq!(cached_here(), 0);
    })
    .join()
    .unwrap();
}
