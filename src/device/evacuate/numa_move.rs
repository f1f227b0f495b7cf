//! Moving a `numa=` tier onto another NUMA node in place: `tm_evacuate(kind, "numa=N")`.
//!
//! A `numa=` tier is anonymous memory bound to a node (`mbind`), so "another device" is another
//! node, and the kernel moves pages between nodes itself, keeping their virtual addresses:
//! `move_pages(2)` copies each page to a new one on the target node while the page's mapping
//! is replaced by a migration entry, so that every access to it (reads as well as writes,
//! the kernel's `copy_to_user` included) waits in the fault handler until the copy is done,
//! then goes to the new page. No write is lost and no system call fails, without
//! userfaultfd.
//!
//! The move:
//! 1. the range's policy becomes "bind to N" (`mbind`, without moving): pages the program
//!    touches for the first time from now on are allocated on N;
//! 2. chunk by chunk (as `TIERMALLOC_EVACUATE_CHUNK` says), the tier's live extents are listed
//!    (the heap lock held for the listing only) and their pages moved with one `move_pages`
//!    call; free space is not moved (pages never touched are not present and cost nothing);
//! 3. a second pass lists the whole region again and moves what is still elsewhere: blocks
//!    made during the first pass on pages that were present but free then.
//!
//! A page's accesses wait while its call's pages are copied (the kernel unmaps a batch of
//! pages, then copies them): one chunk's copy, as with the file move's hold. Unlike the file
//! move, *readers* of those pages wait too: that is how the kernel migrates a page.
//!
//! What is left on the old node afterwards: a page that the kernel could not move (pinned by
//! a device or `O_DIRECT` in flight, or N out of memory): the move then fails with EBUSY and
//! one line naming how many, the rest moved, the tier usable. A block made after the second
//! pass's listing on a page that was present and free stays where that page is.

use super::{now_ns, HeldStep, LiveExtents, Ranges, Report, HELD_STEPS};
use crate::backend::{Media, Problem, Region};
use crate::os;
use core::ffi::CStr;
use core::fmt::Write;

/// The node `target` names if it reads `numa=N`; `Some(Err)` for `numa=` followed by anything
/// but a node number; `None` for any other target (a path).
pub(super) fn target_node(target: &CStr) -> Option<Result<u32, Problem>> {
    let digits = target.to_bytes().strip_prefix(b"numa=")?;
    let node = (!digits.is_empty() && digits.len() <= 4 && digits.iter().all(u8::is_ascii_digit))
        .then(|| {
            digits
                .iter()
                .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
        })
        .filter(|&n| (n as usize) < MAX_NODES);
    Some(node.ok_or(Problem {
        what: "the target numa=N names no node number below 1024",
        errno: libc::EINVAL,
        room: None,
        at: None,
        holder: None,
    }))
}

/// Nodes a node mask here can name.
const MAX_NODES: usize = 1024;
/// Pages per `move_pages` call, at most.
const BATCH: usize = 512;

const MPOL_BIND: i32 = 2;
const MPOL_MF_MOVE: i32 = 1 << 1;

fn problem(what: &'static str, errno: i32) -> Problem {
    Problem {
        what,
        errno,
        room: None,
        at: None,
        holder: None,
    }
}

/// Moves the pages of tier `region` (live extents from `tier`) onto `node`, `chunk` bytes of
/// the region per listing. On error the tier is usable, its pages on either node.
pub(super) fn move_to_node(
    region: &Region,
    tier: &dyn LiveExtents,
    node: u32,
    chunk: usize,
) -> Result<Report, Problem> {
    if region.media != Media::Anonymous {
        return Err(problem(
            "a numa=N target moves a numa= tier between nodes; this tier is mapped from a file or \
             device (give a path)",
            libc::EINVAL,
        ));
    }
    let mut mask = [0u64; MAX_NODES / 64];
    mask[node as usize / 64] |= 1 << (node % 64);
    // SAFETY: the tier's own range and a valid node mask of MAX_NODES bits; the policy changes
    // where new pages come from, no byte.
    let bound = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            region.base,
            region.len,
            MPOL_BIND,
            mask.as_ptr(),
            MAX_NODES + 1,
            0,
        )
    };
    if bound != 0 {
        return Err(problem(
            "the target node has no memory the tier can be bound to (not online, or no such node)",
            os::errno(),
        ));
    }
    let started = now_ns();
    let mut report = Report::of_region(region);
    let mut ranges = Ranges::new();
    let mut stuck = Stuck::default();
    for pass in 0..2 {
        stuck = Stuck::default();
        let mut hint = 0u64;
        let mut lo = 0usize;
        while lo < region.len {
            let hi = (lo + chunk).min(region.len);
            ranges.reset(lo as u64, hi as u64);
            tier.hold_and_list(
                lo as u64,
                hi as u64,
                &mut hint,
                super::DeviceBytes::at(region.base),
                &mut || true,
                &mut |offset, len| ranges.add(offset, len),
            );
            move_ranges(
                region.base,
                &ranges,
                node,
                &mut report,
                &mut stuck,
                pass == 0,
            );
            lo = hi;
        }
    }
    report.total_ns = now_ns() - started;
    if stuck.pages > 0 {
        let mut line = os::LineBuf::new();
        let _ = writeln!(
            line,
            "tiermalloc: tm_evacuate: {} pages of the tier stayed off node {node} (first error: \
             errno {})",
            stuck.pages, stuck.first_errno
        );
        line.flush();
        return Err(problem(
            "some pages of the tier could not be moved to the node (pinned or busy); the rest \
             moved, and the tier works on both",
            libc::EBUSY,
        ));
    }
    Ok(report)
}

/// Pages `move_pages` could not move, and the first one's error.
#[derive(Default)]
struct Stuck {
    pages: u64,
    first_errno: i32,
}

/// Moves the pages of `ranges` (offsets from `base`) onto `node` in calls of at most `BATCH`
/// pages, each call timed as one hold; `first_pass` counts the bytes moved.
fn move_ranges(
    base: usize,
    ranges: &Ranges,
    node: u32,
    report: &mut Report,
    stuck: &mut Stuck,
    first_pass: bool,
) {
    let mut pages = [core::ptr::null_mut::<libc::c_void>(); BATCH];
    let nodes = [node as i32; BATCH];
    let mut status = [0i32; BATCH];
    let mut count = 0;
    let mut last_page = usize::MAX;
    let mut flush = |pages: &[*mut libc::c_void], report: &mut Report, stuck: &mut Stuck| {
        if pages.is_empty() {
            return;
        }
        let mut at = [0u64; HELD_STEPS + 1];
        at[HeldStep::Protect as usize] = now_ns();
        at[HeldStep::Copy as usize] = at[0];
        // SAFETY: page addresses inside our own mapping, and arrays of `pages.len()` entries.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_pages,
                0,
                pages.len(),
                pages.as_ptr(),
                nodes.as_ptr(),
                status.as_mut_ptr(),
                MPOL_MF_MOVE,
            )
        };
        let done = now_ns();
        at[HeldStep::Remap as usize] = done;
        at[HeldStep::Wake as usize] = done;
        at[HELD_STEPS] = done;
        report.record_steps(&at, false);
        report.chunks += 1;
        if rc < 0 {
            stuck.pages += pages.len() as u64;
            if stuck.first_errno == 0 {
                stuck.first_errno = os::errno();
            }
            return;
        }
        for &s in &status[..pages.len()] {
            if s == node as i32 {
                if first_pass {
                    report.copied += os::PAGE_SIZE as u64;
                }
            } else if s != -libc::ENOENT && s != -libc::EFAULT {
                // Not present (never touched: it will fault in on `node`) and the shared zero
                // page (only ever read: no memory of its own on any node) are fine.
                stuck.pages += 1;
                if stuck.first_errno == 0 {
                    stuck.first_errno = -s;
                }
            }
        }
    };
    for &(start, end) in &ranges.items[..ranges.len] {
        let mut page = (base + start as usize) & !(os::PAGE_SIZE - 1);
        while page < base + end as usize {
            if page != last_page {
                pages[count] = page as *mut libc::c_void;
                count += 1;
                last_page = page;
                if count == BATCH {
                    flush(&pages[..count], report, stuck);
                    count = 0;
                }
            }
            page += os::PAGE_SIZE;
        }
    }
    flush(&pages[..count], report, stuck);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numa_targets_name_a_node_and_paths_are_not_targets() {
        assert!(matches!(target_node(c"numa=1"), Some(Ok(1))));
        assert!(matches!(target_node(c"numa=1023"), Some(Ok(1023))));
        for bad in [c"numa=", c"numa=x", c"numa=1024", c"numa=-1", c"numa=99999"] {
            assert!(matches!(target_node(bad), Some(Err(p)) if p.errno == libc::EINVAL));
        }
        assert!(target_node(c"/dev/shm/numa=1").is_none());
        assert!(target_node(c"/dev/shm/x").is_none());
    }
}
