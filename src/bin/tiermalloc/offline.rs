//! `tiermalloc inspect PATH` and `tiermalloc check PATH`: a persistent tier's file, read
//! offline. The file is mapped read-only with memmap2 (never written, whatever it holds) and
//! handed to the library's checker (`tiermalloc::check_image`), which scans the headers once.
//! `inspect` prints what the heap holds; `check` prints the same and fails, with the first
//! problem in one line, when the heap is inconsistent; `check --repair` has the library mend
//! the file (`tiermalloc::repair_file`: the one command here that writes) and says each change
//! in one line.

use crate::Failure;
use clap::ArgMatches;
use std::process::ExitCode;
use tiermalloc::report::Bytes;
use tiermalloc::HeapReport;

/// The PATH and --offset arguments.
pub fn target(m: &ArgMatches) -> Result<(String, u64), Failure> {
    let path = m.get_one::<String>("path").ok_or("no PATH given")?;
    // Parsed by the argument parser (a bad value is a usage error, status 2).
    let offset = m.get_one::<u64>("offset").copied().unwrap_or(0);
    Ok((path.clone(), offset))
}

/// Maps the heap's region of `path` from `offset` read-only: the length its superblock names
/// when the file holds that much (a file may hold more behind it), else whole pages to the
/// file's end (the checker then says what is wrong).
pub fn map_region(path: &str, offset: u64) -> Result<memmap2::Mmap, Failure> {
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("{path}: {e}"))?;
    if meta.is_dir() {
        // Opened read-only as any file is; only the mapping would fail, "No such device".
        return Err(format!(
            "{path}: is a directory, not a tier's heap file or a pool's file"
        ));
    }
    let len = meta.len();
    let pages = len
        .checked_sub(offset)
        .filter(|l| *l >= 4096)
        .ok_or_else(|| {
            format!("{path}: {len} bytes, no region of a page or more from offset {offset}")
        })?
        & !4095;
    let map = |len: u64| {
        // SAFETY: a read-only private mapping; a process changing the file meanwhile can only
        // make the checker see inconsistent headers, which it reports.
        unsafe {
            memmap2::MmapOptions::new()
                .offset(offset)
                .len(len as usize)
                .map(&file)
        }
        .map_err(|e| format!("{path}: cannot map it read-only: {e}"))
    };
    let first = map(4096)?;
    match tiermalloc::heap_region_len(&first) {
        Some(named) if named <= pages && named >= 4096 => map(named),
        _ => map(pages),
    }
}

/// Regions from this size on get a progress bar (on a terminal).
const PROGRESS_FROM: usize = 256 << 20;

/// A progress bar over `len` bytes on stderr, when stderr is a terminal and the region large;
/// else none.
fn progress_bar(path: &str, len: usize) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() || len < PROGRESS_FROM {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} ({eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("scanning {path}"));
    bar.tick();
    Some(bar)
}

/// Checks the heap in `map` (the region of `path`), with a progress bar on a terminal.
fn examine(path: &str, map: &[u8]) -> Result<HeapReport, Failure> {
    let bar = progress_bar(path, map.len());
    let checked = tiermalloc::check_image_with_progress(map, &mut |done| {
        if let Some(bar) = &bar {
            bar.set_position(done);
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    checked.map_err(|why| {
        let short = tiermalloc::heap_region_len(&map).is_some_and(|n| n > map.len() as u64);
        let hint = if short {
            " (cut short? `tiermalloc check --repair` extends it)".to_string()
        } else if map.len() >= 8 && tiermalloc::pool::holds_pool(&map[..8]) {
            format!(" (it holds a shared pool: `tiermalloc spaces {path}` lists its spaces)")
        } else {
            String::new()
        };
        format!("{path}: {why}{hint}")
    })
}

fn render(path: &str, r: &HeapReport, json: bool) -> String {
    if json {
        let roots: Vec<_> = r
            .roots
            .iter()
            .map(|(name, off)| serde_json::json!({"name": name, "offset": off}))
            .collect();
        return serde_json::json!({
            "path": path,
            "region_len": r.region_len,
            "heap_id": r.heap_id,
            "closed_cleanly": r.closed_cleanly,
            "blocks": r.blocks,
            "slots": r.slots,
            "slabs": r.slabs,
            "in_use": r.in_use,
            "free": r.free_bytes,
            "largest_free": r.largest_free,
            "bytes_read": r.bytes_read,
            "roots": roots,
            "problems": r.problems,
        })
        .to_string()
            + "\n";
    }
    let mut out = format!(
        "{path}: tiermalloc heap {:016x}, region {}, {}\n  {} blocks, {} slots in {} slabs, {} in \
         use; {} free, largest free extent {}\n  {} roots{}\n",
        r.heap_id,
        Bytes(r.region_len),
        if r.closed_cleanly {
            "closed cleanly"
        } else {
            "not closed by its last run (killed, or open now); recovery scans it either way"
        },
        r.blocks,
        r.slots,
        r.slabs,
        Bytes(r.in_use),
        Bytes(r.free_bytes),
        Bytes(r.largest_free),
        r.roots.len(),
        if r.roots.is_empty() { "" } else { ":" },
    );
    for (name, offset) in &r.roots {
        out += &format!("    {name} -> offset {offset}\n");
    }
    for p in &r.problems {
        out += &format!("  problem: {p}\n");
    }
    out
}

pub fn inspect(m: &ArgMatches) -> Result<ExitCode, Failure> {
    let (path, offset) = target(m)?;
    let map = map_region(&path, offset)?;
    let report = examine(&path, &map)?;
    print!("{}", render(&path, &report, m.get_flag("json")));
    if let Some(svg) = m.get_one::<String>("map") {
        let extents = tiermalloc::extent_map(&map).map_err(|why| format!("{path}: {why}"))?;
        std::fs::write(svg, crate::svg_map::render(&path, &report, &extents))
            .map_err(|e| format!("{svg}: {e}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn check(m: &ArgMatches) -> Result<ExitCode, Failure> {
    if m.get_flag("repair") {
        return repair(m);
    }
    let (path, offset) = target(m)?;
    let report = examine(&path, &map_region(&path, offset)?)?;
    print!("{}", render(&path, &report, m.get_flag("json")));
    match report.problems.first() {
        None => Ok(ExitCode::SUCCESS),
        Some(first) => Err(format!(
            "{path}: {} problem(s), the first: {first} (`tiermalloc check --repair` mends what it \
             can)",
            report.problems.len()
        )),
    }
}

/// `check --repair`: the library's repair (`tiermalloc::repair_file`), each change one line
/// ("repaired: ..."), then the repaired heap as `check` shows it.
fn repair(m: &ArgMatches) -> Result<ExitCode, Failure> {
    let (path, offset) = target(m)?;
    let done = tiermalloc::repair_file(std::path::Path::new(&path), offset)?;
    let json = m.get_flag("json");
    if json {
        let mut v: serde_json::Value =
            serde_json::from_str(&render(&path, &done.report, true)).map_err(|e| e.to_string())?;
        v["repaired"] = serde_json::json!(done.changes);
        println!("{v}");
    } else {
        for change in &done.changes {
            println!("{path}: repaired: {change}");
        }
        if done.changes.is_empty() {
            println!("{path}: nothing to repair");
        }
        print!("{}", render(&path, &done.report, false));
    }
    Ok(ExitCode::SUCCESS)
}
