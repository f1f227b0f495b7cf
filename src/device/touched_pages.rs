//! Which pages of a device region this process has made present, so that a cut's header
//! writes (`DeviceTier::publish`, under the heap lock) do not take a page fault there.
//!
//! **Why.** A cut writes a block's header on the page where its extent starts, a new free
//! extent's header behind it and the size of the free extent in front, all under the heap
//! lock. A page of the mapping the process has not touched yet faults on the first write:
//! 1-5 us on the 2-core VM for a file in `/dev/shm` (how device tiers are emulated), and the
//! heap's cuts keep landing on such pages long after the first fill, since a cut splits a free
//! extent at a new place. With 16..65535 B blocks on a PMR tier that was 0.013 faults per pair,
//! the heap lock held 5.5 k cycles per cut instead of 1.2 k, and a second thread waited for it
//! (two threads paid 1.9x one thread's time per pair; BENCHMARKS.md, session 15, `dev2t`).
//!
//! **What.** One bit per page of the region, set once the page is known present. A cut whose
//! pages (its block's header, its tail's; the front's header was written when that free extent
//! was made, on a page known since) are not all known present is undone at once (the extent
//! back to the heap, before anything is written: the heap is as it was), the heap lock
//! released, the pages made present (`os::prefault_write`: no byte changes), and the cut
//! tried again, which lands on the same place unless another thread took it meanwhile; a
//! second try writes whatever it finds (as before: the fault, if any, under the lock). Only
//! the pages a cut writes are made present, so a backing gets no page it would not have got
//! anyway (`MADV_POPULATE_WRITE` on anonymous memory or a file allocates or reads what the
//! header write would have).
//!
//! **Stale bits** cost a fault under the lock, never correctness: a bit is a hint. They arise
//! when the mapping is replaced (a forked child's private copy, an evacuation's new backing);
//! the bits are never cleared.
//!
//! **Learnt from the page tables.** Before making a page present, the pages of its bitmap word
//! (64 pages) that the page tables hold already are marked, from one read of
//! `/proc/self/pagemap` (opened for the read only, under a lock the `fork` handlers take;
//! each word read once): a region made present by someone else (a program that populated
//! it, as `benches/rust/inregion.rs` does) costs one retry per 64 pages instead of one per
//! page.
//!
//! Host memory: one bit per 4 KiB page (32 KiB per GiB of region), mapped lazily; without it
//! every page counts as present (the old behaviour).

use crate::os;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

const PAGE: u64 = os::PAGE_SIZE as u64;

/// The pages of one region known present.
///
/// Invariant: `bits` is null or maps `words` words, one bit per page of the region; a set bit's
/// page has been made present in this process's mapping (or the mapping was replaced since).
pub(crate) struct TouchedPages {
    bits: Option<NonNull<AtomicU64>>,
    words: usize,
    /// One bit per word of `bits`: the word was learnt from the page tables once (`learn`),
    /// so a region whose pages are absent pays one read per 64 pages, not one per cut. Past
    /// `bits` in the same mapping.
    learnt: usize,
    /// Held across `learn`'s open, read and close of `/proc/self/pagemap`, and by the `fork`
    /// handlers (`lock_for_fork`), so that no forked child inherits that descriptor. Taken
    /// with no other lock held after it (`learn` takes none), so it comes last in the fork's
    /// lock order.
    reading: crate::futex_mutex::Mutex<()>,
    /// Test-only: descriptors `learn` holds open on the page map now. A test asks this of
    /// its own tier: other tests of the binary open the page map at any moment.
    #[cfg(test)]
    pub(super) page_maps_open: core::sync::atomic::AtomicU32,
}

// SAFETY: the words are atomics.
unsafe impl Send for TouchedPages {}
// SAFETY: as above.
unsafe impl Sync for TouchedPages {}

/// The pages of a cut that are not known present: up to two, `n` of them.
pub(crate) struct Missing {
    pages: [u64; 2],
    n: usize,
}

impl TouchedPages {
    /// For a region of `len` bytes, every page unknown (absent).
    pub fn new(len: u64) -> TouchedPages {
        let words = (len.div_ceil(PAGE) as usize).div_ceil(64);
        let learnt = words.div_ceil(64);
        TouchedPages {
            bits: os::map_anonymous(Self::bytes(words)).map(|p| p.cast::<AtomicU64>()),
            words,
            learnt,
            reading: crate::futex_mutex::Mutex::new(()),
            #[cfg(test)]
            page_maps_open: core::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Bytes mapped for `words` words and their `learnt` bits.
    fn bytes(words: usize) -> usize {
        os::page_round((words.max(1) + words.div_ceil(64)) * 8)
    }

    /// Whether word `word` of `bits` was learnt already; marks it learnt.
    fn first_learning(&self, word: u64) -> bool {
        let (Some(bits), i) = (self.bits, (word / 64) as usize) else {
            return false;
        };
        if i >= self.learnt {
            return false;
        }
        // SAFETY: the `learnt` words follow the `words` ones in the mapping (`bytes`).
        let w = unsafe { &*bits.as_ptr().add(self.words + i) };
        w.fetch_or(1 << (word % 64), Ordering::Relaxed) & (1 << (word % 64)) == 0
    }

    fn word(&self, page: u64) -> Option<&AtomicU64> {
        let i = (page / 64) as usize;
        let bits = self.bits?;
        if i >= self.words {
            return None;
        }
        // SAFETY: `i < words`, and `bits` maps `words` words (the invariant).
        Some(unsafe { &*bits.as_ptr().add(i) })
    }

    /// Whether the page holding region offset `offset` is known present (true without a map).
    #[inline(always)]
    fn known(&self, offset: u64) -> bool {
        let page = offset / PAGE;
        match self.word(page) {
            Some(w) => w.load(Ordering::Relaxed) & (1 << (page % 64)) != 0,
            None => true,
        }
    }

    /// Whether every page a cut writes is known present (the heap path's test, under the
    /// lock: a few instructions per offset).
    #[inline(always)]
    pub fn knows_all(&self, offsets: [Option<u64>; 2]) -> bool {
        offsets
            .into_iter()
            .flatten()
            .all(|offset| self.known(offset))
    }

    /// The pages among those holding `offsets` (the header writes of one cut) not known
    /// present; `None` if all are.
    #[cold]
    #[inline(never)]
    pub fn missing(&self, offsets: [Option<u64>; 2]) -> Option<Missing> {
        let mut m = Missing {
            pages: [0; 2],
            n: 0,
        };
        for offset in offsets.into_iter().flatten() {
            if !self.known(offset) {
                let page = offset / PAGE;
                if !m.pages[..m.n].contains(&page) {
                    m.pages[m.n] = page;
                    m.n += 1;
                }
            }
        }
        (m.n > 0).then_some(m)
    }

    /// Makes the `missing` pages of the region at `base` present and marks them (no lock held:
    /// this is the fault the heap lock no longer waits for).
    #[cold]
    #[inline(never)]
    pub fn make_present(&self, base: usize, missing: &Missing) {
        for &page in &missing.pages[..missing.n] {
            if !self.known(page * PAGE) && self.first_learning(page / 64) {
                self.learn(base, page / 64);
            }
            if !self.known(page * PAGE) {
                os::prefault_write((base + (page * PAGE) as usize) as *mut u8, PAGE as usize);
                if let Some(w) = self.word(page) {
                    w.fetch_or(1 << (page % 64), Ordering::Relaxed);
                }
            }
        }
    }

    /// Waits for a `learn` under way and keeps the next one out until `unlock_after_fork`
    /// (`fork`'s prepare handler).
    pub fn lock_for_fork(&self) {
        core::mem::forget(self.reading.lock());
    }

    /// Lets `learn` run again (`fork`'s parent and child handlers).
    pub fn unlock_after_fork(&self) {
        // SAFETY: the prepare handler of this same fork took the lock and forgot its guard.
        unsafe { self.reading.force_unlock() };
    }

    /// Marks the pages of bitmap word `word` that the page tables hold already (read from
    /// `/proc/self/pagemap`, one read for 64 pages): a region whose pages were made present by
    /// someone else (a program that populated it, an earlier touch of a block) is learnt 64
    /// pages per cut that does not know its page, not one.
    pub(super) fn learn(&self, base: usize, word: u64) {
        let Some(w) = self.word(word * 64) else {
            return;
        };
        let path = c"/proc/self/pagemap";
        // Open, read and close under `reading`, which a `fork` waits for.
        let _reading = self.reading.lock();
        // SAFETY: a NUL-terminated path. Opened for this read only: a descriptor kept open
        // would pass to a forked child (which must hold none of its parent's page map).
        let fd = os::keep_errno(|| unsafe {
            libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC)
        });
        if fd < 0 {
            return;
        }
        #[cfg(test)]
        self.page_maps_open.fetch_add(1, Ordering::AcqRel);
        let mut entries = [0u64; 64];
        let first = (base / os::PAGE_SIZE) as u64 + word * 64;
        let n = 64.min(self.words as u64 * 64 - word * 64) as usize;
        let at = (first * 8) as libc::off_t;
        // SAFETY: reading into our own buffer of `n` entries from our descriptor.
        let got = os::keep_errno(|| unsafe {
            let got = libc::pread(fd, entries.as_mut_ptr().cast(), n * 8, at);
            libc::close(fd);
            got
        });
        #[cfg(test)]
        self.page_maps_open.fetch_sub(1, Ordering::AcqRel);
        if got <= 0 {
            return;
        }
        let mut present = 0u64;
        for (i, e) in entries[..got as usize / 8].iter().enumerate() {
            present |= (e >> 63) << i;
        }
        w.fetch_or(present, Ordering::Relaxed);
    }
}

impl Drop for TouchedPages {
    fn drop(&mut self) {
        if let Some(bits) = self.bits {
            // SAFETY: mapped by `new` with this size, used by nobody else.
            unsafe { os::unmap(bits.as_ptr().cast(), Self::bytes(self.words)) };
        }
    }
}

// Test-only: pages a cut's writes found absent from the page tables (read from
// `/proc/self/pagemap` just before `publish`), on this thread.
#[cfg(test)]
std::thread_local! {
    pub(crate) static ABSENT_AT_PUBLISH: core::cell::Cell<u32> = const { core::cell::Cell::new(0) };
}

/// Whether the page at `addr` is present in this process's page tables (pagemap bit 63).
#[cfg(test)]
pub(crate) fn page_present(addr: usize) -> bool {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open("/proc/self/pagemap").unwrap();
    let mut entry = [0u8; 8];
    let at = (addr / os::PAGE_SIZE * 8) as u64;
    file.read_exact_at(&mut entry, at).unwrap();
    u64::from_le_bytes(entry) >> 63 != 0
}

/// Counts the pages `publish` is about to write that are absent (`ABSENT_AT_PUBLISH`).
#[cfg(test)]
pub(crate) fn note_published(base: usize, carved: &super::extent_heap::Carved) {
    let offsets = [
        Some(carved.offset),
        carved.front.map(|f| f.0),
        carved.tail.map(|t| t.0),
    ];
    let absent = offsets
        .into_iter()
        .flatten()
        .filter(|&offset| !page_present(base + offset as usize))
        .count() as u32;
    ABSENT_AT_PUBLISH.with(|a| a.set(a.get() + absent));
}
