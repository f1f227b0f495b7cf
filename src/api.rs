//! The Rust API: tiers as `Kind`, statistics as `TierStats`, errors as `Result`.
//!
//! ```
//! let stats = tiermalloc::stats(tiermalloc::Kind::Dram).unwrap();
//! assert!(stats.capacity > 0);
//! ```

pub use crate::config::{Fit, Kind};
use crate::place;

pub use crate::stats::TierStats;

/// Why a tier operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierError {
    /// The kind is not configured in this process.
    NotConfigured(Kind),
}

impl core::fmt::Display for TierError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TierError::NotConfigured(k) => write!(f, "tier {} is not configured", k.name()),
        }
    }
}

/// The statistics of tier `kind`.
pub fn stats(kind: Kind) -> Result<TierStats, TierError> {
    place::stats(kind).ok_or(TierError::NotConfigured(kind))
}

/// Prints every configured tier's statistics on stderr.
pub fn print_stats() {
    place::print_stats()
}

/// The tier of a block, `None` if it is not ours.
pub fn kind_of<T: ?Sized>(p: *const T) -> Option<Kind> {
    place::kind_of(p.cast())
}
