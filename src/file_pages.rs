//! The library's own read-only file pages: after start-up, only the pages in use stay mapped.
//!
//! Why: the kernel maps a file's pages around each first touch of them, a whole aligned window
//! at a time (fault-around, 64 KiB), clipped only to the mapping (VMA). The loader reads the
//! start of the first segment (the dynamic symbols, their hash and names, the relocations),
//! so that segment's first 64 KiB window is resident in every process, though after start-up
//! the process reads only a few of its 16 pages: the hash and symbols (for a lazily bound
//! program's lookups), the size-class table and a few strings of `.rodata`. `MADV_RANDOM`
//! does not stop fault-around (Linux 6.18: a touch of such a mapping still maps 64 KiB).
//!
//! What: `drop_unused_headers` gives each page of that window a VMA of its own (every other
//! page `MADV_RANDOM`, those between left `MADV_NORMAL`: flags that differ, so the kernel keeps
//! them apart) and unmaps the window's pages (`MADV_DONTNEED`); a page read again faults in
//! alone. Only the segments that are neither writable nor executable nor part of
//! `PT_GNU_RELRO`: their pages are the file's, never written, so dropping them loses nothing
//! (the relocated data, the RELRO and the `.data` pages are copies and are never touched
//! here). Measured in BENCHMARKS.md "Session 13, branch rss3": 64 -> 12 KiB of the window
//! resident at exit, 9 system calls.
//!
//! Runs once, from the start-up hook (`front::runtime`), after the loader has relocated every
//! object; a failing `madvise` (the process's map count at its limit) leaves the rest as it is.

use crate::os::PAGE_SIZE;

/// The fault-around window the kernel maps by default: the part split page by page.
const WINDOW: usize = 64 * 1024;

extern "C" {
    /// The ELF header of the object this code is linked into (the shared library, or the
    /// program a static library or the tests link into), defined by the linker.
    static __ehdr_start: libc::Elf64_Ehdr;
}

/// Drops the pages of the first fault-around window of each read-only, non-executable
/// segment of this object (the module comment says why), keeping each page its own mapping.
pub(crate) fn drop_unused_headers() {
    let ehdr = core::ptr::addr_of!(__ehdr_start);
    // SAFETY: `__ehdr_start` is this object's ELF header, mapped read-only for its lifetime
    // (the first loadable segment starts at file offset 0, which holds it): valid, aligned.
    let header = unsafe { &*ehdr };
    if header.e_phentsize as usize != core::mem::size_of::<libc::Elf64_Phdr>() {
        return;
    }
    // SAFETY: the program headers follow the ELF header at `e_phoff` in the same mapped
    // segment (the loader reads them there too, `PT_PHDR`); `e_phnum` entries of the size
    // checked above, aligned as the linker placed them.
    let phdrs = unsafe {
        core::slice::from_raw_parts(
            ehdr.cast::<u8>()
                .add(header.e_phoff as usize)
                .cast::<libc::Elf64_Phdr>(),
            header.e_phnum as usize,
        )
    };
    // The load bias: where the segment holding file offset 0 (the header) is, less its address.
    let Some(first) = phdrs
        .iter()
        .find(|p| p.p_type == libc::PT_LOAD && p.p_offset == 0)
    else {
        return;
    };
    let bias = (ehdr as usize).wrapping_sub(first.p_vaddr as usize);
    let relro = phdrs.iter().find(|p| p.p_type == libc::PT_GNU_RELRO);
    for p in phdrs.iter().filter(|p| p.p_type == libc::PT_LOAD) {
        if p.p_flags & (libc::PF_W | libc::PF_X) != 0 || p.p_filesz == 0 {
            continue;
        }
        let start = bias.wrapping_add(p.p_vaddr as usize);
        // Whole pages holding nothing but this segment's file bytes.
        let lo = (start + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
        let file_end = (start + p.p_filesz as usize) & !(PAGE_SIZE - 1);
        let hi = file_end.min((start & !(WINDOW - 1)) + WINDOW);
        if hi <= lo || relro.is_some_and(|r| overlaps(bias, r, lo, hi)) {
            continue;
        }
        drop_window(lo, hi);
    }
}

/// Whether segment `r` (at `bias`) shares a page with `[lo, hi)`.
fn overlaps(bias: usize, r: &libc::Elf64_Phdr, lo: usize, hi: usize) -> bool {
    let r_lo = bias.wrapping_add(r.p_vaddr as usize) & !(PAGE_SIZE - 1);
    let r_hi = bias.wrapping_add((r.p_vaddr + r.p_memsz) as usize);
    r_lo < hi && lo < r_hi
}

/// Splits `[lo, hi)` (page-aligned, read-only, file-backed, never written) into one mapping
/// per page and unmaps its pages.
fn drop_window(lo: usize, hi: usize) {
    crate::os::keep_errno(|| {
        // Every other page from the last: the pages between keep the loader's `MADV_NORMAL`,
        // and the last differs from the rest of the segment after it. (A page left joined to
        // the next mapping would not do: fault-around maps 64 KiB from the start of the
        // mapping it touches, window or not.)
        let mut page = hi;
        while page >= lo + PAGE_SIZE {
            page -= PAGE_SIZE;
            let at = page as *mut libc::c_void;
            // SAFETY: a page of this object's read-only segment; advice changes no contents.
            if unsafe { libc::madvise(at, PAGE_SIZE, libc::MADV_RANDOM) } != 0 {
                return;
            }
            page = page.saturating_sub(PAGE_SIZE);
        }
        // SAFETY: the pages are a private, read-only file mapping that nothing ever wrote
        // (no text relocations: the writable and RELRO segments are skipped above), so
        // dropping them only unmaps page-cache pages; a later read maps the same bytes again.
        unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED) };
    });
}
