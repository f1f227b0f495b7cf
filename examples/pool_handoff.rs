//! The pool lock's costs (BENCHMARKS.md, "Waits on device memory"):
//!
//! - `pool_handoff pairs N`: N uncontended lock/unlock pairs of the pool lock, for callgrind
//!   (run it with two N; the difference over the difference of N is one pair's instructions);
//! - `pool_handoff handoff ROUNDS`: two processes hand the lock over ROUNDS times. The holder
//!   keeps it for HOLD_US of busy work while the other waits, then releases; the figure is the
//!   time from just before the release to the waiter holding the lock (median and 90th
//!   percentile), and the waiter's CPU time per round.
//!
//! The pool is a `coherent` file in /dev/shm; the two processes meet through a second shared
//! file of counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tiermalloc::pool::{testing, Pool};

const HOLD_US: u64 = 200;

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write.
    unsafe { libc::clock_gettime(clock, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The counters both processes map: [round offered, waiter about to lock, release stamp,
/// round done, waiter joined].
struct Shared {
    _map: memmap2::MmapMut,
    words: *const AtomicU64,
}

impl Shared {
    fn open(path: &str) -> Shared {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap();
        file.set_len(4096).unwrap();
        // SAFETY: a shared mapping of a 4096-byte file held open by the mapping.
        let map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
        let words = map.as_ptr() as *const AtomicU64;
        Shared { _map: map, words }
    }
    fn at(&self, i: usize) -> &AtomicU64 {
        // SAFETY: i < 5; the mapping is 8-aligned and lives as long as self.
        unsafe { &*self.words.add(i) }
    }
}

const OFFERED: usize = 0;
const WAITING: usize = 1;
const STAMP: usize = 2;
const DONE: usize = 3;
const JOINED: usize = 4;

fn wait_for(word: &AtomicU64, value: u64) {
    while word.load(Ordering::Acquire) != value {
        std::thread::sleep(std::time::Duration::from_micros(20));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    match args.get(1).map(String::as_str) {
        Some("pairs") => {
            let path = format!("/dev/shm/tm-xlocks-pairs-{}", std::process::id());
            let pool = Pool::open_str(&format!("path={path},size=64M,create,coherent")).unwrap();
            for _ in 0..n {
                testing::with_lock(&pool, || {}).unwrap();
            }
            let _ = std::fs::remove_file(path);
        }
        Some("handoff") => {
            let id = std::process::id();
            let pool_path = format!("/dev/shm/tm-xlocks-handoff-{id}");
            let shared_path = format!("/dev/shm/tm-xlocks-handoff-{id}-words");
            let spec = format!("path={pool_path},size=64M,create,coherent");
            let pool = Pool::open_str(&spec).unwrap();
            let shared = Shared::open(&shared_path);
            testing::with_lock(&pool, || {}).unwrap(); // join the registry
            let waiter = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["waiter", &n.to_string(), &spec, &shared_path])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            wait_for(shared.at(JOINED), 1);
            let started = Instant::now();
            for round in 1..=n {
                testing::with_lock(&pool, || {
                    shared.at(OFFERED).store(round, Ordering::Release);
                    wait_for(shared.at(WAITING), round);
                    let until = now_ns() + HOLD_US * 1000;
                    while now_ns() < until {
                        core::hint::spin_loop();
                    }
                    shared.at(STAMP).store(now_ns(), Ordering::Release);
                })
                .unwrap();
                wait_for(shared.at(DONE), round);
            }
            let out = waiter.wait_with_output().unwrap();
            print!("{}", String::from_utf8_lossy(&out.stdout));
            println!("total {:.2} s", started.elapsed().as_secs_f64());
            let _ = std::fs::remove_file(pool_path);
            let _ = std::fs::remove_file(shared_path);
        }
        Some("waiter") => {
            let pool = Pool::open_str(&args[3]).unwrap();
            let shared = Shared::open(&args[4]);
            testing::with_lock(&pool, || {}).unwrap(); // join the registry
            shared.at(JOINED).store(1, Ordering::Release);
            let mut latencies = Vec::with_capacity(n as usize);
            let mut cpu_in_lock = 0;
            for round in 1..=n {
                wait_for(shared.at(OFFERED), round);
                shared.at(WAITING).store(round, Ordering::Release);
                let cpu = thread_cpu_ns();
                testing::with_lock(&pool, || {
                    let t = now_ns();
                    latencies.push(t.saturating_sub(shared.at(STAMP).load(Ordering::Acquire)));
                })
                .unwrap();
                cpu_in_lock += thread_cpu_ns() - cpu;
                shared.at(DONE).store(round, Ordering::Release);
            }
            latencies.sort_unstable();
            let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] as f64 / 1e3;
            println!(
                "hand-off us: median {:.1} p90 {:.1}; waiter cpu per round in lock(): {:.1} us (hold {HOLD_US} us)",
                at(0.5),
                at(0.9),
                cpu_in_lock as f64 / n as f64 / 1e3
            );
        }
        _ => eprintln!("usage: pool_handoff pairs N | handoff ROUNDS"),
    }
}
