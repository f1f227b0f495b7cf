//! Which DRAM mappings are backed by transparent huge pages.
//!
//! A program whose heaps hold many segments walks a large working set; with 4 KiB pages every
//! access to it goes through a TLB the working set does not fit, and every page of it is
//! faulted in one at a time. mimalloc-bench's `lua` (about 80 MiB of small objects and tables
//! grown by doubling): 28 k page faults under small pages against 2-10 k under mimalloc v3,
//! which backs its arenas with huge pages, and 1.11x its time with the same instruction count.
//!
//! - **Segments.** A heap that already holds `SMALL_PAGE_SEGMENTS` segments (a thread walking
//!   32 MiB or more of small blocks; a small program, or one whose memory is spread over
//!   many threads, never gets there and keeps paying only for the pages it touches) gets its
//!   new chunks advised `MADV_HUGEPAGE` and accessible whole: a `PROT_NONE` slice would split
//!   the chunk's mapping and rule out a 2 MiB page over it (the kernel builds one at a fault
//!   only when the whole aligned 2 MiB lies in one mapping with the advice). Such a segment
//!   gives up the guards of its unused slices and of its header's tail (an overflow off its
//!   last page reads zeros instead of faulting); `TIERMALLOC_SECURE=1` keeps them on every
//!   segment. A retained chunk reused by `Segment::create` keeps the state of its first life.
//! - **Large blocks.** The whole 2 MiB pages a large block covers (from its mapping's start,
//!   which is chunk-aligned, to its end rounded down) are advised when it is mapped or grown:
//!   its tail and a block under 2 MiB keep small pages, so the advice makes resident no page
//!   outside the block.
//!
//! Purging part of a huge page (`MADV_DONTNEED` of a slice, a large block's shrink) splits it
//! and gives back just those bytes, so the decay still returns memory as before.

use core::sync::atomic::{AtomicBool, Ordering};

/// The transparent huge page size on x86_64 and arm64 with 4 KiB pages.
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// Segments a heap holds with small pages before its next ones are huge: 32 MiB. Counted per
/// heap, not per process: mimalloc-bench's mstress (`2 100 100`, two threads) maps 8-10
/// chunks in all and would pay for partly used huge pages in peak RSS (38 against 34 MiB
/// counted per process), while lua's one heap holds about 16.
pub(crate) const SMALL_PAGE_SEGMENTS: usize = 8;

/// Cleared when the kernel refused the advice (no transparent huge pages): then no segment is
/// opened whole for nothing, and no large block is advised again.
static KERNEL_TAKES_ADVICE: AtomicBool = AtomicBool::new(true);

fn wanted() -> bool {
    KERNEL_TAKES_ADVICE.load(Ordering::Relaxed) && !crate::dram::fast::guard::secure()
}

/// Whether a new segment of a heap that holds `held` segments should be backed by huge pages.
pub(crate) fn segment_huge(held: usize) -> bool {
    held >= SMALL_PAGE_SEGMENTS && wanted()
}

/// Advises `[base, base + len)` to be backed by huge pages; false (and no further advice)
/// when the kernel refuses.
///
/// # Safety
/// `[base, base + len)` must be part of a private anonymous mapping of ours.
pub(crate) unsafe fn advise(base: *mut u8, len: usize) -> bool {
    // SAFETY: advice on our own mapping (contract); it changes no byte.
    let taken = crate::os::keep_errno(|| unsafe {
        libc::madvise(base.cast(), len, libc::MADV_HUGEPAGE) == 0
    });
    if !taken {
        KERNEL_TAKES_ADVICE.store(false, Ordering::Relaxed);
    }
    taken
}

/// Advises the whole huge pages of a large block's mapping at `h` (chunk-aligned) up to the
/// block's end `end` (bytes from `h`), if it covers one.
///
/// # Safety
/// `[h, h + end)` must be part of a private anonymous mapping of ours.
pub(crate) unsafe fn advise_large(h: usize, end: usize) {
    let whole = end & !(HUGE_PAGE - 1);
    if whole != 0 && wanted() {
        // SAFETY: per the contract.
        unsafe { advise(h as *mut u8, whole) };
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The kernel's transparent huge page mode (`always` or `madvise`), `None` if it has none.
    pub(crate) fn kernel_has_thp() -> Option<&'static str> {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
        ["always", "madvise"].into_iter().find(|m| mode.contains(&format!("[{m}]")))
    }

    /// The mapping holding `addr` in `/proc/self/smaps`: its start, end, and whether it carries
    /// `MADV_HUGEPAGE` (VmFlags `hg`).
    pub(crate) fn mapping_of(addr: usize) -> Option<(usize, usize, bool)> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut found: Option<(usize, usize)> = None;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                    found = (a <= addr && addr < b).then_some((a, b));
                    continue;
                }
            }
            if let (Some((a, b)), Some(flags)) = (found, line.strip_prefix("VmFlags:")) {
                return Some((a, b, flags.split_whitespace().any(|f| f == "hg")));
            }
        }
        None
    }

    #[test]
    fn only_whole_huge_pages_of_a_large_block_are_advised() {
        if kernel_has_thp().is_none() {
            eprintln!("skipped: this kernel has no transparent huge pages");
            return;
        }
        let len = 3 * crate::chunk::CHUNK_SIZE;
        let h = crate::os::map_aligned(len, crate::chunk::CHUNK_SIZE).unwrap().as_ptr() as usize;
        // SAFETY: our fresh mapping.
        unsafe { advise_large(h, HUGE_PAGE - 1) };
        assert!(!mapping_of(h).unwrap().2, "a block under 2 MiB was advised");
        // SAFETY: as above.
        unsafe { advise_large(h, 2 * HUGE_PAGE + 4096) };
        let (start, end, advised) = mapping_of(h).unwrap();
        assert!(advised && start == h && end == h + 2 * HUGE_PAGE, "{start:#x}..{end:#x} {advised}");
        assert!(!mapping_of(h + 2 * HUGE_PAGE).unwrap().2, "the block's tail was advised");
        // SAFETY: ours, unused.
        unsafe { crate::os::unmap(h as *mut u8, len) };
    }
}
