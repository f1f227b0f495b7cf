//! `tiermalloc inspect PATH` and `tiermalloc check PATH`: a persistent tier's file, read
//! offline. The file is mapped read-only with memmap2 (never written, whatever it holds) and
//! handed to the library's checker (`tiermalloc::check_image`), which scans the headers once.
//! `inspect` prints what the heap holds; `check` prints the same and fails, with the first
//! problem in one line, when the heap is inconsistent. (`--repair`, spaces, nodes and the
//! `--map` picture are not here yet.)

use crate::Failure;
use clap::ArgMatches;
use std::process::ExitCode;
use tiermalloc::report::Bytes;
use tiermalloc::HeapReport;

/// Maps `path` from `offset` read-only and checks the heap in it.
fn examine(m: &ArgMatches) -> Result<(String, HeapReport), Failure> {
    let path = m.get_one::<String>("path").ok_or("no PATH given")?;
    let offset: u64 = match m.get_one::<String>("offset") {
        Some(o) => o
            .parse()
            .map_err(|_| format!("--offset {o}: not a number of bytes"))?,
        None => 0,
    };
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let len = file.metadata().map_err(|e| format!("{path}: {e}"))?.len();
    // The region is whole pages from `offset`, as the library maps it.
    let region = len
        .checked_sub(offset)
        .filter(|l| *l >= 4096)
        .ok_or_else(|| {
            format!("{path}: {len} bytes, no region of a page or more from offset {offset}")
        })?
        & !4095;
    // SAFETY: a read-only private mapping; a process changing the file meanwhile can only make
    // the checker see inconsistent headers, which it reports.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(region as usize)
            .map(&file)
    }
    .map_err(|e| format!("{path}: cannot map it read-only: {e}"))?;
    let report = tiermalloc::check_image(&map).map_err(|why| format!("{path}: {why}"))?;
    Ok((path.clone(), report))
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
        "{path}: tiermalloc heap {:016x}, region {}\n  {} blocks, {} slots in {} slabs, {} in use; {} free, largest free extent {}\n  {} roots{}\n",
        r.heap_id,
        Bytes(r.region_len),
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
    let (path, report) = examine(m)?;
    print!("{}", render(&path, &report, m.get_flag("json")));
    Ok(ExitCode::SUCCESS)
}

pub fn check(m: &ArgMatches) -> Result<ExitCode, Failure> {
    let (path, report) = examine(m)?;
    print!("{}", render(&path, &report, m.get_flag("json")));
    match report.problems.first() {
        None => Ok(ExitCode::SUCCESS),
        Some(first) => Err(format!(
            "{path}: {} problem(s), the first: {first}",
            report.problems.len()
        )),
    }
}
