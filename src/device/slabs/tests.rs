//! Unit tests of the slabs, against a stand-in for the extent heap: class mapping, filling and
//! retiring slabs, refused frees, a full tier, and random traffic checked by `check_invariants`.

use super::*;
use crate::test_rng::Rng;
use std::cell::RefCell;
use std::vec::Vec;

/// Slabs over a region of `windows` windows, with a stand-in for the extent heap that
/// hands out free windows and takes retired ones back.
struct Fixture {
    slabs: Slabs,
    free_windows: RefCell<Vec<u64>>,
    retired: RefCell<u32>,
}

impl Fixture {
    fn new(windows: u64) -> Fixture {
        Fixture {
            slabs: Slabs::new(windows * SLAB_BYTES).unwrap(),
            free_windows: RefCell::new((0..windows).rev().map(|w| w * SLAB_BYTES).collect()),
            retired: RefCell::new(0),
        }
    }

    fn alloc(&self, size: usize) -> Option<(u64, u64)> {
        let class = Slabs::class_of(size, 16).unwrap();
        self.slabs.alloc(class, |lane| {
            let offset = self.free_windows.borrow_mut().pop()?;
            self.slabs.claim(offset, class, lane);
            Some(offset)
        })
    }

    fn free(&self, offset: u64) -> SlabFree {
        let mut marked = false;
        let result = self.slabs.free(
            offset,
            || marked = true,
            |slab| {
                self.slabs.unclaim(slab);
                self.free_windows.borrow_mut().push(slab);
                *self.retired.borrow_mut() += 1;
            },
        );
        assert_eq!(
            marked,
            matches!(result, SlabFree::Freed),
            "header marked iff freed"
        );
        result
    }
}

#[test]
fn sizes_map_to_the_smallest_class_that_holds_them() {
    assert_eq!(Slabs::class_of(0, 16), Some(1));
    assert_eq!(Slabs::class_of(16, 16), Some(1));
    assert_eq!(Slabs::class_of(17, 8), Some(2));
    assert_eq!(Slabs::class_of(512, 16), Some(EXACT_CLASSES));
    assert_eq!(Slabs::class_of(513, 16), Some(EXACT_CLASSES + 1));
    assert_eq!(usable_of(EXACT_CLASSES + 1), 640);
    assert_eq!(Slabs::class_of(SLAB_MAX_USABLE, 16), Some(CLASSES));
    assert_eq!(
        Slabs::class_of(SLAB_MAX_USABLE + 1, 16),
        None,
        "an extent of its own"
    );
    assert_eq!(
        Slabs::class_of(100, 32),
        None,
        "aligned beyond 16: an extent"
    );
    for size in 0..=SLAB_MAX_USABLE {
        let class = Slabs::class_of(size, 16).unwrap();
        assert!(usable_of(class) >= size as u64);
        assert!(
            class == 1 || usable_of(class - 1) < size as u64,
            "size {size}"
        );
    }
}

#[test]
fn a_slab_fills_then_the_next_is_made_and_empty_slabs_are_retired() {
    let fx = Fixture::new(4);
    let slots = slots_of(1);
    let blocks: Vec<_> = (0..slots + 1).map(|_| fx.alloc(10).unwrap()).collect();
    fx.slabs.check_invariants();
    assert!(
        blocks[..slots].iter().all(|&(o, _)| o < SLAB_BYTES),
        "first slab first"
    );
    assert_eq!(
        blocks[slots].0,
        SLAB_BYTES + SLAB_MARKER,
        "then a second slab, after its marker"
    );
    assert_eq!(blocks[0].1, slot_bytes(1));
    let t = fx.slabs.totals();
    assert_eq!((t.allocations, t.frees), (slots as u64 + 1, 0));
    assert_eq!(
        t.idle_bytes,
        2 * SLAB_BYTES - (slots as u64 + 1) * slot_bytes(1)
    );
    for &(offset, len) in &blocks {
        assert_eq!(fx.slabs.slot_len(offset), Some(Some(len)));
        assert!(matches!(fx.free(offset), SlabFree::Freed));
        fx.slabs.check_invariants();
    }
    assert_eq!(*fx.retired.borrow(), 2, "both slabs went back to the heap");
    assert_eq!(fx.slabs.totals().idle_bytes, 0);
    assert!(!fx.slabs.holds_live(blocks[0].0));
}

#[test]
fn bad_frees_are_refused_and_change_nothing() {
    let fx = Fixture::new(2);
    let (a, _) = fx.alloc(100).unwrap();
    let (b, _) = fx.alloc(100).unwrap();
    assert!(matches!(
        fx.free(a + 16),
        SlabFree::Refused(FreeError::NotAllocated)
    ));
    assert!(matches!(fx.free(a), SlabFree::Freed));
    assert!(matches!(
        fx.free(a),
        SlabFree::Refused(FreeError::DoubleFree)
    ));
    assert_eq!(fx.slabs.slot_len(a), Some(None));
    assert!(
        matches!(fx.free(SLAB_BYTES), SlabFree::NotSlab),
        "no slab in that window"
    );
    assert!(
        matches!(fx.free(10 * SLAB_BYTES), SlabFree::NotSlab),
        "past the region"
    );
    fx.slabs.check_invariants();
    assert!(matches!(fx.free(b), SlabFree::Freed));
    assert_eq!(*fx.retired.borrow(), 1);
}

#[test]
fn the_tier_full_of_slabs_fails_and_recovers() {
    let fx = Fixture::new(1);
    let mut blocks = Vec::new();
    while let Some((offset, _)) = fx.alloc(4000) {
        blocks.push(offset);
    }
    assert_eq!(blocks.len(), slots_of(CLASSES));
    assert!(
        fx.alloc(10).is_none(),
        "no window left for a slab of another class"
    );
    assert!(matches!(fx.free(blocks.pop().unwrap()), SlabFree::Freed));
    assert!(
        fx.alloc(4000).is_some(),
        "a freed slot of a full slab serves again"
    );
    fx.slabs.check_invariants();
}

#[test]
fn random_traffic_matches_a_model() {
    let fx = Fixture::new(64);
    let mut rng = Rng(0x51ab_5eed);
    let mut live: Vec<(u64, u64)> = Vec::new();
    for step in 0..50_000 {
        if live.len() < 2_000 && rng.below(5) < 3 {
            let size = if rng.below(2) == 0 {
                rng.below(513)
            } else {
                rng.below(4081)
            };
            let Some(block) = fx.alloc(size as usize) else {
                continue;
            };
            assert!(block.1 >= size + HEADER);
            assert!(!live
                .iter()
                .any(|&(o, l)| o < block.0 + block.1 && block.0 < o + l));
            live.push(block);
        } else if !live.is_empty() {
            let (offset, len) = live.swap_remove(rng.below(live.len() as u64) as usize);
            assert_eq!(fx.slabs.slot_len(offset), Some(Some(len)));
            assert!(matches!(fx.free(offset), SlabFree::Freed), "step {step}");
        }
        if step % 5_000 == 0 {
            fx.slabs.check_invariants();
        }
    }
    for (offset, _) in live {
        assert!(matches!(fx.free(offset), SlabFree::Freed));
    }
    fx.slabs.check_invariants();
    assert_eq!(fx.free_windows.borrow().len(), 64, "every slab retired");
    let t = fx.slabs.totals();
    assert_eq!((t.idle_bytes, t.allocations), (0, t.frees));
}

/// `adopt` (recovery) takes a slab with its live slots, and refuses a bitmap naming a slot
/// past the class's last one, or none at all: for classes whose last slot ends a bitmap word
/// inside, on and past its boundary.
#[test]
fn adopt_takes_live_slots_and_refuses_bits_past_the_last_slot() {
    for class in [1, 2, 3, 16, 32, 33, CLASSES] {
        let fx = Fixture::new(4);
        let slots = slots_of(class);
        let mut live = [0u64; SLAB_WORDS];
        assert!(
            !fx.slabs.adopt(0, class, &live, &headers_of(class, &live)),
            "class {class}: no live slot"
        );
        for past in [slots, slots + 1, WORDS * 64 - 1] {
            if past < WORDS * 64 {
                live = [0; SLAB_WORDS];
                live[0] = 1;
                live[past / 64] |= 1 << (past % 64);
                assert!(
                    !fx.slabs.adopt(0, class, &live, &headers_of(class, &live)),
                    "class {class}: bit {past}"
                );
            }
        }
        live = [0; SLAB_WORDS];
        live[(slots - 1) / 64] |= 1 << ((slots - 1) % 64);
        live[0] |= 1;
        assert!(
            fx.slabs
                .adopt(SLAB_BYTES, class, &live, &headers_of(class, &live)),
            "class {class}: first and last"
        );
        fx.slabs.check_invariants();
    }
}

/// Slabs cut ahead wait empty behind the slab allocations take from (second in the lane's
/// partial list), are taken without a new slab, count as in use only once a slot is taken
/// (the peaks a profile records), and stop at their target; the invariants hold throughout.
#[test]
fn slabs_cut_ahead_are_taken_without_a_new_slab_and_counted_once_used() {
    let fx = Fixture::new(8);
    let lane = Lane::of_this_thread();
    let ahead = |target| {
        fx.slabs.add_ahead(1, lane, target, |lane| {
            let offset = fx.free_windows.borrow_mut().pop()?;
            fx.slabs.claim(offset, 1, lane);
            fx.slabs.note_ahead();
            Some(offset)
        })
    };
    let first = fx.alloc(10).unwrap();
    assert!(ahead(3) && ahead(3));
    assert!(!ahead(3), "one slab in use and two ahead: the target");
    fx.slabs.check_invariants();
    assert_eq!(fx.slabs.ahead_unused_bytes(), 2 * SLAB_BYTES);
    let peaks = |fx: &Fixture| {
        let mut v = Vec::new();
        fx.slabs.slab_peaks(|l, class, n| v.push((l, class, n)));
        v
    };
    assert_eq!(
        peaks(&fx),
        [(lane, 1, 1)],
        "slabs cut ahead are not in use yet"
    );
    // The rest of the first slab, then the next slot comes from a slab cut ahead.
    let slots = slots_of(1);
    let rest: Vec<_> = (1..slots).map(|_| fx.alloc(10).unwrap()).collect();
    assert!(
        rest.iter()
            .all(|&(o, _)| o / SLAB_BYTES == first.0 / SLAB_BYTES),
        "the head first"
    );
    let next = fx.alloc(10).unwrap();
    let t = fx.slabs.totals();
    assert_eq!((t.cut_on_demand, t.ahead_cut, t.ahead_used), (1, 2, 1));
    assert_eq!(fx.slabs.ahead_unused_bytes(), SLAB_BYTES);
    assert_eq!(peaks(&fx), [(lane, 1, 2)]);
    fx.slabs.check_invariants();
    // Emptied once used, a slab cut ahead is retired as any other.
    assert!(matches!(fx.free(next.0), SlabFree::Freed));
    assert_eq!(*fx.retired.borrow(), 1);
    fx.slabs.check_invariants();
}
