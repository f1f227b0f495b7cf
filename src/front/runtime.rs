//! Process start and exit: opening the configured tiers as soon as the environment is there,
//! setting up the statistics report's destinations, and making the report at exit
//! (`report`: when `TIERMALLOC_SHOW_STATS=1` or `TIERMALLOC_STATS_FILE` asks for it).
//!
//! Both hooks are entries in `.init_array`/`.fini_array`, so they need no allocation to
//! register (unlike `atexit` from inside `malloc`), and work for the shared library, the static
//! library and a Rust program using `TierMalloc` alike.

use super::report;
use crate::{cgroup, device, place, profile};

extern "C" fn at_start() {
    cgroup::init();
    place::init();
    // Registration allocates: from here, never from inside `malloc`.
    device::fork::register_fork_handlers();
    report::init();
    profile::start();
}

extern "C" fn at_exit() {
    report::at_exit();
    profile::finish();
}

#[used]
#[link_section = ".init_array"]
static AT_START: extern "C" fn() = at_start;

#[used]
#[link_section = ".fini_array"]
static AT_EXIT: extern "C" fn() = at_exit;
