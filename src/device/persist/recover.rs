//! The recovery scan: one pass over the header chain of a region image, front to back,
//! telling each extent it finds (free space, a block, a slab with its live slots) to a sink
//! in address order. The same scan serves opening a persistent tier (the sink builds the
//! host metadata), the offline checker, and the crash-point checker's tests.

use super::superblock::SUPERBLOCK_BYTES;
use super::STATE_SLAB;
use crate::device::header::{HEADER_MAGIC, HEADER_SIZE, STATE_ALLOCATED, STATE_FREE};
use crate::device::slabs::{self, SLAB_BYTES, SLAB_MARKER, SLAB_WORDS, WINDOW_LIVE_WORDS};

/// One extent of the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Extent<'a> {
    Free,
    /// A live block (its header at the extent's start).
    Block,
    /// A slab of `class` with at least one live slot: bit `n` of `live` for slot `n`; the
    /// same slots in `headers` as one bit per 16 bytes of the slab, set at each live slot's
    /// header (the layout of the slabs' live bits, `Slabs::adopt`).
    Slab {
        class: usize,
        live: &'a [u64; SLAB_WORDS],
        headers: &'a [u64; WINDOW_LIVE_WORDS],
    },
    /// Free space whose header is a slab's marker: a slab with no live slot (retired, or
    /// never given a block), or one whose size a cut from its free space rewrote.
    EmptySlab,
}

/// Where and why the chain is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Damage {
    pub offset: u64,
    pub what: &'static str,
}

/// What a scan found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Scanned {
    pub blocks: u64,
    pub slabs: u64,
    pub live_slots: u64,
    pub free_extents: u64,
    /// Bytes of headers the scan read.
    pub bytes_read: u64,
}

struct Header {
    size: u64,
    magic: u32,
    state: u16,
}

#[inline]
fn header_at(image: &[u8], at: u64) -> Header {
    let at = at as usize;
    let word = |i: usize| u64::from_le_bytes(image[i..i + 8].try_into().unwrap_or([0; 8]));
    let (size, tail) = (word(at), word(at + 8));
    Header {
        size,
        magic: tail as u32,
        state: (tail >> 48) as u16,
    }
}

/// Scans the chain of `image` (a whole region whose superblock was found valid), calling
/// `sink(offset, length, extent)` for every extent from the first header on, in address order
/// (the superblock's own extent `[0, 4096)` is not told). `sink` returns false to stop (the
/// scan then reports damage "stopped"). Reads each header once.
pub(crate) fn scan(
    image: &[u8],
    sink: impl FnMut(u64, u64, Extent) -> bool,
) -> Result<Scanned, Damage> {
    scan_from(image, SUPERBLOCK_BYTES, sink)
}

/// `scan`, from the header at `start` (16-byte aligned, past the superblock) on: the offline
/// repair asks where an intact chain resumes behind damage.
pub(crate) fn scan_from(
    image: &[u8],
    start: u64,
    mut sink: impl FnMut(u64, u64, Extent) -> bool,
) -> Result<Scanned, Damage> {
    let end = image.len() as u64;
    let mut at = start;
    let mut found = Scanned::default();
    let mut live = [0u64; SLAB_WORDS];
    let mut headers = [0u64; WINDOW_LIVE_WORDS];
    while at < end {
        let damage = |what| Err(Damage { offset: at, what });
        if end - at < HEADER_SIZE {
            return damage("the chain ends inside a header");
        }
        let h = header_at(image, at);
        found.bytes_read += HEADER_SIZE;
        if h.magic != HEADER_MAGIC {
            return damage("no block header (magic \"TMHB\" missing)");
        }
        if h.size % HEADER_SIZE != 0 || h.size > end - at - HEADER_SIZE {
            return damage("a header's size is not a multiple of 16 or reaches past the region");
        }
        let len = h.size + HEADER_SIZE;
        prefetch(image, at + len);
        let extent = match h.state {
            STATE_ALLOCATED => {
                found.blocks += 1;
                Extent::Block
            }
            STATE_FREE => {
                found.free_extents += 1;
                Extent::Free
            }
            s if s & STATE_SLAB != 0 => {
                let class = (s & !STATE_SLAB) as usize;
                if class == 0 || class > slabs::CLASS_COUNT {
                    return damage("a slab marker names no size class");
                }
                if at % SLAB_BYTES != 0 {
                    return damage("a slab marker is not on a 16 KiB boundary");
                }
                // A retired slab keeps its marker (retiring writes nothing, `persist`): once
                // its window is free space, a block cut from the end of that space rewrites
                // the marker's size, never its state. A live slab is never free space, so its
                // size is never rewritten: a marker of another length heads free space.
                let count = if len == SLAB_BYTES {
                    found.bytes_read += slabs::slots_of(class) as u64 * HEADER_SIZE;
                    slab_slots(image, at, class, &mut live, &mut headers)
                } else {
                    0
                };
                if count == 0 {
                    found.free_extents += 1;
                    Extent::EmptySlab
                } else {
                    found.slabs += 1;
                    found.live_slots += count;
                    Extent::Slab {
                        class,
                        live: &live,
                        headers: &headers,
                    }
                }
            }
            _ => return damage("a header's state is neither allocated, free nor a slab"),
        };
        if !sink(at, len, extent) {
            return damage("stopped (no host memory for the heap's metadata)");
        }
        at += len;
    }
    Ok(found)
}

/// Fills `live` with the live slots of the slab at `at` (bit `n` for slot `n`) and `headers`
/// with them as bits of the window (bit `k` for the 16 bytes at `16 k`), and returns their
/// count: a slot is live when its header has the magic, state "allocated" and exactly the
/// class's size (its kind is not looked at). The caller checked that the slab lies inside
/// `image`.
///
/// This loop reads nearly all the bytes a recovery reads (a million slot headers for a
/// million small blocks), so it is kept to what reading them costs: one bounds check per slab,
/// and per slot a branch-free test of the header (`live_header`) whose bit goes into a
/// register; each word of `live` that holds slots is stored once and counted once. `headers`
/// is made after the loop: a full slab's is its class's constant (`FULL_HEADERS`), and only a
/// partial slab's live slots are spread out one by one. (Or-ing each slot's bit into `headers`
/// inside the loop was a read-modify-write of one word per slot, each waiting for the last:
/// callgrind, the open of 984 382 slots, 23.87 M instructions here, now BENCHMARKS.md "Session
/// 9, branch recov".)
fn slab_slots(
    image: &[u8],
    at: u64,
    class: usize,
    live: &mut [u64; SLAB_WORDS],
    headers: &mut [u64; WINDOW_LIVE_WORDS],
) -> u64 {
    let usable = slabs::usable_of(class);
    let slot = (usable + HEADER_SIZE) as usize;
    let slots = slabs::slots_of(class);
    let slab = &image[at as usize..at as usize + SLAB_BYTES as usize];
    let mut count = 0;
    prefetch_next_slab(image, at);
    // SAFETY: slot `n`'s header lies inside the slab for every `n < slots` (`slots_of` counts
    // only slots that fit), inside `slab`: `header` never passes the last slot's.
    let mut header = unsafe { slab.as_ptr().add(SLAB_MARKER as usize) } as *const u64;
    let words = slots.div_ceil(64);
    live[words..].fill(0);
    for (w, word) in live[..words].iter_mut().enumerate() {
        let in_word = (slots - 64 * w).min(64);
        // Each slot's bit enters at the top and moves down one place per slot after it.
        let mut bits = 0u64;
        for _ in 0..in_word {
            debug_assert!(
                header as usize + HEADER_SIZE as usize <= slab.as_ptr() as usize + slab.len()
            );
            // SAFETY: as above.
            let is_live = unsafe { live_header(header, usable) };
            bits = bits >> 1 | is_live << 63;
            header = header.wrapping_byte_add(slot);
        }
        *word = bits >> (64 - in_word);
        count += bits.count_ones() as u64;
    }
    if count as usize == slots {
        *headers = FULL_HEADERS[class];
    } else {
        *headers = [0; WINDOW_LIVE_WORDS];
        let step = slot / HEADER_SIZE as usize;
        for (w, &word) in live[..words].iter().enumerate() {
            let mut rest = word;
            while rest != 0 {
                let n = 64 * w + rest.trailing_zeros() as usize;
                rest &= rest - 1;
                // Below `SLAB_BYTES / 16` for every slot: its header lies in the window.
                let bit = (SLAB_MARKER / HEADER_SIZE) as usize + n * step;
                headers[(bit / 64) % WINDOW_LIVE_WORDS] |= 1 << (bit % 64);
            }
        }
    }
    count
}

/// `headers` of a slab of each class whose slots are all live (`slab_slots`): the bit of
/// every slot's header, one per 16 bytes of the window.
static FULL_HEADERS: [[u64; WINDOW_LIVE_WORDS]; slabs::CLASS_COUNT + 1] = full_headers();

const fn full_headers() -> [[u64; WINDOW_LIVE_WORDS]; slabs::CLASS_COUNT + 1] {
    let mut table = [[0u64; WINDOW_LIVE_WORDS]; slabs::CLASS_COUNT + 1];
    let mut class = 1;
    while class <= slabs::CLASS_COUNT {
        let slot = slabs::usable_of(class) + HEADER_SIZE;
        let mut n = 0;
        while n < slabs::slots_of(class) {
            let bit = ((SLAB_MARKER + n as u64 * slot) / HEADER_SIZE) as usize;
            table[class][bit / 64] |= 1 << (bit % 64);
            n += 1;
        }
        class += 1;
    }
    table
}

/// 1 if the slot header at `header` is a live slot's of `usable` bytes (size `usable`, the
/// magic, state "allocated", any kind), else 0.
///
/// # Safety
/// `header` points at 16 readable bytes, not necessarily aligned (an image read into a buffer
/// may not be; a mapped region is).
#[inline(always)]
unsafe fn live_header(header: *const u64, usable: u64) -> u64 {
    // The second word of a live slot's header, but for its kind (bits 32..48).
    const NOT_KIND: u64 = !(0xffff << 32);
    const ALLOCATED: u64 = HEADER_MAGIC as u64 | (STATE_ALLOCATED as u64) << 48;
    // One 16-byte load, mask and compare (SSE2, baseline on x86_64): 2 instructions a slot
    // fewer than two word loads and tests, on the recovery's hottest loop.
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller guarantees 16 readable bytes; the load is unaligned.
    unsafe {
        use core::arch::x86_64::*;
        let h = _mm_loadu_si128(header as *const __m128i);
        let masked = _mm_and_si128(h, _mm_set_epi64x(NOT_KIND as i64, -1));
        let expect = _mm_set_epi64x(ALLOCATED as i64, usable as i64);
        (_mm_movemask_epi8(_mm_cmpeq_epi32(masked, expect)) == 0xffff) as u64
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: as above.
    unsafe {
        let (size, tail) = (header.read_unaligned(), header.add(1).read_unaligned());
        ((size == usable) & (tail & NOT_KIND == ALLOCATED)) as u64
    }
}

/// Asks the cache for the first line of each page of the slab window after the one at `at`
/// (where the chain goes on when this slab ends, and, as it is full of small blocks, likely
/// another slab): the hardware prefetcher follows a run of slots only inside a page, so
/// without this every page's first slot waits for memory.
#[inline(always)]
fn prefetch_next_slab(image: &[u8], at: u64) {
    let mut page = at + SLAB_BYTES;
    while page < at + 2 * SLAB_BYTES {
        prefetch(image, page);
        page += 4096;
    }
}

/// Asks the cache for the line at `at` of `image` (nothing past its end).
#[inline(always)]
fn prefetch(image: &[u8], at: u64) {
    #[cfg(target_arch = "x86_64")]
    if (at as usize) < image.len() {
        // SAFETY: a prefetch is a hint: it never faults, and `at` is inside `image`.
        unsafe {
            core::arch::x86_64::_mm_prefetch(
                image.as_ptr().add(at as usize) as *const i8,
                core::arch::x86_64::_MM_HINT_T0,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (image, at);
}
