//! The DRAM tier's purge decay below the old 4 MiB threshold (`dram/fast/heap.rs`,
//! `PURGE_THRESHOLD`): a heap's few MiB of freed pages, taken again within a decay window,
//! stay resident (no faults to bring them back), and go back to the kernel once idle for a
//! whole window, as mimalloc-bench's gs and rptest leave them between phases (BENCHMARKS.md,
//! session 14).
//!
//! One test, so that nothing else in this binary allocates while it counts faults and RSS.

use std::alloc::{GlobalAlloc, Layout};
use std::time::Duration;
use tiermalloc::TierMalloc;

#[global_allocator]
static GLOBAL: TierMalloc = TierMalloc;

const BLOCK: usize = 64 << 10;
/// 3 MiB: under the threshold of 4 MiB this heap kept without a thought of purging.
const BATCH: usize = 48;
const PAGE: usize = 4096;

#[path = "support/process_memory.rs"]
mod process_memory;
use process_memory::{resident_bytes, thread_minor_faults};
#[path = "support/thread_cpu.rs"]
mod thread_cpu;
use thread_cpu::spin_cpu;

fn layout() -> Layout {
    Layout::from_size_align(BLOCK, 16).unwrap()
}

/// Allocates `BATCH` blocks of `BLOCK` bytes, touching every page of each.
fn fill(blocks: &mut Vec<*mut u8>) {
    for _ in 0..BATCH {
        // SAFETY: a non-zero layout; every page written lies inside the block.
        unsafe {
            let p = GLOBAL.alloc(layout());
            assert!(!p.is_null());
            for off in (0..BLOCK).step_by(PAGE) {
                p.add(off).write(1);
            }
            blocks.push(p);
        }
    }
}

fn empty(blocks: &mut Vec<*mut u8>) {
    for p in blocks.drain(..) {
        // SAFETY: allocated by `fill` with this layout.
        unsafe { GLOBAL.dealloc(p, layout()) };
    }
}

#[test]
fn three_idle_mib_go_back_and_three_busy_ones_stay() {
    // A thread of its own: its heap starts empty, and RUSAGE_THREAD counts only its faults.
    std::thread::spawn(|| {
        let mut blocks = Vec::with_capacity(BATCH);
        fill(&mut blocks);
        empty(&mut blocks);
        let rounds = 200;
        let before = thread_minor_faults();
        for _ in 0..rounds {
            fill(&mut blocks);
            empty(&mut blocks);
        }
        let per_pair = (thread_minor_faults() - before) as f64 / (rounds * BATCH) as f64;
        assert!(
            per_pair < 0.5,
            "{per_pair:.3} page faults per alloc+free pair on a steady 3 MiB working set"
        );

        // Leave the 3 MiB unused through two decay windows (20 ms of the thread's CPU time
        // each) of slow paths: each allocation below is of a size class this thread has not
        // used, so each takes the slow path, where the decay runs.
        let resident_full = resident_bytes();
        let mut kept = Vec::new();
        for size in [5000usize, 9000, 17000, 33000] {
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
            resident_full >= resident_after + (3 << 19),
            "idle memory not purged: {} KiB resident before, {} KiB after",
            resident_full >> 10,
            resident_after >> 10
        );
    })
    .join()
    .unwrap();
}
