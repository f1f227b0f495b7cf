//! Thread heaps: the pages of every size class that one thread allocates from, and the slow
//! paths that find, create, retire and purge pages.
//!
//! A heap is used by one thread at a time (its owner) without locks. Other threads reach it
//! only through the atomic `remote` list of a page and the heap's atomic `delayed` list of
//! pages, which a remote free fills when it frees into a page parked in `full`.
//!
//! Pages of a class sit in `queues[class]`; `current[class]` is the page the fast path pops
//! from (the first of the queue, or the empty page). A page with no free block left moves to
//! `full` and flags its remote list, so that the first remote free hands it back through
//! `delayed`; thus `find_page` never walks full pages twice.

use crate::dram::budget;
use crate::dram::fast::block_cache::BlockCache;
use crate::dram::fast::decay_clock::DecayClock;
use crate::dram::fast::idle_pages::IdleWatch;
use crate::dram::fast::lent_blocks::{self, BORROW_TRIES_PER_CLASS, LEND_WASTE_MAX};
use crate::dram::fast::page::{Block, Page, PageQueue};
use crate::dram::fast::quarantine::{self, Quarantine};
use crate::dram::fast::remote_batch::RemoteBatch;
use crate::dram::fast::segment::Segment;
use crate::dram::fast::size_class::{
    class_size, page_slices, CLASS_COUNT, DIRECT_CLASSES, DIRECT_SLOTS, ROUTED_CLASS, SLICE_SIZE,
};
use crate::dram::fast::traffic::Traffic;
use crate::dram::huge_pages;
use crate::lockfree::remote_list::{Link, RemoteList};
use crate::lockfree::tagged_stack::StackLink;
use crate::pagemap;
use crate::stats::SharedCounter;
use crate::sync::AtomicPtr;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Dirty (freed but resident) bytes a heap keeps without a thought of purging them. 1 MiB, not
/// the 4 MiB before: gs's heap at its peak held 3.6 MiB of such bytes (1.3 MiB less at 1 MiB),
/// rptestN's peak RSS 10.3-11.0 MiB against 11.2-16.4 in five reps, with the same time on every
/// outside row and the own suite (BENCHMARKS.md, session 14, "after every merge"); a set taken
/// again within a decay window is not purged (`tests/idle_below_threshold.rs`).
pub(crate) const PURGE_THRESHOLD: usize = 1 << 20;
/// The decay window, on the heap's thread's CPU time (`decay_clock`: the same work in every
/// run, however loaded the machine). Dirty bytes above `PURGE_THRESHOLD` that stayed unused
/// through a whole window (the lowest the dirty bytes fell during it, less the threshold) are
/// purged with `madvise` at its end (checked on the heap's slow paths); what was taken again during
/// the window stays resident, so a working set freed and taken again is not faulted back in page by
/// page however long the program runs. mimalloc-bench's mstress (`2 100 100`), whose threads free
/// and reallocate ~10 MB sets and end every few milliseconds: 205 k minor faults with an immediate
/// purge, 8 k with this delay and `POOLED_DIRTY_BUDGET` (mimalloc 8 k).
const PURGE_DELAY_NS: u64 = 20_000_000;
/// ... or this long on the wall clock, for a thread that sleeps (`decay_clock`).
const PURGE_DELAY_WALL_MAX_NS: u64 = 1_000_000_000;
/// ... unless there are more than this many: then at once.
const PURGE_HARD_MAX: usize = 32 << 20;
/// Empty segments a heap keeps at most (their address space; what is resident of them counts
/// in the dirty bytes and decays): as many as `PURGE_HARD_MAX` covers.
const EMPTY_SEGMENTS_MAX: usize = PURGE_HARD_MAX / crate::chunk::CHUNK_SIZE;
/// Dirty bytes all heaps waiting in the pool for a new thread may keep together: a program
/// whose threads come and go reuses their warm memory (mstress, see `PURGE_DELAY_NS`: 242 k
/// minor faults when every exiting heap purged), while many exited threads pin no more than
/// this (`c-tests/thread_churn.c`: 3000 threads, VmRSS at most 39 MiB). A heap that finds the
/// budget spent purges at exit.
const POOLED_DIRTY_BUDGET: usize = 32 << 20;
/// Dirty bytes kept by the heaps in the pool, against `POOLED_DIRTY_BUDGET`.
static POOLED_DIRTY: AtomicUsize = AtomicUsize::new(0);

/// Bytes of segments the heaps hold, all heaps together (a released segment's chunk stays
/// mapped with its memory discarded, see `segment`, and is not counted).
pub static SEGMENT_BYTES: SharedCounter = SharedCounter::new();
pub static SEGMENTS_RELEASED: SharedCounter = SharedCounter::new();

/// The pages the fast paths pop from: by class, and the class of every request size up to
/// `DIRECT_MAX` (`malloc` indexes `direct` with the size, then `current` with the class; see
/// `size_class::DIRECT_MAX`). The first field of every `Heap`, and all there is of the
/// sentinels that a thread without a heap points at (`binding`): their `current` entries are
/// all the empty page, so a pop from them fails into the slow path.
#[repr(C)]
pub struct PageTables {
    /// By class, and one more slot (`ROUTED_CLASS`) that always holds the empty page.
    pub current: [*mut Page; CLASS_COUNT + 1],
    /// By request size: its class, or `ROUTED_CLASS` for every size while `DIRECT_OFF`.
    pub direct: [u8; DIRECT_SLOTS],
}

impl PageTables {
    /// Every page the empty page.
    pub const fn empty() -> PageTables {
        PageTables {
            current: [Page::empty_page(); CLASS_COUNT + 1],
            direct: DIRECT_CLASSES,
        }
    }
}

/// Set once when placement routes plain requests (device tiers): heaps then point every
/// `direct` byte at the always-empty `ROUTED_CLASS`, so `malloc`'s inline pop always fails
/// into the general path, which asks `place`.
/// Placement sets it from the library's constructor, before the program can start a thread;
/// the constructing thread's heap and every heap bound later follow it. This is the one record
/// of "routing is on": `place::routed` reads it.
static DIRECT_OFF: AtomicBool = AtomicBool::new(false);

/// Whether the direct tables are off (see `DIRECT_OFF`).
#[inline(always)]
pub fn direct_off() -> bool {
    DIRECT_OFF.load(Ordering::Relaxed)
}

/// Turns the direct tables off (see `DIRECT_OFF`), in the calling thread's heap at once.
pub fn turn_direct_off(heap: *mut Heap) {
    DIRECT_OFF.store(true, Ordering::Relaxed);
    if !heap.is_null() {
        // SAFETY: the caller's own heap.
        unsafe { (*heap).follow_direct_switch() };
    }
}

/// Invariants: `tables.current[c]` is `queues[c].first` or the empty page, and
/// `tables.current[ROUTED_CLASS]` the empty page; unless `DIRECT_OFF`,
/// `tables.direct[i] == class_of(i)` for every `i` (requests up to `DIRECT_MAX` bytes), else
/// every `direct` byte is `ROUTED_CLASS`; every page of a segment
/// of this heap that holds blocks is in exactly one of `queues[its class]` and `full`;
/// `available` lists exactly the segments with a free slice that are not empty; `empty` the
/// empty ones (`empty_count` of them); `dirty_bytes` is the sum of the dirty slices of both;
/// `dirty_low <= dirty_bytes` while a decay window is open (`decay.is_open()`).
#[repr(C, align(64))]
pub struct Heap {
    /// First, so that a pointer to the heap is a pointer to its tables (see `PageTables`).
    pub tables: PageTables,
    pub traffic: Traffic,
    /// Blocks of other heaps this thread freed, gathered by size class (`remote_batch`).
    pub remote_batch: RemoteBatch,
    /// Blocks this thread freed under `TIERMALLOC_SECURE=1`, waiting before reuse
    /// (`quarantine`); always empty otherwise.
    pub quarantine: Quarantine,
    queues: [PageQueue; CLASS_COUNT],
    full: PageQueue,
    /// Pages of `full` that received a remote free (linked through `Page::delayed_next`).
    delayed: RemoteList,
    available: *mut Segment,
    /// Empty segments (linked through `Segment::next`), kept so that a working set that empties
    /// whole segments and fills them again pays no `munmap`, `mmap` and page faults; purged
    /// and released by the decay (all but one).
    empty: *mut Segment,
    empty_count: usize,
    dirty_bytes: usize,
    /// The current decay window, if one is open.
    decay: DecayClock,
    /// The fewest dirty bytes seen since the decay window opened.
    dirty_low: usize,
    /// The dirty bytes this heap counts in `POOLED_DIRTY` (while it waits in the pool).
    pooled_dirty: usize,
    /// Link in the pool of heaps without a thread.
    pool_link: AtomicPtr<Heap>,
    /// Link in the registry of all heaps (for statistics).
    registry_next: *mut Heap,
    /// The block this thread's free has claimed and not yet put where freed blocks wait, or
    /// 0 (`claim`).
    pub freeing: core::sync::atomic::AtomicUsize,
    /// Slack given away so far by lending blocks of larger classes (`lent_blocks`), at most
    /// `LEND_WASTE_MAX`.
    lent_waste: usize,
    /// Times each class asked to borrow a block (`lend_page`), lent or not: at most
    /// `BORROW_TRIES_PER_CLASS`.
    borrow_tries: [u8; CLASS_COUNT],
    /// Segments this heap holds (created and not yet released): past
    /// `huge_pages::SMALL_PAGE_SEGMENTS`, fresh halves it fills with small blocks are huge.
    segments_held: usize,
    /// Current pages' allocation counts at the last look for idle pages (`idle_pages`).
    idle: IdleWatch,
    /// What the page map holds for this heap's segments (`pagemap::SEGMENT_TAG_MIN`): a tag of
    /// its own, given at `init` while tags last (heaps live forever), else `SHARED_SEGMENT_TAG`.
    segment_tag: u8,
    /// Big blocks this heap's thread freed, kept for its next requests of their classes
    /// (`block_cache`); counted in `traffic.cached`.
    pub block_cache: BlockCache,
}

/// The next heap's segment tag (`Heap::init`).
static NEXT_SEGMENT_TAG: core::sync::atomic::AtomicU8 =
    core::sync::atomic::AtomicU8::new(pagemap::SEGMENT_TAG_MIN);

impl StackLink for Heap {
    fn link(&self) -> &AtomicPtr<Heap> {
        &self.pool_link
    }
}

// SAFETY: the link is `registry_next`, written once before the heap is published.
unsafe impl Link for Heap {
    unsafe fn set_next(node: *mut Self, next: *mut Self) {
        // SAFETY: the caller owns the unpublished heap.
        unsafe { (*node).registry_next = next }
    }
    unsafe fn next(node: *mut Self) -> *mut Self {
        // SAFETY: published heaps are valid forever.
        unsafe { (*node).registry_next }
    }
}

impl Heap {
    /// Prepares zeroed memory as an empty heap.
    ///
    /// # Safety
    /// `heap` must point to zeroed memory for a `Heap`, owned by the caller.
    pub unsafe fn init(heap: *mut Heap) {
        // SAFETY: all-zero is a valid empty state for every field but the tables and the tag.
        unsafe { (*heap).tables = PageTables::empty() };
        let tag = NEXT_SEGMENT_TAG
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t < pagemap::SHARED_SEGMENT_TAG).then(|| t + 1)
            })
            .unwrap_or(pagemap::SHARED_SEGMENT_TAG);
        // SAFETY: as above.
        unsafe { (*heap).segment_tag = tag };
    }

    /// The tag the owner's `free` finds in the page map for this heap's segments
    /// (`binding::thread_tag`): its own, or `NO_SEGMENT_TAG` if it has none.
    pub fn thread_tag(&self) -> u8 {
        if self.segment_tag == pagemap::SHARED_SEGMENT_TAG {
            pagemap::NO_SEGMENT_TAG
        } else {
            self.segment_tag
        }
    }

    /// Points every `direct` byte at `ROUTED_CLASS` if the direct tables were turned off
    /// (now, or before this heap, made earlier, was adopted).
    pub fn follow_direct_switch(&mut self) {
        if DIRECT_OFF.load(Ordering::Relaxed) {
            self.tables.direct = [ROUTED_CLASS as u8; DIRECT_SLOTS];
        }
    }

    /// Allocates a block of `class` when the current page has none: the slow path.
    #[cold]
    #[inline(never)]
    pub fn alloc_slow(&mut self, class: usize) -> *mut u8 {
        self.take_delayed();
        if self.decay.is_open() {
            self.consider_purge();
        }
        // A page ran out: a rare enough moment to give back big blocks nobody took again
        // (one relaxed load when none is cached).
        crate::dram::large::decay();
        loop {
            let Some(page) = self.find_page(class) else {
                return ptr::null_mut();
            };
            // SAFETY: find_page returns a valid page with a free block.
            let p = unsafe { (*page).pop_checked() };
            if !p.is_null() {
                return p;
            }
            // The page's list was corrupted, reported and dropped (the program goes on):
            // find another block.
        }
    }

    /// Tests the head of the free list of every current page, and its link, as `pop_checked`
    /// would (`Page::list_head_sound`), reporting the first that fails: asked when the first
    /// page of a class is cut (`new_page`) and for a large allocation (`dram::alloc_large`),
    /// so that a link overwritten after its block was freed is found even in a program whose
    /// next request is of another class (glibc checks its fast bins on a large request too).
    /// At most `CLASS_COUNT` pages, each one head read; a report ends the program unless
    /// `TIERMALLOC_ON_ERROR=ignore`, then that list is dropped.
    pub fn check_list_heads(&mut self) {
        for class in 0..CLASS_COUNT {
            let page = self.tables.current[class];
            // SAFETY: current pages are valid pages of this heap, or the empty page, whose
            // list is empty.
            unsafe {
                if !(*page).list_head_sound() {
                    (*page).drop_corrupted_list();
                }
            }
        }
        if !self.block_cache.is_empty() {
            self.check_cached_marks();
        }
    }

    /// Tests the free mark of every block in the cache (`block_cache`), as handing one out
    /// does (`alloc_cached`), reporting each whose mark was overwritten (written after its
    /// free): so that such a block is found at the moments the list heads are tested, not
    /// only when its class is asked for again (mimalloc-bench's `write_after_free_large`
    /// writes a freed 256 KiB block whole, then allocates only other sizes). A reported block
    /// leaves the cache and is never handed out (leaked, if the program goes on).
    #[cold]
    #[inline(never)]
    // Run only by programs that free blocks over 8 KiB (see `borrow_big`).
    #[link_section = ".text.tiermalloc_big"]
    fn check_cached_marks(&mut self) {
        let lost = |_: usize, p: *mut u8| {
            let page = Segment::page_of(Segment::of(p as usize), p as usize);
            // SAFETY: a cached block is a dead block of its page, which it keeps in use.
            crate::dram::fast::guard::FREE_MARK && unsafe { !Block::is_marked(p.cast(), page) }
        };
        while let Some((class, p)) = self.block_cache.take_first(lost) {
            self.traffic.cached[class].add(u64::MAX);
            let page = Segment::page_of(Segment::of(p as usize), p as usize);
            // SAFETY: as above.
            unsafe { cached_mark_lost(p, page) };
        }
    }

    /// Tells `heap` that `page`, parked in its `full` queue, got a remote free. Called by the
    /// one remote free whose push cleared the page's flag.
    ///
    /// # Safety
    /// As stated: `page` is a page of `heap` whose flag this thread's push cleared.
    pub unsafe fn hand_back(heap: *mut Heap, page: *mut Page) {
        // SAFETY: `delayed` is the heap's atomic list; the page link is ours to write (Page
        // invariant).
        unsafe { (*core::ptr::addr_of!((*heap).delayed)).push(page) };
    }

    /// `hand_back` for a page whose owner is read from its segment: what a gathered chain's
    /// push calls when it cleared the page's flag.
    ///
    /// # Safety
    /// As for `hand_back`.
    pub unsafe fn hand_back_to_owner(page: *mut Page) {
        // SAFETY: a page in use lies in a live segment, whose owner never changes.
        unsafe {
            Self::hand_back(
                (*Segment::of(page as usize)).owner_heap() as *mut Heap,
                page,
            )
        }
    }

    /// Frees dead block `p` of `page` (of `owner`'s segment) by the remote path from this
    /// thread's heap: into the chain of gathered frees of its page, or onto the page's remote
    /// list. The block carries its free mark already (`Block::mark_free`, or the claim's swap,
    /// `claim::claim`, which wrote it: marking it here again cost a store per remote free).
    ///
    /// # Safety
    /// `p` must be a dead block of `page`, marked free, owned by heap `owner`; `self` the
    /// calling thread's.
    #[inline(always)]
    pub unsafe fn free_remote_block(&mut self, page: *mut Page, owner: *mut Heap, p: *mut u8) {
        // SAFETY: per the contract.
        unsafe {
            let class = (*page).class as usize;
            self.traffic.on_remote_free(class);
            if !self
                .remote_batch
                .add(page, class, p, Heap::hand_back_to_owner)
            {
                Heap::push_remote(page, owner, p);
            }
        }
    }

    /// Pushes dead block `p` on `page`'s remote list, handing the page back to its owner's
    /// heap if it was full.
    ///
    /// # Safety
    /// `page` is the valid page of block `p`, owned by `owner`; the block is dead, marked free
    /// (`Block::mark_free` or the claim) and ours to link.
    #[inline(always)]
    pub unsafe fn push_remote(page: *mut Page, owner: *mut Heap, p: *mut u8) {
        // SAFETY: a page's remote list accepts pushes from any thread.
        unsafe {
            if (*page).remote.push(p.cast::<Block>())
                == crate::lockfree::remote_list::Pushed::ClearedFlag
            {
                Heap::hand_back(owner, page);
            }
        }
    }

    /// `free` of block `p` of `page` under `TIERMALLOC_SECURE=1`: into this thread's
    /// quarantine, which lets its oldest blocks go (checked) to their pages.
    ///
    /// # Safety
    /// `p` must be a live block of `page`, not used after this; `self` the calling thread's.
    #[cold]
    #[inline(never)]
    // Run only under `TIERMALLOC_SECURE=1`: a section of its own keeps it out of the code every
    // process runs (`link/hot_text.ld`, which takes every other `dram` function).
    #[link_section = ".text.tiermalloc_secure"]
    pub unsafe fn free_quarantined(&mut self, page: *mut Page, p: *mut u8) {
        // SAFETY: per the contract.
        unsafe {
            let size = (*page).block_size as usize;
            Quarantine::fill(page, p);
            while self.quarantine.must_leave(size) {
                let out = self.quarantine.take_oldest();
                self.release_quarantined(out);
            }
            self.quarantine.insert(p, size);
        }
    }

    /// Sends every quarantined block to its page (the thread leaves).
    fn drain_quarantine(&mut self) {
        while self.quarantine.len() > 0 {
            let out = self.quarantine.take_oldest();
            // SAFETY: a block out of this heap's quarantine.
            unsafe { self.release_quarantined(out) };
        }
    }

    /// Frees block `out`, just out of the quarantine, unless it was written to meanwhile
    /// (reported; leaked if the program goes on).
    ///
    /// # Safety
    /// `out` must be a block taken out of this heap's quarantine.
    // Run only under `TIERMALLOC_SECURE=1`: a section of its own keeps it out of the code every
    // process runs (`link/hot_text.ld`, which takes every other `dram` function).
    #[link_section = ".text.tiermalloc_secure"]
    unsafe fn release_quarantined(&mut self, out: *mut u8) {
        // SAFETY: a quarantined block's page and segment are live (it counts as used).
        unsafe {
            if quarantine::verify(out) {
                let segment = Segment::of(out as usize);
                let page = Segment::page_of(segment, out as usize);
                // Still marked free: `quarantine::fill` keeps the mark, `verify` tested it.
                self.free_remote_block(page, (*segment).owner_heap() as *mut Heap, out);
            }
        }
    }

    /// Hands every chain of gathered remote frees to its page.
    pub fn flush_remote_batch(&mut self) {
        self.remote_batch.flush_all(Self::hand_back_to_owner);
    }

    /// Moves pages that got remote frees while full back to their queues.
    fn take_delayed(&mut self) {
        if !self.delayed.has_nodes() {
            return;
        }
        let mut page: *mut Page = self.delayed.take_all();
        while !page.is_null() {
            // SAFETY: pages on `delayed` are pages of ours in `full` (Page invariant).
            unsafe {
                let next = (*page).delayed_next;
                debug_assert!((*page).in_full());
                self.full.remove(page);
                (*page).set_in_full(false);
                self.queues[(*page).class as usize].push_back(page);
                page = next;
            }
        }
    }

    /// A page with a free block for `class`: one of its queue, made current; else, while
    /// the heap is young, a larger class's page to borrow one block from (`lend_page`);
    /// else a new page, made current.
    fn find_page(&mut self, class: usize) -> Option<*mut Page> {
        let mut page = self.queues[class].first;
        while !page.is_null() {
            // SAFETY: queue members are valid pages of this heap.
            unsafe {
                let next = (*page).next;
                if (*page).free.is_null() {
                    self.collect_remote(page);
                }
                if (*page).free.is_null() {
                    if self.dirty_bytes == 0 && (*page).capacity < (*page).reserved {
                        // Carving touches fresh memory, and no resident free slice is left.
                        self.idle.on_carve(&self.tables.current, class);
                    }
                    (*page).extend();
                }
                if !(*page).free.is_null() {
                    self.make_current(class, page);
                    return Some(page);
                }
                self.move_to_full(page);
                page = next;
            }
        }
        if let Some(lender) = self.lend_page(class) {
            return Some(lender);
        }
        let page = self.new_page(class)?;
        // SAFETY: a fresh page of ours.
        unsafe {
            self.queues[class].push_front(page);
            (*page).extend();
        }
        self.set_current(class, page);
        Some(page)
    }

    /// Before fresh memory is touched for `class`: gives back what the other classes' idle
    /// empty current pages hold (`idle_pages`).
    fn give_back_idle(&mut self, class: usize) {
        // SAFETY: this heap's current pages, on its owner's thread.
        unsafe { self.idle.give_back_idle(&self.tables.current, class) };
    }

    /// A block for big `class` (`lent_blocks::big`) from the heap's `block_cache`, else from a
    /// larger class's carved free block, when the class's own pages have none (its slow path
    /// would carve or cut a page, touching memory); null otherwise (then `alloc_slow`). Marks
    /// the lender's page `lent`.
    #[cold]
    #[inline(never)]
    // Run only by programs that ask for blocks over 8 KiB: a section of its own keeps it out of
    // the code every process runs (`link/hot_text.ld`, which takes every other `dram` function).
    #[link_section = ".text.tiermalloc_big"]
    pub fn borrow_big(&mut self, class: usize) -> *mut u8 {
        let p = self.alloc_cached(class);
        if !p.is_null() {
            return p;
        }
        self.borrow_big_from_lender(class)
    }

    /// `borrow_big` after the cache had no block: a larger class's carved free block, or null.
    #[cold]
    #[inline(never)]
    // Run only by programs that ask for blocks over 8 KiB (see `borrow_big`).
    #[link_section = ".text.tiermalloc_big"]
    fn borrow_big_from_lender(&mut self, class: usize) -> *mut u8 {
        let first = self.queues[class].first;
        // Pages handed back by remote frees (`take_delayed`) may be of this class.
        if self.delayed.has_nodes() {
            return ptr::null_mut();
        }
        // SAFETY: queue members and current pages are valid pages of this heap (or the empty
        // page), on its owner's thread.
        unsafe {
            // Another queued page, or blocks on this one's lists: `find_page` finds a block
            // without touching memory.
            if !first.is_null()
                && (!(*first).free.is_null()
                    || (*first).remote.has_nodes()
                    || !(*first).next.is_null())
            {
                return ptr::null_mut();
            }
            let Some(page) = lent_blocks::big_lender(class, &self.tables.current) else {
                return self.borrow_cached(class);
            };
            (*page).lent = true;
            // Null on a head that fails the test: then the class's own slow path runs, and
            // the lender's next allocation reports it (`pop_checked`).
            (*page).pop_validated()
        }
    }

    /// A cached block (`block_cache`) of one of the classes that may lend to big `class`
    /// (`lent_blocks::big_lenders`), its page marked `lent`; null if none: resident memory, as
    /// the lender's free block of `borrow_big`, which the cache would otherwise keep from it.
    fn borrow_cached(&mut self, class: usize) -> *mut u8 {
        for lender in lent_blocks::big_lenders(class) {
            let p = self.alloc_cached(lender);
            if !p.is_null() {
                // SAFETY: a block handed out lies in a page in use of this heap.
                unsafe { (*Segment::page_of(Segment::of(p as usize), p as usize)).lent = true };
                return p;
            }
        }
        ptr::null_mut()
    }

    /// The block of big `class` this thread freed last into the cache (`block_cache`), handed
    /// out again, or null. A block that lost its free mark while cached was written after its
    /// free: reported, and never handed out (leaked, if the program goes on).
    #[inline(always)]
    pub(crate) fn alloc_cached(&mut self, class: usize) -> *mut u8 {
        let p = self.block_cache.pop(class);
        if p.is_null() {
            return p;
        }
        self.traffic.cached[class].add(u64::MAX);
        let page = Segment::page_of(Segment::of(p as usize), p as usize);
        // SAFETY: a cached block is a dead block of its page, which it keeps in use.
        unsafe {
            if crate::dram::fast::guard::FREE_MARK && !Block::take_mark(p.cast(), page) {
                return cached_mark_lost(p, page);
            }
            (*page).count_alloc();
        }
        p
    }

    /// Keeps address `p` of `page` (a big class's page of this heap), freed by this heap's
    /// thread, in the cache (`block_cache`) with the free mark, if it is a block start without
    /// the mark and the cache has room: false otherwise (the caller's exact test decides).
    ///
    /// # Safety
    /// `page` must be a page in use of this heap holding address `p`; the calling thread the
    /// heap's.
    #[cold]
    #[inline(never)]
    // Run only by programs that free blocks over 8 KiB (see `borrow_big`).
    #[link_section = ".text.tiermalloc_big"]
    pub unsafe fn free_cached(&mut self, page: *mut Page, p: *mut u8) -> bool {
        // SAFETY: per the contract; `p` is read only once it is known to start a block.
        unsafe {
            if !(*page).is_block_start(p)
                || (crate::dram::fast::guard::FREE_MARK && (*page).carries_mark(p))
            {
                return false;
            }
            let class = (*page).class as usize;
            if !self.block_cache.push(class, p) {
                return false;
            }
            Block::mark_free(p, page);
            self.traffic.cached[class].add(1);
        }
        true
    }

    /// Gives every cached block (`block_cache`) back to its page, as the owner's `free` would.
    #[inline]
    pub fn flush_block_cache(&mut self) {
        if !self.block_cache.is_empty() {
            self.flush_block_cache_bytes(usize::MAX);
        }
    }

    /// Gives cached blocks back to their pages until at least `bytes` went (or none is left).
    #[cold]
    #[inline(never)]
    // Run only by programs that free blocks over 8 KiB (see `borrow_big`).
    #[link_section = ".text.tiermalloc_big"]
    fn flush_block_cache_bytes(&mut self, bytes: usize) {
        let mut flushed = 0;
        while flushed < bytes {
            let Some((class, p)) = self.block_cache.pop_any() else {
                break;
            };
            flushed += class_size(class);
            self.traffic.cached[class].add(u64::MAX);
            let page = Segment::page_of(Segment::of(p as usize), p as usize);
            // SAFETY: a cached block is a dead block of its page, counted used there, of a
            // page of this heap (only the owner's frees are cached).
            unsafe {
                // Written after its free: reported as when it is handed out (`alloc_cached`),
                // not pushed, whose link and mark would hide the write.
                if crate::dram::fast::guard::FREE_MARK && !Block::is_marked(p.cast(), page) {
                    cached_mark_lost(p, page);
                    continue;
                }
                let settled = (*page).count_free();
                (*page).push_block(p);
                if !settled {
                    self.after_local_free(page);
                }
            }
        }
    }

    /// A larger class's page with a carved free block, for `class`'s next request, when a
    /// new page of `class` would touch one more OS page and the heap is young (the bounds of
    /// `lent_blocks`); counts the try and the slack. Out of line: the slow path's common case (a
    /// queued page with room) stays as short as before (callgrind, `sliding_window`).
    #[cold]
    #[inline(never)]
    fn lend_page(&mut self, class: usize) -> Option<*mut Page> {
        if self.lent_waste >= LEND_WASTE_MAX
            || usize::from(self.borrow_tries[class]) >= BORROW_TRIES_PER_CLASS
        {
            return None;
        }
        self.borrow_tries[class] += 1;
        // SAFETY: `current` has `CLASS_COUNT + 1` entries, this heap's pages or the empty
        // page (invariant).
        let (page, waste) = unsafe {
            lent_blocks::lender(
                class,
                &self.tables.current,
                LEND_WASTE_MAX - self.lent_waste,
            )
        }?;
        self.lent_waste += waste;
        // SAFETY: a page of this heap (`lender`).
        unsafe { (*page).lent = true };
        Some(page)
    }

    fn make_current(&mut self, class: usize, page: *mut Page) {
        if self.queues[class].first != page {
            // SAFETY: `page` is in this queue.
            unsafe {
                self.queues[class].remove(page);
                self.queues[class].push_front(page);
            }
        }
        self.set_current(class, page);
    }

    /// Moves `page`'s remote frees onto its free list, counting them (`Traffic::collected`).
    ///
    /// # Safety
    /// `page` must be a page of this heap.
    #[inline(always)]
    unsafe fn collect_remote(&mut self, page: *mut Page) {
        // SAFETY: per the contract.
        unsafe {
            if !(*page).remote.has_nodes() {
                return;
            }
            let collected = (*page).collect_remote();
            self.traffic.collected[(*page).class as usize].add(u64::from(collected));
        }
    }

    /// Makes `page` the page the fast paths of `class` pop from.
    /// Under `TIERMALLOC_SECURE=1` the tables stay on the empty page: every allocation takes
    /// the slow path, whose `pop_checked` tests each link before following it, while the
    /// default fast path pays nothing for that level.
    fn set_current(&mut self, class: usize, page: *mut Page) {
        let page = if crate::dram::fast::guard::secure() {
            Page::empty_page()
        } else {
            page
        };
        self.tables.current[class] = page;
    }

    /// Parks a page with no free block in `full`, flagging its remote list so the next remote
    /// free hands it back. If remote frees arrived meanwhile, collects them instead.
    ///
    /// # Safety
    /// `page` must be in its class queue and have no free block.
    unsafe fn move_to_full(&mut self, page: *mut Page) {
        // SAFETY: per the contract.
        unsafe {
            if !(*page).remote.try_flag() {
                self.collect_remote(page);
                return;
            }
            let class = (*page).class as usize;
            self.queues[class].remove(page);
            if self.tables.current[class] == page {
                self.set_current(class, Page::empty_page());
            }
            (*page).set_in_full(true);
            self.full.push_back(page);
        }
    }

    /// Called by the owner's `free` when a page became empty or was parked in `full`.
    ///
    /// # Safety
    /// `page` must be a page of this heap, owned by the calling thread.
    #[cold]
    #[inline(never)]
    pub unsafe fn after_local_free(&mut self, page: *mut Page) {
        // SAFETY: per the contract.
        unsafe {
            if (*page).in_full() {
                // Back to its queue, unless a remote free already claimed the hand-back.
                if !(*page).remote.try_unflag() {
                    return;
                }
                self.full.remove(page);
                (*page).set_in_full(false);
                self.queues[(*page).class as usize].push_back(page);
            }
            let class = (*page).class as usize;
            if (*page).blocks_used() == 0 && self.tables.current[class] != page {
                if big_page_kept_as_current(page, self.tables.current[class]) {
                    self.make_current(class, page);
                } else {
                    self.retire(page);
                }
            }
        }
    }

    /// Gives an empty page's slices back to its segment.
    ///
    /// # Safety
    /// `page` must be an empty page of this heap in its class queue.
    unsafe fn retire(&mut self, page: *mut Page) {
        // SAFETY: per the contract.
        unsafe {
            debug_assert!((*page).blocks_used() == 0 && !(*page).remote.has_nodes());
            let class = (*page).class as usize;
            self.queues[class].remove(page);
            if self.tables.current[class] == page {
                self.set_current(class, Page::empty_page());
            }
            self.traffic.retired_allocs[class].add((*page).allocs());
            let segment = Segment::of(page as usize);
            let bytes = (*segment).give_back(page);
            self.set_dirty(self.dirty_bytes + bytes);
            budget::PAGE_BYTES.add((bytes as u64).wrapping_neg());
            if (*segment).is_empty() {
                self.unlink_available(segment);
                if self.empty_count < EMPTY_SEGMENTS_MAX {
                    // Kept as it is, resident parts and all (counted in dirty_bytes).
                    (*segment).next = self.empty;
                    self.empty = segment;
                    self.empty_count += 1;
                } else {
                    self.release(segment);
                }
            } else if !(*segment).in_available {
                self.link_available(segment);
            }
        }
        if self.dirty_bytes > PURGE_THRESHOLD {
            self.consider_purge();
        }
    }

    /// Releases an empty segment of this heap that is on no list (`Segment::release`).
    ///
    /// # Safety
    /// As stated.
    unsafe fn release(&mut self, segment: *mut Segment) {
        // SAFETY: per the contract.
        unsafe {
            self.set_dirty(self.dirty_bytes - (*segment).dirty_bytes());
            Segment::release(segment);
        }
        self.segments_held -= 1;
        SEGMENT_BYTES.add((crate::chunk::CHUNK_SIZE as u64).wrapping_neg());
        SEGMENTS_RELEASED.add(1);
    }

    /// The decay: above `PURGE_HARD_MAX` dirty bytes, purges them all at once; otherwise opens a
    /// window of `PURGE_DELAY_NS`, and at its end purges the bytes above `PURGE_THRESHOLD` that
    /// no allocation took during it (`dirty_low`), then opens the next window if any remain.
    /// A window stays open to its end when the dirty bytes dip below the threshold meanwhile
    /// (it then purges nothing): opening one reads the CPU clock, a system call, which a heap
    /// whose dirty bytes hover at the threshold would otherwise make on every page it retires.
    #[cold]
    #[inline(never)]
    fn consider_purge(&mut self) {
        if self.dirty_bytes > PURGE_HARD_MAX {
            self.purge();
            return;
        }
        if !self.decay.is_open() {
            if self.dirty_bytes > PURGE_THRESHOLD {
                self.open_window();
            }
            return;
        }
        if !self.decay.expired() {
            return;
        }
        // The cached big blocks no allocation took during the window go back to their pages:
        // what they free counts as dirty from now, and is purged at the next end if nothing
        // takes it. Giving back every block at each end made a steady churn refault what it
        // used again (mix2, two threads: 2 500 minor faults against 1 700).
        let idle_cached = self.block_cache.take_low();
        if idle_cached != 0 {
            self.flush_block_cache_bytes(idle_cached);
        }
        let idle = self.dirty_low.saturating_sub(PURGE_THRESHOLD);
        if idle > 0 {
            self.purge_at_least(idle);
        }
        if self.dirty_bytes > PURGE_THRESHOLD {
            self.open_window();
        } else {
            self.decay.close();
        }
    }

    fn open_window(&mut self) {
        self.decay.open(PURGE_DELAY_NS, PURGE_DELAY_WALL_MAX_NS);
        self.dirty_low = self.dirty_bytes;
    }

    /// Gives the cached big blocks back to their pages, returns the memory of every free slice
    /// of this heap to the kernel, and unmaps every empty segment but one: the bytes purged.
    pub fn purge(&mut self) -> usize {
        self.flush_block_cache();
        self.flush_remote_batch();
        let purged = self.purge_at_least(usize::MAX);
        self.decay.close();
        purged
    }

    /// Purges whole segments until at least `bytes` went back to the kernel (or none is left):
    /// empty segments first (all but one unmapped), then those with free slices. Returns the
    /// bytes purged.
    fn purge_at_least(&mut self, bytes: usize) -> usize {
        let mut purged = 0;
        while purged < bytes && !self.empty.is_null() {
            let segment = self.empty;
            // SAFETY: list members are valid empty segments of this heap.
            unsafe {
                if self.empty_count > 1 {
                    self.empty = (*segment).next;
                    self.empty_count -= 1;
                    purged += (*segment).dirty_bytes();
                    self.release(segment);
                } else {
                    let n = (*segment).purge();
                    self.set_dirty(self.dirty_bytes - n);
                    purged += n;
                    break;
                }
            }
        }
        let mut segment = self.available;
        while purged < bytes && !segment.is_null() {
            // SAFETY: list members are valid segments of this heap.
            unsafe {
                let n = (*segment).purge();
                self.set_dirty(self.dirty_bytes - n);
                purged += n;
                segment = (*segment).next;
            }
        }
        self.dirty_low = self.dirty_low.min(self.dirty_bytes);
        purged
    }

    /// Cuts a page of `class` from `segment`, keeping `dirty_bytes` true.
    ///
    /// # Safety
    /// `segment` must be a segment of this heap.
    unsafe fn take_page_from(&mut self, segment: *mut Segment, class: usize) -> Option<*mut Page> {
        let n = slices_of_page(class);
        let huge = huge_pages::half_huge(self.segments_held, class_size(class));
        // SAFETY: per the contract.
        unsafe { self.take_counted(segment, |s| s.take_page(class, n, huge)) }
    }

    /// The page `take` cuts from `segment`, with `dirty_bytes` kept true: a half made huge
    /// adds its slices to the dirty ones (`Segment::take_page`), a page cut over dirty slices
    /// takes them off.
    ///
    /// # Safety
    /// `segment` must be a segment of this heap.
    #[inline(always)]
    unsafe fn take_counted(
        &mut self,
        segment: *mut Segment,
        take: impl FnOnce(&mut Segment) -> Option<*mut Page>,
    ) -> Option<*mut Page> {
        // SAFETY: per the contract.
        unsafe {
            let dirty_before = (*segment).dirty_bytes();
            let page = take(&mut *segment)?;
            self.set_dirty(self.dirty_bytes + (*segment).dirty_bytes() - dirty_before);
            self.dirty_low = self.dirty_low.min(self.dirty_bytes);
            Some(page)
        }
    }

    /// The first page `take` cuts from a segment of the available list (a segment it leaves
    /// without free slices leaves the list).
    #[inline(always)]
    fn cut_from_available(
        &mut self,
        mut take: impl FnMut(&mut Self, *mut Segment) -> Option<*mut Page>,
    ) -> Option<*mut Page> {
        let mut segment = self.available;
        while !segment.is_null() {
            // SAFETY: list members are valid segments of this heap.
            unsafe {
                if let Some(page) = take(self, segment) {
                    if (*segment).free_slices == 0 {
                        self.unlink_available(segment);
                    }
                    return Some(page);
                }
                segment = (*segment).next;
            }
        }
        None
    }

    /// A fresh page of `class`, counted in what DRAM holds; `None` when DRAM's `limit=`
    /// refuses it or memory runs out.
    fn new_page(&mut self, class: usize) -> Option<*mut Page> {
        // The heap's first page of the class (none since its last was retired): a request of
        // a size the program has not asked for lately, the moment to look at the other lists'
        // heads (every new page cost 0.13 instructions per pair on `sliding_window`).
        if crate::dram::fast::guard::DEFAULT_CHECKS && self.queues[class].first.is_null() {
            self.check_list_heads();
        }
        let bytes = slices_of_page(class) * SLICE_SIZE;
        if self.dirty_bytes < bytes {
            // Too few resident free slices for the page: fresh memory is about to be touched.
            // A big class's page holds 1-6 blocks, so a heap churning them cuts one every few
            // frees, and without huge halves (`huge_pages::HUGE_BLOCK_MAX`) its purged slices
            // leave it short each time: such cuts look once in `CARVES_PER_LOOK`, as carves do
            // (mix2, one thread: a look in 77 pairs, 18 instructions a pair).
            if lent_blocks::big(class) {
                // SAFETY: this heap's current pages, on its owner's thread.
                unsafe { self.idle.on_carve(&self.tables.current, class) };
            } else {
                self.give_back_idle(class);
            }
        }
        let page = if budget::admits(bytes as u64) {
            self.cut_page(class)
        } else {
            self.cut_held_page(class)
                .or_else(|| self.cut_page_after_purge(class, bytes))
        };
        if page.is_some() {
            budget::PAGE_BYTES.add(bytes as u64);
            crate::profile::reserve::observe(budget::held());
        }
        page
    }

    /// Sets `dirty_bytes`, keeping `budget::FREE_SLICE_BYTES` (every heap's) in step.
    #[inline]
    fn set_dirty(&mut self, bytes: usize) {
        budget::FREE_SLICE_BYTES.add((bytes as u64).wrapping_sub(self.dirty_bytes as u64));
        self.dirty_bytes = bytes;
    }

    /// `limit=` refused a page of `class` (`bytes`): gives back what counts against the
    /// limit without holding a block, the large cache's pages first, then this heap's free
    /// slices and its cached big blocks' pages (`block_cache`: a heap whose free slices were
    /// all taken may hold pages only for those), and cuts the page once it fits.
    #[cold]
    #[inline(never)]
    // Run only under DRAM's `limit=`: a section of its own keeps it out of the code every
    // process runs (`link/hot_text.ld`, which takes every other `dram` function).
    #[link_section = ".text.tiermalloc_limit"]
    fn cut_page_after_purge(&mut self, class: usize, bytes: usize) -> Option<*mut Page> {
        let fits = (crate::dram::large::release_cached() > 0 && budget::admits(bytes as u64))
            || ((self.dirty_bytes != 0 || !self.block_cache.is_empty())
                && self.purge() != 0
                && budget::admits(bytes as u64));
        if !fits {
            return None;
        }
        self.cut_page(class)
    }

    /// Cuts a page of `class` over slices of a huge half no page has taken yet, which DRAM
    /// holds already: the one page `limit=` admits when it would refuse a new one.
    #[cold]
    #[inline(never)]
    // Run only under `limit=` (see `cut_page_after_purge`).
    #[link_section = ".text.tiermalloc_limit"]
    fn cut_held_page(&mut self, class: usize) -> Option<*mut Page> {
        let n = slices_of_page(class);
        self.cut_from_available(|heap, segment| {
            // SAFETY: a segment of the available list, this heap's.
            unsafe { heap.take_counted(segment, |s| s.take_untaken_page(class, n)) }
        })
    }

    /// Cuts a page of `class` from an available segment, else from a new one.
    fn cut_page(&mut self, class: usize) -> Option<*mut Page> {
        // SAFETY: a segment of the available list, this heap's.
        let page = self.cut_from_available(|heap, s| unsafe { heap.take_page_from(s, class) });
        if page.is_some() {
            return page;
        }
        let segment = if self.empty.is_null() {
            let huge = huge_pages::half_huge(self.segments_held, class_size(class));
            let fresh = Segment::create(self as *mut Heap as usize, self.segment_tag, huge)?;
            self.segments_held += 1;
            // SAFETY: just created, ours: a huge first half's slices are dirty already.
            self.set_dirty(self.dirty_bytes + unsafe { (*fresh).dirty_bytes() });
            SEGMENT_BYTES.add(crate::chunk::CHUNK_SIZE as u64);
            fresh
        } else {
            let kept = self.empty;
            // SAFETY: the head of this heap's list of empty segments.
            self.empty = unsafe { (*kept).next };
            self.empty_count -= 1;
            kept
        };
        // SAFETY: an empty segment of ours.
        unsafe {
            let page = self.take_page_from(segment, class);
            debug_assert!(page.is_some());
            if (*segment).free_slices != 0 {
                self.link_available(segment);
            }
            page
        }
    }

    fn link_available(&mut self, segment: *mut Segment) {
        // SAFETY: `segment` is ours and on no list.
        unsafe {
            (*segment).prev = ptr::null_mut();
            (*segment).next = self.available;
            if !self.available.is_null() {
                (*self.available).prev = segment;
            }
            (*segment).in_available = true;
        }
        self.available = segment;
    }

    fn unlink_available(&mut self, segment: *mut Segment) {
        // SAFETY: `segment` is on this heap's list.
        unsafe {
            if !(*segment).in_available {
                return;
            }
            let (prev, next) = ((*segment).prev, (*segment).next);
            if prev.is_null() {
                self.available = next;
            } else {
                (*prev).next = next;
            }
            if !next.is_null() {
                (*next).prev = prev;
            }
            (*segment).in_available = false;
        }
    }

    /// Tidies a heap whose thread is leaving: collects remote frees, retires empty pages, and
    /// keeps its resident free slices if `POOLED_DIRTY_BUDGET` has room for them, else purges
    /// them. The heap keeps its pages for the next thread that adopts it.
    pub fn tidy_for_next_owner(&mut self) {
        // First: under `TIERMALLOC_SECURE=1` the quarantine and the chains may hold this
        // heap's own blocks.
        self.drain_quarantine();
        self.flush_remote_batch();
        self.flush_block_cache();
        self.take_delayed();
        for class in 0..CLASS_COUNT {
            self.set_current(class, Page::empty_page());
            let mut page = self.queues[class].first;
            while !page.is_null() {
                // SAFETY: queue members are valid pages of this heap.
                unsafe {
                    let next = (*page).next;
                    self.collect_remote(page);
                    if (*page).blocks_used() == 0 {
                        self.retire(page);
                    }
                    page = next;
                }
            }
        }
        let dirty = self.dirty_bytes;
        if POOLED_DIRTY.fetch_add(dirty, Ordering::Relaxed) + dirty <= POOLED_DIRTY_BUDGET {
            self.pooled_dirty = dirty;
        } else {
            POOLED_DIRTY.fetch_sub(dirty, Ordering::Relaxed);
            self.purge();
        }
    }

    /// Takes this heap's kept dirty bytes off the pool's budget (a thread adopts it).
    pub fn leave_pool(&mut self) {
        POOLED_DIRTY.fetch_sub(core::mem::take(&mut self.pooled_dirty), Ordering::Relaxed);
    }

    /// The next heap in the registry of all heaps.
    ///
    /// # Safety
    /// `heap` must be a registered heap.
    pub unsafe fn registry_next(heap: *const Heap) -> *mut Heap {
        // SAFETY: written once before the heap was published.
        unsafe { (*heap).registry_next }
    }

    /// Walks every list of every page (tests only).
    #[cfg(test)]
    pub fn check_invariants(&self) {
        assert_eq!(self.tables.current[ROUTED_CLASS], Page::empty_page());
        for size in 0..DIRECT_SLOTS {
            let class = if DIRECT_OFF.load(Ordering::Relaxed) {
                ROUTED_CLASS
            } else {
                crate::dram::fast::size_class::class_of(size)
            };
            assert_eq!(self.tables.direct[size] as usize, class, "size {size}");
        }
        for class in 0..CLASS_COUNT {
            let mut page = self.queues[class].first;
            if self.tables.current[class] != Page::empty_page() {
                assert_eq!(self.tables.current[class], page);
            }
            while !page.is_null() {
                // SAFETY: queue members are valid pages of this heap.
                unsafe {
                    assert_eq!((*page).class as usize, class);
                    assert!(!(*page).in_full());
                    (*page).check_invariants();
                    page = (*page).next;
                }
            }
        }
    }
}

/// A block out of the cache (`block_cache`) without its free mark: written after its free, or
/// handed out already. Its word is put back and the misuse reported; null (the block is leaked,
/// if the program goes on).
///
/// # Safety
/// `p` must be a block of `page` whose `Block::take_mark` just failed.
#[cold]
#[inline(never)]
// Run only by programs that allocate blocks over 8 KiB (see `Heap::borrow_big`).
#[link_section = ".text.tiermalloc_big"]
unsafe fn cached_mark_lost(p: *mut u8, page: *mut Page) -> *mut u8 {
    // SAFETY: per the contract.
    unsafe { Block::restore_mark_word(p.cast(), page) };
    crate::misuse::report("malloc", p, crate::misuse::Misuse::FreeMarkLost);
    ptr::null_mut()
}

/// Whether an empty page of a big class (blocks over 8 KiB, a few to a page: `page_slices`)
/// becomes its class's current page instead of being retired: when the current page has no
/// block to give (full, or the empty stand-in). A program freeing and allocating blocks of one
/// big class in turn then reuses the page instead of retiring it and cutting a new one at
/// its next request; each big class keeps at most one empty page this way, as a class's
/// empty current page always was.
///
/// # Safety
/// `page` and `current` must be valid pages (`current` may be the empty page).
#[inline]
unsafe fn big_page_kept_as_current(page: *const Page, current: *const Page) -> bool {
    // SAFETY: per the contract.
    unsafe {
        (*page).block_size as usize > SLICE_SIZE / 8
            && (*current).free.is_null()
            && (*current).capacity >= (*current).reserved
            && !(*page).remote.has_nodes()
    }
}

/// The slices of a new page of `class`: `page_slices`, and one more under
/// `TIERMALLOC_SECURE=1` for a page of one block that fills its slices, whose last OS page
/// the guard takes (`Segment::close_tail`): the block needs room beside it.
#[inline]
fn slices_of_page(class: usize) -> usize {
    let n = page_slices(class);
    if crate::dram::fast::guard::secure()
        && n * SLICE_SIZE - class_size(class) < crate::os::PAGE_SIZE
    {
        n + 1
    } else {
        n
    }
}
