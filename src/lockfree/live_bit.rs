//! A live bit in a word that also names what it belongs to. Freeing the thing clears the bit
//! with one atomic bit operation (`fetch_and` of the one bit, x86 `lock btr`), so of two frees
//! of it, racing or one after the other, exactly one finds the bit set and the other learns it
//! was a double free. Whoever cleared it owns the thing and sets the bit again when it hands
//! it out (`set`, one store), after writing what the next owner must see; nothing else writes
//! a word whose bit is set, nor one whose bit its owner cleared. The device tier's extent
//! cache keeps one such word per 4 KiB of a region (`device/extent_cache.rs`).

use crate::sync::{AtomicU64, Ordering};

/// The live bit (bit 63 is left to the caller, to mark a word in use).
pub(crate) const LIVE: u64 = 1 << 62;

/// What `clear` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cleared {
    /// The bit was set and this call cleared it: the caller owns the thing; the word as it was.
    Now(u64),
    /// The bit was clear already (or another call cleared it first): a double free.
    Already,
    /// The word does not name the thing (`names` said no).
    NotNamed,
}

/// Clears the live bit of `word` if it is set and `names_live(word)` says the word is the thing
/// being freed; `names` classifies a word whose bit is clear (a repeated free, or not the
/// thing's word). `names_live` is asked only about a live word, so it may leave out what every
/// live word has (the caller's mark).
///
/// The bit is cleared by one `fetch_and` whose result is tested for that bit only (x86: `lock
/// btr`, no compare-and-swap loop): of two clears that both read the word live, exactly one
/// finds the bit still set. What it does not see, unlike a compare-and-swap of the whole word:
/// a word that between the load and the `fetch_and` was cleared by another free, given up and
/// made live again for another thing (a double free racing with the first free and a reuse of
/// the word); a compare-and-swap sees that only when the new word differs from the old.
#[inline]
pub fn clear(
    word: &AtomicU64,
    names_live: impl Fn(u64) -> bool,
    names: impl Fn(u64) -> bool,
) -> Cleared {
    clear_with(word, names_live, names, take_bit)
}

/// Clears the bit: whether it was set (one `lock btr`).
#[inline(always)]
fn take_bit(word: &AtomicU64) -> bool {
    // Acquire: the clearer sees everything the setter wrote before `set`.
    word.fetch_and(!LIVE, Ordering::AcqRel) & LIVE != 0
}

#[inline(always)]
fn clear_with(
    word: &AtomicU64,
    names_live: impl Fn(u64) -> bool,
    names: impl Fn(u64) -> bool,
    take_bit: impl Fn(&AtomicU64) -> bool,
) -> Cleared {
    let e = word.load(Ordering::Acquire);
    if e & LIVE == 0 || !names_live(e) {
        return match names(e) {
            true if e & LIVE == 0 => Cleared::Already,
            _ => Cleared::NotNamed,
        };
    }
    // Only another free of the same thing clears a live word's bit.
    match take_bit(word) {
        true => Cleared::Now(e),
        false => Cleared::Already,
    }
}

/// Sets the live bit again: the owner hands the thing out, its writes done. `cleared` is the
/// word as the owner's `clear` left it (bit clear). One store, not a read-modify-write: while
/// the bit is clear, the owner is the word's only writer (a `clear` finds the bit clear and
/// writes nothing).
#[inline(always)]
pub fn set(word: &AtomicU64, cleared: u64) {
    set_with(word, cleared, Ordering::Release);
}

#[inline(always)]
fn set_with(word: &AtomicU64, cleared: u64, order: Ordering) {
    debug_assert_eq!(cleared & LIVE, 0);
    word.store(cleared | LIVE, order);
}

#[cfg(all(test, loom))]
mod tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    const NAME: u64 = 1 << 63 | 5;
    fn names(e: u64) -> bool {
        e & !LIVE == NAME
    }
    /// As `names`, for a live word (the mark, bit 63, left out as the callers do).
    fn names_live(e: u64) -> bool {
        e & 0xff == NAME & 0xff
    }

    /// Two frees of a live thing at once (each clearing the bit with `take_bit`): exactly one
    /// owns it, and a third, after them, finds it freed already.
    fn two_frees(take_bit: fn(&AtomicU64) -> bool) {
        loom::model(move || {
            let word = Arc::new(AtomicU64::new(NAME | LIVE));
            let free = move |word: &AtomicU64| clear_with(word, names_live, names, take_bit);
            let other = {
                let word = word.clone();
                thread::spawn(move || free(&word))
            };
            let mine = free(&word);
            let theirs = other.join().unwrap();
            let won = [mine, theirs]
                .iter()
                .filter(|c| matches!(c, Cleared::Now(_)))
                .count();
            assert_eq!(won, 1, "exactly one free wins: {mine:?} {theirs:?}");
            assert_eq!(free(&word), Cleared::Already);
        });
    }

    #[test]
    fn of_two_frees_exactly_one_wins() {
        two_frees(take_bit);
    }

    /// The bit cleared by a load and a store, not one atomic operation: both frees win.
    #[test]
    fn a_bit_cleared_by_a_load_and_a_store_is_caught() {
        let broken = |word: &AtomicU64| {
            let e = word.load(Ordering::Acquire);
            word.store(e & !LIVE, Ordering::Release);
            e & LIVE != 0
        };
        crate::lockfree::assert_loom_fails(|| two_frees(broken), "exactly one free wins");
    }

    /// A word that does not name the thing is left alone, live or not.
    #[test]
    fn another_things_word_is_not_touched() {
        loom::model(|| {
            let other = 1 << 63 | 6;
            for w in [other, other | LIVE, 0] {
                let word = AtomicU64::new(w);
                assert_eq!(clear(&word, names_live, names), Cleared::NotNamed);
                assert_eq!(word.load(Ordering::Relaxed), w);
            }
        });
    }

    /// The owner writes the thing's contents, then hands it out; a later free that clears the
    /// bit sees those writes.
    fn handed_over(order: Ordering) {
        loom::model(move || {
            let word = Arc::new(AtomicU64::new(NAME));
            let data = Arc::new(AtomicU64::new(0));
            let freer = {
                let (word, data) = (word.clone(), data.clone());
                thread::spawn(move || loop {
                    match clear(&word, names_live, names) {
                        Cleared::Now(_) => return data.load(Ordering::Relaxed),
                        _ => thread::yield_now(),
                    }
                })
            };
            data.store(42, Ordering::Relaxed);
            set_with(&word, NAME, order);
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
