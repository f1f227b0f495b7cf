//! Lanes of the slabs: each size class has `LANES` independent lists of slabs, each under its
//! own lock, and every thread allocates from one lane (assigned round-robin at its first
//! allocation from a slab). Two threads allocating the same size on one tier then take different
//! locks and touch different slabs, instead of bouncing one class lock and its slabs'
//! descriptors between their cores (two threads on one tier paid 5-8x one thread's time per
//! pair with one list per class, `benches/device/throughput.c`).
//!
//! A slab belongs to the lane that made it for as long as it lives: its descriptor's class
//! byte holds the lane in its top bits (`Lane::key`), so a free — from any thread — finds the
//! slab's lane and lock with the same single atomic load that finds its class. Nothing about
//! the device changes: a lane is host metadata only, and a recovered slab joins lane 0.

use core::sync::atomic::{AtomicUsize, Ordering};

/// Lanes per class: the top two bits of a descriptor's class byte.
pub(crate) const LANES: usize = 4;
/// Bits of the class byte that hold the class (classes are 1..=44).
const CLASS_BITS: u32 = 6;
const CLASS_MASK: u8 = (1 << CLASS_BITS) - 1;

const _: () = assert!(super::CLASS_COUNT < 1 << CLASS_BITS);
const _: () = assert!(LANES << CLASS_BITS <= 256);

/// One lane of the slab lists: `0..LANES`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Lane(pub(crate) u8);

impl Lane {
    /// The descriptor byte of a slab of `class` in this lane (never 0: classes start at 1).
    #[inline]
    pub(crate) const fn key(self, class: usize) -> u8 {
        (self.0 << CLASS_BITS) | class as u8
    }

    /// The lane and class a non-zero descriptor byte names.
    #[inline]
    pub(crate) const fn of_key(key: u8) -> (Lane, usize) {
        (Lane(key >> CLASS_BITS), (key & CLASS_MASK) as usize)
    }

    /// This thread's lane: assigned round-robin at its first call, then fixed for the
    /// thread's life (a thread that exits leaves its lane to be shared by the next ones).
    #[inline]
    pub(crate) fn of_this_thread() -> Lane {
        let word = lane_word::get();
        if word >= LANES {
            return assign();
        }
        Lane(word as u8)
    }

    /// Puts this thread in `lane` (tests: two threads in known lanes).
    #[cfg(test)]
    pub(crate) fn set_for_this_thread(lane: Lane) {
        lane_word::set(lane.0 as usize);
    }
}

// The lane word: this thread's lane, or its initial value `LANES` before it has one (never
// anything else: only `assign` and the tests' `set_for_this_thread` write it).
crate::thread_slot::initial_exec_word!(
    lane_word,
    "__tiermalloc_device_lane",
    value = crate::device::slabs::lane::LANES
);

/// Lanes handed out so far (modulo `LANES`).
static NEXT: AtomicUsize = AtomicUsize::new(0);

#[cold]
fn assign() -> Lane {
    let lane = NEXT.fetch_add(1, Ordering::Relaxed) % LANES;
    lane_word::set(lane);
    Lane(lane as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_are_never_zero() {
        for lane in 0..LANES as u8 {
            for class in 1..=super::super::CLASS_COUNT {
                let key = Lane(lane).key(class);
                assert_ne!(key, 0);
                assert_eq!(Lane::of_key(key), (Lane(lane), class));
            }
        }
    }

    #[test]
    fn a_thread_keeps_its_lane() {
        let mine = Lane::of_this_thread();
        assert!((mine.0 as usize) < LANES);
        assert_eq!(Lane::of_this_thread(), mine, "fixed for the thread's life");
        let other = std::thread::spawn(|| {
            let first = Lane::of_this_thread();
            (first, Lane::of_this_thread())
        })
        .join()
        .unwrap();
        assert_eq!(other.0, other.1);
        assert!((other.0 .0 as usize) < LANES);
    }
}
