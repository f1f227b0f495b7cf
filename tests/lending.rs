//! Capacity lending (seed 000) between processes sharing a pool: tiers `cxl:pool,share=4M`
//! of three nodes (`tests/programs/lend_node.c`, run under `LD_PRELOAD` of the cdylib and
//! driven one command a line on stdin) over one arena of 12 extents of 1 MiB, one block of
//! 768 KiB per extent. A node that exceeds its share borrows from another; when all are
//! saturated `tm_malloc(TM_CXL)` gets ENOMEM and plain `malloc` spills to DRAM; the registry
//! (`tm_pool_nodes`), `tm_get_stats` and the `TIERMALLOC_SHOW_STATS` report say who lent to
//! whom; a `kill -9` of either side loses no capacity. The protocol's own model is
//! `lockfree::lend_table` (unit and loom tests there).

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::{library, scrubbed_env, Scrub};

const MIB: u64 = 1 << 20;
const ENOMEM: i32 = 12;
/// 16 KiB of table and 12 extents of 1 MiB.
const ARENA: &str = "12304K";
const SCRUB: Scrub = Scrub {
    prefixes: &["MALLOC_"],
    keep: &[],
    exact: &[],
};

/// The compiled node program (once per test binary).
fn node_program() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tiermalloc-lend-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("lend_node");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let status = Command::new("cc")
            .args(["-O1", "-Wall", "-Werror", "-I"])
            .arg(root.join("include"))
            .arg("-o")
            .arg(&exe)
            .arg(root.join("tests/programs/lend_node.c"))
            .arg(&library().path)
            .status()
            .expect("cc runs");
        assert!(status.success(), "compiling lend_node.c failed");
        exe
    })
}

/// A pool file of its own for one test, removed at the end.
struct PoolFile(String);

impl PoolFile {
    fn new(test: &str) -> PoolFile {
        let path = format!("/dev/shm/tm-lend-{test}-{}", std::process::id());
        let _ = std::fs::remove_file(&path);
        PoolFile(path)
    }
    fn spec(&self) -> String {
        format!("path={},size=32M,create", self.0)
    }
    /// A node with a share of `share` MiB.
    fn node(&self, share: u64) -> Node {
        self.node_on(share, None)
    }
    /// A node with a share of `share` MiB claiming to run on host `host` (the pool's test key
    /// `host=`), or on this one.
    fn node_on(&self, share: u64, host: Option<u64>) -> Node {
        self.node_with(share, host, &[])
    }
    /// `node_on` with more environment.
    fn node_with(&self, share: u64, host: Option<u64>, env: &[(&str, &str)]) -> Node {
        let pool = match host {
            Some(h) => format!("{},host={h}", self.spec()),
            None => self.spec(),
        };
        let stderr = format!(
            "{}-{}.err",
            self.0,
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let child = Command::new(node_program())
            .env_clear()
            .envs(scrubbed_env(&SCRUB))
            .env("LD_PRELOAD", &library().path)
            .env("TIERMALLOC_POOL", pool)
            .env(
                "TIERMALLOC_TIERS",
                format!("dram;cxl:pool,share={share}M,size={ARENA}"),
            )
            // Only the test's 768 KiB blocks go to the pool tier, not libc's own.
            .env("TIERMALLOC_PLACE", "cxl:min=512K")
            .env("TIERMALLOC_SHOW_STATS", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let pid = child.id();
        let node = Node { child, pid, stderr };
        let mut node = node;
        node.wait_for("ready");
        node
    }
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Drop for PoolFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Node {
    child: Child,
    pid: u32,
    stderr: String,
}

/// A node's line `node pid P share S in_use U lent L borrowed B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Listed {
    pid: u32,
    share: u64,
    in_use: u64,
    lent: u64,
    borrowed: u64,
}

impl Node {
    /// Reads lines until one starts with `prefix`; returns it (a byte at a time: nothing
    /// after it is swallowed).
    fn wait_for(&mut self, prefix: &str) -> String {
        loop {
            let line = read_line(&mut self.child);
            assert!(
                !line.is_empty(),
                "node {} ended before {prefix:?}: {}",
                self.pid,
                self.stderr_text()
            );
            if line.starts_with(prefix) {
                return line.trim_end().to_owned();
            }
        }
    }
    fn ask(&mut self, command: &str, answer: &str) -> String {
        writeln!(self.child.stdin.as_mut().unwrap(), "{command}").unwrap();
        self.wait_for(answer)
    }
    /// `take N`: (blocks got, errno of the failure or 0).
    fn take(&mut self, n: usize) -> (usize, i32) {
        let line = self.ask(&format!("take {n}"), "took");
        let w: Vec<&str> = line.split(' ').collect();
        (w[1].parse().unwrap(), w[3].parse().unwrap())
    }
    /// `stats`: (capacity, lent, borrowed) of the pool tier.
    fn stats(&mut self) -> (u64, u64, u64) {
        let line = self.ask("stats", "stats");
        let w: Vec<&str> = line.split(' ').collect();
        (
            w[2].parse().unwrap(),
            w[6].parse().unwrap(),
            w[8].parse().unwrap(),
        )
    }
    fn nodes(&mut self) -> Vec<Listed> {
        writeln!(self.child.stdin.as_mut().unwrap(), "nodes").unwrap();
        let mut v = Vec::new();
        loop {
            let line = self.wait_for("");
            if line == "end" {
                return v;
            }
            if let Some(rest) = line.strip_prefix("node ") {
                let w: Vec<u64> = rest
                    .split(' ')
                    .skip(1)
                    .step_by(2)
                    .map(|x| x.parse().unwrap())
                    .collect();
                v.push(Listed {
                    pid: w[0] as u32,
                    share: w[1],
                    in_use: w[2],
                    lent: w[3],
                    borrowed: w[4],
                });
            }
        }
    }
    fn listed(&mut self, pid: u32) -> Listed {
        let all = self.nodes();
        *all.iter()
            .find(|n| n.pid == pid)
            .unwrap_or_else(|| panic!("{pid} not in {all:?}"))
    }
    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let _ = std::fs::remove_file(&self.stderr);
    }
    /// Exits; its stderr (the statistics report).
    fn exit(mut self) -> String {
        let _ = writeln!(self.child.stdin.as_mut().unwrap(), "exit");
        let status = self.child.wait().unwrap();
        let text = self.stderr_text();
        assert!(
            status.success(),
            "node {} failed: {status:?}: {text}",
            self.pid
        );
        let _ = std::fs::remove_file(&self.stderr);
        text
    }
}

#[test]
fn a_borrows_from_b_the_registry_and_stats_say_so_and_saturation_fails_or_spills() {
    let pool = PoolFile::new("abc");
    // B uses 1 of its 4 extents (3 idle), C all 4 of its own (saturated).
    let mut b = pool.node(4);
    assert_eq!(b.take(1), (1, 0));
    let mut c = pool.node(4);
    assert_eq!(c.take(4), (4, 0));
    // A needs 8 blocks: its own 4, then B lends its 3 idle extents, then every node is
    // saturated: tm_malloc(TM_CXL) fails with ENOMEM.
    let mut a = pool.node(4);
    assert_eq!(
        a.take(8),
        (7, ENOMEM),
        "4 own, 3 borrowed from B, then ENOMEM"
    );
    // Plain malloc spills to the next tier, DRAM.
    assert_eq!(a.ask("plain 2", "plain"), "plain cxl 0 dram 2 failed 0");
    // The tier's statistics: A borrowed 3 MiB, B lent 3 MiB, C neither.
    let (a_capacity, a_lent, a_borrowed) = a.stats();
    assert_eq!((a_lent, a_borrowed), (0, 3 * MIB));
    assert_eq!(
        a_capacity,
        7 * (MIB - 16),
        "A holds 7 extents (less their fences)"
    );
    assert_eq!(b.stats().1, 3 * MIB, "B lent 3 MiB");
    assert_eq!(c.stats().1 + c.stats().2, 0);
    // The registry, as any node lists it.
    let la = c.listed(a.pid);
    let lb = c.listed(b.pid);
    let lc = c.listed(c.pid);
    assert_eq!(
        (la.share, la.in_use, la.lent, la.borrowed),
        (4 * MIB, 7 * MIB, 0, 3 * MIB)
    );
    assert_eq!(
        (lb.share, lb.in_use, lb.lent, lb.borrowed),
        (4 * MIB, MIB, 3 * MIB, 0)
    );
    assert_eq!(
        (lc.share, lc.in_use, lc.lent, lc.borrowed),
        (4 * MIB, 4 * MIB, 0, 0)
    );
    // TIERMALLOC_SHOW_STATS's report names the loan.
    a.ask("report", "reported");
    let report = a.stderr_text();
    let line = format!("pool: pid {} lent 3.0 MiB to pid {}", b.pid, a.pid);
    assert!(report.contains(&line), "no {line:?} in:\n{report}");
    assert!(
        report.contains("share of the pool: lent 0 B, borrowed 3.0 MiB"),
        "{report}"
    );
    // A frees everything: B's extents go back to B, idle.
    a.ask("free", "freed");
    assert_eq!(b.stats().1, 0, "B's loan came back");
    assert_eq!(
        a.stats(),
        (MIB - 16, 0, 0),
        "A holds nothing borrowed, and one empty extent of its own (kept for the next block)"
    );
    let lb = c.listed(b.pid);
    assert_eq!((lb.lent, lb.in_use), (0, MIB));
    // With the loan back, B can use its whole share again.
    assert_eq!(b.take(3), (3, 0));
    for n in [a, b, c] {
        n.exit();
    }
}

#[test]
fn a_node_of_the_same_host_lends_first() {
    let pool = PoolFile::new("hosts");
    // B on host 2 with 4 idle extents, C on host 1 with 2; A on host 1 needs 3 beyond its
    // share: C's two first, then one of B's.
    let mut b = pool.node_on(4, Some(2));
    let mut c = pool.node_on(4, Some(1));
    assert_eq!(c.take(2), (2, 0));
    let mut a = pool.node_on(4, Some(1));
    assert_eq!(a.take(6), (6, 0));
    assert_eq!(c.stats().1, 2 * MIB, "the same host's node lent first");
    assert_eq!(b.stats().1, 0, "the other host's node was not asked yet");
    assert_eq!(a.take(1), (1, 0));
    assert_eq!(b.stats().1, MIB, "then the other host's");
    for n in [a, b, c] {
        n.exit();
    }
}

#[test]
fn kill_9_of_the_borrower_returns_the_lenders_capacity() {
    let pool = PoolFile::new("killa");
    let mut b = pool.node(4);
    let mut a = pool.node(4);
    let mut c = pool.node(4);
    assert_eq!(c.take(4), (4, 0), "C saturated: A can borrow only from B");
    assert_eq!(a.take(7), (7, 0));
    assert_eq!(b.stats().1, 3 * MIB);
    let a_pid = a.pid;
    a.kill9();
    // B needs its whole share: its lent extents come back from the dead borrower.
    assert_eq!(b.take(4), (4, 0), "B's capacity came back");
    assert_eq!(b.stats(), (4 * (MIB - 16), 0, 0));
    let listed = b.nodes();
    assert!(listed.iter().all(|n| n.pid != a_pid), "{listed:?}");
    // A's own share went back to the pool: a new node gets a whole share.
    let mut d = pool.node(4);
    assert_eq!(d.take(4), (4, 0));
    for n in [b, c, d] {
        n.exit();
    }
}

#[test]
fn a_forked_child_takes_nothing_from_the_pool() {
    let pool = PoolFile::new("fork");
    let mut a = pool.node(4);
    assert_eq!(a.take(2), (2, 0));
    let before = a.stats();
    // The child's copy of the tier is private (device::fork): it could use the room its copy
    // has (none fits a block here), but receives no extent of the pool and gives none back.
    assert_eq!(a.ask("fork", "forked"), "forked child took 0");
    assert_eq!(a.stats(), before);
    let listed = a.listed(a.pid);
    assert_eq!((listed.share, listed.in_use), (4 * MIB, 2 * MIB));
    a.exit();
    assert_nothing_lost(&pool, 0);
}

/// Every extent of the arena is to be had again: a node asking for all 12 gets them (once
/// the nodes before it are gone).
fn assert_nothing_lost(pool: &PoolFile, round: usize) {
    let mut z = pool.node(12);
    assert_eq!(z.take(13), (12, ENOMEM), "round {round}: capacity lost");
    z.ask("free", "freed");
    z.exit();
}

#[test]
fn kill_9_of_the_lender_while_lending_loses_nothing() {
    let pool = PoolFile::new("killb");
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut round = 0;
    let mut x: u64 = 0x9e37_79b9 ^ std::process::id() as u64;
    while round < 6 || Instant::now() < deadline {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = pool.node(4);
        let mut a = pool.node(4);
        // B uses a little of its share, A more than its own: A borrows from B.
        b.take(1);
        a.take(6);
        // Both churn; B is killed at whatever step it is in, while A may be borrowing.
        writeln!(b.child.stdin.as_mut().unwrap(), "churn 100000").unwrap();
        writeln!(a.child.stdin.as_mut().unwrap(), "churn 2000").unwrap();
        std::thread::sleep(Duration::from_micros(x % 20_000));
        b.kill9();
        a.wait_for("churned");
        if x % 2 == 0 {
            // A gives everything back (to a dead owner: to the pool), then exits.
            a.ask("free", "freed");
            a.exit();
        } else {
            a.kill9();
        }
        assert_nothing_lost(&pool, round);
        round += 1;
    }
}

#[test]
fn kill_9_at_random_points_of_three_nodes_loses_nothing() {
    let pool = PoolFile::new("churn");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut round = 0;
    let mut x: u64 = 0x2545_f491 ^ std::process::id() as u64;
    while round < 4 || Instant::now() < deadline {
        let mut nodes: Vec<Node> = (0..3).map(|_| pool.node(4)).collect();
        for n in &mut nodes {
            writeln!(n.child.stdin.as_mut().unwrap(), "churn 1000000").unwrap();
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_micros(500 + x % 30_000));
        for n in nodes {
            n.kill9();
        }
        assert_nothing_lost(&pool, round);
        round += 1;
    }
}

/// A pool-node child role for the test below: this test binary run again with TM_LEND_ROLE.
#[test]
fn child() {
    let Ok(role) = std::env::var("TM_LEND_ROLE") else {
        return;
    };
    assert_eq!(role, "pool-node");
    let pool = tiermalloc::pool::Pool::open_str(&std::env::var("TM_LEND_POOL").unwrap()).unwrap();
    pool.nodes(|_| {}).unwrap();
    println!("joined");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

/// Reads lines from the child until one holds `prefix`.
fn wait_for(child: &mut Child, prefix: &str) -> String {
    loop {
        let line = read_line(child);
        assert!(!line.is_empty(), "child ended before {prefix:?}");
        // The harness may have written "test child ... " before our line, on the same line.
        if let Some(at) = line.find(prefix) {
            return line[at..].to_owned();
        }
    }
}

/// One line of the child's output, "" at its end (a byte at a time: a buffered reader would
/// swallow the lines after it).
fn read_line(child: &mut Child) -> String {
    let out = child.stdout.as_mut().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while out.read(&mut byte).unwrap() == 1 {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

fn send(child: &mut Child, line: &str) {
    writeln!(child.stdin.as_mut().unwrap(), "{line}").unwrap();
}

fn kill9(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

fn finish(mut child: Child) {
    send(&mut child, "");
    assert!(child.wait().unwrap().success());
}

#[test]
fn tm_pool_nodes_lists_live_nodes_only() {
    let path = format!("/dev/shm/tm-lend-nodes-{}", std::process::id());
    let _ = std::fs::remove_file(&path);
    let spec = format!("path={path},size=4M,create");
    let pool = tiermalloc::pool::Pool::open_str(&spec).unwrap();
    let spawn = || {
        let mut c = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child", "--nocapture", "--test-threads=1"])
            .env("TM_LEND_ROLE", "pool-node")
            .env("TM_LEND_POOL", &spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        wait_for(&mut c, "joined");
        c
    };
    let (b, c) = (spawn(), spawn());
    let listed = || {
        let mut v = Vec::new();
        pool.nodes(|n| v.push(n)).unwrap();
        v
    };
    let nodes = listed();
    let pids: Vec<u32> = nodes.iter().map(|n| n.pid).collect();
    for pid in [std::process::id(), b.id(), c.id()] {
        assert!(pids.contains(&pid), "{pid} not in {nodes:?}");
    }
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert!(nodes.iter().all(|n| n.host == nodes[0].host), "one host");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(nodes
        .iter()
        .all(|n| now.saturating_sub(n.heartbeat_ns) < 60_000_000_000));
    let b_pid = b.id();
    kill9(b);
    let after: Vec<u32> = listed().iter().map(|n| n.pid).collect();
    assert!(
        !after.contains(&b_pid) && after.len() == 2,
        "a killed node is not listed: {after:?}"
    );
    finish(c);
    drop(pool);
    let _ = std::fs::remove_file(&path);
}

/// Reservation on the pool tier (seed 003): a profiled run records the pool tier's peak use
/// (in the pool itself); the next run of the name starts with its share raised to that (it
/// takes the same blocks without borrowing: they are its own), capped by
/// `TIERMALLOC_PROFILE_MAX`; a run without the profile keeps its `share=`.
#[test]
fn a_second_run_starts_with_the_share_the_first_used() {
    let pool = PoolFile::new("reserve");
    let dir = std::env::temp_dir().join(format!("tm-lend-reserve-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.to_str().unwrap().to_owned();
    let profiled = [
        ("TIERMALLOC_PROFILE", "lendres"),
        ("TIERMALLOC_PROFILE_DIR", dir_s.as_str()),
    ];
    // First run: a share of 6 MiB, 5 of them used.
    let mut first = pool.node_with(6, None, &profiled);
    assert_eq!(first.take(5), (5, 0));
    let err = first.exit();
    assert!(
        err.contains("pool  profile lendres: share reserved 0 B, peak 5242880 B"),
        "{err}"
    );

    // Second run: share=2M, but the profile reserves the 5 MiB the first used.
    let mut second = pool.node_with(2, None, &profiled);
    let me = second.listed(second.pid);
    assert_eq!(me.share, 5 * MIB, "{me:?}");
    assert_eq!(second.take(5), (5, 0));
    assert_eq!(second.listed(second.pid).borrowed, 0);
    let err = second.exit();
    assert!(
        err.contains("share reserved 5242880 B, peak 5242880 B"),
        "{err}"
    );

    // Capped by TIERMALLOC_PROFILE_MAX (3 MiB); without the profile, share= alone.
    let capped = [
        ("TIERMALLOC_PROFILE", "lendres"),
        ("TIERMALLOC_PROFILE_DIR", dir_s.as_str()),
        ("TIERMALLOC_PROFILE_MAX", "3M"),
    ];
    let mut third = pool.node_with(2, None, &capped);
    assert_eq!(third.listed(third.pid).share, 3 * MIB);
    let mut plain = pool.node(2);
    assert_eq!(plain.listed(plain.pid).share, 2 * MIB);
    third.exit();
    plain.exit();
    // The records were in the pool, not in the directory.
    assert!(
        std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none()),
        "records written to {dir_s}"
    );
}
