//! Device memory is never read by `malloc` or `free`, and written only for the block header:
//! counted with `valgrind --tool=lackey --trace-mem=yes` over the tier's mapping while a C
//! program (benches/device/touches.c) runs tm_malloc + tm_free pairs on a tier backed by a
//! file in /dev/shm. Two patterns:
//!
//! - steady: a live block of every size stays through the loop, so each pair takes a slot of
//!   a slab with room. Bound: 0 bytes read, at most 32 written per pair, in at most two stores
//!   (the header as one 16-byte store on malloc, the state on free: on a PCIe BAR each store
//!   is a write transaction).
//! - churn: nothing else is live, so each pair makes a slab and retires it. The slab's marker
//!   header (16 B) and the size of the free extent it was cut from (8 B) are the writes a
//!   recovery scan needs to find slabs (src/device/persist); retiring writes nothing, and a
//!   slab cut again at the window of the last one cut, with the same free extent in front,
//!   skips both, as the device holds them already (src/device/persist/slab_memo.rs): 0 read,
//!   at most 32 written in at most three stores (18 in 2 when every pair re-cuts the same
//!   window). A pool tier (below) does not remember cuts: at most 42 in four.
//! - extents: 4..8 KiB blocks cut from the tier's free space and freed back into it: the
//!   header (16 B), the size of the free extent in front (8 B), the state (2 B): 0 read, at
//!   most 32 written in at most three stores.

mod support;

use std::process::Command;
use std::time::Duration;
use support::lackey::{data_access, Access};

const PAIRS: u64 = 2000;

struct Touches {
    loads: u64,
    stores: u64,
    /// Store instructions (a read-modify-write counts as one).
    store_ops: u64,
}

/// Sums the bytes lackey saw loaded and stored inside `[lo, hi)` between the two stores to
/// `marker`.
fn count(trace: &str, lo: u64, hi: u64, marker: u64) -> Touches {
    let mut inside = 0;
    let mut t = Touches {
        loads: 0,
        stores: 0,
        store_ops: 0,
    };
    for line in trace.lines() {
        let Some((access, addr, size)) = data_access(line) else {
            continue;
        };
        if addr == marker && access == Access::Store {
            inside += 1;
            continue;
        }
        if inside != 1 || addr < lo || addr >= hi {
            continue;
        }
        if access.loads() {
            t.loads += size;
        }
        if access.stores() {
            t.stores += size;
            t.store_ops += 1;
        }
    }
    assert_eq!(
        inside, 2,
        "the marker stores around the loop were not both seen"
    );
    t
}

#[test]
fn malloc_and_free_never_read_the_device_and_write_only_headers() {
    let steady = measure("steady", "1");
    within(&steady, "steady", 32, 2);
    assert!(
        steady.stores >= 16 * PAIRS,
        "headers were not written: {} bytes",
        steady.stores
    );
    within(&measure("extents", "2"), "extents", 32, 3);
    within(&measure("churn", "0"), "churn", 32, 3);
}

/// Asserts at most `bytes` written per pair in at most `stores` store instructions.
fn within(t: &Touches, pattern: &str, bytes: u64, stores: u64) {
    assert!(
        t.stores <= bytes * PAIRS,
        "{pattern}: {} bytes written for {PAIRS} pairs",
        t.stores
    );
    assert!(
        t.store_ops <= stores * PAIRS,
        "{pattern}: {} stores for {PAIRS} pairs (is the header written in one store?)",
        t.store_ops
    );
}

/// A tier from the shared pool (`cxl:pool,share=`) holds to the same bounds: its lend table
/// (the first page of the range measured) is touched only when an extent is received or given
/// back, which a pair never makes it do (the tier keeps one empty extent of its own).
#[test]
fn a_pool_tier_reads_nothing_either() {
    let pool = format!("/dev/shm/tiermalloc-touches-pool-{}", std::process::id());
    let env = [
        ("TIERMALLOC_POOL", format!("path={pool},size=16M,create")),
        (
            "TIERMALLOC_TIERS",
            "dram;cxl:pool,share=4M,size=8208K".to_owned(),
        ),
    ];
    let steady = measure_on("pool steady", "1", "1", &env);
    within(&steady, "pool steady", 32, 2);
    within(
        &measure_on("pool extents", "2", "1", &env),
        "pool extents",
        32,
        3,
    );
    within(
        &measure_on("pool churn", "0", "1", &env),
        "pool churn",
        42,
        4,
    );
    let _ = std::fs::remove_file(&pool);
}

/// Runs touches.c under lackey (`keep`: its pattern, see touches.c) and counts the device
/// accesses of its loop; asserts that nothing was read.
fn measure(name: &str, keep: &str) -> Touches {
    let backing = format!("/dev/shm/tiermalloc-touches-{}", std::process::id());
    let env = [(
        "TIERMALLOC_TIERS",
        format!("dram;pmr:path={backing},size=16M,create"),
    )];
    let t = measure_on(name, keep, "3", &env);
    let _ = std::fs::remove_file(&backing);
    t
}

/// `measure` on tier `kind` (its number) configured by `env`.
fn measure_on(name: &str, keep: &str, kind: &str, env: &[(&str, String)]) -> Touches {
    let valgrind = Command::new("valgrind").arg("--version").output();
    assert!(
        valgrind.is_ok_and(|o| o.status.success()),
        "valgrind is needed (apt-get install valgrind)"
    );
    let lib = support::library();
    let dir = support::TempDir::new("dt", "touches");
    let exe = dir.path().join("touches");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let libdir = lib.path.parent().unwrap();
    let status = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&exe)
        .arg(root.join("benches/device/touches.c"))
        .arg("-I")
        .arg(root.join("include"))
        .arg(format!("-L{}", libdir.display()))
        .arg(format!("-Wl,-rpath,{}", libdir.display()))
        .arg("-ltiermalloc")
        .status()
        .expect("cc runs");
    assert!(status.success(), "compiling touches.c failed");
    let log = dir.path().join("lackey.log");
    let mut cmd = Command::new("valgrind");
    // cargo test's LD_LIBRARY_PATH lists <profile>/ too, where an older `cargo build` may
    // have left another libtiermalloc.so; the rpath names the one under test.
    cmd.env_remove("LD_LIBRARY_PATH")
        .args(["--tool=lackey", "--trace-mem=yes"])
        .arg(format!("--log-file={}", log.display()))
        .arg(&exe)
        .args([kind, &PAIRS.to_string(), keep])
        .envs(env.iter().map(|(k, v)| (k, v)));
    let out = support::run_with_timeout(cmd, None, Duration::from_secs(300)).unwrap();
    assert!(
        out.status.success(),
        "touches failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> u64 {
        let line = stdout.lines().find(|l| l.starts_with(name)).expect(name);
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    let range_line = stdout.lines().find(|l| l.starts_with("range")).unwrap();
    let mut range = range_line
        .split_whitespace()
        .skip(1)
        .map(|h| u64::from_str_radix(h, 16).unwrap());
    let (lo, hi) = (range.next().unwrap(), range.next().unwrap());
    assert!(lo != 0 && hi > lo, "tier mapping not found: {stdout}");
    let trace = std::fs::read_to_string(&log).unwrap();
    let t = count(&trace, lo, hi, field("marker"));
    println!(
        "{name}: device bytes per tm_malloc + tm_free pair: read {:.2}, written {:.2} in {:.2} \
         stores ({} pairs)",
        t.loads as f64 / PAIRS as f64,
        t.stores as f64 / PAIRS as f64,
        t.store_ops as f64 / PAIRS as f64,
        PAIRS
    );
    assert_eq!(t.loads, 0, "malloc/free read device memory");
    t
}
