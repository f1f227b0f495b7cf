//! Capacity lending between nodes (seed 000): who owns and who holds each extent of a shared
//! capacity arena, one word per extent, every change one compare-and-swap.
//!
//! A word is `0` (unassigned: still the pool's) or `owner | holder << 32 | IDLE?`: `owner` is
//! the node whose share the extent belongs to, `holder` the node using it now (the owner, or
//! a borrower), `IDLE` set while the holder uses nothing in it. Node tags are non-zero and
//! below 2^31.
//!
//! The protocol, with no thread on the lender's side and no lock: a node publishes the idle
//! part of its share by keeping those extents' words `IDLE` — that *is* its answer "idle, it
//! can lend this much"; a node with no idle extent is *saturated*. A borrower takes an idle
//! extent of another node with one CAS `(X, X, IDLE) -> (X, me)`: the extent moves from the
//! lender's account to the borrower's, and both accounts read it from the same word, so
//! they can never disagree. Giving it back is the reverse CAS. A node killed at any
//! instruction leaves every word in one of these states, so no capacity is ever lost:
//! `reclaim` (run by any live node) returns a dead holder's borrowed extents to their owner,
//! and a dead owner's extents to the pool once no live node holds them.
//!
//! Ordering: a holder empties an extent (its allocator metadata and headers) before marking
//! it idle with a *release* CAS; the next holder takes it with an *acquire* CAS, so it sees
//! the extent empty. The loom model below checks this, and that a relaxed release is caught.
//!
//! Accounts (`account`) are derived by scanning: share, in use, lent, borrowed.

use crate::sync::{AtomicU64, Ordering};

pub const IDLE: u64 = 1 << 63;
const TAG_MASK: u64 = 0x7fff_ffff;

/// A word: owned by `owner`, held by `holder`, idle or not.
pub const fn word(owner: u64, holder: u64, idle: bool) -> u64 {
    owner | holder << 32 | if idle { IDLE } else { 0 }
}

/// (owner, holder, idle) of a non-zero word.
pub const fn parts(w: u64) -> (u64, u64, bool) {
    (w & TAG_MASK, (w >> 32) & TAG_MASK, w & IDLE != 0)
}

/// A node's figures, in extents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Account {
    /// Extents of its share (lent ones included).
    pub share: u64,
    /// Extents it holds and uses (own or borrowed).
    pub in_use: u64,
    /// Extents of its share another node holds.
    pub lent: u64,
    /// Extents of other nodes' shares it holds.
    pub borrowed: u64,
}

/// The table: one word per extent, shared by every node (on the device, or in a model).
pub struct LendTable<'a> {
    pub words: &'a [AtomicU64],
}

impl<'a> LendTable<'a> {
    /// Gives `me` up to `n` unassigned extents as its share, idle. Returns how many it got.
    pub fn grant(&self, me: u64, n: usize) -> usize {
        debug_assert!(me != 0 && me <= TAG_MASK);
        let mut got = 0;
        for w in self.words {
            if got == n {
                break;
            }
            if w.compare_exchange(0, word(me, me, true), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                got += 1;
            }
        }
        got
    }

    /// Takes one of `me`'s own idle extents for use.
    pub fn take_own(&self, me: u64) -> Option<usize> {
        let idle = word(me, me, true);
        // A load first: a failed CAS on every other node's word would cost a locked
        // read-modify-write of device memory each.
        self.words.iter().position(|w| {
            w.load(Ordering::Relaxed) == idle
                && w.compare_exchange(
                    idle,
                    word(me, me, false),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        })
    }

    /// Borrows an idle extent of another node, the one `rank` ranks lowest (e.g. 0 for a
    /// node on the same host, 1 for another host). `None`: every other node is saturated.
    pub fn borrow(&self, me: u64, rank: impl Fn(u64) -> u32) -> Option<usize> {
        let mut tried = 0;
        loop {
            let mut best: Option<(u32, usize, u64)> = None;
            for (i, w) in self.words.iter().enumerate() {
                let v = w.load(Ordering::Relaxed);
                let (owner, holder, idle) = parts(v);
                if v != 0 && idle && owner == holder && owner != me {
                    let r = rank(owner);
                    if best.map_or(true, |b| r < b.0) {
                        best = Some((r, i, v));
                    }
                }
            }
            let (_, i, v) = best?;
            let (owner, _, _) = parts(v);
            if self.words[i]
                .compare_exchange(
                    v,
                    word(owner, me, false),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                return Some(i);
            }
            tried += 1;
            if tried > self.words.len() {
                return None;
            }
        }
    }

    /// `me` has emptied extent `i` (its own or borrowed): it becomes idle again, and a
    /// borrowed one goes back to its owner. False if `me` does not hold it.
    pub fn release(&self, me: u64, i: usize) -> bool {
        self.release_with(me, i, Ordering::Release)
    }

    fn release_with(&self, me: u64, i: usize, publish: Ordering) -> bool {
        let v = self.words[i].load(Ordering::Relaxed);
        let (owner, holder, idle) = parts(v);
        if v == 0 || holder != me || idle {
            return false;
        }
        self.words[i]
            .compare_exchange(v, word(owner, owner, true), publish, Ordering::Relaxed)
            .is_ok()
    }

    /// Everything `me` owns and holds goes back to the pool, what it borrowed to its owners
    /// (it is leaving; it must hold no block in them). What it lent stays with the borrower
    /// until given back, then `reclaim` returns it to the pool.
    pub fn leave(&self, me: u64) {
        for w in self.words {
            let v = w.load(Ordering::Relaxed);
            let (owner, holder, _) = parts(v);
            if v == 0 || holder != me {
                continue;
            }
            let next = if owner == me {
                0
            } else {
                word(owner, owner, true)
            };
            let _ = w.compare_exchange(v, next, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// Returns what dead nodes hold: a dead borrower's extents to their live owner (idle), a
    /// dead owner's extents to the pool once no live node holds them. Returns how many
    /// extents changed hands.
    pub fn reclaim(&self, live: impl Fn(u64) -> bool) -> usize {
        let mut n = 0;
        for w in self.words {
            let v = w.load(Ordering::Acquire);
            if v == 0 {
                continue;
            }
            let (owner, holder, _) = parts(v);
            let next = match (live(owner), holder == owner || !live(holder)) {
                (false, true) => 0,
                (true, _) if holder != owner && !live(holder) => word(owner, owner, true),
                _ => continue,
            };
            if w.compare_exchange(v, next, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// `tag`'s figures.
    pub fn account(&self, tag: u64) -> Account {
        let mut a = Account::default();
        for w in self.words {
            let v = w.load(Ordering::Acquire);
            if v == 0 {
                continue;
            }
            let (owner, holder, idle) = parts(v);
            a.share += (owner == tag) as u64;
            a.lent += (owner == tag && holder != tag) as u64;
            a.borrowed += (holder == tag && owner != tag) as u64;
            a.in_use += (holder == tag && !idle) as u64;
        }
        a
    }

    /// Who lent to whom: calls `f(lender, borrower)` for every extent out on loan.
    pub fn loans(&self, mut f: impl FnMut(u64, u64)) {
        for w in self.words {
            let v = w.load(Ordering::Acquire);
            let (owner, holder, _) = parts(v);
            if v != 0 && owner != holder {
                f(owner, holder);
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn table(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn shares_lending_and_reclaim_keep_every_extent() {
        let words = table(6);
        let t = LendTable { words: &words };
        let (a, b, c) = (1, 2, 3);
        assert_eq!(t.grant(a, 2), 2);
        assert_eq!(t.grant(b, 2), 2);
        assert_eq!(t.grant(c, 5), 2, "only what is unassigned");
        // A uses its share, then borrows; C is on A's host (rank 0), B elsewhere.
        assert!(t.take_own(a).is_some() && t.take_own(a).is_some());
        assert_eq!(t.take_own(a), None);
        let rank = |owner| if owner == c { 0 } else { 1 };
        let i = t.borrow(a, rank).unwrap();
        assert_eq!(
            parts(words[i].load(Ordering::Relaxed)).0,
            c,
            "same host first"
        );
        assert_eq!(
            t.account(a),
            Account {
                share: 2,
                in_use: 3,
                lent: 0,
                borrowed: 1
            }
        );
        assert_eq!(
            t.account(c),
            Account {
                share: 2,
                in_use: 0,
                lent: 1,
                borrowed: 0
            }
        );
        // Saturation: B and C busy, nothing left to lend.
        t.borrow(a, rank).unwrap();
        t.take_own(b).unwrap();
        t.take_own(b).unwrap();
        assert_eq!(t.borrow(a, rank), None, "every other node saturated");
        // Giving back returns the extent to its owner, idle.
        assert!(t.release(a, i));
        assert!(!t.release(a, i), "not held any more");
        assert_eq!(t.account(c).lent, 1);
        // A dies holding C's other extent: it goes back to C; A's own go to the pool.
        let reclaimed = t.reclaim(|tag| tag != a);
        assert_eq!(reclaimed, 3);
        assert_eq!(
            t.account(c),
            Account {
                share: 2,
                in_use: 0,
                lent: 0,
                borrowed: 0
            }
        );
        assert_eq!(t.account(a), Account::default());
        assert_eq!(t.grant(4, 9), 2, "A's share is the pool's again");
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;

    /// The lender empties its extent (a plain write: the allocator's metadata in it) and marks
    /// it idle with `publish`; a borrower that takes it must see it emptied.
    fn lend_after_emptying(publish: Ordering) {
        loom::model(move || {
            let words = Arc::new([AtomicU64::new(word(1, 1, false))]);
            let extent = Arc::new(UnsafeCell::new(7u64));
            let (w2, e2) = (words.clone(), extent.clone());
            let lender = loom::thread::spawn(move || {
                // SAFETY (model): the lender holds the extent until it marks it idle.
                e2.with_mut(|p| unsafe { *p = 0 });
                let t = LendTable { words: &w2[..] };
                assert!(t.release_with(1, 0, publish));
            });
            let t = LendTable { words: &words[..] };
            // The borrower asks until the lender has something idle (a saturated answer
            // before that).
            let i = loop {
                if let Some(i) = t.borrow(2, |_| 0) {
                    break i;
                }
                loom::thread::yield_now();
            };
            assert_eq!(i, 0);
            // SAFETY (model): the borrower holds the extent now.
            extent.with(|p| assert_eq!(unsafe { *p }, 0));
            lender.join().unwrap();
        });
    }

    #[test]
    fn a_borrower_sees_the_extent_emptied() {
        lend_after_emptying(Ordering::Release);
    }

    #[test]
    fn a_relaxed_release_is_caught() {
        crate::lockfree::assert_loom_catches(|| lend_after_emptying(Ordering::Relaxed));
    }

    /// Two borrowers race for one idle extent while its owner takes it back: exactly one of
    /// the three gets it.
    #[test]
    fn one_extent_goes_to_exactly_one_taker() {
        loom::model(|| {
            let words = Arc::new([AtomicU64::new(word(1, 1, true))]);
            let spawn = |me: u64| {
                let w = words.clone();
                loom::thread::spawn(move || {
                    let t = LendTable { words: &w[..] };
                    if me == 1 {
                        t.take_own(1).is_some()
                    } else {
                        t.borrow(me, |_| 0).is_some()
                    }
                })
            };
            let (a, b) = (spawn(2), spawn(3));
            loom::thread::yield_now();
            let own = LendTable { words: &words[..] }.take_own(1).is_some();
            let got = [own, a.join().unwrap(), b.join().unwrap()];
            assert_eq!(got.iter().filter(|g| **g).count(), 1, "{got:?}");
        });
    }
}
