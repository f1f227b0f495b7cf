//! Live bits packed 64 to a word, one per thing, with no lock: freeing a thing clears its bit
//! with one atomic AND, so of two frees of it, racing or one after the other, exactly one
//! finds the bit set (and owns the thing from then on) and the other learns it was a double
//! free, while frees of other things in the same word are left alone. Whoever cleared the bit
//! owns the thing and sets it again when it hands the thing out (`set`), after writing what
//! the next owner must see. The device tier's slabs keep one such bit per 16 bytes of a region
//! (a slot's header start), so that a free or a size query of a slot needs no lock
//! (`device/slabs.rs`).

use crate::sync::{AtomicU64, Ordering};

#[inline]
fn word_and_mask(words: &[AtomicU64], bit: usize) -> (&AtomicU64, u64) {
    (&words[bit / 64], 1 << (bit % 64))
}

/// Clears bit `bit`: true if it was set (the caller now owns the thing), false if it was clear
/// already (a double free; nothing changed).
#[inline]
pub fn clear(words: &[AtomicU64], bit: usize) -> bool {
    let (word, mask) = word_and_mask(words, bit);
    // Acquire: the clearer sees everything the setter wrote before `set`. An AND leaves every
    // other bit as it is, and a bit that is clear already stays clear.
    word.fetch_and(!mask, Ordering::AcqRel) & mask != 0
}

/// Sets bit `bit` (clear until now, the caller owning the thing): the thing is handed out,
/// its writes done.
#[inline]
pub fn set(words: &[AtomicU64], bit: usize) {
    set_with(words, bit, Ordering::Release);
}

fn set_with(words: &[AtomicU64], bit: usize, order: Ordering) {
    let (word, mask) = word_and_mask(words, bit);
    let before = word.fetch_or(mask, order);
    debug_assert!(before & mask == 0, "set a live bit twice");
}

/// Sets the bits of `bits` in the words from `first` on, with plain loads and stores: for
/// building a bitmap (a recovery) before any other thread can reach `words`. One load and one
/// store a word, where `set` is one atomic read-modify-write a bit (about 20 cycles each: a
/// million of them at the recovery of a million blocks).
///
/// The caller guarantees that no other thread accesses these words until they are published
/// (by whatever publishes the structure holding them, with release ordering).
pub fn or_words_unshared(words: &[AtomicU64], first: usize, bits: &[u64]) {
    for (word, &b) in words[first..first + bits.len()].iter().zip(bits) {
        if b != 0 {
            word.store(word.load(Ordering::Relaxed) | b, Ordering::Relaxed);
        }
    }
}

/// Whether bit `bit` is set (a snapshot).
#[inline]
pub fn get(words: &[AtomicU64], bit: usize) -> bool {
    let (word, mask) = word_and_mask(words, bit);
    word.load(Ordering::Acquire) & mask != 0
}

#[cfg(all(test, loom))]
mod tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    fn words(bits: u64) -> Arc<[AtomicU64; 1]> {
        Arc::new([AtomicU64::new(bits)])
    }

    /// Two frees of one live thing at once: exactly one owns it; a free of its neighbour in
    /// the same word, at the same time, succeeds and leaves it alone.
    #[test]
    fn of_two_frees_exactly_one_wins_and_neighbours_are_untouched() {
        loom::model(|| {
            let w = words(0b11);
            let other = {
                let w = w.clone();
                thread::spawn(move || clear(&*w, 0))
            };
            let neighbour = {
                let w = w.clone();
                thread::spawn(move || clear(&*w, 1))
            };
            let mine = clear(&*w, 0);
            let theirs = other.join().unwrap();
            assert!(neighbour.join().unwrap(), "the neighbour's free failed");
            assert!(mine ^ theirs, "{mine} {theirs}");
            assert_eq!(w[0].load(Ordering::Relaxed), 0);
        });
    }

    /// The owner writes the thing's contents, then hands it out; a later free that clears the
    /// bit sees those writes.
    fn handed_over(order: Ordering) {
        loom::model(move || {
            let w = words(0);
            let data = Arc::new(AtomicU64::new(0));
            let freer = {
                let (w, data) = (w.clone(), data.clone());
                thread::spawn(move || loop {
                    if clear(&*w, 3) {
                        return data.load(Ordering::Relaxed);
                    }
                    thread::yield_now();
                })
            };
            data.store(42, Ordering::Relaxed);
            set_with(&*w, 3, order);
            assert_eq!(
                freer.join().unwrap(),
                42,
                "the free saw the thing before it was written"
            );
        });
    }

    #[test]
    fn a_free_sees_what_the_owner_wrote() {
        handed_over(Ordering::Release);
    }

    #[test]
    fn a_relaxed_set_is_caught() {
        crate::lockfree::assert_loom_fails(|| handed_over(Ordering::Relaxed), "the free saw");
    }
}
