//! The directory of spaces: MAX_SPACES entries, each a published record
//! (`lockfree::published`) of name, id, size, extent, creation time and creator, with a
//! checksum over them and the publish word, plus a refs word outside the publication.
//!
//! Readers (`read_entry`, `find`) take no lock: they invalidate the entry's lines, copy it by
//! the published-record protocol and check the checksum, so a reader on any host acts only on
//! a whole publication. Writers hold the pool lock and plan their stores into a `Txn`: the
//! publish word goes BUSY first, then the fields, then the new publish word (one aligned
//! 8-byte store), each written back before the next.

use super::layout::*;
use super::txn::Txn;
use super::Pool;
use crate::device_wait::DeviceWait;
use crate::lockfree::published::{self, publish_word, BUSY};
use core::sync::atomic::AtomicU64;

/// How long a reader waits for an entry being rewritten, in `DeviceWait` rounds: its spin,
/// then sleeps of at most 1 ms each (about 200 ms in all).
const READ_WAIT_ROUNDS: u32 = 300;

const F_ID: usize = 0;
const F_SIZE: usize = (E_SIZE - E_ID) / 8;
const F_OFFSET: usize = (E_OFFSET - E_ID) / 8;
const F_LEN: usize = (E_LEN - E_ID) / 8;
const F_CREATED: usize = (E_CREATED - E_ID) / 8;
const F_CREATOR: usize = (E_CREATOR - E_ID) / 8;
const F_CHECKSUM: usize = (E_CHECKSUM - E_ID) / 8;
const F_NAME: usize = (E_NAME - E_ID) / 8;

/// One whole publication of an entry, as read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub index: usize,
    pub publish: u64,
    pub fields: [u64; E_FIELDS],
}

impl Entry {
    /// A new entry's fields (checksum filled in by `txn_write_entry`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        id: u64,
        size: u64,
        offset: u64,
        len: u64,
        created: u64,
        creator: u64,
        name: &[u8],
    ) -> Entry {
        let mut fields = [0u64; E_FIELDS];
        fields[F_ID] = id;
        fields[F_SIZE] = size;
        fields[F_OFFSET] = offset;
        fields[F_LEN] = len;
        fields[F_CREATED] = created;
        fields[F_CREATOR] = creator;
        fields[F_NAME..].copy_from_slice(&name_words(name));
        Entry {
            index,
            publish: 0,
            fields,
        }
    }
    pub fn state(&self) -> u64 {
        published::state_of(self.publish)
    }
    pub fn generation(&self) -> u64 {
        published::generation_of(self.publish)
    }
    pub fn id(&self) -> u64 {
        self.fields[F_ID]
    }
    pub fn size(&self) -> u64 {
        self.fields[F_SIZE]
    }
    pub fn offset(&self) -> u64 {
        self.fields[F_OFFSET]
    }
    pub fn len(&self) -> u64 {
        self.fields[F_LEN]
    }
    pub fn created(&self) -> u64 {
        self.fields[F_CREATED]
    }
    pub fn creator(&self) -> u64 {
        self.fields[F_CREATOR]
    }
    pub fn checksum_ok(&self) -> bool {
        self.fields[F_CHECKSUM] == entry_checksum(self.publish, &self.fields)
    }
    pub fn name(&self) -> ([u8; NAME_BYTES], usize) {
        name_bytes(&self.fields[F_NAME..])
    }
    pub fn name_is(&self, name: &[u8]) -> bool {
        self.fields[F_NAME..] == name_words(name)
    }
}

impl Pool {
    fn entry_fields(&self, index: usize) -> &[AtomicU64] {
        let p = self.meta_ptr(entry_at(index) + E_ID) as *const AtomicU64;
        // SAFETY: E_FIELDS words from E_ID lie inside the entry, inside the metadata mapping,
        // 8-aligned, accessed only atomically.
        unsafe { core::slice::from_raw_parts(p, E_FIELDS) }
    }

    /// Entry `index` if it holds a whole publication (PRIVATE or SHARED), else `None`. An
    /// entry being rewritten is waited for (`device_wait`: the writer, maybe on this CPU at a
    /// lower priority, must run) for READ_WAIT_ROUNDS rounds, about 200 ms: longer, its writer
    /// died mid-rewrite, and the entry stays unreadable until the next lock holder replays.
    pub(crate) fn read_entry(&self, index: usize) -> Option<Entry> {
        let at = entry_at(index);
        let mut wait = DeviceWait::new();
        while wait.rounds() < READ_WAIT_ROUNDS {
            self.invalidate_meta(at, ENTRY_BYTES);
            let word = self.word(at + E_PUBLISH);
            let mut fields = [0u64; E_FIELDS];
            match published::read_consistent(word, self.entry_fields(index), &mut fields) {
                Some(publish) => {
                    let entry = Entry {
                        index,
                        publish,
                        fields,
                    };
                    if entry.checksum_ok() {
                        return Some(entry);
                    }
                    // Torn on a non-coherent device (bytes not yet written back): retry.
                }
                None if published::state_of(self.load(at + E_PUBLISH)) == SPACE_FREE => {
                    return None
                }
                None => {} // being rewritten
            }
            let word = self.word(at + E_PUBLISH);
            wait.pause(word, word.load(core::sync::atomic::Ordering::Relaxed));
        }
        None
    }

    /// The entry named `name` whose state `wanted` accepts.
    pub(crate) fn find(&self, name: &[u8], wanted: impl Fn(u64) -> bool) -> Option<Entry> {
        let words = name_words(name);
        (0..MAX_SPACES).find_map(|index| {
            // Cheap pre-check on the first name word before reading the whole entry (which
            // checks the whole name again, consistently).
            self.invalidate_meta(entry_at(index) + E_NAME, 8);
            if self.load(entry_at(index) + E_NAME) != words[0] {
                return None;
            }
            self.read_entry(index)
                .filter(|e| wanted(e.state()) && e.name_is(name))
        })
    }

    pub(crate) fn refs(&self, index: usize) -> u64 {
        self.invalidate_meta(entry_at(index) + E_REFS, 8);
        self.load(entry_at(index) + E_REFS)
    }

    /// Plans the stores that publish `entry` (its fields) in state `state`, over whatever
    /// entry `entry.index` held (publish word `old_publish`).
    pub(crate) fn txn_write_entry(
        &self,
        txn: &mut Txn,
        entry: &Entry,
        old_publish: u64,
        state: u64,
    ) {
        let at = entry_at(entry.index);
        let generation = published::generation_of(old_publish);
        let final_word = publish_word(generation + 2, state);
        let mut fields = entry.fields;
        fields[F_CHECKSUM] = entry_checksum(final_word, &fields);
        txn.set(at + E_PUBLISH, publish_word(generation + 1, BUSY));
        for (i, &f) in fields.iter().enumerate() {
            txn.set(at + E_ID + i * 8, f);
        }
        txn.set(at + E_PUBLISH, final_word);
    }

    /// Plans the stores that change a published entry's state (private -> shared).
    pub(crate) fn txn_set_state(&self, txn: &mut Txn, entry: &Entry, state: u64) {
        let at = entry_at(entry.index);
        let final_word = publish_word(entry.generation() + 2, state);
        txn.set(at + E_PUBLISH, publish_word(entry.generation() + 1, BUSY));
        txn.set(at + E_CHECKSUM, entry_checksum(final_word, &entry.fields));
        txn.set(at + E_PUBLISH, final_word);
    }

    /// Plans the stores that delete an entry: its bytes become free, its name unused.
    pub(crate) fn txn_free_entry(&self, txn: &mut Txn, entry: &Entry) {
        let at = entry_at(entry.index);
        txn.set(at + E_REFS, 0);
        txn.set(
            at + E_PUBLISH,
            publish_word(entry.generation() + 2, SPACE_FREE),
        );
    }

    /// A free directory index (under the lock).
    pub(crate) fn free_entry_index(&self) -> Option<(usize, u64)> {
        (0..MAX_SPACES).find_map(|i| {
            self.invalidate_meta(entry_at(i) + E_PUBLISH, 8);
            let w = self.load(entry_at(i) + E_PUBLISH);
            (published::state_of(w) == SPACE_FREE).then_some((i, w))
        })
    }

    /// Plans the stores that add one mapping of `entry` to `tag`'s holdings (a node of this
    /// host); `None` if the holdings table is full.
    pub(crate) fn txn_hold(&self, txn: &mut Txn, tag: u64, entry: &Entry) -> Option<()> {
        let space = holding_space_word(entry.index, entry.id());
        let mut free = None;
        for h in 0..MAX_HOLDINGS {
            let at = holding_at(h);
            let t = self.load(at + H_TAG);
            if t == tag && self.load(at + H_SPACE) == space {
                txn.set(at + H_COUNT, self.load(at + H_COUNT) + 1);
                txn.set(entry_at(entry.index) + E_REFS, self.refs(entry.index) + 1);
                return Some(());
            }
            if t == 0 && free.is_none() {
                free = Some(at);
            }
        }
        let at = free?;
        txn.set(at + H_HOST, self.host);
        txn.set(at + H_SPACE, space);
        txn.set(at + H_COUNT, 1);
        txn.set(at + H_TAG, tag);
        txn.set(entry_at(entry.index) + E_REFS, self.refs(entry.index) + 1);
        Some(())
    }

    /// Plans the stores that drop one mapping of `entry` from `tag`'s holdings.
    pub(crate) fn txn_unhold(&self, txn: &mut Txn, tag: u64, entry: &Entry) {
        for h in 0..MAX_HOLDINGS {
            let at = holding_at(h);
            if self.load(at + H_TAG) == tag
                && self.load(at + H_SPACE) == holding_space_word(entry.index, entry.id())
            {
                let count = self.load(at + H_COUNT);
                if count <= 1 {
                    self.txn_clear_holding(txn, h);
                } else {
                    txn.set(at + H_COUNT, count - 1);
                }
                let refs = self.refs(entry.index);
                txn.set(entry_at(entry.index) + E_REFS, refs.saturating_sub(1));
                return;
            }
        }
    }

    pub(crate) fn txn_clear_holding(&self, txn: &mut Txn, h: usize) {
        let at = holding_at(h);
        txn.set(at + H_TAG, 0);
        txn.set(at + H_COUNT, 0);
        txn.set(at + H_SPACE, 0);
        txn.set(at + H_HOST, 0);
    }
}
