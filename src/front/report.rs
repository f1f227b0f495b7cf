//! The statistics report: what it says (a [`Snapshot`] of every configured tier), how it reads
//! (text with human units, or JSON with raw numbers), and where it goes.
//!
//! Destinations, set by the environment and read once at start-up (`init`):
//! - `TIERMALLOC_SHOW_STATS=1`: the text report on stderr at exit, but only if descriptor 2 is
//!   still the file it was at start (same device and inode), so a program that closed stderr
//!   and reused descriptor 2 for a data file never gets the report written into it;
//! - `TIERMALLOC_STATS_FILE=PATH` (`%p` is the pid): the report at exit into PATH instead,
//!   as JSON when `TIERMALLOC_STATS_FORMAT=json` or PATH ends in `.json`, else as text;
//! - `TIERMALLOC_STATS_SIGNAL=SIG` (`USR1`, `SIGUSR2`, `10`, ...): the report whenever the
//!   process receives SIG, to the same destination (the file is rewritten);
//! - `TIERMALLOC_STATS_LIVE=1`: the JSON report kept current in a shared file (`live`).
//!
//! Everything here formats into fixed buffers with `core::fmt` and allocates nothing, so that
//! a report can be made from a signal handler or from inside an allocation; from those, a tier
//! whose lock is held is left out (`complete: false`) rather than waited for.

use crate::config::{self, Report as _, MAX_PATH};
use crate::dram::{self, budget};
use crate::kind::Kind;
use crate::stats::TierStats;
use crate::textbuf::{FdWriter, SliceWriter};
use crate::{device, live, os, tier};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

/// The layout of the live statistics file, for readers (`tiermalloc stats PID`).
pub mod live_file {
    pub use crate::live::{HEADER_BYTES, MAGIC, MAP_BYTES, PATH_PREFIX};
}

/// What made a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The process is exiting.
    Exit,
    /// The statistics signal arrived.
    Signal,
    /// A call asked for it (`tm_print_stats`, `tm_stats_json`, `print_stats`).
    Request,
    /// The live statistics file was refreshed.
    Live,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Exit => "exit",
            Event::Signal => "signal",
            Event::Request => "request",
            Event::Live => "live",
        }
    }
    pub fn parse(s: &str) -> Option<Event> {
        [Event::Exit, Event::Signal, Event::Request, Event::Live]
            .into_iter()
            .find(|e| e.name() == s)
    }
}

/// Where a tier's `capacity` comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapacitySource {
    /// The machine's physical memory (DRAM).
    Machine,
    /// The process's cgroup memory limit (DRAM).
    Cgroup,
    /// The tier's `limit=`.
    Limit,
    /// The device region's size.
    Device,
    /// The extents of the shared pool the tier holds now: its share, less what it lent,
    /// plus what it borrowed (`cxl:pool,share=`).
    Share,
}

impl CapacitySource {
    pub fn name(self) -> &'static str {
        match self {
            CapacitySource::Machine => "machine",
            CapacitySource::Cgroup => "cgroup",
            CapacitySource::Limit => "limit",
            CapacitySource::Device => "device",
            CapacitySource::Share => "share",
        }
    }
    pub fn parse(s: &str) -> Option<CapacitySource> {
        use CapacitySource::*;
        [Machine, Cgroup, Limit, Device, Share]
            .into_iter()
            .find(|c| c.name() == s)
    }
}

/// One tier's figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierFigures {
    pub kind: Kind,
    /// What `tm_get_stats` reports (`in_use` is the current figure).
    pub stats: TierStats,
    /// The most the tier has held at once. DRAM: bytes held for blocks (the 64 KiB pages
    /// thread heaps cut, and large blocks), which bounds its bytes in blocks from above. A
    /// device tier: bytes of its extents (blocks with their headers, and slabs whole).
    pub peak: u64,
    /// Address space set aside, which is not memory in use. DRAM: segments mapped (reserved,
    /// touched only as pages are cut) and large blocks' mappings; a device tier: the region
    /// mapped.
    pub reserved: u64,
    pub capacity_source: CapacitySource,
}

/// Every configured tier's figures at one instant, with the process they belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub pid: u32,
    program: [u8; 64],
    program_len: usize,
    pub event: Event,
    /// CLOCK_REALTIME in nanoseconds.
    pub time_ns: u64,
    /// False when a tier was left out because it was busy (reports from a signal handler or
    /// from inside an allocation do not wait for locks).
    pub complete: bool,
    /// Indexed by `Kind as usize`; `None` for kinds not configured.
    pub tiers: [Option<TierFigures>; 4],
    /// Capacity out on loan in the pool this process's share tier draws on: (lender pid,
    /// borrower pid, bytes), the first `loans_len` of them (`pool::share`).
    pub loans: [Loan; MAX_LOANS],
    pub loans_len: usize,
}

/// Capacity one node of the pool lent another (seed 000).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loan {
    pub lender: u32,
    pub borrower: u32,
    pub bytes: u64,
}

/// The most loans a report lists.
pub const MAX_LOANS: usize = 16;

impl Snapshot {
    /// An empty snapshot (no tiers) of process `pid` named `program` (cut at 64 bytes).
    pub fn new(pid: u32, program: &str, event: Event, time_ns: u64) -> Snapshot {
        let mut s = Snapshot {
            pid,
            program: [0; 64],
            program_len: 0,
            event,
            time_ns,
            complete: true,
            tiers: [None; 4],
            loans: [Loan::default(); MAX_LOANS],
            loans_len: 0,
        };
        let mut end = program.len().min(64);
        while !program.is_char_boundary(end) {
            end -= 1;
        }
        s.program[..end].copy_from_slice(&program.as_bytes()[..end]);
        s.program_len = end;
        s
    }

    pub fn program(&self) -> &str {
        core::str::from_utf8(&self.program[..self.program_len]).unwrap_or("?")
    }

    /// Adds a loan (beyond `MAX_LOANS`, left out).
    pub fn add_loan(&mut self, loan: Loan) {
        if self.loans_len < MAX_LOANS {
            self.loans[self.loans_len] = loan;
            self.loans_len += 1;
        }
    }

    pub fn loans(&self) -> &[Loan] {
        &self.loans[..self.loans_len]
    }

    /// The configured tiers' figures, DRAM first.
    pub fn tiers(&self) -> impl Iterator<Item = &TierFigures> {
        self.tiers.iter().flatten()
    }
}

/// This process's figures now, waiting for each tier's locks.
pub fn snapshot() -> Snapshot {
    take_snapshot(Event::Request, true)
}

fn take_snapshot(event: Event, wait: bool) -> Snapshot {
    let mut snap = Snapshot::new(
        os_pid(),
        program_name(),
        event,
        os::clock_ns(libc::CLOCK_REALTIME),
    );
    for kind in Kind::ALL {
        snap.tiers[kind as usize] = if kind == Kind::Dram {
            tier::stats(Kind::Dram).map(dram_figures)
        } else {
            let figures = device::get(kind).and_then(|t| {
                if wait {
                    Some(t.figures())
                } else {
                    t.try_figures()
                }
            });
            match figures {
                Some(f) => Some(TierFigures {
                    kind,
                    stats: f.stats,
                    peak: f.peak_in_use,
                    reserved: f.mapped,
                    capacity_source: if f.from_pool {
                        CapacitySource::Share
                    } else if f.from_limit {
                        // (Not `capacity < mapped`: a persistent tier's superblock makes that
                        // true of every pmr tier, which was reported as "(limit=)".)
                        CapacitySource::Limit
                    } else {
                        CapacitySource::Device
                    },
                }),
                None => {
                    snap.complete &= device::get(kind).is_none();
                    None
                }
            }
        };
    }
    crate::pool::share::for_each_loan(|lender, borrower, bytes| {
        snap.add_loan(Loan {
            lender,
            borrower,
            bytes,
        })
    });
    snap
}

fn dram_figures(stats: TierStats) -> TierFigures {
    let capacity_source = match (budget::limit(), crate::cgroup::memory_limit()) {
        (Some(l), _) if l == stats.capacity => CapacitySource::Limit,
        (_, Some(c)) if c == stats.capacity => CapacitySource::Cgroup,
        _ => CapacitySource::Machine,
    };
    TierFigures {
        kind: Kind::Dram,
        stats,
        peak: budget::peak_held(),
        reserved: dram::segments_mapped().wrapping_add(budget::LARGE_LIVE_BYTES.get()),
        capacity_source,
    }
}

fn os_pid() -> u32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() as u32 }
}

extern "C" {
    /// glibc's (and musl's) basename of `argv[0]`, set before any constructor runs.
    static program_invocation_short_name: *const core::ffi::c_char;
}

fn program_name() -> &'static str {
    // SAFETY: a pointer-sized global of libc; when set, a NUL-terminated string that lives as
    // long as the process.
    unsafe {
        let p = core::ptr::addr_of!(program_invocation_short_name).read();
        if p.is_null() {
            return "?";
        }
        core::ffi::CStr::from_ptr(p).to_str().unwrap_or("?")
    }
}

// ---------------------------------------------------------------------------------------------
// Formats
// ---------------------------------------------------------------------------------------------

/// A byte count in binary units with one decimal: `512 B`, `1.5 KiB`, `7.6 GiB`.
#[derive(Clone, Copy, Debug)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut unit = 0;
        while unit + 1 < UNITS.len() && self.0 >> (10 * (unit + 2)) > 0 {
            unit += 1;
        }
        // Tenths of the unit, rounded to nearest; 1023.96 KiB shows as 1024.0 KiB.
        let scale = 1u128 << (10 * (unit + 1));
        let tenths = (self.0 as u128 * 10 + scale / 2) / scale;
        write!(f, "{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
    }
}

/// The report as text, one line per subject, each starting with `tiermalloc:`.
pub fn write_text<W: Write>(w: &mut W, snap: &Snapshot) -> fmt::Result {
    let when = match snap.event {
        Event::Exit => "at exit",
        Event::Signal => "on signal",
        Event::Request => "on request",
        Event::Live => "live",
    };
    writeln!(
        w,
        "tiermalloc: pid {} ({}): statistics {when}{}",
        snap.pid,
        snap.program(),
        if snap.complete {
            ""
        } else {
            " (a busy tier left out)"
        }
    )?;
    for t in snap.tiers() {
        let s = &t.stats;
        let name = t.kind.name();
        write!(
            w,
            "tiermalloc:   {name:<4} in use {}, peak {}",
            Bytes(s.in_use),
            Bytes(t.peak)
        )?;
        if t.kind == Kind::Dram {
            write!(w, " held for blocks")?;
        }
        write!(w, ", capacity {}", Bytes(s.capacity))?;
        match t.capacity_source {
            CapacitySource::Machine => write!(w, " (physical memory)")?,
            CapacitySource::Cgroup => write!(w, " (cgroup memory limit)")?,
            CapacitySource::Limit => write!(w, " (limit=)")?,
            CapacitySource::Share => write!(w, " (extents held of the pool)")?,
            CapacitySource::Device => {}
        }
        if t.kind != Kind::Dram {
            write!(
                w,
                ", free {}, largest free {}",
                Bytes(s.free_bytes),
                Bytes(s.largest_free)
            )?;
        }
        writeln!(w)?;
        writeln!(
            w,
            "tiermalloc:   {name:<4} reserved {} of address space ({})",
            Bytes(t.reserved),
            if t.kind == Kind::Dram {
                "segments and large blocks mapped, not memory in use"
            } else {
                "the region mapped"
            }
        )?;
        writeln!(
            w,
            "tiermalloc:   {name:<4} {} allocations, {} frees, {} failures, {} spilled in, {} \
             spilled out",
            s.allocations, s.frees, s.failures, s.spilled_in, s.spilled_out
        )?;
        if s.reserved > 0 {
            writeln!(
                w,
                "tiermalloc:   {name:<4} profile reserve {}, {} of it used, {} mapped beyond it",
                Bytes(s.reserved),
                Bytes(s.reserve_used),
                Bytes(s.reserve_miss)
            )?;
        }
        if s.lent != 0 || s.borrowed != 0 {
            writeln!(
                w,
                "tiermalloc:   {name:<4} share of the pool: lent {}, borrowed {}",
                Bytes(s.lent),
                Bytes(s.borrowed)
            )?;
        }
    }
    for l in snap.loans() {
        writeln!(
            w,
            "tiermalloc:   pool: pid {} lent {} to pid {}",
            l.lender,
            Bytes(l.bytes),
            l.borrower
        )?;
    }
    Ok(())
}

/// The report as one JSON object (raw numbers; a newline at the end):
/// `{"pid":..,"program":"..","event":"exit","time_ns":..,"complete":true,"tiers":[{"kind":"dram",
/// "in_use":..,"peak":..,"capacity":..,"capacity_source":"machine","free":..,"largest_free":..,
/// "reserved":..,"allocations":..,"frees":..,"failures":..,"spilled_in":..,"spilled_out":..,
/// "lent":..,"borrowed":..,"profile_reserved":..,"reserve_used":..,"reserve_miss":..}],
/// "loans":[{"lender":PID,"borrower":PID,"bytes":..}]}`. `reserved` is address space;
/// `profile_reserved`, `reserve_used` and `reserve_miss` are the workload profile's reserve
/// (`TIERMALLOC_PROFILE`, DRAM only, 0 without one): bytes reserved at start, handed out from
/// it, and mapped beyond it.
pub fn write_json<W: Write>(w: &mut W, snap: &Snapshot) -> fmt::Result {
    write!(w, "{{\"pid\":{},\"program\":\"", snap.pid)?;
    for c in snap.program().chars() {
        match c {
            '"' => w.write_str("\\\"")?,
            '\\' => w.write_str("\\\\")?,
            c if (c as u32) < 0x20 => write!(w, "\\u{:04x}", c as u32)?,
            c => w.write_char(c)?,
        }
    }
    write!(
        w,
        "\",\"event\":\"{}\",\"time_ns\":{},\"complete\":{},\"tiers\":[",
        snap.event.name(),
        snap.time_ns,
        snap.complete
    )?;
    for (i, t) in snap.tiers().enumerate() {
        let s = &t.stats;
        write!(
            w,
            "{}{{\"kind\":\"{}\",\"in_use\":{},\"peak\":{},\"capacity\":{},\
             \"capacity_source\":\"{}\",\
             \"free\":{},\"largest_free\":{},\"reserved\":{},\"allocations\":{},\"frees\":{},\
             \"failures\":{},\"spilled_in\":{},\"spilled_out\":{},\"lent\":{},\"borrowed\":{},\
             \"profile_reserved\":{},\"reserve_used\":{},\"reserve_miss\":{}}}",
            if i == 0 { "" } else { "," },
            t.kind.name(),
            s.in_use,
            t.peak,
            s.capacity,
            t.capacity_source.name(),
            s.free_bytes,
            s.largest_free,
            t.reserved,
            s.allocations,
            s.frees,
            s.failures,
            s.spilled_in,
            s.spilled_out,
            s.lent,
            s.borrowed,
            s.reserved,
            s.reserve_used,
            s.reserve_miss
        )?;
    }
    write!(w, "],\"loans\":[")?;
    for (i, l) in snap.loans().iter().enumerate() {
        write!(
            w,
            "{}{{\"lender\":{},\"borrower\":{},\"bytes\":{}}}",
            if i == 0 { "" } else { "," },
            l.lender,
            l.borrower,
            l.bytes
        )?;
    }
    writeln!(w, "]}}")
}

// ---------------------------------------------------------------------------------------------
// Destinations
// ---------------------------------------------------------------------------------------------

/// Descriptor 2's device and inode at start (`STDERR_KNOWN` false if it was not open).
static STDERR_DEV: AtomicU64 = AtomicU64::new(0);
static STDERR_INO: AtomicU64 = AtomicU64::new(0);
static STDERR_KNOWN: AtomicBool = AtomicBool::new(false);
/// `TIERMALLOC_STATS_FILE`, `%p` expanded, NUL-terminated; empty when unset. Written once by
/// `init` before `DESTINATION_SET` is published.
static mut STATS_FILE: [u8; MAX_PATH] = [0; MAX_PATH];
static STATS_JSON: AtomicBool = AtomicBool::new(false);
static DESTINATION_SET: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);

fn stderr_identity() -> Option<(u64, u64)> {
    // SAFETY: an all-zero stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: fstat writes into `st`; a closed descriptor gives -1.
    (os::keep_errno(|| unsafe { libc::fstat(2, &mut st) }) == 0)
        .then_some((st.st_dev as u64, st.st_ino as u64))
}

/// Whether descriptor 2 is still the stderr the process started with.
fn stderr_is_original() -> bool {
    STDERR_KNOWN.load(Ordering::Relaxed)
        && stderr_identity()
            == Some((
                STDERR_DEV.load(Ordering::Relaxed),
                STDERR_INO.load(Ordering::Relaxed),
            ))
}

fn stats_file() -> Option<&'static [u8]> {
    if !DESTINATION_SET.load(Ordering::Acquire) {
        return None;
    }
    // SAFETY: written once by `init` before DESTINATION_SET was published (Release).
    let path = unsafe { &*core::ptr::addr_of!(STATS_FILE) };
    (path[0] != 0).then_some(&path[..])
}

/// Reads the report's variables (the library's constructor calls this once, after the
/// configuration was read).
pub fn init() {
    if let Some((dev, ino)) = stderr_identity() {
        STDERR_DEV.store(dev, Ordering::Relaxed);
        STDERR_INO.store(ino, Ordering::Relaxed);
        STDERR_KNOWN.store(true, Ordering::Relaxed);
    }
    let mut problems = config::Stderr;
    if let Some(path) = os::getenv(b"TIERMALLOC_STATS_FILE").filter(|p| !p.is_empty()) {
        set_stats_file(path, &mut problems);
    }
    DESTINATION_SET.store(true, Ordering::Release);
    if let Some(sig) = os::getenv(b"TIERMALLOC_STATS_SIGNAL").filter(|s| !s.is_empty()) {
        set_stats_signal(sig, &mut problems);
    }
    if config::parse_bool(
        "TIERMALLOC_STATS_LIVE",
        os::getenv(b"TIERMALLOC_STATS_LIVE"),
        &mut problems,
    ) {
        live::start(write_live);
    }
}

/// `TIERMALLOC_STATS_FILE` and `TIERMALLOC_STATS_FORMAT` into STATS_FILE and STATS_JSON, before
/// `init` publishes them. Out of line and cold, as `set_stats_signal`: the code every process
/// runs (link/hot_text.ld) holds only the checks of `init`.
#[cold]
#[inline(never)]
fn set_stats_file(path: &[u8], problems: &mut config::Stderr) {
    let mut out = [0u8; MAX_PATH];
    match config::expand_path(path, &mut out) {
        Some(len) => {
            // SAFETY: only `init` writes STATS_FILE, once, before publishing it.
            unsafe { core::ptr::addr_of_mut!(STATS_FILE).write(out) };
            let json = match os::getenv(b"TIERMALLOC_STATS_FORMAT") {
                Some(b"json") => true,
                Some(b"text") => false,
                None | Some(b"") => out[..len].ends_with(b".json"),
                Some(other) => {
                    problems.problem("TIERMALLOC_STATS_FORMAT", other, "expected text or json");
                    out[..len].ends_with(b".json")
                }
            };
            STATS_JSON.store(json, Ordering::Relaxed);
        }
        None => problems.problem(
            "TIERMALLOC_STATS_FILE",
            path,
            "needs a file name shorter than 256 bytes",
        ),
    }
}

/// `TIERMALLOC_STATS_SIGNAL`: the report's signal handler installed (see `set_stats_file`).
#[cold]
#[inline(never)]
fn set_stats_signal(sig: &[u8], problems: &mut config::Stderr) {
    match parse_signal(sig) {
        Some(n) => install_signal(n),
        None => problems.problem(
            "TIERMALLOC_STATS_SIGNAL",
            sig,
            "expected a signal name (USR1, SIGUSR2, ...) or number",
        ),
    }
}

/// The live file's writer (`live::publish`): the JSON report, busy tiers left out.
fn write_live(buf: &mut [u8]) -> usize {
    let snap = take_snapshot(Event::Live, false);
    let mut w = SliceWriter::new(buf);
    let _ = write_json(&mut w, &snap);
    w.len()
}

/// `USR1`, `SIGUSR1`, `10`: a signal a program may take over (not KILL, STOP or SEGV-like).
fn parse_signal(s: &[u8]) -> Option<i32> {
    const NAMES: [(&[u8], i32); 8] = [
        (b"USR1", libc::SIGUSR1),
        (b"USR2", libc::SIGUSR2),
        (b"HUP", libc::SIGHUP),
        (b"INT", libc::SIGINT),
        (b"QUIT", libc::SIGQUIT),
        (b"TERM", libc::SIGTERM),
        (b"WINCH", libc::SIGWINCH),
        (b"PWR", libc::SIGPWR),
    ];
    let name = match s.get(..3) {
        Some(p) if p.eq_ignore_ascii_case(b"SIG") => &s[3..],
        _ => s,
    };
    if let Some(&(_, n)) = NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        return Some(n);
    }
    if !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = config::parse_size(s)?;
    let rt_max = libc::SIGRTMAX() as u64;
    let forbidden = [
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGILL,
    ];
    (n >= 1 && n <= rt_max && !forbidden.contains(&(n as i32))).then_some(n as i32)
}

fn install_signal(sig: i32) {
    extern "C" fn on_signal(_: i32) {
        os::keep_errno(|| {
            write_report(&take_snapshot(Event::Signal, false));
            live::publish();
        });
    }
    SIGNAL.store(sig, Ordering::Relaxed);
    // SAFETY: an all-zero sigaction is valid; we set the handler and flags; sigaction copies it.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(i32) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, core::ptr::null_mut());
    }
}

/// Writes the report to `TIERMALLOC_STATS_FILE` if set, else to stderr if it is still the
/// process's original stderr.
fn write_report(snap: &Snapshot) {
    if let Some(path) = stats_file() {
        // The open's errno, read before `keep_errno` puts the program's back.
        let mut open_errno = 0;
        let fd = os::keep_errno(|| {
            // SAFETY: `path` is NUL-terminated (its buffer keeps a NUL after the name).
            let fd = unsafe {
                libc::open(
                    path.as_ptr().cast(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                    0o644,
                )
            };
            open_errno = os::errno();
            fd
        });
        if fd >= 0 {
            let mut w = FdWriter::new(fd);
            let _ = if STATS_JSON.load(Ordering::Relaxed) {
                write_json(&mut w, snap)
            } else {
                write_text(&mut w, snap)
            };
            w.flush();
            // SAFETY: our descriptor.
            os::keep_errno(|| unsafe { libc::close(fd) });
            return;
        }
        // A file that cannot be opened: the report goes to stderr, with the reason.
        let mut w = FdWriter::new(2);
        let name = path.split(|&b| b == 0).next().unwrap_or(&[]);
        let _ = write!(
            w,
            "tiermalloc: TIERMALLOC_STATS_FILE: cannot open '{}'",
            core::str::from_utf8(name).unwrap_or("(not UTF-8)")
        );
        os::write_errno_text(&mut w, open_errno);
        let _ = writeln!(w, "; report on stderr");
        if stderr_is_original() {
            w.flush();
        }
    }
    if stderr_is_original() {
        let mut w = FdWriter::new(2);
        let _ = write_text(&mut w, snap);
        w.flush();
        // The profile's line takes a lock: not from the signal handler.
        if snap.event == Event::Exit {
            crate::profile::report();
        }
    }
}

/// Prints the text report on stderr now (`tm_print_stats`, `tiermalloc::print_stats`), and
/// the workload profile's line when one is active.
pub fn print_stats() {
    let mut w = FdWriter::new(2);
    let _ = write_text(&mut w, &snapshot());
    w.flush();
    crate::profile::report();
}

/// At exit: the report, if `TIERMALLOC_SHOW_STATS` or `TIERMALLOC_STATS_FILE` asks for it;
/// then the live file is removed.
pub fn at_exit() {
    if config::get().show_stats || stats_file().is_some() {
        write_exit_report();
    }
    live::stop();
}

/// The report at exit, when asked for: out of line and cold (see `set_stats_file`).
#[cold]
#[inline(never)]
fn write_exit_report() {
    write_report(&take_snapshot(Event::Exit, true));
}

/// The JSON report into `buf` (NUL-terminated when it has room); the length the whole report
/// takes without the NUL, as `snprintf` counts.
pub fn json_into(buf: &mut [u8]) -> usize {
    let snap = snapshot();
    let room = buf.len().saturating_sub(1);
    let mut w = SliceWriter::new(&mut buf[..room]);
    let _ = write_json(&mut w, &snap);
    let (len, needed) = (w.len(), w.needed());
    if let Some(nul) = buf.get_mut(len) {
        *nul = 0;
    }
    needed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text<T: fmt::Display>(v: T) -> String {
        format!("{v}")
    }

    #[test]
    fn human_units() {
        assert_eq!(text(Bytes(0)), "0 B");
        assert_eq!(text(Bytes(1023)), "1023 B");
        assert_eq!(text(Bytes(1024)), "1.0 KiB");
        assert_eq!(text(Bytes(1536)), "1.5 KiB");
        assert_eq!(text(Bytes(64 << 20)), "64.0 MiB");
        assert_eq!(text(Bytes(7_600_000_000)), "7.1 GiB");
        assert_eq!(text(Bytes(u64::MAX)), "16.0 EiB");
    }

    fn sample() -> Snapshot {
        let mut s = Snapshot::new(42, "py\"thon", Event::Exit, 7);
        s.tiers[0] = Some(TierFigures {
            kind: Kind::Dram,
            stats: TierStats {
                capacity: 1 << 30,
                in_use: 3 << 20,
                allocations: 10,
                frees: 9,
                ..Default::default()
            },
            peak: 5 << 20,
            reserved: 64 << 20,
            capacity_source: CapacitySource::Cgroup,
        });
        s.tiers[3] = Some(TierFigures {
            kind: Kind::Pmr,
            stats: TierStats {
                capacity: 64 << 20,
                free_bytes: 64 << 20,
                largest_free: 64 << 20,
                ..Default::default()
            },
            peak: 4096,
            reserved: 64 << 20,
            capacity_source: CapacitySource::Device,
        });
        s
    }

    #[test]
    fn text_names_the_process_and_uses_units() {
        let mut out = String::new();
        write_text(&mut out, &sample()).unwrap();
        assert!(
            out.starts_with("tiermalloc: pid 42 (py\"thon): statistics at exit\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "dram in use 3.0 MiB, peak 5.0 MiB held for blocks, capacity 1.0 GiB (cgroup \
                 memory limit)"
            ),
            "{out}"
        );
        assert!(
            out.contains("reserved 64.0 MiB of address space (segments"),
            "{out}"
        );
        assert!(
            out.contains("pmr  in use 0 B, peak 4.0 KiB, capacity 64.0 MiB, free 64.0 MiB"),
            "{out}"
        );
        assert!(out.lines().all(|l| l.starts_with("tiermalloc: ")));
    }

    #[test]
    fn json_has_raw_numbers_and_escapes_the_program_name() {
        let mut out = String::new();
        write_json(&mut out, &sample()).unwrap();
        assert!(
            out.starts_with(
                "{\"pid\":42,\"program\":\"py\\\"thon\",\"event\":\"exit\",\"time_ns\":7,\
                 \"complete\":true,\"tiers\":[{\"kind\":\"dram\",\"in_use\":3145728,\
                 \"peak\":5242880,\"capacity\":1073741824,\"capacity_source\":\"cgroup\""
            ),
            "{out}"
        );
        assert!(out.contains("},{\"kind\":\"pmr\""), "{out}");
        assert!(out.ends_with("]}\n"));
    }

    #[test]
    fn json_into_counts_like_snprintf() {
        // The document holds live figures, which other tests of this binary change between
        // two calls: each call is checked against what it wrote itself, and the count without
        // a buffer against a written one in the first of a few attempts where nothing moved.
        let mut small = [0xffu8; 16];
        let needed = json_into(&mut small);
        assert!(needed > 16);
        assert_eq!(small[15], 0, "a short buffer is cut and terminated");
        let mut big = vec![0xffu8; needed + 4096];
        let written = json_into(&mut big);
        assert_eq!(
            big[written], 0,
            "the count is the length written, without the NUL"
        );
        assert!(!big[..written].contains(&0));
        assert!(big.starts_with(b"{\"pid\":"));
        let agrees = (0..5).any(|_| {
            let counted = json_into(&mut []);
            counted == json_into(&mut big) && big[counted] == 0
        });
        assert!(
            agrees,
            "counting without a buffer never matched a written document"
        );
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal(b"USR1"), Some(libc::SIGUSR1));
        assert_eq!(parse_signal(b"sigusr2"), Some(libc::SIGUSR2));
        assert_eq!(parse_signal(b"10"), Some(10));
        assert_eq!(parse_signal(b"9"), None);
        assert_eq!(parse_signal(b"0"), None);
        assert_eq!(parse_signal(b"KILL"), None);
        assert_eq!(parse_signal(b"999"), None);
    }
}
