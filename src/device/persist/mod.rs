//! Persistent device tiers: what a device region holds so that a later run finds the heap,
//! and the order in which tiermalloc writes it so that a crash at any instant leaves a heap
//! that recovers. Seed 002's "scan of the device memory to build the free lists".
//!
//! # Layout of a region
//!
//! ```text
//! [0, 4096)        superblock (superblock.rs): magic "TMHEAP\r\n", layout version, region
//!                  length, random heap id, formatting/ready state, dirty flag, kind; at 256
//!                  the roots table (roots.rs): 48 entries of {name[64], offset, valid}
//! [4096, len)      the header chain: extents that tile the rest of the region, each
//!                  starting with a 16-byte tm_block_header {size, "TMHB", kind, state};
//!                  the next header is at offset + 16 + size
//! ```
//!
//! A header's state says what its extent is: 1 a live block, 2 free space, `0x8000 | class`
//! a slab of that size class (`STATE_SLAB`): 16 KiB, 16-KiB aligned, its slots laid out
//! after the marker at `16 + n * slot` (`device_slabs`), each slot a header and a block; a
//! live slot is a slot header with state 1 and the class's exact size. Consecutive free
//! extents are allowed (the heap coalesces in host memory and never rewrites the device for
//! it); recovery merges them. Free space may also start with the marker of a slab that was
//! retired (retiring writes nothing): a marker whose slots are all free, or whose length is
//! not 16 KiB (a cut from that free space rewrote its size, never its state), is free space.
//!
//! # Opening (`decide`)
//!
//! - a valid superblock of this region's length: `persist` → recover; `fresh` → format;
//! - a heap formatted for another length: `persist` → refused; `fresh` → format;
//! - a superblock whose format never finished: format (it held nothing);
//! - a pmr tier's heap found by a `cxl` or `cmb` tier that is `fresh` only by its kind's
//!   default: refused, untouched (`persist` recovers it, `fresh` or `format` overwrites it);
//! - a superblock of another layout version: refused in one line saying so, untouched, unless
//!   `format` is given;
//! - zeroes (checked in full), or bytes that did not exist before this open (a file just
//!   created or extended): format;
//! - anything else: refused in one line, the bytes untouched, unless `format` is given, or
//!   the region is a device (DAX, a PCI BAR) opened `fresh` (a volatile device holds garbage
//!   after boot).
//!
//! `persist` is the default on `pmr`, `fresh` on `cmb` and `cxl`.
//!
//! # Who has it open (`owner.rs`)
//!
//! The superblock holds an owner record, claimed with a compare-and-swap in device memory
//! before the region is formatted or recovered, so that a second opener (another process,
//! another host sharing the device) is refused, naming the owner's host and pid. A dead owner
//! is replaced: on its host at once (its pid is gone), elsewhere when its heartbeat is older
//! than the lease (10 s; on a BAR or DAX a thread of the owner refreshes it, never a malloc
//! path; a file's owner on another machine is impossible, the host's file lock covers it).
//!
//! # The dirty flag
//!
//! Every open sets the superblock's dirty flag (a format writes it set). At process exit the
//! library's exit hook (`front::runtime`) closes each heap the process opened: every write of
//! the run made durable (`flush.rs`), then the flag cleared. So the next open knows whether
//! the last run ended cleanly (`DeviceTier::previous_run_clean`, `Tier::previous_run_clean`,
//! `HeapReport::closed_cleanly`, a line with `TIERMALLOC_VERBOSE=1`). Recovery is the same
//! one scan either way: the flag says how the run ended, the write order keeps the heap
//! sound.
//!
//! # Recovery (`recover.rs`)
//!
//! One sequential pass over the header chain, reading the region front to back: each
//! header's 16 bytes, and inside a slab its slots' headers. It feeds an `ExtentHeap` builder
//! (extents in address order) and `Slabs::adopt`; roots stay on the device (read by
//! `tm_root_get`). After it, no operation reads a header again. A chain that leaves the
//! region, a header without the magic, an impossible size or state: the tier is refused with
//! the offset named (`tiermalloc check` and the key `format` are the ways on).
//!
//! # Crash consistency: the order of the writes
//!
//! The invariant the heap keeps on the device, between operations: the chain from 4096
//! reaches exactly the region's end; every host extent boundary is a chain header; the header
//! at a live block's (or slab's) start says so, with its exact size; every header inside a
//! free host extent, on the chain or not, is free, a stale free, or a retired slab's marker
//! (whose slots are all free); no header anywhere says "allocated" but a live block's (or one
//! whose free is in flight, or whose malloc is). Blocks are cut from the
//! *end* of a free extent (`ExtentHeap::set_carve_from_end`), so the free extent keeps its
//! header and only its size shrinks:
//!
//! | operation | device writes, in this order (`|`: an ordering point, `order()`) |
//! |---|---|
//! | malloc, exact fit | block header (16 B) |
//! | malloc, split | block header (16 B) `|` size of the free extent in front (8 B) |
//! | malloc, aligned remainder behind | its free header (16 B) `|` block header `|` front size |
//! | free | state (2 B) |
//! | slab made | the slab's marker header, as a block (above); nothing when it is cut again at the window of the last slab cut, with the same free extent in front and nothing written there since (`slab_memo.rs`: the device holds both writes already) |
//! | slot malloc / free | slot header (16 B) / state (2 B) |
//! | slab retired | `|` only: the last slot's free (its state) left no live slot |
//! | resize, grow / shrink | header of the free extent behind (16 B) `|` block header |
//! | root set (new) | name and offset `|` valid flag |
//!
//! Each write that makes something visible to the scan comes last, after the writes it
//! depends on: a block appears when the size in front shrinks past it, a new free extent
//! behind a block is written before the block's header points at it. So a crash between any
//! two writes (every prefix: a process killed, PCIe posted writes that stop arriving) and any
//! loss of writes after the last ordering point (a cache that wrote back only some lines)
//! recovers to a heap with no overlap, every block whose malloc returned before the last
//! ordering point allocated, every completed free free, no space unaccounted for. The
//! crash-point checker (`tests.rs`) replays a recorded run against every prefix and every
//! loss allowed between ordering points.
//!
//! Per pair of malloc and free, in the common cases: 16 + 2 = 18 bytes in 2 stores (a slot,
//! an exact fit), 16 + 8 + 2 = 26 bytes in 3 stores (a split). The split's 8-byte store is
//! the one store correctness adds: without it the free space behind a new block has no
//! header a scan could find. Carving from the end makes it 8 bytes, not a 16-byte header for
//! a new tail. No operation reads the device. A slab's life adds its marker (16 B) and the size
//! in front (8 B): a program that makes and retires a slab on every pair would pay 42 bytes
//! in 4 stores, but the next slab of that class is cut at the same window from the same free
//! extent, whose two writes the device already holds: `slab_memo.rs` remembers the last slab
//! cut and skips them, 18 bytes in 2 stores when every pair re-cuts it (23.8 in 2.5 measured;
//! until session 6 retiring wrote the marker's state too: 44 in 5; tests/device_touches.rs
//! measures all three patterns). The price of cutting from the end: the size store lands on
//! the free extent's first line, often far from the block (a cache miss on a file,
//! BENCHMARKS.md), and a block has free space behind it (to grow in place into) less often
//! than when cut from the front.
//!
//! What `order()` costs: nothing on a file or a BAR (stores reach the page cache, and a PCIe
//! device, in program order; a compiler fence keeps them so), a cache-line flush and `sfence`
//! on DAX. Durability against power loss is `tm_persist` (`flush.rs`): `msync` of the region
//! for a file (every earlier write becomes durable, headers included), flush and fence for
//! DAX, `backend::device_barrier` for a BAR.
//!
//! Known limit: a slot header is recognised by its magic, state and exact size at its slot's
//! position; a block whose *contents* hold a copy of such a header at exactly the offset of a
//! later slab's slot would be taken for a live slot (a leak, never an overlap).

mod check;
mod extent_map;
mod flush;
pub(crate) mod media;
pub(crate) mod owner;
pub(crate) mod recover;
mod repair;
pub(crate) mod roots;
mod slab_memo;
pub(crate) mod superblock;
#[cfg(test)]
mod tests;

pub use check::{check_file, check_image, check_image_with_progress, HeapReport};
pub use extent_map::{extent_map, ExtentKind, MapExtent};
pub(crate) use flush::persist;
pub use repair::{heap_region_len, repair_file, Repaired};
pub(crate) use slab_memo::SlabMemo;
pub(crate) use superblock::SUPERBLOCK_BYTES;

use crate::backend::{Media, Problem, Region};
use crate::config::TierSpec;
use crate::kind::Kind;

/// State of a slab's marker header: `STATE_SLAB | class`.
pub(crate) const STATE_SLAB: u16 = 0x8000;

/// What opening a region does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Opening {
    Format,
    Recover,
}

/// Decides between format, recovery and refusal for `region` opened as `spec` says.
pub(crate) fn decide(region: &Region, spec: &TierSpec) -> Result<Opening, Problem> {
    if (region.len as u64) < 2 * SUPERBLOCK_BYTES {
        return Err(Problem::new(
            "region is too small for a heap (8 KiB at least)",
        ));
    }
    if spec.format {
        return Ok(Opening::Format);
    }
    // SAFETY: the region is mapped and readable, and nothing else uses it yet.
    let image = unsafe { core::slice::from_raw_parts(region.base as *const u8, region.len) };
    let found = superblock::examine(image);
    if matches!(
        found,
        superblock::Found::Heap | superblock::Found::OtherLength
    ) && formats_by_default(spec)
        && superblock::read(image).is_some_and(|f| f.kind == Kind::Pmr as u32)
    {
        return Err(Problem::new(
            "holds a pmr tier's persistent heap, which this tier would format (fresh, its \
             kind's default); left untouched (add persist to recover it, or format to overwrite \
             it)",
        ));
    }
    match found {
        superblock::Found::Heap if spec.persists() => Ok(Opening::Recover),
        superblock::Found::Heap | superblock::Found::Unfinished => Ok(Opening::Format),
        superblock::Found::OtherLength if !spec.persists() => Ok(Opening::Format),
        superblock::Found::OtherLength => Err(Problem::new(
            "holds a tiermalloc heap of another size (give its size=, or add format to overwrite \
             it)",
        )),
        superblock::Found::OtherLayout if !(volatile_device(region) && !spec.persists()) => {
            Err(Problem::new(
                "holds a tiermalloc heap of another layout version (a newer or older library's); \
             left untouched (open it with the library that wrote it, or add format to overwrite \
             it)",
            ))
        }
        superblock::Found::Other | superblock::Found::OtherLayout => {
            let device = volatile_device(region);
            if region.new_bytes || (device && !spec.persists()) || all_zero(image) {
                Ok(Opening::Format)
            } else if superblock::holds_pool(image) {
                // `format` here would wipe every process's spaces: say what it is.
                Err(Problem::new(
                    "holds a tiermalloc shared pool (TIERMALLOC_POOL's file, not a tier's); left \
                     untouched",
                ))
            } else {
                Err(Problem::new(
                    "holds data that is not a tiermalloc heap; left untouched (add format to \
                     overwrite it)",
                ))
            }
        }
    }
}

/// Whether the region is a device (DAX, a PCI BAR, anonymous memory) whose contents are
/// undefined after boot: opened `fresh`, it is formatted whatever it holds.
fn volatile_device(region: &Region) -> bool {
    matches!(region.media, Media::Dax | Media::Bar | Media::Anonymous)
}

/// Whether `spec` formats a heap it finds only because `fresh` is its kind's default (a `cxl` or
/// `cmb` tier given neither `persist` nor `fresh`): such a tier pointed at a pmr tier's file
/// (a path copied from another configuration) formatted the persistent heap without a word.
fn formats_by_default(spec: &TierSpec) -> bool {
    spec.persist.is_none() && !spec.persists() && spec.kind != Kind::Pmr
}

/// Whether every byte of `image` is zero (a word at a time).
fn all_zero(image: &[u8]) -> bool {
    // SAFETY: any bytes are valid u64s; align_to splits off what is not aligned.
    let (head, words, tail) = unsafe { image.align_to::<u64>() };
    head.iter().all(|&b| b == 0)
        && words
            .chunks(512)
            .all(|c| c.iter().fold(0, |a, &w| a | w) == 0)
        && tail.iter().all(|&b| b == 0)
}
