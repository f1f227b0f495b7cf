//! Installing the slabs a recovery scan finds (`device::persist`): each slab's descriptor,
//! its place in its class's partial list, and the live bits of its live slots, built in
//! bulk while the tier is still private to the opening thread.

use super::{
    live_bitmap, slot_bytes, slots_of, Lane, SlabFields, Slabs, CLASSES, HEADER, NONE, SLAB_BYTES,
    SLAB_MARKER, SLAB_WORDS,
};
use crate::os;

/// Words of live bits (one bit per 16 bytes) over one slab's window: the window's words are
/// its own, as a window is a whole number of words of bits.
pub(crate) const WINDOW_LIVE_WORDS: usize = (SLAB_BYTES / HEADER / 64) as usize;
const _: () = assert!(SLAB_BYTES % (HEADER * 64) == 0);

impl Slabs {
    /// Installs a slab found by a recovery scan: the window at `offset` (an allocated extent
    /// of the heap) is a slab of `class`, in lane 0, whose live slots are the set bits of
    /// `live`, and `headers` the same slots as bits of the window (`headers_of`), which become
    /// the slots' live bits as they are. False (nothing changed) for a bad class, window or
    /// bitmap.
    ///
    /// Only while the tier is private to the opening thread (a recovery): the live bits are
    /// set with plain stores (`live_bitmap::or_words_unshared`), published with the tier.
    pub fn adopt(
        &self,
        offset: u64,
        class: usize,
        live: &[u64; SLAB_WORDS],
        headers: &[u64; WINDOW_LIVE_WORDS],
    ) -> bool {
        let index = (offset / SLAB_BYTES) as usize;
        if class == 0 || class > CLASSES || offset % SLAB_BYTES != 0 || index >= self.windows {
            return false;
        }
        let slots = slots_of(class);
        // The bits of the word holding the last slot's that name no slot, and every word
        // after it, must be clear.
        let last = (slots - 1) / 64;
        let past_last = match slots % 64 {
            0 => 0,
            in_last => live[last] & (u64::MAX << in_last),
        };
        if past_last != 0 || live[last + 1..].iter().any(|&w| w != 0) {
            return false;
        }
        let count: u32 = live[..=last].iter().map(|w| w.count_ones()).sum();
        if count == 0 {
            return false;
        }
        debug_assert_eq!(headers, &headers_of(class, live), "class {class}");
        let mut list = self.list(Lane(0), class).lock();
        // SAFETY: the window is no slab yet (its class is 0); we hold the class lock.
        let f = unsafe { self.fields(index) };
        *f = SlabFields {
            live: count,
            hint: 0,
            prev: NONE,
            next: NONE,
            bitmap: *live,
        };
        if (count as usize) < slots {
            f.next = list.partial;
            if list.partial != NONE {
                // SAFETY: a slab of this class.
                unsafe { self.fields(list.partial as usize) }.prev = index as u32;
            }
            list.partial = index as u32;
        }
        list.idle_bytes += SLAB_BYTES - count as u64 * slot_bytes(class);
        // Its live slots count as allocations of this run (`TierStats::allocations`): their
        // frees never outnumber the class's allocations.
        list.allocations += u64::from(count);
        list.slabs += 1;
        list.peak_slabs = list.peak_slabs.max(list.slabs);
        live_bitmap::or_words_unshared(self.live(), index * WINDOW_LIVE_WORDS, headers);
        self.claim(offset, class, Lane(0));
        true
    }

    /// Makes the descriptors and the live bits of windows `[first, first + count)` (clipped
    /// to the region) present in one call each (`os::prefault_write`): a recovery scan about
    /// to `adopt` slabs there asks ahead, instead of a page fault every 32 windows in each.
    pub fn prefault_windows(&self, first: usize, count: usize) {
        let (first, end) = (first.min(self.windows), (first + count).min(self.windows));
        let size = core::mem::size_of::<super::SlabDesc>();
        prefault(self.descs.as_ptr() as usize, first * size, end * size);
        let size = WINDOW_LIVE_WORDS * 8;
        prefault(self.live.as_ptr() as usize, first * size, end * size);
    }
}

/// Makes bytes `[from, to)` of the mapping at `base` present, whole pages.
fn prefault(base: usize, from: usize, to: usize) {
    let from = (base + from) & !(os::PAGE_SIZE - 1);
    let to = os::page_round(base + to);
    if to > from {
        os::prefault_write(from as *mut u8, to - from);
    }
}

/// The live slots `live` of a slab of `class` as bits of its window, one per 16 bytes, set at
/// each live slot's header: what a recovery scan passes to `adopt` beside `live`.
pub(crate) fn headers_of(class: usize, live: &[u64; SLAB_WORDS]) -> [u64; WINDOW_LIVE_WORDS] {
    let mut headers = [0u64; WINDOW_LIVE_WORDS];
    for n in 0..slots_of(class) {
        if live[n / 64] & (1 << (n % 64)) != 0 {
            let bit = ((SLAB_MARKER + n as u64 * slot_bytes(class)) / HEADER) as usize;
            headers[bit / 64] |= 1 << (bit % 64);
        }
    }
    headers
}
