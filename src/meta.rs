//! The metadata arena: host-DRAM memory for the allocator's own long-lived structures (thread
//! heaps), never taken from the global allocator and never given back.
//!
//! Memory is mapped in chunks of `CHUNK_SIZE` as it is needed (a program with one thread maps
//! one), each handed out by an atomic bump pointer in its header; when the current chunk is
//! full, the first thread to notice maps the next and installs it with one compare-and-swap.
//! Reserving little matters: address space counts against `ulimit -v` / `RLIMIT_AS` whether
//! touched or not, and glibc's tst-malloc-thread-fail runs under a 200 MiB cap (this arena
//! once reserved 256 MiB up front). Lock-free, so a `fork` or a signal can never leave it held.

use crate::os;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Bytes mapped per chunk: room for a few dozen thread heaps.
const CHUNK_SIZE: usize = 1 << 20;

/// The start of a chunk. Invariant: `used` only grows; bytes `[HEADER, min(used, len))` past
/// the chunk start have been handed out or lost to a race, the rest are untouched zeroes.
struct Chunk {
    used: AtomicUsize,
    len: usize,
}

const HEADER: usize = 64;

static CURRENT: AtomicPtr<Chunk> = AtomicPtr::new(core::ptr::null_mut());

/// Zeroed memory for `size` bytes at `align` (≤ 4096), valid for the rest of the process.
pub fn alloc_zeroed(size: usize, align: usize) -> Option<*mut u8> {
    debug_assert!(align.is_power_of_two() && align <= os::PAGE_SIZE);
    let need = size.checked_add(align - 1)?;
    loop {
        let chunk = CURRENT.load(Ordering::Acquire);
        if !chunk.is_null() {
            // SAFETY: installed chunks stay mapped for the rest of the process.
            let (offset, len) = unsafe {
                (
                    (*chunk).used.fetch_add(need, Ordering::Relaxed),
                    (*chunk).len,
                )
            };
            if offset.checked_add(need).is_some_and(|end| end <= len) {
                let p = (chunk as usize + offset + align - 1) & !(align - 1);
                return Some(p as *mut u8);
            }
        }
        let len = os::page_round(need.checked_add(HEADER)?).max(CHUNK_SIZE);
        let fresh = os::map_anonymous(len)?.as_ptr().cast::<Chunk>();
        // SAFETY: fresh, zeroed, ours until published.
        unsafe {
            fresh.write(Chunk {
                used: AtomicUsize::new(HEADER),
                len,
            })
        };
        if CURRENT
            .compare_exchange(chunk, fresh, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Another thread installed a chunk first: use it.
            // SAFETY: `fresh` was never published.
            unsafe { os::unmap(fresh.cast(), len) };
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn blocks_are_aligned_zeroed_and_disjoint() {
        let a = super::alloc_zeroed(100, 64).unwrap();
        let b = super::alloc_zeroed(100, 64).unwrap();
        assert_eq!(a as usize % 64, 0);
        assert!(b as usize >= a as usize + 100 || a as usize >= b as usize + 100);
        // SAFETY: the arena memory is ours, zeroed and writable.
        unsafe {
            assert_eq!(*a.add(99), 0);
            a.write_bytes(1, 100);
        }
    }

    #[test]
    fn the_arena_grows_past_one_chunk_without_overlap() {
        let mut blocks: Vec<usize> = (0..40)
            .map(|_| super::alloc_zeroed(100_000, 4096).unwrap() as usize)
            .collect();
        blocks.sort();
        for pair in blocks.windows(2) {
            assert!(pair[1] >= pair[0] + 100_000, "overlapping arena blocks");
        }
        let huge = super::alloc_zeroed(3 << 20, 64).unwrap();
        // SAFETY: 3 MiB of arena memory of ours.
        unsafe { huge.add((3 << 20) - 1).write(1) };
    }
}
