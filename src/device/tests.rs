//! Unit tests of one device tier on a file in `/dev/shm`: headers against host metadata,
//! refused frees, `limit=`, slabs, threads, alignment.

use super::*;
use crate::config::tier_spec_for_test;
use crate::test_rng::Rng;

fn open(name: &str, extra: &str) -> (DeviceTier, String) {
    let path = format!("/dev/shm/tiermalloc-tier-{}-{name}", std::process::id());
    // A key may be given once: `extra`'s size= replaces the default.
    let size = if extra.contains("size=") {
        ""
    } else {
        ",size=4M"
    };
    let text = format!("pmr:path={path},create{size}{extra}");
    (DeviceTier::open(&tier_spec_for_test(&text)).unwrap(), path)
}

#[test]
fn headers_match_host_metadata_and_free_refuses_bad_pointers() {
    let (tier, path) = open("headers", "");
    let p = tier.alloc(1000, 16).unwrap();
    let region = tier.region();
    assert!(p as usize > region.base && (p as usize) < region.base + region.len);
    assert_eq!(p as usize % 16, 0);
    // SAFETY: the header sits right before the block, inside the mapping.
    let header = unsafe { *(p as *const BlockHeader).sub(1) };
    assert_eq!(header.size as usize, tier.usable_size(p).unwrap());
    assert!(header.size >= 1000);
    assert_eq!(
        (header.magic, header.kind, header.state),
        (HEADER_MAGIC, Kind::Pmr as u16, STATE_ALLOCATED)
    );
    // SAFETY: inside the block.
    assert_eq!(
        tier.free(unsafe { p.add(64) }),
        Err(FreeError::NotAllocated)
    );
    assert_eq!(tier.free(p), Ok(()));
    // SAFETY: as above.
    assert_eq!(
        unsafe { (*(p as *const BlockHeader).sub(1)).state },
        STATE_FREE
    );
    assert_eq!(tier.free(p), Err(FreeError::DoubleFree));
    tier.slabs.check_invariants();
    let s = tier.stats();
    assert_eq!((s.allocations, s.frees, s.in_use), (1, 1, 0));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn limit_caps_the_bytes_served() {
    let (tier, path) = open("limit", ",limit=1M");
    let mut blocks = Vec::new();
    while let Some(p) = tier.alloc(100_000, 16) {
        blocks.push(p);
    }
    assert_eq!(blocks.len(), 10, "ten 100 kB blocks fit under 1 MiB");
    assert!(tier.stats().in_use <= 1 << 20);
    for p in blocks {
        tier.free(p).unwrap();
    }
    std::fs::remove_file(path).unwrap();
}

/// Checks the header of live block `p` against the host metadata and the request.
fn check_header(tier: &DeviceTier, p: *mut u8, request: usize) {
    // SAFETY: the header sits right before the block, inside the mapping.
    let header = unsafe { *(p as *const BlockHeader).sub(1) };
    assert_eq!(header.size as usize, tier.usable_size(p).unwrap());
    assert!(header.size as usize >= request.max(1));
    assert_eq!(
        (header.magic, header.state),
        (HEADER_MAGIC, STATE_ALLOCATED)
    );
}

#[test]
fn small_blocks_share_slabs_that_go_back_whole() {
    let (tier, path) = open("slabs", "");
    let capacity = tier.stats().capacity;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut blocks: Vec<(*mut u8, usize, u8)> = Vec::new();
    for i in 0..6000 {
        let size = (rng.next() % 513) as usize;
        let p = tier.alloc(size, 16).unwrap();
        assert_eq!(p as usize % 16, 0);
        check_header(&tier, p, size);
        // SAFETY: the block holds `size` bytes.
        unsafe { p.write_bytes(i as u8, size) };
        blocks.push((p, size, i as u8));
    }
    // in_use counts the live slots (header included), not the free slots of their slabs.
    let in_use: u64 = blocks
        .iter()
        .map(|&(p, _, _)| tier.usable_size(p).unwrap() as u64 + HEADER_SIZE)
        .sum();
    assert_eq!(tier.stats().in_use, in_use);
    let mut sorted: Vec<usize> = blocks.iter().map(|&(p, _, _)| p as usize).collect();
    sorted.sort_unstable();
    for w in sorted.windows(2) {
        let usable = tier.usable_size(w[0] as *mut u8).unwrap();
        assert!(
            w[0] + usable + HEADER_SIZE as usize <= w[1],
            "blocks overlap"
        );
    }
    while !blocks.is_empty() {
        let (p, size, fill) = blocks.swap_remove((rng.next() % blocks.len() as u64) as usize);
        // SAFETY: the block holds `size` bytes, written above.
        let bytes = unsafe { core::slice::from_raw_parts(p, size) };
        assert!(
            bytes.iter().all(|&b| b == fill),
            "a block lost its contents"
        );
        tier.free(p).unwrap();
    }
    tier.slabs.check_invariants();
    let s = tier.stats();
    assert_eq!((s.allocations, s.frees, s.in_use), (6000, 6000, 0));
    assert_eq!(
        s.largest_free,
        capacity - HEADER_SIZE,
        "every slab went back"
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn slab_blocks_refuse_double_and_interior_frees() {
    let (tier, path) = open("slab-bad", "");
    let p = tier.alloc(100, 16).unwrap();
    let q = tier.alloc(100, 16).unwrap();
    // SAFETY: pointers into the blocks (never dereferenced).
    let (inside, past) = unsafe { (p.add(16), q.add(4096)) };
    assert_eq!(tier.free(inside), Err(FreeError::NotAllocated));
    assert_eq!(
        tier.free(past),
        Err(FreeError::DoubleFree),
        "a free slot of the slab"
    );
    assert_eq!(tier.usable_size(inside), None);
    assert_eq!(tier.free(p), Ok(()));
    // SAFETY: the header sits right before the block.
    assert_eq!(
        unsafe { (*(p as *const BlockHeader).sub(1)).state },
        STATE_FREE
    );
    assert_eq!(tier.free(p), Err(FreeError::DoubleFree));
    assert_eq!(tier.usable_size(p), None);
    assert_eq!(tier.free(q), Ok(()));
    // The slab went back to the heap with q: a free of p now meets free space there.
    assert_eq!(tier.free(p), Err(FreeError::DoubleFree));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn threads_share_slabs_and_free_each_others_blocks() {
    let (tier, path) = open("slab-threads", ",size=64M");
    let tier = std::sync::Arc::new(tier);
    let handed: std::sync::Arc<std::sync::Mutex<Vec<(usize, usize, u8)>>> = Default::default();
    let workers: Vec<_> = (0..4u64)
        .map(|t| {
            let (tier, handed) = (tier.clone(), handed.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
                let mut mine: Vec<(usize, usize, u8)> = Vec::new();
                for round in 0..40_000u32 {
                    let check = |(p, size, fill): (usize, usize, u8)| {
                        // SAFETY: a live block of `size` bytes filled with `fill`.
                        let b = unsafe { core::slice::from_raw_parts(p as *const u8, size) };
                        assert!(b.iter().all(|&x| x == fill), "contents changed");
                        tier.free(p as *mut u8).unwrap();
                    };
                    if mine.len() < 300 && rng.next() % 2 == 0 {
                        let size = (rng.next() % 6000) as usize; // slabs and extents
                        let p = tier.alloc(size, 16).unwrap();
                        // SAFETY: the block holds `size` bytes.
                        unsafe { p.write_bytes(round as u8, size) };
                        mine.push((p as usize, size, round as u8));
                    } else if let Some(block) = mine.pop() {
                        if round % 3 == 0 {
                            handed.lock().unwrap().push(block);
                        } else {
                            check(block);
                        }
                    }
                    if round % 64 == 0 {
                        let theirs: Vec<_> = handed.lock().unwrap().drain(..).collect();
                        theirs.into_iter().for_each(check);
                    }
                }
                mine
            })
        })
        .collect();
    let mut left: Vec<_> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    left.extend(handed.lock().unwrap().drain(..));
    for (p, _, _) in left {
        tier.free(p as *mut u8).unwrap();
    }
    tier.slabs.check_invariants();
    let s = tier.stats();
    assert_eq!((s.in_use, s.allocations), (0, s.frees));
    assert_eq!(s.largest_free, s.capacity - HEADER_SIZE);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn alignment_is_honoured() {
    let (tier, path) = open("align", "");
    for align in [16usize, 64, 4096, 1 << 20] {
        let p = tier
            .alloc(100, align)
            .unwrap_or_else(|| panic!("align {align}"));
        assert_eq!(p as usize % align, 0);
        tier.free(p).unwrap();
    }
    std::fs::remove_file(path).unwrap();
}

/// The fields every request and free reads share no cache line with the fields threads write
/// on the heap path (`own_line`): a line that held both moved between the cores of two threads
/// on one tier at each heap cut or give-back of the other thread.
#[test]
fn read_fields_share_no_line_with_heap_path_writes() {
    use core::mem::{align_of, offset_of, size_of};
    assert!(
        align_of::<DeviceTier>() >= 64,
        "offsets / 64 name the lines"
    );
    type HeapLock = crate::futex_mutex::Mutex<ExtentHeap>;
    let line = |offset: usize| offset / 64;
    let span = |offset: usize, size: usize| line(offset)..=line(offset + size - 1);
    let written = [
        span(offset_of!(DeviceTier, heap), size_of::<OwnLine<HeapLock>>()),
        span(
            offset_of!(DeviceTier, allocations),
            size_of::<OwnLine<SharedCounter>>(),
        ),
        span(
            offset_of!(DeviceTier, frees),
            size_of::<OwnLine<SharedCounter>>(),
        ),
        span(
            offset_of!(DeviceTier, slab_memo),
            size_of::<OwnLine<persist::SlabMemo>>(),
        ),
    ];
    let read = [
        (
            "lanes_span",
            offset_of!(DeviceTier, lanes_span),
            size_of::<AtomicU64>(),
        ),
        (
            "live_tail",
            offset_of!(DeviceTier, live_tail),
            size_of::<u64>(),
        ),
        (
            "slot_cache_id",
            offset_of!(DeviceTier, slot_cache_id),
            size_of::<AtomicU64>(),
        ),
        ("limit", offset_of!(DeviceTier, limit), size_of::<u64>()),
        (
            "region",
            offset_of!(DeviceTier, region),
            size_of::<Region>(),
        ),
        ("kind", offset_of!(DeviceTier, kind), size_of::<Kind>()),
        (
            "inherited",
            offset_of!(DeviceTier, inherited),
            size_of::<AtomicBool>(),
        ),
    ];
    for (name, offset, size) in read {
        for l in span(offset, size) {
            assert!(
                !written.iter().any(|w| w.contains(&l)),
                "{name} shares line {l}"
            );
        }
    }
}
