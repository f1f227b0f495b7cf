//! Run records by name in shared memory (a pool device), written by any number of processes
//! on any number of hosts without a lock, and crash-safe: a writer killed at any instruction
//! loses at most the one record it was writing, never another.
//!
//! A table is an array of *slots* of `slot_words(fields, runs, live)` words. A slot belongs to
//! one name and holds:
//!
//! ```text
//! 0            claim word: 0 (free), name_hash | CLAIMING, or name_hash | NAMED
//! 1..9         the name, eight words, NUL-padded
//! 9            next: a counter; a writer takes `next % runs` as its entry (fetch_add)
//! 10..         `runs` entries: publish word, `fields` words, checksum
//! then         `live` entries: tag, then `fields` words (the figures of a running process)
//! ```
//!
//! **Claiming a slot** (`claim`): a name's slots are probed from `hash % slots` on, in order,
//! as in an open-addressing hash table whose entries are never removed, so every process
//! looking for one name probes the same sequence and meets at the same slot. A free slot is
//! taken with one CAS `0 -> hash | CLAIMING`, the name written, then `hash | NAMED` stored
//! (Release). A process that finds a slot CLAIMING under its own hash writes the name itself
//! (the same words) and CASes it NAMED: a claimer killed between its CAS and its last store
//! leaves nothing stuck. A reader takes a slot only if NAMED and its name words equal its own.
//! (Two names whose 56-bit hashes agree could mix their names while both claim: ignored.)
//!
//! **Writing a record** (`append`): the entry is chosen by `fetch_add` on `next`; its publish
//! word (`lockfree::published`: `generation << 8 | state`) goes by CAS from whatever it held
//! to BUSY at the next generation, even if BUSY already (that writer died, or is so slow that
//! `runs` others came after it); then the fields and a checksum over them and the final
//! publish word, each with Release; then a CAS from its own BUSY word to the final word. The
//! checksum is what makes takeover safe: a writer overtaken mid-record may still store into
//! the fields, and a mix of two writers' fields fails the checksum. A record is accepted by a
//! reader (`read`) only if `published::read_consistent` returns it whole and its checksum
//! matches; a killed writer's entry stays BUSY (not accepted) until the next writer to reach
//! it rewrites it.
//!
//! **Live entries** (`live_claim`, `live_figures`): a running process claims one by CAS of its
//! tag over 0 or over the tag of a dead process (the caller judges liveness), via a CLAIMING
//! mark while it zeroes the figures, so a reader never sees a dead process's figures under a
//! live tag. It then raises its figures in place (`fetch_max`); at exit it stores 0 over its
//! tag.
//!
//! Every word is an `AtomicU64` of shared memory: on a CXL device, the words must be coherent
//! between the hosts (as the pool's lend table requires).

use super::published::{self, generation_of, publish_word, state_of, BUSY};
use crate::sync::{AtomicU64, Ordering};

/// Low byte of a claim word.
const CLAIMING: u64 = 1;
const NAMED: u64 = 2;
const STATE_MASK: u64 = 0xff;
/// The published state of a record.
const RECORD: u64 = 1;
/// A live entry's tag while its claimer zeroes its figures.
const LIVE_CLAIMING: u64 = 1 << 63;

pub(crate) const NAME_WORDS: usize = 8;
const W_CLAIM: usize = 0;
const W_NAME: usize = 1;
const W_NEXT: usize = W_NAME + NAME_WORDS;
const W_ENTRIES: usize = W_NEXT + 1;

/// The most fields a record may have (readers copy a record on the stack).
pub(crate) const MAX_FIELDS: usize = 63;

/// The shape of a table's slots: fields per record (at most `MAX_FIELDS`), records kept,
/// live entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    pub fields: usize,
    pub runs: usize,
    pub live: usize,
}

impl Shape {
    /// Words of one slot.
    pub(crate) const fn slot_words(&self) -> usize {
        W_ENTRIES + self.runs * (self.fields + 2) + self.live * (self.fields + 1)
    }
    const fn entry(&self, i: usize) -> usize {
        W_ENTRIES + i * (self.fields + 2)
    }
    const fn live_entry(&self, i: usize) -> usize {
        W_ENTRIES + self.runs * (self.fields + 2) + i * (self.fields + 1)
    }
}

/// The claim-word hash of a name: FNV-1a over its words, its low byte left for the state,
/// never 0.
pub(crate) fn name_hash(name: &[u64; NAME_WORDS]) -> u64 {
    (super::redo_log::checksum(name.iter().copied()) & !STATE_MASK) | 0x100
}

/// A table of slots over `words` (a multiple of the slot size).
#[derive(Clone, Copy)]
pub(crate) struct Table<'a> {
    pub words: &'a [AtomicU64],
    pub shape: Shape,
}

/// One name's slot.
#[derive(Clone, Copy)]
pub(crate) struct Slot<'a> {
    words: &'a [AtomicU64],
    shape: Shape,
}

/// How reading one entry went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A whole record, copied out.
    Whole,
    /// Never written, or being written (or its writer died writing it).
    Empty,
    /// Published and read consistently, but its checksum is wrong: two writers mixed it (or a
    /// write-back was missed). Not accepted.
    Mixed,
}

impl<'a> Table<'a> {
    fn slots(&self) -> usize {
        self.words.len() / self.shape.slot_words()
    }

    fn slot(&self, i: usize) -> Slot<'a> {
        let n = self.shape.slot_words();
        Slot {
            words: &self.words[i * n..(i + 1) * n],
            shape: self.shape,
        }
    }

    /// The slot of `name`, claiming one if `claim` and there is none; `None` if the name has
    /// no slot (or the table is full).
    pub(crate) fn find(&self, name: &[u64; NAME_WORDS], claim: bool) -> Option<Slot<'a>> {
        self.find_with(name, claim, Ordering::Release)
    }

    /// `find`, with the ordering of the NAMED store a parameter (the loom model breaks it).
    fn find_with(
        &self,
        name: &[u64; NAME_WORDS],
        claim: bool,
        named: Ordering,
    ) -> Option<Slot<'a>> {
        let hash = name_hash(name);
        let slots = self.slots();
        for k in 0..slots {
            let slot = self.slot((hash as usize / 256 + k) % slots);
            let word = &slot.words[W_CLAIM];
            let mut seen = word.load(Ordering::Acquire);
            if seen == 0 {
                if !claim {
                    return None; // the probe sequence ends at a slot never claimed
                }
                match word.compare_exchange(0, hash | CLAIMING, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => seen = hash | CLAIMING,
                    Err(now) => seen = now,
                }
            }
            if seen & !STATE_MASK != hash {
                continue;
            }
            if seen & STATE_MASK == CLAIMING {
                if !claim {
                    continue;
                }
                // Ours, or a claimer of the same name that may have died: write the name
                // (the same words either way) and publish it.
                for (w, &v) in slot.words[W_NAME..W_NEXT].iter().zip(name) {
                    w.store(v, Ordering::Relaxed);
                }
                let _ = word.compare_exchange(seen, hash | NAMED, named, Ordering::Relaxed);
                continue_if_not_named(word)?;
            }
            if slot.words[W_NAME..W_NEXT]
                .iter()
                .zip(name)
                .all(|(w, &v)| w.load(Ordering::Relaxed) == v)
            {
                return Some(slot);
            }
        }
        None
    }
}

/// After our CAS to NAMED (or another claimer's): the slot is NAMED now.
fn continue_if_not_named(word: &AtomicU64) -> Option<()> {
    (word.load(Ordering::Acquire) & STATE_MASK == NAMED).then_some(())
}

impl<'a> Slot<'a> {
    /// Appends a record; returns whether it was published (false: overtaken by `runs` other
    /// writers, which are then what the slot holds).
    pub(crate) fn append(&self, fields: &[u64]) -> bool {
        self.append_with(fields, Ordering::Release, usize::MAX)
    }

    /// `append` with the stores' ordering a parameter, stopping after `steps` stores (a
    /// writer killed there): the loom models break and kill it.
    pub(crate) fn append_with(&self, fields: &[u64], order: Ordering, steps: usize) -> bool {
        debug_assert_eq!(fields.len(), self.shape.fields);
        let seq = self.words[W_NEXT].fetch_add(1, Ordering::Relaxed);
        let at = self.shape.entry(seq as usize % self.shape.runs);
        let old = self.words[at].load(Ordering::Relaxed);
        self.append_over(at, old, fields, order, steps)
    }

    /// The rest of `append_with` once entry `at` was chosen and its publish word read as
    /// `old` (a loom model passes the value a fresh entry holds: loom 0.7 stops exploring
    /// stale reads of later stores once the writer has loaded the word itself, although the
    /// memory model allows them).
    fn append_over(
        &self,
        at: usize,
        old: u64,
        fields: &[u64],
        order: Ordering,
        steps: usize,
    ) -> bool {
        let publish = &self.words[at];
        let generation = generation_of(old);
        let busy = publish_word(generation + 1, BUSY);
        let done = publish_word(generation + 2, RECORD);
        if publish
            .compare_exchange(old, busy, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false; // another writer took it between our load and CAS
        }
        let mut left = steps;
        for (w, &v) in self.words[at + 1..].iter().zip(fields) {
            if left == 0 {
                return false;
            }
            left -= 1;
            w.store(v, order);
        }
        if left == 0 {
            return false;
        }
        let sum = record_checksum(done, fields);
        self.words[at + 1 + self.shape.fields].store(sum, order);
        if left == 1 {
            return false;
        }
        publish
            .compare_exchange(busy, done, order, Ordering::Relaxed)
            .is_ok()
    }

    /// Entry `i` into `out` (`fields` words).
    pub(crate) fn read(&self, i: usize, out: &mut [u64]) -> Entry {
        let at = self.shape.entry(i);
        let n = self.shape.fields;
        debug_assert!(n <= MAX_FIELDS);
        let mut copy = [0u64; MAX_FIELDS + 1];
        let Some(word) = published::read_consistent(
            &self.words[at],
            &self.words[at + 1..at + 2 + n],
            &mut copy[..n + 1],
        ) else {
            return Entry::Empty;
        };
        if state_of(word) != RECORD {
            return Entry::Empty;
        }
        if record_checksum(word, &copy[..n]) != copy[n] {
            return Entry::Mixed;
        }
        out[..n].copy_from_slice(&copy[..n]);
        Entry::Whole
    }

    /// Whether entry `i` was ever taken by a writer (whole or not).
    pub(crate) fn written(&self, i: usize) -> bool {
        self.words[self.shape.entry(i)].load(Ordering::Relaxed) != 0
    }

    /// Claims a live entry for `tag` (non-zero, below 2^63): a free one, or one whose tag
    /// `dead` says is a dead process's. Its figures start at 0. `None`: every entry is live.
    pub(crate) fn live_claim(&self, tag: u64, dead: impl Fn(u64) -> bool) -> Option<usize> {
        debug_assert!(tag != 0 && tag & LIVE_CLAIMING == 0);
        for i in 0..self.shape.live {
            let at = self.shape.live_entry(i);
            let word = &self.words[at];
            let seen = word.load(Ordering::Acquire);
            if (seen == 0 || (seen & LIVE_CLAIMING == 0 && dead(seen)))
                && word
                    .compare_exchange(
                        seen,
                        tag | LIVE_CLAIMING,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                for w in &self.words[at + 1..at + 1 + self.shape.fields] {
                    w.store(0, Ordering::Relaxed);
                }
                word.store(tag, Ordering::Release);
                return Some(i);
            }
        }
        None
    }

    /// Field `f` of live entry `i`, which its holder raises with `fetch_max`.
    pub(crate) fn live_word(&self, i: usize, f: usize) -> &'a AtomicU64 {
        &self.words[self.shape.live_entry(i) + 1 + f]
    }

    /// Gives live entry `i` (held by `tag`) back.
    pub(crate) fn live_release(&self, i: usize, tag: u64) {
        let _ = self.words[self.shape.live_entry(i)].compare_exchange(
            tag,
            0,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// `f(tag, figures)` for every live entry held (not being claimed), whatever its
    /// holder's state: the caller judges liveness.
    pub(crate) fn live_figures(&self, mut f: impl FnMut(u64, &[u64])) {
        let n = self.shape.fields;
        let mut copy = [0u64; MAX_FIELDS + 1];
        for i in 0..self.shape.live {
            let at = self.shape.live_entry(i);
            let tag = self.words[at].load(Ordering::Acquire);
            if tag == 0 || tag & LIVE_CLAIMING != 0 {
                continue;
            }
            for (c, w) in copy[..n].iter_mut().zip(&self.words[at + 1..]) {
                *c = w.load(Ordering::Relaxed);
            }
            f(tag, &copy[..n]);
        }
    }
}

fn record_checksum(publish: u64, fields: &[u64]) -> u64 {
    super::redo_log::checksum(core::iter::once(publish).chain(fields.iter().copied()))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape {
        fields: 3,
        runs: 2,
        live: 2,
    };

    /// The table over `words`, in this module's shape.
    fn over(words: &[AtomicU64]) -> Table<'_> {
        Table {
            words,
            shape: SHAPE,
        }
    }

    fn table(slots: usize) -> Vec<AtomicU64> {
        (0..slots * SHAPE.slot_words())
            .map(|_| AtomicU64::new(0))
            .collect()
    }

    fn name(s: &str) -> [u64; NAME_WORDS] {
        let mut b = [0u8; 64];
        b[..s.len()].copy_from_slice(s.as_bytes());
        core::array::from_fn(|i| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap()))
    }

    fn whole(slot: &Slot) -> Vec<[u64; 3]> {
        (0..SHAPE.runs)
            .filter_map(|i| {
                let mut out = [0; 3];
                (slot.read(i, &mut out) == Entry::Whole).then_some(out)
            })
            .collect()
    }

    #[test]
    fn names_meet_at_one_slot_and_the_ring_keeps_the_last_runs() {
        let words = table(3);
        let t = over(&words);
        assert!(t.find(&name("a"), false).is_none());
        let a = t.find(&name("a"), true).unwrap();
        let b = t.find(&name("b"), true).unwrap();
        assert!(!core::ptr::eq(a.words, b.words));
        assert!(core::ptr::eq(
            t.find(&name("a"), false).unwrap().words,
            a.words
        ));
        for i in 0..5 {
            assert!(a.append(&[i, i, i]));
        }
        let mut runs = whole(&a);
        runs.sort();
        assert_eq!(runs, [[3, 3, 3], [4, 4, 4]]);
        assert!(whole(&b).is_empty());
        // A fourth name does not fit three slots.
        t.find(&name("c"), true).unwrap();
        assert!(t.find(&name("d"), true).is_none());
    }

    #[test]
    fn a_killed_writer_loses_only_its_record_and_the_next_one_takes_the_entry_over() {
        let words = table(1);
        let t = over(&words);
        let s = t.find(&name("k"), true).unwrap();
        assert!(s.append(&[1, 1, 1]));
        // Killed after every possible number of its stores: entry 1 is never accepted, the
        // record in entry 0 always is.
        for steps in 0..5 {
            assert!(!s.append_with(&[2, 2, 2], Ordering::Release, steps));
            assert_eq!(whole(&s), [[1, 1, 1]], "killed after {steps} stores");
            // The next writer lands on entry 0 (the counter moved on), the one after that on
            // the dead writer's entry 1, and takes it over.
            assert!(s.append(&[1, 1, 1]));
        }
        assert!(s.append(&[3, 3, 3]));
        let mut runs = whole(&s);
        runs.sort();
        assert_eq!(runs, [[1, 1, 1], [3, 3, 3]]);
        // A mixed record (an overtaken writer's late field store) is refused.
        let at = SHAPE.entry(1);
        words[at + 1].store(9, Ordering::Relaxed);
        assert_eq!(s.read(1, &mut [0; 3]), Entry::Mixed);
    }

    #[test]
    fn a_claimer_killed_before_naming_its_slot_is_finished_by_the_next() {
        let words = table(2);
        let t = over(&words);
        let n = name("x");
        let start = (name_hash(&n) as usize / 256) % 2;
        words[start * SHAPE.slot_words()].store(name_hash(&n) | CLAIMING, Ordering::Relaxed);
        assert!(t.find(&n, false).is_none());
        let s = t.find(&n, true).unwrap();
        assert!(core::ptr::eq(s.words, t.slot(start).words));
        assert!(t.find(&n, false).is_some());
    }

    #[test]
    fn live_entries_of_dead_holders_are_taken_with_zeroed_figures() {
        let words = table(1);
        let t = over(&words);
        let s = t.find(&name("l"), true).unwrap();
        let i = s.live_claim(7, |_| false).unwrap();
        s.live_word(i, 0).fetch_max(100, Ordering::Relaxed);
        let j = s.live_claim(8, |_| false).unwrap();
        assert!(s.live_claim(9, |_| false).is_none());
        let mut seen = Vec::new();
        s.live_figures(|tag, f| seen.push((tag, f[0])));
        assert_eq!(seen, [(7, 100), (8, 0)]);
        let k = s.live_claim(9, |tag| tag == 7).unwrap();
        assert_eq!(k, i);
        assert_eq!(s.live_word(k, 0).load(Ordering::Relaxed), 0);
        s.live_release(j, 8);
        s.live_release(k, 7); // not its holder any more: nothing happens
        let mut seen = Vec::new();
        s.live_figures(|tag, _| seen.push(tag));
        assert_eq!(seen, [9]);
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    const SHAPE: Shape = Shape {
        fields: 2,
        runs: 2,
        live: 0,
    };

    /// The table over `words`, in this module's shape.
    fn over(words: &[AtomicU64]) -> Table<'_> {
        Table {
            words,
            shape: SHAPE,
        }
    }

    fn table(slots: usize) -> Arc<Vec<AtomicU64>> {
        Arc::new(
            (0..slots * SHAPE.slot_words())
                .map(|_| AtomicU64::new(0))
                .collect(),
        )
    }

    const NAME: [u64; NAME_WORDS] = [0x61, 0, 0, 0, 0, 0, 0, 0];

    /// Writer `w` writes the record `(10 w, 10 w + 1)`.
    fn record_of(w: u64) -> [u64; 2] {
        [10 * w, 10 * w + 1]
    }

    /// Two writers append while a reader reads both entries: the reader accepts only whole
    /// records, and never finds a published, consistently read record whose checksum fails
    /// (which a correct ordering makes impossible when no writer is overtaken).
    fn writers_against_reader(order: Ordering) {
        loom::model(move || {
            let words = table(1);
            let t = over(&words);
            let slot = t.find(&NAME, true).unwrap();
            let handles: Vec<_> = (1..=2u64)
                .map(|w| {
                    let words = words.clone();
                    thread::spawn(move || {
                        let t = over(&words);
                        t.slot(0).append_with(&record_of(w), order, usize::MAX)
                    })
                })
                .collect();
            for i in 0..SHAPE.runs {
                let mut out = [0u64; 2];
                match slot.read(i, &mut out) {
                    Entry::Whole => assert!(
                        out == record_of(1) || out == record_of(2),
                        "a torn record was accepted"
                    ),
                    Entry::Mixed => panic!("a torn record was published"),
                    Entry::Empty => {}
                }
            }
            for h in handles {
                assert!(h.join().unwrap());
            }
            let mut got: Vec<[u64; 2]> = (0..2)
                .map(|i| {
                    let mut out = [0; 2];
                    assert_eq!(slot.read(i, &mut out), Entry::Whole);
                    out
                })
                .collect();
            got.sort();
            assert_eq!(got, [record_of(1), record_of(2)]);
        });
    }

    #[test]
    fn concurrent_writers_publish_whole_records() {
        writers_against_reader(Ordering::Release);
    }

    /// One writer appends to a fresh entry while a reader reads it once: the reader finds
    /// it empty (not published yet) or whole and equal to the writer's record; never
    /// published with fields or a checksum it cannot match (`Mixed`), which is what a reader
    /// sees when the fields and checksum are stored without Release: it can then acquire the
    /// final publish word (whose CAS continues the release sequence of the BUSY CAS, which
    /// orders nothing stored after it) and still read the fields' old values.
    fn writer_against_reader(order: Ordering) {
        loom::model(move || {
            let words = table(1);
            let slot = over(&words).find(&NAME, true).unwrap();
            let w = words.clone();
            let h = thread::spawn(move || {
                // Entry 0, fresh: its publish word is 0 (see `append_over`).
                let s = over(&w).slot(0);
                s.words[W_NEXT].fetch_add(1, Ordering::Relaxed);
                s.append_over(SHAPE.entry(0), 0, &record_of(1), order, usize::MAX)
            });
            let mut out = [0u64; 2];
            match slot.read(0, &mut out) {
                Entry::Whole => assert_eq!(out, record_of(1), "a torn record was accepted"),
                Entry::Mixed => panic!("a torn record was published"),
                Entry::Empty => {}
            }
            assert!(h.join().unwrap());
        });
    }

    #[test]
    fn a_record_is_read_whole_or_not_at_all() {
        writer_against_reader(Ordering::Release);
    }

    // Caught since the writer no longer loads the publish word inside the model (it is passed
    // the fresh entry's 0): with that load, loom 0.7 found no execution where the reader
    // acquires the final word and then reads a field's old value (a pure three-line
    // message-passing model with and without such a load showed the difference).
    #[test]
    fn relaxed_record_stores_are_caught() {
        crate::lockfree::assert_loom_fails(
            || writer_against_reader(Ordering::Relaxed),
            "torn record",
        );
    }

    /// A writer killed mid-record on entry 0 (after one field store), then a writer that
    /// takes the entry over, racing a reader: the reader never accepts the killed writer's
    /// fields, and the record of entry 1 stays whole throughout.
    #[test]
    fn a_killed_writer_loses_only_its_own_record() {
        loom::model(|| {
            let words = table(1);
            let t = over(&words);
            let slot = t.find(&NAME, true).unwrap();
            slot.words[W_NEXT].store(1, Ordering::Relaxed);
            assert!(slot.append(&record_of(3))); // entry 1
            assert!(!slot.append_with(&record_of(1), Ordering::Release, 1)); // entry 0, killed
            slot.words[W_NEXT].store(2, Ordering::Relaxed);
            let w = words.clone();
            let h = thread::spawn(move || {
                let t = over(&w);
                t.slot(0).append(&record_of(2)) // entry 0, taken over
            });
            let mut out = [0u64; 2];
            match slot.read(0, &mut out) {
                Entry::Whole => assert_eq!(out, record_of(2), "a torn record was accepted"),
                Entry::Mixed => panic!("a torn record was published"),
                Entry::Empty => {}
            }
            assert_eq!(slot.read(1, &mut out), Entry::Whole);
            assert_eq!(out, record_of(3));
            assert!(h.join().unwrap());
        });
    }

    /// Two processes claim the same name at once: both get the same slot, named.
    fn claimers_meet(named: Ordering) {
        // Two preemptions reach every interleaving of the two claims that matters here (a
        // claim is a CAS of the slot's state, then the name's stores, then their publishing):
        // three made this one model take minutes of CI's loom step.
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(2);
        model.check(move || {
            let words = table(2);
            let w = words.clone();
            let h = thread::spawn(move || {
                let t = over(&w);
                t.find_with(&NAME, true, named)
                    .map(|s| s.words.as_ptr() as usize)
            });
            let t = over(&words);
            let mine = t
                .find_with(&NAME, true, named)
                .map(|s| s.words.as_ptr() as usize);
            let theirs = h.join().unwrap();
            assert!(mine.is_some() && mine == theirs, "two slots for one name");
        });
    }

    #[test]
    fn claimers_of_one_name_meet_at_one_slot() {
        claimers_meet(Ordering::Release);
    }

    #[test]
    fn a_relaxed_naming_is_caught() {
        crate::lockfree::assert_loom_fails(|| claimers_meet(Ordering::Relaxed), "two slots");
    }
}
