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
//!   target). From the remap on, any thread may write the chunk on the target only (the new
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
//! - the target of a move that did not finish (its record names its own path): refused in one
//!   line; its source recovers the heap. `TIERMALLOC_VERBOSE=1` names the target.
//!
//! Formatting the device (`mode=fresh`) clears the record.
//!
//! ```text
//! superblock (persist/superblock.rs)
//! 144  state       4  MOVING ("MOVE"), or 0
//! 148  target_len  4  the target path's length (longer than 96: truncated below)
//! 152  frontier    8  bytes of the region on the target (see above)
//! 160  target     96  the target's path, NUL-padded
//! 256  roots table
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

/// Whether the source's frontier can be written through its file (`mark_source`): writes
/// the frontier's present value (0 before a move) back.
fn source_writable(fd: i32, offset: u64) -> bool {
    fd >= 0 && pwrite_frontier(fd, offset, 0)
}

fn pwrite_frontier(fd: i32, offset: u64, frontier: u64) -> bool {
    let bytes = frontier.to_le_bytes();
    // SAFETY: our open descriptor of the source, 8 bytes from a live buffer.
    let n = unsafe {
        libc::pwrite(
            fd,
            bytes.as_ptr().cast(),
            8,
            (offset + FRONTIER_AT) as libc::off_t,
        )
    };
    n == 8
}

/// Sets the target's frontier to `hi` through `target`, a mapping of the target whose
/// superblock the first chunk's copy wrote. Called with the chunk's writers still held,
/// before it is mapped from the target.
pub(super) fn advance(target: &Region, hi: u64) {
    media::write_bytes(target, FRONTIER_AT, &hi.to_le_bytes());
    media::order(target);
}

/// Sets the source's frontier through its file (its superblock is held, and then mapped
/// from the target). Called once, after the first chunk's copy and before its remap; durable as the source's page cache is (a source that userfaultfd can hold is shmem
/// or hugetlbfs memory, which survives a process's crash, not the machine's). A write
/// refused here was refused by `begin`'s check too, which then recorded `UNKNOWN`.
pub(super) fn mark_source(source_fd: i32, source_offset: u64, hi: u64) {
    if source_fd >= 0 {
        crate::os::keep_errno(|| pwrite_frontier(source_fd, source_offset, hi));
    }
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
    if word(STATE_AT) != MOVING {
        return Record::None;
    }
    let len = word(TARGET_LEN_AT) as usize;
    let kept = len.min(TARGET_ROOM);
    let frontier = u64::from_le_bytes(
        image[FRONTIER_AT as usize..FRONTIER_AT as usize + 8]
            .try_into()
            .unwrap_or([0xff; 8]),
    );
    Record::Moving {
        target: &image[TARGET_AT as usize..TARGET_AT as usize + kept],
        whole: kept == len,
        frontier,
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
    /// Not to be recovered: why, and the record's target.
    Refused {
        what: &'static str,
        target: &'a [u8],
    },
}

const TARGET_UNFINISHED: &str = "is the target of a live move (tm_evacuate) that did not finish: the heap lies partly here and partly on its source, which recovers it whole when opened (README: Live evacuation)";
const STALE_SOURCE: &str = "holds a heap that was moved onto another device by tm_evacuate: this copy is stale (the target no longer holds an unfinished move to roll back; README: Live evacuation; mode=fresh formats it anew)";

/// Makes the heap in `region` (opened at `path`) whole if a move of it was cut short, as the
/// module comment says, or says why it must not be recovered.
pub(crate) fn stitch<'a>(region: &'a Region, path: Option<&[u8]>) -> Stitched<'a> {
    let Record::Moving {
        target,
        whole,
        frontier,
    } = read(image(region))
    else {
        return Stitched::Whole;
    };
    if whole && path == Some(target) {
        return Stitched::Refused {
            what: TARGET_UNFINISHED,
            target,
        };
    }
    if frontier == 0 {
        clear(region);
        persist::persist(region, 0, superblock::SUPERBLOCK_BYTES as usize);
        return Stitched::RolledBack { target, bytes: 0 };
    }
    let refused = Stitched::Refused {
        what: STALE_SOURCE,
        target,
    };
    if !whole {
        return refused;
    }
    let Some(moved) = TargetImage::open(target, region.len) else {
        return refused;
    };
    let Some(bytes) = moved.frontier_of_same_move(region, target) else {
        return refused;
    };
    // The moved part comes back over the source's stale one, the superblock with it (the
    // target's: roots and records as the program last set them; its record still says
    // MOVING, so a crash during the copy repeats it).
    // SAFETY: `[0, bytes)` lies inside both our writable region and the target's read-only
    // mapping (`frontier_of_same_move` checked `bytes <= region.len`), distinct mappings.
    unsafe {
        core::ptr::copy_nonoverlapping(
            moved.base as *const u8,
            region.base as *mut u8,
            bytes as usize,
        )
    };
    persist::persist(region, 0, bytes as usize);
    clear(region);
    persist::persist(region, 0, superblock::SUPERBLOCK_BYTES as usize);
    Stitched::RolledBack { target, bytes }
}

/// The target of a cut-short move, mapped read-only (unmapped on drop).
struct TargetImage {
    base: usize,
    len: usize,
}

impl TargetImage {
    /// Maps the first `len` bytes of the file or device at `path` read-only; `None` if it
    /// cannot be opened or is shorter.
    fn open(path: &[u8], len: usize) -> Option<TargetImage> {
        let mut name = [0u8; TARGET_ROOM + 1];
        name[..path.len()].copy_from_slice(path);
        let fd = crate::os::keep_errno(|| {
            // SAFETY: a NUL-terminated path in a local buffer.
            unsafe { libc::open(name.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) }
        });
        if fd < 0 {
            return None;
        }
        // SAFETY: an all-zero stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        // SAFETY: our descriptor and a valid out-parameter.
        let sized = unsafe { libc::fstat(fd, &mut st) } == 0
            && (st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size as u64 >= len as u64);
        let base = if sized {
            // SAFETY: a fresh read-only shared mapping of our descriptor.
            unsafe {
                libc::mmap(
                    core::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    fd,
                    0,
                )
            }
        } else {
            libc::MAP_FAILED
        };
        crate::os::keep_errno(|| {
            // SAFETY: our own descriptor; the mapping keeps the file.
            unsafe { libc::close(fd) }
        });
        (base != libc::MAP_FAILED).then_some(TargetImage {
            base: base as usize,
            len,
        })
    }

    /// The target's frontier, if it holds the same move as `source`: a superblock of the same
    /// heap and region length whose record names `target` (itself), its frontier inside the
    /// region.
    fn frontier_of_same_move(&self, source: &Region, target: &[u8]) -> Option<u64> {
        let region = Region {
            base: self.base,
            len: self.len,
            media: Media::File,
            ..*source
        };
        let (ours, theirs) = (
            superblock::read(image(source))?,
            superblock::read(image(&region))?,
        );
        if ours.heap_id != theirs.heap_id || ours.region_len != theirs.region_len {
            return None;
        }
        match read(image(&region)) {
            Record::Moving {
                target: named,
                whole: true,
                frontier,
            } if named == target && frontier <= source.len as u64 => Some(frontier),
            _ => None,
        }
    }
}

impl Drop for TargetImage {
    fn drop(&mut self) {
        // SAFETY: our own read-only mapping, used no more.
        crate::os::keep_errno(|| unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_long_paths_are_marked_truncated() {
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
        assert!(
            matches!(read(&image), Record::Moving { whole: false, target, .. } if target.len() == TARGET_ROOM)
        );
        // Not a heap: no record, whatever the bytes.
        image[0] = 0;
        assert_eq!(read(&image), Record::None);
    }
}
