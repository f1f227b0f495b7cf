//! tiermalloc: a memory allocator for machines whose memory comes in tiers (DRAM, CXL, NVMe
//! CMB/PMR), keeping every piece of its metadata in host DRAM.
//!
//! With no configuration it is a fast general-purpose allocator on DRAM. Configured tiers add
//! CXL memory and NVMe controller memory (a CMB, or a PMR, which survives power loss), each a
//! file or device mapped shared; the device is written only for the 16-byte header before each
//! block and never read by `malloc` or `free`.
//!
//! # Quick start
//!
//! **Rust**, as the global allocator (`Cargo.toml`: `tiermalloc = { path = "../tiermalloc" }`,
//! or a `git =` source):
//!
//! ```
//! #[global_allocator]
//! static A: tiermalloc::TierMalloc = tiermalloc::TierMalloc;
//!
//! fn main() {
//!     let v: Vec<u64> = (0..1000).collect();
//!     let dram = tiermalloc::stats(tiermalloc::Kind::Dram).expect("DRAM is always there");
//!     assert!(dram.in_use >= 8000 && v.len() == 1000);
//! }
//! ```
//!
//! Collections on a chosen tier, through [`Tier`] and `allocator-api2`'s `Allocator`
//! (`allocator-api2 = "0.2"`: the 0.2 series is the one tiermalloc implements):
//!
//! ```
//! use allocator_api2::vec::Vec;
//! use tiermalloc::{Kind, Tier};
//!
//! match Tier::new(Kind::Pmr) {
//!     Ok(pmr) => {
//!         let mut v: Vec<u64, Tier> = Vec::new_in(pmr);
//!         v.extend(0..1000);
//!         assert_eq!(tiermalloc::kind_of(v.as_ptr()), Some(Kind::Pmr));
//!     }
//!     // TIERMALLOC_TIERS does not list pmr in this process.
//!     Err(e) => eprintln!("{e}"),
//! }
//! ```
//!
//! **Any program**, with the command (`tiermalloc run`) or `LD_PRELOAD`:
//!
//! ```sh
//! tiermalloc run --stats -- python3 script.py
//! TIERMALLOC_TIERS="dram;cxl:path=/dev/dax0.0" LD_PRELOAD=libtiermalloc.so.0 ./server
//! ```
//!
//! **C**: `#include <tiermalloc.h>`, `tm_malloc(TM_PMR, n)`, build with
//! `pkg-config --cflags --libs tiermalloc` (the README's install recipe; `man 3 tiermalloc`).
//!
//! # Environment variables
//!
//! | variable | meaning |
//! |---|---|
//! | `TIERMALLOC_TIERS` | tiers in fallback order, `;`-separated, `KIND[:key=value,...]`; KIND `dram`, `cxl`, `cmb` or `pmr`; unset: `dram` alone |
//! | `TIERMALLOC_PLACE` | rules for plain `malloc`, `;`-separated, first match wins: `KIND:min=SIZE[,max=SIZE]`; no match: the first tier listed |
//! | `TIERMALLOC_SHOW_STATS` | boolean: the statistics report on stderr at exit (only while descriptor 2 is still the original stderr) |
//! | `TIERMALLOC_STATS_FILE` | the at-exit report into this file instead (`%p`: the pid) |
//! | `TIERMALLOC_STATS_FORMAT` | `text` or `json`; default: JSON if the file name ends in `.json` |
//! | `TIERMALLOC_STATS_SIGNAL` | a signal (`USR1`, `SIGUSR2`, `12`) on which the report is made, to the same destination |
//! | `TIERMALLOC_STATS_LIVE` | boolean: keep the report current in `/dev/shm/tiermalloc-live.PID` for `tiermalloc stats PID` |
//! | `TIERMALLOC_VERBOSE` | boolean: print the configuration understood at start-up |
//! | `TIERMALLOC_ON_ERROR` | `abort` (default) or `ignore`: what heap misuse (a double free, a bad free, a corrupted free list) does after its line on stderr |
//! | `TIERMALLOC_POOL` | `path=PATH[,size=SIZE][,offset=SIZE][,create]`: a device shared by processes and hosts, for named spaces (`tm_space_*`) |
//! | `TIERMALLOC_PROFILE` | a workload profile's name: record this run's DRAM peak, reserve it in the next run of the same name |
//! | `TIERMALLOC_PROFILE_MAX` | SIZE: the most a profile may reserve |
//! | `TIERMALLOC_PROFILE_DIR` | where profiles are recorded (default under `$XDG_STATE_HOME/tiermalloc/profiles`) |
//! | `TIERMALLOC_PROFILE_HUGE` | boolean: fill the reserve with `MADV_POPULATE_WRITE` on transparent huge pages (1) or small pages (0) instead of the default `UFFDIO_COPY` (no faults) |
//! | `TIERMALLOC_SECURE` | boolean: hardening that costs more (pages hand out their blocks in a random order) |
//! | `TIERMALLOC_EVACUATE_CHUNK` | SIZE: the bytes [`evacuate`] (`tm_evacuate`) moves per step (default `1M`) |
//! | `TIERMALLOC_EVACUATE_COPY` | `file` (default) or `mapped`: [`evacuate`] pre-copies file to file with `copy_file_range` where the kernel allows it, or always through mappings of the two files |
//! | `TIERMALLOC_EVACUATE_RT` | boolean, on unless set off: each chunk's hold of [`evacuate`] runs at real-time priority where allowed (`SCHED_FIFO` 1, then the thread's own policy again) |
//! | `TIERMALLOC_LIB` | (the command) the library `tiermalloc run` preloads |
//!
//! Booleans take `1 yes true on` or `0 no false off`, in any case; any other value is
//! refused with one line and counts as off. A bad entry anywhere gets one line on stderr naming
//! it and is skipped; the program runs on the rest.
//!
//! # Tier keys (`TIERMALLOC_TIERS`)
//!
//! | key | meaning |
//! |---|---|
//! | `path=FILE` | what to map: `/dev/daxX.Y`, a PCI BAR `/sys/bus/pci/devices/BDF/resourceN`, a regular file, a file in `/dev/shm`; `%p` stands for the pid (one file per process) |
//! | `size=SIZE` | bytes to use (default: the rest of the file or device after `offset`) |
//! | `offset=SIZE` | where in the file the tier starts (default 0) |
//! | `create` | create the regular file, or extend it, to `size` |
//! | `keep` | leave a `%p` file in place (otherwise unlinked once mapped: none is left behind) |
//! | `numa=N` | take the tier from NUMA node N (CXL memory onlined as a node) instead of a file |
//! | `limit=SIZE` | the most bytes the tier serves; on `dram` too (then plain requests spill to the next tier) |
//! | `fit=best` / `fit=worst` | which free extent a block of 4 KiB or more takes (also [`set_fit`], `tm_set_fit`) |
//! | `spare=FILE` | where [`evacuate`] (`tm_evacuate`) moves the tier when given no target |
//! | `persist` / `fresh` / `format` | flags: recover the heap the region holds (the default on `pmr`, but for a `%p` file without `keep`); format a region holding a tiermalloc heap or zeroes; overwrite whatever a regular file holds |
//!
//! Each key may appear once per tier.
//!
//! A tier that is full or at its limit passes plain requests to the next tier listed
//! (`spilled_out`/`spilled_in`); an explicit request on one tier (`tm_malloc(kind, ..)`,
//! [`Tier`]) never spills.
//!
//! # Sizes
//!
//! Digits, an optional fraction, an optional unit, no spaces. Units are binary multiples
//! however they are spelt: `K`, `KB` and `KiB` are 1024 bytes (any case), `M`/`MB`/`MiB`
//! 2^20, `G`/`GB`/`GiB` 2^30, `T`/`TB`/`TiB` 2^40, `B` one byte. A fraction is cut to whole
//! bytes: `1.5G` is 1610612736, `0.1K` is 102. Anything else (`4 K`, `1e3`, `-1`) is refused.
//!
//! # Statistics
//!
//! [`stats`] (`tm_get_stats` in C) gives a tier's capacity, bytes in use and free, its largest
//! free block, and counts. The report ([`print_stats`], [`report`], `tm_stats_json`, the
//! variables above, `tiermalloc stats`) adds the process's pid and name, each tier's peak,
//! the address space it reserved (which is not memory in use), and where DRAM's capacity comes
//! from: physical memory, the cgroup's memory limit, or `limit=`.
//!
//! # Layers
//!
//! The source tree shows the layers, each importing only from those below it; ARCHITECTURE.md
//! (in the repository) walks through them, the paths of `malloc` and `free`, and where each
//! capability to come belongs:
//!
//! | layer | modules |
//! |---|---|
//! | entry points | `front` (`capi`, `capi_info`, `override_libc`, `global_alloc`, `api`, `runtime`, `report`) |
//! | placement | `place` (which tier serves a request, spilling) |
//! | the tier interface | `tier` (`Tier`, the tiers by kind, dispatch of a pointer to its tier) |
//! | DRAM tier | `dram` (`fast/` small blocks, `large`, `budget`) |
//! | device tiers | `device` (`extent_heap/`, `slabs`, `header`, `fork`, `evacuate/`) |
//! | shared pool | `pool` (named spaces on a device shared by processes and hosts; its C functions in `front::capi_pool`) |
//! | workload profiles | `profile` (seed 003: DRAM reserved from a workload's recorded peak; a memory source of the DRAM tier) |
//! | foundations | `pagemap`, `backend` (with `file_space`, `problem`; `device_sigbus`), `meta`, `thread_slot`, `futex`, `futex_mutex`, `device_wait`, `userfaultfd`, `os`, `chunk`, `stats`, `config`, `kind`, `misuse`, `foreign`, `cgroup`, `live`, `liveness`, `textbuf`, `sync`, `lockfree` |
//!
//! Room is left by name for `device/persist` (persistent tiers) and `pool/` (a device shared
//! by processes: named spaces, lending).
//!
//! Only `sync` and `lockfree` are built under `--cfg loom`, where their models run; everything
//! else needs `const` statics, mmap and thread-local storage, which loom cannot model.

#![cfg_attr(loom, allow(dead_code))]

// The loom-built part.
mod lockfree;
mod sync;

// Every module but `sync` and `lockfree` needs `const` statics, mmap and thread-local
// storage, which loom cannot model: not built under loom.
#[cfg(not(loom))]
mod backend;
#[cfg(not(loom))]
mod cgroup;
#[cfg(not(loom))]
mod chunk;
#[cfg(not(loom))]
mod config;
#[cfg(not(loom))]
mod device;
#[cfg(not(loom))]
mod device_sigbus;
#[cfg(not(loom))]
mod device_wait;
#[cfg(not(loom))]
mod dram;
#[cfg(not(loom))]
mod foreign;
#[cfg(not(loom))]
mod front;
#[cfg(not(loom))]
mod futex;
#[cfg(not(loom))]
mod futex_mutex;
#[cfg(not(loom))]
mod kind;
#[cfg(not(loom))]
mod live;
#[cfg(not(loom))]
mod liveness;
#[cfg(not(loom))]
mod meta;
#[cfg(not(loom))]
mod misuse;
#[cfg(not(loom))]
mod os;
#[cfg(not(loom))]
mod pagemap;
#[cfg(not(loom))]
mod place;
#[cfg(not(loom))]
pub mod pool;
#[cfg(not(loom))]
mod profile;
#[cfg(not(loom))]
mod stats;
#[cfg(not(loom))]
mod textbuf;
#[cfg(not(loom))]
mod thread_slot;
#[cfg(not(loom))]
mod tier;
#[cfg(not(loom))]
#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
mod unwind_lazy;
#[cfg(not(loom))]
mod userfaultfd;

#[cfg(not(loom))]
pub use front::api::{
    evacuate, kind_of, print_stats, set_fit, stats, EvacuateError, Evacuation, Fit, Kind, Tier,
    TierError, TierStats,
};
#[cfg(not(loom))]
pub use front::api_persist::{
    check_file, check_image, check_image_with_progress, extent_map, free_block, heap_region_len,
    repair_file, Blocks, ExtentKind, HeapReport, MapExtent, Offset, PersistError, Repaired,
};
// The C functions of the newer C APIs, callable from Rust for tests that check their C
// semantics; not part of the documented Rust API. (The malloc family and the core tm_*,
// `front::capi`, are not: Rust code uses the Rust API.)
#[cfg(not(loom))]
#[doc(hidden)]
pub use front::capi_evacuate;
#[cfg(not(loom))]
#[doc(hidden)]
pub use front::capi_nodes;
#[cfg(not(loom))]
#[doc(hidden)]
pub use front::capi_persist;
#[cfg(not(loom))]
#[doc(hidden)]
pub use front::capi_pool;
#[cfg(not(loom))]
pub use front::global_alloc::TierMalloc;
#[cfg(not(loom))]
pub use front::report;

#[cfg(all(test, not(loom)))]
mod test_rng;

/// The README's Rust examples, run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
