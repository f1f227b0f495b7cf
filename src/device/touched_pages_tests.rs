//! A cut's header writes under the heap lock find their pages present (`touched_pages`): the
//! pages are made present before the lock is taken for the cut that writes them.

use super::*;
use crate::config::tier_spec_for_test;
use touched_pages::{page_present, ABSENT_AT_PUBLISH};

/// A fresh tier in `/dev/shm` (no page of it touched by this process yet), leaked; its file is
/// removed at once (the mapping stays).
fn open(name: &str) -> &'static DeviceTier {
    let path = format!(
        "/dev/shm/tiermalloc-tier-{}-touched-{name}",
        std::process::id()
    );
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
    assert_eq!(
        absent, 0,
        "pages a cut wrote under the heap lock were absent"
    );
    for p in blocks {
        tier.free(p).unwrap();
    }
}

/// While `fork`'s prepare handler holds the tier (`lock_for_fork`), a read of the page map
/// waits: no descriptor on it is open at the fork, so no child inherits one.
#[test]
fn a_page_map_read_waits_for_a_fork_in_progress() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let tier = open("fork");
    let done: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    tier.touched.lock_for_fork();
    let reader = std::thread::spawn(move || {
        tier.touched.learn(tier.region.base, 0);
        done.store(true, Ordering::Release);
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    // The tier's own count: a look at the process's descriptors met other tests' page maps.
    let open_at_fork = tier.touched.page_maps_open.load(Ordering::Acquire) != 0;
    let finished = done.load(Ordering::Acquire);
    tier.touched.unlock_after_fork();
    reader.join().unwrap();
    assert!(
        !finished,
        "the page map was read while a fork held the tier"
    );
    assert!(
        !open_at_fork,
        "a page-map descriptor was open while a fork held the tier"
    );
    assert!(
        done.load(Ordering::Acquire),
        "the read went ahead after the fork"
    );
}
