//! Live statistics: a small shared mapping per process, `/dev/shm/tiermalloc-live.PID`, that
//! holds the process's latest statistics report (JSON) so that `tiermalloc stats PID` reads
//! them without stopping or signalling the process. On only with `TIERMALLOC_STATS_LIVE=1`
//! (`tiermalloc run` sets it); the file is removed at exit (a process killed by a signal
//! leaves it behind, and `tiermalloc stats` says that its process is gone).
//!
//! Who writes it: `tick`, called where DRAM takes or gives back memory for blocks (a 64 KiB
//! page, a large block: never the per-block fast path), rewrites the report when the last one
//! is older than `PERIOD_NS`, plus the statistics signal and the exit. A `tick` that skips
//! (within the period, or another writer at work) leaves a refresh owed (`OWED`), which the
//! refresher thread makes once the period has run out: without it, a program that allocated
//! in a burst and then went idle (a server after loading its data) showed the figures of
//! before the burst for as long as it stayed idle (50 MiB held, "1.7 MiB in use"). With the
//! feature off, `tick` costs one relaxed load and a predictable branch, and there is no thread.
//!
//! Layout (little-endian, `MAP_BYTES` in all): `magic: u64`, `seq: u64`, `len: u64`, `pid: u64`,
//! then `len` bytes of text. `seq` is a sequence lock: odd while the text is being written;
//! a reader copies the text between two equal even reads of it. One writer at a time
//! (`BUSY`); a writer that finds another at work skips its turn.

use crate::os;
use crate::textbuf::SliceWriter;
use core::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};

/// `b"TMLIVE01"` as the file's first eight bytes.
pub const MAGIC: u64 = u64::from_le_bytes(*b"TMLIVE01");
/// Bytes of the mapping; the text gets `MAP_BYTES - HEADER_BYTES`.
pub const MAP_BYTES: usize = 8192;
pub const HEADER_BYTES: usize = 32;
/// The path of a process's file is this prefix followed by its pid.
pub const PATH_PREFIX: &str = "/dev/shm/tiermalloc-live.";
/// Least time between two refreshes from `tick`.
const PERIOD_NS: u64 = 50_000_000;

/// Writes the report into the buffer and returns its length (set by `start`).
pub type Writer = fn(&mut [u8]) -> usize;

static MAP: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
static WRITER: AtomicUsize = AtomicUsize::new(0);
/// When `tick` next refreshes; `u64::MAX` while live statistics are off.
static NEXT_NS: AtomicU64 = AtomicU64::new(u64::MAX);
static BUSY: AtomicBool = AtomicBool::new(false);
/// 1 while a refresh is owed (a `tick` skipped one); the refresher thread sleeps on it at 0.
static OWED: AtomicU32 = AtomicU32::new(0);

/// The process's file name, NUL-terminated, in `buf`; its length without the NUL.
pub fn path_of(pid: u32, buf: &mut [u8; 64]) -> usize {
    let mut w = SliceWriter::new(&mut buf[..63]);
    let _ = core::fmt::Write::write_fmt(&mut w, format_args!("{PATH_PREFIX}{pid}"));
    let len = w.len();
    buf[len] = 0;
    len
}

/// Creates this process's file and publishes a first report (library constructor). Problems are
/// reported in one line; the process runs on.
pub fn start(writer: Writer) {
    WRITER.store(writer as usize, Ordering::Relaxed);
    let mut name = [0u8; 64];
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    path_of(pid, &mut name);
    let map = os::keep_errno(|| {
        // SAFETY: `name` is NUL-terminated; the descriptor is ours and closed below; the new
        // mapping is MAP_BYTES long, as the file is.
        unsafe {
            let fd = libc::open(
                name.as_ptr().cast(),
                libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                0o600,
            );
            if fd < 0 {
                return core::ptr::null_mut();
            }
            let p = if libc::ftruncate(fd, MAP_BYTES as libc::off_t) == 0 {
                libc::mmap(
                    core::ptr::null_mut(),
                    MAP_BYTES,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd,
                    0,
                )
            } else {
                libc::MAP_FAILED
            };
            libc::close(fd);
            if p == libc::MAP_FAILED {
                libc::unlink(name.as_ptr().cast());
                return core::ptr::null_mut();
            }
            p.cast::<u8>()
        }
    });
    if map.is_null() {
        let mut line = os::LineBuf::new();
        let _ = core::fmt::Write::write_fmt(
            &mut line,
            format_args!(
                "tiermalloc: TIERMALLOC_STATS_LIVE: cannot create {PATH_PREFIX}{pid} (errno {}); \
                 no live statistics\n",
                os::errno()
            ),
        );
        line.flush();
        return;
    }
    // SAFETY: a fresh zeroed mapping of MAP_BYTES, 8-aligned (page-aligned).
    unsafe {
        header(map, 3).store(pid as u64, Ordering::Relaxed);
        header(map, 0).store(MAGIC, Ordering::Relaxed);
    }
    MAP.store(map, Ordering::Release);
    publish();
    NEXT_NS.store(os::coarse_now_ns() + PERIOD_NS, Ordering::Relaxed);
    register_fork_handler();
    spawn_refresher();
}

/// Starts the refresher thread (from the constructor, never a malloc path) with every signal
/// blocked, so that no signal meant for the program's threads is delivered to it. One line if
/// it cannot start: the figures then stay as the last `tick` left them while the process idles.
fn spawn_refresher() {
    // SAFETY: sigset_t out-parameters we own; a thread created with a plain function that
    // allocates nothing, detached, never joined.
    unsafe {
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let mut thread: libc::pthread_t = 0;
        let r = libc::pthread_create(
            &mut thread,
            core::ptr::null(),
            refresher,
            core::ptr::null_mut(),
        );
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut());
        if r == 0 {
            libc::pthread_detach(thread);
            return;
        }
        let mut line = os::LineBuf::new();
        let _ = core::fmt::Write::write_str(
            &mut line,
            "tiermalloc: TIERMALLOC_STATS_LIVE: the refresher thread did not start",
        );
        os::write_errno_text(&mut line, r);
        let _ = core::fmt::Write::write_str(&mut line, "; figures refresh only on activity\n");
        line.flush();
    }
}

/// The refresher: sleeps until a refresh is owed, lets the period run out (a burst of skipped
/// ticks makes one refresh), then publishes. Stops publishing once `stop` ran (exit).
extern "C" fn refresher(_: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: a NUL-terminated name of at most 16 bytes, for this thread.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"tiermalloc-live".as_ptr()) };
    let period = libc::timespec {
        tv_sec: 0,
        tv_nsec: PERIOD_NS as libc::c_long,
    };
    loop {
        crate::futex::wait_while_equal(&OWED, 0);
        // SAFETY: `period` is valid; an interrupted sleep just refreshes early.
        unsafe { libc::nanosleep(&period, core::ptr::null_mut()) };
        // Cleared before the report is taken: a tick after this owes another.
        OWED.store(0, Ordering::Relaxed);
        if NEXT_NS.load(Ordering::Relaxed) == u64::MAX {
            continue;
        }
        if !publish() {
            owe();
        }
    }
}

/// Records a refresh owed and wakes the refresher if it was not owed already.
fn owe() {
    if OWED.load(Ordering::Relaxed) == 0 && OWED.swap(1, Ordering::AcqRel) == 0 {
        crate::futex::wake_one(&OWED);
    }
}

/// The header word `i` (0 magic, 1 seq, 2 len, 3 pid).
///
/// # Safety
/// `map` is a live mapping from `start`.
unsafe fn header<'a>(map: *mut u8, i: usize) -> &'a AtomicU64 {
    // SAFETY: the header lies in the mapping, 8-aligned; shared only through atomics.
    unsafe { &*map.cast::<AtomicU64>().add(i) }
}

/// Refreshes the report if live statistics are on and the last one is older than the period.
#[inline]
pub fn tick() {
    let next = NEXT_NS.load(Ordering::Relaxed);
    if next != u64::MAX {
        tick_slow(next);
    }
}

#[cold]
#[inline(never)]
fn tick_slow(next: u64) {
    let now = os::coarse_now_ns();
    if now >= next {
        NEXT_NS.store(now + PERIOD_NS, Ordering::Relaxed);
        if publish() {
            return;
        }
    }
    owe();
}

/// Rewrites the report now; whether it did (not when live statistics are off or another
/// thread is at it).
pub fn publish() -> bool {
    let map = MAP.load(Ordering::Acquire);
    let writer = WRITER.load(Ordering::Relaxed);
    if map.is_null() || writer == 0 || BUSY.swap(true, Ordering::Acquire) {
        return false;
    }
    // SAFETY: WRITER only ever holds a `Writer` stored by `start`.
    let writer: Writer = unsafe { core::mem::transmute::<usize, Writer>(writer) };
    // SAFETY: `map` is live (never unmapped); the text area is ours alone while BUSY.
    unsafe {
        let seq = header(map, 1);
        let s = seq.load(Ordering::Relaxed);
        seq.store(s | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        let text = core::slice::from_raw_parts_mut(map.add(HEADER_BYTES), MAP_BYTES - HEADER_BYTES);
        let len = writer(text);
        header(map, 2).store(len as u64, Ordering::Relaxed);
        seq.store((s | 1) + 1, Ordering::Release);
    }
    BUSY.store(false, Ordering::Release);
    true
}

/// Removes this process's file at exit; the mapping stays (a thread may still be writing).
pub fn stop() {
    NEXT_NS.store(u64::MAX, Ordering::Relaxed);
    let map = MAP.load(Ordering::Acquire);
    if !map.is_null() {
        remove_file(map);
    }
}

/// `stop`'s work for a process that publishes: out of line, so that the exit path every
/// process runs (`link/hot_text.ld` takes `stop`, not this) stays within its window.
#[cold]
#[inline(never)]
fn remove_file(map: *mut u8) {
    // SAFETY: the header of a live mapping.
    let pid = unsafe { header(map, 3) }.load(Ordering::Relaxed) as u32;
    let mut name = [0u8; 64];
    path_of(pid, &mut name);
    // SAFETY: a NUL-terminated name of our own file.
    os::keep_errno(|| unsafe { libc::unlink(name.as_ptr().cast()) });
}

/// A forked child stops publishing: the inherited mapping is the parent's file. It gets a
/// file of its own only if it `exec`s a program that loads the library again: a child that
/// ends with `_exit` (as shells' subshells do) runs no exit hook and would leave its file
/// behind.
fn register_fork_handler() {
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    extern "C" fn in_child() {
        NEXT_NS.store(u64::MAX, Ordering::Relaxed);
        let old = MAP.swap(core::ptr::null_mut(), Ordering::AcqRel);
        BUSY.store(false, Ordering::Relaxed);
        if !old.is_null() {
            // SAFETY: the parent's mapping, of MAP_BYTES; no other thread exists in the child.
            unsafe { libc::munmap(old.cast(), MAP_BYTES) };
        }
    }
    if !REGISTERED.swap(true, Ordering::Relaxed) {
        // SAFETY: a plain function; pthread_atfork has no other preconditions.
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    }
}
