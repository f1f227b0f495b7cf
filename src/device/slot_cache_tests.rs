//! The per-thread slot caches (`slot_cache`) on a tier that enables them: a freed slot comes
//! back to the thread that freed it, double frees are still refused, other threads' cached
//! slots are idle in the statistics and invisible to `next_block`, and a thread's exit gives
//! its slots back so that every slab retires.

use super::*;
use crate::config::tier_spec_for_test;
use std::sync::{Arc, Barrier};

/// A tier with the slot caches on, leaked (the caches' contract: it never moves).
fn open(name: &str) -> (&'static DeviceTier, String) {
    let path = format!(
        "/dev/shm/tiermalloc-tier-{}-slots-{name}",
        std::process::id()
    );
    let spec = tier_spec_for_test(&format!("pmr:path={path},create,size=4M"));
    let tier: &'static DeviceTier = Box::leak(Box::new(DeviceTier::open(&spec).unwrap()));
    // SAFETY: leaked: never moved, never dropped.
    unsafe { tier.enable_slot_cache() };
    (tier, path)
}

fn all_free(tier: &DeviceTier) -> bool {
    let s = tier.stats();
    s.in_use == 0 && s.largest_free == s.capacity - HEADER_SIZE
}

#[test]
fn a_freed_slot_comes_back_and_a_second_free_is_refused() {
    let (tier, path) = open("reuse");
    let p = tier.alloc(100, 16).unwrap();
    let offset = tier.offset_of(p).unwrap();
    tier.free(p).unwrap();
    // Cached: still held in its slab, but no live block.
    assert!(tier.slabs.holds_live(offset));
    assert_eq!(tier.usable_size(p), None);
    assert_eq!(tier.free(p), Err(FreeError::DoubleFree));
    // SAFETY: the header lies before the block, in the mapping.
    let state = unsafe { (*(p as *const BlockHeader).sub(1)).state };
    assert_eq!(
        state, STATE_FREE,
        "the free's device write happened before caching"
    );
    let q = tier.alloc(100, 16).unwrap();
    assert_eq!(q, p, "the newest cached slot of the class");
    assert_eq!(tier.usable_size(q), Some(112));
    tier.free(q).unwrap();
    assert_eq!(tier.free(q), Err(FreeError::DoubleFree));
    // SAFETY: inside the slot's block: not a block start.
    assert_eq!(
        tier.free(unsafe { q.add(16) }),
        Err(FreeError::NotAllocated)
    );
    let s = tier.stats();
    assert_eq!((s.allocations, s.frees), (2, 2));
    tier.slabs.check_invariants();
    assert!(
        all_free(tier),
        "the statistics gave this thread's slots back"
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn other_threads_cached_slots_are_idle_and_go_back_when_they_exit() {
    let (tier, path) = open("exit");
    const BLOCKS: usize = 300;
    let cached = Arc::new(Barrier::new(2));
    let counted = Arc::new(Barrier::new(2));
    let worker = {
        let (cached, counted) = (cached.clone(), counted.clone());
        std::thread::spawn(move || {
            let blocks: Vec<usize> = (0..BLOCKS)
                .map(|i| tier.alloc(16 + (i * 37) % 4000, 16).unwrap() as usize)
                .collect();
            for &p in &blocks {
                tier.free(p as *mut u8).unwrap();
            }
            cached.wait();
            counted.wait();
            blocks
        })
    };
    cached.wait();
    // The worker's cache holds slots: held in their slabs, but no live block.
    let s = tier.stats();
    assert_eq!(
        (s.in_use, s.allocations, s.frees),
        (0, BLOCKS as u64, BLOCKS as u64)
    );
    assert_eq!(tier.next_block(None), None, "a cached slot is no block");
    let busy = tier.heap.lock().stats().in_use - SUPERBLOCK_BYTES;
    assert!(busy > 0, "the worker caches slots, so some slab stays");
    counted.wait();
    let blocks = worker.join().unwrap();
    tier.slabs.check_invariants();
    assert!(all_free(tier), "the exiting thread gave its slots back");
    let s = tier.stats();
    assert_eq!((s.allocations, s.frees), (BLOCKS as u64, BLOCKS as u64));
    // Freed once, by a thread gone since: a second free is refused here.
    assert_eq!(tier.free(blocks[0] as *mut u8), Err(FreeError::DoubleFree));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn threads_free_each_others_blocks_and_reuse_them() {
    let (tier, path) = open("cross");
    const BLOCKS: usize = 2000;
    let make = |seed: usize| {
        std::thread::spawn(move || {
            (0..BLOCKS)
                .map(|i| {
                    let size = 16 + (i * 131 + seed) % 1000;
                    let p = tier.alloc(size, 16).unwrap();
                    // SAFETY: the block holds `size` bytes.
                    unsafe { p.write_bytes(seed as u8, size) };
                    (p as usize, size)
                })
                .collect::<Vec<_>>()
        })
    };
    let (a, b) = (make(1).join().unwrap(), make(2).join().unwrap());
    // Each thread frees the other's blocks (into its own cache), then allocates as many.
    let swap = |theirs: Vec<(usize, usize)>, seed: u8| {
        std::thread::spawn(move || {
            for &(p, _) in &theirs {
                tier.free(p as *mut u8).unwrap();
            }
            let mine: Vec<(usize, usize)> = theirs
                .iter()
                .map(|&(_, size)| {
                    let p = tier.alloc(size, 16).unwrap();
                    // SAFETY: the block holds `size` bytes.
                    unsafe { p.write_bytes(seed, size) };
                    (p as usize, size)
                })
                .collect();
            let reused = theirs
                .iter()
                .filter(|t| mine.iter().any(|m| m.0 == t.0))
                .count();
            (mine, reused)
        })
    };
    let (x, y) = (swap(a, 3), swap(b, 4));
    let ((a2, reused_a), (b2, reused_b)) = (x.join().unwrap(), y.join().unwrap());
    assert!(
        reused_a + reused_b > 0,
        "freed slots came back from the freeing thread's cache"
    );
    // No two live blocks overlap, and their contents are intact.
    let mut all: Vec<(usize, usize, u8)> = a2
        .iter()
        .map(|&(p, n)| (p, n, 3))
        .chain(b2.iter().map(|&(p, n)| (p, n, 4)))
        .collect();
    all.sort_unstable();
    for w in all.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "blocks overlap");
    }
    for &(p, n, seed) in &all {
        // SAFETY: a live block of `n` bytes.
        let bytes = unsafe { core::slice::from_raw_parts(p as *const u8, n) };
        assert!(bytes.iter().all(|&x| x == seed), "contents changed");
        tier.free(p as *mut u8).unwrap();
    }
    tier.slabs.check_invariants();
    assert!(all_free(tier));
    let s = tier.stats();
    assert_eq!(
        (s.allocations, s.frees),
        (4 * BLOCKS as u64, 4 * BLOCKS as u64)
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn racing_double_frees_of_cached_size_slots_have_one_winner() {
    let (tier, path) = open("race");
    const BLOCKS: usize = 500;
    let blocks: Vec<usize> = (0..BLOCKS)
        .map(|i| tier.alloc(16 + i % 500, 16).unwrap() as usize)
        .collect();
    let blocks = Arc::new(blocks);
    let start = Arc::new(Barrier::new(2));
    let free_all = || {
        let (blocks, start) = (blocks.clone(), start.clone());
        std::thread::spawn(move || {
            start.wait();
            blocks
                .iter()
                .filter(|&&p| tier.free(p as *mut u8).is_ok())
                .count()
        })
    };
    let (x, y) = (free_all(), free_all());
    assert_eq!(
        x.join().unwrap() + y.join().unwrap(),
        BLOCKS,
        "every block freed once"
    );
    tier.slabs.check_invariants();
    assert!(all_free(tier));
    std::fs::remove_file(path).unwrap();
}
