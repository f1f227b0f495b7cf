//! Pages: runs of slices inside a segment, each cut into blocks of one size class, and the
//! free lists that hand those blocks out.
//!
//! A page has two lists. `free` belongs to the owning heap's thread: `malloc` pops from it and
//! a `free` by the owner pushes onto it, with no atomics. `remote` takes blocks freed by other
//! threads (many producers, one consumer; see `lockfree::remote_list`); the owner moves it into
//! `free` when `free` runs dry. Blocks past `capacity` have never been handed out and are carved
//! a little at a time (`extend`), so a fresh page touches memory only as it fills.

use crate::dram::fast::block_cache;
use crate::dram::fast::guard;
use crate::dram::fast::size_class::{class_size, SLICE_SIZE};
use crate::lockfree::remote_list::{Link, RemoteList};
use crate::os::PAGE_SIZE;
use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering};

/// A free block (every class holds at least these 16 bytes): its first word links to the next
/// free block, encoded (`guard::encode`) under `TIERMALLOC_SECURE=1`, as it is otherwise (the
/// key is 0); its second word is its page's descriptor address,
/// the mark `free` tests to suspect a double free, cleared when the block is handed out.
#[repr(C)]
pub struct Block {
    link: usize,
    tag: usize,
}

// SAFETY: the link is the block's first word, which only the list holding the block touches;
// `next` decodes what `set_next` encoded (every page's key is the process key).
unsafe impl Link for Block {
    #[inline(always)]
    unsafe fn set_next(node: *mut Self, next: *mut Self) {
        // SAFETY: the caller owns the free block.
        unsafe { (*node).link = guard::encode_global(next as usize) }
    }
    #[inline(always)]
    unsafe fn next(node: *mut Self) -> *mut Self {
        // SAFETY: the caller owns the free block.
        guard::encode_global(unsafe { (*node).link }) as *mut Block
    }
}

impl Block {
    /// Marks free block `p` as a free block of `page` (see `Page::suspect`).
    ///
    /// # Safety
    /// `p` must be a block the caller is freeing.
    #[inline(always)]
    pub unsafe fn mark_free(p: *mut u8, page: *const Page) {
        if guard::FREE_MARK {
            // SAFETY: blocks hold at least 16 bytes; the caller owns this dead one.
            unsafe { (*p.cast::<Block>()).tag = page as usize }
        }
    }

    /// Takes the free mark off free block `block` of `page` as it is handed out: true if it
    /// carried the mark (every block on a list does: it is written as the block is carved or
    /// pushed), which is then cleared. False if it did not: the word is then left changed,
    /// and `restore_mark_word` must put it back. One `xor` of memory and a branch on its flags,
    /// one instruction more than a plain clear.
    ///
    /// # Safety
    /// `block` must be a block of `page` the caller is handing out.
    #[inline(always)]
    pub unsafe fn take_mark(block: *mut Block, page: *const Page) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: the block's second word is ours to read and write (contract); the flags
            // of the `xor` say whether the word equalled `page`.
            unsafe {
                core::arch::asm!(
                    "xor qword ptr [{block} + {tag}], {page}",
                    "jne {lost}",
                    block = in(reg) block,
                    tag = const core::mem::offset_of!(Block, tag),
                    page = in(reg) page as usize,
                    lost = label { return false; },
                    options(nostack),
                );
            }
            true
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            // SAFETY: as above.
            unsafe {
                let word = (*block).tag ^ page as usize;
                (*block).tag = word;
                word == 0
            }
        }
    }

    /// Puts back the second word of a block whose `take_mark` failed.
    ///
    /// # Safety
    /// As for `take_mark`, right after it failed.
    #[inline(always)]
    pub unsafe fn restore_mark_word(block: *mut Block, page: *const Page) {
        // SAFETY: per the contract.
        unsafe { (*block).tag ^= page as usize }
    }

    /// Whether free block `block` carries its page's free mark (a plain read).
    ///
    /// # Safety
    /// `block` must be a carved block of `page`.
    #[inline]
    pub unsafe fn is_marked(block: *const Block, page: *const Page) -> bool {
        // SAFETY: per the contract.
        unsafe { (*block).tag == page as usize }
    }

    /// Where block `p` keeps its free mark (its second word; `claim` swaps it atomically).
    pub fn tag_of(p: *mut u8) -> *mut usize {
        p.wrapping_add(core::mem::offset_of!(Block, tag)).cast()
    }
}

/// Invariants, for a page in use (`block_size != 0`), with `blocks_used() = used & !IN_FULL`:
/// - `len(free) + blocks_used() == capacity <= reserved`, where blocks used are those handed
///   out, including blocks sitting on `remote` that the owner has not collected yet;
/// - every block lies in `[start, start + reserved * block_size)` at a multiple of
///   `block_size` from `start`;
/// - `used & IN_FULL` ⇔ the page is in its heap's `full` queue, and then `free` was empty when
///   it moved there and either `remote` is flagged or exactly one remote free cleared the flag
///   and pushed (or is pushing) the page onto the heap's `delayed` list. Keeping this flag in
///   the top bit of `used` lets `free` test "page now empty, or parked in full" with one
///   signed comparison: `used as i32 <= 0`.
///
/// Layout (112 bytes, `repr(C)`): the fields the owner's thread reads or writes on every
/// `malloc` and local `free` (`free` with the `mark` beside it, `used`, `allocs`) first, then its
/// queue links; from byte 64 what a free from another thread reads or writes (`div_magic`,
/// `fast_limit`, `class`, `remote`), and `carved`, which only the owner's pops of blocks over
/// 1 KiB read.
/// Descriptors sit 112 bytes apart, so for most of them the two groups fall in different
/// cache lines: a remote free's reads no longer take the line of `free` away from the owner's
/// next `malloc` (`perf` on `prodcons`: the owner's load of `free` and the consumer's of
/// `div_magic` were a fifth of the samples when they shared a line). A 128-byte descriptor that
/// separated them always made `leak_steady` 1.3x slower (BENCHMARKS.md, issue 16).
#[repr(C)]
pub struct Page {
    pub free: *mut Block,
    /// This descriptor's own address while in use (0 in the empty page): the free mark, kept
    /// next to `free` so that the owner's push copies both words of a free block, its link and
    /// its mark, with one 16-byte load and one store (`push_block`; `Block` has the same layout).
    mark: usize,
    pub used: u32,
    pub block_size: u32,
    /// Blocks handed out since `init` (statistics, see `traffic`): bumped by the owner only,
    /// read by any thread.
    allocs: AtomicU64,
    pub capacity: u32,
    pub reserved: u32,
    pub start: *mut u8,
    pub next: *mut Page,
    pub prev: *mut Page,
    /// `guard::divisor_magic(block_size)` while in use.
    pub div_magic: u64,
    /// `block_limit` for a small class's page (one slice), 0 for a big class's: `free`'s fast
    /// test takes the offset from the slice (`p mod SLICE_SIZE`, one instruction instead of
    /// two), which is the offset from the page only in a one-slice page; blocks over 8 KiB
    /// are all tested on the slow path (`free_suspect`), against `start`, where the owner's
    /// free puts them in the heap's `block_cache` (`block_cache::caches_size`).
    pub fast_limit: u64,
    /// `guard::block_limit(block_size, capacity)` while in use, else 0 (no offset passes).
    pub block_limit: u64,
    pub remote: RemoteList,
    pub delayed_next: *mut Page,
    pub class: u8,
    pub slice_count: u8,
    /// A block of this page was lent to a smaller class (`lent_blocks`) since `init`: a block
    /// here may hold up to `LEND_RATIO` times its request (`free_sized`'s check).
    pub lent: bool,
    /// The bytes of the carved blocks, `capacity * block_size` (a page spans at most one 4 MiB
    /// segment): `pop_validated` follows a head only inside `[start, start + carved)`. Read by
    /// the owner only, on pops of blocks over 1 KiB.
    pub carved: u32,
}

const _: () = assert!(core::mem::size_of::<Page>() == 112);
// `push_block` copies `free` and `mark` as a block's `link` and `tag`.
const _: () = assert!(core::mem::offset_of!(Page, mark) == core::mem::offset_of!(Page, free) + 8);
const _: () =
    assert!(core::mem::offset_of!(Block, link) == 0 && core::mem::offset_of!(Block, tag) == 8);
const _: () = assert!(core::mem::offset_of!(Page, div_magic) == 64);

// SAFETY: the link is `delayed_next`, written only by the one remote free that clears the
// page's flag, and read by the owner after taking the delayed list.
unsafe impl Link for Page {
    unsafe fn set_next(node: *mut Self, next: *mut Self) {
        // SAFETY: see the impl comment.
        unsafe { (*node).delayed_next = next }
    }
    unsafe fn next(node: *mut Self) -> *mut Self {
        // SAFETY: see the impl comment.
        unsafe { (*node).delayed_next }
    }
}

/// The most blocks `carve_shuffled` links at once.
const CARVE_SHUFFLED_MAX: usize = 256;

/// The flag bit of `Page::used` that marks a page parked in `full`.
const IN_FULL: u32 = 1 << 31;

/// A page whose free list is always empty: a heap's `current` entries point here until the
/// class gets a real page, so the fast path needs no null check, and every slice that holds no
/// page maps here. Its `free` is never written; its `used` is, by an incorrect program's `free`
/// of an address in such a slice: the owner's fast path counts the free (`count_free`) before it
/// reads the block, and its cold path finds no page in use, sets the count back to 0 and
/// reports (`fast::free_counted_cold`, `Page::reset_empty_count`). Those writes may race
/// (several threads freeing such addresses at once): `used` is then off for a moment, which
/// nothing reads.
pub struct EmptyPage(pub core::cell::UnsafeCell<Page>);
// SAFETY: only `used` is ever written (see above), and no reader depends on it.
unsafe impl Sync for EmptyPage {}
pub static EMPTY_PAGE: EmptyPage = EmptyPage(core::cell::UnsafeCell::new(Page::unused()));

impl Page {
    pub const fn unused() -> Page {
        Page {
            free: ptr::null_mut(),
            mark: 0,
            used: 0,
            block_size: 0,
            allocs: AtomicU64::new(0),
            capacity: 0,
            reserved: 0,
            class: 0,
            slice_count: 0,
            lent: false,
            remote: RemoteList::new(),
            start: ptr::null_mut(),
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
            delayed_next: ptr::null_mut(),
            div_magic: 0,
            block_limit: 0,
            fast_limit: 0,
            carved: 0,
        }
    }

    #[inline(always)]
    pub const fn empty_page() -> *mut Page {
        EMPTY_PAGE.0.get()
    }

    /// Makes this (head) descriptor a fresh page of `class` over `slices` slices at `start`,
    /// whose last `guard` bytes hold no block (a guard page, `TIERMALLOC_SECURE=1`).
    pub fn init(&mut self, class: usize, start: *mut u8, slices: usize, guard: usize) {
        let size = class_size(class);
        self.free = ptr::null_mut();
        self.mark = self as *mut Page as usize;
        self.used = 0;
        self.block_size = size as u32;
        self.allocs.store(0, Ordering::Relaxed);
        self.capacity = 0;
        self.reserved = ((slices * SLICE_SIZE - guard) / size) as u32;
        self.class = class as u8;
        self.slice_count = slices as u8;
        self.lent = false;
        // Empty in a correct program. An incorrect one's double free from another thread,
        // checked while the page's last incarnation was in use and pushed after it was retired,
        // leaves a block of that incarnation here: dropped (its memory was given back with
        // the page), not counted against this one's `used` (`c-tests/double_free_race.c`).
        let _stale: *mut Block = self.remote.take_all();
        self.start = start;
        self.next = ptr::null_mut();
        self.prev = ptr::null_mut();
        self.div_magic = guard::divisor_magic(size as u32);
        // No block is carved yet: `extend` raises the limit as it carves.
        self.block_limit = 0;
        self.fast_limit = 0;
        self.carved = 0;
    }

    /// Whether `free(p)`, for an address `p` in this page's slices, fails the at-free
    /// block-start test: `p` is not the start of a carved block of a one-slice page; true for
    /// the empty page and for every block of a longer page (`fast_limit` 0), which
    /// `free_suspect` then tests exactly. Always false in a build measuring the test's cost
    /// (`BLOCK_START_CHECK` off), where blocks are tested only where they would be handed out.
    #[inline(always)]
    pub fn suspect(&self, p: *mut u8) -> bool {
        let offset = (p as usize) & (SLICE_SIZE - 1);
        guard::BLOCK_START_CHECK && !guard::is_block_offset(self.div_magic, self.fast_limit, offset)
    }

    /// Whether block `p` of this page carries the free mark (`Block::mark_free`).
    ///
    /// # Safety
    /// `p` must be a block start of this page.
    #[inline(always)]
    pub unsafe fn carries_mark(&self, p: *mut u8) -> bool {
        // SAFETY: per the contract, 16 readable bytes.
        unsafe { (*p.cast::<Block>()).tag == self as *const Page as usize }
    }

    /// Whether `p`, an address inside this page's slices, is the start of one of its blocks.
    pub fn is_block_start(&self, p: *mut u8) -> bool {
        let offset = (p as usize).wrapping_sub(self.start as usize);
        guard::is_block_offset(self.div_magic, self.block_limit, offset)
    }

    /// Whether block `p` of this page is on its free or remote list (a suspected double free,
    /// see `guard`). Exact for the owner's thread. Another thread reads the lists while the
    /// owner changes them, which may miss a block being moved; it reads only carved block
    /// starts of this page (`guard::is_on_lists`), mapped as long as the page is in use, which
    /// it is while `p` is live, i.e. in every correct program.
    pub fn holds_free(&self, p: *mut u8) -> bool {
        let this: *const Page = self;
        // SAFETY: plain reads of this descriptor, which the owner may be writing: a torn or
        // stale value only ends the walk sooner (every address is tested before it is read).
        let (start, magic, block_limit, free) = unsafe {
            (
                ptr::addr_of!((*this).start).read_volatile() as usize,
                ptr::addr_of!((*this).div_magic).read_volatile(),
                ptr::addr_of!((*this).block_limit).read_volatile(),
                ptr::addr_of!((*this).free).read_volatile() as usize,
            )
        };
        let is_block = |b: usize| guard::is_block_offset(magic, block_limit, b.wrapping_sub(start));
        // SAFETY: addresses that pass `is_block` are carved blocks of this page, mapped while
        // the page holds `p` (contract of `is_on_lists`).
        unsafe {
            guard::is_on_lists(
                p as usize,
                free,
                self.remote.first::<Block>() as usize,
                guard::process_key(),
                self.reserved,
                is_block,
            )
        }
    }

    /// Pops a block from `free`, or null: the fast path of blocks up to 1 KiB (`DIRECT_MAX`;
    /// larger ones take `pop_validated`). The head is followed only if its sign bit is clear
    /// and it is not null (`(head as isize) <= 0` fails, the same two instructions as a null
    /// test), so an overwritten link whose top bit is set is never followed: the pop fails into
    /// the slow path, whose `pop_checked` tests the head exactly and reports it (see `guard`
    /// for what this leaves). The block's free mark is cleared with a plain store. The link
    /// itself is stored as it is (the key is 0 outside `TIERMALLOC_SECURE=1`, under which no
    /// fast path reaches a page). The measurement cfgs of `guard` put back the range test and
    /// the mark test.
    #[inline(always)]
    pub fn pop(&mut self) -> *mut u8 {
        let block = self.free;
        if guard::LIST_RANGE_CHECK {
            if (block as usize).wrapping_sub(self.start as usize) >= self.carved as usize {
                return ptr::null_mut();
            }
        } else if guard::DEFAULT_CHECKS {
            // The sign test: null, and every head with its top bit set (what most overwritten
            // links hold: text, -1, a key's bytes), fail into the slow path, whose
            // `pop_checked` reports all but null. The same two instructions as a null test.
            if (block as isize) <= 0 {
                return ptr::null_mut();
            }
        } else if block.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: blocks on `free` are ours and hold a link.
        unsafe { self.unlink_head(block) };
        // A block handed out carries no free mark (`suspect`), and every block on the list
        // must carry it (`take_mark`): one that does not is in use already.
        // SAFETY: the block is ours until returned.
        if guard::HAND_OUT_MARK_TEST && unsafe { !Block::take_mark(block, self) } {
            return self.pop_unmarked(block);
        }
        if guard::FREE_MARK && !guard::HAND_OUT_MARK_TEST {
            // SAFETY: as above.
            unsafe { (*block).tag = 0 };
        }
        block.cast()
    }

    /// `pop` took block `block`, which carries no free mark: it is in use already (an owner's
    /// free raced another thread's free of it, so it sat on two lists and was handed out from
    /// the other), or its second word was written after its free. Its word is put back, the
    /// pop undone, and the misuse reported; if the program goes on
    /// (`TIERMALLOC_ON_ERROR=ignore`) the rest of the list, whose link came from that block,
    /// is dropped (leaked) and null returned, so the caller's slow path finds another block.
    #[cold]
    #[inline(never)]
    fn pop_unmarked(&mut self, block: *mut Block) -> *mut u8 {
        // SAFETY: `take_mark` just failed on this block of this page.
        unsafe { Block::restore_mark_word(block, self) };
        self.used -= 1;
        let n = self.allocs.load(Ordering::Relaxed);
        self.allocs.store(n.wrapping_sub(1), Ordering::Relaxed);
        self.free = block;
        self.drop_list(crate::misuse::Misuse::FreeMarkLost)
    }

    /// `pop` for blocks over `DIRECT_MAX` bytes (`fast::alloc_class`): the head is followed only
    /// if it is a carved block start of this page (the range test, then the block-start
    /// multiplication on the offset it bounds), and the block handed out must carry the free
    /// mark (`Block::take_mark`). So an interior pointer freed into such a page, or a link
    /// overwritten after its free, is reported at the next allocation of the class (by
    /// `pop_checked`, on the slow path this fails into), before any block overlapping a live
    /// one is handed out. A few instructions more than `pop` per allocation of at least 1 KiB,
    /// which the program then writes.
    #[inline(always)]
    pub fn pop_validated(&mut self) -> *mut u8 {
        if !guard::DEFAULT_CHECKS {
            return self.pop();
        }
        let block = self.free;
        let offset = (block as usize).wrapping_sub(self.start as usize);
        if offset >= self.carved as usize
            || !guard::is_block_offset(self.div_magic, self.block_limit, offset)
        {
            return ptr::null_mut();
        }
        // SAFETY: a carved block of this page, on `free`: it holds a link.
        unsafe { self.unlink_head(block) };
        // SAFETY: the block is ours until returned.
        if guard::FREE_MARK && unsafe { !Block::take_mark(block, self) } {
            return self.pop_unmarked(block);
        }
        block.cast()
    }

    /// Takes head `block` off `free` and counts it handed out: the part of every pop after its
    /// head test.
    ///
    /// # Safety
    /// `block` must be the head of `free`, a block of this page holding a link, stored as it
    /// is (the key is 0 outside `TIERMALLOC_SECURE=1`, and under it no fast path reaches a
    /// page).
    #[inline(always)]
    unsafe fn unlink_head(&mut self, block: *mut Block) {
        // SAFETY: per the contract.
        self.free = unsafe { (*block).link } as *mut Block;
        self.used += 1;
        self.count_alloc();
    }

    /// `pop` for the slow path: the head must be a carved block start of this page, and its
    /// link null or another; an overwritten link is reported here (`pop` leaves every head it
    /// does not follow to this test). Null if the list is empty, or was dropped as corrupted
    /// (the program goes on after the report, `TIERMALLOC_ON_ERROR=ignore`).
    pub fn pop_checked(&mut self) -> *mut u8 {
        let block = self.free;
        if block.is_null() {
            return ptr::null_mut();
        }
        if !self.is_block_start(block.cast()) {
            // Inside the page's blocks but no carved block start: an address `free` took
            // without testing it (an interior or never-carved pointer freed by the owner, see
            // `guard`), reported as what it is; anything else is an overwritten link.
            let span = self.reserved as usize * self.block_size as usize;
            if (block as usize).wrapping_sub(self.start as usize) < span {
                return self.drop_list(crate::misuse::Misuse::NotABlockStart);
            }
            return self.drop_corrupted_list();
        }
        // SAFETY: a carved block of this page, on `free`.
        if guard::FREE_MARK && unsafe { !Block::is_marked(block, self) } {
            // In use already (see `pop_unmarked`).
            return self.drop_list(crate::misuse::Misuse::FreeMarkLost);
        }
        // SAFETY: a carved block of this page, on `free`: it holds a link.
        let next = guard::decode(unsafe { (*block).link }, guard::process_key());
        if next != 0 && !self.is_block_start(next as *mut u8) {
            return self.pop_corrupted(block);
        }
        self.free = next as *mut Block;
        self.used += 1;
        self.count_alloc();
        // SAFETY: the block is ours until returned.
        unsafe { (*block).tag = 0 };
        block.cast()
    }

    /// The head `block`'s link was overwritten: reported; if the program goes on
    /// (`TIERMALLOC_ON_ERROR=ignore`), the rest of the list is dropped (leaked) and `block`,
    /// which was free, is handed out.
    #[cold]
    #[inline(never)]
    fn pop_corrupted(&mut self, block: *mut Block) -> *mut u8 {
        crate::misuse::report(
            "malloc",
            block.cast(),
            crate::misuse::Misuse::CorruptedFreeList,
        );
        self.free = ptr::null_mut();
        self.used += 1;
        self.count_alloc();
        // SAFETY: the block was free, so it is ours to hand out.
        unsafe { (*block).tag = 0 };
        block.cast()
    }

    /// The head of `free` is no block of this page, or its link is none (`list_head_sound`):
    /// a link was overwritten after its block was freed. Reported with the head; if the
    /// program goes on, the list is dropped (its blocks leaked) and null returned.
    #[cold]
    #[inline(never)]
    pub fn drop_corrupted_list(&mut self) -> *mut u8 {
        self.drop_list(crate::misuse::Misuse::CorruptedFreeList)
    }

    /// Reports `what` of the head of `free`; if the program goes on, the list is dropped (its
    /// blocks leaked) and null returned.
    #[cold]
    #[inline(never)]
    fn drop_list(&mut self, what: crate::misuse::Misuse) -> *mut u8 {
        crate::misuse::report("malloc", self.free.cast(), what);
        self.free = ptr::null_mut();
        ptr::null_mut()
    }

    /// Whether the head of `free` and the head's link are what they must be (`pop_checked`'s
    /// tests, without popping): checked for every current page when a large block is
    /// allocated (`Heap::check_list_heads`). Reads the head block when it is a carved block.
    pub fn list_head_sound(&self) -> bool {
        let block = self.free;
        if block.is_null() {
            return true;
        }
        if !self.is_block_start(block.cast()) {
            return false;
        }
        // SAFETY: a carved block of this page, on `free`: it holds a link and a mark.
        if guard::FREE_MARK && unsafe { !Block::is_marked(block, self) } {
            return false;
        }
        // SAFETY: as above.
        let next = guard::decode(unsafe { (*block).link }, guard::process_key());
        next == 0 || self.is_block_start(next as *mut u8)
    }

    /// Pushes a block freed by the owner. Returns true if the page needs its heap's attention:
    /// it became empty, or it is parked in `full`.
    ///
    /// # Safety
    /// `p` must be a block of this page that is handed out, and the caller the page's owner.
    #[cfg(test)]
    pub unsafe fn push_local(&mut self, p: *mut u8) -> bool {
        let settled = self.count_free();
        // SAFETY: per the contract.
        unsafe { self.push_block(p) };
        !settled
    }

    /// Counts one block fewer in use (`used -= 1`), the first thing the owner's `free` does
    /// to a page: true if nothing more than the push is needed, false if the page became empty,
    /// is parked in `full`, or is no page in use (the empty page, `used` 0): the caller's cold
    /// path then decides (`Heap::free_counted_cold`). Counting before the block is read keeps
    /// the fast path off an address in a slice with no page (a `PROT_NONE` one, say): one
    /// `dec` of memory and a branch on its flags, as before.
    #[inline(always)]
    pub fn count_free(&mut self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `used` is this descriptor's field, written by its owner's thread only
            // (or raced by incorrect frees into the empty page, see `EmptyPage`). `jle` after
            // `dec` is taken for a result of 0 or below, and for the wrap from `i32::MIN`
            // (which an incorrect program's frees could reach): every such case goes cold.
            // Written as instructions because the compiler, told to wrap, loads, decrements,
            // stores and tests (three instructions more).
            unsafe {
                core::arch::asm!(
                    "dec dword ptr [{page} + {used}]",
                    "jle {unsettled}",
                    page = in(reg) self as *mut Page,
                    used = const core::mem::offset_of!(Page, used),
                    unsettled = label { return false; },
                    options(nostack),
                );
            }
            true
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let used = (self.used as i32).wrapping_sub(1);
            self.used = used as u32;
            used > 0 && self.used != 1 << 31
        }
    }

    /// Puts back what `count_free` took (its cold path found the free is not to happen).
    #[inline]
    pub fn uncount_free(&mut self) {
        self.used = self.used.wrapping_add(1);
    }

    /// Sets the empty page's count back to 0 after an incorrect free counted on it
    /// (`count_free`), with an atomic store: several threads' such frees may race on it
    /// (see `EmptyPage`), and 0 is what it always holds otherwise.
    ///
    /// # Safety
    /// `page` must be the empty page.
    #[inline]
    pub unsafe fn reset_empty_count(page: *mut Page) {
        // SAFETY: the field is a u32 of a static, aligned for an atomic; every other access
        // to it is the fast path's `dec` (an instruction the compiler does not see) or this.
        unsafe {
            core::sync::atomic::AtomicU32::from_ptr(ptr::addr_of_mut!((*page).used))
                .store(0, Ordering::Relaxed)
        };
    }

    /// Pushes dead block `p` on `free`, with the free mark.
    ///
    /// # Safety
    /// `p` must be a block of this page that is handed out and counted free (`count_free`),
    /// and the caller the page's owner.
    #[inline(always)]
    pub unsafe fn push_block(&mut self, p: *mut u8) {
        let block = p.cast::<Block>();
        // The link is stored as it is: the owner's thread frees here only outside
        // `TIERMALLOC_SECURE=1`, whose key is 0 (see `Segment::owner`).
        #[cfg(target_arch = "x86_64")]
        if guard::FREE_MARK {
            // SAFETY: `free` and `mark` are 16 adjacent bytes of this descriptor, and the
            // block is dead and at least 16 bytes: its link and tag get the head and the mark
            // (the layouts match, see the asserts after `Page`). SSE2 is part of x86_64.
            // Written as instructions: the intrinsics carry debug-build checks that tripled
            // `free`'s code in the test profile (`tests/hot_text.rs`).
            unsafe {
                core::arch::asm!(
                    "movups {pair}, xmmword ptr [{page}]",
                    "movups xmmword ptr [{block}], {pair}",
                    page = in(reg) ptr::addr_of!(self.free),
                    block = in(reg) block,
                    pair = out(xmm_reg) _,
                    options(nostack, preserves_flags),
                );
            }
            self.free = block;
            return;
        }
        // SAFETY: the block is dead and at least 16 bytes.
        unsafe {
            (*block).link = self.free as usize;
            if guard::FREE_MARK {
                (*block).tag = self.mark;
            }
        }
        self.free = block;
    }

    /// One more block handed out (`allocs`): a relaxed load and store, which the compiler
    /// makes one `inc` of memory, as only the owner writes it.
    #[inline(always)]
    pub(crate) fn count_alloc(&self) {
        let n = self.allocs.load(Ordering::Relaxed);
        self.allocs.store(n.wrapping_add(1), Ordering::Relaxed);
    }

    /// Blocks handed out since the page was set up.
    #[inline]
    pub fn allocs(&self) -> u64 {
        self.allocs.load(Ordering::Relaxed)
    }

    /// `allocs` of a descriptor another thread may be writing (statistics).
    ///
    /// # Safety
    /// `page` must point to a mapped descriptor.
    #[inline]
    pub unsafe fn allocs_of(page: *const Page) -> u64 {
        // SAFETY: per the contract; the field is atomic.
        unsafe { (*ptr::addr_of!((*page).allocs)).load(Ordering::Relaxed) }
    }

    /// The blocks used in a value of `used` (without the `IN_FULL` flag).
    #[inline]
    pub fn used_without_flag(used: u32) -> u32 {
        used & !IN_FULL
    }

    /// Blocks handed out (the `used` count without the `IN_FULL` flag).
    #[inline]
    pub fn blocks_used(&self) -> u32 {
        Self::used_without_flag(self.used)
    }

    /// Whether the page is parked in its heap's `full` queue.
    #[inline]
    pub fn in_full(&self) -> bool {
        self.used & IN_FULL != 0
    }

    #[inline]
    pub fn set_in_full(&mut self, parked: bool) {
        if parked {
            self.used |= IN_FULL;
        } else {
            self.used &= !IN_FULL;
        }
    }

    /// Carves up to one OS page worth of never-used blocks (at least one) onto `free`.
    /// Returns false if the page has no uncarved block left.
    #[inline]
    pub fn extend(&mut self) -> bool {
        if self.capacity >= self.reserved {
            return false;
        }
        let size = self.block_size as usize;
        let count = (PAGE_SIZE / size).clamp(1, (self.reserved - self.capacity) as usize);
        let secure = guard::secure();
        // Shuffling a few blocks would leave neighbours together: secure mode carves up to
        // 256 at once (touching their memory sooner).
        let count = if secure {
            ((self.reserved - self.capacity) as usize).min(CARVE_SHUFFLED_MAX)
        } else {
            count
        };
        if secure {
            self.carve_shuffled(count);
        } else {
            // SAFETY: as in `carve_shuffled`, front to back.
            unsafe { self.carve_in_order(count) };
        }
        self.capacity += count as u32;
        // Only carved blocks pass `free`'s block-start test: a pointer to one never carved
        // would otherwise join the free list without ever having been handed out.
        // `guard::block_limit` without its division: the page keeps the multiplier.
        self.block_limit = guard::block_limit_of(self.div_magic, self.block_size, self.capacity);
        self.carved = (self.capacity as usize * size) as u32;
        // Only the small classes' pages (one slice each) get the fast test: a big class's
        // blocks fail it, so that the owner's free of one reaches `free_suspect`, which puts
        // it in the heap's `block_cache`. One comparison of the size in hand, as
        // `slice_count == 1` was (`sliding_window`'s slow path runs it: `reserved >= 8` cost
        // one load more).
        if !block_cache::caches_size(size as u32) {
            self.fast_limit = self.block_limit;
        }
        true
    }

    /// Makes an empty page uncarved again and gives the memory of its carved blocks back to
    /// the kernel (`idle_pages`): the next `extend` carves from the start, as on a fresh page.
    /// Does nothing (returns 0) unless the page is empty, has no remote free waiting, and
    /// carved more than its first OS page. Returns the bytes discarded.
    ///
    /// # Safety
    /// The page must be in use by the calling thread's heap, which owns it.
    pub unsafe fn uncarve(&mut self) -> usize {
        let start = self.start as usize;
        let carved = self.carved as usize;
        if self.used != 0 || self.remote.has_nodes() || carved <= PAGE_SIZE {
            return 0;
        }
        // Whole OS pages inside the carved blocks: the first partial one, if the page starts
        // inside an OS page (after a segment's header), is not ours alone.
        let from = (start + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
        let to = (start + carved) & !(PAGE_SIZE - 1);
        self.free = ptr::null_mut();
        self.capacity = 0;
        self.carved = 0;
        self.block_limit = 0;
        self.fast_limit = 0;
        if to <= from {
            return 0;
        }
        // SAFETY: the carved blocks are all free (`used` 0, no remote free) and dropped from
        // the free list above; the range lies inside this heap's private anonymous segment.
        unsafe { crate::os::discard(from as *mut u8, to - from) };
        to - from
    }

    /// Links blocks `[capacity, capacity + count)` front to back before the free list.
    ///
    /// # Safety
    /// Those blocks must lie inside the page and never have been handed out.
    unsafe fn carve_in_order(&mut self, count: usize) {
        let size = self.block_size as usize;
        // SAFETY: per the contract.
        unsafe {
            let first = self.start.add(self.capacity as usize * size);
            let mut block = first;
            for _ in 1..count {
                let next = block.add(size);
                Block::set_next(block.cast(), next.cast());
                Block::mark_free(block, self);
                block = next;
            }
            Block::set_next(block.cast(), self.free);
            Block::mark_free(block, self);
            self.free = first.cast();
        }
    }

    /// `TIERMALLOC_SECURE=1`: links blocks `[capacity, capacity + count)` in a random order
    /// (a Fisher-Yates shuffle of their indices), so that consecutive allocations are not
    /// neighbours an overflow can predict.
    #[cold]
    #[inline(never)]
    // Run only under `TIERMALLOC_SECURE=1`: a section of its own keeps it out of the code every
    // process runs (`link/hot_text.ld`, which takes every other `dram` function).
    #[link_section = ".text.tiermalloc_secure"]
    fn carve_shuffled(&mut self, count: usize) {
        let size = self.block_size as usize;
        let mut order = [0u16; CARVE_SHUFFLED_MAX];
        let count = count.min(order.len());
        for (i, slot) in order[..count].iter_mut().enumerate() {
            *slot = i as u16;
        }
        let mut state = guard::splitmix(
            self.start as u64 ^ u64::from(self.capacity) ^ guard::process_key() as u64,
        );
        for i in (1..count).rev() {
            state = guard::splitmix(state);
            order.swap(i, (state % (i as u64 + 1)) as usize);
        }
        for &i in order[..count].iter().rev() {
            // SAFETY: block `capacity + i` lies inside the page and was never handed out.
            unsafe {
                let block = self.start.add((self.capacity as usize + i as usize) * size);
                Block::set_next(block.cast(), self.free);
                Block::mark_free(block, self);
                self.free = block.cast();
            }
        }
    }

    /// Moves blocks freed by other threads onto `free`. Returns how many.
    ///
    /// When `free` is empty (always, but for a heap tidied for its next thread), the taken list
    /// becomes `free` as it is, counted by its head (`RemoteList::take_all_counted`), and no
    /// block is read here: each is read when it is popped, by which time the program's own
    /// work has overlapped the miss. Walking them cost one cross-core cache miss per block,
    /// one after another (`perf` on `prodcons`: 86% of the owner's slow path). Their links
    /// are then trusted as the links of blocks the owner freed are: the head's is tested by
    /// `pop_checked`, and under `TIERMALLOC_SECURE=1` every link before it is followed.
    pub fn collect_remote(&mut self) -> u32 {
        let (list, taken) = self.remote.take_all_counted::<Block>();
        if list.is_null() {
            return 0;
        }
        let count = if self.free.is_null() {
            self.free = list;
            taken
        } else {
            self.append_remote(list)
        };
        // At most the blocks handed out: more only after an incorrect program's double free
        // from another thread pushed a block of a retired incarnation of this page
        // (`c-tests/double_free_race.c`), which must not wrap `used`.
        self.used -= count.min(self.blocks_used());
        count
    }

    /// Moves the blocks of taken remote list `list` onto `free` one by one, testing each link:
    /// `collect_remote` when `free` holds blocks. Returns how many.
    #[cold]
    #[inline(never)]
    fn append_remote(&mut self, mut list: *mut Block) -> u32 {
        let mut count = 0;
        while !list.is_null() {
            // SAFETY: taken blocks are ours; each link was written before its push.
            unsafe {
                if guard::FREE_MARK && !Block::is_marked(list, self) {
                    // In use already (see `pop_unmarked`): neither it nor the rest, whose
                    // link it held, is taken.
                    crate::misuse::report("free", list.cast(), crate::misuse::Misuse::FreeMarkLost);
                    break;
                }
                let next = Block::next(list);
                if !next.is_null() && !self.is_block_start(next.cast()) {
                    crate::misuse::report(
                        "free",
                        list.cast(),
                        crate::misuse::Misuse::CorruptedFreeList,
                    );
                    // Ignored: the rest of the remote list is leaked, never handed out.
                    Block::set_next(list, self.free);
                    self.free = list;
                    count += 1;
                    break;
                }
                Block::set_next(list, self.free);
                self.free = list;
                list = next;
            }
            count += 1;
        }
        count
    }

    /// Checks the list invariants by walking every list (tests only: reads every free block).
    #[cfg(test)]
    pub fn check_invariants(&self) {
        let mut n = 0u32;
        let mut b = self.free;
        let end = self.start as usize + self.reserved as usize * self.block_size as usize;
        while !b.is_null() {
            let a = b as usize;
            assert!(a >= self.start as usize && a < end);
            assert_eq!((a - self.start as usize) % self.block_size as usize, 0);
            n += 1;
            // SAFETY: free blocks hold valid links (what this walk checks).
            b = unsafe { Block::next(b) };
        }
        assert_eq!(n + self.blocks_used(), self.capacity);
        assert!(self.capacity <= self.reserved);
    }
}

/// A doubly linked queue of pages through `next`/`prev`.
pub struct PageQueue {
    pub first: *mut Page,
    pub last: *mut Page,
}

impl PageQueue {
    /// # Safety
    /// `page` must be valid and on no queue.
    pub unsafe fn push_front(&mut self, page: *mut Page) {
        // SAFETY: the caller owns `page`; queue members are valid.
        unsafe {
            (*page).prev = ptr::null_mut();
            (*page).next = self.first;
            if self.first.is_null() {
                self.last = page;
            } else {
                (*self.first).prev = page;
            }
        }
        self.first = page;
    }

    /// # Safety
    /// `page` must be valid and on no queue.
    pub unsafe fn push_back(&mut self, page: *mut Page) {
        // SAFETY: the caller owns `page`; queue members are valid.
        unsafe {
            (*page).next = ptr::null_mut();
            (*page).prev = self.last;
            if self.last.is_null() {
                self.first = page;
            } else {
                (*self.last).next = page;
            }
        }
        self.last = page;
    }

    /// # Safety
    /// `page` must be on this queue.
    pub unsafe fn remove(&mut self, page: *mut Page) {
        // SAFETY: `page` and its neighbours are valid queue members.
        unsafe {
            let (prev, next) = ((*page).prev, (*page).next);
            if prev.is_null() {
                self.first = next;
            } else {
                (*prev).next = next;
            }
            if next.is_null() {
                self.last = prev;
            } else {
                (*next).prev = prev;
            }
            (*page).next = ptr::null_mut();
            (*page).prev = ptr::null_mut();
        }
    }
}
