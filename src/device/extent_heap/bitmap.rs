//! A three-level, 64-ary bitmap over up to 64³ = 262 144 bits: the set of non-empty size
//! classes of the size index. "The first set bit at or after i" and "the last set bit at or
//! before i" take at most three words and three `trailing_zeros`/`leading_zeros` each, whatever
//! the number of bits set.
//!
//! The bottom level (one bit per class) lives in memory the owner provides (`size_index.rs`
//! maps it with the class heads); the two summary levels are small and live inline.

/// Most bits a bitmap can have.
pub(super) const MAX_BITS: usize = 64 * 64 * 64;

/// Words of the bottom level for `bits` bits.
pub(super) const fn low_words(bits: usize) -> usize {
    bits.div_ceil(64)
}

/// Bits of a word strictly above bit `b` (`b < 64`).
#[inline(always)]
fn above(b: usize) -> u64 {
    (!0u64 << b) << 1
}

/// Bits of a word strictly below bit `b` (`b < 64`).
#[inline(always)]
fn below(b: usize) -> u64 {
    (1u64 << b) - 1
}

#[inline(always)]
fn lowest(w: u64) -> usize {
    w.trailing_zeros() as usize
}

#[inline(always)]
fn highest(w: u64) -> usize {
    63 - w.leading_zeros() as usize
}

/// Invariants (`check`): bit `j` of `mid[m]` is set iff `low[64 m + j] != 0`; bit `m` of `top`
/// is set iff `mid[m] != 0`; no bit at or past `bits` is set.
pub(super) struct Bitmap {
    /// `low_words(bits)` words: bit `i % 64` of word `i / 64` is bit `i`.
    low: *mut u64,
    mid: [u64; 64],
    top: u64,
    bits: usize,
}

impl Bitmap {
    /// A bitmap of `bits <= MAX_BITS` clear bits, its bottom level at `low`.
    ///
    /// # Safety
    /// `low` points at `low_words(bits)` zeroed words that stay valid, and that nothing else
    /// reads or writes, for the bitmap's life.
    pub unsafe fn new(low: *mut u64, bits: usize) -> Self {
        debug_assert!(bits <= MAX_BITS);
        Bitmap {
            low,
            mid: [0; 64],
            top: 0,
            bits,
        }
    }

    #[inline(always)]
    fn low(&self, w: usize) -> u64 {
        debug_assert!(w < low_words(self.bits));
        // SAFETY: `w` is below `low_words(bits)` (callers derive it from a bit below `bits`
        // or from a summary bit, which the invariants tie to such a word).
        unsafe { *self.low.add(w) }
    }

    #[inline(always)]
    fn low_mut(&mut self, w: usize) -> &mut u64 {
        debug_assert!(w < low_words(self.bits));
        // SAFETY: as in `low`; `&mut self` makes the access exclusive.
        unsafe { &mut *self.low.add(w) }
    }

    #[inline]
    pub fn get(&self, i: usize) -> bool {
        debug_assert!(i < self.bits);
        self.low(i / 64) & (1 << (i % 64)) != 0
    }

    #[inline]
    pub fn set(&mut self, i: usize) {
        debug_assert!(i < self.bits);
        let w = i / 64;
        *self.low_mut(w) |= 1 << (i % 64);
        self.mid[w / 64] |= 1 << (w % 64);
        self.top |= 1 << (w / 64);
    }

    #[inline]
    pub fn clear(&mut self, i: usize) {
        debug_assert!(i < self.bits);
        let w = i / 64;
        let word = self.low_mut(w);
        *word &= !(1 << (i % 64));
        if *word == 0 {
            let m = w / 64;
            self.mid[m] &= !(1 << (w % 64));
            if self.mid[m] == 0 {
                self.top &= !(1 << m);
            }
        }
    }

    /// The lowest set bit under the non-empty summary word `mid[m]`.
    #[inline(always)]
    fn lowest_under(&self, m: usize) -> usize {
        let w = m * 64 + lowest(self.mid[m]);
        w * 64 + lowest(self.low(w))
    }

    /// The highest set bit under the non-empty summary word `mid[m]`.
    #[inline(always)]
    fn highest_under(&self, m: usize) -> usize {
        let w = m * 64 + highest(self.mid[m]);
        w * 64 + highest(self.low(w))
    }

    /// The lowest set bit `>= i`, if any.
    #[inline]
    pub fn first_from(&self, i: usize) -> Option<usize> {
        if i >= self.bits {
            return None;
        }
        let w = i / 64;
        let here = self.low(w) & (!0u64 << (i % 64));
        if here != 0 {
            return Some(w * 64 + lowest(here));
        }
        let m = w / 64;
        let near = self.mid[m] & above(w % 64);
        if near != 0 {
            let w = m * 64 + lowest(near);
            return Some(w * 64 + lowest(self.low(w)));
        }
        let far = self.top & above(m);
        if far == 0 {
            return None;
        }
        Some(self.lowest_under(lowest(far)))
    }

    /// The highest set bit `<= i`, if any.
    #[inline]
    pub fn last_upto(&self, i: usize) -> Option<usize> {
        let i = i.min(self.bits.checked_sub(1)?);
        let w = i / 64;
        let here = self.low(w) & (!0u64 >> (63 - i % 64));
        if here != 0 {
            return Some(w * 64 + highest(here));
        }
        let m = w / 64;
        let near = self.mid[m] & below(w % 64);
        if near != 0 {
            let w = m * 64 + highest(near);
            return Some(w * 64 + highest(self.low(w)));
        }
        let far = self.top & below(m);
        if far == 0 {
            return None;
        }
        Some(self.highest_under(highest(far)))
    }

    /// The highest set bit, if any.
    #[inline]
    pub fn last(&self) -> Option<usize> {
        if self.top == 0 {
            return None;
        }
        Some(self.highest_under(highest(self.top)))
    }

    /// Panics unless the invariants hold; returns the set bits in increasing order.
    #[cfg(test)]
    pub fn check(&self) -> std::vec::Vec<usize> {
        let mut set = std::vec::Vec::new();
        for m in 0..64 {
            assert_eq!(self.top & (1 << m) != 0, self.mid[m] != 0, "top bit {m}");
        }
        for w in 0..64 * 64 {
            let mut word = if w < low_words(self.bits) {
                self.low(w)
            } else {
                0
            };
            assert_eq!(
                self.mid[w / 64] & (1 << (w % 64)) != 0,
                word != 0,
                "mid bit {w}"
            );
            while word != 0 {
                let i = w * 64 + lowest(word);
                assert!(i < self.bits, "bit {i} past the end");
                set.push(i);
                word &= word - 1;
            }
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    /// Sets and clears bits at random; every query against an ordered set.
    #[test]
    fn queries_match_an_ordered_set() {
        for bits in [1, 64, 65, 4096, 4097, 68_544, MAX_BITS] {
            let mut words = std::vec![0u64; low_words(bits)];
            // SAFETY: `words` outlives `b` and is used only through it.
            let mut b = unsafe { Bitmap::new(words.as_mut_ptr(), bits) };
            let mut model = std::collections::BTreeSet::new();
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15u64 ^ bits as u64);
            let steps = if cfg!(miri) { 200 } else { 20_000 };
            for step in 0..steps {
                let x = rng.next();
                // Cluster the bits sometimes so that words fill and empty.
                let i = if x % 3 == 0 {
                    (x >> 8) as usize % bits.min(200)
                } else {
                    (x >> 8) as usize % bits
                };
                if model.remove(&i) {
                    b.clear(i);
                } else {
                    b.set(i);
                    model.insert(i);
                }
                assert_eq!(b.get(i), model.contains(&i));
                let q = (x >> 32) as usize % (bits + 2);
                assert_eq!(
                    b.first_from(q),
                    model.range(q..).next().copied(),
                    "first_from({q})"
                );
                let down = model.range(..=q).next_back().copied();
                assert_eq!(b.last_upto(q), down, "last_upto({q})");
                assert_eq!(b.last(), model.last().copied());
                if step % 1000 == 0 {
                    assert_eq!(
                        b.check(),
                        model.iter().copied().collect::<std::vec::Vec<_>>()
                    );
                }
            }
            assert_eq!(
                b.check(),
                model.iter().copied().collect::<std::vec::Vec<_>>()
            );
        }
    }
}
