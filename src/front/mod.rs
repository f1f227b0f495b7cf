//! The entry points: the C interface (`capi`, `tm_*`), the unprefixed malloc family
//! (`override_libc`), the Rust global allocator (`global_alloc`), the Rust API (`api`), the
//! process start and exit hooks (`runtime`), the statistics report (`report`, public: the
//! `tiermalloc` command formats with it) and the version and JSON functions of the C
//! interface (`capi_info`).
//!
//! They check arguments and turn results into the caller's conventions (`NULL` + `errno`,
//! `Result`); placement (`place`) picks the tier of a new block, `tier` finds the tier of an
//! existing one.

pub mod api;
pub(crate) mod capi;
mod capi_info;
pub mod global_alloc;
#[cfg(feature = "override")]
mod override_libc;
pub mod report;
mod runtime;
