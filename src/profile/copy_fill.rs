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
//!
//! A device tier's free space in a shared file mapping (`map_free_space`, for
//! `device_reserve`) is made present the same way: a page the file already holds (in the page
//! cache, not mapped here) by `UFFDIO_CONTINUE` (minor mode, shmem: a file in /dev/shm), a
//! hole by `UFFDIO_COPY` of zeros, which is what the hole reads as. Neither changes a byte of
//! the file. Other files and devices refuse the registration (EINVAL), and the caller
//! populates them instead.

use crate::os;
use crate::userfaultfd::{
    self as abi, UffdioContinue, UffdioCopy, UffdioRange, UFFDIO_CONTINUE, UFFDIO_COPY,
    UFFDIO_REGISTER_MODE_MINOR, UFFDIO_REGISTER_MODE_MISSING, UFFDIO_UNREGISTER,
    UFFD_FEATURE_MINOR_SHMEM, UFFD_USER_MODE_ONLY,
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
        Self::with_features(0)
    }

    /// A filler for shared file mappings too (`map_free_space`): it asks for minor faults on
    /// shmem (Linux 5.14).
    pub(crate) fn for_shared() -> Result<CopyFill, i32> {
        Self::with_features(UFFD_FEATURE_MINOR_SHMEM)
    }

    fn with_features(features: u64) -> Result<CopyFill, i32> {
        // SAFETY: the system call takes only flags.
        let fd =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | UFFD_USER_MODE_ONLY) }
                as i32;
        if fd < 0 {
            return Err(os::errno());
        }
        let Some(zeros) = os::map_anonymous(SOURCE) else {
            let e = os::errno();
            // SAFETY: our own descriptor.
            unsafe { libc::close(fd) };
            return Err(e);
        };
        let this = CopyFill {
            fd,
            zeros: zeros.as_ptr() as usize,
        };
        // The source's own pages, made present once (a handful of faults) so that copying
        // from it faults nowhere.
        os::prefault_write(zeros.as_ptr(), SOURCE);
        if !abi::handshake(fd, features) {
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
            // A partial copy (a signal) goes on from where it stopped.
            match self.request_copy(at + done, SOURCE.min(len - done)) {
                Ok(n) => done += n,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        abi::range_request(self.fd, UFFDIO_UNREGISTER, at, len);
        result
    }
}

impl CopyFill {
    /// Makes `[at, at + len)` (page-aligned, within one shared file mapping or private
    /// anonymous mapping of ours, no byte of which anything reads or writes until this
    /// returns) present and writable here without a page fault, its bytes unchanged: pages the
    /// file holds are mapped (`UFFDIO_CONTINUE`), holes get zeroed pages (`UFFDIO_COPY`), pages
    /// already mapped stay. `Err(errno)` when the range cannot be registered (not shmem nor
    /// anonymous memory: EINVAL) or a request fails; it is unregistered again either way.
    pub(crate) fn map_free_space(&self, at: usize, len: usize) -> Result<(), i32> {
        let minor = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR;
        let missing_only = || abi::register(self.fd, at, len, UFFDIO_REGISTER_MODE_MISSING);
        let can_continue = match abi::register(self.fd, at, len, minor) {
            Some(_) => true,
            // Anonymous memory has no minor mode: its present pages stay as they are.
            None if missing_only().is_some() => false,
            None => return Err(os::errno()),
        };
        let end = at + len;
        let mut next = at;
        let mut result = Ok(());
        while next < end {
            if can_continue {
                match self.request_continue(next, end - next) {
                    Ok(n) => {
                        next += n;
                        continue;
                    }
                    // A hole (EFAULT), or a page mapped here already (EEXIST).
                    Err(libc::EFAULT) | Err(libc::ENOENT) => {}
                    Err(libc::EEXIST) => {
                        next += os::PAGE_SIZE;
                        continue;
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            match self.request_copy(next, SOURCE.min(end - next)) {
                Ok(n) => next += n,
                // A page the file holds or one mapped already: `continue` takes the first,
                // the second stays.
                Err(libc::EEXIST) if can_continue => {
                    match self.request_continue(next, os::PAGE_SIZE) {
                        Ok(_) | Err(libc::EEXIST) => next += os::PAGE_SIZE,
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                Err(libc::EEXIST) => next += os::PAGE_SIZE,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        abi::range_request(self.fd, UFFDIO_UNREGISTER, at, len);
        result
    }

    /// One `UFFDIO_CONTINUE` on `[at, at + len)`: the bytes it mapped (> 0), or the errno.
    fn request_continue(&self, at: usize, len: usize) -> Result<usize, i32> {
        let mut request = UffdioContinue {
            range: UffdioRange::new(at, len),
            mode: 0,
            mapped: 0,
        };
        loop {
            // SAFETY: our descriptor; the range is registered in minor mode and ours.
            let r = unsafe { libc::ioctl(self.fd, UFFDIO_CONTINUE, &mut request) };
            if request.mapped > 0 {
                return Ok(request.mapped as usize);
            }
            match (r, os::errno()) {
                (0, _) => return Err(libc::EIO),
                (_, libc::EAGAIN) | (_, libc::EINTR) => continue,
                (_, e) => return Err(e),
            }
        }
    }

    /// One `UFFDIO_COPY` of zeros onto `[at, at + len)` (`len <= SOURCE`): the bytes it
    /// copied (> 0), or the errno.
    fn request_copy(&self, at: usize, len: usize) -> Result<usize, i32> {
        let mut copy = UffdioCopy {
            dst: at as u64,
            src: self.zeros as u64,
            len: len as u64,
            mode: 0,
            copy: 0,
        };
        loop {
            // SAFETY: our descriptor; the destination is registered and ours, the source our
            // zeroed mapping of at least `len` bytes.
            let r = unsafe { libc::ioctl(self.fd, UFFDIO_COPY, &mut copy) };
            if copy.copy > 0 {
                return Ok(copy.copy as usize);
            }
            match (r, os::errno()) {
                (0, _) => return Err(libc::EIO),
                (_, libc::EAGAIN) | (_, libc::EINTR) => continue,
                (_, e) => return Err(e),
            }
        }
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
