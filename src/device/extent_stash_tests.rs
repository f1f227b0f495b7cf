//! The per-thread extent stashes (`extent_stash`) on a tier that enables them: a freed block of
//! 4 KiB and more comes back to the thread that freed it with no lock taken (neither a lane's
//! nor the heap's), a second free is refused, other threads' stashed extents are idle in the
//! statistics and go back to the heap when their threads exit, a tier has at most `STASHES`
//! stashes, and a full tier takes back the asking thread's own.

use super::*;
use crate::config::tier_spec_for_test;
use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

/// A tier with the caches on, leaked (the caches' contract: it never moves). Its file is
/// removed at once (the mapping stays), so a failing test leaves nothing in `/dev/shm`.
fn open(name: &str, size: &str) -> &'static DeviceTier {
    let path = format!(
        "/dev/shm/tiermalloc-tier-{}-stash-{name}",
        std::process::id()
    );
    let spec = tier_spec_for_test(&format!("pmr:path={path},create,fresh,size={size}"));
    let tier: &'static DeviceTier = Box::leak(Box::new(DeviceTier::open(&spec).unwrap()));
    // SAFETY: leaked: never moved, never dropped.
    unsafe { tier.enable_slot_cache() };
    std::fs::remove_file(&path).unwrap();
    tier
}

fn cache(tier: &DeviceTier) -> &ExtentCache {
    tier.cache.as_ref().unwrap()
}

fn all_free(tier: &DeviceTier) -> bool {
    let s = tier.stats();
    s.in_use == 0 && s.largest_free == s.capacity - HEADER_SIZE
}

/// The worker's free and request both finish while this thread holds every lane's lock and
/// the heap's: the stash takes none.
#[test]
fn a_freed_extent_comes_back_from_the_stash_without_a_lock() {
    let tier = open("nolock", "16M");
    let (ready, go) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let wait = Arc::new(Barrier::new(2));
    let (tx, rx) = mpsc::channel();
    let worker = {
        let (ready, go, wait) = (ready.clone(), go.clone(), wait.clone());
        std::thread::spawn(move || {
            // The first free claims the stash (its slow path may lock); the block is the
            // stash's from then on.
            let first = tier.alloc(20_000, 16).unwrap();
            tier.free(first).unwrap();
            let p = tier.alloc(20_000, 16).unwrap();
            assert_eq!(p, first, "the stashed block");
            ready.wait();
            go.wait();
            tier.free(p).unwrap();
            let refused = tier.free(p);
            let q = tier.alloc(20_000 - 100, 16).map(|q| q as usize);
            tx.send((p as usize, refused, q)).unwrap();
            wait.wait();
            let q = q.unwrap() as *mut u8;
            assert_eq!(tier.usable_size(q), Some(20_000));
            tier.free(q).unwrap();
            assert_eq!(tier.own_stash_bytes(), 20_016);
            assert_eq!(cache(tier).cached_bytes(), 0, "no lane holds it");
        })
    };
    ready.wait();
    cache(tier).lock_all();
    let heap = tier.heap.lock();
    go.wait();
    let got = rx.recv_timeout(Duration::from_secs(10));
    drop(heap);
    cache(tier).unlock_all();
    let (p, refused, q) = got.expect("the stash needs no lock");
    assert_eq!(refused, Err(FreeError::DoubleFree));
    assert_eq!(q, Some(p), "the freed block, from the stash");
    wait.wait();
    worker.join().unwrap();
    assert!(all_free(tier), "the exiting thread gave its stash back");
}

#[test]
fn other_threads_stashed_extents_are_idle_and_go_back_when_they_exit() {
    let tier = open("exit", "16M");
    const BLOCKS: usize = 12;
    let (stashed, counted) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let worker = {
        let (stashed, counted) = (stashed.clone(), counted.clone());
        std::thread::spawn(move || {
            let blocks: Vec<usize> = (0..BLOCKS)
                .map(|i| tier.alloc(5000 + i * 3000, 16).unwrap() as usize)
                .collect();
            for &p in &blocks {
                tier.free(p as *mut u8).unwrap();
            }
            let stashed_bytes = tier.own_stash_bytes();
            stashed.wait();
            counted.wait();
            (blocks, stashed_bytes)
        })
    };
    stashed.wait();
    let s = tier.stats();
    assert_eq!(
        (s.in_use, s.allocations, s.frees),
        (0, BLOCKS as u64, BLOCKS as u64)
    );
    assert_eq!(tier.next_block(None), None, "a stashed extent is no block");
    let held = tier.heap.lock().stats().in_use - SUPERBLOCK_BYTES;
    assert!(
        held > 0,
        "the worker's stash holds extents allocated in the heap"
    );
    assert_eq!(cache(tier).cached_bytes(), 0, "in no lane");
    counted.wait();
    let (blocks, stashed_bytes) = worker.join().unwrap();
    assert_eq!(
        stashed_bytes, held,
        "the heap holds exactly the stashed bytes"
    );
    assert!(all_free(tier), "the exiting thread gave its stash back");
    let s = tier.stats();
    assert_eq!((s.allocations, s.frees), (BLOCKS as u64, BLOCKS as u64));
    assert!(tier.free(blocks[0] as *mut u8).is_err(), "freed already");
    // The stash is let go: the tier has room for as many as before.
    for _ in 0..extent_cache::STASHES {
        assert!(cache(tier).claim_stash());
    }
    assert!(!cache(tier).claim_stash());
    for _ in 0..extent_cache::STASHES {
        cache(tier).release_stash();
    }
}

/// `STASHES` threads get stashes; one more uses the lanes.
#[test]
fn a_tier_has_at_most_stashes_stashes() {
    let tier = open("bound", "16M");
    let threads = extent_cache::STASHES + 1;
    let (freed, counted) = (
        Arc::new(Barrier::new(threads + 1)),
        Arc::new(Barrier::new(threads + 1)),
    );
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (freed, counted) = (freed.clone(), counted.clone());
            std::thread::spawn(move || {
                let p = tier.alloc(8000, 16).unwrap();
                tier.free(p).unwrap();
                let stashed = tier.own_stash_bytes() > 0;
                freed.wait();
                counted.wait();
                stashed
            })
        })
        .collect();
    freed.wait();
    assert_eq!(cache(tier).cached_bytes(), 8016, "one block in a lane");
    assert_eq!(tier.stats().in_use, 0);
    counted.wait();
    let stashed = workers
        .into_iter()
        .filter_map(|w| w.join().unwrap().then_some(()))
        .count();
    assert_eq!(stashed, extent_cache::STASHES);
    assert!(all_free(tier));
}

/// A tier full but for two adjacent extents in this thread's stash serves a request that
/// needs them merged: the stash goes back to the heap first.
#[test]
fn a_full_tier_takes_back_the_asking_threads_stash() {
    let tier = open("full", "4M");
    std::thread::spawn(move || {
        let mut blocks = Vec::new();
        while let Some(p) = tier.alloc(32 << 10, 16) {
            blocks.push(p as usize);
        }
        blocks.sort_unstable();
        let (a, b) = (blocks[4], blocks[5]);
        assert_eq!(b - a, (32 << 10) + HEADER_SIZE as usize, "adjacent");
        tier.free(a as *mut u8).unwrap();
        tier.free(b as *mut u8).unwrap();
        assert!(tier.own_stash_bytes() > 0, "both in the stash");
        let p = tier.alloc(60 << 10, 16).expect("the stash merged back");
        assert!((a..=b).contains(&(p as usize)), "cut from the two merged");
        tier.free(p).unwrap();
        for &q in blocks.iter().filter(|&&q| q != a && q != b) {
            tier.free(q as *mut u8).unwrap();
        }
    })
    .join()
    .unwrap();
    assert!(all_free(tier));
}

/// Two threads with stashes free the same cached-size blocks at once, in step (both wait for
/// the other before each free, so that many pairs of frees overlap): exactly one free of each
/// block wins (the live bit's `fetch_and`), the other is refused as a double free, and every
/// block comes back once (the counts stay exact, the tier ends empty).
#[test]
fn racing_frees_of_one_block_are_one_free_and_one_double_free() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const BLOCKS: usize = 2000;
    let tier = open("race", "64M");
    let blocks: Arc<Vec<usize>> = Arc::new(
        (0..BLOCKS)
            .map(|i| tier.alloc(4096 + 16 * (i % 200), 16).unwrap() as usize)
            .collect(),
    );
    let arrived = Arc::new(AtomicUsize::new(0));
    let free_all = || {
        let (blocks, arrived) = (blocks.clone(), arrived.clone());
        std::thread::spawn(move || {
            // A stash of this thread's own first (claimed by its first free).
            let own = tier.alloc(8192, 16).unwrap();
            tier.free(own).unwrap();
            let mut won = vec![false; BLOCKS];
            for (i, &p) in blocks.iter().enumerate() {
                arrived.fetch_add(1, Ordering::AcqRel);
                while arrived.load(Ordering::Acquire) < 2 * (i + 1) {
                    std::hint::spin_loop();
                }
                match tier.free(p as *mut u8) {
                    Ok(()) => won[i] = true,
                    Err(e) => assert_eq!(e, FreeError::DoubleFree),
                }
            }
            won
        })
    };
    let (a, b) = (free_all(), free_all());
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    let both = (0..BLOCKS).filter(|&i| a[i] && b[i]).count();
    let neither = (0..BLOCKS).filter(|&i| !a[i] && !b[i]).count();
    assert_eq!(
        (both, neither),
        (0, 0),
        "exactly one free of each block wins"
    );
    let s = tier.stats();
    assert_eq!(
        (s.allocations, s.frees),
        (BLOCKS as u64 + 2, BLOCKS as u64 + 2)
    );
    assert!(
        all_free(tier),
        "the exiting threads gave every block back once"
    );
}

/// A block grows in place (`resize_in_place`, as `realloc` calls it) into the freed extent
/// right behind it while that extent waits in the growing thread's own stash, and the grown
/// block's header says its new size; the stash no longer holds the extent. Another thread's
/// stashed extent is not taken: the block there stays as it was (the caller moves it).
#[test]
fn a_block_grows_in_place_into_an_extent_its_own_thread_stashed() {
    let tier = open("grow", "16M");
    std::thread::spawn(move || {
        // Cut from the end: the later block lies right before the earlier one.
        let behind = tier.alloc(20_000, 16).unwrap();
        let p = tier.alloc(20_000, 16).unwrap();
        let stride = tier.usable_size(p).unwrap() + HEADER_SIZE as usize;
        assert_eq!(p as usize + stride, behind as usize, "adjacent");
        // SAFETY: the block's first 20 000 bytes, its own.
        unsafe { p.write_bytes(7, 20_000) };
        tier.free(behind).unwrap();
        assert_eq!(
            tier.own_stash_bytes(),
            stride as u64,
            "the freed extent is stashed"
        );
        assert!(
            tier.resize_in_place(p, 36_000),
            "grows into the stashed extent"
        );
        assert!(tier.usable_size(p).unwrap() >= 36_000);
        assert_eq!(tier.own_stash_bytes(), 0, "taken out of the stash");
        // SAFETY: the block's first 20 000 bytes, written above.
        assert!(unsafe { std::slice::from_raw_parts(p, 20_000) }
            .iter()
            .all(|&b| b == 7));
        let header = |p: *mut u8| {
            // SAFETY: the header lies in the mapped region, before the block.
            unsafe { core::ptr::read_volatile(p.sub(HEADER_SIZE as usize) as *const BlockHeader) }
        };
        assert_eq!(header(p).state, STATE_ALLOCATED);
        assert_eq!(Some(header(p).size as usize), tier.usable_size(p));
        tier.free(p).unwrap();
    })
    .join()
    .unwrap();
    // The same, the extent behind freed (and stashed) by another thread, which stays.
    let behind = tier.alloc(20_000, 16).unwrap() as usize;
    let p = tier.alloc(20_000, 16).unwrap();
    assert_eq!(p as usize + 20_016, behind, "adjacent");
    let (freed, done) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let other = {
        let (freed, done) = (freed.clone(), done.clone());
        std::thread::spawn(move || {
            tier.free(behind as *mut u8).unwrap();
            assert_eq!(
                tier.own_stash_bytes(),
                20_016,
                "stashed by the other thread"
            );
            freed.wait();
            done.wait();
        })
    };
    freed.wait();
    assert!(
        !tier.resize_in_place(p, 36_000),
        "another thread's stash is its own"
    );
    assert_eq!(tier.usable_size(p), Some(20_000));
    done.wait();
    other.join().unwrap();
    tier.free(p).unwrap();
    assert!(all_free(tier));
}
