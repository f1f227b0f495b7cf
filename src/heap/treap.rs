//! Intrusive treaps over extent `Node`s: ordered sets with expected O(log n) insert, remove and
//! ordered search, without allocating.
//!
//! A node's priority is a hash of its offset (`node::priority`), so the shape of a tree, like
//! everything else in the heap, is a pure function of the operations applied to it. Insert and
//! remove are the split/merge formulation written as loops over link slots: no recursion, so
//! the stack use inside `malloc` stays constant whatever the tree's depth.
//!
//! Which links and which key a tree uses is the `Tree` type parameter: `ByAddr` (every extent,
//! keyed by offset) or `BySize` (free extents, keyed by `(len, offset)`, unique because offsets
//! are).
//!
//! Invariant of a tree rooted at `root` (the "treap property"): an in-order walk meets keys in
//! strictly increasing order, and no node's `prio` is below a child's.
//!
//! # Safety (every function here)
//! `root`, every node reachable from it through `T`'s links, and any node passed in are live
//! nodes of one `NodePool`, which the caller holds exclusively (`&mut` to the heap); the tree
//! satisfies the invariant above.

use super::node::{Links, Node};
use core::ptr::{self, addr_of_mut};

pub(super) trait Tree {
    type Key: Ord + Copy;
    /// # Safety
    /// `n` is a live node.
    unsafe fn key(n: *const Node) -> Self::Key;
    /// # Safety
    /// `n` is a live node.
    unsafe fn links(n: *mut Node) -> *mut Links;
}

/// Every extent, by offset.
pub(super) enum ByAddr {}
/// Free extents, by `(len, offset)`.
pub(super) enum BySize {}

impl Tree for ByAddr {
    type Key = u64;
    #[inline(always)]
    unsafe fn key(n: *const Node) -> u64 {
        // SAFETY: the caller passes a live node.
        unsafe { (*n).offset }
    }
    #[inline(always)]
    unsafe fn links(n: *mut Node) -> *mut Links {
        // SAFETY: the caller passes a live node; no reference is created.
        unsafe { addr_of_mut!((*n).addr) }
    }
}

impl Tree for BySize {
    type Key = (u64, u64);
    #[inline(always)]
    unsafe fn key(n: *const Node) -> (u64, u64) {
        // SAFETY: the caller passes a live node.
        unsafe { ((*n).len, (*n).offset) }
    }
    #[inline(always)]
    unsafe fn links(n: *mut Node) -> *mut Links {
        // SAFETY: the caller passes a live node; no reference is created.
        unsafe { addr_of_mut!((*n).size) }
    }
}

#[inline(always)]
unsafe fn left<T: Tree>(n: *mut Node) -> *mut *mut Node {
    // SAFETY: forwarded from the caller (a live node).
    unsafe { addr_of_mut!((*T::links(n)).left) }
}

#[inline(always)]
unsafe fn right<T: Tree>(n: *mut Node) -> *mut *mut Node {
    // SAFETY: forwarded from the caller (a live node).
    unsafe { addr_of_mut!((*T::links(n)).right) }
}

/// Inserts `node`, whose key is not in the tree and whose `T` links are free to overwrite.
pub(super) unsafe fn insert<T: Tree>(root: &mut *mut Node, node: *mut Node) {
    // SAFETY: module contract; every pointer dereferenced is `node` or reachable from `root`.
    unsafe {
        let key = T::key(node);
        let prio = (*node).prio;
        // Go down while the nodes passed outrank `node`: it goes where the first lower one is.
        let mut slot: *mut *mut Node = root;
        loop {
            let cur = *slot;
            if cur.is_null() || (*cur).prio < prio {
                break;
            }
            slot = if key < T::key(cur) {
                left::<T>(cur)
            } else {
                right::<T>(cur)
            };
        }
        split::<T>(*slot, key, left::<T>(node), right::<T>(node));
        *slot = node;
    }
}

/// Splits the subtree `t` into keys below `key` (hung at `lslot`) and above it (at `rslot`).
unsafe fn split<T: Tree>(
    mut t: *mut Node,
    key: T::Key,
    mut lslot: *mut *mut Node,
    mut rslot: *mut *mut Node,
) {
    // SAFETY: module contract; the slots are link fields of live nodes (or the root) that are
    // being rewired, never links still to be read below.
    unsafe {
        while !t.is_null() {
            if T::key(t) < key {
                *lslot = t;
                lslot = right::<T>(t);
                t = *lslot;
            } else {
                *rslot = t;
                rslot = left::<T>(t);
                t = *rslot;
            }
        }
        *lslot = ptr::null_mut();
        *rslot = ptr::null_mut();
    }
}

/// Joins the trees `a` and `b`, every key of `a` below every key of `b`.
unsafe fn merge<T: Tree>(mut a: *mut Node, mut b: *mut Node) -> *mut Node {
    let mut result = ptr::null_mut();
    let mut slot: *mut *mut Node = &mut result;
    // SAFETY: module contract, as in `split`.
    unsafe {
        loop {
            if a.is_null() {
                *slot = b;
                break;
            }
            if b.is_null() {
                *slot = a;
                break;
            }
            if (*a).prio >= (*b).prio {
                *slot = a;
                slot = right::<T>(a);
                a = *slot;
            } else {
                *slot = b;
                slot = left::<T>(b);
                b = *slot;
            }
        }
    }
    result
}

/// Removes `node`; false (tree unchanged) if it is not in the tree.
pub(super) unsafe fn remove<T: Tree>(root: &mut *mut Node, node: *mut Node) -> bool {
    // SAFETY: module contract.
    unsafe {
        let key = T::key(node);
        let mut slot: *mut *mut Node = root;
        loop {
            let cur = *slot;
            if cur.is_null() {
                return false;
            }
            if cur == node {
                remove_at::<T>(slot);
                return true;
            }
            slot = if key < T::key(cur) {
                left::<T>(cur)
            } else {
                right::<T>(cur)
            };
        }
    }
}

/// Removes the node that `slot` (a link of the tree, or its root) points at.
pub(super) unsafe fn remove_at<T: Tree>(slot: *mut *mut Node) {
    // SAFETY: module contract; `slot` is a link of this tree, unchanged since it was found.
    unsafe {
        let node = *slot;
        *slot = merge::<T>(*left::<T>(node), *right::<T>(node));
        *T::links(node) = Links::EMPTY;
    }
}

/// Like `ceil`, but returns the link (or `root` itself) that points at the node found, or
/// null: `remove_at` can then take the node out without searching again.
pub(super) unsafe fn ceil_slot<T: Tree>(
    root: &mut *mut Node,
    key: T::Key,
    strict: bool,
) -> *mut *mut Node {
    let mut slot: *mut *mut Node = root;
    let mut best = ptr::null_mut();
    // SAFETY: module contract.
    unsafe {
        loop {
            let cur = *slot;
            if cur.is_null() {
                break;
            }
            let k = T::key(cur);
            if k > key || (!strict && k == key) {
                best = slot;
                slot = left::<T>(cur);
            } else {
                slot = right::<T>(cur);
            }
        }
    }
    best
}

/// The node whose key is `key`, or null.
pub(super) unsafe fn find<T: Tree>(root: *mut Node, key: T::Key) -> *mut Node {
    let mut cur = root;
    // SAFETY: module contract.
    unsafe {
        while !cur.is_null() {
            let k = T::key(cur);
            if key == k {
                return cur;
            }
            cur = if key < k {
                *left::<T>(cur)
            } else {
                *right::<T>(cur)
            };
        }
    }
    cur
}

/// The node with the greatest key `<= key` (`strict`: `< key`), or null.
pub(super) unsafe fn floor<T: Tree>(root: *mut Node, key: T::Key, strict: bool) -> *mut Node {
    let mut cur = root;
    let mut best = ptr::null_mut();
    // SAFETY: module contract.
    unsafe {
        while !cur.is_null() {
            let k = T::key(cur);
            if k < key || (!strict && k == key) {
                best = cur;
                cur = *right::<T>(cur);
            } else {
                cur = *left::<T>(cur);
            }
        }
    }
    best
}

/// The node with the least key `>= key` (`strict`: `> key`), or null.
pub(super) unsafe fn ceil<T: Tree>(root: *mut Node, key: T::Key, strict: bool) -> *mut Node {
    let mut cur = root;
    let mut best = ptr::null_mut();
    // SAFETY: module contract.
    unsafe {
        while !cur.is_null() {
            let k = T::key(cur);
            if k > key || (!strict && k == key) {
                best = cur;
                cur = *left::<T>(cur);
            } else {
                cur = *right::<T>(cur);
            }
        }
    }
    best
}

/// The node with the greatest key, or null.
pub(super) unsafe fn last<T: Tree>(root: *mut Node) -> *mut Node {
    let mut cur = root;
    // SAFETY: module contract.
    unsafe {
        while !cur.is_null() && !(*right::<T>(cur)).is_null() {
            cur = *right::<T>(cur);
        }
    }
    cur
}

/// Most pending ancestors a `Cursor` keeps; a deeper tree (astronomically unlikely below 2^32
/// nodes) only costs it a fresh search from the root now and then.
const CURSOR_DEPTH: usize = 96;

/// An in-order walk upward from a key, one node at a time at amortised O(1) per step (a stack
/// of the ancestors still to visit), for the searches that must look past the first candidate.
/// Valid while the tree is not modified.
pub(super) struct Cursor<T: Tree> {
    root: *mut Node,
    /// Nodes still to visit, keys decreasing from bottom to top; the top is the current node.
    stack: [*mut Node; CURSOR_DEPTH],
    len: usize,
    /// Entries were dropped off the bottom: when the stack runs dry, search from the root.
    truncated: bool,
    _tree: core::marker::PhantomData<T>,
}

impl<T: Tree> Cursor<T> {
    /// A cursor at the least key `>= key` (`strict`: `> key`).
    pub unsafe fn seek(root: *mut Node, key: T::Key, strict: bool) -> Self {
        let mut c = Cursor {
            root,
            stack: [ptr::null_mut(); CURSOR_DEPTH],
            len: 0,
            truncated: false,
            _tree: core::marker::PhantomData,
        };
        // SAFETY: module contract.
        unsafe { c.descend(key, strict) };
        c
    }

    unsafe fn descend(&mut self, key: T::Key, strict: bool) {
        self.len = 0;
        self.truncated = false;
        let mut cur = self.root;
        // SAFETY: module contract.
        unsafe {
            while !cur.is_null() {
                let k = T::key(cur);
                if k > key || (!strict && k == key) {
                    self.push(cur);
                    cur = *left::<T>(cur);
                } else {
                    cur = *right::<T>(cur);
                }
            }
        }
    }

    #[inline]
    fn push(&mut self, n: *mut Node) {
        if self.len == CURSOR_DEPTH {
            self.stack.copy_within(1.., 0);
            self.len -= 1;
            self.truncated = true;
        }
        self.stack[self.len] = n;
        self.len += 1;
    }

    /// The current node, or null past the end.
    #[inline]
    pub fn node(&self) -> *mut Node {
        if self.len == 0 {
            ptr::null_mut()
        } else {
            self.stack[self.len - 1]
        }
    }

    /// Moves to the next key.
    pub unsafe fn advance(&mut self) {
        if self.len == 0 {
            return;
        }
        self.len -= 1;
        let done = self.stack[self.len];
        // SAFETY: module contract.
        unsafe {
            let mut cur = *right::<T>(done);
            while !cur.is_null() {
                self.push(cur);
                cur = *left::<T>(cur);
            }
            if self.len == 0 && self.truncated {
                self.descend(T::key(done), true);
            }
        }
    }
}

/// Checks the treap property and returns the nodes in key order, with the tree's height.
#[cfg(test)]
pub(super) unsafe fn collect<T: Tree>(root: *mut Node) -> (std::vec::Vec<*mut Node>, usize)
where
    T::Key: core::fmt::Debug,
{
    // Explicit stack (tests may allocate); (node, depth).
    let mut out: std::vec::Vec<*mut Node> = std::vec::Vec::new();
    let mut stack = std::vec::Vec::new();
    let mut height = 0;
    let mut cur = (root, 1usize);
    // SAFETY: module contract.
    unsafe {
        loop {
            while !cur.0.is_null() {
                height = height.max(cur.1);
                for child in [*left::<T>(cur.0), *right::<T>(cur.0)] {
                    assert!(
                        child.is_null() || (*child).prio <= (*cur.0).prio,
                        "heap order broken under {:?}",
                        T::key(cur.0)
                    );
                }
                stack.push(cur);
                cur = (*left::<T>(cur.0), cur.1 + 1);
            }
            let Some(top) = stack.pop() else { break };
            if let Some(&prev) = out.last() {
                assert!(
                    T::key(prev) < T::key(top.0),
                    "key order broken: {:?} before {:?}",
                    T::key(prev),
                    T::key(top.0)
                );
            }
            out.push(top.0);
            cur = (*right::<T>(top.0), top.1 + 1);
        }
    }
    (out, height)
}

#[cfg(test)]
mod tests {
    use super::super::node::NodePool;
    use super::*;

    /// A cursor whose stack overflows still visits every node in order.
    #[test]
    fn cursor_survives_a_tree_deeper_than_its_stack() {
        let mut pool = NodePool::new();
        let mut root = ptr::null_mut();
        // Priorities rising with the key make one left-leaning path with the largest key at
        // the root: seeking from 0 pushes every node.
        let n = 3 * CURSOR_DEPTH as u64;
        // SAFETY: nodes come from `pool` and go into one tree.
        unsafe {
            for i in 0..n {
                assert!(pool.reserve(1));
                let node = pool.take(i, 1, true);
                (*node).prio = (i + 1) as u32;
                insert::<ByAddr>(&mut root, node);
            }
            let (_, height) = collect::<ByAddr>(root);
            assert_eq!(height, n as usize);
            let mut c = Cursor::<ByAddr>::seek(root, 0, false);
            for i in 0..n {
                assert_eq!((*c.node()).offset, i);
                c.advance();
            }
            assert!(c.node().is_null());
            let mut c = Cursor::<ByAddr>::seek(root, 5, true);
            assert_eq!((*c.node()).offset, 6);
            c.advance();
            assert_eq!((*c.node()).offset, 7);
        }
    }

    /// Random insert/remove against a sorted Vec, both trees, checking order after each step.
    #[test]
    fn matches_a_sorted_vector() {
        let mut pool = NodePool::new();
        let mut addr_root = ptr::null_mut();
        let mut size_root = ptr::null_mut();
        let mut model: std::vec::Vec<(u64, *mut Node)> = std::vec::Vec::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for step in 0..if cfg!(miri) { 500 } else { 20_000 } {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let offset = (x % 4096) * 64;
            let pos = model.binary_search_by_key(&offset, |e| e.0);
            // SAFETY: every node comes from `pool` and is in both trees until removed here.
            unsafe {
                match pos {
                    Ok(i) => {
                        let n = model.remove(i).1;
                        assert_eq!(find::<ByAddr>(addr_root, offset), n);
                        if step % 2 == 0 {
                            assert!(remove::<ByAddr>(&mut addr_root, n));
                        } else {
                            let slot = ceil_slot::<ByAddr>(&mut addr_root, offset, false);
                            assert_eq!(*slot, n);
                            remove_at::<ByAddr>(slot);
                            assert!(find::<ByAddr>(addr_root, offset).is_null());
                        }
                        assert!(remove::<BySize>(&mut size_root, n));
                        assert!(!remove::<BySize>(&mut size_root, n));
                        pool.release(n);
                    }
                    Err(i) => {
                        assert!(find::<ByAddr>(addr_root, offset).is_null());
                        assert!(pool.reserve(1));
                        let n = pool.take(offset, (x >> 40) % 8 + 1, true);
                        insert::<ByAddr>(&mut addr_root, n);
                        insert::<BySize>(&mut size_root, n);
                        model.insert(i, (offset, n));
                    }
                }
                let probe = (x >> 20) % (4096 * 64);
                let f = floor::<ByAddr>(addr_root, probe, false);
                let expect = model.iter().rev().find(|e| e.0 <= probe);
                assert_eq!(f, expect.map_or(ptr::null_mut(), |e| e.1));
                let c = ceil::<ByAddr>(addr_root, probe, true);
                let expect = model.iter().find(|e| e.0 > probe);
                assert_eq!(c, expect.map_or(ptr::null_mut(), |e| e.1));
                if step % 97 == 0 {
                    let from = (x >> 30) % (4096 * 64);
                    let mut c = Cursor::<ByAddr>::seek(addr_root, from, false);
                    for e in model.iter().filter(|e| e.0 >= from).take(50) {
                        assert_eq!(c.node(), e.1);
                        c.advance();
                    }
                }
                if step % 500 == 0 {
                    let (nodes, height) = collect::<ByAddr>(addr_root);
                    assert_eq!(nodes.len(), model.len());
                    assert!(height <= 40, "height {height} for {}", nodes.len());
                    let (by_size, _) = collect::<BySize>(size_root);
                    assert_eq!(by_size.len(), model.len());
                    let top = last::<BySize>(size_root);
                    assert_eq!(top.is_null(), model.is_empty());
                    if !top.is_null() {
                        assert_eq!(top, *by_size.last().unwrap());
                        assert_eq!(floor::<BySize>(size_root, (u64::MAX, 0), true), top);
                    }
                }
            }
        }
    }
}
