//! Whole extents that come and go: a tier whose capacity is lent to it in fixed ranges
//! (`device::outside`) frees a range into the heap when it receives it (`free`, as for any
//! allocated extent) and takes it back out, whole, when every block in it is gone and the
//! range goes back to its owner (`take_whole`). Between two such ranges the tier keeps an
//! allocated fence, so a free extent never spans two of them: a range that is empty again is
//! exactly one free extent, found by its start in O(1).

use super::ExtentHeap;

impl ExtentHeap {
    /// Whether `[offset, offset + len)` is exactly one free extent.
    pub fn is_whole_free(&self, offset: u64, len: u64) -> bool {
        let n = self.starts.get(offset);
        // SAFETY: the start table holds live nodes.
        !n.is_null() && unsafe { (*n).free && (*n).len == len }
    }

    /// Marks the free extent `[offset, offset + len)` allocated again, whole (the range leaves
    /// this heap's use). False, with the heap unchanged, if it is not exactly one free extent.
    pub fn take_whole(&mut self, offset: u64, len: u64) -> bool {
        if !self.is_whole_free(offset, len) {
            return false;
        }
        let n = self.starts.get(offset);
        // SAFETY: `n` is a live free node of ours (checked), in the size index.
        unsafe {
            self.sizes.remove(n);
            (*n).free = false;
        }
        self.in_use += len;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::ExtentHeap;
    use crate::kind::Fit;

    #[test]
    fn a_range_freed_in_comes_back_out_whole_only_when_empty() {
        // [0,4096) table | [4096, 8192-16) range | 16-byte fence | ...
        let mut b = ExtentHeap::builder(3 * 4096, 16, Fit::Best).unwrap();
        for (len, free) in [
            (4096, false),
            (4080, false),
            (16, false),
            (4080, false),
            (16, false),
        ] {
            assert!(b.push(len, free));
        }
        let mut heap = b.finish().unwrap();
        assert_eq!(heap.alloc(100, 16, 16), None, "nothing received yet");
        assert_eq!(heap.free(4096), Ok(4080));
        assert!(
            heap.is_whole_free(4096, 4080),
            "the fences keep it one extent"
        );
        let (block, _) = heap.alloc(100, 16, 16).unwrap();
        assert!((4096..8176).contains(&block));
        assert!(!heap.take_whole(4096, 4080), "a block lives in it");
        heap.free(block).unwrap();
        let before = heap.in_use();
        assert!(heap.take_whole(4096, 4080));
        assert_eq!(heap.in_use(), before + 4080);
        assert_eq!(heap.alloc(100, 16, 16), None, "given back");
        heap.check_invariants();
    }
}
