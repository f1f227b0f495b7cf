//! The metadata arena: host-DRAM memory for the allocator's own long-lived structures (thread
//! heaps), never taken from the global allocator and never given back.
//!
//! One address range is reserved at first use (`MAP_NORESERVE`, so untouched parts cost
//! nothing) and handed out by an atomic bump pointer. Lock-free, so a `fork` or a signal can
//! never leave it held.

use crate::os;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Bytes reserved for metadata: enough for about 100 000 thread heaps alive at once.
const ARENA_SIZE: usize = 256 << 20;

static BASE: AtomicUsize = AtomicUsize::new(0);
static USED: AtomicUsize = AtomicUsize::new(0);

fn base() -> Option<usize> {
    let base = BASE.load(Ordering::Acquire);
    if base != 0 {
        return Some(base);
    }
    let fresh = os::map_anonymous(ARENA_SIZE)?.as_ptr() as usize;
    match BASE.compare_exchange(0, fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Some(fresh),
        Err(winner) => {
            // SAFETY: `fresh` was mapped above and lost the race; nobody saw it.
            unsafe { os::unmap(fresh as *mut u8, ARENA_SIZE) };
            Some(winner)
        }
    }
}

/// Zeroed memory for `size` bytes at `align` (≤ 4096), valid for the rest of the process.
pub fn alloc_zeroed(size: usize, align: usize) -> Option<*mut u8> {
    debug_assert!(align.is_power_of_two() && align <= os::PAGE_SIZE);
    let base = base()?;
    let need = size + align - 1;
    let offset = USED.fetch_add(need, Ordering::Relaxed);
    if offset + need > ARENA_SIZE {
        return None;
    }
    let p = (base + offset + align - 1) & !(align - 1);
    Some(p as *mut u8)
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
}
