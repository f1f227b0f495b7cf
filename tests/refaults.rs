//! The DRAM tier's purge decay (`dram/fast/heap.rs`): a working set that is freed and taken again
//! stays resident (no page faults to bring it back), while memory left unused for a whole decay
//! window goes back to the kernel.
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
fn a_steady_working_set_is_not_refaulted_and_an_idle_one_is_purged() {
    // 16 MiB (256 blocks of 64 KiB), freed and taken again 40 times, then idle.
    let d = decay_rounds::run(&GLOBAL, 256, 40);
    // Before the decay, every empty segment but one was unmapped and the rest purged after
    // 20 ms: 7-9 faults per pair (of 16 pages touched).
    assert!(
        d.faults_per_pair < 0.5,
        "{:.3} page faults per alloc+free pair on a steady working set",
        d.faults_per_pair
    );
    // Within two decay windows of slow paths, the bytes idle through a whole window go back.
    assert!(
        d.resident_full >= d.resident_after + (8 << 20),
        "idle memory not purged: {} MiB resident before, {} MiB after",
        d.resident_full >> 20,
        d.resident_after >> 20
    );
}
