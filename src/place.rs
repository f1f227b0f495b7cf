//! Placement: which tier serves a request, and spilling to the next when it is full. Nothing
//! else: the tiers themselves are reached through `tier` only.
//!
//! The tiers of `TIERMALLOC_TIERS` are opened once, by the library's constructor (`init`).
//! Until then, and whenever no device tier and no rule sends plain `malloc` elsewhere, plain
//! `malloc` goes straight to DRAM: the DRAM tier's direct paths stay on (`routed` is false),
//! the inline fast path keeps its one size comparison, and the general path tests one flag.
//!
//! With routing on, a plain request goes to the first `TIERMALLOC_PLACE` rule that matches its
//! size, else to the first tier listed; a tier that is full or at its `limit=` passes it on to
//! the next tiers in `TIERMALLOC_TIERS` order (`spilled_out`/`spilled_in`), and only when
//! every tier is full does it fail. Explicit `tm_malloc(kind, ..)` never spills.

use crate::config::{self, PlaceRule, MAX_TIERS};
use crate::dram;
use crate::kind::Kind;
use crate::os;
use crate::tier::{self, Tier, TierRef};
use core::fmt::Write;

/// Invariants: `order[..order_len]` lists the usable tiers in fallback order, each kind once,
/// and at least one; `rules` are the configured size rules, in order.
struct Tiers {
    order: [Kind; MAX_TIERS],
    order_len: usize,
    rules: &'static [PlaceRule],
}

static TIERS: spin::Once<Tiers> = spin::Once::new();

/// Opens the configured tiers (once; the library's constructor calls it), each one that
/// cannot be used reported in one line and left out, and turns routing on if plain requests
/// may go elsewhere than DRAM.
pub fn init() {
    let mut routed = false;
    TIERS.call_once(|| {
        let tiers = open_tiers();
        routed = routes_plain_requests(&tiers.order[..tiers.order_len], tiers.rules);
        if config::get().verbose {
            report_order(&tiers, routed);
        }
        tiers
    });
    if routed {
        dram::turn_direct_paths_off();
    }
}

fn open_tiers() -> Tiers {
    let config = config::get();
    let mut tiers = Tiers {
        order: [Kind::Dram; MAX_TIERS],
        order_len: 0,
        rules: config.rules(),
    };
    for spec in config.tiers() {
        if tier::open(spec) {
            tiers.order[tiers.order_len] = spec.kind;
            tiers.order_len += 1;
        }
    }
    if tiers.order_len == 0 {
        tiers.order[0] = Kind::Dram;
        tiers.order_len = 1;
    }
    tiers
}

/// Whether plain `malloc` may be served elsewhere than DRAM, for tiers opened in fallback
/// `order` and size `rules`: a device tier is listed first, a rule names an opened device
/// tier, or a capped DRAM must pass requests on to the next tier when full (which the direct
/// paths cannot).
fn routes_plain_requests(order: &[Kind], rules: &[PlaceRule]) -> bool {
    let dram_capped = config::get()
        .tiers()
        .iter()
        .any(|s| s.kind == Kind::Dram && s.limit.is_some());
    decide_routing(order, rules, dram_capped)
}

/// `routes_plain_requests` as a pure function of the configuration.
fn decide_routing(order: &[Kind], rules: &[PlaceRule], dram_capped: bool) -> bool {
    let rule_to_device = rules
        .iter()
        .any(|r| r.kind != Kind::Dram && order.contains(&r.kind));
    order[0] != Kind::Dram || rule_to_device || (dram_capped && order.len() > 1)
}

#[cold]
#[inline(never)]
// Run only under `TIERMALLOC_VERBOSE`: out of the code every process runs (`link/hot_text.ld`
// takes every other `place` function).
#[link_section = ".text.tiermalloc_verbose"]
fn report_order(tiers: &Tiers, routed: bool) {
    let mut line = os::LineBuf::new();
    let _ = write!(line, "tiermalloc: tiers in fallback order:");
    for kind in &tiers.order[..tiers.order_len] {
        let _ = write!(line, " {}", kind.name());
    }
    let _ = writeln!(
        line,
        "; {} placement rule(s); plain malloc {}",
        tiers.rules.len(),
        if routed { "routed by size" } else { "on dram" }
    );
    line.flush();
}

/// Whether plain requests consult the placement rules (device tiers in use). The DRAM tier
/// keeps the one record of it: its direct paths are off exactly then.
#[inline(always)]
pub fn routed() -> bool {
    dram::direct_paths_off()
}

/// Whether `kind` is a tier this process can allocate from (DRAM always is).
pub fn is_configured(kind: Kind) -> bool {
    tier::get(kind).is_some()
}

/// A block on tier `kind` only (no spilling): `size` bytes at `align` (a power of two),
/// zeroed if asked; null if that tier cannot serve it (counted as its failure).
pub fn alloc_on(kind: Kind, size: usize, align: usize, zero: bool) -> *mut u8 {
    let Some(tier) = tier::get(kind) else {
        return core::ptr::null_mut();
    };
    let p = tier.alloc(size, align, zero);
    if p.is_null() {
        tier.counters().failures.add(1);
    }
    p
}

/// `alloc_on` on a tier the caller holds (`tier::get`'s answer, kept: the Rust `Allocator`
/// of one tier), with the block's usable size (`None` on failure).
#[inline]
pub fn alloc_on_tier_sized(
    tier: TierRef,
    size: usize,
    align: usize,
    zero: bool,
) -> Option<(core::ptr::NonNull<u8>, usize)> {
    let found = tier::alloc_sized(tier, size, align, zero);
    if found.is_none() {
        tier.counters().failures.add(1);
    }
    found
}

/// A plain request (`malloc` and friends, the Rust global allocator): DRAM unless routing is
/// on, then the rule's tier, spilling along the fallback order.
pub fn alloc_plain(size: usize, align: usize, zero: bool) -> *mut u8 {
    let tiers = match TIERS.get() {
        Some(tiers) if routed() => tiers,
        _ => return alloc_on(Kind::Dram, size, align, zero),
    };
    let order = &tiers.order[..tiers.order_len];
    let start = first_choice(order, tiers.rules, size, is_configured);
    for step in 0..order.len() {
        let kind = order[(start + step) % order.len()];
        let Some(tier) = tier::get(kind) else {
            continue;
        };
        let p = tier.alloc(size, align, zero);
        if !p.is_null() {
            if step > 0 {
                spilled(order[start], tier);
            }
            return p;
        }
    }
    if let Some(chosen) = tier::get(order[start]) {
        chosen.counters().failures.add(1);
    }
    core::ptr::null_mut()
}

/// Where a plain `realloc` moves a block it cannot resize in place: onto its own tier
/// (`None`) unless routing is on; then where a plain request of the new size goes (the rules,
/// then spilling), so that a block grown past a rule's `min=` follows the rule and one whose
/// tier is full or at its `limit=` moves on, as `malloc` of that size would.
#[inline]
pub fn plain_move() -> Option<tier::MoveTo> {
    fn alloc_moved(size: usize, align: usize) -> *mut u8 {
        alloc_plain(size, align, false)
    }
    routed().then_some(alloc_moved as tier::MoveTo)
}

/// Where in fallback `order` a plain request of `size` bytes starts: the tier of the first
/// rule matching its size whose tier `is_configured`, else the first tier listed (also when
/// the rule's tier is not in `order`).
fn first_choice(
    order: &[Kind],
    rules: &[PlaceRule],
    size: usize,
    is_configured: impl Fn(Kind) -> bool,
) -> usize {
    let chosen = rules
        .iter()
        .find(|r| (r.min..=r.max).contains(&(size as u64)) && is_configured(r.kind))
        .map_or(order[0], |r| r.kind);
    order.iter().position(|k| *k == chosen).unwrap_or(0)
}

fn spilled(from: Kind, to: tier::TierRef) {
    if let Some(from) = tier::get(from) {
        from.counters().spilled_out.add(1);
    }
    to.counters().spilled_in.add(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: Kind, min: u64, max: u64) -> PlaceRule {
        PlaceRule { kind, min, max }
    }

    #[test]
    fn a_matching_rule_picks_its_tier_else_the_first_listed() {
        let order = [Kind::Dram, Kind::Cxl, Kind::Pmr];
        let rules = [
            rule(Kind::Pmr, 1 << 20, u64::MAX),
            rule(Kind::Cxl, 4096, 1 << 20),
        ];
        let all = |_| true;
        assert_eq!(first_choice(&order, &rules, 100, all), 0);
        assert_eq!(first_choice(&order, &rules, 4096, all), 1);
        assert_eq!(
            first_choice(&order, &rules, 1 << 20, all),
            2,
            "first rule wins"
        );
        assert_eq!(first_choice(&order, &rules, 5 << 20, all), 2);
    }

    #[test]
    fn a_rule_for_an_unusable_tier_is_skipped() {
        let order = [Kind::Cxl, Kind::Dram];
        let rules = [rule(Kind::Pmr, 0, u64::MAX), rule(Kind::Dram, 0, 64)];
        let no_pmr = |k| k != Kind::Pmr;
        assert_eq!(
            first_choice(&order, &rules, 10, no_pmr),
            1,
            "next rule: dram"
        );
        assert_eq!(
            first_choice(&order, &rules, 100, no_pmr),
            0,
            "no rule: first listed"
        );
        // A configured tier missing from the order starts at the first listed.
        assert_eq!(first_choice(&order, &rules, 10, |_| true), 0);
    }

    #[test]
    fn routing_is_on_only_when_plain_requests_may_leave_dram() {
        let dram_only = [Kind::Dram];
        let dram_first = [Kind::Dram, Kind::Cxl];
        let cxl_first = [Kind::Cxl, Kind::Dram];
        assert!(!decide_routing(&dram_only, &[], false));
        assert!(
            !decide_routing(&dram_only, &[], true),
            "nowhere to spill to"
        );
        assert!(!decide_routing(&dram_first, &[], false));
        assert!(
            decide_routing(&dram_first, &[], true),
            "a capped DRAM spills"
        );
        assert!(decide_routing(&cxl_first, &[], false));
        let to_cxl = [rule(Kind::Cxl, 0, 10)];
        assert!(decide_routing(&dram_first, &to_cxl, false));
        assert!(
            !decide_routing(&dram_only, &to_cxl, false),
            "cxl not opened"
        );
        assert!(!decide_routing(
            &dram_first,
            &[rule(Kind::Dram, 0, 10)],
            false
        ));
    }
}
