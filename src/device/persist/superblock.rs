//! The superblock: the first 4 KiB of a device region, which says that a tiermalloc heap
//! lives there, of which layout and length, and whether its format finished.
//!
//! ```text
//! 0   magic        8  "TMHEAP\r\n"
//! 8   version      4  LAYOUT_VERSION
//! 12  state        4  1 formatting, 2 ready
//! 16  region_len   8  bytes of the region the heap was formatted for
//! 24  heap_id      8  random, chosen at format
//! 32  heap_start   8  offset of the first header (4096)
//! 40  slab_bytes   8  16384 (the slab layout the chain's markers assume)
//! 48  kind         4  the tm_kind that formatted it
//! 52  dirty        4  1 from an open (or format) until the process's clean close sets 0:
//!                     the next open reads whether the last run ended cleanly
//! 64  owner record 80 who has the region open (owner.rs); kept by a format
//! 144 move record  112 a live move of the heap onto another device began (evacuate/move_record.rs)
//! 256 roots table (roots.rs)
//! ```

use super::media;
use crate::backend::Region;
use crate::device::header::{BlockHeader, HEADER_MAGIC, HEADER_SIZE, STATE_FREE};
use crate::device::slabs::SLAB_BYTES;

pub(crate) const SUPERBLOCK_BYTES: u64 = 4096;
const MAGIC: [u8; 8] = *b"TMHEAP\r\n";
pub(crate) const LAYOUT_VERSION: u32 = 1;
const FORMATTING: u32 = 1;
const READY: u32 = 2;
const STATE_AT: u64 = 12;
pub(crate) const DIRTY_AT: u64 = 52;
/// The owner record's bytes, `[OWNER_RECORD_START, OWNER_RECORD_END)`: its fields are
/// `owner.rs`'s, a format writes around them.
pub(crate) const OWNER_RECORD_START: u64 = 64;
pub(crate) const OWNER_RECORD_END: u64 = 144;

/// What the start of a region holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// A finished heap of this region's length and layout.
    Heap,
    /// A heap whose format did not finish (it holds nothing).
    Unfinished,
    /// A heap formatted for a region of another length.
    OtherLength,
    /// A tiermalloc superblock of another layout version (a newer or older library's heap).
    OtherLayout,
    /// Anything else.
    Other,
}

/// The superblock's fields, read from an image of the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fields {
    pub version: u32,
    pub state: u32,
    pub region_len: u64,
    pub heap_id: u64,
    pub heap_start: u64,
    pub slab_bytes: u64,
    pub kind: u32,
    pub dirty: u32,
}

fn u64_at(image: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(image[at..at + 8].try_into().unwrap_or([0; 8]))
}

fn u32_at(image: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(image[at..at + 4].try_into().unwrap_or([0; 4]))
}

/// Whether `bytes` start with the superblock's magic.
pub(crate) fn has_magic(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..8] == MAGIC
}

/// Whether `bytes` start with the shared pool's magic (`pool::layout::MAGIC`, "TMPOOL01" at
/// offset 0; the pool layer sits above this one, so its constant is not imported).
pub(crate) fn holds_pool(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..8] == *b"TMPOOL01"
}

/// The fields, if `image` starts with the magic.
pub(crate) fn read(image: &[u8]) -> Option<Fields> {
    if image.len() < SUPERBLOCK_BYTES as usize || !has_magic(image) {
        return None;
    }
    Some(Fields {
        version: u32_at(image, 8),
        state: u32_at(image, 12),
        region_len: u64_at(image, 16),
        heap_id: u64_at(image, 24),
        heap_start: u64_at(image, 32),
        slab_bytes: u64_at(image, 40),
        kind: u32_at(image, 48),
        dirty: u32_at(image, 52),
    })
}

/// What `image` (a whole region) holds.
pub(crate) fn examine(image: &[u8]) -> Found {
    let Some(f) = read(image) else {
        return Found::Other;
    };
    let layout = f.version == LAYOUT_VERSION
        && f.heap_start == SUPERBLOCK_BYTES
        && f.slab_bytes == SLAB_BYTES;
    match () {
        _ if f.version != LAYOUT_VERSION => Found::OtherLayout,
        _ if !layout => Found::Other,
        _ if f.region_len != image.len() as u64 => Found::OtherLength,
        _ if f.state == FORMATTING => Found::Unfinished,
        _ if f.state == READY => Found::Heap,
        _ => Found::Other,
    }
}

/// A random heap id (the kernel's, else the time stamp counter mixed with the process id).
fn heap_id() -> u64 {
    let mut id = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into `id`.
    let n = unsafe { libc::getrandom((&mut id as *mut u64).cast(), 8, libc::GRND_NONBLOCK) };
    if n != 8 {
        // SAFETY: no preconditions.
        let (t, pid) = unsafe { (core::arch::x86_64::_rdtsc(), libc::getpid() as u64) };
        id = (t ^ pid.rotate_left(32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    id
}

/// Formats the region: a superblock in state "formatting", one free extent over the rest,
/// then the state "ready". A crash before the last write leaves an unfinished format, which
/// the next open formats again.
pub(crate) fn format(region: &Region, kind: u32) {
    let mut page = [0u8; SUPERBLOCK_BYTES as usize];
    page[..8].copy_from_slice(&MAGIC);
    page[8..12].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
    page[12..16].copy_from_slice(&FORMATTING.to_le_bytes());
    page[16..24].copy_from_slice(&(region.len as u64).to_le_bytes());
    page[24..32].copy_from_slice(&heap_id().to_le_bytes());
    page[32..40].copy_from_slice(&SUPERBLOCK_BYTES.to_le_bytes());
    page[40..48].copy_from_slice(&SLAB_BYTES.to_le_bytes());
    page[48..52].copy_from_slice(&kind.to_le_bytes());
    page[52..56].copy_from_slice(&1u32.to_le_bytes());
    // Around the owner record: the opener claimed it before formatting (`owner`).
    let (start, end) = (OWNER_RECORD_START as usize, OWNER_RECORD_END as usize);
    media::write_bytes(region, 0, &page[..start]);
    media::write_bytes(region, end as u64, &page[end..]);
    media::order(region);
    let all_free = BlockHeader {
        size: region.len as u64 - SUPERBLOCK_BYTES - HEADER_SIZE,
        magic: HEADER_MAGIC,
        kind: kind as u16,
        state: STATE_FREE,
    };
    media::write_header(region, SUPERBLOCK_BYTES, all_free);
    media::order(region);
    media::write_bytes(region, STATE_AT, &READY.to_le_bytes());
    media::order(region);
}

/// Whether the last process that had the heap open closed it cleanly (`dirty == 0`).
pub(crate) fn closed_cleanly(f: &Fields) -> bool {
    f.dirty == 0
}

/// Marks the heap open by a process (the dirty flag), before any other write of this run.
pub(crate) fn mark_dirty(region: &Region) {
    media::write_bytes(region, DIRTY_AT, &1u32.to_le_bytes());
    media::order(region);
}

/// Marks the heap closed cleanly: every earlier write of this run made durable first
/// (`flush::persist` with no range: `msync` of the region on a file; on DAX a fence, the
/// headers and the roots having been flushed as they were written; a barrier read on a BAR),
/// then the dirty flag cleared, then made durable the same way. A power loss before the
/// last step leaves the flag set (an unclean close: recovery is the same scan either way).
/// False (with `errno`) if the kernel refused a flush; the flag then stays set.
pub(crate) fn mark_clean(region: &Region) -> bool {
    if !super::flush::persist(region, 0, 0) {
        return false;
    }
    media::write_bytes(region, DIRTY_AT, &0u32.to_le_bytes());
    super::flush::persist(region, 0, 0)
}
