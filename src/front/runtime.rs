//! Process start and exit: opening the configured tiers as soon as the environment is there,
//! and printing statistics at exit when `TIERMALLOC_SHOW_STATS=1`.
//!
//! Both hooks are entries in `.init_array`/`.fini_array`, so they need no allocation to
//! register (unlike `atexit` from inside `malloc`), and work for the shared library, the static
//! library and a Rust program using `TierMalloc` alike.

use crate::{config, device, place, profile};

extern "C" fn at_start() {
    place::init();
    // Registration allocates: from here, never from inside `malloc`.
    device::fork::register_fork_handlers();
    profile::start();
}

extern "C" fn at_exit() {
    if config::get().show_stats {
        super::report::print_stats();
    }
    profile::finish();
}

#[used]
#[link_section = ".init_array"]
static AT_START: extern "C" fn() = at_start;

#[used]
#[link_section = ".fini_array"]
static AT_EXIT: extern "C" fn() = at_exit;
