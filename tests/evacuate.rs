//! Live evacuation (`tm_evacuate`): a device tier's bytes move onto another file while threads
//! keep writing its blocks, every address unchanged.
//!
//! The tiers are read when the library starts, so each test re-runs this binary with
//! `TIERMALLOC_TIERS` set and checks the child's verdict. Files live in /dev/shm (shmem, which
//! userfaultfd can write-protect) and are named with the test's pid.

mod support;

use allocator_api2::alloc::{Allocator, Layout};
use std::ffi::CString;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tiermalloc::{Evacuation, Kind, Tier};

const CHILD: &str = "TIERMALLOC_EVACUATE_CHILD";
const CXL: Kind = Kind::Cxl;

/// A file in /dev/shm of this test's own (named by the parent's pid and the test).
fn shm(name: &str) -> String {
    let tag = std::env::var(CHILD).expect("called in a child run");
    format!("/dev/shm/tiermalloc-evac-{tag}-{name}")
}

/// Runs `test` in a child process of this binary with `tiers` (`{shm}` stands for the prefix
/// of the test's files in /dev/shm, as `shm` makes them), then removes every file the child
/// may have made.
fn in_child(test: &str, tiers: &str) {
    let out = child_run(test, tiers);
    assert!(
        out.status.success(),
        "the child run of {test} failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `test` in a child as `in_child` does, and returns how it ended.
fn child_run(test: &str, tiers: &str) -> support::Output {
    let tag = format!("{}-{}", std::process::id(), test);
    let prefix = format!("tiermalloc-evac-{tag}-");
    let tiers = tiers.replace("{shm}", &format!("/dev/shm/{prefix}"));
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, &tag)
        .env("TIERMALLOC_TIERS", tiers);
    // A deadlock fails the test instead of hanging the suite.
    let out = support::run_with_timeout(cmd, None, std::time::Duration::from_secs(120));
    for entry in std::fs::read_dir("/dev/shm").unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    out.unwrap_or_else(|e| panic!("the child run of {test}: {e}"))
}

fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

/// Moves tier `kind` onto `target` through the Rust API: what it did, or the errno
/// `tm_evacuate` would set.
fn evacuate_with_report(kind: Kind, target: Option<&str>) -> Result<Evacuation, i32> {
    let c = target.map(|t| CString::new(t).unwrap());
    tiermalloc::evacuate(kind, c.as_deref()).map_err(|e| e.0)
}

fn evacuate(kind: Kind, target: Option<&str>) -> Result<(), i32> {
    evacuate_with_report(kind, target).map(|_| ())
}

/// A block of `size` bytes on tier `kind` (16-aligned, as every device block is).
fn alloc_on(kind: Kind, size: usize) -> usize {
    let tier = Tier::new(kind).expect("the tier is configured");
    let layout = Layout::from_size_align(size, 16).unwrap();
    tier.allocate(layout)
        .unwrap_or_else(|_| panic!("allocating {size} bytes on {kind:?} failed"))
        .as_ptr() as *mut u8 as usize
}

/// Frees a block `alloc_on(kind, size)` returned.
fn free_on(kind: Kind, p: usize, size: usize) {
    let tier = Tier::new(kind).expect("the tier is configured");
    // SAFETY: a live block of `tier` of `size` bytes, not used afterwards.
    unsafe {
        tier.deallocate(
            std::ptr::NonNull::new(p as *mut u8).unwrap(),
            Layout::from_size_align(size, 16).unwrap(),
        )
    };
}

/// The usable size of a live block, as the allocator reads it from the block's header.
fn usable_size(p: usize) -> usize {
    // SAFETY: a live block of ours (the library is this binary's malloc).
    unsafe { libc::malloc_usable_size(p as *mut libc::c_void) }
}

/// The file mapped at address `addr` according to /proc/self/maps.
fn mapped_file(addr: usize) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (lo, hi) = fields.next()?.split_once('-')?;
        let (lo, hi) = (
            usize::from_str_radix(lo, 16).ok()?,
            usize::from_str_radix(hi, 16).ok()?,
        );
        (lo <= addr && addr < hi).then(|| fields.nth(4).unwrap_or("").to_string())
    })
}

/// A block on the tier with what it should hold.
struct Block {
    p: usize,
    size: usize,
    usable: usize,
    header: [u8; 16],
    fill: u8,
}

fn header_of(p: usize) -> [u8; 16] {
    // SAFETY: the 16-byte header sits right before every device block.
    unsafe { *((p - 16) as *const [u8; 16]) }
}

/// Thousands of blocks, slab sizes and extents, each filled with its own byte.
fn make_blocks(n: usize) -> Vec<Block> {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|i| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let size = match i % 10 {
                0 => 8192 + (seed % 60_000) as usize,
                _ => 8 + (seed % 3000) as usize,
            };
            let p = alloc_on(CXL, size);
            let fill = (i % 251) as u8 + 1;
            // SAFETY: a fresh block of `size` bytes.
            unsafe { std::ptr::write_bytes(p as *mut u8, fill, size) };
            Block {
                p,
                size,
                usable: usable_size(p),
                header: header_of(p),
                fill,
            }
        })
        .collect()
}

fn check_blocks(blocks: &[Block], skip_counters: bool) {
    for b in blocks {
        assert_eq!(tiermalloc::kind_of(b.p as *const u8), Some(Kind::Cxl));
        assert_eq!(usable_size(b.p), b.usable);
        assert_eq!(header_of(b.p), b.header, "the header of {:#x} changed", b.p);
        let from = if skip_counters { 8 } else { 0 };
        // SAFETY: the block holds `size` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(b.p as *const u8, b.size) };
        if let Some(i) = bytes[from.min(b.size)..].iter().position(|&x| x != b.fill) {
            panic!(
                "block {:#x} ({} B) lost its pattern at byte {}",
                b.p,
                b.size,
                i + from
            );
        }
    }
}

/// Writer threads increment counters in thousands of blocks, and another thread allocates and
/// frees on the tier, while it moves onto a second file (the pre-copy copied file to file by
/// the kernel), then a third (copied through the mappings): every count, pattern,
/// header, size and statistic is exact afterwards, /proc/self/maps names the new file, and the
/// old files can be truncated and removed with the tier in use.
#[test]
fn writers_keep_counting_while_the_tier_moves_twice() {
    if !is_child() {
        return in_child(
            "writers_keep_counting_while_the_tier_moves_twice",
            "dram;cxl:path={shm}dev,size=64M,create",
        );
    }
    let blocks = Arc::new(make_blocks(4000));
    let stats_before = tiermalloc::stats(Kind::Cxl).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Writers: each increments the first word of its own quarter of the blocks.
    let writers: Vec<_> = (0..4usize)
        .map(|t| {
            let (blocks, stop) = (blocks.clone(), stop.clone());
            std::thread::spawn(move || {
                let mine: Vec<usize> = blocks.iter().skip(t).step_by(4).map(|b| b.p).collect();
                for &p in &mine {
                    // SAFETY: every block holds at least 8 bytes, 16-aligned.
                    unsafe { (p as *mut u64).write(0) };
                }
                let mut rounds = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for &p in &mine {
                        // SAFETY: as above; only this thread writes this word.
                        unsafe {
                            (p as *mut u64).write_volatile((p as *mut u64).read_volatile() + 1)
                        };
                    }
                    rounds += 1;
                }
                (mine, rounds)
            })
        })
        .collect();
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || churn_until(&stop))
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    let first = blocks[0].p;
    let dev = shm("dev");
    assert_eq!(mapped_file(first).as_deref(), Some(dev.as_str()));
    let second = shm("second");
    let report = tiermalloc::evacuate(Kind::Cxl, Some(&CString::new(second.clone()).unwrap()))
        .expect("the first evacuation");
    eprintln!("first move: {report:?}");
    assert!(
        report.copied < report.region / 2,
        "only live bytes are copied: {report:?}"
    );
    // Both files on /dev/shm: the kernel copies file to file (the second move below goes
    // through the mappings).
    assert!(
        report.file_copied >= report.copied / 2,
        "the pre-copy went file to file: {report:?}"
    );
    assert_eq!(mapped_file(first).as_deref(), Some(second.as_str()));
    // The old file is unlocked: another user can lock it (an open file description lock, as
    // the tier takes), and the new one is locked.
    assert!(can_lock(&dev), "the old device is still locked");
    assert!(!can_lock(&second), "the new device is not locked");
    // The old file is truncated and removed: nothing maps it any more, so nothing faults.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&dev)
        .unwrap()
        .set_len(0)
        .unwrap();
    std::fs::remove_file(&dev).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let third = shm("third");
    std::env::set_var("TIERMALLOC_EVACUATE_COPY", "mapped");
    let report = tiermalloc::evacuate(Kind::Cxl, Some(&CString::new(third.clone()).unwrap()))
        .expect("the second evacuation");
    std::env::remove_var("TIERMALLOC_EVACUATE_COPY");
    eprintln!("second move: {report:?}");
    assert_eq!(report.file_copied, 0, "TIERMALLOC_EVACUATE_COPY=mapped");
    assert_eq!(mapped_file(first).as_deref(), Some(third.as_str()));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&second)
        .unwrap()
        .set_len(0)
        .unwrap();
    std::fs::remove_file(&second).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    let churned = churn.join().unwrap();
    let mut total = 0;
    for w in writers {
        let (mine, rounds) = w.join().unwrap();
        for p in mine {
            // SAFETY: a live block's first word.
            let count = unsafe { (p as *const u64).read() };
            assert_eq!(count, rounds, "a write was lost at {p:#x}");
        }
        total += rounds;
    }
    eprintln!("writer rounds {total}, churned blocks {churned}");
    assert!(total > 0 && churned > 0);
    check_blocks(&blocks, true);
    let stats_after = tiermalloc::stats(Kind::Cxl).unwrap();
    assert_eq!(stats_after.in_use, stats_before.in_use);
    assert_eq!(
        stats_after.allocations - stats_before.allocations,
        churned,
        "every churned block counted"
    );
    assert_eq!(stats_after.frees - stats_before.frees, churned);
    for b in blocks.iter() {
        free_on(CXL, b.p, b.size);
    }
    assert_eq!(tiermalloc::stats(Kind::Cxl).unwrap().in_use, 0);
}

/// Stores that come once in a while, each to a page nobody stores to again for milliseconds
/// (which a counting loop never does: it writes every page again within microseconds, so a
/// page it touched during a pre-copy is touched again before the hold whatever the move did
/// with it): every last value arrives. A store that lands while its chunk is pre-copied must be
/// copied again, by the pre-copy's second pass or by the hold; one the second pass dropped but
/// did not copy again would be lost (with the second pass's copy taken out, 4 of 7 runs lost
/// 1-8 stores: a check end to end, not an exact one; `precopy`'s unit test is that).
/// Eight moves, file to file and through the mappings in turn.
#[test]
fn sparse_stores_during_moves_all_arrive() {
    const TEST: &str = "sparse_stores_during_moves_all_arrive";
    if !is_child() {
        return in_child(TEST, "dram;cxl:path={shm}dev,size=48M,create");
    }
    // 4 MiB chunks: a longer pre-copy than the default's, more stores land in it.
    std::env::set_var("TIERMALLOC_EVACUATE_CHUNK", "4M");
    let blocks: Arc<Vec<usize>> = Arc::new((0..8192).map(|_| alloc_on(CXL, 4000)).collect());
    for &p in blocks.iter() {
        // SAFETY: a live block of 4000 bytes, 16-aligned.
        unsafe { (p as *mut u64).write(0) };
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2usize)
        .map(|t| {
            let (blocks, stop) = (blocks.clone(), stop.clone());
            std::thread::spawn(move || {
                // This writer's blocks (every other one), and the last value it stored in each.
                let mine: Vec<usize> = blocks.iter().skip(t).step_by(2).copied().collect();
                let mut last = vec![0u64; mine.len()];
                let mut x = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(t as u64 + 1);
                let mut stores = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let i = (x % mine.len() as u64) as usize;
                    stores += 1;
                    last[i] = stores;
                    // SAFETY: a live block's first word, stored to by this thread only.
                    unsafe { (mine[i] as *mut u64).write_volatile(stores) };
                    // A few microseconds between stores: each page is stored to about once in
                    // tens of milliseconds.
                    let until = std::time::Instant::now() + std::time::Duration::from_micros(2);
                    while std::time::Instant::now() < until {
                        std::hint::spin_loop();
                    }
                }
                (mine, last, stores)
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut file_copied = Vec::new();
    for (name, copy) in [
        ("a", None),
        ("b", Some("mapped")),
        ("c", None),
        ("d", Some("mapped")),
        ("e", None),
        ("f", Some("mapped")),
        ("g", None),
        ("h", Some("mapped")),
    ] {
        if let Some(copy) = copy {
            std::env::set_var("TIERMALLOC_EVACUATE_COPY", copy);
        }
        let report = evacuate_with_report(CXL, Some(&shm(name))).expect("the move");
        std::env::remove_var("TIERMALLOC_EVACUATE_COPY");
        file_copied.push(report.file_copied);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let mut lost = Vec::new();
    let mut total = 0;
    for w in writers {
        let (mine, last, stores) = w.join().unwrap();
        total += stores;
        for (p, want) in mine.into_iter().zip(last) {
            // SAFETY: a live block's first word; its writer has stopped.
            let got = unsafe { (p as *const u64).read() };
            if got != want {
                lost.push((p, want, got));
            }
        }
    }
    eprintln!("{total} stores; file to file per move: {file_copied:?}");
    assert!(total > 1000, "the writers ran: {total} stores");
    assert!(file_copied[0] > 0 && file_copied[1] == 0, "{file_copied:?}");
    assert!(
        lost.is_empty(),
        "{} stores lost (block, stored, found): {:x?}",
        lost.len(),
        &lost[..lost.len().min(8)]
    );
    for &p in blocks.iter() {
        free_on(CXL, p, 4000);
    }
}

/// A `TIERMALLOC_EVACUATE_COPY` that is neither `file` nor `mapped` gets one line naming it,
/// and the move copies file to file, the default.
#[test]
fn a_bad_copy_setting_is_said_and_the_default_kept() {
    const TEST: &str = "a_bad_copy_setting_is_said_and_the_default_kept";
    if !is_child() {
        let out = child_run(TEST, "dram;cxl:path={shm}dev,size=4M,create");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(
            err.contains(
                "tiermalloc: TIERMALLOC_EVACUATE_COPY: 'sideways': expected file or \
                 mapped (file is the default)"
            ),
            "{err}"
        );
        return;
    }
    let blocks = make_blocks(100);
    std::env::set_var("TIERMALLOC_EVACUATE_COPY", "sideways");
    let report = evacuate_with_report(CXL, Some(&shm("to"))).expect("the move");
    std::env::remove_var("TIERMALLOC_EVACUATE_COPY");
    assert!(report.file_copied > 0, "{report:?}");
    check_blocks(&blocks, false);
}

/// Whether an exclusive open-file-description lock on all of `path` can be had now.
fn can_lock(path: &str) -> bool {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    // SAFETY: all-zero is a valid flock.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as i16;
    lock.l_whence = libc::SEEK_SET as i16;
    // SAFETY: our open file and a valid flock.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) == 0 }
}

/// Allocates and frees blocks on the tier until `stop`, checking each block's contents before
/// it is freed; frees all it holds at the end. The number of blocks it allocated.
fn churn_until(stop: &AtomicBool) -> u64 {
    let mut live: Vec<(usize, usize, u8)> = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let size = if n % 7 == 0 {
            20_000
        } else {
            (n % 2000) as usize + 1
        };
        let p = alloc_on(CXL, size);
        // SAFETY: a fresh block.
        unsafe { std::ptr::write_bytes(p as *mut u8, n as u8, size) };
        live.push((p, size, n as u8));
        if live.len() > 200 {
            let (p, size, fill) = live.swap_remove((n % 200) as usize);
            // SAFETY: a live block of `size` bytes.
            let b = unsafe { std::slice::from_raw_parts(p as *const u8, size) };
            assert!(b.iter().all(|&x| x == fill), "a churned block changed");
            free_on(CXL, p, size);
        }
    }
    for (p, size, _) in live {
        free_on(CXL, p, size);
    }
    n
}

/// A thread `read(2)`s from a pipe straight into a block on the tier while the tier moves
/// five times: message `i` (4 KiB, every word `i`) goes to slot `i % SLOTS`, one slot per 64 KiB
/// chunk, so that reads keep meeting the chunk being copied. No read fails, and every slot
/// holds the last message read into it, checked before each next read into it and at the end.
#[test]
fn reads_into_a_block_during_the_move_complete() {
    if !is_child() {
        return in_child(
            "reads_into_a_block_during_the_move_complete",
            "dram;cxl:path={shm}dev,size=32M,create",
        );
    }
    const SLOTS: usize = 384;
    const STRIDE: usize = 64 << 10;
    const MESSAGE: usize = 4096;
    std::env::set_var("TIERMALLOC_EVACUATE_CHUNK", "64K");
    let block = alloc_on(CXL, SLOTS * STRIDE);
    let mut fds = [0i32; 2];
    // SAFETY: a valid out-array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut id = 1u64;
            while !stop.load(Ordering::Relaxed) {
                let message = [id; MESSAGE / 8];
                // SAFETY: writing our buffer to our pipe; PIPE_BUF-sized writes are atomic.
                let n = unsafe { libc::write(fds[1], message.as_ptr().cast(), MESSAGE) };
                assert_eq!(n, MESSAGE as isize);
                id += 1;
            }
            // SAFETY: our descriptor.
            unsafe { libc::close(fds[1]) };
        })
    };
    let reader = std::thread::spawn(move || {
        let mut last = vec![0u64; SLOTS];
        for i in 0.. {
            let slot = block + (i % SLOTS) * STRIDE;
            // SAFETY: inside the block (reading the tier is always allowed).
            let before = unsafe { (slot as *const u64).read_volatile() };
            assert_eq!(
                before,
                last[i % SLOTS],
                "slot {} lost the message read into it (a read's data was lost)",
                i % SLOTS
            );
            let mut got = 0;
            while got < MESSAGE {
                // SAFETY: reading into the slot's MESSAGE bytes, inside the block.
                let n =
                    unsafe { libc::read(fds[0], (slot + got) as *mut libc::c_void, MESSAGE - got) };
                assert!(n >= 0, "read(2) into the tier failed: errno {}", errno());
                if n == 0 {
                    assert_eq!(got, 0, "a torn message");
                    return (last, i);
                }
                got += n as usize;
            }
            last[i % SLOTS] = i as u64 + 1;
        }
        unreachable!()
    });
    for round in 0..5 {
        let report = tiermalloc::evacuate(
            Kind::Cxl,
            Some(&CString::new(shm(&format!("target{round}"))).unwrap()),
        )
        .unwrap();
        eprintln!("{report:?}");
    }
    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    let (last, reads) = reader.join().unwrap();
    eprintln!("{reads} reads");
    for (s, &id) in last.iter().enumerate() {
        // SAFETY: inside the block.
        let words =
            unsafe { std::slice::from_raw_parts((block + s * STRIDE) as *const u64, MESSAGE / 8) };
        assert!(
            words.iter().all(|&w| w == id),
            "slot {s} should hold message {id} but holds {} (a read's data was lost)",
            words.iter().find(|&&w| w != id).unwrap()
        );
    }
}

/// What `holds_of_a_move` finds, by its number.
const MOVE_HOLDS: [&str; 4] = [
    "a descriptor of the parent's page map open",
    "the parent's userfaultfd open",
    "a descriptor of a device or target open",
    "a mapping of a device or target",
];

/// What of a move the calling process holds (`Some(n)`: `MOVE_HOLDS[n - 1]`), looking at its
/// descriptors (a `pagemap`, a userfaultfd, a file whose path starts with `files`) and, if
/// `maps` is given, its mappings (a file whose path starts with `files`, read into `maps`).
/// Allocates nothing: it runs in a forked child of a threaded process.
fn holds_of_a_move(files: &[u8], maps: Option<&mut [u8]>) -> Option<i32> {
    for fd in 0..1000i32 {
        // "/proc/self/fd/" and the number without leading zeroes (the kernel refuses them).
        let mut path = [0u8; 24];
        path[..14].copy_from_slice(b"/proc/self/fd/");
        let digits = 1 + usize::from(fd >= 10) + usize::from(fd >= 100);
        for i in 0..digits {
            path[14 + digits - 1 - i] = b'0' + (fd / 10i32.pow(i as u32) % 10) as u8;
        }
        let mut target = [0u8; 256];
        // SAFETY: a NUL-terminated path and a buffer of its length.
        let n = unsafe { libc::readlink(path.as_ptr().cast(), target.as_mut_ptr().cast(), 256) };
        let target = &target[..n.max(0) as usize];
        if target.ends_with(b"/pagemap") {
            return Some(1);
        }
        if target == b"anon_inode:[userfaultfd]" {
            return Some(2);
        }
        if target.starts_with(files) {
            return Some(3);
        }
    }
    let maps = maps?;
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(c"/proc/self/maps".as_ptr(), libc::O_RDONLY) };
    let mut len = 0;
    loop {
        // SAFETY: our descriptor, and the rest of `maps` to read into.
        let n = unsafe { libc::read(fd, maps[len..].as_mut_ptr().cast(), maps.len() - len) };
        if n <= 0 {
            break;
        }
        len += n as usize;
    }
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    let maps = &maps[..len];
    maps.windows(files.len()).any(|w| w == files).then_some(4)
}

/// Forks: the child runs `child` and exits with what it returns (0: all well, `n`: what
/// `failures[n - 1]` says); the parent waits for it and fails the test with that.
fn check_in_forked_child(child: impl FnOnce() -> i32, failures: &[&str]) {
    // SAFETY: the callers' `child` only reads memory, calls the allocator and makes system
    // calls; then the child leaves at once.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = child();
        // SAFETY: leaving the child at once.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let code = libc::WEXITSTATUS(status);
    assert!(
        libc::WIFEXITED(status) && code == 0,
        "a child forked during a move failed: {} (wait status {status:#x})",
        (code as usize)
            .checked_sub(1)
            .and_then(|i| failures.get(i))
            .unwrap_or(&"it died, or something else went wrong")
    );
}

/// A thread forks again and again while the tier moves: every child sees its blocks intact
/// (the fork handlers copy the tier for it, whichever device each chunk is on) and holds no
/// descriptor of the move's, and the parent ends on the target with everything intact.
#[test]
fn fork_while_the_tier_moves() {
    if !is_child() {
        return in_child(
            "fork_while_the_tier_moves",
            "dram;cxl:path={shm}dev,size=32M,create",
        );
    }
    std::env::set_var("TIERMALLOC_EVACUATE_CHUNK", "16K");
    let blocks = Arc::new(make_blocks(1000));
    let stop = Arc::new(AtomicBool::new(false));
    let forks = Arc::new(AtomicU64::new(0));
    let files = shm("");
    let forker = {
        let (stop, blocks, forks) = (stop.clone(), blocks.clone(), forks.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                check_in_forked_child(
                    || {
                        let intact = blocks.iter().all(|b| {
                            // SAFETY: the block holds `size` bytes.
                            let bytes =
                                unsafe { std::slice::from_raw_parts(b.p as *const u8, b.size) };
                            bytes.iter().all(|&x| x == b.fill)
                        });
                        // The child's tier is its own: allocating and writing there, even over
                        // the parent's blocks, changes nothing in the parent.
                        let p = Tier::new(CXL)
                            .unwrap()
                            .allocate(Layout::from_size_align(1000, 16).unwrap());
                        // Nor does it keep the move's descriptors (its copy of the tier is
                        // anonymous memory, and the device's descriptor closed).
                        let code = if !intact {
                            1
                        } else if p.is_err() {
                            2
                        } else {
                            holds_of_a_move(files.as_bytes(), None).map_or(0, |n| 2 + n)
                        };
                        for b in blocks.iter().step_by(7) {
                            // SAFETY: the child's copy of a block of `size` bytes.
                            unsafe { std::ptr::write_bytes(b.p as *mut u8, !b.fill, b.size) };
                        }
                        code
                    },
                    &[
                        "a broken block",
                        "its tier refused an allocation",
                        MOVE_HOLDS[0],
                        MOVE_HOLDS[1],
                        MOVE_HOLDS[2],
                    ],
                );
                forks.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    move_while_forking((4, 400), 20, &forks, &stop, forker, &blocks);
}

/// Moves the tier from file to file, `moves.0` times and on until `want` forks have happened
/// meanwhile (at most `moves.1` times); then stops the `forker` and checks that 20 forks at
/// least fell during the moves, and that the tier ends on the last target, `blocks` intact.
fn move_while_forking(
    moves: (usize, usize),
    want: u64,
    forks: &AtomicU64,
    stop: &AtomicBool,
    forker: std::thread::JoinHandle<()>,
    blocks: &[Block],
) {
    let mut target = String::new();
    let mut made = 0;
    while made < moves.0 || (forks.load(Ordering::Relaxed) < want && made < moves.1) {
        let previous = std::mem::replace(&mut target, shm(&format!("target{made}")));
        assert_eq!(evacuate(CXL, Some(&target)), Ok(()));
        let _ = std::fs::remove_file(previous);
        made += 1;
    }
    stop.store(true, Ordering::Relaxed);
    forker.join().unwrap();
    let forks = forks.load(Ordering::Relaxed);
    eprintln!("{forks} forks during {made} moves");
    assert!(forks >= 20, "only {forks} forks during {made} moves");
    assert_eq!(mapped_file(blocks[0].p).as_deref(), Some(target.as_str()));
    check_blocks(blocks, false);
}

/// A thread forks again and again while a small tier moves back and forth, so that forks
/// fall at every step of a move, its start and end included (most of a small tier's move is
/// opening and closing): no child keeps a descriptor of the move (the userfaultfd, the page
/// map, the target) or a mapping of the target; each is opened and published, or unpublished
/// and closed, with `fork` held off, and the child handler closes what is published.
#[test]
fn a_child_forked_as_a_move_starts_or_ends_keeps_nothing_of_it() {
    if !is_child() {
        return in_child(
            "a_child_forked_as_a_move_starts_or_ends_keeps_nothing_of_it",
            "dram;cxl:path={shm}dev,size=1M,create",
        );
    }
    let blocks = Arc::new(make_blocks(10));
    let stop = Arc::new(AtomicBool::new(false));
    let forks = Arc::new(AtomicU64::new(0));
    let files = shm("");
    let forker = {
        let (stop, forks, files) = (stop.clone(), forks.clone(), files.clone());
        std::thread::spawn(move || {
            // Read into before the fork: the child allocates nothing.
            let mut maps = vec![0u8; 1 << 20];
            while !stop.load(Ordering::Relaxed) {
                check_in_forked_child(
                    || holds_of_a_move(files.as_bytes(), Some(&mut maps)).unwrap_or(0),
                    &MOVE_HOLDS,
                );
                forks.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // At least 300 moves, and on until 50 forks have happened during them (a loaded machine
    // slows the forker more than the moves).
    move_while_forking((300, 3000), 50, &forks, &stop, forker, &blocks);
}

/// Blocks written through the tier land in the target at the same offsets.
#[test]
fn byte_k_of_the_region_is_byte_k_of_the_target() {
    if !is_child() {
        return in_child(
            "byte_k_of_the_region_is_byte_k_of_the_target",
            "dram;pmr:path={shm}dev,size=8M,create",
        );
    }
    let pmr = Kind::Pmr;
    // Three adjacent blocks, freed: one free extent for the host heap, three headers of the
    // device's chain, all of which must reach the target.
    let freed: Vec<usize> = (0..3).map(|_| alloc_on(pmr, 10_000)).collect();
    // (Cut one after another from the end of the free space, each lies right below the last.)
    assert!(
        freed
            .windows(2)
            .all(|w| w[1] + 10_016 == w[0] || w[1] == w[0] + 10_016),
        "adjacent blocks"
    );
    let freed_headers: Vec<[u8; 16]> = freed.iter().map(|&p| header_of(p)).collect();
    let a = alloc_on(pmr, 100_000) as *mut u8;
    let b = alloc_on(pmr, 100) as *mut u8;
    for &p in &freed {
        free_on(pmr, p, 10_000);
    }
    let freed_headers: Vec<[u8; 16]> = freed
        .iter()
        .zip(freed_headers)
        .map(|(&p, mut h)| {
            h[14] = 2; // state: free
            assert_eq!(header_of(p), h);
            h
        })
        .collect();
    // SAFETY: fresh blocks.
    unsafe {
        std::ptr::write_bytes(a, 0xa5, 100_000);
        std::ptr::write_bytes(b, 0x5a, 100);
    }
    let target = shm("target");
    assert_eq!(evacuate(pmr, Some(&target)), Ok(()));
    let file = std::fs::read(&target).unwrap();
    assert_eq!(file.len(), 8 << 20);
    // The region starts where the file does: find it from /proc/self/maps.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let lines: Vec<&str> = maps.lines().filter(|l| l.ends_with(&target)).collect();
    assert_eq!(
        lines.len(),
        1,
        "the chunks' mappings merged into one: {lines:?}"
    );
    let line = lines[0];
    let (lo, _) = line.split_once('-').unwrap();
    let base = usize::from_str_radix(lo, 16).unwrap();
    let offset_in_line: usize =
        usize::from_str_radix(line.split_whitespace().nth(2).unwrap(), 16).unwrap();
    let base = base - offset_in_line;
    for (p, len, fill) in [(a as usize, 100_000, 0xa5u8), (b as usize, 100, 0x5a)] {
        let k = p - base;
        assert!(file[k..k + len].iter().all(|&x| x == fill));
        assert_eq!(&file[k - 16..k], &header_of(p));
    }
    for (&p, h) in freed.iter().zip(&freed_headers) {
        let k = p - base;
        assert_eq!(
            &file[k - 16..k],
            h,
            "a free header of the chain at offset {}",
            k - 16
        );
    }
}

/// Every bad request is refused with -1 + errno and one line, and the tier stays as it was.
#[test]
fn bad_targets_are_refused_and_the_tier_stays() {
    if !is_child() {
        return in_child(
            "bad_targets_are_refused_and_the_tier_stays",
            "dram;cxl:path={shm}dev,size=16M,create",
        );
    }
    let blocks = make_blocks(500);
    let dev = shm("dev");
    let check = |blocks: &[Block]| {
        check_blocks(blocks, false);
        assert_eq!(mapped_file(blocks[0].p).as_deref(), Some(dev.as_str()));
    };
    assert_eq!(
        evacuate(CXL, Some("/dev/shm/tiermalloc-no-such-dir/x")),
        Err(libc::ENOENT)
    );
    check(&blocks);
    assert_eq!(evacuate(CXL, Some("/dev/shm")), Err(libc::EISDIR));
    check(&blocks);
    assert_eq!(
        evacuate(CXL, None),
        Err(libc::EINVAL),
        "no spare= configured"
    );
    // (An unknown kind number is the C interface's case: c-tests/evacuate.c.)
    assert_eq!(
        evacuate(Kind::Dram, Some(&shm("x"))),
        Err(libc::EINVAL),
        "TM_DRAM"
    );
    assert_eq!(
        evacuate(Kind::Pmr, Some(&shm("x"))),
        Err(libc::ENODEV),
        "pmr not configured"
    );
    assert_eq!(
        evacuate(CXL, Some(&dev)),
        Err(libc::EBUSY),
        "the tier's own file"
    );
    check(&blocks);
    // Too small: a file that cannot be extended to the tier's size (RLIMIT_FSIZE).
    // SAFETY: ignoring SIGXFSZ so that the failed extension is an error, not a signal.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let small = shm("small");
    std::fs::write(&small, [0u8; 4096]).unwrap();
    let limit = libc::rlimit {
        rlim_cur: 1 << 20,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) }, 0);
    assert_eq!(evacuate(CXL, Some(&small)), Err(libc::EFBIG));
    assert_eq!(std::fs::metadata(&small).unwrap().len(), 4096);
    check(&blocks);
    // And the tier still moves afterwards.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &unlimited) },
        0
    );
    assert_eq!(evacuate(CXL, Some(&small)), Ok(()));
    check_blocks(&blocks, false);
    assert_eq!(mapped_file(blocks[0].p).as_deref(), Some(small.as_str()));
}

/// `spare=` is opened only when the tier moves, and `tm_evacuate(kind, NULL)` uses it.
#[test]
fn a_null_target_moves_the_tier_onto_its_spare() {
    if !is_child() {
        return in_child(
            "a_null_target_moves_the_tier_onto_its_spare",
            "cxl:path={shm}dev,size=8M,create,spare={shm}spare;dram",
        );
    }
    let spare = shm("spare");
    let blocks = make_blocks(300);
    assert!(
        std::fs::metadata(&spare).is_err(),
        "the spare is not touched before it is needed"
    );
    assert_eq!(evacuate(CXL, None), Ok(()));
    assert_eq!(mapped_file(blocks[0].p).as_deref(), Some(spare.as_str()));
    check_blocks(&blocks, false);
    // Plain malloc still lands on the moved tier (listed first).
    let p = unsafe { libc::malloc(100) };
    assert_eq!(tiermalloc::kind_of(p as *const u8), Some(Kind::Cxl));
}

/// A tier on a regular file of a disk file system cannot hold its writers during a move: it
/// is refused with EOPNOTSUPP, untouched.
#[test]
fn a_disk_file_tier_is_refused() {
    if !is_child() {
        // The target directory: on the disk file system the repository lives on (ext4 here).
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("tiermalloc-evac-{}-disk", std::process::id()));
        in_child(
            "a_disk_file_tier_is_refused",
            &format!("dram;cxl:path={},size=8M,create", path.display()),
        );
        let _ = std::fs::remove_file(path);
        return;
    }
    let blocks = make_blocks(100);
    assert_eq!(evacuate(CXL, Some(&shm("target"))), Err(libc::EOPNOTSUPP));
    assert!(
        std::fs::metadata(shm("target")).is_err(),
        "the target was not even opened"
    );
    check_blocks(&blocks, false);
}

/// A `numa=` tier is anonymous memory: it moves onto a file like a shmem tier, and is then
/// shared with the file (a forked child still gets its own copy).
#[test]
fn a_numa_tier_moves_onto_a_file() {
    if !is_child() {
        return in_child("a_numa_tier_moves_onto_a_file", "dram;cxl:numa=0,size=16M");
    }
    let blocks = make_blocks(500);
    assert_eq!(mapped_file(blocks[0].p).as_deref(), Some(""));
    let target = shm("target");
    assert_eq!(evacuate(CXL, Some(&target)), Ok(()));
    assert_eq!(mapped_file(blocks[0].p).as_deref(), Some(target.as_str()));
    check_blocks(&blocks, false);
    // SAFETY: the child only reads, writes its own copy and calls _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: the child's copy of the first block.
        unsafe { std::ptr::write_bytes(blocks[0].p as *mut u8, 0, blocks[0].size) };
        // SAFETY: leaving at once.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    check_blocks(&blocks, false);
}

/// The node `move_pages` finds each page of `[p, p + len)` on (its status query), or the
/// negative errno it gives for a page (-ENOENT: not present).
fn nodes_of(p: usize, len: usize) -> Vec<i32> {
    let mut pages: Vec<*mut libc::c_void> = Vec::new();
    let mut a = p & !4095;
    while a < p + len {
        pages.push(a as *mut libc::c_void);
        a += 4096;
    }
    let mut status = vec![i32::MIN; pages.len()];
    // SAFETY: our own pages and arrays of as many entries; no nodes: a query.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0,
            pages.len(),
            pages.as_ptr(),
            std::ptr::null::<i32>(),
            status.as_mut_ptr(),
            0,
        )
    };
    assert_eq!(rc, 0, "move_pages query: errno {}", errno());
    status
}

/// `tm_evacuate(kind, "numa=N")` moves a `numa=` tier's pages onto node N with `move_pages`,
/// in place (the range stays anonymous memory), while writers count; a node that does not
/// exist, a malformed `numa=`, and a tier on a file are refused with EINVAL and one line.
/// (This host has one node: the pages move from node 0 to node 0; `tests/vm.rs` moves them
/// between two nodes.)
#[test]
fn a_numa_tier_moves_between_nodes_with_move_pages() {
    if !is_child() {
        in_child(
            "a_numa_tier_moves_between_nodes_with_move_pages",
            "dram;cxl:numa=0,size=16M;pmr:path={shm}pmr,size=4M,create",
        );
        return;
    }
    let blocks = Arc::new(make_blocks(500));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (blocks, stop) = (blocks.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rounds = 0u64;
            for b in blocks.iter() {
                // SAFETY: every block holds at least 8 bytes, 16-aligned; only this thread
                // writes its first word.
                unsafe { (b.p as *mut u64).write(0) };
            }
            while !stop.load(Ordering::Relaxed) {
                for b in blocks.iter() {
                    // SAFETY: as above.
                    unsafe {
                        (b.p as *mut u64).write_volatile((b.p as *mut u64).read_volatile() + 1)
                    };
                }
                rounds += 1;
            }
            rounds
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(10));
    let report = evacuate_with_report(CXL, Some("numa=0")).expect("the move onto node 0");
    eprintln!("numa move: {report:?}");
    let live: usize = blocks.iter().map(|b| b.size).sum();
    assert!(
        report.copied >= live as u64 && report.copied < report.region / 2,
        "the live pages moved, not the free space: {report:?}"
    );
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.join().unwrap();
    assert!(rounds > 0);
    for b in blocks.iter() {
        // SAFETY: a live block's first word.
        assert_eq!(
            unsafe { (b.p as *const u64).read() },
            rounds,
            "a write was lost"
        );
        assert!(
            nodes_of(b.p, b.size).iter().all(|&n| n == 0),
            "a page is off node 0"
        );
    }
    check_blocks(&blocks, true);
    assert_eq!(
        mapped_file(blocks[0].p).as_deref(),
        Some(""),
        "still anonymous memory"
    );
    for bad in ["numa=7", "numa=", "numa=x1"] {
        assert_eq!(evacuate(CXL, Some(bad)), Err(libc::EINVAL), "{bad}");
    }
    assert_eq!(evacuate(Kind::Pmr, Some("numa=0")), Err(libc::EINVAL));
    check_blocks(&blocks, true);
}

/// The target may be a regular file on a disk file system (only the source must be
/// write-protectable): the tier moves onto one, and from there cannot move again.
#[test]
fn a_tier_moves_onto_a_disk_file_but_not_off_it() {
    if !is_child() {
        return in_child(
            "a_tier_moves_onto_a_disk_file_but_not_off_it",
            "dram;cxl:path={shm}dev,size=16M,create",
        );
    }
    let blocks = make_blocks(500);
    let disk = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "tiermalloc-evac-{}-disk-target",
        std::process::id()
    ));
    let disk = disk.to_str().unwrap().to_string();
    let moved = evacuate_with_report(CXL, Some(&disk));
    assert_eq!(mapped_file(blocks[0].p).as_deref(), Some(disk.as_str()));
    check_blocks(&blocks, false);
    // The kernel copies no file from /dev/shm onto another file system (EXDEV): every byte
    // went through the mappings.
    assert_eq!(moved.as_ref().map(|r| r.file_copied), Ok(0));
    // From the disk file the tier cannot move on (it cannot be write-protected).
    assert_eq!(evacuate(CXL, Some(&shm("back"))), Err(libc::EOPNOTSUPP));
    let _ = std::fs::remove_file(&disk);
    assert!(moved.is_ok());
    check_blocks(&blocks, false);
}

/// Blocks whose first word a SIGUSR1 handler increments (`signal_handler_writes`).
static HANDLER_BLOCKS: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());
static HANDLER_TARGETS: std::sync::atomic::AtomicPtr<usize> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
static HANDLER_COUNT: AtomicU64 = AtomicU64::new(0);
static HANDLER_LEN: AtomicU64 = AtomicU64::new(0);

extern "C" fn write_blocks(_: i32) {
    let targets = HANDLER_TARGETS.load(Ordering::Acquire);
    let n = HANDLER_LEN.load(Ordering::Acquire) as usize;
    for i in 0..n {
        // SAFETY: `targets` holds `n` live block addresses for the whole test.
        let p = unsafe { *targets.add(i) } as *mut u64;
        // SAFETY: a live block's first word; only this handler writes it, on one thread.
        unsafe { p.write_volatile(p.read_volatile() + 1) };
    }
    HANDLER_COUNT.fetch_add(1, Ordering::Relaxed);
}

/// Signals arrive at the evacuating thread during the move, and their handler writes into
/// blocks all over the tier: the thread must not run it while it holds a chunk (the handler
/// would wait for the thread itself). The move completes and every handler's writes arrive.
#[test]
fn signal_handlers_on_the_evacuating_thread_write_to_the_tier() {
    if !is_child() {
        return in_child(
            "signal_handlers_on_the_evacuating_thread_write_to_the_tier",
            "dram;cxl:path={shm}dev,size=32M,create",
        );
    }
    std::env::set_var("TIERMALLOC_EVACUATE_CHUNK", "16K");
    let blocks = make_blocks(1000);
    {
        let mut targets = HANDLER_BLOCKS.lock().unwrap();
        targets.extend(blocks.iter().map(|b| b.p));
        for &p in targets.iter() {
            // SAFETY: a live block's first word.
            unsafe { (p as *mut u64).write(0) };
        }
        HANDLER_LEN.store(targets.len() as u64, Ordering::Release);
        HANDLER_TARGETS.store(targets.as_mut_ptr(), Ordering::Release);
    }
    // SAFETY: installing a handler that only touches the blocks and atomics above.
    unsafe { libc::signal(libc::SIGUSR1, write_blocks as *const () as usize) };
    let done = Arc::new(AtomicBool::new(false));
    let target = shm("target");
    let mover = {
        let (done, target) = (done.clone(), target.clone());
        std::thread::spawn(move || {
            let mut moves = 0;
            let start = std::time::Instant::now();
            while moves < 3 || start.elapsed() < std::time::Duration::from_millis(300) {
                assert_eq!(evacuate(CXL, Some(&format!("{target}{moves}"))), Ok(()));
                moves += 1;
            }
            done.store(true, Ordering::Release);
            moves
        })
    };
    // SAFETY: the mover's pthread handle, alive until joined below.
    let mover_thread = {
        use std::os::unix::thread::JoinHandleExt;
        mover.as_pthread_t()
    };
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    while !done.load(Ordering::Acquire) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the evacuating thread is stuck (a signal handler waiting for its own chunk?)"
        );
        // SAFETY: a live thread of ours; SIGUSR1 has a handler.
        unsafe { libc::pthread_kill(mover_thread, libc::SIGUSR1) };
        sent += 1;
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    let moves = mover.join().unwrap();
    let handled = HANDLER_COUNT.load(Ordering::Relaxed);
    eprintln!("{moves} moves, {sent} signals sent, {handled} handled");
    assert!(handled > 0);
    for b in &blocks {
        // SAFETY: a live block's first word.
        assert_eq!(
            unsafe { (b.p as *const u64).read() },
            handled,
            "a handler's write was lost"
        );
    }
}

/// A second `tm_evacuate` of a tier while its move runs is refused with EBUSY, and the first
/// move completes. (Two guards give that answer: the tier's `moving` flag, and the kernel,
/// which refuses to register the range's unmoved part with a second userfaultfd; the test
/// passes with either alone, so it checks the behaviour, not the flag.)
#[test]
fn a_second_move_during_a_move_is_busy() {
    if !is_child() {
        return in_child(
            "a_second_move_during_a_move_is_busy",
            "dram;cxl:path={shm}dev,size=32M,create",
        );
    }
    std::env::set_var("TIERMALLOC_EVACUATE_CHUNK", "4K");
    let blocks = make_blocks(2000);
    let lowest = blocks.iter().map(|b| b.p).min().unwrap();
    let (first, last) = (lowest, blocks.iter().map(|b| b.p).max().unwrap());
    let mut caught = false;
    for round in 0..5 {
        let target = shm(&format!("target{round}"));
        let mover = {
            let target = target.clone();
            std::thread::spawn(move || evacuate(CXL, Some(&target)))
        };
        // Once the first chunk is on the target and the last not yet, the move is running.
        let mut now_on = target.clone();
        while !mover.is_finished() {
            let (a, b) = (mapped_file(first), mapped_file(last));
            if a.as_deref() == Some(target.as_str()) && b.as_deref() != Some(target.as_str()) {
                let second = shm(&format!("second{round}"));
                match evacuate(CXL, Some(&second)) {
                    Err(libc::EBUSY) => caught = true,
                    // Only possible once the first move has returned.
                    Ok(()) => now_on = second,
                    other => panic!("a second move during a move: {other:?}"),
                }
                break;
            }
        }
        assert_eq!(mover.join().unwrap(), Ok(()));
        assert_eq!(mapped_file(last).as_deref(), Some(now_on.as_str()));
        check_blocks(&blocks, false);
        if caught {
            break;
        }
    }
    assert!(caught, "never saw a move in progress");
}

/// Whether this process may make a thread real-time (root, CAP_SYS_NICE or RLIMIT_RTPRIO):
/// tried on a scratch thread.
fn may_be_real_time() -> bool {
    std::thread::spawn(|| {
        let fifo = libc::sched_param { sched_priority: 1 };
        // SAFETY: the calling thread and a valid sched_param.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &fifo) == 0 }
    })
    .join()
    .unwrap()
}

/// The calling thread's scheduling policy and nice value.
fn scheduling() -> (i32, i32) {
    // SAFETY: querying the calling thread.
    let policy = unsafe { libc::sched_getscheduler(0) };
    // SAFETY: the calling thread's nice value (PRIO_PROCESS with tid 0 is the caller).
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    (policy, nice)
}

/// Each hold runs at real-time priority where the process may have it, so that no ordinary
/// thread preempts the evacuating thread while writers wait for it, and the thread gets back
/// its own policy and nice value afterwards. `TIERMALLOC_EVACUATE_RT=0` turns it off.
#[test]
fn holds_run_at_real_time_priority_and_the_thread_gets_its_own_back() {
    if !is_child() {
        return in_child(
            "holds_run_at_real_time_priority_and_the_thread_gets_its_own_back",
            "dram;cxl:path={shm}dev,size=16M,create",
        );
    }
    let blocks = make_blocks(500);
    // SAFETY: the calling thread (tid 0) to nice 3.
    assert_eq!(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 3) }, 0);
    let before = scheduling();
    assert_eq!(before, (libc::SCHED_OTHER, 3));
    let report = evacuate_with_report(CXL, Some(&shm("first"))).unwrap();
    assert_eq!(
        scheduling(),
        before,
        "the thread's own policy and nice value came back"
    );
    if may_be_real_time() {
        assert_eq!(report.raised_holds, report.chunks, "{report:?}");
    } else {
        eprintln!("not allowed real-time priority here: holds at the thread's own");
        assert_eq!(report.raised_holds, 0);
    }
    std::env::set_var("TIERMALLOC_EVACUATE_RT", "0");
    let report = evacuate_with_report(CXL, Some(&shm("second"))).unwrap();
    assert_eq!(report.raised_holds, 0, "TIERMALLOC_EVACUATE_RT=0");
    assert_eq!(scheduling(), before);
    check_blocks(&blocks, false);
}

/// After a move, a SIGBUS from the tier (its file truncated under it) is reported naming the
/// device behind the tier now, the target, not the path the tier was configured with.
#[test]
fn a_sigbus_after_a_move_names_the_target() {
    if !is_child() {
        let out = child_run(
            "a_sigbus_after_a_move_names_the_target",
            "dram;cxl:path={shm}dev,size=8M,create",
        );
        use std::os::unix::process::ExitStatusExt;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(libc::SIGBUS), "{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains("SIGBUS at"))
            .unwrap_or_else(|| panic!("no SIGBUS line in: {stderr}"));
        assert!(
            line.contains("in tier 'cxl' (/dev/shm/tiermalloc-evac-") && line.contains("-target):"),
            "the line names the target: {line}"
        );
        return;
    }
    let blocks = make_blocks(50);
    let target = shm("target");
    assert_eq!(evacuate(CXL, Some(&target)), Ok(()));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .unwrap()
        .set_len(0)
        .unwrap();
    // SAFETY: a live block, whose file is now empty: the store faults with SIGBUS.
    unsafe { (blocks[0].p as *mut u8).write_volatile(1) };
    unreachable!("the store into a truncated tier file did not fault");
}

/// Runs `test` in a child with `tiers` and `TIERMALLOC_EVACUATE_STEP=step`, files left alone
/// (the caller names and removes them).
fn step_run(test: &str, tiers: &str, step: &str) -> support::Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, step)
        .env("TIERMALLOC_EVACUATE_STEP", step)
        .env("TIERMALLOC_TIERS", tiers);
    support::run_with_timeout(cmd, None, std::time::Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("the child run of {test} ({step}): {e}"))
}

fn step() -> String {
    std::env::var("TIERMALLOC_EVACUATE_STEP").unwrap_or_default()
}

/// Checks that a child run succeeded, showing its output if not.
fn succeeded(out: &support::Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// Opening a persistent tier whose device a move left behind: refused, not recovered.
fn refused_child() {
    assert!(
        Tier::new(Kind::Pmr).is_err(),
        "a heap the move record marks was recovered"
    );
}

/// A persistent tier moved onto a target recovers from it; its old device, whose copy is
/// stale from the move on, is refused when opened again (its superblock's move record), in
/// one line, instead of recovering an old heap silently.
#[test]
fn after_a_move_the_target_recovers_and_the_old_device_is_refused() {
    const TEST: &str = "after_a_move_the_target_recovers_and_the_old_device_is_refused";
    let name = |f: &str| format!("/dev/shm/tiermalloc-evacrec-{}-{f}", std::process::id());
    if !is_child() {
        let (dev, target) = (name("dev"), name("target"));
        let tiers = |path: &str| format!("dram;pmr:path={path},size=8M,create");
        let out = step_run(TEST, &tiers(&dev), &format!("move:{target}"));
        succeeded(&out, "the move");
        let out = step_run(TEST, &tiers(&target), "recover");
        succeeded(&out, "recovery from the target");
        let out = step_run(TEST, &tiers(&dev), "refused");
        let stderr = succeeded(&out, "opening the old device");
        let _ = (std::fs::remove_file(&dev), std::fs::remove_file(&target));
        assert_eq!(
            stderr
                .lines()
                .filter(|l| l.contains("moved onto another device by tm_evacuate"))
                .count(),
            1,
            "one line says why: {stderr}"
        );
        return;
    }
    let step = step();
    if let Some(target) = step.strip_prefix("move:") {
        let p = alloc_on(Kind::Pmr, 1000);
        // SAFETY: a fresh block of 1000 bytes.
        unsafe { std::ptr::write_bytes(p as *mut u8, 0x77, 1000) };
        assert_eq!(evacuate(Kind::Pmr, Some(target)), Ok(()));
    } else if step == "recover" {
        let stats = tiermalloc::stats(Kind::Pmr).expect("the target recovers");
        assert!(stats.in_use >= 1000, "the block came along: {stats:?}");
    } else {
        refused_child();
    }
}

/// Paths the move record cannot hold: a target path longer than 96 bytes is refused before a
/// persistent heap moves (ENAMETOOLONG, one line, the tier as it was), and a source path
/// longer than 88 bytes moves with one line saying that a crash could be rolled back only at
/// the source's open; the target then recovers as usual.
#[test]
fn paths_the_move_record_cannot_hold_are_refused_or_said() {
    const TEST: &str = "paths_the_move_record_cannot_hold_are_refused_or_said";
    let name = |f: &str| format!("/dev/shm/tiermalloc-evaclong-{}-{f}", std::process::id());
    if !is_child() {
        let (dev, target) = (name(&"s".repeat(70)), name("dst"));
        let long_target = name(&"t".repeat(80));
        assert!(dev.len() > 88 && long_target.len() > 96 && target.len() <= 88);
        let tiers = |path: &str| format!("dram;pmr:path={path},size=8M,create");
        let out = step_run(TEST, &tiers(&dev), &format!("move:{long_target}:{target}"));
        let stderr = succeeded(&out, "the moves");
        let recovered = step_run(TEST, &tiers(&target), "recover");
        let _ = (std::fs::remove_file(&dev), std::fs::remove_file(&target));
        let _ = std::fs::remove_file(&long_target);
        succeeded(&recovered, "recovery from the target");
        let lines = |what: &str| stderr.lines().filter(|l| l.contains(what)).count();
        assert_eq!(lines("longer than the 96 bytes"), 1, "{stderr}");
        assert_eq!(lines("is longer than the 88 bytes"), 1, "{stderr}");
        return;
    }
    let step = step();
    if let Some(targets) = step.strip_prefix("move:") {
        let (long_target, target) = targets.split_once(':').unwrap();
        let p = alloc_on(Kind::Pmr, 1000);
        // SAFETY: a fresh block of 1000 bytes.
        unsafe { std::ptr::write_bytes(p as *mut u8, 0x5c, 1000) };
        assert_eq!(
            evacuate(Kind::Pmr, Some(long_target)),
            Err(libc::ENAMETOOLONG)
        );
        assert!(
            std::fs::metadata(long_target).is_err(),
            "the refused target was not made"
        );
        let tiers = std::env::var("TIERMALLOC_TIERS").unwrap();
        let source = tiers.split("path=").nth(1).unwrap().split(',').next();
        assert_eq!(
            mapped_file(p).as_deref(),
            source,
            "the tier stayed on its device"
        );
        assert_eq!(evacuate(Kind::Pmr, Some(target)), Ok(()));
        // SAFETY: the block, now on the target.
        assert!(unsafe { std::slice::from_raw_parts(p as *const u8, 1000) }
            .iter()
            .all(|&b| b == 0x5c));
    } else {
        let stats = tiermalloc::stats(Kind::Pmr).expect("the target recovers");
        assert!(stats.in_use >= 1000, "the block came along: {stats:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// A persistent tier killed at random points of a move
// ---------------------------------------------------------------------------------------------

/// The crash test's log: one entry per slot, in a /dev/shm file beside the tier (not on it),
/// which survives the kill. Entry: the block's offset, its size, its version, its state. A
/// writer updates the entry only after the block says what the entry says (and marks it in
/// flux before changing the block), so after a kill the log is a lower bound of the truth.
const SLOTS: usize = 1500;
const CRASH_WRITERS: usize = 3;
const EMPTY: u64 = 0;
const LIVE: u64 = 1;
const REWRITING: u64 = 2;
const FREEING: u64 = 3;
/// A block's second word while it is being rewritten.
const BUSY: u64 = u64::MAX;

fn crash_log(path: &str, create: bool) -> &'static [[AtomicU64; 4]] {
    let bytes = SLOTS * 32;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(create)
        .open(path)
        .unwrap();
    file.set_len(bytes as u64).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh shared mapping of our file, never unmapped (the process is short).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    // SAFETY: `bytes` mapped bytes, 8-aligned, accessed only atomically.
    unsafe { std::slice::from_raw_parts(p as *const [AtomicU64; 4], SLOTS) }
}

/// Word `i` (from 2) of a block at `offset` in version `v`; word 0 is the tag, word 1 `v`.
fn crash_word(offset: u64, v: u64, i: usize) -> u64 {
    let mut x = offset.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ v.rotate_left(29) ^ (i as u64) << 40;
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^ x >> 29
}

fn crash_tag(offset: u64) -> u64 {
    offset ^ 0x7a9c_0000_0000_0000
}

/// Writes version `v` of the block at `p` (`offset`, `size` bytes): second word BUSY, the
/// data, the tag, then the version.
fn crash_fill(p: usize, offset: u64, size: usize, v: u64) {
    let words = p as *mut u64;
    // SAFETY: a live block of at least `size` bytes (a multiple of 8, 24 or more) of ours.
    unsafe {
        words.add(1).write_volatile(BUSY);
        for i in 2..size / 8 {
            words.add(i).write_volatile(crash_word(offset, v, i));
        }
        words.write_volatile(crash_tag(offset));
        words.add(1).write_volatile(v);
    }
}

/// Whether the block at `p` holds version `v` whole; `None` if so, else the first bad word.
fn crash_bad_word(p: usize, offset: u64, size: usize, v: u64) -> Option<usize> {
    let words = p as *const u64;
    // SAFETY: a live block of at least `size` bytes.
    unsafe {
        if words.read() != crash_tag(offset) {
            return Some(0);
        }
        if words.add(1).read() != v {
            return Some(1);
        }
        (2..size / 8).find(|&i| words.add(i).read() != crash_word(offset, v, i))
    }
}

/// The child that is killed: fills half the slots, starts writers that allocate, rewrite and
/// free blocks of their own slots (logging each step), then moves the tier onto `target`.
fn crash_mover(target: &str, log_path: &str) {
    // The chunk the test runs at (`CRASH_CHUNK`): a size, or `default` (the variable unset).
    match std::env::var("CRASH_CHUNK").as_deref() {
        Ok("default") => std::env::remove_var("TIERMALLOC_EVACUATE_CHUNK"),
        Ok(chunk) => std::env::set_var("TIERMALLOC_EVACUATE_CHUNK", chunk),
        Err(_) => std::env::set_var("TIERMALLOC_EVACUATE_CHUNK", "16K"),
    }
    let log = crash_log(log_path, true);
    let tier = Tier::new(Kind::Pmr).expect("the tier is configured");
    let step = |slot: usize, seed: &mut u64| {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let e = &log[slot];
        match e[3].load(Ordering::Acquire) {
            EMPTY => {
                let size = 24 + (*seed % 1000) as usize * 8;
                let p = alloc_on(Kind::Pmr, size);
                let offset = tier.offset_of(p as *const u8).unwrap().0;
                crash_fill(p, offset, size, 1);
                e[0].store(offset, Ordering::Relaxed);
                e[1].store(size as u64, Ordering::Relaxed);
                e[2].store(1, Ordering::Relaxed);
                e[3].store(LIVE, Ordering::Release);
            }
            _ => {
                let offset = e[0].load(Ordering::Relaxed);
                let size = e[1].load(Ordering::Relaxed) as usize;
                let v = e[2].load(Ordering::Relaxed);
                let p = tier.at_offset(tiermalloc::Offset(offset)).unwrap().as_ptr() as usize;
                if *seed % 4 == 0 {
                    e[3].store(FREEING, Ordering::Release);
                    free_on(Kind::Pmr, p, size);
                    e[3].store(EMPTY, Ordering::Release);
                } else {
                    e[3].store(REWRITING, Ordering::Release);
                    crash_fill(p, offset, size, v + 1);
                    e[2].store(v + 1, Ordering::Relaxed);
                    e[3].store(LIVE, Ordering::Release);
                }
            }
        }
    };
    let mut seed = 0x5eed_u64;
    for slot in (0..SLOTS).step_by(2) {
        step(slot, &mut seed);
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for w in 0..CRASH_WRITERS {
            let (stop, step) = (&stop, &step);
            s.spawn(move || {
                let mut seed = 0x1234_5678 + w as u64;
                while !stop.load(Ordering::Relaxed) {
                    let slot = w + CRASH_WRITERS * (seed as usize % (SLOTS / CRASH_WRITERS));
                    step(slot, &mut seed);
                }
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        println!("MOVING");
        let started = std::time::Instant::now();
        let report = evacuate_with_report(Kind::Pmr, Some(target)).unwrap();
        let took = started.elapsed().as_micros();
        println!("MOVED {took}");
        println!("CHUNK {}", report.region / report.chunks.max(1));
        stop.store(true, Ordering::Relaxed);
    });
}

/// The checking child: opens the tier (whichever path `TIERMALLOC_TIERS` names) and checks it
/// against the log: `CHECKED n` on stdout, or `REFUSED` if the tier does not open.
fn crash_checker(log_path: &str) {
    let log = crash_log(log_path, false);
    let Ok(tier) = Tier::new(Kind::Pmr) else {
        println!("REFUSED");
        return;
    };
    let allocated: std::collections::BTreeMap<u64, usize> = tier
        .blocks()
        .map(|p| {
            let p = p.as_ptr() as usize;
            (tier.offset_of(p as *const u8).unwrap().0, usable_size(p))
        })
        .collect();
    if allocated.is_empty() {
        // A fresh heap (a target the move had not reached): the caller decides whether that
        // may be.
        println!("EMPTY");
        return;
    }
    let mut covered = 0;
    for (slot, e) in log.iter().enumerate() {
        let [offset, size, v, state] = e.each_ref().map(|w| w.load(Ordering::Relaxed));
        if state == EMPTY {
            continue;
        }
        covered += 1;
        let Some(&usable) = allocated.get(&offset) else {
            assert_eq!(
                state, FREEING,
                "slot {slot}: block at {offset} ({state}) is not allocated"
            );
            continue;
        };
        assert!(usable >= size as usize, "slot {slot}: {usable} < {size}");
        let p = tier.at_offset(tiermalloc::Offset(offset)).unwrap().as_ptr() as usize;
        let bad = match state {
            LIVE => crash_bad_word(p, offset, size as usize, v),
            // SAFETY: a live block's second word.
            REWRITING => match unsafe { (p as *const u64).add(1).read() } {
                BUSY => None,
                w if w == v || w == v + 1 => crash_bad_word(p, offset, size as usize, w),
                _ => Some(1),
            },
            _ => None,
        };
        if let Some(word) = bad {
            panic!(
                "slot {slot}: the block at offset {offset} ({size} B, version {v}, state \
                 {state}) lost its contents at word {word}"
            );
        }
    }
    // An allocation the log does not show yet: at most one per writer, none once the move
    // finished (the writers stopped and the mover exited: the log is exact).
    let unlogged = if std::env::var("CRASH_EXACT").is_ok_and(|v| v == "1") {
        0
    } else {
        CRASH_WRITERS
    };
    if allocated.len() > covered + unlogged {
        let logged: std::collections::BTreeSet<u64> = log
            .iter()
            .filter(|e| e[3].load(Ordering::Relaxed) != EMPTY)
            .map(|e| e[0].load(Ordering::Relaxed))
            .collect();
        let extra: Vec<_> = allocated
            .iter()
            .filter(|(offset, _)| !logged.contains(offset))
            .collect();
        panic!(
            "{} blocks allocated, the log accounts for {covered} (+ {unlogged} in flight); not in \
             the log (offset, usable size): {extra:?}",
            allocated.len()
        );
    }
    println!("CHECKED {}", allocated.len());
}

/// A persistent tier is killed (SIGKILL) at random points of a move while writer threads
/// allocate, rewrite and free its blocks. Then, in alternate rounds, one of the two devices is
/// opened first:
/// - the source: it rolls a cut-short move back (the moved part copied back from the target)
///   or, if the move finished, is refused as stale and the target recovers; the target of a
///   rolled-back move is refused;
/// - the target: it rolls a cut-short move forward (the rest copied from the source), after
///   which the source is refused as stale and the target opens again plainly; or, if the move
///   had not reached it, it holds no heap (refused as foreign bytes, or empty) and the source
///   recovers whole.
///
/// Whichever device recovers, every block the log says is allocated is, with the contents the
/// log says.
#[test]
fn a_move_killed_at_random_points_recovers_whole() {
    killed_moves_recover_whole(
        "a_move_killed_at_random_points_recovers_whole",
        "/dev/shm",
        KILLS_16K,
    );
}

/// The same at the default chunk (1 MiB: 24 of them in the 24 MiB tier, where 16 KiB makes
/// 1536), which programs run at: fewer rounds, so that it adds little to the suite's time.
#[test]
fn a_move_at_the_default_chunk_killed_at_random_points_recovers_whole() {
    killed_moves_recover_whole(
        "a_move_at_the_default_chunk_killed_at_random_points_recovers_whole",
        "/dev/shm",
        Kills {
            chunk: None,
            rounds: 6,
            most_rounds: 16,
            each_way: 2,
        },
    );
}

/// What a kill found: the move not begun (nothing to roll either way), cut short midway
/// (rolled back or forward), or finished.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Seen {
    Early,
    Midway,
    Finished,
}

/// The span, in microseconds after the mover says MOVING, that the next kill is drawn from.
/// A kill that found the move not begun moves its start up to that delay; one that found it
/// finished moves its end down. Under load the mover takes longer both to begin (its setup)
/// and to move: a span fixed by one unloaded run put most kills before the move began (16 of
/// 16 rounds, in a full run on a loaded machine). If the load changes so that the two ends
/// cross, the span is opened again around the last kill.
struct KillWindow {
    lo: u64,
    hi: u64,
}

impl KillWindow {
    /// The delay at `u` (in [0, 1)) of the span.
    fn at(&self, u: f64) -> u64 {
        self.lo + ((self.hi - self.lo) as f64 * u) as u64
    }

    /// Learns from what the kill at `delay` found (nothing from a round not killed).
    fn after(&mut self, delay: Option<u64>, seen: Seen) {
        let Some(delay) = delay else {
            return;
        };
        match seen {
            Seen::Early => {
                self.lo = self.lo.max(delay);
                if self.hi <= self.lo {
                    self.hi = 2 * self.lo + 1;
                }
            }
            Seen::Finished => {
                self.hi = self.hi.min(delay);
                if self.hi <= self.lo {
                    self.lo = self.hi / 2;
                }
            }
            Seen::Midway => {}
        }
    }
}

/// How a crash test kills: at which chunk, and how many rounds.
#[derive(Clone, Copy)]
struct Kills {
    /// `TIERMALLOC_EVACUATE_CHUNK`, or `None` for the default (1 MiB).
    chunk: Option<&'static str>,
    /// Rounds always run.
    rounds: u32,
    /// Rounds run at most, until the move was rolled back midway and forward `each_way`
    /// times each (the test fails with fewer).
    most_rounds: u32,
    each_way: u32,
}

const KILLS_16K: Kills = Kills {
    chunk: Some("16K"),
    rounds: 10,
    most_rounds: 30,
    each_way: 3,
};

/// The same with the source on hugetlbfs (moved in 2 MiB chunks), where a mount with 24 MiB
/// free exists; skipped with a line otherwise.
#[test]
fn a_hugetlbfs_move_killed_at_random_points_recovers_whole() {
    const TEST: &str = "a_hugetlbfs_move_killed_at_random_points_recovers_whole";
    let dir = if is_child() {
        std::env::var("CRASH_SOURCE_DIR").unwrap()
    } else {
        let Some(dir) = hugetlbfs_with_room(24 << 20) else {
            eprintln!("{TEST}: skipped, no hugetlbfs mount with 24 MiB free");
            return;
        };
        dir
    };
    killed_moves_recover_whole(TEST, &dir, KILLS_16K);
}

/// `a_move_killed_at_random_points_recovers_whole` run as test `test` (its child runs are
/// that test again), the source in directory `dir`, the target and the log in /dev/shm,
/// killed as `kills` says.
fn killed_moves_recover_whole(test: &'static str, dir: &str, kills: Kills) {
    // Named by the test too (the three names differ in length): all run at once in one
    // process.
    let pid = std::process::id();
    let name = |f: &str| format!("/dev/shm/tiermalloc-evackill-{pid}-{}-{f}", test.len());
    let (dev, target, log) = (
        format!("{dir}/tiermalloc-evackill-{pid}-{}-dev", test.len()),
        name("target"),
        name("log"),
    );
    let tiers = |path: &str| format!("dram;pmr:path={path},size=24M,create");
    if is_child() {
        match step().split_once(':') {
            Some(("move", target)) => crash_mover(target, &std::env::var("CRASH_LOG").unwrap()),
            Some(("lock", path)) => hold_lock(path),
            _ => crash_checker(&std::env::var("CRASH_LOG").unwrap()),
        }
        return;
    }
    // Whether the round's move finished (the checks then allow no unlogged block).
    let finished_move = std::cell::Cell::new(false);
    let check = |path: &str| -> (Checked, String) {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env("CRASH_SOURCE_DIR", dir)
            .env(CHILD, "check")
            .env("CRASH_EXACT", if finished_move.get() { "1" } else { "0" })
            .env("TIERMALLOC_EVACUATE_STEP", "check")
            .env("CRASH_LOG", &log)
            .env("TIERMALLOC_TIERS", tiers(path));
        let out = support::run_with_timeout(cmd, None, std::time::Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("checking {path}: {e}"));
        let stderr = succeeded(&out, "the check");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let outcome = if stdout.contains("REFUSED") {
            Checked::Refused
        } else if stdout.contains("EMPTY") {
            Checked::Empty
        } else {
            assert!(
                stdout.contains("CHECKED"),
                "the check of {path} said nothing: {stdout}"
            );
            Checked::Blocks
        };
        (outcome, stderr)
    };
    let mut seed = std::process::id() as u64 | 1;
    let mut move_us = 0u64;
    // Where kills land (round 0 sets its end): moved by what each kill found, so that they
    // land in the move's span however long the mover takes under load to start and to move.
    let mut window = KillWindow { lo: 0, hi: 0 };
    // The round's kill, in microseconds after MOVING (`None`: round 0, not killed).
    let mut delay: Option<u64> = None;
    let (mut rolled_back_midway, mut rolled_forward, mut finished, mut busy) = (0, 0, 0, 0);
    let mut round = 0;
    let each_way = kills.each_way;
    while round < kills.rounds
        || ((rolled_back_midway < each_way || rolled_forward < each_way)
            && round < kills.most_rounds)
    {
        for f in [&dev, &target, &log] {
            let _ = std::fs::remove_file(f);
        }
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env("CRASH_SOURCE_DIR", dir)
            .env(CHILD, "move")
            .env("CRASH_CHUNK", kills.chunk.unwrap_or("default"))
            .env("TIERMALLOC_EVACUATE_STEP", format!("move:{target}"))
            .env("TIERMALLOC_EVACUATE_RT", "0")
            .env("CRASH_LOG", &log)
            .env("TIERMALLOC_TIERS", tiers(&dev))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        use std::io::BufRead;
        while !line.contains("MOVING") {
            line.clear();
            if stdout.read_line(&mut line).unwrap() == 0 {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "the mover never started: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        // Round 0 lets the move finish, to learn how long one takes; the others kill it at a
        // random point of the window (`KillWindow`: the span the kills before found the move in).
        if round > 0 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let u = (seed % 1000) as f64 / 1000.0;
            let at = window.at(u);
            delay = Some(at);
            std::thread::sleep(std::time::Duration::from_micros(at));
            // SAFETY: our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        }
        let mut rest = String::new();
        use std::io::Read;
        stdout.read_to_string(&mut rest).unwrap();
        let status = child.wait().unwrap();
        if status.success() {
            // The move finished before the kill: the next kills aim at its span.
            let took = rest
                .lines()
                .find_map(|l| l.strip_prefix("MOVED ")?.trim().parse().ok())
                .expect("the mover says how long the move took");
            move_us = if round == 0 { took } else { move_us.min(took) };
            if round == 0 {
                window.hi = took;
            } else {
                window.after(delay, Seen::Finished);
            }
            let chunk: u64 = rest
                .lines()
                .find_map(|l| l.strip_prefix("CHUNK ")?.trim().parse().ok())
                .expect("the mover says its chunk");
            let want = kills.chunk.map_or(1 << 20, |_| 16 << 10);
            // hugetlbfs moves in its pages' size whatever the setting.
            assert!(
                chunk == want || (dir != "/dev/shm" && chunk == 2 << 20),
                "the move ran at {chunk}-byte chunks, not {want}"
            );
        } else {
            assert!(round > 0, "the mover failed: {status}");
        }
        let killed = !status.success();
        finished_move.set(!killed);
        round += 1;
        if killed && round % 2 == 0 {
            // The target first. While the source is open in another process (here: its
            // range locked as a tier's open locks it), or gone, a pending roll-forward is
            // refused and changes nothing.
            // The lock is held by a child of ours, not by this process: a description this
            // process opened would also be held by every child another test of this process
            // spawns meanwhile (the fd table is copied at the fork; O_CLOEXEC closes it only at
            // the exec), and an open-file-description lock lasts while any copy does. On a
            // loaded machine such a child can sit between fork and exec past the checks
            // below, which then found the source still locked ("is open in another process:
            // pid N owns it", N the killed mover the record names).
            let mut holder = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", test, "--nocapture", "--test-threads=1"])
                .env(CHILD, "lock")
                .env("TIERMALLOC_EVACUATE_STEP", format!("lock:{dev}"))
                .env_remove("TIERMALLOC_TIERS")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut said = String::new();
            let mut lines = std::io::BufReader::new(holder.stdout.as_mut().unwrap());
            while !said.contains("LOCKED") {
                said.clear();
                if std::io::BufRead::read_line(&mut lines, &mut said).unwrap() == 0 {
                    break;
                }
            }
            assert!(
                said.contains("LOCKED") && !said.contains("NOT LOCKED"),
                "the source's range could not be locked: {said}"
            );
            let (outcome, stderr) = check(&target);
            drop(holder.stdin.take());
            assert!(holder.wait().unwrap().success(), "the lock holder failed");
            if stderr.contains("its source is open in another process") {
                assert_eq!(outcome, Checked::Refused, "{stderr}");
                busy += 1;
                let away = format!("{dev}-away");
                std::fs::rename(&dev, &away).unwrap();
                let (outcome, stderr) = check(&target);
                std::fs::rename(&away, &dev).unwrap();
                assert_eq!(
                    outcome,
                    Checked::Refused,
                    "round {round}: without its source: {stderr}"
                );
                assert!(stderr.contains("its source cannot be opened"), "{stderr}");
            }
            let (outcome, stderr) = check(&target);
            eprintln!(
                "round {round} (move {move_us} us, killed at {delay:?} us): {status}; \
                 opening the target: {outcome:?}, {:?}",
                tiermalloc_lines(&stderr)
            );
            if stderr.contains("rolled forward (") {
                assert_eq!(outcome, Checked::Blocks, "round {round}: {stderr}");
                rolled_forward += 1;
                window.after(delay, Seen::Midway);
                let (outcome, stderr) = check(&dev);
                assert_eq!(
                    outcome,
                    Checked::Refused,
                    "round {round}: the source recovered after the target rolled forward: {stderr}"
                );
                assert!(stderr.contains("moved onto another device"), "{stderr}");
                let (outcome, stderr) = check(&target);
                assert_eq!(
                    outcome,
                    Checked::Blocks,
                    "round {round}: the target again: {stderr}"
                );
                assert!(
                    !stderr.contains("rolled"),
                    "round {round}: stitched twice: {stderr}"
                );
            } else if outcome == Checked::Blocks {
                // The move had finished (the kill came after the target's record was
                // cleared): the source is stale.
                let (outcome, stderr) = check(&dev);
                assert_eq!(
                    outcome,
                    Checked::Refused,
                    "round {round}: both devices recover: {stderr}"
                );
                assert!(stderr.contains("moved onto another device"), "{stderr}");
                finished += 1;
                window.after(delay, Seen::Finished);
            } else {
                // The move had not reached the target: it holds no heap, and the source is
                // whole.
                window.after(delay, Seen::Early);
                assert!(
                    !stderr.contains("is the target of a live move"),
                    "round {round}: the target could not roll forward: {stderr}"
                );
                let (outcome, stderr) = check(&dev);
                assert_eq!(
                    outcome,
                    Checked::Blocks,
                    "round {round}: the source after an early kill: {stderr}"
                );
                assert!(
                    !stderr.contains("rolled back (") || stderr.contains("rolled back (0 bytes"),
                    "round {round}: {stderr}"
                );
            }
            continue;
        }
        let (outcome, stderr) = check(&dev);
        eprintln!(
            "round {round} (move {move_us} us, killed at {delay:?} us): {status}; \
             opening the source: {outcome:?}, {:?}",
            tiermalloc_lines(&stderr)
        );
        assert_ne!(
            outcome,
            Checked::Empty,
            "round {round}: the source lost its heap: {stderr}"
        );
        if outcome == Checked::Refused {
            // The move finished: the source is stale, the target holds the heap.
            assert!(stderr.contains("moved onto another device"), "{stderr}");
            let (outcome, _) = check(&target);
            assert_eq!(
                outcome,
                Checked::Blocks,
                "round {round}: neither device recovers"
            );
            finished += 1;
            window.after(delay, Seen::Finished);
        } else if let Some(bytes) = stderr
            .split("rolled back (")
            .nth(1)
            .and_then(|s| s.split(' ').next()?.parse::<u64>().ok())
        {
            rolled_back_midway += (bytes > 0) as u32;
            window.after(delay, if bytes > 0 { Seen::Midway } else { Seen::Early });
            if bytes > 0 {
                let (outcome, stderr) = check(&target);
                assert_eq!(
                    outcome,
                    Checked::Refused,
                    "round {round}: the target of a rolled-back move recovered: {stderr}"
                );
                assert!(stderr.contains("no longer holds"), "{stderr}");
            }
        } else {
            // The source whole with nothing to roll back: the kill came before the move began.
            window.after(delay, Seen::Early);
        }
    }
    for f in [&dev, &target, &log] {
        let _ = std::fs::remove_file(f);
    }
    assert!(
        finished >= 1,
        "round 0's finished move must leave the source refused"
    );
    assert!(
        rolled_back_midway >= each_way && rolled_forward >= each_way,
        "only {rolled_back_midway} roll-backs and {rolled_forward} roll-forwards in {round} kills \
         ({move_us} us a move)"
    );
    assert_eq!(
        busy, rolled_forward,
        "each pending roll-forward was refused while the source was locked"
    );
}

/// The crash test's lock holder: locks the source's range at `path` as a tier's open does,
/// says LOCKED, and holds it until its standard input closes.
fn hold_lock(path: &str) {
    let source = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    if lock_range(&source, 24 << 20) {
        println!("LOCKED");
    } else {
        println!("NOT LOCKED");
    }
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    drop(source);
}

/// Takes an open-file-description write lock on the first `len` bytes of `file`, as a tier's
/// open does; false if another holds one.
fn lock_range(file: &std::fs::File, len: i64) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: all-zero is a valid `flock`.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as i16;
    lock.l_whence = libc::SEEK_SET as i16;
    lock.l_len = len;
    // SAFETY: our open descriptor and a valid `flock`.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) == 0 }
}

/// What the crash test's checker found on opening a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Checked {
    /// The tier did not open.
    Refused,
    /// A fresh heap without a block.
    Empty,
    /// A heap whose blocks match the log.
    Blocks,
}

fn tiermalloc_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("tiermalloc"))
        .collect()
}

/// A hugetlbfs mount with at least `bytes` free, from /proc/mounts.
fn hugetlbfs_with_room(bytes: u64) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dir, fs) = (f.nth(1)?, f.next()?);
            (fs == "hugetlbfs").then(|| dir.to_owned())
        })
        .find(|dir| {
            let path = CString::new(dir.as_str()).unwrap();
            // SAFETY: an all-zero statvfs is a valid out-parameter.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: a NUL-terminated path and a valid out-parameter.
            let ok = unsafe { libc::statvfs(path.as_ptr(), &mut st) == 0 };
            ok && st.f_bavail as u64 * st.f_bsize as u64 >= bytes
        })
}

/// A tier on hugetlbfs moves in chunks of whole huge pages (the kernel write-protects, splits
/// and replaces hugetlbfs mappings only so): writers keep counting, nothing is lost, and the
/// target backs the range. Runs where a hugetlbfs mount has 16 MiB free (none by default:
/// `echo 16 > /proc/sys/vm/nr_hugepages; mount -t hugetlbfs -o size=32M none DIR`), else
/// says it was skipped.
#[test]
fn a_hugetlbfs_tier_moves_in_huge_pages() {
    const TEST: &str = "a_hugetlbfs_tier_moves_in_huge_pages";
    if !is_child() {
        let Some(dir) = hugetlbfs_with_room(16 << 20) else {
            eprintln!("{TEST}: skipped, no hugetlbfs mount with 16 MiB free");
            return;
        };
        let src = format!("{dir}/tiermalloc-evac-{}-src", std::process::id());
        let out = child_run(TEST, &format!("dram;cxl:path={src},size=8M,create"));
        let _ = std::fs::remove_file(&src);
        succeeded(&out, "the move off hugetlbfs");
        return;
    }
    let blocks = Arc::new(make_blocks(300));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (blocks, stop) = (blocks.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for b in blocks.iter() {
                    // SAFETY: every block holds at least 8 bytes, 16-aligned; only this
                    // thread writes its first word.
                    unsafe { (b.p as *mut u64).write_volatile(rounds + 1) };
                }
                rounds += 1;
            }
            rounds
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    let target = shm("target");
    assert_eq!(evacuate(CXL, Some(&target)), Ok(()), "errno of the move");
    assert_eq!(mapped_file(blocks[0].p).as_deref(), Some(target.as_str()));
    std::thread::sleep(std::time::Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.join().unwrap();
    for b in blocks.iter() {
        // SAFETY: a live block's first word.
        assert_eq!(
            unsafe { (b.p as *const u64).read() },
            rounds,
            "a write was lost at {:#x}",
            b.p
        );
    }
    check_blocks(&blocks, true);
}

/// `tm_evacuate(kind, "")` (a target read from an unset variable): refused as "longer than
/// 255 bytes" with ENAMETOOLONG. It is EINVAL, and the line says the path is empty.
#[test]
fn an_empty_target_is_refused_as_empty() {
    const TEST: &str = "an_empty_target_is_refused_as_empty";
    if !is_child() {
        let out = child_run(TEST, "dram;cxl:path={shm}dev,size=8M,create");
        let err = succeeded(&out, "an empty target");
        assert!(err.contains("onto '': the target's path is empty"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        return;
    }
    let blocks = make_blocks(50);
    assert_eq!(evacuate(CXL, Some("")), Err(libc::EINVAL));
    check_blocks(&blocks, false);
}

/// A move onto the tier's own device file: refused with EBUSY as documented, but the line said
/// the file "is in use by another process" (the lock it met was the tier's own). It says so.
#[test]
fn a_move_onto_the_tiers_own_device_says_so() {
    const TEST: &str = "a_move_onto_the_tiers_own_device_says_so";
    if !is_child() {
        let out = child_run(TEST, "dram;cxl:path={shm}dev,size=8M,create");
        let err = succeeded(&out, "a move onto its own device");
        assert!(err.contains("the target is the tier's own device"), "{err}");
        assert!(!err.contains("another process"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        return;
    }
    let blocks = make_blocks(50);
    assert_eq!(evacuate(CXL, Some(&shm("dev"))), Err(libc::EBUSY));
    check_blocks(&blocks, false);
}
