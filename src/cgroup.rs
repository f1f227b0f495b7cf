//! The memory limit of the process's control group: what DRAM `capacity` is capped by, so that
//! a program in a container reports the memory it may use, not the machine's.
//!
//! cgroup v2: `/proc/self/cgroup` has the line `0::/PATH`; the limit is the smallest
//! `memory.max` of `/sys/fs/cgroup/PATH` and its ancestors (`max` means none). cgroup v1: the
//! line `N:memory:/PATH` (or `N:...,memory,...:/PATH`) and `memory.limit_in_bytes` under
//! `/sys/fs/cgroup/memory/PATH`, where values near 2^63 mean none. In a container the mounted
//! hierarchy is often the group itself, so a path that does not exist is looked up from the
//! mount's root instead. Read once, at start-up (`init`), with fixed buffers and no allocation.

use core::sync::atomic::{AtomicU64, Ordering};

/// `u64::MAX`: no limit found (or not read yet).
static LIMIT: AtomicU64 = AtomicU64::new(u64::MAX);

/// Reads the limit (the library's constructor calls this once).
pub fn init() {
    let mut buf = [0u8; 1024];
    let Some(n) = crate::os::read_file(b"/proc/self/cgroup\0", &mut buf) else {
        return;
    };
    if let Some(limit) = limit_from(&buf[..n], b"/sys/fs/cgroup") {
        LIMIT.store(limit, Ordering::Relaxed);
    }
}

/// The process's cgroup memory limit in bytes, if it has one.
pub fn memory_limit() -> Option<u64> {
    Some(LIMIT.load(Ordering::Relaxed)).filter(|&l| l != u64::MAX)
}

/// The smallest limit on the way from the process's group up to the root of the hierarchy
/// mounted at `root`, given `/proc/self/cgroup`'s text.
fn limit_from(proc_cgroup: &[u8], root: &[u8]) -> Option<u64> {
    let mut best: Option<u64> = None;
    for line in proc_cgroup.split(|&c| c == b'\n') {
        let mut fields = line.splitn(3, |&c| c == b':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let found = if controllers.is_empty() {
            smallest_up_the_tree(root, b"", path, b"memory.max")
        } else if controllers.split(|&c| c == b',').any(|c| c == b"memory") {
            smallest_up_the_tree(root, b"/memory", path, b"memory.limit_in_bytes")
        } else {
            None
        };
        if let Some(v) = found {
            best = Some(best.map_or(v, |b| b.min(v)));
        }
    }
    best
}

/// The smallest `file` value in `root + mount + path` and each ancestor directory, down to
/// `root + mount` itself. A path absent from the mount (a container's view) counts as the
/// mount's root.
fn smallest_up_the_tree(root: &[u8], mount: &[u8], path: &[u8], file: &[u8]) -> Option<u64> {
    let mut best: Option<u64> = None;
    let mut path = path.trim_ascii_end();
    loop {
        let mut name = PathBuf::new();
        name.push(root);
        name.push(mount);
        name.push(path);
        name.push(b"/");
        name.push(file);
        let mut value = [0u8; 64];
        if let Some(v) = name
            .c_str()
            .and_then(|p| crate::os::read_file(p, &mut value))
            .and_then(|n| parse_limit(&value[..n]))
        {
            best = Some(best.map_or(v, |b| b.min(v)));
        }
        if path.is_empty() || path == b"/" {
            return best;
        }
        path = match path.iter().rposition(|&c| c == b'/') {
            Some(i) => &path[..i],
            None => b"",
        };
    }
}

/// A limit file's value: bytes, or `None` for `max` and for v1's "no limit" (≥ 2^62).
fn parse_limit(text: &[u8]) -> Option<u64> {
    let text = text.trim_ascii();
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: u64 = 0;
    for &d in text {
        v = v.checked_mul(10)?.checked_add((d - b'0') as u64)?;
    }
    (v < 1 << 62).then_some(v)
}

/// A NUL-terminated path in a fixed buffer; too long a path gives `None` from `c_str`.
struct PathBuf {
    buf: [u8; 512],
    len: usize,
    overflow: bool,
}

impl PathBuf {
    fn new() -> Self {
        PathBuf {
            buf: [0; 512],
            len: 0,
            overflow: false,
        }
    }
    fn push(&mut self, s: &[u8]) {
        if self.len + s.len() >= self.buf.len() {
            self.overflow = true;
            return;
        }
        self.buf[self.len..self.len + s.len()].copy_from_slice(s);
        self.len += s.len();
    }
    fn c_str(&mut self) -> Option<&[u8]> {
        if self.overflow {
            return None;
        }
        self.buf[self.len] = 0;
        Some(&self.buf[..=self.len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tree(files: &[(&str, &str)]) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!(
            "tiermalloc-cgroup-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&root);
        for (path, content) in files {
            let p = root.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
        root
    }

    #[test]
    fn v2_takes_the_smallest_limit_up_the_tree() {
        let root = tree(&[
            ("memory.max", "max\n"),
            ("a/memory.max", "1073741824\n"),
            ("a/b/memory.max", "max\n"),
        ]);
        let r = root.as_os_str().as_encoded_bytes();
        assert_eq!(limit_from(b"0::/a/b\n", r), Some(1 << 30));
        assert_eq!(limit_from(b"0::/\n", r), None);
        // A group absent from the mount (a container's view) is read from its root.
        assert_eq!(limit_from(b"0::/elsewhere\n", r), None);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn v1_reads_the_memory_controller_and_ignores_its_no_limit_value() {
        let root = tree(&[
            ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory/g/memory.limit_in_bytes", "536870912\n"),
        ]);
        let r = root.as_os_str().as_encoded_bytes();
        assert_eq!(
            limit_from(b"5:devices:/\n4:memory:/g\n0::/\n", r),
            Some(512 << 20)
        );
        assert_eq!(limit_from(b"4:cpu,memory:/\n", r), None);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn limit_values() {
        assert_eq!(parse_limit(b"4096\n"), Some(4096));
        assert_eq!(parse_limit(b"max\n"), None);
        assert_eq!(parse_limit(b""), None);
        assert_eq!(parse_limit(b"9223372036854771712"), None);
    }
}
