//! A cut's header writes under the heap lock find their pages present (`touched_pages`): the
//! pages are made present before the lock is taken for the cut that writes them.

use super::*;
use crate::config::tier_spec_for_test;
use touched_pages::{page_present, ABSENT_AT_PUBLISH};

/// A fresh tier in `/dev/shm` (no page of it touched by this process yet), leaked; its file is
/// removed at once (the mapping stays).
fn open(name: &str) -> &'static DeviceTier {
    let path = format!("/dev/shm/tiermalloc-tier-{}-touched-{name}", std::process::id());
    let spec = tier_spec_for_test(&format!("pmr:path={path},create,fresh,size=64M"));
    let tier: &'static DeviceTier = Box::leak(Box::new(DeviceTier::open(&spec).unwrap()));
    std::fs::remove_file(&path).unwrap();
    tier
}

#[test]
fn a_cut_writes_no_absent_page_under_the_heap_lock() {
    let tier = open("cuts");
    ABSENT_AT_PUBLISH.with(|a| a.set(0));
    // Blocks of 40 KiB and 300 KiB (past the extent cache's sizes) on pages never touched:
    // each cut's header lands on a new page.
    let mut blocks = Vec::new();
    for i in 0..200 {
        let size = if i % 2 == 0 { 40_000 } else { 300_000 };
        let p = tier.alloc(size, 16).unwrap();
        assert!(page_present(p as usize - HEADER_SIZE as usize));
        blocks.push(p);
    }
    // Freed and cut again at other sizes: cuts split free extents at new places.
    for (i, p) in blocks.iter_mut().enumerate() {
        tier.free(*p).unwrap();
        *p = tier.alloc(5_000 + i * 997, 16).unwrap();
    }
    let absent = ABSENT_AT_PUBLISH.with(|a| a.get());
    assert_eq!(absent, 0, "pages a cut wrote under the heap lock were absent");
    for p in blocks {
        tier.free(p).unwrap();
    }
}
