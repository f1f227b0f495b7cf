//! Slabs cut ahead of need: a workload profile records, per lane and size class, the most
//! slabs a run had in use at once (`Slabs::slab_peaks`), and the next run's fill thread
//! (`profile::device_reserve`) cuts that many from the reserve it has just made present,
//! before the workload asks. Each is cut exactly as a slab made on demand is (its extent taken
//! from the heap under the heap lock, its marker written: `new_slab_for`), and waits, empty,
//! in its lane's partial list (`Slabs::add_ahead`): the workload's first allocation of the
//! class takes a slot from it under the class lock alone, without the heap lock, the cut, or
//! its device writes.
//!
//! On a persistent heap the cut writes the slab's marker: a slab with no live slot is free
//! space to a recovery scan (`persist::recover`, `Extent::EmptySlab`: "never given a block"),
//! the same state a slab made on demand is in between its cut and its first slot's header, so
//! a crash at any point, or an exit with slabs cut ahead and never used, recovers the same
//! blocks (`persist::tests`, every crash point of a run with slabs cut ahead).

use super::slabs::{self, Lane};
use super::DeviceTier;
use core::sync::atomic::Ordering;

/// How a tier's slabs were made: (on an allocation's path, cut ahead, cut ahead and used).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SlabCuts {
    pub on_demand: u64,
    pub ahead: u64,
    pub ahead_used: u64,
}

impl DeviceTier {
    /// Cuts slabs of `class` for lane `lane` until that lane's class has `target` slabs in
    /// use or waiting, at most `most`: how many it cut. Nothing for a lane or class that does
    /// not exist (a record from another version), or a tier inherited from a parent.
    pub(crate) fn cut_slabs_ahead(&self, lane: u8, class: usize, target: u32, most: u32) -> u32 {
        if lane as usize >= slabs::LANES
            || !(1..=slabs::CLASS_COUNT).contains(&class)
            || self.inherited.load(Ordering::Relaxed)
        {
            return 0;
        }
        let mut cut = 0;
        while cut < most
            && self.slabs.add_ahead(class, Lane(lane), target, |lane| {
                self.new_slab_for(class, lane, true)
            })
        {
            cut += 1;
        }
        cut
    }

    /// `f(lane, class, slabs)`: the most slabs of each lane and class in use at once.
    pub(crate) fn slab_peaks(&self, f: impl FnMut(Lane, usize, u32)) {
        self.slabs.slab_peaks(f);
    }

    /// How this tier's slabs were made.
    pub(crate) fn slab_cuts(&self) -> SlabCuts {
        let t = self.slabs.totals();
        SlabCuts {
            on_demand: t.cut_on_demand,
            ahead: t.ahead_cut,
            ahead_used: t.ahead_used,
        }
    }
}
