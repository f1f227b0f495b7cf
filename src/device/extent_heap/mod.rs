//! The extent heap of a device tier: which parts of one memory region `[0, capacity)` are free,
//! which are allocated, and which free part serves a request — with every piece of that
//! knowledge kept in host DRAM. It never reads or writes the region (it does not even know
//! where the region is mapped): the caller writes the 16-byte block header at `base + offset`
//! and hands out `base + offset + 16`, and on free gives back the offset, whose extent and size
//! this heap finds from its own metadata. Seed 002, minus the slow reads.
//!
//! (A long file, on purpose: a third of it is this description, and the rest is the one
//! structure's operations, which keep the invariants of `check_invariants` together; the parts
//! that stand alone are in the files below.)
//!
//! # Data structures
//!
//! The region is cut into extents, each free or allocated, that tile it exactly. One `Node`
//! per extent (one cache line of host memory from a pool of mapped chunks, `node.rs`; never the
//! global allocator, since this runs inside `malloc`) sits in:
//! - the address-ordered doubly linked list of all extents (`prev`/`next`): the neighbours to
//!   coalesce with on free, in O(1);
//! - the **start table** (`starts.rs`), a hash table from each extent's start offset to its
//!   node: `free(offset)` finds its extent in O(1);
//! - while free, the **size index** (`size_index.rs`): free lists segregated by size class
//!   with a hierarchical bitmap of the non-empty classes (`bitmap.rs`). Every length below
//!   2^16 granules (1 MiB with the tiers' 16-byte granule) has a class of its own, a list;
//!   longer extents go to TLSF-style classes (4 096 per power of two), each a treap of the
//!   lengths present (`treap.rs`) with a list per length, so that best fit stays exact there
//!   too.
//!
//! Why not one ordered tree of free extents (what this heap had before): it made every
//! operation O(log n) in the number of free extents, 6.5 times slower at 100 000 free extents
//! than at 10 (see BENCHMARKS.md). Exact-length lists make the common case a handful of bitmap
//! words and pointer writes.
//!
//! # Which extent a request gets
//!
//! Best fit takes a free extent of the smallest length that can hold the request; worst fit
//! one of the largest. Among free extents of that length (a tie), the one inserted into the
//! size index last: the one freed, merged, or cut down to an alignment gap most recently. See
//! `size_index.rs`, "the order of a walk". (Before the size classes, ties went to the lowest
//! offset, which would need an order inside every class.)
//!
//! # Cost (n = free extents, m = all extents, w = distinct lengths in one ranged class)
//!
//! - best fit: the first non-empty class at or above the request's length (three bitmap words
//!   at most) and its first extent; for a request of 2^16 granules or more, a search among
//!   the lengths of its own class first. O(1), or O(log w).
//! - worst fit: the last non-empty class, its first extent, or for a ranged class the longest
//!   length in its treap. O(1), or O(log w).
//! - carving the chosen extent: it leaves its class; at most two nodes (the block, the tail
//!   behind it) are taken and recorded in the start table, at most two extents (the gap in
//!   front, the tail) enter classes. O(1), or O(log w) for ranged classes.
//! - free: one start-table lookup, up to two neighbours merged (class removes, start-table
//!   removes), one class insert. O(1), or O(log w).
//! - the start table doubles when it is half full: O(m) for that one insert, O(1) amortised.
//!
//! w is at most the width of a class: 16 lengths between 1 and 2 MiB, 32 between 2 and 4 MiB
//! (granule 16), and extents of a length already present cost nothing more. Measured: see the
//! end of this comment.
//!
//! # Alignment
//!
//! Alignment beyond what the granule gives costs more only when the first extents met (in the
//! order of a walk, `size_index.rs`) do not fit *because of* the alignment gap. Best fit then
//! walks on upward, past extents shorter than `need + align - granule` (anything that long fits
//! at any offset): a list step, or for ranged classes one search among the class's lengths,
//! per extent. It looks at most at `PROBE_LIMIT` such misfits, then takes the first extent
//! long enough to fit whatever its offset (one more class search); only then can it miss a
//! slightly smaller, luckily placed fit. When there is no such extent, and for worst fit
//! (walking downward), the walk goes on (failing would be worse than being slow): the worst
//! case is linear in the number of free extents shorter than `need + align`, and only for
//! aligned requests on a heap short of large extents. This is the rule the heap had before the
//! size classes, the order among equal lengths aside (the tie rule above); as before, the cost
//! of an aligned best fit grows with the number of misfits it meets, up to `PROBE_LIMIT`,
//! whatever the number of free extents.
//!
//! # Units and alignment
//!
//! Offsets and lengths are multiples of `granule`. A request of `len` bytes (header included)
//! takes `round_up(len, granule)` bytes, from an offset `o` with `(o + prefix) % align == 0`.
//! That is possible only when `prefix` is a multiple of `min(align, granule)` (a multiple of
//! the granule can never be congruent to `-prefix` otherwise): with the 16-byte header as
//! `prefix`, a granule of 16 serves every alignment, while a granule of 64 serves alignments up
//! to 16 only. An impossible request gets `None`. The gap in front of an aligned block stays a
//! free extent, and the block starts at the first suitable offset of the extent chosen.
//!
//! # Bad frees
//!
//! A freed offset found in the start table as a free extent's start is a double free, told in
//! O(1). Any other offset the table does not know (one inside an extent: a block freed twice
//! after it merged with a free neighbour below, or a pointer into a block) is classified by
//! walking the address list from the first extent to the one containing it: O(m), bounded by
//! the number of extents, on a path that only ends in an abort or a counted error.
//!
//! # Host memory per heap (one per device tier)
//!
//! - the size index, mapped at `new`: 520 KiB for a heap below 2^16 granules, 880 KiB for a
//!   1 GiB tier, 1 204 KiB for 1 TiB (granule 16); resident only where touched: a few pages
//!   for a fresh heap, one more per 512 classes in use;
//! - nodes: 64 bytes per extent, free or allocated, in chunks from 4 KiB doubling to 1 MiB;
//! - the start table: 16 bytes a slot, 2–4 slots per extent, from 4 KiB.
//!
//! So 96–128 bytes per extent on top of the size index: 100 000 free extents between as many
//! allocated blocks take about 21 MB.
//!
//! Not thread-safe: each tier wraps its heap in a lock.
//!
//! # Measured
//!
//! `cost_is_flat_in_the_number_of_free_extents` (in `tests.rs`, ignored by default) times
//! alloc + free pairs with 10, 1 000 and 100 000 free extents; its figures, and those of the
//! heap before the size classes, are in BENCHMARKS.md ("Cost against the number of free
//! extents"). The instructions per pair stay flat except for aligned best fit, which meets more
//! misfits the more holes there are, up to `PROBE_LIMIT` (see "Alignment"); where the time
//! still grows, it is cache misses (100 000 holes make about 21 MB of metadata).

mod bitmap;
mod host;
mod node;
mod rebuild;
mod size_index;
mod starts;
#[cfg(test)]
mod tests;
mod treap;
mod whole;

pub(crate) use crate::kind::Fit;
use core::ptr;
use node::{Node, NodePool};
use size_index::SizeIndex;
use starts::StartTable;

/// How many misaligned candidates best fit examines before it takes the first extent that
/// fits at any offset (see the module comment).
const PROBE_LIMIT: u32 = 32;

/// Largest capacity and alignment: keeps every sum of offsets, lengths and alignments below
/// 2^63.
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
    /// The most `in_use` has been.
    pub peak_in_use: u64,
}

/// Invariants (checked in full by `check_invariants`):
/// - the extents tile `[0, capacity)`: in address order (the list from the extent at offset
///   0) each starts where the previous ends, the last ending at `capacity`; every offset and
///   length is a multiple of `granule`, every length > 0;
/// - no two free extents are adjacent (free coalesces at once);
/// - `starts` records exactly every extent's start and node; `sizes` holds exactly the free
///   extents, so `sizes.len()` counts the free extents and `starts.len() - sizes.len()` the
///   allocated ones;
/// - `in_use` = Σ allocated lengths, and `pool.live() == starts.len()`; `peak_in_use` ≥ every
///   value `in_use` reached by allocating or growing (recovery inserts extents directly, so
///   `stats` reports `max(peak_in_use, in_use)`).
pub(crate) struct ExtentHeap {
    starts: StartTable,
    sizes: SizeIndex,
    pool: NodePool,
    capacity: u64,
    granule: u64,
    fit: Fit,
    in_use: u64,
    peak_in_use: u64,
    probe_limit: u32,
    /// Cut blocks from the end of the chosen free extent instead of its start (device tiers:
    /// the extent keeps its start, so its header stays where it is; see `device::persist`).
    carve_from_end: bool,
}

/// Where `alloc_carved` cut a block, and what became of the free extent it came from: the
/// free extent left in front of the block (its start and new length) and the new free extent
/// behind it, when there is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Carved {
    pub offset: u64,
    pub len: u64,
    pub front: Option<(u64, u64)>,
    pub tail: Option<(u64, u64)>,
}

// SAFETY: the heap owns its nodes and all its host memory exclusively (nothing outside it
// holds a pointer into them), so moving it to another thread moves all of it.
unsafe impl Send for ExtentHeap {}

impl ExtentHeap {
    /// A heap for `[0, capacity)`, all free. `granule` is a power of two; `capacity` is rounded
    /// down to a multiple of it. `None` for a bad granule, a capacity below one granule or
    /// above 2^62, or when no host memory can be mapped for the metadata.
    #[cfg_attr(not(test), allow(dead_code))] // the heap's tests; tiers use the builder
    pub fn new(capacity: u64, granule: u64, fit: Fit) -> Option<Self> {
        let mut heap = Self::empty(capacity, granule, fit)?;
        if !heap.pool.reserve(1) || !heap.starts.reserve(1) {
            return None;
        }
        // SAFETY: reserved just above; the heap is empty and the node fresh and free.
        unsafe {
            let all = heap.pool.take(0, heap.capacity, true);
            heap.starts.insert(0, all);
            heap.sizes.insert(all);
        }
        Some(heap)
    }

    /// A heap with no extent at all (`rebuild.rs` fills it); the arguments as for `new`.
    fn empty(capacity: u64, granule: u64, fit: Fit) -> Option<Self> {
        if !granule.is_power_of_two() || capacity > MAX_CAPACITY {
            return None;
        }
        let capacity = capacity & !(granule - 1);
        if capacity == 0 {
            return None;
        }
        Some(ExtentHeap {
            starts: StartTable::new()?,
            sizes: SizeIndex::new(capacity, granule)?,
            pool: NodePool::new(),
            capacity,
            granule,
            fit,
            in_use: 0,
            peak_in_use: 0,
            probe_limit: PROBE_LIMIT,
            carve_from_end: false,
        })
    }

    pub fn set_fit(&mut self, fit: Fit) {
        self.fit = fit;
    }

    /// Blocks are cut from the end of the free extent chosen (see `carve_from_end`).
    pub fn set_carve_from_end(&mut self, on: bool) {
        self.carve_from_end = on;
    }

    #[cfg(test)]
    pub fn fit(&self) -> Fit {
        self.fit
    }

    #[cfg(test)]
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    #[cfg(test)]
    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// Allocates an extent for `len` bytes (the `prefix` included, rounded up to the granule)
    /// such that `offset + prefix` is a multiple of `align` (a power of two). Returns the
    /// extent's offset and length; the caller's usable size is `length - prefix`. `None` when
    /// no free extent fits, the arguments are impossible (see the module comment), or host
    /// memory for the metadata runs out; the heap is then unchanged.
    #[cfg_attr(not(test), allow(dead_code))] // the heap's tests; tiers use `_carved`
    pub fn alloc(&mut self, len: u64, align: u64, prefix: u64) -> Option<(u64, u64)> {
        self.alloc_carved(len, align, prefix)
            .map(|c| (c.offset, c.len))
    }

    /// `alloc`, telling also which free extents the cut changed (see `Carved`).
    pub fn alloc_carved(&mut self, len: u64, align: u64, prefix: u64) -> Option<Carved> {
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
        // Two nodes and two start-table entries at most are needed (the block, the tail after
        // it); getting them first means nothing below can fail half-way.
        if !self.pool.reserve(2) || !self.starts.reserve(2) {
            return None;
        }
        // SAFETY: the index is valid and ours (`&mut self`).
        let n = unsafe {
            match self.fit {
                Fit::Best => self.find_best(&fit),
                Fit::Worst => self.find_worst(&fit),
            }
        };
        if n.is_null() {
            return None;
        }
        // SAFETY: `n` is a free extent of ours that fits; two nodes and slots are reserved.
        Some(unsafe { self.carve(n, &fit) })
    }

    /// Best fit: the first extent in the up order (`size_index.rs`) from `need` that fits,
    /// within the probe limit (see the module comment); null if none.
    ///
    /// # Safety
    /// The invariants hold.
    unsafe fn find_best(&self, fit: &Fitting) -> *mut Node {
        // SAFETY (whole body): nodes the size index returns are live free extents.
        unsafe {
            let mut cur = self.sizes.first_at_least(fit.need);
            if cur.is_null() || fit.fits(&*cur) {
                return cur;
            }
            // Only its offset made it miss (it is shorter than `need + max_gap`): walk on.
            let mut misfits = 1;
            loop {
                if misfits == self.probe_limit {
                    let sure = self.sure_fit(fit);
                    if !sure.is_null() {
                        return sure;
                    }
                }
                cur = self.sizes.next_up(cur);
                if cur.is_null() || fit.fits(&*cur) {
                    return cur;
                }
                misfits += 1;
            }
        }
    }

    /// The first extent in the up order that is long enough to fit at any offset, or null.
    ///
    /// # Safety
    /// The invariants hold.
    unsafe fn sure_fit(&self, fit: &Fitting) -> *mut Node {
        // No overflow: need <= 2^62, max_gap < 2^62.
        let len = fit.need + fit.max_gap;
        if len > self.capacity {
            return ptr::null_mut();
        }
        // SAFETY: as the caller guarantees.
        let sure = unsafe { self.sizes.first_at_least(len) };
        // SAFETY: a node from the index is live.
        debug_assert!(sure.is_null() || fit.fits(unsafe { &*sure }));
        sure
    }

    /// Worst fit as seed 002 states it: a free extent of exactly the length needed if one
    /// fits, else the first extent in the down order (`size_index.rs`) that fits; null if none.
    ///
    /// # Safety
    /// The invariants hold.
    unsafe fn find_worst(&self, fit: &Fitting) -> *mut Node {
        // SAFETY (whole body): nodes the size index returns are live free extents.
        unsafe {
            // Seed 002: a free extent of exactly the length asked for, if there is one...
            let exact = self.sizes.first_at_least(fit.need);
            if !exact.is_null() && (*exact).len == fit.need && fit.fits(&*exact) {
                return exact;
            }
            // ...else the largest.
            let mut cur = self.sizes.largest();
            while !cur.is_null() && (*cur).len >= fit.need {
                if fit.fits(&*cur) {
                    return cur;
                }
                cur = self.sizes.next_down(cur);
            }
            ptr::null_mut()
        }
    }

    /// Cuts the allocation out of the free extent `n`. From the start (the default): the
    /// alignment gap in front stays free (in that node), the block gets a node, the tail
    /// behind becomes a new free extent. From the end (`carve_from_end`): the block takes the
    /// last suitable offset, the front stays free in `n`, and only an alignment remainder
    /// behind the block becomes a new free extent.
    ///
    /// # Safety
    /// `n` is a free extent of this heap with `fit.fits(n)`; two pool nodes and two start-table
    /// slots are reserved.
    unsafe fn carve(&mut self, n: *mut Node, fit: &Fitting) -> Carved {
        // SAFETY (whole body): `n` and its list neighbours are live nodes of ours; new nodes
        // and their start-table slots come from the reservations; each class insert is of a
        // free node in no class.
        unsafe {
            debug_assert!((*n).free && fit.fits(&*n));
            self.sizes.remove(n);
            let start = (*n).offset;
            let end = start + (*n).len;
            let gap = if self.carve_from_end {
                // The last offset `o <= end - need` with `(o + prefix) % align == 0`; at least
                // `start + fit.gap(start)`, since the extent fits.
                let last = end - fit.need;
                let o = ((last + fit.prefix) & !(fit.align - 1)).wrapping_sub(fit.prefix);
                debug_assert!(o >= start && (o + fit.prefix) % fit.align == 0);
                o - start
            } else {
                fit.gap(start)
            };
            let tail = (*n).len - gap - fit.need;
            let block = if gap > 0 {
                (*n).len = gap;
                self.sizes.insert(n);
                let b = self.pool.take(start + gap, fit.need, false);
                self.starts.insert(start + gap, b);
                link_after(n, b);
                b
            } else {
                (*n).len = fit.need;
                (*n).free = false;
                n
            };
            let tail_at = start + gap + fit.need;
            if tail > 0 {
                let t = self.pool.take(tail_at, tail, true);
                self.starts.insert(tail_at, t);
                link_after(block, t);
                self.sizes.insert(t);
            }
            self.in_use += fit.need;
            self.peak_in_use = self.peak_in_use.max(self.in_use);
            Carved {
                offset: (*block).offset,
                len: fit.need,
                front: (gap > 0).then_some((start, gap)),
                tail: (tail > 0).then_some((tail_at, tail)),
            }
        }
    }

    /// Frees the allocated extent that starts at `offset`, merging it with free neighbours.
    /// Returns its length. Any other offset is refused, with the heap unchanged.
    pub fn free(&mut self, offset: u64) -> Result<u64, FreeError> {
        let n = self.starts.get(offset);
        // SAFETY: the start table holds live nodes.
        if n.is_null() || unsafe { (*n).free } {
            return Err(self.classify(offset));
        }
        // SAFETY (whole block): `n` and its list neighbours are live nodes of ours; class
        // removes are of free nodes in the index; released nodes are unlinked from everything.
        unsafe {
            let len = (*n).len;
            (*n).free = true;
            self.in_use -= len;
            let mut n = n;
            let prev = (*n).prev;
            if !prev.is_null() && (*prev).free {
                self.sizes.remove(prev);
                (*prev).len += (*n).len;
                self.starts.remove((*n).offset);
                unlink(n);
                self.pool.release(n);
                n = prev;
            }
            let next = (*n).next;
            if !next.is_null() && (*next).free {
                self.sizes.remove(next);
                (*n).len += (*next).len;
                self.starts.remove((*next).offset);
                unlink(next);
                self.pool.release(next);
            }
            self.sizes.insert(n);
            Ok(len)
        }
    }

    /// Resizes the allocated extent at `offset` in place to `len` bytes rounded up to the
    /// granule: growing takes the front of the free extent right behind it, shrinking gives
    /// the tail back (merged with a free extent behind). Returns the new length; `None`, with
    /// the heap unchanged, when `offset` is no allocated extent's start, the extent behind is
    /// not free or too short, or host memory for the metadata runs out.
    #[cfg_attr(not(test), allow(dead_code))] // the heap's tests; tiers use `_carved`
    pub fn resize(&mut self, offset: u64, len: u64) -> Option<u64> {
        self.resize_carved(offset, len).map(|(len, _)| len)
    }

    /// `resize`, telling also the free extent right behind the block when its start moved
    /// (shrunk by growing, or made or extended by shrinking): `(new length, Some((start,
    /// length)))`.
    pub fn resize_carved(&mut self, offset: u64, len: u64) -> Option<(u64, Option<(u64, u64)>)> {
        let n = self.starts.get(offset);
        // SAFETY: the start table holds live nodes.
        if n.is_null() || unsafe { (*n).free } || len > self.capacity {
            return None;
        }
        let g = self.granule;
        let need = ((len.max(1) + g - 1) & !(g - 1)).max(g);
        // One node and one start-table slot at most (a tail given back).
        if !self.pool.reserve(1) || !self.starts.reserve(1) {
            return None;
        }
        // SAFETY (whole block): `n` and its list neighbours are live nodes of ours; size-index
        // removes and inserts are of free nodes; a released node is unlinked from everything;
        // the new node and its slot come from the reservations.
        unsafe {
            let old = (*n).len;
            let next = (*n).next;
            let next_free = !next.is_null() && (*next).free;
            let mut behind = None;
            if need > old {
                let extra = need - old;
                if !next_free || (*next).len < extra {
                    return None;
                }
                self.sizes.remove(next);
                self.starts.remove((*next).offset);
                if (*next).len == extra {
                    unlink(next);
                    self.pool.release(next);
                } else {
                    (*next).offset += extra;
                    (*next).len -= extra;
                    self.starts.insert((*next).offset, next);
                    self.sizes.insert(next);
                    behind = Some(((*next).offset, (*next).len));
                }
                self.in_use += extra;
                self.peak_in_use = self.peak_in_use.max(self.in_use);
            } else if need < old {
                let tail = old - need;
                if next_free {
                    self.sizes.remove(next);
                    self.starts.remove((*next).offset);
                    (*next).offset -= tail;
                    (*next).len += tail;
                    self.starts.insert((*next).offset, next);
                    self.sizes.insert(next);
                    behind = Some(((*next).offset, (*next).len));
                } else {
                    let t = self.pool.take(offset + need, tail, true);
                    self.starts.insert(offset + need, t);
                    link_after(n, t);
                    self.sizes.insert(t);
                    behind = Some((offset + need, tail));
                }
                self.in_use -= tail;
            }
            (*n).len = need;
            Some((need, behind))
        }
    }

    /// Why `offset` is not the start of an allocated extent (see the module comment: O(m)).
    #[cold]
    fn classify(&self, offset: u64) -> FreeError {
        if offset >= self.capacity || offset % self.granule != 0 {
            return FreeError::NotAllocated;
        }
        let mut cur = self.starts.get(offset);
        if cur.is_null() {
            cur = self.starts.get(0);
            // SAFETY: the extents tile [0, capacity) from the one at 0 through `next`, so the
            // walk meets the extent that contains `offset < capacity` before the list ends.
            unsafe {
                while (*cur).offset + (*cur).len <= offset {
                    cur = (*cur).next;
                }
            }
        }
        // SAFETY: `cur` is a live node (from the table or the list).
        if unsafe { (*cur).free } {
            FreeError::DoubleFree
        } else {
            FreeError::NotAllocated
        }
    }

    /// The length of the allocated extent starting at `offset` (`None` for anything else).
    pub fn allocated_len(&self, offset: u64) -> Option<u64> {
        let n = self.starts.get(offset);
        // SAFETY: the start table holds live nodes.
        unsafe { (!n.is_null() && !(*n).free).then(|| (*n).len) }
    }

    /// The length of the allocated extent starting at `offset`, or why `free(offset)` would
    /// refuse it.
    pub fn allocated(&self, offset: u64) -> Result<u64, FreeError> {
        self.allocated_len(offset)
            .ok_or_else(|| self.classify(offset))
    }

    /// Bytes of allocated extents.
    #[inline]
    pub fn in_use(&self) -> u64 {
        self.in_use
    }

    pub fn stats(&self) -> HeapStats {
        // SAFETY: the index is valid; its nodes are live.
        let largest_free = unsafe {
            let top = self.sizes.largest();
            if top.is_null() {
                0
            } else {
                (*top).len
            }
        };
        let free_extents = self.sizes.len() as u64;
        HeapStats {
            capacity: self.capacity,
            in_use: self.in_use,
            free_bytes: self.capacity - self.in_use,
            largest_free,
            free_extents,
            allocated_extents: self.starts.len() as u64 - free_extents,
            // Recovery rebuilds extents without carving them: in_use bounds the peak from below.
            peak_in_use: self.peak_in_use.max(self.in_use),
        }
    }

    #[cfg(test)]
    /// Bytes of host memory mapped for this heap's metadata (mapped, not necessarily resident:
    /// see the module comment).
    pub fn metadata_bytes(&self) -> usize {
        self.pool.mapped_bytes() + self.starts.mapped_bytes() + self.sizes.mapped_bytes()
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

impl ExtentHeap {
    /// Calls `f(offset, len)` for every allocated extent, in address order. Allocates nothing
    /// (a `fork` child handler calls it).
    pub fn for_each_allocated(&self, mut f: impl FnMut(u64, u64)) {
        self.for_each_extent(|offset, len, free| {
            if !free {
                f(offset, len)
            }
        });
    }

    /// Calls `f(offset, len, free)` for every extent overlapping `[lo, hi)`, in address order.
    /// The walk starts at the extent starting at `*hint` when there is one at or below `lo`,
    /// else at offset 0, and leaves in `*hint` the start of the last extent it visited: a
    /// caller walking the region chunk after chunk (the evacuation) pays for the extents it
    /// meets, unless the extent at its hint merged away meanwhile. Allocates nothing.
    pub fn for_each_extent_between(
        &self,
        lo: u64,
        hi: u64,
        hint: &mut u64,
        mut f: impl FnMut(u64, u64, bool),
    ) {
        let mut node = match self.starts.get(*hint) {
            n if !n.is_null() && *hint <= lo => n,
            _ => self.starts.get(0),
        };
        // SAFETY: as in `for_each_extent`: nodes reached from the start table along `next`
        // are live and listed.
        unsafe {
            while !node.is_null() && (*node).offset < hi {
                let (offset, len) = ((*node).offset, (*node).len);
                if offset + len > lo {
                    f(offset, len, (*node).free);
                }
                *hint = offset;
                node = (*node).next;
            }
        }
    }

    /// Calls `f(offset, len, free)` for every extent in address order.
    fn for_each_extent(&self, mut f: impl FnMut(u64, u64, bool)) {
        let mut node = self.starts.get(0);
        // SAFETY: the extents tile the region from offset 0, so the list that starts at the
        // extent at 0 and follows `next` visits every live node once.
        unsafe {
            while !node.is_null() {
                f((*node).offset, (*node).len, (*node).free);
                node = (*node).next;
            }
        }
    }
}

#[cfg(test)]
impl ExtentHeap {
    /// Every extent in address order: `(offset, len, free)`.
    pub fn extents(&self) -> std::vec::Vec<(u64, u64, bool)> {
        let mut out = std::vec::Vec::new();
        self.for_each_extent(|offset, len, free| out.push((offset, len, free)));
        out
    }

    /// Lets a test make best fit exact whatever the alignment walk costs.
    pub fn set_probe_limit(&mut self, limit: u32) {
        self.probe_limit = limit;
    }

    /// Walks everything and panics on the first broken invariant (see the struct and the
    /// invariants of the start table, the size index and its bitmap).
    pub fn check_invariants(&self) {
        // SAFETY: every node reached is in the start table, the list or the index of this
        // heap, hence live; the walk is bounded by the number of live nodes.
        unsafe {
            let g = self.granule;
            let mut listed = std::vec::Vec::new();
            let mut free_nodes = std::vec::Vec::new();
            let mut cur = self.starts.get(0);
            assert!(!cur.is_null(), "no extent at 0");
            let (mut end, mut in_use, mut prev) = (0, 0, ptr::null_mut());
            while !cur.is_null() {
                assert!(listed.len() < self.pool.live(), "the address list loops");
                let nd = &*cur;
                assert_eq!(nd.offset, end, "gap or overlap at {end}");
                assert!(nd.len > 0 && nd.len % g == 0, "bad length {}", nd.len);
                assert_eq!(nd.prev, prev, "list prev of {}", nd.offset);
                if nd.free {
                    assert!(
                        prev.is_null() || !(*prev).free,
                        "adjacent free extents at {}",
                        nd.offset
                    );
                    free_nodes.push(cur);
                } else {
                    in_use += nd.len;
                    let c = &nd.class;
                    assert!(c.prev_or_left.is_null() && c.next.is_null() && c.right.is_null());
                    assert!(!nd.tree, "allocated extent {} in a treap", nd.offset);
                }
                end = nd.offset + nd.len;
                listed.push(cur);
                prev = cur;
                cur = nd.next;
            }
            assert_eq!(end, self.capacity, "extents do not reach the end");
            let mut recorded = self.starts.check();
            recorded.sort();
            listed.sort();
            assert_eq!(recorded, listed, "start table != extents");
            let mut held = self.sizes.check();
            held.sort();
            free_nodes.sort();
            assert_eq!(held, free_nodes, "size index != free extents");
            assert_eq!(self.in_use, in_use);
            assert_eq!(self.pool.live(), listed.len());
            let s = self.stats();
            assert_eq!(s.in_use + s.free_bytes, s.capacity);
            assert_eq!(s.free_extents, free_nodes.len() as u64);
            let largest = free_nodes.iter().map(|&n| (*n).len).max().unwrap_or(0);
            assert_eq!(s.largest_free, largest);
        }
    }
}
