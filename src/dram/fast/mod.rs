//! The DRAM small-object path: size classes, pages carved from segments, thread heaps, and
//! cross-thread frees. `alloc` and `free` here are the fast paths every `malloc` runs.
//!
//! The fast paths take no lock and do no atomic read-modify-write: `alloc` pops the current
//! page's free list of the calling thread's heap; `free` of a block whose segment belongs to
//! the calling thread's heap pushes it back. A block freed by another thread joins that thread's
//! chain for its page (`remote_batch`), which goes onto the page's remote list with one CAS.

pub mod binding;
pub mod block_cache;
pub mod claim;
pub mod decay_clock;
pub mod guard;
pub mod heap;
pub mod idle_pages;
pub mod lent_blocks;
pub mod page;
pub mod quarantine;
pub mod remote_batch;
pub mod segment;
pub mod size_class;
pub mod traffic;

use heap::PageTables;
use page::Page;
use segment::Segment;
use size_class::class_of;
use traffic::{UNBOUND_FREED_BYTES, UNBOUND_FREES};

/// The small-block traffic figures of every heap (`traffic::totals` over the heaps
/// `binding` knows).
pub fn traffic_totals() -> traffic::Totals {
    traffic::totals(|each| binding::for_each_traffic(each))
}

/// A block of class `class` (≤ `SMALL_MAX` bytes); null when out of memory.
#[inline(always)]
pub fn alloc_class(class: usize) -> *mut u8 {
    debug_assert!(class < size_class::CLASS_COUNT);
    // SAFETY: `class` is a class index (callers get it from `size_class`).
    let tables = binding::tables();
    // SAFETY: as in `pop_or_slow`; blocks of this path are tested as they are handed out
    // (`Page::pop_validated`).
    unsafe {
        let page = *(*tables).current.get_unchecked(class);
        let p = (*page).pop_validated();
        if !p.is_null() {
            return p;
        }
        if lent_blocks::big(class) && !binding::is_sentinel(tables) {
            // Not a sentinel, so this thread's heap.
            let p = (*tables.cast::<heap::Heap>()).borrow_big(class);
            if !p.is_null() {
                return p;
            }
        }
    }
    alloc_slow(tables, class)
}

/// A block of at least `size` bytes (`size <= SMALL_MAX`); null when out of memory.
#[inline(always)]
pub fn alloc(size: usize) -> *mut u8 {
    if size <= size_class::DIRECT_MAX {
        // SAFETY: `size < DIRECT_SLOTS`, and `direct` holds class indices of `current`.
        pop_or_slow(
            || class_of(size),
            |tables| unsafe { direct_page(tables, size) },
        )
    } else {
        alloc_class(class_of(size))
    }
}

/// A block for a plain request of `size` bytes, `BIG_MIN < size <= SMALL_MAX` (a big class's),
/// after `try_pop` missed: the heap's cache of freed big blocks (`block_cache`) first, without
/// the current page's pop and the calls of `DramTier::alloc` and `borrow_big` (mix2, one thread:
/// most big requests are served there); `alloc_class` when the cache has none. Null when out
/// of memory.
#[cold]
#[inline(never)]
// Run only by programs that ask for blocks over 8 KiB (see `Heap::borrow_big`).
#[link_section = ".text.tiermalloc_big"]
pub fn alloc_big(size: usize) -> *mut u8 {
    debug_assert!(size > size_class::BIG_MIN && size <= size_class::SMALL_MAX);
    let class = class_of(size);
    let tables = binding::tables();
    if !binding::is_sentinel(tables) {
        // SAFETY: not a sentinel, so this thread's heap.
        let p = unsafe { (*tables.cast::<heap::Heap>()).alloc_cached(class) };
        if !p.is_null() {
            return p;
        }
    }
    alloc_class(class)
}

/// Sends every plain request through the general path (device tiers are in use): `try_pop`
/// fails from now on, in the calling thread at once and in every heap bound later.
pub fn route_all_requests() {
    heap::turn_direct_off(binding::current());
}

/// Whether `route_all_requests` was called.
#[inline(always)]
pub fn direct_off() -> bool {
    heap::direct_off()
}

/// After `try_pop(size)` missed on `size <= DIRECT_MAX` (no heap yet, or an empty page): the
/// slow path of `size`'s class at once, without a second pop of the page found empty.
#[inline]
pub fn alloc_after_miss(size: usize) -> *mut u8 {
    debug_assert!(size <= size_class::DIRECT_MAX);
    alloc_slow(binding::tables(), class_of(size))
}

/// The fastest path, for `malloc`: a block for a request of up to `DIRECT_MAX` bytes from the
/// current page, or null when anything more is needed (a bigger request, no heap yet, an
/// empty page, routing on), which the caller's general path then handles.
#[inline(always)]
pub fn try_pop(size: usize) -> *mut u8 {
    if size > size_class::DIRECT_MAX {
        return core::ptr::null_mut();
    }
    let tables = binding::tables();
    // SAFETY: `tables` are this thread's heap's or a sentinel's; `size <= DIRECT_MAX`;
    // `current` entries are valid pages or the empty page, whose pop fails, so a block
    // comes only from a heap's page and `tables` is then that heap.
    unsafe { (*direct_page(tables, size)).pop() }
}

/// The current page for requests of `size` bytes (`size <= DIRECT_MAX`) in `tables`: the
/// class from `direct`, the page from `current` (two loads).
///
/// # Safety
/// `tables` must be a heap's or a sentinel's tables and `size <= DIRECT_MAX`.
#[inline(always)]
unsafe fn direct_page(tables: *mut PageTables, size: usize) -> *mut Page {
    // SAFETY: `size < DIRECT_SLOTS`; `direct` bytes are classes or `ROUTED_CLASS`, all
    // indices of `current`.
    unsafe {
        let class = *(*tables).direct.get_unchecked(size);
        *(*tables).current.get_unchecked(class as usize)
    }
}

/// The fast path: pops a block from the current page `page_of` picks in this thread's page
/// tables; the slow path (which needs the class, computed only then) when there is none.
#[inline(always)]
fn pop_or_slow(
    class: impl FnOnce() -> usize,
    page_of: impl FnOnce(*mut PageTables) -> *mut Page,
) -> *mut u8 {
    let tables = binding::tables();
    // SAFETY: as in `try_pop`: the tables are this thread's heap's or a sentinel's, and a
    // block comes only from a heap's page.
    unsafe {
        let page = page_of(tables);
        let p = (*page).pop();
        if !p.is_null() {
            return p;
        }
    }
    alloc_slow(tables, class())
}

/// The slow path of `pop_or_slow`: the heap's, or binding one first.
#[inline(always)]
fn alloc_slow(tables: *mut PageTables, class: usize) -> *mut u8 {
    if binding::is_sentinel(tables) {
        return alloc_unbound(class);
    }
    // SAFETY: not a sentinel, so this thread's heap.
    unsafe { (*tables.cast::<heap::Heap>()).alloc_slow(class) }
}

#[cold]
#[inline(never)]
fn alloc_unbound(class: usize) -> *mut u8 {
    let heap = binding::bind();
    if !heap.is_null() {
        // SAFETY: just bound to this thread.
        return unsafe { (*heap).alloc_slow(class) };
    }
    binding::with_borrowed_heap(|heap| heap.alloc_slow(class)).unwrap_or(core::ptr::null_mut())
}

/// Tests the heads of the calling thread's current free lists (`Heap::check_list_heads`), if
/// it has a heap: what a large allocation asks first.
pub fn check_list_heads() {
    let heap = binding::current();
    if !heap.is_null() {
        // SAFETY: this thread's own heap.
        unsafe { (*heap).check_list_heads() };
    }
}

/// Frees block `p` of a segment (the page map said so).
///
/// # Safety
/// `p` must be a live block handed out by `alloc` (any thread).
#[inline(always)]
pub unsafe fn free(p: *mut u8) {
    // SAFETY: forwarded.
    unsafe { free_in(Segment::of(p as usize), p) }
}

/// The segment at chunk `index` (`pagemap::block_chunk_index`, whose entry said a segment):
/// the index shifted back, one instruction instead of masking `p`.
///
/// # Safety
/// `index` is the chunk index of a segment.
#[inline(always)]
unsafe fn segment_of_chunk(index: isize) -> *mut Segment {
    #[cfg(target_arch = "x86_64")]
    let segment = {
        let mut segment = index as usize;
        // SAFETY: a shift of a register, nothing else. Written as an instruction because the
        // compiler otherwise masks `p - 1` instead, which costs a copy more.
        unsafe {
            core::arch::asm!("shl {0}, {shift}", inout(reg) segment,
                shift = const crate::chunk::CHUNK_SHIFT, options(pure, nomem, nostack));
        }
        segment
    };
    #[cfg(not(target_arch = "x86_64"))]
    let segment = (index as usize) << crate::chunk::CHUNK_SHIFT;
    segment as *mut Segment
}

/// `free` of block `p` of the segment at chunk `index`, by the thread of the segment's owner
/// heap, which the page map's entry said (`pagemap::is_own_segment_at_index` with
/// `thread_tag`): no owner test follows.
///
/// # Safety
/// As for `free`; `index` is the chunk index of `p`'s segment, whose owner is the calling
/// thread's heap.
#[inline(always)]
pub unsafe fn free_own_in_chunk(index: isize, p: *mut u8) {
    // SAFETY: forwarded.
    let segment = unsafe { segment_of_chunk(index) };
    // SAFETY: forwarded; the calling thread owns the segment (contract).
    unsafe { free_tested(segment, p, |page| free_local(segment, page, p)) }
}

/// `free` of block `p` of the segment at chunk `index`, whose entry holds the tag of another
/// heap than the calling thread's: `p` tested as by `free_in`, then `free_remote`.
///
/// Inline in a release build (out of line, about 2.5 instructions more a remote free: prodcons
/// +1.3 % on callgrind); out of line in a build with debug assertions, whose checks would otherwise
/// copy it into `free` and every `operator delete` and push the code every process runs past
/// its 64 KiB window (`link/hot_text.ld`, `tests/hot_text.rs`, which the test profile checks).
///
/// # Safety
/// As for `free`; `index` is the chunk index of `p`'s segment, which another heap owns.
#[cfg_attr(debug_assertions, inline(never))]
#[cfg_attr(not(debug_assertions), inline(always))]
pub unsafe fn free_remote_in_chunk(index: isize, p: *mut u8) {
    // SAFETY: forwarded.
    let segment = unsafe { segment_of_chunk(index) };
    // `free_remote` tests no block start itself (it would read the owner's hot line).
    // SAFETY: forwarded.
    unsafe { free_tested(segment, p, |page| free_remote(p, segment, page)) }
}

/// `free` of block `p` of the segment at chunk `index`, whose entry holds the tag heaps share
/// (`pagemap::SHARED_SEGMENT_TAG`): the owners are compared. Only heaps past the last tag and
/// `TIERMALLOC_SECURE=1` come here: `tier` calls it from an out-of-line function outside the
/// code every process runs (`link/hot_text.ld`).
///
/// # Safety
/// As for `free`; `index` is the chunk index of `p`'s segment.
#[inline(always)]
pub unsafe fn free_in_chunk(index: isize, p: *mut u8) {
    // SAFETY: forwarded.
    unsafe { free_in(segment_of_chunk(index), p) }
}

/// The tag this thread's `free` looks for in the page map (`pagemap::is_own_segment_at_index`):
/// its heap's segment tag, or one that no entry holds.
#[inline(always)]
pub fn thread_tag() -> u8 {
    binding::thread_tag()
}

/// `free` of block `p` of `segment`.
///
/// # Safety
/// As for `free`; `segment` is the segment holding `p`.
#[inline(always)]
unsafe fn free_in(segment: *mut Segment, p: *mut u8) {
    // SAFETY: forwarded.
    unsafe { free_tested(segment, p, |page| free_block(segment, page, p)) }
}

/// `free`'s block-start test (`Page::suspect`) of `p` in `segment`, then `free_suspect` for an
/// address that fails it and `then` with its page for one that passes: what every way into a
/// segment's `free` does first.
///
/// # Safety
/// As for `free`; `segment` is the segment holding `p`, and `then` may be given a block of it
/// that passed the test.
#[inline(always)]
unsafe fn free_tested(segment: *mut Segment, p: *mut u8, then: impl FnOnce(*mut Page)) {
    let page = Segment::page_of(segment, p as usize);
    // SAFETY: `page` is a page of this segment or the empty page (never null).
    if unsafe { (*page).suspect(p) } {
        // SAFETY: forwarded.
        return unsafe { free_suspect(p, segment, page) };
    }
    then(page)
}

/// Frees block `p` of `page` in `segment`: pushed on the page's own list by the owner's
/// thread, on its remote list by any other (whose path tests `p` exactly first).
///
/// The owner's path counts the free first (`Page::count_free`, which fails for the empty page:
/// a slice with no page is never read), then tests the free mark: a block that carries it is
/// suspected of a double free (`free_counted_suspect`).
///
/// # Safety
/// `p` must be an address in `page`'s slices (`page` the empty page for a slice with no page),
/// handed to `free` by the program.
#[inline(always)]
unsafe fn free_block(segment: *mut Segment, page: *mut Page, p: *mut u8) {
    // SAFETY: `segment` is a live segment (page map); its `owner` never changes. It is
    // compared in memory and read again on the remote path (one instruction less here).
    if unsafe { (*segment).owner } == binding::slot() {
        // SAFETY: forwarded; the calling thread owns the segment.
        unsafe { free_local(segment, page, p) }
    } else {
        // SAFETY: forwarded.
        unsafe { free_remote(p, segment, page) }
    }
}

/// `free_block` by the thread of the segment's owner heap: counted, tested for the free mark,
/// pushed on the page's own list.
///
/// # Safety
/// As for `free_block`, and the calling thread's heap owns `segment`.
#[inline(always)]
unsafe fn free_local(segment: *mut Segment, page: *mut Page, p: *mut u8) {
    // SAFETY: the calling thread owns the heap and so the page; `p` lies in the page's
    // slices, readable once the count says the page is in use (16 bytes: a block start,
    // or an incorrect program's other address there, see `guard`).
    unsafe {
        if !(*page).count_free() {
            return free_counted_cold(segment, page, p, binding::slot() as *mut heap::Heap);
        }
        if guard::FREE_MARK && (*page).carries_mark(p) {
            return free_counted_suspect(p, segment, page);
        }
        (*page).push_block(p);
    }
}

/// The owner's free counted (`Page::count_free`) and the page needs more than the push: it is
/// no page in use (a slice with no page: reported, the count set back to 0), or the block is
/// suspect, or the page became empty or is parked in `full` (`Heap::after_local_free`).
///
/// # Safety
/// As for `free_block`, after `count_free` returned false; `owner` is the calling thread's heap.
#[cold]
#[inline(never)]
unsafe fn free_counted_cold(
    segment: *mut Segment,
    page: *mut Page,
    p: *mut u8,
    owner: *mut heap::Heap,
) {
    // SAFETY: per the contract.
    unsafe {
        if (*page).block_size == 0 {
            Page::reset_empty_count(page);
            return crate::misuse::report("free", p, crate::misuse::Misuse::NotABlockStart);
        }
        if guard::FREE_MARK && (*page).carries_mark(p) {
            return free_counted_suspect(p, segment, page);
        }
        // The count fell below zero (it then reads as `IN_FULL` with a count past `capacity`):
        // an invalid pointer into this page was taken earlier (see `guard`). Put back and
        // reported here, before `after_local_free` takes the page for one parked in `full`.
        if (*page).blocks_used() > (*page).capacity {
            (*page).uncount_free();
            return crate::misuse::report("free", p, crate::misuse::Misuse::MoreFreesThanBlocks);
        }
        (*page).push_block(p);
        (*owner).after_local_free(page);
    }
}

/// The owner's free counted, and `p` carries the free mark: the count is put back and
/// `free_suspect` decides.
///
/// # Safety
/// As for `free_counted_cold`.
#[cold]
#[inline(never)]
unsafe fn free_counted_suspect(p: *mut u8, segment: *mut Segment, page: *mut Page) {
    // SAFETY: per the contract.
    unsafe {
        (*page).uncount_free();
        free_suspect(p, segment, page)
    }
}

/// The rare case of `free`: `p` is not a block start, or its block carries the free mark.
/// Frees it if it is a live block after all (program data that equals the mark); otherwise
/// reports the misuse (see `misuse`).
///
/// # Safety
/// `page` must be the descriptor (or the empty page) that `segment` gives for `p`.
#[cold]
#[inline(never)]
unsafe fn free_suspect(p: *mut u8, segment: *mut Segment, page: *mut Page) {
    // A big class's block (whose page the fast test always sends here) freed by its owner's
    // thread goes to the heap's cache if it is a live block start with room there.
    // SAFETY: `page` is a descriptor or the empty page (block size 0); `segment` is live and
    // its `owner` never changes: equal to the thread's word, it is the thread's heap.
    if unsafe {
        block_cache::caches_size((*page).block_size)
            && (*segment).owner == binding::slot()
            && (*(binding::slot() as *mut heap::Heap)).free_cached(page, p)
    } {
        return;
    }
    // SAFETY: forwarded.
    match unsafe { check_block(page, p) } {
        // SAFETY: a live block of `page`, whose data equalled the mark: cleared, so that the
        // remote path's claim (`claim`) does not take it for a raced double free.
        Ok(()) => unsafe {
            page::Block::tag_of(p).write(0);
            free_block(segment, page, p)
        },
        Err(misuse) => crate::misuse::report("free", p, misuse),
    }
}

/// Whether `p`, in a segment, is a live block: `Err` says what it is instead.
///
/// # Safety
/// `page` must be the descriptor (or the empty page) of the slice that holds `p`.
unsafe fn check_block(page: *mut Page, p: *mut u8) -> Result<(), crate::misuse::Misuse> {
    // SAFETY: a page descriptor of a live segment, or the empty page (contract); `p` is a
    // block start of it before the block is read.
    unsafe {
        if !(*page).is_block_start(p) {
            return Err(crate::misuse::Misuse::NotABlockStart);
        }
        // Looked for in the order blocks move: claimed by a free, quarantined, gathered in a
        // batch, on the page's lists (`claim`).
        if (*page).carries_mark(p)
            && (claim::being_freed(p)
                || waits_in_a_quarantine(p)
                || waits_in_a_cache(page, p)
                || waits_in_a_batch(page, p)
                || (*page).holds_free(p))
        {
            return Err(crate::misuse::Misuse::DoubleFree);
        }
    }
    Ok(())
}

/// Whether block `p` of `page` waits in a chain of gathered remote frees of any heap (see
/// `remote_batch::RemoteBatch::holds`).
///
/// # Safety
/// `page` must be the page in use that holds `p`.
#[cold]
unsafe fn waits_in_a_batch(page: *mut Page, p: *mut u8) -> bool {
    binding::any_heap(|heap| {
        // SAFETY: registered heaps live forever; forwarded.
        unsafe {
            remote_batch::RemoteBatch::holds(core::ptr::addr_of!((*heap).remote_batch), page, p)
        }
    })
}

/// Whether block `p` of `page` waits in the `block_cache` of any heap.
///
/// # Safety
/// `page` must be the page in use that holds `p`.
#[cold]
// Asked only of blocks over 8 KiB (see `block_cache`): out of the code every process runs.
#[link_section = ".text.tiermalloc_big"]
unsafe fn waits_in_a_cache(page: *mut Page, p: *mut u8) -> bool {
    // SAFETY: per the contract.
    let (size, class) = unsafe { ((*page).block_size, (*page).class as usize) };
    block_cache::caches_size(size)
        && binding::any_heap(|heap| {
            // SAFETY: registered heaps live forever; forwarded.
            unsafe {
                block_cache::BlockCache::holds(core::ptr::addr_of!((*heap).block_cache), class, p)
            }
        })
}

/// Whether block `p` waits in the quarantine of any heap (`TIERMALLOC_SECURE=1` only; see
/// `quarantine::Quarantine::holds`).
#[cold]
fn waits_in_a_quarantine(p: *mut u8) -> bool {
    if !guard::secure() {
        return false;
    }
    binding::any_heap(|heap| {
        // SAFETY: registered heaps live forever; forwarded.
        unsafe { quarantine::Quarantine::holds(core::ptr::addr_of!((*heap).quarantine), p) }
    })
}

/// Whether small block `p` (the page map says a segment holds it) is live; `realloc` asks
/// before it reuses or copies a block. Reports the misuse and returns false otherwise.
///
/// # Safety
/// The page map must tag `p`'s chunk `Segment`.
pub unsafe fn check_live(call: &str, p: *mut u8) -> bool {
    let page = Segment::page_of(Segment::of(p as usize), p as usize);
    // SAFETY: as in `free`.
    match unsafe { check_block(page, p) } {
        Ok(()) => true,
        Err(misuse) => {
            crate::misuse::report(call, p, misuse);
            false
        }
    }
}

/// A free from a thread that does not own `p`'s segment (and every free under
/// `TIERMALLOC_SECURE=1`): `p` is a tested block start (see below), whose free mark is
/// looked at, then claimed (`claim`).
///
/// What is rare (a block carrying the mark, a misuse to report) is out of line, so that this
/// function calls nothing on its way and saves one register, as a build without checks does
/// (callgrind on `prodcons`: 6 instructions per remote free; BENCHMARKS.md, "Session 11,
/// branch remote").
///
/// # Safety
/// `segment` is a live segment and `page` the descriptor of `p`'s page in it (or the empty
/// page); `p` passed an exact block-start test and is not used after this.
#[cold]
#[inline(never)]
unsafe fn free_remote(p: *mut u8, segment: *mut Segment, page: *mut Page) {
    // Every way here passed an exact block-start test already: `free_in`'s `Page::suspect`
    // (exact for a one-slice page), or `free_suspect`'s `check_block` (a longer page, or a
    // one-slice page's suspect address). Testing again here read `Page::start`, on the cache
    // line of the owner's `free` and `used`: on `prodcons` that shared line was most of what
    // the remote path cost over a build without checks (BENCHMARKS.md, "Session 11, branch
    // remote"). Only a build without `suspect` (a measurement cfg) tests here.
    // SAFETY: a page descriptor of a live segment, or the empty page, which accepts nothing;
    // `p` is read only once it is known to start a block of it.
    if guard::DEFAULT_CHECKS && !guard::BLOCK_START_CHECK && unsafe { !(*page).is_block_start(p) } {
        return free_misuse(p, crate::misuse::Misuse::NotABlockStart);
    }
    // A live block whose data equals the free mark is told from a freed one before the claim
    // (which takes a mark already there for another free's): `free_suspect` looks where freed
    // blocks wait, and clears program data before the free comes back here.
    // SAFETY: as above.
    if guard::FREE_MARK && unsafe { (*page).carries_mark(p) } {
        // SAFETY: forwarded.
        return unsafe { free_suspect(p, segment, page) };
    }
    // SAFETY: a live segment; `owner_heap` drops the secure level's tag.
    let owner = unsafe { (*segment).owner_heap() } as *mut heap::Heap;
    let mine = binding::current();
    if mine.is_null() {
        // SAFETY: forwarded.
        return unsafe { free_remote_unbound(page, segment, p) };
    }
    // SAFETY: this thread's own heap; `page` is valid. Binding a heap is kept out of this
    // function so that it calls nothing and saves no registers (cachegrind on prodcons: 10
    // fewer instructions per remote free). The claim swapped the free mark in: the block
    // goes on marked (`Heap::free_remote_block`).
    unsafe {
        if !claim::claim(mine, page, p) {
            return free_twice(p);
        }
        if (*segment).secure() {
            (*mine).free_quarantined(page, p);
        } else {
            (*mine).free_remote_block(page, owner, p);
        }
        claim::release(mine);
    }
}

/// Reports `free(p)`'s misuse, out of the remote path's line (its arguments would take a
/// stack frame there).
#[cold]
#[inline(never)]
fn free_misuse(p: *mut u8, misuse: crate::misuse::Misuse) {
    crate::misuse::report("free", p, misuse)
}

/// `free_misuse` of a double free, whose one argument passes in a register (a `Misuse` is
/// passed by reference, which took the remote path a stack frame).
#[cold]
#[inline(never)]
fn free_twice(p: *mut u8) {
    free_misuse(p, crate::misuse::Misuse::DoubleFree)
}

/// `free_remote` for a thread without a heap.
///
/// # Safety
/// As for `free_remote`.
#[cold]
#[inline(never)]
unsafe fn free_remote_unbound(page: *mut Page, segment: *mut Segment, p: *mut u8) {
    // SAFETY: `page` and `segment` are valid.
    let (class, owner) = unsafe {
        (
            (*page).class as usize,
            (*segment).owner_heap() as *mut heap::Heap,
        )
    };
    // A thread that only frees (a consumer) gets a heap too, for its counters: the shared
    // ones below would be written by every such thread on every free (measured: two
    // consumers of xmalloc-test spent 80% of their time on those two atomics).
    let mine = binding::bind();
    if mine.is_null() {
        UNBOUND_FREES.add(1);
        UNBOUND_FREED_BYTES.add(size_class::class_size(class) as u64);
        // SAFETY: a dead block of `page`, not claimed (no heap to publish the claim in).
        unsafe { page::Block::mark_free(p, page) };
    } else {
        // SAFETY: this thread's own heap; a live segment.
        unsafe {
            if !claim::claim(mine, page, p) {
                return free_twice(p);
            }
            if (*segment).secure() {
                (*mine).free_quarantined(page, p);
                return claim::release(mine);
            }
            (*mine).traffic.on_remote_free(class);
        }
    }
    // SAFETY: forwarded; the claim (if any) ends once the block is on the list.
    unsafe {
        heap::Heap::push_remote(page, owner, p);
        if !mine.is_null() {
            claim::release(mine);
        }
    }
}

/// The usable size of block `p` of a segment.
///
/// # Safety
/// `p` must be a block of a live segment.
#[inline]
pub unsafe fn usable_size(p: *mut u8) -> usize {
    let segment = Segment::of(p as usize);
    // SAFETY: per the contract.
    unsafe { (*Segment::page_of(segment, p as usize)).block_size as usize }
}

/// Whether `p`'s page lent blocks to smaller classes (`lent_blocks`): then `p` may hold up to
/// `LEND_RATIO` times what it was requested with.
///
/// # Safety
/// As `usable_size`.
pub unsafe fn may_hold_a_lent_block(p: *mut u8) -> bool {
    let segment = Segment::of(p as usize);
    // SAFETY: per the contract.
    unsafe { (*Segment::page_of(segment, p as usize)).lent }
}

#[cfg(test)]
mod tag_tests;

#[cfg(test)]
mod block_cache_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    /// Allocates and frees through this thread's heap and checks every page's lists.
    #[test]
    fn pages_keep_their_invariants_through_churn() {
        let mut live: Vec<(*mut u8, usize)> = Vec::new();
        let mut rng = Rng(12345);
        for round in 0..200_000 {
            let seed = rng.next();
            if live.len() > 3000 || (seed >> 40) % 3 == 0 && !live.is_empty() {
                let i = (seed >> 20) as usize % live.len();
                let (p, size) = live.swap_remove(i);
                // SAFETY: a live block of `size` bytes we filled below.
                unsafe {
                    assert_eq!(*p.add(size - 1), size as u8, "round {round}");
                    free(p);
                }
            } else {
                let size = 1 + (seed >> 33) as usize % if seed % 7 == 0 { 70_000 } else { 600 };
                let p = alloc(size);
                assert!(!p.is_null());
                // SAFETY: the block holds at least `size` bytes.
                unsafe {
                    assert!(usable_size(p) >= size);
                    p.add(size - 1).write(size as u8);
                }
                live.push((p, size));
            }
        }
        let heap = binding::current();
        // SAFETY: this thread's heap, not used concurrently.
        unsafe { (*heap).check_invariants() };
        for (p, _) in live {
            // SAFETY: live blocks of ours.
            unsafe { free(p) };
        }
        // SAFETY: as above.
        unsafe { (*heap).check_invariants() };
    }

    /// Remote frees of live blocks whose second word equals their page's free mark (program
    /// data can), so that each one walks the owner's lists while the owner pops, pushes,
    /// retires pages and releases segments: no fault, and no live block taken for a double
    /// free (which would abort the test process).
    #[test]
    fn suspect_remote_frees_race_the_owner_safely() {
        use std::sync::mpsc;
        let (to_remote, from_owner) = mpsc::sync_channel::<Vec<usize>>(4);
        let remote = std::thread::spawn(move || {
            for batch in from_owner {
                for p in batch {
                    let p = p as *mut u8;
                    // SAFETY: a live block handed over by the owner; its page is live with it.
                    unsafe {
                        let page = Segment::page_of(Segment::of(p as usize), p as usize);
                        page::Block::mark_free(p, page);
                        free(p);
                    }
                }
            }
        });
        let mut rng = Rng(77);
        for round in 0..1000 {
            let size = 16 + (rng.next() % 8) as usize * 48;
            let batch: Vec<usize> = (0..400).map(|_| alloc(size) as usize).collect();
            // Churn of the owner's lists and pages while the remote thread walks them.
            // Each churn block's first word gets data that decodes to the segment's last
            // slice (never used by a page here, so PROT_NONE): a walk that followed any
            // address inside the segment would fault on it.
            let churn: Vec<*mut u8> = (0..2000)
                .map(|i| {
                    let p = alloc(size + i % 3 * 16);
                    let far = (p as usize & !(crate::chunk::CHUNK_SIZE - 1))
                        + crate::chunk::CHUNK_SIZE
                        - 64;
                    // SAFETY: a live block of at least 16 bytes.
                    unsafe { (p as *mut usize).write(guard::encode_global(far)) };
                    p
                })
                .collect();
            to_remote.send(batch).unwrap();
            for p in churn {
                // SAFETY: live blocks of ours.
                unsafe { free(p) };
            }
            if round % 50 == 0 {
                // SAFETY: this thread's heap, used by no other thread right now.
                unsafe { (*binding::current()).check_invariants() };
            }
        }
        drop(to_remote);
        remote.join().unwrap();
    }

    #[test]
    fn remote_frees_reach_the_owner() {
        let blocks: Vec<usize> = (0..10_000).map(|i| alloc(16 + i % 200) as usize).collect();
        std::thread::spawn(move || {
            for p in blocks {
                // SAFETY: live blocks of the other thread's heap.
                unsafe { free(p as *mut u8) };
            }
        })
        .join()
        .unwrap();
        // Allocating again collects the remote frees; the heap's lists must stay consistent.
        let again: Vec<*mut u8> = (0..10_000).map(|i| alloc(16 + i % 200)).collect();
        // SAFETY: this thread's heap.
        unsafe { (*binding::current()).check_invariants() };
        for p in again {
            // SAFETY: live blocks of ours.
            unsafe { free(p) };
        }
    }
}
