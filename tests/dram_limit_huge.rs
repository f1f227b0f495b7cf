//! DRAM's `limit=` bounds what DRAM holds, huge pages included (`src/dram/budget.rs`): a
//! heap that grows with small blocks gets its segments' halves on 2 MiB pages
//! (`src/dram/huge_pages.rs`), made present whole before its pages are cut, and those bytes
//! count against the limit from then on. Each limit runs in a child process of its own (the
//! limit is set once, when the tiers open), which allocates 1 KiB blocks from DRAM, writing
//! each, until DRAM refuses; its resident bytes must not grow past the limit.

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

const CHILD: &str = "TM_DRAM_LIMIT_HUGE_CHILD";
const KIB: usize = 1 << 10;
/// What a process holds past its blocks' pages: the segments' descriptors (the header slice's
/// first pages) and the page map's, for the few segments of a limit this size.
const SLACK: usize = 512 * KIB;

/// The child: grows DRAM with 1 KiB blocks until it refuses; says how much resident memory
/// grew and how many bytes the blocks hold. (The test harness allocates through tiermalloc
/// too: what it needs is allocated before, and the blocks are freed before it goes on.)
fn grow_until_refused() {
    let dram = Tier::new(Kind::Dram).expect("dram is configured");
    let layout = Layout::from_size_align(1024, 16).unwrap();
    // Written whole now, so that its pages are resident before the figure is taken.
    let mut blocks = vec![core::ptr::NonNull::<u8>::dangling(); 64 << 10];
    blocks.clear();
    // The heap's first segment, the page map and stdout's buffer exist before the figure is
    // taken.
    println!("GROWING");
    blocks.push(dram.allocate(layout).unwrap().cast::<u8>());
    let before = resident_bytes();
    // What DRAM holds already (the harness's blocks, `blocks`): the limit bounds it plus the
    // growth.
    let s = tiermalloc::stats(Kind::Dram).unwrap();
    let held_before = s.capacity - s.largest_free;
    while let Ok(p) = dram.allocate(layout) {
        // SAFETY: a 1 KiB block of ours.
        unsafe { p.cast::<u8>().as_ptr().write_bytes(0x5a, 1024) };
        assert!(blocks.len() < blocks.capacity(), "DRAM never refused");
        blocks.push(p.cast::<u8>());
    }
    let grew = resident_bytes().saturating_sub(before);
    let held = blocks.len() * 1024;
    for p in blocks.drain(..) {
        // SAFETY: our blocks, each freed once.
        unsafe { dram.deallocate(p, layout) };
    }
    println!("GREW {grew} HELD {held} BEFORE {held_before}");
}

#[test]
fn a_dram_limit_bounds_the_resident_bytes_of_huge_halves_too() {
    if std::env::var_os(CHILD).is_some() {
        grow_until_refused();
        return;
    }
    // Past the 8 segments (32 MiB) a heap holds on small pages, so that its next halves are
    // made huge; every 512 KiB over 12 MiB, so that the limit falls at every point of a half
    // (each child takes a few ms).
    for limit in (34 * 1024..46 * 1024).step_by(512).map(|k| k * KIB) {
        let test = "a_dram_limit_bounds_the_resident_bytes_of_huge_halves_too";
        let stdout = run_child(test, CHILD, "1", (limit / KIB) as u64);
        let figure = |key: &str| figure(&stdout, key) as usize;
        let (grew, held, before) = (figure("GREW"), figure("HELD"), figure("BEFORE"));
        eprintln!(
            "limit {} KiB, {} KiB held before: resident +{} KiB for {} KiB of blocks",
            limit / KIB,
            before / KIB,
            grew / KIB,
            held / KIB
        );
        assert!(
            held >= limit - 4 * 1024 * KIB,
            "DRAM refused long before its limit: {held} bytes held of {limit}"
        );
        assert!(
            grew <= limit - before + SLACK,
            "resident +{} KiB under a limit of {} KiB, {} KiB of which were held before",
            grew / KIB,
            limit / KIB,
            before / KIB
        );
    }
}
