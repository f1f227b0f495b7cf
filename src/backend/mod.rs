//! Backends: where a device tier's bytes come from. One mapping path serves every device: a
//! file or device node mapped `MAP_SHARED` (a `/dev/daxX.Y`, a PCI BAR `resourceN` file in
//! sysfs, a regular file, a file in `/dev/shm`), or, for CXL memory onlined as a NUMA node,
//! anonymous memory bound to that node with `mbind`.
//!
//! Every region is placed at a chunk-aligned address and its chunks are reserved whole, so the
//! page map can own it. Nothing here reads the device's memory: sizes come from `fstat` and
//! sysfs. Device specifics live in their own files: `nvme` (an NVMe controller's CMB and PMR
//! BARs, set up through its registers when the tier opens, and the PMR's persistence barrier),
//! `devdax` (a device DAX's size and alignment), `file_space` (a tier file's space reserved at
//! open, created and `%p` files removed). `device_barrier` is the read that makes earlier
//! writes durable on a device, for the persistent tiers. Every failure is a `Problem`
//! (`problem`) naming what went wrong; the caller prints it in one line with the tier and
//! path, and runs on without the tier.

mod devdax;
mod file_space;
#[cfg(test)]
pub(crate) mod lock_wait;
mod nvme;
mod problem;
mod shared_range;

pub(crate) use problem::Problem;
pub(crate) use shared_range::map_shared_range;

use crate::chunk::{self, CHUNK_SIZE};
use crate::config::TierSpec;
use crate::os;
use core::ffi::{c_char, CStr};

/// A mapped device region: `[base, base + len)`, chunk-aligned, its chunks
/// `[base, base + reserved)` ours alone.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Region {
    pub base: usize,
    pub len: usize,
    pub reserved: usize,
    /// Mapped `MAP_SHARED` from a file or device: a process forked from ours sees the same
    /// bytes, where anonymous (NUMA-bound) memory is copied on write like any other.
    pub shared_across_fork: bool,
    /// The open descriptor that holds the file's lock (`lock_range`), or -1; closed by
    /// `unmap_region`.
    pub lock_fd: i32,
    /// What kind of memory backs the region (how writes are made durable: `device::persist`).
    pub media: Media,
    /// The region's bytes did not exist before this open (a file just created or extended
    /// over them): they are zeroes.
    pub new_bytes: bool,
    /// How to make the writes so far durable on the device (`device_barrier`).
    pub barrier: Barrier,
    /// An NVMe PMR's register page, mapped for the barrier, or 0; unmapped by `unmap_region`.
    pub registers: usize,
}

/// What backs a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Media {
    /// A regular file (on a disk, in /dev/shm): durable through `msync`.
    File,
    /// A PCI BAR (`/sys/.../resourceN`): posted writes, ordered, flushed by a read.
    Bar,
    /// Device DAX: durable once its cache lines are written back.
    Dax,
    /// Anonymous memory (CXL as a NUMA node): never durable.
    Anonymous,
}

/// The read that orders a device's earlier writes before anything after it: PCIe posts
/// writes, and a read completion cannot pass them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Barrier {
    /// Read one word of the region itself (any device; an NVMe PMR with PMRCAP.PMRWBM bit 0).
    ReadRegion,
    /// Read the 32-bit register at this address (an NVMe PMR's PMRSTS, PMRWBM bit 1).
    ReadRegister(usize),
}

/// Waits until every write to `region` issued before it has reached the device (`tm_persist`
/// on a BAR, `device::persist`): drains write-combining buffers, then performs the read
/// `region.barrier` names — one read of the region, which a PCIe device answers only after the
/// posted writes before it (a read does not pass a posted write), or an NVMe PMR's PMRSTS read.
pub(crate) fn device_barrier(region: &Region) {
    // Drains write-combining buffers (a `resourceN_wc` mapping) before the read.
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    match region.barrier {
        // SAFETY: the region is mapped readable for `len > 0` bytes from `base`.
        Barrier::ReadRegion => unsafe { (region.base as *const u8).read_volatile() },
        // SAFETY: the register page stays mapped as long as the region (`unmap_region`).
        Barrier::ReadRegister(at) => unsafe { (at as *const u32).read_volatile() as u8 },
    };
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

/// Maps the region `spec` describes.
pub(crate) fn map_region(spec: &TierSpec) -> Result<Region, Problem> {
    os::keep_errno(|| match (spec.path_cstr(), spec.numa) {
        (Some(path), _) => map_path(spec, path),
        (None, Some(node)) => map_numa(spec, node),
        (None, None) => Err(Problem::new(
            "needs path= (a file or device) or numa= (a node)",
        )),
    })
}

/// Unmaps a region (its whole reservation); the caller forgets its page-map tags first.
///
/// # Safety
/// No block of the region may be used afterwards.
pub(crate) unsafe fn unmap_region(region: Region) {
    // SAFETY: the reservation is ours and unused (contract).
    unsafe { os::unmap(region.base as *mut u8, region.reserved) };
    if region.lock_fd >= 0 {
        drop(Fd(region.lock_fd));
    }
    if region.registers != 0 {
        nvme::release_registers(region.registers);
    }
}

/// Unmaps an NVMe PMR's register page that a region kept for its barrier (`Region::registers`).
pub(crate) fn release_registers(registers: usize) {
    nvme::release_registers(registers);
}

/// Releases the register page of a device the tier has left (`device::evacuate`) while a
/// barrier on another thread may still hold its address: the page is replaced by a page of
/// zeroes (the controller's mapping goes with it, one `mmap` that swaps atomically), so such a
/// late read returns 0 instead of faulting. The 4 KiB of address space stay reserved.
pub(crate) fn retire_registers(registers: usize) {
    // SAFETY: the register page is ours (mapped by `nvme::prepare`, one page); replacing it
    // with an anonymous read-only page changes nothing any other mapping relies on.
    let p = unsafe {
        libc::mmap(
            registers as *mut libc::c_void,
            os::PAGE_SIZE,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        release_registers(registers);
    }
}

struct Fd(i32);
impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: closing a descriptor we opened.
        unsafe { libc::close(self.0) };
    }
}

fn map_path(spec: &TierSpec, path: &CStr) -> Result<Region, Problem> {
    let mut created = false;
    let result = map_path_noting_creation(spec, path, &mut created);
    if result.is_err() && created {
        file_space::remove_created(path);
    } else if result.is_ok() && spec.per_process && !spec.keep {
        // This process's file, whoever made it (an image of the process before an `exec`, a
        // dead process of the same pid): unlinked now, its bytes live on as long as they are
        // mapped, so nothing is left however the process ends. An exit hook missed `_exit`
        // (dash's `sh -c` ends so), kills, and the images an `exec` replaced.
        file_space::remove_created(path);
    }
    result
}

fn map_path_noting_creation(
    spec: &TierSpec,
    path: &CStr,
    created: &mut bool,
) -> Result<Region, Problem> {
    if spec.offset as usize % os::PAGE_SIZE != 0 {
        return Err(Problem::new(
            "offset= must be a multiple of the page size (4096)",
        ));
    }
    let flags = libc::O_RDWR | libc::O_CLOEXEC;
    // SAFETY: `path` is NUL-terminated; open has no other preconditions.
    let mut fd = unsafe { libc::open(path.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 && spec.create && os::errno() == libc::ENOENT {
        // SAFETY: as above. O_EXCL tells us the file is ours to remove if the tier fails.
        fd = unsafe {
            libc::open(
                path.as_ptr(),
                flags | libc::O_CREAT | libc::O_EXCL,
                0o600 as libc::c_uint,
            )
        };
        *created = fd >= 0;
    }
    if fd < 0 {
        return Err(Problem::os("cannot open"));
    }
    let fd = Fd(fd);
    // SAFETY: `st` is a valid out-parameter for fstat.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: as above, on our open descriptor.
    if unsafe { libc::fstat(fd.0, &mut st) } != 0 {
        return Err(Problem::os("cannot stat"));
    }
    let is_file = st.st_mode & libc::S_IFMT == libc::S_IFREG;
    let new_bytes = is_file && st.st_size as u64 <= spec.offset;
    let media = match () {
        _ if !is_file => Media::Dax,
        _ if path.to_bytes().starts_with(b"/sys/") => Media::Bar,
        _ => Media::File,
    };
    let mut spec = *spec;
    let (len, bar) = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => {
            // A PCI BAR is a regular file in sysfs; an NVMe one needs its controller set up.
            let bar = nvme::prepare(path, spec.kind)?;
            if let nvme::Bar::Cmb { offset, len } = bar {
                if spec.offset == 0 && spec.size.is_none() {
                    (spec.offset, spec.size) = (offset, Some(len));
                }
            }
            (regular_file_len(&spec, &fd, st.st_size as u64), bar)
        }
        libc::S_IFCHR => (devdax::device_len(&spec, st.st_rdev), nvme::Bar::NotNvme),
        _ => {
            return Err(Problem::new(
                "is neither a regular file nor a character device",
            ))
        }
    };
    let (barrier, registers) = match bar {
        nvme::Bar::Pmr { barrier, registers } => (barrier, registers),
        _ => (Barrier::ReadRegion, 0),
    };
    let release = |problem: Problem| {
        if registers != 0 {
            nvme::release_registers(registers);
        }
        problem
    };
    let len = len.map_err(release)?;
    let offset = spec.offset as usize;
    lock_range(fd.0, offset, len).map_err(release)?;
    // A PCI BAR's file in sysfs has no room to reserve (and must never be written to).
    if st.st_mode & libc::S_IFMT == libc::S_IFREG && !is_sysfs(&fd) {
        file_space::reserve(fd.0, offset as u64, len as u64).map_err(release)?;
    }
    let reserved = reserve(len).map_err(release)?;
    if !map_shared_over(&reserved, fd.0, offset as u64, len) {
        let problem = if os::errno() == libc::EINVAL && nvme::is_bar_path(path) {
            Problem::os(
                "cannot map the BAR while a driver owns it: boot with iomem=relaxed or unbind the \
                 driver",
            )
        } else {
            Problem::os("cannot map")
        };
        // SAFETY: the reservation is ours and unused.
        unsafe { os::unmap(reserved.base as *mut u8, reserved.reserved) };
        return Err(release(problem));
    }
    // The descriptor stays open while the region is mapped: it holds the lock (it is
    // close-on-exec, so a program this one executes does not inherit it).
    let lock_fd = fd.0;
    core::mem::forget(fd);
    Ok(Region {
        len,
        shared_across_fork: true,
        lock_fd,
        media,
        new_bytes,
        barrier,
        registers,
        ..reserved
    })
}

/// Maps `[offset, offset + len)` of `fd` shared, read-write, over the fresh reservation
/// `reserved` (its start). False (errno set) if the kernel refuses.
fn map_shared_over(reserved: &Region, fd: i32, offset: u64, len: usize) -> bool {
    // SAFETY: mapping the caller's descriptor over our own fresh reservation at its base.
    let p = unsafe {
        libc::mmap(
            reserved.base as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd,
            offset as libc::off_t,
        )
    };
    p != libc::MAP_FAILED
}

/// Whether `fd` is a file of sysfs (a PCI BAR's `resourceN`).
fn is_sysfs(fd: &Fd) -> bool {
    const SYSFS_MAGIC: i64 = 0x6265_6572;
    // SAFETY: all-zero is a valid `statfs`, an out-parameter for fstatfs on our descriptor.
    let mut st: libc::statfs = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::fstatfs(fd.0, &mut st) == 0 && st.f_type as i64 == SYSFS_MAGIC }
}

/// What a region another process of this host holds is refused with (`lock_range`).
pub(crate) const IN_USE: &str =
    "is in use by another process (give each process its own file: %p in path= stands for the \
     process id)";

// Test-only: this thread's opens take no host lock, as two hosts' opens of one device would
// not see each other's (the owner record in device memory must then refuse the second).
#[cfg(test)]
std::thread_local! {
    pub(crate) static NO_HOST_LOCK: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Takes an exclusive lock on bytes `[offset, offset + len)` of the file, so that no other
/// process uses them as a tier at the same time: each would hand out the other's blocks.
/// (Programs started by this one inherit its environment, and with it the tier's path.) An
/// open-file-description lock, so a forked child shares it and an executed program does not.
/// A file system without such locks is used unlocked.
/// Also taken by the offline repair (`device::persist::repair`) while it writes a heap's file.
pub(crate) fn lock_range(fd: i32, offset: usize, len: usize) -> Result<(), Problem> {
    // SAFETY: all-zero is a valid `flock`.
    let mut lock: libc::flock = unsafe { core::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as i16;
    lock.l_whence = libc::SEEK_SET as i16;
    lock.l_start = offset as libc::off_t;
    lock.l_len = len as libc::off_t;
    #[cfg(test)]
    if NO_HOST_LOCK.with(|n| n.get()) {
        return Ok(());
    }
    // SAFETY: our open descriptor and a valid `flock`.
    if unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &lock) } == 0 {
        return Ok(());
    }
    match os::errno() {
        libc::EAGAIN | libc::EACCES => Err(Problem::new(IN_USE)),
        _ => Ok(()),
    }
}

/// The usable length of a regular file (a file in /dev/shm, on disk, or a PCI `resourceN`
/// file, whose size sysfs reports as the BAR's), creating or extending it when asked.
fn regular_file_len(spec: &TierSpec, fd: &Fd, file_len: u64) -> Result<usize, Problem> {
    let len = file_range_len(fd.0, file_len, spec.size, spec.offset, spec.create)?;
    page_floor(len)
}

/// The bytes from `offset` a region of the regular file `fd` (`file_len` bytes) spans: `size`
/// if given (extending the file to `offset + size` when `create` allows), else the rest of the
/// file. Shared with the pool, which opens its files the same way.
pub(crate) fn file_range_len(
    fd: i32,
    file_len: u64,
    size: Option<u64>,
    offset: u64,
    create: bool,
) -> Result<u64, Problem> {
    let end = match size {
        Some(size) => offset
            .checked_add(size)
            .ok_or(Problem::new("size= too large"))?,
        None if file_len > offset => file_len,
        None => return Err(Problem::new("is empty (give size= and create to make it)")),
    };
    if end > file_len {
        if !create {
            return Err(Problem::new(
                "size= is larger than the file (add create to extend it)",
            ));
        }
        // SAFETY: resizing the caller's open file.
        if unsafe { libc::ftruncate(fd, end as libc::off_t) } != 0 {
            return Err(Problem::os("cannot extend the file to size="));
        }
    }
    Ok(end - offset)
}

fn page_floor(len: u64) -> Result<usize, Problem> {
    let len = (len as usize) & !(os::PAGE_SIZE - 1);
    if len == 0 {
        return Err(Problem::new("region is smaller than a page"));
    }
    Ok(len)
}

/// Reserves chunk-aligned address space for `len` bytes, whole chunks, below the page map's
/// limit.
fn reserve(len: usize) -> Result<Region, Problem> {
    let reserved = len
        .checked_next_multiple_of(CHUNK_SIZE)
        .ok_or(Problem::new("size= too large"))?;
    let base = os::map_aligned(reserved, CHUNK_SIZE)
        .ok_or(Problem::os("cannot reserve address space"))?
        .as_ptr() as usize;
    if !chunk::covers(base, reserved) {
        // SAFETY: fresh and unused.
        unsafe { os::unmap(base as *mut u8, reserved) };
        return Err(Problem::new("no address space the page map covers"));
    }
    Ok(Region {
        base,
        len,
        reserved,
        shared_across_fork: false,
        lock_fd: -1,
        media: Media::Anonymous,
        new_bytes: true,
        barrier: Barrier::ReadRegion,
        registers: 0,
    })
}

/// CXL memory onlined as NUMA node `node`: anonymous memory bound to it.
fn map_numa(spec: &TierSpec, node: u32) -> Result<Region, Problem> {
    let size = spec.size.ok_or(Problem::new("numa= needs size="))?;
    let len = page_floor(size)?;
    let mut path = PathBuf::new();
    if !path.node_exists(node) {
        return Err(Problem::new("no such NUMA node"));
    }
    let region = reserve(len)?;
    let mask: [u64; 16] = {
        let mut m = [0u64; 16];
        m[node as usize / 64] = 1 << (node % 64);
        m
    };
    const MPOL_BIND: i32 = 2;
    const MPOL_MF_STRICT: u32 = 1;
    // SAFETY: binding our own fresh reservation; the mask holds 1024 bits.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            region.base,
            region.reserved,
            MPOL_BIND,
            mask.as_ptr(),
            1024usize,
            MPOL_MF_STRICT,
        )
    };
    if rc != 0 {
        let problem = Problem::os("cannot bind to the NUMA node");
        // SAFETY: the reservation is ours and unused.
        unsafe { os::unmap(region.base as *mut u8, region.reserved) };
        return Err(problem);
    }
    Ok(region)
}

/// A small stack buffer for sysfs paths (no allocation).
struct PathBuf {
    buf: [u8; 96],
}

impl PathBuf {
    fn new() -> Self {
        PathBuf { buf: [0; 96] }
    }

    fn build(&mut self, parts: &[&[u8]]) -> &CStr {
        let mut n = 0;
        for part in parts {
            let take = part.len().min(self.buf.len() - 1 - n);
            self.buf[n..n + take].copy_from_slice(&part[..take]);
            n += take;
        }
        self.buf[n] = 0;
        // SAFETY: NUL-terminated just above, no interior NUL (parts are ASCII paths/digits).
        unsafe { CStr::from_ptr(self.buf.as_ptr() as *const c_char) }
    }

    /// `/sys/dev/char/MAJOR:MINOR/NAME`.
    fn format(&mut self, major: u32, minor: u32, name: &[u8]) -> &CStr {
        let (mut a, mut b) = ([0u8; 10], [0u8; 10]);
        let (major, minor) = (decimal(major as u64, &mut a), decimal(minor as u64, &mut b));
        self.build(&[b"/sys/dev/char/", major, b":", minor, b"/", name])
    }

    fn node_exists(&mut self, node: u32) -> bool {
        let mut d = [0u8; 10];
        let path = self.build(&[
            b"/sys/devices/system/node/node",
            decimal(node as u64, &mut d),
        ]);
        // SAFETY: `path` is NUL-terminated.
        unsafe { libc::access(path.as_ptr(), libc::F_OK) == 0 }
    }
}

fn decimal(mut v: u64, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || i == 0 {
            return &buf[i..];
        }
    }
}

/// Reads a decimal (or 0x-prefixed hexadecimal) number from a sysfs file.
fn read_sysfs_number(path: &CStr) -> Option<u64> {
    // SAFETY: `path` is NUL-terminated.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let fd = Fd(fd);
    let mut buf = [0u8; 32];
    // SAFETY: reading into our stack buffer.
    let n = unsafe { libc::read(fd.0, buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return None;
    }
    let text = buf[..n as usize].trim_ascii();
    match text.strip_prefix(b"0x") {
        Some(hex) => u64::from_str_radix(core::str::from_utf8(hex).ok()?, 16).ok(),
        None => core::str::from_utf8(text).ok()?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::tier_spec_for_test as spec;

    fn shm(name: &str) -> String {
        format!("/dev/shm/tiermalloc-backend-{}-{name}", std::process::id())
    }

    #[test]
    fn a_created_file_is_mapped_chunk_aligned_and_shared() {
        let path = shm("create");
        let region = map_region(&spec(&format!("pmr:path={path},size=6M,create"))).unwrap();
        assert_eq!(region.base % CHUNK_SIZE, 0);
        assert_eq!(region.len, 6 << 20);
        assert_eq!(region.reserved, 8 << 20);
        // SAFETY: the region is mapped read-write.
        unsafe { (region.base as *mut u8).add(4096).write(0x5a) };
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), 6 << 20);
        assert_eq!(on_disk[4096], 0x5a, "MAP_SHARED writes reach the file");
        // SAFETY: nothing uses the region any more.
        unsafe { unmap_region(region) };
        // A fork another test made meanwhile may still hold the lock (`lock_wait`).
        lock_wait::wait_until_unlocked(&path, || {});
        // Mapped again without size=: the file's size.
        let again = map_region(&spec(&format!("pmr:path={path}"))).unwrap();
        assert_eq!(again.len, 6 << 20);
        // SAFETY: as above.
        unsafe {
            assert_eq!(*(again.base as *const u8).add(4096), 0x5a);
            unmap_region(again);
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn failures_name_the_problem() {
        let missing = map_region(&spec("cxl:path=/dev/shm/tiermalloc-surely-missing")).unwrap_err();
        assert_eq!((missing.what, missing.errno), ("cannot open", libc::ENOENT));
        let path = shm("small");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let too_big = map_region(&spec(&format!("cmb:path={path},size=1M"))).unwrap_err();
        assert!(too_big.what.contains("larger than the file"), "{too_big:?}");
        let unaligned = map_region(&spec(&format!("cmb:path={path},offset=100"))).unwrap_err();
        assert!(unaligned.what.contains("offset="), "{unaligned:?}");
        let dir = map_region(&spec("cmb:path=/dev/shm")).unwrap_err();
        assert_eq!((dir.what, dir.errno), ("cannot open", libc::EISDIR));
        std::fs::remove_file(path).unwrap();
        let no_node = map_region(&spec("cxl:numa=1000,size=4M"));
        assert_eq!(no_node.unwrap_err().what, "no such NUMA node");
        let nothing = map_region(&spec("cxl:size=4M")).unwrap_err();
        assert!(nothing.what.contains("path="));
    }

    #[test]
    fn a_file_the_file_system_cannot_hold_is_refused_and_a_created_one_removed() {
        let path = shm("room");
        let c = std::ffi::CString::new("/dev/shm").unwrap();
        // SAFETY: all-zero is a valid `statvfs` (integers only).
        let mut st: libc::statvfs = unsafe { core::mem::zeroed() };
        // SAFETY: a valid path and out-parameter.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        let free = st.f_bavail * st.f_frsize;
        let size = (free + (1 << 30)) & !(CHUNK_SIZE as u64 - 1);
        let problem =
            map_region(&spec(&format!("cxl:path={path},size={size},create"))).unwrap_err();
        let (needed, reported_free) = problem.room.expect("a problem naming the room");
        assert_eq!(needed, size);
        assert!(reported_free <= free + (64 << 20), "{problem:?}");
        assert!(
            !std::path::Path::new(&path).exists(),
            "the file created for the refused tier is left behind"
        );
        // A file that fits is reserved whole: no SIGBUS later for want of space.
        let region = map_region(&spec(&format!("cxl:path={path},size=8M,create"))).unwrap();
        let blocks = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::blocks(&m));
        assert!(
            blocks.unwrap() * 512 >= 8 << 20,
            "the file's space is not reserved"
        );
        // SAFETY: nothing uses the region.
        unsafe { unmap_region(region) };
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn numa_node_zero_binds() {
        let region = map_region(&spec("cxl:numa=0,size=4M")).unwrap();
        // SAFETY: mapped read-write.
        unsafe {
            (region.base as *mut u8).write_bytes(1, region.len);
            unmap_region(region);
        }
    }

    #[test]
    fn sysfs_numbers_parse() {
        let dir = shm("num");
        std::fs::write(&dir, b"0x200000\n").unwrap();
        let mut p = PathBuf::new();
        assert_eq!(read_sysfs_number(p.build(&[dir.as_bytes()])), Some(2 << 20));
        std::fs::write(&dir, b"4096\n").unwrap();
        assert_eq!(read_sysfs_number(p.build(&[dir.as_bytes()])), Some(4096));
        std::fs::remove_file(dir).unwrap();
        assert_eq!(decimal(0, &mut [0; 10]), b"0");
        assert_eq!(decimal(4294967295, &mut [0; 10]), b"4294967295");
    }
}
