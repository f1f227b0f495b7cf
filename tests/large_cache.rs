//! The DRAM tier's cache of freed large mappings (`dram/large.rs`): a steady working set of
//! big blocks is served from the pages its freed blocks left resident, whatever order and
//! sizes it asks for them in (a cached mapping is split for a smaller block and grown for a
//! larger one), and the cached pages go back to the kernel once nothing took them for the
//! decay time, even when the program only goes on with small allocations.
//!
//! One test, so that nothing else in this binary allocates while it counts faults and RSS.

use std::alloc::{GlobalAlloc, Layout};
use std::time::{Duration, Instant};
use tiermalloc::TierMalloc;

#[global_allocator]
static GLOBAL: TierMalloc = TierMalloc;

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;
/// The working set: 40 MiB in blocks of 1.5..9 MiB (below the cache's 64 MiB floor).
const SIZES: [usize; 8] = [
    3 * MIB / 2,
    9 * MIB,
    2 * MIB,
    7 * MIB,
    5 * MIB,
    3 * MIB,
    8 * MIB,
    4 * MIB + 12345,
];

#[path = "support/process_memory.rs"]
mod process_memory;
use process_memory::{resident_bytes, thread_minor_faults};

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 16).unwrap()
}

/// Allocates a block of each size in `order`, writing every page of it.
fn fill(order: &[usize], blocks: &mut Vec<(*mut u8, usize)>) {
    for &size in order {
        // SAFETY: a non-zero layout; every byte written lies inside the block.
        unsafe {
            let p = GLOBAL.alloc(layout(size));
            assert!(!p.is_null());
            for off in (0..size).step_by(PAGE) {
                p.add(off).write(1);
            }
            blocks.push((p, size));
        }
    }
}

fn empty(blocks: &mut Vec<(*mut u8, usize)>) {
    for (p, size) in blocks.drain(..) {
        // SAFETY: allocated by `fill` with this layout.
        unsafe { GLOBAL.dealloc(p, layout(size)) };
    }
}

#[test]
fn a_steady_set_of_big_blocks_is_not_refaulted_and_an_idle_cache_decays() {
    // A thread of its own: RUSAGE_THREAD counts only its faults.
    std::thread::spawn(|| {
        let mut blocks = Vec::new();
        fill(&SIZES, &mut blocks);
        empty(&mut blocks);
        // Each round asks for the same sizes in another order, so that a block mostly lands
        // in a mapping of another size: split, grown, or both.
        let mut order = SIZES;
        let (rounds, mut pages) = (20, 0);
        let before = thread_minor_faults();
        for round in 0..rounds {
            order.rotate_left(3);
            if round % 2 == 1 {
                order.reverse();
            }
            fill(&order, &mut blocks);
            pages += SIZES.iter().map(|s| s.div_ceil(PAGE)).sum::<usize>();
            empty(&mut blocks);
        }
        let per_page = (thread_minor_faults() - before) as f64 / pages as f64;
        // A cache that only reused a mapping of the same or a somewhat larger size faulted in
        // many of their pages again; without the cache, every page faults (1.0). Measured: 0.024.
        assert!(
            per_page < 0.1,
            "{per_page:.3} page faults per page written on a steady working set of big blocks"
        );

        // Now leave the 40 MiB unused, only allocating small blocks: within the decay time
        // (1 s) and a margin for a loaded machine, the cached pages go back to the kernel.
        let cached = resident_bytes();
        let start = Instant::now();
        let mut small = Vec::with_capacity(4096);
        let fell = loop {
            // Enough small blocks to run out of pages, the moment the decay is checked.
            for _ in 0..4096 {
                // SAFETY: a non-zero layout.
                small.push(unsafe { GLOBAL.alloc(layout(48)) });
            }
            for p in small.drain(..) {
                // SAFETY: allocated just above with this layout.
                unsafe { GLOBAL.dealloc(p, layout(48)) };
            }
            let now = resident_bytes();
            if now + 32 * MIB <= cached {
                break true;
            }
            if start.elapsed() > Duration::from_secs(20) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            fell,
            "RSS stayed at {} MiB (from {} MiB) for 20 s of small allocations after 40 MiB of \
             big blocks were freed",
            resident_bytes() / MIB,
            cached / MIB
        );
    })
    .join()
    .unwrap();
}
