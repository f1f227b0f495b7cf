//! Making device bytes visible to hosts whose caches are not coherent with ours (CXL 2.0
//! shared memory): write-back of what we wrote before anyone is told about it, invalidation
//! of what we are about to read. With the pool key `coherent` (one host, or CXL 3
//! back-invalidation) both are skipped.
//!
//! On x86-64 both are `clflushopt` (else `clflush`) per 64-byte line — it writes a dirty line
//! back and drops it — followed by a fence so the flushes complete before the next store (the
//! publish store).
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
        if has_clflushopt() {
            // SAFETY: the CPU has clflushopt (checked just above); same contract as below.
            unsafe { flush_lines_opt(p, len) };
            return;
        }
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

/// Whether the CPU has `clflushopt` (CPUID leaf 7, EBX bit 23), asked once.
#[cfg(target_arch = "x86_64")]
fn has_clflushopt() -> bool {
    use core::sync::atomic::{AtomicU8, Ordering};
    static KNOWN: AtomicU8 = AtomicU8::new(0);
    match KNOWN.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            // SAFETY: cpuid leaf 7 exists on every x86-64 CPU this code runs on (it answers
            // zeroes where the leaf is unsupported). Safe to call in newer Rust, unsafe in 1.80.
            #[allow(unused_unsafe)]
            let ebx = unsafe { core::arch::x86_64::__cpuid_count(7, 0) }.ebx;
            let has = ebx & (1 << 23) != 0;
            KNOWN.store(if has { 2 } else { 1 }, Ordering::Relaxed);
            has
        }
    }
}

/// `clflushopt` per line (not ordered with each other, so the CPU overlaps them), then a
/// fence that orders them all before what follows.
///
/// # Safety
/// The CPU must support clflushopt; `[p, p + len)` must be mapped.
#[cfg(target_arch = "x86_64")]
unsafe fn flush_lines_opt(p: *const u8, len: usize) {
    let mut line = p as usize & !(LINE - 1);
    let end = p as usize + len;
    while line < end {
        // SAFETY: mapped (caller); clflushopt only writes back and evicts the line.
        unsafe {
            core::arch::asm!("clflushopt [{0}]", in(reg) line, options(nostack, preserves_flags))
        };
        line += LINE;
    }
    // SAFETY: sfence orders the clflushopts before later stores (Intel SDM: CLFLUSHOPT).
    unsafe { core::arch::x86_64::_mm_sfence() };
}
