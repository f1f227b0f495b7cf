//! The userfaultfd ABI of `<linux/userfaultfd.h>`, which the libc crate does not carry: the
//! ioctl numbers, the structs they take, and the three calls both users make on a descriptor
//! (the API handshake, registering a range, a request on a range). The users own what they do
//! with it: evacuation write-protects a device tier's chunks (`device/evacuate/uffd.rs`), the
//! workload-profile reserve fills DRAM, and device tiers' free space, without page faults
//! (`profile/copy_fill.rs`).
//! Nothing here allocates.

use core::ffi::c_ulong;

pub(crate) const UFFD_API: u64 = 0xAA;
/// `userfaultfd(2)` flag: handle faults of user-mode accesses only (Linux 5.11; needs no
/// privilege).
pub(crate) const UFFD_USER_MODE_ONLY: i32 = 1;
pub(crate) const USERFAULTFD_IOC_NEW: c_ulong = 0xAA00; // _IO(0xAA, 0x00), on /dev/userfaultfd

const UFFDIO_API: c_ulong = 0xC018_AA3F; // _IOWR(0xAA, 0x3F, struct uffdio_api)
const UFFDIO_REGISTER: c_ulong = 0xC020_AA00; // _IOWR(0xAA, 0x00, struct uffdio_register)
pub(crate) const UFFDIO_UNREGISTER: c_ulong = 0x8010_AA01; // _IOR(0xAA, 0x01, struct uffdio_range)
pub(crate) const UFFDIO_WAKE: c_ulong = 0x8010_AA02; // _IOR(0xAA, 0x02, struct uffdio_range)
pub(crate) const UFFDIO_COPY: c_ulong = 0xC028_AA03; // _IOWR(0xAA, 0x03, struct uffdio_copy)
/// _IOWR(0xAA, 0x06, struct uffdio_writeprotect)
pub(crate) const UFFDIO_WRITEPROTECT: c_ulong = 0xC018_AA06;
/// _IOWR(0xAA, 0x07, struct uffdio_continue)
pub(crate) const UFFDIO_CONTINUE: c_ulong = 0xC020_AA07;

pub(crate) const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
pub(crate) const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
pub(crate) const UFFDIO_REGISTER_MODE_MINOR: u64 = 1 << 2;
/// Minor faults (a page in the page cache, not mapped here) on shmem: `UFFDIO_CONTINUE`.
pub(crate) const UFFD_FEATURE_MINOR_SHMEM: u64 = 1 << 10;
pub(crate) const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
pub(crate) const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
pub(crate) const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `_UFFDIO_WRITEPROTECT` in a registration's `ioctls` answer: write-protection is available
/// on the range.
pub(crate) const UFFDIO_WRITEPROTECT_BIT: u64 = 1 << 0x06;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

impl UffdioRange {
    pub(crate) fn new(start: usize, len: usize) -> UffdioRange {
        UffdioRange {
            start: start as u64,
            len: len as u64,
        }
    }
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
pub(crate) struct UffdioWriteprotect {
    pub range: UffdioRange,
    pub mode: u64,
}

#[repr(C)]
pub(crate) struct UffdioCopy {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    /// Bytes copied, or a negative errno (written by the kernel).
    pub copy: i64,
}

#[repr(C)]
pub(crate) struct UffdioContinue {
    pub range: UffdioRange,
    pub mode: u64,
    /// Bytes mapped, or a negative errno (written by the kernel).
    pub mapped: i64,
}

/// The API handshake every new descriptor needs before any other request, asking for
/// `features`. False (errno set) if the kernel lacks one of them.
pub(crate) fn handshake(fd: i32, features: u64) -> bool {
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: a valid uffdio_api; a wrong descriptor only makes the ioctl fail.
    unsafe { libc::ioctl(fd, UFFDIO_API, &mut api) == 0 }
}

/// Registers `[start, start + len)` (page-aligned, mapped) in `mode`. The ioctls the kernel
/// offers on the range, or None (errno set).
pub(crate) fn register(fd: i32, start: usize, len: usize, mode: u64) -> Option<u64> {
    let mut reg = UffdioRegister {
        range: UffdioRange::new(start, len),
        mode,
        ioctls: 0,
    };
    // SAFETY: a valid uffdio_register; the kernel checks the range is a mapping of ours.
    (unsafe { libc::ioctl(fd, UFFDIO_REGISTER, &mut reg) } == 0).then_some(reg.ioctls)
}

/// Runs `request`, one that takes a `uffdio_range` (unregister, wake), on
/// `[start, start + len)`. The ioctl's result.
pub(crate) fn range_request(fd: i32, request: c_ulong, start: usize, len: usize) -> i32 {
    let range = UffdioRange::new(start, len);
    // SAFETY: a valid uffdio_range for a request that reads one.
    unsafe { libc::ioctl(fd, request, &range) }
}
