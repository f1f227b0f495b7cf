//! Capacity lending (seed 000) across processes: the protocol of `lockfree::lend_table` run by
//! real processes on one shared table (a file in /dev/shm mapped by each, as the pool's
//! device is), with a node's tag its pid and liveness "the pid exists". Each test's other
//! processes are this executable run again with `TM_LEND_ROLE`, which makes `child` play the
//! role. Not yet here: the pool-backed tier (`cxl:pool,share=`) that would drive this table
//! from `malloc` — see README, "Lending".

use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tiermalloc::lockfree::lend_table::{parts, Account, LendTable};

const EXTENTS: usize = 12;

/// The shared table, mapped from `path`.
struct Shared {
    words: &'static [AtomicU64],
}

fn map(path: &str) -> Shared {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    f.set_len(4096).unwrap();
    // SAFETY: mapping the file we sized, shared; it stays mapped for the process's life.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    // SAFETY: 4096 bytes of u64 words, accessed only atomically.
    Shared {
        words: unsafe { std::slice::from_raw_parts(p.cast::<AtomicU64>(), EXTENTS) },
    }
}

fn live(tag: u64) -> bool {
    // SAFETY: signal 0 only checks existence.
    unsafe { libc::kill(tag as i32, 0) == 0 }
}

fn me() -> u64 {
    std::process::id() as u64
}

/// The child roles. Each prints lines the parent waits for, and reads commands on stdin.
#[test]
fn child() {
    let Ok(role) = std::env::var("TM_LEND_ROLE") else {
        return;
    };
    if role == "pool-node" {
        // A node of the pool: joins, says so, waits.
        let pool =
            tiermalloc::pool::Pool::open_str(&std::env::var("TM_LEND_POOL").unwrap()).unwrap();
        pool.nodes(|_| {}).unwrap();
        println!("joined");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        return;
    }
    let s = map(&std::env::var("TM_LEND_TABLE").unwrap());
    let t = LendTable { words: s.words };
    let share: usize = std::env::var("TM_LEND_SHARE").unwrap().parse().unwrap();
    assert_eq!(t.grant(me(), share), share);
    let mut held = Vec::new();
    let use_own: usize = std::env::var("TM_LEND_USE").unwrap().parse().unwrap();
    for _ in 0..use_own {
        held.push(t.take_own(me()).unwrap());
    }
    let out = std::io::stdout();
    let say = |line: String| {
        let mut o = out.lock();
        writeln!(o, "{line}").unwrap();
        o.flush().unwrap();
    };
    match role.as_str() {
        "hold" => {}
        "borrow" => {
            // Needs `TM_LEND_NEED` more extents than its share: asks the others.
            let need: usize = std::env::var("TM_LEND_NEED").unwrap().parse().unwrap();
            let mut got = 0;
            for _ in 0..need {
                match t.borrow(me(), |_| 0) {
                    Some(i) => {
                        held.push(i);
                        got += 1;
                    }
                    None => break,
                }
            }
            say(format!("borrowed {got}"));
        }
        "churn" => {
            // Takes, borrows and gives back at random until killed.
            let mut x = me() | 1;
            loop {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match x % 3 {
                    0 => held.extend(t.take_own(me())),
                    1 => held.extend(t.borrow(me(), |_| 0)),
                    _ => {
                        if let Some(i) = held.pop() {
                            assert!(t.release(me(), i));
                        }
                    }
                }
            }
        }
        other => panic!("unknown role {other}"),
    }
    say(format!("ready {:?}", t.account(me())));
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    if line.trim() == "give back" {
        for i in held.drain(..) {
            t.release(me(), i);
        }
        say(format!("given back {:?}", t.account(me())));
        line.clear();
        let _ = std::io::stdin().read_line(&mut line);
    }
    t.leave(me());
}

struct Table {
    path: String,
    s: Shared,
}

impl Table {
    fn new(test: &str) -> Table {
        let path = format!("/dev/shm/tm-lend-{test}-{}", std::process::id());
        let _ = std::fs::remove_file(&path);
        let s = map(&path);
        Table { path, s }
    }
    fn t(&self) -> LendTable<'static> {
        LendTable {
            words: self.s.words,
        }
    }
    fn spawn(&self, role: &str, share: usize, use_own: usize, need: usize) -> Child {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child", "--nocapture", "--test-threads=1"])
            .env("TM_LEND_ROLE", role)
            .env("TM_LEND_TABLE", &self.path)
            .env("TM_LEND_SHARE", share.to_string())
            .env("TM_LEND_USE", use_own.to_string())
            .env("TM_LEND_NEED", need.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    }
    /// Every extent: (unassigned, assigned) — assigned ones are in exactly one share.
    fn census(&self) -> (usize, usize) {
        let zero = self
            .s
            .words
            .iter()
            .filter(|w| w.load(Ordering::Acquire) == 0)
            .count();
        (zero, EXTENTS - zero)
    }
    fn loans(&self) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        self.t().loans(|l, b| v.push((l, b)));
        v
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads lines from the child until one holds `prefix`; returns the line from there, a byte at a time (a buffered
/// reader would swallow the lines after it).
fn wait_for(child: &mut Child, prefix: &str) -> String {
    let out = child.stdout.as_mut().unwrap();
    loop {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while out.read(&mut byte).unwrap() == 1 {
            line.push(byte[0]);
            if byte[0] == b'\n' {
                break;
            }
        }
        assert!(!line.is_empty(), "child ended before {prefix:?}");
        // The harness may have written "test child ... " before our line, on the same line.
        let line = String::from_utf8(line).unwrap();
        if let Some(at) = line.find(prefix) {
            return line[at..].to_owned();
        }
    }
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
fn a_borrows_from_b_and_every_saturated_node_says_so() {
    let table = Table::new("abc");
    // B: share 4, uses 1 (3 idle). C: share 2, uses 2 (saturated). A: share 2, uses 2, needs 5 more.
    let mut b = table.spawn("hold", 4, 1, 0);
    wait_for(&mut b, "ready");
    let mut c = table.spawn("hold", 2, 2, 0);
    wait_for(&mut c, "ready");
    let mut a = table.spawn("borrow", 2, 2, 5);
    let (pa, pb, pc) = (a.id() as u64, b.id() as u64, c.id() as u64);
    assert_eq!(
        wait_for(&mut a, "borrowed"),
        "borrowed 3\n",
        "B lends its 3 idle extents, then all are saturated"
    );
    wait_for(&mut a, "ready");
    assert_eq!(table.loans(), vec![(pb, pa); 3], "the table shows B -> A");
    assert_eq!(
        table.t().account(pa),
        Account {
            share: 2,
            in_use: 5,
            lent: 0,
            borrowed: 3
        }
    );
    assert_eq!(
        table.t().account(pb),
        Account {
            share: 4,
            in_use: 1,
            lent: 3,
            borrowed: 0
        }
    );
    assert_eq!(
        table.t().account(pc),
        Account {
            share: 2,
            in_use: 2,
            lent: 0,
            borrowed: 0
        }
    );
    assert_eq!(
        table.t().borrow(999_999_999, |_| 0),
        None,
        "a fourth node finds every node saturated"
    );
    // A gives back: B's extents are B's again, idle.
    send(&mut a, "give back");
    wait_for(&mut a, "given back");
    assert!(table.loans().is_empty());
    assert_eq!(table.t().account(pb).lent, 0);
    for child in [a, b, c] {
        finish(child);
    }
    assert_eq!(table.census(), (EXTENTS, 0), "every share back in the pool");
}

#[test]
fn kill_9_of_the_borrower_returns_the_lenders_capacity() {
    let table = Table::new("killa");
    let mut b = table.spawn("hold", 4, 0, 0);
    wait_for(&mut b, "ready");
    let mut a = table.spawn("borrow", 2, 2, 3);
    let (pa, pb) = (a.id() as u64, b.id() as u64);
    wait_for(&mut a, "ready");
    assert_eq!(table.t().account(pb).lent, 3);
    kill9(a);
    assert_eq!(
        table.t().reclaim(live),
        5,
        "A's 2 to the pool, B's 3 back to B"
    );
    assert_eq!(
        table.t().account(pb),
        Account {
            share: 4,
            in_use: 0,
            lent: 0,
            borrowed: 0
        }
    );
    assert_eq!(table.t().account(pa), Account::default());
    finish(b);
    assert_eq!(table.census(), (EXTENTS, 0));
}

#[test]
fn kill_9_of_the_lender_while_lending_loses_nothing() {
    let table = Table::new("killb");
    let mut b = table.spawn("hold", 4, 1, 0);
    wait_for(&mut b, "ready");
    let mut a = table.spawn("borrow", 2, 2, 2);
    let (pa, pb) = (a.id() as u64, b.id() as u64);
    wait_for(&mut a, "ready");
    kill9(b);
    // B's unlent extents go to the pool; the 2 A holds stay A's to use until it gives them back.
    assert_eq!(table.t().reclaim(live), 2);
    assert_eq!(table.t().account(pa).borrowed, 2);
    assert_eq!(table.loans(), vec![(pb, pa); 2]);
    send(&mut a, "give back");
    wait_for(&mut a, "given back");
    assert_eq!(
        table.t().reclaim(live),
        2,
        "given back to a dead owner: to the pool"
    );
    finish(a);
    assert_eq!(table.census(), (EXTENTS, 0));
}

#[test]
fn kill_9_at_random_points_loses_no_capacity() {
    let table = Table::new("churn");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut rounds = 0;
    let mut x: u64 = 0x9e37_79b9 ^ std::process::id() as u64;
    while Instant::now() < deadline || rounds < 10 {
        let kids: Vec<Child> = (0..3).map(|_| table.spawn("churn", 4, 0, 0)).collect();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_micros(200 + x % 5000));
        // Kill -9 each, at whatever step it is in.
        for k in kids {
            kill9(k);
        }
        // Every extent is in one state: reclaim returns all of it.
        table.t().reclaim(live);
        assert_eq!(
            table.census(),
            (EXTENTS, 0),
            "round {rounds}: capacity lost: {:x?}",
            table
                .s
                .words
                .iter()
                .map(|w| parts(w.load(Ordering::Relaxed)))
                .collect::<Vec<_>>()
        );
        rounds += 1;
    }
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
