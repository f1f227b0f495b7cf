//! The start table: from the offset where an extent starts to its node, for every extent of the
//! heap, free or allocated. `free(offset)` and `allocated_len(offset)` find their extent here in
//! expected O(1).
//!
//! An open-addressing hash table with linear probing in host memory (`host.rs`): slots of
//! `(offset, node)`, a null node marking an empty slot. The home slot of an offset is the top
//! bits of `offset * 2^64/φ` (Fibonacci hashing: offsets are multiples of the granule, often in
//! arithmetic runs, which this spreads evenly). Removal shifts the following entries back
//! instead of leaving tombstones, so probe sequences never lengthen with churn.
//!
//! The table is kept at most half full and doubles (a new mapping, every entry moved, the old
//! one unmapped) when an insert would pass that: O(1) amortised, O(m) for the insert that
//! doubles it. `reserve` does the doubling before the heap changes anything, so an operation
//! never fails half-way. It never shrinks, like the node pool.
//!
//! Host memory: 16 bytes per slot, two to four slots per extent (32–64 bytes per extent), at
//! least one page (256 slots).

use super::host;
use super::node::Node;
use crate::os;
use core::ptr;

/// One slot; `node` null marks it empty (its `offset` is then meaningless).
#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    offset: u64,
    node: *mut Node,
}

const SLOT: usize = core::mem::size_of::<Slot>();
const FIRST_SLOTS: usize = os::PAGE_SIZE / SLOT;

/// 2^64 / φ, odd.
const FIBONACCI: u64 = 0x9e37_79b9_7f4a_7c15;

/// Invariants (checked by `check`): `slots` is a mapping of `mask + 1` slots, a power of two;
/// `len` slots are full and `2 len <= mask + 1`; each full slot's `node.offset == offset`, no
/// offset is in two slots, and every slot from an entry's home to the entry itself is full
/// (linear probing finds it).
pub(super) struct StartTable {
    slots: *mut Slot,
    mask: usize,
    /// `64 - log2(mask + 1)`: the home slot is `offset * FIBONACCI >> shift`.
    shift: u32,
    len: usize,
}

impl StartTable {
    /// An empty table of one page; `None` when no host memory can be mapped.
    pub fn new() -> Option<Self> {
        let slots = host::map(FIRST_SLOTS * SLOT)?.as_ptr().cast();
        Some(StartTable {
            slots,
            mask: FIRST_SLOTS - 1,
            shift: 64 - FIRST_SLOTS.trailing_zeros(),
            len: 0,
        })
    }

    #[inline(always)]
    fn home(&self, offset: u64) -> usize {
        (offset.wrapping_mul(FIBONACCI) >> self.shift) as usize
    }

    #[inline(always)]
    fn slot(&self, i: usize) -> *mut Slot {
        debug_assert!(i <= self.mask);
        // SAFETY: `i <= mask`: inside the mapping.
        unsafe { self.slots.add(i) }
    }

    /// The node of the extent that starts at `offset`, or null.
    #[inline]
    pub fn get(&self, offset: u64) -> *mut Node {
        let mut i = self.home(offset);
        loop {
            // SAFETY: `slot` is in the mapping; the table is at most half full, so the probe
            // meets an empty slot.
            let s = unsafe { *self.slot(i) };
            if s.node.is_null() || s.offset == offset {
                return s.node;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Makes sure `count` more inserts fit, doubling the table if needed. False (nothing
    /// changed) when the kernel refuses the memory.
    #[inline]
    pub fn reserve(&mut self, count: usize) -> bool {
        2 * (self.len + count) <= self.mask + 1 || self.grow(count)
    }

    #[cold]
    fn grow(&mut self, count: usize) -> bool {
        let mut slots = 2 * (self.mask + 1);
        while 2 * (self.len + count) > slots {
            slots *= 2;
        }
        let Some(new) = host::map(slots * SLOT) else {
            return false;
        };
        let old = StartTable {
            slots: self.slots,
            mask: self.mask,
            shift: self.shift,
            len: self.len,
        };
        self.slots = new.as_ptr().cast();
        self.mask = slots - 1;
        self.shift = 64 - slots.trailing_zeros();
        self.len = 0;
        for i in 0..=old.mask {
            // SAFETY: `i <= old.mask`: inside the old mapping.
            let s = unsafe { *old.slot(i) };
            if !s.node.is_null() {
                // SAFETY: the new table has room for every old entry (and `count` more).
                unsafe { self.insert(s.offset, s.node) };
            }
        }
        // Dropping `old` unmaps the old slots.
        true
    }

    /// Makes every page of the table present at once (`os::prefault_write`): a recovery
    /// (`rebuild.rs`) fills a table sized for its extents, whose hashed slots touch every page.
    pub fn prefault(&self) {
        os::prefault_write(self.slots.cast(), (self.mask + 1) * SLOT);
    }

    /// Asks the cache for the home slot of `offset`: a hint a few steps before its `insert`,
    /// so that a loop of inserts (`rebuild.rs`) overlaps their cache misses.
    #[inline(always)]
    pub fn prefetch(&self, offset: u64) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint that never faults; the home slot is inside the mapping.
        unsafe {
            core::arch::x86_64::_mm_prefetch(
                self.slot(self.home(offset)) as *const i8,
                core::arch::x86_64::_MM_HINT_T0,
            )
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = offset;
    }

    /// Records that the extent of `node` starts at `offset`.
    ///
    /// # Safety
    /// A `reserve(k)` that returned true covers this call (fewer than `k` inserts since); no
    /// entry for `offset` exists; `node` is a live node whose `offset` is `offset`.
    #[inline]
    pub unsafe fn insert(&mut self, offset: u64, node: *mut Node) {
        debug_assert!(2 * (self.len + 1) <= self.mask + 1);
        let mut i = self.home(offset);
        // SAFETY: slots inside the mapping; the caller's reservation leaves an empty one.
        unsafe {
            while !(*self.slot(i)).node.is_null() {
                debug_assert!((*self.slot(i)).offset != offset);
                i = (i + 1) & self.mask;
            }
            *self.slot(i) = Slot { offset, node };
        }
        self.len += 1;
    }

    /// Forgets the extent that starts at `offset`, which must be recorded.
    #[inline]
    pub fn remove(&mut self, offset: u64) {
        let mut hole = self.home(offset);
        // SAFETY (whole body): slots inside the mapping; both probe loops end at an empty slot
        // at the latest (the table is at most half full).
        unsafe {
            loop {
                let s = *self.slot(hole);
                if s.node.is_null() {
                    debug_assert!(false, "{offset} not recorded");
                    return;
                }
                if s.offset == offset {
                    break;
                }
                hole = (hole + 1) & self.mask;
            }
            // Close the hole: move back each following entry whose probe path crosses it.
            let mut i = hole;
            loop {
                i = (i + 1) & self.mask;
                let s = *self.slot(i);
                if s.node.is_null() {
                    break;
                }
                let home = self.home(s.offset);
                // The entry may move to `hole` iff `hole` lies on its path `home ..= i`.
                if (i.wrapping_sub(home) & self.mask) >= (i.wrapping_sub(hole) & self.mask) {
                    *self.slot(hole) = s;
                    hole = i;
                }
            }
            (*self.slot(hole)).node = ptr::null_mut();
        }
        self.len -= 1;
    }

    /// Entries recorded.
    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    /// Bytes of host memory mapped for the table.
    pub fn mapped_bytes(&self) -> usize {
        (self.mask + 1) * SLOT
    }

    /// Panics unless the invariants hold; returns every recorded node.
    #[cfg(test)]
    pub fn check(&self) -> std::vec::Vec<*mut Node> {
        let mut nodes = std::vec::Vec::new();
        assert!((self.mask + 1).is_power_of_two() && 2 * self.len <= self.mask + 1);
        for i in 0..=self.mask {
            // SAFETY: inside the mapping; recorded nodes are live.
            unsafe {
                let s = *self.slot(i);
                if s.node.is_null() {
                    continue;
                }
                assert_eq!((*s.node).offset, s.offset, "slot {i}");
                let mut j = self.home(s.offset);
                while j != i {
                    assert!(!(*self.slot(j)).node.is_null(), "{} unreachable", s.offset);
                    assert!((*self.slot(j)).offset != s.offset, "{} twice", s.offset);
                    j = (j + 1) & self.mask;
                }
                nodes.push(s.node);
            }
        }
        assert_eq!(nodes.len(), self.len);
        nodes
    }
}

impl Drop for StartTable {
    fn drop(&mut self) {
        // SAFETY: the slots are a whole mapping of ours that only this table refers to.
        unsafe { host::unmap(self.slots.cast(), (self.mask + 1) * SLOT) }
    }
}

#[cfg(test)]
mod tests {
    use super::super::node::NodePool;
    use super::*;
    use crate::test_rng::Rng;

    /// Random inserts and removes against a plain map, through several doublings, with offsets
    /// in runs (as extents are) and scattered.
    #[test]
    fn matches_a_map() {
        let mut pool = NodePool::new();
        let mut t = StartTable::new().unwrap();
        let mut model = std::collections::BTreeMap::new();
        let mut rng = Rng(0x2545_f491_4f6c_dd1du64);
        let steps = if cfg!(miri) { 2_000 } else { 200_000 };
        for step in 0..steps {
            let x = rng.next();
            // Grow for the first half, then shrink.
            let grow = x % 100 < if step < steps / 2 { 70 } else { 25 };
            let offset = if x % 5 == 0 {
                (x >> 8) % (1 << 30) * 16
            } else {
                (x >> 8) % 8192 * 16
            };
            match model.get(&offset) {
                Some(&n) if !grow || x % 7 == 0 => {
                    assert_eq!(t.get(offset), n);
                    t.remove(offset);
                    model.remove(&offset);
                    assert!(t.get(offset).is_null());
                    // SAFETY: the node came from `take` and nothing links to it now.
                    unsafe { pool.release(n) };
                }
                Some(&n) => assert_eq!(t.get(offset), n),
                None if grow => {
                    assert!(pool.reserve(1) && t.reserve(1));
                    // SAFETY: reserved just above; `offset` is not recorded.
                    unsafe {
                        let n = pool.take(offset, 16, false);
                        t.insert(offset, n);
                        model.insert(offset, n);
                    }
                }
                None => assert!(t.get(offset).is_null()),
            }
            assert_eq!(t.len(), model.len());
            if step % 20_000 == 0 || step == steps - 1 {
                let mut got = t.check();
                got.sort();
                let mut want: std::vec::Vec<_> = model.values().copied().collect();
                want.sort();
                assert_eq!(got, want);
            }
        }
        assert!(t.mapped_bytes() >= 2 * 16 * model.len());
    }
}
