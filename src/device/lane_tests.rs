//! Two threads on one device tier in two lanes of the slabs (`slabs::lane`): each gets slabs of
//! its own for the same size, the blocks never overlap, frees from the other lane and double
//! frees are handled as with one lane, and the counts stay exact.

use super::*;
use crate::config::tier_spec_for_test;
use slabs::Lane;
use std::sync::Arc;

const BLOCKS: usize = 2000;
const SIZE: usize = 100;

#[test]
fn two_lanes_take_separate_slabs_and_free_each_others_blocks() {
    let path = format!("/dev/shm/tiermalloc-tier-{}-lanes", std::process::id());
    let spec = tier_spec_for_test(&format!("pmr:path={path},create,size=16M"));
    let tier = Arc::new(DeviceTier::open(&spec).unwrap());
    let allocate_in = |lane: u8| {
        let tier = tier.clone();
        std::thread::spawn(move || {
            Lane::set_for_this_thread(Lane(lane));
            (0..BLOCKS)
                .map(|i| {
                    let p = tier.alloc(SIZE, 16).unwrap();
                    // SAFETY: the block holds SIZE bytes.
                    unsafe { p.write_bytes(lane ^ i as u8, SIZE) };
                    p as usize
                })
                .collect::<Vec<_>>()
        })
    };
    let (a, b) = (allocate_in(0), allocate_in(1));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());

    // Same class, different lanes: no slab holds blocks of both threads.
    let window = |p: &usize| (*p - tier.region().base) as u64 / SLAB_BYTES;
    let windows_a: std::collections::BTreeSet<_> = a.iter().map(window).collect();
    assert!(
        b.iter().map(window).all(|w| !windows_a.contains(&w)),
        "a slab served both lanes"
    );
    // No two blocks overlap (slots of one class: distinct starts at least a slot apart).
    let mut all: Vec<usize> = a.iter().chain(&b).copied().collect();
    all.sort_unstable();
    assert!(all
        .windows(2)
        .all(|w| w[1] - w[0] >= SIZE + HEADER_SIZE as usize));
    for (lane, blocks) in [(0u8, &a), (1u8, &b)] {
        for (i, &p) in blocks.iter().enumerate() {
            // SAFETY: a live block of SIZE bytes.
            let bytes = unsafe { core::slice::from_raw_parts(p as *const u8, SIZE) };
            assert!(
                bytes.iter().all(|&x| x == lane ^ i as u8),
                "contents changed"
            );
        }
    }
    let s = tier.stats();
    assert_eq!((s.allocations, s.frees), (2 * BLOCKS as u64, 0));

    // Lane 1's thread frees lane 0's blocks, and the reverse; a second free is refused.
    let free_in = |lane: u8, blocks: Vec<usize>| {
        let tier = tier.clone();
        std::thread::spawn(move || {
            Lane::set_for_this_thread(Lane(lane));
            for &p in &blocks {
                tier.free(p as *mut u8).unwrap();
            }
            blocks
                .iter()
                .map(|&p| tier.free(p as *mut u8))
                .filter(|r| *r == Err(FreeError::DoubleFree))
                .count()
        })
    };
    let (x, y) = (free_in(1, a), free_in(0, b));
    let refused = x.join().unwrap() + y.join().unwrap();
    assert_eq!(refused, 2 * BLOCKS, "every double free is caught");

    tier.slabs.check_invariants();
    let s = tier.stats();
    assert_eq!(
        (s.allocations, s.frees, s.in_use),
        (2 * BLOCKS as u64, 2 * BLOCKS as u64, 0)
    );
    assert_eq!(
        s.largest_free,
        s.capacity - HEADER_SIZE,
        "every slab went back"
    );
    drop(tier);
    std::fs::remove_file(path).unwrap();
}
