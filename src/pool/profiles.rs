//! Workload profiles in the pool (seed 003: the pool is the seed's shared disk): the records
//! of `TIERMALLOC_PROFILE=NAME` when `TIERMALLOC_POOL` is set, readable by every process on
//! every host that maps the pool.
//!
//! They live in one space of the pool, `tiermalloc.profiles`, created by the first process
//! that needs it (as the share arena is, `share::open_or_create`), kept open by every process
//! using it (a reference: collection never deletes it) and mapped read-write:
//!
//! ```text
//! 0     TABLE_MAGIC, slots, fields, runs, live (the shape), 3 words reserved
//! 64    SLOTS slots of `lockfree::run_records` (one per profile name): the last RUNS runs
//!       of the name, and LIVE entries for its running processes
//! ```
//!
//! A record's fields are `FIELDS` words (`F_*`): the peaks, and the run's slabs on private
//! device tiers (`F_SLABS`: the most slabs of each lane and size class in use at once, the
//! `SLAB_PEAKS` largest, packed by `profile::store`), which the next run cuts ahead as it
//! does from a directory's records. The live entries are tagged with the node's
//! registry tag, so a peer is judged live or dead as every node is (`Pool::tag_live`: its pid
//! on this host, its lease elsewhere), and a dead peer's entry is taken by the next process
//! that needs one. Every change is a CAS or store on a device word: no host lock.

use super::Pool;
use crate::lockfree::run_records::{Entry, Shape, Slot, Table, NAME_WORDS};
use core::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const SPACE_NAME: &[u8] = b"tiermalloc.profiles";
/// "TMPROF02" as a little-endian u64 (01: no slab words; its table is refused for its shape,
/// and the records go to the directory).
const TABLE_MAGIC: u64 = u64::from_le_bytes(*b"TMPROF02");
const HEADER_WORDS: usize = 8;
const SLOTS: usize = 64;
/// Runs kept per name (`profile::record::HISTORY_RUNS`, asserted there).
pub(crate) const RUNS: usize = 5;

/// A run's fields, in this order.
pub(crate) const F_DRAM_PEAK: usize = 0;
pub(crate) const F_POOL_PEAK: usize = 1;
pub(crate) const F_MS_TO_PEAK: usize = 2;
pub(crate) const F_UNIX_SECS: usize = 3;
pub(crate) const F_PID: usize = 4;
pub(crate) const F_HOST: usize = 5;
pub(crate) const F_POOL_MS_TO_PEAK: usize = 6;
/// Peak use of each private device tier (`cxl`, `cmb`, `pmr`).
pub(crate) const F_DEVICE_PEAKS: [usize; 3] = [7, 8, 9];
/// The run's slab peaks, two to a word (`profile::store::pack_slab_peak`; 0: none).
pub(crate) const F_SLABS: usize = 10;
pub(crate) const SLAB_WORDS: usize = 32;
/// Slab peaks a record keeps (two to a word): a run with more keeps those with the most
/// slabs.
pub(crate) const SLAB_PEAKS: usize = 2 * SLAB_WORDS;
pub(crate) const FIELDS: usize = F_SLABS + SLAB_WORDS;
const _: () = assert!(FIELDS <= crate::lockfree::run_records::MAX_FIELDS);

const SHAPE: Shape = Shape {
    fields: FIELDS,
    runs: RUNS,
    live: 8,
};
const TABLE_BYTES: usize = (HEADER_WORDS + SLOTS * SHAPE.slot_words()) * 8;

/// The profile records of this process's pool.
pub(crate) struct ProfileRecords {
    pool: Arc<Pool>,
    table: Table<'static>,
    /// This node's registry tag.
    tag: u64,
}

/// A running process's live entry: the words peers read as its peaks.
pub(crate) struct LiveEntry {
    slot: Slot<'static>,
    index: usize,
    tag: u64,
}

impl LiveEntry {
    /// The word peers read as this process's peak use of the DRAM tier.
    pub(crate) fn dram_peak(&self) -> &'static AtomicU64 {
        self.slot.live_word(self.index, F_DRAM_PEAK)
    }
    /// The word peers read as this process's peak use of the pool tier.
    pub(crate) fn pool_peak(&self) -> &'static AtomicU64 {
        self.slot.live_word(self.index, F_POOL_PEAK)
    }
    /// The word peers read as this process's peak use of private device tier `KINDS[i]`.
    pub(crate) fn device_peak(&self, i: usize) -> &'static AtomicU64 {
        self.slot.live_word(self.index, F_DEVICE_PEAKS[i])
    }
    /// Gives the entry back (the process finishes).
    pub(crate) fn remove(self) {
        self.slot.live_release(self.index, self.tag);
    }
}

/// Why the pool could not hold a profile.
pub(crate) type Why = &'static str;

impl ProfileRecords {
    /// The records of the pool `TIERMALLOC_POOL` names, creating their space if no process
    /// has yet; `Err` says why there are none (the caller falls back to the directory).
    pub(crate) fn open() -> Result<ProfileRecords, Why> {
        Self::open_in(
            super::global()
                .ok_or("the pool could not be opened")?
                .clone(),
        )
    }

    /// The records of `pool`.
    pub(crate) fn open_in(pool: Arc<Pool>) -> Result<ProfileRecords, Why> {
        let tag = pool.me().map_err(|_| "cannot join the pool's registry")?;
        let (offset, len) = super::share::open_or_create(
            &pool,
            SPACE_NAME,
            || create(&pool),
            "cannot create the pool's space tiermalloc.profiles",
        )
        .map_err(|p| p.what)?;
        if len < TABLE_BYTES as u64 {
            return Err("the pool's space tiermalloc.profiles is too small");
        }
        // The whole space (whole granules: a device maps nothing smaller).
        let region = crate::backend::map_shared_range(
            pool.fd,
            pool.spec.offset + offset,
            len as usize,
            pool.regular,
        )
        .map_err(|p| p.what)?;
        // SAFETY: the space, at least TABLE_BYTES, mapped shared for the rest of the process (never
        // unmapped: live entries are written until exit), accessed only through atomics.
        let words: &'static [AtomicU64] = unsafe {
            core::slice::from_raw_parts(region.base as *const AtomicU64, TABLE_BYTES / 8)
        };
        let shape_ok = words[1].load(Ordering::Acquire) == SLOTS as u64
            && words[2].load(Ordering::Acquire) == SHAPE.fields as u64
            && words[3].load(Ordering::Acquire) == SHAPE.runs as u64
            && words[4].load(Ordering::Acquire) == SHAPE.live as u64;
        if words[0].load(Ordering::Acquire) != TABLE_MAGIC || !shape_ok {
            return Err(
                "the pool's space tiermalloc.profiles holds no profile table of this version",
            );
        }
        Ok(ProfileRecords {
            pool,
            table: Table {
                words: &words[HEADER_WORDS..],
                shape: SHAPE,
            },
            tag,
        })
    }

    fn slot(&self, name: &[u8], claim: bool) -> Option<Slot<'static>> {
        let words: [u64; NAME_WORDS] = super::layout::name_words(name);
        self.table.find(&words, claim)
    }

    /// The recorded runs of `name` (at most RUNS, in no particular order).
    pub(crate) fn history(&self, name: &[u8]) -> Vec<[u64; FIELDS]> {
        let Some(slot) = self.slot(name, false) else {
            return Vec::new();
        };
        (0..SHAPE.runs)
            .filter_map(|i| {
                let mut out = [0u64; FIELDS];
                (slot.read(i, &mut out) == Entry::Whole).then_some(out)
            })
            .collect()
    }

    /// Every entry of `name`'s runs: the whole records, and how many entries a writer took
    /// that are not (being written, their writer killed, or mixed by two writers).
    pub(crate) fn entries(&self, name: &[u8]) -> (Vec<[u64; FIELDS]>, usize) {
        let Some(slot) = self.slot(name, false) else {
            return (Vec::new(), 0);
        };
        let mut whole = Vec::new();
        let mut not = 0;
        for i in 0..SHAPE.runs {
            let mut out = [0u64; FIELDS];
            match slot.read(i, &mut out) {
                Entry::Whole => whole.push(out),
                _ => not += slot.written(i) as usize,
            }
        }
        (whole, not)
    }

    /// Records a run of `name`.
    pub(crate) fn append(&self, name: &[u8], run: [u64; FIELDS]) -> Result<(), Why> {
        let slot = self
            .slot(name, true)
            .ok_or("the pool's profile table is full (64 names)")?;
        if slot.append(&run) {
            Ok(())
        } else {
            Err("overtaken by as many other runs finishing at once as the table keeps")
        }
    }

    /// The figures (`F_*`: the peaks) of the live processes of `name`, this one excepted.
    pub(crate) fn live_peers(&self, name: &[u8]) -> Vec<[u64; FIELDS]> {
        let mut peers = Vec::new();
        if let Some(slot) = self.slot(name, false) {
            slot.live_figures(|tag, f| {
                if tag != self.tag && self.pool.tag_live(tag) {
                    let mut figures = [0u64; FIELDS];
                    figures.copy_from_slice(&f[..FIELDS]);
                    peers.push(figures);
                }
            });
        }
        peers
    }

    /// Claims this process's live entry under `name`.
    pub(crate) fn publish_live(&self, name: &[u8]) -> Result<LiveEntry, Why> {
        let slot = self
            .slot(name, true)
            .ok_or("the pool's profile table is full (64 names)")?;
        let index = slot
            .live_claim(self.tag, |t| !self.pool.tag_live(t))
            .ok_or("8 live processes of this profile already")?;
        Ok(LiveEntry {
            slot,
            index,
            tag: self.tag,
        })
    }

    /// This host's identity, as records name it.
    pub(crate) fn host(&self) -> u64 {
        self.pool.host
    }
}

/// Creates and publishes the profile space.
fn create(pool: &Arc<Pool>) -> Result<(), i32> {
    let base = pool.create(SPACE_NAME, TABLE_BYTES as u64)?;
    // SAFETY: the new space is mapped read-write for its creator, TABLE_BYTES long, zeroed.
    let header = unsafe { core::slice::from_raw_parts(base as *const AtomicU64, HEADER_WORDS) };
    header[1].store(SLOTS as u64, Ordering::Relaxed);
    header[2].store(SHAPE.fields as u64, Ordering::Relaxed);
    header[3].store(SHAPE.runs as u64, Ordering::Relaxed);
    header[4].store(SHAPE.live as u64, Ordering::Relaxed);
    header[0].store(TABLE_MAGIC, Ordering::Release);
    pool.publish(base)
}
