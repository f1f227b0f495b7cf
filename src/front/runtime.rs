//! Process start and exit: opening the configured tiers as soon as the environment is there,
//! setting up the statistics report's destinations; at exit, making the report (`report`: when
//! `TIERMALLOC_SHOW_STATS=1` or `TIERMALLOC_STATS_FILE` asks for it) and closing the device
//! tiers' heaps cleanly (`device::close_all`).
//!
//! Both hooks are entries in `.init_array`/`.fini_array`, so they need no allocation to
//! register (unlike `atexit` from inside `malloc`), and work for the shared library, the static
//! library and a Rust program using `TierMalloc` alike.

use super::report;
use crate::{cgroup, device, place, profile};

extern "C" fn at_start() {
    cgroup::init();
    profile::spawn_early();
    place::init();
    // Registration allocates: from here, never from inside `malloc`.
    device::fork::register_fork_handlers();
    report::init();
    profile::start();
    device::heartbeat::start();
}

extern "C" fn at_exit() {
    profile::stop_filling();
    report::at_exit();
    profile::finish();
    // Persistent heaps marked closed cleanly, after everything else this hook does.
    device::close_all();
}

#[used]
#[link_section = ".init_array"]
pub(crate) static AT_START: extern "C" fn() = at_start;

#[used]
#[link_section = ".fini_array"]
pub(crate) static AT_EXIT: extern "C" fn() = at_exit;

/// A static link (`libtiermalloc.a`) takes from the archive only the objects a program refers
/// to, and nothing refers to the two entries above: without this, a statically linked program
/// never opened its tiers. The C entry points (`capi`, `override_libc`) each keep this
/// reference, so the hooks come with them.
pub(crate) type Hooks = [&'static extern "C" fn(); 2];
pub(crate) const HOOKS: Hooks = [&AT_START, &AT_EXIT];
