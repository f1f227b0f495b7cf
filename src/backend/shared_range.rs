//! A range of an already open file or device mapped shared, read-write, at a chunk-aligned
//! address the page map can own: how a pool-backed tier (`pool::share`) maps the pool's
//! capacity arena. Unlike `map_region`, it takes no lock on the range (every node of the pool
//! maps the same arena; the pool's lend table says which extent is whose) and reserves no
//! file space (the pool's file already spans it).

use super::{map_shared_over, reserve, Barrier, Media, Problem, Region};
use crate::os;

/// Maps `[offset, offset + len)` of `fd` (a regular file when `regular`, else a device) shared
/// at a fresh chunk-aligned reservation. The descriptor stays the caller's.
pub(crate) fn map_shared_range(
    fd: i32,
    offset: u64,
    len: usize,
    regular: bool,
) -> Result<Region, Problem> {
    if offset as usize % os::PAGE_SIZE != 0 || len % os::PAGE_SIZE != 0 {
        return Err(Problem::new("the pool's arena is not page-aligned"));
    }
    let reserved = reserve(len)?;
    if !map_shared_over(&reserved, fd, offset, len) {
        let problem = Problem::os("cannot map the pool's arena");
        // SAFETY: the reservation is ours and unused.
        unsafe { os::unmap(reserved.base as *mut u8, reserved.reserved) };
        return Err(problem);
    }
    Ok(Region {
        len,
        shared_across_fork: true,
        lock_fd: -1,
        media: if regular { Media::File } else { Media::Dax },
        new_bytes: false,
        barrier: Barrier::ReadRegion,
        registers: 0,
        ..reserved
    })
}
