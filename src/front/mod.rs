//! The entry points: the C interface (`capi`, `tm_*`; `capi_evacuate`, `tm_evacuate`;
//! `capi_pool`, `tm_space_*` of the shared pool; `capi_persist`, durability, roots, offsets;
//! `capi_nodes`, `tm_pool_nodes`; `capi_info`, `tm_version` and `tm_stats_json`), the
//! unprefixed malloc family (`override_libc`), the Rust global allocator (`global_alloc`), the
//! Rust API (`api`; `api_persist`), the process start and exit hooks (`runtime`), the
//! statistics report (`report`, public: the `tiermalloc` command formats with it) and glibc's
//! introspection names (`malloc_info`: `mallinfo2`, `malloc_stats`, ...).
//!
//! They check arguments and turn results into the caller's conventions (`NULL` + `errno`,
//! `Result`); placement (`place`) picks the tier of a new block, `tier` finds the tier of an
//! existing one.

pub mod api;
pub mod api_persist;
pub mod capi;
pub mod capi_evacuate;
mod capi_info;
pub mod capi_nodes;
pub mod capi_persist;
pub mod capi_pool;
pub mod global_alloc;
#[cfg(feature = "override")]
mod malloc_info;
#[cfg(feature = "override")]
mod override_cxx;
#[cfg(all(feature = "override", target_arch = "x86_64"))]
mod override_cxx_new;
#[cfg(feature = "override")]
mod override_libc;
pub mod report;
mod runtime;
