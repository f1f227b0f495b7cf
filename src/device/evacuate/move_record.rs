//! The move record: a few bytes of a heap's superblock that say a live move (`evacuate`) of
//! the heap onto another device began, and onto which. A crash during a move leaves the heap
//! split: the chunks already moved are on the target (with every write since), the rest on
//! the source, and neither device alone holds the heap. The record makes that detected
//! instead of silently recovering half a heap:
//!
//! - before the first chunk moves, the record is written into the source's superblock and
//!   made durable; the first chunk's copy carries it onto the target;
//! - when the last chunk is on the target, the target's record is cleared (then the whole
//!   target is made durable); the source keeps it, for its copy is stale from then on;
//! - opening a heap for recovery refuses one whose superblock holds the record, in one line:
//!   on the source ("its heap was moved onto another device"), or on the target of a move that
//!   did not finish ("the heap lies partly on its source"). `TIERMALLOC_VERBOSE=1` names the
//!   target from the record. Formatting the device (`mode=fresh`) clears it.
//!
//! A move that fails before its first chunk clears the record again; one that fails midway
//! leaves it on both devices, which is the truth.
//!
//! ```text
//! superblock (persist/superblock.rs)
//! 144  state       4  MOVING ("MOVE"), or 0
//! 148  target_len  4  the target path's length (longer than 104: truncated below)
//! 152  target    104  the target's path, NUL-padded
//! 256  roots table
//! ```

use crate::backend::Region;
use crate::device::persist::{self, media, superblock};
use core::ffi::CStr;

const STATE_AT: u64 = 144;
const TARGET_LEN_AT: u64 = 148;
const TARGET_AT: u64 = 152;
const END: u64 = 256;
const TARGET_ROOM: usize = (END - TARGET_AT) as usize;
const MOVING: u32 = u32::from_le_bytes(*b"MOVE");

/// Whether `region` starts with a heap's superblock (a record has a place there).
fn has_heap(region: &Region) -> bool {
    // SAFETY: a mapped region of at least one superblock (the tier opened it as a heap).
    let image = unsafe {
        core::slice::from_raw_parts(
            region.base as *const u8,
            superblock::SUPERBLOCK_BYTES as usize,
        )
    };
    region.len as u64 >= superblock::SUPERBLOCK_BYTES && superblock::read(image).is_some()
}

/// Writes the record naming `target` into the superblock of `region` (the device behind it
/// now, the source) and makes it durable. Nothing for a region without a heap's superblock.
pub(super) fn begin(region: &Region, target: &CStr) {
    if !has_heap(region) {
        return;
    }
    let path = target.to_bytes();
    let mut record = [0u8; (END - TARGET_LEN_AT) as usize];
    record[..4].copy_from_slice(&(path.len() as u32).to_le_bytes());
    let kept = path.len().min(TARGET_ROOM);
    record[4..4 + kept].copy_from_slice(&path[..kept]);
    media::write_bytes(region, TARGET_LEN_AT, &record);
    media::order(region);
    media::write_bytes(region, STATE_AT, &MOVING.to_le_bytes());
    persist::persist(region, 0, superblock::SUPERBLOCK_BYTES as usize);
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
    /// A move onto `target` began (`whole`: the path is not truncated).
    Moving {
        target: &'a [u8],
        whole: bool,
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
    Record::Moving {
        target: &image[TARGET_AT as usize..TARGET_AT as usize + kept],
        whole: kept == len,
    }
}

/// Why a heap about to be recovered from `region` (opened at `path`) must not be, if its
/// superblock holds a move record: the problem's text, and the record's target for a
/// verbose line.
pub(crate) fn refusal<'a>(
    region: &'a Region,
    path: Option<&[u8]>,
) -> Option<(&'static str, &'a [u8])> {
    // SAFETY: a mapped region of at least one superblock (`decide` checked its length).
    let image = unsafe {
        core::slice::from_raw_parts(
            region.base as *const u8,
            superblock::SUPERBLOCK_BYTES as usize,
        )
    };
    match read(image) {
        Record::None => None,
        Record::Moving { target, whole } if whole && path == Some(target) => Some((
            "is the target of a live move (tm_evacuate) that did not finish: the heap lies partly here and partly on its source, so neither recovers alone (README: Live evacuation)",
            target,
        )),
        Record::Moving { target, .. } => Some((
            "holds a heap that was moved onto another device by tm_evacuate: this copy is stale, or the move was interrupted and the heap is split (README: Live evacuation; mode=fresh formats it anew)",
            target,
        )),
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
                whole: true
            }
        );
        image[TARGET_LEN_AT as usize..TARGET_LEN_AT as usize + 4]
            .copy_from_slice(&300u32.to_le_bytes());
        assert!(
            matches!(read(&image), Record::Moving { whole: false, target } if target.len() == TARGET_ROOM)
        );
        // Not a heap: no record, whatever the bytes.
        image[0] = 0;
        assert_eq!(read(&image), Record::None);
    }
}
