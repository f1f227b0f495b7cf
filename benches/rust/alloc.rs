//! Micro-benchmarks: `tiermalloc::TierMalloc` against `std::alloc::System` (glibc),
//! `mimalloc::MiMalloc` (mimalloc v3: `libmimalloc-sys` 0.1.49 and later build v3 by default),
//! `snmalloc_rs::SnMalloc` and `tikv_jemallocator::Jemalloc`, all called directly through
//! `GlobalAlloc` in the same criterion group, so each scenario's report lists the five side by
//! side.
//!
//! Run (own target directory, as for every benchmark here):
//!
//! ```sh
//! CARGO_TARGET_DIR=$PWD/target-criterion cargo bench -p tiermalloc-benches --bench alloc
//! ```
//!
//! The benches package depends on tiermalloc without its default feature `override`: with it,
//! the crate exports the C `malloc` family, so in the bench binary glibc's `malloc` would be
//! replaced and "System" would be tiermalloc again. The bench checks this once at start (a
//! `System` block must not be ours) and prints a warning when it is.
//!
//! Smoke mode for CI (tiny measurement times: a few seconds of measuring once built):
//!
//! ```sh
//! TIERMALLOC_BENCH_SMOKE=1 CARGO_TARGET_DIR=$PWD/target-criterion \
//!     cargo bench -p tiermalloc-benches --bench alloc
//! ```
//!
//! A filter after `--` selects scenarios as usual, e.g. `-- alloc_free/64B`.
//!
//! Scenarios (one criterion group each; functions `tiermalloc`, `system`, `mimalloc3`,
//! `snmalloc`, `jemalloc`):
//! - `alloc_free/{8B,64B,512B,4KiB,64KiB,1MiB}`: one `alloc` + one byte written + one `dealloc`
//!   per iteration.
//! - `realloc_double`: `alloc(8)`, then `realloc` doubling up to 1 MiB (17 reallocs), then
//!   `dealloc`; one byte written at the end of each new size. Time is per whole chain.
//! - `realloc_step16`: `alloc(16)`, then `realloc` in +16 B steps up to 64 KiB (4095 reallocs),
//!   then `dealloc`; time per whole chain (criterion also reports elements/s per realloc).
//! - `batch_lifo` / `batch_fifo`: allocate 1000 blocks of 64 B (one byte written to each), free
//!   them in reverse / the same order; criterion's throughput is per block (alloc + free).
//! - `prodcons`: the bench thread allocates 64 B blocks and passes them through a bounded
//!   single-producer single-consumer ring (indices published every 32 blocks, so the ring itself
//!   costs little) to a second thread that frees them: every free is a cross-thread free. Time
//!   per block, from the first allocation until the consumer has freed the last one. This one
//!   depends on whether both threads get a core at the same time; on a loaded 2-core machine
//!   its spread is wide.
//!
//! Note on fairness: `TierMalloc` is Rust code that can be inlined into the benchmark (as it is
//! into any Rust program that uses it as `#[global_allocator]`); the four peers are C or C++
//! libraries reached through one FFI call per operation (mimalloc, snmalloc and jemalloc
//! statically linked, glibc dynamically).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};

static TIER: tiermalloc::TierMalloc = tiermalloc::TierMalloc;
static SYSTEM: System = System;
static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
static SNMALLOC: snmalloc_rs::SnMalloc = snmalloc_rs::SnMalloc;
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Calls `$f(group, name, &ALLOCATOR, args...)` for each of the five allocators, monomorphised (no
/// dynamic dispatch in the measured loops).
macro_rules! for_each_allocator {
    ($group:expr, $f:ident $(, $arg:expr)*) => {{
        $f($group, "tiermalloc", &TIER $(, $arg)*);
        $f($group, "system", &SYSTEM $(, $arg)*);
        $f($group, "mimalloc3", &MIMALLOC $(, $arg)*);
        $f($group, "snmalloc", &SNMALLOC $(, $arg)*);
        $f($group, "jemalloc", &JEMALLOC $(, $arg)*);
    }};
}

fn smoke() -> bool {
    std::env::var_os("TIERMALLOC_BENCH_SMOKE").is_some_and(|v| v == "1")
}

/// Short default times (the whole run takes a few minutes); command-line flags such as
/// `--measurement-time` still override them.
fn config() -> Criterion {
    let base = Criterion::default();
    if smoke() {
        base.sample_size(10)
            .warm_up_time(Duration::from_millis(10))
            .measurement_time(Duration::from_millis(20))
            .nresamples(1000)
            .without_plots()
    } else {
        base.sample_size(20)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .nresamples(10_000)
            .without_plots()
    }
}

/// One-time check that `System` really is another allocator, i.e. that the bench was built
/// without the `override` feature.
fn check_system_is_not_ours() {
    let layout = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: non-zero size; the block is freed with the same allocator and layout.
    unsafe {
        let p = SYSTEM.alloc(layout);
        assert!(!p.is_null());
        if tiermalloc::kind_of(p).is_some() {
            eprintln!(
                "WARNING: std::alloc::System returned a tiermalloc block: the bench was built \
                 with the `override` feature, so `system` measures tiermalloc. Rebuild with \
                 `cargo bench -p tiermalloc-benches --bench alloc`."
            );
        }
        SYSTEM.dealloc(p, layout);
        // The converse: a TierMalloc block must be recognised as ours.
        let q = TIER.alloc(layout);
        assert!(!q.is_null());
        if tiermalloc::kind_of(q).is_none() {
            eprintln!("WARNING: tiermalloc::kind_of does not recognise a TierMalloc block");
        }
        TIER.dealloc(q, layout);
    }
}

// ---------------------------------------------------------------------------------------------
// alloc/free pairs

fn pair<A: GlobalAlloc>(g: &mut BenchmarkGroup<WallTime>, name: &str, a: &'static A, size: usize) {
    let layout = Layout::from_size_align(size, 8).unwrap();
    g.bench_function(name, |b| {
        b.iter(|| {
            // SAFETY: non-zero size; the block is written within bounds and freed once with
            // the same allocator and layout.
            unsafe {
                let p = a.alloc(black_box(layout));
                assert!(!p.is_null());
                p.write_volatile(1);
                a.dealloc(black_box(p), layout);
            }
        })
    });
}

fn bench_pairs(c: &mut Criterion) {
    for (label, size) in [
        ("8B", 8usize),
        ("64B", 64),
        ("512B", 512),
        ("4KiB", 4 << 10),
        ("64KiB", 64 << 10),
        ("1MiB", 1 << 20),
    ] {
        let mut g = c.benchmark_group(format!("alloc_free/{label}"));
        for_each_allocator!(&mut g, pair, size);
        g.finish();
    }
}

// ---------------------------------------------------------------------------------------------
// growth by realloc

/// Grows one block from `start` bytes through `next(size)` while it stays `<= end`; returns the
/// number of reallocs done.
///
/// # Safety
/// `start` non-zero; `next` strictly increasing.
#[inline(always)]
unsafe fn grow<A: GlobalAlloc>(
    a: &A,
    start: usize,
    end: usize,
    next: impl Fn(usize) -> usize,
) -> u64 {
    let mut layout = Layout::from_size_align(start, 8).unwrap();
    // SAFETY: non-zero sizes; every pointer is the live result of the previous call with the
    // matching layout; writes stay within the current size.
    unsafe {
        let mut p = a.alloc(layout);
        assert!(!p.is_null());
        p.add(start - 1).write_volatile(1);
        let mut n = 0;
        let mut size = next(start);
        while size <= end {
            p = a.realloc(p, layout, size);
            assert!(!p.is_null());
            layout = Layout::from_size_align_unchecked(size, 8);
            p.add(size - 1).write_volatile(1);
            n += 1;
            size = next(size);
        }
        a.dealloc(black_box(p), layout);
        n
    }
}

fn realloc_double<A: GlobalAlloc>(g: &mut BenchmarkGroup<WallTime>, name: &str, a: &'static A) {
    // SAFETY: start 8 > 0, doubling is increasing.
    g.bench_function(name, |b| {
        b.iter(|| unsafe { grow(a, 8, 1 << 20, |s| s * 2) })
    });
}

fn realloc_step16<A: GlobalAlloc>(g: &mut BenchmarkGroup<WallTime>, name: &str, a: &'static A) {
    // SAFETY: start 16 > 0, +16 is increasing.
    g.bench_function(name, |b| {
        b.iter(|| unsafe { grow(a, 16, 64 << 10, |s| s + 16) })
    });
}

fn bench_realloc(c: &mut Criterion) {
    let mut g = c.benchmark_group("realloc_double");
    // 8 -> 16 -> ... -> 1 MiB: 17 reallocs per chain.
    g.throughput(Throughput::Elements(17));
    for_each_allocator!(&mut g, realloc_double);
    g.finish();

    let mut g = c.benchmark_group("realloc_step16");
    // 16 -> 32 -> ... -> 65536 in steps of 16: 4095 reallocs per chain.
    g.throughput(Throughput::Elements(4095));
    for_each_allocator!(&mut g, realloc_step16);
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// LIFO / FIFO batches

const BATCH: usize = 1000;

fn batch<A: GlobalAlloc>(g: &mut BenchmarkGroup<WallTime>, name: &str, a: &'static A, lifo: bool) {
    let layout = Layout::from_size_align(64, 8).unwrap();
    // The pointer array comes from the bench's own global allocator (glibc), once.
    let mut ptrs: Vec<*mut u8> = vec![std::ptr::null_mut(); BATCH];
    g.bench_function(name, |b| {
        b.iter(|| {
            // SAFETY: non-zero size; each block is written within bounds and freed exactly once
            // with the same allocator and layout.
            unsafe {
                for slot in ptrs.iter_mut() {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    p.write_volatile(1);
                    *slot = p;
                }
                black_box(&mut ptrs);
                if lifo {
                    for &p in ptrs.iter().rev() {
                        a.dealloc(p, layout);
                    }
                } else {
                    for &p in ptrs.iter() {
                        a.dealloc(p, layout);
                    }
                }
            }
        })
    });
}

fn bench_batches(c: &mut Criterion) {
    for (group, lifo) in [("batch_lifo", true), ("batch_fifo", false)] {
        let mut g = c.benchmark_group(group);
        g.throughput(Throughput::Elements(BATCH as u64));
        for_each_allocator!(&mut g, batch, lifo);
        g.finish();
    }
}

// ---------------------------------------------------------------------------------------------
// producer / consumer

/// Bounded single-producer single-consumer ring of block addresses, allocation-free after
/// construction. Both sides publish their index only every `PUBLISH` elements (and when they
/// run out), and read the other side's index only when their cached copy says full / empty, so
/// the ring costs a fraction of a cache-line transfer per block and the allocator's own
/// cross-thread free dominates. Waiting spins briefly, then yields (the machine may have fewer
/// free cores than threads).
struct Ring {
    slots: Box<[AtomicUsize]>,
    mask: usize,
    /// Count of elements the consumer has taken; written only by the consumer.
    head: CachePadded<AtomicUsize>,
    /// Count of elements the producer has published; written only by the producer.
    tail: CachePadded<AtomicUsize>,
}

#[repr(align(128))]
struct CachePadded<T>(T);

const PUBLISH: usize = 32;

/// The producer's private view of the ring.
struct Producer {
    tail: usize,
    cached_head: usize,
}

/// The consumer's private view of the ring.
struct Consumer {
    head: usize,
    cached_tail: usize,
}

impl Ring {
    fn new(capacity: usize) -> Ring {
        assert!(capacity.is_power_of_two() && capacity >= 2 * PUBLISH);
        Ring {
            slots: (0..capacity).map(|_| AtomicUsize::new(0)).collect(),
            mask: capacity - 1,
            head: CachePadded(AtomicUsize::new(0)),
            tail: CachePadded(AtomicUsize::new(0)),
        }
    }

    fn push(&self, me: &mut Producer, v: usize) {
        if me.tail.wrapping_sub(me.cached_head) > self.mask {
            // Looks full: make everything written visible, then wait for the consumer.
            self.tail.0.store(me.tail, Ordering::Release);
            let mut spins = 0u32;
            loop {
                me.cached_head = self.head.0.load(Ordering::Acquire);
                if me.tail.wrapping_sub(me.cached_head) <= self.mask {
                    break;
                }
                backoff(&mut spins);
            }
        }
        self.slots[me.tail & self.mask].store(v, Ordering::Relaxed);
        me.tail = me.tail.wrapping_add(1);
        if me.tail % PUBLISH == 0 {
            self.tail.0.store(me.tail, Ordering::Release);
        }
    }

    fn flush(&self, me: &Producer) {
        self.tail.0.store(me.tail, Ordering::Release);
    }

    /// `None` when nothing is published.
    fn try_pop(&self, me: &mut Consumer) -> Option<usize> {
        if me.head == me.cached_tail {
            self.head.0.store(me.head, Ordering::Release);
            me.cached_tail = self.tail.0.load(Ordering::Acquire);
            if me.head == me.cached_tail {
                return None;
            }
        }
        let v = self.slots[me.head & self.mask].load(Ordering::Relaxed);
        me.head = me.head.wrapping_add(1);
        if me.head % PUBLISH == 0 {
            self.head.0.store(me.head, Ordering::Release);
        }
        Some(v)
    }
}

fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn prodcons<A: GlobalAlloc + Sync>(g: &mut BenchmarkGroup<WallTime>, name: &str, a: &'static A) {
    let layout = Layout::from_size_align(64, 8).unwrap();
    let ring = Arc::new(Ring::new(1024));
    let freed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (ring, freed, stop) = (ring.clone(), freed.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut me = Consumer {
                head: 0,
                cached_tail: 0,
            };
            let mut spins = 0u32;
            let mut done = 0u64;
            loop {
                match ring.try_pop(&mut me) {
                    Some(p) => {
                        spins = 0;
                        // SAFETY: `p` is a live block the producer allocated from `a` with
                        // `layout` and handed over; it is freed exactly once.
                        unsafe { a.dealloc(p as *mut u8, layout) };
                        done += 1;
                    }
                    None => {
                        // Ran dry: report progress, then wait (or stop).
                        freed.store(done, Ordering::Release);
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        backoff(&mut spins);
                    }
                }
            }
        })
    };
    let mut me = Producer {
        tail: 0,
        cached_head: 0,
    };
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let target = me.tail as u64 + iters;
            let start = Instant::now();
            for _ in 0..iters {
                // SAFETY: non-zero size; written within bounds; ownership passes to the
                // consumer, which frees it.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    p.write_volatile(1);
                    ring.push(&mut me, p as usize);
                }
            }
            ring.flush(&me);
            let mut spins = 0u32;
            while freed.load(Ordering::Acquire) < target {
                backoff(&mut spins);
            }
            start.elapsed()
        })
    });
    stop.store(true, Ordering::Release);
    consumer.join().unwrap();
}

fn bench_prodcons(c: &mut Criterion) {
    let mut g = c.benchmark_group("prodcons");
    g.throughput(Throughput::Elements(1));
    for_each_allocator!(&mut g, prodcons);
    g.finish();
}

// ---------------------------------------------------------------------------------------------

fn check(_: &mut Criterion) {
    check_system_is_not_ours();
}

criterion_group! {
    name = benches;
    config = config();
    targets = check, bench_pairs, bench_realloc, bench_batches, bench_prodcons
}
criterion_main!(benches);
