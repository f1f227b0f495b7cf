//! The size index: every free extent of the heap, in a size class chosen by its length, with a
//! bitmap of the non-empty classes. Best fit's "smallest free extent at least this long" and
//! worst fit's "largest free extent" are a few bitmap words away, whatever the number of free
//! extents.
//!
//! The free extents of one length form a list, the most recently inserted first (through the
//! nodes' `class` links). Lengths are counted in granules (`u = len / granule`), and class
//! numbers grow with `u`:
//! - **exact classes**, one per length `u < 2^16` (1 MiB with the 16-byte granule of the device
//!   tiers): class `u`, one list. Insert, remove and "the first member" are O(1).
//! - **ranged classes** above, TLSF-style: each power of two `[2^k, 2^(k+1))`, `k >= 16`, cut
//!   into `2^SUB_BITS` classes of equal width `2^(k - SUB_BITS)`. A class can hold several
//!   lengths, so to keep best fit exact the first extent of each length's list is a node of the
//!   class's treap, ordered by length (`treap.rs`): O(log w) for w distinct lengths in the
//!   class, and w is at most the class's width (16 lengths for 1–2 MiB, 32 for 2–4 MiB, ...).
//!   Extents of a length already present join its list in O(1) (the newcomer takes the list's
//!   place in the treap), so many extents of one length cost no more than one; removing an
//!   extent other than the first of its length is O(1) too.
//!
//! # The order of a walk
//!
//! The fit searches (`mod.rs`) look at candidates in one of two orders, both by length first:
//! *up* (best fit) by length increasing, *down* (worst fit) by length decreasing; among equal
//! lengths, both follow the length's list, the most recently inserted first. An extent is
//! inserted when it becomes free, and again whenever its length changes (a merge, or the
//! alignment gap left in front of a block).
//!
//! # Host memory
//!
//! One mapping per heap, made in `new`: a head per class (the list's first member in an exact
//! class, the treap's root in a ranged one) and the bottom level of the bitmap. Ranged classes
//! exist only for the powers of two up to the capacity: `8 * (2^16 + 2^SUB_BITS * octaves)`
//! bytes and a little, where `octaves = log2(capacity / granule) - 15`: 520 KiB for a tier of
//! less than 1 MiB, 880 KiB for 1 GiB, 1 204 KiB for 1 TiB (granule 16). It is mapped with
//! `MAP_NORESERVE` and zero-filled on demand, so only the pages of classes in use become
//! resident: a page holds the heads of 512 classes.

use super::bitmap::{self, Bitmap};
use super::host;
use super::node::{ClassLinks, Node};
use super::treap;
use core::ptr;

/// Lengths (in granules) below this have a class each.
pub(super) const EXACT_CLASSES: usize = 1 << FIRST_OCTAVE;
const FIRST_OCTAVE: u32 = 16;
/// Each power of two of lengths from `EXACT_CLASSES` up is cut into `2^SUB_BITS` classes.
const SUB_BITS: u32 = 12;
/// Most classes: lengths up to 2^62 granules (capacity <= 2^62 bytes).
const MAX_CLASSES: usize = EXACT_CLASSES + ((63 - FIRST_OCTAVE as usize) << SUB_BITS);
const _: () = assert!(MAX_CLASSES <= bitmap::MAX_BITS);

/// The class of extents `u` granules long (`0 < u < 2^63`); classes beyond a heap's last are
/// for lengths it cannot have.
#[inline]
pub(super) fn class_of(u: u64) -> usize {
    if u < EXACT_CLASSES as u64 {
        return u as usize;
    }
    let k = 63 - u.leading_zeros();
    let sub = (u >> (k - SUB_BITS)) as usize & ((1 << SUB_BITS) - 1);
    EXACT_CLASSES + (((k - FIRST_OCTAVE) as usize) << SUB_BITS) + sub
}

/// Classes for lengths up to `max_units` granules.
const fn classes_upto(max_units: u64) -> usize {
    let top = 63 - max_units.leading_zeros();
    if top < FIRST_OCTAVE {
        EXACT_CLASSES
    } else {
        EXACT_CLASSES + (((top - FIRST_OCTAVE + 1) as usize) << SUB_BITS)
    }
}

/// Bytes mapped for `classes` classes.
const fn map_bytes(classes: usize) -> usize {
    host::page_round(classes * core::mem::size_of::<*mut Node>() + bitmap::low_words(classes) * 8)
}

/// Invariants (checked by `check`):
/// - every free extent of the heap is in exactly one class, `class_of(len / granule)`, and
///   nothing else is: `extents` counts them;
/// - `heads[c]` is null iff class `c` is empty iff bit `c` of `nonempty` is clear;
/// - each list of one length is doubly linked from its first member through `class.next`,
///   each later member's `class.prev_or_left` pointing at the one before; no member but the
///   first of a list in a ranged class has `tree` set;
/// - an exact class is one list, from `heads[c]`; a ranged class is a treap rooted at
///   `heads[c]` (`treap.rs`) whose nodes are the first members of its lists, one per length.
///
/// # Safety (every `unsafe fn` of the impl)
/// The nodes reached from the index and those passed in are live nodes of the heap's pool,
/// which the heap holds exclusively with the index; a node passed to `insert` is free and in no
/// class, with null class links and `tree` unset; one passed to `remove` or to a walk is in
/// this index, with the length it was inserted with.
pub(super) struct SizeIndex {
    /// `classes` pointers at the start of the mapping.
    heads: *mut *mut Node,
    nonempty: Bitmap,
    classes: usize,
    /// `log2(granule)`.
    shift: u32,
    extents: usize,
}

impl SizeIndex {
    /// An empty index for a heap of `capacity` bytes (at most 2^62) and the given granule (a
    /// power of two); `None` when no host memory can be mapped.
    pub fn new(capacity: u64, granule: u64) -> Option<Self> {
        let shift = granule.trailing_zeros();
        let classes = classes_upto((capacity >> shift).max(1));
        debug_assert!(classes <= MAX_CLASSES);
        let base = host::map(map_bytes(classes))?.as_ptr();
        let heads_bytes = classes * core::mem::size_of::<*mut Node>();
        // SAFETY: the mapping is `map_bytes(classes)` long, zeroed and ours: the heads first,
        // then the bitmap's bottom level, which nothing else touches.
        let nonempty = unsafe { Bitmap::new(base.add(heads_bytes).cast(), classes) };
        Some(SizeIndex {
            heads: base.cast(),
            nonempty,
            classes,
            shift,
            extents: 0,
        })
    }

    #[inline(always)]
    fn class(&self, len: u64) -> usize {
        class_of(len >> self.shift)
    }

    /// The head (list head or treap root) of class `c < classes`.
    #[inline(always)]
    fn head(&self, c: usize) -> *mut *mut Node {
        debug_assert!(c < self.classes);
        // SAFETY: `c < classes`: inside the heads array of the mapping.
        unsafe { self.heads.add(c) }
    }

    #[cfg(test)]
    /// Bytes of host memory mapped for the index.
    pub fn mapped_bytes(&self) -> usize {
        map_bytes(self.classes)
    }

    /// Adds the free extent `n` at the front of its length's list.
    #[inline]
    pub unsafe fn insert(&mut self, n: *mut Node) {
        // SAFETY: see "Safety" on the struct; `head` is inside the mapping.
        unsafe {
            let c = self.class((*n).len);
            let head = self.head(c);
            let first = if c < EXACT_CLASSES {
                let first = *head;
                *head = n;
                first
            } else {
                let first = treap::find(*head, (*n).len);
                if first.is_null() {
                    treap::insert(head, n);
                } else {
                    treap::replace(head, first, n);
                }
                first
            };
            (*n).class.next = first;
            if !first.is_null() {
                (*first).class.prev_or_left = n;
            }
            self.nonempty.set(c);
        }
        self.extents += 1;
    }

    /// Takes `n` out of its class. Its length must be the one it was inserted with.
    #[inline]
    pub unsafe fn remove(&mut self, n: *mut Node) {
        // SAFETY: see "Safety" on the struct.
        unsafe {
            let c = self.class((*n).len);
            let head = self.head(c);
            let next = (*n).class.next;
            if (*n).tree {
                // The first of its length in a ranged class: the next takes its place.
                if next.is_null() {
                    treap::remove(head, n);
                } else {
                    (*next).class.prev_or_left = ptr::null_mut();
                    treap::replace(head, n, next);
                }
            } else {
                let prev = (*n).class.prev_or_left;
                if prev.is_null() {
                    debug_assert!(c < EXACT_CLASSES && *head == n);
                    *head = next;
                } else {
                    (*prev).class.next = next;
                }
                if !next.is_null() {
                    (*next).class.prev_or_left = prev;
                }
            }
            (*n).class = ClassLinks::EMPTY;
            if (*head).is_null() {
                self.nonempty.clear(c);
            }
        }
        self.extents -= 1;
    }

    /// The first member of non-empty class `c` in the up order.
    #[inline]
    unsafe fn lowest_of(&self, c: usize) -> *mut Node {
        // SAFETY: see "Safety" on the struct.
        unsafe {
            let head = *self.head(c);
            if c < EXACT_CLASSES {
                head
            } else {
                treap::first(head)
            }
        }
    }

    /// The first member of non-empty class `c` in the down order.
    #[inline]
    unsafe fn highest_of(&self, c: usize) -> *mut Node {
        // SAFETY: see "Safety" on the struct.
        unsafe {
            let head = *self.head(c);
            if c < EXACT_CLASSES {
                head
            } else {
                treap::last(head)
            }
        }
    }

    /// The first extent at least `len` bytes long in the up order (best fit), or null.
    #[inline]
    pub unsafe fn first_at_least(&self, len: u64) -> *mut Node {
        let mut c = self.class(len);
        if c >= self.classes {
            return ptr::null_mut();
        }
        // SAFETY: see "Safety" on the struct.
        unsafe {
            if c >= EXACT_CLASSES && self.nonempty.get(c) {
                let n = treap::ceil(*self.head(c), len, false);
                if !n.is_null() {
                    return n;
                }
                c += 1;
            }
            match self.nonempty.first_from(c) {
                Some(c) => self.lowest_of(c),
                None => ptr::null_mut(),
            }
        }
    }

    /// The first extent in the down order (the largest), or null.
    #[inline]
    pub unsafe fn largest(&self) -> *mut Node {
        match self.nonempty.last() {
            // SAFETY: see "Safety" on the struct.
            Some(c) => unsafe { self.highest_of(c) },
            None => ptr::null_mut(),
        }
    }

    /// The extent after `n` in the up order, or null.
    pub unsafe fn next_up(&self, n: *mut Node) -> *mut Node {
        // SAFETY: see "Safety" on the struct.
        unsafe {
            let next = (*n).class.next;
            if !next.is_null() {
                return next;
            }
            let c = self.class((*n).len);
            if c >= EXACT_CLASSES {
                // The next length: below the treap node's right child if it has one (no
                // search from the root), else above it.
                let longer = if (*n).tree && !(*n).class.right.is_null() {
                    treap::first((*n).class.right)
                } else {
                    treap::ceil(*self.head(c), (*n).len, true)
                };
                if !longer.is_null() {
                    return longer;
                }
            }
            match self.nonempty.first_from(c + 1) {
                Some(c) => self.lowest_of(c),
                None => ptr::null_mut(),
            }
        }
    }

    /// The extent after `n` in the down order, or null.
    pub unsafe fn next_down(&self, n: *mut Node) -> *mut Node {
        // SAFETY: see "Safety" on the struct.
        unsafe {
            let next = (*n).class.next;
            if !next.is_null() {
                return next;
            }
            let c = self.class((*n).len);
            if c >= EXACT_CLASSES {
                // As in `next_up`, mirrored.
                let shorter = if (*n).tree && !(*n).class.prev_or_left.is_null() {
                    treap::last((*n).class.prev_or_left)
                } else {
                    treap::floor(*self.head(c), (*n).len, true)
                };
                if !shorter.is_null() {
                    return shorter;
                }
            }
            match c.checked_sub(1).and_then(|c| self.nonempty.last_upto(c)) {
                Some(c) => self.highest_of(c),
                None => ptr::null_mut(),
            }
        }
    }

    /// Free extents held.
    pub fn len(&self) -> usize {
        self.extents
    }

    /// Panics unless the invariants hold (those about the heap's free extents as a whole are
    /// left to the heap); returns every extent held, each once.
    #[cfg(test)]
    pub unsafe fn check(&self) -> std::vec::Vec<*mut Node> {
        let set = self.nonempty.check();
        let mut all = std::vec::Vec::new();
        // SAFETY: the heads array is `classes` pointers of the mapping.
        let heads = unsafe { core::slice::from_raw_parts(self.heads, self.classes) };
        let nonempty = heads.iter().filter(|h| !h.is_null()).count();
        assert_eq!(nonempty, set.len(), "heads and bitmap disagree");
        for c in set {
            let head = heads[c];
            assert!(!head.is_null(), "class {c} marked but empty");
            let firsts = if c < EXACT_CLASSES {
                // SAFETY: members of the index are live nodes.
                unsafe { assert!((*head).class.prev_or_left.is_null() && !(*head).tree) };
                std::vec![head]
            } else {
                // SAFETY: as above.
                unsafe { treap::collect(head).0 }
            };
            for first in firsts {
                let mut before = first;
                let mut cur = first;
                while !cur.is_null() {
                    // SAFETY: as above.
                    unsafe {
                        let at = (*cur).offset;
                        assert!((*cur).free, "allocated extent {at} in class {c}");
                        assert_eq!(self.class((*cur).len), c, "extent {at} in class {c}");
                        assert_eq!((*cur).len, (*first).len, "extent {at} in the wrong list");
                        assert!((*cur).class.right.is_null() || cur == first);
                        if cur != first {
                            assert!(!(*cur).tree, "extent {at} in a treap and a list");
                            assert_eq!((*cur).class.prev_or_left, before, "list links at {at}");
                        }
                        all.push(cur);
                        before = cur;
                        cur = (*cur).class.next;
                    }
                }
            }
        }
        assert_eq!(all.len(), self.extents);
        let mut unique = all.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), all.len(), "an extent in two places");
        all
    }
}

impl Drop for SizeIndex {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, which only this index refers to.
        unsafe { host::unmap(self.heads.cast(), map_bytes(self.classes)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_grow_with_the_length_and_cover_every_length() {
        let ranged = 1 << SUB_BITS;
        assert_eq!(class_of(1), 1);
        assert_eq!(class_of(65_535), 65_535);
        assert_eq!(class_of(65_536), EXACT_CLASSES);
        assert_eq!(class_of(65_536 + 15), EXACT_CLASSES);
        assert_eq!(class_of(65_536 + 16), EXACT_CLASSES + 1);
        assert_eq!(class_of(1 << 17), EXACT_CLASSES + ranged);
        assert_eq!(class_of((1 << 62) + (1 << 61)), MAX_CLASSES - ranged / 2);
        assert_eq!(class_of(u64::MAX >> 1), MAX_CLASSES - 1);
        let mut x = 1u64;
        for _ in 0..100_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let u = ((x >> (x % 64)) | 1) >> 1 | 1;
            let v = u.saturating_add(x >> 50).min(u64::MAX >> 1);
            assert!(class_of(u) <= class_of(v), "{u} {v}");
            assert!(class_of(u) < classes_upto(u));
            assert!(class_of(v) < classes_upto(v));
        }
    }

    #[test]
    fn host_memory_follows_the_capacity() {
        assert_eq!(classes_upto(1), EXACT_CLASSES);
        assert_eq!(classes_upto(65_535), EXACT_CLASSES);
        assert_eq!(classes_upto(65_536), EXACT_CLASSES + (1 << SUB_BITS));
        // Granule 16: under 1 MiB, 1 GiB, 1 TiB, 2^62 bytes.
        assert_eq!(map_bytes(classes_upto((1 << 20) / 16 - 1)), 520 * 1024);
        assert_eq!(map_bytes(classes_upto((1 << 30) / 16)), 880 * 1024);
        assert_eq!(map_bytes(classes_upto((1 << 40) / 16)), 1_204 * 1024);
        assert!(map_bytes(MAX_CLASSES) <= 2 << 20);
    }
}
