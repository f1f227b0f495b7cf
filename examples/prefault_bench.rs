//! Pre-fault throughput (BENCHMARKS.md, "Workload profiles"): how fast the profile's reserve
//! is made resident with `MADV_POPULATE_WRITE` (what `profile::reserve`'s thread does, in
//! 8 MiB steps) against a plain loop writing one byte per page of fresh anonymous memory (what
//! a workload without a reserve pays in page faults), in one run, interleaved, medians of 7.
//! `cargo run --release --example prefault_bench [-- SIZE_MIB]`.

use std::time::{Duration, Instant};

const PAGE: usize = 4096;
const STEP: usize = 8 << 20;

fn fresh(len: usize) -> *mut u8 {
    // SAFETY: a new private anonymous mapping.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p.cast()
}

fn minflt() -> i64 {
    // SAFETY: a valid out-parameter.
    unsafe {
        let mut r: libc::rusage = core::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut r);
        r.ru_minflt
    }
}

fn populate(len: usize) -> (Duration, i64) {
    let p = fresh(len);
    let (f, t) = (minflt(), Instant::now());
    let mut done = 0;
    while done < len {
        let n = STEP.min(len - done);
        // SAFETY: our mapping.
        assert_eq!(
            unsafe { libc::madvise(p.add(done).cast(), n, libc::MADV_POPULATE_WRITE) },
            0
        );
        done += n;
    }
    let r = (t.elapsed(), minflt() - f);
    // SAFETY: our mapping.
    unsafe { libc::munmap(p.cast(), len) };
    r
}

fn touch(len: usize) -> (Duration, i64) {
    let p = fresh(len);
    let (f, t) = (minflt(), Instant::now());
    for i in (0..len).step_by(PAGE) {
        // SAFETY: within our mapping.
        unsafe { p.add(i).write_volatile(1) };
    }
    let r = (t.elapsed(), minflt() - f);
    // SAFETY: our mapping.
    unsafe { libc::munmap(p.cast(), len) };
    r
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .map_or(256, |a| a.parse().expect("SIZE_MIB"));
    let len = mib << 20;
    let (mut pop, mut tch) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        pop.push(populate(len));
        tch.push(touch(len));
    }
    let med = |v: &mut Vec<(Duration, i64)>| {
        v.sort();
        v[v.len() / 2]
    };
    let (p, t) = (med(&mut pop), med(&mut tch));
    let gbs = |d: Duration| len as f64 / d.as_secs_f64() / 1e9;
    println!("{mib} MiB, medians of 7, interleaved");
    println!(
        "MADV_POPULATE_WRITE  {:6.2} GB/s  {:7} faults",
        gbs(p.0),
        p.1
    );
    println!(
        "touching loop        {:6.2} GB/s  {:7} faults",
        gbs(t.0),
        t.1
    );
    println!(
        "populate / touch: {:.2}x",
        t.0.as_secs_f64() / p.0.as_secs_f64()
    );
}
