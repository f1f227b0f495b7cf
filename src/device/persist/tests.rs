//! Tests of persistent tiers: what opening a region decides, recovery of blocks, slabs and
//! roots, the crash-point checker (every prefix of a recorded run's device writes, and every
//! loss of writes its ordering points allow), and a SIGKILL storm against a child process.

use super::media::recorder::{self, Event};
use super::recover::{self, Extent};
use super::{check, roots, superblock};
use crate::config::tier_spec_for_test as spec;
use crate::device::header::HEADER_SIZE;
use crate::device::slabs::{self, SLAB_MARKER};
use crate::device::{DeviceTier, BREAK_ORDER};
use crate::test_rng::Rng;
use std::collections::BTreeMap;
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, vec};

fn shm(name: &str) -> String {
    format!("/dev/shm/tiermalloc-persist-{}-{name}", std::process::id())
}

/// `DeviceTier::open` of `KIND:path=PATH KEYS`, once no process holds the file's host lock.
/// The lock is an open-file-description lock: a child another test of this binary is
/// spawning (until its `exec`) or has forked (until its exit) shares each descriptor this
/// process had open at its fork, so a tier a test closed a moment ago can stay locked for
/// that window, long under load (`backend::lock_wait`). Every test that reopens a file it
/// closed, and every child that opens a file its parent closed, goes through here; a test
/// that expects a live holder's lock to refuse it calls `open_once`.
fn open(kind: &str, path: &str, keys: &str) -> Result<DeviceTier, crate::backend::Problem> {
    crate::backend::lock_wait::wait_until_unlocked(path, || {});
    open_once(kind, path, keys)
}

/// `DeviceTier::open` at once, whoever holds the file's lock.
fn open_once(kind: &str, path: &str, keys: &str) -> Result<DeviceTier, crate::backend::Problem> {
    DeviceTier::open(&spec(&format!("{kind}:path={path}{keys}")))
}

/// A copy of the tier's whole region.
fn image_of(tier: &DeviceTier) -> Vec<u8> {
    let r = tier.region();
    // SAFETY: the region is mapped and readable.
    unsafe { core::slice::from_raw_parts(r.base as *const u8, r.len) }.to_vec()
}

/// The live blocks an image recovers to, as (header offset, usable size), in address order.
fn recovered(image: &[u8], out: &mut Vec<(u64, u64)>) -> Result<(), String> {
    out.clear();
    if superblock::examine(image) != superblock::Found::Heap {
        return Err("no valid superblock".into());
    }
    recover::scan(image, |offset, len, extent| {
        match extent {
            Extent::Block => out.push((offset, len - HEADER_SIZE)),
            Extent::Slab { class, live, .. } => {
                let usable = slabs::usable_of(class);
                for n in 0..slabs::slots_of(class) {
                    if live[n / 64] & (1 << (n % 64)) != 0 {
                        out.push((offset + SLAB_MARKER + n as u64 * (usable + 16), usable));
                    }
                }
            }
            Extent::Free | Extent::EmptySlab => {}
        }
        true
    })
    .map(|_| ())
    .map_err(|d| format!("damage at {}: {}", d.offset, d.what))
}

/// The live blocks of a tier as `tm_next_block` walks them: (offset, usable size).
fn live_blocks(tier: &DeviceTier) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut cur = None;
    while let Some(p) = tier.next_block(cur) {
        out.push((
            tier.offset_in_region(p).unwrap(),
            tier.usable_size(p).unwrap() as u64,
        ));
        cur = Some(p);
    }
    out
}

/// The header offset of block `p` of `tier`.
fn header_offset(tier: &DeviceTier, p: *mut u8) -> u64 {
    (p as usize - tier.region().base) as u64 - HEADER_SIZE
}

#[test]
fn opening_formats_zeroes_recovers_heaps_and_refuses_foreign_bytes() {
    let path = shm("decide");
    // Created now: formatted.
    let tier = open("pmr", &path, ",size=1M,create").unwrap();
    let p = tier.alloc(5000, 16).unwrap();
    let offset = tier.offset_in_region(p).unwrap();
    drop(tier);
    // pmr persists by default: the block is still there, and a new one goes elsewhere.
    let tier = open("pmr", &path, "").unwrap();
    let again = tier.at_offset(offset).unwrap();
    assert_eq!(tier.usable_size(again), Some(5008));
    let q = tier.alloc(5000, 16).unwrap();
    assert_ne!(q, again, "a live block was handed out again");
    drop(tier);
    // `fresh` formats it.
    let tier = open("pmr", &path, ",fresh").unwrap();
    assert_eq!(tier.stats().in_use, 0);
    drop(tier);
    // cmb is fresh by default, persistent when asked. The pmr tier's heap there is not
    // formatted by that default (`a_pmr_heap_is_not_formatted_by_a_default_fresh_tier`),
    // only when `fresh` is given.
    let tier = open("cmb", &path, ",fresh").unwrap();
    let p = tier.alloc(100, 16).unwrap();
    let p_offset = tier.offset_in_region(p).unwrap();
    drop(tier);
    let tier = open("cmb", &path, ",persist").unwrap();
    let first = tier.next_block(None).unwrap();
    assert_eq!(tier.offset_in_region(first), Some(p_offset));
    assert_eq!(tier.stats().in_use, 128, "one 112-byte slot and its header");
    drop(tier);
    let tier = open("cmb", &path, "").unwrap();
    assert_eq!(
        tier.stats().in_use,
        0,
        "cmb formats its own heap by default"
    );
    drop(tier);
    // Foreign bytes: refused, left untouched, unless `format`.
    let foreign: Vec<u8> = (0..1 << 20).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&path, &foreign).unwrap();
    for kind in ["pmr", "cmb", "cxl"] {
        let refused = open(kind, &path, "").err().expect("foreign bytes refused");
        assert!(
            refused.what.contains("not a tiermalloc heap"),
            "{}",
            refused.what
        );
    }
    assert!(
        std::fs::read(&path).unwrap() == foreign,
        "a refused file was written"
    );
    let tier = open("pmr", &path, ",format").unwrap();
    assert_eq!(tier.stats().in_use, 0);
    drop(tier);
    // An existing file of zeroes: formatted.
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    let tier = open("pmr", &path, "").unwrap();
    assert!(tier.alloc(100, 16).is_some());
    drop(tier);
    // A heap of another size: refused.
    let other = open("pmr", &path, ",size=512K")
        .err()
        .expect("other length");
    assert!(other.what.contains("another size"), "{}", other.what);
    let smaller = open("pmr", &path, ",size=512K,fresh").unwrap();
    assert_eq!(
        smaller.stats().in_use,
        0,
        "fresh formats a heap of another size"
    );
    drop(smaller);
    // A broken chain: refused with the offset named.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4096 + 8..4096 + 12].copy_from_slice(b"XXXX");
    std::fs::write(&path, &bytes).unwrap();
    let damaged = open("pmr", &path, ",size=512K")
        .err()
        .expect("damaged heap refused");
    assert_eq!(damaged.at, Some(4096), "{}", damaged.what);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn recovery_rebuilds_blocks_slabs_roots_and_statistics() {
    let path = shm("recover");
    let tier = open("pmr", &path, ",size=8M,create").unwrap();
    let mut rng = Rng(0x5eed_0001);
    let mut live: Vec<(*mut u8, usize)> = Vec::new();
    for i in 0..3000 {
        if live.len() > 300 && rng.below(2) == 0 {
            let (p, _) = live.swap_remove(rng.below(live.len() as u64) as usize);
            tier.free(p).unwrap();
            continue;
        }
        let size = match rng.below(4) {
            0 => 5000 + rng.below(30000) as usize,
            _ => rng.below(2000) as usize,
        };
        let align = if i % 17 == 0 { 4096 } else { 16 };
        let p = tier.alloc(size, align).unwrap();
        // SAFETY: the block holds `size` bytes.
        unsafe { p.write_bytes(i as u8, size) };
        live.push((p, size));
        if i % 50 == 0 && size >= 16 {
            let grown = tier.resize_in_place(p, size + 100);
            if grown {
                live.last_mut().unwrap().1 = size + 100;
                // SAFETY: now it holds size + 100.
                unsafe { p.write_bytes(i as u8, size + 100) };
            }
        }
    }
    let root = live[7].0;
    tier.root_set(b"seven", Some(root)).unwrap();
    let root_offset = tier.offset_in_region(root).unwrap();
    let before = tier.stats();
    let walk = live_blocks(&tier);
    let mut expected: Vec<(u64, u64)> = live
        .iter()
        .map(|&(p, _)| {
            (
                tier.offset_in_region(p).unwrap(),
                tier.usable_size(p).unwrap() as u64,
            )
        })
        .collect();
    expected.sort_unstable();
    assert_eq!(
        walk, expected,
        "tm_next_block visits every live block in address order"
    );
    let contents: Vec<(u64, Vec<u8>)> = live
        .iter()
        .map(|&(p, size)| {
            (
                tier.offset_in_region(p).unwrap(),
                // SAFETY: live blocks of `size` bytes.
                unsafe { core::slice::from_raw_parts(p, size) }.to_vec(),
            )
        })
        .collect();
    let report = check::check_image(&image_of(&tier)).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.blocks + report.slots, live.len() as u64);
    assert_eq!(report.in_use, before.in_use);
    drop(tier);

    let tier = open("pmr", &path, "").unwrap();
    let after = tier.stats();
    assert_eq!(
        (after.in_use, after.largest_free),
        (before.in_use, before.largest_free)
    );
    assert_eq!(
        live_blocks(&tier),
        walk,
        "the same blocks, at the same offsets, of the same sizes"
    );
    for (offset, bytes) in &contents {
        let p = tier.at_offset(*offset).unwrap();
        // SAFETY: a live block holding at least `bytes.len()` bytes.
        assert!(unsafe { core::slice::from_raw_parts(p, bytes.len()) } == &bytes[..]);
    }
    let seven = tier.root_get(b"seven").unwrap();
    assert_eq!(tier.offset_in_region(seven), Some(root_offset));
    assert_eq!(tier.root_get(b"eight"), None);
    // New blocks never overlap recovered ones, and everything frees back to a fresh heap.
    let extra: Vec<_> = (0..300)
        .map(|i| tier.alloc(i * 13 % 3000, 16).unwrap())
        .collect();
    let mut all: Vec<*mut u8> = walk
        .iter()
        .map(|&(o, _)| tier.at_offset(o).unwrap())
        .collect();
    all.extend(extra);
    for p in all {
        tier.free(p).unwrap();
    }
    let s = tier.stats();
    assert_eq!((s.in_use, s.largest_free), (0, s.capacity - HEADER_SIZE));
    tier.root_set(b"seven", None).unwrap();
    assert_eq!(tier.root_get(b"seven"), None);
    drop(tier);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn roots_refuse_bad_names_and_foreign_blocks() {
    let path = shm("roots");
    let tier = open("pmr", &path, ",size=1M,create").unwrap();
    let p = tier.alloc(64, 16).unwrap();
    assert_eq!(tier.root_set(b"", Some(p)), Err(libc::EINVAL));
    assert_eq!(tier.root_set(&[b'x'; 64], Some(p)), Err(libc::EINVAL));
    assert_eq!(tier.root_set(&[b'x'; 63], Some(p)), Ok(()));
    // SAFETY: a pointer inside the block, never dereferenced.
    assert_eq!(
        tier.root_set(b"inside", Some(unsafe { p.add(8) })),
        Err(libc::EINVAL)
    );
    for i in 1..roots::ROOT_SLOTS {
        tier.root_set(format!("r{i}").as_bytes(), Some(p)).unwrap();
    }
    assert_eq!(tier.root_set(b"one-too-many", Some(p)), Err(libc::ENOSPC));
    tier.root_set(b"r1", None).unwrap();
    assert_eq!(tier.root_set(b"one-too-many", Some(p)), Ok(()));
    assert_eq!(tier.root_get(&[b'x'; 63]), Some(p));
    tier.free(p).unwrap();
    assert_eq!(
        tier.root_get(b"one-too-many"),
        None,
        "a root of a freed block finds nothing"
    );
    drop(tier);
    std::fs::remove_file(path).unwrap();
}

/// The offline checker (`tiermalloc check`) reports a root naming a freed block and a broken
/// chain, each with its offset, and refuses an image that holds no heap.
#[test]
fn the_offline_checker_reports_problems() {
    let path = shm("check");
    let tier = open("pmr", &path, ",size=1M,create").unwrap();
    let p = tier.alloc(9000, 16).unwrap();
    let q = tier.alloc(100, 16).unwrap();
    tier.root_set(b"gone", Some(p)).unwrap();
    tier.root_set(b"kept", Some(q)).unwrap();
    tier.free(p).unwrap();
    let p_offset = tier.offset_in_region(p).unwrap();
    let mut image = image_of(&tier);
    drop(tier);
    let report = check::check_image(&image).unwrap();
    assert_eq!((report.blocks, report.slots, report.slabs), (0, 1, 1));
    assert_eq!(report.roots.len(), 2);
    assert_eq!(
        report.problems,
        vec![format!(
            "root \"gone\" names offset {p_offset}, which is no live block"
        )]
    );
    image[4096 + 8] ^= 0xff;
    let report = check::check_image(&image).unwrap();
    assert!(
        report.problems[0].starts_with("offset 4096: no block header"),
        "{:?}",
        report.problems
    );
    assert!(check::check_image(&vec![7u8; 1 << 20]).is_err());
    assert!(
        super::check_file(std::path::Path::new(&path), 0)
            .unwrap()
            .problems
            .len()
            == 1
    );
    std::fs::remove_file(path).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The crash-point checker
// ---------------------------------------------------------------------------------------------

/// What one operation of a recorded run changed: blocks (header offset, usable size before,
/// after) and roots (name, offset before, after); `events` is its range of recorded events.
struct OpRecord {
    events: core::ops::Range<usize>,
    blocks: Vec<(u64, Option<u64>, Option<u64>)>,
    roots: Vec<(String, Option<u64>, Option<u64>)>,
}

/// A recorded run: the region right after format, the events, the operations.
struct Run {
    initial: Vec<u8>,
    events: Vec<Event>,
    ops: Vec<OpRecord>,
}

/// Runs `count` random operations (slab blocks, extents, aligned extents, frees, resizes,
/// roots, `tm_persist`) on a fresh 1 MiB tier, recording its device writes.
fn record_run(name: &str, seed: u64, count: usize) -> Run {
    let path = shm(name);
    let tier = open("pmr", &path, ",size=1M,create,fresh").unwrap();
    // Freed slots wait in this thread's cache and come back from there (`slot_cache`).
    // SAFETY: the tier is not moved but into `end_run`, which drops it.
    unsafe { tier.enable_slot_cache() };
    let initial = image_of(&tier);
    recorder::start(tier.region().base);
    let mut rng = Rng(seed);
    let mut live: Vec<*mut u8> = Vec::new();
    let mut root_of: BTreeMap<String, u64> = BTreeMap::new();
    let mut ops = Vec::new();
    let mut writes_since_fence = 0;
    for _ in 0..count {
        let start = recorder::len();
        let mut rec = OpRecord {
            events: start..start,
            blocks: Vec::new(),
            roots: Vec::new(),
        };
        let roll = rng.below(100);
        if writes_since_fence >= 5 || (roll >= 95 && !live.is_empty()) {
            let p = live
                .first()
                .copied()
                .unwrap_or(tier.region().base as *mut u8);
            tier.persist(p, 1).unwrap();
        } else if roll < 45 && live.len() < 80 {
            let (size, align) = match rng.below(10) {
                0..=5 => (
                    [8, 40, 100, 250, 600, 1500, 4000][rng.below(7) as usize],
                    16,
                ),
                6..=8 => (4097 + rng.below(28000) as usize, 16),
                _ => (5000 + rng.below(15000) as usize, 4096),
            };
            if let Some(p) = tier.alloc(size, align) {
                let usable = tier.usable_size(p).unwrap() as u64;
                rec.blocks
                    .push((header_offset(&tier, p), None, Some(usable)));
                live.push(p);
            }
        } else if roll < 85 && !live.is_empty() {
            let p = live.swap_remove(rng.below(live.len() as u64) as usize);
            let usable = tier.usable_size(p).unwrap() as u64;
            tier.free(p).unwrap();
            rec.blocks
                .push((header_offset(&tier, p), Some(usable), None));
        } else if roll < 91 && !live.is_empty() {
            let p = live[rng.below(live.len() as u64) as usize];
            let old = tier.usable_size(p).unwrap() as u64;
            let new = 4097 + rng.below(30000) as usize;
            if tier.resize_in_place(p, new) {
                let now = tier.usable_size(p).unwrap() as u64;
                rec.blocks
                    .push((header_offset(&tier, p), Some(old), Some(now)));
            }
        } else if !live.is_empty() {
            // A root change comes after a tm_persist of its own, as a program would write it.
            tier.persist(live[0], 1).unwrap();
            let fence_end = recorder::len();
            ops.push(OpRecord {
                events: start..fence_end,
                blocks: Vec::new(),
                roots: Vec::new(),
            });
            rec.events = fence_end..fence_end;
            let name = format!("root{}", rng.below(4));
            let old = root_of.get(&name).copied();
            let new = if rng.below(4) == 0 {
                None
            } else {
                Some(header_offset(&tier, live[rng.below(live.len() as u64) as usize]) + 16)
            };
            tier.root_set(name.as_bytes(), new.map(|o| tier.at_offset(o).unwrap()))
                .unwrap();
            match new {
                Some(o) => root_of.insert(name.clone(), o),
                None => root_of.remove(&name),
            };
            rec.roots.push((name, old, new));
        }
        rec.events.end = recorder::len();
        ops.push(rec);
        writes_since_fence = recorder::writes_since_fence();
    }
    end_run(tier, &path, initial, ops)
}

/// Ends a recording on `tier` (its file at `path` removed): the run from `initial` through the
/// events recorded since, split into `ops`.
fn end_run(tier: DeviceTier, path: &str, initial: Vec<u8>, ops: Vec<OpRecord>) -> Run {
    let events = recorder::take();
    drop(tier);
    std::fs::remove_file(path).unwrap();
    Run {
        initial,
        events,
        ops,
    }
}

/// The blocks and roots a recovered state must hold (`definite`) and may hold (`maybe`: the
/// sizes, or absence, an operation in flight may leave).
#[derive(Default)]
struct Expect {
    definite: BTreeMap<u64, u64>,
    maybe: BTreeMap<u64, Vec<Option<u64>>>,
    roots_definite: BTreeMap<String, u64>,
    roots_maybe: BTreeMap<String, Vec<Option<u64>>>,
}

impl Expect {
    /// `model` with every block and root that operations `ops` touch made uncertain, with
    /// each state they pass through.
    fn around(
        blocks: &BTreeMap<u64, u64>,
        roots: &BTreeMap<String, u64>,
        ops: &[OpRecord],
    ) -> Expect {
        let mut e = Expect {
            definite: blocks.clone(),
            roots_definite: roots.clone(),
            ..Expect::default()
        };
        for op in ops {
            for &(off, before, after) in &op.blocks {
                e.definite.remove(&off);
                let m = e.maybe.entry(off).or_default();
                m.push(before);
                m.push(after);
            }
            for (name, before, after) in &op.roots {
                e.roots_definite.remove(name);
                let m = e.roots_maybe.entry(name.clone()).or_default();
                m.push(*before);
                m.push(*after);
            }
        }
        e
    }

    fn check(&self, image: &[u8], scratch: &mut Vec<(u64, u64)>) -> Result<(), String> {
        recovered(image, scratch)?;
        let mut matched = 0;
        for &(off, size) in scratch.iter() {
            if self.definite.get(&off) == Some(&size) {
                matched += 1;
            } else if !self
                .maybe
                .get(&off)
                .is_some_and(|m| m.contains(&Some(size)))
            {
                return Err(format!(
                    "recovered a block at {off} of {size} bytes that is not live"
                ));
            }
        }
        if matched != self.definite.len() {
            let missing = self
                .definite
                .iter()
                .find(|(off, size)| !scratch.contains(&(**off, **size)))
                .unwrap();
            return Err(format!(
                "live block at {} of {} bytes lost",
                missing.0, missing.1
            ));
        }
        let mut roots_seen = 0;
        let mut bad = None;
        roots::for_each(image, |name, offset| {
            let name = String::from_utf8_lossy(name).to_string();
            if self.roots_definite.get(&name) == Some(&offset) {
                roots_seen += 1;
            } else if !self
                .roots_maybe
                .get(&name)
                .is_some_and(|m| m.contains(&Some(offset)))
            {
                bad = Some(format!("root {name} recovered as {offset}"));
            }
        });
        if let Some(bad) = bad {
            return Err(bad);
        }
        if roots_seen != self.roots_definite.len() {
            return Err("a root set before the crash was lost".into());
        }
        Ok(())
    }
}

fn apply(model: &mut BTreeMap<u64, u64>, roots: &mut BTreeMap<String, u64>, op: &OpRecord) {
    for &(off, _, after) in &op.blocks {
        match after {
            Some(size) => model.insert(off, size),
            None => model.remove(&off),
        };
    }
    for (name, _, after) in &op.roots {
        match after {
            Some(o) => roots.insert(name.clone(), *o),
            None => roots.remove(name),
        };
    }
}

fn write_into(image: &mut [u8], event: &Event) {
    if let Event::Write(off, bytes) = event {
        image[*off as usize..*off as usize + bytes.len()].copy_from_slice(bytes);
    }
}

/// Figures of one check.
#[derive(Debug, Default)]
struct Checked {
    prefixes: usize,
    reorderings: usize,
}

/// Checks every prefix of the run's writes, and every subset of the writes between two
/// ordering points applied on top of everything before the first: the first failure, or the
/// number of states checked.
fn check_run(run: &Run) -> Result<Checked, String> {
    let mut scratch = Vec::new();
    let mut checked = Checked::default();
    // Every prefix.
    let mut image = run.initial.clone();
    let (mut model, mut roots) = (BTreeMap::new(), BTreeMap::new());
    for (j, op) in run.ops.iter().enumerate() {
        let expect = Expect::around(&model, &roots, &run.ops[j..j + 1]);
        for k in op.events.clone() {
            write_into(&mut image, &run.events[k]);
            if let Event::Write(..) = run.events[k] {
                expect
                    .check(&image, &mut scratch)
                    .map_err(|e| format!("prefix of {} events (op {j}): {e}", k + 1))?;
                checked.prefixes += 1;
            }
        }
        apply(&mut model, &mut roots, op);
    }
    // The end of the run: every operation has returned, nothing is in flight.
    Expect::around(&model, &roots, &[])
        .check(&image, &mut scratch)
        .map_err(|e| format!("after the last operation: {e}"))?;
    // Every loss allowed between ordering points: windows of writes between two fences.
    let mut image = run.initial.clone();
    let (mut model, mut roots) = (BTreeMap::new(), BTreeMap::new());
    let mut first_op = 0; // the first operation not yet applied to `model`
    let mut k = 0;
    while k < run.events.len() {
        let window_start = k;
        let mut window_end = k;
        while window_end < run.events.len() && !matches!(run.events[window_end], Event::Fence) {
            window_end += 1;
        }
        let writes: Vec<usize> = (window_start..window_end).collect();
        if writes.len() > 16 {
            return Err(format!(
                "a window of {} writes: too many to try every subset",
                writes.len()
            ));
        }
        // Operations with an event in the window (and so possibly in flight).
        while first_op < run.ops.len() && run.ops[first_op].events.end <= window_start {
            apply(&mut model, &mut roots, &run.ops[first_op]);
            first_op += 1;
        }
        let mut last_op = first_op;
        while last_op < run.ops.len()
            && run.ops[last_op].events.start < window_end.max(window_start + 1)
        {
            last_op += 1;
        }
        let expect = Expect::around(&model, &roots, &run.ops[first_op..last_op]);
        for subset in 1u32..(1 << writes.len()) {
            let saved: Vec<(u64, Vec<u8>)> = writes
                .iter()
                .filter_map(|&w| match &run.events[w] {
                    Event::Write(off, bytes) => Some((
                        *off,
                        image[*off as usize..*off as usize + bytes.len()].to_vec(),
                    )),
                    Event::Fence => None,
                })
                .collect();
            for (bit, &w) in writes.iter().enumerate() {
                if subset & (1 << bit) != 0 {
                    write_into(&mut image, &run.events[w]);
                }
            }
            expect.check(&image, &mut scratch).map_err(|e| {
                format!("writes {window_start}..{window_end} subset {subset:b}: {e}")
            })?;
            checked.reorderings += 1;
            for (off, bytes) in saved.into_iter().rev() {
                image[off as usize..off as usize + bytes.len()].copy_from_slice(&bytes);
            }
        }
        for w in window_start..window_end {
            write_into(&mut image, &run.events[w]);
        }
        k = window_end + 1;
    }
    Ok(checked)
}

/// The crash-point checker: 10 000 random operations, every prefix of their device writes and
/// every loss the ordering points allow recover to a consistent heap holding exactly the live
/// blocks and roots (see `Expect`).
#[test]
fn every_crash_point_of_a_long_run_recovers() {
    let run = record_run("crash-points", 0x0c4a_5401, 10_000);
    let writes = run
        .events
        .iter()
        .filter(|e| matches!(e, Event::Write(..)))
        .count();
    let checked = check_run(&run).unwrap_or_else(|e| panic!("{e}"));
    std::eprintln!(
        "crash-point checker: {} ops, {writes} writes, {} fences, {} prefixes and {} reorderings \
         recovered and checked",
        run.ops.len(),
        run.events.len() - writes,
        checked.prefixes,
        checked.reorderings
    );
    assert!(checked.prefixes == writes && checked.reorderings > writes);
}

/// The checker's self-test: a tier that links a new block into the chain before writing its
/// header (`BREAK_ORDER`) is caught.
#[test]
fn the_checker_catches_a_wrong_write_order() {
    BREAK_ORDER.with(|b| b.set(true));
    let run = record_run("crash-broken", 0x0c4a_5402, 2_000);
    BREAK_ORDER.with(|b| b.set(false));
    let failure = check_run(&run).expect_err("the wrong order must be caught");
    assert!(
        failure.contains("damage") || failure.contains("not live"),
        "{failure}"
    );
}

/// A fresh 1 MiB PMR tier for a scripted run (`keys` added), its image as formatted, and the
/// recorder started on it: `(path, tier, image)`.
fn scripted(name: &str, keys: &str) -> (String, DeviceTier, Vec<u8>) {
    let path = shm(name);
    let tier = open("pmr", &path, &format!(",size=1M,create,fresh{keys}")).unwrap();
    let initial = image_of(&tier);
    recorder::start(tier.region().base);
    (path, tier, initial)
}

/// Runs one operation of a scripted run: records its device writes with the blocks `blocks`
/// returns (offset, size before, size after) as the next of `ops`; the range of its events.
fn step(
    ops: &mut Vec<OpRecord>,
    blocks: impl FnOnce() -> Vec<(u64, Option<u64>, Option<u64>)>,
) -> core::ops::Range<usize> {
    let start = recorder::len();
    let blocks = blocks();
    ops.push(OpRecord {
        events: start..recorder::len(),
        blocks,
        roots: Vec::new(),
    });
    start..recorder::len()
}

/// A scripted run: a slab of class 2 (48-byte slots) retired into a 16 KiB window of free space
/// of its own (its marker left as it was: retiring writes nothing), then a 32-byte block with
/// 32-byte alignment cut from that window's end, where its header lands exactly on the old
/// slab's last slot with the class's size, and the marker's size is rewritten to the free
/// space left in front of it. Every operation is checked to land where the script needs it.
fn record_retired_window_cut(name: &str) -> Run {
    let (path, tier, initial) = scripted(name, ",fit=best");
    let mut ops = Vec::new();
    let mut slot = core::ptr::null_mut();
    step(&mut ops, || {
        slot = tier.alloc(32, 16).unwrap();
        vec![(header_offset(&tier, slot), None, Some(32))]
    });
    let slot_at = header_offset(&tier, slot);
    let window = slot_at / slabs::SLAB_BYTES * slabs::SLAB_BYTES;
    // A block in front of the window, so that its free space stays 16 KiB on its own.
    let mut front = core::ptr::null_mut();
    step(&mut ops, || {
        front = tier.alloc(8000, 16).unwrap();
        let usable = tier.usable_size(front).unwrap() as u64;
        vec![(header_offset(&tier, front), None, Some(usable))]
    });
    let front_end = header_offset(&tier, front) + tier.usable_size(front).unwrap() as u64 + 16;
    assert_eq!(front_end, window, "the block in front ends at the window");
    step(&mut ops, || {
        tier.free(slot).unwrap();
        vec![(slot_at, Some(32), None)]
    });
    let mut cut = core::ptr::null_mut();
    step(&mut ops, || {
        cut = tier.alloc(32, 32).unwrap();
        vec![(header_offset(&tier, cut), None, Some(32))]
    });
    let last_slot = window + SLAB_MARKER + (slabs::slots_of(2) as u64 - 1) * 48;
    assert_eq!(
        header_offset(&tier, cut),
        last_slot,
        "the cut block is on the last slot"
    );
    assert_eq!(tier.usable_size(cut), Some(32));
    end_run(tier, &path, initial, ops)
}

/// A retired slab's marker, left on the chain as the head of free space, and then rewritten
/// in size by a cut from that space: every crash point recovers (the scan takes a marker of
/// another length for free space, and one whose slots are all free too).
#[test]
fn a_retired_slabs_marker_heads_free_space_at_every_crash_point() {
    let run = record_retired_window_cut("retired-cut");
    let checked = check_run(&run).unwrap_or_else(|e| panic!("{e}"));
    assert!(checked.prefixes > 0 && checked.reorderings > 0);
}

/// A slab cut again at the window of the last slab cut writes nothing but its slot
/// (`slab_memo`), and a resize in place whose free header lands on the remembered free extent
/// makes the next cut write in full: a 512 KiB block at the region's end is freed behind a
/// block `x` (the space in front of `x` taken but for 2 KiB); a slot's slab is cut from that
/// free space's end, its slot freed (the slab retired) and taken again (the cut remembered: one
/// 16-byte write); `x` grows into the free space and shrinks back, rewriting the size at the
/// remembered free extent's start; a slot is taken again at the same window. Every crash point
/// recovers; the last cut must write its marker and the size in front, or the recovered chain would
/// skip the window's live slot.
fn record_slab_cut_again(name: &str) -> Run {
    let (path, tier, initial) = scripted(name, "");
    let mut ops = Vec::new();
    let null = core::ptr::null_mut;
    let (mut big, mut x, mut slot) = (null(), null(), null());
    step(&mut ops, || {
        big = tier.alloc((512 << 10) - 16, 16).unwrap();
        vec![(header_offset(&tier, big), None, Some((512 << 10) - 16))]
    });
    let big_at = header_offset(&tier, big);
    assert_eq!(
        big_at,
        512 << 10,
        "the big block is cut from the region's end"
    );
    step(&mut ops, || {
        x = tier.alloc(8000, 16).unwrap();
        vec![(header_offset(&tier, x), None, Some(8000))]
    });
    let x_at = header_offset(&tier, x);
    assert_eq!(
        x_at + 16 + 8000,
        big_at,
        "x lies right in front of the big block"
    );
    // The free space in front of x, but for 2 KiB, taken: the slab can only come from behind.
    let filler = x_at - super::SUPERBLOCK_BYTES - 2048 - 16;
    step(&mut ops, || {
        let p = tier.alloc(filler as usize, 16).unwrap();
        vec![(header_offset(&tier, p), None, Some(filler))]
    });
    step(&mut ops, || {
        tier.free(big).unwrap();
        vec![(big_at, Some((512 << 10) - 16), None)]
    });
    let take_slot = |ops: &mut Vec<OpRecord>, slot: &mut *mut u8| {
        step(ops, || {
            *slot = tier.alloc(32, 16).unwrap();
            vec![(header_offset(&tier, *slot), None, Some(32))]
        })
    };
    let first = take_slot(&mut ops, &mut slot);
    let slot_at = header_offset(&tier, slot);
    let window = (1 << 20) - slabs::SLAB_BYTES;
    assert_eq!(
        slot_at,
        window + SLAB_MARKER,
        "the slab is cut from the free space's end"
    );
    let free_slot = |ops: &mut Vec<OpRecord>, slot: *mut u8| {
        step(ops, || {
            tier.free(slot).unwrap();
            vec![(slot_at, Some(32), None)]
        });
    };
    free_slot(&mut ops, slot);
    let again = take_slot(&mut ops, &mut slot);
    assert_eq!(header_offset(&tier, slot), slot_at, "the same slot again");
    assert_eq!(
        recorder::writes_in(first).len(),
        3,
        "the first cut: marker, size, slot"
    );
    assert_eq!(
        recorder::writes_in(again),
        vec![(slot_at, 16)],
        "a slab cut again in place writes its slot's header and nothing else"
    );
    free_slot(&mut ops, slot);
    step(&mut ops, || {
        assert!(
            tier.resize_in_place(x, 20000),
            "x grows into the free space behind it"
        );
        vec![(x_at, Some(8000), Some(tier.usable_size(x).unwrap() as u64))]
    });
    let grown = tier.usable_size(x).unwrap() as u64;
    step(&mut ops, || {
        assert!(tier.resize_in_place(x, 8000), "x gives its tail back");
        vec![(x_at, Some(grown), Some(8000))]
    });
    let last = take_slot(&mut ops, &mut slot);
    assert_eq!(
        header_offset(&tier, slot),
        slot_at,
        "the same window once more"
    );
    assert_eq!(
        recorder::writes_in(last).len(),
        3,
        "after a resize wrote into the free space, the cut writes marker, size and slot"
    );
    end_run(tier, &path, initial, ops)
}

/// See `record_slab_cut_again`.
#[test]
fn a_slab_cut_again_in_place_writes_only_its_slot_and_recovers_at_every_crash_point() {
    let run = record_slab_cut_again("cut-again");
    let checked = check_run(&run).unwrap_or_else(|e| panic!("{e}"));
    assert!(checked.prefixes > 0 && checked.reorderings > 0);
}

/// Slabs cut ahead of need (a workload profile's reserve, `device::slabs_ahead`) on a
/// persistent heap: three of class 2 and one of class 5 cut empty, then a 32-byte block, which
/// takes a slot of one of them writing nothing but its header, a block outside the slabs, and
/// the slot freed. Every crash point recovers the blocks of the model: an empty slab's marker
/// is free space to a recovery, before and after its first slot.
#[test]
fn slabs_cut_ahead_recover_at_every_crash_point() {
    let (path, tier, initial) = scripted("slabs-ahead", "");
    let mut ops = Vec::new();
    let lane = slabs::Lane::of_this_thread().0;
    step(&mut ops, || {
        assert_eq!(tier.cut_slabs_ahead(lane, 2, 3, u32::MAX), 3);
        assert_eq!(tier.cut_slabs_ahead(lane, 5, 1, u32::MAX), 1);
        assert_eq!(
            tier.cut_slabs_ahead(lane, 5, 1, u32::MAX),
            0,
            "one is there already"
        );
        Vec::new()
    });
    let mut slot = core::ptr::null_mut();
    let first = step(&mut ops, || {
        slot = tier.alloc(32, 16).unwrap();
        vec![(header_offset(&tier, slot), None, Some(32))]
    });
    let slot_at = header_offset(&tier, slot);
    assert_eq!(
        recorder::writes_in(first),
        vec![(slot_at, 16)],
        "the first block of a class cut ahead writes its header and nothing else"
    );
    let cuts = tier.slab_cuts();
    assert_eq!(
        (cuts.ahead, cuts.ahead_used, cuts.on_demand),
        (4, 1, 0),
        "{cuts:?}"
    );
    step(&mut ops, || {
        let p = tier.alloc(8000, 16).unwrap();
        vec![(header_offset(&tier, p), None, Some(8000))]
    });
    step(&mut ops, || {
        tier.free(slot).unwrap();
        vec![(slot_at, Some(32), None)]
    });
    let run = end_run(tier, &path, initial, ops);
    let checked = check_run(&run).unwrap_or_else(|e| panic!("{e}"));
    assert!(checked.prefixes > 0 && checked.reorderings > 0);
}

// ---------------------------------------------------------------------------------------------
// The SIGKILL storm
// ---------------------------------------------------------------------------------------------

/// Set in the storm's child process: `PATH LOG SEED`.
const STORM_ENV: &str = "TIERMALLOC_TEST_STORM_CHILD";
const LOG_ALLOC: u8 = 1;
const LOG_FREE: u8 = 2;
const LOG_RESIZE: u8 = 3;

/// The storm's child (a no-op unless `STORM_ENV` is set): recovers the tier at PATH and
/// allocates, fills, resizes and frees blocks until killed, appending a 17-byte record to LOG
/// after each operation returns (kind, offset, usable size). Each block's first 8 bytes hold
/// its own offset.
#[test]
fn storm_child() {
    let Ok(args) = std::env::var(STORM_ENV) else {
        return;
    };
    let args: Vec<&str> = args.split(' ').collect();
    let (path, log, seed) = (args[0], args[1], args[2].parse::<u64>().unwrap());
    let tier = open("pmr", path, "").unwrap();
    let log = std::ffi::CString::new(log).unwrap();
    // SAFETY: a NUL-terminated path; an append-only log of our own.
    let fd = unsafe {
        libc::open(
            log.as_ptr(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT,
            0o600,
        )
    };
    assert!(fd >= 0);
    let record = |kind: u8, p: *mut u8| {
        let mut r = [0u8; 17];
        r[0] = kind;
        r[1..9].copy_from_slice(&tier.offset_in_region(p).unwrap().to_le_bytes());
        r[9..].copy_from_slice(&(tier.usable_size(p).unwrap_or(0) as u64).to_le_bytes());
        // SAFETY: writing our buffer to our descriptor.
        assert_eq!(unsafe { libc::write(fd, r.as_ptr().cast(), 17) }, 17);
    };
    let mut live: Vec<*mut u8> = Vec::new();
    let mut cur = None;
    while let Some(p) = tier.next_block(cur) {
        live.push(p);
        cur = Some(p);
    }
    let mut rng = Rng(seed | 1);
    loop {
        let roll = rng.below(100);
        if roll < 50 && live.len() < 1500 {
            let (size, align) = match rng.below(10) {
                0..=5 => (8 + rng.below(4000) as usize, 16),
                6..=8 => (4097 + rng.below(60000) as usize, 16),
                _ => (5000 + rng.below(20000) as usize, 4096),
            };
            if let Some(p) = tier.alloc(size, align) {
                let offset = tier.offset_in_region(p).unwrap();
                // SAFETY: the block holds at least 8 bytes.
                unsafe { (p as *mut u64).write_unaligned(offset) };
                record(LOG_ALLOC, p);
                live.push(p);
            }
        } else if roll < 92 && !live.is_empty() {
            let p = live.swap_remove(rng.below(live.len() as u64) as usize);
            let mut r = [0u8; 17];
            r[0] = LOG_FREE;
            r[1..9].copy_from_slice(&tier.offset_in_region(p).unwrap().to_le_bytes());
            tier.free(p).unwrap();
            // SAFETY: as in `record`.
            assert_eq!(unsafe { libc::write(fd, r.as_ptr().cast(), 17) }, 17);
        } else if !live.is_empty() {
            let p = live[rng.below(live.len() as u64) as usize];
            if tier.resize_in_place(p, 4097 + rng.below(60000) as usize) {
                record(LOG_RESIZE, p);
            }
        }
    }
}

/// 50 children, one after another on the same PMR file, each killed with SIGKILL at a random
/// point of an allocation storm. After each, the parent recovers the file and checks: the
/// offline checker finds no problem; the blocks are exactly those the child's log says are
/// live, but for the one operation in flight; every block keeps its contents; and, on a copy,
/// freeing every block leaves `in_use` and `largest_free` as on a fresh tier.
#[test]
fn sigkill_storm_recovers_every_time() {
    let path = shm("storm");
    let log = shm("storm-log");
    let copy = shm("storm-copy");
    let fresh = open("pmr", &path, ",size=16M,create").unwrap();
    let fresh_stats = fresh.stats();
    drop(fresh);
    let exe = std::env::current_exe().unwrap();
    let child_test = concat!(module_path!(), "::storm_child");
    let child_test = child_test.split_once("::").unwrap().1;
    let mut expected: BTreeMap<u64, u64> = BTreeMap::new();
    // Live blocks whose first 8 bytes were never stamped: made by an allocation the kill
    // interrupted between its return and the child's stamp.
    let mut unstamped: std::collections::BTreeSet<u64> = Default::default();
    let mut rng = Rng(0x570_12a);
    for seed in 1..=50u64 {
        let _ = std::fs::remove_file(&log);
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", child_test, "--nocapture", "--test-threads=1"])
            .env(STORM_ENV, format!("{path} {log} {seed}"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Until the child is storming, then a random while. The child is this test binary
        // started afresh: at load 23 one took over 20 s to get there, so the limit is a
        // minute (it only has to catch a child that never starts).
        let started = std::time::Instant::now();
        while std::fs::metadata(&log).map_or(0, |m| m.len()) < 17 * 20 {
            assert!(
                started.elapsed().as_secs() < 60,
                "the storm child never started"
            );
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        std::thread::sleep(std::time::Duration::from_micros(rng.below(30_000)));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "seed {seed}: the child ended before the kill"
        );

        // What the log says is live (a record is whole once written: 17 bytes, one write).
        let records = std::fs::read(&log).unwrap();
        for r in records.chunks_exact(17) {
            let offset = u64::from_le_bytes(r[1..9].try_into().unwrap());
            let size = u64::from_le_bytes(r[9..17].try_into().unwrap());
            match r[0] {
                LOG_ALLOC => {
                    unstamped.remove(&offset);
                    expected.insert(offset, size)
                }
                LOG_RESIZE => expected.insert(offset, size),
                _ => expected.remove(&offset),
            };
        }
        let report = check::check_file(std::path::Path::new(&path), 0).unwrap();
        assert!(
            report.problems.is_empty(),
            "seed {seed}: {:?}",
            report.problems
        );
        assert!(
            !report.closed_cleanly,
            "seed {seed}: a killed run left the heap marked clean"
        );
        let tier = open("pmr", &path, "").unwrap();
        assert_eq!(tier.previous_run_clean(), Some(false), "seed {seed}");
        let found: BTreeMap<u64, u64> = live_blocks(&tier).into_iter().collect();
        let differences: Vec<_> = expected
            .iter()
            .filter(|(o, s)| found.get(o) != Some(s))
            .map(|(o, s)| (*o, Some(*s), found.get(o).copied()))
            .chain(
                found
                    .iter()
                    .filter(|(o, _)| !expected.contains_key(o))
                    .map(|(o, s)| (*o, None, Some(*s))),
            )
            .collect();
        assert!(
            differences.len() <= 1,
            "seed {seed}: blocks differ from the log beyond the one operation in flight: \
             {differences:?}"
        );
        let stamped = |o: &u64| expected.contains_key(o) && !unstamped.contains(o);
        for (&offset, _) in found.iter().filter(|(o, _)| stamped(o)) {
            let p = tier.at_offset(offset).unwrap();
            // SAFETY: a live block of at least 8 bytes.
            let stamp = unsafe { (p as *const u64).read_unaligned() };
            assert_eq!(
                stamp, offset,
                "seed {seed}: block at {offset} lost its contents"
            );
        }
        unstamped.extend(found.keys().filter(|o| !expected.contains_key(o)));
        unstamped.retain(|o| found.contains_key(o));
        expected = found;
        drop(tier);
        // On a copy: freeing everything gives a fresh tier's figures.
        std::fs::copy(&path, &copy).unwrap();
        let tier = open("pmr", &copy, "").unwrap();
        for &offset in expected.keys() {
            tier.free(tier.at_offset(offset).unwrap()).unwrap();
        }
        let s = tier.stats();
        assert_eq!(
            (s.in_use, s.largest_free),
            (fresh_stats.in_use, fresh_stats.largest_free),
            "seed {seed}"
        );
        drop(tier);
    }
    for f in [path, log, copy] {
        let _ = std::fs::remove_file(f);
    }
}

/// Recovery time against the time to read the same header bytes (in-process, no `dlopen`):
/// `cargo test --release --lib recovery_speed -- --ignored --nocapture`.
#[test]
#[ignore]
fn recovery_speed() {
    let path = shm("speed");
    let tier = open("pmr", &path, ",size=1G,create,fresh").unwrap();
    let mut rng = Rng(0x5eed);
    for i in 0..1_000_000u64 {
        let size = if i % 64 == 63 {
            4096 + rng.below(16384)
        } else {
            16 + rng.below(992)
        };
        tier.alloc(size as usize, 16).unwrap();
    }
    drop(tier);
    for round in 0..3 {
        let t0 = std::time::Instant::now();
        let tier = open("pmr", &path, "").unwrap();
        let opened = t0.elapsed();
        let image = {
            let r = tier.region();
            // SAFETY: mapped and readable.
            unsafe { core::slice::from_raw_parts(r.base as *const u8, r.len) }
        };
        let t1 = std::time::Instant::now();
        let scanned = recover::scan(image, |_, _, _| true).unwrap();
        let scan_only = t1.elapsed();
        drop(tier);
        // The bound: the same header bytes read from a fresh read-only mapping of the file.
        let file = std::fs::File::open(&path).unwrap();
        let len = 1usize << 30;
        // SAFETY: a fresh shared read-only mapping of our own file, unmapped below.
        let fresh = unsafe {
            use std::os::fd::AsRawFd;
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(fresh, libc::MAP_FAILED);
        let t2 = std::time::Instant::now();
        // SAFETY: mapped above, `len` bytes.
        let read = recover::scan(
            unsafe { core::slice::from_raw_parts(fresh as *const u8, len) },
            |_, _, _| true,
        )
        .unwrap();
        let bound = t2.elapsed();
        // SAFETY: our mapping, no longer used.
        unsafe { libc::munmap(fresh, len) };
        assert_eq!(read.bytes_read, scanned.bytes_read);
        std::eprintln!(
            "round {round}: open {opened:?}, the scan on the opened mapping {scan_only:?}, \
             the scan on a fresh mapping {bound:?} ({} header bytes): open / bound {:.2}",
            scanned.bytes_read,
            opened.as_secs_f64() / bound.as_secs_f64()
        );
    }
    std::fs::remove_file(path).unwrap();
}

/// A persistent tier moved onto another file (`tm_evacuate`) leaves a heap there that a later
/// open recovers: the superblock and the whole header chain, free extents' headers included,
/// reach the target.
#[test]
fn an_evacuated_tier_recovers_from_its_target() {
    let path = shm("evac-src");
    let target = shm("evac-dst");
    let tier = open("pmr", &path, ",size=4M,create").unwrap();
    let mut rng = Rng(0xe7ac);
    let mut live = Vec::new();
    for i in 0..400 {
        let p = tier.alloc(rng.below(9000) as usize, 16).unwrap();
        if i % 3 == 0 {
            tier.free(p).unwrap();
        } else {
            live.push(p);
        }
    }
    tier.root_set(b"first", Some(live[0])).unwrap();
    let first_offset = tier.offset_in_region(live[0]).unwrap();
    let before = live_blocks(&tier);
    let c_target = std::ffi::CString::new(target.clone()).unwrap();
    if let Err(problem) = tier.evacuate(Some(&c_target)) {
        // Without userfaultfd (a kernel or sandbox that refuses it) nothing moved: skip.
        std::eprintln!("evacuation refused here: {}", problem.what);
        drop(tier);
        let _ = std::fs::remove_file(&path);
        return;
    }
    drop(tier);
    let report = check::check_file(std::path::Path::new(&target), 0).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let moved = open("pmr", &target, "").unwrap();
    assert_eq!(live_blocks(&moved), before);
    let first = moved.root_get(b"first").unwrap();
    assert_eq!(moved.offset_in_region(first), Some(first_offset));
    drop(moved);
    for f in [path, target] {
        let _ = std::fs::remove_file(f);
    }
}

// ---------------------------------------------------------------------------------------------
// The dirty flag: a clean close at exit, a kill leaves it set
// ---------------------------------------------------------------------------------------------

/// Set in the exit test's child process: `MODE` (`exit` or `hang`). The child's tiers come
/// from `TIERMALLOC_TIERS`, opened by the library's constructor as in any program.
const EXIT_ENV: &str = "TIERMALLOC_TEST_EXIT_CHILD";

/// The exit test's child (a no-op unless `EXIT_ENV` is set): allocates a block on the PMR
/// tier the library opened, stamps it, names it root "exit"; then returns (the process exits
/// through the library's exit hook) or, in mode `hang`, waits to be killed.
#[test]
fn exit_child() {
    let Ok(mode) = std::env::var(EXIT_ENV) else {
        return;
    };
    let tier = crate::device::get(crate::kind::Kind::Pmr).expect("the pmr tier opened");
    let p = tier.alloc(3000, 16).unwrap();
    // SAFETY: the block holds 3000 bytes.
    unsafe { (p as *mut u64).write(0x0e_c0de) };
    tier.root_set(b"exit", Some(p)).unwrap();
    println!("allocated");
    if mode == "hang" {
        loop {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// A process that exits normally leaves its heap marked clean (the exit hook); one killed
/// with SIGKILL leaves it dirty; the next open says which (`previous_run_clean`, the offline
/// checker), and recovers the same blocks either way.
#[test]
fn a_clean_exit_leaves_the_heap_clean_and_a_kill_leaves_it_dirty() {
    let path = shm("exit");
    let exe = std::env::current_exe().unwrap();
    let child_test = concat!(module_path!(), "::exit_child");
    let child_test = child_test.split_once("::").unwrap().1;
    let child = |mode: &str| {
        // The library opens the tier as the child starts: a fork of this process that still
        // shares the descriptor of the tier `recovered_roots` just closed must let go first.
        crate::backend::lock_wait::wait_until_unlocked(&path, || {});
        std::process::Command::new(&exe)
            .args(["--exact", child_test, "--nocapture", "--test-threads=1"])
            .env(EXIT_ENV, mode)
            // DRAM first: the test binary's own mallocs stay off the tier.
            .env(
                "TIERMALLOC_TIERS",
                format!("dram;pmr:path={path},size=1M,create"),
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let recovered_roots = |clean: bool, runs: usize| {
        let report = check::check_file(std::path::Path::new(&path), 0).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(
            report.closed_cleanly, clean,
            "the checker's report: {report:?}"
        );
        assert_eq!(
            report.blocks + report.slots,
            runs as u64,
            "one block per run"
        );
        let tier = open("pmr", &path, "").unwrap();
        assert_eq!(tier.previous_run_clean(), Some(clean));
        let p = tier.root_get(b"exit").expect("the root survives");
        // SAFETY: a live block of 3000 bytes.
        assert_eq!(unsafe { (p as *const u64).read() }, 0x0e_c0de);
        assert_eq!(live_blocks(&tier).len(), runs);
        // Dropping a tier closes it as an exit does.
        drop(tier);
        assert!(
            check::check_file(std::path::Path::new(&path), 0)
                .unwrap()
                .closed_cleanly
        );
    };

    // A normal exit.
    let status = child("exit").wait().unwrap();
    assert!(status.success(), "{status:?}");
    recovered_roots(true, 1);

    // A kill once the block is made.
    let mut killed = child("hang");
    let out = std::io::BufReader::new(killed.stdout.take().unwrap());
    let made = std::io::BufRead::lines(out).any(|line| line.unwrap().contains("allocated"));
    assert!(made, "the child ended before allocating");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(killed.id() as i32, libc::SIGKILL) };
    killed.wait().unwrap();
    recovered_roots(false, 2);

    // A fresh open formats: no previous run.
    let tier = open("pmr", &path, ",fresh").unwrap();
    assert_eq!(tier.previous_run_clean(), None);
    drop(tier);
    std::fs::remove_file(path).unwrap();
}

/// Blocks are cut from the end of free space, so a new block has the free space in front of
/// it; a block whose neighbour behind was freed still grows in place into that space, and
/// the grown block, its contents and the rest of the free space recover.
#[test]
fn a_block_grows_in_place_into_the_free_extent_behind_it() {
    let path = shm("grow");
    let tier = open("pmr", &path, ",size=1M,create").unwrap();
    let fresh = tier.stats();
    let behind = tier.alloc(20000, 16).unwrap();
    let p = tier.alloc(10000, 16).unwrap();
    let usable = tier.usable_size(p).unwrap() as u64;
    assert_eq!(
        header_offset(&tier, p) + HEADER_SIZE + usable,
        header_offset(&tier, behind),
        "cut from the end: the later block lies right in front of the earlier one"
    );
    assert!(
        !tier.resize_in_place(p, 15000),
        "grew over a live neighbour"
    );
    tier.free(behind).unwrap();
    assert!(
        tier.resize_in_place(p, 25000),
        "no growth into the free extent behind"
    );
    assert!(tier.usable_size(p).unwrap() >= 25000);
    // SAFETY: the block holds at least 25000 bytes now.
    unsafe { p.add(24992).cast::<u64>().write_unaligned(0x9a0e) };
    let offset = tier.offset_in_region(p).unwrap();
    let grown = tier.usable_size(p).unwrap() as u64;
    drop(tier);
    let report = check::check_file(std::path::Path::new(&path), 0).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let tier = open("pmr", &path, "").unwrap();
    assert_eq!(live_blocks(&tier), vec![(offset, grown)]);
    let p = tier.at_offset(offset).unwrap();
    // SAFETY: as above, recovered.
    assert_eq!(
        unsafe { p.add(24992).cast::<u64>().read_unaligned() },
        0x9a0e
    );
    tier.free(p).unwrap();
    let s = tier.stats();
    assert_eq!(
        (s.in_use, s.largest_free),
        (fresh.in_use, fresh.largest_free)
    );
    drop(tier);
    std::fs::remove_file(path).unwrap();
}

/// Opens the tier at `path` as a second "host" would: without this host's file lock (which
/// another host's kernel does not see), so that only the owner record can refuse it.
fn open_unlocked(path: &str, keys: &str) -> Result<DeviceTier, crate::backend::Problem> {
    crate::backend::NO_HOST_LOCK.with(|n| n.set(true));
    let tier = open_once("pmr", path, keys);
    crate::backend::NO_HOST_LOCK.with(|n| n.set(false));
    tier
}

fn my_pid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::getpid() as u32 }
}

/// The owner record: a second opener (fresh or persist) is refused while the owner lives,
/// naming its pid and host, and leaves the heap as it was; from "another host" (another host
/// id) it is refused while the owner's heartbeat is younger than the lease, and takes the
/// tier over after; the old owner's heartbeat then reports the claim lost. A clean close
/// gives the record back.
#[test]
fn the_owner_record_refuses_a_second_opener_until_the_owner_is_gone() {
    use super::owner::{TEST_HOST, TEST_LEASE_MS};
    let path = shm("owner");
    let first = open("pmr", &path, ",size=1M,create").unwrap();
    let p = first.alloc(3000, 16).unwrap();
    let offset = first.offset_in_region(p).unwrap();
    let before = image_of(&first);
    // Another host (another host id): the owner's heartbeat is fresh.
    TEST_HOST.with(|h| h.set(crate::liveness::host_id() ^ 0x5eed));
    for keys in ["", ",fresh", ",format"] {
        let refused = open_unlocked(&path, keys)
            .err()
            .expect("a second opener is refused");
        let holder = refused.holder.expect("the refusal names the owner");
        assert_eq!(holder.pid, my_pid(), "{keys}");
        assert_eq!(
            holder.host_name().as_bytes(),
            &crate::liveness::host_name()[..holder.host_name().len()]
        );
    }
    assert!(image_of(&first) == before, "a refused opener wrote nothing");
    assert!(first.heartbeat(), "the claim is still ours");
    let beat = std::time::Instant::now();

    // The lease decides (the owner here never beats again: no heartbeat thread). An opener
    // that got in must have come after the lease ran out: a loaded machine can stall this
    // thread past it, which is no failure of the record.
    TEST_LEASE_MS.with(|l| l.set(1000));
    let lease = std::time::Duration::from_millis(1000);
    let within = |what: &str| {
        let refused = open_unlocked(&path, "").is_err();
        assert!(refused || beat.elapsed() >= lease, "{what}");
    };
    within("within the lease");
    std::thread::sleep(std::time::Duration::from_millis(600));
    within("still within the lease");
    // 1.2 s after the owner's last beat, 0.6 s after the last refusal: a refused opener must
    // not have made the owner's lease young again.
    std::thread::sleep(std::time::Duration::from_millis(600));
    let second = open_unlocked(&path, "").expect("the lease ran out: taken over");
    TEST_HOST.with(|h| h.set(0));
    TEST_LEASE_MS.with(|l| l.set(0));
    assert!(
        second.at_offset(offset).is_some(),
        "the heap recovered with its block"
    );
    assert!(!first.heartbeat(), "the old owner sees its claim lost");
    drop(first);
    drop(second);
    // Both closed: the record is free, and a new opener takes it.
    let third = open_unlocked(&path, "").expect("a released record is free");
    drop(third);
    // A record naming this very process (an earlier image of it: `exec` keeps the pid and
    // runs no exit hook, so the claim stays) is ours to take.
    // (Opened without the host lock: a child that another test of this binary is spawning
    // at this moment may still hold a copy of `first`'s descriptor, and with it its lock,
    // until it executes; the record, not the lock, is what this part checks.)
    let earlier = open_unlocked(&path, "").unwrap();
    core::mem::forget(earlier); // exits without closing, as an image replaced by exec
    let again = open_unlocked(&path, "").expect("our own earlier claim is taken back");
    drop(again);
    std::fs::remove_file(path).unwrap();
}

const OWNER_ENV: &str = "TIERMALLOC_TEST_OWNER_CHILD";

/// The owner child (a no-op unless `OWNER_ENV` is set): opens the tier at PATH, writes READY,
/// and waits to be killed.
#[test]
fn owner_child() {
    let Ok(args) = std::env::var(OWNER_ENV) else {
        return;
    };
    let (path, ready) = args.split_once(' ').unwrap();
    let _tier = open("pmr", path, "").unwrap();
    std::fs::write(ready, b"ready").unwrap();
    std::thread::sleep(std::time::Duration::from_secs(60));
}

/// Two processes: while a child holds the tier, this process is refused, by the host's lock
/// and by the owner record alike, each naming the child's pid; after `kill -9` of the child
/// the tier opens at once (its pid is gone) and the record names this process.
#[test]
fn a_killed_owner_is_taken_over_at_once_on_its_host() {
    let path = shm("owner-kill");
    let ready = shm("owner-ready");
    drop(open("pmr", &path, ",size=1M,create").unwrap());
    let exe = std::env::current_exe().unwrap();
    let child_test = concat!(module_path!(), "::owner_child");
    let child_test = child_test.split_once("::").unwrap().1;
    let mut child = std::process::Command::new(&exe)
        .args(["--exact", child_test, "--nocapture", "--test-threads=1"])
        .env(OWNER_ENV, format!("{path} {ready}"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !std::path::Path::new(&ready).exists() {
        assert!(
            started.elapsed().as_secs() < 20,
            "the owner child never opened the tier"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let by_lock = open_once("pmr", &path, "")
        .err()
        .expect("the host lock refuses");
    assert_eq!(by_lock.what, crate::backend::IN_USE);
    assert_eq!(
        by_lock.holder.map(|h| h.pid),
        Some(child.id()),
        "named from the record"
    );
    let by_record = open_unlocked(&path, "")
        .err()
        .expect("the owner record refuses");
    assert_eq!(by_record.holder.map(|h| h.pid), Some(child.id()));

    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let tier = open_unlocked(&path, "").expect("a dead owner's record is taken over");
    drop(tier);
    let tier = open("pmr", &path, "").expect("and the host lock is gone with the process");
    assert!(tier.heartbeat());
    drop(tier);
    let _ = std::fs::remove_file(ready);
    std::fs::remove_file(path).unwrap();
}

/// A claim whose record was never finished (its process killed between the compare-and-swap
/// and the stamp): judged by the claim word alone; a dead pid of this host is taken over at
/// once, a live one refuses, named with its pid.
#[test]
fn an_unfinished_claim_is_judged_by_its_pid() {
    let path = shm("owner-unfinished");
    drop(open("pmr", &path, ",size=1M,create").unwrap());
    let host_half = crate::liveness::host_id() & 0xffff_ffff;
    let claim_by = |pid: u32| {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&(host_half << 32 | u64::from(pid)).to_le_bytes(), 64)
            .unwrap();
        file.write_all_at(&0u64.to_le_bytes(), 72).unwrap(); // no stamp: unfinished
    };
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    claim_by(dead);
    drop(open_unlocked(&path, "").expect("a dead pid's unfinished claim is taken over"));
    let mut live = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    claim_by(live.id());
    let refused = open_unlocked(&path, "")
        .err()
        .expect("a live pid's unfinished claim refuses");
    let holder = refused.holder.unwrap();
    assert_eq!((holder.pid, holder.host_name()), (live.id(), "?"));
    live.kill().unwrap();
    live.wait().unwrap();
    std::fs::remove_file(path).unwrap();
}

/// A user who points a `cxl` or `cmb` tier at a pmr tier's file (a configuration copied and
/// its kind changed): the tier is `fresh` by its kind's default, and formatted the persistent
/// heap, roots and blocks gone, without a word. It is refused, untouched; `persist` recovers
/// it, `fresh` or `format` overwrites it.
#[test]
fn a_pmr_heap_is_not_formatted_by_a_default_fresh_tier() {
    let path = shm("kind");
    let tier = open("pmr", &path, ",size=1M,create").unwrap();
    let p = tier.alloc(5000, 16).unwrap();
    let offset = tier.offset_in_region(p).unwrap();
    drop(tier);
    let before = std::fs::read(&path).unwrap();
    for (kind, keys) in [("cxl", ""), ("cmb", ""), ("cxl", ",size=512K")] {
        let refused = open(kind, &path, keys).err().expect("a pmr heap refused");
        assert!(
            refused.what.contains("pmr tier's persistent heap"),
            "{kind}{keys}: {}",
            refused.what
        );
        assert!(
            std::fs::read(&path).unwrap() == before,
            "{kind}: the file was written"
        );
    }
    let tier = open("cxl", &path, ",persist").unwrap();
    assert_eq!(
        tier.usable_size(tier.at_offset(offset).unwrap()),
        Some(5008)
    );
    drop(tier);
    let tier = open("cxl", &path, ",fresh").unwrap();
    assert_eq!(tier.stats().in_use, 0, "fresh formats it");
    drop(tier);
    std::fs::remove_file(path).unwrap();
}

/// A heap written by a library of another layout version (an upgrade or a downgrade) was
/// called "data that is not a tiermalloc heap", which invites `format`, the one key that loses
/// it. It is named for what it is, and left untouched.
#[test]
fn a_heap_of_another_layout_version_is_named_so() {
    let path = shm("layout");
    drop(open("pmr", &path, ",size=1M,create").unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&(superblock::LAYOUT_VERSION + 1).to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    for kind in ["pmr", "cxl"] {
        let refused = open(kind, &path, "").err().expect("another layout refused");
        assert!(
            refused.what.contains("another layout version"),
            "{kind}: {}",
            refused.what
        );
        assert!(
            std::fs::read(&path).unwrap() == bytes,
            "{kind}: the file was written"
        );
    }
    let tier = open("pmr", &path, ",format").unwrap();
    assert_eq!(tier.stats().in_use, 0);
    drop(tier);
    std::fs::remove_file(path).unwrap();
}

/// A tier pointed at the shared pool's file (`TIERMALLOC_POOL`'s path copied into
/// `TIERMALLOC_TIERS`): refused as "data that is not a tiermalloc heap ... (add format to
/// overwrite it)", the one key that would wipe every process's spaces. It names the pool.
#[test]
fn a_pool_file_is_named_as_the_pools() {
    let path = shm("poolfile");
    let pool = crate::pool::Pool::open_str(&format!("path={path},size=4M,create")).unwrap();
    drop(pool);
    let before = std::fs::read(&path).unwrap();
    for kind in ["pmr", "cxl"] {
        let refused = open(kind, &path, "").err().expect("a pool file refused");
        assert!(
            refused.what.contains("tiermalloc shared pool"),
            "{kind}: {}",
            refused.what
        );
        assert!(
            std::fs::read(&path).unwrap() == before,
            "{kind}: the file was written"
        );
    }
    std::fs::remove_file(path).unwrap();
}

/// After a recovery `allocations` was 0 while `in_use` counted the recovered blocks, and
/// freeing them made `frees` exceed `allocations`. The live blocks an open recovers, outside
/// slabs and in them, count as allocations of the run that opened the tier.
#[test]
fn recovered_blocks_count_as_allocations_of_the_run() {
    let path = shm("counts");
    let tier = open("pmr", &path, ",size=4M,create").unwrap();
    let big: Vec<_> = (0..5).map(|_| tier.alloc(20000, 16).unwrap()).collect();
    let small: Vec<_> = (0..7).map(|_| tier.alloc(100, 16).unwrap()).collect();
    tier.free(big[0]).unwrap();
    tier.free(small[0]).unwrap();
    let s = tier.stats();
    assert_eq!((s.allocations, s.frees), (12, 2));
    drop(tier);
    let tier = open("pmr", &path, "").unwrap();
    let s = tier.stats();
    assert!(s.in_use > 0);
    assert_eq!(
        (s.allocations, s.frees),
        (10, 0),
        "the 10 live blocks recovered"
    );
    for (offset, _) in live_blocks(&tier) {
        tier.free(tier.at_offset(offset).unwrap()).unwrap();
    }
    let s = tier.stats();
    assert_eq!((s.in_use, s.allocations, s.frees), (0, 10, 10));
    drop(tier);
    std::fs::remove_file(path).unwrap();
}
