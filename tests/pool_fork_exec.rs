//! A forked child that execs or exits gives back the references it adopted at the fork, once,
//! and never its parent's; one that only closes its descriptors keeps them (DESIGN.md "The shared
//! pool": refs counts live mappings held by processes; an exec'd program maps none). In a file of
//! its own: the fork handler adopts the mappings of every pool open in the process, which must be
//! this test's only.

use std::ffi::CString;
use std::time::{Duration, Instant};
use tiermalloc::pool::api::MapMode;
use tiermalloc::pool::Pool;

fn refs(pool: &Pool, name: &str) -> u64 {
    pool.space(name).map(|s| s.refs).unwrap_or(0)
}

/// A pipe whose read end a child blocks on until the parent has looked (close-on-exec).
fn gate() -> [i32; 2] {
    let mut fds = [0i32; 2];
    // SAFETY: a valid out-array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    fds
}

/// In the child: waits for the parent's byte (or its end).
fn wait_at(gate: [i32; 2]) {
    let mut b = 0u8;
    // SAFETY: our pipe's ends.
    unsafe {
        libc::close(gate[1]);
        libc::read(gate[0], (&mut b as *mut u8).cast(), 1);
    }
}

/// In the parent: lets the child on.
fn open_gate(gate: [i32; 2]) {
    // SAFETY: our pipe's ends.
    unsafe {
        libc::close(gate[0]);
        libc::write(gate[1], b"g".as_ptr().cast(), 1);
        libc::close(gate[1]);
    }
}

fn wait_for(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    status
}

#[test]
fn a_forked_child_that_execs_or_exits_gives_its_references_back_once() {
    let path = format!("/dev/shm/tm-pool-fork-exec-{}", std::process::id());
    let _ = std::fs::remove_file(&path);
    let pool = Pool::open_str(&format!("path={path},size=8M,create")).unwrap();
    let bytes: Vec<u8> = (0..64 * 1024).map(|i| (i * 13 % 251) as u8).collect();
    let mut creator = pool.create_space("exec", bytes.len()).unwrap();
    creator.as_mut_slice().unwrap().copy_from_slice(&bytes);
    creator.publish().unwrap();
    let reader = pool.open_space("exec", MapMode::Read).unwrap();
    assert_eq!(refs(&pool, "exec"), 2);

    // fork + exec: the child runs a program that maps no space, and keeps running.
    let sleep = CString::new("/bin/sleep").unwrap();
    let thirty = CString::new("30").unwrap();
    let argv = [sleep.as_ptr(), thirty.as_ptr(), core::ptr::null()];
    let go = gate();
    // SAFETY: fork; the child only waits, execs (its arguments were built before) or exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        wait_at(go);
        // SAFETY: valid NUL-terminated arguments; `_exit` if exec fails.
        unsafe {
            libc::execv(sleep.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
    }
    assert_eq!(refs(&pool, "exec"), 4, "the child adopted its two mappings");
    open_gate(go);
    let started = Instant::now();
    while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default() != "sleep\n" {
        assert!(started.elapsed() < Duration::from_secs(20), "no exec");
        std::thread::sleep(Duration::from_millis(2));
    }
    // A sweep (every collection starts with one) gives back the exec'd child's two
    // references, and only those. (The name changes a moment before the exec closes the
    // child's descriptors: a few tries.)
    let started = Instant::now();
    loop {
        assert_eq!(pool.collect_spaces(Duration::ZERO).unwrap(), 0);
        let now = refs(&pool, "exec");
        if now == 2 {
            break;
        }
        assert!(
            now == 4 && started.elapsed() < Duration::from_secs(10),
            "the exec'd child holds no mapping: its references go, the parent's stay ({now} refs)"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(pool.collect_spaces(Duration::ZERO).unwrap(), 0);
    assert_eq!(refs(&pool, "exec"), 2, "nothing given back twice");
    assert!(
        reader.as_slice() == &bytes[..],
        "the parent's mapping is intact"
    );
    drop(reader);
    drop(creator);
    assert_eq!(
        pool.collect_spaces(Duration::ZERO).unwrap(),
        1,
        "nobody maps the space while the exec'd child still runs: it is collected"
    );
    // SAFETY: our child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for(pid);

    // fork + _exit: the child ends without calling anything.
    let mut creator = pool.create_space("exit", bytes.len()).unwrap();
    creator.as_mut_slice().unwrap().copy_from_slice(&bytes);
    creator.publish().unwrap();
    let reader = pool.open_space("exit", MapMode::Read).unwrap();
    let go = gate();
    // SAFETY: fork; the child only waits and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        wait_at(go);
        // SAFETY: ending the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    assert_eq!(refs(&pool, "exit"), 4, "the child adopted its two mappings");
    open_gate(go);
    assert!(libc::WIFEXITED(wait_for(pid)));
    assert_eq!(pool.collect_spaces(Duration::ZERO).unwrap(), 0);
    assert_eq!(refs(&pool, "exit"), 2, "the exited child's references went");
    assert_eq!(pool.collect_spaces(Duration::ZERO).unwrap(), 0);
    assert_eq!(refs(&pool, "exit"), 2, "nothing given back twice");

    // A child that closes every descriptor (as daemons do) but goes on mapping its spaces
    // keeps its references: its exec mark is gone, its mappings are not.
    let go = gate();
    let done = gate();
    // SAFETY: fork; the child only waits, closes descriptors, says so and sleeps (killed).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        wait_at(go);
        // SAFETY: closing our own descriptors, all but the one we say through.
        unsafe {
            // Standard output and error too: a parent that fails leaves no one waiting on them.
            for fd in 0..4096 {
                if fd != done[1] {
                    libc::close(fd);
                }
            }
            libc::write(done[1], b"d".as_ptr().cast(), 1);
            libc::sleep(60);
            libc::_exit(0);
        }
    }
    assert_eq!(refs(&pool, "exit"), 4, "the child adopted its two mappings");
    open_gate(go);
    let mut b = 0u8;
    // SAFETY: our pipe's ends.
    unsafe {
        libc::close(done[1]);
        assert_eq!(libc::read(done[0], (&mut b as *mut u8).cast(), 1), 1);
        libc::close(done[0]);
    }
    assert_eq!(pool.collect_spaces(Duration::ZERO).unwrap(), 0);
    assert_eq!(
        refs(&pool, "exit"),
        4,
        "a child that closed its descriptors still maps the space"
    );
    // SAFETY: our child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for(pid);
    assert_eq!(pool.collect_spaces(Duration::ZERO).unwrap(), 0);
    assert_eq!(refs(&pool, "exit"), 2, "the killed child's references went");
    drop(reader);
    assert_eq!(refs(&pool, "exit"), 1);
    drop(creator);
    assert_eq!(pool.collect_spaces(Duration::ZERO).unwrap(), 1);
    drop(pool);
    let _ = std::fs::remove_file(&path);
}
