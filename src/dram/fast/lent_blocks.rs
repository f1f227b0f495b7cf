//! Lent blocks: while a heap is young, a request that would cut a new page for its class takes
//! a free block of a slightly larger class's page instead.
//!
//! Every class's first page is a 64 KiB slice of its own, and its first carve touches one OS
//! page (4 KiB) of it. A small program asks for a handful of blocks in each of many classes
//! (`/bin/sleep`: 18 classes, 72 KiB of pages touched, where glibc's heap holds all of it in
//! 16 KiB). Blocks already carved on another class's page are resident: handing one of them
//! out costs no page fault.
//!
//! The lent block stays a block of its page: `free`, `malloc_usable_size` and `realloc` see
//! the lender's class (a larger size). Only `free_sized`'s check, which takes a size under
//! half the block for a wrong one, needs to know: a page that lent (`Page::lent`) allows
//! `LEND_RATIO` (`may_hold_a_lent_block`). Three bounds keep it a
//! start-up matter:
//! - the lender's blocks are at most `LEND_RATIO` times the request's class, and keep every
//!   power-of-two alignment the request's class gives (`class_for_aligned` picks a class for
//!   its alignment: the lent block must have it too);
//! - a class asks to borrow at most `BORROW_TRIES_PER_CLASS` times: a class asked for more is
//!   one the program uses, which then cuts its own page;
//! - a heap lends at most `LEND_WASTE_MAX` bytes of slack in its life (lender's size minus the
//!   class's, summed): then every class cuts its own page, as before.
//!
//! Only the slow path lends, at the moment it would cut a new page for the class (no page of
//! the class has a free block), so the fast paths and the slow path's other cases are
//! unchanged. A class keeps taking the slow path while it borrows, at most
//! `BORROW_TRIES_PER_CLASS` times.
//!
//! Measured (BENCHMARKS.md, "Lent blocks: the first blocks of a class from a larger class's
//! page"): `/bin/sleep` cuts 12 pages instead of 18.
//!
//! **Big classes** (blocks over `BIG_MIN`, pages of a few blocks each) borrow for the heap's
//! whole life, without the bounds above: each carve of theirs touches a whole block's memory,
//! and each class kept the memory of its own high water, where a coalescing heap reuses one
//! heap's memory for every size (espresso: ten big classes' pages held 564 KiB at its peak,
//! for 234 KiB of big blocks the program ever held at once). Before a big class carves or
//! cuts (its own pages have no free block), it takes a carved free block of a class at most
//! `BIG_LEND_QUARTERS` / 4 times its size (`big_lender`): memory already resident, handed out
//! again instead of touching more. The request's class keeps taking the slow path while it
//! borrows; only requests over `DIRECT_MAX` reach a big class, so the small classes' paths
//! are unchanged.

use crate::dram::fast::page::Page;
use crate::dram::fast::size_class::{class_size, BIG_MIN, CLASS_COUNT};

/// The most slack one heap gives away by lending, in bytes.
pub(crate) const LEND_WASTE_MAX: usize = 8 * 1024;
/// The most times a class of one heap asks to borrow a block, lent or not: a class asked for
/// more is one the program uses, which then cuts its own page (lending to it further would only
/// carve the lenders' pages sooner, at up to `LEND_RATIO` times the memory). Counting the tries
/// that found no lender too bounds the looking: a heap that cuts thousands of pages looks
/// at most this many times per class.
pub(crate) const BORROW_TRIES_PER_CLASS: usize = 4;
/// A lender's blocks are at most this many times the request's class.
pub(crate) const LEND_RATIO: usize = 4;
/// Classes above this size never borrow: a block of theirs spans OS pages of its own, so a
/// lent one saves little against the slack it gives away.
const BORROW_CLASS_MAX: usize = 4096;

/// A big class's lenders' blocks are at most this many quarters of its own (1.75 times: the
/// next three classes). A lent block's slack stays resident while it lives: with lenders of
/// up to 4 times, a window of 64 blocks of random big sizes held 12 % more memory
/// (`benches/tools/big_class_churn.c`); up to twice, gs's heap held 248 KiB more at its peak
/// (17.9 MiB) and espresso's 168 KiB less; at 1.75, both less (BENCHMARKS.md, session 14,
/// branch `rss4`).
pub(crate) const BIG_LEND_QUARTERS: usize = 7;
/// The largest class that is not big.
const LAST_NOT_BIG: usize = {
    let mut c = 0;
    while class_size(c + 1) <= BIG_MIN {
        c += 1;
    }
    c
};

/// Whether `class` is big (its blocks are over `BIG_MIN` bytes).
#[inline(always)]
pub fn big(class: usize) -> bool {
    class > LAST_NOT_BIG
}

/// The first class after big `class`, up to `BIG_LEND_QUARTERS` / 4 times its size, keeping the
/// alignment it gives, whose page in `pages` (indexed by class, as for `lender`) has a carved
/// free block.
///
/// # Safety
/// As for `lender`.
#[inline(always)]
pub unsafe fn big_lender(class: usize, pages: &[*mut Page]) -> Option<*mut Page> {
    for lender in big_lenders(class) {
        // SAFETY: `lender < CLASS_COUNT <= pages.len()` (contract).
        let page = unsafe { *pages.get_unchecked(lender) };
        // SAFETY: per the contract.
        if !page.is_null() && unsafe { !(*page).free.is_null() } {
            return Some(page);
        }
    }
    None
}

/// The classes that may lend to big `class`, smallest first: up to `BIG_LEND_QUARTERS` / 4
/// times its size, keeping the alignment it gives (`big_lender`, and the cached blocks of
/// `Heap::borrow_big`).
#[inline(always)]
pub fn big_lenders(class: usize) -> impl Iterator<Item = usize> {
    debug_assert!(big(class));
    let size = class_size(class);
    let align = 1usize << size.trailing_zeros();
    (class + 1..CLASS_COUNT)
        .take_while(move |&c| class_size(c) * 4 <= size * BIG_LEND_QUARTERS)
        .filter(move |&c| class_size(c) % align == 0)
}

/// The classes that may lend to `class`, smallest first (the least slack).
#[inline]
pub fn lenders(class: usize) -> impl Iterator<Item = usize> {
    let size = class_size(class);
    // The alignment `class` gives: the largest power of two dividing its size.
    let align = 1usize << size.trailing_zeros();
    let first = if size <= BORROW_CLASS_MAX {
        class + 1
    } else {
        CLASS_COUNT
    };
    (first..CLASS_COUNT)
        .take_while(move |&c| class_size(c) <= size * LEND_RATIO)
        .filter(move |&c| class_size(c) % align == 0)
}

/// The first of `class`'s lenders whose page in `pages` (indexed by class: each class's
/// current page, the empty page or null if none; under `TIERMALLOC_SECURE=1` all are the empty
/// page, so nothing is lent) has a carved free block, with the slack a block of it costs;
/// `None` if none has one, or `waste_left` would be exceeded. Never a page that would have
/// to carve: a carve touches memory, which is what lending saves.
///
/// # Safety
/// `pages` must hold `CLASS_COUNT` entries or more, each null, the empty page or a valid page
/// of the calling thread's heap.
pub unsafe fn lender(
    class: usize,
    pages: &[*mut Page],
    waste_left: usize,
) -> Option<(*mut Page, usize)> {
    let size = class_size(class);
    for lender in lenders(class) {
        let waste = class_size(lender) - size;
        if waste > waste_left {
            return None;
        }
        // SAFETY: `lender < CLASS_COUNT <= pages.len()` (contract).
        let page = unsafe { *pages.get_unchecked(lender) };
        // SAFETY: per the contract.
        if !page.is_null() && unsafe { !(*page).free.is_null() } {
            return Some((page, waste));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dram::fast::size_class::class_of;

    #[test]
    fn lenders_are_larger_bounded_and_keep_the_alignment() {
        for class in 0..CLASS_COUNT {
            let size = class_size(class);
            for lender in lenders(class) {
                let l = class_size(lender);
                assert!(
                    l > size && l <= size * LEND_RATIO,
                    "class {size}: lender {l}"
                );
                assert_eq!(
                    l % (1 << size.trailing_zeros()),
                    0,
                    "class {size}: lender {l}"
                );
            }
        }
        // 64 B (aligned to 64) borrows from 128, 192 and 256, never from 80 or 96.
        let of_64: Vec<usize> = lenders(class_of(64)).map(class_size).collect();
        assert_eq!(of_64, vec![128, 192, 256]);
        // Classes above `BORROW_CLASS_MAX` never borrow.
        assert_eq!(lenders(class_of(8192)).count(), 0);
    }

    #[test]
    fn big_classes_start_past_8_kib_and_borrow_within_1_75_times_their_size() {
        assert!(!big(class_of(BIG_MIN)) && big(class_of(BIG_MIN + 1)));
        let mut pages = [Page::empty_page(); CLASS_COUNT];
        let mut lender_page = Page::unused();
        let mut block = [0usize; 2];
        lender_page.free = block.as_mut_ptr().cast();
        // 20 KiB (4 KiB-aligned) borrows from 32 KiB, never from 40 KiB (over 1.75 times)
        // nor from 14 KiB (smaller).
        let (c20, c32) = (class_of(20480), class_of(32768));
        let (c40, c14) = (class_of(40960), class_of(14336));
        pages[c40] = &mut lender_page;
        pages[c14] = &mut lender_page;
        // SAFETY: every entry is the empty page or `lender_page`, whose `free` is only read.
        unsafe {
            assert_eq!(big_lender(c20, &pages), None);
            pages[c32] = &mut lender_page;
            assert_eq!(big_lender(c20, &pages), Some(&mut lender_page as *mut Page));
        }
    }
}
