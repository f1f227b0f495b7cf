//! The extent cache on a tier (`extent_cache`): a freed block of 4 KiB and more comes back to
//! the next request of its size without the heap lock, a second free of it is refused, it is
//! no live block while it waits (usable size, iteration, statistics), and a tier whose room
//! the lanes hold still serves a request that needs it.

use super::*;
use crate::config::tier_spec_for_test;
use slabs::Lane;
use std::sync::mpsc;
use std::time::Duration;

fn open(name: &str, extra: &str) -> DeviceTier {
    let path = format!("/dev/shm/tiermalloc-tier-{}-{name}", std::process::id());
    let spec = tier_spec_for_test(&format!("pmr:path={path},create,fresh{extra}"));
    let tier = DeviceTier::open(&spec).unwrap();
    let _ = std::fs::remove_file(&path);
    tier
}

/// A block freed in a lane comes back to the lane's next request of that size while another
/// thread holds the heap lock; a request from another lane waits for the heap.
#[test]
fn a_freed_block_comes_back_without_the_heap_lock() {
    let tier = open("cache-nolock", ",size=16M");
    Lane::set_for_this_thread(Lane(0));
    let p = tier.alloc(20_000, 16).unwrap() as usize;
    tier.free(p as *mut u8).unwrap();
    let heap = tier.heap.lock();
    std::thread::scope(|s| {
        let tier = &tier;
        let alloc_in = |lane: u8| {
            let (tx, rx) = mpsc::channel();
            s.spawn(move || {
                Lane::set_for_this_thread(Lane(lane));
                tx.send(tier.alloc(20_000 - 100, 16).map(|q| q as usize))
                    .unwrap();
            });
            rx
        };
        let hit = alloc_in(0).recv_timeout(Duration::from_secs(10));
        assert_eq!(
            hit,
            Ok(Some(p)),
            "the freed block, from lane 0, without the heap"
        );
        let miss = alloc_in(1);
        assert!(
            miss.recv_timeout(Duration::from_millis(300)).is_err(),
            "lane 1 needs the heap"
        );
        drop(heap);
        assert!(miss
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .is_some());
    });
}

/// The header a hit writes is the block's, and says "allocated"; a second free of a cached
/// block is refused, as is a pointer into it; usable size, iteration and statistics see no
/// live block while it waits.
#[test]
fn a_cached_block_is_no_live_block() {
    let tier = open("cache-dead", ",size=16M");
    let keep = tier.alloc(100, 16).unwrap();
    let p = tier.alloc(9000, 16).unwrap();
    let before = tier.stats();
    tier.free(p).unwrap();
    assert_eq!(tier.free(p), Err(FreeError::DoubleFree));
    // SAFETY: a pointer into the region (not a block start).
    assert_eq!(
        tier.free(unsafe { p.add(16) }),
        Err(FreeError::NotAllocated)
    );
    assert_eq!(tier.usable_size(p), None);
    assert!(!tier.resize_in_place(p, 12_000));
    // Blocks are cut from the end: the cached block lies before the slab of `keep`.
    assert!(p < keep);
    assert_eq!(
        tier.next_block(None),
        Some(keep),
        "the cached block is skipped"
    );
    // The header says "free" (its size unchanged, for a recovery scan).
    let header = |p: *mut u8| {
        // SAFETY: the header lies in the mapped region, before the block.
        unsafe { core::ptr::read_volatile(p.sub(HEADER_SIZE as usize) as *const BlockHeader) }
    };
    assert_eq!(header(p).state, STATE_FREE);
    let size = header(p).size;
    let q = tier.alloc(8990, 16).unwrap();
    assert_eq!(q, p, "a hit");
    assert_eq!((header(q).state, header(q).size), (STATE_ALLOCATED, size));
    assert_eq!(tier.usable_size(q), Some(size as usize));
    assert_eq!(tier.next_block(None), Some(q));
    tier.free(q).unwrap();
    let s = tier.stats();
    assert_eq!(s.frees, before.frees + 2);
    assert_eq!(s.allocations, before.allocations + 1);
    // The statistics give the cached block back to the heap: free space, merged.
    assert_eq!(s.in_use, before.in_use - (size + HEADER_SIZE));
    tier.free(keep).unwrap();
    let s = tier.stats();
    assert_eq!(s.in_use, 0);
    assert_eq!(s.largest_free, s.capacity - HEADER_SIZE);
}

/// An inherited tier (a forked child without a private copy) writes nothing to the device
/// when a cached-size block is freed: the lanes, whose free writes the state without asking,
/// are off; a second free is still refused, and the fit cannot turn them on again.
#[test]
fn an_inherited_tiers_free_writes_nothing() {
    let tier = open("cache-inherited", ",size=16M");
    let p = tier.alloc(20_000, 16).unwrap();
    let q = tier.alloc(20_000, 16).unwrap();
    let r = tier.alloc(20_000, 16).unwrap();
    tier.free(q).unwrap();
    let state = |p: *mut u8| {
        // SAFETY: the header lies in the mapped region, before the block.
        unsafe { core::ptr::read_volatile(p.sub(HEADER_SIZE as usize) as *const BlockHeader) }.state
    };
    assert_eq!((state(p), state(q)), (STATE_ALLOCATED, STATE_FREE));
    tier.become_inherited();
    tier.free(p).unwrap();
    assert_eq!(
        state(p),
        STATE_ALLOCATED,
        "the inherited block's header is the parent's"
    );
    tier.set_fit(Fit::Best);
    tier.free(r).unwrap();
    assert_eq!(
        state(r),
        STATE_ALLOCATED,
        "the fit turned the lanes on again"
    );
    assert_eq!(
        tier.free(p),
        Err(FreeError::DoubleFree),
        "the heap's, refused"
    );
    assert_eq!(
        tier.free(q),
        Err(FreeError::DoubleFree),
        "one waiting in a lane"
    );
    assert_eq!(
        tier.alloc(20_000, 16),
        None,
        "an inherited tier serves no block"
    );
}

/// A tier whose free room sits in the lanes still serves a request for all of it.
#[test]
fn a_full_tier_takes_back_what_the_lanes_hold() {
    let tier = open("cache-full", ",size=1M");
    let mut blocks = Vec::new();
    while let Some(p) = tier.alloc(5000, 16) {
        blocks.push(p);
    }
    assert!(blocks.len() > 100);
    for p in blocks.drain(..) {
        tier.free(p).unwrap();
    }
    let s = tier.stats();
    assert_eq!(s.in_use, 0);
    // The largest block there is: every freed extent back in the heap, merged.
    let big = tier.alloc(s.largest_free as usize, 16);
    assert!(big.is_some(), "{s:?}");
    tier.free(big.unwrap()).unwrap();
    // Again with the blocks still cached (no statistics in between).
    while let Some(p) = tier.alloc(5000, 16) {
        blocks.push(p);
    }
    for p in blocks.drain(..) {
        tier.free(p).unwrap();
    }
    assert!(tier.alloc(s.largest_free as usize, 16).is_some());
}

/// Two threads allocating and freeing blocks of 4 KiB and more on one tier, freeing each
/// other's too: no block is handed out twice, contents stay intact, the counts are exact.
#[test]
fn threads_share_cached_blocks() {
    let tier = open("cache-threads", ",size=64M");
    // Bounded: a handing thread waits for this one rather than filling the tier.
    let (tx, rx) = mpsc::sync_channel::<usize>(16);
    std::thread::scope(|s| {
        for t in 0..2u8 {
            let tier = &tier;
            let tx = tx.clone();
            s.spawn(move || {
                let mut live: Vec<(usize, usize)> = Vec::new();
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t as u64;
                for i in 0..20_000usize {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if live.len() < 50 || x % 3 != 0 {
                        let size = 4096 + (x >> 20) as usize % 60_000;
                        let p = tier.alloc(size, 16).unwrap() as usize;
                        // SAFETY: a live block of `size` bytes.
                        unsafe { (p as *mut u8).write_bytes(t ^ i as u8, 64) };
                        live.push((p, i));
                    }
                    if live.len() > 40 {
                        let (p, i) = live.swap_remove((x >> 40) as usize % live.len());
                        // SAFETY: the block's first bytes, written above.
                        let b = unsafe { core::slice::from_raw_parts(p as *const u8, 64) };
                        assert!(b.iter().all(|&v| v == t ^ i as u8), "contents changed");
                        if i % 2 == 0 {
                            tier.free(p as *mut u8).unwrap();
                        } else {
                            tx.send(p).unwrap();
                        }
                    }
                }
                for (p, _) in live {
                    tier.free(p as *mut u8).unwrap();
                }
            });
        }
        drop(tx);
        // This thread frees the blocks the others hand over.
        for p in rx {
            tier.free(p as *mut u8).unwrap();
        }
    });
    let s = tier.stats();
    assert_eq!(s.allocations, s.frees);
    assert_eq!(s.in_use, 0);
    assert_eq!(s.largest_free, s.capacity - HEADER_SIZE);
}

/// Worst fit takes the largest hole, so the lanes are off under it: turning it on gives their
/// extents back to the heap, and a block allocated while they were on is still freed exactly
/// once (its table entry forgotten), a second free refused.
#[test]
fn worst_fit_turns_the_lanes_off() {
    let tier = open("cache-worst", ",size=16M");
    let a = tier.alloc(9000, 16).unwrap();
    let b = tier.alloc(9000, 16).unwrap();
    tier.free(a).unwrap();
    tier.set_fit(Fit::Worst);
    assert_eq!(
        tier.cache.as_ref().unwrap().cached_bytes(),
        0,
        "the lanes were emptied"
    );
    // Shorter than `a`'s hole: worst fit cuts it from the largest one, the space in front.
    let c = tier.alloc(5000, 16).unwrap() as usize;
    let in_a = (a as usize..a as usize + 9000).contains(&c);
    assert!(!in_a, "worst fit took the cached block's hole");
    let c = c as *mut u8;
    tier.free(b).unwrap();
    assert_eq!(tier.free(b), Err(FreeError::DoubleFree));
    assert_eq!(tier.usable_size(b), None);
    tier.free(c).unwrap();
    tier.set_fit(Fit::Best);
    let s = tier.stats();
    assert_eq!(s.in_use, 0);
    assert_eq!(s.largest_free, s.capacity - HEADER_SIZE);
}
