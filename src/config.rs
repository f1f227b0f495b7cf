//! Configuration: the `TIERMALLOC_*` environment variables, parsed without allocating into
//! fixed-size tables, once, on first use.
//!
//! `TIERMALLOC_TIERS` lists tiers in fallback order, `;`-separated, each `KIND[:key=value,...]`
//! with KIND one of `dram cxl cmb pmr` and keys `path size offset create numa limit fit spare`,
//! and the flags `persist fresh format` (see `device::persist`).
//! `TIERMALLOC_PLACE` lists size rules `KIND:min=SIZE[,max=SIZE]`. A bad entry is reported in
//! one line on stderr naming it, and skipped; the rest still applies.

use crate::kind::{Fit, Kind};
use crate::os;
use core::fmt::Write;
use core::sync::atomic::{AtomicU8, Ordering};

/// Most tiers and placement rules a configuration may list.
pub(crate) const MAX_TIERS: usize = 8;
pub(crate) const MAX_RULES: usize = 16;
pub(crate) const MAX_PATH: usize = 256;

/// Copies `path` into `out` with every `%p` replaced by this process's id (so that each
/// process of a program that starts others, all with the same environment, can have its own
/// file), leaving room for the NUL after it. The length, or `None` if it does not fit.
pub(crate) fn expand_path(path: &[u8], out: &mut [u8; MAX_PATH]) -> Option<usize> {
    let mut pid_digits = [0u8; 20];
    // SAFETY: getpid has no preconditions.
    let mut pid = unsafe { libc::getpid() } as u32;
    let mut start = pid_digits.len();
    loop {
        start -= 1;
        pid_digits[start] = b'0' + (pid % 10) as u8;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    let mut len = 0;
    let mut rest = path;
    while let Some(&c) = rest.first() {
        let piece: &[u8] = if rest.starts_with(b"%p") {
            rest = &rest[2..];
            &pid_digits[start..]
        } else {
            rest = &rest[1..];
            core::slice::from_ref(&c)
        };
        if len + piece.len() >= MAX_PATH {
            return None;
        }
        out[len..len + piece.len()].copy_from_slice(piece);
        len += piece.len();
    }
    Some(len)
}

/// One entry of `TIERMALLOC_TIERS`.
#[derive(Clone, Copy)]
pub struct TierSpec {
    pub kind: Kind,
    path: [u8; MAX_PATH],
    path_len: usize,
    pub size: Option<u64>,
    pub offset: u64,
    pub create: bool,
    pub numa: Option<u32>,
    pub limit: Option<u64>,
    pub fit: Fit,
    /// `spare=PATH`: where `tm_evacuate(kind, NULL)` moves the tier (opened only then).
    spare: [u8; MAX_PATH],
    spare_len: usize,
    /// The path named `%p`: a file of this process alone, unlinked once mapped unless `keep`.
    pub per_process: bool,
    /// `keep`: a `%p` file stays after the process exits.
    pub keep: bool,
    /// `persist` (Some(true)) or `fresh` (Some(false)); `None`: the kind's default
    /// (`persists`).
    pub persist: Option<bool>,
    /// `format`: overwrite whatever the region holds (foreign bytes included).
    pub format: bool,
    /// `pool`: the tier's capacity comes from the shared pool (`TIERMALLOC_POOL`) as a share
    /// of `share=` bytes, in extents of `extent=` bytes (`pool::share`), not from a file.
    pub pool: bool,
    pub share: Option<u64>,
    pub extent: Option<u64>,
}

impl TierSpec {
    const fn new(kind: Kind) -> Self {
        TierSpec {
            kind,
            path: [0; MAX_PATH],
            path_len: 0,
            size: None,
            offset: 0,
            create: false,
            numa: None,
            limit: None,
            fit: Fit::Best,
            spare: [0; MAX_PATH],
            spare_len: 0,
            per_process: false,
            keep: false,
            persist: None,
            format: false,
            pool: false,
            share: None,
            extent: None,
        }
    }

    /// Whether the tier recovers the heap its region holds (`persist`, the default on `pmr`)
    /// rather than formatting it (`fresh`, the default on `cmb` and `cxl`, and on a `%p` file
    /// without `keep`: unlinked once mapped, such a file found at open was left by a dead
    /// process of the same pid, or by a version that removed it at exit only, and holds
    /// nothing of this program's).
    pub fn persists(&self) -> bool {
        let scratch = self.per_process && !self.keep;
        self.persist.unwrap_or(self.kind == Kind::Pmr && !scratch)
    }

    /// The spec of an evacuation target: `path` (its `%p` expanded) mapped from offset 0 for
    /// `size` bytes, created or extended if a regular file. `None` if the path is too long.
    pub fn target(kind: Kind, path: &[u8], size: u64) -> Option<TierSpec> {
        let mut spec = TierSpec::new(kind);
        spec.path_len = expand_path(path, &mut spec.path).filter(|&n| n > 0)?;
        spec.size = Some(size);
        spec.create = true;
        Some(spec)
    }

    /// The `spare=` path as a C string.
    pub fn spare_cstr(&self) -> Option<&core::ffi::CStr> {
        let with_nul = &self.spare[..self.spare_len + 1];
        (self.spare_len > 0).then(|| core::ffi::CStr::from_bytes_with_nul(with_nul).ok())?
    }

    pub fn path(&self) -> Option<&[u8]> {
        (self.path_len > 0).then(|| &self.path[..self.path_len])
    }

    /// The path as a C string (the buffer keeps a NUL after it: `path_len < MAX_PATH`).
    pub fn path_cstr(&self) -> Option<&core::ffi::CStr> {
        let with_nul = &self.path[..self.path_len + 1];
        (self.path_len > 0).then(|| core::ffi::CStr::from_bytes_with_nul(with_nul).ok())?
    }
}

/// One entry of `TIERMALLOC_PLACE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaceRule {
    pub kind: Kind,
    pub min: u64,
    pub max: u64,
}

/// The whole configuration.
pub struct Config {
    pub tiers: [TierSpec; MAX_TIERS],
    pub tier_count: usize,
    pub rules: [PlaceRule; MAX_RULES],
    pub rule_count: usize,
    pub show_stats: bool,
    pub verbose: bool,
    /// `TIERMALLOC_ON_ERROR=ignore`: a bad free on a device tier is reported, counted and
    /// ignored instead of aborting.
    pub ignore_bad_free: bool,
    /// `TIERMALLOC_SECURE=1`: the hardening that costs more (see `fast::guard::secure`).
    pub secure: bool,
}

impl Config {
    const fn new() -> Self {
        Config {
            tiers: [TierSpec::new(Kind::Dram); MAX_TIERS],
            tier_count: 0,
            rules: [PlaceRule {
                kind: Kind::Dram,
                min: 0,
                max: u64::MAX,
            }; MAX_RULES],
            rule_count: 0,
            show_stats: false,
            verbose: false,
            ignore_bad_free: false,
            secure: false,
        }
    }

    pub fn tiers(&self) -> &[TierSpec] {
        &self.tiers[..self.tier_count]
    }

    pub fn rules(&self) -> &[PlaceRule] {
        &self.rules[..self.rule_count]
    }
}

/// Where a problem is reported: one line each on stderr, or (tests) counted.
pub trait Report {
    fn problem(&mut self, what: &str, entry: &[u8], why: &str);
}

/// Reports on stderr: `tiermalloc: TIERMALLOC_TIERS: 'pmr:size=x': bad size; entry skipped`.
pub struct Stderr;

impl Report for Stderr {
    fn problem(&mut self, what: &str, entry: &[u8], why: &str) {
        let mut line = os::LineBuf::new();
        let entry = core::str::from_utf8(entry).unwrap_or("<not UTF-8>");
        let _ = writeln!(line, "tiermalloc: {what}: '{entry}': {why}; entry skipped");
        line.flush();
    }
}

/// Parses a size: digits, an optional fraction, an optional unit, no spaces. Units are binary
/// multiples whatever their spelling, as memory sizes are: `K`, `KB`, `KiB` = 1024 (any case),
/// likewise `M` 2^20, `G` 2^30, `T` 2^40, and `B` = 1. A fraction is cut to whole bytes:
/// `1.5G` = 1610612736, `0.5K` = 512. `None` for anything else and for values above 2^64 - 1.
pub fn parse_size(s: &[u8]) -> Option<u64> {
    let digits_end = s
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(s.len());
    let (whole, rest) = s.split_at(digits_end);
    let (fraction, unit) = match rest.strip_prefix(b".") {
        Some(r) => {
            let end = r
                .iter()
                .position(|c| !c.is_ascii_digit())
                .unwrap_or(r.len());
            if end == 0 {
                return None;
            }
            r.split_at(end)
        }
        None => (&b""[..], rest),
    };
    if whole.is_empty() {
        return None;
    }
    let shift = unit_shift(unit)?;
    let mut value: u64 = 0;
    for &d in whole {
        value = value.checked_mul(10)?.checked_add((d - b'0') as u64)?;
    }
    let mut bytes = value
        .checked_mul(1 << shift)
        .filter(|v| v >> shift == value)?;
    // The fraction's bytes: 0.f * 2^shift, cut to whole bytes (at most 19 digits count).
    let mut numerator: u128 = 0;
    let mut denominator: u128 = 1;
    for &d in fraction.iter().take(19) {
        numerator = numerator * 10 + (d - b'0') as u128;
        denominator *= 10;
    }
    bytes = bytes.checked_add(((numerator << shift) / denominator) as u64)?;
    Some(bytes)
}

/// The power of two a size unit stands for (`""` and `B`: 0, `K`/`KB`/`KiB`: 10, ...).
fn unit_shift(unit: &[u8]) -> Option<u32> {
    let (letter, suffix) = match unit.split_first() {
        None => return Some(0),
        Some((l, s)) => (l.to_ascii_uppercase(), s),
    };
    if letter == b'B' && suffix.is_empty() {
        return Some(0);
    }
    let shift = match letter {
        b'K' => 10,
        b'M' => 20,
        b'G' => 30,
        b'T' => 40,
        _ => return None,
    };
    let ok = suffix.is_empty()
        || suffix.eq_ignore_ascii_case(b"B")
        || suffix.eq_ignore_ascii_case(b"iB");
    ok.then_some(shift)
}

fn parse_tier(entry: &[u8]) -> Result<TierSpec, &'static str> {
    let (kind, rest) = match entry.iter().position(|&c| c == b':') {
        Some(i) => (&entry[..i], Some(&entry[i + 1..])),
        None => (entry, None),
    };
    let kind = Kind::parse(kind).ok_or("unknown kind (expected dram, cxl, cmb or pmr)")?;
    let mut spec = TierSpec::new(kind);
    let mut seen: u32 = 0;
    for option in rest
        .unwrap_or(b"")
        .split(|&c| c == b',')
        .filter(|o| !o.is_empty())
    {
        let (key, value) = match option.iter().position(|&c| c == b'=') {
            Some(i) => (&option[..i], Some(&option[i + 1..])),
            None => (option, None),
        };
        let bit = KEYS.iter().position(|k| *k == key).map_or(0, |i| 1u32 << i);
        if seen & bit != 0 {
            return Err("a key is given twice (which one should apply?)");
        }
        seen |= bit;
        match (key, value) {
            (b"create", None) => spec.create = true,
            (b"keep", None) => spec.keep = true,
            (b"persist", None) => spec.persist = Some(true),
            (b"fresh", None) => spec.persist = Some(false),
            (b"format", None) => spec.format = true,
            (b"pool", None) => spec.pool = true,
            (b"share", Some(v)) => spec.share = Some(parse_size(v).ok_or("bad share= value")?),
            (b"extent", Some(v)) => spec.extent = Some(parse_size(v).ok_or("bad extent= value")?),
            (b"path", Some(v)) if !v.is_empty() => {
                spec.per_process = v.windows(2).any(|w| w == b"%p");
                spec.path_len = expand_path(v, &mut spec.path)
                    .ok_or("path= needs a file name shorter than 256 bytes")?;
            }
            (b"path", _) => return Err("path= needs a file name shorter than 256 bytes"),
            (b"spare", Some(v)) if !v.is_empty() => {
                spec.spare_len = expand_path(v, &mut spec.spare)
                    .ok_or("spare= needs a file name shorter than 256 bytes")?;
            }
            (b"spare", _) => return Err("spare= needs a file name shorter than 256 bytes"),
            (b"size", Some(v)) => spec.size = Some(parse_size(v).ok_or("bad size= value")?),
            (b"offset", Some(v)) => spec.offset = parse_size(v).ok_or("bad offset= value")?,
            (b"limit", Some(v)) => spec.limit = Some(parse_size(v).ok_or("bad limit= value")?),
            (b"numa", Some(v)) => {
                let n = parse_size(v)
                    .filter(|n| *n < 1024)
                    .ok_or("bad numa= node")?;
                spec.numa = Some(n as u32);
            }
            (b"fit", Some(b"best")) => spec.fit = Fit::Best,
            (b"fit", Some(b"worst")) => spec.fit = Fit::Worst,
            (b"fit", _) => return Err("fit= must be best or worst"),
            _ => return Err(
                "unknown key (expected path, size, offset, create, keep, numa, limit, fit, spare, \
                 persist, fresh, format, pool, share, extent)",
            ),
        }
    }
    check_tier(&spec)?;
    Ok(spec)
}

/// The keys of a tier entry, in the order of `parse_tier`'s bit set of keys seen.
const KEYS: [&[u8]; 12] = [
    b"path", b"size", b"offset", b"create", b"numa", b"limit", b"fit", b"keep", b"spare", b"pool",
    b"share", b"extent",
];

/// The most bytes a tier can span: the user address space.
const MAX_TIER_BYTES: u64 = 1 << 47;

/// Combinations of keys that no tier can honour.
fn check_tier(spec: &TierSpec) -> Result<(), &'static str> {
    if spec.pool != spec.share.is_some() {
        return Err(
            "pool and share=SIZE go together (a tier from the shared pool takes a share of it)",
        );
    }
    if spec.pool && (spec.kind == Kind::Dram || spec.path_len > 0 || spec.numa.is_some()) {
        return Err("pool is for a device kind (cxl, cmb, pmr), without path= or numa=");
    }
    if spec.extent.is_some() && !spec.pool {
        return Err("extent= is a key of pool tiers");
    }
    if spec
        .extent
        .is_some_and(|e| !e.is_power_of_two() || !(64 << 10..=1 << 30).contains(&e))
    {
        return Err("extent= must be a power of two from 64K to 1G");
    }
    if spec.numa.is_some() && spec.path_len > 0 {
        return Err(
            "numa= and path= exclude each other (numa= maps memory of that node, path= a file)",
        );
    }
    match spec.size {
        Some(size) if size < 4096 => Err("size= must be at least 4K (one page)"),
        Some(size) if size > MAX_TIER_BYTES => {
            Err("size= is larger than the 128 TiB user address space")
        }
        Some(size)
            if spec
                .offset
                .checked_add(size)
                .map_or(true, |end| end > u64::MAX >> 1) =>
        {
            Err("offset= + size= overflows")
        }
        _ => Ok(()),
    }
}

/// Whether two tiers use overlapping byte ranges of the same file (`None`: to its end).
fn overlaps(a: &TierSpec, b: &TierSpec) -> bool {
    if a.path_len == 0 || a.path() != b.path() {
        return false;
    }
    let end = |t: &TierSpec| t.size.map_or(u64::MAX, |s| t.offset.saturating_add(s));
    a.offset < end(b) && b.offset < end(a)
}

fn parse_rule(entry: &[u8]) -> Result<PlaceRule, &'static str> {
    let i = entry
        .iter()
        .position(|&c| c == b':')
        .ok_or("expected KIND:min=SIZE[,max=SIZE]")?;
    let kind = Kind::parse(&entry[..i]).ok_or("unknown kind (expected dram, cxl, cmb or pmr)")?;
    let mut rule = PlaceRule {
        kind,
        min: 0,
        max: u64::MAX,
    };
    let mut saw_min = false;
    for option in entry[i + 1..]
        .split(|&c| c == b',')
        .filter(|o| !o.is_empty())
    {
        match option
            .iter()
            .position(|&c| c == b'=')
            .map(|j| option.split_at(j))
        {
            Some((b"min", v)) => {
                rule.min = parse_size(&v[1..]).ok_or("bad min= size")?;
                saw_min = true;
            }
            Some((b"max", v)) => rule.max = parse_size(&v[1..]).ok_or("bad max= size")?,
            _ => return Err("unknown key (expected min, max)"),
        }
    }
    if !saw_min {
        return Err("a rule needs min=SIZE");
    }
    if rule.max < rule.min {
        return Err("max is below min");
    }
    Ok(rule)
}

fn entries(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&c| c == b';')
        .map(|e| e.trim_ascii())
        .filter(|e| !e.is_empty())
}

/// A boolean variable: `1 yes true on` or `0 no false off` (any case); unset or empty is off.
/// Anything else is reported in one line naming the variable, and counts as off.
pub fn parse_bool(name: &str, value: Option<&[u8]>, report: &mut dyn Report) -> bool {
    let Some(v) = value.filter(|v| !v.is_empty()) else {
        return false;
    };
    let is = |words: &[&str]| words.iter().any(|w| v.eq_ignore_ascii_case(w.as_bytes()));
    if is(&["1", "yes", "true", "on"]) {
        true
    } else if is(&["0", "no", "false", "off"]) {
        false
    } else {
        report.problem(
            name,
            v,
            "expected 1/yes/true/on or 0/no/false/off; taken as off",
        );
        false
    }
}

/// Builds a configuration from the variables' values, reporting every skipped entry (the tests'
/// entry point; `get` reads the environment with `parse_into`).
#[cfg(test)]
pub fn parse(
    tiers: Option<&[u8]>,
    place: Option<&[u8]>,
    show_stats: Option<&[u8]>,
    verbose: Option<&[u8]>,
    report: &mut dyn Report,
) -> Config {
    let mut config = Config::new();
    parse_into(&mut config, tiers, place, show_stats, verbose, report);
    config
}

/// `parse`, into a configuration that is `Config::new()`: `get` fills the static in place, so
/// reading the environment at start-up does not build a copy on the stack (a 13 KiB frame,
/// whose pages stayed resident in every process; BENCHMARKS.md, "Session 9, branch rss").
fn parse_into(
    config: &mut Config,
    tiers: Option<&[u8]>,
    place: Option<&[u8]>,
    show_stats: Option<&[u8]>,
    verbose: Option<&[u8]>,
    report: &mut dyn Report,
) {
    if let Some(tiers) = tiers.filter(|t| !t.is_empty()) {
        parse_tiers_into(config, tiers, report);
    }
    if let Some(place) = place.filter(|p| !p.is_empty()) {
        parse_rules_into(config, place, report);
    }
    config.show_stats = parse_bool("TIERMALLOC_SHOW_STATS", show_stats, report);
    config.verbose = parse_bool("TIERMALLOC_VERBOSE", verbose, report);
}

/// `TIERMALLOC_TIERS` into `config`. Out of line and cold, as `parse_rules_into`: a process
/// without tiers or rules configured runs only `parse_into`'s checks, the code every process
/// runs (link/hot_text.ld) leaves them out.
#[cold]
#[inline(never)]
fn parse_tiers_into(config: &mut Config, tiers: &[u8], report: &mut dyn Report) {
    for entry in entries(tiers) {
        match parse_tier(entry) {
            Ok(_) if config.tier_count == MAX_TIERS => {
                report.problem("TIERMALLOC_TIERS", entry, "more than 8 tiers")
            }
            Ok(spec) if config.tiers().iter().any(|t| t.kind == spec.kind) => {
                report.problem("TIERMALLOC_TIERS", entry, "this kind is listed already")
            }
            Ok(spec) if config.tiers().iter().any(|t| overlaps(t, &spec)) => report.problem(
                "TIERMALLOC_TIERS",
                entry,
                "its offset= range overlaps another tier's in the same file",
            ),
            Ok(spec) => {
                config.tiers[config.tier_count] = spec;
                config.tier_count += 1;
            }
            Err(why) => report.problem("TIERMALLOC_TIERS", entry, why),
        }
    }
}

/// `TIERMALLOC_PLACE` into `config`, after its tiers (see `parse_tiers_into`).
#[cold]
#[inline(never)]
fn parse_rules_into(config: &mut Config, place: &[u8], report: &mut dyn Report) {
    for entry in entries(place) {
        match parse_rule(entry) {
            Ok(_) if config.rule_count == MAX_RULES => {
                report.problem("TIERMALLOC_PLACE", entry, "more than 16 rules")
            }
            Ok(rule) => {
                config.rules[config.rule_count] = rule;
                config.rule_count += 1;
            }
            Err(why) => report.problem("TIERMALLOC_PLACE", entry, why),
        }
    }
    for rule in config.rules() {
        if rule.kind != Kind::Dram && !config.tiers().iter().any(|t| t.kind == rule.kind) {
            report.problem(
                "TIERMALLOC_PLACE",
                rule.kind.name().as_bytes(),
                "a rule for a tier TIERMALLOC_TIERS does not list; the rule never applies",
            );
        }
    }
}

const UNREAD: u8 = 0;
const READING: u8 = 1;
const READ: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNREAD);
static mut CONFIG: Config = Config::new();

/// Test-only: the first tier `text` (a `TIERMALLOC_TIERS` value) describes, problems ignored.
#[cfg(test)]
pub(crate) fn tier_spec_for_test(text: &str) -> TierSpec {
    struct Ignore;
    impl Report for Ignore {
        fn problem(&mut self, _: &str, _: &[u8], _: &str) {}
    }
    parse(Some(text.as_bytes()), None, None, None, &mut Ignore).tiers()[0]
}

/// What `get` answers before the environment is read.
static DEFAULTS: Config = Config::new();

/// The configuration, reading the environment on the first call that finds it ready. Before
/// that (a `malloc` before libc set up `environ`) and while another thread reads it, the
/// defaults.
pub fn get() -> &'static Config {
    match STATE.load(Ordering::Acquire) {
        // SAFETY: CONFIG is written once, before STATE becomes READ (Release), never again.
        READ => unsafe { &*core::ptr::addr_of!(CONFIG) },
        UNREAD if os::environ_ready() => read_environment(),
        _ => &DEFAULTS,
    }
}

/// The first reading of the environment, out of line: `get`'s callers pay no frame for it.
#[cold]
#[inline(never)]
fn read_environment() -> &'static Config {
    if STATE
        .compare_exchange(UNREAD, READING, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return &DEFAULTS;
    }
    // SAFETY: we won the READING state: no one else writes CONFIG, no one reads it before
    // READ is published below; CONFIG still holds `Config::new()`.
    let config = unsafe { &mut *core::ptr::addr_of_mut!(CONFIG) };
    parse_into(
        config,
        os::getenv(b"TIERMALLOC_TIERS"),
        os::getenv(b"TIERMALLOC_PLACE"),
        os::getenv(b"TIERMALLOC_SHOW_STATS"),
        os::getenv(b"TIERMALLOC_VERBOSE"),
        &mut Stderr,
    );
    config.secure = parse_bool(
        "TIERMALLOC_SECURE",
        os::getenv(b"TIERMALLOC_SECURE"),
        &mut Stderr,
    );
    match os::getenv(b"TIERMALLOC_ON_ERROR") {
        None | Some(b"abort") => {}
        Some(b"ignore") => config.ignore_bad_free = true,
        Some(other) => Stderr.problem("TIERMALLOC_ON_ERROR", other, "expected abort or ignore"),
    }
    STATE.store(READ, Ordering::Release);
    // SAFETY: as in `get`'s READ arm.
    unsafe { &*core::ptr::addr_of!(CONFIG) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_p_in_a_path_is_the_process_id() {
        let mut out = [0u8; MAX_PATH];
        let len = expand_path(b"/dev/shm/t-%p.%p", &mut out).unwrap();
        let pid = std::process::id();
        assert_eq!(&out[..len], format!("/dev/shm/t-{pid}.{pid}").as_bytes());
        assert_eq!(expand_path(b"/plain/%q", &mut out), Some(9));
        assert_eq!(
            expand_path(&[b'a'; MAX_PATH - 1], &mut out),
            Some(MAX_PATH - 1)
        );
        assert_eq!(expand_path(&[b'a'; MAX_PATH], &mut out), None);
    }

    #[derive(Default)]
    struct Collect(Vec<String>);
    impl Report for Collect {
        fn problem(&mut self, what: &str, entry: &[u8], why: &str) {
            self.0
                .push(format!("{what}: {}: {why}", String::from_utf8_lossy(entry)));
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size(b"4096"), Some(4096));
        assert_eq!(parse_size(b"4K"), Some(4096));
        assert_eq!(parse_size(b"16m"), Some(16 << 20));
        assert_eq!(parse_size(b"2G"), Some(2 << 30));
        assert_eq!(parse_size(b""), None);
        assert_eq!(parse_size(b"G"), None);
        assert_eq!(parse_size(b"1x"), None);
        assert_eq!(parse_size(b"99999999999999999999"), None);
        assert_eq!(parse_size(b"99999999999T"), None);
        // Every spelling of a unit is binary; fractions are cut to whole bytes.
        for four_k in [
            "4K", "4k", "4KB", "4kb", "4KiB", "4kib", "4096B", "4096", "4.0K",
        ] {
            assert_eq!(parse_size(four_k.as_bytes()), Some(4096), "{four_k}");
        }
        assert_eq!(parse_size(b"1.5G"), Some(3 << 29));
        assert_eq!(parse_size(b"0.5K"), Some(512));
        assert_eq!(parse_size(b"0.1K"), Some(102));
        assert_eq!(parse_size(b"2TiB"), Some(2 << 40));
        assert_eq!(parse_size(b"16777216T"), None);
        for bad in [
            "1.", ".5K", "1.5.5K", "4 K", "4KK", "4Kb2", "4iB", "-1", "1e3", "4Bi",
        ] {
            assert_eq!(parse_size(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn tiers_and_rules_parse_and_bad_entries_are_reported_and_skipped() {
        let mut r = Collect::default();
        let c = parse(
            Some(
                b"dram:limit=1G; \
                  pmr:path=/dev/shm/p,size=64M,create,fit=worst;cxl:numa=1;ssd;cmb:fit=odd;dram",
            ),
            Some(b"pmr:min=4K,max=1M;cxl:max=1M;nvm:min=1"),
            Some(b"1"),
            None,
            &mut r,
        );
        assert_eq!(c.tier_count, 3);
        assert_eq!(c.tiers()[0].kind, Kind::Dram);
        assert_eq!(c.tiers()[0].limit, Some(1 << 30));
        let pmr = &c.tiers()[1];
        assert_eq!(
            (pmr.kind, pmr.path(), pmr.size, pmr.create, pmr.fit),
            (
                Kind::Pmr,
                Some(&b"/dev/shm/p"[..]),
                Some(64 << 20),
                true,
                Fit::Worst
            )
        );
        assert_eq!(c.tiers()[2].numa, Some(1));
        assert_eq!(pmr.spare_cstr(), None);
        assert_eq!(
            c.rules(),
            &[PlaceRule {
                kind: Kind::Pmr,
                min: 4096,
                max: 1 << 20
            }]
        );
        assert!(c.show_stats && !c.verbose);
        assert_eq!(r.0.len(), 5, "{:?}", r.0);
        assert!(r.0[0].contains("ssd") && r.0[0].contains("unknown kind"));
        assert!(r.0[1].contains("fit="));
        assert!(r.0[2].contains("listed already"));
        assert!(r.0[3].contains("needs min"));
        assert!(r.0[4].contains("nvm"));
    }

    #[test]
    fn booleans_take_the_usual_words_and_refuse_the_rest() {
        let mut r = Collect::default();
        for on in ["1", "yes", "TRUE", "On"] {
            assert!(parse_bool("V", Some(on.as_bytes()), &mut r), "{on}");
        }
        for off in ["0", "no", "False", "OFF", ""] {
            assert!(!parse_bool("V", Some(off.as_bytes()), &mut r), "{off}");
        }
        assert!(!parse_bool("V", None, &mut r));
        assert!(r.0.is_empty(), "{:?}", r.0);
        assert!(!parse_bool("TIERMALLOC_SHOW_STATS", Some(b"maybe"), &mut r));
        assert_eq!(r.0.len(), 1);
        assert!(r.0[0].contains("TIERMALLOC_SHOW_STATS") && r.0[0].contains("maybe"));
        let c = parse(None, None, Some(b"no"), Some(b"2"), &mut r);
        assert!(!c.show_stats && !c.verbose);
        assert_eq!(r.0.len(), 2, "{:?}", r.0);
    }

    #[test]
    fn contradictions_and_repeats_are_reported_each_in_one_line() {
        let mut r = Collect::default();
        let c = parse(
            Some(
                b"cxl:path=/a,size=4M,size=8M;cmb:numa=0,path=/b,size=4M;pmr:path=/c,size=0,create;\
                  pmr:path=/c,size=1,create;pmr:path=/c,size=18446744073709551615;\
                  cmb:path=/d,size=8M;pmr:path=/d,offset=4M,size=8M;pmr:path=/d,offset=8M,size=4M",
            ),
            Some(b"cxl:min=1"),
            None,
            None,
            &mut r,
        );
        let lines = r.0.join("\n");
        // Each line names what it concerns and what is wrong with it, in the order given.
        let expected = [
            ("size=4M,size=8M", "twice"),
            ("numa=", "exclude"),
            ("size=0", "at least 4K"),
            ("size=1,", "at least 4K"),
            ("18446744073709551615", "address space"),
            ("offset=4M", "overlaps"),
            ("cxl", "does not list"),
        ];
        for (line, (what, why)) in expected.iter().enumerate() {
            assert!(
                r.0[line].contains(what) && r.0[line].contains(why),
                "line {line}: {lines}"
            );
        }
        assert_eq!(r.0.len(), 7, "{lines}");
        // The one left of the overlapping pair and the one after it, which does not overlap.
        assert_eq!(c.tier_count, 2);
        assert_eq!(
            (c.tiers()[1].kind, c.tiers()[1].offset),
            (Kind::Pmr, 8 << 20)
        );
    }

    #[test]
    fn spare_names_the_evacuation_target() {
        let mut r = Collect::default();
        let c = parse(
            Some(b"cxl:path=/dev/shm/a,size=4M,create,spare=/dev/shm/b-%p;pmr:spare="),
            None,
            None,
            None,
            &mut r,
        );
        let spare = format!("/dev/shm/b-{}", std::process::id());
        assert_eq!(
            c.tiers()[0].spare_cstr().unwrap().to_bytes(),
            spare.as_bytes()
        );
        assert_eq!(c.tier_count, 1);
        assert!(r.0[0].contains("spare="), "{:?}", r.0);
        let target = TierSpec::target(Kind::Cxl, b"/dev/shm/t", 4096).unwrap();
        assert_eq!(
            (target.path(), target.size, target.create, target.offset),
            (Some(&b"/dev/shm/t"[..]), Some(4096), true, 0)
        );
        assert!(TierSpec::target(Kind::Cxl, b"", 4096).is_none());
    }

    #[test]
    fn empty_configuration_is_dram_alone() {
        let mut r = Collect::default();
        let c = parse(None, None, Some(b"0"), Some(b""), &mut r);
        assert_eq!(c.tier_count, 0);
        assert!(!c.show_stats && !c.verbose);
        assert!(r.0.is_empty());
    }
}
