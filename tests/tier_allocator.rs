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
