//! Published records: a record of words in shared memory that readers look up without a lock
//! while one writer at a time (under a lock) rewrites it, and that a reader on another host,
//! whose cache is not coherent with the writer's, can still judge whole or not.
//!
//! Each record is one *publish word* and `N` field words. The publish word is
//! `generation << 8 | state`: state 0 means free, `BUSY` means being rewritten, any other state
//! is a published record. The writer's rule: store, in this order and each with Release,
//! `BUSY` (with a new, odd-numbered generation), then the fields, then the final publish word
//! (the next generation): a publication is that one aligned 8-byte store. The reader's rule
//! (`read_consistent`): load the publish word (Acquire), copy the fields, fence (Acquire), load
//! the publish word again; the copy is whole if both loads agree and the state is published.
//! The shared pool adds a checksum over the fields and the generation, so that a record whose
//! bytes reached memory only in part (a missed write-back) is refused too.

use crate::sync::{fence, AtomicU64, Ordering};

/// State bits of a publish word.
pub(crate) const STATE_MASK: u64 = 0xff;
/// The state of a record being rewritten.
pub(crate) const BUSY: u64 = 0xff;
/// The state of a free record.
pub(crate) const FREE: u64 = 0;

/// `generation << 8 | state`.
pub(crate) const fn publish_word(generation: u64, state: u64) -> u64 {
    generation << 8 | state
}

/// The state part of a publish word.
pub(crate) const fn state_of(word: u64) -> u64 {
    word & STATE_MASK
}

/// The generation part of a publish word.
pub(crate) const fn generation_of(word: u64) -> u64 {
    word >> 8
}

/// One store of the writer's sequence (Release: every earlier store of the sequence is
/// visible to a reader that sees this one).
#[inline]
pub(crate) fn store_in_sequence(word: &AtomicU64, value: u64) {
    word.store(value, Ordering::Release)
}

/// Copies the record's fields into `out` if they form one publication: the publish word it
/// belongs to, or `None` when the record is free, being rewritten, or changed while read.
pub(crate) fn read_consistent(
    word: &AtomicU64,
    fields: &[AtomicU64],
    out: &mut [u64],
) -> Option<u64> {
    read_consistent_with(word, fields, out, true)
}

/// `read_consistent`, optionally without its fence: the loom model shows that it is needed.
pub(crate) fn read_consistent_with(
    word: &AtomicU64,
    fields: &[AtomicU64],
    out: &mut [u64],
    with_fence: bool,
) -> Option<u64> {
    let before = word.load(Ordering::Acquire);
    let state = state_of(before);
    if state == FREE || state == BUSY {
        return None;
    }
    for (o, f) in out.iter_mut().zip(fields) {
        *o = f.load(Ordering::Relaxed);
    }
    if with_fence {
        fence(Ordering::Acquire);
    }
    let after = word.load(Ordering::Relaxed);
    (after == before).then_some(before)
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    struct Record {
        word: AtomicU64,
        fields: [AtomicU64; 2],
    }

    /// A record published at generation `g` holds `(10 g, 10 g + 1)`.
    fn fields_of(generation: u64) -> [u64; 2] {
        [generation * 10, generation * 10 + 1]
    }

    fn rewrite(r: &Record, generation: u64, ordering: Ordering) {
        r.word.store(publish_word(generation + 1, BUSY), ordering);
        for (f, v) in r.fields.iter().zip(fields_of(generation + 2)) {
            f.store(v, ordering);
        }
        r.word.store(publish_word(generation + 2, 1), ordering);
    }

    /// A writer republishes a record (generation 2 -> 4) while a reader looks it up twice:
    /// whatever the reader accepts is exactly one generation's fields.
    fn reader_against_writer(writer: Ordering, reader_fence: bool) {
        loom::model(move || {
            let r = Arc::new(Record {
                word: AtomicU64::new(publish_word(2, 1)),
                fields: [AtomicU64::new(20), AtomicU64::new(21)],
            });
            let w = r.clone();
            let t = thread::spawn(move || rewrite(&w, 2, writer));
            for _ in 0..2 {
                let mut out = [0u64; 2];
                if let Some(word) = read_consistent_with(&r.word, &r.fields, &mut out, reader_fence)
                {
                    assert_eq!(
                        out,
                        fields_of(generation_of(word)),
                        "a torn record was accepted"
                    );
                }
            }
            t.join().unwrap();
        });
    }

    #[test]
    fn readers_accept_only_whole_publications() {
        reader_against_writer(Ordering::Release, true);
    }

    #[test]
    fn a_relaxed_writer_is_caught() {
        crate::lockfree::assert_loom_fails(
            || reader_against_writer(Ordering::Relaxed, true),
            "torn record",
        );
    }

    #[test]
    fn a_reader_without_its_fence_is_caught() {
        crate::lockfree::assert_loom_fails(
            || reader_against_writer(Ordering::Release, false),
            "torn record",
        );
    }
}
