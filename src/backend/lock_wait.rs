//! Test-only: waiting until no open file description holds a file's host lock
//! (`lock_range`).
//!
//! The lock is an open-file-description lock: a process forked from the one that holds it
//! shares the locked description, and the kernel lets the lock go only when the last copy is
//! closed. A test binary runs its tests on several threads; when one test spawns a child
//! (`fork`, then `exec`, which closes the close-on-exec descriptor) or forks a child that
//! runs until `_exit`, that child holds a copy of every tier another test has open at that
//! moment. A test that closes its tier and opens the file again (or has a child of its own
//! open it) then meets the lock still held, "in use by another process", until that child
//! execs or exits: rare, and longer under load. Once this process has closed its tier and
//! the lock is seen free, no fork of it can take the lock back (only the locked description
//! carries it), so waiting here once after the close is enough.

/// How long `wait_until_unlocked` waits before it gives up: a child that takes longer to
/// reach its `exec` is not one of these tests' own transient forks.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until no open file description holds a lock on any byte of the file at `path`
/// (at once if it has none, or if the file cannot be opened), calling `while_held` at each
/// look that finds one. False if one is still held after `PATIENCE`: the caller's open then
/// meets it and says so. Only looks (`F_OFD_GETLK`), so the descriptor it opens for that
/// carries no lock a fork could keep.
pub(crate) fn wait_until_unlocked(path: &str, mut while_held: impl FnMut()) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return true;
    };
    let fd = std::os::unix::io::AsRawFd::as_raw_fd(&file);
    let started = std::time::Instant::now();
    loop {
        // SAFETY: all-zero is a valid `flock`.
        let mut probe: libc::flock = unsafe { core::mem::zeroed() };
        probe.l_type = libc::F_WRLCK as i16;
        probe.l_whence = libc::SEEK_SET as i16;
        // l_start 0, l_len 0: the whole file.
        // SAFETY: our open descriptor and a valid `flock`, which the call fills in.
        if unsafe { libc::fcntl(fd, libc::F_OFD_GETLK, &mut probe) } != 0 {
            return true; // a file system without such locks: nothing holds one
        }
        if probe.l_type == libc::F_UNLCK as i16 {
            return true;
        }
        if started.elapsed() > PATIENCE {
            return false;
        }
        while_held();
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{map_region, unmap_region, IN_USE};
    use crate::config::tier_spec_for_test as spec;

    /// The cause of the persist tests' rare "in use by another process" on a file they had
    /// closed: a fork of this process keeps the closed tier's lock until it exits (or execs).
    /// Here the fork is held until the lock has been seen held, so the open that does not
    /// wait is refused every time, and the one after `wait_until_unlocked` never is.
    #[test]
    fn a_fork_keeps_a_closed_tiers_lock_until_it_exits_and_the_wait_outlasts_it() {
        let path = format!("/dev/shm/tiermalloc-lockwait-{}", std::process::id());
        let text = format!("pmr:path={path},size=1M,create");
        let region = map_region(&spec(&text)).unwrap();
        let mut pipe = [0i32; 2];
        // SAFETY: a valid two-descriptor array.
        assert_eq!(
            unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) },
            0
        );
        // SAFETY: the child only reads the pipe and `_exit`s, calls safe after a fork of a
        // threaded process.
        let child = unsafe { libc::fork() };
        if child == 0 {
            let mut byte = 0u8;
            // SAFETY: reading into our own byte; returns 0 when the parent closes its end.
            unsafe {
                libc::close(pipe[1]);
                libc::read(pipe[0], (&mut byte as *mut u8).cast(), 1);
                libc::_exit(0);
            }
        }
        assert!(child > 0);
        // SAFETY: our end of the pipe the child does not write.
        unsafe { libc::close(pipe[0]) };
        // SAFETY: nothing uses the region; this closes its locked descriptor.
        unsafe { unmap_region(region) };
        let refused = map_region(&spec(&format!("pmr:path={path}"))).unwrap_err();
        assert_eq!(
            refused.what, IN_USE,
            "the fork's copy of the descriptor keeps the lock"
        );
        let mut looks = 0;
        let freed = wait_until_unlocked(&path, || {
            looks += 1;
            if looks == 1 {
                // SAFETY: our end of the pipe: the child reads end-of-file and exits.
                unsafe { libc::close(pipe[1]) };
            }
        });
        if looks == 0 {
            // SAFETY: as above (the child must not wait for ever if the lock was free).
            unsafe { libc::close(pipe[1]) };
        }
        assert!(
            freed && looks >= 1,
            "the lock was not seen held ({looks} looks)"
        );
        let again = map_region(&spec(&format!("pmr:path={path}"))).expect("free after the wait");
        // SAFETY: as above.
        unsafe { unmap_region(again) };
        let mut status = 0;
        // SAFETY: reaping our own child.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        std::fs::remove_file(path).unwrap();
    }
}
