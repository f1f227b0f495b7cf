//! Intrusive treaps of free extent `Node`s keyed by `(len, offset)`: the ordered set inside
//! one ranged size class (`size_index.rs`), with expected O(log k) insert, remove and ordered
//! search for a class of k extents, without allocating.
//!
//! A node's priority is a hash of its offset (`node::priority`), so the shape of a tree, like
//! everything else in the heap, is a pure function of the operations applied to it. Insert and
//! remove are the split/merge formulation written as loops over link slots: no recursion, so
//! the stack use inside `malloc` stays constant whatever the tree's depth. The links are the
//! node's `class` links (`left`, `right`).
//!
//! Invariant of a tree rooted at `root` (the "treap property"): an in-order walk meets keys
//! `(len, offset)` in strictly increasing order (unique, since offsets are), and no node's
//! `prio` is below a child's.
//!
//! # Safety (every function here)
//! `root`, every node reachable from it, and any node passed in are live nodes of one
//! `NodePool`, which the caller holds exclusively (`&mut` to the heap); the tree satisfies the
//! invariant above.

use super::node::{Links, Node};
use core::ptr::{self, addr_of_mut};

/// The order of a class: by length, then by offset.
pub(super) type Key = (u64, u64);

#[inline(always)]
unsafe fn key(n: *const Node) -> Key {
    // SAFETY: the caller passes a live node.
    unsafe { ((*n).len, (*n).offset) }
}

#[inline(always)]
unsafe fn left(n: *mut Node) -> *mut *mut Node {
    // SAFETY: forwarded from the caller (a live node); no reference is created.
    unsafe { addr_of_mut!((*n).class.left) }
}

#[inline(always)]
unsafe fn right(n: *mut Node) -> *mut *mut Node {
    // SAFETY: as in `left`.
    unsafe { addr_of_mut!((*n).class.right) }
}

/// Inserts `node`, whose key is not in the tree and whose `class` links are free to overwrite.
pub(super) unsafe fn insert(root: *mut *mut Node, node: *mut Node) {
    // SAFETY: module contract; every pointer dereferenced is `node` or reachable from `root`.
    unsafe {
        let k = key(node);
        let prio = (*node).prio;
        // Go down while the nodes passed outrank `node`: it goes where the first lower one is.
        let mut slot = root;
        loop {
            let cur = *slot;
            if cur.is_null() || (*cur).prio < prio {
                break;
            }
            slot = if k < key(cur) { left(cur) } else { right(cur) };
        }
        split(*slot, k, left(node), right(node));
        *slot = node;
    }
}

/// Splits the subtree `t` into keys below `k` (hung at `lslot`) and above it (at `rslot`).
unsafe fn split(mut t: *mut Node, k: Key, mut lslot: *mut *mut Node, mut rslot: *mut *mut Node) {
    // SAFETY: module contract; the slots are link fields of live nodes (or the root) that are
    // being rewired, never links still to be read below.
    unsafe {
        while !t.is_null() {
            if key(t) < k {
                *lslot = t;
                lslot = right(t);
                t = *lslot;
            } else {
                *rslot = t;
                rslot = left(t);
                t = *rslot;
            }
        }
        *lslot = ptr::null_mut();
        *rslot = ptr::null_mut();
    }
}

/// Joins the trees `a` and `b`, every key of `a` below every key of `b`.
unsafe fn merge(mut a: *mut Node, mut b: *mut Node) -> *mut Node {
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
                slot = right(a);
                a = *slot;
            } else {
                *slot = b;
                slot = left(b);
                b = *slot;
            }
        }
    }
    result
}

/// Removes `node`; false (tree unchanged) if it is not in the tree.
pub(super) unsafe fn remove(root: *mut *mut Node, node: *mut Node) -> bool {
    // SAFETY: module contract.
    unsafe {
        let k = key(node);
        let mut slot = root;
        loop {
            let cur = *slot;
            if cur.is_null() {
                return false;
            }
            if cur == node {
                *slot = merge(*left(node), *right(node));
                (*node).class = Links::EMPTY;
                return true;
            }
            slot = if k < key(cur) { left(cur) } else { right(cur) };
        }
    }
}

/// The node with the greatest key `<= k` (`strict`: `< k`), or null.
pub(super) unsafe fn floor(root: *mut Node, k: Key, strict: bool) -> *mut Node {
    let mut cur = root;
    let mut best = ptr::null_mut();
    // SAFETY: module contract.
    unsafe {
        while !cur.is_null() {
            let c = key(cur);
            if c < k || (!strict && c == k) {
                best = cur;
                cur = *right(cur);
            } else {
                cur = *left(cur);
            }
        }
    }
    best
}

/// The node with the least key `>= k` (`strict`: `> k`), or null.
pub(super) unsafe fn ceil(root: *mut Node, k: Key, strict: bool) -> *mut Node {
    let mut cur = root;
    let mut best = ptr::null_mut();
    // SAFETY: module contract.
    unsafe {
        while !cur.is_null() {
            let c = key(cur);
            if c > k || (!strict && c == k) {
                best = cur;
                cur = *left(cur);
            } else {
                cur = *right(cur);
            }
        }
    }
    best
}

/// The node with the least key, or null.
pub(super) unsafe fn first(root: *mut Node) -> *mut Node {
    let mut cur = root;
    // SAFETY: module contract.
    unsafe {
        while !cur.is_null() && !(*left(cur)).is_null() {
            cur = *left(cur);
        }
    }
    cur
}

/// The node with the greatest key, or null.
pub(super) unsafe fn last(root: *mut Node) -> *mut Node {
    let mut cur = root;
    // SAFETY: module contract.
    unsafe {
        while !cur.is_null() && !(*right(cur)).is_null() {
            cur = *right(cur);
        }
    }
    cur
}

/// Checks the treap property and returns the nodes in key order, with the tree's height.
#[cfg(test)]
pub(super) unsafe fn collect(root: *mut Node) -> (std::vec::Vec<*mut Node>, usize) {
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
                for child in [*left(cur.0), *right(cur.0)] {
                    assert!(
                        child.is_null() || (*child).prio <= (*cur.0).prio,
                        "heap order broken under {:?}",
                        key(cur.0)
                    );
                }
                stack.push(cur);
                cur = (*left(cur.0), cur.1 + 1);
            }
            let Some(top) = stack.pop() else { break };
            if let Some(&prev) = out.last() {
                assert!(
                    key(prev) < key(top.0),
                    "key order broken: {:?} before {:?}",
                    key(prev),
                    key(top.0)
                );
            }
            out.push(top.0);
            cur = (*right(top.0), top.1 + 1);
        }
    }
    (out, height)
}

#[cfg(test)]
mod tests {
    use super::super::node::NodePool;
    use super::*;

    /// Random insert/remove against a sorted Vec, checking order and searches at each step.
    #[test]
    fn matches_a_sorted_vector() {
        let mut pool = NodePool::new();
        let mut root = ptr::null_mut();
        let mut model: std::vec::Vec<(Key, *mut Node)> = std::vec::Vec::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for step in 0..if cfg!(miri) { 500 } else { 20_000 } {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let offset = (x % 4096) * 64;
            let len = (x >> 40) % 8 + 1;
            let pos = model.iter().position(|e| e.0 .1 == offset);
            // SAFETY: every node comes from `pool` and is in the tree until removed here.
            unsafe {
                match pos {
                    Some(i) => {
                        let n = model.remove(i).1;
                        assert!(remove(&mut root, n));
                        assert!(!remove(&mut root, n));
                        assert!((*n).class.left.is_null() && (*n).class.right.is_null());
                        pool.release(n);
                    }
                    None => {
                        assert!(pool.reserve(1));
                        let n = pool.take(offset, len, true);
                        insert(&mut root, n);
                        let i = model.partition_point(|e| e.0 < (len, offset));
                        model.insert(i, ((len, offset), n));
                    }
                }
                let probe = ((x >> 20) % 9, (x >> 30) % (4096 * 64));
                let f = floor(root, probe, false);
                let expect = model.iter().rev().find(|e| e.0 <= probe);
                assert_eq!(f, expect.map_or(ptr::null_mut(), |e| e.1));
                let f = floor(root, probe, true);
                let expect = model.iter().rev().find(|e| e.0 < probe);
                assert_eq!(f, expect.map_or(ptr::null_mut(), |e| e.1));
                let c = ceil(root, probe, true);
                let expect = model.iter().find(|e| e.0 > probe);
                assert_eq!(c, expect.map_or(ptr::null_mut(), |e| e.1));
                let c = ceil(root, probe, false);
                let expect = model.iter().find(|e| e.0 >= probe);
                assert_eq!(c, expect.map_or(ptr::null_mut(), |e| e.1));
                assert_eq!(first(root), model.first().map_or(ptr::null_mut(), |e| e.1));
                assert_eq!(last(root), model.last().map_or(ptr::null_mut(), |e| e.1));
                if step % 500 == 0 {
                    let (nodes, height) = collect(root);
                    assert_eq!(nodes, model.iter().map(|e| e.1).collect::<std::vec::Vec<_>>());
                    assert!(height <= 40, "height {height} for {}", nodes.len());
                }
            }
        }
    }
}
