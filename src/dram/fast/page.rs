//! Pages: runs of slices inside a segment, each cut into blocks of one size class, and the
//! free lists that hand those blocks out.
//!
//! A page has two lists. `free` belongs to the owning heap's thread: `malloc` pops from it and
//! a `free` by the owner pushes onto it, with no atomics. `remote` takes blocks freed by other
//! threads (many producers, one consumer; see `lockfree::remote_list`); the owner moves it into
//! `free` when `free` runs dry. Blocks past `capacity` have never been handed out and are carved
//! a little at a time (`extend`), so a fresh page touches memory only as it fills.

use crate::dram::fast::size_class::{class_size, SLICE_SIZE};
use crate::lockfree::remote_list::{Link, RemoteList};
use crate::os::PAGE_SIZE;
use core::ptr;

/// A free block: its first word links to the next free block.
#[repr(C)]
pub struct Block {
    next: *mut Block,
}

// SAFETY: the link is the block's first word, which only the list holding the block touches.
unsafe impl Link for Block {
    #[inline(always)]
    unsafe fn set_next(node: *mut Self, next: *mut Self) {
        // SAFETY: the caller owns the free block.
        unsafe { (*node).next = next }
    }
    #[inline(always)]
    unsafe fn next(node: *mut Self) -> *mut Self {
        // SAFETY: the caller owns the free block.
        unsafe { (*node).next }
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
#[repr(C)]
pub struct Page {
    pub free: *mut Block,
    pub used: u32,
    pub block_size: u32,
    pub capacity: u32,
    pub reserved: u32,
    pub class: u8,
    pub slice_count: u8,
    pub remote: RemoteList,
    pub start: *mut u8,
    pub next: *mut Page,
    pub prev: *mut Page,
    pub delayed_next: *mut Page,
}

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

/// The flag bit of `Page::used` that marks a page parked in `full`.
const IN_FULL: u32 = 1 << 31;

/// A page whose free list is always empty: a heap's `current` entries point here until the
/// class gets a real page, so the fast path needs no null check. Never written.
pub struct EmptyPage(pub Page);
// SAFETY: the empty page is never written after construction.
unsafe impl Sync for EmptyPage {}
pub static EMPTY_PAGE: EmptyPage = EmptyPage(Page::unused());

impl Page {
    pub const fn unused() -> Page {
        Page {
            free: ptr::null_mut(),
            used: 0,
            block_size: 0,
            capacity: 0,
            reserved: 0,
            class: 0,
            slice_count: 0,
            remote: RemoteList::new(),
            start: ptr::null_mut(),
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
            delayed_next: ptr::null_mut(),
        }
    }

    #[inline(always)]
    pub const fn empty_page() -> *mut Page {
        ptr::addr_of!(EMPTY_PAGE.0) as *mut Page
    }

    /// Makes this (head) descriptor a fresh page of `class` over `slices` slices at `start`.
    pub fn init(&mut self, class: usize, start: *mut u8, slices: usize) {
        let size = class_size(class);
        self.free = ptr::null_mut();
        self.used = 0;
        self.block_size = size as u32;
        self.capacity = 0;
        self.reserved = (slices * SLICE_SIZE / size) as u32;
        self.class = class as u8;
        self.slice_count = slices as u8;
        debug_assert!(!self.remote.has_nodes());
        self.start = start;
        self.next = ptr::null_mut();
        self.prev = ptr::null_mut();
    }

    /// Pops a block from `free`, or null.
    #[inline(always)]
    pub fn pop(&mut self) -> *mut u8 {
        let block = self.free;
        if block.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: blocks on `free` are ours and hold a valid link.
        self.free = unsafe { (*block).next };
        self.used += 1;
        block.cast()
    }

    /// Pushes a block freed by the owner. Returns true if the page needs its heap's attention:
    /// it became empty, or it is parked in `full`.
    ///
    /// # Safety
    /// `p` must be a block of this page that is handed out, and the caller the page's owner.
    #[inline(always)]
    pub unsafe fn push_local(&mut self, p: *mut u8) -> bool {
        let block = p.cast::<Block>();
        // SAFETY: the block is dead and at least 16 bytes.
        unsafe { (*block).next = self.free };
        self.free = block;
        // SAFETY: the page holds this block, so `used` counts it: at least 1, with or without
        // the flag, and the signed subtraction cannot overflow. Saying so lets the compiler
        // branch on the flags of one `dec` of memory.
        let used = unsafe { (self.used as i32).unchecked_sub(1) };
        self.used = used as u32;
        used <= 0
    }

    /// Blocks handed out (the `used` count without the `IN_FULL` flag).
    #[inline]
    pub fn blocks_used(&self) -> u32 {
        self.used & !IN_FULL
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
    pub fn extend(&mut self) -> bool {
        if self.capacity >= self.reserved {
            return false;
        }
        let size = self.block_size as usize;
        let count = (PAGE_SIZE / size).clamp(1, (self.reserved - self.capacity) as usize);
        // SAFETY: blocks [capacity, capacity + count) lie inside the page and were never
        // handed out; we link them front to back and put them before the current free list.
        unsafe {
            let first = self.start.add(self.capacity as usize * size);
            let mut block = first;
            for _ in 1..count {
                let next = block.add(size);
                (*block.cast::<Block>()).next = next.cast();
                block = next;
            }
            (*block.cast::<Block>()).next = self.free;
            self.free = first.cast();
        }
        self.capacity += count as u32;
        true
    }

    /// Moves blocks freed by other threads onto `free`. Returns how many.
    pub fn collect_remote(&mut self) -> u32 {
        let mut list: *mut Block = self.remote.take_all();
        let mut count = 0;
        while !list.is_null() {
            // SAFETY: taken blocks are ours; each link was written before its push.
            unsafe {
                let next = (*list).next;
                (*list).next = self.free;
                self.free = list;
                list = next;
            }
            count += 1;
        }
        self.used -= count;
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
            b = unsafe { (*b).next };
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
