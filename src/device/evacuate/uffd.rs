//! userfaultfd write-protection: the one kernel mechanism that holds *every* writer of a page,
//! a thread's own store and the kernel's `copy_to_user` inside `read(2)`, `recv`, `pread`
//! alike, until the page is released, while reads go on. An `mprotect` + SIGSEGV scheme holds
//! only user stores; a system call writing into a protected page fails with EFAULT.
//!
//! A writer that meets a write-protected page sleeps in the kernel (`handle_userfault`), its
//! mm lock dropped, until someone wakes its range (`UFFDIO_WAKE`, or un-protecting it); it
//! then retries the fault. Nobody has to read the descriptor's fault messages: the evacuation
//! resolves a chunk by mapping the target over it and waking the range.
//!
//! Works for anonymous memory (with `UFFD_FEATURE_WP_UNPOPULATED`, so pages never touched are
//! held too), shmem (`/dev/shm`, tmpfs, `memfd`) and hugetlbfs (`UFFD_FEATURE_WP_HUGETLBFS_SHMEM`,
//! which marks even pages not yet mapped in this process). The kernel refuses registration
//! (EINVAL) for any other mapping: regular files on disk file systems, device DAX, PCI BARs.
//!
//! The ioctl numbers and structs are in `crate::userfaultfd`. Nothing here allocates.

use crate::userfaultfd::{
    self as abi, UffdioRange, UffdioWriteprotect, UFFDIO_REGISTER_MODE_WP, UFFDIO_UNREGISTER,
    UFFDIO_WAKE, UFFDIO_WRITEPROTECT, UFFDIO_WRITEPROTECT_BIT, UFFDIO_WRITEPROTECT_MODE_WP,
    UFFD_FEATURE_WP_HUGETLBFS_SHMEM, UFFD_FEATURE_WP_UNPOPULATED, USERFAULTFD_IOC_NEW,
};
use core::ffi::c_ulong;

/// Why write-protection is not to be had; `errno` of the failing call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UffdError {
    pub what: &'static str,
    pub errno: i32,
}

fn error(what: &'static str) -> UffdError {
    UffdError {
        what,
        errno: crate::os::errno(),
    }
}

/// An open userfaultfd with the write-protect features; closed on drop.
pub(crate) struct WriteProtector {
    fd: i32,
}

impl WriteProtector {
    /// A userfaultfd that handles kernel-mode faults too (no `UFFD_USER_MODE_ONLY`): through
    /// the system call (root, or `vm.unprivileged_userfaultfd=1`, or CAP_SYS_PTRACE), else
    /// through `/dev/userfaultfd` (whose permissions decide).
    pub fn new() -> Result<WriteProtector, UffdError> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: the system call takes only flags.
        let mut fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) } as i32;
        if fd < 0 {
            // SAFETY: a NUL-terminated path.
            let dev =
                unsafe { libc::open(c"/dev/userfaultfd".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
            if dev < 0 {
                return Err(error(
                    "no userfaultfd (the system call is refused and /dev/userfaultfd cannot be \
                     opened)",
                ));
            }
            // SAFETY: USERFAULTFD_IOC_NEW takes the new descriptor's flags by value.
            fd = unsafe { libc::ioctl(dev, USERFAULTFD_IOC_NEW, flags) };
            let saved = crate::os::errno();
            // SAFETY: our own descriptor.
            unsafe { libc::close(dev) };
            if fd < 0 {
                crate::os::set_errno(saved);
                return Err(error("/dev/userfaultfd refuses a new descriptor"));
            }
        }
        let this = WriteProtector { fd };
        if !abi::handshake(
            this.fd,
            UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_WP_UNPOPULATED,
        ) {
            return Err(error(
                "the kernel's userfaultfd lacks write-protection of shmem and unpopulated pages \
                 (Linux 6.4 or later needed)",
            ));
        }
        Ok(this)
    }

    /// The descriptor (for closing in a forked child).
    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// Registers `[start, start + len)` (page-aligned, mapped) for write-protection.
    pub fn register(&self, start: usize, len: usize) -> Result<(), UffdError> {
        let Some(ioctls) = abi::register(self.fd, start, len, UFFDIO_REGISTER_MODE_WP) else {
            return Err(error(
                "the tier's backing cannot be write-protected by userfaultfd (only shmem such as \
                 /dev/shm, hugetlbfs and anonymous memory can; not a regular file on a disk file \
                 system, device DAX or a PCI BAR), and without that a system call writing into a \
                 block during the move could lose its data",
            ));
        };
        if ioctls & UFFDIO_WRITEPROTECT_BIT == 0 {
            self.unregister(start, len);
            crate::os::set_errno(libc::EOPNOTSUPP);
            return Err(error(
                "userfaultfd offers no write-protection on the tier's mapping",
            ));
        }
        Ok(())
    }

    /// Forgets whatever of `[start, start + len)` is still registered (errors ignored).
    pub fn unregister(&self, start: usize, len: usize) {
        self.range_ioctl(UFFDIO_UNREGISTER, start, len);
    }

    /// Write-protects `[start, start + len)` (registered): when this returns, every writer of
    /// it, user or kernel, sleeps until the range is woken (the kernel has flushed the TLBs).
    pub fn protect(&self, start: usize, len: usize) -> Result<(), UffdError> {
        self.write_protect(start, len, UFFDIO_WRITEPROTECT_MODE_WP)
    }

    /// Lifts the write-protection of `[start, start + len)` and wakes its writers.
    pub fn unprotect(&self, start: usize, len: usize) -> Result<(), UffdError> {
        self.write_protect(start, len, 0)
    }

    fn write_protect(&self, start: usize, len: usize, mode: u64) -> Result<(), UffdError> {
        let mut wp = UffdioWriteprotect {
            range: UffdioRange::new(start, len),
            mode,
        };
        // SAFETY: our descriptor and a valid uffdio_writeprotect.
        if unsafe { libc::ioctl(self.fd, UFFDIO_WRITEPROTECT, &mut wp) } != 0 {
            return Err(error("cannot write-protect a chunk of the tier"));
        }
        Ok(())
    }

    /// Wakes every writer sleeping on a page of `[start, start + len)`; they retry their
    /// fault (on whatever is mapped there now). The range need not be registered any more.
    pub fn wake(&self, start: usize, len: usize) {
        self.range_ioctl(UFFDIO_WAKE, start, len);
    }

    /// Runs `request` (one that takes a `uffdio_range` and cannot harm: unregister, wake) on
    /// `[start, start + len)`, errors ignored and errno kept.
    fn range_ioctl(&self, request: c_ulong, start: usize, len: usize) {
        crate::os::keep_errno(|| {
            abi::range_request(self.fd, request, start, len);
        });
    }
}

impl Drop for WriteProtector {
    fn drop(&mut self) {
        crate::os::keep_errno(|| {
            // SAFETY: our own descriptor, closed once.
            unsafe { libc::close(self.fd) };
        });
    }
}
