//! Huge pages for a growing heap, without their RSS cost (`src/dram/huge_pages.rs`): a heap
//! that grows with small blocks gets its segments' halves on 2 MiB pages, and resident memory
//! stays within a few MiB of the bytes the program holds, whether it grows with small blocks or
//! with pages of large ones next to halves nothing else fills (`tests/programs/grow.c`, which
//! peaked at 430.7 MiB for 300 MiB held when whole chunks were made present).
//!
//! Each growth runs on a thread of its own and never frees, so the resident bytes at its end
//! are its peak. Both growths are one test, small blocks first: both count the process's
//! resident bytes, and a thread's heap outlives it (the next thread takes it over, with its
//! segments), so the large-block growth run first left the small-block one no fresh half to
//! make huge (0 bytes on huge pages in 3 of 20 runs of the binary under load, when the test
//! threads took a lock in the other order).

use std::alloc::{GlobalAlloc, Layout};
use tiermalloc::TierMalloc;

#[global_allocator]
static GLOBAL: TierMalloc = TierMalloc;

#[path = "support/process_memory.rs"]
#[allow(dead_code)]
mod process_memory;
use process_memory::resident_bytes;

const MIB: usize = 1 << 20;

/// A field of `/proc/self/smaps_rollup` (in bytes) or of `/proc/vmstat` (a count).
fn kernel_figure(file: &str, key: &str) -> usize {
    let text = std::fs::read_to_string(file).unwrap();
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key));
    let value: usize = line.map_or(0, |l| l.split_whitespace().nth(1).unwrap().parse().unwrap());
    if file.ends_with("smaps_rollup") {
        value << 10
    } else {
        value
    }
}

fn huge_page_bytes() -> usize {
    kernel_figure("/proc/self/smaps_rollup", "AnonHugePages:")
}

/// Huge page faults the kernel could not serve with a huge page (fragmented memory).
fn huge_fallbacks() -> usize {
    kernel_figure("/proc/vmstat", "thp_fault_fallback")
}

fn kernel_has_thp() -> bool {
    let mode =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    mode.contains("[always]") || mode.contains("[madvise]")
}

/// Grows a thread by `total` bytes (`grow`) and checks that the process's resident bytes grew
/// by at most `slack` more; returns the growth of its bytes on huge pages.
fn grow_within(total: usize, slack: usize, sizes: impl FnMut() -> usize + Send + 'static) -> usize {
    let (resident, huge) = grow(total, usize::MAX, sizes);
    eprintln!(
        "held {} MiB: resident +{:.1} MiB, on huge pages +{:.1} MiB",
        total / MIB,
        resident as f64 / MIB as f64,
        huge as f64 / MIB as f64
    );
    assert!(
        resident <= total + slack,
        "resident +{resident} bytes for {total} held"
    );
    huge
}

/// Allocates blocks of the sizes `sizes` yields, writing their first `touch` bytes (every byte
/// if fewer), until `total` bytes are held; never frees them. Returns the growth of the
/// process's resident bytes and of its bytes on huge pages.
fn grow(
    total: usize,
    touch: usize,
    mut sizes: impl FnMut() -> usize + Send + 'static,
) -> (usize, usize) {
    std::thread::spawn(move || {
        let (resident, huge) = (resident_bytes(), huge_page_bytes());
        let mut held = 0;
        while held < total {
            let size = sizes();
            // SAFETY: a non-zero layout; every byte written lies inside the block, which is
            // never freed (the thread's growth is what is measured).
            unsafe {
                let p = GLOBAL.alloc(Layout::from_size_align(size, 16).unwrap());
                assert!(!p.is_null());
                p.write_bytes(0x5a, size.min(touch));
            }
            held += size;
        }
        (
            resident_bytes().saturating_sub(resident),
            huge_page_bytes().saturating_sub(huge),
        )
    })
    .join()
    .unwrap()
}

#[test]
fn growths_of_small_blocks_then_of_large_block_pages() {
    a_growth_of_small_blocks_is_on_huge_pages_and_holds_no_more_than_it_uses();
    a_growth_of_large_block_pages_makes_no_unused_half_present();
    a_growth_of_big_blocks_touched_at_their_start_holds_what_it_touches();
}

fn a_growth_of_small_blocks_is_on_huge_pages_and_holds_no_more_than_it_uses() {
    let fallbacks = huge_fallbacks();
    // 1 KiB blocks (a size class of its own, pages of one slice): a lua-like heap of small
    // objects, 96 MiB of them.
    let total = 96 * MIB;
    // The last half is filled only partly: what the heap holds past its blocks is at most a
    // half and a page (measured: +1.2 MiB).
    let huge = grow_within(total, 4 * MIB, || 1024);
    if !kernel_has_thp() {
        eprintln!("skipped the huge page figure: this kernel has no transparent huge pages");
        return;
    }
    if huge < total / 2 && huge_fallbacks() > fallbacks {
        eprintln!("skipped the huge page figure: the kernel had no free huge pages");
        return;
    }
    // Every half past the heap's first 8 segments (32 MiB, `SMALL_PAGE_SEGMENTS`) but the
    // last: measured 68 MiB; with small pages, none.
    assert!(
        huge >= total - 40 * MIB,
        "only {huge} bytes of {total} on huge pages"
    );
}

fn a_growth_of_large_block_pages_makes_no_unused_half_present() {
    // As tests/programs/grow.c: three in four blocks of 64 B-2 KiB, one in four of 256-320 KiB,
    // whose pages (32 slices, 2 MiB) leave the rest of each segment (31 slices) to the small
    // blocks, which fill little of it. Made present whole, every segment held 2 MiB more.
    let mut x: u32 = 12345;
    let sizes = move || {
        x = x.wrapping_mul(1103515245).wrapping_add(12345);
        if (x >> 8) % 4 == 0 {
            (256 << 10) + (x as usize >> 12) % (64 << 10)
        } else {
            64 + (x as usize >> 12) % 2048
        }
    };
    let total = 160 * MIB;
    // Measured: +1.9-3.8 MiB (the part of a block its class rounds up to is never touched);
    // with whole chunks present, 2 MiB more for every segment.
    let huge = grow_within(total, 8 * MIB, sizes);
    assert!(
        huge <= 8 * MIB,
        "{huge} bytes on huge pages: halves the heap does not fill were made huge"
    );
}

fn a_growth_of_big_blocks_touched_at_their_start_holds_what_it_touches() {
    // As `benches/workloads/medium_churn.c`: blocks of 16-64 KiB (big classes, pages of 1-6
    // blocks), of which the program writes the first 64 bytes. The peers fault in the pages
    // written; with big classes' pages making halves huge, every page of every block was
    // resident (medium_churn, one thread: 407 MiB against tcmalloc's 74).
    let mut x: u32 = 54321;
    let sizes = move || {
        x = x.wrapping_mul(1103515245).wrapping_add(12345);
        (16 << 10) + (x as usize >> 8) % (48 << 10)
    };
    let total = 96 * MIB;
    let (resident, huge) = grow(total, 64, sizes);
    eprintln!(
        "held {} MiB of big blocks, 64 bytes written each: resident +{:.1} MiB, on huge \
         pages +{:.1} MiB",
        total / MIB,
        resident as f64 / MIB as f64,
        huge as f64 / MIB as f64
    );
    // About 2 400 blocks: a written OS page each, and their pages' carving (measured: +9.8 MiB;
    // with big classes making halves huge, +104.7 MiB).
    assert!(
        resident <= total / 4,
        "resident +{resident} bytes for {total} held of which 64 bytes a block were written"
    );
}
