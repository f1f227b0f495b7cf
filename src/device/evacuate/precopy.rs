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

    /// The pages touched after `drop_entries` are the ones `touched` reports, and dropping
    /// the entries keeps every byte.
    #[test]
    fn touched_pages_are_the_ones_written_after_the_drop() {
        let path = format!("/dev/shm/tiermalloc-precopy-{}\0", std::process::id());
        // SAFETY: a NUL-terminated path.
        let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDWR | libc::O_CREAT, 0o600) };
        assert!(fd >= 0);
        // SAFETY: as above.
        unsafe { libc::unlink(path.as_ptr().cast()) };
        let len = 64 * os::PAGE_SIZE;
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
        let mut pre = Precopy::new(fd, 0, len).unwrap();
        assert!(pre.open_pagemap() >= 0);
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
