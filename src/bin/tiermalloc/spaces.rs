//! `tiermalloc spaces PATH`: the named spaces of a shared pool (name, size, refs, age, state),
//! and `--collect`, the pool's deletion rule applied from outside. The pool is opened through
//! the library (`tiermalloc::pool::Pool`), as any process that uses it does: the command
//! coordinates with running users through the device, never a host lock; a file that holds
//! no pool is refused before it is opened (opening formats a file of zeroes).

use crate::offline::target;
use crate::Failure;
use clap::ArgMatches;
use std::process::ExitCode;
use std::time::Duration;
use tiermalloc::pool::{Pool, PoolSpec, Space, SpaceState};
use tiermalloc::report::Bytes;

/// `10`, `10ms`, `3s`, `2m`, `1h`, `1d`: a bare number is seconds.
pub fn parse_age(text: &str) -> Option<Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let n: u64 = text[..split].parse().ok()?;
    let ms = match &text[split..] {
        "ms" => n,
        "" | "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// An age in the largest whole unit: `45s`, `12m`, `3h`, `2d`.
fn human_age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn open(path: &str, offset: u64) -> Result<std::sync::Arc<Pool>, Failure> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(format!(
            "{path}: is a directory, not a pool's file or a tier's heap file"
        ));
    }
    let mut start = [0u8; 8];
    if file.read_exact_at(&mut start, offset).is_err() || !tiermalloc::pool::holds_pool(&start) {
        return Err(format!(
            "{path}: holds no tiermalloc pool (magic TMPOOL01) at offset {offset}; left untouched"
        ));
    }
    let mut spec = PoolSpec::parse(b"path=-").map_err(|why| format!("{path}: {why}"))?;
    spec.path = std::ffi::CString::new(path).map_err(|_| format!("{path}: a NUL in the path"))?;
    spec.offset = offset;
    Pool::open(spec).map_err(|e| format!("{path}: {e}"))
}

fn state_name(s: SpaceState) -> &'static str {
    match s {
        SpaceState::Private => "private",
        SpaceState::Shared => "shared",
    }
}

fn render(path: &str, spaces: &[Space], free: u64, collected: Option<usize>, json: bool) -> String {
    let now = now_ns();
    let age_ms = |s: &Space| now.saturating_sub(s.created_ns) / 1_000_000;
    if json {
        let list: Vec<_> = spaces
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name, "id": s.id, "size": s.size, "refs": s.refs,
                    "age_ms": age_ms(s), "created_ns": s.created_ns, "state": state_name(s.state),
                })
            })
            .collect();
        let mut v = serde_json::json!({"path": path, "free": free, "spaces": list});
        if let Some(n) = collected {
            v["collected"] = n.into();
        }
        return v.to_string() + "\n";
    }
    let mut out = String::new();
    if let Some(n) = collected {
        out += &format!("{path}: collected {n} space(s)\n");
    }
    out += &format!("{path}: {} space(s), {} free\n", spaces.len(), Bytes(free));
    if !spaces.is_empty() {
        let width = spaces
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(0)
            .max(4);
        out += &format!(
            "  {:width$}  {:>10}  {:>4}  {:>5}  STATE\n",
            "NAME", "SIZE", "REFS", "AGE"
        );
        for s in spaces {
            out += &format!(
                "  {:width$}  {:>10}  {:>4}  {:>5}  {}\n",
                s.name,
                Bytes(s.size).to_string(),
                s.refs,
                human_age(age_ms(s)),
                state_name(s.state)
            );
        }
    }
    out
}

pub fn spaces(m: &ArgMatches) -> Result<ExitCode, Failure> {
    let (path, offset) = target(m)?;
    let pool = open(&path, offset)?;
    let collected = match m.get_flag("collect") {
        false => None,
        true => {
            // Parsed by the argument parser (a bad value is a usage error, status 2).
            let age = m
                .get_one::<Duration>("min_age")
                .copied()
                .unwrap_or_default();
            Some(
                pool.collect_spaces(age)
                    .map_err(|e| format!("{path}: collecting: {e}"))?,
            )
        }
    };
    let spaces = pool.spaces();
    print!(
        "{}",
        render(
            &path,
            &spaces,
            pool.free_space(),
            collected,
            m.get_flag("json")
        )
    );
    Ok(ExitCode::SUCCESS)
}
