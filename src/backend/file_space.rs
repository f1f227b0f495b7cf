//! Room for a tier file on its file system, reserved before the file is mapped.
//!
//! A file of `size=` bytes on a file system with less room (a sparse file, or one `create`
//! just extended with `ftruncate`) maps without complaint and then kills the program with
//! SIGBUS at the first touch of a page the file system cannot supply: Docker's default
//! `/dev/shm` is 64 MiB. So the range is reserved at open (`fallocate`), and when the file
//! system cannot hold it the tier is refused, naming the size and the free space.
//!
//! The free space is compared first (`fstatvfs`), so that a reservation bound to fail does not
//! fill a tmpfs (RAM) on the way. A file system that cannot reserve (`EOPNOTSUPP`, such as
//! sysfs, whose `resourceN` files are PCI BARs and must never be written to here) is used as it
//! is.

use super::Problem;
use crate::os;

/// Reserves bytes `[offset, offset + len)` of regular file `fd`.
pub(crate) fn reserve(fd: i32, offset: u64, len: u64) -> Result<(), Problem> {
    // A file that holds storage for every byte up to the range's end has nothing to reserve;
    // `fallocate` would still walk every page (a quarter of the time to open a 1 GiB
    // persistent tier in /dev/shm, measured with perf).
    if fully_allocated(fd, offset + len) {
        return Ok(());
    }
    // SAFETY: `st` is a valid out-parameter; `fd` is an open descriptor of the caller's.
    let mut st: libc::statvfs = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstatvfs(fd, &mut st) } == 0 {
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        let allocated = allocated_bytes(fd);
        // Blocks the file already holds count as room (a file mapped before, kept).
        if len > free.saturating_add(allocated) {
            return Err(Problem::no_room(len, free));
        }
    }
    // SAFETY: fallocate on our own descriptor; mode 0 only allocates, never changes data.
    if unsafe { libc::fallocate(fd, 0, offset as libc::off_t, len as libc::off_t) } == 0 {
        return Ok(());
    }
    match os::errno() {
        libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL | libc::ENODEV => Ok(()),
        libc::ENOSPC => Err(Problem::no_room(len, free_bytes(fd))),
        _ => Err(Problem::os("cannot reserve the file's space")),
    }
}

/// Whether the file is at least `end` bytes long and holds storage for all of it (no holes).
fn fully_allocated(fd: i32, end: u64) -> bool {
    // SAFETY: `st` is a valid out-parameter for fstat on our descriptor.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    let size = st.st_size as u64;
    size >= end && (st.st_blocks as u64).saturating_mul(512) >= size
}

/// Bytes of storage the file holds now.
fn allocated_bytes(fd: i32) -> u64 {
    // SAFETY: `st` is a valid out-parameter for fstat on our descriptor.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } == 0 {
        (st.st_blocks as u64).saturating_mul(512)
    } else {
        0
    }
}

fn free_bytes(fd: i32) -> u64 {
    // SAFETY: as in `reserve`.
    let mut st: libc::statvfs = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstatvfs(fd, &mut st) } == 0 {
        st.f_bavail.saturating_mul(st.f_frsize)
    } else {
        0
    }
}

/// Removes `path`: a file this process created for a tier that then failed to open, or its
/// `%p` tier's file once mapped.
pub(crate) fn remove_created(path: &core::ffi::CStr) {
    os::keep_errno(|| {
        // SAFETY: a NUL-terminated path.
        unsafe { libc::unlink(path.as_ptr()) };
    });
}
