//! How much a workload will need: the estimate a profile's next process reserves at start.
//!
//! Sources, in the order seed 003 gives them: live peers of the same name (a running instance
//! of the workload: the largest peak among them), else the history of finished runs (the
//! 90th percentile, nearest rank, of the last `HISTORY_RUNS` peaks), else nothing. The result
//! is rounded up to whole chunks (the reserve's unit) and capped by `TIERMALLOC_PROFILE_MAX`
//! rounded down to whole chunks, so the reserve never exceeds the cap.

use super::record::{LivePeer, Run, SlabPeak, HISTORY_RUNS};
use crate::chunk::CHUNK_SIZE;

/// Where an estimate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// Live peers of the same name, this many.
    Peers(usize),
    /// Recorded runs, this many.
    History(usize),
    Nothing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Estimate {
    /// Bytes to reserve: a multiple of `CHUNK_SIZE`, at most the cap.
    pub bytes: u64,
    pub source: Source,
    /// Whether the cap cut the estimate.
    pub capped: bool,
}

/// The 90th percentile of `values`, nearest rank (the value at rank ceil(0.9 n)).
pub(crate) fn p90(values: &[u64]) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = [0u64; HISTORY_RUNS];
    let n = values.len().min(HISTORY_RUNS);
    sorted[..n].copy_from_slice(&values[values.len() - n..]);
    sorted[..n].sort_unstable();
    let rank = (9 * n).div_ceil(10);
    Some(sorted[rank - 1])
}

/// The estimate from live peers' peaks and recorded peaks (oldest first), capped by `max`,
/// in whole chunks (the DRAM reserve's unit).
pub(crate) fn estimate(peers: &[u64], history: &[u64], max: Option<u64>) -> Estimate {
    estimate_in(peers, history, max, CHUNK_SIZE as u64)
}

/// `estimate` in bytes (a pool tier's share is rounded to its extents by the pool).
pub(crate) fn estimate_bytes(peers: &[u64], history: &[u64], max: Option<u64>) -> Estimate {
    estimate_in(peers, history, max, 1)
}

fn estimate_in(peers: &[u64], history: &[u64], max: Option<u64>, unit: u64) -> Estimate {
    let (raw, source) = if !peers.is_empty() {
        (
            peers.iter().copied().max().unwrap_or(0),
            Source::Peers(peers.len()),
        )
    } else if let Some(p) = p90(history) {
        (p, Source::History(history.len().min(HISTORY_RUNS)))
    } else {
        (0, Source::Nothing)
    };
    let chunk = unit;
    let rounded = raw.div_ceil(chunk).saturating_mul(chunk);
    let cap = max.map_or(u64::MAX, |m| m / chunk * chunk);
    Estimate {
        bytes: rounded.min(cap),
        source,
        capped: rounded > cap,
    }
}

/// What a profile reserves in each tier: DRAM (whole chunks), the pool tier (bytes), each
/// private device tier (`cxl`, `cmb`, `pmr`: whole pages).
pub(crate) struct Plan {
    pub dram: Estimate,
    pub pool: Estimate,
    pub devices: [Estimate; 3],
    /// The slabs to cut ahead on private device tiers: per tier, lane and class, the p90 of
    /// the recorded runs' most slabs in use at once (a run without that class counts 0).
    pub slabs: Vec<SlabPeak>,
}

/// The plan from live peers of the name and its recorded runs, capped by `max`: for each
/// tier, the peers' peaks there, else the history's (a tier a peer or run did not use does
/// not count for it).
pub(crate) fn plan(peers: &[LivePeer], runs: &[Run], max: Option<u64>) -> Plan {
    let used = |v: Vec<u64>| -> Vec<u64> { v.into_iter().filter(|&b| b > 0).collect() };
    let dram_peers: Vec<u64> = peers.iter().map(|p| p.dram).collect();
    let dram_history: Vec<u64> = runs.iter().map(|r| r.peak).collect();
    let pool_peers = used(peers.iter().map(|p| p.pool).collect());
    let pool_history = used(runs.iter().map(|r| r.pool_peak).collect());
    let page = crate::os::PAGE_SIZE as u64;
    Plan {
        dram: estimate(&dram_peers, &dram_history, max),
        pool: estimate_bytes(&pool_peers, &pool_history, max),
        devices: core::array::from_fn(|i| {
            let peers = used(peers.iter().map(|p| p.devices[i]).collect());
            let history = used(runs.iter().map(|r| r.devices[i].0).collect());
            let mut e = estimate_bytes(&peers, &history, max);
            e.bytes = e.bytes / page * page;
            e
        }),
        slabs: slab_targets(runs),
    }
}

/// `Plan::slabs` from `runs` (oldest first).
fn slab_targets(runs: &[Run]) -> Vec<SlabPeak> {
    let mut kinds: Vec<(u8, u8)> = runs
        .iter()
        .flat_map(|r| r.slabs.iter().map(|p| (p.device, p.key)))
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds
        .into_iter()
        .filter_map(|(device, key)| {
            let counts: Vec<u64> = runs
                .iter()
                .map(|r| {
                    let of = |p: &&SlabPeak| p.device == device && p.key == key;
                    r.slabs.iter().find(of).map_or(0, |p| u64::from(p.slabs))
                })
                .collect();
            let slabs = p90(&counts)? as u32;
            (slabs > 0).then_some(SlabPeak { device, key, slabs })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    const C: u64 = CHUNK_SIZE as u64;

    #[test]
    fn p90_is_the_nearest_rank() {
        assert_eq!(p90(&[]), None);
        assert_eq!(p90(&[7]), Some(7));
        // Five runs: rank ceil(4.5) = 5, the largest.
        assert_eq!(p90(&[5, 1, 4, 2, 3]), Some(5));
        // Only the last HISTORY_RUNS count.
        assert_eq!(p90(&[100, 1, 1, 1, 1, 1]), Some(1));
        // Ten values would be rank 9, but only five are kept.
        assert_eq!(p90(&[10, 9, 8, 7, 6, 5, 4, 3, 2, 1]), Some(5));
    }

    #[test]
    fn peers_come_before_history_and_the_cap_bounds_everything() {
        let e = estimate(&[3 * C, 5 * C], &[100 * C], None);
        assert_eq!(
            (e.bytes, e.source, e.capped),
            (5 * C, Source::Peers(2), false)
        );
        let e = estimate(&[], &[2 * C, 3 * C + 1], None);
        assert_eq!((e.bytes, e.source), (4 * C, Source::History(2)));
        let e = estimate(&[], &[], None);
        assert_eq!((e.bytes, e.source), (0, Source::Nothing));
        let e = estimate(&[], &[10 * C], Some(3 * C + 5));
        assert_eq!((e.bytes, e.capped), (3 * C, true));
        let e = estimate(&[], &[10 * C], Some(C - 1));
        assert_eq!(e.bytes, 0);
    }

    #[test]
    fn the_slabs_to_cut_are_the_p90_of_each_class_across_runs() {
        let slab = |device, key, slabs| SlabPeak { device, key, slabs };
        let run = |slabs: Vec<SlabPeak>| Run {
            peak: 0,
            ms_to_peak: 0,
            pool_peak: 0,
            pool_ms_to_peak: 0,
            devices: [(0, 0); 3],
            slabs,
            unix_secs: 0,
            pid: 0,
        };
        let runs = [
            run(vec![slab(0, 3, 4), slab(2, 3, 1)]),
            run(vec![slab(0, 3, 9)]),
            run(vec![slab(0, 3, 2), slab(0, 70, 5)]),
        ];
        // Three runs: rank ceil(2.7) = 3, the largest; a class a run lacks counts 0 there.
        assert_eq!(
            plan(&[], &runs, None).slabs,
            [slab(0, 3, 9), slab(0, 70, 5), slab(2, 3, 1)]
        );
        assert!(plan(&[], &runs[..0], None).slabs.is_empty());
    }
}
