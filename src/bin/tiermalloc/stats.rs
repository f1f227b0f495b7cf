//! `tiermalloc stats`: a report from one of three sources, shown as the library's text report
//! (`tiermalloc::report::write_text`) or as JSON:
//! - a pid: the process's live file (`/dev/shm/tiermalloc-live.PID`), mapped read-only with
//!   memmap2 and read under its sequence lock, without stopping the process;
//! - a file: a JSON report the library wrote (`TIERMALLOC_STATS_FILE=....json`);
//! - nothing: the last `tiermalloc run`'s report (`last.json` in the state directory).

use crate::Failure;
use clap::ArgMatches;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use tiermalloc::report::{
    live_file, write_json, write_text, CapacitySource, Event, Snapshot, TierFigures,
};
use tiermalloc::{Kind, TierStats};

/// Where `run` keeps reports: `$XDG_RUNTIME_DIR/tiermalloc`, else `/tmp/tiermalloc-UID`.
pub fn state_dir() -> Result<PathBuf, Failure> {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("tiermalloc"),
        // SAFETY: getuid has no preconditions.
        None => std::env::temp_dir().join(format!("tiermalloc-{}", unsafe { libc::getuid() })),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

pub fn stats(m: &ArgMatches) -> Result<ExitCode, Failure> {
    let snap = match m.get_one::<String>("target") {
        Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
            let pid: u32 = t.parse().map_err(|_| format!("{t}: not a process id"))?;
            read_live(publishing_pid(pid))?
        }
        Some(file) => read_file(Path::new(file))?,
        None => {
            let last = state_dir()?.join("last.json");
            if !last.exists() {
                return Err(format!(
                    "no last run recorded in {} (run a program with `tiermalloc run -- CMD`, or \
                     name a PID or FILE)",
                    last.display()
                ));
            }
            read_file(&last)?
        }
    };
    print!("{}", render(&snap, m.get_flag("json")));
    Ok(ExitCode::SUCCESS)
}

/// The report as text or JSON, ending with a newline.
pub fn render(snap: &Snapshot, json: bool) -> String {
    let mut out = String::new();
    let _ = if json {
        write_json(&mut out, snap)
    } else {
        write_text(&mut out, snap)
    };
    out
}

/// Removes live statistics files whose process is gone (ended with `_exit`, as `sh -c`
/// does, or killed): `run` calls this when its program has exited. Files of running
/// processes and of other users stay.
pub fn sweep_stale_live_files() {
    let prefix = Path::new(live_file::PATH_PREFIX);
    let (Some(dir), Some(stem)) = (prefix.parent(), prefix.file_name()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(stem.to_str().unwrap_or("\0")))
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A JSON report from a file.
pub fn read_file(path: &Path) -> Result<Snapshot, Failure> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|why| format!("{}: {why}", path.display()))
}

/// `pid`, or when it is a `tiermalloc run` (which publishes nothing itself), its child that
/// publishes: `tiermalloc run -- CMD &` gives the shell the command's pid (`$!`), not CMD's.
fn publishing_pid(pid: u32) -> u32 {
    let publishes = |p: u32| Path::new(&format!("{}{p}", live_file::PATH_PREFIX)).exists();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if publishes(pid) || comm.trim_end() != "tiermalloc" {
        return pid;
    }
    // Its children: the processes whose /proc/PID/stat names it as parent (the fourth field,
    // after the `(comm)`).
    let mut children: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let after_comm = &stat[stat.rfind(')')? + 1..];
            let parent: u32 = after_comm.split_whitespace().nth(1)?.parse().ok()?;
            (parent == pid).then_some(p)
        })
        .collect();
    children.sort_unstable();
    children.into_iter().find(|&p| publishes(p)).unwrap_or(pid)
}

/// Process `pid`'s live report.
fn read_live(pid: u32) -> Result<Snapshot, Failure> {
    let path = format!("{}{pid}", live_file::PATH_PREFIX);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "process {pid} publishes no live statistics (no {path}; start it with `tiermalloc \
                 run`, or with TIERMALLOC_STATS_LIVE=1 and the library)"
            ))
        }
        Err(e) => return Err(format!("{path}: {e}")),
    };
    if !Path::new(&format!("/proc/{pid}")).exists() {
        let removed = std::fs::remove_file(&path).is_ok();
        return Err(format!(
            "process {pid} is gone (killed, or ended with _exit); its stale {path} {}",
            if removed { "was removed" } else { "is left" }
        ));
    }
    // SAFETY: a read-only mapping of a file the process rewrites under its sequence lock; we
    // read it only through atomics (header) and copies checked against that lock (text).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| format!("{path}: {e}"))?;
    if map.len() < live_file::MAP_BYTES {
        return Err(format!(
            "{path}: not a tiermalloc live statistics file (too short)"
        ));
    }
    let word = |i: usize| {
        // SAFETY: 8-aligned (page-aligned mapping) words inside the mapping, accessed atomically.
        unsafe { &*(map.as_ptr() as *const AtomicU64).add(i) }
    };
    if word(0).load(Ordering::Relaxed) != live_file::MAGIC {
        return Err(format!(
            "{path}: not a tiermalloc live statistics file (bad magic)"
        ));
    }
    for _ in 0..1000 {
        let seq = word(1).load(Ordering::Acquire);
        if seq & 1 == 0 {
            let len = (word(2).load(Ordering::Relaxed) as usize)
                .min(live_file::MAP_BYTES - live_file::HEADER_BYTES);
            let text = map[live_file::HEADER_BYTES..live_file::HEADER_BYTES + len].to_vec();
            fence(Ordering::Acquire);
            if word(1).load(Ordering::Relaxed) == seq {
                return parse(&text).map_err(|why| format!("{path}: {why}"));
            }
        }
        std::thread::yield_now();
    }
    Err(format!("{path}: the process kept rewriting it; try again"))
}

/// A report as JSON (`tiermalloc::report::write_json`'s format) back into a `Snapshot`.
pub fn parse(text: &[u8]) -> Result<Snapshot, Failure> {
    let v: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| format!("not a tiermalloc JSON report: {e}"))?;
    let num = |o: &serde_json::Value, key: &str| {
        o.get(key)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| format!("not a tiermalloc JSON report: no number `{key}`"))
    };
    let string = |o: &serde_json::Value, key: &str| {
        o.get(key)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("not a tiermalloc JSON report: no string `{key}`"))
    };
    let event = string(&v, "event")?;
    let mut snap = Snapshot::new(
        num(&v, "pid")? as u32,
        &string(&v, "program")?,
        Event::parse(&event).ok_or_else(|| format!("unknown event `{event}`"))?,
        num(&v, "time_ns")?,
    );
    snap.complete = v
        .get("complete")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(true);
    for t in v
        .get("tiers")
        .and_then(serde_json::Value::as_array)
        .ok_or("not a tiermalloc JSON report: no `tiers`")?
    {
        let name = string(t, "kind")?;
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| format!("unknown tier kind `{name}`"))?;
        let source = string(t, "capacity_source")?;
        snap.tiers[kind as usize] = Some(TierFigures {
            kind,
            stats: TierStats {
                capacity: num(t, "capacity")?,
                in_use: num(t, "in_use")?,
                free_bytes: num(t, "free")?,
                largest_free: num(t, "largest_free")?,
                allocations: num(t, "allocations")?,
                frees: num(t, "frees")?,
                failures: num(t, "failures")?,
                spilled_in: num(t, "spilled_in")?,
                spilled_out: num(t, "spilled_out")?,
                // Reports from before pool shares have no lent/borrowed: 0.
                lent: num(t, "lent").unwrap_or(0),
                borrowed: num(t, "borrowed").unwrap_or(0),
                // The profile's reserve (absent from reports of older versions: 0).
                reserved: num(t, "profile_reserved").unwrap_or(0),
                reserve_used: num(t, "reserve_used").unwrap_or(0),
                reserve_miss: num(t, "reserve_miss").unwrap_or(0),
                ..TierStats::default()
            },
            peak: num(t, "peak")?,
            reserved: num(t, "reserved")?,
            capacity_source: CapacitySource::parse(&source)
                .ok_or_else(|| format!("unknown capacity_source `{source}`"))?,
        });
    }
    for l in v
        .get("loans")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
    {
        snap.add_loan(tiermalloc::report::Loan {
            lender: num(l, "lender")? as u32,
            borrower: num(l, "borrower")? as u32,
            bytes: num(l, "bytes")?,
        });
    }
    Ok(snap)
}
