//! The DRAM tier's `realloc` policies, through the one dispatch every caller uses.

use super::*;
use crate::dram::{large, GROW_TO_CACHED};
use crate::pagemap::ChunkTag;

fn alloc_aligned(size: usize, align: usize) -> *mut u8 {
    DRAM.alloc(size, align, false)
}

/// `realloc` of a block of ours.
///
/// # Safety
/// As `tier::realloc`.
unsafe fn realloc(p: *mut u8, size: usize, align: usize) -> *mut u8 {
    // SAFETY: forwarded.
    unsafe { super::realloc(p, size, align, None) }.expect("a block of ours")
}

fn byte_at(k: usize, seed: usize) -> u8 {
    (k.wrapping_mul(131) ^ (k >> 12) ^ seed) as u8
}

/// Checks the first `n` bytes of `p` (all of them up to 1 MiB, then one in 509 and the last
/// page).
///
/// # Safety
/// `p` must hold at least `n` bytes.
unsafe fn prefix_ok(p: *const u8, n: usize, seed: usize) -> bool {
    // SAFETY: within the first `n` bytes.
    let at = |k: usize| unsafe { *p.add(k) } == byte_at(k, seed);
    let full = n.min(1 << 20);
    (0..full).all(at)
        && (full..n).step_by(509).all(at)
        && (n.saturating_sub(4096).max(full)..n).all(at)
}

/// # Safety
/// `p` must hold at least `to` bytes.
unsafe fn fill(p: *mut u8, from: usize, to: usize, seed: usize) {
    for k in from..to {
        // SAFETY: within the block.
        unsafe { *p.add(k) = byte_at(k, seed) };
    }
}

#[test]
fn growth_by_doubling_and_shrinking_back_keeps_every_byte() {
    // Three chains: the later ones find the earlier ones' freed mappings in the cache.
    for seed in 0..3 {
        let mut cur = 8;
        let p = alloc_aligned(cur, 16);
        // SAFETY: every pointer is the live block of the previous step, holding `cur`
        // bytes.
        unsafe {
            fill(p, 0, cur, seed);
            let mut p = p;
            while cur < 16 << 20 {
                let next = cur * 2;
                p = realloc(p, next, 16);
                assert!(!p.is_null());
                assert!(usable_size(p) >= next);
                assert!(prefix_ok(p, cur, seed), "growing {cur} -> {next}");
                fill(p, cur, next, seed);
                cur = next;
            }
            while cur > 8 {
                let next = cur / 2;
                p = realloc(p, next, 16);
                assert!(!p.is_null());
                assert!(usable_size(p) >= next);
                assert!(prefix_ok(p, next, seed), "shrinking {cur} -> {next}");
                cur = next;
            }
            assert_eq!(pagemap::tag_of_block(p as usize), ChunkTag::Segment);
            free(p);
        }
    }
}

/// Whether the page at `p` is resident.
fn resident(p: usize) -> bool {
    let mut v = 0u8;
    // SAFETY: one page of a mapping of ours; `v` receives one byte.
    let r = unsafe { libc::mincore(p as *mut libc::c_void, 4096, &mut v) };
    assert_eq!(r, 0);
    v & 1 == 1
}

#[test]
fn growth_past_the_cached_threshold_moves_once_then_grows_in_place() {
    let big = 4 << 20;
    let mut promoted = 0;
    // The cache is shared with tests running alongside: try until one of our freed
    // mappings is taken by our own realloc.
    for attempt in 0..50 {
        // A freed mapping of one chunk, almost all resident, goes to the cache.
        let m = large::alloc(big - 2 * 4096, 16, false);
        assert!(!m.is_null());
        // SAFETY: our block of that size; freed once.
        unsafe {
            m.write_bytes(0xcd, big - 2 * 4096);
            free(m);
        }
        let mut cur = GROW_TO_CACHED;
        let p = alloc_aligned(cur, 16);
        // SAFETY: live blocks of at least `cur` bytes, each the result of the last call.
        unsafe {
            fill(p, 0, cur, attempt);
            let q = realloc(p, 2 * cur, 16);
            assert!(prefix_ok(q, cur, attempt));
            fill(q, cur, 2 * cur, attempt);
            cur *= 2;
            if pagemap::tag_of_block(q as usize) == ChunkTag::LargeHead {
                let h = q as usize - 64;
                // Only our own freed mapping is known to be resident: the cache prefers the
                // entry with the largest resident *bound*, and a sibling test's freed block
                // (one it never wrote, such as `cached_mappings_decay`'s 31 MiB) is cached
                // with a bound over pages that never faulted; on a loaded machine ours may
                // also have decayed (1 s) before this realloc, leaving only such entries.
                if h == m as usize - 64 {
                    promoted += 1;
                    // The cached mapping's pages stay for the growth below (a split mapping
                    // keeps at most its one chunk; nothing is trimmed).
                    assert!(resident(h + (1 << 20)), "a cached page kept");
                    assert!(resident(h + (3 << 20)), "a cached page kept past 2 MiB");
                }
                // Growth within the mapping (4 MiB, header included) stays where it is.
                for next in [64 << 10, 1 << 20, 3 << 20, big - 4096 - 64] {
                    let r = realloc(q, next, 16);
                    assert_eq!(r, q, "growing {cur} -> {next} within the mapping");
                    assert!(usable_size(r) >= next);
                    assert!(prefix_ok(r, cur, attempt));
                    fill(r, cur, next, attempt);
                    cur = next;
                }
                // Past it, the pages move (or the mapping grows) without losing a byte.
                let r = realloc(q, 3 * big, 16);
                assert!(!r.is_null() && prefix_ok(r, cur, attempt));
                free(r);
            } else {
                assert_eq!(pagemap::tag_of_block(q as usize), ChunkTag::Segment);
                free(q);
            }
        }
        if promoted >= 3 {
            break;
        }
    }
    assert!(
        promoted > 0,
        "no growing realloc took our cached mapping in 50 attempts"
    );
}

#[test]
fn growth_below_the_threshold_stays_in_the_size_classes() {
    let p = alloc_aligned(1000, 16);
    // SAFETY: live blocks, each the result of the last call.
    unsafe {
        let q = realloc(p, GROW_TO_CACHED, 16);
        assert_eq!(pagemap::tag_of_block(q as usize), ChunkTag::Segment);
        // Within its block and not below half of it: in place.
        let r = realloc(q, GROW_TO_CACHED - 100, 16);
        assert_eq!(r, q);
        free(r);
    }
}
