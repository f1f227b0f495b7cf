//! The calling thread's CPU time, and a way to spend it: the DRAM tier's purge decay counts
//! its windows on the heap's thread's CPU clock (`dram/fast/decay_clock.rs`). Shared by
//! `tests/refaults.rs` and `tests/idle_below_threshold.rs` (by `#[path]`).

use std::time::Duration;

/// CPU time the calling thread has used so far.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-parameter for an existing clock.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Spends `d` of the calling thread's CPU time.
pub fn spin_cpu(d: Duration) {
    let start = thread_cpu();
    let mut spins = 0u64;
    while thread_cpu() - start < d {
        spins = std::hint::black_box(spins + 1);
    }
}
