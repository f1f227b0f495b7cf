//! tiermalloc: a memory allocator for machines whose memory comes in tiers (DRAM, CXL, NVMe
//! CMB/PMR), keeping every piece of its metadata in host DRAM.
//!
//! Layers, each importing only from those below it (see DESIGN.md):
//!
//! | layer | modules |
//! |---|---|
//! | front ends | `capi` (`tm_*`), `override_libc` (malloc family), `global_alloc`, `api`, `runtime` |
//! | placement | `place` |
//! | tiers | `dram` (dispatch), `fast` (small blocks), `large` (mapped blocks); `tier` (a device tier: `heap` + `device_slabs` + headers) |
//! | extent heap | `heap` (host-metadata best/worst fit, coalescing) |
//! | address map | `pagemap` |
//! | memory sources | `backend` (device mappings), `meta` (metadata arena), `thread_slot` (TLS), `os` |
//! | foundations | `sync`, `lockfree`, `stats`, `dram_budget`, `config` |
//!
//! Only `sync` and `lockfree` are built under `--cfg loom`: their models run there.

#![cfg_attr(loom, allow(dead_code))]

mod lockfree;
mod sync;

// One `#[cfg(not(loom))]` per module rather than a macro around them: cbindgen reads module
// declarations literally and would not find `capi` inside a macro call.
#[cfg(not(loom))]
mod api;
#[cfg(not(loom))]
mod backend;
#[cfg(not(loom))]
mod capi;
#[cfg(not(loom))]
mod capi_info;
#[cfg(not(loom))]
mod cgroup;
#[cfg(not(loom))]
mod config;
#[cfg(not(loom))]
mod device_slabs;
#[cfg(not(loom))]
mod dram;
#[cfg(not(loom))]
mod dram_budget;
#[cfg(not(loom))]
mod fast;
#[cfg(not(loom))]
mod global_alloc;
#[cfg(not(loom))]
pub(crate) mod heap;
#[cfg(not(loom))]
mod large;
#[cfg(not(loom))]
mod live;
#[cfg(not(loom))]
mod meta;
#[cfg(not(loom))]
mod os;
#[cfg(all(not(loom), feature = "override"))]
mod override_libc;
#[cfg(not(loom))]
mod pagemap;
#[cfg(not(loom))]
mod place;
#[cfg(not(loom))]
pub mod report;
#[cfg(not(loom))]
mod runtime;
#[cfg(not(loom))]
mod stats;
#[cfg(all(test, not(loom)))]
mod test_rng;
#[cfg(not(loom))]
mod textbuf;
#[cfg(not(loom))]
mod thread_slot;
#[cfg(not(loom))]
mod tier;

#[cfg(not(loom))]
pub use api::{kind_of, print_stats, stats, Fit, Kind, Tier, TierError, TierStats};
#[cfg(not(loom))]
pub use global_alloc::TierMalloc;
