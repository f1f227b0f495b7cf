//! DRAM's `limit=` at its exact boundary (`src/dram/budget.rs`): a request whose memory fits
//! in what the limit leaves is served, and only one that does not is refused; in particular a
//! page cut over slices DRAM holds already (a huge half's untaken slices,
//! `src/dram/huge_pages.rs`) adds nothing and is never refused. Each limit runs in a child
//! process of its own (the limit is set once, when the tiers open), which allocates blocks of
//! one size from DRAM until it refuses, and says what DRAM then holds.

use allocator_api2::alloc::Allocator;
use std::alloc::Layout;
use tiermalloc::{Kind, Tier};

#[path = "support/limit_child.rs"]
mod limit_child;
use limit_child::{figure, run_child};

const CHILD: &str = "TM_DRAM_LIMIT_BOUNDARY_CHILD";
const KIB: u64 = 1 << 10;
const TEST: &str = "a_dram_limit_serves_every_request_that_fits";

/// What DRAM holds for blocks now (capacity less what is left for new pages), and the bytes
/// of that not in live blocks.
fn held_and_idle() -> (u64, u64) {
    let s = tiermalloc::stats(Kind::Dram).unwrap();
    let held = s.capacity - s.largest_free;
    (held, held - s.in_use)
}

/// The child: allocates `size`-byte blocks until DRAM refuses; says what DRAM holds then, the
/// largest step one allocation added to it (a page, a large block or a huge half), and the
/// idle bytes (held, not in blocks) before and at the refusal.
fn grow_until_refused(size: usize) {
    let dram = Tier::new(Kind::Dram).expect("dram is configured");
    let layout = Layout::from_size_align(size, 16).unwrap();
    let mut blocks = Vec::with_capacity(64 << 10);
    let mut step = 0;
    let (mut before, idle_before) = held_and_idle();
    while let Ok(p) = dram.allocate(layout) {
        assert!(blocks.len() < blocks.capacity(), "DRAM never refused");
        blocks.push(p.cast::<u8>());
        let (now, _) = held_and_idle();
        step = step.max(now - before);
        before = now;
    }
    let (held, idle) = held_and_idle();
    for p in blocks.drain(..) {
        // SAFETY: our blocks, each freed once.
        unsafe { dram.deallocate(p, layout) };
    }
    println!("HELD {held} STEP {step} IDLE0 {idle_before} IDLE {idle}");
}

#[test]
fn a_dram_limit_serves_every_request_that_fits() {
    if let Ok(size) = std::env::var(CHILD) {
        grow_until_refused(size.parse().unwrap());
        return;
    }
    // Small blocks (pages of whole 64 KiB slices) below the 32 MiB a heap keeps on small
    // pages, and large blocks (page-rounded mappings), at limits on a slice boundary: the last
    // page fits exactly. Then 1 KiB blocks past 32 MiB, where halves are made huge, at every
    // slice of a 2 MiB range: one limit falls exactly where a half made huge reaches it, and
    // the pages cut over that half must still be served.
    let exact = [
        (1024usize, 8192u64),
        (1024, 12288),
        (100_000, 16384),
        (2 << 20, 16384),
    ];
    let huge = (0..32).map(|i| (1024usize, 36864 + 64 * i));
    for (size, limit_kib) in exact.into_iter().chain(huge) {
        let limit = limit_kib * KIB;
        let stdout = run_child(TEST, CHILD, &size.to_string(), limit_kib);
        let figure = |key: &str| figure(&stdout, key);
        let (held, step) = (figure("HELD"), figure("STEP"));
        let (idle_before, idle) = (figure("IDLE0"), figure("IDLE"));
        eprintln!(
            "{size}-byte blocks, limit {limit_kib} KiB: {held} bytes held at the refusal \
             (steps of up to {step}), {idle} idle ({idle_before} before)"
        );
        assert!(
            held <= limit,
            "DRAM holds {held} bytes, over its limit of {limit}"
        );
        assert!(
            limit - held < step,
            "{size}-byte blocks: refused with {} bytes of the limit left, a whole step of {step}",
            limit - held
        );
        // 1 KiB blocks fill their pages exactly: what DRAM holds past them stays as it was.
        assert!(
            size != 1024 || idle <= idle_before + 64 * KIB,
            "{size}-byte blocks, limit {limit_kib} KiB: refused while DRAM held {} bytes more \
             than it did in no block (a page over them would have added nothing)",
            idle - idle_before
        );
    }
}
