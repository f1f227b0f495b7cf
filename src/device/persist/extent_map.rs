//! The extents of a persistent heap's region in address order, for pictures of it
//! (`tiermalloc inspect PATH --map FILE.svg`): what the recovery scan tells, one entry per
//! extent of the header chain, and the damaged rest if the chain breaks.

use super::check::live_blocks;
use super::recover::{self, Extent};
use super::superblock::{self, SUPERBLOCK_BYTES};
use std::vec::Vec;

/// What an extent of the region holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentKind {
    /// The superblock and roots table, `[0, 4096)`.
    Superblock,
    /// A live block.
    Block,
    /// A slab with live slots: `live_bytes` of them (headers included).
    Slab { live_bytes: u64 },
    /// Free space (a slab with no live slot included).
    Free,
    /// From a broken header on: the chain cannot be read past it.
    Damaged,
}

/// One extent: `[offset, offset + len)` of the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapExtent {
    pub offset: u64,
    pub len: u64,
    pub kind: ExtentKind,
}

/// The extents of the heap in `image` (a whole region), covering it from 0 to its end.
/// `Err` when it holds no heap.
pub fn extent_map(image: &[u8]) -> Result<Vec<MapExtent>, &'static str> {
    if superblock::examine(image) != superblock::Found::Heap {
        return Err("no finished tiermalloc heap of this region's length");
    }
    let mut map = std::vec![MapExtent {
        offset: 0,
        len: SUPERBLOCK_BYTES,
        kind: ExtentKind::Superblock,
    }];
    let scanned = recover::scan(image, |offset, len, extent| {
        let kind = match extent {
            Extent::Free | Extent::EmptySlab => ExtentKind::Free,
            Extent::Block => ExtentKind::Block,
            Extent::Slab { .. } => {
                let mut live_bytes = 0;
                live_blocks(offset, len, extent, |_, bytes| live_bytes += bytes);
                ExtentKind::Slab { live_bytes }
            }
        };
        map.push(MapExtent { offset, len, kind });
        true
    });
    if let Err(d) = scanned {
        map.push(MapExtent {
            offset: d.offset,
            len: image.len() as u64 - d.offset,
            kind: ExtentKind::Damaged,
        });
    }
    Ok(map)
}
