//! Which segments are backed by transparent huge pages.
//!
//! A thread whose heap holds many segments walks a large working set; with 4 KiB pages every
//! access to it goes through a TLB the working set does not fit, and every page of it is
//! faulted in one at a time. mimalloc-bench's `lua` (about 80 MiB of small objects): 28-30 k
//! page faults under small pages against 4-10 k under mimalloc v3, which backs its arenas with
//! huge pages, and 1.11x its time with the same instruction count.
//!
//! A heap that already holds `SMALL_PAGE_SEGMENTS` segments (a thread walking 32 MiB or more
//! of small blocks; a small program, or one whose memory is spread over many threads, never
//! gets there and keeps paying only for the pages it touches) gets its new chunks made present
//! at once on huge pages and accessible whole: a `PROT_NONE` slice would split the chunk's
//! mapping and rule out a 2 MiB page over it. Such a segment gives up the guards of its
//! unused slices and of its header's tail (an overflow off its last page reads zeros instead
//! of faulting); `TIERMALLOC_SECURE=1` keeps them on every segment. A retained chunk reused by
//! `Segment::create` keeps the state of its first life.
//!
//! The chunk is populated (`MADV_POPULATE_WRITE`) under `MADV_HUGEPAGE` and the advice is then
//! taken off (`MADV_NOHUGEPAGE`): the huge pages stay, but khugepaged never collapses a range
//! the decay purged back into a huge page (with the advice left on, its default
//! `max_ptes_none` of 511 fills the purged pages again: rptest's peak RSS went from 32-41 to
//! 67 MiB in one run). Purging part of a huge page (`MADV_DONTNEED` of a slice) splits it and
//! gives back just those bytes; refaults of purged slices get small pages. Not done: the
//! slices of a huge chunk that no page has used yet are resident but not counted as dirty, so
//! the decay leaves them until a page uses them or the segment is released (at most a chunk
//! per segment the heap has not filled).

use core::sync::atomic::{AtomicBool, Ordering};

/// Segments a heap holds with small pages before its next ones are huge: 32 MiB. Counted per
/// heap, not per process: mimalloc-bench's mstress (`2 100 100`, two threads) maps 8-10
/// chunks in all and would pay for partly used huge pages in peak RSS (38 against 34 MiB
/// counted per process), while lua's one heap holds about 16.
///
/// **Off for now (`usize::MAX`)**: with 8, `tests/programs/grow.c 300` (300 MiB of live
/// blocks, every byte written) peaked at 430.7 MiB against 310.7 with small pages, since every
/// new chunk is made present whole while the heap leaves parts of chunks unused (BENCHMARKS.md,
/// "Session 9, after every merge"); lua's gain (CPU 0.93x) does not pay for that. Counting
/// the unused slices, or populating only the slices a page takes, comes first.
pub(crate) const SMALL_PAGE_SEGMENTS: usize = usize::MAX;

/// Cleared when the kernel refused (no transparent huge pages, no `MADV_POPULATE_WRITE`, or
/// no memory): then no segment is opened whole for nothing.
static KERNEL_TAKES_ADVICE: AtomicBool = AtomicBool::new(true);

/// Not under `TIERMALLOC_SECURE=1` (guards kept), nor under a workload profile: its reserve
/// already moves pre-faulted pages into new segments (on huge pages where they pay,
/// `profile::reserve`), and populating a chunk first would fault every page it replaces.
fn wanted() -> bool {
    KERNEL_TAKES_ADVICE.load(Ordering::Relaxed)
        && !crate::dram::fast::guard::secure()
        && !crate::profile::reserve::profiling()
}

/// Whether a new segment of a heap that holds `held` segments should be backed by huge pages.
pub(crate) fn segment_huge(held: usize) -> bool {
    held >= SMALL_PAGE_SEGMENTS && wanted()
}

/// Makes `[base, base + len)` present, on huge pages where the kernel has them, and leaves
/// it advised `MADV_NOHUGEPAGE` (see the module comment); false (and no further tries) when
/// the kernel refuses the advice or the populate (no transparent huge pages, Linux before
/// 5.14, no memory): the range may then be partly present, its bytes still zero.
///
/// # Safety
/// `[base, base + len)` must be a private anonymous mapping of ours whose bytes are dead.
pub(crate) unsafe fn populate_huge(base: *mut u8, len: usize) -> bool {
    const MADV_POPULATE_WRITE: i32 = 23;
    // SAFETY: advice and populating on our own mapping (contract); they change no byte.
    let taken = crate::os::keep_errno(|| unsafe {
        if libc::madvise(base.cast(), len, libc::MADV_HUGEPAGE) != 0 {
            return false;
        }
        let populated = libc::madvise(base.cast(), len, MADV_POPULATE_WRITE) == 0;
        libc::madvise(base.cast(), len, libc::MADV_NOHUGEPAGE);
        populated
    });
    if !taken {
        KERNEL_TAKES_ADVICE.store(false, Ordering::Relaxed);
    }
    taken
}

#[cfg(test)]
pub(crate) mod tests {
    /// The kernel's transparent huge page mode (`always` or `madvise`), `None` if it has none.
    pub(crate) fn kernel_has_thp() -> Option<&'static str> {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
        ["always", "madvise"].into_iter().find(|m| mode.contains(&format!("[{m}]")))
    }

    /// The mapping holding `addr` in `/proc/self/smaps`: its start, end, resident bytes, and
    /// whether it carries `MADV_NOHUGEPAGE` (VmFlags `nh`).
    pub(crate) fn mapping_of(addr: usize) -> Option<(usize, usize, usize, bool)> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut found: Option<(usize, usize)> = None;
        let mut rss = 0;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                    found = (a <= addr && addr < b).then_some((a, b));
                    continue;
                }
            }
            if let (Some(_), Some(kib)) = (found, line.strip_prefix("Rss:")) {
                rss = kib.trim().trim_end_matches("kB").trim().parse::<usize>().ok()? << 10;
            }
            if let (Some((a, b)), Some(flags)) = (found, line.strip_prefix("VmFlags:")) {
                return Some((a, b, rss, flags.split_whitespace().any(|f| f == "nh")));
            }
        }
        None
    }
}
