//! The DRAM reserve and the DRAM use a profile records.
//!
//! Owns two things, both process-wide statics:
//! - **the reserve**: one anonymous mapping `[BASE, BASE + LEN)` made at start from the
//!   profile's estimate and filled with resident pages by a helper thread (`populate_thread`):
//!   by `UFFDIO_COPY` (`copy_fill`), which takes no page fault, else `MADV_POPULATE_WRITE`,
//!   whose faults the kernel counts as the process's (`Pages`). When the DRAM
//!   tier maps memory for blocks — a thread heap's segment, a large block's mapping — it still
//!   maps fresh, chunk-aligned address space (the page map owns whole chunks), and then moves
//!   pages from the reserve into the parts about to be touched with one `mremap` each
//!   (page-table entries move; no page is faulted, zeroed or copied). The reserve is
//!   consumed front to back by bumping `NEXT` (one compare-and-swap) and only ever shrinks:
//!   a freed segment or large block goes back to the kernel as any other. A mapping the
//!   reserve cannot fill is a *miss*.
//! - **the DRAM use**: what DRAM holds for blocks (`dram::budget::held`: the pages thread
//!   heaps cut from segments, the usable bytes of large blocks) plus the segments' header
//!   slices, its peak and when it was reached: what a profile records and the next run
//!   reserves. Reserve pages go where that memory is first touched: a segment's header slice
//!   when it is mapped, each slice the first time a page is cut from it (`fill`), a large
//!   block's pages up to its end (its mapping covers whole chunks, the rest is never touched).
//!
//! Invariants: `NEXT <= LEN`, `NEXT % PAGE_SIZE == 0`; `RESERVE_USED + lost == NEXT` where
//! lost counts pieces whose move failed; `NEXT <= POPULATED` while the pre-fault thread runs;
//! `use <= PEAK`. Nothing here allocates; it runs on the slow paths that map memory.

use super::copy_fill::CopyFill;
use super::helper_thread::HelperThread;
use crate::chunk::CHUNK_SIZE;
use crate::futex;
use crate::os;
use crate::stats::SharedCounter;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

static BASE: AtomicUsize = AtomicUsize::new(0);
static LEN: AtomicUsize = AtomicUsize::new(0);
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Bytes reserved at start.
pub(crate) static RESERVED: SharedCounter = SharedCounter::new();
/// Bytes of the reserve handed out for blocks.
pub(crate) static RESERVE_USED: SharedCounter = SharedCounter::new();
/// Bytes mapped from the kernel for blocks while a profile was active because the reserve
/// could not serve them (the estimate fell short by at least this much).
pub(crate) static RESERVE_MISS: SharedCounter = SharedCounter::new();

/// Whether a profile is active (misses are counted, use recorded).
static PROFILING: AtomicBool = AtomicBool::new(false);

/// Whether a profile is active: the reserve then brings pre-faulted pages to new segments.
pub(crate) fn profiling() -> bool {
    PROFILING.load(Ordering::Relaxed)
}
static PEAK: AtomicU64 = AtomicU64::new(0);
/// `os::coarse_now_ns` when the peak was last raised.
static PEAK_AT_NS: AtomicU64 = AtomicU64::new(0);
/// The word of this process's live record (a shared file mapping) that peers read as its
/// peak; null when there is none.
static LIVE_PEAK: AtomicPtr<AtomicU64> = AtomicPtr::new(core::ptr::null_mut());

/// Turns recording on; `live_peak` is the word peers read (or null).
pub(crate) fn start_profiling(live_peak: *mut AtomicU64) {
    LIVE_PEAK.store(live_peak, Ordering::Release);
    PROFILING.store(true, Ordering::Release);
    publish_peak(PEAK.load(Ordering::Relaxed));
}

/// Stops writing the live record (its file is being removed).
pub(crate) fn stop_live() {
    LIVE_PEAK.store(core::ptr::null_mut(), Ordering::Release);
}

/// The peak of DRAM use, and `os::coarse_now_ns` when it was reached.
pub(crate) fn peak() -> (u64, u64) {
    (
        PEAK.load(Ordering::Relaxed),
        PEAK_AT_NS.load(Ordering::Relaxed),
    )
}

/// Bytes from `BASE` the pre-fault thread has populated, or given up on: `take` hands out
/// nothing beyond them while that thread runs, so the thread never populates memory that was
/// handed out, freed and unmapped, whose addresses may by then hold someone else's mapping.
static POPULATED: AtomicUsize = AtomicUsize::new(0);
/// Bumped (then waiters woken) after every store to `POPULATED`: the 32-bit word a waiting
/// `take` sleeps on.
static POPULATED_STEPS: AtomicU32 = AtomicU32::new(0);
/// The process whose thread populates the reserve (a forked child has no such thread: for it
/// the whole reserve is available).
static POPULATER_PID: AtomicU64 = AtomicU64::new(0);
/// The errno that stopped pre-faulting, 0 if none.
pub(crate) static PREFAULT_ERRNO: AtomicUsize = AtomicUsize::new(0);
/// Nanoseconds the pre-fault thread spent populating.
pub(crate) static PREFAULT_NS: AtomicU64 = AtomicU64::new(0);

const PREFAULT_STEP: usize = 8 << 20;
const HUGE_PAGE: usize = 2 << 20;

/// Which pages the pre-fault thread builds the reserve from (`TIERMALLOC_PROFILE_HUGE`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Pages {
    /// The default: small pages the kernel allocates and maps on request, with no fault
    /// (`copy_fill`); where userfaultfd is refused, `Measured`.
    Copied,
    /// Small pages only (`=0`): one fault per 4 KiB page, each counted in the process's
    /// `ru_minflt` (the kernel counts `MADV_POPULATE_WRITE`'s faults as the caller's).
    Small,
    /// Transparent huge pages throughout (`=1`), whatever they cost to build.
    Huge,
    /// `MADV_POPULATE_WRITE` with the first step on small pages, measured; then huge pages
    /// for as long as a step of them costs the thread no more CPU per byte than that small
    /// step did (`keep_huge`), small pages for the rest once one costs more.
    Measured,
}

/// Whether the pre-fault thread goes on with huge pages after a step of them cost `huge_ns`
/// of its CPU for `huge_len` bytes, when the small-page step cost `small_ns` for `small_len`:
/// while huge pages are no dearer per byte. They are usually cheaper (one fault and one
/// 2 MiB clear per huge page); they are dearer when the kernel must compact memory to build
/// them (`defrag=madvise` does it synchronously for an advised range), or on a virtual
/// machine whose host takes back the guest's free 2 MiB blocks (virtio-balloon free page
/// reporting) and must back each huge page again (BENCHMARKS.md, "Filling the reserve without
/// faults").
pub(crate) fn keep_huge(huge_ns: u64, huge_len: usize, small_ns: u64, small_len: usize) -> bool {
    (huge_ns as u128) * (small_len as u128) <= (small_ns as u128) * (huge_len as u128)
}

static PAGES: AtomicU32 = AtomicU32::new(0);
/// How the reserve was filled (a `Pages` as u32): `Measured` where `Copied` was refused.
pub(crate) static FILLED_BY: AtomicU32 = AtomicU32::new(u32::MAX);
/// The errno userfaultfd was refused with (0: it was not).
pub(crate) static COPY_REFUSED_ERRNO: AtomicUsize = AtomicUsize::new(0);

/// What `FILLED_BY` says, for the report.
pub(crate) fn filled_by() -> &'static str {
    match FILLED_BY.load(Ordering::Relaxed) {
        x if x == Pages::Copied as u32 => "UFFDIO_COPY",
        x if x == Pages::Huge as u32 => "MADV_POPULATE_WRITE on huge pages",
        x if x == Pages::Measured as u32 => "MADV_POPULATE_WRITE, huge pages while cheaper",
        x if x == Pages::Small as u32 => "MADV_POPULATE_WRITE on small pages",
        _ => "nothing yet",
    }
}
/// Bytes of the reserve populated with the huge-page advice.
pub(crate) static PREFAULT_HUGE_BYTES: AtomicUsize = AtomicUsize::new(0);
/// The pre-fault thread's minor faults: about one per 4 KiB small page, one per huge page.
pub(crate) static PREFAULT_FAULTS: AtomicU64 = AtomicU64::new(0);
/// CPU nanoseconds per MiB of the measured small step and of the last huge step (0: none).
pub(crate) static SMALL_NS_PER_MIB: AtomicU64 = AtomicU64::new(0);
pub(crate) static HUGE_NS_PER_MIB: AtomicU64 = AtomicU64::new(0);

/// Makes `[base, base + len)` (a fresh anonymous mapping, 2 MiB-aligned) the reserve and
/// starts the thread that pre-faults it with `pages`. Called once, at start. Returns the errno
/// of `pthread_create` if the thread could not start (the reserve is then handed out
/// unpopulated, and the caller says so).
pub(crate) fn install(base: usize, len: usize, pages: Pages) -> Result<(), i32> {
    debug_assert!(len % os::PAGE_SIZE == 0 && base % HUGE_PAGE == 0);
    BASE.store(base, Ordering::Relaxed);
    NEXT.store(0, Ordering::Relaxed);
    POPULATED.store(0, Ordering::Relaxed);
    PAGES.store(pages as u32, Ordering::Relaxed);
    // SAFETY: getpid has no preconditions.
    POPULATER_PID.store(unsafe { libc::getpid() } as u64, Ordering::Relaxed);
    RESERVED.add(len as u64);
    LEN.store(len, Ordering::Release);
    // Started waiting in the constructor before the tiers opened (`helper_thread`), else now.
    if !POPULATER.is_waiting() {
        if let Err(e) = POPULATER.spawn(populate_thread) {
            populated(len);
            return Err(e);
        }
    }
    POPULATER.release();
    Ok(())
}

/// The pre-fault thread (`super::helper_thread`).
pub(crate) static POPULATER: HelperThread = HelperThread::new();

/// Starts the pre-fault thread, waiting (in the constructor, before the tiers open); if it
/// cannot start here, `install` tries again and says why.
pub(crate) fn spawn_early() {
    let _ = POPULATER.spawn(populate_thread);
}

/// The calling thread's minor faults so far.
pub(crate) fn thread_minflt() -> u64 {
    // SAFETY: an all-zero rusage is a valid out-parameter.
    let mut u: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD (Linux 2.6.26) fills `u`.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    u.ru_minflt as u64
}

/// Advice `advice` on `[at, at + n)`, part of the reserve. False if refused.
fn advise(at: usize, n: usize, advice: i32) -> bool {
    // SAFETY: advice on the reserve's pages no one was handed yet; it changes no byte.
    unsafe { libc::madvise(at as *mut _, n, advice) == 0 }
}

extern "C" fn populate_thread(_: *mut libc::c_void) -> *mut libc::c_void {
    if !POPULATER.wait_for_go() {
        return core::ptr::null_mut();
    }
    let (base, len) = region();
    let mut pages = match PAGES.load(Ordering::Relaxed) {
        x if x == Pages::Copied as u32 => Pages::Copied,
        x if x == Pages::Huge as u32 => Pages::Huge,
        x if x == Pages::Measured as u32 => Pages::Measured,
        _ => Pages::Small,
    };
    let mut copier = match pages {
        Pages::Copied => match CopyFill::new() {
            Ok(c) => Some(c),
            Err(e) => {
                COPY_REFUSED_ERRNO.store(e as usize, Ordering::Relaxed);
                pages = Pages::Measured;
                None
            }
        },
        _ => None,
    };
    FILLED_BY.store(pages as u32, Ordering::Relaxed);
    let started = os::coarse_now_ns();
    let faults_before = thread_minflt();
    let mut huge = pages != Pages::Small;
    // The measured small step: (CPU ns, bytes).
    let mut small_step: Option<(u64, usize)> = None;
    let mut done = 0;
    while done < len {
        let n = PREFAULT_STEP.min(len - done);
        let at = base + done;
        if let Some(c) = &copier {
            match c.fill(at, n) {
                Ok(()) => {
                    done += n;
                    populated(done);
                    continue;
                }
                Err(e) => {
                    // Refused for this range (the step is unregistered again, the pages it
                    // did copy stay): this step and the rest are populated instead.
                    COPY_REFUSED_ERRNO.store(e as usize, Ordering::Relaxed);
                    copier = None;
                    pages = Pages::Measured;
                    FILLED_BY.store(pages as u32, Ordering::Relaxed);
                }
            }
        }
        let this_huge = huge && (pages == Pages::Huge || small_step.is_some());
        let cpu = os::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
        // The advice is taken off again once the step is populated: the huge pages stay (a
        // piece later moved out of one maps its small pages), but the DRAM tier's mappings
        // the pieces move into do not carry it, so refaulting a purged range builds no huge
        // page there (nor compacts memory for one).
        let advised = this_huge && advise(at, n, libc::MADV_HUGEPAGE);
        if this_huge && !advised {
            huge = false; // no transparent huge pages in this kernel: small pages throughout
        }
        // SAFETY: populating pages of the reserve no one was handed yet (`take` waits for
        // POPULATED); it changes no byte of them.
        let r = unsafe { libc::madvise(at as *mut _, n, libc::MADV_POPULATE_WRITE) };
        let errno = os::errno();
        if advised {
            advise(at, n, libc::MADV_NOHUGEPAGE);
            PREFAULT_HUGE_BYTES.fetch_add(n, Ordering::Relaxed);
        }
        if r != 0 {
            PREFAULT_ERRNO.store(errno as usize, Ordering::Relaxed);
            break;
        }
        let cost = os::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
            .saturating_sub(cpu)
            .max(1);
        let per_mib = cost * (1 << 20) / n as u64;
        if pages == Pages::Measured {
            match small_step {
                None => {
                    small_step = Some((cost, n));
                    SMALL_NS_PER_MIB.store(per_mib, Ordering::Relaxed);
                }
                Some((small_ns, small_len)) if advised => {
                    HUGE_NS_PER_MIB.store(per_mib, Ordering::Relaxed);
                    huge = keep_huge(cost, n, small_ns, small_len);
                }
                Some(_) => {}
            }
        }
        done += n;
        populated(done);
    }
    drop(copier);
    PREFAULT_FAULTS.store(thread_minflt() - faults_before, Ordering::Relaxed);
    PREFAULT_NS.store(os::coarse_now_ns() - started, Ordering::Relaxed);
    populated(len);
    core::ptr::null_mut()
}

/// Publishes that the reserve is populated (or given up on) up to `upto` and wakes `take`s
/// waiting for it.
fn populated(upto: usize) {
    POPULATED.store(upto, Ordering::Release);
    POPULATED_STEPS.fetch_add(1, Ordering::Release);
    futex::wake_all(&POPULATED_STEPS);
}

/// The reserve as installed: (base, len).
pub(crate) fn region() -> (usize, usize) {
    (BASE.load(Ordering::Relaxed), LEN.load(Ordering::Acquire))
}

/// Takes `len` bytes (a page multiple) from the reserve, if it has them, waiting for the
/// pre-fault thread to get past them. The wait sleeps in the kernel: a `sched_yield` loop
/// never lets a pre-fault thread of lower priority run on the waiter's CPU (a SCHED_FIFO
/// program whose thread raised its priority after start), so it would spin for good.
fn take(len: usize) -> Option<usize> {
    let total = LEN.load(Ordering::Acquire);
    if total == 0 {
        return None;
    }
    let mut next = NEXT.load(Ordering::Relaxed);
    loop {
        if total - next < len {
            return None;
        }
        // Read before POPULATED: a step published after this read changes the word, so the
        // sleep below returns at once instead of missing it.
        let steps = POPULATED_STEPS.load(Ordering::Acquire);
        if next + len > POPULATED.load(Ordering::Acquire) {
            // SAFETY: getpid has no preconditions.
            if unsafe { libc::getpid() } as u64 == POPULATER_PID.load(Ordering::Relaxed) {
                futex::wait_while_equal(&POPULATED_STEPS, steps);
                next = NEXT.load(Ordering::Relaxed);
                continue;
            }
        }
        match NEXT.compare_exchange_weak(next, next + len, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(BASE.load(Ordering::Relaxed) + next),
            Err(seen) => next = seen,
        }
    }
}

/// A fresh mapping of `map_len` bytes (a multiple of `CHUNK_SIZE`) at a chunk-aligned
/// address, zeroed, whose first `touched` bytes are the reserve's pre-faulted pages when it
/// has them.
pub(crate) fn map_chunks(map_len: usize, touched: usize) -> Option<NonNull<u8>> {
    debug_assert!(map_len % CHUNK_SIZE == 0 && touched <= map_len);
    let fresh = os::map_aligned(map_len, CHUNK_SIZE)?;
    // SAFETY: the first `touched` bytes of our fresh mapping, untouched.
    unsafe {
        fill(
            fresh.as_ptr() as usize,
            touched.next_multiple_of(os::PAGE_SIZE),
        )
    };
    Some(fresh)
}

/// Replaces the pages of `[at, at + len)` (page-aligned) by pre-faulted pages of the reserve,
/// when a profile is active and the reserve has them; counts a use or a miss.
///
/// # Safety
/// `[at, at + len)` must be part of an anonymous mapping of ours whose bytes there are dead
/// (never written, or free).
pub(crate) unsafe fn fill(at: usize, len: usize) {
    if len == 0 || !PROFILING.load(Ordering::Relaxed) {
        return;
    }
    match take(len) {
        // SAFETY: `[src, src + len)` is the reserve's, ours alone once taken; the target's
        // bytes are dead (contract); the move replaces them with zeroed resident pages.
        Some(src) if unsafe { os::remap_to(src as *mut u8, len, at as *mut u8, len) } => {
            RESERVE_USED.add(len as u64)
        }
        _ => RESERVE_MISS.add(len as u64),
    }
}

/// Bytes of live segments' header slices (their other slices are counted as pages).
static SEGMENT_HEADERS: AtomicU64 = AtomicU64::new(0);

/// A thread heap mapped a segment whose header takes `header` bytes.
pub(crate) fn note_segment_created(header: usize) {
    SEGMENT_HEADERS.fetch_add(header as u64, Ordering::Relaxed);
    observe(0);
}

/// A thread heap unmapped a segment whose header took `header` bytes.
pub(crate) fn note_segment_released(header: usize) {
    SEGMENT_HEADERS.fetch_sub(header as u64, Ordering::Relaxed);
}

/// What DRAM holds for blocks, as the DRAM tier last reported it (`observe`).
static HELD: AtomicU64 = AtomicU64::new(0);

/// Raises the peak to the current use if it is higher: the DRAM tier calls it with what it
/// holds for blocks (`dram::budget::held`) when that grew (a page was cut, a large block
/// started or grew); 0 keeps the last figure.
pub(crate) fn observe(held: u64) {
    if held != 0 {
        HELD.store(held, Ordering::Relaxed);
    }
    let now = SEGMENT_HEADERS.load(Ordering::Relaxed) + HELD.load(Ordering::Relaxed);
    if now > PEAK.load(Ordering::Relaxed) && PEAK.fetch_max(now, Ordering::Relaxed) < now {
        PEAK_AT_NS.store(os::coarse_now_ns(), Ordering::Relaxed);
        publish_peak(now);
    }
}

fn publish_peak(peak: u64) {
    let word = LIVE_PEAK.load(Ordering::Acquire);
    if !word.is_null() {
        // SAFETY: the live record, once mapped, stays mapped for the process's life.
        unsafe { (*word).fetch_max(peak, Ordering::Relaxed) };
    }
}

#[cfg(test)]
mod tests {
    use super::keep_huge;

    #[test]
    fn huge_pages_are_kept_while_no_dearer_per_byte_than_small_ones() {
        // The same cost per byte, and cheaper: kept.
        assert!(keep_huge(100, 8 << 20, 100, 8 << 20));
        assert!(keep_huge(40, 8 << 20, 250, 8 << 20));
        // Per byte, not per step: half the bytes for 60% of the cost is dearer.
        assert!(!keep_huge(60, 4 << 20, 100, 8 << 20));
        // A host backing each huge page again (BENCHMARKS.md): 1 460 against 250 us per MiB.
        assert!(!keep_huge(1460, 1 << 20, 250, 1 << 20));
        // No overflow at the sizes seen (seconds of CPU, a whole reserve).
        assert!(!keep_huge(u64::MAX, usize::MAX, u64::MAX - 1, usize::MAX));
    }
}
