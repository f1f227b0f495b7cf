//! `TierMalloc` as the Rust global allocator of this test binary: alignment, zeroing,
//! realloc in place and across sizes, and a multithreaded stress with cross-thread frees in
//! which every block's contents are checked before it is freed.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::mpsc;
use std::thread;
use tiermalloc::{Kind, TierMalloc};

#[global_allocator]
static GLOBAL: TierMalloc = TierMalloc;

/// A block filled with a pattern derived from its address, seed and length.
struct Filled {
    data: Vec<u8>,
    seed: u8,
}

impl Filled {
    fn new(len: usize, seed: u8) -> Self {
        let mut data = Vec::with_capacity(len);
        data.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
        Filled { data, seed }
    }
    fn check(&self) {
        for (i, &b) in self.data.iter().enumerate() {
            let want = (i as u8).wrapping_mul(31).wrapping_add(self.seed);
            assert_eq!(
                b,
                want,
                "byte {i} of a {}-byte block changed",
                self.data.len()
            );
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn size(&mut self) -> usize {
        match self.next() % 100 {
            0 => (self.next() % (3 << 20)) as usize + 1,
            1..=10 => (self.next() % 65536) as usize + 1,
            _ => (self.next() % 512) as usize,
        }
    }
}

#[test]
fn every_alignment_up_to_4_mib_is_honoured() {
    let mut align = 1;
    while align <= 4 << 20 {
        for size in [1, 7, 16, 100, 4096, 70_000, 600_000, 5 << 20] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size; freed below with the same layout.
            unsafe {
                let p = GLOBAL.alloc(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "size {size} align {align}");
                assert_eq!(tiermalloc::kind_of(p), Some(Kind::Dram));
                p.write_bytes(0xab, size);
                GLOBAL.dealloc(p, layout);
            }
        }
        align *= 2;
    }
}

#[test]
fn alloc_zeroed_is_zero_even_for_reused_memory() {
    for size in [8, 200, 3000, 40_000, 300_000, 2 << 20] {
        let layout = Layout::from_size_align(size, 16).unwrap();
        for _ in 0..20 {
            // SAFETY: non-zero size; freed with the same layout.
            unsafe {
                let dirty = GLOBAL.alloc(layout);
                dirty.write_bytes(0xff, size);
                GLOBAL.dealloc(dirty, layout);
                let p = GLOBAL.alloc_zeroed(layout);
                assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0));
                GLOBAL.dealloc(p, layout);
            }
        }
    }
}

#[test]
fn realloc_keeps_contents_across_classes_and_large_blocks() {
    let mut v: Vec<u64> = Vec::new();
    for i in 0..2_000_000u64 {
        v.push(i * 3);
    }
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 * 3));
    v.truncate(10);
    v.shrink_to_fit();
    assert_eq!(v, (0..10).map(|i| i * 3).collect::<Vec<_>>());

    let layout = Layout::from_size_align(100, 16).unwrap();
    // SAFETY: blocks of ours, sizes non-zero, layouts matching.
    unsafe {
        let p = GLOBAL.alloc(layout);
        p.write_bytes(7, 100);
        let q = GLOBAL.realloc(p, layout, 110);
        assert_eq!(p, q, "a realloc within the block's class stays in place");
        let big = GLOBAL.realloc(q, Layout::from_size_align(110, 16).unwrap(), 8 << 20);
        assert!(std::slice::from_raw_parts(big, 100).iter().all(|&b| b == 7));
        let bigger = GLOBAL.realloc(big, Layout::from_size_align(8 << 20, 16).unwrap(), 64 << 20);
        assert!(std::slice::from_raw_parts(bigger, 100)
            .iter()
            .all(|&b| b == 7));
        let small = GLOBAL.realloc(bigger, Layout::from_size_align(64 << 20, 16).unwrap(), 50);
        assert!(std::slice::from_raw_parts(small, 50)
            .iter()
            .all(|&b| b == 7));
        GLOBAL.dealloc(small, Layout::from_size_align(50, 16).unwrap());
    }
}

#[test]
fn threads_free_each_others_blocks_and_nothing_is_corrupted() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 60_000;
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..THREADS).map(|_| mpsc::channel::<Filled>()).unzip();
    let workers: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(id, inbox)| {
            let next = senders[(id + 1) % THREADS].clone();
            thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1));
                let mut mine: Vec<Option<Filled>> = (0..512).map(|_| None).collect();
                for round in 0..ROUNDS {
                    let slot = (rng.next() % 512) as usize;
                    match mine[slot].take() {
                        Some(block) if round % 3 == 0 => next.send(block).unwrap(),
                        Some(block) => block.check(),
                        None => mine[slot] = Some(Filled::new(rng.size(), rng.next() as u8)),
                    }
                    while let Ok(block) = inbox.try_recv() {
                        block.check();
                    }
                }
                drop(next);
                for block in mine.into_iter().flatten() {
                    block.check();
                }
                inbox
            })
        })
        .collect();
    drop(senders);
    // Every worker must finish before any inbox is dropped: a worker still running sends to
    // the next worker's inbox, which the main thread owns once that worker has returned it.
    let inboxes: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    for inbox in inboxes {
        for block in inbox.try_iter() {
            block.check();
        }
    }
}

#[test]
fn blocks_outlive_their_threads() {
    let mut kept = Vec::new();
    for round in 0..200 {
        let blocks = thread::spawn(move || {
            (0..50)
                .map(|i| Filled::new(16 + i * 37 + round, i as u8))
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap();
        kept.extend(blocks);
        if kept.len() > 2000 {
            for b in kept.drain(..1000) {
                b.check();
            }
        }
    }
    kept.iter().for_each(Filled::check);
}

#[test]
fn statistics_count_this_threads_allocations() {
    let before = tiermalloc::stats(Kind::Dram).unwrap();
    let blocks: Vec<Box<[u8; 1000]>> = (0..100).map(|_| Box::new([1u8; 1000])).collect();
    let during = tiermalloc::stats(Kind::Dram).unwrap();
    assert!(during.allocations >= before.allocations + 100);
    assert!(during.capacity > 0);
    drop(blocks);
    let after = tiermalloc::stats(Kind::Dram).unwrap();
    assert!(after.frees >= before.frees + 100);
    assert!(tiermalloc::stats(Kind::Pmr).is_err());
}
