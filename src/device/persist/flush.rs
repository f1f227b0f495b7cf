//! `tm_persist`: making writes to a device region durable, by what backs it.
//!
//! - a file: `msync(MS_SYNC)` of the whole region. The kernel writes back only the dirty
//!   pages, so this costs what was written; flushing the whole region rather than the range
//!   asked for makes every earlier write durable, the headers of the blocks in the range (and
//!   of every block before them) included, which a recovery needs.
//! - DAX: the range's cache lines written back (block headers are flushed as they are
//!   written, `media.rs`), then `sfence`.
//! - a PCI BAR: `backend::device_barrier`, a read the device answers only after every posted
//!   write before it.
//! - anonymous memory (CXL as a NUMA node): nothing survives the process; a fence.

use super::media;
use crate::backend::{self, Media, Region};

/// Makes `[offset, offset + len)` of `region`, and every write to the region before this
/// call, durable. False (with `errno` from `msync`) if the kernel refused.
pub(crate) fn persist(region: &Region, offset: usize, len: usize) -> bool {
    let done = match region.media {
        Media::File => {
            // SAFETY: the region is our own mapping of `region.len` bytes.
            unsafe { libc::msync(region.base as *mut libc::c_void, region.len, libc::MS_SYNC) == 0 }
        }
        Media::Dax => {
            media::flush_lines(region.base + offset, len);
            true
        }
        Media::Bar => {
            backend::device_barrier(region);
            true
        }
        Media::Anonymous => true,
    };
    media::order(region);
    done
}
