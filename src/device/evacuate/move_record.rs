//! The move record: a few bytes of a heap's superblock that say a live move (`evacuate`) of
//! the heap onto another device began, onto which, and how far it got. A crash during a move
//! leaves the heap split: the chunks already moved are on the target (with every write since),
//! the rest on the source, and neither device alone holds the heap. The record lets the next
//! open of the source *roll the move back* (`stitch`): copy the moved chunks back from the
//! target, so the heap is whole again where the tier's configuration says it is.
//!
//! The protocol (`evacuate::move_region` drives it):
//! - `begin`: before the first chunk moves, the record (the target's path, frontier 0) is
//!   written into the source's superblock and made durable. The first chunk's copy carries it
//!   onto the target.
//! - `advance`: after each chunk is copied and *before it is mapped from the target*, the
//!   target's frontier is set to the chunk's end (a store through the staging mapping of the
//!   target). Before the first chunk's copy (the superblock's), the target's own record is
//!   written (`mark_target`): state MOVED_FROM, the *source's* path and offset, so that the
//!   target alone can find its source; the copy leaves the record's bytes out.
//!   From the remap on, any thread may write the chunk on the target only (the new
//!   mapping holds nobody, woken or not), so the frontier must already cover it; before the
//!   remap the chunk's writers are held and its live bytes are the same on both devices. For
//!   the first chunk, the source's frontier is set too, before the remap (`mark_source`, a
//!   `pwrite` into the source file, since its superblock is about to be mapped from the
//!   target): "some writes may be on the target only". A remap that fails sets the target's
//!   frontier back to the chunk's start.
//! - the end: the target's record is cleared (then the whole target is made durable); the
//!   source keeps its record with a nonzero frontier: its copy is stale from then on.
//!
//! Opening a heap for recovery (`stitch`):
//! - no record: recover as usual;
//! - the source, frontier 0: no write reached the target only; the source is whole. The record
//!   is cleared, and recovery goes on;
//! - the source, frontier not 0, and its target holds the *same move* (a superblock of the
//!   same heap id whose record names the target itself): the target's first `frontier` bytes
//!   are copied back over the source's, the record is cleared, and recovery goes on. A crash
//!   during the copy repeats it on the next open (the record is cleared last);
//! - the source, frontier not 0, and the target does not hold the move (it finished, and the
//!   target was cleared, reformatted or moved again; or it is gone): the source is stale and
//!   is refused in one line;
//! - the target of a move that did not finish (its record is MOVED_FROM): the move is *rolled
//!   forward* (`roll_forward`) if the source still holds the same move: the source's bytes
//!   from the target's frontier on are copied onto the target, the source is marked stale
//!   (its frontier set to UNKNOWN if it was 0), and the target's record is cleared last; the
//!   heap then recovers from the target as the killed process left it, and the source is
//!   refused as stale from then on, as after a move that finished. The source's lock is held
//!   meanwhile (an open of the source, which would roll back, waits out or is refused). A
//!   crash during it repeats it at the next open of either device: the source rolls back, or
//!   the target rolls forward again. The target is refused in one line instead when its
//!   source is gone, is open in a process, no longer holds the move (it was rolled back, or
//!   formatted, or moved elsewhere since), or its path did not fit the record;
//! - a target without a heap (the crash came before the first chunk's copy wrote its
//!   superblock): the target holds nothing of the move; its source is whole (frontier 0).
//!   `TIERMALLOC_VERBOSE=1` names the path a refusal's record names.
//!
//! Formatting the device (`mode=fresh`) clears the record.
//!
//! ```text
//! superblock (persist/superblock.rs)
//! 144  state       4  MOVING ("MOVE") on the source, MOVED_FROM ("FROM") on the target, or 0
//! 148  target_len  4  the target path's length (longer than 96: truncated below)
//! 152  frontier    8  bytes of the region on the target (see above)
//! 160  target     96  the target's path, NUL-padded
//! 256  roots table
//!
//! on the target, state MOVED_FROM:
//! 148  source_len  4  the source path's length (longer than 88: truncated below)
//! 152  frontier    8  as above
//! 160  offset      8  where the region starts in the source's file (`offset=`)
//! 168  source     88  the source's path, NUL-padded
//! ```

use crate::backend::{Media, Region};
use crate::device::persist::{self, media, superblock};
use core::ffi::CStr;

const STATE_AT: u64 = 144;
const TARGET_LEN_AT: u64 = 148;
const FRONTIER_AT: u64 = 152;
const TARGET_AT: u64 = 160;
const END: u64 = 256;
const TARGET_ROOM: usize = (END - TARGET_AT) as usize;
const MOVING: u32 = u32::from_le_bytes(*b"MOVE");
const MOVED_FROM: u32 = u32::from_le_bytes(*b"FROM");
const SOURCE_OFFSET_AT: u64 = 160;
const SOURCE_AT: u64 = 168;
const SOURCE_ROOM: usize = (END - SOURCE_AT) as usize;
/// A source frontier meaning "cannot tell how far": the source's superblock could not be
/// written once the move began, so the source is never taken as whole.
const UNKNOWN: u64 = u64::MAX;

/// The superblock image at the start of a mapped region.
fn image(region: &Region) -> &[u8] {
    // SAFETY: a mapped region of at least one superblock (callers check the length before).
    unsafe {
        core::slice::from_raw_parts(
            region.base as *const u8,
            superblock::SUPERBLOCK_BYTES as usize,
        )
    }
}

/// Whether `region` starts with a heap's superblock (a record has a place there).
fn has_heap(region: &Region) -> bool {
    region.len as u64 >= superblock::SUPERBLOCK_BYTES && superblock::read(image(region)).is_some()
}

/// Why a move of the heap in `region` onto `target` cannot be recorded, if it cannot: a
/// persistent heap's record holds a target path of at most 96 bytes, and a truncated one
/// could not be rolled back at the source's open after a crash. (A tier that is not
/// `persistent`, formatted afresh at every open, or a region without a heap, needs no record
/// to come back, whatever the path.)
pub(super) fn target_fits(
    region: &Region,
    persistent: bool,
    target: &[u8],
) -> Result<(), &'static str> {
    if persistent && target.len() > TARGET_ROOM && has_heap(region) {
        return Err(
            "the target's path is longer than the 96 bytes a persistent heap's move record holds \
             (a crash during the move could not be rolled back); give a shorter path, e.g. a \
             symbolic link",
        );
    }
    Ok(())
}

/// Whether the target's record holds `source` whole (at most 88 bytes): if not, a move cut
/// short can be rolled back at the source's open, but not forward at the target's.
pub(super) fn source_fits(source: &[u8]) -> bool {
    source.len() <= SOURCE_ROOM
}

/// Writes the record naming `target` into the superblock of `region` (the device behind it
/// now, the source; `source_fd` and `source_offset` the file and offset it is mapped from, or
/// -1) and makes it durable. False, and nothing written, for a region without a heap's
/// superblock.
pub(super) fn begin(region: &Region, target: &CStr, source_fd: i32, source_offset: u64) -> bool {
    if !has_heap(region) {
        return false;
    }
    let path = target.to_bytes();
    let mut record = [0u8; (END - TARGET_LEN_AT) as usize];
    record[..4].copy_from_slice(&(path.len() as u32).to_le_bytes());
    // Frontier 0, unless `mark_source` will not be able to say otherwise later.
    let frontier = if source_writable(source_fd, source_offset) {
        0
    } else {
        UNKNOWN
    };
    record[4..12].copy_from_slice(&frontier.to_le_bytes());
    let kept = path.len().min(TARGET_ROOM);
    let at = (TARGET_AT - TARGET_LEN_AT) as usize;
    record[at..at + kept].copy_from_slice(&path[..kept]);
    media::write_bytes(region, TARGET_LEN_AT, &record);
    media::order(region);
    media::write_bytes(region, STATE_AT, &MOVING.to_le_bytes());
    persist::persist(region, 0, superblock::SUPERBLOCK_BYTES as usize);
    true
}

/// Whether the source's frontier can be written through its file (`mark_source`; through a
/// mapping of its page where the file takes no `write(2)`, as on hugetlbfs): writes
/// the frontier's present value (0 before a move) back.
fn source_writable(fd: i32, offset: u64) -> bool {
    fd >= 0 && pwrite_frontier(fd, offset, 0)
}

fn pwrite_frontier(fd: i32, offset: u64, frontier: u64) -> bool {
    let bytes = frontier.to_le_bytes();
    let at = offset + FRONTIER_AT;
    // SAFETY: our open descriptor of the source, 8 bytes from a live buffer.
    let n = unsafe { libc::pwrite(fd, bytes.as_ptr().cast(), 8, at as libc::off_t) };
    n == 8 || (n < 0 && crate::os::errno() == libc::EINVAL && map_write(fd, at, &bytes))
}

/// Writes `bytes` at `at` of the file `fd` through a mapping of its page there: for a file
/// that takes no `write(2)` (hugetlbfs, whose page is a huge page). False if it cannot.
fn map_write(fd: i32, at: u64, bytes: &[u8]) -> bool {
    // SAFETY: an all-zero statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { core::mem::zeroed() };
    // SAFETY: our descriptor and a valid out-parameter.
    if unsafe { libc::fstatfs(fd, &mut st) } != 0 || st.f_bsize <= 0 {
        return false;
    }
    let page = st.f_bsize as u64;
    let start = at / page * page;
    if at + bytes.len() as u64 > start + page {
        return false;
    }
    // SAFETY: a fresh shared mapping of one page of the caller's descriptor.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            page as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            start as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return false;
    }
    // SAFETY: `[at - start, + len)` lies inside the mapped page; then our mapping goes.
    unsafe {
        core::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            (p as *mut u8).add((at - start) as usize),
            bytes.len(),
        );
        libc::munmap(p, page as usize);
    }
    true
}

/// Sets the target's frontier to `hi` through `target`, a mapping of the target whose
/// superblock the first chunk's copy wrote. Called with the chunk's writers still held,
/// before it is mapped from the target.
pub(super) fn advance(target: &Region, hi: u64) {
    media::write_bytes(target, FRONTIER_AT, &hi.to_le_bytes());
    media::order(target);
}

/// Sets the source's frontier through its file (its superblock is held, and then mapped
/// from the target). Called once, after the first chunk's copy and before its remap; durable as the
/// source's page cache is (a source that userfaultfd can hold is shmem or hugetlbfs memory, which
/// survives a process's crash, not the machine's). A write refused here was refused by `begin`'s
/// check too, which then recorded `UNKNOWN`.
pub(super) fn mark_source(source_fd: i32, source_offset: u64, hi: u64) {
    if source_fd >= 0 {
        crate::os::keep_errno(|| pwrite_frontier(source_fd, source_offset, hi));
    }
}

/// The record's bytes in the superblock, `[RECORD.0, RECORD.1)`: copies between the two
/// devices leave them out (`copy_but_record`), each device's record being its own.
const RECORD: (usize, usize) = (STATE_AT as usize, END as usize);

/// Writes the target's record through `target`, its staging mapping: MOVED_FROM, naming
/// `source` (the path of the device the tier is moving off; empty for anonymous memory,
/// which nothing can roll forward from) at `source_offset`, frontier 0. Called before the
/// first chunk's copy, which leaves these bytes out (`RECORD`): so the target's superblock
/// never shows the heap without this record, however early a crash comes.
pub(super) fn mark_target(target: &Region, source: &[u8], source_offset: u64) {
    let mut record = [0u8; (END - TARGET_LEN_AT) as usize];
    record[..4].copy_from_slice(&(source.len() as u32).to_le_bytes());
    let at = (SOURCE_OFFSET_AT - TARGET_LEN_AT) as usize;
    record[at..at + 8].copy_from_slice(&source_offset.to_le_bytes());
    let kept = source.len().min(SOURCE_ROOM);
    let at = (SOURCE_AT - TARGET_LEN_AT) as usize;
    record[at..at + kept].copy_from_slice(&source[..kept]);
    media::write_bytes(target, TARGET_LEN_AT, &record);
    media::order(target);
    media::write_bytes(target, STATE_AT, &MOVED_FROM.to_le_bytes());
    media::order(target);
}

/// Clears the record in the superblock of `region` (the device behind it now); the caller
/// makes it durable.
pub(super) fn clear(region: &Region) {
    if has_heap(region) {
        media::write_bytes(region, STATE_AT, &0u32.to_le_bytes());
        media::order(region);
    }
}

/// What a superblock image's move record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Record<'a> {
    None,
    /// A move onto `target` began (`whole`: the path is not truncated); `frontier` as the
    /// module comment says.
    Moving {
        target: &'a [u8],
        whole: bool,
        frontier: u64,
    },
    /// The target's form: a move from `source` (`whole`: the path is not truncated), whose
    /// region starts at `offset` in the source's file, reached `frontier`.
    MovedFrom {
        source: &'a [u8],
        whole: bool,
        offset: u64,
        frontier: u64,
    },
}

/// Reads the record from the first 4 KiB of a region.
pub(crate) fn read(image: &[u8]) -> Record<'_> {
    if image.len() < END as usize || superblock::read(image).is_none() {
        return Record::None;
    }
    let word = |at: u64| {
        u32::from_le_bytes(
            image[at as usize..at as usize + 4]
                .try_into()
                .unwrap_or([0; 4]),
        )
    };
    let double = |at: u64| {
        u64::from_le_bytes(
            image[at as usize..at as usize + 8]
                .try_into()
                .unwrap_or([0xff; 8]),
        )
    };
    let len = word(TARGET_LEN_AT) as usize;
    let frontier = double(FRONTIER_AT);
    match word(STATE_AT) {
        MOVING => {
            let kept = len.min(TARGET_ROOM);
            Record::Moving {
                target: &image[TARGET_AT as usize..TARGET_AT as usize + kept],
                whole: kept == len,
                frontier,
            }
        }
        MOVED_FROM => {
            let kept = len.min(SOURCE_ROOM);
            Record::MovedFrom {
                source: &image[SOURCE_AT as usize..SOURCE_AT as usize + kept],
                whole: kept == len,
                offset: double(SOURCE_OFFSET_AT),
                frontier,
            }
        }
        _ => Record::None,
    }
}

/// What `stitch` did with a heap about to be recovered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stitched<'a> {
    /// No record: nothing to do.
    Whole,
    /// A move that had not reached the target (`bytes` 0), or whose first `bytes` were
    /// copied back from `target`: the heap is whole here again, the record cleared.
    RolledBack { target: &'a [u8], bytes: u64 },
    /// The target of a move cut short, completed: `bytes` copied from `source`, whose copy
    /// is stale from now on; the heap is whole here, the record cleared.
    RolledForward { source: &'a [u8], bytes: u64 },
    /// Not to be recovered: why, and the path the record names.
    Refused { what: &'static str, named: &'a [u8] },
}

const SOURCE_GONE: &str =
    "is the target of a live move (tm_evacuate) that did not finish, and its source cannot be \
     opened (or is shorter) to complete it: the heap lies partly here and partly on the source \
     (README: Live evacuation)";
const SOURCE_BUSY: &str =
    "is the target of a live move (tm_evacuate) that did not finish, and its source is open in \
     another process, which holds the heap (README: Live evacuation)";
const SOURCE_MOVED_ON: &str = "is the target of a live move (tm_evacuate) that its source no \
                               longer holds (rolled back at the source's open, or formatted or \
                               moved elsewhere since): the heap is the source's, this copy is \
                               stale (README: Live evacuation; mode=fresh formats it anew)";
const SOURCE_PATH_LONG: &str = "is the target of a live move (tm_evacuate) that did not finish, \
                                and its source's path was longer than the 88 bytes the move record \
                                holds, so the source cannot be found from here: open the source \
                                (the tier's path= before the move) to roll the move back (README: \
                                Live evacuation)";
const STALE_SOURCE: &str = "holds a heap that was moved onto another device by tm_evacuate: this \
                            copy is stale (the target no longer holds an unfinished move to roll \
                            back; README: Live evacuation; mode=fresh formats it anew)";

/// Makes the heap in `region` (opened at `path`) whole if a move of it was cut short, as the
/// module comment says, or says why it must not be recovered.
pub(crate) fn stitch<'a>(region: &'a Region, path: Option<&[u8]>) -> Stitched<'a> {
    match read(image(region)) {
        Record::None => Stitched::Whole,
        Record::Moving {
            target,
            whole,
            frontier,
        } => roll_back(region, path, target, whole, frontier),
        Record::MovedFrom {
            source,
            whole,
            offset,
            frontier,
        } => roll_forward(region, path, source, whole, offset, frontier),
    }
}

/// `stitch` for a source (its record MOVING, naming `target`).
fn roll_back<'a>(
    region: &'a Region,
    path: Option<&[u8]>,
    target: &'a [u8],
    whole: bool,
    frontier: u64,
) -> Stitched<'a> {
    if frontier == 0 {
        clear(region);
        persist::persist(region, 0, superblock::SUPERBLOCK_BYTES as usize);
        return Stitched::RolledBack { target, bytes: 0 };
    }
    let refused = Stitched::Refused {
        what: STALE_SOURCE,
        named: target,
    };
    if !whole {
        return refused;
    }
    let Ok(moved) = Mapped::open(target, 0, region.len, false) else {
        return refused;
    };
    let Some(bytes) = moved.target_frontier(region, path) else {
        return refused;
    };
    // The moved part comes back over the source's stale one, the superblock with it (the
    // target's: roots as the program last set them) except for the record, which stays
    // the source's until it is cleared below (so a crash during the copy repeats it, and the
    // target's name read above stays what it was).
    // SAFETY: `[0, bytes)` lies inside both our writable region and the target's read-only
    // mapping (`target_frontier` checked `bytes <= region.len`), distinct mappings.
    unsafe { copy_but_record(moved.base, region.base, 0, bytes as usize) };
    persist::persist(region, 0, bytes as usize);
    clear(region);
    persist::persist(region, 0, superblock::SUPERBLOCK_BYTES as usize);
    Stitched::RolledBack { target, bytes }
}

/// `stitch` for a target (its record MOVED_FROM, naming `source` at `offset`, `frontier`
/// bytes moved): completes the move from the source if the source still holds it.
fn roll_forward<'a>(
    region: &'a Region,
    path: Option<&[u8]>,
    source: &'a [u8],
    whole: bool,
    offset: u64,
    frontier: u64,
) -> Stitched<'a> {
    let refused = |what| Stitched::Refused {
        what,
        named: source,
    };
    if !whole {
        return refused(SOURCE_PATH_LONG);
    }
    if frontier > region.len as u64 {
        return refused(SOURCE_GONE);
    }
    let moved = match Mapped::open(source, offset, region.len, true) {
        Ok(moved) => moved,
        Err(Unavailable::InUse) => return refused(SOURCE_BUSY),
        Err(Unavailable::Gone) => return refused(SOURCE_GONE),
    };
    let Some(source_frontier) = moved.source_frontier(region, path) else {
        return refused(SOURCE_MOVED_ON);
    };
    // The source's bytes from the frontier on are the heap's (they never moved); below it,
    // the target's are. If the frontier lies inside the superblock (the first chunk's remap
    // failed), the source's superblock comes along except for the record, which stays the
    // target's until it is cleared below.
    // SAFETY: `[frontier, len)` lies inside our writable region and the source's read-only
    // mapping of the same length, distinct mappings.
    unsafe { copy_but_record(moved.base, region.base, frontier as usize, region.len) };
    persist::persist(region, 0, region.len);
    // The source must not be taken as whole from now on: a frontier of 0 would let its next
    // open clear its record and recover the heap beside ours.
    if source_frontier == 0 && !moved.write_source_frontier(offset, UNKNOWN) {
        return refused(SOURCE_GONE);
    }
    clear(region);
    persist::persist(region, 0, superblock::SUPERBLOCK_BYTES as usize);
    Stitched::RolledForward {
        source,
        bytes: region.len as u64 - frontier,
    }
}

/// Copies bytes `[lo, hi)` from the mapping at `from` to the one at `to`, except the move
/// record's (`RECORD`): a device's record is only ever its own.
///
/// # Safety
/// `[lo, hi)` lies inside both mappings, which are distinct; `to` is writable.
pub(super) unsafe fn copy_but_record(from: usize, to: usize, lo: usize, hi: usize) {
    for (a, b) in [(lo, hi.min(RECORD.0)), (lo.max(RECORD.1), hi)] {
        if a < b {
            // SAFETY: as the caller promises.
            unsafe {
                core::ptr::copy_nonoverlapping((from + a) as *const u8, (to + a) as *mut u8, b - a)
            };
        }
    }
}

/// Whether `named` (a path from a record) is the file opened at `path` as `fd`: the same
/// bytes, or the same file.
fn names(named: &[u8], path: Option<&[u8]>, fd: i32) -> bool {
    if path == Some(named) {
        return true;
    }
    let Some(name) = c_path(named) else {
        return false;
    };
    // SAFETY: all-zero stat values are valid out-parameters.
    let (mut a, mut b): (libc::stat, libc::stat) = unsafe { core::mem::zeroed() };
    crate::os::keep_errno(|| {
        // SAFETY: a NUL-terminated path, our descriptor and valid out-parameters.
        unsafe {
            fd >= 0
                && libc::stat(name.as_ptr().cast(), &mut a) == 0
                && libc::fstat(fd, &mut b) == 0
                && a.st_dev == b.st_dev
                && a.st_ino == b.st_ino
        }
    })
}

/// `path` NUL-terminated in a buffer, if it fits and holds no NUL.
fn c_path(path: &[u8]) -> Option<[u8; TARGET_ROOM + 1]> {
    if path.len() > TARGET_ROOM || path.contains(&0) {
        return None;
    }
    let mut name = [0u8; TARGET_ROOM + 1];
    name[..path.len()].copy_from_slice(path);
    Some(name)
}

/// Why the other device of a move could not be mapped.
enum Unavailable {
    /// Missing, unreadable, shorter than the region, or not mappable.
    Gone,
    /// Its range is locked: a process has it open as a tier.
    InUse,
}

/// The other device of a cut-short move, mapped read-only (unmapped and closed on drop).
struct Mapped {
    base: usize,
    len: usize,
    fd: i32,
}

impl Mapped {
    /// Maps `len` bytes at `offset` of the file or device at `path` read-only; `None` if it
    /// cannot be opened or is shorter. `locked`: the range is locked first as a tier's open
    /// locks it (`backend::lock_range`), so that no process uses it meanwhile.
    fn open(path: &[u8], offset: u64, len: usize, locked: bool) -> Result<Mapped, Unavailable> {
        let name = c_path(path).ok_or(Unavailable::Gone)?;
        let flags = if locked { libc::O_RDWR } else { libc::O_RDONLY };
        let fd = crate::os::keep_errno(|| {
            // SAFETY: a NUL-terminated path in a local buffer.
            unsafe { libc::open(name.as_ptr().cast(), flags | libc::O_CLOEXEC) }
        });
        if fd < 0 {
            return Err(Unavailable::Gone);
        }
        let mut mapped = Mapped { base: 0, len, fd };
        // SAFETY: an all-zero stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        // SAFETY: our descriptor and a valid out-parameter.
        let sized = unsafe { libc::fstat(fd, &mut st) } == 0
            && (st.st_mode & libc::S_IFMT != libc::S_IFREG
                || st.st_size as u64 >= offset + len as u64);
        if !sized {
            return Err(Unavailable::Gone);
        }
        if locked && crate::backend::lock_range(fd, offset as usize, len).is_err() {
            return Err(Unavailable::InUse);
        }
        mapped.base = super::precopy::map_read_only(fd, offset, len).ok_or(Unavailable::Gone)?;
        Ok(mapped)
    }

    fn as_region(&self, like: &Region) -> Region {
        Region {
            base: self.base,
            len: self.len,
            media: Media::File,
            ..*like
        }
    }

    /// Whether this mapping holds the same heap as `other` (heap id and region length).
    fn same_heap(&self, other: &Region) -> bool {
        let region = self.as_region(other);
        match (
            superblock::read(image(other)),
            superblock::read(image(&region)),
        ) {
            (Some(ours), Some(theirs)) => {
                ours.heap_id == theirs.heap_id && ours.region_len == theirs.region_len
            }
            _ => false,
        }
    }

    /// Mapping the target of a move whose source is `source` (opened at `path`): the
    /// target's frontier, if it holds the same move (the same heap, its record MOVED_FROM
    /// naming the source, its frontier inside the region).
    fn target_frontier(&self, source: &Region, path: Option<&[u8]>) -> Option<u64> {
        if !self.same_heap(source) {
            return None;
        }
        match read(image(&self.as_region(source))) {
            Record::MovedFrom {
                source: named,
                whole: true,
                frontier,
                ..
            } if frontier <= source.len as u64 && names(named, path, source.lock_fd) => {
                Some(frontier)
            }
            _ => None,
        }
    }

    /// Mapping the source of a move whose target is `target` (opened at `path`): the
    /// source's frontier, if it holds the same move (the same heap, its record MOVING naming
    /// the target).
    fn source_frontier(&self, target: &Region, path: Option<&[u8]>) -> Option<u64> {
        if !self.same_heap(target) {
            return None;
        }
        match read(image(&self.as_region(target))) {
            Record::Moving {
                target: named,
                whole: true,
                frontier,
            } if names(named, path, target.lock_fd) => Some(frontier),
            _ => None,
        }
    }

    /// Writes the source's frontier through its file (the mapping is read-only) and makes
    /// it durable.
    fn write_source_frontier(&self, offset: u64, frontier: u64) -> bool {
        // SAFETY: our descriptor.
        pwrite_frontier(self.fd, offset, frontier) && unsafe { libc::fdatasync(self.fd) } == 0
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.base != 0 {
            // SAFETY: our own read-only mapping, used no more.
            crate::os::keep_errno(|| unsafe {
                libc::munmap(self.base as *mut libc::c_void, self.len)
            });
        }
        // SAFETY: our own descriptor; closing it releases its lock.
        crate::os::keep_errno(|| unsafe { libc::close(self.fd) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_long_paths_are_marked_truncated_and_refused() {
        let mut image = vec![0u8; 4096];
        image[..8].copy_from_slice(b"TMHEAP\r\n");
        assert_eq!(read(&image), Record::None);
        image[STATE_AT as usize..STATE_AT as usize + 4].copy_from_slice(&MOVING.to_le_bytes());
        image[TARGET_LEN_AT as usize..TARGET_LEN_AT as usize + 4]
            .copy_from_slice(&5u32.to_le_bytes());
        image[TARGET_AT as usize..TARGET_AT as usize + 5].copy_from_slice(b"/a/bc");
        assert_eq!(
            read(&image),
            Record::Moving {
                target: b"/a/bc",
                whole: true,
                frontier: 0
            }
        );
        image[FRONTIER_AT as usize..FRONTIER_AT as usize + 8]
            .copy_from_slice(&(3u64 << 20).to_le_bytes());
        assert!(matches!(read(&image), Record::Moving { frontier, .. } if frontier == 3 << 20));
        image[TARGET_LEN_AT as usize..TARGET_LEN_AT as usize + 4]
            .copy_from_slice(&300u32.to_le_bytes());
        assert!(matches!(
            read(&image),
            Record::Moving { whole: false, target, .. } if target.len() == TARGET_ROOM
        ));
        // The target's form names the source and its offset.
        let target = Region {
            base: image.as_mut_ptr() as usize,
            len: image.len(),
            reserved: image.len(),
            shared_across_fork: false,
            lock_fd: -1,
            media: Media::Anonymous,
            new_bytes: false,
            barrier: crate::backend::Barrier::ReadRegion,
            registers: 0,
        };
        mark_target(&target, b"/dev/shm/src", 8192);
        assert_eq!(
            read(&image),
            Record::MovedFrom {
                source: b"/dev/shm/src",
                whole: true,
                offset: 8192,
                frontier: 0
            }
        );
        // A source path longer than the record holds: the target says so, and cannot roll
        // forward (it could not find the source).
        let long = [b'x'; SOURCE_ROOM + 1];
        mark_target(&target, &long, 0);
        assert!(matches!(
            read(&image),
            Record::MovedFrom { whole: false, source, .. } if source.len() == SOURCE_ROOM
        ));
        assert!(!source_fits(&long) && source_fits(&long[..SOURCE_ROOM]));
        assert_eq!(
            stitch(&target, Some(b"/dev/shm/t")),
            Stitched::Refused {
                what: SOURCE_PATH_LONG,
                named: &long[..SOURCE_ROOM]
            }
        );
        // A target path the source's record cannot hold is refused before a heap moves.
        let long = [b'y'; TARGET_ROOM + 1];
        assert!(target_fits(&target, true, &long).is_err());
        assert!(target_fits(&target, true, &long[..TARGET_ROOM]).is_ok());
        assert!(target_fits(&target, false, &long).is_ok(), "not persistent");
        // Not a heap: no record, whatever the bytes.
        image[0] = 0;
        assert!(target_fits(&target, true, &long).is_ok());
        assert_eq!(read(&image), Record::None);
    }
}
