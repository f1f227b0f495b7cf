//! Tests of the heap builder a recovery uses (`rebuild.rs`): the heap it finishes is the heap
//! its extents describe, its size index holding every free extent once at its final length
//! (merged runs of free extents included), its start table every extent, and it serves
//! allocations and frees like a heap built by them.

use super::{ExtentHeap, Fit};
use crate::test_rng::Rng;
use std::vec::Vec;

const CAPACITY: u64 = 4 << 20;
const GRANULE: u64 = 64;

/// Pushes `extents` (length, free) and finishes the heap, checking every invariant.
fn build(extents: &[(u64, bool)]) -> ExtentHeap {
    let mut b = ExtentHeap::builder(CAPACITY, GRANULE, Fit::Worst).unwrap();
    for &(len, free) in extents {
        assert!(b.push(len, free), "push {len}");
    }
    let h = b.finish().expect("the extents reach the capacity");
    h.check_invariants();
    h
}

/// A random tiling of the capacity with runs of up to four free extents in a row.
fn random_tiling(rng: &mut Rng) -> Vec<(u64, bool)> {
    let mut extents = Vec::new();
    let mut end = 0;
    while end < CAPACITY {
        let len = (GRANULE * (1 + rng.below(256))).min(CAPACITY - end);
        extents.push((len, rng.below(3) == 0));
        end += len;
    }
    extents
}

#[test]
fn a_built_heap_holds_each_free_run_once_at_its_merged_length() {
    let mut rng = Rng(9);
    for _ in 0..50 {
        let extents = random_tiling(&mut rng);
        let h = build(&extents);
        // The free runs the heap must hold, merged: (offset, length).
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut at = 0;
        let mut prev_free = false;
        for &(len, free) in &extents {
            if free && prev_free {
                runs.last_mut().unwrap().1 += len;
            } else if free {
                runs.push((at, len));
            }
            prev_free = free;
            at += len;
        }
        let s = h.stats();
        assert_eq!(s.free_extents, runs.len() as u64);
        assert_eq!(s.largest_free, runs.iter().map(|r| r.1).max().unwrap_or(0));
        assert_eq!(s.free_bytes, runs.iter().map(|r| r.1).sum::<u64>());
    }
}

#[test]
fn a_built_heap_serves_allocations_and_frees() {
    let mut rng = Rng(90);
    let extents = random_tiling(&mut rng);
    let mut h = build(&extents);
    // Every allocated extent frees (the start table knows it) and coalesces with its free
    // neighbours (the size index knows them): in the end one free extent, the capacity.
    let mut at = 0;
    let mut allocated = Vec::new();
    for &(len, free) in &extents {
        if !free {
            allocated.push(at);
        }
        at += len;
    }
    let mut taken = Vec::new();
    for _ in 0..200 {
        let len = GRANULE * (1 + rng.below(64));
        if let Some((offset, _)) = h.alloc(len, 16, 16) {
            taken.push(offset);
        }
    }
    h.check_invariants();
    for offset in allocated.into_iter().chain(taken) {
        h.free(offset).expect("a live extent");
    }
    h.check_invariants();
    let s = h.stats();
    assert_eq!((s.free_extents, s.largest_free), (1, CAPACITY));
}
