//! Every write tiermalloc makes to a device region, and the ordering points between them
//! (see the module comment of `persist` for which writes and in which order). Nothing here
//! reads the device.
//!
//! In tests, the writes and ordering points of one region can be recorded (`Recorder`): the
//! crash-point checker replays them.

use crate::backend::{Media, Region};
use crate::device::header::BlockHeader;

/// Writes `header` at `offset` as one 16-byte store.
#[inline]
pub(crate) fn write_header(region: &Region, offset: u64, header: BlockHeader) {
    let dst = (region.base + offset as usize) as *mut BlockHeader;
    // SAFETY: callers pass the offset of a header slot of the region (16-byte aligned, inside
    // the mapping) that they own under the tier's locks.
    unsafe { header.store(dst) };
    after_store(region, offset, 16);
}

/// `write_header` of the header whose size is `size` and whose second word is `*tail`
/// (`BlockHeader::store_with_tail`).
#[inline]
pub(crate) fn write_header_with_tail(region: &Region, offset: u64, size: u64, tail: &u64) {
    let dst = (region.base + offset as usize) as *mut BlockHeader;
    // SAFETY: as for `write_header`.
    unsafe { BlockHeader::store_with_tail(size, tail, dst) };
    after_store(region, offset, 16);
}

/// Writes the state field of the header at `offset` (2 bytes).
#[inline]
pub(crate) fn write_state(region: &Region, offset: u64, state: u16) {
    let dst = (region.base + offset as usize + 14) as *mut u16;
    // SAFETY: as for `write_header`; the state is the header's last two bytes.
    unsafe { dst.write_volatile(state) };
    after_store(region, offset + 14, 2);
}

/// Writes the size field of the header at `offset` (8 bytes, one store).
#[inline]
pub(crate) fn write_size(region: &Region, offset: u64, size: u64) {
    let dst = (region.base + offset as usize) as *mut u64;
    // SAFETY: as for `write_header`; the size is the header's first eight bytes.
    unsafe { dst.write_volatile(size) };
    after_store(region, offset, 8);
}

/// Writes `bytes` at `offset` (the superblock and the roots table: not on malloc paths), in
/// 8-byte stores where `offset` and the length allow, so that an aligned 8-byte field is
/// written whole; each store is one write for the crash-point checker.
pub(crate) fn write_bytes(region: &Region, offset: u64, bytes: &[u8]) {
    debug_assert!(offset as usize + bytes.len() <= region.len);
    let word = offset % 8 == 0 && bytes.len() % 8 == 0;
    let step = if word { 8 } else { 1 };
    for (i, chunk) in bytes.chunks(step).enumerate() {
        let at = offset + (i * step) as u64;
        let dst = region.base + at as usize;
        // SAFETY: inside the region (checked by the callers, asserted above); 8-byte stores
        // only at 8-byte aligned offsets of the (page-aligned) region.
        unsafe {
            if word {
                let v = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
                (dst as *mut u64).write_volatile(v);
            } else {
                (dst as *mut u8).write_volatile(chunk[0]);
            }
        }
        #[cfg(test)]
        recorder::write(region.base, at, step);
    }
    if region.media == Media::Dax {
        flush_lines(region.base + offset as usize, bytes.len());
    }
}

/// An ordering point: every write before it reaches the device before any write after it.
#[inline]
pub(crate) fn order(region: &Region) {
    if region.media == Media::Dax {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SSE2 (sfence) is part of the x86_64 baseline.
        unsafe {
            core::arch::x86_64::_mm_sfence()
        };
    }
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    #[cfg(test)]
    recorder::fence(region.base);
}

#[inline]
fn after_store(region: &Region, offset: u64, len: usize) {
    if region.media == Media::Dax {
        flush_lines(region.base + offset as usize, len);
    }
    #[cfg(test)]
    recorder::write(region.base, offset, len);
}

/// Writes back the cache lines of `[addr, addr + len)` (DAX). `clflush`: in every x86_64.
pub(crate) fn flush_lines(addr: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut line = addr & !63;
        while line < addr + len {
            // SAFETY: the line is part of a mapping of ours (callers' contract).
            unsafe { core::arch::x86_64::_mm_clflush(line as *const u8) };
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (addr, len);
}

/// Test-only: the writes and ordering points of one region, in program order.
#[cfg(test)]
pub(crate) mod recorder {
    use std::cell::RefCell;

    #[derive(Clone, Debug)]
    pub enum Event {
        /// Bytes written at an offset (the bytes as they were right after the store).
        Write(u64, Vec<u8>),
        Fence,
    }

    thread_local! {
        static LOG: RefCell<Option<(usize, Vec<Event>)>> = const { RefCell::new(None) };
    }

    /// Starts recording the writes this thread makes to the region at `base`.
    pub fn start(base: usize) {
        LOG.with(|l| *l.borrow_mut() = Some((base, Vec::new())));
    }

    /// Events recorded so far.
    pub fn len() -> usize {
        LOG.with(|l| l.borrow().as_ref().map_or(0, |(_, e)| e.len()))
    }

    /// Writes recorded after the last fence.
    pub fn writes_since_fence() -> usize {
        LOG.with(|l| {
            l.borrow().as_ref().map_or(0, |(_, e)| {
                e.iter()
                    .rev()
                    .take_while(|e| matches!(e, Event::Write(..)))
                    .count()
            })
        })
    }

    /// The writes among events `range` recorded so far: `(offset, bytes)` each.
    pub fn writes_in(range: core::ops::Range<usize>) -> Vec<(u64, usize)> {
        LOG.with(|l| {
            l.borrow().as_ref().map_or(Vec::new(), |(_, e)| {
                e[range]
                    .iter()
                    .filter_map(|e| match e {
                        Event::Write(at, bytes) => Some((*at, bytes.len())),
                        Event::Fence => None,
                    })
                    .collect()
            })
        })
    }

    /// Stops and returns what was recorded.
    pub fn take() -> Vec<Event> {
        LOG.with(|l| l.borrow_mut().take().map(|(_, e)| e).unwrap_or_default())
    }

    /// A marker the checker uses to know where operations end (no device effect).
    pub fn fence(base: usize) {
        // `try_with`: the exit hook writes after this thread's locals are gone.
        let _ = LOG.try_with(|l| {
            if let Some((b, events)) = l.borrow_mut().as_mut() {
                if *b == base {
                    events.push(Event::Fence);
                }
            }
        });
    }

    pub fn write(base: usize, offset: u64, len: usize) {
        let _ = LOG.try_with(|l| {
            if let Some((b, events)) = l.borrow_mut().as_mut() {
                if *b == base {
                    // SAFETY: the bytes were just written, inside the region.
                    let bytes = unsafe {
                        core::slice::from_raw_parts((base + offset as usize) as *const u8, len)
                    };
                    events.push(Event::Write(offset, bytes.to_vec()));
                }
            }
        });
    }
}
