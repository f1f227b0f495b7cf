//! This process's memory figures as the kernel counts them: the calling thread's minor page
//! faults and the process's resident bytes. Shared by `tests/support/decay_rounds.rs`,
//! `tests/large_cache.rs` and `tests/large_gather.rs` (by `#[path]`), which assert that memory
//! is reused without faults and given back when idle.

/// Minor page faults of the calling thread so far.
pub fn thread_minor_faults() -> u64 {
    // SAFETY: getrusage writes the struct we pass.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut usage), 0);
        usage.ru_minflt as u64
    }
}

/// Resident bytes of this process (`/proc/self/statm`).
pub fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}
