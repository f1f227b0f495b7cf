//! The DRAM tier's purge decay below the old 4 MiB threshold (`dram/fast/heap.rs`,
//! `PURGE_THRESHOLD`): a heap's few MiB of freed pages, taken again within a decay window,
//! stay resident (no faults to bring them back), and go back to the kernel once idle for a
//! whole window, as mimalloc-bench's gs and rptest leave them between phases (BENCHMARKS.md,
//! session 14).
//!
//! One test, so that nothing else in this binary allocates while it counts faults and RSS.

use tiermalloc::TierMalloc;

#[global_allocator]
static GLOBAL: TierMalloc = TierMalloc;

#[path = "support/decay_rounds.rs"]
mod decay_rounds;
#[path = "support/process_memory.rs"]
mod process_memory;

#[test]
fn three_idle_mib_go_back_and_three_busy_ones_stay() {
    // 3 MiB (48 blocks of 64 KiB): under the 4 MiB a heap kept before without a thought of
    // purging. Freed and taken again 200 times, then idle.
    let d = decay_rounds::run(&GLOBAL, 48, 200);
    assert!(
        d.faults_per_pair < 0.5,
        "{:.3} page faults per alloc+free pair on a steady 3 MiB working set",
        d.faults_per_pair
    );
    assert!(
        d.resident_full >= d.resident_after + (3 << 19),
        "idle memory not purged: {} KiB resident before, {} KiB after",
        d.resident_full >> 10,
        d.resident_after >> 10
    );
}
