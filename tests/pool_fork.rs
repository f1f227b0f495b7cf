//! A forked child's inherited mappings of spaces are its own references (DESIGN.md "The
//! shared pool": refs counts live mappings held by processes). In a file of its own: the fork
//! handler adopts the mappings of every pool open in the process, which must be this test's
//! only.

use std::time::Duration;
use tiermalloc::pool::api::MapMode;
use tiermalloc::pool::Pool;

#[test]
fn a_forked_childs_inherited_mappings_keep_the_space_alive() {
    let path = format!("/dev/shm/tm-pool-fork-{}", std::process::id());
    let _ = std::fs::remove_file(&path);
    let pool = Pool::open_str(&format!("path={path},size=8M,create")).unwrap();
    let bytes: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let mut creator = pool.create_space("forked", bytes.len()).unwrap();
    creator.as_mut_slice().unwrap().copy_from_slice(&bytes);
    creator.publish().unwrap();
    let reader = pool.open_space("forked", MapMode::Read).unwrap();
    assert_eq!(pool.space("forked").unwrap().refs, 2);

    let mut go = [0i32; 2];
    // SAFETY: a pipe into a valid array.
    assert_eq!(unsafe { libc::pipe(go.as_mut_ptr()) }, 0);
    // SAFETY: fork; the child only reads the pipe, compares bytes, asks the pool and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let mut b = 0u8;
        // SAFETY: our pipe's ends (the write end closed so a parent that fails is seen as
        // end of file).
        unsafe {
            libc::close(go[1]);
            libc::read(go[0], (&mut b as *mut u8).cast(), 1);
        }
        let intact = reader.as_slice() == &bytes[..] && creator.as_slice() == &bytes[..];
        let listed = pool.space("forked").map(|s| s.refs).unwrap_or(0);
        // The child closes an inherited mapping like its own.
        drop(reader);
        let after_close = pool.space("forked").map(|s| s.refs).unwrap_or(0);
        let code = if !intact {
            3
        } else if listed != 2 {
            4
        } else if after_close != 1 {
            5
        } else {
            0
        };
        // SAFETY: ending the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    // SAFETY: our pipe's read end (the child's).
    unsafe { libc::close(go[0]) };
    assert_eq!(
        pool.space("forked").unwrap().refs,
        4,
        "the child's two inherited mappings are counted"
    );
    drop(reader);
    drop(creator);
    assert_eq!(
        pool.collect_spaces(Duration::ZERO).unwrap(),
        0,
        "the child still maps it"
    );
    assert_eq!(pool.space("forked").unwrap().refs, 2);
    // The bytes must not be reused under the child: fill the pool with another space.
    let other = pool.create_space("other", 64 * 1024);
    // SAFETY: our pipe's write end.
    unsafe { libc::write(go[1], b"g".as_ptr().cast(), 1) };
    let mut status = 0;
    // SAFETY: waiting for our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "{status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "3: bytes changed, 4: refs wrong in the child, 5: its close gave none back"
    );
    drop(other);
    assert_eq!(
        pool.collect_spaces(Duration::ZERO).unwrap(),
        1,
        "the child exited: its references went with it"
    );
    drop(pool);
    let _ = std::fs::remove_file(&path);
}
