//! Filling the DRAM reserve without page faults: `UFFDIO_COPY`.
//!
//! `MADV_POPULATE_WRITE` faults each 4 KiB page in through the kernel's fault handler, and the
//! kernel counts every one of those faults in the process's `ru_minflt`, as if the program had
//! touched the page itself. A userfaultfd's `UFFDIO_COPY` instead allocates the pages of a
//! range, copies their bytes (here: zeros, from a 64 KiB source) and maps them, with no fault
//! at all: the same anonymous, private, small pages, at the same CPU cost as populating them
//! (BENCHMARKS.md, "Filling the reserve without faults").
//!
//! The range is registered (missing-page mode) only for the span of one step of the pre-fault
//! thread and unregistered before that step is published: nothing else touches it meanwhile
//! (`reserve::take` hands out no byte the thread has not finished), so no thread ever waits on
//! this descriptor, which nobody reads. It is opened with `UFFD_USER_MODE_ONLY` (Linux 5.11;
//! allowed without privilege): a kernel access to a still-registered page (`/proc/PID/mem`)
//! fails with EFAULT instead of waiting. A forked child's copy of a registered range is
//! unregistered by the kernel (no `UFFD_FEATURE_EVENT_FORK`): it faults as usual there.

use crate::os;
use crate::userfaultfd::{
    self as abi, UffdioCopy, UFFDIO_COPY, UFFDIO_REGISTER_MODE_MISSING, UFFDIO_UNREGISTER,
    UFFD_USER_MODE_ONLY,
};

/// Bytes copied per `UFFDIO_COPY`: the zeroed source's size.
const SOURCE: usize = 64 << 10;

/// A userfaultfd and a zeroed source; closed and unmapped on drop.
pub(crate) struct CopyFill {
    fd: i32,
    zeros: usize,
}

impl CopyFill {
    /// A filler, or the errno of what refused it (no userfaultfd: an old kernel, a seccomp
    /// filter).
    pub(crate) fn new() -> Result<CopyFill, i32> {
        // SAFETY: the system call takes only flags.
        let fd = unsafe {
            libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | UFFD_USER_MODE_ONLY)
        } as i32;
        if fd < 0 {
            return Err(os::errno());
        }
        let Some(zeros) = os::map_anonymous(SOURCE) else {
            let e = os::errno();
            // SAFETY: our own descriptor.
            unsafe { libc::close(fd) };
            return Err(e);
        };
        let this = CopyFill { fd, zeros: zeros.as_ptr() as usize };
        // The source's own pages, made present once (a handful of faults) so that copying
        // from it faults nowhere.
        os::prefault_write(zeros.as_ptr(), SOURCE);
        if !abi::handshake(fd, 0) {
            return Err(os::errno());
        }
        Ok(this)
    }

    /// Makes `[at, at + len)` (page-aligned, part of a private anonymous mapping of ours with
    /// no page present, which nothing else touches until this returns) present: zeroed,
    /// writable small pages. On an error (returned as errno) the range is unregistered again
    /// and its remaining pages fault in when touched, as any others.
    pub(crate) fn fill(&self, at: usize, len: usize) -> Result<(), i32> {
        if abi::register(self.fd, at, len, UFFDIO_REGISTER_MODE_MISSING).is_none() {
            return Err(os::errno());
        }
        let mut result = Ok(());
        let mut done = 0;
        while done < len {
            let mut copy = UffdioCopy {
                dst: (at + done) as u64,
                src: self.zeros as u64,
                len: SOURCE.min(len - done) as u64,
                mode: 0,
                copy: 0,
            };
            // SAFETY: our descriptor; the destination is registered and ours, the source our
            // zeroed mapping of at least `copy.len` bytes.
            let r = unsafe { libc::ioctl(self.fd, UFFDIO_COPY, &mut copy) };
            if copy.copy > 0 {
                done += copy.copy as usize; // a partial copy (a signal): go on from there
                continue;
            }
            if r == 0 {
                result = Err(libc::EIO); // nothing copied, nothing said: not seen, not looped on
                break;
            } else {
                let e = os::errno();
                if e == libc::EAGAIN || e == libc::EINTR {
                    continue;
                }
                result = Err(e);
                break;
            }
        }
        abi::range_request(self.fd, UFFDIO_UNREGISTER, at, len);
        result
    }
}

impl Drop for CopyFill {
    fn drop(&mut self) {
        // SAFETY: our own descriptor and source mapping, used by nothing after this.
        unsafe {
            libc::close(self.fd);
            libc::munmap(self.zeros as *mut _, SOURCE);
        }
    }
}
