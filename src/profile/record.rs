//! Where a profile's records live when no pool holds them: a directory,
//! `TIERMALLOC_PROFILE_DIR`, else `$XDG_STATE_HOME/tiermalloc/profiles`, else
//! `$HOME/.local/state/tiermalloc/profiles`.
//!
//! Two kinds of file per profile NAME:
//! - `NAME.runs`: the last `HISTORY_RUNS` finished runs, one line each,
//!   `dram PEAK_BYTES MS_TO_PEAK UNIX_SECS PID pool PEAK_BYTES MS_TO_PEAK`, then
//!   `KIND PEAK_BYTES MS_TO_PEAK` for each private device tier (`cxl`, `cmb`, `pmr`) the run
//!   used, then `KIND.slab KEY SLABS` for each lane and size class of its slabs (`KEY`:
//!   `slabs::Lane::key`) and the most slabs of it in use at once, oldest first (parts an
//!   older version did not write read as 0; parts a newer one adds are skipped). A finishing
//!   process rewrites it whole into a temporary file and renames it over the old one, so a
//!   reader sees one complete version or the other; two processes finishing at the same
//!   instant may lose one of their two lines, never corrupt the file.
//! - `NAME.live.PID`: the record of a running process, a 128-byte file it maps shared and
//!   keeps current with plain atomic stores (no system call on the allocator's paths):
//!   `LIVE_MAGIC, pid, pid start time, dram peak, reserved, pool peak, cxl peak, cmb peak,
//!   pmr peak` (a 64-byte record of an older version reads 0 for the device peaks). Peers
//!   read it as the current use of a running instance. A record whose process is gone (pid
//!   missing, or reused: its start time differs) is ignored and removed.
//!
//! Only start and exit read and write these files; they may allocate.

use core::sync::atomic::AtomicU64;
use std::io::Write;
use std::path::PathBuf;

/// Finished runs a profile keeps (its history: `estimate` reads no more than these).
pub(crate) const HISTORY_RUNS: usize = 5;

const LIVE_MAGIC: u64 = u64::from_le_bytes(*b"TMLIVE01");
const LIVE_BYTES: usize = 128;
const LIVE_PEAK: usize = 3;
const LIVE_RESERVED: usize = 4;
const LIVE_POOL_PEAK: usize = 5;
/// The words of each private device tier's peak (`cxl`, `cmb`, `pmr`).
const LIVE_DEVICE_PEAKS: [usize; 3] = [6, 7, 8];

/// What a live peer of the profile has used at most so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LivePeer {
    pub dram: u64,
    pub pool: u64,
    /// Each private device tier's (`cxl`, `cmb`, `pmr`).
    pub devices: [u64; 3],
}

/// A profile's records in its directory.
pub(crate) struct Store {
    dir: PathBuf,
    name: String,
}

/// The most slabs of one lane and size class a run had in use at once on a private device
/// tier: what the next run cuts ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlabPeak {
    /// The tier: `Kind as usize - 1` (`cxl`, `cmb`, `pmr`).
    pub device: u8,
    /// The lane and class (`slabs::Lane::key`).
    pub key: u8,
    pub slabs: u32,
}

/// A finished run's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    /// Peak use of the DRAM tier, and when it was reached (ms after start).
    pub peak: u64,
    pub ms_to_peak: u64,
    /// Peak use of the pool tier (`cxl:pool,share=`), and when.
    pub pool_peak: u64,
    pub pool_ms_to_peak: u64,
    /// Peak use of each private device tier (`cxl`, `cmb`, `pmr`: `Kind as usize - 1`), and
    /// when: (bytes, ms after start).
    pub devices: [(u64, u64); 3],
    /// Its slabs on private device tiers (none where the records are in the pool).
    pub slabs: Vec<SlabPeak>,
    pub unix_secs: u64,
    pub pid: u32,
}

/// The names of the device kinds in a run's line, by `Kind as usize - 1`.
const DEVICE_NAMES: [&str; 3] = ["cxl", "cmb", "pmr"];

/// This process's live record, mapped.
pub(crate) struct Live {
    words: *mut AtomicU64,
    path: PathBuf,
}

/// Whether `name` may name a profile: 1..=63 bytes of `[A-Za-z0-9._-]`, not starting with a dot.
pub(crate) fn valid_name(name: &[u8]) -> bool {
    (1..=63).contains(&name.len())
        && name[0] != b'.'
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The directory `TIERMALLOC_PROFILE_DIR` (given as `dir`) or the XDG default names.
pub(crate) fn directory(dir: Option<&[u8]>) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let os = |b: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(b));
    if let Some(d) = dir.filter(|d| !d.is_empty()) {
        return Some(os(d));
    }
    if let Some(x) = crate::os::getenv(b"XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return Some(os(x).join("tiermalloc/profiles"));
    }
    let home = crate::os::getenv(b"HOME").filter(|h| !h.is_empty())?;
    Some(os(home).join(".local/state/tiermalloc/profiles"))
}

impl Store {
    /// The store of profile `name` in `dir`, creating the directory.
    pub(crate) fn open(dir: PathBuf, name: &str) -> std::io::Result<Store> {
        std::fs::create_dir_all(&dir)?;
        Ok(Store::at(dir, name))
    }

    /// The store of profile `name` in `dir`, to read (nothing is created).
    pub(crate) fn at(dir: PathBuf, name: &str) -> Store {
        Store {
            dir,
            name: name.to_owned(),
        }
    }

    pub(crate) fn runs_path(&self) -> PathBuf {
        self.dir.join(format!("{}.runs", self.name))
    }

    /// The recorded runs, oldest first (lines that do not parse are skipped).
    pub(crate) fn history(&self) -> Vec<Run> {
        let Ok(text) = std::fs::read_to_string(self.runs_path()) else {
            return Vec::new();
        };
        text.lines().filter_map(parse_run).collect()
    }

    /// Appends `run`, keeping the last `HISTORY_RUNS`.
    pub(crate) fn append(&self, run: Run) -> std::io::Result<()> {
        let mut runs = self.history();
        runs.push(run);
        let keep = &runs[runs.len().saturating_sub(HISTORY_RUNS)..];
        let mut text = String::new();
        for r in keep {
            text.push_str(&format!(
                "dram {} {} {} {} pool {} {}",
                r.peak, r.ms_to_peak, r.unix_secs, r.pid, r.pool_peak, r.pool_ms_to_peak
            ));
            for (name, &(peak, ms)) in DEVICE_NAMES.iter().zip(&r.devices) {
                if peak > 0 {
                    text.push_str(&format!(" {name} {peak} {ms}"));
                }
            }
            for p in &r.slabs {
                let name = DEVICE_NAMES[p.device as usize % 3];
                text.push_str(&format!(" {name}.slab {} {}", p.key, p.slabs));
            }
            text.push('\n');
        }
        let tmp = self
            .dir
            .join(format!("{}.runs.tmp.{}", self.name, std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        drop(f);
        std::fs::rename(&tmp, self.runs_path())
    }

    /// The peaks of live peers of this profile (not this process). Records of dead
    /// processes are ignored and removed.
    pub(crate) fn live_peers(&self) -> Vec<LivePeer> {
        let prefix = format!("{}.live.", self.name);
        let me = std::process::id();
        let mut peaks = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return peaks;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(pid) = file_name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            let word = |i: usize| {
                bytes
                    .get(i * 8..i * 8 + 8)
                    .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
            };
            if word(0) == LIVE_MAGIC && word(1) == pid as u64 && process_lives(pid, word(2)) {
                peaks.push(LivePeer {
                    dram: word(LIVE_PEAK),
                    pool: word(LIVE_POOL_PEAK),
                    devices: LIVE_DEVICE_PEAKS.map(word),
                });
            } else if word(0) == LIVE_MAGIC && !process_lives(pid, word(2)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        peaks
    }

    /// Creates and maps this process's live record.
    pub(crate) fn publish_live(&self, reserved: u64) -> std::io::Result<Live> {
        use std::os::unix::io::AsRawFd;
        let pid = std::process::id();
        let path = self.dir.join(format!("{}.live.{pid}", self.name));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        f.set_len(LIVE_BYTES as u64)?;
        // SAFETY: mapping the file we just sized, shared, read-write.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                LIVE_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let words = p.cast::<AtomicU64>();
        let start = crate::pool::registry::pid_start(pid).unwrap_or(0);
        // SAFETY: the mapping holds LIVE_BYTES / 8 words.
        unsafe {
            use core::sync::atomic::Ordering::Relaxed;
            (*words.add(1)).store(pid as u64, Relaxed);
            (*words.add(2)).store(start, Relaxed);
            (*words.add(LIVE_RESERVED)).store(reserved, Relaxed);
            (*words).store(LIVE_MAGIC, core::sync::atomic::Ordering::Release);
        }
        Ok(Live { words, path })
    }
}

// SAFETY: the record is a shared mapping accessed only through atomics.
unsafe impl Send for Live {}

impl Live {
    /// The word peers read as this process's peak.
    pub(crate) fn peak_word(&self) -> *mut AtomicU64 {
        // SAFETY: within the mapping.
        unsafe { self.words.add(LIVE_PEAK) }
    }

    /// The word peers read as this process's peak on the pool tier.
    pub(crate) fn pool_peak_word(&self) -> *mut AtomicU64 {
        // SAFETY: within the mapping.
        unsafe { self.words.add(LIVE_POOL_PEAK) }
    }

    /// The word peers read as this process's peak on private device tier `KINDS[i]`.
    pub(crate) fn device_peak_word(&self, i: usize) -> *mut AtomicU64 {
        // SAFETY: within the mapping.
        unsafe { self.words.add(LIVE_DEVICE_PEAKS[i]) }
    }

    /// Removes the record's file (the process is finishing). The mapping stays for the rest
    /// of the process: a thread still allocating may be storing a peak into it.
    pub(crate) fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn parse_run(line: &str) -> Option<Run> {
    let mut f = line.split_ascii_whitespace();
    if f.next()? != "dram" {
        return None;
    }
    let mut n = || f.next()?.parse::<u64>().ok();
    let (peak, ms_to_peak, unix_secs, pid) = (n()?, n()?, n()?, n()? as u32);
    let mut run = Run {
        peak,
        ms_to_peak,
        pool_peak: 0,
        pool_ms_to_peak: 0,
        devices: [(0, 0); 3],
        slabs: Vec::new(),
        unix_secs,
        pid,
    };
    // Then `NAME PEAK MS` parts: the pool's, each device tier's; unknown names are skipped.
    while let Some(part) = f.next() {
        let mut n = || f.next()?.parse::<u64>().ok();
        let figures = (n()?, n()?);
        match part {
            "pool" => (run.pool_peak, run.pool_ms_to_peak) = figures,
            device => {
                if let Some(i) = DEVICE_NAMES.iter().position(|&d| d == device) {
                    run.devices[i] = figures;
                } else if let Some(i) = device
                    .strip_suffix(".slab")
                    .and_then(|d| DEVICE_NAMES.iter().position(|&n| n == d))
                {
                    if let (Ok(key), Ok(slabs)) =
                        (u8::try_from(figures.0), u32::try_from(figures.1))
                    {
                        run.slabs.push(SlabPeak {
                            device: i as u8,
                            key,
                            slabs,
                        });
                    }
                }
            }
        }
    }
    Some(run)
}

/// Whether process `pid` exists and started at `start` (its /proc start time).
fn process_lives(pid: u32, start: u64) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid as i32, 0) } == 0 || crate::os::errno() == libc::EPERM;
    exists && crate::pool::registry::pid_start(pid).unwrap_or(0) == start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name(b"build-1.2_x"));
        assert!(!valid_name(b""));
        assert!(!valid_name(b".hidden"));
        assert!(!valid_name(b"a/b"));
        assert!(!valid_name(&[b'a'; 64]));
    }

    #[test]
    fn history_keeps_the_last_runs_and_dead_peers_are_ignored() {
        let dir = std::env::temp_dir().join(format!("tm-lend-record-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(dir.clone(), "w").unwrap();
        for i in 0..7u64 {
            let run = Run {
                peak: i,
                ms_to_peak: 2 * i,
                pool_peak: 5 * i,
                pool_ms_to_peak: 1,
                devices: [(0, 0), (0, 0), (7 * i, 9)],
                slabs: vec![SlabPeak {
                    device: 2,
                    key: 65,
                    slabs: i as u32 + 1,
                }],
                unix_secs: 3,
                pid: 4,
            };
            store.append(run).unwrap();
        }
        let peaks: Vec<u64> = store.history().iter().map(|r| r.peak).collect();
        assert_eq!(peaks, [2, 3, 4, 5, 6]);
        assert_eq!(store.history()[4].pool_peak, 30);
        assert_eq!(store.history()[4].devices, [(0, 0), (0, 0), (42, 9)]);
        assert_eq!(store.history()[0].devices, [(0, 0), (0, 0), (14, 9)]);
        assert_eq!(
            store.history()[4].slabs,
            [SlabPeak {
                device: 2,
                key: 65,
                slabs: 7
            }]
        );
        // A line of the older format (no pool part) still reads.
        assert_eq!(
            parse_run("dram 7 1 2 3").map(|r| (r.peak, r.pool_peak)),
            Some((7, 0))
        );
        // Device parts in any order; a name this version does not know is skipped.
        let run = parse_run("dram 7 1 2 3 pool 4 5 pmr 6 7 nvm 8 9 cxl 10 11").unwrap();
        assert_eq!(
            (run.pool_peak, run.devices),
            (4, [(10, 11), (0, 0), (6, 7)])
        );
        let run =
            parse_run("dram 7 1 2 3 cxl 10 11 cxl.slab 3 12 pmr.slab 70 1 nvm.slab 1 1").unwrap();
        let slab = |device, key, slabs| SlabPeak { device, key, slabs };
        assert_eq!(run.slabs, [slab(0, 3, 12), slab(2, 70, 1)]);
        // A record naming a pid that cannot exist is ignored, and removed.
        let dead = dir.join("w.live.4194303");
        let mut bytes = [0u8; 64];
        bytes[..8].copy_from_slice(&LIVE_MAGIC.to_le_bytes());
        bytes[8..16].copy_from_slice(&4194303u64.to_le_bytes());
        bytes[24..32].copy_from_slice(&(1u64 << 30).to_le_bytes());
        std::fs::write(&dead, bytes).unwrap();
        assert!(store.live_peers().is_empty());
        assert!(!dead.exists());
        // Our own record is not a peer; a live child's is.
        let live = store.publish_live(0).unwrap();
        assert!(store.live_peers().is_empty());
        live.remove();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
