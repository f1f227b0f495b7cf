//! Placement: which tier serves a request, and the per-tier view the front ends need (kind of a
//! pointer, statistics, whether a kind is configured).
//!
//! With DRAM alone configured, which is all this version serves, a plain `malloc` goes straight
//! to the DRAM tier: the placement decision costs nothing. Device tiers named in
//! `TIERMALLOC_TIERS` are reported once at start-up as not available and skipped, so the
//! program runs on DRAM.

use crate::config::{self, Kind};
use crate::stats::{SharedCounter, TierStats};
use crate::{dram, fast, large};
use core::fmt::Write;

/// Requests any tier failed to serve.
pub static FAILURES: SharedCounter = SharedCounter::new();

/// Whether `kind` is a tier this process can allocate from.
pub fn is_configured(kind: Kind) -> bool {
    kind == Kind::Dram
}

/// The tier of block `p`, if it is ours.
pub fn kind_of(p: *const u8) -> Option<Kind> {
    dram::owns(p).then_some(Kind::Dram)
}

/// Reports the configuration at start-up: device tiers this version cannot serve, and, with
/// `TIERMALLOC_VERBOSE=1`, what was understood.
pub fn report_configuration() {
    let config = config::get();
    for tier in config.tiers() {
        if tier.kind != Kind::Dram {
            let mut line = crate::os::LineBuf::new();
            let _ = writeln!(
                line,
                "tiermalloc: TIERMALLOC_TIERS: tier '{}': device tiers are not available in this \
                 version; tier skipped, running on dram",
                tier.kind.name()
            );
            line.flush();
        } else if tier.limit.is_some() {
            let mut line = crate::os::LineBuf::new();
            let _ = writeln!(
                line,
                "tiermalloc: TIERMALLOC_TIERS: tier 'dram': limit= is not supported in this \
                 version; ignored"
            );
            line.flush();
        }
    }
    if config.verbose {
        let mut line = crate::os::LineBuf::new();
        let _ = writeln!(
            line,
            "tiermalloc: tiers: dram (fast path: {} size classes up to {} KiB, larger blocks \
             mapped directly); {} placement rule(s) ignored without device tiers; \
             show_stats={}",
            fast::size_class::CLASS_COUNT,
            fast::size_class::SMALL_MAX >> 10,
            config.rule_count,
            config.show_stats
        );
        line.flush();
    }
}

/// The figures of tier `kind`, if configured.
pub fn stats(kind: Kind) -> Option<TierStats> {
    if kind != Kind::Dram {
        return None;
    }
    let mut s = TierStats::default();
    let mut small_allocated = 0u64;
    let mut small_freed = 0u64;
    fast::thread_heap::for_each_traffic(|t| {
        for class in 0..fast::size_class::CLASS_COUNT {
            let (allocated, freed) = (t.allocations[class].get(), t.frees[class].get());
            let size = fast::size_class::class_size(class) as u64;
            s.allocations += allocated;
            s.frees += freed;
            small_allocated += allocated * size;
            small_freed += freed * size;
        }
    });
    s.frees += fast::UNBOUND_FREES.get();
    small_freed += fast::UNBOUND_FREED_BYTES.get();
    s.allocations += large::LARGE_ALLOCATIONS.get();
    s.frees += large::LARGE_FREES.get();
    s.in_use = small_allocated.saturating_sub(small_freed) + large::LARGE_LIVE_BYTES.get();
    s.capacity = physical_memory();
    s.free_bytes = s.capacity.saturating_sub(s.in_use);
    s.largest_free = s.free_bytes;
    s.failures = FAILURES.get();
    Some(s)
}

fn physical_memory() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages > 0 && size > 0 {
        pages as u64 * size as u64
    } else {
        0
    }
}

/// Prints every configured tier's figures on stderr.
pub fn print_stats() {
    for kind in Kind::ALL {
        let Some(s) = stats(kind) else { continue };
        let mut line = crate::os::LineBuf::new();
        let _ = writeln!(
            line,
            "tiermalloc: {:<4} in_use {} B, capacity {} B, free {} B, largest_free {} B, \
             segments mapped {} B",
            kind.name(),
            s.in_use,
            s.capacity,
            s.free_bytes,
            s.largest_free,
            fast::heap::SEGMENT_BYTES.get()
        );
        line.flush();
        let _ = writeln!(
            line,
            "tiermalloc: {:<4} allocations {}, frees {}, failures {}, spilled_in {}, spilled_out {}",
            kind.name(),
            s.allocations,
            s.frees,
            s.failures,
            s.spilled_in,
            s.spilled_out
        );
        line.flush();
    }
}
