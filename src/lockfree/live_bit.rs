//! A live bit in a word that also names what it belongs to. Freeing the thing clears the bit
//! with one compare-and-swap, so of two frees of it, racing or one after the other, exactly
//! one succeeds and the other learns it was a double free. Whoever cleared it owns the thing
//! and sets the bit again when it hands it out (`set`, one store), after writing what the next
//! owner must see; nothing else writes a word whose bit is set, nor one whose bit its owner
//! cleared. The device tier's extent cache keeps one such word per 4 KiB of a region
//! (`device/extent_cache.rs`).

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

/// Clears the live bit of `word` if `names(word)` says it is the thing being freed.
#[inline]
pub fn clear(word: &AtomicU64, names: impl Fn(u64) -> bool) -> Cleared {
    let e = word.load(Ordering::Acquire);
    if !names(e) {
        return Cleared::NotNamed;
    }
    if e & LIVE == 0 {
        return Cleared::Already;
    }
    // Acquire: the clearer sees everything the setter wrote before `set`.
    match word.compare_exchange(e, e & !LIVE, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Cleared::Now(e),
        // Only another free of the same thing changes a live word.
        Err(_) => Cleared::Already,
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

    /// Two frees of a live thing at once: exactly one owns it.
    #[test]
    fn of_two_frees_exactly_one_wins() {
        loom::model(|| {
            let word = Arc::new(AtomicU64::new(NAME | LIVE));
            let other = {
                let word = word.clone();
                thread::spawn(move || clear(&word, names))
            };
            let mine = clear(&word, names);
            let theirs = other.join().unwrap();
            let won = [mine, theirs]
                .iter()
                .filter(|c| matches!(c, Cleared::Now(_)))
                .count();
            assert_eq!(won, 1, "{mine:?} {theirs:?}");
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
                    match clear(&word, names) {
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
