//! Host memory for the heap's metadata: zeroed, page-granular mappings of host DRAM for the
//! node pool (`node.rs`), the size index (`size_index.rs`) and the start table (`starts.rs`).
//! Never the global allocator: this code runs inside `malloc`. The mappings are made with
//! `MAP_NORESERVE`, so a page costs physical memory only once it is touched.

use crate::os;
use core::ptr::NonNull;

pub(super) use os::page_round;

/// Zeroed, page-aligned host memory; `bytes` is a multiple of the page size. `None` when the
/// kernel refuses.
#[cfg(not(miri))]
pub(super) fn map(bytes: usize) -> Option<NonNull<u8>> {
    os::map_anonymous(bytes)
}

/// # Safety
/// `[p, p + bytes)` is a whole mapping from `map` that nothing refers to any more.
#[cfg(not(miri))]
pub(super) unsafe fn unmap(p: *mut u8, bytes: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { os::unmap(p, bytes) }
}

// Miri cannot run `os::map_anonymous` (MAP_NORESERVE): under Miri, and only there, the memory
// comes from the global allocator so the pointer code of the heap can be checked.
#[cfg(miri)]
pub(super) fn map(bytes: usize) -> Option<NonNull<u8>> {
    let layout = std::alloc::Layout::from_size_align(bytes, os::PAGE_SIZE).ok()?;
    // SAFETY: the layout has a non-zero size.
    NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
}

/// # Safety
/// As above.
#[cfg(miri)]
pub(super) unsafe fn unmap(p: *mut u8, bytes: usize) {
    let layout = std::alloc::Layout::from_size_align(bytes, os::PAGE_SIZE).unwrap();
    // SAFETY: `p` came from `map` with this layout.
    unsafe { std::alloc::dealloc(p, layout) }
}
