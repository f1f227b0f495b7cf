//! Whether bytes hold a pool, read without opening them as one: `Pool::open` formats a file of
//! zeroes, so a command that only looks (`tiermalloc spaces PATH`) asks this first.

use super::layout::{MAGIC, SB_MAGIC};

/// Whether `start` (the pool's first bytes, 8 at least) begins with a pool's superblock.
pub fn holds_pool(start: &[u8]) -> bool {
    start
        .get(SB_MAGIC..SB_MAGIC + 8)
        .is_some_and(|m| m == MAGIC.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::persist::superblock;

    /// The device layer tells a pool's file from a tier's by its own copy of the magic
    /// (`superblock::holds_pool`: that layer sits below this one and cannot import it), so that
    /// a tier pointed at the pool's file names the pool: both must agree.
    #[test]
    fn the_device_layer_knows_a_pool_by_the_same_magic() {
        let mut start = [0u8; 16];
        start[SB_MAGIC..SB_MAGIC + 8].copy_from_slice(&MAGIC.to_le_bytes());
        assert!(holds_pool(&start));
        assert!(superblock::holds_pool(&start));
        start[SB_MAGIC + 7] ^= 1;
        assert!(!holds_pool(&start));
        assert!(!superblock::holds_pool(&start));
    }
}
