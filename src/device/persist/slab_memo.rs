//! The last slab cut, remembered so that cutting it again at the same place writes nothing.
//!
//! A program whose small blocks come and go one at a time makes a slab and retires it on
//! every pair (the "churn" pattern, `tests/device_touches.rs`): the slab's marker (16 B) and
//! the shrunk size of the free extent in front (8 B) are written, the slot's header and state
//! (18 B), then retiring writes nothing (`persist`: the marker stays, as the head of free
//! space). The next slab of the same class is cut from the end of the same free extent, at the
//! same window, with the same free extent in front of it: the device already holds both
//! writes, byte for byte. This remembers that cut, and `publish` skips the two writes when the
//! next cut is the same (42 B in 4 stores per churn pair → 18 B in 2).
//!
//! Why it is sound: skipping a write whose bytes the device already holds leaves the device
//! exactly as writing them would (on DAX they were flushed when first written). The memo is
//! true while nothing has written into the free extent in front of the window or into the
//! window's marker since the cut it remembers. Everything that writes there does so under the
//! tier's heap lock, as does every use of the memo:
//! - another cut from the heap (`publish`) replaces or clears the memo (`must_write`);
//! - a resize in place (a block growing into free space, or giving its tail back, writes a
//!   free header that may land on the remembered front) clears it (`forget`);
//! - slots are written only inside a live slab (after the marker), never on the marker;
//! - recovery starts with no memo; an evacuation copies the chain's headers inside free
//!   space, the marker included, so the target holds the same bytes;
//! - a tier lent its capacity from the pool (`outside`) gives extents back to the pool, where
//!   another node may write them: it never uses the memo.

use crate::device::extent_heap::Carved;
use crate::device::slabs::SLAB_BYTES;
use core::sync::atomic::{AtomicU64, Ordering};

/// The last slab cut, if the device still holds its marker and the free extent in front of it
/// ends at it. Read and written only under the tier's heap lock (atomics only to be `Sync`).
///
/// Invariant: `window` is 0, or the offset of a window (16 KiB aligned, never 0: the
/// superblock's) plus the slab's class, such that the device holds at that window the marker
/// header written then, and at `front` the header of a free extent whose size ends at the
/// window, and no write since has touched either.
pub(crate) struct SlabMemo {
    window: AtomicU64,
    front: AtomicU64,
    enabled: bool,
}

impl SlabMemo {
    /// A memo that remembers nothing yet; `enabled` false: it never will (a pool tier).
    pub const fn new(enabled: bool) -> SlabMemo {
        SlabMemo {
            window: AtomicU64::new(0),
            front: AtomicU64::new(0),
            enabled,
        }
    }

    /// The memo's key of a cut with `state` written at its header: the window and the slab's
    /// class, and the front free extent's start, for a slab cut from the end of a free extent
    /// with nothing behind it; `None` for any other cut.
    #[inline(always)]
    fn key(carved: &Carved, state: u16) -> Option<(u64, u64)> {
        // Most cuts are blocks: the state is the first test.
        if state & super::STATE_SLAB == 0 {
            return None;
        }
        let (front, front_len) = carved.front?;
        let shaped = carved.len == SLAB_BYTES
            && carved.offset % SLAB_BYTES == 0
            && carved.offset != 0
            && carved.tail.is_none()
            && front + front_len == carved.offset;
        // The class (below 64) fits under the window's 16 KiB alignment; the marker's state bit
        // would not.
        let class = u64::from(state & !super::STATE_SLAB);
        shaped.then_some((carved.offset | class, front))
    }

    /// Whether `publish` must write `carved` (cut with `state` at its header): false when the
    /// device already holds every write it would make, the same slab cut as the one
    /// remembered. When true, the memo now names `carved` if it is a slab cut it can name, and
    /// nothing otherwise (the writes follow). The caller holds the heap lock.
    #[inline(always)]
    pub fn must_write(&self, carved: &Carved, state: u16) -> bool {
        match Self::key(carved, state).filter(|_| self.enabled) {
            Some((window, front)) => {
                if self.window.load(Ordering::Relaxed) == window
                    && self.front.load(Ordering::Relaxed) == front
                {
                    return false;
                }
                self.window.store(window, Ordering::Relaxed);
                self.front.store(front, Ordering::Relaxed);
            }
            // Most cuts are blocks: a load, and no store when there is nothing to forget.
            None if self.window.load(Ordering::Relaxed) != 0 => self.forget(),
            None => {}
        }
        true
    }

    /// Forgets the memo: a write may have touched the free space it names. The caller holds
    /// the heap lock.
    pub fn forget(&self) {
        self.window.store(0, Ordering::Relaxed);
    }
}
