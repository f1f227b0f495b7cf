//! The size index: every free extent of the heap, in a size class chosen by its length, with a
//! bitmap of the non-empty classes. Best fit's "smallest free extent at least this long" and
//! worst fit's "largest free extent" are a few bitmap words away, whatever the number of free
//! extents.
//!
//! Lengths are counted in granules (`u = len / granule`), and class numbers grow with `u`:
//! - **exact classes**, one per length `u < 2^16` (1 MiB with the 16-byte granule of the device
//!   tiers): class `u`. All extents of a class have the same length, so the class is a doubly
//!   linked list (through the nodes' `class` links), new members pushed at the head: insert,
//!   remove and "any member" are O(1).
//! - **ranged classes** above, TLSF-style: each power of two `[2^k, 2^(k+1))`, `16 <= k <= 62`,
//!   cut into `2^SUB_BITS` classes of equal width. A class holds extents of different lengths,
//!   so to keep best fit exact its members form a treap ordered by `(len, offset)`
//!   (`treap.rs`): O(log k) for a class of k members. The class population, not the number of
//!   free extents, sets that cost, and only for extents of 1 MiB and more.
//!
//! # The order of a walk
//!
//! The fit searches (`mod.rs`) look at candidates in one of two orders, both by length first:
//! - *up* (best fit): lengths increasing; among equal lengths, in an exact class from the list
//!   head (the most recently inserted first), in a ranged class by offset increasing;
//! - *down* (worst fit): lengths decreasing; among equal lengths, in an exact class from the
//!   list head again, in a ranged class by offset decreasing.
//!
//! So among free extents of the chosen length, the one taken is the most recently inserted for
//! lengths below 2^16 granules; above, the lowest offset (best fit) or the highest (worst fit).
//! An extent is inserted when it becomes free, and again whenever its length changes (a merge,
//! or the alignment gap left in front of a block).
//!
//! # Host memory
//!
//! One mapping per heap, made in `new`: the class heads (`CLASSES` pointers: 548 352 bytes) and
//! the bottom level of the bitmap (1 071 words: 8 568 bytes), 544 KiB in all. It is mapped with
//! `MAP_NORESERVE` and zero-filled on demand, so only the pages of classes in use become
//! resident: a heap whose free extents have lengths in a few narrow ranges uses a few pages.

use super::bitmap::{self, Bitmap};
use super::host;
use super::node::{Links, Node};
use super::treap;
use core::ptr;

/// Lengths (in granules) below this have a class each.
pub(super) const EXACT_CLASSES: usize = 1 << FIRST_OCTAVE;
const FIRST_OCTAVE: u32 = 16;
/// Each power of two of lengths above `EXACT_CLASSES` is cut into `2^SUB_BITS` classes.
const SUB_BITS: u32 = 6;
/// Powers of two `2^16 .. 2^62` (capacity <= 2^62 bytes; a searched length < 2^63).
const OCTAVES: usize = 63 - FIRST_OCTAVE as usize;
pub(super) const CLASSES: usize = EXACT_CLASSES + (OCTAVES << SUB_BITS);
const _: () = assert!(CLASSES <= bitmap::MAX_BITS);

const HEADS_BYTES: usize = CLASSES * core::mem::size_of::<*mut Node>();
const MAP_BYTES: usize = host::page_round(HEADS_BYTES + bitmap::low_words(CLASSES) * 8);

/// The class of extents `u` granules long (`u > 0`); `CLASSES` (no class) for `u >= 2^63`.
#[inline]
pub(super) fn class_of(u: u64) -> usize {
    if u < EXACT_CLASSES as u64 {
        return u as usize;
    }
    let k = 63 - u.leading_zeros();
    if k > 62 {
        return CLASSES;
    }
    let sub = (u >> (k - SUB_BITS)) as usize & ((1 << SUB_BITS) - 1);
    EXACT_CLASSES + (((k - FIRST_OCTAVE) as usize) << SUB_BITS) + sub
}

/// Invariants (checked by `check`):
/// - every free extent of the heap is in exactly one class, `class_of(len / granule)`, and
///   nothing else is: `extents` counts them;
/// - `heads[c]` is null iff class `c` is empty iff bit `c` of `nonempty` is clear;
/// - an exact class is a doubly linked list from `heads[c]` through `class.right`, each
///   member's `class.left` pointing at the one before (null at the head);
/// - a ranged class is a treap (`treap.rs`) rooted at `heads[c]`.
pub(super) struct SizeIndex {
    /// `CLASSES` pointers at the start of the mapping.
    heads: *mut *mut Node,
    nonempty: Bitmap,
    /// `log2(granule)`.
    shift: u32,
    extents: usize,
}

// SAFETY (of every `unsafe fn` below taking or returning nodes): the nodes are live nodes of
// the heap's pool; nodes passed to `insert` are free and in no class, those passed to `remove`
// and to the walks are in this index. The heap holds the index exclusively.

impl SizeIndex {
    /// An empty index for a heap of the given granule (a power of two); `None` when no host
    /// memory can be mapped.
    pub fn new(granule: u64) -> Option<Self> {
        let base = host::map(MAP_BYTES)?.as_ptr();
        // SAFETY: the mapping is MAP_BYTES long, zeroed and ours: the heads first, then the
        // bitmap's bottom level, which nothing else touches.
        let nonempty = unsafe { Bitmap::new(base.add(HEADS_BYTES).cast(), CLASSES) };
        Some(SizeIndex {
            heads: base.cast(),
            nonempty,
            shift: granule.trailing_zeros(),
            extents: 0,
        })
    }

    #[inline(always)]
    fn class(&self, len: u64) -> usize {
        class_of(len >> self.shift)
    }

    /// The head (list head or treap root) of class `c < CLASSES`.
    #[inline(always)]
    fn head(&self, c: usize) -> *mut *mut Node {
        debug_assert!(c < CLASSES);
        // SAFETY: `c < CLASSES`: inside the heads array of the mapping.
        unsafe { self.heads.add(c) }
    }

    /// Bytes of host memory mapped for the index.
    pub fn mapped_bytes(&self) -> usize {
        MAP_BYTES
    }

    /// Adds the free extent `n`.
    #[inline]
    pub unsafe fn insert(&mut self, n: *mut Node) {
        // SAFETY: see the note above the impl; `head` is inside the mapping.
        unsafe {
            let c = self.class((*n).len);
            let head = self.head(c);
            if c < EXACT_CLASSES {
                let old = *head;
                (*n).class = Links {
                    left: ptr::null_mut(),
                    right: old,
                };
                if !old.is_null() {
                    (*old).class.left = n;
                }
                *head = n;
            } else {
                treap::insert(head, n);
            }
            self.nonempty.set(c);
        }
        self.extents += 1;
    }

    /// Takes `n` out of its class. Its length must be the one it was inserted with.
    #[inline]
    pub unsafe fn remove(&mut self, n: *mut Node) {
        // SAFETY: see the note above the impl.
        unsafe {
            let c = self.class((*n).len);
            let head = self.head(c);
            if c < EXACT_CLASSES {
                let Links { left, right } = (*n).class;
                if left.is_null() {
                    debug_assert!(*head == n);
                    *head = right;
                } else {
                    (*left).class.right = right;
                }
                if !right.is_null() {
                    (*right).class.left = left;
                }
                (*n).class = Links::EMPTY;
            } else {
                let found = treap::remove(head, n);
                debug_assert!(found);
            }
            if (*head).is_null() {
                self.nonempty.clear(c);
            }
        }
        self.extents -= 1;
    }

    /// The first member of non-empty class `c` in the up order.
    #[inline]
    unsafe fn lowest_of(&self, c: usize) -> *mut Node {
        // SAFETY: see the note above the impl.
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
        // SAFETY: see the note above the impl.
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
        if c >= CLASSES {
            return ptr::null_mut();
        }
        // SAFETY: see the note above the impl.
        unsafe {
            if c >= EXACT_CLASSES && self.nonempty.get(c) {
                let n = treap::ceil(*self.head(c), (len, 0), false);
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
            // SAFETY: see the note above the impl.
            Some(c) => unsafe { self.highest_of(c) },
            None => ptr::null_mut(),
        }
    }

    /// The extent after `n` in the up order, or null.
    pub unsafe fn next_up(&self, n: *mut Node) -> *mut Node {
        // SAFETY: see the note above the impl.
        unsafe {
            let c = self.class((*n).len);
            let next = if c < EXACT_CLASSES {
                (*n).class.right
            } else {
                treap::ceil(*self.head(c), ((*n).len, (*n).offset), true)
            };
            if !next.is_null() {
                return next;
            }
            match self.nonempty.first_from(c + 1) {
                Some(c) => self.lowest_of(c),
                None => ptr::null_mut(),
            }
        }
    }

    /// The extent after `n` in the down order, or null.
    pub unsafe fn next_down(&self, n: *mut Node) -> *mut Node {
        // SAFETY: see the note above the impl.
        unsafe {
            let c = self.class((*n).len);
            let next = if c < EXACT_CLASSES {
                (*n).class.right
            } else {
                treap::floor(*self.head(c), ((*n).len, (*n).offset), true)
            };
            if !next.is_null() {
                return next;
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
        // SAFETY: the heads array is CLASSES pointers of the mapping.
        let heads = unsafe { core::slice::from_raw_parts(self.heads, CLASSES) };
        let nonempty = heads.iter().filter(|h| !h.is_null()).count();
        assert_eq!(nonempty, set.len(), "heads and bitmap disagree");
        for c in set {
            let head = heads[c];
            assert!(!head.is_null(), "class {c} marked but empty");
            let members = if c < EXACT_CLASSES {
                let mut members = std::vec::Vec::new();
                let mut before = ptr::null_mut();
                let mut cur = head;
                while !cur.is_null() {
                    // SAFETY: members of the index are live nodes.
                    unsafe {
                        assert_eq!((*cur).class.left, before, "list links in class {c}");
                        members.push(cur);
                        before = cur;
                        cur = (*cur).class.right;
                    }
                }
                members
            } else {
                // SAFETY: as above.
                unsafe { treap::collect(head).0 }
            };
            for &n in &members {
                // SAFETY: as above.
                unsafe {
                    assert!((*n).free, "allocated extent {} in class {c}", (*n).offset);
                    assert_eq!(self.class((*n).len), c, "extent {} in class {c}", (*n).offset);
                }
            }
            all.extend(members);
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
        unsafe { host::unmap(self.heads.cast(), MAP_BYTES) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_grow_with_the_length_and_cover_every_length() {
        assert_eq!(CLASSES, 68_544);
        assert_eq!(MAP_BYTES, 544 * 1024);
        assert_eq!(class_of(1), 1);
        assert_eq!(class_of(65_535), 65_535);
        assert_eq!(class_of(65_536), EXACT_CLASSES);
        assert_eq!(class_of(65_536 + 1023), EXACT_CLASSES);
        assert_eq!(class_of(65_536 + 1024), EXACT_CLASSES + 1);
        assert_eq!(class_of(1 << 17), EXACT_CLASSES + 64);
        assert_eq!(class_of((1 << 62) + (1 << 61)), CLASSES - 32);
        assert_eq!(class_of(u64::MAX >> 1), CLASSES - 1);
        assert_eq!(class_of(1 << 63), CLASSES);
        let mut x = 1u64;
        let mut last = 0;
        for _ in 0..100_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let u = (x >> (x % 64)) | 1;
            let v = u.saturating_add(x >> 50);
            assert!(class_of(u) <= class_of(v), "{u} {v}");
            if u < 1 << 63 {
                assert!(class_of(u) < CLASSES);
            }
            last = last.max(class_of(u));
        }
        assert_eq!(last, CLASSES);
    }
}
