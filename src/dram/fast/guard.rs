//! The small-block checks (costs per malloc/free pair measured in BENCHMARKS.md, "Hardening").
//!
//! By default (what each costs and catches: BENCHMARKS.md, "Session 10, branch `checks`" and
//! "Session 10, after every merge"): +8.1 % instructions on `sliding_window` (session 11, after
//! every merge; session 10: +8.9 %), of which the owner's at-free block-start test is about
//! 4.5 % (4 instructions per pair). Without that test, a pointer into a small block freed by
//! its own thread would go unreported until the block overlapped a live one; issue 15 asks for
//! interior frees caught on every path, so the test stays.
//! - **Double free at the free** (glibc's tcache key): a free block's second word holds its
//!   page's descriptor address (`Block::tag`), which `pop` clears (the owner's push writes it
//!   with the link in one 16-byte copy of the page's `free` and `mark`: `Page::push_block`).
//!   The owner's `free` counts the block freed first (`Page::count_free`: the empty page,
//!   where every slice without a page points, fails it into the cold path, which reports the
//!   address without reading it), then tests the mark; a block whose second word is that
//!   address is looked for on the page's lists (`is_on_lists`, which reads only carved block
//!   starts of the page, so that a walk racing the owner from another thread stays in mapped
//!   memory) and reported if found there;
//!   program data equal to the mark costs one walk. A count that falls below zero (an invalid
//!   pointer taken earlier, see below) is reported before the page is misread as parked.
//! - **Block starts**, tested exactly (`is_block_offset`, Lemire's divisibility test, which
//!   also bounds the offset by the page's carved block count) at every free: the owner's fast
//!   `free` tests one-slice pages (`Page::suspect`, four instructions per pair) and sends
//!   longer pages' frees to `free_suspect`; the remote path (frees by other threads, and every
//!   free under `TIERMALLOC_SECURE=1`) comes after that same test, which `free` runs before it
//!   looks at the owner (a second test there read `Page::start`, on the owner's hot line:
//!   BENCHMARKS.md, "Session 11, branch `remote`"). They are tested again where a
//!   block could be handed out without passing a free: the slow path's `pop_checked`, the
//!   list-head sweeps, and blocks over 1 KiB as they are handed out (`Page::pop_validated`).
//! - **Corrupted link** (glibc's safe-linking test): the fast `pop` of blocks up to 1 KiB
//!   follows no head whose sign bit is set (null included: `(head as isize) <= 0`, the same two
//!   instructions as a null test), so an overwritten link with its top bit set (text bytes
//!   0x80 and up, -1, most random keys) fails into the slow path, whose `pop_checked` requires
//!   a carved block start of the page and a link null or another, and reports it. Blocks over
//!   1 KiB: every head is tested exactly (`pop_validated`). Cutting a new page and allocating
//!   a large block test the heads of the thread's current lists the same way
//!   (`Heap::check_list_heads`), so a program whose next requests are of other sizes is caught
//!   too. Not caught by default: a link of a block up to 1 KiB overwritten with a value whose
//!   top bit is clear (ASCII text, small numbers: the pop follows it, and faults or hands out
//!   the address), a link overwritten with another address inside its page's carved blocks,
//!   and a link alone overwritten with zero, which ends the list (the rest is leaked, nothing
//!   is handed out twice).
//! - **Free mark at hand-out**, blocks over 1 KiB (`pop_validated` takes the mark off with one
//!   `xor` of memory whose flags it tests, `Block::take_mark`): a block without it is in use
//!   already, or was written after its free: reported, never handed out. This catches the
//!   owner's fast-path free racing another thread's free of the same block (both pass their
//!   tests, the block sits on two lists, and the copy popped second has lost its mark: `claim`
//!   cannot cover the owner's side without an atomic swap on every free), and an overwrite of
//!   a freed block's first 16 bytes with anything. Blocks up to 1 KiB get a plain clear (one
//!   instruction less per pair): that race there is caught under `TIERMALLOC_SECURE=1`, where
//!   every free claims its block.
//!
//! `DEFAULT_CHECKS` compiles all of these out, for measuring their cost only.
//!
//! `TIERMALLOC_SECURE=1` adds, at no cost to the default fast paths (the level is chosen where
//! a segment or page is set up, never tested per operation):
//! - links stored encoded, `next ^ KEY` (glibc's safe-linking, mimalloc's secure mode), `KEY`
//!   random per process (0, links as they are, without the level): an overwritten link decodes
//!   to a random address;
//! - every free tested exactly for a block start at the free (its owner's too: the tagged
//!   owner below sends every free the remote path's way, see `fast::free_remote`);
//! - every link tested before it is followed: the heaps keep their fast-path tables on the empty
//!   page, so every allocation takes the slow path's `pop_checked`, and segments carry a tagged
//!   owner (`Segment::owner`) so that every free takes the remote path, whose links the owner
//!   tests when it collects them;
//! - blocks carved in a random order (`Page::extend`);
//! - delayed reuse: every free goes through the freeing thread's quarantine (`quarantine`),
//!   which checks on the way out that the block was not written after its free;
//! - a `PROT_NONE` guard over the last OS page of every page of blocks (`Segment::close_tail`).
//!   Guarded: the end of each small-block page (one or more slices), so a linear overflow
//!   off a page's last blocks faults before it reaches the next page or segment (large blocks
//!   get a guard page right after their end: `dram::large_guard`). Not guarded: one block
//!   into its neighbour inside a page.

/// Whether the default checks above are compiled in: always, but for a build made to measure
/// what they cost (`RUSTFLAGS="--cfg tiermalloc_no_default_checks"`, BENCHMARKS.md "Hardening"),
/// which drops the block-start test, the free mark (its test, its store and its clear), the
/// list-head range test (a null test instead), the remote path's claim and the list-head
/// sweeps. Such a build catches no misuse: it is never shipped.
pub const DEFAULT_CHECKS: bool = !cfg!(tiermalloc_no_default_checks);

/// The checks of the fast paths one by one, for measuring what each costs (BENCHMARKS.md,
/// "Session 10, branch `checks`"). The first two are on in a shipped build, each removed by a
/// measurement cfg; the last two are off in a shipped build for blocks up to 1 KiB (1 and 2
/// more instructions per small malloc/free pair; what they alone catch there, a small
/// block's link overwritten with a value whose top bit is clear and the owner's free racing
/// another thread's, is caught under `TIERMALLOC_SECURE=1`), each put back by one:
/// - `tiermalloc_no_free_mark`: the free mark everywhere (its test and store in `free`, its
///   clear in `pop`, the remote claim);
/// - `tiermalloc_no_block_start_check`: `free`'s fast block-start test (`Page::suspect`);
/// - `tiermalloc_hand_out_mark_test`: `pop` tests the mark as it clears it
///   (`Block::take_mark`) instead of a plain clear;
/// - `tiermalloc_list_range_check`: `pop` tests its head for a carved block of its page
///   instead of the sign test.
pub const FREE_MARK: bool = DEFAULT_CHECKS && !cfg!(tiermalloc_no_free_mark);
/// See `FREE_MARK`.
pub const BLOCK_START_CHECK: bool = DEFAULT_CHECKS && !cfg!(tiermalloc_no_block_start_check);
/// See `FREE_MARK`.
pub const HAND_OUT_MARK_TEST: bool = FREE_MARK && cfg!(tiermalloc_hand_out_mark_test);
/// See `FREE_MARK`.
pub const LIST_RANGE_CHECK: bool = DEFAULT_CHECKS && cfg!(tiermalloc_list_range_check);

#[cfg(test)]
use crate::chunk::CHUNK_SIZE;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The process's link key; 0 until the first segment is created (`init_key`), fixed after.
static KEY: AtomicUsize = AtomicUsize::new(0);

/// Chooses the link key, once, before any block exists (called by `Segment::create`).
pub fn init_key() {
    SECURE.store(crate::config::get().secure, Ordering::Relaxed);
    // Outside the secure level links are stored as they are (key 0): the owner's fast paths
    // then pay nothing for the encoding, which they never apply (see `Segment::owner`).
    if KEY.load(Ordering::Relaxed) != 0 || !secure() {
        return;
    }
    let mut seed = [0u64; 2];
    // SAFETY: AT_RANDOM, when the kernel gives it, points to 16 random bytes that live for the
    // whole process; getauxval has no other preconditions.
    unsafe {
        let at_random = libc::getauxval(libc::AT_RANDOM) as *const u64;
        if !at_random.is_null() {
            seed = [
                at_random.read_unaligned(),
                at_random.add(1).read_unaligned(),
            ];
        }
    }
    // Mix in what differs between processes even without AT_RANDOM (forked children share it
    // with their parent, and share the parent's blocks too, so they must keep its key).
    let x = seed[1] ^ os_entropy() ^ (&seed as *const _ as u64);
    let _ = KEY.compare_exchange(
        0,
        key_from(x ^ seed[0]),
        Ordering::AcqRel,
        Ordering::Relaxed,
    );
}

/// A link key from random bits. With its top bit set, the key itself (the encoding of null)
/// is far from any address, so a zeroed link never decodes to a block.
fn key_from(random: u64) -> usize {
    (splitmix(random) as usize) | (1 << 63) | 1
}

fn os_entropy() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    // SAFETY: getpid has no preconditions.
    (ts.tv_nsec as u64) ^ ((ts.tv_sec as u64) << 32) ^ u64::from(unsafe { libc::getpid() } as u32)
}

/// One step of splitmix64: a well-mixed 64-bit value from any input.
pub(crate) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[inline(always)]
fn key() -> usize {
    KEY.load(Ordering::Relaxed)
}

/// `TIERMALLOC_SECURE=1`, as the configuration said when the last segment was created
/// (`init_key`): one load for the slow paths that ask (reading the configuration itself cost
/// 30 instructions, 0.4 per malloc/free pair on `sliding_window`).
static SECURE: AtomicBool = AtomicBool::new(false);

/// `TIERMALLOC_SECURE=1`: checks and layout that cost more than the defaults (see the module
/// comment). Read on slow paths only.
#[inline]
pub fn secure() -> bool {
    SECURE.load(Ordering::Relaxed)
}

/// The process's link key, for pages (copied into each page descriptor, where the fast
/// paths find it without another load).
pub fn process_key() -> usize {
    key()
}

/// The stored form of link `next` under `key` (`process_key`, or its copy in a page).
#[inline(always)]
pub fn encode(next: usize, key: usize) -> usize {
    next ^ key
}

/// The link stored as `word` under `key` (`encode` is its own inverse).
#[inline(always)]
pub fn decode(word: usize, key: usize) -> usize {
    encode(word, key)
}

/// `encode` with the process's key, for lists that do not know their page (remote frees).
#[inline(always)]
pub fn encode_global(next: usize) -> usize {
    next ^ key()
}

/// Whether `next` can be the link of the free block at `at`: null, or in the same segment.
/// Computed as `min(next ^ at, next) < CHUNK_SIZE`, one comparison: it also accepts an address
/// below 4 MiB, which no decoded overwrite gives unless it guessed the key.
#[cfg(test)]
#[inline(always)]
pub fn plausible(next: usize, at: usize) -> bool {
    (next ^ at).min(next) < CHUNK_SIZE
}

/// The multiplier of the block-start test for blocks of `d` bytes (`16 <= d < 2^32`):
/// `floor(2^64 / d) + 1`, one more for a power of two so that `e = magic * d - 2^64` is never 0.
pub const fn divisor_magic(d: u32) -> u64 {
    let base = u64::MAX / d as u64 + 1;
    if d.is_power_of_two() {
        base + 1
    } else {
        base
    }
}

/// The bound of the block-start test for `blocks` blocks of `d` bytes: `blocks * e`.
#[cfg(test)]
pub const fn block_limit(d: u32, blocks: u32) -> u64 {
    block_limit_of(divisor_magic(d), d, blocks)
}

/// `block_limit` given `magic = divisor_magic(d)`.
#[inline]
pub const fn block_limit_of(magic: u64, d: u32, blocks: u32) -> u64 {
    magic.wrapping_mul(d as u64) * blocks as u64
}

/// Whether `offset` (< 2^21, a page's span) is `k * d` with `k < blocks`, given
/// `magic = divisor_magic(d)` and `limit = block_limit(d, blocks)`: one multiplication and one
/// comparison. For `offset = k * d`, `offset * magic mod 2^64 = k * e`, which grows with `k`
/// and stays below `magic`; for any other offset below 2^32 it is at least `magic` (Lemire,
/// Kaser and Kurz, "Faster remainder by direct computation", 2019), and `magic >= 2^45` exceeds
/// every limit. A limit of 0 (a page not in use) accepts nothing.
#[inline(always)]
pub fn is_block_offset(magic: u64, limit: u64, offset: usize) -> bool {
    (offset as u64).wrapping_mul(magic) < limit
}

/// Whether block `p` is on one of the lists that start at `first_local` and `first_remote`
/// (both decoded with `decode`), looking at no more than `limit` links in all. This runs on a
/// double-free suspicion, possibly in a thread that does not own the lists while their owner
/// changes them: a block popped meanwhile holds program data where its link was. So every
/// address is tested with `is_block` (a carved block start of the page) before it is read, and
/// one that fails ends the walk: the walk never reads outside the page's carved blocks, which
/// stay mapped while the page holds a live block (a plausible address elsewhere in the segment
/// may be a `PROT_NONE` slice).
///
/// # Safety
/// Every address `is_block` accepts must be readable for the whole walk.
pub unsafe fn is_on_lists(
    p: usize,
    first_local: usize,
    first_remote: usize,
    key: usize,
    limit: u32,
    is_block: impl Fn(usize) -> bool,
) -> bool {
    let mut steps = 0u32;
    for first in [first_local, first_remote] {
        let mut b = first;
        while b != 0 && steps <= limit && is_block(b) {
            if b == p {
                return true;
            }
            // SAFETY: `b` passed `is_block` (contract).
            let word = unsafe { (b as *const usize).read_volatile() };
            b = decode(word, key);
            steps += 1;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_offsets_are_recognised_exactly_for_every_class() {
        for class in 0..crate::dram::fast::size_class::CLASS_COUNT {
            let d = crate::dram::fast::size_class::class_size(class) as u32;
            let slices = crate::dram::fast::size_class::page_slices(class) as u32;
            let blocks = slices * crate::dram::fast::size_class::SLICE_SIZE as u32 / d;
            let (magic, limit) = (divisor_magic(d), block_limit(d, blocks));
            let span = (slices as usize) << 16;
            let step = if d <= 64 { 1 } else { 8 };
            for offset in (0..span).step_by(step).chain([span - 1]) {
                let want = offset % d as usize == 0 && offset / (d as usize) < blocks as usize;
                assert_eq!(is_block_offset(magic, limit, offset), want, "{d} {offset}");
            }
        }
        assert!(
            !is_block_offset(123, 0, 0),
            "a zero limit (a page not in use) accepts nothing"
        );
    }

    /// A walk racing the owner meets a popped block whose link word is program data; data
    /// that decodes into an unmapped part of the segment must end the walk, not fault.
    #[test]
    fn a_walk_never_reads_outside_the_carved_blocks() {
        let key = key_from(1);
        // SAFETY: a private anonymous mapping of 8 MiB, of which one 4 MiB-aligned chunk is
        // used; its second MiB is made PROT_NONE; unmapped at the end.
        unsafe {
            let len = 2 * CHUNK_SIZE;
            let map = libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            let chunk = (map as usize + CHUNK_SIZE - 1) & !(CHUNK_SIZE - 1);
            let hole = chunk + (1 << 20);
            assert_eq!(libc::mprotect(hole as *mut _, 1 << 20, libc::PROT_NONE), 0);
            let (d, blocks) = (64u32, 16u32);
            let (magic, limit) = (divisor_magic(d), block_limit(d, blocks));
            let is_block = |b: usize| is_block_offset(magic, limit, b.wrapping_sub(chunk));
            let block = |i: usize| chunk + i * d as usize;
            // Block 0 links to block 1, whose link word holds program data decoding into the
            // hole: an address in the same segment, which the old plausibility test accepted.
            *(block(0) as *mut usize) = encode(block(1), key);
            *(block(1) as *mut usize) = encode(hole + 64, key);
            assert!(
                plausible(hole + 64, block(1)),
                "the data is what a segment test accepts"
            );
            assert!(!is_on_lists(block(5), block(0), 0, key, blocks, is_block));
            assert!(is_on_lists(block(1), block(0), 0, key, blocks, is_block));
            // A head that is not a block start is not followed either.
            assert!(!is_on_lists(block(5), hole, 0, key, blocks, is_block));
            libc::munmap(map, len);
        }
    }

    #[test]
    fn links_round_trip_and_overwritten_links_are_implausible() {
        let key = key_from(2);
        let at = 0x7f00_1240_0100usize;
        for next in [0, at + 0x40, at - 0x100] {
            let word = encode(next, key);
            assert_ne!(word, next);
            assert_eq!(decode(word, key), next);
            assert!(plausible(decode(word, key), at));
        }
        // What a use after free typically writes over a link: bytes, zero, an address.
        for data in [0usize, 1, usize::MAX, 0x4141_4141_4141_4141, at, at + 16] {
            assert!(
                !plausible(decode(data, key), at),
                "{data:#x} passes for a link"
            );
        }
    }
}
