//! Placement: which tier serves a request, and the per-tier view the front ends need (kind of a
//! pointer, statistics, fit, bad frees).
//!
//! The tiers of `TIERMALLOC_TIERS` are opened once, by the library's constructor (`init`).
//! Until then, and whenever no device tier and no rule sends plain `malloc` elsewhere, plain
//! `malloc` goes straight to DRAM: `fast::DIRECT_END` keeps the inline fast path's one size
//! comparison, and the general path tests one flag.
//!
//! With routing on, a plain request goes to the first `TIERMALLOC_PLACE` rule that matches its
//! size, else to the first tier listed; a tier that is full or at its `limit=` passes it on to
//! the next tiers in `TIERMALLOC_TIERS` order (`spilled_out`/`spilled_in`), and only when
//! every tier is full does it fail. Explicit `tm_malloc(kind, ..)` never spills.

use crate::backend::Problem;
use crate::config::{self, Fit, Kind, PlaceRule, MAX_RULES, MAX_TIERS};
use crate::pagemap::{self, ChunkTag};
use crate::stats::{SharedCounter, TierStats};
use crate::tier::{DeviceFigures, DeviceTier};
use crate::{dram, dram_budget, fast, os};
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// DRAM requests that failed, and DRAM's share of spilling.
pub static FAILURES: SharedCounter = SharedCounter::new();
static DRAM_SPILLED_IN: SharedCounter = SharedCounter::new();
static DRAM_SPILLED_OUT: SharedCounter = SharedCounter::new();

/// Invariants: `order[..order_len]` lists the usable tiers in fallback order, each kind once;
/// `device[k]` is `Some` exactly for the device kinds in it; `routed` ⇔ plain `malloc` may be
/// served by a device tier (one is listed first, a rule names one, or a capped DRAM spills to
/// the next tier listed).
struct Tiers {
    device: [Option<DeviceTier>; 4],
    order: [Kind; MAX_TIERS],
    order_len: usize,
    rules: [PlaceRule; MAX_RULES],
    rule_count: usize,
    routed: bool,
    ignore_bad_free: bool,
}

static TIERS: spin::Once<Tiers> = spin::Once::new();
static ROUTED: AtomicBool = AtomicBool::new(false);

/// Opens the configured tiers (once; the library's constructor calls it), reporting each one
/// that cannot be used in one line and going on without it.
pub fn init() {
    let tiers = TIERS.call_once(open_tiers);
    if tiers.routed {
        fast::route_all_requests();
        ROUTED.store(true, Ordering::Release);
    }
    register_fork_handlers();
}

fn open_tiers() -> Tiers {
    let config = config::get();
    let mut tiers = Tiers {
        device: [None, None, None, None],
        order: [Kind::Dram; MAX_TIERS],
        order_len: 0,
        rules: config.rules,
        rule_count: config.rule_count,
        routed: false,
        ignore_bad_free: config.ignore_bad_free,
    };
    for spec in config.tiers() {
        if spec.kind == Kind::Dram {
            if let Some(limit) = spec.limit {
                dram_budget::set_limit(limit);
            }
        } else {
            match DeviceTier::open(spec) {
                Ok(tier) => tiers.device[spec.kind as usize] = Some(tier),
                Err(problem) => {
                    report_tier(spec.kind, spec.path(), problem);
                    continue;
                }
            }
        }
        tiers.order[tiers.order_len] = spec.kind;
        tiers.order_len += 1;
    }
    if tiers.order_len == 0 {
        tiers.order[0] = Kind::Dram;
        tiers.order_len = 1;
    }
    let rule_to_device = tiers.rules[..tiers.rule_count]
        .iter()
        .any(|r| r.kind != Kind::Dram && tiers.device[r.kind as usize].is_some());
    // A capped DRAM must pass plain requests on when full, which the direct path cannot.
    let dram_spills = dram_budget::limit().is_some() && tiers.order_len > 1;
    tiers.routed = tiers.order[0] != Kind::Dram || rule_to_device || dram_spills;
    if config.verbose {
        let mut line = os::LineBuf::new();
        let _ = write!(line, "tiermalloc: tiers in fallback order:");
        for kind in &tiers.order[..tiers.order_len] {
            let _ = write!(line, " {}", kind.name());
        }
        let _ = writeln!(
            line,
            "; {} placement rule(s); plain malloc {}",
            tiers.rule_count,
            if tiers.routed {
                "routed by size"
            } else {
                "on dram"
            }
        );
        line.flush();
    }
    tiers
}

fn report_tier(kind: Kind, path: Option<&[u8]>, problem: Problem) {
    let mut line = os::LineBuf::new();
    let _ = write!(line, "tiermalloc: TIERMALLOC_TIERS: tier '{}'", kind.name());
    if let Some(path) = path {
        let _ = write!(
            line,
            " ({})",
            core::str::from_utf8(path).unwrap_or("<not UTF-8>")
        );
    }
    let _ = write!(line, ": {}", problem.what);
    if problem.errno != 0 {
        let mut buf = [0u8; 128];
        // SAFETY: strerror_r writes a NUL-terminated message into our buffer.
        let rc = unsafe { libc::strerror_r(problem.errno, buf.as_mut_ptr().cast(), buf.len()) };
        let text = core::ffi::CStr::from_bytes_until_nul(&buf)
            .ok()
            .and_then(|c| c.to_str().ok());
        match text {
            Some(text) if rc == 0 => {
                let _ = write!(line, ": {text}");
            }
            _ => {
                let _ = write!(line, ": errno {}", problem.errno);
            }
        }
    }
    let _ = writeln!(line, "; tier skipped");
    line.flush();
}

/// Whether plain requests consult the placement rules (device tiers in use).
#[inline(always)]
pub fn routed() -> bool {
    ROUTED.load(Ordering::Relaxed)
}

fn device(kind: Kind) -> Option<&'static DeviceTier> {
    TIERS.get()?.device[kind as usize].as_ref()
}

/// Whether `kind` is a tier this process can allocate from (DRAM always is).
pub fn is_configured(kind: Kind) -> bool {
    kind == Kind::Dram || device(kind).is_some()
}

/// The tier of block `p`, if it is ours.
pub fn kind_of(p: *const u8) -> Option<Kind> {
    match pagemap::tag_of_block(p as usize) {
        ChunkTag::Foreign => None,
        tag => Some(tag.device_kind().unwrap_or(Kind::Dram)),
    }
}

/// A block on tier `kind` only (no spilling): `size` bytes at `align` (a power of two),
/// zeroed if asked; null if that tier cannot serve it.
pub fn alloc_on(kind: Kind, size: usize, align: usize, zero: bool) -> *mut u8 {
    let p = if kind == Kind::Dram {
        dram_alloc(size, align, zero)
    } else {
        match device(kind) {
            Some(tier) => device_alloc(tier, size, align, zero),
            None => core::ptr::null_mut(),
        }
    };
    if p.is_null() {
        count_failure(kind);
    }
    p
}

fn dram_alloc(size: usize, align: usize, zero: bool) -> *mut u8 {
    if size > dram::MAX_REQUEST {
        return core::ptr::null_mut();
    }
    if zero {
        dram::alloc_zeroed(size, align)
    } else {
        dram::alloc_aligned(size, align)
    }
}

fn device_alloc(tier: &DeviceTier, size: usize, align: usize, zero: bool) -> *mut u8 {
    match tier.alloc(size, align.max(16)) {
        Some(p) => {
            if zero {
                // SAFETY: the block holds at least `size` bytes; this writes, never reads.
                unsafe { p.write_bytes(0, size) };
            }
            p
        }
        None => core::ptr::null_mut(),
    }
}

fn count_failure(kind: Kind) {
    match device(kind) {
        Some(tier) => tier.failures.add(1),
        None => FAILURES.add(1),
    }
}

/// A plain request (`malloc` and friends, the Rust global allocator): DRAM unless routing is
/// on, then the rule's tier, spilling along the fallback order.
pub fn alloc_plain(size: usize, align: usize, zero: bool) -> *mut u8 {
    let Some(tiers) = TIERS.get().filter(|t| t.routed) else {
        let p = dram_alloc(size, align, zero);
        if p.is_null() {
            FAILURES.add(1);
        }
        return p;
    };
    let chosen = tiers.rules[..tiers.rule_count]
        .iter()
        .find(|r| (r.min..=r.max).contains(&(size as u64)) && is_configured(r.kind))
        .map_or(tiers.order[0], |r| r.kind);
    let start = tiers.order[..tiers.order_len]
        .iter()
        .position(|k| *k == chosen)
        .unwrap_or(0);
    for step in 0..tiers.order_len {
        let kind = tiers.order[(start + step) % tiers.order_len];
        let p = if kind == Kind::Dram {
            dram_alloc(size, align, zero)
        } else {
            device(kind).map_or(core::ptr::null_mut(), |t| {
                device_alloc(t, size, align, zero)
            })
        };
        if !p.is_null() {
            if step > 0 {
                spilled(chosen, kind);
            }
            return p;
        }
    }
    count_failure(chosen);
    core::ptr::null_mut()
}

fn spilled(from: Kind, to: Kind) {
    match device(from) {
        Some(t) => t.spilled_out.add(1),
        None => DRAM_SPILLED_OUT.add(1),
    }
    match device(to) {
        Some(t) => t.spilled_in.add(1),
        None => DRAM_SPILLED_IN.add(1),
    }
}

/// Frees any block of ours; null and foreign pointers are ignored.
///
/// # Safety
/// `p` must be null, foreign, or a live block of ours not used after this.
#[inline(always)]
pub unsafe fn free(p: *mut u8) {
    if pagemap::tag_of_block(p as usize) == ChunkTag::Segment {
        // SAFETY: a segment owns `p`.
        unsafe { fast::free(p) }
    } else {
        // SAFETY: forwarded.
        unsafe { free_other(p) }
    }
}

#[cold]
#[inline(never)]
unsafe fn free_other(p: *mut u8) {
    match pagemap::tag_of_block(p as usize).device_kind() {
        Some(kind) => device_free(kind, p),
        // SAFETY: forwarded: DRAM (large) or foreign.
        None => unsafe { dram::free(p) },
    }
}

fn device_free(kind: Kind, p: *mut u8) {
    let (Some(tiers), Some(tier)) = (TIERS.get(), device(kind)) else {
        return;
    };
    if let Err(error) = tier.free(p) {
        tier.failures.add(1);
        let mut line = os::LineBuf::new();
        let what = match error {
            crate::heap::FreeError::DoubleFree => "double free",
            crate::heap::FreeError::NotAllocated => "not the start of a live block",
        };
        let action = if tiers.ignore_bad_free {
            "ignored"
        } else {
            "aborting"
        };
        let _ = writeln!(
            line,
            "tiermalloc: free({p:p}) on tier {}: {what}; {action}",
            kind.name()
        );
        line.flush();
        if !tiers.ignore_bad_free {
            // SAFETY: abort has no preconditions.
            unsafe { libc::abort() };
        }
    }
}

/// The usable size of `p`: 0 for null and foreign pointers.
///
/// # Safety
/// `p` must be null, foreign, or a live block of ours.
pub unsafe fn usable_size(p: *mut u8) -> usize {
    match pagemap::tag_of_block(p as usize).device_kind() {
        Some(kind) => device(kind).and_then(|t| t.usable_size(p)).unwrap_or(0),
        // SAFETY: forwarded.
        None => unsafe { dram::usable_size(p) },
    }
}

/// Resizes `p` (non-null, ours) to `size` (non-zero) bytes on its own tier; null with `p`
/// intact on failure.
///
/// # Safety
/// `p` must be a live block of ours.
pub unsafe fn realloc(p: *mut u8, size: usize, align: usize) -> *mut u8 {
    let Some(kind) = pagemap::tag_of_block(p as usize).device_kind() else {
        // SAFETY: forwarded.
        return unsafe { dram::realloc(p, size, align) };
    };
    // SAFETY: forwarded.
    let old = unsafe { usable_size(p) };
    if old == 0 {
        return core::ptr::null_mut();
    }
    if dram::keeps_block(size, old) {
        return p;
    }
    // In place, the block keeps its address, hence its alignment.
    if device(kind).is_some_and(|t| t.resize_in_place(p, size)) {
        return p;
    }
    let q = alloc_on(kind, size, align, false);
    if !q.is_null() {
        // SAFETY: two live blocks of ours, distinct, each holding the bytes copied.
        unsafe {
            core::ptr::copy_nonoverlapping(p, q, old.min(size));
            free(p);
        }
    }
    q
}

/// Chooses tier `kind`'s fit policy; false if the kind is not configured.
pub fn set_fit(kind: Kind, fit: Fit) -> bool {
    match device(kind) {
        Some(tier) => {
            tier.set_fit(fit);
            true
        }
        // DRAM has no extent heap: any fit is trivially its policy.
        None => kind == Kind::Dram,
    }
}

/// The figures of tier `kind`, if configured.
pub fn stats(kind: Kind) -> Option<TierStats> {
    if kind != Kind::Dram {
        return device(kind).map(DeviceTier::stats);
    }
    let mut s = dram::stats();
    s.failures = FAILURES.get();
    s.spilled_in = DRAM_SPILLED_IN.get();
    s.spilled_out = DRAM_SPILLED_OUT.get();
    Some(s)
}

/// The pipe through which a forked child tells its parent that it has made its copy of the
/// shared tiers (`-1` when no copy is needed).
static FORK_PIPE: [AtomicI32; 2] = [AtomicI32::new(-1), AtomicI32::new(-1)];

/// Holds every device tier's lock across `fork`, so the child never inherits one held by a
/// thread that does not exist there, and gives the child a private copy of every tier whose
/// mapping `fork` would share (`tier`). The parent waits until the child has made that copy,
/// so that the copy is what the parent's memory was at the `fork`. Registered from the
/// constructor (registration allocates, so never from inside `malloc`).
fn register_fork_handlers() {
    extern "C" fn prepare() {
        let mut any_shared = false;
        for_each_device(|t| any_shared |= t.is_shared_across_fork());
        if any_shared {
            let mut fds = [-1; 2];
            // SAFETY: `fds` is a valid out-array of two descriptors.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == 0 {
                FORK_PIPE[0].store(fds[0], Ordering::Relaxed);
                FORK_PIPE[1].store(fds[1], Ordering::Relaxed);
            }
        }
        for_each_device(|t| t.lock_for_fork());
    }
    extern "C" fn in_parent() {
        let (read_end, write_end) = take_fork_pipe();
        if read_end >= 0 {
            os::keep_errno(|| {
                let mut byte = 0u8;
                // SAFETY: our own descriptors. The read returns when the child writes its byte,
                // or at end of file if it exits (or dies) first; either way it is done copying.
                unsafe {
                    libc::close(write_end);
                    while libc::read(read_end, (&mut byte as *mut u8).cast(), 1) < 0
                        && os::errno() == libc::EINTR
                    {}
                    libc::close(read_end);
                }
            });
        }
        // Only now: meanwhile no thread of the parent could take a new block.
        for_each_device(|t| t.unlock_after_fork());
    }
    extern "C" fn in_child() {
        for_each_device(|t| t.after_fork_in_child());
        let (read_end, write_end) = take_fork_pipe();
        if read_end >= 0 {
            os::keep_errno(|| {
                // SAFETY: our own descriptors, inherited from the parent.
                unsafe {
                    libc::write(write_end, b"c".as_ptr().cast(), 1);
                    libc::close(write_end);
                    libc::close(read_end);
                }
            });
        }
    }
    fn take_fork_pipe() -> (i32, i32) {
        (
            FORK_PIPE[0].swap(-1, Ordering::Relaxed),
            FORK_PIPE[1].swap(-1, Ordering::Relaxed),
        )
    }
    if TIERS
        .get()
        .is_some_and(|t| t.device.iter().any(Option::is_some))
    {
        // SAFETY: plain functions; pthread_atfork has no other preconditions.
        unsafe { libc::pthread_atfork(Some(prepare), Some(in_parent), Some(in_child)) };
    }
}

fn for_each_device(f: impl FnMut(&DeviceTier)) {
    if let Some(tiers) = TIERS.get() {
        tiers.device.iter().flatten().for_each(f);
    }
}

/// Device tier `kind`'s figures for a statistics report; `None` if it is not configured, or
/// (`wait` false: a signal handler, the live publisher) while one of its locks is held.
pub fn device_figures(kind: Kind, wait: bool) -> Option<DeviceFigures> {
    let tier = device(kind)?;
    if wait {
        Some(tier.figures())
    } else {
        tier.try_figures()
    }
}
