//! Which 2 MiB halves of a segment are backed by a transparent huge page.
//!
//! A thread whose heap holds many segments walks a large working set; with 4 KiB pages every
//! access to it goes through a TLB the working set does not fit, and every page of it is
//! faulted in one at a time. mimalloc-bench's `lua` (about 80 MiB of small objects): 28-30 k
//! page faults under small pages against 4-10 k under mimalloc v3, which backs its arenas with
//! huge pages, and 1.11x its time with the same instruction count.
//!
//! Only a half the heap is about to fill is made huge. A segment is two 2 MiB-aligned halves
//! (slices 0..32, whose slice 0 is the header, and 32..64). A half becomes one huge page when
//! a heap that already holds `SMALL_PAGE_SEGMENTS` segments cuts a page of small blocks (at
//! most `HUGE_BLOCK_MAX` bytes a block) from it while nothing of it was ever touched: the
//! second half when such a page is the first cut over it, the first half when such a page
//! needs a new chunk (the header is then written into the huge page). A segment gives a page of
//! small blocks a fresh half only once the free slices before it are taken (`take_page` takes
//! resident slices first, then the lowest run), so such a half is what the heap fills next.
//! Pages of large blocks (a 2 MiB page of 256 KiB blocks next to a half nothing else uses,
//! `tests/programs/grow.c`) never make a half huge, and a half one was cut over first stays on
//! small pages. The half's slices no page has taken yet are counted dirty (free and resident),
//! so the heap takes them first and the decay gives them back if the heap stops growing: what
//! a wrong guess costs is bounded by the decay like any freed page. They are held against
//! DRAM's `limit=` too (`budget`), and a half the limit does not admit stays on small pages. A huge
//! half is open whole: a `PROT_NONE` slice (or the header's guarded tail) would split its mapping
//! and rule out the 2 MiB page. `TIERMALLOC_SECURE=1` keeps the guards on every segment.
//!
//! The half is populated (`MADV_POPULATE_WRITE`) under `MADV_HUGEPAGE` and the advice is then
//! taken off (`MADV_NOHUGEPAGE`): the huge page stays, but khugepaged never collapses a range
//! the decay purged back into a huge page (with the advice left on, its default `max_ptes_none`
//! of 511 fills the purged pages again: rptest's peak RSS went from 32-41 to 67 MiB in one
//! run). Purging part of a huge page (`MADV_DONTNEED` of a slice) splits it and gives back just
//! those bytes; a half purged whole is given back whole.

use core::sync::atomic::{AtomicU8, Ordering};

/// Segments a heap holds with small pages only before it makes halves huge: 32 MiB. Counted
/// per heap, not per process: a small program, or one whose memory is spread over many
/// threads, never gets there and keeps paying only for the pages it touches.
pub(crate) const SMALL_PAGE_SEGMENTS: usize = 8;

/// The largest block whose page's cut may make a half huge: small classes' (a slice's page of at
/// least 8 blocks), not big ones'. A program holding many big blocks may touch a few bytes of
/// each (`medium_churn`: 64 of 16..64 KiB): on huge halves every page of every block was
/// resident (1 thread 407 MiB, tcmalloc 74), and the faults of the halves were most of two
/// threads' time (sys 0.39 s against 0.05).
pub(crate) const HUGE_BLOCK_MAX: usize = crate::dram::fast::size_class::BIG_MIN;

/// Bytes of a huge page, and of a segment's half.
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// Whether the kernel gives huge pages on advice: `UNKNOWN` until first asked
/// (`kernel_takes_advice`), `REFUSED` when its transparent huge pages are off (`never`, or none) or
/// it refused the advice or the populate (no `MADV_POPULATE_WRITE`, no memory): then no half is
/// made present whole for nothing.
static KERNEL: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const TAKES: u8 = 1;
const REFUSED: u8 = 2;

/// Reads the kernel's mode once (`/sys/kernel/mm/transparent_hugepage/enabled`: `always` or
/// `madvise` take the advice; `never`, or no such file, do not).
fn kernel_takes_advice() -> bool {
    match KERNEL.load(Ordering::Relaxed) {
        TAKES => true,
        REFUSED => false,
        _ => kernel_mode_read(),
    }
}

#[cold]
#[inline(never)]
fn kernel_mode_read() -> bool {
    let mut buf = [0u8; 64];
    let len = crate::os::read_file(b"/sys/kernel/mm/transparent_hugepage/enabled\0", &mut buf);
    let mode = &buf[..len.unwrap_or(0)];
    let takes = [&b"[always]"[..], b"[madvise]"]
        .iter()
        .any(|m| mode.windows(m.len()).any(|w| w == *m));
    // A racing `populate_huge` failure wins: it only ever stores `REFUSED`.
    let _ = KERNEL.compare_exchange(
        UNKNOWN,
        if takes { TAKES } else { REFUSED },
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    takes
}

/// Not under `TIERMALLOC_SECURE=1` (guards kept), nor under a workload profile: its reserve
/// already moves pre-faulted pages into new segments (on huge pages where they pay,
/// `profile::reserve`), and populating a half first would fault every page it replaces.
pub(crate) fn wanted() -> bool {
    !crate::dram::fast::guard::secure()
        && !crate::profile::reserve::profiling()
        && kernel_takes_advice()
}

/// Whether a heap holding `held` segments that cuts a page of blocks of `block` bytes over a
/// fresh half should make that half huge.
#[inline]
pub(crate) fn half_huge(held: usize, block: usize) -> bool {
    held >= SMALL_PAGE_SEGMENTS && block <= HUGE_BLOCK_MAX && wanted()
}

/// Makes `[base, base + HUGE_PAGE)` present, on a huge page where the kernel has one, and
/// leaves it advised `MADV_NOHUGEPAGE` (see the module comment); false (and no further tries)
/// when the kernel refuses the advice or the populate (no transparent huge pages, Linux before
/// 5.14, no memory): the range may then be partly present, its bytes still zero.
///
/// # Safety
/// `[base, base + HUGE_PAGE)` must be a private anonymous mapping of ours, readable and
/// writable, whose bytes are dead.
#[cold]
pub(crate) unsafe fn populate_huge(base: *mut u8) -> bool {
    const MADV_POPULATE_WRITE: i32 = 23;
    debug_assert!(base as usize % HUGE_PAGE == 0);
    // SAFETY: advice and populating on our own mapping (contract); they change no byte.
    let taken = crate::os::keep_errno(|| unsafe {
        if libc::madvise(base.cast(), HUGE_PAGE, libc::MADV_HUGEPAGE) != 0 {
            return false;
        }
        let populated = libc::madvise(base.cast(), HUGE_PAGE, MADV_POPULATE_WRITE) == 0;
        libc::madvise(base.cast(), HUGE_PAGE, libc::MADV_NOHUGEPAGE);
        populated
    });
    if !taken {
        KERNEL.store(REFUSED, Ordering::Relaxed);
    }
    taken
}

#[cfg(test)]
pub(crate) mod tests {
    /// The mode read without allocating agrees with the kernel's file.
    #[test]
    fn the_kernel_mode_is_read_as_the_kernel_says() {
        assert_eq!(super::kernel_mode_read(), kernel_has_thp().is_some());
    }

    /// The kernel's transparent huge page mode (`always` or `madvise`), `None` if it has none.
    pub(crate) fn kernel_has_thp() -> Option<&'static str> {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
        ["always", "madvise"]
            .into_iter()
            .find(|m| mode.contains(&format!("[{m}]")))
    }

    /// The mapping holding `addr` in `/proc/self/smaps`: its start, end, resident bytes, bytes
    /// on huge pages, and whether it carries `MADV_NOHUGEPAGE` (VmFlags `nh`).
    pub(crate) fn mapping_of(addr: usize) -> Option<(usize, usize, usize, usize, bool)> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut found: Option<(usize, usize)> = None;
        let (mut rss, mut huge) = (0, 0);
        let kib = |s: &str| {
            s.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .ok()
                .map(|k| k << 10)
        };
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    found = (a <= addr && addr < b).then_some((a, b));
                    continue;
                }
            }
            if let (Some(_), Some(v)) = (found, line.strip_prefix("Rss:")) {
                rss = kib(v)?;
            }
            if let (Some(_), Some(v)) = (found, line.strip_prefix("AnonHugePages:")) {
                huge = kib(v)?;
            }
            if let (Some((a, b)), Some(flags)) = (found, line.strip_prefix("VmFlags:")) {
                return Some((a, b, rss, huge, flags.split_whitespace().any(|f| f == "nh")));
            }
        }
        None
    }
}
