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
//! (VMAs) however its pages come and go. A half of the chunk (2 MiB, aligned) that a heap
//! holding many segments is about to fill with small blocks is instead backed by one
//! transparent huge page and open whole (`dram::huge_pages`).
//!
//! A segment belongs to one heap for its whole life: `owner` never changes after creation,
//! which lets any thread compare it with its own heap to tell a local free from a remote one.
//!
//! A released segment's chunk is never unmapped: its memory goes back to the kernel
//! (`MADV_DONTNEED`, reading as zero afterwards) and the chunk waits in `RETAINED`, still
//! tagged in the page map, until `create` reuses it. Its header keeps every slice on the empty
//! page, so a `free` of a stale pointer into it (a double free racing the release, from any
//! thread) reads mapped memory at every step and is reported, never a fault; and statistics can
//! walk every segment's page descriptors (`for_each_page`) without a lock. The address space
//! kept is the most the heaps ever held at once.
//! The segment keeps its owner as an address only: it never looks inside the heap, so this
//! module depends on `page`, not on `heap` (which cuts pages from segments).

use crate::chunk::{self, CHUNK_MASK, CHUNK_SIZE};
use crate::dram::budget;
use crate::dram::fast::page::Page;
use crate::dram::fast::size_class::{SLICE_SHIFT, SLICE_SIZE};
use crate::dram::huge_pages::{self, HUGE_PAGE};
use crate::lockfree::remote_list::{Link, RemoteList};
use crate::lockfree::tagged_stack::{StackLink, TaggedStack};
use crate::os;
use crate::pagemap;
use crate::sync::AtomicPtr;
use core::ptr;

/// Chunks of released segments, reused first by `create` (see the module comment).
static RETAINED: TaggedStack<Segment> = TaggedStack::new();
/// Every segment chunk ever mapped (they are never unmapped), linked through `registry_next`.
static REGISTRY: RemoteList = RemoteList::new();

pub(crate) const SLICES: usize = CHUNK_SIZE / SLICE_SIZE;
/// Every slice but slice 0 (the header).
const ALL_BLOCK_SLICES: u64 = !1;
/// The slices of each 2 MiB half of the chunk: a huge page covers one of them.
const HALF_SLICES: [u64; 2] = [u32::MAX as u64, (u32::MAX as u64) << 32];
const _: () = assert!(CHUNK_SIZE == 2 * HUGE_PAGE && HUGE_PAGE == 32 * SLICE_SIZE);

/// The index of the slice that holds address `p` in its segment, `(p mod CHUNK_SIZE) >>
/// SLICE_SHIFT`. On x86_64 a 32-bit multiplication by a power of two copies `p` and drops its
/// bits above the chunk in one instruction, and the shift right leaves the index: two
/// instructions where the compiler's copy, shift and mask took three (on every `free`).
#[inline(always)]
pub fn slice_index(p: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        // A 32-bit result clears the register's upper half: the index is the whole register.
        let slice: usize;
        // SAFETY: arithmetic on registers only.
        unsafe {
            core::arch::asm!(
                "imul {slice:e}, {p:e}, {scale}",
                "shr {slice:e}, {shift}",
                slice = out(reg) slice,
                p = in(reg) p,
                scale = const 1u32 << (32 - crate::chunk::CHUNK_SHIFT),
                shift = const 32 - (crate::chunk::CHUNK_SHIFT - SLICE_SHIFT),
                options(pure, nomem, nostack),
            );
        }
        slice
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        (p >> SLICE_SHIFT) & (SLICES - 1)
    }
}

/// Invariants: `dirty_slices ⊆ free_slices ⊆ ALL_BLOCK_SLICES`; each slice `i` not in
/// `free_slices` belongs to exactly one page, whose head descriptor is `page_of_slice[i]`;
/// `in_available` ⇔ the segment is on its heap's `available` list ⇔ `free_slices != 0`
/// (except for the heap's empty segments, which are on its list of those instead).
#[repr(C)]
pub struct Segment {
    /// The address of the thread heap (`heap::Heap`) that owns the segment, plus 1 under
    /// `TIERMALLOC_SECURE=1`: then no thread's `free` matches it, so every free takes the
    /// remote path, whose links are encoded with the process key and tested by the owner
    /// when it collects them, and the owner's unencoded local push is never used (`owner()`
    /// gives the heap).
    pub owner: usize,
    /// For each slice, the descriptor of the page covering it (the empty page if none, which
    /// `Page::suspect` rejects): `free` finds a block's page with one load.
    page_of_slice: [*mut Page; SLICES],
    pub free_slices: u64,
    pub dirty_slices: u64,
    /// Slices made accessible (`take_page`); the others past the header are `PROT_NONE`, or
    /// (`guarded_slices`) open but for their last OS page.
    open_slices: u64,
    pub next: *mut Segment,
    pub prev: *mut Segment,
    pub in_available: bool,
    /// Slices whose memory has been handed out at least once (the header's from the start):
    /// the others are still untouched, and get the profile reserve's pre-faulted pages when
    /// first cut (`profile::reserve::fill`).
    first_cut: u64,
    /// Slices whose last OS page is a `PROT_NONE` guard and the rest open (`close_tail`,
    /// secure level only), not in `open_slices`: their memory is discarded on release too.
    guarded_slices: u64,
    /// Bit 1: the second half has not been touched since the chunk was mapped (no page was
    /// cut over it, so the kernel holds no small page there and can fault in a huge one).
    /// The first half holds the header and is never fresh after creation.
    fresh_halves: u8,
    /// Link in `RETAINED` while the chunk waits there.
    retained_link: AtomicPtr<Segment>,
    /// Link in `REGISTRY`, written once before the chunk is published.
    registry_next: *mut Segment,
    pub pages: [Page; SLICES],
    /// Slices of a half made huge that no page has taken yet (`⊆ dirty_slices`): counted in
    /// `budget::HUGE_UNTAKEN_BYTES` until a page takes them or they are purged. Last, so that
    /// the fields the fast paths read keep their offsets.
    huge_untaken: u64,
}

impl StackLink for Segment {
    fn link(&self) -> &AtomicPtr<Segment> {
        &self.retained_link
    }
}

// SAFETY: the link is `registry_next`, written once before the chunk is published.
unsafe impl Link for Segment {
    unsafe fn set_next(node: *mut Self, next: *mut Self) {
        // SAFETY: the caller owns the unpublished chunk.
        unsafe { (*node).registry_next = next }
    }
    unsafe fn next(node: *mut Self) -> *mut Self {
        // SAFETY: published chunks stay mapped forever.
        unsafe { (*node).registry_next }
    }
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
    /// The heap that owns the segment (`owner` without the secure level's tag).
    #[inline(always)]
    pub fn owner_heap(&self) -> usize {
        self.owner & !1
    }

    /// Whether the segment was made under `TIERMALLOC_SECURE=1` (its owner carries the tag):
    /// its frees go through the freeing thread's quarantine.
    #[inline(always)]
    pub fn secure(&self) -> bool {
        self.owner & 1 != 0
    }

    /// Maps a new segment for the heap at address `owner`, whose page-map tag is `tag`
    /// (`pagemap::SEGMENT_TAG_MIN`); `None` when the kernel has no memory. If `huge` and the
    /// chunk is newly mapped, its first half is one huge page (`dram::huge_pages`), its block
    /// slices counted dirty.
    pub fn create(owner: usize, tag: u8, huge: bool) -> Option<*mut Segment> {
        crate::dram::fast::guard::init_key();
        let secure = crate::dram::fast::guard::secure();
        let owner = owner | usize::from(secure);
        // Under the secure level no thread's tag matches: every free compares owners.
        let tag = if secure {
            pagemap::SHARED_SEGMENT_TAG
        } else {
            tag
        };
        if let Some(segment) = RETAINED.pop() {
            pagemap::tag_segment(segment as usize, tag);
            // SAFETY: a retained chunk is ours alone once popped: every slice free and given
            // back (`release`), header mapped, page map tagged.
            unsafe {
                (*segment).owner = owner;
                (*segment).free_slices = ALL_BLOCK_SLICES;
                (*segment).dirty_slices = 0;
                (*segment).huge_untaken = 0;
                (*segment).first_cut = !ALL_BLOCK_SLICES;
                (*segment).next = ptr::null_mut();
                (*segment).prev = ptr::null_mut();
                (*segment).in_available = false;
            }
            crate::profile::reserve::note_segment_created(SLICE_SIZE);
            return Some(segment);
        }
        Self::create_fresh(owner, tag, huge)
    }

    /// `create` in a newly mapped chunk, whose unused slices are all `PROT_NONE`; if `huge`
    /// (and the kernel takes it), but for its first half, which is one huge page, open whole.
    fn create_fresh(owner: usize, tag: u8, huge: bool) -> Option<*mut Segment> {
        let base = crate::profile::reserve::map_chunks(CHUNK_SIZE, SLICE_SIZE)?.as_ptr();
        if !chunk::covers(base as usize, CHUNK_SIZE) {
            // SAFETY: just mapped, unused.
            unsafe { os::unmap(base, CHUNK_SIZE) };
            return None;
        }
        let segment = base.cast::<Segment>();
        // The huge page goes in before the header is written: a small page faulted in the
        // half first would rule it out. Its block slices are held from then on: only if
        // DRAM's `limit=` admits them.
        let present_bytes =
            (HALF_SLICES[0] & ALL_BLOCK_SLICES).count_ones() as u64 * SLICE_SIZE as u64;
        // SAFETY: our fresh private anonymous mapping, unused.
        let huge =
            huge && budget::admits(present_bytes) && unsafe { huge_pages::populate_huge(base) };
        let header = if huge {
            HUGE_PAGE
        } else {
            os::page_round(core::mem::size_of::<Segment>())
        };
        // SAFETY: the part of our fresh mapping past the header (past the huge half) holds
        // nothing yet. If the kernel refuses, the slices stay open: less protection, nothing
        // wrong.
        let closed = unsafe { os::protect(base.add(header), CHUNK_SIZE - header, false) };
        let (open, present) = if huge {
            (HALF_SLICES[0], HALF_SLICES[0] & ALL_BLOCK_SLICES)
        } else {
            (0, 0)
        };
        // SAFETY: fresh zeroed memory, large enough for the header (asserted above); a zeroed
        // `Page` is an unused descriptor.
        unsafe {
            (*segment).owner = owner;
            (*segment).free_slices = ALL_BLOCK_SLICES;
            (*segment).page_of_slice = [Page::empty_page(); SLICES];
            (*segment).open_slices = if closed { open } else { u64::MAX };
            (*segment).first_cut = !ALL_BLOCK_SLICES | present;
            (*segment).dirty_slices = present;
            (*segment).huge_untaken = present;
            (*segment).fresh_halves = 2;
        }
        if huge {
            budget::HUGE_UNTAKEN_BYTES.add(present_bytes);
        }
        pagemap::tag_segment(base as usize, tag);
        // SAFETY: initialised above, published now.
        unsafe { REGISTRY.push(segment) };
        crate::profile::reserve::note_segment_created(SLICE_SIZE);
        Some(segment)
    }

    /// Gives the segment's memory back to the kernel and keeps its chunk for `create` (see the
    /// module comment: the chunk stays mapped and tagged, its slices all on the empty page).
    ///
    /// # Safety
    /// The segment must hold no page and be on no list.
    pub unsafe fn release(segment: *mut Segment) {
        // SAFETY: the caller guarantees no page uses the slices: their contents are dead.
        unsafe {
            debug_assert!((*segment).is_empty());
            let mut open = ((*segment).open_slices | (*segment).guarded_slices) & ALL_BLOCK_SLICES;
            while open != 0 {
                let start = open.trailing_zeros() as usize;
                let len = (!(open >> start)).trailing_zeros() as usize;
                os::discard(
                    (segment as *mut u8).add(start * SLICE_SIZE),
                    len * SLICE_SIZE,
                );
                open &= !run_mask(start, len);
            }
            (*segment).owner = 0;
            (*segment).dirty_slices = 0;
            (*segment).forget_huge_untaken((*segment).huge_untaken);
            // Still a segment's chunk, but its last owner's `free` no longer takes it for one
            // of its own.
            pagemap::tag_segment(segment as usize, pagemap::SHARED_SEGMENT_TAG);
            RETAINED.push(segment);
        }
        crate::profile::reserve::note_segment_released(SLICE_SIZE);
    }

    /// Calls `f` on every in-use page descriptor of every segment (statistics, from any
    /// thread). The descriptors are read while their owners change them: `f` gets a page that
    /// was in use at some moment of the walk, and must read its fields as such.
    pub fn for_each_page(mut f: impl FnMut(*const Page)) {
        let mut segment: *mut Segment = REGISTRY.first();
        while !segment.is_null() {
            // SAFETY: registered chunks stay mapped forever (never unmapped, see `release`),
            // `registry_next` is written before a chunk is published, and a head descriptor
            // is in use exactly while its `block_size` is not 0 (`take_page`, `give_back`).
            unsafe {
                for i in 1..SLICES {
                    let page = ptr::addr_of!((*segment).pages[i]);
                    if ptr::addr_of!((*page).block_size).read_volatile() != 0 {
                        f(page);
                    }
                }
                segment = Self::next(segment);
            }
        }
    }

    /// The segment holding block or page descriptor `p`.
    #[inline(always)]
    pub fn of(p: usize) -> *mut Segment {
        (p & !CHUNK_MASK) as *mut Segment
    }

    /// The descriptor of the page holding block `p` (of this segment).
    #[inline(always)]
    pub fn page_of(segment: *mut Segment, p: usize) -> *mut Page {
        let slice = slice_index(p);
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
    /// If `huge` and the page is the first cut over the segment's second half, that half is
    /// made one huge page first (`dram::huge_pages`), its other slices counted dirty.
    pub fn take_page(&mut self, class: usize, n: usize, huge: bool) -> Option<*mut Page> {
        let start = find_run(self.dirty_slices, n).or_else(|| find_run(self.free_slices, n))?;
        self.take_run(class, start, n, huge)
    }

    /// Takes `n` slices of a huge half that no page has taken yet, if a run of them exists,
    /// and makes them a page of `class`: DRAM holds them already (`budget::HUGE_UNTAKEN_BYTES`),
    /// so the page adds nothing to what it holds.
    #[cold]
    #[inline(never)]
    // Run only under `limit=`: a section of its own keeps it out of the code every process
    // runs (`link/hot_text.ld`, which takes every other `dram` function).
    #[link_section = ".text.tiermalloc_limit"]
    pub fn take_untaken_page(&mut self, class: usize, n: usize) -> Option<*mut Page> {
        let start = find_run(self.huge_untaken, n)?;
        self.take_run(class, start, n, false)
    }

    /// Makes free slices `start..start + n` a page of `class` (see `take_page`).
    #[inline]
    fn take_run(&mut self, class: usize, start: usize, n: usize, huge: bool) -> Option<*mut Page> {
        let mask = run_mask(start, n);
        if mask & HALF_SLICES[1] != 0 && self.fresh_halves & 2 != 0 {
            self.fresh_halves &= !2;
            if huge {
                self.back_second_half_with_huge_page();
            }
        }
        if self.open_slices & mask != mask {
            let memory = (self as *mut Segment as usize + start * SLICE_SIZE) as *mut u8;
            // SAFETY: free slices of this segment, which nothing uses.
            if unsafe { !os::protect(memory, n * SLICE_SIZE, true) } {
                return None;
            }
            self.open_slices |= mask;
            self.guarded_slices &= !mask;
        }
        self.free_slices &= !mask;
        self.dirty_slices &= !mask;
        if self.huge_untaken & mask != 0 {
            // Held already: the page's from now on (`new_page` counts it in `PAGE_BYTES`).
            self.forget_huge_untaken(mask);
        }
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
        let guard = if self.secure() {
            self.close_tail(memory, n, mask)
        } else {
            0
        };
        // SAFETY: `head` points into this segment's descriptor array.
        unsafe { (*head).init(class, memory, n, guard) };
        Some(head)
    }

    /// Opens the untouched second half whole and makes it present on one huge page; its slices
    /// become resident free slices (dirty), taken before any other, and held
    /// (`budget::HUGE_UNTAKEN_BYTES`). Nothing when DRAM's `limit=` does not admit the half or
    /// the kernel refuses the `mprotect`.
    #[cold]
    fn back_second_half_with_huge_page(&mut self) {
        let half = HALF_SLICES[1];
        let memory = (self as *mut Segment as usize + HUGE_PAGE) as *mut u8;
        debug_assert!(self.free_slices & half == half && self.first_cut & half == 0);
        if !budget::admits(HUGE_PAGE as u64) {
            return;
        }
        // SAFETY: free slices of this segment that no page ever used.
        if self.open_slices & half != half && unsafe { !os::protect(memory, HUGE_PAGE, true) } {
            return;
        }
        self.open_slices |= half;
        self.guarded_slices &= !half;
        // Even a refused populate may leave part of the half present: counted dirty all the
        // same, so that the decay gives it back.
        // SAFETY: open now, and its bytes are dead.
        unsafe { huge_pages::populate_huge(memory) };
        self.first_cut |= half;
        self.dirty_slices |= half;
        self.huge_untaken |= half;
        budget::HUGE_UNTAKEN_BYTES.add(HUGE_PAGE as u64);
    }

    /// Takes slices `mask` out of the huge halves' untaken ones (taken by a page, purged or
    /// released) and out of what DRAM holds for them.
    #[cold]
    fn forget_huge_untaken(&mut self, mask: u64) {
        let gone = self.huge_untaken & mask;
        if gone == 0 {
            return;
        }
        self.huge_untaken &= !mask;
        let bytes = gone.count_ones() as u64 * SLICE_SIZE as u64;
        budget::HUGE_UNTAKEN_BYTES.add(bytes.wrapping_neg());
    }

    /// `TIERMALLOC_SECURE=1`: makes the last OS page of the run of `n` slices at `memory`
    /// (`mask`) a `PROT_NONE` guard. Its slice then counts as not open, so that the next page
    /// cut over it opens it again whole (`take_page`). Returns the guard's bytes, which the
    /// page must not use, or 0 if the kernel refused (no guard, nothing wrong).
    #[cold]
    fn close_tail(&mut self, memory: *mut u8, n: usize, mask: u64) -> usize {
        let len = n * SLICE_SIZE;
        // SAFETY: the run's last OS page, which the page will not use.
        if unsafe { !os::protect(memory.add(len - os::PAGE_SIZE), os::PAGE_SIZE, false) } {
            return 0;
        }
        let last = 1u64 << (mask.trailing_zeros() as usize + n - 1);
        self.open_slices &= !last;
        self.guarded_slices |= last;
        os::PAGE_SIZE
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
        self.pages[start].fast_limit = 0;
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
        self.forget_huge_untaken(self.huge_untaken);
        purged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_index_is_the_slice_of_the_address_in_its_chunk() {
        for p in [
            0usize,
            1,
            0xffff,
            0x1_0000,
            0x3f_ffff,
            0x40_0000,
            0x7f12_3456_789a,
            usize::MAX,
        ] {
            assert_eq!(
                super::slice_index(p),
                (p % CHUNK_SIZE) >> SLICE_SHIFT,
                "{p:#x}"
            );
        }
        for slice in 0..SLICES {
            let p = 0x7f00_0000_0000 + slice * SLICE_SIZE + 0x1234;
            assert_eq!(super::slice_index(p), slice);
        }
    }

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
        let segment = Segment::create_fresh(0, pagemap::SHARED_SEGMENT_TAG, false).unwrap();
        let base = segment as usize;
        let header = os::page_round(core::mem::size_of::<Segment>());
        assert!(readable(base) && readable(base + header - 1));
        assert!(
            !readable(base + header),
            "the header slice's tail is accessible"
        );
        assert!(
            !readable(base + SLICE_SIZE),
            "an unused slice is accessible"
        );
        // SAFETY: our segment, not shared; its page is given back before the release.
        unsafe {
            let page = (*segment).take_page(0, 2, false).unwrap();
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

    /// What a `free` racing a release reads (an incorrect program's double free from another
    /// thread): it read the page map before the release and the segment's descriptors, the
    /// block's mark and the page's lists after it. All of it stays mapped, and the stale free
    /// finds no live block. (With the chunk unmapped, as before, this test dies of SIGSEGV.)
    #[test]
    fn a_released_segment_stays_readable_and_holds_no_block() {
        use crate::dram::fast::guard::{is_block_offset, is_on_lists};
        let segment = Segment::create(0, pagemap::SHARED_SEGMENT_TAG, false).unwrap();
        // SAFETY: our segment, used by nothing else; its page is given back before the release.
        unsafe {
            let page = (*segment).take_page(3, 1, false).unwrap();
            (*page).extend();
            let p = (*page).pop_checked();
            (*page).push_local(p);
            assert!((*page).carries_mark(p), "a freed block is suspect");
            // What a walk of the page's lists (`Page::holds_free`) read before the release.
            let (start, magic, limit, first) = (
                (*page).start as usize,
                (*page).div_magic,
                (*page).block_limit,
                (*page).free as usize,
            );
            (*segment).give_back(page);
            Segment::release(segment);
            // After the release: the page map still says "segment", every read is mapped.
            assert_eq!(
                pagemap::tag_of_block(p as usize),
                pagemap::ChunkTag::Segment
            );
            let stale = Segment::page_of(Segment::of(p as usize), p as usize);
            assert_eq!(
                stale,
                Page::empty_page(),
                "a released slice maps to the empty page"
            );
            assert!((*stale).block_size == 0 && !(*stale).is_block_start(p));
            assert!(!(*page).is_block_start(p));
            // A walk that read the descriptor before the release reads the blocks after it:
            // mapped, and zero now (the memory went back to the kernel), so the walk ends.
            let is_block = |b: usize| is_block_offset(magic, limit, b.wrapping_sub(start));
            assert!(is_on_lists(p as usize, first, 0, 0, 64, is_block));
            assert!(!is_on_lists(p as usize + 64, first, 0, 0, 64, is_block));
            assert!(readable(p as usize));
        }
    }

    /// A half made huge is one mapping, open whole (the header's tail too: a `PROT_NONE` page
    /// in it would rule out the 2 MiB page), present and advised `MADV_NOHUGEPAGE` afterwards;
    /// its slices no page took count as dirty, and the other half stays closed until a page
    /// of small blocks is the first cut over it.
    #[test]
    fn a_huge_half_is_open_present_and_its_untaken_slices_dirty() {
        if huge_pages::tests::kernel_has_thp().is_none() {
            eprintln!("skipped: this kernel has no transparent huge pages");
            return;
        }
        let segment = Segment::create_fresh(0, pagemap::SHARED_SEGMENT_TAG, true).unwrap();
        let base = segment as usize;
        let header = os::page_round(core::mem::size_of::<Segment>());
        assert!(readable(base + header), "the header slice's tail is closed");
        assert!(readable(base + HUGE_PAGE - 1) && !readable(base + HUGE_PAGE));
        let (start, end, rss, _, no_huge) = huge_pages::tests::mapping_of(base).unwrap();
        assert!(
            start <= base && end >= base + HUGE_PAGE,
            "the half is split: {start:#x}..{end:#x}"
        );
        assert!(
            rss >= HUGE_PAGE && no_huge,
            "not present ({rss} bytes) or the advice left on"
        );
        // SAFETY: our segment, not shared; its pages are given back before the release.
        unsafe {
            assert_eq!((*segment).dirty_slices, HALF_SLICES[0] & ALL_BLOCK_SLICES);
            let first = (*segment).take_page(0, 31, true).unwrap();
            assert_eq!(
                (*first).start as usize,
                base + SLICE_SIZE,
                "the dirty slices go first"
            );
            assert!(!readable(base + HUGE_PAGE));
            // The first cut over the second half, a page of small blocks, makes it huge: open,
            // present, the rest of it dirty.
            let small = (*segment).take_page(0, 1, true).unwrap();
            assert_eq!((*small).start as usize, base + HUGE_PAGE);
            assert!(readable(base + CHUNK_SIZE - 1));
            assert_eq!((*segment).dirty_slices, HALF_SLICES[1] & !(1 << 32));
            let (_, _, rss, _, no_huge) = huge_pages::tests::mapping_of(base + HUGE_PAGE).unwrap();
            assert!(rss >= HUGE_PAGE && no_huge);
            (*segment).give_back(small);
            (*segment).give_back(first);
            Segment::release(segment);
        }
        // A first cut over the second half that may not make it huge (a page of large blocks)
        // leaves the rest closed, and no later cut makes it huge: its small pages may be there.
        let segment = Segment::create_fresh(0, pagemap::SHARED_SEGMENT_TAG, false).unwrap();
        let base = segment as usize;
        // SAFETY: as above.
        unsafe {
            let first = (*segment).take_page(0, 31, false).unwrap();
            let large = (*segment).take_page(0, 2, false).unwrap();
            assert_eq!((*large).start as usize, base + HUGE_PAGE);
            let small = (*segment).take_page(0, 1, true).unwrap();
            assert!(
                !readable(base + CHUNK_SIZE - 1),
                "a half already cut was made huge"
            );
            assert_eq!((*segment).dirty_slices, 0);
            for page in [small, large, first] {
                (*segment).give_back(page);
            }
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
