//! A device tier whose capacity is lent to it from outside, extent by extent: the pool's
//! shares (`pool::share`, seed 000). The tier maps the whole arena the extents come from, but
//! its extent heap holds only the extents it has received; every other byte of the arena is
//! an allocated placeholder the heap never hands out, and each extent starts with a 16-byte
//! allocated fence, so no free extent of the heap ever spans two arena extents
//! (`extent_heap::whole`), and a block carved from the end of an empty extent (a slab, 16 KiB
//! aligned) leaves no remainder behind it when `first` and `extent` are multiples of 16 KiB.
//!
//! When the heap cannot serve a request, the tier asks its source for one more extent
//! (`ExtentSource::acquire`: its own share first, then a loan from another node) and frees
//! that extent's placeholder into the heap; when a free leaves an extent without a block, the
//! tier takes it out of the heap whole and hands it back (`release`): a borrowed one at once,
//! and an own one too unless it is the one empty extent of its own the tier keeps (`spare`),
//! so that a malloc and free at the edge of an extent do not go to the source every time.
//! The host metadata and the headers are the device tier's own, and whether an extent is
//! borrowed is remembered here, so a malloc or free that neither receives nor gives back an
//! extent reads nothing from the device. A block is never larger than one extent.
//!
//! Layout of the arena, as the region's offsets: `[0, first)` belongs to the source (its
//! table; an allocated extent of no block, like a device tier's superblock), then `count`
//! extents of `extent` bytes: extent `i` is `[first + i * extent, first + (i + 1) * extent)`,
//! its first 16 bytes the fence.

use super::extent_heap::ExtentHeap;
use super::header::HEADER_SIZE;
use super::slabs::Slabs;
use super::DeviceTier;
use crate::backend::{Problem, Region};
use crate::config::TierSpec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Where the extents come from, and where they go back.
pub(crate) trait ExtentSource: Sync + Send {
    /// One more extent for this tier: its index and whether it is borrowed (of another
    /// node's share), or `None` when there is none to have (its share used, every other node
    /// saturated).
    fn acquire(&self) -> Option<(usize, bool)>;
    /// Extent `index`, received before, holds no block any more: it leaves this tier. It is
    /// called under the tier's heap lock, after every write of this tier into the extent.
    fn release(&self, index: usize);
    /// Bytes of this node's share other nodes hold now, and bytes of others' shares it holds.
    fn lent_and_borrowed(&self) -> (u64, u64);
}

/// Where the extents lie in the region: `count` of `extent` bytes after `first` bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Arena {
    pub first: u64,
    pub extent: u64,
    pub count: usize,
}

/// The fence opening each extent.
const FENCE: u64 = HEADER_SIZE;

/// A tier's link to its source, and the arena's geometry (see the module comment).
///
/// Invariant: `held` counts the extents received and not released; each of them is free or
/// carved in the heap, every other one is one allocated placeholder.
pub(crate) struct Outside {
    source: &'static dyn ExtentSource,
    first: u64,
    extent: u64,
    count: usize,
    held: AtomicU64,
    /// The most bytes of blocks (slabs whole) held at once.
    peak: AtomicU64,
    /// Bit `i` set: extent `i` is held and borrowed.
    borrowed: [AtomicU64; BORROWED_WORDS],
    /// Bit `i` set: extent `i` is held (own or borrowed).
    held_bits: [AtomicU64; BORROWED_WORDS],
    /// The empty own extent kept rather than given back (`NO_SPARE`: none). Changed under the
    /// heap lock.
    spare: AtomicUsize,
}

/// Enough bits for the most extents an arena has.
const BORROWED_WORDS: usize = 8;
pub(crate) const MAX_EXTENTS: usize = BORROWED_WORDS * 64;
const NO_SPARE: usize = usize::MAX;

impl Outside {
    /// The bytes of extent `i` the heap may hand out (its fence excluded).
    fn usable(&self) -> u64 {
        self.extent - FENCE
    }

    /// Where the usable part of extent `i` starts (after its fence).
    fn start(&self, i: usize) -> u64 {
        self.first + i as u64 * self.extent + FENCE
    }

    /// The extent holding region offset `offset`, if any.
    fn index_of(&self, offset: u64) -> Option<usize> {
        let i = (offset.checked_sub(self.first)? / self.extent) as usize;
        (i < self.count).then_some(i)
    }

    /// Whether a request of `len` bytes (header included) aligned to `align` can ever fit in
    /// one extent.
    pub fn can_fit(&self, len: u64, align: u64) -> bool {
        len.next_multiple_of(FENCE)
            .saturating_add(align.saturating_sub(FENCE))
            <= self.usable()
    }

    /// Bytes of the heap's allocated extents that are no blocks: the source's table, the
    /// fences, the placeholders of the extents not held.
    pub fn overhead(&self) -> u64 {
        let held = self.held.load(Ordering::Relaxed);
        self.first + self.count as u64 * FENCE + (self.count as u64 - held) * self.usable()
    }

    pub fn note_in_use(&self, in_use: u64) {
        self.peak.fetch_max(in_use, Ordering::Relaxed);
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    pub fn lent_and_borrowed(&self) -> (u64, u64) {
        self.source.lent_and_borrowed()
    }

    /// Bytes the tier holds now: its received extents, fences excluded.
    pub fn capacity(&self) -> u64 {
        self.held.load(Ordering::Relaxed) * self.usable()
    }
}

impl DeviceTier {
    /// A tier over `region`, the whole `arena`, which holds none of its extents until
    /// `source` gives it some.
    pub(crate) fn open_outside(
        spec: &TierSpec,
        region: Region,
        source: &'static dyn ExtentSource,
        arena: Arena,
    ) -> Result<DeviceTier, Problem> {
        let Arena {
            first,
            extent,
            count,
        } = arena;
        const NO_MEMORY: &str = "no host memory for the tier's metadata";
        let len = region.len as u64;
        debug_assert_eq!(first + count as u64 * extent, len);
        if count > MAX_EXTENTS {
            return Err(Problem::new("the pool's share arena has too many extents"));
        }
        let mut builder =
            ExtentHeap::builder(len, super::GRANULE, spec.fit).ok_or(Problem::new(NO_MEMORY))?;
        let mut ok = builder.push(first, false);
        for _ in 0..count {
            ok &= builder.push(FENCE, false) && builder.push(extent - FENCE, false);
        }
        let heap = builder
            .finish()
            .filter(|_| ok)
            .ok_or(Problem::new(NO_MEMORY))?;
        let slabs = Slabs::new(len).ok_or(Problem::new(NO_MEMORY))?;
        let outside = Outside {
            source,
            first,
            extent,
            count,
            held: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            borrowed: Default::default(),
            held_bits: Default::default(),
            spare: AtomicUsize::new(NO_SPARE),
        };
        Ok(Self::over(
            spec,
            region,
            heap,
            slabs,
            None,
            Some(outside),
            None,
        ))
    }

    /// Receives one more extent from the source into the heap. False when the source has
    /// none (the caller fails its request).
    pub(super) fn receive_extent(&self, outside: &Outside) -> bool {
        let Some((i, borrowed)) = outside.source.acquire() else {
            return false;
        };
        if borrowed {
            outside.borrowed[i / 64].fetch_or(1 << (i % 64), Ordering::Relaxed);
        }
        outside.held_bits[i / 64].fetch_or(1 << (i % 64), Ordering::Relaxed);
        let mut heap = self.heap.lock();
        let freed = heap.free(outside.start(i));
        debug_assert!(freed.is_ok(), "a received extent was a placeholder");
        outside.held.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// After a free at `offset` (the heap lock held): gives the extent back when it holds no
    /// block any more.
    pub(super) fn release_if_empty(&self, heap: &mut ExtentHeap, offset: u64) {
        let Some(outside) = &self.outside else {
            return;
        };
        let Some(i) = outside.index_of(offset) else {
            return;
        };
        if !heap.is_whole_free(outside.start(i), outside.usable()) {
            return;
        }
        let borrowed = outside.borrowed[i / 64].load(Ordering::Relaxed) & 1 << (i % 64) != 0;
        if !borrowed {
            // Keep one empty extent of our own; give back a second.
            let spare = outside.spare.load(Ordering::Relaxed);
            if spare == i {
                return;
            }
            if spare == NO_SPARE || !heap.is_whole_free(outside.start(spare), outside.usable()) {
                outside.spare.store(i, Ordering::Relaxed);
                return;
            }
        }
        if heap.take_whole(outside.start(i), outside.usable()) {
            outside.borrowed[i / 64].fetch_and(!(1 << (i % 64)), Ordering::Relaxed);
            outside.held_bits[i / 64].fetch_and(!(1 << (i % 64)), Ordering::Relaxed);
            outside.held.fetch_sub(1, Ordering::Relaxed);
            outside.source.release(i);
        }
    }
}

impl DeviceTier {
    /// Whether a forked child's private copy of the region needs the allocated extent at
    /// `offset` (`fork`): for a tier lent its capacity, only extents it holds (not the
    /// source's table, nor other nodes' extents behind placeholders).
    pub(super) fn copied_on_fork(&self, offset: u64) -> bool {
        let Some(outside) = &self.outside else {
            return true;
        };
        outside
            .index_of(offset)
            .is_some_and(|i| outside.held_bits[i / 64].load(Ordering::Relaxed) & 1 << (i % 64) != 0)
    }
}

/// Opens the tier `spec` describes over `region`, lent its capacity by `source` (see
/// `DeviceTier::open_outside`), and keeps it for `get` as `device::open` does. `Err`: the
/// caller reports it.
pub(crate) fn open_lent(
    spec: &TierSpec,
    region: Region,
    source: &'static dyn ExtentSource,
    arena: Arena,
) -> Result<(), Problem> {
    let slot = &super::OPENED[spec.kind as usize - 1];
    if slot.is_completed() {
        return Err(Problem::new("is configured twice"));
    }
    let tier = DeviceTier::open_outside(spec, region, source, arena)?;
    slot.call_once(|| tier);
    crate::device_sigbus::install(super::device_path);
    Ok(())
}
