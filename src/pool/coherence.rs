//! Making device bytes visible to hosts whose caches are not coherent with ours (CXL 2.0
//! shared memory): write-back of what we wrote before anyone is told about it, invalidation
//! of what we are about to read. With the pool key `coherent` (one host, or CXL 3
//! back-invalidation) both are skipped.
//!
//! On x86-64 both are `clflush` per 64-byte line (it writes a dirty line back and drops it),
//! followed by `mfence` so the flushes complete before the next store (the publish store).
//! Elsewhere only the fence is issued: on such targets the pool must be used `coherent`.

pub(crate) const LINE: usize = 64;

/// Writes `[p, p + len)` back to memory and drops it from this CPU's caches.
pub fn write_back(coherent: bool, p: *const u8, len: usize) {
    if coherent || len == 0 {
        return;
    }
    flush_lines(p, len);
}

/// Drops `[p, p + len)` from this CPU's caches, so the next read comes from the device.
pub fn invalidate(coherent: bool, p: *const u8, len: usize) {
    if coherent || len == 0 {
        return;
    }
    flush_lines(p, len);
}

fn flush_lines(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut line = p as usize & !(LINE - 1);
        let end = p as usize + len;
        while line < end {
            // SAFETY: the caller passes mapped memory; clflush of a mapped address has no
            // other effect than writing the line back and evicting it (SSE2, always present
            // on x86-64).
            unsafe { core::arch::x86_64::_mm_clflush(line as *const u8) };
            line += LINE;
        }
        // SAFETY: mfence has no preconditions.
        unsafe { core::arch::x86_64::_mm_mfence() };
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (p, len);
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
}
