//! Making the slabs' host metadata present ahead of a recovery scan (`DeviceTier::metadata`):
//! each slab the scan finds writes its descriptor and its window's live bits (128 bytes each
//! per 16 KiB window), and a page fault per 32 windows in each would cost more than the writes.
//!
//! Two ways, chosen per span of 256 MiB of region (`SPAN_WINDOWS`: the windows whose live bits,
//! and whose descriptors, fill one 2 MiB huge page):
//! - a span that looks dense with slabs (`recover::slab_markers`: at least half of 16 window
//!   starts spread over it hold a slab's marker) is made present whole, in huge pages where the
//!   kernel has them (`Slabs::populate_span`): one page allocation per 2 MiB instead of 512. At
//!   most 4 MiB per span, what a span full of slabs needs anyway; as a guess of at least half
//!   its windows slabs, at most about twice what the groups below would make present.
//! - any other span, and a region's last partial one, by groups of 512 windows (64 KiB of each
//!   array), each made present when the scan first finds a slab in it
//!   (`Slabs::prefault_windows`).
//!
//! The recovery benchmark (1 000 000 blocks, 1 GiB): the open's populated pages 16 532 ->
//! 13 557 (BENCHMARKS.md, "Session 9, branch recov").

use super::recover;
#[cfg(test)]
#[path = "metadata_ahead_tests.rs"]
mod tests;
use crate::device::slabs::{Slabs, SPAN_WINDOWS};

/// Windows made present at a time outside dense spans (64 KiB of descriptors and as many of
/// live bits, 8 MiB of region): at most that much for windows left without a slab.
const GROUP_WINDOWS: usize = 512;

/// Window starts read to guess whether a span is dense (`recover::slab_markers`).
const PROBES: usize = 16;

/// Where a recovery scan has the slabs' metadata present. Invariant: the descriptors and live
/// bits of every window below `ready` are present, or were left to fault in because the scan
/// passed them.
pub(crate) struct MetadataAhead {
    ready: usize,
    /// The last span found not dense (probed once).
    sparse_span: usize,
}

impl MetadataAhead {
    pub fn new() -> Self {
        MetadataAhead {
            ready: 0,
            sparse_span: usize::MAX,
        }
    }

    /// Before the scan adopts a slab at `window` of `image`: its metadata made present, with
    /// the windows after it, unless done already.
    #[inline]
    pub fn before_slab(&mut self, slabs: &Slabs, image: &[u8], window: usize) {
        if window >= self.ready {
            self.ready = self.make_present(slabs, image, window);
        }
    }

    /// Makes the metadata from `window` on present, a span or a group; returns the window
    /// where what is present ends.
    #[cold]
    fn make_present(&mut self, slabs: &Slabs, image: &[u8], window: usize) -> usize {
        let span = window / SPAN_WINDOWS;
        if span != self.sparse_span {
            let first = span * SPAN_WINDOWS;
            if 2 * recover::slab_markers(image, first, SPAN_WINDOWS, PROBES) >= PROBES
                && slabs.populate_span(span)
            {
                return first + SPAN_WINDOWS;
            }
            self.sparse_span = span;
        }
        // Never into the next span: a page made present there would keep that span's
        // metadata out of a huge page.
        let end = (window + GROUP_WINDOWS).min((span + 1) * SPAN_WINDOWS);
        slabs.prefault_windows(window, end - window);
        end
    }
}
