//! Live evacuation of a device tier (seed 004): its bytes move onto another file or device
//! while the program's threads keep reading and writing them, and afterwards the tier's
//! virtual range is backed by the new device at the same offsets. No address changes.
//!
//! # How
//!
//! The region is moved one chunk (`CHUNK_BYTES`, 1 MiB by default) at a time, in address
//! order, the chunks readied in batches (`BATCH_BYTES`: one chunk unless
//! `TIERMALLOC_EVACUATE_BATCH` says more; the live extents listed, the target's and the
//! view's pages populated, once per batch). For each chunk `[lo, hi)`:
//! 0. *pre-copy* (writers not held; a source mapped from a file only, `precopy`): the batch's
//!    live extents were listed, the chunk is split off the rest of the source's mapping (so
//!    that step 3 replaces a mapping whole, waiting for no fault elsewhere in the source),
//!    the chunk's entries in the tier's page tables are dropped (the file keeps its pages),
//!    and the live bytes are copied into the target: file to file by the kernel where it can
//!    (`file_copy`), else through a second mapping of the source into one of the target.
//!    A thread that touches the chunk from here on maps its page again, which is how step 2
//!    knows what changed; a second, short pass drops and copies again the pages touched during
//!    that copy (`Precopy::second_pass`), so that step 2 is left with those touched since;
//! 1. with the tier's heap lock held (no extent is made or freed meanwhile), the heap lists
//!    the allocated extents that overlap the chunk (plus the headers of the chain inside every
//!    free extent, and retired slabs' windows, so that what a recovery scan reads is the same
//!    on the target: `free_headers`), then the chunk is write-protected through userfaultfd
//!    (`uffd.rs`), which starts the writers' hold; the lock is released;
//! 2. the live bytes that may have changed since the pre-copy (pages mapped again, ranges the
//!    pre-copy did not list; all of them without a pre-copy) are copied from the source into
//!    a second mapping of the target (the *staging* mapping, at another address), at the same
//!    offsets; free space is not copied. The staging pages for them were made present before
//!    (`populate`), so the hold covers a plain memcpy, not the target's page allocation;
//! 3. the target is mapped over `[base + lo, base + hi)` (`mmap MAP_FIXED`, at file offset
//!    `lo`): from here on the chunk's bytes are the target's;
//! 4. the chunk's sleeping writers are woken; they retry their fault on the new mapping.
//!
//! With the entries dropped in step 0, neither step 1 nor step 3 has a TLB entry to shoot
//! down on another CPU, which was most of a long hold (`precopy` says why).
//!
//! Why this keeps every promise:
//! - *reads never wait*: write-protection stops writers only. (The remap in step 3 holds the
//!   process's mm lock for the few microseconds of an `mmap`, as any `mmap` does.)
//! - *a write is held only while its own chunk is copied*: only one chunk is protected at a
//!   time, from step 1 to step 4, and the evacuating thread runs that stretch at real-time
//!   priority where it may (`hold_priority`), so no ordinary thread preempts it meanwhile.
//! - *no write is lost*: a store that completed before step 1 is in the old pages: the
//!   pre-copy has it if it completed before the entries were dropped, step 2 copies it
//!   otherwise (its page was mapped again). The protect flushes TLBs before it returns, so no
//!   store slips past it; one issued after step 1 sleeps until step 4 and then lands in the
//!   target.
//! - *system calls writing into a block*: `read(2)`, `recv`, `pread` fault on the protected
//!   page inside the kernel's `copy_to_user` and sleep like a user store, then complete; no
//!   EFAULT, nothing lost (an `mprotect` scheme fails here).
//! - *allocation and free keep working*: they take the heap lock, which step 1 holds only for
//!   the protect ioctl and the listing. An extent made before step 1 is listed and copied; one
//!   made after it has its header write held until step 4, which puts it on the target; a block
//!   freed before the listing is not copied (it need not arrive). A `free` that writes a
//!   header state into the chunk being copied sleeps holding the heap lock, so other
//!   allocations of the tier wait that long too ("held briefly"). The host metadata is never
//!   touched, so the statistics stay exact.
//! - *signal handlers*: the evacuating thread blocks signals while it holds a chunk; a handler
//!   that wrote into the chunk on that thread would otherwise wait for the thread itself.
//!
//! What it cannot hold: writes that do not go through the page tables, i.e. through pages
//! pinned before the move (io_uring fixed buffers, RDMA registrations, an `O_DIRECT` read in
//! flight). Those land in the old pages after they were copied.
//!
//! # Backings
//!
//! The source must be one userfaultfd can write-protect: shmem (`/dev/shm`, tmpfs), hugetlbfs,
//! anonymous memory (`numa=` tiers). A hugetlbfs source moves in chunks of whole huge pages
//! (`page_size_of`): the kernel protects and replaces its mappings only so. A regular file on a
//! disk file system, device DAX and PCI BARs are refused with -1 + EOPNOTSUPP and one line (their
//! writers cannot be held, so a move could lose writes). The target may be anything a tier can map.
//!
//! # Mechanisms looked at (`benches/device/evacuate_probe.c`, Linux 6.18 here)
//!
//! | mechanism | shmem | disk file (ext4) | anonymous | used? |
//! |---|---|---|---|---|
//! | uffd write-protect, synchronous | yes; a `read(2)` into a protected page waits, then completes | no (EINVAL) | yes | yes: it is what holds writers, kernel ones included |
//! | uffd-wp async + `PAGEMAP_SCAN` (`PM_SCAN_WP_MATCHING`) | yes | yes | yes | no, see below |
//! | soft-dirty (`clear_refs` 4, pagemap bit 55) | no | no | no | no: not in this kernel's build |
//! | `UFFDIO_MOVE` | no (EINVAL) | no | yes | no |
//! | `move_pages` | yes | yes | yes | no, see below |
//!
//! - *Dirty tracking with pre-copy rounds* (async write-protection and `PAGEMAP_SCAN`) would
//!   copy each chunk once without holding anyone, then hold it only to copy the pages written
//!   since. It cannot replace the synchronous hold for the last pass (an async-protected page
//!   is never held), and the probe shows the handover impossible here: a write-protecting scan
//!   of a synchronously registered range is refused (EPERM), a synchronous userfaultfd cannot
//!   register over the async one (EBUSY), and unregistering the async one drops its marks
//!   (every page then looks written). It works on disk files too, but without a synchronous
//!   final pass a disk file still cannot be moved safely.
//! - *The faulting writer copying its own chunk*: it sleeps in the kernel and runs no user
//!   code until woken; only `UFFD_FEATURE_SIGBUS` returns the fault to it, and then kernel
//!   writes (`read(2)` into a block) fail with EFAULT.
//! - `UFFDIO_MOVE` moves anonymous pages between ranges of one process: no use for file-backed
//!   tiers, and a target that is a file or device is never anonymous.
//! - `move_pages` (or `mbind` with `MPOL_MF_MOVE`) migrates a `numa=` tier's pages to another
//!   node in place, the kernel holding each page's readers *and* writers during its copy; the
//!   contract's target is a file or device, so a `numa=` tier here moves onto a file with the
//!   same protocol as shmem. (This machine has one node: nothing to measure.)
//!
//! # Failure
//!
//! Every check (kind, target, write-protection) happens before the first chunk moves: a bad
//! target leaves the tier as it was. If mapping the target over a chunk fails midway (the
//! kernel out of memory or of mappings), the chunk is un-protected and the move stops there:
//! the tier stays usable, part on each device, and both stay open (with the target's PMR
//! register page, if any; barriers keep reading the source's).
//!
//! A crash midway leaves a persistent heap split across both devices: the superblock's move
//! record (`move_record`) says how far the move got on each, and the next open of the source
//! (the path the tier's configuration names) rolls the move back, copying the moved part back
//! from the target, so that the heap recovers whole; the next open of the target instead
//! rolls it forward, copying the rest from the source, which is stale from then on. After a move
//! that finished, the old device's record makes it refused as stale. On success the tier's media,
//! barrier and register page become the target's (`DeviceState::backing`) and the whole target is
//! made durable before `tm_evacuate` returns.

mod file_copy;
mod hold_priority;
mod move_record;
mod numa_move;
mod precopy;
mod uffd;

use super::header::{BlockHeader, HEADER_MAGIC, HEADER_SIZE};
use super::persist::STATE_SLAB;
use super::slabs::SLAB_BYTES;
use crate::backend::{self, Barrier, Media, Problem, Region};
use crate::config::TierSpec;
use crate::kind::Kind;
use crate::os;
use core::ffi::CStr;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use file_copy::FileCopy;
use hold_priority::HoldPriority;
use precopy::{Precopy, Touched};
use uffd::WriteProtector;

/// Bytes moved per step by default: 1 MiB. With a pre-copy a writer of the chunk waits for
/// the protect, the copy of what changed meanwhile (usually little), the remap and the wake;
/// without one (anonymous memory), for the chunk's copy too. The goal is a hold p99 within one
/// chunk's copy + 20 us. The fixed part of a hold (protect, remap, wake; their tails are the
/// kernel's page-table and mapping work, and on an idle host the other vCPU's wake-up) grows
/// more slowly than the chunk, while the budget grows with it. 1 GiB, 4 writers, chunk sizes
/// interleaved in one sitting (BENCHMARKS.md, "Session 10"), hold p99 / (chunk memcpy + 20 us),
/// median (range): 256 KiB 0.68 (0.42-0.91; 1.3-1.6 on session 9's quiet machine, whose tail
/// was some 35 us longer), 512 KiB 0.54 (0.38-0.81), 1 MiB 0.55 (0.43-0.72), 2 MiB 0.46
/// (0.19-0.52). A held writer waits longer in absolute terms (hold p99 median 33 us at
/// 256 KiB, 50 at 512 KiB, 95 at 1 MiB, 148 at 2 MiB): 1 MiB keeps the goal with a margin
/// for the quiet machine's longer tail that 512 KiB lacks, at two thirds of 2 MiB's wait. The
/// copying thread's CPU per byte does not depend on the chunk (81-82 % of memcpy's at 256 KiB
/// to 1 MiB, medians of 10). `TIERMALLOC_EVACUATE_CHUNK` (a size, rounded up to 4 KiB)
/// overrides it.
const CHUNK_BYTES: usize = 1 << 20;

/// Bytes readied together by default (`batch_bytes`): one chunk. Batches of 4 MiB cut the
/// system calls per chunk from 15.4 to 9.3, but on the quiet machine, paired with batches of
/// one chunk in the same sitting (BENCHMARKS.md, "Session 9, after every merge"), they made
/// the writers' hold p99 91-115 us against 62-74 (the remap's p99 62-74 against 29-37) and
/// the copying thread's CPU per byte 63-66 % of memcpy's against 66-70 %; 1 MiB was between.
const BATCH_BYTES: usize = CHUNK_BYTES;

/// Most runs of touched pages the pre-copy's second pass drops and copies again (a system call
/// each); a chunk with more leaves the rest to its hold.
const SECOND_PASS_RUNS: usize = 16;

/// Most separate live ranges remembered per chunk or batch; past that, the last range is stretched
/// to the chunk's end (copying some free space rather than allocating).
const MAX_RANGES: usize = 256;

/// The evacuation state of one device tier.
///
/// Invariants: `device_fd` is the open descriptor of the file or device behind the tier's
/// range (holding its lock), or -1 for anonymous memory (`Region::lock_fd` is the one the
/// tier was opened with, stale after a move); `moving` is true exactly while one
/// evacuation runs, and `uffd` is then its userfaultfd (else -1). `media`, `barrier_at` and
/// `registers` describe the device behind the range now (`backing`): after a move they are
/// the target's, and the source's register page is released.
pub(crate) struct DeviceState {
    device_fd: AtomicI32,
    /// `Media` as a number (`media_code`).
    media: AtomicU8,
    /// The register a barrier reads (`Barrier::ReadRegister`), or 0 for `ReadRegion`.
    barrier_at: AtomicUsize,
    /// The PMR register page mapped for the barrier, or 0.
    registers: AtomicUsize,
    moving: AtomicBool,
    uffd: AtomicI32,
    /// The move's `/proc/self/pagemap` descriptor (`precopy`) while one runs, else -1: a
    /// child forked meanwhile closes its copy (it would read the parent's page tables).
    pagemap: AtomicI32,
    /// The move's target descriptor while one runs, else -1: a child forked meanwhile closes
    /// its copy (it would keep the target's lock after the parent moved off it).
    target_fd: AtomicI32,
    /// A descriptor kept open after a move failed midway (see "Failure"), else -1.
    half_moved_fd: AtomicI32,
    /// The offset in the file of `device_fd` at which the region starts (`offset=` of the
    /// spec; 0 once a move made the target the device).
    file_offset: AtomicU64,
    /// The tier's spec: its `spare=` path, and whether it persists.
    spare: TierSpec,
    /// The path of the device behind the region now (the spec's, then each move's target;
    /// none for anonymous memory): a move's target records it (`move_record::mark_target`).
    device_path: crate::futex_mutex::Mutex<TierSpec>,
}

impl DeviceState {
    /// The descriptor of the device behind the region now (it holds its lock), or -1.
    pub fn current_fd(&self) -> i32 {
        self.device_fd.load(Ordering::Acquire)
    }

    /// `region` as the device behind it now has it: its media, barrier and register page
    /// (the target's after a move). Persistence and durability go through this, never
    /// through the region the tier was opened with.
    #[inline]
    pub fn backing(&self, region: &Region) -> Region {
        let at = self.barrier_at.load(Ordering::Acquire);
        Region {
            media: media_of(self.media.load(Ordering::Acquire)),
            barrier: if at == 0 {
                Barrier::ReadRegion
            } else {
                Barrier::ReadRegister(at)
            },
            registers: self.registers.load(Ordering::Acquire),
            lock_fd: self.current_fd(),
            ..*region
        }
    }

    /// The media of the device behind the region now: all a header store needs of
    /// `backing` (one atomic load where `backing` makes four).
    #[inline]
    pub fn media(&self) -> Media {
        media_of(self.media.load(Ordering::Acquire))
    }

    /// Makes `target` the device behind the range: its media, barrier and register page
    /// replace the old ones, and the old register page is released. A barrier on another
    /// thread that loaded the old address just before may still read it: the page is replaced
    /// by zeroes rather than unmapped (`backend::retire_registers`), so that read returns 0
    /// instead of faulting. (A source on a PMR BAR cannot be moved today, userfaultfd refusing
    /// BARs; the swap is kept right for the day one can.)
    fn adopt(&self, target: &Region) {
        self.media
            .store(media_code(target.media), Ordering::Release);
        self.barrier_at.store(
            match target.barrier {
                Barrier::ReadRegion => 0,
                Barrier::ReadRegister(at) => at,
            },
            Ordering::Release,
        );
        let old = self.registers.swap(target.registers, Ordering::AcqRel);
        if old != 0 {
            backend::retire_registers(old);
        }
    }

    pub fn new(region: &Region, spec: &TierSpec) -> DeviceState {
        DeviceState {
            device_fd: AtomicI32::new(region.lock_fd),
            media: AtomicU8::new(media_code(region.media)),
            barrier_at: AtomicUsize::new(match region.barrier {
                Barrier::ReadRegion => 0,
                Barrier::ReadRegister(at) => at,
            }),
            registers: AtomicUsize::new(region.registers),
            moving: AtomicBool::new(false),
            uffd: AtomicI32::new(-1),
            pagemap: AtomicI32::new(-1),
            target_fd: AtomicI32::new(-1),
            half_moved_fd: AtomicI32::new(-1),
            file_offset: AtomicU64::new(spec.offset),
            spare: *spec,
            device_path: crate::futex_mutex::Mutex::new(*spec),
        }
    }

    /// Closes the child's copies of the device descriptors once the child's region is a
    /// private copy: the device's lock belongs to the parent's open file description, and a
    /// child holding it too would keep the device locked after the parent moved off it.
    pub fn close_in_child(&self) {
        for fd in [&self.device_fd, &self.half_moved_fd] {
            let fd = fd.swap(-1, Ordering::Relaxed);
            if fd >= 0 {
                // SAFETY: the child's copy of a descriptor nothing in the child maps any more.
                os::keep_errno(|| unsafe { libc::close(fd) });
            }
        }
    }

    /// The tier's `spare=` path.
    pub fn spare(&self) -> Option<&CStr> {
        self.spare.spare_cstr()
    }

    /// The `fork` child handler's part: the child has no evacuation running (its mappings lost
    /// their userfaultfd registration in `fork`), so it drops its copies of the move's
    /// descriptors (the pre-copy's view and the target's staging mapping are not inherited at
    /// all: `MADV_DONTFORK`). Every one of them is opened and published, and unpublished and
    /// closed, with `fork` held off (`with_fork_held`): a child has each either here or not.
    pub fn after_fork_in_child(&self) {
        for fd in [&self.uffd, &self.pagemap, &self.target_fd] {
            let fd = fd.swap(-1, Ordering::Relaxed);
            if fd >= 0 {
                // SAFETY: the child's copy of the parent's descriptor, closed once here.
                os::keep_errno(|| unsafe { libc::close(fd) });
            }
        }
        self.moving.store(false, Ordering::Relaxed);
    }
}

fn media_code(media: Media) -> u8 {
    match media {
        Media::File => 0,
        Media::Bar => 1,
        Media::Dax => 2,
        Media::Anonymous => 3,
    }
}

fn media_of(code: u8) -> Media {
    match code {
        0 => Media::File,
        1 => Media::Bar,
        2 => Media::Dax,
        _ => Media::Anonymous,
    }
}

fn path_text(path: &[u8]) -> &str {
    core::str::from_utf8(path).unwrap_or("<not UTF-8>")
}

/// Makes a heap that a crash left split by a live move whole again before it is recovered,
/// or refuses it (`move_record::stitch`): the source of a move cut short gets the moved part
/// back from the target, and the target of one gets the rest from the source, with one line
/// saying so; a target whose source no longer holds the move, and the stale source of a
/// finished one, are refused. Formatting is not refused. With `TIERMALLOC_VERBOSE=1`, a
/// refusal's line names the path the record names.
pub(crate) fn stitch_split_heap(
    region: &Region,
    spec: &TierSpec,
    opening: super::persist::Opening,
) -> Result<super::persist::Opening, Problem> {
    if !matches!(opening, super::persist::Opening::Recover) {
        return Ok(opening);
    }
    match move_record::stitch(region, spec.path()) {
        move_record::Stitched::Whole => Ok(opening),
        move_record::Stitched::RolledBack { target, bytes } => {
            let mut line = os::LineBuf::new();
            let _ = writeln!(
                line,
                "tiermalloc: tier '{}': a live move onto '{}' was cut short; rolled back ({} bytes \
                 copied back from it), the heap recovers whole here",
                spec.kind.name(),
                path_text(target),
                bytes
            );
            line.flush();
            Ok(opening)
        }
        move_record::Stitched::RolledForward { source, bytes } => {
            let mut line = os::LineBuf::new();
            let _ = writeln!(
                line,
                "tiermalloc: tier '{}': a live move from '{}' was cut short; rolled forward ({} \
                 bytes copied from it), the heap recovers whole here and the source is stale",
                spec.kind.name(),
                path_text(source),
                bytes
            );
            line.flush();
            Ok(opening)
        }
        move_record::Stitched::Refused { what, named } => {
            if crate::config::get().verbose {
                let mut line = os::LineBuf::new();
                let _ = writeln!(
                    line,
                    "tiermalloc: tier '{}': the superblock's move record names '{}'",
                    spec.kind.name(),
                    path_text(named)
                );
                line.flush();
            }
            Err(Problem::new(what))
        }
    }
}

/// What a tier lends the evacuation: its live extents, listed with allocation held.
pub(crate) trait LiveExtents {
    /// With the tier's allocations and frees held (its heap lock) throughout, calls
    /// `live(offset, len)` for every range of `[lo, hi)` the target must hold, in address
    /// order: every allocated extent (blocks and slabs), the headers of the chain inside free
    /// extents (`free_headers`), and whatever else a recovery of the region reads (a
    /// persistent tier's superblock); then runs `hold` (always, once), and returns what it
    /// returned (false: the listing is void). Listing first keeps the walk out of the writers'
    /// hold: no extent is made or freed between the two. `hint` carries where the previous
    /// call's walk ended.
    /// The device's bytes it reads (`free_headers`) are read where `read_at` says: the
    /// chunks already moved on the target, the others on the source (the region, or a view
    /// of the same bytes that leaves the region's page tables alone).
    fn hold_and_list(
        &self,
        lo: u64,
        hi: u64,
        hint: &mut u64,
        read_at: DeviceBytes,
        hold: &mut dyn FnMut() -> bool,
        live: &mut dyn FnMut(u64, u64),
    ) -> bool;
}

/// Where a listing reads the device's bytes: offsets below `moved` on the target (at
/// `target + offset`), the others on the source (at `source + offset`).
///
/// A chunk already moved lives on the target only: every write since its remap went there, and
/// the source's copy of it is stale. A free extent that starts in such a chunk and reaches the
/// one being listed has the start of its header chain there, so the walk (`free_headers`) must
/// read those headers from the target. Read from the source, a header rewritten since (a slab
/// cut from the free extent's front after its chunk moved, then retired, leaves a marker
/// pointing at the header behind the slab) gave the walk a stale size: it jumped past the
/// header in the chunk being listed, which was then never copied, and a recovery of the target
/// found the chain broken there ("no block header": 18 of 94 runs of the kill test alone).
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeviceBytes {
    pub moved: u64,
    pub target: usize,
    pub source: usize,
}

impl DeviceBytes {
    /// One mapping for every offset: a move in place (`numa_move`), or nothing moved yet.
    pub fn at(base: usize) -> DeviceBytes {
        DeviceBytes {
            moved: 0,
            target: base,
            source: base,
        }
    }

    /// The address of the device's byte at `offset`.
    fn of(&self, offset: u64) -> usize {
        let base = if offset < self.moved {
            self.target
        } else {
            self.source
        };
        base + offset as usize
    }
}

/// Reports the headers of the device's header chain inside the free extent `[offset, offset +
/// len)` that start below `hi`: the one at its start, then each at `h + 16 + size` while the
/// header at `h` carries the magic and the next one stays inside the extent. The host heap
/// merges free neighbours without rewriting the device, so a free extent can hold several
/// chain headers; a recovery scan of the target walks them all. A retired slab's marker that
/// still spans its whole window is reported with the window (the slot headers a recovery
/// reads behind it). (A stale or absent header just ends the walk: on a tier that is not
/// persistent the chain inside free space means nothing, and copying a few headers of it
/// costs nothing.) Reads the device where `read_at` says (the headers of chunks already moved
/// on the target), the evacuation's only reads besides the copy.
///
/// # Safety
/// `[offset, offset + len)` is a free extent of a region mapped (on either device) where
/// `read_at` says, kept free by the caller (the heap lock).
pub(crate) unsafe fn free_headers(
    read_at: DeviceBytes,
    offset: u64,
    len: u64,
    hi: u64,
    live: &mut dyn FnMut(u64, u64),
) {
    let end = offset + len;
    let mut h = offset;
    while h < hi && h + HEADER_SIZE <= end {
        // SAFETY: `h + 16 <= end` inside the mapped free extent; 16-byte aligned (granule).
        let header = unsafe { (read_at.of(h) as *const BlockHeader).read_volatile() };
        let next = h.saturating_add(HEADER_SIZE).saturating_add(header.size);
        // A retired slab's window keeps its marker, and a recovery reads the slot headers
        // behind a marker that still spans the whole window (`persist::recover`): they come
        // along. Its live bytes may have been pre-copied while the slab lived, and its last
        // slots freed since; the free space around it is never copied again, so without this
        // the target kept slot headers that said "allocated" and a recovery from it brought
        // those freed blocks back.
        let slab_window = header.magic == HEADER_MAGIC
            && header.state & STATE_SLAB != 0
            && next - h == SLAB_BYTES;
        let listed = if slab_window { SLAB_BYTES } else { HEADER_SIZE };
        live(h, listed.min(end - h));
        if header.magic != HEADER_MAGIC || next <= h || next >= end {
            return;
        }
        h = next;
    }
}

/// The live ranges of one chunk, merged where adjacent; never more than `MAX_RANGES`.
struct Ranges {
    items: [(u64, u64); MAX_RANGES],
    len: usize,
    lo: u64,
    hi: u64,
}

impl Ranges {
    fn new() -> Ranges {
        Ranges {
            items: [(0, 0); MAX_RANGES],
            len: 0,
            lo: 0,
            hi: 0,
        }
    }

    fn reset(&mut self, lo: u64, hi: u64) {
        (self.len, self.lo, self.hi) = (0, lo, hi);
    }

    /// Adds `[offset, offset + len)` clipped to the chunk.
    fn add(&mut self, offset: u64, len: u64) {
        let (start, end) = (offset.max(self.lo), (offset + len).min(self.hi));
        if start >= end {
            return;
        }
        if self.len > 0 {
            let last = &mut self.items[self.len - 1];
            if start <= last.1 || self.len == MAX_RANGES {
                last.1 = last
                    .1
                    .max(if self.len == MAX_RANGES { self.hi } else { end });
                return;
            }
        }
        self.items[self.len] = (start, end);
        self.len += 1;
    }

    /// The ranges clipped to `[lo, hi)`, in address order.
    fn within(&self, lo: u64, hi: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let live = self.live();
        // The first range ending after `lo`.
        let first = live.partition_point(|&(_, e)| e <= lo);
        live[first..]
            .iter()
            .take_while(move |&&(s, _)| s < hi)
            .map(move |&(s, e)| (s.max(lo), e.min(hi)))
    }

    /// Whether the ranges ran out: the last one may have been stretched over free space.
    fn full(&self) -> bool {
        self.len == MAX_RANGES
    }

    fn bytes(&self) -> u64 {
        self.live().iter().map(|(s, e)| e - s).sum()
    }

    /// The ranges, in address order.
    fn live(&self) -> &[(u64, u64)] {
        &self.items[..self.len]
    }

    /// Whether `[start, end)` lies inside one of the ranges.
    fn covers(&self, start: u64, end: u64) -> bool {
        let live = self.live();
        // The last range starting at or before `start`.
        let i = live.partition_point(|&(s, _)| s <= start);
        i > 0 && live[i - 1].1 >= end
    }
}

/// What one evacuation did (for the benchmark and the tests).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Report {
    /// Bytes copied (live extents and headers), and the region's length.
    pub copied: u64,
    /// Bytes copied while writers were held (with a pre-copy, those touched during it).
    pub held_copied: u64,
    /// Bytes the kernel copied file to file (`file_copy`): pre-copies, second passes and
    /// holds together (so a page copied twice counts twice). Copies it did not make went
    /// through the mappings.
    pub file_copied: u64,
    /// Bytes the pre-copy's second pass copied again (touched during the first).
    pub recopied: u64,
    pub region: u64,
    pub chunks: u64,
    /// The longest time one chunk stayed write-protected, in nanoseconds.
    pub longest_hold_ns: u64,
    /// How long chunks stayed write-protected: a histogram, 8 buckets per power of two of
    /// nanoseconds (`hold_bucket`).
    pub holds: [u32; HOLD_BUCKETS],
    /// The whole move, in nanoseconds.
    pub total_ns: u64,
    /// What the holds were made of: nanoseconds summed over all chunks, and the most in one
    /// chunk, of each step while writers were held (`HeldStep`).
    pub step_ns: [u64; HELD_STEPS],
    pub step_max_ns: [u64; HELD_STEPS],
    /// Each step's times, histograms like `holds` (where a long hold's time went).
    pub step_holds: [[u32; HOLD_BUCKETS]; HELD_STEPS],
    /// Holds during which the evacuating thread lost its core (an involuntary context
    /// switch), and the longest hold among the others.
    pub preempted_holds: u64,
    pub longest_unpreempted_hold_ns: u64,
    /// Holds run at real-time priority (`hold_priority`).
    pub raised_holds: u64,
}

/// The steps of one hold, in order: write-protect the chunk (the heap lock held, its live
/// extents listed just before), copy them, map the target over the chunk, wake its writers.
#[derive(Clone, Copy, Debug)]
pub(crate) enum HeldStep {
    Protect = 0,
    Copy = 1,
    Remap = 2,
    Wake = 3,
}

pub(crate) const HELD_STEPS: usize = 4;

const HOLD_BUCKETS: usize = 8 * 40;

/// The bucket of `ns`: exact below 8, else 8 per power of two (12.5% wide).
fn hold_bucket(ns: u64) -> usize {
    if ns < 8 {
        return ns as usize;
    }
    let e = 63 - ns.leading_zeros() as usize;
    (e * 8 + ((ns >> (e - 3)) & 7) as usize).min(HOLD_BUCKETS - 1)
}

/// The upper end of bucket `b`.
fn hold_bucket_end(b: usize) -> u64 {
    if b < 8 {
        return b as u64 + 1;
    }
    let (e, m) = (b / 8, b % 8);
    (9 + m as u64) << (e - 3)
}

impl Default for Report {
    fn default() -> Self {
        Report {
            copied: 0,
            held_copied: 0,
            file_copied: 0,
            recopied: 0,
            region: 0,
            chunks: 0,
            longest_hold_ns: 0,
            holds: [0; HOLD_BUCKETS],
            total_ns: 0,
            step_ns: [0; HELD_STEPS],
            step_max_ns: [0; HELD_STEPS],
            step_holds: [[0; HOLD_BUCKETS]; HELD_STEPS],
            preempted_holds: 0,
            longest_unpreempted_hold_ns: 0,
            raised_holds: 0,
        }
    }
}

impl Report {
    /// An empty report of a move of `region`.
    fn of_region(region: &Region) -> Report {
        Report {
            region: region.len as u64,
            ..Report::default()
        }
    }

    fn record_hold(&mut self, ns: u64) {
        self.longest_hold_ns = self.longest_hold_ns.max(ns);
        self.holds[hold_bucket(ns)] += 1;
    }

    /// Records one hold from the clock readings at the start of each step and at its end
    /// (`at[HELD_STEPS]`), and whether the thread was preempted meanwhile.
    fn record_steps(&mut self, at: &[u64; HELD_STEPS + 1], preempted: bool) {
        for step in 0..HELD_STEPS {
            let ns = at[step + 1].saturating_sub(at[step]);
            self.step_ns[step] += ns;
            self.step_max_ns[step] = self.step_max_ns[step].max(ns);
            self.step_holds[step][hold_bucket(ns)] += 1;
        }
        let hold = at[HELD_STEPS].saturating_sub(at[0]);
        self.record_hold(hold);
        if preempted {
            self.preempted_holds += 1;
        } else {
            self.longest_unpreempted_hold_ns = self.longest_unpreempted_hold_ns.max(hold);
        }
    }

    /// The `q`-quantile of the chunks' hold times (ns), to within 12.5%, never above the
    /// longest.
    pub fn hold_quantile(&self, q: f64) -> u64 {
        quantile(&self.holds, self.chunks, q, self.longest_hold_ns)
    }

    /// The `q`-quantile of one held step's times (ns), as `hold_quantile`.
    pub fn step_quantile(&self, step: HeldStep, q: f64) -> u64 {
        let s = step as usize;
        quantile(&self.step_holds[s], self.chunks, q, self.step_max_ns[s])
    }
}

/// The `q`-quantile of `n` times in histogram `holds` whose longest is `longest`.
fn quantile(holds: &[u32; HOLD_BUCKETS], n: u64, q: f64, longest: u64) -> u64 {
    let want = (n as f64 * q) as u64;
    let mut seen = 0u64;
    for (b, &count) in holds.iter().enumerate() {
        seen += count as u64;
        if seen > want {
            return hold_bucket_end(b).min(longest);
        }
    }
    longest
}

/// Moves tier `kind` (region `region`, state `state`, extents from `tier`) onto `target`.
/// On error nothing has changed, except as "Failure" in the module comment says.
pub(crate) fn evacuate(
    kind: Kind,
    region: &Region,
    state: &DeviceState,
    tier: &dyn LiveExtents,
    target: &CStr,
) -> Result<Report, Problem> {
    if state
        .moving
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return Err(Problem {
            what: "another evacuation of this tier is running",
            errno: libc::EBUSY,
            room: None,
            at: None,
            holder: None,
        });
    }
    let result = match numa_move::target_node(target) {
        Some(node) => {
            node.and_then(|node| numa_move::move_to_node(region, tier, node, chunk_bytes()))
        }
        None => move_region(kind, region, state, tier, target),
    };
    state.moving.store(false, Ordering::Release);
    result
}

/// Whether `path` names the file open as `fd` (same device and inode): a move onto the tier's
/// own device was refused as "in use by another process", the lock being the tier's.
fn is_open_file(fd: i32, path: &CStr) -> bool {
    // SAFETY: all-zero is a valid `stat`, an out-parameter of fstat/stat.
    let (mut open, mut named): (libc::stat, libc::stat) = unsafe { core::mem::zeroed() };
    // SAFETY: `fd` is ours or -1 (fstat then fails); `path` is NUL-terminated.
    unsafe {
        fd >= 0
            && libc::fstat(fd, &mut open) == 0
            && libc::stat(path.as_ptr(), &mut named) == 0
            && (open.st_dev, open.st_ino) == (named.st_dev, named.st_ino)
    }
}

fn move_region(
    kind: Kind,
    region: &Region,
    state: &DeviceState,
    tier: &dyn LiveExtents,
    target: &CStr,
) -> Result<Report, Problem> {
    let problem = |e: uffd::UffdError| Problem {
        what: e.what,
        errno: if e.errno == libc::EINVAL {
            libc::EOPNOTSUPP
        } else {
            e.errno
        },
        room: None,
        at: None,
        holder: None,
    };
    if target.to_bytes().is_empty() {
        return Err(Problem {
            errno: libc::EINVAL,
            ..Problem::new("the target's path is empty")
        });
    }
    if is_open_file(state.current_fd(), target) {
        return Err(Problem {
            errno: libc::EBUSY,
            ..Problem::new("the target is the tier's own device")
        });
    }
    let persistent = state.spare.persists();
    move_record::target_fits(&state.backing(region), persistent, target.to_bytes()).map_err(
        |what| Problem {
            what,
            errno: libc::ENAMETOOLONG,
            room: None,
            at: None,
            holder: None,
        },
    )?;
    let spec = TierSpec::target(kind, target.to_bytes(), region.len as u64).ok_or(Problem {
        what: "the target's path is longer than 255 bytes",
        errno: libc::ENAMETOOLONG,
        room: None,
        at: None,
        holder: None,
    })?;
    // Every descriptor of the move is opened and published with `fork` held off, so that a
    // child forked at any moment finds it in `state` and closes it, or never had it
    // (`DeviceState::after_fork_in_child`); on the way out it is unpublished and closed so too.
    let wp = with_fork_held(tier, region, || {
        let wp = WriteProtector::new()?;
        state.uffd.store(wp.fd(), Ordering::Relaxed);
        Ok(wp)
    })
    .map_err(problem)?;
    // Unpublishes and closes the userfaultfd, and the target's mapping and descriptor if it
    // has them, when the move stops before its first chunk.
    let give_up = |wp: WriteProtector, staging: Option<Region>| {
        wp.unregister(region.base, region.len);
        with_fork_held(tier, region, || {
            state.uffd.store(-1, Ordering::Relaxed);
            state.target_fd.store(-1, Ordering::Relaxed);
            drop(wp);
            if let Some(staging) = staging {
                // SAFETY: the staging mapping is ours and unused.
                unsafe { backend::unmap_region(staging) };
            }
        })
    };
    if let Err(e) = wp.register(region.base, region.len) {
        give_up(wp, None);
        return Err(problem(e));
    }
    let mapped = with_fork_held(tier, region, || {
        let staging = backend::map_region(&spec)?;
        state.target_fd.store(staging.lock_fd, Ordering::Relaxed);
        // A child forked during the move has no use for it, and its copy of the mapping would
        // keep the target's lock as a descriptor does. (A BAR refuses the advice; a child
        // never copies such a mapping anyway.)
        // SAFETY: advice on our fresh mapping.
        os::keep_errno(|| unsafe {
            libc::madvise(
                staging.base as *mut libc::c_void,
                staging.reserved,
                libc::MADV_DONTFORK,
            )
        });
        Ok(staging)
    });
    let staging = match mapped {
        Ok(staging) if staging.len >= region.len => staging,
        Ok(staging) => {
            give_up(wp, Some(staging));
            return Err(Problem {
                what: "the target is smaller than the tier",
                errno: libc::ENOSPC,
                room: None,
                at: None,
                holder: None,
            });
        }
        Err(p) => {
            give_up(wp, None);
            return Err(target_problem(p));
        }
    };
    // From here until the target's record is cleared, a crash leaves both devices marked, and
    // the next open of the source rolls the move back (`move_record`).
    let old_fd = state.current_fd();
    let recorded = move_record::begin(
        &state.backing(region),
        target,
        old_fd,
        state.file_offset.load(Ordering::Relaxed),
    );
    if recorded {
        let source = *state.device_path.lock();
        let source_path = source.path().unwrap_or_default();
        if persistent && !move_record::source_fits(source_path) {
            let mut line = os::LineBuf::new();
            let _ = writeln!(
                line,
                "tiermalloc: tm_evacuate: tier '{}': the source's path '{}' is longer than the 88 \
                 bytes the move record holds: a crash during this move is rolled back at the \
                 source's open, but cannot be rolled forward at the target's",
                kind.name(),
                path_text(source_path)
            );
            line.flush();
        }
        move_record::mark_target(
            &staging,
            source.path().unwrap_or_default(),
            state.file_offset.load(Ordering::Relaxed),
        );
    }
    let page = page_size_of(old_fd);
    let chunk = chunk_bytes().next_multiple_of(page);
    // Chunks are pre-copied before their hold from a second mapping of the source, their
    // entries in the tier's page tables dropped first, and the hold copies only what was
    // touched meanwhile (`precopy`); without one (anonymous memory), a chunk is copied from
    // the tier's range inside its hold.
    // The view mapped (and kept from children) and the page map opened and published with
    // `fork` held off: a child forked at any moment has neither, or closes the descriptor.
    let mut precopy = with_fork_held(tier, region, || {
        let mut pre = Precopy::new(
            old_fd,
            state.file_offset.load(Ordering::Relaxed),
            region.len,
        )?;
        state.pagemap.store(pre.open_pagemap(), Ordering::Relaxed);
        Some(pre)
    });
    let source = precopy.as_ref().map_or(region.base, Precopy::view);
    // With a view (a source mapped from a file), the kernel copies file to file where it can
    // (`file_copy`), touching no page table.
    let file_copy = FileCopy::new(
        if precopy.is_some() { old_fd } else { -1 },
        state.file_offset.load(Ordering::Relaxed),
        staging.lock_fd,
    );
    // Whether the chunk at `lo` is copied through the mappings: the target's move record
    // (in the first chunk) is written apart from the rest (`move_record::copy_but_record`).
    let mapped_chunk = |lo: usize| recorded && lo == 0;
    // Copies `[start, end)` of the source into the target: file to file, else from the source
    // (the region, or its view) into the target's staging mapping.
    let copy = |start: usize, end: usize, lo: usize| {
        let start = if mapped_chunk(lo) {
            start
        } else {
            file_copy.copy(start, end)
        };
        if start >= end {
            return;
        }
        // SAFETY: `[start, end)` lies inside both the source (the region, or its view, as
        // long) and the staging mapping of the target (at least as long), which are distinct
        // mappings.
        unsafe {
            if mapped_chunk(lo) {
                // The target's move record is its own (`move_record::mark_target`).
                move_record::copy_but_record(source, staging.base, start, end);
            } else {
                core::ptr::copy_nonoverlapping(
                    (source + start) as *const u8,
                    (staging.base + start) as *mut u8,
                    end - start,
                );
            }
        }
    };
    // Where the listings read the device with `[0, lo)` moved: the moved chunks on the
    // target (through the staging mapping, which leaves the tier's page tables alone too).
    let read_at = |lo: usize| DeviceBytes {
        moved: lo as u64,
        target: staging.base,
        source,
    };
    let started = now_ns();
    let mut report = Report::of_region(region);
    // The live ranges of the batch as its pre-copy listed them, and of the chunk as its hold
    // does.
    let mut precopied = Ranges::new();
    let mut ranges = Ranges::new();
    let mut touched = Touched::new();
    let mut hint = 0u64;
    let mut lo = 0usize;
    let mut failure = None;
    let mut priority = HoldPriority::new();
    let batch = batch_bytes(chunk);
    'batches: while lo < region.len {
        // The batch's target pages for its live bytes exist before any of its writers are
        // held (the pre-copy's file copy allocates them, or they are made present with the
        // view's), so that a hold covers a copy, not the target's page allocation
        // (`batch_bytes`); then its chunks are pre-copied and held one at a time. A batch
        // whose listing would not fit `Ranges` shrinks to one chunk, listed exactly.
        let mut batch_hi = (lo + batch).min(region.len);
        loop {
            precopied.reset(lo as u64, batch_hi as u64);
            let mut first_hint = hint;
            tier.hold_and_list(
                lo as u64,
                batch_hi as u64,
                &mut first_hint,
                read_at(lo),
                &mut || true,
                &mut |o, l| precopied.add(o, l),
            );
            if !precopied.full() || batch_hi - lo <= chunk {
                break;
            }
            batch_hi = (lo + chunk).min(region.len);
        }
        // Copied through the mappings, the batch's pages of both are made present first, in
        // one call per range rather than a fault per page (the kernel's file copy needs
        // neither).
        if !file_copy.works() || mapped_chunk(lo) {
            populate(staging.base, &precopied);
            if let Some(pre) = &precopy {
                pre.populate_view(precopied.live());
            }
        }
        // No signal handler runs on this thread while it holds a chunk: one that wrote into
        // the chunk (a `free` writing a header state) would wait for this very thread. Blocked
        // for the batch's holds together (a signal waits at most one batch).
        let signals = SignalsBlocked::new();
        while lo < batch_hi {
            let hi = (lo + chunk).min(batch_hi);
            if let Some(pre) = &precopy {
                // The chunk made a mapping of its own first (a flag only it carries splits
                // it off), so that its remap replaces one whole mapping: the remap then waits
                // for no thread faulting elsewhere in the rest of the source, whose mapping it
                // no longer has to split. The split waits for those instead, with no writer
                // held.
                // SAFETY: advice on the tier's own range; MADV_RANDOM only turns read-ahead
                // off for its pages, changing no byte.
                os::keep_errno(|| unsafe {
                    libc::madvise(
                        (region.base + lo) as *mut libc::c_void,
                        hi - lo,
                        libc::MADV_RANDOM,
                    )
                });
                // Chunk by chunk, right before the chunk's pre-copy: a page the program
                // touches between the drop and the hold is copied again in the hold, so the
                // window stays one chunk's pre-copy long.
                // SAFETY: a precopy exists only for a source mapped shared from its file, and
                // `[lo, hi)` is a chunk of it aligned to its page size.
                unsafe { pre.drop_entries(region.base, lo, hi) };
                for (start, end) in precopied.within(lo as u64, hi as u64) {
                    copy(start as usize, end as usize, lo);
                }
                // A second, short pass: the pages the program touched during that copy (mapped
                // again since the drop) are dropped again, each run of them right before it is
                // copied again, so that the hold copies only the pages touched during this
                // pass, not during the whole pre-copy (on the loaded machine a preempted
                // pre-copy lasted milliseconds). Only on 4 KiB pages: a huge page's entry
                // cannot be dropped in part. Runs past the first `SECOND_PASS_RUNS` are left
                // to the hold.
                if page == os::PAGE_SIZE {
                    // SAFETY: as for the chunk's drop above.
                    unsafe {
                        pre.second_pass::<SECOND_PASS_RUNS>(
                            region.base,
                            lo,
                            hi,
                            &mut touched,
                            |a, b| {
                                for (start, end) in precopied.within(a as u64, b as u64) {
                                    copy(start as usize, end as usize, lo);
                                    report.recopied += end - start;
                                }
                            },
                        )
                    };
                }
            }
            ranges.reset(lo as u64, hi as u64);
            let mut protect_error = None;
            // The clock at the start of each held step, and at the end of the hold.
            let mut at = [0u64; HELD_STEPS + 1];
            let mut switches_before = 0;
            let listed = tier.hold_and_list(
                lo as u64,
                hi as u64,
                &mut hint,
                read_at(lo),
                &mut || {
                    // Raised with the heap lock held (see `hold_priority`), before the protect.
                    priority.raise();
                    switches_before = involuntary_switches();
                    at[HeldStep::Protect as usize] = now_ns();
                    match wp.protect(region.base + lo, hi - lo) {
                        Ok(()) => true,
                        Err(e) => {
                            protect_error = Some(e);
                            false
                        }
                    }
                },
                &mut |offset, len| ranges.add(offset, len),
            );
            at[HeldStep::Copy as usize] = now_ns();
            if !listed {
                priority.lower();
                failure = Some(protect_error.map_or(
                    Problem {
                        what: "cannot write-protect a chunk of the tier",
                        errno: libc::EIO,
                        room: None,
                        at: None,
                        holder: None,
                    },
                    problem,
                ));
                break 'batches;
            }
            match &precopy {
                Some(pre) => {
                    // Again only what may have changed since the pre-copy: the pages mapped
                    // since the entries were dropped, and ranges it did not list.
                    pre.touched(region.base, lo, hi, &mut touched);
                    for &(start, end) in ranges.live() {
                        let (mut at, end) = (start as usize, end as usize);
                        while at < end {
                            let piece_end = (os::page_round(at + 1)).min(end);
                            if touched.page(at - lo)
                                || !precopied.covers(at as u64, piece_end as u64)
                            {
                                copy(at, piece_end, lo);
                                report.held_copied += (piece_end - at) as u64;
                            }
                            at = piece_end;
                        }
                    }
                }
                None => {
                    for &(start, end) in ranges.live() {
                        copy(start as usize, end as usize, lo);
                    }
                    report.held_copied += ranges.bytes();
                }
            }
            report.copied += ranges.bytes();
            if recorded {
                // Before the remap: from the remap on, any thread that writes into the chunk
                // (not only the woken ones: the new mapping holds nobody) writes the target
                // only. Through the staging mapping: the chunk being moved may be the
                // superblock's own, still the source's and held.
                move_record::advance(&staging, hi as u64);
                if lo == 0 {
                    move_record::mark_source(
                        old_fd,
                        state.file_offset.load(Ordering::Relaxed),
                        hi as u64,
                    );
                }
            }
            at[HeldStep::Remap as usize] = now_ns();
            // SAFETY: `[base + lo, base + hi)` is the tier's own range, and the target holds
            // the chunk's live bytes at the same offsets: replacing the mapping changes no
            // byte any thread can see (writers of the chunk are held until the wake below).
            let mapped = unsafe {
                libc::mmap(
                    (region.base + lo) as *mut libc::c_void,
                    hi - lo,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    staging.lock_fd,
                    lo as libc::off_t,
                )
            };
            if mapped == libc::MAP_FAILED {
                failure = Some(Problem {
                    what:
                        "cannot map the target over the tier's range (it now lies partly on each \
                         device; both stay open)",
                    errno: os::errno(),
                    room: None,
                    at: None,
                    holder: None,
                });
                if recorded {
                    // The chunk stays the source's: a roll-back must not take the target's
                    // copy.
                    move_record::advance(&staging, lo as u64);
                }
                let _ = wp.unprotect(region.base + lo, hi - lo);
                priority.lower();
                break 'batches;
            }
            at[HeldStep::Wake as usize] = now_ns();
            wp.wake(region.base + lo, hi - lo);
            at[HELD_STEPS] = now_ns();
            // Counted before the priority drops: the drop itself may hand the core over.
            let preempted = involuntary_switches() != switches_before;
            priority.lower();
            report.record_steps(&at, preempted);
            report.chunks += 1;
            lo = hi;
        }
        drop(signals);
        // The new mappings start without page-table entries: map the batch's live pages now,
        // in one call per range, rather than leave a fault per page to the program's threads.
        populate(region.base, &precopied);
    }
    report.total_ns = now_ns() - started;
    report.file_copied = file_copy.copied();
    report.raised_holds = priority.raised_holds;
    wp.unregister(region.base, region.len);
    // Unpublished and closed with `fork` held off (a child forked in between would otherwise
    // keep a copy, or close a descriptor that reused the number). The target's descriptor
    // becomes the tier's device in the same stretch, where a child finds it, or is closed if
    // nothing moved; the old device's is closed, or kept as half moved ("Failure"). The view
    // and the staging mapping (neither inherited by a child) are unmapped after.
    let nothing_moved = failure.is_some() && lo == 0;
    with_fork_held(tier, region, || {
        state.uffd.store(-1, Ordering::Relaxed);
        state.pagemap.store(-1, Ordering::Relaxed);
        state.target_fd.store(-1, Ordering::Relaxed);
        drop(wp);
        if let Some(pre) = &mut precopy {
            pre.close_pagemap();
        }
        let close = |fd: i32| {
            if fd >= 0 {
                // SAFETY: a descriptor of ours, unpublished, that nothing uses any more
                // (mappings of its file, if still there, hold the file on their own).
                os::keep_errno(|| unsafe { libc::close(fd) });
            }
        };
        if nothing_moved {
            close(staging.lock_fd);
            return;
        }
        let old = state.device_fd.swap(staging.lock_fd, Ordering::AcqRel);
        state.file_offset.store(0, Ordering::Release);
        if failure.is_none() {
            // The old device, and the one an earlier move failed to leave, are mapped
            // nowhere any more (but by the view, unmapped below): closing them releases their
            // locks.
            close(old);
            close(state.half_moved_fd.swap(-1, Ordering::AcqRel));
        } else {
            // Half moved: the source stays open (see "Failure").
            state.half_moved_fd.store(old, Ordering::Release);
        }
    });
    drop(precopy);
    // SAFETY: the staging mapping is ours; nothing refers to its addresses (the tier's range
    // maps the target on its own). Its descriptor stays open unless nothing moved: it is the
    // tier's device now.
    unsafe { os::unmap(staging.base as *mut u8, staging.reserved) };
    match failure {
        None => {
            // Durability and barriers follow the target from here on (its media, its PMR's
            // register page); then everything written so far, through either device, is made
            // durable on the target as a whole (a no-op on /dev/shm, an msync of a disk file,
            // a barrier read on a BAR), so a persistent tier recovers from it alone.
            state.adopt(&staging);
            *state.device_path.lock() = spec;
            move_record::clear(&state.backing(region));
            super::persist::persist(&state.backing(region), 0, region.len);
            Ok(report)
        }
        Some(p) => {
            if lo == 0 {
                // Nothing moved: the tier is where it was (its descriptor and offset kept,
                // the target's closed above), and its record goes.
                move_record::clear(&state.backing(region));
                super::persist::persist(&state.backing(region), 0, region.len);
                if staging.registers != 0 {
                    backend::release_registers(staging.registers);
                }
            }
            // Half moved, the source's barrier and register page stay (the target's page
            // stays mapped too, with its descriptor; see "Failure").
            Err(p)
        }
    }
}

/// Runs `f` with the tier's heap lock held, which `fork`'s prepare handler takes too
/// (`device::fork`): a descriptor `f` opens and publishes in `DeviceState` (or unpublishes and
/// closes) is, at any `fork`, either published for the child handler to close or not open.
fn with_fork_held<T>(tier: &dyn LiveExtents, region: &Region, f: impl FnOnce() -> T) -> T {
    let mut f = Some(f);
    let mut out = None;
    let mut hint = 0;
    // An empty range: nothing is listed, and no byte of the device is read.
    tier.hold_and_list(
        0,
        0,
        &mut hint,
        DeviceBytes::at(region.base),
        &mut || {
            out = f.take().map(|f| f());
            true
        },
        &mut |_, _| {},
    );
    match (out, f) {
        (Some(out), _) => out,
        // `hold_and_list` runs its `hold` always; were it not to, `f` still runs.
        (None, Some(f)) => f(),
        (None, None) => unreachable!("`f` ran, so `out` holds its result"),
    }
}

/// Blocks every signal on the calling thread until dropped (then restores its mask).
struct SignalsBlocked {
    old: libc::sigset_t,
}

impl SignalsBlocked {
    fn new() -> SignalsBlocked {
        // SAFETY: zeroed sigset_t values are valid out-parameters for sigfillset and
        // pthread_sigmask, which initialise them.
        let (mut all, mut old) = unsafe { (core::mem::zeroed(), core::mem::zeroed()) };
        // SAFETY: valid sigset pointers.
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        }
        SignalsBlocked { old }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restoring the mask `new` saved.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, core::ptr::null_mut()) };
    }
}

/// Makes the pages of `ranges` in the mapping at `base` present and writable
/// (`MADV_POPULATE_WRITE`, Linux 5.14), in one call per range rather than one fault per page;
/// a shmem target allocates them here. Changes no byte. A backing that cannot (a PCI BAR) is
/// simply written or faulted afterwards.
fn populate(base: usize, ranges: &Ranges) {
    for &(start, end) in ranges.live() {
        let first = start as usize & !(os::PAGE_SIZE - 1);
        let last = os::page_round(end as usize);
        os::prefault_write((base + first) as *mut u8, last - first);
    }
}

/// A target's mapping problem as `tm_evacuate` reports it: fixed texts get an errno too.
fn target_problem(p: Problem) -> Problem {
    if p.errno != 0 {
        if p.errno == libc::EFBIG || p.errno == libc::ENOSPC {
            return Problem {
                what: "the target is smaller than the tier and cannot be extended",
                errno: p.errno,
                room: p.room,
                at: p.at,
                holder: None,
            };
        }
        return p;
    }
    let errno = if p.what.contains("larger") {
        libc::ENOSPC
    } else if p.what.contains("in use") {
        libc::EBUSY
    } else {
        libc::EINVAL
    };
    Problem {
        what: p.what,
        errno,
        room: p.room,
        at: p.at,
        holder: p.holder,
    }
}

fn chunk_bytes() -> usize {
    os::getenv(b"TIERMALLOC_EVACUATE_CHUNK")
        .and_then(crate::config::parse_size)
        .map(|c| os::page_round(c as usize))
        .filter(|&c| c > 0)
        .unwrap_or(CHUNK_BYTES)
}

/// Bytes readied together (a whole number of `chunk`s): for each batch the live extents are
/// listed once, the target's pages for them and the view's are populated in one call per
/// range, the evacuating thread's signals are blocked once, and after its chunks' holds the
/// tier's new mappings are populated in one call per range. A chunk's entries are still
/// dropped chunk by chunk, right before its pre-copy: dropping a whole batch at once let the
/// program touch (and so fault back, and have copied again in the hold) pages for the whole
/// batch's time, 53 MB of 1 GiB held-copied in the benchmark instead of 33 KB.
/// `TIERMALLOC_EVACUATE_BATCH` (a size) overrides it; the chunk is the least.
fn batch_bytes(chunk: usize) -> usize {
    os::getenv(b"TIERMALLOC_EVACUATE_BATCH")
        .and_then(crate::config::parse_size)
        .map(|b| b as usize)
        .unwrap_or(BATCH_BYTES)
        .next_multiple_of(chunk)
        .max(chunk)
}

/// The size of the pages behind the descriptor `fd` (the huge page size on hugetlbfs, whose
/// mappings can be write-protected, split and replaced only in whole huge pages), or 4 KiB.
fn page_size_of(fd: i32) -> usize {
    const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
    // SAFETY: an all-zero statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { core::mem::zeroed() };
    // SAFETY: a descriptor of ours (or -1, refused) and a valid out-parameter.
    let hugetlbfs = fd >= 0
        && os::keep_errno(|| unsafe { libc::fstatfs(fd, &mut st) }) == 0
        && st.f_type as i64 == HUGETLBFS_MAGIC;
    if hugetlbfs {
        st.f_bsize as usize
    } else {
        4096
    }
}

fn now_ns() -> u64 {
    crate::os::clock_ns(libc::CLOCK_MONOTONIC)
}

/// How often the calling thread has lost its core to another (involuntary context switches).
fn involuntary_switches() -> i64 {
    // SAFETY: an all-zero rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: the calling thread's usage into a valid out-parameter.
    os::keep_errno(|| unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) });
    usage.ru_nivcsw
}

/// Prints what an evacuation did, in one line (`TIERMALLOC_VERBOSE=1`).
pub(crate) fn report_success(kind: Kind, target: Option<&CStr>, r: &Report) {
    let mut line = os::LineBuf::new();
    let _ = write!(line, "tiermalloc: tm_evacuate: tier '{}'", kind.name());
    if let Some(target) = target {
        let _ = write!(line, " onto '{}'", target.to_str().unwrap_or("<not UTF-8>"));
    }
    let _ = writeln!(
        line,
        ": {} of {} bytes copied ({} file to file) in {} chunks, {} us; writers held per chunk: \
         p50 {} us, p99 {} us, max {} us",
        r.copied,
        r.region,
        r.file_copied,
        r.chunks,
        r.total_ns / 1000,
        r.hold_quantile(0.5).div_ceil(1000),
        r.hold_quantile(0.99).div_ceil(1000),
        r.longest_hold_ns.div_ceil(1000)
    );
    line.flush();
    // What the holds were made of, on a second line.
    let mut line = os::LineBuf::new();
    let chunks = r.chunks.max(1);
    let _ = write!(
        line,
        "tiermalloc: tm_evacuate: held steps, mean/p99/max us:"
    );
    for (name, step) in [
        ("protect", HeldStep::Protect),
        ("copy", HeldStep::Copy),
        ("remap", HeldStep::Remap),
        ("wake", HeldStep::Wake),
    ] {
        let _ = write!(
            line,
            " {name} {}/{}/{}",
            (r.step_ns[step as usize] / chunks).div_ceil(1000),
            r.step_quantile(step, 0.99).div_ceil(1000),
            r.step_max_ns[step as usize].div_ceil(1000)
        );
    }
    let _ = writeln!(
        line,
        "; {} of {} bytes copied while held ({} again before the hold); {} holds preempted \
         (longest other {} us); {} holds at real-time priority",
        r.held_copied,
        r.copied,
        r.recopied,
        r.preempted_holds,
        r.longest_unpreempted_hold_ns.div_ceil(1000),
        r.raised_holds
    );
    line.flush();
}

/// Prints why an evacuation of `kind` onto `target` failed, in one line.
pub(crate) fn report_failure(kind: Kind, target: Option<&CStr>, p: &Problem) {
    let mut line = os::LineBuf::new();
    let _ = write!(line, "tiermalloc: tm_evacuate: tier '{}'", kind.name());
    if let Some(target) = target {
        let _ = write!(line, " onto '{}'", target.to_str().unwrap_or("<not UTF-8>"));
    }
    let _ = write!(line, ": {}", p.what);
    os::write_errno_text(&mut line, p.errno);
    let _ = writeln!(line);
    line.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::header::STATE_FREE;

    fn ranges(lo: u64, hi: u64) -> Ranges {
        let mut r = Ranges::new();
        r.reset(lo, hi);
        r
    }

    /// A page standing in for a PMR's register page.
    fn page() -> usize {
        os::map_anonymous(4096).unwrap().as_ptr() as usize
    }

    /// A page standing in for registers, with a value in its PMRSTS word.
    fn registers() -> usize {
        let p = page();
        // SAFETY: our fresh page.
        unsafe { ((p + 0xe08) as *mut u32).write(0x5a5a_5a5a) };
        p
    }

    /// The PMRSTS word of a register page.
    fn pmrsts(page: usize) -> u32 {
        // SAFETY: a mapped page of ours (its registers, or the zeroes that replaced them).
        unsafe { ((page + 0xe08) as *const u32).read_volatile() }
    }

    fn region(media: Media, registers: usize) -> Region {
        Region {
            base: 0x1000_0000,
            len: 1 << 20,
            reserved: 1 << 20,
            shared_across_fork: true,
            lock_fd: -1,
            media,
            new_bytes: false,
            barrier: if registers == 0 {
                Barrier::ReadRegion
            } else {
                Barrier::ReadRegister(registers + 0xe08)
            },
            registers,
        }
    }

    /// After a move, durability follows the target: its media and barrier register, and the
    /// source's register page is released (the target's stays).
    #[test]
    fn the_target_becomes_the_backing_and_the_old_register_page_goes() {
        let (old, new) = (registers(), registers());
        let source = region(Media::Bar, old);
        let spec = TierSpec::target(Kind::Pmr, b"/dev/shm/x", 1 << 20).unwrap();
        let state = DeviceState::new(&source, &spec);
        let before = state.backing(&source);
        assert_eq!(
            (before.media, before.barrier, before.registers),
            (Media::Bar, Barrier::ReadRegister(old + 0xe08), old)
        );
        state.adopt(&region(Media::Bar, new));
        let after = state.backing(&source);
        assert_eq!(
            (after.media, after.barrier, after.registers),
            (Media::Bar, Barrier::ReadRegister(new + 0xe08), new)
        );
        assert_eq!((after.base, after.len), (source.base, source.len));
        // A barrier that loaded the old address just before reads zeroes, not the old
        // controller's registers, and does not fault.
        assert_eq!(
            pmrsts(old),
            0,
            "the old controller's register page is released"
        );
        assert_eq!(pmrsts(new), 0x5a5a_5a5a);
        // Onto a file: a read of the region is the barrier, and no page is kept.
        state.adopt(&region(Media::File, 0));
        let after = state.backing(&source);
        assert_eq!(
            (after.media, after.barrier, after.registers),
            (Media::File, Barrier::ReadRegion, 0)
        );
        assert_eq!(pmrsts(new), 0);
    }

    #[test]
    fn hold_quantiles_are_within_an_eighth() {
        let mut r = Report::default();
        for ns in 1..=1000u64 {
            r.record_hold(ns * 1000);
            r.chunks += 1;
        }
        for (q, exact) in [(0.5, 500_000u64), (0.99, 990_000)] {
            let got = r.hold_quantile(q);
            assert!(got >= exact && got <= exact + exact / 8, "q {q}: {got}");
        }
        assert_eq!(r.hold_quantile(1.0), 1_000_000);
        assert_eq!((hold_bucket(7), hold_bucket_end(7)), (7, 8));
        assert!(hold_bucket_end(hold_bucket(12_345)) > 12_345);
    }

    #[test]
    fn ranges_clip_merge_and_stretch_when_full() {
        let mut r = ranges(1000, 2000);
        r.add(900, 200); // clipped to [1000, 1100)
        r.add(1100, 16); // adjacent: merged
        r.add(1200, 16);
        r.add(1990, 100); // clipped to [1990, 2000)
        r.add(2000, 10); // outside
        assert_eq!(
            &r.items[..r.len],
            &[(1000, 1116), (1200, 1216), (1990, 2000)]
        );
        assert_eq!(r.bytes(), 116 + 16 + 10);
        // What the pre-copy listed covers a piece only from inside one range.
        assert!(r.covers(1000, 1116) && r.covers(1100, 1110) && r.covers(1995, 2000));
        assert!(!r.covers(990, 1010) && !r.covers(1110, 1200) && !r.covers(1116, 1117));
        assert!(!r.covers(1210, 1220) && !ranges(0, 10).covers(0, 1));
        // A batch's ranges as one chunk of it sees them.
        let clipped: Vec<(u64, u64)> = r.within(1100, 1995).collect();
        assert_eq!(clipped, [(1100, 1116), (1200, 1216), (1990, 1995)]);
        assert_eq!(r.within(1116, 1200).count(), 0);
        assert_eq!(r.within(1210, 1212).collect::<Vec<_>>(), [(1210, 1212)]);
        let mut full = ranges(0, 1 << 20);
        for i in 0..MAX_RANGES as u64 + 10 {
            full.add(i * 64, 16);
        }
        assert_eq!(full.len, MAX_RANGES);
        assert_eq!(
            full.items[MAX_RANGES - 1],
            ((MAX_RANGES as u64 - 1) * 64, 1 << 20)
        );
    }

    /// A free extent that starts in a chunk already moved and reaches the chunk being listed:
    /// its chain is walked on the target below the frontier. The scenario the kill test hit:
    /// the free extent `[16K, 64K)` had one header (free, to the end) when its first chunk
    /// moved; then a slab was cut from its front (the marker written on the target only, the
    /// rest's free header at 32K on the source, not moved yet) and retired (merged back, no
    /// byte written). Listing chunk `[32K, 48K)`, the walk must report the header at 32K,
    /// which the marker leads to; the source's stale header at 16K jumps to the end instead.
    #[test]
    fn a_free_extents_chain_is_read_on_the_target_below_the_frontier() {
        const K16: u64 = 16 << 10;
        let end = 4 * K16;
        let (target, source) = (page_run(end), page_run(end));
        let free = STATE_FREE;
        let marker = STATE_SLAB | 1;
        // As the first chunks moved: the extent's one header, on both devices.
        header(source, K16, end - K16 - HEADER_SIZE, free);
        // Since: the slab's marker on the target, the rest's header on the source.
        header(target, K16, K16 - HEADER_SIZE, marker);
        header(source, 2 * K16, end - 2 * K16 - HEADER_SIZE, free);
        let listed = |read_at: DeviceBytes| {
            let mut found = Vec::new();
            // SAFETY: `[16K, 64K)` lies inside both fresh mappings, which nothing else uses.
            unsafe {
                free_headers(read_at, K16, end - K16, 3 * K16, &mut |at, len| {
                    found.push((at, len))
                })
            };
            found
        };
        let moved = DeviceBytes {
            moved: 2 * K16,
            target,
            source,
        };
        // The retired slab with its window, then the header behind it.
        assert_eq!(listed(moved), [(K16, K16), (2 * K16, HEADER_SIZE)]);
        // What the walk found reading the source everywhere (the bug): the header at 32K,
        // which the target's chain leads to, is missed.
        assert_eq!(listed(DeviceBytes::at(source)), [(K16, HEADER_SIZE)]);
    }

    /// A retired slab inside free space, its marker still spanning the window, is listed with
    /// its window (a recovery reads the slot headers behind such a marker); a marker whose size
    /// a cut rewrote, and a free header, only as headers.
    #[test]
    fn a_retired_slabs_window_is_listed_whole() {
        const K16: u64 = 16 << 10;
        let end = 4 * K16;
        let base = page_run(end);
        let header = |at, size, state| header(base, at, size, state);
        let marker = STATE_SLAB | 3;
        // [0, 16K) a free header; [16K, 32K) a retired slab; [32K, 40K) a retired slab's
        // marker cut short (a block cut from the end of its window); [40K, 64K) free.
        header(0, K16 - HEADER_SIZE, STATE_FREE);
        header(K16, K16 - HEADER_SIZE, marker);
        header(2 * K16, K16 / 2 - HEADER_SIZE, marker);
        header(
            2 * K16 + K16 / 2,
            end - 2 * K16 - K16 / 2 - HEADER_SIZE,
            STATE_FREE,
        );
        let mut found = Vec::new();
        // SAFETY: `[0, 64K)` lies inside our fresh mapping, which nothing else uses.
        unsafe {
            free_headers(DeviceBytes::at(base), 0, end, end, &mut |at, len| {
                found.push((at, len))
            })
        };
        assert_eq!(
            found,
            [
                (0, HEADER_SIZE),
                (K16, K16),
                (2 * K16, HEADER_SIZE),
                (2 * K16 + K16 / 2, HEADER_SIZE)
            ]
        );
    }

    /// Writes a header of `size` and `state` at `at` of the mapping at `base` (a test's own
    /// pages, `page_run`).
    fn header(base: usize, at: u64, size: u64, state: u16) {
        let h = BlockHeader {
            size,
            magic: HEADER_MAGIC,
            kind: 0,
            state,
        };
        // SAFETY: 16-byte aligned, inside the test's fresh mapping.
        unsafe { h.store((base + at as usize) as *mut BlockHeader) };
    }

    /// `len` bytes of fresh zeroed pages, kept for the test process's life.
    fn page_run(len: u64) -> usize {
        os::map_anonymous(len as usize).unwrap().as_ptr() as usize
    }
}
