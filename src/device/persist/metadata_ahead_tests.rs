//! A recovery makes a span dense with slabs present in huge pages, and a span with a few slabs
//! only by the groups it needs; the heap it recovers is the same either way.

use crate::config::tier_spec_for_test as spec;
use crate::device::slabs::SPAN_WINDOWS;
use crate::device::DeviceTier;
use std::vec::Vec;
use std::{format, vec};

/// Pages of `[start, start + len)` (ours, page-aligned) resident in host memory.
fn resident_pages(start: usize, len: usize) -> usize {
    let mut present = vec![0u8; len / crate::os::PAGE_SIZE];
    // SAFETY: the range is a mapping of this process; `present` has a byte per page.
    let r = unsafe { libc::mincore(start as *mut libc::c_void, len, present.as_mut_ptr()) };
    assert_eq!(r, 0, "mincore");
    present.iter().filter(|&&b| b & 1 != 0).count()
}

/// The `AnonHugePages` of the mapping holding `address` (`/proc/self/smaps`), in KiB.
fn anon_huge_kib(address: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((from, to)) = first.split_once('-') {
            if let (Ok(from), Ok(to)) = (
                usize::from_str_radix(from, 16),
                usize::from_str_radix(to, 16),
            ) {
                inside = (from..to).contains(&address);
                continue;
            }
        }
        if inside && line.starts_with("AnonHugePages:") {
            return line.split_whitespace().nth(1).unwrap().parse().unwrap();
        }
    }
    panic!("no mapping holds {address:#x}")
}

/// A counter of `/proc/vmstat`.
fn vmstat(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/vmstat").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// A 512 MiB region: its top span (256 MiB) full of slabs, cut from the end of free space
/// down; then one more slab in the window just below, the only slab of the first span. After a
/// reopen, the top span's descriptors and live bits are huge pages, the first span's hold only
/// the page of that one slab's window, and the heap is the one left.
#[test]
fn a_dense_span_gets_huge_pages_and_a_sparse_one_only_its_slabs_pages() {
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.is_empty() || thp.contains("[never]") {
        std::eprintln!(
            "skipped: transparent huge pages are off on this host ({})",
            thp.trim()
        );
        return;
    }
    let path = format!("/dev/shm/tiermalloc-metadata-ahead-{}", std::process::id());
    let tier = DeviceTier::open(&spec(&format!("pmr:path={path},size=512M,create,fresh"))).unwrap();
    let mut blocks: Vec<u64> = Vec::new();
    let offset_of = |tier: &DeviceTier, p: *mut u8| tier.offset_in_region(p).unwrap();
    // 4080-byte blocks: 3 slots of the widest class per slab, each slab a window.
    for _ in 0..3 * SPAN_WINDOWS {
        let p = tier.alloc(4080, 16).unwrap();
        blocks.push(offset_of(&tier, p));
    }
    let lowest = *blocks.iter().min().unwrap();
    assert!(
        lowest >= 256 << 20,
        "the top span holds them all (lowest at {lowest})"
    );
    for _ in 0..3 {
        let p = tier.alloc(16, 16).unwrap();
        blocks.push(offset_of(&tier, p));
    }
    let sparse_slab = *blocks.last().unwrap() / (16 << 10);
    assert_eq!(
        sparse_slab as usize,
        SPAN_WINDOWS - 1,
        "one slab just below the top span"
    );
    drop(tier);

    let fallbacks = vmstat("thp_fault_fallback");
    let tier = DeviceTier::open(&spec(&format!("pmr:path={path}"))).unwrap();
    let fell_back = vmstat("thp_fault_fallback") - fallbacks;
    let [dense_descs, dense_live] = tier.slabs.span_memory(1).unwrap();
    let [sparse_descs, sparse_live] = tier.slabs.span_memory(0).unwrap();
    for (what, (start, len)) in [("descriptors", dense_descs), ("live bits", dense_live)] {
        assert_eq!(
            resident_pages(start, len),
            len / crate::os::PAGE_SIZE,
            "dense span's {what}"
        );
        if fell_back == 0 {
            assert!(
                anon_huge_kib(start) >= 2048,
                "dense span's {what} not in a huge page"
            );
        } else {
            std::eprintln!("no huge page free on this host ({fell_back} fallbacks): not checked");
        }
    }
    for (what, (start, len)) in [("descriptors", sparse_descs), ("live bits", sparse_live)] {
        // The one slab's window: one page of each (its group stops at the span's end).
        let pages = resident_pages(start, len);
        assert!(
            pages <= 1,
            "sparse span's {what}: {pages} pages present, 1 expected"
        );
    }

    let mut recovered = Vec::new();
    let mut cur = None;
    while let Some(p) = tier.next_block(cur) {
        recovered.push(offset_of(&tier, p));
        cur = Some(p);
    }
    blocks.sort_unstable();
    assert_eq!(recovered, blocks);
    // The recovered slabs serve and take back blocks as any other.
    let p = tier.alloc(4080, 16).unwrap();
    tier.free(p).unwrap();
    drop(tier);
    let _ = std::fs::remove_file(&path);
}
