//! The DRAM tier's purge decay (`dram/fast/heap.rs`): a working set that is freed and taken again
//! stays resident (no page faults to bring it back), while memory left unused for a whole decay
//! window goes back to the kernel.
//!
//! One test, so that nothing else in this binary allocates while it counts faults and RSS.

use std::alloc::{GlobalAlloc, Layout};
use std::time::Duration;
use tiermalloc::TierMalloc;

#[global_allocator]
static GLOBAL: TierMalloc = TierMalloc;

const BLOCK: usize = 64 << 10;
const BATCH: usize = 256;
const PAGE: usize = 4096;

#[path = "support/process_memory.rs"]
mod process_memory;
use process_memory::{resident_bytes, thread_minor_faults};
#[path = "support/thread_cpu.rs"]
mod thread_cpu;
use thread_cpu::spin_cpu;

/// Allocates `BATCH` blocks of `BLOCK` bytes, touching every page of each.
fn fill(blocks: &mut Vec<*mut u8>) {
    let layout = Layout::from_size_align(BLOCK, 16).unwrap();
    for _ in 0..BATCH {
        // SAFETY: a non-zero layout; every page written lies inside the block.
        unsafe {
            let p = GLOBAL.alloc(layout);
            assert!(!p.is_null());
            for off in (0..BLOCK).step_by(PAGE) {
                p.add(off).write(1);
            }
            blocks.push(p);
        }
    }
}

fn empty(blocks: &mut Vec<*mut u8>) {
    let layout = Layout::from_size_align(BLOCK, 16).unwrap();
    for p in blocks.drain(..) {
        // SAFETY: allocated by `fill` with this layout.
        unsafe { GLOBAL.dealloc(p, layout) };
    }
}

#[test]
fn a_steady_working_set_is_not_refaulted_and_an_idle_one_is_purged() {
    // A thread of its own: its heap starts empty, and RUSAGE_THREAD counts only its faults.
    std::thread::spawn(|| {
        let mut blocks = Vec::with_capacity(BATCH);
        fill(&mut blocks);
        empty(&mut blocks);
        let rounds = 40;
        let before = thread_minor_faults();
        for _ in 0..rounds {
            fill(&mut blocks);
            empty(&mut blocks);
        }
        let per_pair = (thread_minor_faults() - before) as f64 / (rounds * BATCH) as f64;
        // 16 MiB freed and taken again: before the decay, every empty segment but one was
        // unmapped and the rest purged after 20 ms, 7-9 faults per pair (of 16 pages touched).
        assert!(
            per_pair < 0.5,
            "{per_pair:.3} page faults per alloc+free pair on a steady working set"
        );

        // Now leave the 16 MiB unused: within two decay windows (20 ms of the thread's CPU
        // time each, spent here spinning) of slow paths, the bytes idle through a whole window
        // go back. Each allocation below is of a size class this thread has not used, so each
        // takes the slow path, where the decay runs.
        let resident_full = resident_bytes();
        let sizes = [5000usize, 9000, 17000, 33000];
        let mut kept = Vec::new();
        for size in sizes {
            spin_cpu(Duration::from_millis(30));
            let layout = Layout::from_size_align(size, 8).unwrap();
            // SAFETY: a non-zero layout; freed below.
            kept.push((unsafe { GLOBAL.alloc(layout) }, layout));
        }
        let resident_after = resident_bytes();
        for (p, layout) in kept {
            // SAFETY: allocated above with this layout.
            unsafe { GLOBAL.dealloc(p, layout) };
        }
        assert!(
            resident_full >= resident_after + (8 << 20),
            "idle memory not purged: {} MiB resident before, {} MiB after",
            resident_full >> 20,
            resident_after >> 20
        );
    })
    .join()
    .unwrap();
}
