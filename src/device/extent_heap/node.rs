//! Extent nodes and the host-memory pool they come from.
//!
//! One `Node` describes one extent of the managed region, free or allocated, and carries the
//! links of the address-ordered list of all extents and, while free, of its size class (lists
//! and a treap, `size_index.rs`), so an extent never needs a second node. Nodes live in chunks
//! of host memory (`host.rs`) that are unmapped when the pool is dropped. A chunk is handed out
//! front to back as nodes are needed (its pages are touched only then); released nodes go on a
//! recycle list and are reused first.

use super::host;
use crate::os;
use core::ptr;

/// A free extent's links in its size class (`size_index.rs`), all null while allocated. The
/// free extents of one length form a list, the most recently inserted first: all of an exact
/// class, or one length of a ranged class, the first of each such list being a node of the
/// class's treap (`tree`).
#[repr(C)]
pub(super) struct ClassLinks {
    /// The member before it in its length's list, null for the first; except in a treap node
    /// (`tree`, always the first of its list), where it is the left child.
    pub prev_or_left: *mut Node,
    /// The member after it in its length's list, null for the last.
    pub next: *mut Node,
    /// In a treap node (`tree`): the right child. Null otherwise.
    pub right: *mut Node,
}

impl ClassLinks {
    pub const EMPTY: ClassLinks = ClassLinks {
        prev_or_left: ptr::null_mut(),
        next: ptr::null_mut(),
        right: ptr::null_mut(),
    };
}

/// One extent `[offset, offset + len)`: exactly one cache line.
///
/// Invariants, for a node in use: `len > 0`; `offset` never changes after `take` (which lets
/// the start table key the node by it); `prev`/`next` are the extents just below and just
/// above in address order (null at the ends), so `prev.offset + prev.len == offset` and
/// `offset + len == next.offset`; the node is in the start table always and in the size index
/// iff `free`, with `class` links null and `tree` false otherwise; `tree` implies `free` and
/// `prio == priority(len)`.
#[repr(C, align(64))]
pub(super) struct Node {
    pub offset: u64,
    pub len: u64,
    pub prev: *mut Node,
    pub next: *mut Node,
    pub class: ClassLinks,
    /// Treap priority while `tree`.
    pub prio: u32,
    pub free: bool,
    /// The node is in a ranged class's treap, as the first free extent of its length.
    pub tree: bool,
}

/// A deterministic, well-mixed treap priority for the length `len` (MurmurHash3's 64-bit
/// finaliser): lengths are multiples of the granule, so their low bits carry nothing and must
/// be mixed into the top bits we keep.
#[inline]
pub(super) fn priority(len: u64) -> u32 {
    let mut x = len;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    (x >> 32) as u32
}

/// The start of every mapped chunk; the chunks form a list for `Drop`.
#[repr(C)]
struct Chunk {
    next: *mut Chunk,
    bytes: usize,
}

/// Bytes before the first node of a chunk: one node's worth, so that nodes stay on cache-line
/// boundaries.
const CHUNK_HEADER: usize = 64;
const _: () = assert!(core::mem::size_of::<Chunk>() <= CHUNK_HEADER);
const _: () = assert!(CHUNK_HEADER % core::mem::align_of::<Node>() == 0);
const NODE: usize = core::mem::size_of::<Node>();

/// The first chunk is one page (63 nodes); each next one doubles, up to `MAX_CHUNK`.
const FIRST_CHUNK: usize = os::PAGE_SIZE;
const MAX_CHUNK: usize = 1 << 20;

/// Invariants: `recycled` links `recycled_count` released nodes through `next`;
/// `[fresh, fresh_end)` are never-used node slots of the newest chunk (`fresh <= fresh_end`,
/// both null before the first chunk); `chunks` lists every mapping of the pool; `live` counts
/// nodes taken and not released.
pub(super) struct NodePool {
    recycled: *mut Node,
    recycled_count: usize,
    fresh: *mut Node,
    fresh_end: *mut Node,
    chunks: *mut Chunk,
    next_chunk: usize,
    live: usize,
    /// New chunks are made present in one call (`os::prefault_write`): set while a recovery
    /// fills the pool front to back (`rebuild.rs`), which uses a chunk in full.
    prefault: bool,
}

impl NodePool {
    pub const fn new() -> Self {
        NodePool {
            recycled: ptr::null_mut(),
            recycled_count: 0,
            fresh: ptr::null_mut(),
            fresh_end: ptr::null_mut(),
            chunks: ptr::null_mut(),
            next_chunk: FIRST_CHUNK,
            live: 0,
            prefault: false,
        }
    }

    /// Whether chunks mapped from now on are made present at once (a recovery's builder).
    pub fn set_prefault(&mut self, on: bool) {
        self.prefault = on;
    }

    /// Nodes `take` can hand out without mapping more memory.
    #[inline]
    fn available(&self) -> usize {
        let fresh = (self.fresh_end as usize - self.fresh as usize) / NODE;
        self.recycled_count + fresh
    }

    /// Makes sure the next `count` calls to `take` succeed, mapping a new chunk if needed.
    /// False (and nothing changed) when the kernel refuses the memory.
    #[inline]
    pub fn reserve(&mut self, count: usize) -> bool {
        self.available() >= count || self.grow(count)
    }

    #[cold]
    fn grow(&mut self, count: usize) -> bool {
        let mut bytes = self.next_chunk;
        while (bytes - CHUNK_HEADER) / NODE < count {
            bytes *= 2;
        }
        let Some(base) = host::map(bytes) else {
            return false;
        };
        if self.prefault {
            os::prefault_write(base.as_ptr(), bytes);
        }
        // The rest of the old chunk is not lost: its fresh slots join the recycle list.
        while self.fresh < self.fresh_end {
            let node = self.fresh;
            // SAFETY: `node` is a fresh slot of our newest chunk, below `fresh_end`.
            unsafe {
                self.fresh = node.add(1);
                ptr::addr_of_mut!((*node).next).write(self.recycled);
            }
            self.recycled = node;
            self.recycled_count += 1;
        }
        let chunk = base.as_ptr().cast::<Chunk>();
        // SAFETY: the mapping is `bytes` long, page-aligned, zeroed and ours; the header fits
        // before the first node and nodes fit in whole up to `fresh_end`.
        unsafe {
            chunk.write(Chunk {
                next: self.chunks,
                bytes,
            });
            self.fresh = base.as_ptr().add(CHUNK_HEADER).cast::<Node>();
            self.fresh_end = self.fresh.add((bytes - CHUNK_HEADER) / NODE);
        }
        self.chunks = chunk;
        self.next_chunk = (bytes * 2).min(MAX_CHUNK).max(self.next_chunk);
        true
    }

    /// A node for the extent `[offset, offset + len)`, unlinked from everything.
    ///
    /// # Safety
    /// A `reserve(k)` that returned true must cover this call (fewer than `k` takes since).
    #[inline]
    pub unsafe fn take(&mut self, offset: u64, len: u64, free: bool) -> *mut Node {
        debug_assert!(self.available() > 0);
        let node = if !self.recycled.is_null() {
            let node = self.recycled;
            // SAFETY: recycled nodes are slots of our chunks; their `next` links the list.
            self.recycled = unsafe { (*node).next };
            self.recycled_count -= 1;
            node
        } else {
            let node = self.fresh;
            // SAFETY: the caller's reservation guarantees `fresh < fresh_end`.
            self.fresh = unsafe { node.add(1) };
            node
        };
        self.live += 1;
        // SAFETY: `node` is a slot of one of our chunks that nothing else refers to.
        unsafe {
            node.write(Node {
                offset,
                len,
                prev: ptr::null_mut(),
                next: ptr::null_mut(),
                class: ClassLinks::EMPTY,
                prio: 0,
                free,
                tree: false,
            })
        };
        node
    }

    /// Gives `node` back for reuse.
    ///
    /// # Safety
    /// `node` came from this pool's `take`, is not released yet, and nothing links to it.
    #[inline]
    pub unsafe fn release(&mut self, node: *mut Node) {
        // SAFETY: as the caller guarantees, the node is ours and unreferenced.
        unsafe { (*node).next = self.recycled };
        self.recycled = node;
        self.recycled_count += 1;
        self.live -= 1;
    }

    #[cfg(test)]
    /// Nodes in use.
    #[inline]
    pub fn live(&self) -> usize {
        self.live
    }

    #[cfg(test)]
    /// Bytes of host memory mapped for nodes.
    pub fn mapped_bytes(&self) -> usize {
        let mut total = 0;
        let mut chunk = self.chunks;
        while !chunk.is_null() {
            // SAFETY: every listed chunk is mapped until `drop`.
            unsafe {
                total += (*chunk).bytes;
                chunk = (*chunk).next;
            }
        }
        total
    }
}

impl Drop for NodePool {
    fn drop(&mut self) {
        let mut chunk = self.chunks;
        while !chunk.is_null() {
            // SAFETY: every listed chunk is a whole mapping of ours; the pool is going away
            // with the heap that owns it, so no node is referred to any more.
            unsafe {
                let next = (*chunk).next;
                host::unmap(chunk.cast(), (*chunk).bytes);
                chunk = next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_is_compact() {
        assert_eq!(NODE, 64);
        assert_eq!(core::mem::align_of::<Node>(), 64);
        assert_eq!((FIRST_CHUNK - CHUNK_HEADER) / NODE, 63);
    }

    #[test]
    fn pool_reuses_released_nodes_and_grows() {
        let mut pool = NodePool::new();
        assert!(pool.reserve(1));
        // SAFETY: reserved just above.
        let a = unsafe { pool.take(0, 64, true) };
        // SAFETY: `a` came from `take` and nothing links to it.
        unsafe { pool.release(a) };
        assert!(pool.reserve(1));
        // SAFETY: reserved just above.
        let b = unsafe { pool.take(64, 64, false) };
        assert_eq!(a, b);
        // SAFETY: `b` is a live node of the pool.
        unsafe {
            assert_eq!((*b).offset, 64);
            assert!(!(*b).free && !(*b).tree);
        }
        let mut nodes = std::vec::Vec::new();
        for i in 0..1000 {
            assert!(pool.reserve(1));
            // SAFETY: reserved just above.
            nodes.push(unsafe { pool.take(i, 1, true) });
        }
        assert_eq!(pool.live(), 1001);
        let mut sorted = nodes.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 1000);
        assert!(pool.mapped_bytes() >= 1001 * NODE);
        for n in nodes {
            // SAFETY: each node came from `take` once.
            unsafe { pool.release(n) };
        }
        assert_eq!(pool.live(), 1);
        assert!(pool.reserve(5000));
        assert!(pool.available() >= 5000);
    }

    #[test]
    fn priorities_are_spread() {
        let mut seen = std::vec::Vec::new();
        for i in 0..4096u64 {
            seen.push(priority(i * 64));
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 4096);
        let high = (0..4096u64).filter(|i| priority(i * 64) >= 1 << 31).count();
        assert!((1700..2400).contains(&high), "{high}");
    }
}
