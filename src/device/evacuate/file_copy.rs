//! The pre-copy's bytes copied file to file: `copy_file_range(2)` from the source's descriptor
//! into the target's, at the same offsets in the region, where both files allow it.
//!
//! Why: copied through the mappings (the source's read-only view into the target's staging
//! mapping), every page of a chunk costs page-table work that plain `memcpy` between two
//! mappings does not do: the staging page allocated, zeroed and mapped (`MADV_POPULATE_WRITE`),
//! the view's page mapped, and both entries torn down again when the move unmaps them. On the
//! shared VM of BENCHMARKS.md ("Session 11, branch evac4w") that work was most of the copying
//! thread's CPU beyond `memcpy`'s, and with writer threads running it grew and swung
//! (the target's populate alone 0.22 s per GiB without writers, 0.29-1.0 s with 4): the move
//! reached 40-75 % of `memcpy`'s CPU per byte. The kernel's file copy touches no page table:
//! it allocates the target's page without zeroing it (a whole page is written) and copies
//! into it through the kernel's own mapping.
//!
//! What it keeps: the copy reads the source file's pages, the very pages the tier's range maps,
//! so a store is in what it reads exactly as it is in what the view shows (`precopy` says
//! why none is lost). The target's pages it fills are the ones the staging mapping and, after
//! the remap, the tier's range map.
//!
//! Where it is refused: files on two different file systems (EXDEV: a `/dev/shm` source and a
//! target on disk or on another tmpfs mount; `a_tier_moves_onto_a_disk_file_but_not_off_it`
//! takes this way), and whatever else the kernel cannot copy between (hugetlbfs reads no splice
//! and takes no `write(2)`; a device or BAR target: not tried here, no such mount or device
//! on this machine). The first refusal turns it off for the rest of the move, and every copy
//! goes through the mappings as before. `TIERMALLOC_EVACUATE_COPY=mapped` turns it
//! off from the start (the tests cover both ways so).

use crate::os;
use core::cell::Cell;

/// The source and target descriptors of one move, and whether the kernel copies between them.
///
/// Invariant: while `works`, `source` holds the region's byte `k` at `source_offset + k` and
/// `target` at `k`, and both stay open for the move.
pub(super) struct FileCopy {
    source: i32,
    source_offset: u64,
    target: i32,
    works: Cell<bool>,
    /// Bytes the kernel copied.
    copied: Cell<u64>,
}

impl FileCopy {
    /// The kernel's file copy from `source` (the region's byte 0 at `source_offset`) into
    /// `target` (at 0), unless either is not a file (-1) or `TIERMALLOC_EVACUATE_COPY` says
    /// `mapped`.
    pub fn new(source: i32, source_offset: u64, target: i32) -> FileCopy {
        use crate::config::Report;
        const NAME: &str = "TIERMALLOC_EVACUATE_COPY";
        let wanted = match os::getenv(NAME.as_bytes()) {
            None | Some(b"file") => true,
            Some(b"mapped") => false,
            Some(other) => {
                crate::config::Stderr.problem(
                    NAME,
                    other,
                    "expected file or mapped (file is the default)",
                );
                true
            }
        };
        FileCopy {
            source,
            source_offset,
            target,
            works: Cell::new(wanted && source >= 0 && target >= 0),
            copied: Cell::new(0),
        }
    }

    /// Whether copies go file to file (so the mappings' pages need not be made present).
    pub fn works(&self) -> bool {
        self.works.get()
    }

    /// Bytes copied file to file so far.
    pub fn copied(&self) -> u64 {
        self.copied.get()
    }

    /// Copies the region's bytes `[start, end)` from the source file into the target file.
    /// Returns how far it got: `end`, or the offset from which the caller copies through the
    /// mappings (the kernel refused, which turns the file copy off for the rest of the move,
    /// or stopped short). Keeps errno.
    pub fn copy(&self, start: usize, end: usize) -> usize {
        let mut at = start;
        os::keep_errno(|| {
            while self.works.get() && at < end {
                let mut from = (self.source_offset + at as u64) as libc::loff_t;
                let mut to = at as libc::loff_t;
                // SAFETY: two descriptors of ours, offsets passed by pointer (neither file's
                // position changes), no flags.
                let n = unsafe {
                    libc::copy_file_range(self.source, &mut from, self.target, &mut to, end - at, 0)
                };
                if n <= 0 {
                    // Refused (the files cannot be copied between) or nothing copied (the
                    // source shorter than the region, which it never is): the mappings copy
                    // from here on.
                    self.works.set(false);
                    break;
                }
                at += n as usize;
                self.copied.set(self.copied.get() + n as u64);
            }
        });
        at
    }
}
