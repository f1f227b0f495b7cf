//! The extent heap of a device tier: which parts of one memory region `[0, capacity)` are free,
//! which are allocated, and which free part serves a request — with every piece of that
//! knowledge kept in host DRAM. It never reads or writes the region (it does not even know
//! where the region is mapped): the caller writes the 16-byte block header at `base + offset`
//! and hands out `base + offset + 16`, and on free gives back the offset, whose extent and size
//! this heap finds from its own metadata. Seed 002, minus the slow reads.
//!
//! # Data structures
//!
//! The region is cut into extents, each free or allocated, that tile it exactly. One `Node`
//! per extent (host memory from a pool of mmap'd chunks, `node.rs`; never the global
//! allocator, since this runs inside `malloc`) sits in:
//! - the address-ordered doubly linked list of all extents (`prev`/`next`): the neighbours to
//!   coalesce with on free, in O(1);
//! - the **address treap** of all extents, keyed by offset: `free(offset)` finds its extent,
//!   and a bad offset is classified (inside free space: double free; inside an allocated
//!   extent or out of range: not allocated) with one floor search, O(log n);
//! - the **size treap** of free extents, keyed by `(len, offset)`.
//!
//! Why one ordered tree by `(len, offset)` rather than seed 002's segregated size lists (or a
//! TLSF-style bitmap of classes): the contract is *exact* best fit with ties broken by the
//! lowest offset, and exact worst fit likewise. Size classes find *a* block of the right class
//! in O(1), but the smallest block ≥ the request within a class still needs an order by
//! `(len, offset)` inside the class, i.e. a tree per class; one tree over all free extents
//! gives the same answer in O(log n) with one structure to keep consistent. Treaps (with a
//! hash of the offset as priority, so everything is deterministic) because their insert and
//! remove are two short loops, without recursion or rebalancing cases.
//!
//! # Cost (n = free extents, m = all extents)
//!
//! - best fit: `ceil((need, 0))` in the size tree: the smallest free extent that is long
//!   enough, lowest offset among equals. O(log n).
//! - worst fit: the size tree's last node gives the largest length L; `ceil((L, 0))` gives the
//!   lowest offset among those of length L. O(log n).
//! - carving the chosen extent: its removal from the size tree at the link the search found
//!   (no second search), then at most two size-tree and two address-tree inserts (the gap in
//!   front, the block, the tail). O(log n + log m).
//! - free: one address-tree floor search, up to two neighbours merged (size-tree removes,
//!   address-tree remove), one size-tree insert. O(log n + log m).
//!
//! Measured (release, `cost_is_flat_in_the_number_of_free_extents`, quietest run on a shared
//! 2-core machine): an alloc+free pair costs 60 ns with 10 free extents, 150–160 ns with 1 000,
//! and 210 (worst fit) to 390 ns (best fit) with 100 000, where 7 MB of nodes no longer fit in
//! the caches.
//!
//! Alignment beyond what the granule gives costs more only when the smallest (best) or largest
//! (worst) long-enough extents do not fit *because of* the alignment gap: the search then walks
//! on in `(len, offset)` order (best: upward; worst: downward by length, upward by offset),
//! with a `treap::Cursor` at amortised O(1) per step, past extents shorter than
//! `need + align - granule` (anything longer fits at any offset). Best fit looks at most at
//! `PROBE_LIMIT` such misfits, then takes the smallest extent that fits whatever its offset
//! (one more O(log n) search); only then can it miss a slightly smaller, luckily placed fit.
//! When there is no such extent, and for worst fit, the walk goes on (failing would be worse
//! than being slow): the worst case is linear in the number of free extents shorter than
//! `need + align`, and only for aligned requests on a heap short of large extents.
//!
//! # Units and alignment
//!
//! Offsets and lengths are multiples of `granule`. A request of `len` bytes (header included)
//! takes `round_up(len, granule)` bytes, from an offset `o` with `(o + prefix) % align == 0`.
//! That is possible only when `prefix` is a multiple of `min(align, granule)` (a multiple of
//! the granule can never be congruent to `-prefix` otherwise): with the 16-byte header as
//! `prefix`, a granule of 16 serves every alignment, while a granule of 64 serves alignments up
//! to 16 only. An impossible request gets `None`. The gap in front of an aligned block stays a
//! free extent.
//!
//! Not thread-safe: each tier wraps its heap in a lock.

// Until the device tiers (issue 4) call into it, only the tests use this module.
#![cfg_attr(not(test), allow(dead_code))]

mod bitmap;
mod host;
mod node;
mod starts;
#[cfg(test)]
mod tests;
mod treap;

pub(crate) use crate::config::Fit;
use core::ptr;
use node::{Node, NodePool};
use treap::{ByAddr, BySize, Cursor};

/// How many misaligned candidates best fit examines before it takes the smallest extent that
/// fits at any offset (see the module comment).
const PROBE_LIMIT: u32 = 32;

/// Largest capacity and alignment: keeps every sum of offsets, lengths and alignments below
/// 2^64.
const MAX_CAPACITY: u64 = 1 << 62;
const MAX_ALIGN: u64 = 1 << 62;

/// Why `free` refused an offset. The heap is unchanged in either case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FreeError {
    /// The offset lies in free space: most likely the block was freed already.
    DoubleFree,
    /// The offset is not the start of an allocated extent: inside one, out of range, or not on
    /// the granule.
    NotAllocated,
}

/// The heap's figures; `capacity == in_use + free_bytes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HeapStats {
    pub capacity: u64,
    pub in_use: u64,
    pub free_bytes: u64,
    pub largest_free: u64,
    pub free_extents: u64,
    pub allocated_extents: u64,
}

/// Invariants (checked in full by `check_invariants`):
/// - the extents tile `[0, capacity)`: in address order each starts where the previous ends,
///   the first at 0, the last ending at `capacity`; every offset and length is a multiple of
///   `granule`, every length > 0;
/// - no two free extents are adjacent (free coalesces at once);
/// - `by_addr` holds every extent's node, `by_size` exactly the free ones;
/// - `in_use` = Σ allocated lengths, `allocated_extents` and `free_extents` count them, and
///   `pool.live() == allocated_extents + free_extents`.
pub(crate) struct ExtentHeap {
    by_addr: *mut Node,
    by_size: *mut Node,
    pool: NodePool,
    capacity: u64,
    granule: u64,
    fit: Fit,
    in_use: u64,
    free_extents: u64,
    allocated_extents: u64,
    probe_limit: u32,
}

// SAFETY: the heap owns its nodes and their memory exclusively (nothing outside it holds a
// node pointer), so moving it to another thread moves all of it.
unsafe impl Send for ExtentHeap {}

impl ExtentHeap {
    /// A heap for `[0, capacity)`, all free. `granule` is a power of two; `capacity` is rounded
    /// down to a multiple of it. `None` for a bad granule, a capacity below one granule or
    /// above 2^62, or when no host memory can be mapped for the first node.
    pub fn new(capacity: u64, granule: u64, fit: Fit) -> Option<Self> {
        if !granule.is_power_of_two() || capacity > MAX_CAPACITY {
            return None;
        }
        let capacity = capacity & !(granule - 1);
        if capacity == 0 {
            return None;
        }
        let mut heap = ExtentHeap {
            by_addr: ptr::null_mut(),
            by_size: ptr::null_mut(),
            pool: NodePool::new(),
            capacity,
            granule,
            fit,
            in_use: 0,
            free_extents: 1,
            allocated_extents: 0,
            probe_limit: PROBE_LIMIT,
        };
        if !heap.pool.reserve(1) {
            return None;
        }
        // SAFETY: reserved just above; the trees are empty and the node fresh.
        unsafe {
            let all = heap.pool.take(0, capacity, true);
            treap::insert::<ByAddr>(&mut heap.by_addr, all);
            treap::insert::<BySize>(&mut heap.by_size, all);
        }
        Some(heap)
    }

    pub fn set_fit(&mut self, fit: Fit) {
        self.fit = fit;
    }

    pub fn fit(&self) -> Fit {
        self.fit
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// Allocates an extent for `len` bytes (the `prefix` included, rounded up to the granule)
    /// such that `offset + prefix` is a multiple of `align` (a power of two). Returns the
    /// extent's offset and length; the caller's usable size is `length - prefix`. `None` when
    /// no free extent fits, the arguments are impossible (see the module comment), or host
    /// memory for nodes runs out; the heap is then unchanged.
    pub fn alloc(&mut self, len: u64, align: u64, prefix: u64) -> Option<(u64, u64)> {
        let g = self.granule;
        if !align.is_power_of_two() || align > MAX_ALIGN || prefix % align.min(g) != 0 {
            return None;
        }
        let want = len.max(prefix).max(1);
        if want > self.capacity {
            return None;
        }
        // No overflow: want <= capacity <= 2^62.
        let need = (want + g - 1) & !(g - 1);
        let fit = Fitting {
            need,
            align,
            prefix,
            max_gap: align.saturating_sub(g),
        };
        // Two nodes at most are needed (the gap before and the tail after the block); getting
        // them first means nothing below can fail half-way.
        if !self.pool.reserve(2) {
            return None;
        }
        // SAFETY: the trees are valid and ours (`&mut self`).
        let slot = unsafe {
            match self.fit {
                Fit::Best => self.find_best(&fit),
                Fit::Worst => self.find_worst(&fit),
            }
        };
        if slot.is_null() {
            return None;
        }
        // SAFETY: `slot` points at a free extent of ours that fits; two nodes are reserved.
        Some(unsafe { self.carve(slot, &fit) })
    }

    /// Best fit: the first extent in `(len, offset)` order from `(need, 0)` that fits. Returns
    /// the size-tree link that points at it, or null.
    ///
    /// # Safety
    /// The trees are valid (invariants hold).
    unsafe fn find_best(&mut self, fit: &Fitting) -> *mut *mut Node {
        // SAFETY (whole body): the size tree is valid; nodes found in it are live.
        unsafe {
            let first = treap::ceil_slot::<BySize>(&mut self.by_size, (fit.need, 0), false);
            if first.is_null() || fit.fits(&**first) {
                return first;
            }
            // Only its offset made it miss (it is shorter than `need + max_gap`): walk on.
            let key = ((**first).len, (**first).offset);
            let mut walk = Cursor::<BySize>::seek(self.by_size, key, true);
            let mut probes = 1u32;
            loop {
                let cur = walk.node();
                if cur.is_null() {
                    return ptr::null_mut();
                }
                if fit.fits(&*cur) {
                    return self.slot_of(cur);
                }
                probes += 1;
                if probes == self.probe_limit {
                    let sure = (fit.need + fit.max_gap, 0);
                    let sure = treap::ceil_slot::<BySize>(&mut self.by_size, sure, false);
                    if !sure.is_null() {
                        debug_assert!(fit.fits(&**sure));
                        return sure;
                    }
                }
                walk.advance();
            }
        }
    }

    /// Worst fit: lengths from the largest down, offsets upward within one length; the first
    /// extent that fits. Returns the size-tree link that points at it, or null.
    ///
    /// # Safety
    /// The trees are valid (invariants hold).
    unsafe fn find_worst(&mut self, fit: &Fitting) -> *mut *mut Node {
        // SAFETY (whole body): the size tree is valid; nodes found in it are live.
        unsafe {
            let top = treap::last::<BySize>(self.by_size);
            if top.is_null() {
                return ptr::null_mut();
            }
            let mut len = (*top).len;
            while len >= fit.need {
                let first = treap::ceil_slot::<BySize>(&mut self.by_size, (len, 0), false);
                debug_assert!(!first.is_null(), "length {len} was just seen in the tree");
                if first.is_null() || fit.fits(&**first) {
                    return first;
                }
                let key = (len, (**first).offset);
                let mut walk = Cursor::<BySize>::seek(self.by_size, key, true);
                loop {
                    let cur = walk.node();
                    if cur.is_null() || (*cur).len != len {
                        break;
                    }
                    if fit.fits(&*cur) {
                        return self.slot_of(cur);
                    }
                    walk.advance();
                }
                let shorter = treap::floor::<BySize>(self.by_size, (len, 0), true);
                if shorter.is_null() {
                    break;
                }
                len = (*shorter).len;
            }
            ptr::null_mut()
        }
    }

    /// The size-tree link that points at the free extent `n`.
    ///
    /// # Safety
    /// `n` is in the size tree.
    unsafe fn slot_of(&mut self, n: *mut Node) -> *mut *mut Node {
        // SAFETY: as the caller guarantees; the key is `n`'s own.
        unsafe {
            let slot =
                treap::ceil_slot::<BySize>(&mut self.by_size, ((*n).len, (*n).offset), false);
            debug_assert!(*slot == n);
            slot
        }
    }

    /// Cuts the allocation out of the free extent `*slot`: the alignment gap in front stays
    /// free (in that node), the block gets a node, the tail behind becomes a new free extent.
    ///
    /// # Safety
    /// `slot` is the size-tree link pointing at a free extent `n` with `fit.fits(n)`, the tree
    /// unchanged since it was found; two pool nodes are reserved.
    unsafe fn carve(&mut self, slot: *mut *mut Node, fit: &Fitting) -> (u64, u64) {
        // SAFETY (whole body): `n` and its list neighbours are live nodes of ours; new nodes
        // come from the reservation; each tree insert is of a node not in that tree.
        unsafe {
            // A slot that is the root itself is taken afresh from `self`: the pointer the
            // search made from an earlier borrow of `self` no longer has the right to write.
            let slot = if ptr::eq(slot, ptr::addr_of!(self.by_size)) {
                ptr::addr_of_mut!(self.by_size)
            } else {
                slot
            };
            let n = *slot;
            debug_assert!((*n).free && fit.fits(&*n));
            treap::remove_at::<BySize>(slot);
            let start = (*n).offset;
            let gap = fit.gap(start);
            let tail = (*n).len - gap - fit.need;
            let block = if gap > 0 {
                (*n).len = gap;
                treap::insert::<BySize>(&mut self.by_size, n);
                let b = self.pool.take(start + gap, fit.need, false);
                treap::insert::<ByAddr>(&mut self.by_addr, b);
                link_after(n, b);
                b
            } else {
                (*n).len = fit.need;
                (*n).free = false;
                n
            };
            if tail > 0 {
                let t = self.pool.take(start + gap + fit.need, tail, true);
                treap::insert::<ByAddr>(&mut self.by_addr, t);
                treap::insert::<BySize>(&mut self.by_size, t);
                link_after(block, t);
            }
            self.in_use += fit.need;
            self.allocated_extents += 1;
            self.free_extents = self.free_extents + (gap > 0) as u64 + (tail > 0) as u64 - 1;
            ((*block).offset, fit.need)
        }
    }

    /// Frees the allocated extent that starts at `offset`, merging it with free neighbours.
    /// Returns its length. Any other offset is refused, with the heap unchanged.
    pub fn free(&mut self, offset: u64) -> Result<u64, FreeError> {
        let n = self.lookup(offset)?;
        // SAFETY (whole block): `n` and its list neighbours are live nodes of ours; tree
        // removes are of nodes in that tree, released nodes are unlinked from everything.
        unsafe {
            let len = (*n).len;
            (*n).free = true;
            self.in_use -= len;
            self.allocated_extents -= 1;
            self.free_extents += 1;
            let mut n = n;
            let prev = (*n).prev;
            if !prev.is_null() && (*prev).free {
                treap::remove::<BySize>(&mut self.by_size, prev);
                (*prev).len += (*n).len;
                treap::remove::<ByAddr>(&mut self.by_addr, n);
                unlink(n);
                self.pool.release(n);
                self.free_extents -= 1;
                n = prev;
            }
            let next = (*n).next;
            if !next.is_null() && (*next).free {
                treap::remove::<BySize>(&mut self.by_size, next);
                (*n).len += (*next).len;
                treap::remove::<ByAddr>(&mut self.by_addr, next);
                unlink(next);
                self.pool.release(next);
                self.free_extents -= 1;
            }
            treap::insert::<BySize>(&mut self.by_size, n);
            Ok(len)
        }
    }

    /// The allocated extent starting at `offset`, or why there is none.
    fn lookup(&self, offset: u64) -> Result<*mut Node, FreeError> {
        if offset >= self.capacity || offset % self.granule != 0 {
            return Err(FreeError::NotAllocated);
        }
        // SAFETY: the address tree is valid and ours; it covers [0, capacity), so a node at or
        // below any in-range offset exists.
        unsafe {
            let n = treap::floor::<ByAddr>(self.by_addr, offset, false);
            debug_assert!(!n.is_null() && (*n).offset + (*n).len > offset);
            if n.is_null() {
                Err(FreeError::NotAllocated)
            } else if (*n).free {
                Err(FreeError::DoubleFree)
            } else if (*n).offset != offset {
                Err(FreeError::NotAllocated)
            } else {
                Ok(n)
            }
        }
    }

    /// The length of the allocated extent starting at `offset` (`None` for anything else).
    pub fn allocated_len(&self, offset: u64) -> Option<u64> {
        let n = self.lookup(offset).ok()?;
        // SAFETY: `lookup` returns live nodes.
        Some(unsafe { (*n).len })
    }

    pub fn stats(&self) -> HeapStats {
        // SAFETY: the size tree is valid; its last node, if any, is live.
        let largest_free = unsafe {
            let top = treap::last::<BySize>(self.by_size);
            if top.is_null() {
                0
            } else {
                (*top).len
            }
        };
        HeapStats {
            capacity: self.capacity,
            in_use: self.in_use,
            free_bytes: self.capacity - self.in_use,
            largest_free,
            free_extents: self.free_extents,
            allocated_extents: self.allocated_extents,
        }
    }

    /// Bytes of host memory mapped for this heap's metadata.
    pub fn metadata_bytes(&self) -> usize {
        self.pool.mapped_bytes()
    }
}

/// A request, normalised: `need` bytes (a multiple of the granule) with `offset + prefix` a
/// multiple of `align`; `max_gap` is the largest alignment gap any offset can need.
struct Fitting {
    need: u64,
    align: u64,
    prefix: u64,
    max_gap: u64,
}

impl Fitting {
    /// Bytes to skip from `offset` (a multiple of the granule) for alignment. When `align <=
    /// granule` this is 0 (`alloc` checked `prefix % align == 0`); otherwise a multiple of the
    /// granule (`alloc` checked `prefix % granule == 0`) below `align`.
    #[inline]
    fn gap(&self, offset: u64) -> u64 {
        self.align.wrapping_sub(offset + self.prefix) & (self.align - 1)
    }

    #[inline]
    fn fits(&self, n: &Node) -> bool {
        self.gap(n.offset) + self.need <= n.len
    }
}

/// Puts the unlinked node `b` right after `a` in the address list.
///
/// # Safety
/// `a` is a live listed node, `b` a live unlisted one.
unsafe fn link_after(a: *mut Node, b: *mut Node) {
    // SAFETY: as the caller guarantees.
    unsafe {
        let next = (*a).next;
        (*b).prev = a;
        (*b).next = next;
        (*a).next = b;
        if !next.is_null() {
            (*next).prev = b;
        }
    }
}

/// Takes `n` out of the address list.
///
/// # Safety
/// `n` is a live listed node.
unsafe fn unlink(n: *mut Node) {
    // SAFETY: as the caller guarantees; the neighbours are live listed nodes.
    unsafe {
        let (prev, next) = ((*n).prev, (*n).next);
        if !prev.is_null() {
            (*prev).next = next;
        }
        if !next.is_null() {
            (*next).prev = prev;
        }
        (*n).prev = ptr::null_mut();
        (*n).next = ptr::null_mut();
    }
}

#[cfg(test)]
impl ExtentHeap {
    /// Every extent in address order: `(offset, len, free)`.
    pub fn extents(&self) -> std::vec::Vec<(u64, u64, bool)> {
        // SAFETY: the address tree is valid; its nodes are live.
        unsafe {
            treap::collect::<ByAddr>(self.by_addr)
                .0
                .into_iter()
                .map(|n| ((*n).offset, (*n).len, (*n).free))
                .collect()
        }
    }

    /// Lets a test make best fit exact whatever the alignment walk costs.
    pub fn set_probe_limit(&mut self, limit: u32) {
        self.probe_limit = limit;
    }

    /// Walks everything and panics on the first broken invariant (see the struct).
    pub fn check_invariants(&self) {
        // SAFETY: every node reached is in a tree or the list of this heap, hence live.
        unsafe {
            let (by_addr, _) = treap::collect::<ByAddr>(self.by_addr);
            let (by_size, _) = treap::collect::<BySize>(self.by_size);
            let g = self.granule;
            let mut end = 0;
            let (mut in_use, mut free, mut allocated) = (0, 0, 0);
            for (i, &n) in by_addr.iter().enumerate() {
                let nd = &*n;
                assert_eq!(nd.offset, end, "gap or overlap at {end}");
                assert!(nd.len > 0 && nd.len % g == 0, "bad length {}", nd.len);
                assert_eq!(nd.prio, node::priority(nd.offset));
                let prev = if i == 0 {
                    ptr::null_mut()
                } else {
                    by_addr[i - 1]
                };
                let next = by_addr.get(i + 1).copied().unwrap_or(ptr::null_mut());
                assert_eq!(nd.prev, prev, "list prev of {}", nd.offset);
                assert_eq!(nd.next, next, "list next of {}", nd.offset);
                if nd.free {
                    free += 1;
                    assert!(
                        prev.is_null() || !(*prev).free,
                        "adjacent free extents at {}",
                        nd.offset
                    );
                } else {
                    allocated += 1;
                    in_use += nd.len;
                    assert!(nd.size.left.is_null() && nd.size.right.is_null());
                }
                end = nd.offset + nd.len;
            }
            assert_eq!(end, self.capacity, "extents do not reach the end");
            let free_nodes: std::vec::Vec<_> = by_addr.iter().filter(|&&n| (*n).free).collect();
            assert_eq!(by_size.len(), free_nodes.len(), "size tree != free extents");
            for &n in &by_size {
                assert!((*n).free, "allocated extent {} in size tree", (*n).offset);
                assert_eq!(treap::find::<ByAddr>(self.by_addr, (*n).offset), n);
            }
            assert_eq!(self.in_use, in_use);
            assert_eq!(self.free_extents, free);
            assert_eq!(self.allocated_extents, allocated);
            assert_eq!(self.pool.live() as u64, free + allocated);
            let s = self.stats();
            assert_eq!(s.in_use + s.free_bytes, s.capacity);
            let largest = by_size.last().map_or(0, |&n| (*n).len);
            assert_eq!(s.largest_free, largest);
        }
    }
}
