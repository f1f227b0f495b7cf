//! The owner record: which process has a device tier's region open, kept in the region's
//! superblock and claimed with a compare-and-swap in device memory, so that two hosts
//! sharing one device (a CXL memory, a PCI BAR two machines map) cannot both open the tier.
//! A host-local file lock (`backend::lock_range`) only keeps out processes of its own host.
//!
//! ```text
//! 64   claim      8  0: no owner; else (low 32 bits of the owner's host id) << 32 | its pid
//! 72   stamp      8  a copy of `claim`, written after the fields below: the record is whole
//! 80   host       8  liveness::host_id of the owner's host
//! 88   pid        8
//! 96   pid_start  8  the pid's start time (a reused pid is another process)
//! 104  heartbeat  8  CLOCK_REALTIME ns, refreshed every quarter lease on a BAR or DAX (`beats`)
//! 112  host name 32  for the message that names the owner
//! ```
//!
//! Opening (`claim`): the claim word is read; an owner that lives (`liveness::Holder::live`:
//! on our host its pid, on another its heartbeat within the lease) refuses the open, naming
//! itself; a dead owner's claim, no claim, or bytes that are no heap are replaced by ours with
//! one compare-and-swap, which only one of two racing openers wins (the other reads the
//! winner's claim and judges it); the word is a `lockfree::LeaseLock` (its loom model covers
//! taking, stealing from a dead holder, releasing). The opener writes the heartbeat just
//! before its compare-and-swap (never when refused: that would keep a dead owner's lease
//! young), the rest of the record after it, then the stamp. A claim whose record is not whole yet
//! (`stamp` differs: its process may have been killed in between) is judged from the claim word
//! itself: on our host by its pid, on another by the heartbeat. Formatting the region keeps the
//! record (`superblock::format` writes around it).
//!
//! Closing (`release`, at a clean exit): the claim goes back to 0 if it is still ours. A
//! killed owner leaves its claim: on its host the next opener sees its pid gone and takes it
//! at once; on another host, once its heartbeat is older than the lease.
//!
//! On real hardware the compare-and-swap needs memory coherent between the hosts (CXL 3
//! shared memory); a PCI BAR is coherent in QEMU, where both "hosts" are one machine's
//! processes, but a locked operation on an uncached BAR is not atomic across real hosts.
//! Anonymous memory (a CXL NUMA node) is never shared and has no record.

use super::media;
use super::superblock;
use crate::backend::{Media, Region};
use crate::liveness::{self, Holder, HolderName};
use crate::lockfree::lease_lock::LeaseLock;
use core::sync::atomic::{AtomicU64, Ordering};

const CLAIM_AT: u64 = superblock::OWNER_RECORD_START;
const STAMP_AT: u64 = 72;
const HOST_AT: u64 = 80;
const PID_AT: u64 = 88;
const PID_START_AT: u64 = 96;
const HEARTBEAT_AT: u64 = 104;
const NAME_AT: u64 = 112;
/// The record's end: `[CLAIM_AT, RECORD_END)` of the superblock.
const RECORD_END: u64 = superblock::OWNER_RECORD_END;
const _: () = assert!(NAME_AT + 32 == RECORD_END, "the host name ends the record");

/// The lease: how long another host's owner stays live after its last heartbeat.
pub(crate) const LEASE_MS: u64 = 10_000;

// Test-only: a host id and a lease this thread judges and claims with instead of this
// host's (a second "host" in one machine's tests).
#[cfg(test)]
std::thread_local! {
    pub(crate) static TEST_HOST: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
    pub(crate) static TEST_LEASE_MS: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

fn my_host() -> u64 {
    #[cfg(test)]
    if TEST_HOST.with(|h| h.get()) != 0 {
        return TEST_HOST.with(|h| h.get());
    }
    liveness::host_id()
}

fn lease_ns() -> u64 {
    #[cfg(test)]
    if TEST_LEASE_MS.with(|l| l.get()) != 0 {
        return TEST_LEASE_MS.with(|l| l.get()) * 1_000_000;
    }
    LEASE_MS * 1_000_000
}

/// Our claim on a region (`claim`): the word we wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Claim(u64);

/// Whether a region's media carries an owner record (anything another process could map).
pub(crate) fn recorded(region: &Region) -> bool {
    region.media != Media::Anonymous
}

fn word(region: &Region, at: u64) -> &AtomicU64 {
    // SAFETY: the superblock's first page is mapped (the region is at least 8 KiB), the
    // field 8-byte aligned in the page-aligned region; device memory shared with other
    // processes is exactly what atomics are for.
    unsafe { &*((region.base + at as usize) as *const AtomicU64) }
}

/// The claim word, as the lock it is (`lockfree::lease_lock`: 0 free, else the holder's tag,
/// taken over from a dead holder by one compare-and-swap from exactly its tag).
fn claim_lock(region: &Region) -> &LeaseLock {
    // SAFETY: as for `word`: the claim word is 8-aligned, mapped while the region is, and
    // accessed only atomically.
    unsafe { LeaseLock::at((region.base + CLAIM_AT as usize) as *mut u64) }
}

fn load(region: &Region, at: u64) -> u64 {
    word(region, at).load(Ordering::Acquire)
}

/// The record's owner, as another process judges it.
fn holder(region: &Region) -> Holder {
    Holder {
        host: load(region, HOST_AT),
        pid: load(region, PID_AT) as u32,
        pid_start: load(region, PID_START_AT),
        heartbeat_ns: load(region, HEARTBEAT_AT),
    }
}

/// The owner claim word `claim` names: its pid, and its host's name once its record is whole
/// ("?" before).
fn owner(region: &Region, claim: u64) -> HolderName {
    let mut host = [0u8; 32];
    if load(region, STAMP_AT) == claim {
        for (i, chunk) in host.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&load(region, NAME_AT + 8 * i as u64).to_le_bytes());
        }
    } else {
        host[0] = b'?';
    }
    HolderName {
        pid: claim as u32,
        host,
    }
}

/// Our claim word: the low half of our host id, our pid (never 0).
fn claim_word(pid: u32) -> u64 {
    (my_host() & 0xffff_ffff) << 32 | u64::from(pid.max(1))
}

/// Whether the owner that wrote claim word `claim` (not 0) still lives.
fn claim_live(region: &Region, claim: u64) -> bool {
    let now = liveness::realtime_ns();
    if load(region, STAMP_AT) == claim {
        return holder(region).live(my_host(), lease_ns(), now);
    }
    // Its record is not whole: judged by the claim word and the heartbeat written before it.
    let on_our_host = claim >> 32 == my_host() & 0xffff_ffff;
    if on_our_host {
        liveness::process_live(claim as u32, 0)
    } else {
        // Not in the future either (but for a minute of clocks that disagree): bytes that
        // merely look like a claim almost never are.
        let beat = load(region, HEARTBEAT_AT);
        beat.saturating_add(lease_ns()) >= now && beat <= now + 60_000_000_000
    }
}

/// Claims the region for this process (see the module comment), or names its live owner.
pub(crate) fn claim(region: &Region) -> Result<Claim, HolderName> {
    // SAFETY: the region is mapped and readable.
    let image = unsafe { core::slice::from_raw_parts(region.base as *const u8, region.len) };
    // SAFETY: no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    let mine = claim_word(pid);
    let lock = claim_lock(region);
    loop {
        let seen = load(region, CLAIM_AT);
        // Bytes that are no heap (yet) hold a record only if an opener that is formatting
        // them claimed it (two openers of a new file): its stamp is not written yet; anything
        // else there is taken over (the caller formats it).
        let heap = superblock::read(image).is_some();
        // A claim naming this very process is an earlier image's (`exec` keeps the pid and
        // runs no exit hook) or an earlier attempt's: one image never holds a tier twice.
        let others = seen != 0 && seen != mine;
        if others && (heap || load(region, STAMP_AT) != seen) && claim_live(region, seen) {
            return Err(owner(region, seen));
        }
        // Only now, about to claim: a refused opener must not keep a dead owner's lease young.
        media::write_bytes(region, HEARTBEAT_AT, &liveness::realtime_ns().to_le_bytes());
        let taken = if seen == 0 {
            lock.try_acquire(mine)
        } else {
            lock.steal(seen, mine)
        };
        if taken.is_ok() {
            break;
        }
    }
    let name = liveness::host_name();
    let mut fields = [0u8; (RECORD_END - HOST_AT) as usize];
    fields[0..8].copy_from_slice(&my_host().to_le_bytes());
    fields[8..16].copy_from_slice(&u64::from(pid).to_le_bytes());
    fields[16..24].copy_from_slice(&liveness::pid_start(pid).unwrap_or(0).to_le_bytes());
    fields[24..32].copy_from_slice(&liveness::realtime_ns().to_le_bytes());
    fields[32..].copy_from_slice(&name);
    media::write_bytes(region, HOST_AT, &fields);
    media::order(region);
    media::write_bytes(region, STAMP_AT, &mine.to_le_bytes());
    media::order(region);
    Ok(Claim(mine))
}

/// Whether the owner of `region` must keep its heartbeat fresh: on device memory another host
/// could map (a PCI BAR, device DAX). A regular file's mapping is shared coherently only
/// within one machine, where the host's file lock keeps a second process out too; no thread
/// then touches the device between a program's own operations.
pub(crate) fn beats(region: &Region) -> bool {
    matches!(region.media, Media::Bar | Media::Dax)
}

/// Refreshes our heartbeat, if the claim is still ours (false if another took it: a lease
/// that expired while this process could not run).
pub(crate) fn heartbeat(region: &Region, claim: Claim) -> bool {
    if load(region, CLAIM_AT) != claim.0 {
        return false;
    }
    media::write_bytes(region, HEARTBEAT_AT, &liveness::realtime_ns().to_le_bytes());
    true
}

/// Gives the region up (a clean close): the claim back to 0 if it is still ours.
pub(crate) fn release(region: &Region, claim: Claim) {
    claim_lock(region).release_if(claim.0);
    if region.media == Media::Dax {
        media::flush_lines(region.base + CLAIM_AT as usize, 8);
    }
}

/// The owner the record of the heap in file `path` at `offset` names, read with `pread`
/// (for the message when this host's file lock refused the open: the file is not mapped).
/// `None` if there is no heap or no owner there.
pub(crate) fn named_in_file(path: &[u8], offset: u64) -> Option<HolderName> {
    let mut cpath = [0u8; 4097];
    if path.len() >= cpath.len() {
        return None;
    }
    cpath[..path.len()].copy_from_slice(path);
    // SAFETY: a NUL-terminated path; the descriptor is ours and closed below.
    let fd = unsafe { libc::open(cpath.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut page = [0u8; RECORD_END as usize];
    // SAFETY: reading into `page`, our descriptor.
    let n = unsafe {
        libc::pread(
            fd,
            page.as_mut_ptr().cast(),
            page.len(),
            offset as libc::off_t,
        )
    };
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    if n != page.len() as isize || !superblock::has_magic(&page) {
        return None;
    }
    let u64_at = |at: u64| {
        u64::from_le_bytes(
            page[at as usize..at as usize + 8]
                .try_into()
                .unwrap_or([0; 8]),
        )
    };
    let claim = u64_at(CLAIM_AT);
    if claim == 0 {
        return None;
    }
    let mut host = [0u8; 32];
    if u64_at(STAMP_AT) == claim {
        host.copy_from_slice(&page[NAME_AT as usize..RECORD_END as usize]);
    } else {
        host[0] = b'?';
    }
    Some(HolderName {
        pid: claim as u32,
        host,
    })
}
