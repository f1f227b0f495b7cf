//! The same workload on tiermalloc's device tier and on two allocators that keep their free
//! lists *inside* the region they manage (rlsf, talc), for time and for device bytes touched.
//!
//! Why: tiermalloc's premise is that device memory (CXL, a PCIe BAR of an NVMe CMB/PMR) is slow
//! to read, so every piece of its metadata lives in host DRAM and the device is only written
//! (the 16-byte header before each block). The usual way to manage such a region is an
//! allocator whose block headers and free-list links live in the region itself. This bench
//! measures what each approach reads and writes in the region, and how long a pair takes when
//! the "device" is a file in /dev/shm (DRAM speed), then estimates what the counted reads would
//! add at real device read latencies.
//!
//! Workload (the random replacement of `benches/device/throughput.c`): LIVE blocks stay
//! allocated; PAIRS times a random one is freed and a new one of random size allocated. The
//! blocks' contents are never touched, so every access inside the region is the allocator's.
//! - `small`: 10 000 live blocks of 16..4095 bytes;
//! - `large`: 1 000 live blocks of 4 KiB..64 KiB.
//!
//! Allocators, each on a 256 MiB file in /dev/shm mapped MAP_SHARED:
//! - `ours-best`, `ours-worst`: the `cxl` tier's `Allocator` (`tm_malloc(TM_CXL)` / `tm_free`) on a
//!   `cxl` tier (`TIERMALLOC_TIERS="dram;cxl:path=...,size=256M,create,fit=best|worst"`);
//! - `rlsf`: `rlsf::Tlsf` (TLSF) given the whole mapping; its block headers and free-list links
//!   are in the region, its bitmaps and list heads in the `Tlsf` value, which is in host memory;
//! - `talc`: `talc::base::Talc` with the mapping claimed as its heap; its boundary tags, free-list
//!   links and list heads are in the region, its availability bitmap in host memory. `talc`
//!   needs the block size on free; the workload keeps it in host memory and passes it (a C
//!   program calling `free(p)` would have to store it somewhere).
//!
//! Every region is faulted in (`MADV_POPULATE_WRITE`) before the workload starts, so that no
//! allocator pays first-touch page faults in the measured pairs (see `populate`).
//!
//! Two kinds of run, each a child process (this same executable, `child ...`), because tiers
//! are read from the environment when tiermalloc starts:
//! - timing: every (workload, allocator) child runs `--runs` times, interleaved and with the
//!   allocator order rotated per repetition; the median ns per pair is reported;
//! - touches: the child runs under `valgrind --tool=lackey --trace-mem=yes` with fewer pairs;
//!   loads and stores whose address falls inside the mapping are summed between two stores to a
//!   marker variable around the loop (as `tests/device_touches.rs` does), and one store per pair
//!   to a second variable splits the trace into pairs, to count distinct 64-byte lines read.
//!
//! Run (own target directory; 3.5 minutes here, half of it under valgrind; the results and how
//! to read them are in `inregion-results.md`):
//!
//! ```sh
//! CARGO_TARGET_DIR=$PWD/target-bench cargo bench -p tiermalloc-benches --bench inregion \
//!     -- --callgrind --markdown /tmp/inregion.md
//! ```
//!
//! Options after `--`: `--runs N` (default 5), `--quick` (1 run, few pairs: a smoke test),
//! `--no-lackey`, `--no-timing`, `--callgrind` (also count instructions and simulated cache
//! misses per pair, host memory included: why the times differ), `--workloads small,large`,
//! `--allocators ours-best,ours-worst,rlsf,talc`, `--markdown FILE` (also write the tables).
//!
//! The estimates printed after the tables are arithmetic on the counts, not measurements:
//! measured ns + reads x latency, with CXL at 170-250 ns per distinct line read in a pair (each
//! assumed to miss the cache; hits make it less) and a PCIe BAR (uncached: every load is a
//! read transaction) at 1-2 us per load.

#[path = "../../tests/support/lackey.rs"]
mod lackey;

use std::alloc::Layout;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use allocator_api2::alloc::Allocator;
use tiermalloc::{Kind, Tier};

/// Bytes of every region (the /dev/shm file), the same for every allocator.
const REGION: usize = 256 << 20;
const ALLOCATORS: [&str; 4] = ["ours-best", "ours-worst", "rlsf", "talc"];
/// Cache line, for the distinct-lines count.
const LINE: u64 = 64;

/// One workload: how many blocks stay live, their size range, how many pairs to time, trace
/// and run before either.
#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    live: usize,
    min: usize,
    /// One past the largest size.
    end: usize,
    time_pairs: u64,
    trace_pairs: u64,
    warmup: u64,
    trace_warmup: u64,
}

const WORKLOADS: [Workload; 2] = [
    Workload {
        name: "small",
        live: 10_000,
        min: 16,
        end: 4096,
        time_pairs: 1_000_000,
        trace_pairs: 5_000,
        warmup: 100_000,
        trace_warmup: 20_000,
    },
    Workload {
        name: "large",
        live: 1_000,
        min: 4096,
        end: 65_537,
        time_pairs: 300_000,
        trace_pairs: 5_000,
        warmup: 10_000,
        trace_warmup: 10_000,
    },
];

fn workload(name: &str) -> Workload {
    *WORKLOADS
        .iter()
        .find(|w| w.name == name)
        .unwrap_or_else(|| panic!("unknown workload {name}"))
}

// ---------------------------------------------------------------------------------------------
// The child: one allocator, one workload
// ---------------------------------------------------------------------------------------------

/// Written once before and once after the measured loop (finds the loop in the trace).
static MARKER: AtomicU64 = AtomicU64::new(0);
/// Written at the start of every pair (splits the trace into pairs).
static PAIR_MARKER: AtomicU64 = AtomicU64::new(0);

/// A volatile store: lackey sees it as one `S` line at the variable's address, and the compiler
/// may neither drop nor merge it.
fn mark(var: &AtomicU64, value: u64) {
    // SAFETY: `as_ptr` points at the static's value, valid for the whole program; only this
    // thread touches it.
    unsafe { var.as_ptr().write_volatile(value) }
}

/// An allocator over one region; `free` gets the size back, as talc needs it.
trait RegionAlloc {
    fn alloc(&mut self, size: usize) -> *mut u8;
    /// # Safety
    /// `p` came from `alloc(size)` on this allocator and is not used afterwards.
    unsafe fn free(&mut self, p: *mut u8, size: usize);
}

/// tiermalloc's CXL tier, configured by `TIERMALLOC_TIERS` (set by the driver), through its
/// Rust `Allocator` (the same path as `tm_malloc(TM_CXL, size)` / `tm_free`).
struct Ours(Tier);

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 16).expect("bench sizes are valid layouts")
}

impl RegionAlloc for Ours {
    fn alloc(&mut self, size: usize) -> *mut u8 {
        self.0
            .allocate(layout(size))
            .map_or(std::ptr::null_mut(), |b| b.as_ptr().cast())
    }
    unsafe fn free(&mut self, p: *mut u8, size: usize) {
        // SAFETY: a live block of ours from `alloc(size)` (caller's contract).
        unsafe { self.0.deallocate(NonNull::new_unchecked(p), layout(size)) }
    }
}

/// rlsf with 24 first-level classes (blocks up to 512 MiB) of 32 second-level lists each.
struct Rlsf(Box<rlsf::Tlsf<'static, u32, u32, 24, 32>>);

impl RegionAlloc for Rlsf {
    fn alloc(&mut self, size: usize) -> *mut u8 {
        let layout = Layout::from_size_align(size, 16).unwrap();
        self.0
            .allocate(layout)
            .map_or(std::ptr::null_mut(), NonNull::as_ptr)
    }
    unsafe fn free(&mut self, p: *mut u8, _size: usize) {
        // SAFETY: `p` came from `allocate` with alignment 16 (caller's contract).
        unsafe { self.0.deallocate(NonNull::new_unchecked(p), 16) }
    }
}

struct Talc(talc::base::Talc<talc::source::Manual, talc::DefaultBinning>);

impl RegionAlloc for Talc {
    fn alloc(&mut self, size: usize) -> *mut u8 {
        let layout = Layout::from_size_align(size, 16).unwrap();
        // SAFETY: every size of the workloads is nonzero.
        unsafe { self.0.allocate(layout) }.map_or(std::ptr::null_mut(), NonNull::as_ptr)
    }
    unsafe fn free(&mut self, p: *mut u8, size: usize) {
        let layout = Layout::from_size_align(size, 16).unwrap();
        // SAFETY: `p` came from `allocate(layout)` (caller's contract).
        unsafe { self.0.deallocate(p, layout) }
    }
}

/// Maps `path` (created at `REGION` bytes) MAP_SHARED, as tiermalloc's backend maps a tier.
fn map_file(path: &str) -> *mut u8 {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("open the region file");
    file.set_len(REGION as u64).expect("size the region file");
    // SAFETY: a fresh shared mapping of our own file; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            REGION,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert!(p != libc::MAP_FAILED, "mmap of {path} failed");
    p.cast()
}

/// The mapping of /proc/self/maps that holds `p`.
fn mapping_of(p: *mut u8) -> (u64, u64) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let range = line.split_whitespace().next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        if (a..b).contains(&(p as u64)) {
            return (a, b);
        }
    }
    panic!("no mapping holds {p:p}");
}

/// Writes `text` to stdout with one `write(2)`: under lackey, stdout is also the trace pipe, and
/// one write of less than PIPE_BUF bytes cannot be split by the trace's own writes.
fn say(text: &str) {
    // SAFETY: writing our own initialised buffer to fd 1.
    let n = unsafe { libc::write(1, text.as_ptr().cast(), text.len()) };
    assert_eq!(n, text.len() as isize);
}

/// xorshift64, the generator of throughput.c.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs the workload on `a`, whose region is `[lo, hi)`.
fn drive<A: RegionAlloc>(a: &mut A, w: Workload, pairs: u64, warmup: u64, (lo, hi): (u64, u64)) {
    let mut rng = Rng(88_172_645_463_325_252);
    let span = (w.end - w.min) as u64;
    let mut slots: Vec<(*mut u8, usize)> = Vec::with_capacity(w.live);
    for _ in 0..w.live {
        let size = w.min + ((rng.next() >> 20) % span) as usize;
        let p = a.alloc(size);
        assert!(!p.is_null(), "region full while filling");
        slots.push((p, size));
    }
    let mut step = |rng: &mut Rng, a: &mut A| {
        let x = rng.next();
        let k = (x % w.live as u64) as usize;
        let (p, size) = slots[k];
        // SAFETY: `p` is a live block of `a` of `size` bytes, replaced in its slot right away.
        unsafe { a.free(p, size) };
        let size = w.min + ((x >> 20) % span) as usize;
        let p = a.alloc(size);
        assert!(!p.is_null(), "region full");
        slots[k] = (p, size);
    };
    for _ in 0..warmup {
        step(&mut rng, a);
    }
    say(&format!(
        "\n@@ range {lo:x} {hi:x} marker {:x} pair {:x}\n",
        MARKER.as_ptr() as u64,
        PAIR_MARKER.as_ptr() as u64
    ));
    mark(&MARKER, 1);
    let t0 = Instant::now();
    for i in 0..pairs {
        mark(&PAIR_MARKER, i);
        step(&mut rng, a);
    }
    let ns = t0.elapsed().as_nanos() as f64 / pairs as f64;
    mark(&MARKER, 2);
    say(&format!("\n@@ result {ns:.1}\n"));
    for (p, size) in slots {
        // SAFETY: every slot holds a live block of `a`.
        unsafe { a.free(p, size) };
    }
}

/// Faults in every page of `[lo, hi)` writable without reading or writing its contents
/// (`MADV_POPULATE_WRITE`), so that no allocator pays first-touch page faults in the measured
/// pairs: a PCI BAR mapping is fully mapped at `mmap`, and a long-running program's region is
/// faulted in long before. Nothing of this shows in the trace (a system call, outside the
/// markers).
fn populate((lo, hi): (u64, u64)) {
    // SAFETY: `[lo, hi)` is one of our shared file mappings; populating changes no contents.
    let r = unsafe {
        libc::madvise(
            lo as *mut libc::c_void,
            (hi - lo) as usize,
            libc::MADV_POPULATE_WRITE,
        )
    };
    assert_eq!(r, 0, "madvise(MADV_POPULATE_WRITE) failed");
}

/// `child ALLOCATOR WORKLOAD PAIRS WARMUP PATH`.
fn child(args: &[String]) {
    let (alloc, w) = (args[0].as_str(), workload(&args[1]));
    let pairs: u64 = args[2].parse().unwrap();
    let warmup: u64 = args[3].parse().unwrap();
    let path = args[4].as_str();
    match alloc {
        "ours-best" | "ours-worst" => {
            // The tier's mapping is the region.
            let mut ours = Ours(Tier::new(Kind::Cxl).expect("the cxl tier is configured"));
            let p = ours.alloc(64);
            assert!(!p.is_null(), "the cxl tier is full");
            let range = mapping_of(p);
            // SAFETY: just allocated, never used.
            unsafe { ours.free(p, 64) };
            populate(range);
            drive(&mut ours, w, pairs, warmup, range);
        }
        "rlsf" => {
            let base = map_file(path);
            let range = (base as u64, base as u64 + REGION as u64);
            populate(range);
            let mut tlsf = Box::new(rlsf::Tlsf::new());
            // SAFETY: the mapping is ours alone, valid and unused, for the rest of the process.
            let taken = unsafe {
                tlsf.insert_free_block_ptr(NonNull::slice_from_raw_parts(
                    NonNull::new(base).unwrap(),
                    REGION,
                ))
            };
            assert!(taken.is_some(), "rlsf refused the region");
            drive(&mut Rlsf(tlsf), w, pairs, warmup, range);
        }
        "talc" => {
            let base = map_file(path);
            let range = (base as u64, base as u64 + REGION as u64);
            populate(range);
            let mut t = talc::base::Talc::new(talc::source::Manual);
            // SAFETY: the mapping is ours alone, valid and unused, for the rest of the process.
            let claimed = unsafe { t.claim(base, REGION) };
            assert!(claimed.is_some(), "talc refused the region");
            drive(&mut Talc(t), w, pairs, warmup, range);
        }
        _ => panic!("unknown allocator {alloc}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------------

struct Options {
    runs: usize,
    quick: bool,
    lackey: bool,
    timing: bool,
    callgrind: bool,
    workloads: Vec<Workload>,
    allocators: Vec<String>,
    markdown: Option<String>,
}

fn options(args: &[String]) -> Options {
    let mut o = Options {
        runs: 5,
        quick: false,
        lackey: true,
        timing: true,
        callgrind: false,
        workloads: WORKLOADS.to_vec(),
        allocators: ALLOCATORS.iter().map(|s| s.to_string()).collect(),
        markdown: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| panic!("{a} needs a value"))
        };
        match a.as_str() {
            "--bench" => {} // passed by `cargo bench`
            "--runs" => o.runs = value().parse().expect("--runs N"),
            "--quick" => o.quick = true,
            "--no-lackey" => o.lackey = false,
            "--no-timing" => o.timing = false,
            "--callgrind" => o.callgrind = true,
            "--workloads" => o.workloads = value().split(',').map(workload).collect(),
            "--allocators" => {
                o.allocators = value().split(',').map(str::to_string).collect();
                for a in &o.allocators {
                    assert!(ALLOCATORS.contains(&a.as_str()), "unknown allocator {a}");
                }
            }
            "--markdown" => o.markdown = Some(value()),
            other => panic!("unknown option {other}"),
        }
    }
    if o.quick {
        o.runs = 1;
        for w in &mut o.workloads {
            w.time_pairs = 20_000;
            w.warmup = 1_000;
            w.trace_pairs = 200;
            w.trace_warmup = 200;
        }
    }
    o
}

/// The child command for `alloc` on `w`; `path` is the region file, removed by the caller.
fn child_command(
    program: Option<&[&str]>,
    alloc: &str,
    w: Workload,
    pairs: u64,
    warmup: u64,
    path: &str,
) -> Command {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match program {
        Some(p) => {
            let mut c = Command::new(p[0]);
            c.args(&p[1..]).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.args([
        "child",
        alloc,
        w.name,
        &pairs.to_string(),
        &warmup.to_string(),
        path,
    ]);
    cmd.env_remove("TIERMALLOC_TIERS")
        .env_remove("TIERMALLOC_PLACE");
    if let Some(fit) = alloc.strip_prefix("ours-") {
        cmd.env(
            "TIERMALLOC_TIERS",
            format!(
                "dram;cxl:path={path},size={}M,create,fit={fit}",
                REGION >> 20
            ),
        );
    }
    cmd
}

fn region_path(alloc: &str, w: Workload) -> String {
    format!(
        "/dev/shm/tiermalloc-inregion-{}-{alloc}-{}",
        std::process::id(),
        w.name
    )
}

/// One timed child run: ns per pair.
fn time_once(alloc: &str, w: Workload) -> f64 {
    let path = region_path(alloc, w);
    let out = child_command(None, alloc, w, w.time_pairs, w.warmup, &path)
        .stderr(Stdio::inherit())
        .output()
        .expect("run the child");
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{alloc} on {}: {}\n{stdout}",
        w.name,
        out.status
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("@@ result "))
        .expect("a result line")
        .parse()
        .unwrap()
}

/// What lackey saw inside the region during the measured pairs.
#[derive(Default)]
struct Touches {
    pairs: u64,
    loads: u64,
    bytes_read: u64,
    lines_read: u64,
    stores: u64,
    bytes_written: u64,
}

/// Runs the child under lackey and counts its accesses to the region, reading the trace from a
/// pipe as it comes (it is hundreds of MB).
fn touches(alloc: &str, w: Workload) -> Touches {
    let path = region_path(alloc, w);
    let lackey = ["valgrind", "--tool=lackey", "--trace-mem=yes", "--log-fd=1"];
    let mut child = child_command(
        Some(&lackey),
        alloc,
        w,
        w.trace_pairs,
        w.trace_warmup,
        &path,
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("valgrind runs (apt-get install valgrind)");
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut t = Touches::default();
    let mut info: Option<(u64, u64, u64, u64)> = None;
    let mut markers = 0;
    let mut lines_this_pair: HashSet<u64> = HashSet::new();
    let mut reader = BufReader::with_capacity(1 << 20, child.stdout.take().unwrap());
    let mut line = String::new();
    while {
        line.clear();
        reader.read_line(&mut line).unwrap() > 0
    } {
        if let Some(rest) = line.strip_prefix("@@ range ") {
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|h| u64::from_str_radix(h, 16).ok())
                .collect();
            info = Some((v[0], v[1], v[2], v[3]));
            continue;
        }
        let Some((lo, hi, marker, pair)) = info else {
            continue;
        };
        let Some((access, addr, size)) = lackey::data_access(&line) else {
            continue;
        };
        if access == lackey::Access::Store && addr == marker {
            markers += 1;
            continue;
        }
        if markers != 1 {
            continue;
        }
        if access == lackey::Access::Store && addr == pair {
            t.pairs += 1;
            t.lines_read += lines_this_pair.len() as u64;
            lines_this_pair.clear();
            continue;
        }
        if addr + size <= lo || addr >= hi {
            continue;
        }
        if access.loads() {
            t.loads += 1;
            t.bytes_read += size;
            for l in addr / LINE..=(addr + size - 1) / LINE {
                lines_this_pair.insert(l);
            }
        }
        if access.stores() {
            t.stores += 1;
            t.bytes_written += size;
        }
    }
    t.lines_read += lines_this_pair.len() as u64;
    let status = child.wait().unwrap();
    let _ = std::fs::remove_file(&path);
    let errors = errors.join().unwrap();
    assert!(
        status.success(),
        "{alloc} on {} under lackey: {status}\n{errors}",
        w.name
    );
    assert_eq!(markers, 2, "{alloc} on {}: both marker stores seen", w.name);
    assert_eq!(
        t.pairs, w.trace_pairs,
        "{alloc} on {}: every pair seen",
        w.name
    );
    t
}

/// The events `valgrind --tool=callgrind --cache-sim=yes` counts, as its output names them.
const CALLGRIND_EVENTS: [&str; 7] = ["Ir", "Dr", "Dw", "D1mr", "D1mw", "DLmr", "DLmw"];

/// Host-side cost per pair under callgrind with its cache simulation: two runs of `n` and `3n`
/// pairs from the same state, whose difference divided by `2n` leaves out start-up, filling and
/// warm-up. Returns the counts of `CALLGRIND_EVENTS` per pair.
fn callgrind(alloc: &str, w: Workload) -> [f64; 7] {
    let path = region_path(alloc, w);
    let out_file = format!("/tmp/tiermalloc-inregion-{}.callgrind", std::process::id());
    let out_arg = format!("--callgrind-out-file={out_file}");
    let tool = ["valgrind", "--tool=callgrind", "--cache-sim=yes", &out_arg];
    let totals = |pairs: u64| -> [f64; 7] {
        let out = child_command(Some(&tool), alloc, w, pairs, w.trace_warmup, &path)
            .output()
            .expect("valgrind runs (apt-get install valgrind)");
        let _ = std::fs::remove_file(&path);
        assert!(
            out.status.success(),
            "{alloc} on {} under callgrind: {}\n{}",
            w.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&out_file).expect("callgrind's output file");
        let _ = std::fs::remove_file(&out_file);
        let field = |prefix: &str| -> Vec<&str> {
            let line = text.lines().find(|l| l.starts_with(prefix)).expect(prefix);
            line[prefix.len()..].split_whitespace().collect()
        };
        let (names, values) = (field("events:"), field("summary:"));
        CALLGRIND_EVENTS.map(|e| {
            let i = names.iter().position(|n| *n == e).expect(e);
            values[i].parse().unwrap()
        })
    };
    let n = w.trace_pairs;
    let (short, long) = (totals(n), totals(3 * n));
    std::array::from_fn(|i| (long[i] - short[i]) / (2 * n) as f64)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn driver(o: Options) {
    let mut out = String::new();
    // times[w][a]: every run's ns per pair.
    let mut times = vec![vec![Vec::new(); o.allocators.len()]; o.workloads.len()];
    if o.timing {
        for rep in 0..o.runs {
            for (wi, w) in o.workloads.iter().enumerate() {
                for k in 0..o.allocators.len() {
                    let ai = (k + rep) % o.allocators.len();
                    let ns = time_once(&o.allocators[ai], *w);
                    eprintln!(
                        "run {}: {} {} {ns:.1} ns/pair",
                        rep + 1,
                        w.name,
                        o.allocators[ai]
                    );
                    times[wi][ai].push(ns);
                }
            }
        }
    }
    let mut counts: Vec<Vec<Option<Touches>>> = o
        .workloads
        .iter()
        .map(|_| o.allocators.iter().map(|_| None).collect())
        .collect();
    if o.lackey {
        for (wi, w) in o.workloads.iter().enumerate() {
            for (ai, a) in o.allocators.iter().enumerate() {
                eprintln!("lackey: {} {a} ...", w.name);
                counts[wi][ai] = Some(touches(a, *w));
            }
        }
    }
    let tables = if o.timing || o.lackey {
        o.workloads.len()
    } else {
        0
    };
    for (wi, w) in o.workloads.iter().enumerate().take(tables) {
        let _ = writeln!(
            out,
            "\n#### `{}`: {} live blocks of {}..{} bytes, a random one replaced per pair\n",
            w.name,
            w.live,
            w.min,
            w.end - 1
        );
        let _ = writeln!(
            out,
            "Time: median of {} runs of {} pairs (after {} unmeasured); touches: {} pairs under \
             lackey (after {} unmeasured). Per alloc + free pair:\n",
            o.runs, w.time_pairs, w.warmup, w.trace_pairs, w.trace_warmup
        );
        let _ = writeln!(
            out,
            "| allocator | ns (runs) | device bytes read | loads | distinct lines read | device \
             bytes written | stores |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
        for (ai, a) in o.allocators.iter().enumerate() {
            let v = &mut times[wi][ai];
            let ns = if v.is_empty() {
                "—".to_string()
            } else {
                let all: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
                format!("**{:.0}** ({})", median(&mut v.clone()), all.join(", "))
            };
            let per = |x: u64, t: &Touches| format!("{:.2}", x as f64 / t.pairs as f64);
            let c = match &counts[wi][ai] {
                Some(t) => [
                    per(t.bytes_read, t),
                    per(t.loads, t),
                    per(t.lines_read, t),
                    per(t.bytes_written, t),
                    per(t.stores, t),
                ],
                None => std::array::from_fn(|_| "—".to_string()),
            };
            let _ = writeln!(
                out,
                "| {a} | {ns} | {} | {} | {} | {} | {} |",
                c[0], c[1], c[2], c[3], c[4]
            );
        }
        let _ = writeln!(
            out,
            "\nEstimated ns per pair on real devices (measured ns + counted reads x read latency; \
             arithmetic, not a measurement):\n"
        );
        let _ = writeln!(
            out,
            "| allocator | measured (/dev/shm) | CXL, 170–250 ns per line read | PCIe BAR, 1–2 µs \
             per load |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for (ai, a) in o.allocators.iter().enumerate() {
            let (Some(t), false) = (&counts[wi][ai], times[wi][ai].is_empty()) else {
                continue;
            };
            let ns = median(&mut times[wi][ai].clone());
            let lines = t.lines_read as f64 / t.pairs as f64;
            let loads = t.loads as f64 / t.pairs as f64;
            // `ns + reads x (low..high)`, one figure when nothing was read.
            let estimate = |reads: f64, low: f64, high: f64| {
                if reads == 0.0 {
                    format!("{ns:.0}")
                } else {
                    format!("{:.0}–{:.0}", ns + reads * low, ns + reads * high)
                }
            };
            let _ = writeln!(
                out,
                "| {a} | {ns:.0} | {} | {} |",
                estimate(lines, 170.0, 250.0),
                estimate(loads, 1000.0, 2000.0)
            );
        }
    }
    if o.callgrind {
        for w in &o.workloads {
            let _ = writeln!(
                out,
                "\n#### Host-side cost per pair, `{}` (callgrind with cache simulation)\n",
                w.name
            );
            let _ = writeln!(
                out,
                "Difference of {} and {} measured pairs, divided by {}; harness included \
                 (the same few instructions for every allocator).\n",
                w.trace_pairs,
                3 * w.trace_pairs,
                2 * w.trace_pairs
            );
            let _ = writeln!(
                out,
                "| allocator | instructions | data reads | data writes | L1 read misses | \
                 L1 write misses | LL read misses | LL write misses |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
            for a in &o.allocators {
                eprintln!("callgrind: {} {a} ...", w.name);
                let c = callgrind(a, *w);
                let _ = writeln!(
                    out,
                    "| {a} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} |",
                    c[0], c[1], c[2], c[3], c[4], c[5], c[6]
                );
            }
        }
    }
    print!("{out}");
    if let Some(path) = o.markdown {
        std::fs::write(&path, &out).expect("write the markdown file");
        eprintln!("tables written to {path}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        child(&args[1..]);
    } else {
        driver(options(&args));
    }
}
