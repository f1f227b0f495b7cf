//! Pre-copy: a chunk's live bytes are copied *before* its writers are held, and the hold then
//! copies again only the pages some thread touched since. What tells those pages apart is the
//! tier's own page table: the chunk's entries are dropped just before the pre-copy, so a page
//! that any thread (or the kernel, in `read(2)`) wrote meanwhile is one that faulted back in,
//! and `/proc/self/pagemap` shows it present once the chunk is write-protected.
//!
//! The pre-copy reads the source through a second, read-only mapping of it (the *view*):
//! reading through the tier's range would map the pages again. The device's header reads of
//! the listing (`free_headers`) go through the view too, but for chunks already moved, which
//! are read on the target (`DeviceBytes`: the view's copy of them is stale).
//!
//! Why: a hold used to be a write-protect, the copy, a remap and a wake, and the write-protect
//! and the remap each shot down the chunk's TLB entries on the other CPU, waiting for it to
//! answer an IPI; on the shared 2-core VM one in a hundred answers took 100-200 us (perf's
//! `tlb:tlb_flush` events, BENCHMARKS.md "Live evacuation"), and the copy was most of the
//! rest. With the entries dropped beforehand (`MADV_DONTNEED` of a shared file mapping drops
//! page-table entries only, never the file's pages), the write-protect only marks empty
//! entries and the remap replaces a range with nothing mapped: neither has a TLB entry to
//! shoot down. The shootdown happens before the hold, where nobody waits for it, and the hold
//! copies only what changed during the pre-copy (usually nothing).
//!
//! Why no write is lost: a store that completed before the drop returned is in the file's
//! page, which the pre-copy (started after it) reads; a store after the drop faulted its page
//! in, so the page is present at the hold and copied again there; after the write-protect,
//! writers are held. A range that became live after the pre-copy's listing (the hold lists
//! again) is copied whole in the hold, whatever its pages say (`Ranges::covers`).
//!
//! Only for a source mapped from a file or device (shmem, hugetlbfs): dropping the entries of
//! anonymous memory would drop its bytes. An anonymous source has no view; its chunks are
//! copied inside the hold, with their entries in place, as before.

use crate::os;

/// `madvise` advice: fault the range's pages in for reading (Linux 5.14).
const MADV_POPULATE_READ: i32 = 22;

/// Most pages of a chunk whose presence is tracked (a 16 MiB chunk); a larger chunk is copied
/// whole in its hold.
const MAX_PAGES: usize = 4096;

/// `/proc/self/pagemap`: the entry's page is present in the page table.
const PM_PRESENT: u64 = 1 << 63;

/// The source's bytes `[0, len)` of the region mapped read-only at `view`, unmapped on drop,
/// and `/proc/self/pagemap` open (or -1, then every hold copies its chunk whole).
///
/// Invariant: `[view, view + len)` maps the same file pages as the tier's region (offset for
/// offset) for as long as the move runs; nothing writes through it.
pub(super) struct Precopy {
    view: usize,
    len: usize,
    pagemap: i32,
}

/// Which pages of a held chunk were touched since its entries were dropped (one bit per
/// 4 KiB page from the chunk's start), if that is known.
pub(super) struct Touched {
    bits: [u64; MAX_PAGES / 64],
    known: bool,
}

impl Touched {
    pub fn new() -> Touched {
        Touched {
            bits: [0; MAX_PAGES / 64],
            known: false,
        }
    }

    /// Whether the bytes at chunk offset `at` may have changed since the pre-copy.
    pub fn page(&self, at: usize) -> bool {
        let p = at / os::PAGE_SIZE;
        !self.known || p >= MAX_PAGES || self.bits[p / 64] & (1 << (p % 64)) != 0
    }

    /// The first `N` runs of touched pages among the first `pages` of the chunk, as chunk
    /// offsets `[start, end)` in address order, and how many there are of them (at most `N`);
    /// None if which pages were touched is not known.
    pub fn runs<const N: usize>(&self, pages: usize) -> Option<([(usize, usize); N], usize)> {
        if !self.known || pages > MAX_PAGES {
            return None;
        }
        let mut runs = [(0, 0); N];
        let mut n = 0;
        let mut p = 0;
        while p < pages {
            let word = self.bits[p / 64] >> (p % 64);
            if word == 0 {
                p = (p / 64 + 1) * 64;
                continue;
            }
            p += word.trailing_zeros() as usize;
            if p >= pages {
                break;
            }
            let start = p;
            while p < pages && self.bits[p / 64] & (1 << (p % 64)) != 0 {
                p += 1;
            }
            if n == N {
                break;
            }
            runs[n] = (start * os::PAGE_SIZE, p * os::PAGE_SIZE);
            n += 1;
        }
        Some((runs, n))
    }
}

impl Precopy {
    /// Maps `[offset, offset + len)` of the source `fd` (the file behind the tier's region at
    /// `offset`) shared and read-only at a fresh address. None for an anonymous source
    /// (`fd` -1) or if the kernel refuses (the move then copies inside the holds, as for
    /// anonymous memory).
    pub fn new(fd: i32, offset: u64, len: usize) -> Option<Precopy> {
        if fd < 0 || len == 0 {
            return None;
        }
        os::keep_errno(|| {
            let p = map_read_only(fd, offset, len)? as *mut libc::c_void;
            // A child forked during the move has no use for it.
            // SAFETY: advice on our fresh mapping.
            unsafe { libc::madvise(p, len, libc::MADV_DONTFORK) };
            Some(Precopy {
                view: p as usize,
                len,
                pagemap: -1,
            })
        })
    }

    /// Opens `/proc/self/pagemap` (left -1 if it cannot be: every hold then copies its chunk
    /// whole) and returns the descriptor. The caller publishes it for a forked child to close,
    /// with `fork` held off (`evacuate::with_fork_held`).
    pub fn open_pagemap(&mut self) -> i32 {
        if self.pagemap < 0 {
            // SAFETY: a NUL-terminated path.
            self.pagemap = os::keep_errno(|| unsafe {
                libc::open(
                    c"/proc/self/pagemap".as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                )
            });
        }
        self.pagemap
    }

    /// Closes the page map descriptor (with `fork` held off, once it is unpublished).
    pub fn close_pagemap(&mut self) {
        if self.pagemap >= 0 {
            // SAFETY: our own descriptor, closed once (set to -1 here).
            os::keep_errno(|| unsafe { libc::close(self.pagemap) });
            self.pagemap = -1;
        }
    }

    /// The view's address of the region's byte 0: where the source is read.
    pub fn view(&self) -> usize {
        self.view
    }

    /// Maps the view's pages of the live `ranges` (so that the pre-copies read present pages,
    /// one call per range rather than a fault per page). Changes no byte.
    pub fn populate_view(&self, ranges: &[(u64, u64)]) {
        os::keep_errno(|| {
            for &(start, end) in ranges {
                let first = start as usize & !(os::PAGE_SIZE - 1);
                let last = os::page_round(end as usize).min(self.len);
                // SAFETY: populating pages of our own mapping changes no byte; a refusal only
                // leaves the copy to fault them in.
                unsafe {
                    libc::madvise(
                        (self.view + first) as *mut libc::c_void,
                        last - first,
                        MADV_POPULATE_READ,
                    )
                };
            }
        });
    }

    /// Readies the chunk `[lo, hi)` for its pre-copy: drops every page-table entry of the
    /// chunk in the tier's range at `region_base` (the one TLB shootdown, here rather than in
    /// the hold). Changes no byte: the file keeps its pages, and a thread that touches the
    /// chunk from here on maps them again, which `touched` sees. The chunk's pre-copy must
    /// start after this returns.
    ///
    /// # Safety
    /// `[region_base + lo, region_base + hi)` is a `MAP_SHARED` mapping of the same file as
    /// the view (never anonymous memory: its bytes would go), aligned to its page size.
    pub unsafe fn drop_entries(&self, region_base: usize, lo: usize, hi: usize) {
        // SAFETY: the caller promises a shared file mapping: MADV_DONTNEED drops its
        // page-table entries only, the file's pages (and so every byte) stay.
        os::keep_errno(|| unsafe {
            libc::madvise(
                (region_base + lo) as *mut libc::c_void,
                hi - lo,
                libc::MADV_DONTNEED,
            )
        });
    }

    /// The pre-copy's second pass over the chunk `[lo, hi)` of the tier's range at
    /// `region_base`, right after the first (`drop_entries`, then every live byte copied):
    /// each of the first `N` runs of pages touched meanwhile is dropped again and then handed
    /// to `recopy` as region offsets `[start, end)`, to be copied again. The hold then finds
    /// mapped (and copies) only the pages touched since their last drop: during this short
    /// pass for these runs, during the whole pre-copy for runs past the first `N`, which stay
    /// mapped. `touched` is left as the first pass's. Nothing is dropped with 0 runs, or if the
    /// page map cannot be read.
    ///
    /// # Safety
    /// As `drop_entries` for the chunk.
    pub unsafe fn second_pass<const N: usize>(
        &self,
        region_base: usize,
        lo: usize,
        hi: usize,
        touched: &mut Touched,
        mut recopy: impl FnMut(usize, usize),
    ) {
        self.touched(region_base, lo, hi, touched);
        let Some((runs, n)) = touched.runs::<N>((hi - lo) / os::PAGE_SIZE) else {
            return;
        };
        for &(start, end) in &runs[..n] {
            // SAFETY: a page-aligned part of the chunk, which the caller promises is fit.
            unsafe { self.drop_entries(region_base, lo + start, lo + end) };
            recopy(lo + start, lo + end);
        }
    }

    /// Reads which pages of the chunk `[lo, hi)` of the tier's range at `region_base` are
    /// mapped now: those touched since `drop_entries`. Call it with the chunk write-protected:
    /// no write reaches the chunk from then on, so every page written since the drop is among
    /// those reported (pages only read are too). Leaves `touched` unknown (every page copied)
    /// if the page map cannot be read.
    pub fn touched(&self, region_base: usize, lo: usize, hi: usize, touched: &mut Touched) {
        touched.known = false;
        let pages = (hi - lo) / os::PAGE_SIZE;
        if self.pagemap < 0 || pages > MAX_PAGES {
            return;
        }
        touched.bits = [0; MAX_PAGES / 64];
        let first = (region_base + lo) / os::PAGE_SIZE;
        let mut entries = [0u64; 512];
        let mut done = 0;
        while done < pages {
            let n = (pages - done).min(entries.len());
            let want = n * 8;
            // SAFETY: our descriptor and a buffer of at least `want` bytes.
            let got = os::keep_errno(|| unsafe {
                libc::pread(
                    self.pagemap,
                    entries.as_mut_ptr().cast(),
                    want,
                    ((first + done) * 8) as libc::off_t,
                )
            });
            if got != want as isize {
                return;
            }
            for (i, &e) in entries[..n].iter().enumerate() {
                if e & PM_PRESENT != 0 {
                    let p = done + i;
                    touched.bits[p / 64] |= 1 << (p % 64);
                }
            }
            done += n;
        }
        touched.known = true;
    }
}

/// Maps `[offset, offset + len)` of `fd` shared and read-only at a fresh address: its address,
/// or None (errno set) if the kernel refuses.
pub(super) fn map_read_only(fd: i32, offset: u64, len: usize) -> Option<usize> {
    // SAFETY: a fresh shared read-only mapping of a descriptor of the caller's; it changes no
    // other mapping.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            offset as libc::off_t,
        )
    };
    (p != libc::MAP_FAILED).then_some(p as usize)
}

impl Drop for Precopy {
    fn drop(&mut self) {
        // SAFETY: our own mapping, which nothing refers to once the move is over.
        unsafe { os::unmap(self.view as *mut u8, self.len) };
        self.close_pagemap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touched(pages: &[usize]) -> Touched {
        let mut t = Touched::new();
        t.known = true;
        for &p in pages {
            t.bits[p / 64] |= 1 << (p % 64);
        }
        t
    }

    /// The second pass drops and copies exactly the runs of touched pages: consecutive pages
    /// merge, a run may cross a 64-page word, pages past the chunk are left out, only the
    /// first runs are given when there are more than it takes, and an unknown set gives none
    /// (the hold copies everything).
    #[test]
    fn touched_pages_come_in_runs() {
        let p = os::PAGE_SIZE;
        let t = touched(&[0, 1, 2, 5, 63, 64, 65, 200, 255, 300]);
        let (runs, n) = t.runs::<8>(256).unwrap();
        assert_eq!(
            &runs[..n],
            &[
                (0, 3 * p),
                (5 * p, 6 * p),
                (63 * p, 66 * p),
                (200 * p, 201 * p),
                (255 * p, 256 * p)
            ]
        );
        assert_eq!(t.runs::<8>(256).map(|(_, n)| n), Some(5));
        let (runs, n) = t.runs::<2>(256).unwrap();
        assert_eq!(
            &runs[..n],
            &[(0, 3 * p), (5 * p, 6 * p)],
            "the first two of five"
        );
        let (_, n) = touched(&[]).runs::<1>(256).unwrap();
        assert_eq!(n, 0);
        assert!(
            Touched::new().runs::<8>(256).is_none(),
            "unknown: the hold copies all"
        );
        let (runs, n) = touched(&[MAX_PAGES - 1]).runs::<1>(MAX_PAGES).unwrap();
        assert_eq!(&runs[..n], &[((MAX_PAGES - 1) * p, MAX_PAGES * p)]);
    }

    /// A shared mapping of a fresh /dev/shm file of `len` bytes, filled with 7, and its
    /// descriptor (the file already unlinked).
    fn shared_file(tag: &str, len: usize) -> (usize, i32) {
        let path = format!("/dev/shm/tiermalloc-precopy-{tag}-{}\0", std::process::id());
        // SAFETY: a NUL-terminated path.
        let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDWR | libc::O_CREAT, 0o600) };
        assert!(fd >= 0);
        // SAFETY: as above.
        unsafe { libc::unlink(path.as_ptr().cast()) };
        // SAFETY: our descriptor; a fresh shared mapping of it.
        let region = unsafe {
            assert_eq!(libc::ftruncate(fd, len as libc::off_t), 0);
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        } as usize;
        assert_ne!(region, libc::MAP_FAILED as usize);
        // SAFETY: our mapping.
        unsafe { core::ptr::write_bytes(region as *mut u8, 7, len) };
        (region, fd)
    }

    /// `shared_file`'s region of 64 pages, its descriptor, and a pre-copy view of it with the
    /// page map open.
    fn region_and_view(tag: &str) -> (usize, i32, Precopy) {
        let (region, fd) = shared_file(tag, 64 * os::PAGE_SIZE);
        let mut pre = Precopy::new(fd, 0, 64 * os::PAGE_SIZE).unwrap();
        assert!(pre.open_pagemap() >= 0);
        (region, fd, pre)
    }

    /// The second pass copies again, after dropping them again, exactly the pages touched
    /// during the first (a store that landed after its page was copied arrives), so that the
    /// hold sees only pages touched after that; runs past its limit stay mapped for the hold.
    #[test]
    fn the_second_pass_copies_the_pages_touched_during_the_first_again() {
        let len = 64 * os::PAGE_SIZE;
        let (region, fd, pre) = region_and_view("second");
        let mut target = vec![0u8; len];
        let copy_into = |target: &mut Vec<u8>, pre: &Precopy, start: usize, end: usize| {
            // SAFETY: `[start, end)` of the view, which maps `len` bytes.
            let from = unsafe {
                core::slice::from_raw_parts((pre.view() + start) as *const u8, end - start)
            };
            target[start..end].copy_from_slice(from);
        };
        let store = |page: usize, v: u64| {
            // SAFETY: our mapping, `page` < 64.
            unsafe { ((region + page * os::PAGE_SIZE + 8) as *mut u64).write_volatile(v) };
        };
        let stored = |target: &Vec<u8>, page: usize| {
            let at = page * os::PAGE_SIZE + 8;
            u64::from_ne_bytes(target[at..at + 8].try_into().unwrap())
        };
        let present = |pre: &Precopy, t: &mut Touched| -> Vec<usize> {
            pre.touched(region, 0, len, t);
            (0..64).filter(|&p| t.page(p * os::PAGE_SIZE)).collect()
        };
        let mut t = Touched::new();
        // The first pass: drop, copy everything; then stores land on pages 3, 4 and 40.
        // SAFETY: a shared file mapping, the whole of it.
        unsafe { pre.drop_entries(region, 0, len) };
        copy_into(&mut target, &pre, 0, len);
        store(3, 33);
        store(4, 44);
        store(40, 400);
        let mut recopied = Vec::new();
        // SAFETY: as above.
        unsafe {
            pre.second_pass::<16>(region, 0, len, &mut t, |a, b| {
                recopied.push((a, b));
                copy_into(&mut target, &pre, a, b);
            })
        };
        let p = os::PAGE_SIZE;
        assert_eq!(recopied, [(3 * p, 5 * p), (40 * p, 41 * p)]);
        assert_eq!(
            (stored(&target, 3), stored(&target, 4), stored(&target, 40)),
            (33, 44, 400)
        );
        assert_eq!(present(&pre, &mut t), Vec::<usize>::new(), "dropped again");
        // A store after the second pass is the hold's.
        store(7, 70);
        assert_eq!(present(&pre, &mut t), [7]);
        // More runs than the pass takes: the first two are copied again, the third stays
        // mapped for the hold (with page 7's).
        store(10, 1);
        store(20, 2);
        store(30, 3);
        recopied.clear();
        // SAFETY: as above.
        unsafe {
            pre.second_pass::<2>(region, 0, len, &mut t, |a, b| {
                recopied.push((a, b));
                copy_into(&mut target, &pre, a, b);
            })
        };
        assert_eq!(recopied, [(7 * p, 8 * p), (10 * p, 11 * p)]);
        assert_eq!(present(&pre, &mut t), [20, 30]);
        // SAFETY: our mapping and descriptor.
        unsafe {
            libc::munmap(region as *mut libc::c_void, len);
            libc::close(fd);
        }
    }

    /// The pages touched after `drop_entries` are the ones `touched` reports, and dropping
    /// the entries keeps every byte.
    #[test]
    fn touched_pages_are_the_ones_written_after_the_drop() {
        let len = 64 * os::PAGE_SIZE;
        let (region, fd, pre) = region_and_view("touched");
        pre.populate_view(&[(0, len as u64)]);
        // SAFETY: a shared file mapping, the whole of it.
        unsafe { pre.drop_entries(region, 0, len) };
        let mut t = Touched::new();
        pre.touched(region, 0, len, &mut t);
        assert!((0..64).all(|p| !t.page(p * os::PAGE_SIZE)), "all dropped");
        // SAFETY: our mapping.
        unsafe {
            ((region + 3 * os::PAGE_SIZE + 8) as *mut u64).write_volatile(1);
            ((region + 40 * os::PAGE_SIZE) as *mut u8).write_volatile(2);
        }
        pre.touched(region, 0, len, &mut t);
        let got: Vec<usize> = (0..64).filter(|&p| t.page(p * os::PAGE_SIZE)).collect();
        assert_eq!(got, [3, 40]);
        // The bytes stayed, in the region and in the view.
        // SAFETY: our mappings.
        unsafe {
            assert_eq!(*((pre.view() + 3 * os::PAGE_SIZE + 8) as *const u64), 1);
            assert_eq!(*((pre.view() + 40 * os::PAGE_SIZE) as *const u8), 2);
            assert_eq!(*((region + 20 * os::PAGE_SIZE) as *const u8), 7);
            assert_eq!(*((pre.view() + 20 * os::PAGE_SIZE) as *const u8), 7);
            libc::munmap(region as *mut libc::c_void, len);
            libc::close(fd);
        }
    }
}
