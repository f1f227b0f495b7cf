//! This process's page-table entries for a range of its address space: which pages of a
//! mapping it has touched (present or swapped out), and which pages of a private file mapping
//! it has written (no longer the file's page).
//!
//! Asked with the `PAGEMAP_SCAN` ioctl (Linux 6.7) where there is one: the kernel answers with
//! runs of pages and skips unpopulated page tables whole, so a 1 GiB mapping of which a few
//! pages were touched costs microseconds. Elsewhere /proc/self/pagemap is read, 8 bytes per
//! page.

use crate::os::PAGE_SIZE;

/// What a run of pages is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pages {
    /// In the page tables or swapped out: the process touched them.
    pub touched: bool,
    /// Touched and not the mapped file's pages (copies of a private file mapping).
    pub copied: bool,
}

const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;

/// `struct pm_scan_arg` of linux/fs.h.
#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region` of linux/fs.h.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 =
    3 << 30 | (core::mem::size_of::<PmScanArg>() as u64) << 16 | 0x66 << 8 | 16;

/// Calls `visit(from, len, what)` for the runs of touched pages of `[base, base + len)`
/// (`from` relative to `base`), in order. `None` if the page tables cannot be read.
pub(crate) fn touched(
    base: usize,
    len: usize,
    mut visit: impl FnMut(usize, usize, Pages),
) -> Option<()> {
    let file = std::fs::File::open("/proc/self/pagemap").ok()?;
    match scan(&file, base, len, &mut visit) {
        Some(()) => Some(()),
        None => read_entries(&file, base, len, &mut visit),
    }
}

fn categories(c: u64) -> Pages {
    Pages {
        touched: c & (PAGE_IS_PRESENT | PAGE_IS_SWAPPED) != 0,
        copied: c & PAGE_IS_SWAPPED != 0 || (c & PAGE_IS_PRESENT != 0 && c & PAGE_IS_FILE == 0),
    }
}

/// The `PAGEMAP_SCAN` way; `None` if the kernel has no such ioctl.
fn scan(
    file: &std::fs::File,
    base: usize,
    len: usize,
    visit: &mut impl FnMut(usize, usize, Pages),
) -> Option<()> {
    use std::os::fd::AsRawFd;
    let mut regions = [PageRegion::default(); 64];
    let end = (base + len) as u64;
    let mut start = base as u64;
    while start < end {
        let mut arg = PmScanArg {
            size: core::mem::size_of::<PmScanArg>() as u64,
            flags: 0,
            start,
            end,
            walk_end: 0,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            max_pages: 0,
            category_inverted: 0,
            category_mask: 0,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_FILE,
        };
        // SAFETY: our descriptor; `arg` is a valid pm_scan_arg whose `vec` points to
        // `vec_len` writable page_regions that outlive the call.
        let n = unsafe { libc::ioctl(file.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
        if n < 0 {
            return None;
        }
        for r in &regions[..n as usize] {
            visit(
                (r.start - base as u64) as usize,
                (r.end - r.start) as usize,
                categories(r.categories),
            );
        }
        if arg.walk_end <= start {
            return None; // no progress: do not loop
        }
        start = arg.walk_end;
    }
    Some(())
}

/// The /proc/self/pagemap way: bit 63 present, 62 swapped, 61 file page (or shared anon).
fn read_entries(
    file: &std::fs::File,
    base: usize,
    len: usize,
    visit: &mut impl FnMut(usize, usize, Pages),
) -> Option<()> {
    use std::os::unix::fs::FileExt;
    const CHUNK: usize = 4096;
    let pages = len / PAGE_SIZE;
    let mut raw = vec![0u8; CHUNK * 8];
    let mut run: Option<(usize, usize, Pages)> = None;
    let mut page = 0;
    while page < pages {
        let n = CHUNK.min(pages - page);
        file.read_exact_at(&mut raw[..n * 8], ((base / PAGE_SIZE + page) * 8) as u64)
            .ok()?;
        for (i, e) in raw[..n * 8].chunks_exact(8).enumerate() {
            let e = u64::from_le_bytes(e.try_into().unwrap());
            let bit = |n: u64, category: u64| if (e >> n) & 1 == 1 { category } else { 0 };
            let c = bit(63, PAGE_IS_PRESENT) | bit(62, PAGE_IS_SWAPPED) | bit(61, PAGE_IS_FILE);
            let what = categories(c);
            let from = (page + i) * PAGE_SIZE;
            run = match run {
                Some((f, l, w)) if w == what && f + l == from => Some((f, l + PAGE_SIZE, w)),
                other => {
                    if let Some((f, l, w)) = other {
                        if w.touched {
                            visit(f, l, w);
                        }
                    }
                    Some((from, PAGE_SIZE, what))
                }
            };
        }
        page += n;
    }
    if let Some((f, l, w)) = run {
        if w.touched {
            visit(f, l, w);
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways see the same touched and copied pages of a private file mapping.
    #[test]
    fn touched_and_copied_pages_of_a_private_file_mapping() {
        let path = format!("/dev/shm/tm-pagemap-test-{}", std::process::id());
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(64 * PAGE_SIZE as u64).unwrap();
        use std::os::fd::AsRawFd;
        let len = 64 * PAGE_SIZE;
        // SAFETY: a fresh private mapping of our file, unmapped below.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        } as *mut u8;
        assert_ne!(p as *mut libc::c_void, libc::MAP_FAILED);
        // SAFETY: inside the mapping.
        unsafe {
            core::ptr::read_volatile(p.add(3 * PAGE_SIZE));
            core::ptr::read_volatile(p.add(4 * PAGE_SIZE));
            p.add(10 * PAGE_SIZE).write_volatile(1);
        }
        let mut by_scan = Vec::new();
        let file = std::fs::File::open("/proc/self/pagemap").unwrap();
        let scanned = scan(&file, p as usize, len, &mut |f, l, w| {
            by_scan.push((f / PAGE_SIZE, l / PAGE_SIZE, w.copied))
        });
        let mut by_read = Vec::new();
        read_entries(&file, p as usize, len, &mut |f, l, w| {
            by_read.push((f / PAGE_SIZE, l / PAGE_SIZE, w.copied))
        })
        .unwrap();
        // SAFETY: our mapping.
        unsafe { libc::munmap(p.cast(), len) };
        let _ = std::fs::remove_file(&path);
        let want = vec![(3, 2, false), (10, 1, true)];
        // Reading pagemap needs no capability for present/swapped/file bits.
        assert_eq!(by_read, want);
        if scanned.is_some() {
            assert_eq!(by_scan, want);
        } else {
            eprintln!("no PAGEMAP_SCAN on this kernel: only the pagemap reading was checked");
        }
    }
}
