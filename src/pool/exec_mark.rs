//! A node's exec mark: how a process of our host that `exec`'d (or closed the pool) is told
//! from one that still maps the pool, so that its references are given back.
//!
//! `exec` keeps the pid and start time that `liveness` judges a node by, but unmaps every
//! space: without a mark, a forked child that execs a long-running program (or any node
//! that execs) would hold its references until that program exits, and no space it held
//! could be collected meanwhile. So every node, when it joins, takes an open-file-description
//! read lock (`F_OFD_SETLK`) on one byte of the pool's file, `MARK_AT + offset + slot` (past
//! any data), through a descriptor of its own opened close-on-exec; `NODE_PID`'s bit 32 says
//! it holds one, `NODE_META_AT` where it maps the pool's metadata. The kernel drops the lock
//! when that descriptor is closed: at `exec`, at exit, or by the program. A forked child
//! closes its copy of its parent's descriptor at once (`fork`), so it never keeps its
//! parent's mark held.
//!
//! A node of our host whose mark is free is judged gone only when `/proc/PID/maps` also
//! shows no mapping of the pool's file at its recorded metadata address (a program that
//! closed its descriptors but still maps its spaces keeps them); a maps file that cannot be
//! read proves nothing, and the node is kept. The mark is host-local: it only refines the
//! same-host judgement, nodes of other hosts are judged by their heartbeat alone, and all
//! coordination still lives on the device.

use super::layout::*;
use super::Pool;

/// Where the marks start in the pool's file, past any pool's bytes.
const MARK_AT: u64 = 1 << 61;
/// `NODE_PID`'s bit saying its node holds its exec mark (old nodes never set it).
pub(crate) const NODE_PID_MARKED: u64 = 1 << 32;

fn mark_lock(pool: &Pool, slot: usize, kind: i32) -> libc::flock {
    // SAFETY: a plain C struct; all zero is valid.
    let mut fl: libc::flock = unsafe { core::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = (MARK_AT + pool.spec.offset + slot as u64) as libc::off_t;
    fl.l_len = 1;
    fl
}

impl Pool {
    /// Takes the exec mark of registry slot `slot` on a new descriptor of the pool's file:
    /// the descriptor, or -1 if the file or kernel allows none (the node is then judged by
    /// its pid alone, as before marks).
    pub(crate) fn take_exec_mark(&self, slot: usize) -> i32 {
        use core::fmt::Write;
        let mut path = [0u8; 40];
        let mut w = crate::textbuf::SliceWriter::new(&mut path);
        if write!(w, "/proc/self/fd/{}\0", self.fd).is_err() {
            return -1;
        }
        crate::os::keep_errno(|| {
            // SAFETY: a NUL-terminated path; reopening our own descriptor's file gives a new
            // open file description, whose lock no other descriptor of ours shares.
            let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return -1;
            }
            let fl = mark_lock(self, slot, libc::F_RDLCK);
            // SAFETY: our descriptor and a valid flock.
            if unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &fl) } != 0 {
                // SAFETY: our descriptor.
                unsafe { libc::close(fd) };
                return -1;
            }
            fd
        })
    }

    /// Whether the node of our host in `slot`, process `pid`, which set `NODE_PID_MARKED`,
    /// has let its mark go and no longer maps the pool (see the module comment).
    pub(crate) fn exec_mark_gone(&self, slot: usize, pid: u32) -> bool {
        let mut fl = mark_lock(self, slot, libc::F_WRLCK);
        // SAFETY: our descriptor and a valid flock.
        let asked = crate::os::keep_errno(|| unsafe {
            libc::fcntl(self.fd, libc::F_OFD_GETLK, &mut fl)
        });
        if asked != 0 || fl.l_type != libc::F_UNLCK as libc::c_short {
            return false;
        }
        let meta_at = self.load(node_at(slot) + NODE_META_AT);
        self.maps_pool_at(pid, meta_at) == Some(false)
    }

    /// Whether process `pid` maps the pool's file at address `at` (its `/proc/PID/maps`),
    /// `None` if that cannot be read. Allocates nothing.
    fn maps_pool_at(&self, pid: u32, at: u64) -> Option<bool> {
        use core::fmt::Write;
        // SAFETY: a valid out-parameter.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        // SAFETY: our descriptor.
        if unsafe { libc::fstat(self.fd, &mut st) } != 0 {
            return None;
        }
        let mut want = [0u8; 64];
        let mut w = crate::textbuf::SliceWriter::new(&mut want);
        write!(
            w,
            "{:02x}:{:02x} {}",
            libc::major(st.st_dev),
            libc::minor(st.st_dev),
            st.st_ino
        )
        .ok()?;
        let want_len = w.len();
        let want = &want[..want_len];
        let mut path = [0u8; 32];
        let mut w = crate::textbuf::SliceWriter::new(&mut path);
        write!(w, "/proc/{pid}/maps\0").ok()?;
        // SAFETY: a NUL-terminated path.
        let fd = crate::os::keep_errno(|| unsafe {
            libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC)
        });
        if fd < 0 {
            return None;
        }
        let mut buf = [0u8; 8192];
        let mut kept = 0;
        let mut found = Some(false);
        'read: loop {
            // SAFETY: reading into the unused end of our buffer.
            let n = unsafe { libc::read(fd, buf[kept..].as_mut_ptr().cast(), buf.len() - kept) };
            if n < 0 {
                found = None;
                break;
            }
            let end = kept + n as usize;
            let mut start = 0;
            while let Some(nl) = buf[start..end].iter().position(|&b| b == b'\n') {
                if maps_line_is(&buf[start..start + nl], at, want) {
                    found = Some(true);
                    break 'read;
                }
                start += nl + 1;
            }
            if n == 0 {
                if start < end && maps_line_is(&buf[start..end], at, want) {
                    found = Some(true);
                }
                break;
            }
            // A partial line moves to the front. None fills the buffer (a path is at most
            // PATH_MAX bytes): one that did is not judged, and neither is the node (kept).
            if start == 0 && end == buf.len() {
                found = None;
                break;
            }
            buf.copy_within(start..end, 0);
            kept = end - start;
        }
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
        found
    }
}

/// Whether a `/proc/PID/maps` line (`start-end perms offset dev inode path`) maps file
/// `dev_ino` (`maj:min inode`) starting at address `at`.
fn maps_line_is(line: &[u8], at: u64, dev_ino: &[u8]) -> bool {
    let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
    let Some(range) = fields.next() else {
        return false;
    };
    let start = range.split(|&b| b == b'-').next().unwrap_or(&[]);
    let Some(start) = core::str::from_utf8(start)
        .ok()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
    else {
        return false;
    };
    let (_perms, _offset) = (fields.next(), fields.next());
    let (Some(dev), Some(ino)) = (fields.next(), fields.next()) else {
        return false;
    };
    start == at && dev.len() + 1 + ino.len() == dev_ino.len() && {
        let (d, i) = dev_ino.split_at(dev.len());
        d == dev && i.first() == Some(&b' ') && &i[1..] == ino
    }
}

#[cfg(test)]
mod tests {
    use super::maps_line_is;

    #[test]
    fn a_maps_line_is_matched_by_address_device_and_inode() {
        let line = b"7f12a000-7f12c000 rw-s 00000000 00:1a 4242                       /dev/shm/pool";
        assert!(maps_line_is(line, 0x7f12a000, b"00:1a 4242"));
        assert!(!maps_line_is(line, 0x7f12b000, b"00:1a 4242"));
        assert!(!maps_line_is(line, 0x7f12a000, b"00:1a 424"));
        assert!(!maps_line_is(line, 0x7f12a000, b"00:1b 4242"));
        assert!(!maps_line_is(b"", 0, b"00:00 0"));
    }
}
