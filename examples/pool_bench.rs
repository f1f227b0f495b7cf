//! The shared pool's costs against what a user has without it, in one run (BENCHMARKS.md,
//! "Shared pool"): `cargo run --release --example pool_bench [-- SIZE_MIB [open]]` (`open`:
//! the open figures only).
//!
//! - open-by-name + map READ (+ close) of a published space, against `shm_open` + `fstat` +
//!   `mmap` (+ `munmap` + `close`) of a POSIX shared memory object of the same size;
//! - create + fill + publish of a big space, against writing the same bytes into a fresh
//!   anonymous mapping and into a fresh POSIX shm object;
//! - a PRIVATE mapping's cost per written page, against a first write to fresh anonymous
//!   memory (the page fault every copy-on-write also pays);
//! - republishing a PRIVATE copy with 1% of its pages written, against create + fill + publish;
//! - handing the data to a reader by copying it, against opening it READ.
//!
//! Each figure is the median of its repetitions; the pool is a file in /dev/shm. Both the
//! default (non-coherent: write-back at publish, invalidation of the touched pages at close)
//! and `coherent` pools are measured.

use std::ffi::CString;
use std::time::{Duration, Instant};
use tiermalloc::pool::api::MapMode;
use tiermalloc::pool::Pool;

const PAGE: usize = 4096;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Medians of `a` and `b`, run alternately so that the machine's drift hits both alike.
fn pair(reps: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (Duration, Duration) {
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        a();
        ta.push(t.elapsed());
        let t = Instant::now();
        b();
        tb.push(t.elapsed());
    }
    (median(ta), median(tb))
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A POSIX shm object of `size` bytes, filled; removed on drop.
struct Shm {
    name: CString,
}

impl Shm {
    fn new(tag: &str, size: usize) -> Shm {
        let name = CString::new(format!("/tm-pool-bench-{tag}-{}", std::process::id())).unwrap();
        // SAFETY: plain POSIX calls on our own object and mapping.
        unsafe {
            let fd = libc::shm_open(name.as_ptr(), libc::O_CREAT | libc::O_RDWR, 0o600);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, size as i64), 0);
            let p = libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            (p as *mut u8).write_bytes(1, size);
            libc::munmap(p, size);
            libc::close(fd);
        }
        Shm { name }
    }

    /// The reader's side: open by name, size it, map it read-only, touch one byte, unmap.
    fn open_map_close(&self) -> u8 {
        // SAFETY: as above.
        unsafe {
            let fd = libc::shm_open(self.name.as_ptr(), libc::O_RDONLY, 0);
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(fd, &mut st);
            let size = st.st_size as usize;
            let p = libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            );
            let b = *(p as *const u8);
            libc::munmap(p, size);
            libc::close(fd);
            b
        }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: removing our own object.
        unsafe { libc::shm_unlink(self.name.as_ptr()) };
    }
}

fn pool(tag: &str, size_mib: usize, keys: &str) -> (std::sync::Arc<Pool>, String) {
    let path = format!("/dev/shm/tm-pool-bench-{tag}-{}", std::process::id());
    let _ = std::fs::remove_file(&path);
    let spec = format!("path={path},size={}M,create{keys}", size_mib * 3 + 64);
    (Pool::open_str(&spec).unwrap(), path)
}

fn main() {
    let big_mib: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().unwrap())
        .unwrap_or(1024);
    let big = big_mib << 20;
    // `pool_bench SIZE_MIB open`: the open figures only.
    let only_open = std::env::args().nth(2).as_deref() == Some("open");
    println!("# pool_bench: big space {big_mib} MiB; medians");

    for (label, keys) in [("non-coherent (default)", ""), ("coherent", ",coherent")] {
        let (pool, path) = pool(if keys.is_empty() { "nc" } else { "c" }, big_mib, keys);
        println!("\n## pool {label}");

        // Open by name + map READ + touch + close.
        for (name, size) in [("tiny", 4096usize), ("small", 1 << 20), ("big", big)] {
            let mut s = pool.create_space(name, size).unwrap();
            s.as_mut_slice().unwrap().fill(1);
            s.publish().unwrap();
            std::mem::forget(s);
            let shm = Shm::new(name, size);
            let reps = if size == big { 200 } else { 2000 };
            let (ours, peer) = pair(
                reps,
                || {
                    let m = pool.open_space(name, MapMode::Read).unwrap();
                    std::hint::black_box(m.as_slice()[0]);
                },
                || {
                    std::hint::black_box(shm.open_map_close());
                },
            );
            println!(
                "open+map READ+close {:>7} KiB: pool {:>10.1} us   shm_open+mmap {:>8.1} us   ratio {:.2}",
                size >> 10,
                us(ours),
                us(peer),
                us(ours) / us(peer)
            );
        }

        if only_open {
            drop(pool);
            let _ = std::fs::remove_file(path);
            continue;
        }

        // Create + fill + publish against writing the bytes.
        let mut n = 0;
        let (create, anon) = pair(
            5,
            || {
                n += 1;
                let mut s = pool.create_space(&format!("made{n}"), big).unwrap();
                s.as_mut_slice().unwrap().fill(7);
                s.publish().unwrap();
                drop(s);
                pool.collect_spaces(Duration::ZERO).unwrap();
            },
            || {
                let p = tiermalloc_anon(big);
                // SAFETY: our fresh mapping.
                unsafe {
                    p.write_bytes(7, big);
                    libc::munmap(p.cast(), big);
                }
            },
        );
        let (_, shm_fill) = pair(1, || {}, || drop(Shm::new("fill", big)));
        println!(
            "create+fill+publish {big_mib} MiB: pool {:.1} ms   fill fresh anon {:.1} ms (ratio {:.2})   shm create+fill {:.1} ms (ratio {:.2})",
            ms(create),
            ms(anon),
            ms(create) / ms(anon),
            ms(shm_fill),
            ms(create) / ms(shm_fill)
        );

        // PRIVATE: cost per written page.
        let pages = big / PAGE;
        let (private, fresh) = pair(
            5,
            || {
                let mut m = pool.open_space("big", MapMode::Private).unwrap();
                let s = m.as_mut_slice().unwrap();
                for p in 0..pages {
                    s[p * PAGE] = 2;
                }
            },
            || {
                let p = tiermalloc_anon(big);
                // SAFETY: our fresh mapping.
                unsafe {
                    for i in 0..pages {
                        p.add(i * PAGE).write_volatile(2);
                    }
                    libc::munmap(p.cast(), big);
                }
            },
        );
        println!(
            "PRIVATE write, per page: {:.2} us   first write to fresh anon, per page: {:.2} us   ratio {:.2}",
            us(private) / pages as f64,
            us(fresh) / pages as f64,
            us(private) / us(fresh)
        );

        // Republish after writing 1% of the pages, against create + fill + publish.
        let (mut r, mut f) = (0, 0);
        let (republish, fresh_publish) = pair(
            5,
            || {
                r += 1;
                let mut m = pool.open_space("big", MapMode::Private).unwrap();
                let s = m.as_mut_slice().unwrap();
                for p in (0..pages).step_by(100) {
                    s[p * PAGE] = 3;
                }
                drop(m.republish(&format!("again{r}")).unwrap());
                drop(m);
                pool.collect_spaces(Duration::ZERO).unwrap();
            },
            || {
                f += 1;
                let mut s = pool.create_space(&format!("fresh{f}"), big).unwrap();
                s.as_mut_slice().unwrap().fill(3);
                s.publish().unwrap();
                drop(s);
                pool.collect_spaces(Duration::ZERO).unwrap();
            },
        );
        println!(
            "republish {big_mib} MiB with 1% of its pages written: {:.1} ms   create+fill+publish: {:.1} ms   ratio {:.2}",
            ms(republish),
            ms(fresh_publish),
            ms(republish) / ms(fresh_publish)
        );

        // Giving the data to a reader: copy it, or open it READ.
        let (copy, read) = pair(
            5,
            || {
                let src = pool.open_space("big", MapMode::Read).unwrap();
                let dst = tiermalloc_anon(big);
                // SAFETY: `dst` is our fresh mapping of `big` bytes.
                unsafe {
                    std::ptr::copy_nonoverlapping(src.as_ptr(), dst, big);
                    libc::munmap(dst.cast(), big);
                }
            },
            || {
                let m = pool.open_space("big", MapMode::Read).unwrap();
                let mut sum = 0u64;
                for p in (0..big).step_by(PAGE) {
                    sum += m.as_slice()[p] as u64;
                }
                std::hint::black_box(sum);
            },
        );
        println!(
            "hand {big_mib} MiB to a reader: copy {:.1} ms   open READ + touch every page {:.1} ms   ratio {:.1}",
            ms(copy),
            ms(read),
            ms(copy) / ms(read)
        );
        drop(pool);
        let _ = std::fs::remove_file(path);
    }
}

fn tiermalloc_anon(size: usize) -> *mut u8 {
    // SAFETY: a fresh anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p.cast()
}
