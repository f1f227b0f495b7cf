//! The pool's on-device layout: where the superblock, the redo log, the registry of nodes,
//! the directory of spaces and the holdings table sit, and what each word of them means.
//!
//! Every offset is from the pool's start (the `offset=` of `TIERMALLOC_POOL` in its file).
//! Every field is a little-endian u64 accessed atomically, so any process on any host that
//! maps the device reads the same layout. Space data starts at `data_start`, a multiple of the
//! granule, and runs to `total_len`.
//!
//! ```text
//! 0       superblock (4 KiB)       magic, version, geometry, next space id, lock word;
//!         at 1024: MAX_DEBTS host debts (`host_cache`): ranges a host must invalidate
//! 4096    redo log (4 KiB)         RedoLog<LOG_ENTRIES>: the stores of the operation in flight
//! 8192    registry                 MAX_NODES slots of NODE_BYTES: one per process (node)
//! 16384   directory                MAX_SPACES entries of ENTRY_BYTES: one per space
//! 65536   holdings                 MAX_HOLDINGS records of HOLDING_BYTES: (node, space, count)
//! 98304   end of metadata; data_start = META_END rounded up to the granule
//! ```
//!
//! Invariants (checked by `check::check`, with the pool lock held and the log replayed):
//! - every directory entry is FREE, PRIVATE or SHARED; a non-free entry's checksum matches its
//!   fields and publish word; its name is 1..=63 bytes and NUL-padded, unique among entries;
//!   its id is below `next_id` and unique; its extent `[offset, offset + len)` lies in
//!   `[data_start, total_len)`, is granule-aligned, `len >= size`, and overlaps no other
//!   entry's extent;
//! - `entry.refs == sum of holding.count over holdings with holding.space == entry.id`;
//! - every holding with a non-zero tag names a live entry (index and id) and a registry slot
//!   whose current tag is the holding's tag, and has `count >= 1`;
//! - the lock word is 0 or a node tag;
//! - a debt with a non-zero host has `data_start <= lo < hi <= total_len`.

/// "TMPOOL01" as a little-endian u64.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"TMPOOL01");
/// 2: holdings name their node's host, and the superblock page holds the host debts.
pub(crate) const VERSION: u64 = 2;

// Superblock words (byte offsets).
pub(crate) const SB_MAGIC: usize = 0;
pub(crate) const SB_VERSION: usize = 8;
pub(crate) const SB_TOTAL_LEN: usize = 16;
pub(crate) const SB_DATA_START: usize = 24;
pub(crate) const SB_GRANULE: usize = 32;
/// The id the next space gets: ids are unique and never reused.
pub(crate) const SB_NEXT_ID: usize = 40;
/// Non-zero while a process formats the pool: `claim_secs << 32 | pid`.
pub(crate) const SB_FORMAT: usize = 48;
/// The pool lock (`LeaseLock`): 0 or the holder's node tag. A cache line of its own.
pub(crate) const SB_LOCK: usize = 64;

/// Host debts (`host_cache`): a host that may still cache lines of `[lo, hi)` (a node of
/// it died holding a mapping there, found dead from another host) invalidates the range before
/// it next maps a space.
pub(crate) const DEBTS_AT: usize = 1024;
pub(crate) const MAX_DEBTS: usize = 32;
pub(crate) const DEBT_BYTES: usize = 32;
// Debt words.
pub(crate) const D_HOST: usize = 0;
pub(crate) const D_LO: usize = 8;
pub(crate) const D_HI: usize = 16;

pub(crate) const LOG_AT: usize = 4096;
/// Most stores one pool operation makes (a create makes about 25).
pub(crate) const LOG_ENTRIES: usize = 64;

pub(crate) const REGISTRY_AT: usize = 8192;
pub(crate) const MAX_NODES: usize = 64;
pub(crate) const NODE_BYTES: usize = 128;
// Node slot words.
/// `claim_secs << 32 | incarnation << 8 | state`.
pub(crate) const NODE_STATE: usize = 0;
/// Which host (boot and pid namespace) the node runs on.
pub(crate) const NODE_HOST: usize = 8;
pub(crate) const NODE_PID: usize = 16;
/// CLOCK_REALTIME of the node's last sign of life.
pub(crate) const NODE_HEARTBEAT: usize = 24;
/// The process's start time (clock ticks since boot, /proc/PID/stat): a reused pid differs.
pub(crate) const NODE_PID_START: usize = 32;
// Words 40..72: the node's capacity in the pool's share arena (issue 12), in bytes, stored by
// `share` whenever a lend word of the node changes (0 for a node with no pool tier).
pub(crate) const NODE_SHARE: usize = 40;
pub(crate) const NODE_IN_USE: usize = 48;
pub(crate) const NODE_LENT: usize = 56;
pub(crate) const NODE_BORROWED: usize = 64;
/// Where the node maps the pool's metadata (`exec_mark`: read only when `NODE_PID` has
/// `NODE_PID_MARKED`, which the same join writes).
pub(crate) const NODE_META_AT: usize = 72;
/// Which image of its process the node is (`exec_mark::image_id`: new at every `exec`), and
/// when it joined (CLOCK_BOOTTIME ns, compared on its own host only): read only when
/// `NODE_PID` has `NODE_PID_IMAGED`, which the same join writes.
pub(crate) const NODE_IMAGE: usize = 80;
pub(crate) const NODE_JOINED: usize = 88;

pub(crate) const NODE_FREE: u64 = 0;
/// Claimed, host and pid not yet written: judged by its claim time alone.
pub(crate) const NODE_JOINING: u64 = 1;
pub(crate) const NODE_ALIVE: u64 = 2;

pub(crate) const DIRECTORY_AT: usize = 16384;
pub(crate) const MAX_SPACES: usize = 256;
pub(crate) const ENTRY_BYTES: usize = 192;
// Directory entry words: the publish word, then FIELDS words read as one publication.
pub(crate) const E_PUBLISH: usize = 0;
pub(crate) const E_ID: usize = 8;
pub(crate) const E_SIZE: usize = 16;
pub(crate) const E_OFFSET: usize = 24;
pub(crate) const E_LEN: usize = 32;
pub(crate) const E_CREATED: usize = 40;
pub(crate) const E_CREATOR: usize = 48;
pub(crate) const E_CHECKSUM: usize = 56;
pub(crate) const E_NAME: usize = 64;
/// Words after the publish word that form one publication (id .. name).
pub(crate) const E_FIELDS: usize = 15;
/// Live mappings (the creator's included): changed under the lock, outside the publication.
pub(crate) const E_REFS: usize = 128;

pub(crate) const NAME_MAX: usize = 63;
pub(crate) const NAME_BYTES: usize = 64;

/// Entry states (the low byte of the publish word; `published::BUSY` while rewritten).
pub(crate) const SPACE_FREE: u64 = 0;
pub(crate) const SPACE_PRIVATE: u64 = 1;
pub(crate) const SPACE_SHARED: u64 = 2;

pub(crate) const HOLDINGS_AT: usize = DIRECTORY_AT + MAX_SPACES * ENTRY_BYTES;
pub(crate) const MAX_HOLDINGS: usize = 1024;
pub(crate) const HOLDING_BYTES: usize = 32;
// Holding words: which node (of which host) holds how many mappings of which space.
pub(crate) const H_TAG: usize = 0;
/// The holding node's host: whose caches may hold the space's lines (`host_cache`).
pub(crate) const H_HOST: usize = 8;
/// `space id << 16 | entry index` (`holding_space_word`).
pub(crate) const H_SPACE: usize = 16;
pub(crate) const H_COUNT: usize = 24;

pub(crate) const META_END: usize = HOLDINGS_AT + MAX_HOLDINGS * HOLDING_BYTES;

/// Whether metadata offset `off` is the publish word of a directory entry.
pub(crate) fn is_publish_word(off: usize) -> bool {
    (DIRECTORY_AT..HOLDINGS_AT).contains(&off) && (off - DIRECTORY_AT) % ENTRY_BYTES == E_PUBLISH
}

const _: () = assert!(DEBTS_AT >= SB_LOCK + 64 && DEBTS_AT + MAX_DEBTS * DEBT_BYTES <= LOG_AT);
const _: () = assert!(MAX_SPACES <= 1 << 16);
const _: () = assert!(LOG_AT + 16 + LOG_ENTRIES * 16 <= REGISTRY_AT);
const _: () = assert!(REGISTRY_AT + MAX_NODES * NODE_BYTES <= DIRECTORY_AT);
const _: () = assert!(E_REFS + 8 <= ENTRY_BYTES && E_NAME + NAME_BYTES == E_REFS);
const _: () = assert!(E_FIELDS * 8 == E_REFS - E_ID);
const _: () = assert!(META_END == 98304);

pub(crate) const fn node_at(slot: usize) -> usize {
    REGISTRY_AT + slot * NODE_BYTES
}

pub(crate) const fn entry_at(index: usize) -> usize {
    DIRECTORY_AT + index * ENTRY_BYTES
}

pub(crate) const fn holding_at(index: usize) -> usize {
    HOLDINGS_AT + index * HOLDING_BYTES
}

pub(crate) const fn debt_at(index: usize) -> usize {
    DEBTS_AT + index * DEBT_BYTES
}

/// A holding's H_SPACE word: the space's id and directory index.
pub(crate) const fn holding_space_word(index: usize, id: u64) -> u64 {
    id << 16 | index as u64
}

/// (entry index, space id) of a holding's H_SPACE word.
pub(crate) const fn holding_space_parts(word: u64) -> (usize, u64) {
    ((word & 0xffff) as usize, word >> 16)
}

/// A node's tag: `incarnation << 8 | (slot + 1)`; never 0. The lock word and holdings name
/// nodes by tag, so a slot reused by a new process (a new incarnation) is not mistaken for
/// the old one.
pub(crate) const fn node_tag(slot: usize, incarnation: u64) -> u64 {
    incarnation << 8 | (slot as u64 + 1)
}

/// The slot a tag names, if it names one.
pub(crate) const fn slot_of_tag(tag: u64) -> Option<usize> {
    let s = (tag & 0xff) as usize;
    if s == 0 || s > MAX_NODES {
        None
    } else {
        Some(s - 1)
    }
}

pub(crate) const fn node_state_word(claim_secs: u64, incarnation: u64, state: u64) -> u64 {
    claim_secs << 32 | (incarnation & 0xff_ffff) << 8 | state
}

/// (claim_secs, incarnation, state) of a node state word.
pub(crate) const fn node_state_parts(word: u64) -> (u64, u64, u64) {
    (word >> 32, (word >> 8) & 0xff_ffff, word & 0xff)
}

/// A name as the directory stores it: eight words, NUL-padded.
pub(crate) fn name_words(name: &[u8]) -> [u64; 8] {
    let mut bytes = [0u8; NAME_BYTES];
    bytes[..name.len()].copy_from_slice(name);
    core::array::from_fn(|i| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap()))
}

/// The name the words hold (up to the first NUL).
pub(crate) fn name_bytes(words: &[u64]) -> ([u8; NAME_BYTES], usize) {
    let mut bytes = [0u8; NAME_BYTES];
    for (i, w) in words.iter().take(8).enumerate() {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(NAME_BYTES);
    (bytes, len)
}

/// The entry checksum: over the publish word and every field but the checksum itself.
/// `fields` are the E_FIELDS words after the publish word.
pub(crate) fn entry_checksum(publish: u64, fields: &[u64; E_FIELDS]) -> u64 {
    let checksum_index = (E_CHECKSUM - E_ID) / 8;
    crate::lockfree::redo_log::checksum(
        core::iter::once(publish).chain(
            fields
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != checksum_index)
                .map(|(_, &w)| w),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_names_round_trip() {
        let tag = node_tag(63, 5);
        assert_eq!(slot_of_tag(tag), Some(63));
        assert_eq!(slot_of_tag(0), None);
        let w = node_state_word(1234, 7, NODE_ALIVE);
        assert_eq!(node_state_parts(w), (1234, 7, NODE_ALIVE));
        let words = name_words(b"a-name");
        let (bytes, len) = name_bytes(&words);
        assert_eq!(&bytes[..len], b"a-name");
        let full = [b'x'; 63];
        let (bytes, len) = name_bytes(&name_words(&full));
        assert_eq!(&bytes[..len], &full[..]);
    }

    #[test]
    fn the_checksum_covers_every_field_but_itself() {
        let mut f = [3u64; E_FIELDS];
        let sum = entry_checksum(0x201, &f);
        f[(E_CHECKSUM - E_ID) / 8] = 99;
        assert_eq!(entry_checksum(0x201, &f), sum);
        f[0] = 4;
        assert_ne!(entry_checksum(0x201, &f), sum);
        assert_ne!(entry_checksum(0x401, &[3; E_FIELDS]), sum);
    }
}
