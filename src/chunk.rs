//! The address-space grid every owner of our memory is aligned to: chunks of 4 MiB, below the
//! highest user address the page map describes. Segments, large mappings and device regions
//! all start on a chunk, so that one byte per chunk (`pagemap`) says who owns an address.

/// log2 of the chunk size; segments, large mappings and device regions are aligned to it.
pub(crate) const CHUNK_SHIFT: u32 = 22;
pub(crate) const CHUNK_SIZE: usize = 1 << CHUNK_SHIFT;
pub(crate) const CHUNK_MASK: usize = CHUNK_SIZE - 1;

/// The highest user address the page map covers (exclusive): the 47-bit user half of x86_64.
pub(crate) const ADDRESS_LIMIT: usize = 1 << 47;

/// Whether the page map can describe `[start, start + len)`. The last chunk below
/// `ADDRESS_LIMIT` is excluded so that null always maps to an untagged entry (see `pagemap`).
pub fn covers(start: usize, len: usize) -> bool {
    start
        .checked_add(len)
        .is_some_and(|end| end <= ADDRESS_LIMIT - CHUNK_SIZE)
}
