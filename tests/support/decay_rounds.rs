//! What the DRAM tier's purge decay tests run (`dram/fast/heap.rs`): a working set of 64 KiB
//! blocks freed and taken again, then left idle through two decay windows of the thread's CPU
//! time (`dram/fast/decay_clock.rs`). Shared by `tests/refaults.rs` and
//! `tests/idle_below_threshold.rs` (by `#[path]`), each with its own set's size and bounds.
//! Needs `process_memory` in the including file.

use super::process_memory::{resident_bytes, thread_minor_faults};
use std::alloc::{GlobalAlloc, Layout};
use std::time::Duration;

const BLOCK: usize = 64 << 10;
const PAGE: usize = 4096;

/// What one run measured.
pub struct Decay {
    /// Page faults per alloc+free pair while the set was freed and taken again.
    pub faults_per_pair: f64,
    /// Resident bytes with the set freed, before it was left idle, and after.
    pub resident_full: usize,
    pub resident_after: usize,
}

/// On a thread of its own (its heap starts empty, and RUSAGE_THREAD counts only its faults):
/// `blocks` blocks of 64 KiB allocated (every page touched) and freed `rounds` times after a
/// first round, then left idle while four allocations of size classes the thread has not
/// used take the slow path, where the decay runs, 30 ms of CPU time apart.
pub fn run(alloc: &'static (dyn GlobalAlloc + Sync), blocks: usize, rounds: usize) -> Decay {
    std::thread::spawn(move || {
        let layout = Layout::from_size_align(BLOCK, 16).unwrap();
        let mut set = Vec::with_capacity(blocks);
        let round = |set: &mut Vec<*mut u8>| {
            for _ in 0..blocks {
                // SAFETY: a non-zero layout; every page written lies inside the block.
                unsafe {
                    let p = alloc.alloc(layout);
                    assert!(!p.is_null());
                    for off in (0..BLOCK).step_by(PAGE) {
                        p.add(off).write(1);
                    }
                    set.push(p);
                }
            }
            for p in set.drain(..) {
                // SAFETY: allocated just above with this layout.
                unsafe { alloc.dealloc(p, layout) };
            }
        };
        round(&mut set);
        let before = thread_minor_faults();
        for _ in 0..rounds {
            round(&mut set);
        }
        let faults_per_pair = (thread_minor_faults() - before) as f64 / (rounds * blocks) as f64;

        let resident_full = resident_bytes();
        let mut kept = Vec::new();
        for size in [5000usize, 9000, 17000, 33000] {
            spin_cpu(Duration::from_millis(30));
            let layout = Layout::from_size_align(size, 8).unwrap();
            // SAFETY: a non-zero layout; freed below.
            kept.push((unsafe { alloc.alloc(layout) }, layout));
        }
        let resident_after = resident_bytes();
        for (p, layout) in kept {
            // SAFETY: allocated above with this layout.
            unsafe { alloc.dealloc(p, layout) };
        }
        Decay {
            faults_per_pair,
            resident_full,
            resident_after,
        }
    })
    .join()
    .unwrap()
}

/// Spends `d` of the calling thread's CPU time.
fn spin_cpu(d: Duration) {
    let cpu = || {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid out-parameter for an existing clock.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    };
    let start = cpu();
    let mut spins = 0u64;
    while cpu() - start < d {
        spins = std::hint::black_box(spins + 1);
    }
}
