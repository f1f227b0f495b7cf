//! Remote frees gathered: a thread that frees blocks of another heap links them into chains in
//! its own heap, each chain the blocks of one page, and hands a chain to the page's remote list
//! with one CAS (`RemoteList::push_chain`) instead of one CAS per block.
//!
//! The CAS of a remote free is on a cache line the owner's thread swaps when it collects, so
//! under a producer/consumer pattern every free paid a contended atomic. Gathering pays that
//! cost once per chain (on `prodcons`, once per 45 remote frees), the way snmalloc's remote caches
//! and the thread caches of jemalloc and tcmalloc do.
//!
//! What a gathered block keeps:
//! - it is marked free when it is freed (the claim's swap, `claim`, writes the mark), and
//!   counted in its page's `used` until the owner collects it, so its page and segment stay in
//!   use;
//! - a second `free` of it is still caught: the double-free walk (`holds`) reads the chains
//!   waiting in every heap, exactly for the calling thread's own chains, and for other threads'
//!   with the same race the walk of a page's remote list has (it reads only carved block starts
//!   of the page);
//! - the statistics count it freed at once (the freeing heap's traffic counters).
//!
//! There is one chain per size class up to 1 KiB (`SLOTS`): a thread freeing blocks of
//! many sizes, all from one producer, keeps one chain going per class, and the blocks of a class
//! the producer allocated together mostly come from one page. A chain goes to its page when it
//! holds `CHAIN_BYTES` (at most `CHAIN_MAX` blocks), when a block of another page of its class
//! comes, and when the thread exits or trims (`flush_all`). So at most `SLOTS * CHAIN_BYTES`
//! (160 KiB) wait per thread. Larger blocks go to their page one at a time.

use crate::dram::fast::guard;
use crate::dram::fast::page::{Block, Page};
use crate::dram::fast::size_class::class_size;
use crate::lockfree::remote_list::{Link, Pushed};
use core::ptr;

/// Classes whose frees are gathered: 0..SLOTS, the blocks of up to 1 KiB. A chain per class.
pub(crate) const SLOTS: usize = 20;
/// Bytes a chain gathers before it goes to its page...
const CHAIN_BYTES: usize = 8 << 10;
/// ... but never more blocks than this.
const CHAIN_MAX: usize = 64;
/// The blocks a chain of each class gathers.
const CHAIN_LIMIT: [u32; SLOTS] = {
    let mut t = [0u32; SLOTS];
    let mut c = 0;
    while c < SLOTS {
        let n = CHAIN_BYTES / class_size(c);
        t[c] = if n > CHAIN_MAX {
            CHAIN_MAX as u32
        } else {
            n as u32
        };
        c += 1;
    }
    t
};

/// Dead blocks of one page, waiting to go onto its remote list.
///
/// Invariant: `count == 0` means the slot holds nothing (the other fields are stale). With
/// `count > 0`: `first` to `last` is a chain of `count` dead blocks of `page`, each marked free
/// and counted in the page's `used`, linked through `Block::set_next`, `last`'s link null.
#[derive(Clone, Copy)]
#[repr(C)]
struct Chain {
    page: *mut Page,
    first: *mut Block,
    last: *mut Block,
    count: u32,
}

/// A heap's chains of gathered remote frees. All-zero is the empty state (heaps start zeroed).
/// Only the heap's thread writes it; other threads read it in the double-free walk.
#[repr(C)]
pub struct RemoteBatch {
    chains: [Chain; SLOTS],
}

impl RemoteBatch {
    /// Gathers dead block `p` of `page` (another heap's, or this one's under
    /// `TIERMALLOC_SECURE=1`), already marked free, if its class is gathered; false (nothing
    /// done) if it is not. `hand_back` is called for a page whose flag a push cleared (the page
    /// sits in its owner's `full` queue).
    ///
    /// # Safety
    /// `p` must be a dead block of `page`, a page in use of class `class`, freed by the calling
    /// thread, which owns this batch.
    #[inline(always)]
    pub unsafe fn add(
        &mut self,
        page: *mut Page,
        class: usize,
        p: *mut u8,
        hand_back: unsafe fn(*mut Page),
    ) -> bool {
        if class >= SLOTS {
            return false;
        }
        let block = p.cast::<Block>();
        // SAFETY: `class < SLOTS`.
        let chain = unsafe { self.chains.get_unchecked_mut(class) };
        if chain.page == page && chain.count != 0 {
            // SAFETY: the block is dead and ours to link.
            unsafe { Block::set_next(block, chain.first) };
            chain.first = block;
            chain.count += 1;
            // SAFETY: `class < SLOTS`.
            if chain.count >= unsafe { *CHAIN_LIMIT.get_unchecked(class) } {
                // SAFETY: a full chain of this batch.
                unsafe { push(chain, hand_back) };
            }
            return true;
        }
        // SAFETY: as above.
        unsafe { start(chain, page, block, hand_back) };
        true
    }

    /// Hands every waiting chain to its page.
    pub fn flush_all(&mut self, hand_back: unsafe fn(*mut Page)) {
        for chain in self.chains.iter_mut() {
            if chain.count != 0 {
                // SAFETY: a non-empty chain of this batch (invariant).
                unsafe { push(chain, hand_back) };
            }
        }
    }

    /// Whether block `p` of `page` waits in one of the chains of `batch` (a suspected double
    /// free). Exact for the calling thread's own batch. Another thread's batch is read while its
    /// thread may change it: a chain read mid-change may be missed, and the walk reads only
    /// addresses that are carved block starts of `page` (mapped while `p` is), so it stays in
    /// mapped memory.
    ///
    /// # Safety
    /// `batch` must point to a registered heap's batch (heaps live forever); `page` must be the
    /// page in use that holds `p`.
    pub unsafe fn holds(batch: *const RemoteBatch, page: *mut Page, p: *mut u8) -> bool {
        // SAFETY: `batch` is valid (contract); plain volatile reads of words its thread may
        // be writing, each value checked before it is followed.
        unsafe {
            let class = ptr::addr_of!((*page).class).read_volatile() as usize;
            if class >= SLOTS {
                return false;
            }
            let chain = ptr::addr_of!((*batch).chains[class]);
            if ptr::addr_of!((*chain).page).read_volatile() != page {
                return false;
            }
            let count = ptr::addr_of!((*chain).count).read_volatile();
            if count == 0 {
                return false;
            }
            let first = ptr::addr_of!((*chain).first).read_volatile() as usize;
            (*page).is_on_chain(p, first, count)
        }
    }
}

/// Starts `chain` with `block` of `page`, first handing the chain of another page that held
/// the slot to its page.
///
/// # Safety
/// As for `RemoteBatch::add`; `chain` is a slot of the caller's batch.
#[cold]
#[inline(never)]
unsafe fn start(
    chain: &mut Chain,
    page: *mut Page,
    block: *mut Block,
    hand_back: unsafe fn(*mut Page),
) {
    if chain.count != 0 {
        // SAFETY: a non-empty chain of this batch (invariant).
        unsafe { push(chain, hand_back) };
    }
    // SAFETY: the block is dead and ours to link.
    unsafe { Block::set_next(block, ptr::null_mut()) };
    *chain = Chain {
        page,
        first: block,
        last: block,
        count: 1,
    };
}

/// Pushes non-empty `chain` onto its page's remote list and empties it.
///
/// # Safety
/// `chain` must be a non-empty chain of the caller's batch.
#[cold]
#[inline(never)]
unsafe fn push(chain: &mut Chain, hand_back: unsafe fn(*mut Page)) {
    let page = chain.page;
    let count = core::mem::take(&mut chain.count);
    // SAFETY: the chain's blocks are `count` dead blocks of `page`, linked first to last
    // (invariant); a page's remote list accepts pushes from any thread.
    unsafe {
        if (*page).remote.push_chain(chain.first, chain.last, count) == Pushed::ClearedFlag {
            hand_back(page);
        }
    }
}

/// The link walk of `holds`, on the page (it knows its block layout and key).
impl Page {
    /// Whether `p` is among the first `count` blocks of the chain starting at `first`,
    /// following only carved block starts of this page.
    fn is_on_chain(&self, p: *mut u8, first: usize, count: u32) -> bool {
        let this: *const Page = self;
        // SAFETY: plain reads of this descriptor (see `Page::holds_free`).
        let (start, magic, block_limit) = unsafe {
            (
                ptr::addr_of!((*this).start).read_volatile() as usize,
                ptr::addr_of!((*this).div_magic).read_volatile(),
                ptr::addr_of!((*this).block_limit).read_volatile(),
            )
        };
        let is_block = |b: usize| guard::is_block_offset(magic, block_limit, b.wrapping_sub(start));
        // SAFETY: addresses that pass `is_block` are carved blocks of this page, mapped while
        // the page holds `p`.
        unsafe { guard::is_on_lists(p as usize, first, 0, guard::process_key(), count, is_block) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dram::fast::{alloc, binding, free, segment::Segment};

    fn page_of(p: usize) -> *mut Page {
        Segment::page_of(Segment::of(p), p)
    }

    /// Whether `p` waits in the calling thread's own chains.
    fn gathered_here(p: usize) -> bool {
        let heap = binding::current();
        // SAFETY: this thread's heap (registered, alive); `p` is a block of a page in use.
        unsafe {
            RemoteBatch::holds(
                core::ptr::addr_of!((*heap).remote_batch),
                page_of(p),
                p as *mut u8,
            )
        }
    }

    /// Whether `p` is on its page's free or remote list.
    fn delivered(p: usize) -> bool {
        // SAFETY: the page holds `p` and is in use (the blocks around it are live).
        unsafe { (*page_of(p)).holds_free(p as *mut u8) }
    }

    /// Another thread's frees of this thread's blocks wait gathered in that thread's heap, not
    /// on the page, until the thread exits; then every one of them is on its page's lists.
    #[test]
    fn remote_frees_wait_gathered_until_the_thread_exits() {
        // A live neighbour keeps each page in use through the test.
        let keep: Vec<usize> = (0..4).map(|_| alloc(48) as usize).collect();
        let blocks: Vec<usize> = (0..10).map(|_| alloc(48) as usize).collect();
        let freed = blocks.clone();
        std::thread::spawn(move || {
            // A heap of its own first: a thread without one frees one block at a time.
            // SAFETY: a block of this thread's own.
            unsafe { free(alloc(16)) };
            for &p in &freed {
                // SAFETY: live blocks of the other thread's heap, freed once.
                unsafe { free(p as *mut u8) };
            }
            for &p in &freed {
                assert!(gathered_here(p), "a remote free is gathered");
                assert!(!delivered(p), "a gathered block is not on its page yet");
            }
        })
        .join()
        .unwrap();
        for &p in &blocks {
            assert!(
                delivered(p),
                "the thread's exit hands its chains to their pages"
            );
        }
        // Allocating again collects them; the lists stay consistent.
        let again: Vec<*mut u8> = (0..10).map(|_| alloc(48)).collect();
        // SAFETY: this thread's heap.
        unsafe { (*binding::current()).check_invariants() };
        for p in again
            .into_iter()
            .chain(keep.into_iter().map(|p| p as *mut u8))
        {
            // SAFETY: live blocks of ours.
            unsafe { free(p) };
        }
    }

    /// A chain goes to its page as soon as it holds its class's limit of blocks.
    #[test]
    fn a_full_chain_goes_to_its_page_at_once() {
        let class = crate::dram::fast::size_class::class_of(32);
        let limit = CHAIN_LIMIT[class] as usize;
        let keep = alloc(32) as usize;
        let blocks: Vec<usize> = (0..limit + 1).map(|_| alloc(32) as usize).collect();
        // The blocks of one page, in the order they will be freed.
        let same_page: Vec<usize> = blocks
            .iter()
            .copied()
            .filter(|&p| page_of(p) == page_of(blocks[0]))
            .collect();
        assert!(
            same_page.len() > limit,
            "one page serves {} blocks of 32 bytes",
            limit + 1
        );
        let freed = same_page.clone();
        std::thread::spawn(move || {
            // SAFETY: as above.
            unsafe { free(alloc(16)) };
            // `spawn` frees in this thread what the parent allocated for it (the closure's
            // box), which may be a block of the same page and class: start with no chain.
            // SAFETY: this thread's heap (registered, alive).
            unsafe { (*binding::current()).flush_remote_batch() };
            for &p in &freed[..limit] {
                // SAFETY: live blocks of the other thread's heap.
                unsafe { free(p as *mut u8) };
            }
            for &p in &freed[..limit] {
                assert!(delivered(p), "a full chain is pushed");
                assert!(!gathered_here(p));
            }
            // SAFETY: as above.
            unsafe { free(freed[limit] as *mut u8) };
            assert!(
                gathered_here(freed[limit]),
                "the next free starts a new chain"
            );
        })
        .join()
        .unwrap();
        for p in blocks
            .into_iter()
            .filter(|p| !same_page.contains(p))
            .chain([keep])
        {
            // SAFETY: live blocks of ours.
            unsafe { free(p as *mut u8) };
        }
    }
}
