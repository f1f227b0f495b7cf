//! tiermalloc: a memory allocator for machines whose memory comes in tiers (DRAM, CXL, NVMe
//! CMB/PMR), keeping every piece of its metadata in host DRAM.
//!
//! The source tree shows the layers, each importing only from those below it; ARCHITECTURE.md
//! (in the repository) walks through them, the paths of `malloc` and `free`, and where each
//! capability to come belongs:
//!
//! | layer | modules |
//! |---|---|
//! | entry points | `front` (`capi`, `override_libc`, `global_alloc`, `api`, `runtime`, `report`) |
//! | placement | `place` (which tier serves a request, spilling) |
//! | the tier interface | `tier` (`Tier`, the tiers by kind, dispatch of a pointer to its tier) |
//! | DRAM tier | `dram` (`fast/` small blocks, `large`, `budget`) |
//! | device tiers | `device` (`extent_heap/`, `slabs`, `header`, `fork`, `evacuate/`) |
//! | shared pool | `pool` (named spaces on a device shared by processes and hosts; its C functions in `front::capi_pool`) |
//! | workload profiles | `profile` (seed 003: DRAM reserved from a workload's recorded peak; a memory source of the DRAM tier) |
//! | foundations | `pagemap`, `backend` (with `device_space`, `device_sigbus`), `meta`, `thread_slot`, `os`, `chunk`, `stats`, `config`, `kind`, `misuse`, `foreign`, `sync`, `lockfree` |
//!
//! Room is left by name for `device/persist` (persistent tiers) and `pool/` (a device shared
//! by processes: named spaces, lending).
//!
//! Only `sync` and `lockfree` are built under `--cfg loom`, where their models run; everything
//! else needs `const` statics, mmap and thread-local storage, which loom cannot model.

#![cfg_attr(loom, allow(dead_code))]

// The loom-built part.
pub mod lockfree;
mod sync;

/// Declares the modules that are not built under loom: one `cfg` for all of them.
macro_rules! not_under_loom {
    ($($item:item)*) => {
        $(#[cfg(not(loom))] $item)*
    };
}

not_under_loom! {
    mod backend;
    mod chunk;
    mod config;
    mod device;
    mod device_sigbus;
    mod device_space;
    mod dram;
    mod foreign;
    mod front;
    mod kind;
    mod meta;
    mod misuse;
    mod os;
    mod pagemap;
    mod place;
    pub mod pool;
    mod profile;
    mod stats;
    mod thread_slot;
    mod tier;

    pub use front::api::{
        evacuate, kind_of, print_stats, stats, EvacuateError, Evacuation, Fit, Kind, Tier,
        TierError, TierStats,
    };
    pub use front::api_persist::{check_file, free_block, Blocks, HeapReport, Offset, PersistError};
    pub use front::capi;
    pub use front::capi_evacuate;
    pub use front::capi_persist;
    pub use front::capi_nodes;
    pub use front::capi_pool;
    pub use front::global_alloc::TierMalloc;
}

#[cfg(all(test, not(loom)))]
mod test_rng;
