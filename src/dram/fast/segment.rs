//! Segments: 4 MiB chunk-aligned mappings of DRAM from which a heap cuts its pages.
//!
//! A segment is 64 slices of 64 KiB. Slice 0 holds this header (in the segment itself: this is
//! DRAM, where reading metadata is cheap) with one page descriptor per slice; slices 1..64 hold
//! blocks. Which slices are free is one 64-bit mask, so finding a run of `n` free slices is a
//! few shifts. Freed slices stay resident ("dirty") until the heap purges them with `madvise`,
//! so a page that is emptied and refilled soon costs no page faults.
//!
//! Slices no page has used yet are inaccessible (`PROT_NONE`), and so is the header slice past
//! the header: an overflow or underflow that runs off a block into them (mimalloc-bench's
//! `one_mbyte_overflow`, `*_underflow` on the first page) faults instead of corrupting or
//! reading silently. `take_page` opens a run with one `mprotect` the first time it is used;
//! slices stay open afterwards (purged or not), which keeps a segment at a few kernel mappings
//! (VMAs) however its pages come and go.
//!
//! A segment belongs to one heap for its whole life: `owner` never changes after creation,
//! which lets any thread compare it with its own heap to tell a local free from a remote one.
//! The segment keeps its owner as an address only: it never looks inside the heap, so this
//! module depends on `page`, not on `heap` (which cuts pages from segments).

use crate::dram::fast::page::Page;
use crate::dram::fast::size_class::{SLICE_SHIFT, SLICE_SIZE};
use crate::os;
use crate::chunk::{self, CHUNK_MASK, CHUNK_SIZE};
use crate::pagemap::{self, ChunkTag};
use core::ptr;

pub(crate) const SLICES: usize = CHUNK_SIZE / SLICE_SIZE;
/// Every slice but slice 0 (the header).
const ALL_BLOCK_SLICES: u64 = !1;

/// Invariants: `dirty_slices ⊆ free_slices ⊆ ALL_BLOCK_SLICES`; each slice `i` not in
/// `free_slices` belongs to exactly one page, whose head descriptor is `page_of_slice[i]`;
/// `in_available` ⇔ the segment is on its heap's `available` list ⇔ `free_slices != 0`
/// (except for the heap's cached empty segment, which is on no list).
#[repr(C)]
pub struct Segment {
    /// The address of the thread heap (`heap::Heap`) that owns the segment.
    pub owner: usize,
    /// For each slice, the descriptor of the page covering it (the empty page if none, which
    /// `Page::suspect` rejects): `free` finds a block's page with one load.
    page_of_slice: [*mut Page; SLICES],
    pub free_slices: u64,
    pub dirty_slices: u64,
    /// Slices made accessible (`take_page`); the others past the header are `PROT_NONE`.
    open_slices: u64,
    pub next: *mut Segment,
    pub prev: *mut Segment,
    pub in_available: bool,
    /// Slices whose memory has been handed out at least once (the header's from the start):
    /// the others are still untouched, and get the profile reserve's pre-faulted pages when
    /// first cut (`profile::reserve::fill`).
    first_cut: u64,
    pub pages: [Page; SLICES],
}

const _: () = assert!(core::mem::size_of::<Segment>() <= SLICE_SIZE);

/// A mask of `n` bits starting at `start`.
#[inline]
fn run_mask(start: usize, n: usize) -> u64 {
    (if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }) << start
}

/// The lowest start of `n` consecutive set bits in `mask`, if any.
fn find_run(mask: u64, n: usize) -> Option<usize> {
    let mut starts = mask;
    for k in 1..n {
        starts &= mask >> k;
    }
    (starts != 0).then(|| starts.trailing_zeros() as usize)
}

impl Segment {
    /// Maps a new segment for the heap at address `owner`; `None` when the kernel has no
    /// memory.
    pub fn create(owner: usize) -> Option<*mut Segment> {
        crate::dram::fast::guard::init_key();
        let base = crate::profile::reserve::map_chunks(CHUNK_SIZE, SLICE_SIZE)?.as_ptr();
        if !chunk::covers(base as usize, CHUNK_SIZE) {
            // SAFETY: just mapped, unused.
            unsafe { os::unmap(base, CHUNK_SIZE) };
            return None;
        }
        let segment = base.cast::<Segment>();
        // SAFETY: the part of our fresh mapping past the header holds nothing yet. If the
        // kernel refuses, the slices stay open: less protection, nothing wrong.
        let header = os::page_round(core::mem::size_of::<Segment>());
        let closed = unsafe { os::protect(base.add(header), CHUNK_SIZE - header, false) };
        // SAFETY: fresh zeroed memory, large enough for the header (asserted above); a zeroed
        // `Page` is an unused descriptor.
        unsafe {
            (*segment).owner = owner;
            (*segment).free_slices = ALL_BLOCK_SLICES;
            (*segment).page_of_slice = [Page::empty_page(); SLICES];
            (*segment).open_slices = if closed { 0 } else { u64::MAX };
            (*segment).first_cut = !ALL_BLOCK_SLICES;
        }
        pagemap::set(
            base as usize,
            CHUNK_SIZE,
            ChunkTag::Segment,
            ChunkTag::Segment,
        );
        crate::profile::reserve::note_segment_created(SLICE_SIZE);
        Some(segment)
    }

    /// Gives the segment back to the kernel.
    ///
    /// # Safety
    /// The segment must hold no page and be on no list.
    pub unsafe fn release(segment: *mut Segment) {
        pagemap::clear(segment as usize, CHUNK_SIZE);
        // SAFETY: the caller guarantees nothing refers to the segment any more.
        unsafe { os::unmap(segment.cast(), CHUNK_SIZE) };
        crate::profile::reserve::note_segment_released(SLICE_SIZE);
    }

    /// The segment holding block or page descriptor `p`.
    #[inline(always)]
    pub fn of(p: usize) -> *mut Segment {
        (p & !CHUNK_MASK) as *mut Segment
    }

    /// The descriptor of the page holding block `p` (of this segment).
    #[inline(always)]
    pub fn page_of(segment: *mut Segment, p: usize) -> *mut Page {
        let slice = (p >> SLICE_SHIFT) & (SLICES - 1);
        // SAFETY: `p` lies in this segment, so `slice` is its slice index; the entry is valid
        // for every slice of a page (invariant).
        unsafe { *(*segment).page_of_slice.get_unchecked(slice) }
    }

    /// Bytes of free slices that may still be resident.
    pub fn dirty_bytes(&self) -> usize {
        self.dirty_slices.count_ones() as usize * SLICE_SIZE
    }

    pub fn is_empty(&self) -> bool {
        self.free_slices == ALL_BLOCK_SLICES
    }

    /// Takes `n` free slices, preferring resident (dirty) ones, and makes them a page of
    /// `class`. Returns its descriptor, or `None` if no run of `n` free slices exists.
    pub fn take_page(&mut self, class: usize, n: usize) -> Option<*mut Page> {
        let start = find_run(self.dirty_slices, n).or_else(|| find_run(self.free_slices, n))?;
        let mask = run_mask(start, n);
        if self.open_slices & mask != mask {
            let memory = (self as *mut Segment as usize + start * SLICE_SIZE) as *mut u8;
            // SAFETY: free slices of this segment, which nothing uses.
            if unsafe { !os::protect(memory, n * SLICE_SIZE, true) } {
                return None;
            }
            self.open_slices |= mask;
        }
        self.free_slices &= !mask;
        self.dirty_slices &= !mask;
        let head = ptr::addr_of_mut!(self.pages[start]);
        for entry in &mut self.page_of_slice[start..start + n] {
            *entry = head;
        }
        let memory = (self as *mut Segment as usize + start * SLICE_SIZE) as *mut u8;
        let untouched = mask & !self.first_cut;
        if untouched != 0 {
            self.first_cut |= mask;
            let (first, count) = (untouched.trailing_zeros(), untouched.count_ones());
            // Slices are cut as runs, so the never-cut slices of a run are one run too
            // unless an earlier page sat in between (then the rest faults in as usual).
            if untouched == run_mask(first as usize, count as usize) {
                let at = self as *mut Segment as usize + first as usize * SLICE_SIZE;
                // SAFETY: never-cut slices of our segment: untouched memory.
                unsafe { crate::profile::reserve::fill(at, count as usize * SLICE_SIZE) };
            }
        }
        // SAFETY: `head` points into this segment's descriptor array.
        unsafe { (*head).init(class, memory, n) };
        Some(head)
    }

    /// Returns the slices of `page` (a head descriptor of this segment) as free and dirty.
    /// Returns the number of bytes made dirty.
    pub fn give_back(&mut self, page: *mut Page) -> usize {
        let base = self.pages.as_ptr() as usize;
        let start = (page as usize - base) / core::mem::size_of::<Page>();
        // SAFETY: `page` is a head descriptor of this segment.
        let n = unsafe { (*page).slice_count } as usize;
        for entry in &mut self.page_of_slice[start..start + n] {
            *entry = Page::empty_page();
        }
        self.pages[start].block_size = 0;
        self.pages[start].block_limit = 0;
        let mask = run_mask(start, n);
        debug_assert!(self.free_slices & mask == 0);
        self.free_slices |= mask;
        self.dirty_slices |= mask;
        n * SLICE_SIZE
    }

    /// Gives the memory of every dirty free slice back to the kernel. Returns the bytes purged.
    pub fn purge(&mut self) -> usize {
        let mut dirty = self.dirty_slices;
        let mut purged = 0;
        while dirty != 0 {
            let start = dirty.trailing_zeros() as usize;
            let len = (!(dirty >> start)).trailing_zeros() as usize;
            let memory = (self as *mut Segment as usize + start * SLICE_SIZE) as *mut u8;
            // SAFETY: free slices hold no live block; the segment is a private anonymous map.
            unsafe { os::discard(memory, len * SLICE_SIZE) };
            purged += len * SLICE_SIZE;
            dirty &= !run_mask(start, len);
        }
        self.dirty_slices = 0;
        purged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the byte at `p` can be read (write(2) from it into a pipe fails with EFAULT
    /// instead of faulting).
    fn readable(p: usize) -> bool {
        let mut fds = [0; 2];
        // SAFETY: a valid out-array; our own descriptors, closed below.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let n = libc::write(fds[1], p as *const libc::c_void, 1);
            libc::close(fds[0]);
            libc::close(fds[1]);
            n == 1
        }
    }

    #[test]
    fn unused_slices_and_the_header_tail_are_inaccessible() {
        let segment = Segment::create(0).unwrap();
        let base = segment as usize;
        let header = os::page_round(core::mem::size_of::<Segment>());
        assert!(readable(base) && readable(base + header - 1));
        assert!(!readable(base + header), "the header slice's tail is accessible");
        assert!(!readable(base + SLICE_SIZE), "an unused slice is accessible");
        // SAFETY: our segment, not shared; its page is given back before the release.
        unsafe {
            let page = (*segment).take_page(0, 2).unwrap();
            let start = (*page).start as usize;
            assert_eq!(start, base + SLICE_SIZE);
            assert!(readable(start) && readable(start + 2 * SLICE_SIZE - 1));
            assert!(!readable(start + 2 * SLICE_SIZE), "past the page");
            assert!(!readable(base + CHUNK_SIZE - 1));
            (*segment).give_back(page);
            assert!(readable(start), "a given-back slice stays open");
            Segment::release(segment);
        }
    }

    #[test]
    fn runs_are_found_at_their_lowest_start() {
        assert_eq!(find_run(0b1110_1100, 2), Some(2));
        assert_eq!(find_run(0b1110_1100, 3), Some(5));
        assert_eq!(find_run(0b1110_1100, 4), None);
        assert_eq!(find_run(ALL_BLOCK_SLICES, 63), Some(1));
        assert_eq!(find_run(ALL_BLOCK_SLICES, 64), None);
        assert_eq!(run_mask(1, 63), ALL_BLOCK_SLICES);
    }
}
