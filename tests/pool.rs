//! The shared pool (DESIGN.md "The shared pool"), across processes: each test's other
//! processes are this test executable run again with `TM_POOL_CHILD=ROLE`, which makes the
//! `child` test below play that role and exit (0 = its checks passed).
//!
//! Pools are files in /dev/shm named after the test and this process's id.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiermalloc::capi_pool::*;
use tiermalloc::pool::api::{MapMode, SpaceState};
use tiermalloc::pool::{testing, Pool};

const PAGE: usize = 4096;

/// A pool file, removed on drop.
struct PoolFile {
    path: String,
    size: &'static str,
    keys: &'static str,
}

impl PoolFile {
    fn new(test: &str, size: &'static str, keys: &'static str) -> PoolFile {
        let path = format!("/dev/shm/tm-pool-{test}-{}", std::process::id());
        let _ = std::fs::remove_file(&path);
        PoolFile { path, size, keys }
    }
    fn spec(&self) -> String {
        let mut s = format!("path={},size={},create", self.path, self.size);
        if !self.keys.is_empty() {
            s.push(',');
            s.push_str(self.keys);
        }
        s
    }
    fn open(&self) -> Arc<Pool> {
        Pool::open_str(&self.spec()).expect("pool opens")
    }
}

impl Drop for PoolFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        // check_flush's per-host shadows (`PATH.lines-HOST`).
        let (dir, name) = self.path.rsplit_once('/').unwrap();
        for f in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if f.file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}.lines-"))
            {
                let _ = std::fs::remove_file(f.path());
            }
        }
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn assert_consistent(pool: &Pool) {
    let problems = pool.check().expect("check takes the lock");
    assert!(problems.is_empty(), "pool inconsistent: {problems:#?}");
}

// ---------------------------------------------------------------------------------------------
// Children
// ---------------------------------------------------------------------------------------------

/// Starts this executable as child `role` on pool `spec`, with `extra` in its environment.
fn spawn(role: &str, spec: &str, extra: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("TM_POOL_CHILD", role)
        .env("TM_POOL_SPEC", spec)
        .env_remove("TIERMALLOC_POOL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn child")
}

/// Runs this executable as child `role` on pool `spec` to its end; its stdout and stderr.
fn run_to_end(role: &str, spec: &str) -> (String, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("TM_POOL_CHILD", role)
        .env("TM_POOL_SPEC", spec)
        .env_remove("TIERMALLOC_POOL")
        .output()
        .expect("run child");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits up to 60 s for `child`; its exit status.
fn wait(mut child: Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child timed out");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn run_child(
    role: &str,
    spec: &str,
    extra: &[(&str, String)],
) -> (std::process::ExitStatus, String) {
    let mut child = spawn(role, spec, extra);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    (wait(child), out)
}

/// Reads lines from the child's stdout until one starts with `prefix`.
fn wait_for_line(child: &mut Child, prefix: &str) -> String {
    let mut reader = BufReader::new(child.stdout.as_mut().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "child ended before saying {prefix}"
        );
        if line.contains(prefix) {
            return line.trim().to_string();
        }
    }
}

fn signal_of(status: &std::process::ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(status)
}

/// The child side: plays the role named by TM_POOL_CHILD, then exits. A no-op test otherwise.
#[test]
fn child() {
    let Ok(role) = std::env::var("TM_POOL_CHILD") else {
        return;
    };
    let spec = std::env::var("TM_POOL_SPEC").unwrap_or_default();
    let arg = |k: &str| std::env::var(k).unwrap_or_default();
    let pool = || Pool::open_str(&spec).expect("child opens the pool");
    match role.as_str() {
        "write-read-map" => {
            let pool = pool();
            let map = pool.open_space("data", MapMode::Read).unwrap();
            println!("mapped");
            // SAFETY: deliberately writing through a read-only mapping: must fault.
            unsafe { (map.as_ptr() as *mut u8).write_volatile(1) };
            std::process::exit(3);
        }
        "hold" => {
            // Opens the space READ and sleeps until killed (or a line on stdin).
            let pool = pool();
            let _map = pool.open_space("data", MapMode::Read).unwrap();
            println!("holding");
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
            std::process::exit(0);
        }
        "private-writer" => {
            let pool = pool();
            let mut map = pool.open_space("data", MapMode::Private).unwrap();
            let original = map.as_slice()[100];
            map.as_mut_slice().unwrap()[100] = original.wrapping_add(1);
            assert_eq!(map.as_slice()[100], original.wrapping_add(1));
            let other = pool.open_space("data", MapMode::Read).unwrap();
            assert_eq!(other.as_slice()[100], original, "a private write leaked");
            std::process::exit(0);
        }
        "churn" => churn(&pool(), &arg("TM_POOL_WHO"), 200),
        "steps" | "die" => {
            die_in_operation(&pool(), &arg("TM_POOL_OP"), &role, &arg("TM_POOL_STEP"))
        }
        "c-api" => c_api_child(),
        "fill-directory" => {
            let pool = pool();
            let made = (0..)
                .map(|i| pool.create_space(&format!("s{i}"), PAGE))
                .take_while(Result::is_ok)
                .map(std::mem::forget)
                .count();
            println!("made {made}");
        }
        "read-touch-hold" => {
            // Opens `data` READ, reads every page, and waits to be killed.
            let pool = pool();
            let map = pool
                .open_space(&arg("TM_POOL_NAME"), MapMode::Read)
                .unwrap();
            let sum: u64 = map.as_slice().iter().step_by(PAGE).map(|&b| b as u64).sum();
            println!("holding {sum}");
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
            std::process::exit(0);
        }
        "open-expect" => {
            // Opens TM_POOL_NAME READ: prints "opened" and checks the bytes, or prints the error.
            let pool = pool();
            match pool.open_space(&arg("TM_POOL_NAME"), MapMode::Read) {
                Ok(map) => {
                    let want = pattern(arg("TM_POOL_SEED").parse().unwrap(), map.len());
                    assert_eq!(map.as_slice(), &want[..]);
                    println!("opened");
                }
                Err(e) => println!("error {}", e.raw_os_error().unwrap_or(0)),
            }
        }
        "check-flush" => {
            let pool = pool();
            let mut space = pool.create_space("flushed", 16 * PAGE).unwrap();
            space.as_mut_slice().unwrap().fill(7);
            space
                .publish()
                .expect("a complete write-back passes the check");
            let mut short = pool.create_space("short", 16 * PAGE).unwrap();
            short.as_mut_slice().unwrap().fill(9);
            testing::short_flush(PAGE as u64);
            let e = short
                .publish()
                .expect_err("the check must catch the unflushed page");
            assert_eq!(e.raw_os_error(), Some(libc::EIO));
            testing::short_flush(0);
            std::process::exit(0);
        }
        "impossible-sizes" => {
            // Each refused create: its size and errno on stdout (its line goes to stderr).
            let pool = pool();
            for size in [usize::MAX, usize::MAX - 4095, 8 << 20] {
                let e = pool.create_space("x", size).err().map(|e| e.raw_os_error());
                println!("{size} {e:?}");
            }
        }
        other => panic!("unknown child role {other}"),
    }
    std::process::exit(0);
}

// ---------------------------------------------------------------------------------------------
// Mapping modes
// ---------------------------------------------------------------------------------------------

fn publish_data(pool: &Arc<Pool>, name: &str, bytes: &[u8]) -> tiermalloc::pool::api::SpaceMap {
    let mut space = pool.create_space(name, bytes.len()).unwrap();
    space.as_mut_slice().unwrap().copy_from_slice(bytes);
    space.publish().unwrap();
    space
}

#[test]
fn a_write_through_a_read_mapping_faults() {
    let file = PoolFile::new("readfault", "8M", "");
    let pool = file.open();
    let data = pattern(1, 8 * PAGE);
    let creator = publish_data(&pool, "data", &data);
    assert!(creator.as_slice() == &data[..]);
    let (status, out) = run_child("write-read-map", &file.spec(), &[]);
    assert!(out.contains("mapped"), "the child mapped the space: {out}");
    assert_eq!(signal_of(&status), Some(libc::SIGSEGV), "{status:?}");
    assert_eq!(creator.as_slice(), &data[..], "nothing was written");
    // The creator's own mapping became read-only at publish.
    let mut creator = creator;
    assert!(creator.as_mut_slice().is_none());
    assert_consistent(&pool);
}

#[test]
fn private_mappings_are_isolated_and_copy_only_written_pages() {
    let file = PoolFile::new("private", "16M", "");
    let pool = file.open();
    let data = pattern(2, 64 * PAGE);
    let _creator = publish_data(&pool, "data", &data);
    let (status, _) = run_child("private-writer", &file.spec(), &[]);
    assert!(status.success(), "{status:?}");
    let mut private = pool.open_space("data", MapMode::Private).unwrap();
    let reader = pool.open_space("data", MapMode::Read).unwrap();
    assert_eq!(
        private_dirty_kb(private.as_ptr()),
        0,
        "reading copies nothing"
    );
    assert_eq!(private.as_slice(), &data[..]);
    for page in [3, 17, 40] {
        private.as_mut_slice().unwrap()[page * PAGE + 5] ^= 0xff;
    }
    assert_eq!(
        private_dirty_kb(private.as_ptr()),
        12,
        "three written pages, three copies"
    );
    assert_eq!(reader.as_slice(), &data[..], "the device is untouched");
    assert_eq!(private.as_slice()[3 * PAGE + 5], data[3 * PAGE + 5] ^ 0xff);
    assert_eq!(pool.space("data").unwrap().refs, 3);
}

#[test]
fn the_copy_fallback_for_devices_without_map_private_behaves_the_same() {
    let file = PoolFile::new("privcopy", "8M", "private=copy");
    let pool = file.open();
    let data = pattern(3, 16 * PAGE);
    let _creator = publish_data(&pool, "data", &data);
    let mut private = pool.open_space("data", MapMode::Private).unwrap();
    private.as_mut_slice().unwrap()[0] ^= 1;
    let reader = pool.open_space("data", MapMode::Read).unwrap();
    assert_eq!(reader.as_slice()[0], data[0]);
    assert_eq!(private.as_slice()[1..], data[1..]);
    // At least: the kernel may merge the copy with a neighbouring anonymous mapping.
    assert!(
        private_dirty_kb(private.as_ptr()) >= 64,
        "the fallback copies every page"
    );
}

/// Private_Dirty (kB) of the mapping starting at `p`, from /proc/self/smaps.
fn private_dirty_kb(p: *const u8) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let start = format!("{:x}-", p as usize);
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
    lines.next().expect("mapping listed in smaps");
    lines
        .take_while(|l| !l.contains('-') || l.contains(':'))
        .find_map(|l| l.strip_prefix("Private_Dirty:"))
        .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap())
        .expect("Private_Dirty line")
}

#[test]
fn republish_is_the_modified_pages_plus_the_original_rest() {
    let file = PoolFile::new("republish", "16M", "");
    let pool = file.open();
    let data = pattern(4, 32 * PAGE);
    let _creator = publish_data(&pool, "v1", &data);
    let mut private = pool.open_space("v1", MapMode::Private).unwrap();
    let m = private.as_mut_slice().unwrap();
    m[PAGE..2 * PAGE].fill(0xaa);
    m[20 * PAGE + 9] = 0x55;
    let v2 = private.republish("v2").unwrap();
    let mut expected = data.clone();
    expected[PAGE..2 * PAGE].fill(0xaa);
    expected[20 * PAGE + 9] = 0x55;
    let differs = |a: &[u8], b: &[u8]| a.iter().zip(b).position(|(x, y)| x != y);
    assert_eq!(
        differs(v2.as_slice(), &expected),
        None,
        "republished bytes differ at"
    );
    let reopened = pool.open_space("v2", MapMode::Read).unwrap();
    assert_eq!(
        differs(reopened.as_slice(), &expected),
        None,
        "reopened bytes differ at"
    );
    let v1 = pool.open_space("v1", MapMode::Read).unwrap();
    assert_eq!(
        differs(v1.as_slice(), &data),
        None,
        "the original is unchanged"
    );
    let info = pool.space("v2").unwrap();
    assert_eq!(
        (info.state, info.refs, info.size),
        (SpaceState::Shared, 2, data.len() as u64)
    );
    assert_consistent(&pool);
}

// ---------------------------------------------------------------------------------------------
// References, errors, collection
// ---------------------------------------------------------------------------------------------

#[test]
fn refs_count_openers_and_a_killed_opener_gives_its_reference_back() {
    let file = PoolFile::new("refs", "8M", "");
    let pool = file.open();
    let _creator = publish_data(&pool, "data", &pattern(5, PAGE));
    assert_eq!(pool.space("data").unwrap().refs, 1, "the creator's mapping");
    let mut holders: Vec<Child> = (0..3)
        .map(|_| {
            let mut c = spawn("hold", &file.spec(), &[]);
            wait_for_line(&mut c, "holding");
            c
        })
        .collect();
    assert_eq!(pool.space("data").unwrap().refs, 4);
    let victim = holders.pop().unwrap();
    // SAFETY: killing our own child.
    unsafe { libc::kill(victim.id() as i32, libc::SIGKILL) };
    assert_eq!(signal_of(&wait(victim)), Some(libc::SIGKILL));
    assert_eq!(
        pool.space("data").unwrap().refs,
        3,
        "a dead pid's reference is reclaimed at once"
    );
    assert_eq!(
        pool.collect_spaces(Duration::ZERO).unwrap(),
        0,
        "held spaces stay"
    );
    for mut h in holders {
        drop(h.stdin.take());
        wait(h);
    }
    assert_eq!(pool.space("data").unwrap().refs, 1);
    assert_consistent(&pool);
}

#[test]
fn another_hosts_dead_node_is_reclaimed_when_its_lease_runs_out() {
    let file = PoolFile::new("lease", "8M", "lease=1s");
    let pool = file.open();
    let _creator = publish_data(&pool, "data", &pattern(6, PAGE));
    // The child claims another host id: its pid means nothing here, only its heartbeat.
    let mut other = spawn("hold", &format!("{},host=77", file.spec()), &[]);
    wait_for_line(&mut other, "holding");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        pool.space("data").unwrap().refs,
        2,
        "a live node's heartbeat keeps its lease"
    );
    // SAFETY: killing our own child.
    unsafe { libc::kill(other.id() as i32, libc::SIGKILL) };
    wait(other);
    assert_eq!(
        pool.space("data").unwrap().refs,
        2,
        "not before the lease runs out"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        pool.space("data").unwrap().refs,
        1,
        "reclaimed after the lease"
    );
    assert_consistent(&pool);
}

#[test]
fn errors_are_eexist_enametoolong_enoent_enospc() {
    let file = PoolFile::new("errors", "4M", "");
    let pool = file.open();
    let errno = |r: std::io::Result<tiermalloc::pool::api::SpaceMap>| {
        r.err().and_then(|e| e.raw_os_error())
    };
    let _a = pool.create_space("a", PAGE).unwrap();
    assert_eq!(errno(pool.create_space("a", PAGE)), Some(libc::EEXIST));
    assert!(pool.create_space(&"n".repeat(63), PAGE).is_ok());
    assert_eq!(
        errno(pool.create_space(&"n".repeat(64), PAGE)),
        Some(libc::ENAMETOOLONG)
    );
    assert_eq!(
        errno(pool.open_space("missing", MapMode::Read)),
        Some(libc::ENOENT)
    );
    assert_eq!(
        errno(pool.open_space("a", MapMode::Read)),
        Some(libc::ENOENT),
        "a private space is not open to others"
    );
    assert_eq!(
        pool.space("missing").unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    assert_eq!(errno(pool.create_space("big", 8 << 20)), Some(libc::ENOSPC));
    assert_eq!(errno(pool.create_space("", PAGE)), Some(libc::EINVAL));
    assert_consistent(&pool);
}

#[test]
fn a_full_table_is_named_in_one_line_with_the_pool() {
    let file = PoolFile::new("fulltable", "8M", "");
    let (stdout, stderr) = run_to_end("fill-directory", &file.spec());
    assert!(stdout.contains("made 256"), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "tiermalloc: pool '{}': its directory of spaces is full (256 entries); ENOSPC",
            file.path
        )),
        "{stderr}"
    );
}

#[test]
fn collect_spares_open_spaces_deletes_closed_ones_and_reuses_their_bytes() {
    // Room for one 2 MiB space at a time (plus metadata).
    let file = PoolFile::new("collect", "3M", "");
    let pool = file.open();
    let data = pattern(7, 2 << 20);
    let creator = publish_data(&pool, "first", &data);
    let free_with_one = pool.free_space();
    let reader = pool.open_space("first", MapMode::Read).unwrap();
    drop(creator);
    assert_eq!(
        pool.create_space("second", 2 << 20)
            .err()
            .unwrap()
            .raw_os_error(),
        Some(libc::ENOSPC)
    );
    assert_eq!(
        pool.collect_spaces(Duration::ZERO).unwrap(),
        0,
        "a live opener keeps it"
    );
    assert_eq!(reader.as_slice(), &data[..]);
    drop(reader);
    assert_eq!(
        pool.collect_spaces(Duration::from_secs(3600)).unwrap(),
        0,
        "too young"
    );
    assert_eq!(pool.collect_spaces(Duration::ZERO).unwrap(), 1);
    assert!(pool.space("first").is_err());
    assert!(pool.free_space() > free_with_one);
    let mut second = pool
        .create_space("second", 2 << 20)
        .expect("the freed bytes are reused");
    assert!(
        second.as_slice().iter().all(|&b| b == 0),
        "a new space reads zero"
    );
    second.as_mut_slice().unwrap()[0] = 1;
    assert_consistent(&pool);
}

#[test]
fn collect_age_applies_the_rule_automatically_and_dead_creators_private_spaces_go() {
    let file = PoolFile::new("autocollect", "8M", "collect_age=0ms");
    let pool = file.open();
    drop(publish_data(&pool, "gone", &pattern(8, PAGE)));
    assert!(
        pool.space("gone").is_err(),
        "closed with refs 0: deleted by the next close"
    );
    // A private space whose creator is killed.
    let (status, _) = run_child("steps", &file.spec(), &[("TM_POOL_OP", "create".into())]);
    assert!(status.success());
    assert!(pool.spaces().iter().all(|s| s.state == SpaceState::Shared));
    assert_consistent(&pool);
}

// ---------------------------------------------------------------------------------------------
// The C interface
// ---------------------------------------------------------------------------------------------

#[test]
fn the_c_interface_follows_the_contract() {
    let file = PoolFile::new("capi", "8M", "");
    let (status, _) = run_child("c-api", "", &[("TIERMALLOC_POOL", file.spec())]);
    assert!(status.success(), "{status:?}");
    let (status, _) = run_child("c-api", "", &[("TM_POOL_NONE", "1".into())]);
    assert!(status.success(), "without a pool: {status:?}");
}

fn c_api_child() {
    let errno = || std::io::Error::last_os_error().raw_os_error().unwrap();
    let name = c"c-data";
    if std::env::var("TM_POOL_NONE").is_ok() {
        // SAFETY: valid C strings and out-pointers throughout.
        unsafe {
            assert!(tm_space_create(name.as_ptr(), 4096).is_null());
            assert_eq!(errno(), libc::ENODEV);
            assert!(tm_space_open(name.as_ptr(), MapArg(0), std::ptr::null_mut()).is_null());
            assert_eq!(errno(), libc::ENODEV);
            assert_eq!(tm_space_collect(0), -1);
        }
        std::process::exit(0);
    }
    // SAFETY: valid C strings and out-pointers throughout; mappings used within their size.
    unsafe {
        let base = tm_space_create(name.as_ptr(), 10000) as *mut u8;
        assert!(!base.is_null());
        base.write_bytes(0x3c, 10000);
        assert!(tm_space_open(name.as_ptr(), MapArg(0), std::ptr::null_mut()).is_null());
        assert_eq!(errno(), libc::ENOENT, "not yet published");
        assert_eq!(tm_space_publish(base.cast()), 0);
        assert_eq!(tm_space_publish(base.cast()), -1, "published already");
        let mut size = 0usize;
        let r = tm_space_open(name.as_ptr(), MapArg(0), &mut size) as *const u8;
        assert!(!r.is_null());
        assert_eq!((size, *r.add(9999)), (10000, 0x3c));
        let p = tm_space_open(name.as_ptr(), MapArg(1), &mut size) as *mut u8;
        *p = 1;
        assert_eq!(*r, 0x3c);
        let q = tm_space_republish(p.cast(), c"c-data-2".as_ptr()) as *const u8;
        assert!(!q.is_null());
        assert_eq!((*q, *q.add(1)), (1, 0x3c));
        assert!(tm_space_open(name.as_ptr(), MapArg(7), &mut size).is_null());
        assert_eq!(errno(), libc::EINVAL);
        let mut info: tm_space_info = std::mem::zeroed();
        libc::__errno_location().write(1234);
        assert_eq!(tm_space_stat(name.as_ptr(), &mut info), 0);
        assert_eq!(errno(), 1234, "success keeps errno");
        assert_eq!(
            (info.size, info.state, info.refs),
            (10000, TM_SPACE_SHARED, 3)
        );
        assert_eq!(std::ffi::CStr::from_ptr(info.name.as_ptr()), name);
        let mut all: [tm_space_info; 1] = std::mem::zeroed();
        assert_eq!(tm_space_list(all.as_mut_ptr(), 1), 2, "count beyond max");
        assert_eq!(tm_space_stat(c"nope".as_ptr(), &mut info), -1);
        assert_eq!(errno(), libc::ENOENT);
        for b in [base as *mut _, r as *mut _, p as *mut _, q as *mut _] {
            assert_eq!(tm_space_close(b), 0);
        }
        assert_eq!(tm_space_close(base.cast()), -1);
        assert_eq!(errno(), libc::EINVAL);
        assert_eq!(tm_space_collect(0), 2);
        assert_eq!(tm_space_list(std::ptr::null_mut(), 0), 0);
    }
    std::process::exit(0);
}

// ---------------------------------------------------------------------------------------------
// Churn, crashes, write-back
// ---------------------------------------------------------------------------------------------

/// One churning process: creates, fills, publishes, opens and checks its own spaces and
/// the common one, closes, collects; `iterations` times.
fn churn(pool: &Arc<Pool>, who: &str, iterations: usize) {
    let common = pattern(99, 16 * PAGE);
    for i in 0..iterations {
        let name = format!("{who}-{i}");
        let bytes = pattern(i as u64 * 7 + who.len() as u64, (1 + i % 5) * PAGE);
        let mut own = pool.create_space(&name, bytes.len()).unwrap();
        own.as_mut_slice().unwrap().copy_from_slice(&bytes);
        own.publish().unwrap();
        let reader = pool
            .open_space(
                &name,
                if i % 2 == 0 {
                    MapMode::Read
                } else {
                    MapMode::Private
                },
            )
            .unwrap();
        assert_eq!(reader.as_slice(), &bytes[..], "{name}");
        let shared = pool.open_space("common", MapMode::Read).unwrap();
        assert_eq!(shared.as_slice(), &common[..], "the common space changed");
        drop((own, reader, shared));
        if i % 10 == 0 {
            pool.collect_spaces(Duration::ZERO).unwrap();
        }
    }
}

#[test]
fn six_processes_churn_with_a_common_space_checked_throughout() {
    // check_flush: every publish of the churn is checked to have written the whole space back.
    let file = PoolFile::new("churn", "64M", "check_flush");
    let pool = file.open();
    let common = pattern(99, 16 * PAGE);
    let _common = publish_data(&pool, "common", &common);
    let children: Vec<Child> = (0..6)
        .map(|i| spawn("churn", &file.spec(), &[("TM_POOL_WHO", format!("p{i}"))]))
        .collect();
    for c in children {
        let status = wait(c);
        assert!(status.success(), "a churning process failed: {status:?}");
    }
    assert_consistent(&pool);
    assert_eq!(pool.space("common").unwrap().refs, 1);
    pool.collect_spaces(Duration::ZERO).unwrap();
    assert_eq!(pool.spaces().len(), 1, "only the common space is left");
}

/// The child of the crash test: prepares, then runs operation `op` and (role "die") is
/// killed at step `step` of it, or (role "steps") prints how many steps it takes.
fn die_in_operation(pool: &Arc<Pool>, op: &str, role: &str, step: &str) {
    // Preparation, outside the counted steps: join, and what the operation needs.
    let _ = pool.spaces();
    let mut private = pool
        .create_space(&format!("private-{}", std::process::id()), 2 * PAGE)
        .unwrap();
    private.as_mut_slice().unwrap()[0] = 1;
    let opened = pool.open_space("base", MapMode::Private).ok();
    let die = |_: ()| {
        if role == "die" {
            testing::die_at_step(step.parse().unwrap());
        } else {
            testing::die_at_step(0);
        }
    };
    die(());
    match op {
        "create" => std::mem::forget(pool.create_space("made", 3 * PAGE).unwrap()),
        "publish" => private.publish().unwrap(),
        "open" => std::mem::forget(pool.open_space("base", MapMode::Read).unwrap()),
        "close" => drop(opened),
        "republish" => std::mem::forget(opened.unwrap().republish("again").unwrap()),
        "collect" => {
            pool.collect_spaces(Duration::ZERO).unwrap();
        }
        other => panic!("unknown operation {other}"),
    }
    if role == "steps" {
        println!("steps {}", testing::steps());
    }
    std::mem::forget(private);
    std::process::exit(0);
}

#[test]
fn sigkill_at_every_step_of_every_operation_leaves_the_pool_consistent() {
    let file = PoolFile::new("crash", "32M", "");
    let pool = file.open();
    let base = pattern(11, 4 * PAGE);
    let _base = publish_data(&pool, "base", &base);
    let mut kills = 0;
    for op in ["create", "publish", "open", "close", "republish", "collect"] {
        // A few unreferenced spaces for collect to delete.
        drop(publish_data(&pool, "old", &pattern(12, PAGE)));
        let (status, out) = run_child("steps", &file.spec(), &[("TM_POOL_OP", op.into())]);
        assert!(status.success(), "{op}: {status:?}");
        let steps: u64 = out
            .lines()
            .find_map(|l| l.split("steps ").nth(1))
            .expect("the child counts steps")
            .parse()
            .unwrap();
        assert!(steps >= 5, "{op} takes {steps} steps");
        pool.collect_spaces(Duration::ZERO).unwrap();
        for step in 1..=steps {
            drop(publish_data(&pool, "old", &pattern(12, PAGE)));
            let (status, _) = run_child(
                "die",
                &file.spec(),
                &[
                    ("TM_POOL_OP", op.into()),
                    ("TM_POOL_STEP", step.to_string()),
                ],
            );
            assert_eq!(
                signal_of(&status),
                Some(libc::SIGKILL),
                "{op} step {step}: {status:?}"
            );
            kills += 1;
            assert_consistent(&pool);
            pool.collect_spaces(Duration::ZERO).unwrap();
            assert_consistent(&pool);
            let left: Vec<_> = pool
                .spaces()
                .into_iter()
                .map(|s| (s.name, s.refs))
                .collect();
            assert!(
                left.iter()
                    .all(|(n, _)| n == "base" || n == "again" || n == "made"),
                "{op} step {step}: a dead process's space was left: {left:?}"
            );
            assert_eq!(pool.space("base").unwrap().refs, 1, "{op} step {step}");
            for gone in ["again", "made"] {
                if pool.space(gone).is_ok() {
                    pool.collect_spaces(Duration::ZERO).unwrap();
                }
            }
            assert!(pool.space("again").is_err() && pool.space("made").is_err());
        }
    }
    let opened = pool.open_space("base", MapMode::Read).unwrap();
    assert_eq!(opened.as_slice(), &base[..]);
    assert!(kills > 50, "{kills} kills");
}

#[test]
fn sigkill_at_random_times_during_churn_leaves_the_pool_consistent() {
    // check_flush: every reuse of a killed process's bytes is checked against the shadow of
    // what this host may still cache (its lines must have been invalidated by the sweep).
    let file = PoolFile::new("randomkill", "64M", "check_flush");
    let pool = file.open();
    let _common = publish_data(&pool, "common", &pattern(99, 16 * PAGE));
    let mut seed = 0x1234_5678u64;
    for round in 0..12 {
        let child = spawn(
            "churn",
            &file.spec(),
            &[("TM_POOL_WHO", format!("r{round}"))],
        );
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_micros(2000 + (seed >> 33) % 40_000));
        // SAFETY: killing our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        wait(child);
        assert_consistent(&pool);
        pool.collect_spaces(Duration::ZERO).unwrap();
        assert_eq!(
            pool.spaces().len(),
            1,
            "round {round}: only the common space is left"
        );
        assert_eq!(pool.space("common").unwrap().refs, 1);
    }
}

#[test]
fn check_flush_catches_a_space_not_written_back_before_publish() {
    let file = PoolFile::new("checkflush", "8M", "check_flush");
    let (status, _) = run_child("check-flush", &file.spec(), &[]);
    assert!(status.success(), "{status:?}");
    let pool = file.open();
    let flushed = pool.open_space("flushed", MapMode::Read).unwrap();
    assert!(flushed.as_slice().iter().all(|&b| b == 7));
    assert!(
        pool.open_space("short", MapMode::Read).is_err(),
        "never published"
    );
}

/// A node of "host" 0xA (a child claiming `host=`) reads every page of space `old` and is
/// killed; this process, another host, finds it dead when its lease runs out, deletes `old`
/// and makes `new` on the same bytes. A process of host 0xA then opens `new`: it must have
/// invalidated what the dead node may have left in its caches first (the debt the sweep left
/// for host 0xA). With the debt forgotten on purpose, the check_flush shadow refuses the open.
fn dead_remote_reader_then_reuse(forget_debts: bool) -> String {
    let file = PoolFile::new(
        if forget_debts {
            "debt-forgotten"
        } else {
            "debt"
        },
        "8M",
        "check_flush,lease=300ms",
    );
    let pool = file.open();
    let old = publish_data(&pool, "old", &pattern(40, 8 * PAGE));
    let a_spec = format!("{},host=10", file.spec());
    let mut reader = spawn(
        "read-touch-hold",
        &a_spec,
        &[("TM_POOL_NAME", "old".into())],
    );
    wait_for_line(&mut reader, "holding");
    // SAFETY: killing our own child.
    unsafe { libc::kill(reader.id() as i32, libc::SIGKILL) };
    wait(reader);
    std::thread::sleep(Duration::from_millis(700));
    testing::forget_debts(forget_debts);
    drop(old);
    assert_eq!(
        pool.collect_spaces(Duration::ZERO).unwrap(),
        1,
        "old is deleted"
    );
    testing::forget_debts(false);
    assert_consistent(&pool);
    let new = publish_data(&pool, "new", &pattern(41, 8 * PAGE));
    let (status, out) = run_child(
        "open-expect",
        &a_spec,
        &[
            ("TM_POOL_NAME", "new".into()),
            ("TM_POOL_SEED", "41".into()),
        ],
    );
    assert!(status.success(), "{status:?} {out}");
    drop(new);
    out
}

#[test]
fn a_dead_remote_readers_lines_are_invalidated_by_its_host_before_the_bytes_are_read_again() {
    let out = dead_remote_reader_then_reuse(false);
    assert!(out.contains("opened"), "{out}");
}

#[test]
fn check_flush_catches_a_host_reading_bytes_its_dead_node_left_in_its_caches() {
    let out = dead_remote_reader_then_reuse(true);
    assert!(out.contains(&format!("error {}", libc::EIO)), "{out}");
}

#[test]
fn a_region_holding_other_data_is_refused_and_a_bad_spec_named() {
    let path = format!("/dev/shm/tm-pool-foreign-{}", std::process::id());
    std::fs::write(&path, vec![0x42u8; 1 << 20]).unwrap();
    let e = Pool::open_str(&format!("path={path}")).err().unwrap();
    assert!(e.to_string().contains("not a tiermalloc pool"), "{e}");
    assert!(
        std::fs::read(&path).unwrap().iter().all(|&b| b == 0x42),
        "left untouched"
    );
    assert!(Pool::open_str(&format!("path={path},format")).is_ok());
    std::fs::remove_file(&path).unwrap();
    let e = Pool::open_str("path=/dev/shm/x,colour=red").err().unwrap();
    assert!(e.to_string().contains("unknown key"), "{e}");
}

#[test]
fn a_lock_held_by_a_dead_node_of_another_host_is_taken_over_after_its_lease() {
    let file = PoolFile::new("deadholder", "8M", "lease=1s");
    let pool = file.open();
    let _base = publish_data(&pool, "base", &pattern(13, PAGE));
    // The child plays another host and dies right after taking the pool lock (step 1 of its
    // open): only its lease can tell the others that it is dead.
    let (status, _) = run_child(
        "die",
        &format!("{},host=77", file.spec()),
        &[("TM_POOL_OP", "open".into()), ("TM_POOL_STEP", "1".into())],
    );
    assert_eq!(signal_of(&status), Some(libc::SIGKILL));
    let started = Instant::now();
    assert_eq!(
        pool.space("base").unwrap().refs,
        1,
        "its references went with it"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "the lock was taken over after {waited:?}, before the lease could have run out"
    );
    assert!(
        waited < Duration::from_secs(20),
        "taken over at last: {waited:?}"
    );
    assert_consistent(&pool);
}

#[test]
fn a_pool_at_an_offset_keeps_to_its_range() {
    let path = format!("/dev/shm/tm-pool-offset-{}", std::process::id());
    std::fs::write(&path, vec![0x5au8; 1 << 20]).unwrap();
    let spec = format!("path={path},offset=1M,size=4M,create");
    {
        let pool = Pool::open_str(&spec).unwrap();
        let _s = publish_data(&pool, "at-offset", &[0xc3; 3 * PAGE]);
        let again = Pool::open_str(&spec).unwrap();
        assert_eq!(
            again
                .open_space("at-offset", MapMode::Read)
                .unwrap()
                .as_slice(),
            &[0xc3; 3 * PAGE][..]
        );
    }
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 5 << 20);
    assert!(
        bytes[..1 << 20].iter().all(|&b| b == 0x5a),
        "the bytes before offset= are untouched"
    );
    assert!(bytes[1 << 20..]
        .windows(PAGE)
        .any(|w| w.iter().all(|&b| b == 0xc3)));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn threads_of_one_process_share_its_node() {
    let file = PoolFile::new("threads", "32M", "");
    let pool = file.open();
    let data = pattern(14, 8 * PAGE);
    let _common = publish_data(&pool, "common", &data);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (pool, data) = (pool.clone(), &data);
            s.spawn(move || {
                for i in 0..100 {
                    let name = format!("t{t}-{i}");
                    drop(publish_data(&pool, &name, &pattern(i, PAGE)));
                    let m = pool.open_space("common", MapMode::Read).unwrap();
                    assert_eq!(m.as_slice(), &data[..]);
                    if i % 10 == 0 {
                        pool.collect_spaces(Duration::ZERO).unwrap();
                    }
                }
            });
        }
    });
    assert_consistent(&pool);
    assert_eq!(pool.space("common").unwrap().refs, 1);
    pool.collect_spaces(Duration::ZERO).unwrap();
    assert_eq!(pool.spaces().len(), 1);
}

/// A process that created private spaces and exited without closing them: their names stay
/// taken until someone sweeps the dead creator's spaces. `stat` and `list` sweep first, so
/// they said the name did not exist, while `create` of it failed with EEXIST (a user's
/// `tm_space_create` after a crashed run of the same program). `create` sweeps on EEXIST too.
#[test]
fn create_reuses_the_name_of_a_dead_creators_private_space() {
    let file = PoolFile::new("deadname", "8M", "");
    let (stdout, _) = run_to_end("fill-directory", &file.spec());
    assert!(stdout.contains("made 256"), "{stdout}");
    let pool = file.open();
    let map = pool
        .create_space("s0", PAGE)
        .expect("the dead creator's name is free again");
    assert_eq!(map.as_slice().len(), PAGE);
    // A live creator's name stays taken.
    let taken = pool
        .create_space("s0", PAGE)
        .err()
        .expect("a live private space");
    assert_eq!(taken.raw_os_error(), Some(libc::EEXIST), "{taken}");
}

/// `tm_space_stat("")` said ENOENT where `tm_space_create("")` and `tm_space_open("")` say
/// EINVAL (the header lists EINVAL for a bad name): the same name is judged the same way.
#[test]
fn stat_judges_a_bad_name_as_create_and_open_do() {
    let file = PoolFile::new("statname", "4M", "");
    let pool = file.open();
    for name in ["", "a\0b"] {
        let errno = |r: std::io::Error| r.raw_os_error();
        let create = pool.create_space(name, PAGE).err().map(errno);
        let open = pool.open_space(name, MapMode::Read).err().map(errno);
        let stat = pool.space(name).err().map(errno);
        assert_eq!(create, Some(Some(libc::EINVAL)), "{name:?}");
        assert_eq!((open, stat), (create, create), "{name:?}");
    }
    let long = "n".repeat(64);
    let stat = pool.space(&long).err().and_then(|e| e.raw_os_error());
    assert_eq!(stat, Some(libc::ENAMETOOLONG));
}

/// `TIERMALLOC_POOL` pointed at a tier's heap file: refused as "data that is not a tiermalloc
/// pool (add format to overwrite it)", inviting the key that wipes the heap. It names the heap.
#[test]
fn a_tiers_heap_file_is_named_as_a_heap() {
    let file = PoolFile::new("heapfile", "4M", "");
    let mut bytes = vec![0u8; 4 << 20];
    bytes[..8].copy_from_slice(b"TMHEAP\r\n"); // a tier's superblock magic
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(&file.path, &bytes).unwrap();
    let refused = Pool::open_str(&format!("path={},size=4M", file.path))
        .err()
        .expect("a heap file refused");
    assert!(
        refused.to_string().contains("holds a tiermalloc heap"),
        "{refused}"
    );
    assert!(
        std::fs::read(&file.path).unwrap() == bytes,
        "the file was written"
    );
}

/// `tm_space_create("x", SIZE_MAX)` failed with ENOSPC and no line (its rounding to whole
/// pages overflowed), where `SIZE_MAX - 4095` said "no free extent of 18446744073709547520
/// bytes", as if room might come. A size the pool's data area cannot hold is one answer:
/// ENOSPC and one line naming the space and its size.
#[test]
fn a_size_larger_than_the_pool_is_one_answer_in_one_line() {
    let file = PoolFile::new("impossible", "4M", "");
    let (stdout, stderr) = run_to_end("impossible-sizes", &file.spec());
    let sizes = [usize::MAX, usize::MAX - 4095, 8 << 20];
    for size in sizes {
        let answer = format!("{size} Some(Some({}))", libc::ENOSPC);
        // (The first follows libtest's "test child ... ".)
        assert!(
            stdout.lines().any(|l| l.ends_with(&answer)),
            "{size}: {stdout}"
        );
    }
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("tiermalloc: "))
        .collect();
    assert_eq!(lines.len(), sizes.len(), "{stderr}");
    for (line, size) in lines.iter().zip(sizes) {
        let named = format!(
            "tiermalloc: pool '{}': space 'x' of {size} bytes is larger than the pool's data \
             area (",
            file.path
        );
        assert!(
            line.starts_with(&named) && line.ends_with("); ENOSPC"),
            "{line}"
        );
    }
}
