//! The operating-system interface: mmap/munmap/madvise/mremap, errno, the page size, writing a
//! line to stderr, and reading the environment straight from `environ`.
//!
//! Preconditions are stated per function. Nothing here allocates or panics, so every function
//! may be called from inside `malloc`. Calls that can fail harmlessly (madvise, munmap) keep
//! `errno` as it was, because a successful `malloc` must leave `errno` untouched.

use core::ffi::{c_char, c_int, c_void};
use core::ptr::{self, NonNull};

/// The size of a base page. 4 KiB on every Linux target we build for; checked at start-up by
/// `page_size_matches` (tests).
pub(crate) const PAGE_SIZE: usize = 4096;

/// `bytes` rounded up to a whole number of pages.
pub(crate) const fn page_round(bytes: usize) -> usize {
    (bytes + PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

/// The calling thread's `errno`.
#[inline]
pub fn errno() -> i32 {
    // SAFETY: __errno_location returns a valid pointer to this thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
#[inline]
pub fn set_errno(value: i32) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = value }
}

/// Runs `f` and restores `errno` afterwards.
#[inline]
pub fn keep_errno<T>(f: impl FnOnce() -> T) -> T {
    let saved = errno();
    let result = f();
    set_errno(saved);
    result
}

/// Maps `size` bytes of zeroed, private, read-write anonymous memory (no swap reservation).
/// `size` must be a multiple of `PAGE_SIZE`. Returns `None` (errno kept) when the kernel refuses.
pub fn map_anonymous(size: usize) -> Option<NonNull<u8>> {
    keep_errno(|| {
        // SAFETY: an anonymous mapping at an address of the kernel's choosing touches no
        // existing memory.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            None
        } else {
            NonNull::new(p.cast())
        }
    })
}

/// Maps `size` bytes of anonymous memory whose start is a multiple of `align` (a power of two
/// and a multiple of `PAGE_SIZE`). Over-maps by `align` and trims both ends.
pub fn map_aligned(size: usize, align: usize) -> Option<NonNull<u8>> {
    debug_assert!(align.is_power_of_two() && align % PAGE_SIZE == 0 && size % PAGE_SIZE == 0);
    let total = size.checked_add(align)?;
    let raw = map_anonymous(total)?.as_ptr() as usize;
    let start = (raw + align - 1) & !(align - 1);
    let end = start + size;
    // SAFETY: [raw, start) and [end, raw + total) are parts of the mapping just made, which
    // nothing else refers to.
    unsafe {
        if start > raw {
            unmap(raw as *mut u8, start - raw);
        }
        if raw + total > end {
            unmap(end as *mut u8, raw + total - end);
        }
    }
    NonNull::new(start as *mut u8)
}

/// Unmaps `[p, p + size)`.
///
/// # Safety
/// The range must be a mapping (or part of one) that nothing refers to any more.
pub unsafe fn unmap(p: *mut u8, size: usize) {
    keep_errno(|| {
        // SAFETY: the caller guarantees the range is ours and unused.
        unsafe { libc::munmap(p.cast(), size) };
    });
}

/// Gives the physical pages of `[p, p + size)` back to the kernel; the range stays mapped and
/// reads as zero afterwards. Page-aligned arguments required.
///
/// # Safety
/// The range must be mapped, private and anonymous, and hold nothing anyone still needs.
pub unsafe fn discard(p: *mut u8, size: usize) {
    keep_errno(|| {
        // SAFETY: the caller guarantees the range is ours and its contents are dead.
        unsafe { libc::madvise(p.cast(), size, libc::MADV_DONTNEED) };
    });
}

/// Tells the kernel that `[p, p + size)` (a file mapping) is about to be read front to back
/// (a recovery scan): sequential read-ahead, started for the whole range at once, so that a
/// file on a disk is read in large reads. (`MADV_POPULATE_READ` was slower: on a 1 GiB
/// tmpfs file it faulted the pages in one by one, 266 against 210 ms for the whole open.)
/// `fd` is the mapped file's descriptor (or -1): a file in memory (tmpfs, `/dev/shm`) has
/// nothing to read ahead, and there `MADV_WILLNEED` only walks the file's page cache looking
/// for swapped-out pages (0.8 ms of CPU for 1 GiB, about 1 % of recovering 1 M blocks), so it
/// is skipped.
pub fn advise_sequential(p: *mut u8, size: usize, fd: i32) {
    keep_errno(|| {
        // SAFETY: madvise only changes read-ahead and paging advice, never contents.
        unsafe { libc::madvise(p.cast(), size, libc::MADV_SEQUENTIAL) };
        if !in_memory_fs(fd) {
            // SAFETY: as above.
            unsafe { libc::madvise(p.cast(), size, libc::MADV_WILLNEED) };
        }
    });
}

/// Whether the open file `fd` lives in memory (tmpfs); false for -1 or when unknown.
fn in_memory_fs(fd: i32) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    if fd < 0 {
        return false;
    }
    // SAFETY: all-zero is a valid `statfs`, an out-parameter for fstatfs on a descriptor.
    let mut st: libc::statfs = unsafe { core::mem::zeroed() };
    // SAFETY: `st` is a valid out-parameter; a bad descriptor makes fstatfs fail, nothing more.
    unsafe { libc::fstatfs(fd, &mut st) == 0 && st.f_type as i64 == TMPFS_MAGIC }
}

/// Makes the pages of `[p, p + size)` (page-aligned, a mapping of ours) present and writable in
/// one call (`MADV_POPULATE_WRITE`, Linux 5.14) instead of one fault per page: for host metadata
/// a recovery is about to fill in full (on the 2-core VM a page fault's entry alone is about a
/// third of a microsecond), or an evacuation target's chunk (a shmem file allocates its pages
/// here). Best effort: an older kernel or a backing that cannot (a PCI BAR) refuses, and the
/// pages are then faulted one by one as before. Changes no byte.
pub fn prefault_write(p: *mut u8, size: usize) {
    const MADV_POPULATE_WRITE: i32 = 23;
    keep_errno(|| {
        // SAFETY: populating pages of a mapping of ours changes none of their bytes.
        unsafe { libc::madvise(p.cast(), size, MADV_POPULATE_WRITE) };
    });
}

/// Makes `[p, p + size)` (page-aligned, ours) inaccessible (`writable` false) or readable and
/// writable again. False if the kernel refused (out of mappings, `vm.max_map_count`).
///
/// # Safety
/// The range must be ours, and nothing may use it while it is inaccessible.
pub unsafe fn protect(p: *mut u8, size: usize, writable: bool) -> bool {
    let prot = if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_NONE
    };
    // SAFETY: per the contract.
    keep_errno(|| unsafe { libc::mprotect(p.cast(), size, prot) } == 0)
}

/// A monotonic clock in nanoseconds, coarse (a few milliseconds) and cheap: the vDSO's
/// `CLOCK_MONOTONIC_COARSE`, no system call.
pub fn coarse_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// Clock `clock` in nanoseconds (`CLOCK_MONOTONIC`, `CLOCK_REALTIME`, ...).
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid out-parameter; the clocks callers name exist on every Linux since
    // 2.6.32.
    unsafe { libc::clock_gettime(clock, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Tries to grow or shrink the mapping `[p, p + old)` to `new` bytes without moving it.
///
/// # Safety
/// `[p, p + old)` must be a whole anonymous mapping of ours.
pub unsafe fn remap_in_place(p: *mut u8, old: usize, new: usize) -> bool {
    keep_errno(|| {
        // SAFETY: the caller guarantees the mapping; without MREMAP_MAYMOVE the kernel either
        // resizes it where it is or fails.
        let r = unsafe { libc::mremap(p.cast(), old, new, 0) };
        r != libc::MAP_FAILED
    })
}

/// Moves the pages of the mapping `[p, p + old)` to `dst`, which becomes a mapping of `new`
/// bytes (the part past `old` zero-filled). Replaces whatever was mapped at `[dst, dst + new)`.
///
/// # Safety
/// `[p, p + old)` must be an anonymous mapping of ours (the whole of one, or the start of one
/// when `new == old`) and `[dst, dst + new)` a range we own (reserved by us), disjoint from it.
pub unsafe fn remap_to(p: *mut u8, old: usize, dst: *mut u8, new: usize) -> bool {
    keep_errno(|| {
        // SAFETY: as stated by the caller; MREMAP_FIXED replaces our own reservation at dst.
        let r = unsafe {
            libc::mremap(
                p.cast(),
                old,
                new,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                dst as *mut c_void,
            )
        };
        r != libc::MAP_FAILED
    })
}

/// Writes all of `bytes` to stderr, ignoring errors (used for diagnostics only).
pub fn write_stderr(bytes: &[u8]) {
    keep_errno(|| {
        let mut rest = bytes;
        while !rest.is_empty() {
            // SAFETY: the buffer is valid for `rest.len()` bytes.
            let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
            if n <= 0 {
                if n < 0 && errno() == libc::EINTR {
                    continue;
                }
                return;
            }
            rest = &rest[n as usize..];
        }
    })
}

extern "C" {
    static mut environ: *const *const c_char;
    // POSIX, in glibc's libc; not in the `libc` crate.
    fn pthread_setcancelstate(state: c_int, old_state: *mut c_int) -> c_int;
}

/// glibc's value of `PTHREAD_CANCEL_DISABLE` (`<pthread.h>`).
const PTHREAD_CANCEL_DISABLE: c_int = 1;

/// Runs `f` with the calling thread's cancellation held off (a cancellation pending stays
/// pending and acts at the thread's next cancellation point after `f`): for output that must
/// not be cut short, since `write` is a cancellation point.
pub fn without_cancellation(f: impl FnOnce()) {
    let mut state: c_int = 0;
    // SAFETY: changes only the calling thread's cancelability; restored below.
    unsafe { pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &mut state) };
    f();
    // SAFETY: as above.
    unsafe { pthread_setcancelstate(state, &mut state) };
}

/// Looks `name` up in the process environment without allocating and without libc's
/// `getenv` (which may not be ready this early). `None` when unset, or when the environment
/// is not yet set up (the first `malloc` can come before libc has initialised `environ`).
pub fn getenv(name: &[u8]) -> Option<&'static [u8]> {
    // SAFETY: reading the `environ` pointer; it is either null or a null-terminated array of
    // NUL-terminated strings that live for the rest of the process (we only read them).
    let mut entry = unsafe { ptr::addr_of!(environ).read() };
    if entry.is_null() {
        return None;
    }
    loop {
        // SAFETY: `entry` points into the null-terminated environ array.
        let s = unsafe { *entry };
        if s.is_null() {
            return None;
        }
        // SAFETY: each entry is a NUL-terminated string that outlives us.
        let bytes = unsafe { core::ffi::CStr::from_ptr(s) }.to_bytes();
        if bytes.len() > name.len() && bytes.starts_with(name) && bytes[name.len()] == b'=' {
            return Some(&bytes[name.len() + 1..]);
        }
        // SAFETY: not yet at the terminating null, so the next slot exists.
        entry = unsafe { entry.add(1) };
    }
}

/// Whether the environment is readable yet (see `getenv`).
pub fn environ_ready() -> bool {
    // SAFETY: reading a pointer-sized global.
    !unsafe { ptr::addr_of!(environ).read() }.is_null()
}

/// Appends `": <strerror(errno)>"` to `line` (`": errno N"` if the text cannot be had);
/// nothing for `errno == 0`.
pub fn write_errno_text(line: &mut impl core::fmt::Write, errno: i32) {
    if errno == 0 {
        return;
    }
    let mut buf = [0u8; 128];
    // SAFETY: strerror_r writes a NUL-terminated message into our buffer.
    let rc = unsafe { libc::strerror_r(errno, buf.as_mut_ptr().cast(), buf.len()) };
    let text = core::ffi::CStr::from_bytes_until_nul(&buf)
        .ok()
        .and_then(|c| c.to_str().ok());
    let _ = match text {
        Some(text) if rc == 0 => write!(line, ": {text}"),
        _ => write!(line, ": errno {errno}"),
    };
}

/// Writes one line to stderr: the text of `args` and a newline, in one `write`, without
/// allocating and without std's stderr lock (which another thread may hold, or held at a
/// fork). A line longer than the buffer is cut, and still ends with its newline.
pub fn say(args: core::fmt::Arguments) {
    use core::fmt::Write;
    let mut line = LineBuf::new();
    let _ = line.write_fmt(args);
    if line.len == line.buf.len() {
        line.len -= 1;
    }
    let _ = line.write_str("\n");
    line.flush();
}

/// A fixed-capacity line buffer that implements `core::fmt::Write` without allocating, for
/// diagnostics and the statistics report. Output past the capacity is dropped.
pub struct LineBuf {
    buf: [u8; 512],
    len: usize,
}

impl LineBuf {
    pub const fn new() -> Self {
        LineBuf {
            buf: [0; 512],
            len: 0,
        }
    }
    /// The text buffered so far.
    #[cfg_attr(not(feature = "override"), allow(dead_code))] // for `malloc_info`
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Writes the buffered text to stderr and empties the buffer.
    pub fn flush(&mut self) {
        write_stderr(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl core::fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Reads up to `buf.len()` bytes of the file named by the NUL-terminated `path`, without
/// allocating (`cgroup`, `liveness`): the count read, `None` if it cannot be opened.
pub fn read_file(path: &[u8], buf: &mut [u8]) -> Option<usize> {
    keep_errno(|| {
        // SAFETY: `path` is NUL-terminated (callers pass a literal with `\0` or `c_str`).
        let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        let mut len = 0;
        while len < buf.len() {
            // SAFETY: the rest of `buf` is writable.
            let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
            if n <= 0 {
                break;
            }
            len += n as usize;
        }
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
        Some(len)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_matches() {
        // SAFETY: sysconf has no preconditions.
        assert_eq!(
            unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize,
            PAGE_SIZE
        );
    }

    #[test]
    fn aligned_maps_are_aligned_and_errno_is_kept() {
        set_errno(12345);
        let p = map_aligned(1 << 20, 4 << 20).unwrap();
        assert_eq!(p.as_ptr() as usize % (4 << 20), 0);
        // SAFETY: the mapping is ours and unused.
        unsafe {
            p.as_ptr().write_bytes(7, 1 << 20);
            discard(p.as_ptr(), 1 << 20);
            assert_eq!(*p.as_ptr(), 0);
            unmap(p.as_ptr(), 1 << 20);
        }
        assert_eq!(errno(), 12345);
    }

    #[test]
    fn getenv_reads_environ() {
        assert!(getenv(b"PATH").is_some());
        assert!(getenv(b"TIERMALLOC_SURELY_UNSET_VARIABLE").is_none());
        assert!(getenv(b"PAT").is_none() || std::env::var("PAT").is_ok());
    }
}
