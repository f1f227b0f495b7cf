//! A value alone on its cache lines (`OwnLine`): the device tier's fields that threads write
//! on its heap path (the heap lock and the heap, the shared counters, the slab memo) kept off
//! the lines of the fields every request and free reads (`lanes_span`, `live_tail`, the
//! region), so that one thread's heap work does not take those lines from another thread's
//! core (BENCHMARKS.md, session 15, `dev2t2`).

/// `T` on cache lines of its own: aligned to 64 bytes, so its size is a multiple of 64 and no
/// other field shares a line with it.
#[repr(align(64))]
pub(crate) struct OwnLine<T>(pub T);

impl<T> core::ops::Deref for OwnLine<T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}
