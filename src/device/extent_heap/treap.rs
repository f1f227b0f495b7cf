//! Intrusive treaps keyed by length: inside one ranged size class (`size_index.rs`), one node
//! per distinct length of its free extents (the first of that length's list), with expected
//! O(log w) insert, remove, replace and ordered search for w distinct lengths, without
//! allocating.
//!
//! A node's priority is a hash of its length (`node::priority`), so the shape of a tree, like
//! everything else in the heap, is a pure function of the operations applied to it, and a node
//! can hand its place to another extent of the same length (`replace`) without a rotation.
//! Insert and remove are the split/merge formulation written as loops over link slots: no
//! recursion, so the stack use inside `malloc` stays constant whatever the tree's depth. The
//! links are `class.prev_or_left` and `class.right`; `tree` marks the nodes in a tree.
//!
//! Invariant of a tree rooted at `root` (the "treap property"): an in-order walk meets lengths
//! in strictly increasing order, every node has `tree` set and `prio == priority(len)`, and no
//! node's `prio` is below a child's.
//!
//! # Safety (every function here)
//! `root`, every node reachable from it, and any node passed in are live nodes of one
//! `NodePool`, which the caller holds exclusively (`&mut` to the heap); the tree satisfies the
//! invariant above.

use super::node::{priority, Node};
use core::ptr::{self, addr_of_mut};

#[inline(always)]
unsafe fn left(n: *mut Node) -> *mut *mut Node {
    // SAFETY: forwarded from the caller (a live node); no reference is created.
    unsafe { addr_of_mut!((*n).class.prev_or_left) }
}

#[inline(always)]
unsafe fn right(n: *mut Node) -> *mut *mut Node {
    // SAFETY: as in `left`.
    unsafe { addr_of_mut!((*n).class.right) }
}

#[inline(always)]
unsafe fn len(n: *const Node) -> u64 {
    // SAFETY: the caller passes a live node.
    unsafe { (*n).len }
}

/// Inserts `node`, whose length is not in the tree; its tree links are overwritten.
pub(super) unsafe fn insert(root: *mut *mut Node, node: *mut Node) {
    // SAFETY: module contract; every pointer dereferenced is `node` or reachable from `root`.
    unsafe {
        let key = len(node);
        let prio = priority(key);
        (*node).prio = prio;
        (*node).tree = true;
        // Go down while the nodes passed outrank `node`: it goes where the first lower one is.
        let mut slot = root;
        loop {
            let cur = *slot;
            if cur.is_null() || (*cur).prio < prio {
                break;
            }
            slot = if key < len(cur) {
                left(cur)
            } else {
                right(cur)
            };
        }
        split(*slot, key, left(node), right(node));
        *slot = node;
    }
}

/// Splits the subtree `t` into lengths below `key` (hung at `lslot`) and above it (at `rslot`).
unsafe fn split(mut t: *mut Node, key: u64, mut lslot: *mut *mut Node, mut rslot: *mut *mut Node) {
    // SAFETY: module contract; the slots are link fields of live nodes (or the root) that are
    // being rewired, never links still to be read below.
    unsafe {
        while !t.is_null() {
            if len(t) < key {
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

/// Joins the trees `a` and `b`, every length of `a` below every length of `b`.
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

/// The link (or `root` itself) that points at `node`, which is in the tree.
unsafe fn slot_of(root: *mut *mut Node, node: *mut Node) -> *mut *mut Node {
    // SAFETY: module contract.
    unsafe {
        let key = len(node);
        let mut slot = root;
        while *slot != node {
            debug_assert!(!(*slot).is_null(), "length {key} not in the tree");
            slot = if key < len(*slot) {
                left(*slot)
            } else {
                right(*slot)
            };
        }
        slot
    }
}

/// Removes `node`, which is in the tree; its tree links are cleared and `tree` unset.
pub(super) unsafe fn remove(root: *mut *mut Node, node: *mut Node) {
    // SAFETY: module contract.
    unsafe {
        let slot = slot_of(root, node);
        *slot = merge(*left(node), *right(node));
        *left(node) = ptr::null_mut();
        *right(node) = ptr::null_mut();
        (*node).tree = false;
    }
}

/// Puts `new`, of the same length as `old` (which is in the tree) and in no tree, in `old`'s
/// place: same children, same priority. `old`'s tree links are cleared and `tree` unset.
pub(super) unsafe fn replace(root: *mut *mut Node, old: *mut Node, new: *mut Node) {
    // SAFETY: module contract.
    unsafe {
        debug_assert!(len(old) == len(new) && !(*new).tree);
        let slot = slot_of(root, old);
        *left(new) = *left(old);
        *right(new) = *right(old);
        (*new).prio = (*old).prio;
        (*new).tree = true;
        *slot = new;
        *left(old) = ptr::null_mut();
        *right(old) = ptr::null_mut();
        (*old).tree = false;
    }
}

/// The node of length `key`, or null.
pub(super) unsafe fn find(root: *mut Node, key: u64) -> *mut Node {
    let mut cur = root;
    // SAFETY: module contract.
    unsafe {
        while !cur.is_null() && len(cur) != key {
            cur = if key < len(cur) {
                *left(cur)
            } else {
                *right(cur)
            };
        }
    }
    cur
}

/// The node with the greatest length `<= key` (`strict`: `< key`), or null.
pub(super) unsafe fn floor(root: *mut Node, key: u64, strict: bool) -> *mut Node {
    let mut cur = root;
    let mut best = ptr::null_mut();
    // SAFETY: module contract.
    unsafe {
        while !cur.is_null() {
            let l = len(cur);
            if l < key || (!strict && l == key) {
                best = cur;
                cur = *right(cur);
            } else {
                cur = *left(cur);
            }
        }
    }
    best
}

/// The node with the least length `>= key` (`strict`: `> key`), or null.
pub(super) unsafe fn ceil(root: *mut Node, key: u64, strict: bool) -> *mut Node {
    let mut cur = root;
    let mut best = ptr::null_mut();
    // SAFETY: module contract.
    unsafe {
        while !cur.is_null() {
            let l = len(cur);
            if l > key || (!strict && l == key) {
                best = cur;
                cur = *left(cur);
            } else {
                cur = *right(cur);
            }
        }
    }
    best
}

/// The node with the least length, or null.
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

/// The node with the greatest length, or null.
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
                let n = cur.0;
                height = height.max(cur.1);
                assert!((*n).tree, "length {} in a tree, not marked", len(n));
                assert_eq!((*n).prio, priority(len(n)), "priority of length {}", len(n));
                for child in [*left(n), *right(n)] {
                    assert!(
                        child.is_null() || (*child).prio <= (*n).prio,
                        "heap order broken under length {}",
                        len(n)
                    );
                }
                stack.push(cur);
                cur = (*left(n), cur.1 + 1);
            }
            let Some(top) = stack.pop() else { break };
            if let Some(&prev) = out.last() {
                assert!(
                    len(prev) < len(top.0),
                    "key order broken: {} before {}",
                    len(prev),
                    len(top.0)
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
    use crate::test_rng::Rng;

    /// Random insert/remove/replace against a sorted Vec, checking the searches at each step.
    #[test]
    fn matches_a_sorted_vector() {
        let mut pool = NodePool::new();
        let mut root = ptr::null_mut();
        let mut model: std::vec::Vec<(u64, *mut Node)> = std::vec::Vec::new();
        let mut rng = Rng(0x2545_f491_4f6c_dd1du64);
        for step in 0..if cfg!(miri) { 500 } else { 20_000 } {
            let x = rng.next();
            let key = (x % 4096) * 64 + 64;
            let pos = model.binary_search_by_key(&key, |e| e.0);
            // SAFETY: every node comes from `pool` and is in the tree until removed here.
            unsafe {
                match pos {
                    Ok(i) if x % 3 == 0 => {
                        // Another extent of the same length takes the place.
                        assert!(pool.reserve(1));
                        let n = pool.take(step * 64, key, true);
                        let old = model[i].1;
                        replace(&mut root, old, n);
                        assert!(!(*old).tree && (*old).class.prev_or_left.is_null());
                        pool.release(old);
                        model[i].1 = n;
                    }
                    Ok(i) => {
                        let n = model.remove(i).1;
                        assert_eq!(find(root, key), n);
                        remove(&mut root, n);
                        assert!(find(root, key).is_null());
                        assert!((*n).class.prev_or_left.is_null() && (*n).class.right.is_null());
                        assert!(!(*n).tree);
                        pool.release(n);
                    }
                    Err(i) => {
                        assert!(find(root, key).is_null());
                        assert!(pool.reserve(1));
                        let n = pool.take(step * 64, key, true);
                        insert(&mut root, n);
                        model.insert(i, (key, n));
                    }
                }
                let probe = (x >> 20) % (4096 * 64 + 128);
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
                    assert_eq!(
                        nodes,
                        model.iter().map(|e| e.1).collect::<std::vec::Vec<_>>()
                    );
                    assert!(height <= 40, "height {height} for {}", nodes.len());
                }
            }
        }
    }
}
