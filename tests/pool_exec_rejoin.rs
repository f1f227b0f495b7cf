//! A process that execs a program which joins the same pool again, mapping its metadata at the
//! address the old image did, gives back the references its old image held: the old node is
//! judged gone (its exec mark is free, and the process holds a newer node of a later image),
//! while the new image's references stay (`src/pool/exec_mark.rs`). In a file of its own: the
//! fork handler adopts the mappings of every pool open in the process, which must be this
//! test's only.
//!
//! The same address comes from address-space randomisation turned off (`personality`) in a
//! forked child, which execs this test's binary twice: the first image opens a space and execs
//! the second, which does the same things in the same order, so that its mappings fall where
//! the first image's did.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};
use tiermalloc::pool::api::MapMode;
use tiermalloc::pool::Pool;

const TEST: &str = "an_exec_that_rejoins_at_the_same_address_gives_the_old_references_back";
/// `1` or `2`: which image of the child this is (both the same length: the same stack).
const STAGE: &str = "TM_EXEC_REJOIN_STAGE";
/// The pool's path and the pipe's write end the images report on.
const POOL: &str = "TM_EXEC_REJOIN_POOL";
const REPORT: &str = "TM_EXEC_REJOIN_FD";

fn refs(pool: &Pool, name: &str) -> u64 {
    pool.space(name).map(|s| s.refs).unwrap_or(0)
}

/// Where this process maps the first page of `path` (its metadata), from /proc/self/maps.
fn mapped_at(path: &str) -> u64 {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps
        .lines()
        .find(|l| l.ends_with(path) && l.split_whitespace().nth(2) == Some("00000000"))
        .unwrap_or_else(|| panic!("{path} is not mapped:\n{maps}"));
    u64::from_str_radix(line.split('-').next().unwrap(), 16).unwrap()
}

/// The arguments and environment that run this test's binary as the child's image `stage`
/// (built before a fork: the child of a threaded process should not allocate).
struct Exec {
    exe: CString,
    args: Vec<CString>,
    env: Vec<CString>,
}

impl Exec {
    fn new(stage: &str, extra: &[(&str, String)]) -> Exec {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let exe = CString::new(exe.as_os_str().as_bytes()).unwrap();
        let args = [TEST, "--exact", "--nocapture", "--test-threads=1"]
            .iter()
            .map(|a| CString::new(*a).unwrap())
            .collect();
        let mut env: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| k != STAGE)
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).unwrap()
            })
            .collect();
        env.push(CString::new(format!("{STAGE}={stage}")).unwrap());
        for (k, v) in extra {
            env.push(CString::new(format!("{k}={v}")).unwrap());
        }
        Exec { exe, args, env }
    }

    /// Execs (allocates only the two pointer arrays; `_exit(127)` if the exec fails).
    fn run(&self) -> ! {
        let mut argv: Vec<*const libc::c_char> = vec![self.exe.as_ptr()];
        argv.extend(self.args.iter().map(|a| a.as_ptr()));
        argv.push(core::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.env.iter().map(|e| e.as_ptr()).collect();
        envp.push(core::ptr::null());
        // SAFETY: NUL-terminated arguments and environment, alive until the exec.
        unsafe {
            libc::execve(self.exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
}

/// In an image of the child: opens the pool and the space (a reference of this image's node),
/// reports where the pool's metadata is mapped, and execs the second image (from the first)
/// or waits to be killed (the second).
fn child_image(stage: &str) {
    let path = std::env::var(POOL).unwrap();
    let fd: i32 = std::env::var(REPORT).unwrap().parse().unwrap();
    let pool = Pool::open_str(&format!("path={path}")).unwrap();
    let map = pool.open_space("rejoin", MapMode::Read).unwrap();
    let line = format!("{:016x}\n", mapped_at(&path));
    // SAFETY: the pipe's write end the parent left open for us.
    unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
    if stage == "1" {
        // The mapping and the node are left as they are: the exec takes them away.
        std::mem::forget(map);
        std::mem::forget(pool);
        Exec::new("2", &[]).run();
    }
    std::thread::sleep(Duration::from_secs(60));
    drop(map);
}

/// Our child, killed and waited for when the test ends (passing or not).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let mut status = 0;
        // SAFETY: our own child.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, &mut status, 0);
        }
    }
}

#[test]
fn an_exec_that_rejoins_at_the_same_address_gives_the_old_references_back() {
    if let Ok(stage) = std::env::var(STAGE) {
        child_image(&stage);
        return;
    }
    let path = format!("/dev/shm/tm-pool-exec-rejoin-{}", std::process::id());
    let _ = std::fs::remove_file(&path);
    let pool = Pool::open_str(&format!("path={path},size=8M,create")).unwrap();
    let mut creator = pool.create_space("rejoin", 64 * 1024).unwrap();
    creator.as_mut_slice().unwrap().fill(7);
    creator.publish().unwrap();
    assert_eq!(refs(&pool, "rejoin"), 1);

    // The pipe the child's images report on: kept across their execs.
    let mut fds = [0i32; 2];
    // SAFETY: a valid out-array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let first = Exec::new("1", &[(POOL, path.clone()), (REPORT, fds[1].to_string())]);
    // SAFETY: fork; the child turns randomisation off and execs.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: our end of the pipe; then a plain system call.
        unsafe {
            libc::close(fds[0]);
            libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong);
        }
        first.run();
    }
    let child = KillOnDrop(pid);
    // SAFETY: the child's end.
    unsafe { libc::close(fds[1]) };
    // SAFETY: our read end, owned from here on.
    let mut report = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
    let mut text = String::new();
    let started = Instant::now();
    while text.lines().count() < 2 {
        let mut buf = [0u8; 64];
        let n = std::io::Read::read(&mut report, &mut buf).unwrap();
        assert!(n > 0, "the child's images ended early: {text:?}");
        text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    let at: Vec<&str> = text.lines().collect();
    assert_eq!(
        at[0], at[1],
        "the second image maps the pool where the first did (randomisation off)"
    );
    // The parent's creator mapping, the fork's adopted one (that node is judged gone: the
    // images map the pool elsewhere), the first image's and the second's.
    let started = Instant::now();
    loop {
        assert_eq!(pool.collect_spaces(Duration::ZERO).unwrap(), 0);
        let now = refs(&pool, "rejoin");
        if now == 2 {
            break;
        }
        assert!(
            now > 2 && started.elapsed() < Duration::from_secs(10),
            "the first image's node is gone, the second's lives ({now} refs)"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(pool.collect_spaces(Duration::ZERO).unwrap(), 0);
    assert_eq!(
        refs(&pool, "rejoin"),
        2,
        "the second image keeps its reference"
    );
    drop(child);
    assert_eq!(pool.collect_spaces(Duration::ZERO).unwrap(), 0);
    assert_eq!(
        refs(&pool, "rejoin"),
        1,
        "the killed image's reference went"
    );
    drop(creator);
    assert_eq!(pool.collect_spaces(Duration::ZERO).unwrap(), 1);
    drop(pool);
    let _ = std::fs::remove_file(&path);
}
