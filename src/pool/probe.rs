//! Whether bytes hold a pool, read without opening them as one: `Pool::open` formats a file of
//! zeroes, so a command that only looks (`tiermalloc spaces PATH`) asks this first.

use super::layout::{MAGIC, SB_MAGIC};

/// Whether `start` (the pool's first bytes, 8 at least) begins with a pool's superblock.
pub fn holds_pool(start: &[u8]) -> bool {
    start
        .get(SB_MAGIC..SB_MAGIC + 8)
        .is_some_and(|m| m == MAGIC.to_le_bytes())
}
