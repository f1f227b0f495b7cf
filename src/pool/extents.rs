//! Where a space's bytes go: the pool's extent allocator.
//!
//! Each space owns one extent `[offset, offset + len)` of the data area, recorded in its
//! directory entry; the free map is the complement of the live entries' extents, so it is on
//! the device, found by every host, and can never disagree with the directory (an entry and
//! its extent are created and deleted by the same transaction). Allocation runs under the
//! pool lock: first fit over the live extents sorted by offset (on the stack: at most
//! MAX_SPACES of them). A deleted space's bytes are free as soon as its entry is.

use super::layout::*;
use super::Pool;

impl Pool {
    /// The offset of `len` free bytes (a multiple of the granule), first fit.
    pub(crate) fn find_gap(&self, len: u64) -> Option<u64> {
        let mut used = [(0u64, 0u64); MAX_SPACES];
        let mut n = 0;
        for index in 0..MAX_SPACES {
            if let Some(e) = self.read_entry(index) {
                used[n] = (e.offset(), e.len());
                n += 1;
            }
        }
        let used = &mut used[..n];
        used.sort_unstable();
        let mut cursor = self.data_start;
        for &(offset, l) in used.iter() {
            if offset >= cursor && offset - cursor >= len {
                return Some(cursor);
            }
            cursor = cursor.max(offset + l);
        }
        (self.total_len.saturating_sub(cursor) >= len).then_some(cursor)
    }

    /// Free bytes of the data area (tests and statistics).
    pub(crate) fn free_bytes(&self) -> u64 {
        let used: u64 = (0..MAX_SPACES)
            .filter_map(|i| self.read_entry(i))
            .map(|e| e.len())
            .sum();
        self.total_len - self.data_start - used
    }
}
