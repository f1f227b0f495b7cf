//! `TIERMALLOC_SECURE=1`: a `PROT_NONE` page right after every large block, so that a linear
//! overflow off a large block's end faults at once instead of running through the rest of its
//! mapping (kept read-write for `realloc` in place) into whatever lies beyond.
//!
//! A large block ends on a page boundary (`usable` is rounded up to pages), so the guard sits
//! at `header + offset + usable`, and the block's mapping is made one page longer to hold it.
//! The guard exists while the block lives: `large::free` lifts it before the mapping goes to
//! the cache or back to the kernel, `large::resize` lifts it before it moves the block's end
//! (`mremap` wants the mapping in one piece) and sets it again at the new end. The few bytes
//! between the requested size and the page boundary are the block's own (`malloc_usable_size`
//! counts them) and are not guarded.
//!
//! Outside the level nothing here runs: each entry point tests the configuration first.

use crate::os;

/// Whether large blocks get guard pages (the process's `TIERMALLOC_SECURE=1`).
#[inline]
pub fn enabled() -> bool {
    crate::config::get().secure
}

/// The bytes a mapping needs for a block that ends `end` bytes after the mapping's start
/// (a page multiple): `end`, and a page more for the guard under the level.
#[inline]
pub fn room(end: usize) -> Option<usize> {
    if enabled() {
        end.checked_add(os::PAGE_SIZE)
    } else {
        Some(end)
    }
}

/// Makes the page at `end` (past a block's end, a page boundary inside its mapping) a guard.
///
/// # Safety
/// `[end, end + PAGE_SIZE)` must lie in a large mapping of ours that no block uses.
pub unsafe fn set(end: usize) {
    if enabled() {
        // SAFETY: per the contract. A failure (out of memory for the kernel's split) leaves
        // the block unguarded, as outside the level.
        unsafe { os::protect(end as *mut u8, os::PAGE_SIZE, false) };
    }
}

/// Lifts the guard at `end` (set by `set`): the page is an ordinary page of the mapping again.
///
/// # Safety
/// `end` must be where `set` put the guard of a block of ours, or a read-write page of its
/// mapping.
pub unsafe fn lift(end: usize) {
    if enabled() {
        // SAFETY: per the contract.
        unsafe { os::protect(end as *mut u8, os::PAGE_SIZE, true) };
    }
}
