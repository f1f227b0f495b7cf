//! Whether a process named in device memory still lives: the judgement the shared pool's
//! registry (`pool::registry`) and a device tier's owner record (`device::persist::owner`)
//! both make about a holder written there by another process, perhaps on another host.
//!
//! A holder is recorded as its host's identity (`host_id`: the boot and the pid namespace, so
//! that two hosts, or two containers, never take each other's pids for their own), its pid,
//! the pid's start time (so a reused pid is not taken for the dead one) and a heartbeat its
//! process refreshes (CLOCK_REALTIME, comparable across hosts whose clocks agree). On our host
//! a dead holder is seen at once (its pid is gone, or belongs to a later process); on another
//! host only by its heartbeat growing older than the lease.
//!
//! Nothing here allocates: a device tier's owner is judged while the tiers open, which may be
//! inside the process's first `malloc`.

/// What a holder's record says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Holder {
    pub host: u64,
    pub pid: u32,
    /// Its start time (`pid_start`), 0 if it could not be read.
    pub pid_start: u64,
    /// `realtime_ns` of its last heartbeat.
    pub heartbeat_ns: u64,
}

/// A holder as a message names it: its pid and host name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HolderName {
    pub pid: u32,
    /// NUL-padded.
    pub host: [u8; 32],
}

impl HolderName {
    /// The host name, up to its first NUL.
    pub(crate) fn host_name(&self) -> &str {
        let end = self.host.iter().position(|&b| b == 0).unwrap_or(32);
        core::str::from_utf8(&self.host[..end]).unwrap_or("?")
    }
}

impl Holder {
    /// Whether the holder lives, judged from host `my_host` at `now_ns` with a lease of
    /// `lease_ns` (see the module comment).
    pub(crate) fn live(&self, my_host: u64, lease_ns: u64, now_ns: u64) -> bool {
        if self.host == my_host {
            process_live(self.pid, self.pid_start)
        } else {
            self.heartbeat_ns.saturating_add(lease_ns) >= now_ns
        }
    }
}

/// Whether process `pid` of our host exists and is the one that started at `start` (0, or a
/// start time we cannot read (/proc mounted hidepid), proves nothing either way).
pub(crate) fn process_live(pid: u32, start: u64) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid as i32, 0) } == 0 || crate::os::errno() == libc::EPERM;
    if !exists {
        return false;
    }
    match stat_fields(pid) {
        // A zombie (killed, not yet reaped) runs no more.
        Some((state, _)) if state == b'Z' || state == b'X' => false,
        Some((_, s)) => start == 0 || s == start,
        // A start time we cannot read (/proc mounted hidepid) proves nothing.
        None => true,
    }
}

/// CLOCK_REALTIME in nanoseconds (comparable across hosts whose clocks agree).
pub(crate) fn realtime_ns() -> u64 {
    crate::os::clock_ns(libc::CLOCK_REALTIME)
}

/// Reads the file at `path` (NUL-terminated) into `buf`: the bytes read, or `None`.
fn read_into<'a>(path: &[u8], buf: &'a mut [u8]) -> Option<&'a [u8]> {
    let len = crate::os::read_file(path, buf)?;
    Some(&buf[..len])
}

/// The start time of process `pid` (field 22 of /proc/PID/stat, in clock ticks since boot),
/// if it exists.
pub(crate) fn pid_start(pid: u32) -> Option<u64> {
    stat_fields(pid).map(|(_, start)| start)
}

/// The state letter and start time of process `pid` (fields 3 and 22 of /proc/PID/stat).
fn stat_fields(pid: u32) -> Option<(u8, u64)> {
    use core::fmt::Write;
    let mut path = [0u8; 32];
    let mut w = crate::textbuf::SliceWriter::new(&mut path);
    write!(w, "/proc/{pid}/stat\0").ok()?;
    let len = w.len();
    let mut buf = [0u8; 1024];
    let stat = read_into(&path[..len], &mut buf)?;
    // The command name (field 2) is in parentheses and may hold spaces: count after its end.
    let after = stat.iter().rposition(|&b| b == b')')?;
    let mut fields = stat.get(after + 2..)?.split(|&b| b == b' ');
    let state = *fields.next()?.first()?;
    let start = fields.nth(18)?;
    Some((state, core::str::from_utf8(start).ok()?.parse().ok()?))
}

/// This host's identity: its boot (boot_id) and pid namespace; never 0.
pub(crate) fn host_id() -> u64 {
    let mut boot = [0u8; 64];
    let boot = read_into(b"/proc/sys/kernel/random/boot_id\0", &mut boot).unwrap_or(&[]);
    let mut ns = [0u8; 64];
    // SAFETY: the path is NUL-terminated; readlink writes at most `ns.len()` bytes.
    let n = unsafe {
        libc::readlink(
            b"/proc/self/ns/pid\0".as_ptr().cast(),
            ns.as_mut_ptr().cast(),
            ns.len(),
        )
    };
    let ns = &ns[..n.max(0) as usize];
    let id = crate::lockfree::redo_log::checksum(
        boot.iter().chain(b"/").chain(ns.iter()).map(|&b| b as u64),
    );
    id.max(1)
}

/// This host's name (`gethostname`), NUL-padded and cut to 32 bytes: for messages naming a
/// holder on another host.
pub(crate) fn host_name() -> [u8; 32] {
    let mut name = [0u8; 65];
    // SAFETY: gethostname writes at most `len` bytes.
    unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len() - 1) };
    let mut out = [0u8; 32];
    out.copy_from_slice(&name[..32]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_lives_and_a_wrong_start_time_does_not() {
        // SAFETY: no preconditions.
        let me = unsafe { libc::getpid() } as u32;
        let start = pid_start(me).expect("our own /proc/PID/stat");
        assert!(process_live(me, start));
        assert!(process_live(me, 0));
        assert!(
            !process_live(me, start + 1),
            "a reused pid is not the recorded process"
        );
        assert!(!process_live(0, 0));
        let host = host_id();
        assert_eq!(host, host_id(), "the host id is stable");
        let holder = Holder {
            host,
            pid: me,
            pid_start: start,
            heartbeat_ns: 0,
        };
        assert!(
            holder.live(host, 1, realtime_ns()),
            "on our host the pid decides"
        );
        let remote = Holder {
            host: host ^ 1,
            ..holder
        };
        assert!(
            !remote.live(host, 1_000, realtime_ns()),
            "elsewhere the lease decides"
        );
        let fresh = Holder {
            heartbeat_ns: realtime_ns(),
            ..remote
        };
        assert!(fresh.live(host, 10_000_000_000, realtime_ns()));
    }

    #[test]
    fn a_killed_process_is_dead_before_and_after_it_is_reaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(process_live(pid, pid_start(pid).unwrap()));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let started = std::time::Instant::now();
        while process_live(pid, 0) {
            assert!(started.elapsed().as_secs() < 10, "a zombie counts as live");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        child.wait().unwrap();
        assert!(!process_live(pid, 0));
    }
}
