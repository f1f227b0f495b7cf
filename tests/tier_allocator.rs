//! `tiermalloc::Tier` as an `allocator_api2` allocator: a `Vec` and a `hashbrown::HashMap`
//! living on a PMR tier emulated by a file in /dev/shm.
//!
//! The tiers are read when the library starts, so the test re-runs this test binary with
//! `TIERMALLOC_TIERS` set and checks the child's verdict.

use allocator_api2::vec::Vec as TierVec;
use std::process::Command;
use tiermalloc::{Kind, Tier, TierError};

const CHILD: &str = "TIERMALLOC_TIER_ALLOCATOR_CHILD";

/// Runs `test` in a child process of this binary with a PMR tier configured.
fn in_child_with_pmr(test: &str) {
    in_child_with_pmr_and(test, &[]);
}

/// `in_child_with_pmr`, with more environment variables for the child.
fn in_child_with_pmr_and(test: &str, env: &[(&str, &str)]) {
    let path = format!(
        "/dev/shm/tiermalloc-tier-allocator-{}-{test}",
        std::process::id()
    );
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env(
            "TIERMALLOC_TIERS",
            format!("dram;pmr:path={path},size=16M,create"),
        )
        .envs(env.iter().copied())
        .status()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(status.success(), "the child run of {test} failed: {status}");
}

#[test]
fn vec_and_hashmap_live_on_the_tier() {
    if std::env::var_os(CHILD).is_none() {
        return in_child_with_pmr("vec_and_hashmap_live_on_the_tier");
    }
    let pmr = Tier::new(Kind::Pmr).expect("pmr configured");
    assert_eq!(
        Tier::new(Kind::Cmb),
        Err(TierError::NotConfigured(Kind::Cmb))
    );
    {
        let mut v: TierVec<u64, Tier> = TierVec::new_in(pmr);
        for i in 0..100_000u64 {
            v.push(i * 7);
        }
        assert_eq!(tiermalloc::kind_of(v.as_ptr()), Some(Kind::Pmr));
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 * 7));
        let mut map = hashbrown::HashMap::new_in(pmr);
        for i in 0..10_000u32 {
            map.insert(i, i.wrapping_mul(2_654_435_761));
        }
        assert_eq!(map.get(&1234), Some(&1234u32.wrapping_mul(2_654_435_761)));
        let on_pmr = tiermalloc::stats(Kind::Pmr).unwrap();
        assert!(on_pmr.in_use >= 800_000, "in_use {}", on_pmr.in_use);
        // Everything else of this process stays on DRAM.
        let plain = Box::new(5u8);
        assert_eq!(tiermalloc::kind_of(&*plain), Some(Kind::Dram));
    }
    assert_eq!(
        tiermalloc::stats(Kind::Pmr).unwrap().in_use,
        0,
        "dropped collections freed"
    );
}

extern "C" {
    /// The C API's usable size (what the block's device header says on a device tier).
    fn tm_usable_size(p: *const core::ffi::c_void) -> usize;
}

/// `allocate` returns each block with its usable size, known as the block is handed out
/// rather than looked up again: it must be exactly what `tm_usable_size` answers, on the
/// device tier (slots of slabs and extents, cached or cut from the heap) and on DRAM. And
/// `deallocate`, which goes to the device tier without the page map, still refuses a second
/// free of a block (counted as a failure, reported, ignored here) and never hands the block
/// out twice.
#[test]
fn blocks_come_with_their_usable_size_and_a_second_free_is_refused() {
    use allocator_api2::alloc::{Allocator, Layout};
    if std::env::var_os(CHILD).is_none() {
        return in_child_with_pmr_and(
            "blocks_come_with_their_usable_size_and_a_second_free_is_refused",
            &[("TIERMALLOC_ON_ERROR", "ignore")],
        );
    }
    let pmr = Tier::new(Kind::Pmr).expect("pmr configured");
    let dram = Tier::new(Kind::Dram).expect("dram is always there");
    let sizes = [
        0, 1, 16, 100, 512, 513, 1000, 2049, 4080, 4081, 5000, 8192, 65_536, 300_000,
    ];
    for tier in [pmr, dram] {
        // Twice: the second round's extents come back from the extent cache.
        for round in 0..2 {
            for &size in &sizes {
                let layout = Layout::from_size_align(size, 16).unwrap();
                let block = tier.allocate(layout).expect("room for it");
                let p = block.cast::<u8>();
                // SAFETY: a live block of ours.
                let usable = unsafe { tm_usable_size(p.as_ptr().cast()) };
                assert_eq!(
                    block.len(),
                    usable,
                    "{:?}, {size} bytes, round {round}: the length allocate returned",
                    tier.kind()
                );
                assert!(block.len() >= size.max(1));
                // SAFETY: allocated just above with `layout`.
                unsafe { tier.deallocate(p, layout) };
            }
        }
    }
    for size in [100, 6000] {
        let layout = Layout::from_size_align(size, 16).unwrap();
        let p = pmr.allocate(layout).unwrap().cast::<u8>();
        let failures = tiermalloc::stats(Kind::Pmr).unwrap().failures;
        // SAFETY: allocated just above; the second call is the misuse under test, which the
        // tier must refuse before it changes anything.
        unsafe {
            pmr.deallocate(p, layout);
            pmr.deallocate(p, layout);
        }
        assert_eq!(
            tiermalloc::stats(Kind::Pmr).unwrap().failures,
            failures + 1,
            "{size} bytes: the second free was not refused"
        );
        let a = pmr.allocate(layout).unwrap().cast::<u8>();
        let b = pmr.allocate(layout).unwrap().cast::<u8>();
        assert_ne!(a, b, "{size} bytes: one block handed out twice");
        // SAFETY: two live blocks of `layout`.
        unsafe {
            pmr.deallocate(a, layout);
            pmr.deallocate(b, layout);
        }
    }
}
