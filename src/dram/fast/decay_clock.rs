//! The clock a thread heap's decay window runs on: the heap's thread's own CPU time.
//!
//! A window measured on the wall clock ends at a point of the program's work that depends on
//! how much of the machine the process got meanwhile: on a loaded machine a 20 ms window spans
//! less work, so the same deterministic program purges different slices in different runs and
//! faults them back (lua at load 14-28, BENCHMARKS.md "Session 8: why ours' time varies
//! across reps": 33-53 k minor faults per run on the wall clock, 29-33 k on this one, glibc's
//! 28.5 k). Measured on the thread's CPU time, a window spans the same work in every run,
//! whatever else runs. A thread that sleeps spends no CPU time, so a window also ends once a
//! longer bound has passed on the wall clock (`open`'s `wall_max_ns`: 1 s for the heaps, as
//! long as the large-mapping cache's decay): an idle thread's memory still goes back at its
//! next slow path, and only a thread getting under `length / wall_max` of a CPU (2 %) sees its
//! windows end on the wall clock.
//!
//! The thread CPU clock is a system call (`CLOCK_THREAD_CPUTIME_ID` has no vDSO path), the
//! coarse wall clock is not, and a thread's CPU time never advances faster than the wall
//! clock: so `expired` reads the CPU clock only once the window's length has passed on the
//! wall clock, and after a read that finds `r` ns of CPU time left it waits `r` ns of wall time
//! before the next. One read per window on an idle machine; a few when the thread gets a
//! small share of a CPU. Opening a window is one read.
//!
//! A heap changes threads (a thread exits, the next new one adopts its heap): a CPU clock
//! reading that leaves more than a window's length to go is another thread's clock, and ends
//! the window (its length has passed on the wall clock by then).
//!
//! Invariant: `wall_due == 0` ⇔ no window is open; while one is, `cpu_due` is when it ends on
//! the CPU clock of the thread that opened it, `length` its length, `wall_max` when it ends on
//! the wall clock at the latest, and `wall_due <= wall_max` the earliest wall time at which it
//! can have ended.

use crate::os;

/// A decay window (see the module comment). All-zero is "no window open" (heaps start as
/// zeroed memory).
pub struct DecayClock {
    wall_due: u64,
    wall_max: u64,
    cpu_due: u64,
    length: u64,
}

impl DecayClock {
    /// Whether a window is open.
    #[inline(always)]
    pub fn is_open(&self) -> bool {
        self.wall_due != 0
    }

    /// Opens a window of `length_ns` of the calling thread's CPU time from now, or of
    /// `wall_max_ns` (`>= length_ns`) on the wall clock, whichever ends first.
    pub fn open(&mut self, length_ns: u64, wall_max_ns: u64) {
        let wall = os::coarse_now_ns();
        self.cpu_due = thread_cpu_ns() + length_ns;
        self.wall_due = wall + length_ns;
        self.wall_max = wall + wall_max_ns;
        self.length = length_ns;
    }

    /// Closes the window.
    pub fn close(&mut self) {
        self.wall_due = 0;
    }

    /// Whether the open window has ended (the calling thread spent its length on a CPU).
    pub fn expired(&mut self) -> bool {
        let wall = os::coarse_now_ns();
        if wall < self.wall_due {
            return false;
        }
        if wall >= self.wall_max {
            return true;
        }
        let cpu = thread_cpu_ns();
        if cpu >= self.cpu_due || self.cpu_due - cpu > self.length {
            return true;
        }
        // At least the CPU time left must pass on the wall clock first.
        self.wall_due = (wall + (self.cpu_due - cpu)).min(self.wall_max);
        false
    }
}

/// The calling thread's CPU time in ns.
fn thread_cpu_ns() -> u64 {
    os::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window is on CPU time: sleeping through its length on the wall clock does not end
    /// it, spending it on the CPU does; sleeping through the wall-clock bound does too.
    #[test]
    fn a_window_ends_on_cpu_time_or_the_wall_bound() {
        let mut clock = DecayClock {
            wall_due: 0,
            wall_max: 0,
            cpu_due: 0,
            length: 0,
        };
        assert!(!clock.is_open());
        let length = 30_000_000;
        let wall_max = 10 * length;
        clock.open(length, wall_max);
        assert!(clock.is_open());
        std::thread::sleep(std::time::Duration::from_nanos(3 * length));
        assert!(!clock.expired(), "a window ended while its thread slept");
        let start = thread_cpu_ns();
        let mut spins = 0u64;
        while thread_cpu_ns() - start < length + 10_000_000 {
            spins = core::hint::black_box(spins + 1);
        }
        assert!(clock.expired(), "a window outlived its length of CPU time");
        clock.close();
        assert!(!clock.is_open());

        clock.open(length, wall_max);
        std::thread::sleep(std::time::Duration::from_nanos(wall_max + 10_000_000));
        assert!(clock.expired(), "a window outlived its wall-clock bound");

        // Opened by a thread that spent more CPU time than this one has: another thread's
        // clock, so it ends once its length has passed on the wall clock.
        clock.open(length, wall_max);
        clock.cpu_due += 1_000_000_000_000;
        std::thread::sleep(std::time::Duration::from_nanos(length + 10_000_000));
        assert!(
            clock.expired(),
            "a window adopted by another thread outlived its length"
        );
    }
}
