//! The 16-byte header written before every block on a device tier (the C header's
//! `tm_block_header`), and its one-store write. Device memory is only ever written, never read
//! back: the host metadata (`extent_heap`, `slabs`) is what the allocator believes.

/// Bytes of the header before every device block (`TM_HEADER_SIZE`).
pub(crate) const HEADER_SIZE: u64 = 16;
/// `tm_block_header::magic`: "TMHB" in little-endian ASCII.
pub(crate) const HEADER_MAGIC: u32 = u32::from_le_bytes(*b"TMHB");
pub(crate) const STATE_ALLOCATED: u16 = 1;
pub(crate) const STATE_FREE: u16 = 2;

/// The header written immediately before each block on CXL, CMB and PMR (the C header's
/// `tm_block_header`): `((const tm_block_header *)p)[-1].size == tm_usable_size(p)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockHeader {
    /// Usable bytes of the block.
    pub size: u64,
    /// `HEADER_MAGIC` ("TMHB"), marking a header written by tiermalloc.
    pub magic: u32,
    /// The block's `tm_kind`.
    pub kind: u16,
    /// 1 allocated, 2 free.
    pub state: u16,
}

const _: () = assert!(core::mem::size_of::<BlockHeader>() == HEADER_SIZE as usize);

impl BlockHeader {
    /// Writes the header at `dst` as one 16-byte store, never reading it: on a PCIe BAR a
    /// single write transaction (a field-by-field copy is four: 8 + 4 + 2 + 2 bytes).
    ///
    /// # Safety
    /// `dst` is 16-byte aligned (extents start on a granule) and writable.
    #[inline]
    pub(crate) unsafe fn store(self, dst: *mut BlockHeader) {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::{__m128i, _mm_set_epi64x};
            let tail = self.tail();
            // SAFETY: SSE2 is part of the x86_64 baseline. The store: the caller's contract;
            // a volatile store of one SSE register is one aligned 16-byte store.
            unsafe {
                let v = _mm_set_epi64x(tail as i64, self.size as i64);
                (dst as *mut __m128i).write_volatile(v);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        // SAFETY: the caller's contract.
        unsafe {
            dst.write_volatile(self)
        };
    }

    /// The header's second word: `magic`, `kind` and `state` as one `u64`, laid out as the
    /// struct is on a little-endian target (`store_with_tail`).
    #[inline]
    pub(crate) const fn tail(&self) -> u64 {
        self.magic as u64 | (self.kind as u64) << 32 | (self.state as u64) << 48
    }

    /// `store` of the header whose size is `size` and whose second word is `*tail` (`tail()`,
    /// kept made by a tier: its live blocks' headers all share it), the word loaded straight
    /// into the store's upper half (one instruction where making it took two).
    ///
    /// # Safety
    /// As for `store`.
    #[inline]
    pub(crate) unsafe fn store_with_tail(size: u64, tail: &u64, dst: *mut BlockHeader) {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::{__m128d, _mm_castsi128_pd, _mm_cvtsi64_si128, _mm_loadh_pd};
            // SAFETY: SSE2 is part of the x86_64 baseline; `tail` is a reference. The store:
            // the caller's contract, one aligned 16-byte store as in `store`.
            unsafe {
                let low = _mm_castsi128_pd(_mm_cvtsi64_si128(size as i64));
                let v = _mm_loadh_pd(low, (tail as *const u64).cast::<f64>());
                (dst as *mut __m128d).write_volatile(v);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let header = BlockHeader {
                size,
                magic: *tail as u32,
                kind: (*tail >> 32) as u16,
                state: (*tail >> 48) as u16,
            };
            // SAFETY: the caller's contract.
            unsafe { dst.write_volatile(header) };
        }
    }
}
