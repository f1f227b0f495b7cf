//! DRAM's `limit=` bounds what DRAM keeps resident, not only what blocks hold
//! (`src/dram/budget.rs`): the cache of freed large mappings and the free slices a thread
//! heap has not purged yet count too, and a request they would push over the limit gives
//! them back first. Each case runs in a child process of its own (the limit is set once, when
//! the tiers open): it leaves memory resident in no block (large blocks freed into the cache,
//! or small blocks freed into free slices), then allocates the other kind until DRAM
//! refuses, writing every block; the process's resident bytes must not grow past the limit.

use allocator_api2::alloc::Allocator;
use std::alloc::Layout;
use tiermalloc::{Kind, Tier};

#[path = "support/limit_child.rs"]
mod limit_child;
use limit_child::{figure, run_child};

#[path = "support/process_memory.rs"]
#[allow(dead_code)]
mod process_memory;
use process_memory::resident_bytes;

const CHILD: &str = "TM_DRAM_LIMIT_RESIDENT_CHILD";
const TEST: &str = "a_dram_limit_bounds_cached_and_free_resident_memory_too";
const MIB: usize = 1 << 20;
const LIMIT: usize = 48 * MIB;
/// What a process holds past its blocks' pages: segments' descriptors, the page map's pages.
const SLACK: usize = 2 * MIB;

/// Allocates `size`-byte blocks from DRAM, writing each, until it refuses or `bytes` are
/// taken; the blocks.
fn fill(dram: &Tier, size: usize, bytes: usize, blocks: &mut Vec<core::ptr::NonNull<u8>>) {
    let layout = Layout::from_size_align(size, 16).unwrap();
    let mut taken = 0;
    while taken < bytes {
        let Ok(p) = dram.allocate(layout) else { break };
        // SAFETY: a block of `size` bytes of ours.
        unsafe { p.cast::<u8>().as_ptr().write_bytes(0x5a, size) };
        assert!(blocks.len() < blocks.capacity(), "DRAM never refused");
        blocks.push(p.cast::<u8>());
        taken += size;
    }
}

fn free_all(dram: &Tier, size: usize, blocks: &mut Vec<core::ptr::NonNull<u8>>) {
    let layout = Layout::from_size_align(size, 16).unwrap();
    for p in blocks.drain(..) {
        // SAFETY: our blocks, each freed once.
        unsafe { dram.deallocate(p, layout) };
    }
}

/// The child: `first`-byte blocks (`bytes` of them) taken and freed, then `then`-byte blocks
/// until DRAM refuses; says how much resident memory grew at most and what DRAM held before.
fn leave_resident_then_grow(first: usize, bytes: usize, then: usize) {
    let dram = Tier::new(Kind::Dram).expect("dram is configured");
    let mut blocks = Vec::with_capacity(64 << 10);
    println!("GROWING");
    let s = tiermalloc::stats(Kind::Dram).unwrap();
    let held_before = s.capacity - s.largest_free;
    let before = resident_bytes();
    fill(&dram, first, bytes, &mut blocks);
    let after_first = resident_bytes();
    free_all(&dram, first, &mut blocks);
    fill(&dram, then, usize::MAX, &mut blocks);
    let grew = after_first.max(resident_bytes()).saturating_sub(before);
    let taken = blocks.len() * then;
    free_all(&dram, then, &mut blocks);
    println!("GREW {grew} TAKEN {taken} BEFORE {held_before}");
}

#[test]
fn a_dram_limit_bounds_cached_and_free_resident_memory_too() {
    if let Ok(case) = std::env::var(CHILD) {
        match case.as_str() {
            // Four 8 MiB blocks freed into the large cache, then small blocks.
            "cache" => leave_resident_then_grow(8 * MIB, 32 * MIB, 1024),
            // 24 MiB of small blocks freed into free slices (below the 32 MiB a heap purges at
            // once), then 1 MiB large blocks.
            _ => leave_resident_then_grow(1024, 24 * MIB, MIB),
        }
        return;
    }
    for case in ["slices", "cache"] {
        let stdout = run_child(TEST, CHILD, case, (LIMIT / 1024) as u64);
        let figure = |key: &str| figure(&stdout, key) as usize;
        let (grew, taken, before) = (figure("GREW"), figure("TAKEN"), figure("BEFORE"));
        eprintln!(
            "{case}: resident +{} KiB at most, {} KiB in the last blocks, {} KiB held before, \
             limit {} KiB",
            grew / 1024,
            taken / 1024,
            before / 1024,
            LIMIT / 1024
        );
        assert!(
            grew <= LIMIT - before + SLACK,
            "{case}: resident +{} KiB under a limit of {} KiB ({} KiB held before)",
            grew / 1024,
            LIMIT / 1024,
            before / 1024
        );
        assert!(
            taken + before >= LIMIT - 4 * MIB,
            "{case}: DRAM refused long before its limit ({} KiB in blocks)",
            taken / 1024
        );
    }
}
