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
//! closed its descriptors but still maps its spaces keeps them), or when its process holds a
//! newer node of a later image (below); a maps file that cannot be read proves nothing, and
//! the node is kept. The mark is host-local: it only refines the same-host judgement, nodes
//! of other hosts are judged by their heartbeat alone, and all coordination still lives on
//! the device.
//!
//! The maps test alone cannot tell an old image from a new one: a program the process exec'd
//! may join the pool again and map its metadata where the old image did (the same binary
//! doing the same things with randomisation off), and the old node would then be judged alive
//! for ever. So every node also records which image of its process it is (`NODE_IMAGE`: the
//! kernel's `AT_RANDOM` bytes, new at every exec) and when it joined (`NODE_JOINED`,
//! CLOCK_BOOTTIME), with `NODE_PID_IMAGED` saying so. A node whose mark is free is gone when
//! another node of the same process (host, pid, start time) holds its mark, joined later
//! and names another image: images of one process follow each other, so the old node's image
//! was replaced by an exec, and everything it mapped went with it. Two nodes of one image (the
//! pool opened twice, one mark closed by the program) name the same image and are both kept.

use super::layout::*;
use super::Pool;

/// Where the marks start in the pool's file, past any pool's bytes.
const MARK_AT: u64 = 1 << 61;
/// `NODE_PID`'s bit saying its node holds its exec mark (old nodes never set it).
pub(crate) const NODE_PID_MARKED: u64 = 1 << 32;
/// `NODE_PID`'s bit saying its node wrote `NODE_IMAGE` and `NODE_JOINED` (old nodes never do).
pub(crate) const NODE_PID_IMAGED: u64 = 1 << 33;

/// This image of the process: 8 of the 16 random bytes the kernel gives every `exec`
/// (`AT_RANDOM`), never 0. A process whose kernel gives none is image 1.
pub(crate) fn image_id() -> u64 {
    // SAFETY: no preconditions; the answer is the address of 16 bytes or 0.
    let at = unsafe { libc::getauxval(libc::AT_RANDOM) } as *const u8;
    if at.is_null() {
        return 1;
    }
    let mut bytes = [0u8; 8];
    // SAFETY: the kernel's 16 random bytes, read-only for the process's life.
    unsafe { core::ptr::copy_nonoverlapping(at, bytes.as_mut_ptr(), 8) };
    u64::from_ne_bytes(bytes).max(1)
}

/// CLOCK_BOOTTIME in ns: when a node joined, compared between nodes of one host.
pub(crate) fn boottime_ns() -> u64 {
    // SAFETY: a plain C struct; all zero is valid.
    let mut ts: libc::timespec = unsafe { core::mem::zeroed() };
    // SAFETY: a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

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
    /// has let its mark go and either no longer maps the pool or was replaced by a later
    /// image's node (see the module comment).
    pub(crate) fn exec_mark_gone(&self, slot: usize, pid: u32) -> bool {
        if self.mark_held(slot) != Some(false) {
            return false;
        }
        let meta_at = self.load(node_at(slot) + NODE_META_AT);
        match self.maps_pool_at(pid, meta_at) {
            Some(false) => true,
            Some(true) => self.later_image_joined(slot),
            None => false,
        }
    }

    /// Whether some descriptor holds registry slot `slot`'s exec mark; `None` if the kernel
    /// does not say.
    fn mark_held(&self, slot: usize) -> Option<bool> {
        let mut fl = mark_lock(self, slot, libc::F_WRLCK);
        // SAFETY: our descriptor and a valid flock.
        let asked =
            crate::os::keep_errno(|| unsafe { libc::fcntl(self.fd, libc::F_OFD_GETLK, &mut fl) });
        (asked == 0).then_some(fl.l_type != libc::F_UNLCK as libc::c_short)
    }

    /// Whether the process of the node in `slot` (of our host, its mark free) holds another
    /// node, marked, that joined after it and names another image: then the node's image
    /// was replaced by an exec (see the module comment).
    fn later_image_joined(&self, slot: usize) -> bool {
        let at = node_at(slot);
        let pid_word = self.load(at + NODE_PID);
        if pid_word & NODE_PID_IMAGED == 0 {
            return false;
        }
        let (pid, start) = (pid_word as u32, self.load(at + NODE_PID_START));
        let (image, joined) = (self.load(at + NODE_IMAGE), self.load(at + NODE_JOINED));
        (0..MAX_NODES).filter(|&s| s != slot).any(|s| {
            let other = node_at(s);
            self.invalidate_meta(other, NODE_BYTES);
            let (_, _, state) = node_state_parts(self.load(other + NODE_STATE));
            let other_pid = self.load(other + NODE_PID);
            state == NODE_ALIVE
                && other_pid as u32 == pid
                && other_pid & NODE_PID_IMAGED != 0
                && self.load(other + NODE_HOST) == self.host
                && self.load(other + NODE_PID_START) == start
                && self.load(other + NODE_IMAGE) != image
                && self.load(other + NODE_JOINED) > joined
                && self.mark_held(s) == Some(true)
        })
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
        let line = b"7f12a000-7f12c000 rw-s 00000000 00:1a 4242                       \
                     /dev/shm/pool";
        assert!(maps_line_is(line, 0x7f12a000, b"00:1a 4242"));
        assert!(!maps_line_is(line, 0x7f12b000, b"00:1a 4242"));
        assert!(!maps_line_is(line, 0x7f12a000, b"00:1a 424"));
        assert!(!maps_line_is(line, 0x7f12a000, b"00:1b 4242"));
        assert!(!maps_line_is(b"", 0, b"00:00 0"));
    }
}
