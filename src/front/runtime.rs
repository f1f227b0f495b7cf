//! Process start and exit: opening the configured tiers as soon as the environment is there;
//! at exit, printing statistics when `TIERMALLOC_SHOW_STATS=1` and closing the device tiers'
//! heaps cleanly (`device::close_all`).
//!
//! Both hooks are entries in `.init_array`/`.fini_array`, so they need no allocation to
//! register (unlike `atexit` from inside `malloc`), and work for the shared library, the static
//! library and a Rust program using `TierMalloc` alike.

use crate::{config, device, place};

extern "C" fn at_start() {
    place::init();
    // Registration allocates: from here, never from inside `malloc`.
    device::fork::register_fork_handlers();
}

extern "C" fn at_exit() {
    if config::get().show_stats {
        super::report::print_stats();
    }
    // Persistent heaps marked closed cleanly, after everything else this hook does.
    device::close_all();
}

#[used]
#[link_section = ".init_array"]
static AT_START: extern "C" fn() = at_start;

#[used]
#[link_section = ".fini_array"]
static AT_EXIT: extern "C" fn() = at_exit;
