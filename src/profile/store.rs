//! Where a profile's records are kept: in the pool when `TIERMALLOC_POOL` names one (the seed's
//! shared disk: `pool::profiles`, readable from every process and host that maps the pool),
//! else in a directory (`record`). One interface over both, for `profile::start` and
//! `finish`, which alone use it (start and exit: allocating is allowed).

use super::record::{self, LivePeer, Run, SlabPeak};
use crate::pool::profiles::{self, LiveEntry, ProfileRecords};
use core::sync::atomic::AtomicU64;
use std::path::PathBuf;

pub(crate) enum Store {
    Pool {
        records: ProfileRecords,
        name: String,
    },
    Dir(record::Store),
}

/// A running process's record, which peers read.
pub(crate) enum Live {
    Pool(LiveEntry),
    Dir(record::Live),
}

impl Store {
    /// The store in the pool.
    pub(crate) fn in_pool(name: &str) -> Result<Store, &'static str> {
        Ok(Store::Pool {
            records: ProfileRecords::open()?,
            name: name.to_owned(),
        })
    }

    /// The store in `dir`, creating it.
    pub(crate) fn in_dir(dir: PathBuf, name: &str) -> std::io::Result<Store> {
        record::Store::open(dir, name).map(Store::Dir)
    }

    /// Where the records are, for messages.
    pub(crate) fn place(&self) -> String {
        match self {
            Store::Pool { .. } => "the pool's space tiermalloc.profiles".to_owned(),
            Store::Dir(d) => d.runs_path().display().to_string(),
        }
    }

    /// The recorded runs (the last `HISTORY_RUNS`), oldest first.
    pub(crate) fn history(&self) -> Vec<Run> {
        match self {
            Store::Dir(d) => d.history(),
            Store::Pool { records, name } => {
                let mut runs: Vec<Run> = records
                    .history(name.as_bytes())
                    .iter()
                    .map(|f| Run {
                        peak: f[profiles::F_DRAM_PEAK],
                        ms_to_peak: f[profiles::F_MS_TO_PEAK],
                        pool_peak: f[profiles::F_POOL_PEAK],
                        pool_ms_to_peak: f[profiles::F_POOL_MS_TO_PEAK],
                        // The pool's record keeps a device tier's peak, not when it was.
                        devices: profiles::F_DEVICE_PEAKS.map(|i| (f[i], 0)),
                        slabs: unpack_slab_peaks(&f[profiles::F_SLABS..][..profiles::SLAB_WORDS]),
                        unix_secs: f[profiles::F_UNIX_SECS],
                        pid: f[profiles::F_PID] as u32,
                    })
                    .collect();
                runs.sort_by_key(|r| r.unix_secs);
                runs
            }
        }
    }

    /// Records a finished run.
    pub(crate) fn append(&self, run: Run) -> Result<(), String> {
        match self {
            Store::Dir(d) => d.append(run).map_err(|e| e.to_string()),
            Store::Pool { records, name } => {
                let mut f = [0u64; profiles::FIELDS];
                f[profiles::F_DRAM_PEAK] = run.peak;
                f[profiles::F_MS_TO_PEAK] = run.ms_to_peak;
                f[profiles::F_POOL_PEAK] = run.pool_peak;
                f[profiles::F_POOL_MS_TO_PEAK] = run.pool_ms_to_peak;
                f[profiles::F_UNIX_SECS] = run.unix_secs;
                f[profiles::F_PID] = run.pid as u64;
                f[profiles::F_HOST] = records.host();
                for (&field, &(peak, _)) in profiles::F_DEVICE_PEAKS.iter().zip(&run.devices) {
                    f[field] = peak;
                }
                pack_slab_peaks(
                    &run.slabs,
                    &mut f[profiles::F_SLABS..][..profiles::SLAB_WORDS],
                );
                records.append(name.as_bytes(), f).map_err(str::to_owned)
            }
        }
    }

    /// The peaks of live peers of the same name.
    pub(crate) fn live_peers(&self) -> Vec<LivePeer> {
        match self {
            Store::Dir(d) => d.live_peers(),
            Store::Pool { records, name } => records
                .live_peers(name.as_bytes())
                .iter()
                .map(|f| LivePeer {
                    dram: f[profiles::F_DRAM_PEAK],
                    pool: f[profiles::F_POOL_PEAK],
                    devices: profiles::F_DEVICE_PEAKS.map(|i| f[i]),
                })
                .collect(),
        }
    }

    /// Publishes this process's live record.
    pub(crate) fn publish_live(&self, reserved: u64) -> Result<Live, String> {
        match self {
            Store::Dir(d) => d
                .publish_live(reserved)
                .map(Live::Dir)
                .map_err(|e| e.to_string()),
            Store::Pool { records, name } => records
                .publish_live(name.as_bytes())
                .map(Live::Pool)
                .map_err(str::to_owned),
        }
    }
}

/// The largest slab count a packed peak holds (a run's count above it is kept as this).
const PACKED_SLABS_MAX: u32 = (1 << 22) - 1;

/// A slab peak as 32 bits: `device << 30 | key << 22 | slabs` (0: none; a peak of 0 slabs is
/// never recorded).
fn pack_slab_peak(p: &SlabPeak) -> u64 {
    u64::from(p.device & 3) << 30
        | u64::from(p.key) << 22
        | u64::from(p.slabs.min(PACKED_SLABS_MAX))
}

/// Packs `peaks` into `words`, two to a word: the `2 * words.len()` with the most slabs if
/// there are more.
fn pack_slab_peaks(peaks: &[SlabPeak], words: &mut [u64]) {
    let mut kept: Vec<&SlabPeak> = peaks.iter().filter(|p| p.slabs > 0).collect();
    kept.sort_by_key(|p| core::cmp::Reverse(p.slabs));
    kept.truncate(profiles::SLAB_PEAKS.min(2 * words.len()));
    for (i, p) in kept.iter().enumerate() {
        words[i / 2] |= pack_slab_peak(p) << (32 * (i % 2));
    }
}

/// The slab peaks `pack_slab_peaks` wrote into `words`.
fn unpack_slab_peaks(words: &[u64]) -> Vec<SlabPeak> {
    words
        .iter()
        .flat_map(|&w| [w & 0xffff_ffff, w >> 32])
        .filter(|&v| v != 0)
        .map(|v| SlabPeak {
            device: (v >> 30) as u8,
            key: (v >> 22) as u8,
            slabs: (v as u32) & PACKED_SLABS_MAX,
        })
        .collect()
}

impl Live {
    /// The words peers read as this process's (dram, pool) peaks.
    pub(crate) fn peak_words(&self) -> (*mut AtomicU64, *mut AtomicU64) {
        match self {
            Live::Dir(l) => (l.peak_word(), l.pool_peak_word()),
            Live::Pool(e) => (
                e.dram_peak() as *const AtomicU64 as *mut AtomicU64,
                e.pool_peak() as *const AtomicU64 as *mut AtomicU64,
            ),
        }
    }

    /// The words peers read as this process's peak on each private device tier (`KINDS`).
    pub(crate) fn device_peak_words(&self) -> [*mut AtomicU64; 3] {
        core::array::from_fn(|i| match self {
            Live::Dir(l) => l.device_peak_word(i),
            Live::Pool(e) => e.device_peak(i) as *const AtomicU64 as *mut AtomicU64,
        })
    }

    /// Removes the record (the process is finishing).
    pub(crate) fn remove(self) {
        match self {
            Live::Dir(l) => l.remove(),
            Live::Pool(e) => e.remove(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_peaks_pack_into_the_pool_record_and_back() {
        let peaks: Vec<SlabPeak> = (0..70u32)
            .map(|i| SlabPeak {
                device: (i % 3) as u8,
                key: (i * 3 + 1) as u8,
                slabs: if i == 5 { 1 << 30 } else { i + 1 },
            })
            .collect();
        let mut words = [0u64; profiles::SLAB_WORDS];
        pack_slab_peaks(&peaks, &mut words);
        let mut back = unpack_slab_peaks(&words);
        back.sort_by_key(|p| (p.device, p.key));
        // The 64 with the most slabs: all but the 6 smallest (1-5 and 7 slabs; the sixth
        // peak was made 2^30, kept and capped).
        let mut want: Vec<SlabPeak> = peaks
            .iter()
            .filter(|p| p.slabs >= 8)
            .map(|p| SlabPeak {
                slabs: p.slabs.min(PACKED_SLABS_MAX),
                ..*p
            })
            .collect();
        want.sort_by_key(|p| (p.device, p.key));
        assert_eq!(back.len(), profiles::SLAB_PEAKS);
        assert_eq!(back, want);
    }
}
