//! The large-mapping cache gathers (`dram/large.rs`, `gather`): a big block larger than every
//! cached mapping is served from the resident pages of several freed ones, moved together by
//! `mremap`, not grown from one of them with fresh pages that all fault. The gathered block
//! holds what a block must: zeroes for `alloc_zeroed`, its bytes across a `realloc`.
//!
//! One test, so that nothing else in this binary allocates while it counts faults.

use std::alloc::{GlobalAlloc, Layout};
use tiermalloc::TierMalloc;

#[global_allocator]
static GLOBAL: TierMalloc = TierMalloc;

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

#[path = "support/process_memory.rs"]
#[allow(dead_code)] // resident_bytes: used by the other tests that share the file
mod process_memory;
use process_memory::thread_minor_faults;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 16).unwrap()
}

/// Allocates three blocks of 7 MiB (mappings of 8 MiB), writes every page, frees them: the
/// cache then holds 24 MiB resident in three mappings, none longer than 8 MiB.
fn cache_three_small_mappings() {
    let blocks: Vec<*mut u8> = (0..3)
        .map(|i| {
            // SAFETY: a non-zero layout; every byte written lies inside the block.
            unsafe {
                let p = GLOBAL.alloc(layout(7 * MIB));
                assert!(!p.is_null());
                p.write_bytes(0xa0 + i as u8, 7 * MIB);
                p
            }
        })
        .collect();
    for p in blocks {
        // SAFETY: allocated above with this layout.
        unsafe { GLOBAL.dealloc(p, layout(7 * MIB)) };
    }
}

#[test]
fn a_block_larger_than_any_cached_mapping_is_gathered_from_several_without_faults() {
    // A thread of its own: RUSAGE_THREAD counts only its faults.
    std::thread::spawn(|| {
        // 1. Faults: a block of 23 MiB (a mapping of 24 MiB) from three cached 8 MiB ones.
        // Growing one alone faults two thirds of its pages (about 4 000); gathered, only the
        // pages the earlier blocks never touched (their last MiB each: about 770).
        cache_three_small_mappings();
        let size = 23 * MIB;
        let before = thread_minor_faults();
        // SAFETY: a non-zero layout; every byte written lies inside the block.
        let p = unsafe {
            let p = GLOBAL.alloc(layout(size));
            assert!(!p.is_null());
            for off in (0..size).step_by(PAGE) {
                p.add(off).write(1);
            }
            p
        };
        let faults = thread_minor_faults() - before;
        let pages = (size / PAGE) as u64;
        assert!(
            faults < pages / 4,
            "{faults} page faults writing a {} MiB block ({pages} pages) while 24 MiB of freed \
             blocks were cached resident in three mappings",
            size / MIB
        );

        // 2. Its bytes survive a realloc that moves it (the gathered mapping spans several
        // kernel mappings, which mremap cannot resize in place).
        // SAFETY: our block of `size` bytes, then the reallocated one of 40 MiB.
        unsafe {
            for (i, off) in (0..size).step_by(PAGE).enumerate() {
                p.add(off).write(i as u8);
            }
            let q = GLOBAL.realloc(p, layout(size), 40 * MIB);
            assert!(!q.is_null());
            for (i, off) in (0..size).step_by(PAGE).enumerate() {
                assert_eq!(
                    *q.add(off),
                    i as u8,
                    "byte {off} of a reallocated gathered block"
                );
            }
            q.add(40 * MIB - 1).write(7);
            GLOBAL.dealloc(q, layout(40 * MIB));
        }

        // 3. A zeroed block gathered from dirty mappings is all zero.
        cache_three_small_mappings();
        // SAFETY: a non-zero layout; read within the block.
        unsafe {
            let z = GLOBAL.alloc_zeroed(layout(size));
            assert!(!z.is_null());
            let bytes = std::slice::from_raw_parts(z, size);
            if let Some(at) = bytes.iter().position(|&b| b != 0) {
                panic!("byte {at} of a zeroed gathered block is {:#x}", bytes[at]);
            }
            GLOBAL.dealloc(z, layout(size));
        }
    })
    .join()
    .unwrap();
}
