//! Keeps a counter and a message in a PMR tier across runs: the first run allocates them and
//! names the block by a root, every later run finds it through the root and counts on.
//!
//! ```sh
//! export TIERMALLOC_TIERS="dram;pmr:path=/dev/shm/pmr-example,size=16M,create"
//! cargo run --example pmr_counter   # run 1
//! cargo run --example pmr_counter   # run 2: finds run 1's block
//! ```

use tiermalloc::{Kind, Tier};

/// What the block holds: the runs so far and the offset of a message block (offsets, not
/// addresses, go inside persistent blocks: the region may map elsewhere next run).
#[repr(C)]
struct State {
    runs: u64,
    message: u64,
}

fn main() {
    let pmr = Tier::new(Kind::Pmr).expect("TIERMALLOC_TIERS must list a pmr tier");
    let state = match pmr.root("state") {
        Some(p) => p.cast::<State>(),
        None => {
            let message = b"written by the first run\0";
            let m = pmr
                .allocate_block(message.len())
                .expect("room for the message");
            // SAFETY: the block holds message.len() bytes.
            unsafe {
                m.as_ptr()
                    .copy_from_nonoverlapping(message.as_ptr(), message.len())
            };
            let s = pmr
                .allocate_block(core::mem::size_of::<State>())
                .expect("room");
            let state = s.cast::<State>();
            let offset = pmr.offset_of(m.as_ptr()).unwrap().0;
            // SAFETY: a fresh block of the State's size, 16-byte aligned.
            unsafe {
                state.as_ptr().write(State {
                    runs: 0,
                    message: offset,
                })
            };
            pmr.set_root("state", Some(s)).expect("a root");
            state
        }
    };
    // SAFETY: the root names a live State block of this tier.
    let state = unsafe { &mut *state.as_ptr() };
    state.runs += 1;
    let message = pmr.at_offset(tiermalloc::Offset(state.message)).unwrap();
    // SAFETY: the message block holds a NUL-terminated string.
    let text = unsafe { core::ffi::CStr::from_ptr(message.as_ptr().cast()) };
    pmr.persist(
        core::ptr::NonNull::from(&*state).cast(),
        core::mem::size_of::<State>(),
    )
    .expect("durable");
    println!("run {}: {}", state.runs, text.to_str().unwrap());
}
