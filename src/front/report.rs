//! The statistics report: every configured tier's figures on stderr, two lines each
//! (`tm_print_stats`, `tiermalloc::print_stats`, `TIERMALLOC_SHOW_STATS=1` at exit).

use crate::dram;
use crate::kind::Kind;
use crate::os::LineBuf;
use crate::tier;
use core::fmt::Write;

/// Prints every configured tier's figures on stderr.
pub fn print_stats() {
    for kind in Kind::ALL {
        let Some(s) = tier::stats(kind) else { continue };
        let mut line = LineBuf::new();
        let _ = write!(
            line,
            "tiermalloc: {:<4} in_use {} B, capacity {} B, free {} B, largest_free {} B",
            kind.name(),
            s.in_use,
            s.capacity,
            s.free_bytes,
            s.largest_free,
        );
        if kind == Kind::Dram {
            let _ = write!(line, ", segments mapped {} B", dram::segments_mapped());
        }
        let _ = writeln!(line);
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
        if kind == Kind::Dram {
            crate::profile::report();
        }
    }
}
