//! This process's page-table entries for a range of its address space (/proc/self/pagemap):
//! which pages of a mapping it has touched, and which of a private file mapping it has written.

/// The pagemap entry of every page of `[base, base + len)`; `None` if it cannot be read.
pub(crate) fn entries(base: usize, len: usize) -> Option<Vec<u64>> {
    use std::os::unix::fs::FileExt;
    let pages = len / crate::os::PAGE_SIZE;
    let file = std::fs::File::open("/proc/self/pagemap").ok()?;
    let mut raw = vec![0u8; pages * 8];
    file.read_exact_at(&mut raw, (base / crate::os::PAGE_SIZE * 8) as u64)
        .ok()?;
    Some(
        raw.chunks_exact(8)
            .map(|e| u64::from_le_bytes(e.try_into().unwrap()))
            .collect(),
    )
}

/// Bit 63: present in the page tables; bit 62: swapped out (only anonymous pages are).
pub(crate) fn present_or_swapped(entry: u64) -> bool {
    entry >> 62 != 0
}

/// Whether a page of a private file mapping was written (copied on write): present and no
/// longer the file's page (bit 61 clear), or swapped out.
pub(crate) fn written(entry: u64) -> bool {
    (entry >> 63 & 1 == 1 && entry >> 61 & 1 == 0) || entry >> 62 & 1 == 1
}
