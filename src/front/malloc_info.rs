//! glibc's malloc introspection and tuning names (`mallinfo2`, `mallinfo`, `malloc_stats`,
//! `malloc_trim`, `mallopt`, `malloc_info`), answered from tiermalloc's own figures. Without
//! them glibc answers for its own arena, which under `LD_PRELOAD` is empty: a program (or
//! glibc's tst-malloc-tcache-leak, which asserts `uordblks != 0`) then sees no memory in use.
//!
//! The mapping of glibc's fields onto ours (DRAM tier; device tiers have `tm_get_stats`):
//! `arena` = bytes of small-block segments mapped, `hblks`/`hblkhd` = large blocks live and
//! their usable bytes, `uordblks` = bytes of live blocks (small ones at their class size, large
//! ones at their usable size), `fordblks` = `arena` minus the small blocks' share of
//! `uordblks`. Fields that describe glibc's bins (`ordblks`, `smblks`, `usmblks`, `fsmblks`,
//! `keepcost`) are 0: we have no such thing. `mallopt` accepts glibc's parameters, which tune
//! glibc's arenas, bins and thresholds and have nothing to act on here (see `mallopt`);
//! `malloc_trim` gives free slices of the calling thread's heap and the cached large mappings
//! back to the kernel.

use crate::dram::{self, fast, large, DRAM};
use crate::os;
use core::ffi::{c_int, c_void};
use core::fmt::Write;

/// glibc's `struct mallinfo2`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct Mallinfo2 {
    pub arena: usize,
    pub ordblks: usize,
    pub smblks: usize,
    pub hblks: usize,
    pub hblkhd: usize,
    pub usmblks: usize,
    pub fsmblks: usize,
    pub uordblks: usize,
    pub fordblks: usize,
    pub keepcost: usize,
}

/// glibc's `struct mallinfo` (the deprecated `int` version).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct Mallinfo {
    pub arena: c_int,
    pub ordblks: c_int,
    pub smblks: c_int,
    pub hblks: c_int,
    pub hblkhd: c_int,
    pub usmblks: c_int,
    pub fsmblks: c_int,
    pub uordblks: c_int,
    pub fordblks: c_int,
    pub keepcost: c_int,
}

fn figures() -> Mallinfo2 {
    let s = DRAM.stats();
    let large_bytes = dram::budget::LARGE_LIVE_BYTES.get();
    let large_live = large::LARGE_ALLOCATIONS
        .get()
        .saturating_sub(large::LARGE_FREES.get());
    let arena = dram::segments_mapped();
    let small_in_use = s.in_use.saturating_sub(large_bytes);
    Mallinfo2 {
        arena: arena as usize,
        hblks: large_live as usize,
        hblkhd: large_bytes as usize,
        uordblks: s.in_use as usize,
        fordblks: arena.saturating_sub(small_in_use) as usize,
        ..Mallinfo2::default()
    }
}

/// glibc's `mallinfo2`: this process's DRAM figures (see the module comment).
#[no_mangle]
pub extern "C" fn mallinfo2() -> Mallinfo2 {
    figures()
}

/// glibc's deprecated `mallinfo`: `mallinfo2` with every figure capped at `INT_MAX`.
#[no_mangle]
pub extern "C" fn mallinfo() -> Mallinfo {
    let m = figures();
    let int = |v: usize| v.min(c_int::MAX as usize) as c_int;
    Mallinfo {
        arena: int(m.arena),
        ordblks: int(m.ordblks),
        smblks: int(m.smblks),
        hblks: int(m.hblks),
        hblkhd: int(m.hblkhd),
        usmblks: int(m.usmblks),
        fsmblks: int(m.fsmblks),
        uordblks: int(m.uordblks),
        fordblks: int(m.fordblks),
        keepcost: int(m.keepcost),
    }
}

/// glibc's `malloc_stats`: glibc's summary lines on stderr, then every tier's figures. Like
/// glibc's, it is not a cancellation point: the thread's cancellation is held off while it
/// writes (`write` is one), so that a pending cancellation does not cut the report short.
#[no_mangle]
pub extern "C" fn malloc_stats() {
    os::without_cancellation(write_malloc_stats);
}

fn write_malloc_stats() {
    let m = figures();
    let mut line = os::LineBuf::new();
    let system = m.arena + m.hblkhd;
    let _ = writeln!(
        line,
        "Arena 0:\nsystem bytes     = {:>10}\nin use bytes     = {:>10}",
        m.arena,
        m.uordblks - m.hblkhd.min(m.uordblks)
    );
    let _ = writeln!(
        line,
        "Total (incl. mmap):\nsystem bytes     = {system:>10}\nin use bytes     = {:>10}\nmax mmap \
         regions = {:>10}\nmax mmap bytes   = {:>10}",
        m.uordblks, m.hblks, m.hblkhd
    );
    line.flush();
    super::report::print_stats();
}

/// glibc's `malloc_trim`: gives the free slices of the calling thread's heap and the cached
/// large mappings back to the kernel (`pad` is not needed: nothing is kept at a top). 1 if
/// anything was released.
#[no_mangle]
pub extern "C" fn malloc_trim(_pad: usize) -> c_int {
    let cached = large::release_cached();
    let heap = fast::binding::current();
    if heap.is_null() {
        return c_int::from(cached > 0);
    }
    // SAFETY: this thread's own heap, used by no other thread while it is bound here.
    c_int::from(unsafe { (*heap).purge() } > 0 || cached > 0)
}

/// glibc's `mallopt` parameters (`<malloc.h>`).
const M_MXFAST: c_int = 1;
const M_ARENA_MAX: c_int = -8;
const M_ARENA_TEST: c_int = -7;
/// The lowest parameter number glibc knows (`M_ARENA_MAX`); `M_TRIM_THRESHOLD` (-1) to
/// `M_ARENA_MAX` (-8) and `M_MXFAST` (1) are all of them.
const M_LOWEST: c_int = M_ARENA_MAX;
/// glibc's largest `M_MXFAST` (`80 * sizeof(size_t) / 4`).
const MXFAST_MAX: c_int = 160;

/// glibc's `mallopt`: 1 for a parameter and value glibc itself would accept, 0 for the rest
/// (glibc's answers). glibc's parameters tune its arenas, bins, thresholds and checking, none
/// of which exists here, so an accepted one changes nothing: the advice is taken and has no
/// object. Answering 0 ("failed") made programs that check the call stop (glibc's own
/// tst-malloc-thread-fail, tst-malloc-thread-exit and tst-malloc-fork-deadlock call
/// `mallopt(M_ARENA_MAX, …)` first and fail on 0).
#[no_mangle]
pub extern "C" fn mallopt(param: c_int, value: c_int) -> c_int {
    let accepted = match param {
        M_MXFAST => (0..=MXFAST_MAX).contains(&value),
        M_ARENA_MAX | M_ARENA_TEST => value > 0,
        M_LOWEST..=-1 => true,
        _ => false,
    };
    c_int::from(accepted)
}

/// glibc's `malloc_info`: an XML summary on `stream`; `options` must be 0 (else `EINVAL`).
///
/// # Safety
/// `stream` must be a valid `FILE *` open for writing.
#[no_mangle]
pub unsafe extern "C" fn malloc_info(options: c_int, stream: *mut c_void) -> c_int {
    if options != 0 || stream.is_null() {
        os::set_errno(libc::EINVAL);
        return -1;
    }
    let m = figures();
    let mut text = os::LineBuf::new();
    let _ = write!(
        text,
        "<malloc version=\"tiermalloc-1\">\n<heap nr=\"0\">\n\
         <system type=\"current\" size=\"{}\"/>\n\
         <total type=\"mmap\" count=\"{}\" size=\"{}\"/>\n<inuse size=\"{}\"/>\n</heap>\n\
         <system type=\"current\" size=\"{}\"/>\n</malloc>\n",
        m.arena,
        m.hblks,
        m.hblkhd,
        m.uordblks,
        m.arena + m.hblkhd
    );
    let bytes = text.as_bytes();
    // SAFETY: `stream` is a valid FILE (contract); the bytes are ours.
    let written = unsafe { libc::fwrite(bytes.as_ptr().cast(), 1, bytes.len(), stream.cast()) };
    if written == bytes.len() {
        0
    } else {
        -1
    }
}
