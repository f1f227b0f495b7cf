//! The page map: for every 4 MiB chunk of the address space, one byte in host memory saying
//! what of ours lives there. It answers "is this pointer ours, and what owns it?" for `free`,
//! `malloc_usable_size` and `tm_kind_of` without reading the memory the pointer points to.
//!
//! The map is a static array in `.bss` (32 MiB of address space for the 47-bit user half on
//! x86_64); the kernel gives it physical pages only where entries are written, so it costs a
//! few KiB per GiB of heap.
//!
//! Every block we hand out lies strictly after the start of the chunk that holds its owner's
//! metadata, so `owner_chunk(p) = (p - 1) & !CHUNK_MASK` finds that chunk even for a block that
//! starts exactly on a chunk boundary (an alignment ≥ 4 MiB).

use crate::chunk::{covers, ADDRESS_LIMIT, CHUNK_MASK, CHUNK_SHIFT};
use crate::kind::Kind;
use core::sync::atomic::{AtomicU8, Ordering};

const ENTRIES: usize = ADDRESS_LIMIT >> CHUNK_SHIFT;

/// What a chunk holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ChunkTag {
    /// Not ours.
    Foreign = 0,
    /// The start of a small-object segment (its `Segment` header is at the chunk start). Its
    /// entry holds the owner's tag (`SEGMENT_TAG_MIN` and up, `tag_segment`), never this value.
    Segment = 1,
    /// The first chunk of a large block (its `LargeHeader` is at the chunk start).
    LargeHead = 2,
    /// A later chunk of a large block.
    LargeTail = 3,
    /// A chunk of a device tier's region (CXL, CMB, PMR).
    DeviceCxl = 5,
    DeviceCmb = 6,
    DevicePmr = 7,
}

impl ChunkTag {
    #[inline]
    fn from_u8(v: u8) -> ChunkTag {
        match v {
            SEGMENT_TAG_MIN..=SHARED_SEGMENT_TAG => ChunkTag::Segment,
            2 => ChunkTag::LargeHead,
            3 => ChunkTag::LargeTail,
            5 => ChunkTag::DeviceCxl,
            6 => ChunkTag::DeviceCmb,
            7 => ChunkTag::DevicePmr,
            _ => ChunkTag::Foreign,
        }
    }

    /// The tag of a device tier's chunks.
    pub fn device(kind: Kind) -> ChunkTag {
        match kind {
            Kind::Cxl => ChunkTag::DeviceCxl,
            Kind::Cmb => ChunkTag::DeviceCmb,
            _ => ChunkTag::DevicePmr,
        }
    }
}

/// The first byte that tags a segment's chunk: a segment's entry holds its owner heap's tag,
/// `SEGMENT_TAG_MIN..SHARED_SEGMENT_TAG` (one per heap while they last, see
/// `dram::fast::binding`), or `SHARED_SEGMENT_TAG`. The owner's `free` compares the entry with
/// its thread's tag (`is_own_segment_at_index`): one comparison says both "a segment" and "its
/// owner's thread", where the map test and the owner test took two.
pub(crate) const SEGMENT_TAG_MIN: u8 = 8;
/// The tag of a segment whose heap has no tag of its own (more heaps than tags), or made under
/// `TIERMALLOC_SECURE=1` (where every free takes the path that compares owners).
pub(crate) const SHARED_SEGMENT_TAG: u8 = 255;
/// A byte no entry holds: the thread tag of a thread whose heap has no tag, or that has no heap.
pub(crate) const NO_SEGMENT_TAG: u8 = 4;

/// Who owns a block: the page map's one answer about a pointer, from which `free`, `realloc`,
/// `malloc_usable_size` and `tm_kind_of` all dispatch (`tier`), so that no layer below asks
/// again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Not ours (null included).
    Foreign,
    /// A DRAM small-object segment (`dram::fast`).
    Segment,
    /// The start of a DRAM large block (`dram::large`).
    LargeHead,
    /// Inside a DRAM large block, past its first chunk: DRAM's, but not a block start.
    LargeInterior,
    /// A device tier's region.
    Device(Kind),
}

impl Owner {
    /// The tier of the block, if it is ours.
    #[inline]
    pub fn kind(self) -> Option<Kind> {
        match self {
            Owner::Foreign => None,
            Owner::Device(kind) => Some(kind),
            _ => Some(Kind::Dram),
        }
    }
}

/// Who owns block `p`: one read of the map.
#[inline(always)]
pub fn owner_of(p: usize) -> Owner {
    match tag_of_block(p) {
        ChunkTag::Foreign => Owner::Foreign,
        ChunkTag::Segment => Owner::Segment,
        ChunkTag::LargeHead => Owner::LargeHead,
        ChunkTag::LargeTail => Owner::LargeInterior,
        ChunkTag::DeviceCxl => Owner::Device(Kind::Cxl),
        ChunkTag::DeviceCmb => Owner::Device(Kind::Cmb),
        ChunkTag::DevicePmr => Owner::Device(Kind::Pmr),
    }
}

/// The entries, one before the first: `MAP[i + 1]` is chunk `i`'s, and `MAP[0]`, never
/// tagged, is what `is_own_segment_at_index(-1, _)` reads for null (see `block_chunk_index`).
static MAP: [AtomicU8; ENTRIES + 1] = [const { AtomicU8::new(0) }; ENTRIES + 1];

/// The start of the chunk that holds the metadata of the block at `p` (see module comment).
#[inline(always)]
pub fn owner_chunk(p: usize) -> usize {
    p.wrapping_sub(1) & !CHUNK_MASK
}

/// The tag of the chunk holding the metadata of block `p`; `Foreign` for anything not ours,
/// null and addresses beyond the map included.
#[inline(always)]
pub fn tag_of_block(p: usize) -> ChunkTag {
    tag_of_chunk(owner_chunk(p))
}

/// The tag of the chunk starting at `chunk` (chunk-aligned).
///
/// Addresses at or above `ADDRESS_LIMIT` wrap onto the map instead of being checked: none of
/// them can be a block of ours, and passing one to `free` is undefined behaviour in C anyway,
/// while the check would cost every `free` two instructions. The one such address a correct
/// program passes, null (whose owner chunk is the last below 2^64), wraps onto the map's
/// last entry, which is never tagged (see `covers`).
#[inline(always)]
pub fn tag_of_chunk(chunk: usize) -> ChunkTag {
    ChunkTag::from_u8(MAP[((chunk >> CHUNK_SHIFT) & (ENTRIES - 1)) + 1].load(Ordering::Relaxed))
}

/// `free`'s form of `owner_chunk`, as a chunk index: `(p - 1) >> CHUNK_SHIFT`, shifted
/// arithmetically, so that null gives -1 (the map's never-tagged first entry) with no mask:
/// one instruction less than `tag_of_block` on every `free`, and the chunk's start is this
/// index shifted back. Every address of the user half (below `ADDRESS_LIMIT`) gives an index
/// of the map; an address above it, which no allocator hands out, gives one outside, which
/// `is_own_segment_at_index` must not be asked about (glibc's `free` faults on those addresses
/// too: it reads the word before them).
#[inline(always)]
pub fn block_chunk_index(p: usize) -> isize {
    (p as isize).wrapping_sub(1) >> CHUNK_SHIFT
}

/// Whether chunk `index` (from `block_chunk_index`) is a segment tagged `tag` (a heap's tag,
/// or `NO_SEGMENT_TAG`, which no entry holds): the map's byte compared in memory with the
/// tag's register.
///
/// # Safety
/// `index` must be -1 or the index of a chunk below `ADDRESS_LIMIT`.
#[inline(always)]
pub unsafe fn is_own_segment_at_index(index: isize, tag: u8) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: per the contract, `MAP + index + 1` is an entry of the map: one byte read.
        unsafe {
            core::arch::asm!(
                "cmp byte ptr [{map} + {index} + 1], {tag}",
                "jne {other}",
                map = in(reg) MAP.as_ptr(),
                index = in(reg) index,
                tag = in(reg_byte) tag,
                other = label { return false; },
                options(nostack, readonly),
            );
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: per the contract, `index + 1` is an index of the map.
        let entry = unsafe { MAP.get_unchecked((index + 1) as usize) };
        entry.load(Ordering::Relaxed) == tag
    }
}

/// The entry of chunk `index` (from `block_chunk_index`), as it is: a segment's tag
/// (`SEGMENT_TAG_MIN` and up) or another `ChunkTag`'s byte.
///
/// # Safety
/// As for `is_own_segment_at_index`.
#[inline(always)]
pub unsafe fn entry_at_index(index: isize) -> u8 {
    #[cfg(target_arch = "x86_64")]
    {
        let entry: u32;
        // SAFETY: per the contract, `MAP + index + 1` is an entry of the map: one byte read,
        // as a relaxed load is on x86_64. (Written as an instruction: the debug build's checks
        // of a reference would sit in every `free` and `operator delete`.)
        unsafe {
            core::arch::asm!(
                "movzx {entry:e}, byte ptr [{map} + {index} + 1]",
                entry = out(reg) entry,
                map = in(reg) MAP.as_ptr(),
                index = in(reg) index,
                options(nostack, readonly, preserves_flags, pure),
            );
        }
        entry as u8
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: per the contract, `index + 1` is an index of the map.
        unsafe { MAP.get_unchecked((index + 1) as usize) }.load(Ordering::Relaxed)
    }
}

/// Tags the chunk at `start` as a segment's, with `tag` (`SEGMENT_TAG_MIN..=SHARED_SEGMENT_TAG`:
/// its owner heap's tag, see `SEGMENT_TAG_MIN`).
#[inline(never)]
pub fn tag_segment(start: usize, tag: u8) {
    debug_assert!(start & CHUNK_MASK == 0 && tag >= SEGMENT_TAG_MIN);
    MAP[(start >> CHUNK_SHIFT) + 1].store(tag, Ordering::Release);
}

/// Tags the chunks of `[start, start + len)` (start chunk-aligned): the first `first`, the rest
/// `rest`. The range must lie below `ADDRESS_LIMIT` (see `covers`).
pub fn set(start: usize, len: usize, first: ChunkTag, rest: ChunkTag) {
    debug_assert!(start & CHUNK_MASK == 0 && covers(start, len));
    debug_assert!(
        first != ChunkTag::Segment && rest != ChunkTag::Segment,
        "segments: tag_segment"
    );
    let first_index = start >> CHUNK_SHIFT;
    let end_index = (start + len + CHUNK_MASK) >> CHUNK_SHIFT;
    MAP[first_index + 1].store(first as u8, Ordering::Release);
    for entry in &MAP[first_index + 2..end_index + 1] {
        entry.store(rest as u8, Ordering::Release);
    }
}

/// Forgets the chunks of `[start, start + len)`.
pub fn clear(start: usize, len: usize) {
    set(start, len, ChunkTag::Foreign, ChunkTag::Foreign);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::CHUNK_SIZE;

    #[test]
    fn owner_chunk_of_chunk_aligned_block_is_previous_chunk() {
        assert_eq!(owner_chunk(8 * CHUNK_SIZE), 7 * CHUNK_SIZE);
        assert_eq!(owner_chunk(8 * CHUNK_SIZE + 16), 8 * CHUNK_SIZE);
        assert_eq!(tag_of_block(0), ChunkTag::Foreign);
        assert!(
            !covers(ADDRESS_LIMIT - CHUNK_SIZE, 1),
            "null's entry is never tagged"
        );
    }

    #[test]
    fn set_and_clear_a_range() {
        // An address range nobody maps in a test process: tags are only bookkeeping here.
        let base = 0x7000_0000_0000usize;
        set(
            base,
            3 * CHUNK_SIZE - 5,
            ChunkTag::LargeHead,
            ChunkTag::LargeTail,
        );
        assert_eq!(tag_of_chunk(base), ChunkTag::LargeHead);
        assert_eq!(tag_of_chunk(base + CHUNK_SIZE), ChunkTag::LargeTail);
        assert_eq!(tag_of_chunk(base + 2 * CHUNK_SIZE), ChunkTag::LargeTail);
        assert_eq!(tag_of_chunk(base + 3 * CHUNK_SIZE), ChunkTag::Foreign);
        clear(base, 3 * CHUNK_SIZE);
        assert_eq!(tag_of_chunk(base + CHUNK_SIZE), ChunkTag::Foreign);
    }

    #[test]
    fn owner_of_answers_once_for_every_kind_of_chunk() {
        // Address ranges nobody maps in a test process: tags are only bookkeeping here.
        let large = 0x7100_0000_0000usize;
        set(
            large,
            2 * CHUNK_SIZE,
            ChunkTag::LargeHead,
            ChunkTag::LargeTail,
        );
        assert_eq!(owner_of(large + 64), Owner::LargeHead);
        assert_eq!(owner_of(large + CHUNK_SIZE + 64), Owner::LargeInterior);
        assert_eq!(owner_of(large + CHUNK_SIZE + 64).kind(), Some(Kind::Dram));
        let device = 0x7200_0000_0000usize;
        for kind in [Kind::Cxl, Kind::Cmb, Kind::Pmr] {
            set(
                device,
                CHUNK_SIZE,
                ChunkTag::device(kind),
                ChunkTag::device(kind),
            );
            assert_eq!(owner_of(device + 16), Owner::Device(kind));
            assert_eq!(owner_of(device + 16).kind(), Some(kind));
        }
        clear(large, 2 * CHUNK_SIZE);
        clear(device, CHUNK_SIZE);
        assert_eq!(owner_of(large + 64), Owner::Foreign);
        assert_eq!(owner_of(0), Owner::Foreign);
        assert_eq!(owner_of(0).kind(), None);
    }
}
