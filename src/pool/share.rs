//! Shares of the pool (seed 000): the capacity behind tiers `KIND:pool,share=SIZE`.
//!
//! The pool's capacity for shares is one space of the pool, the *arena*, named
//! `tiermalloc.shares`: the first node that needs it creates it (`size=` of the tier, else all
//! the pool's free bytes), writes its table and publishes it; every node keeps it open (a
//! reference, so collection never deletes it while a node lives) and maps it read-write
//! itself. Its first 16 KiB are the lend table (`lockfree::lend_table`: one word per extent,
//! owner, holder, idle), then the extents:
//!
//! ```text
//! 0     TABLE_MAGIC, extent bytes, extent count, 5 words reserved
//! 64    one lend word per extent (at most MAX_EXTENTS)
//! 16384 extent 0, extent 1, ...  (each `extent` bytes)
//! ```
//!
//! A node joining is granted its share out of the unassigned extents, idle. Its tier
//! (`device::outside`) asks for an extent when its heap is full: one of its own idle ones;
//! else its share topped up again if extents were returned to the pool; else a loan, from a
//! node of the same host first, then of another host (`LendTable::borrow`: a node whose share
//! has an idle extent answers *idle* by that word, and the one CAS that takes it moves the
//! extent from the lender's account to the borrower's, recorded in both by that word); else
//! what dead nodes hold is reclaimed and it asks once more; else every node is saturated and
//! the request fails (a plain `malloc` spills to the next tier, `tm_malloc` gets ENOMEM). An
//! extent whose last block is freed goes back at once: an own one becomes idle (lendable), a
//! borrowed one returns to its owner. A node that dies holds nothing for long: its pid gone
//! (same host) or its lease run out (another host), `reclaim` returns its borrowed extents to
//! their owners and its share to the pool. No host lock is taken anywhere: every change is a
//! CAS on a device word.
//!
//! Node tags in the table are the registry's tags (`layout::node_tag`) cut to 31 bits;
//! `live_lend_tag` checks one against its slot's current tag.
//!
//! The registry slot of each node shows its share, in use, lent and borrowed in bytes
//! (`NODE_SHARE`..`NODE_BORROWED`): the node changing a lend word stores the figures of both
//! nodes it concerns, and `tm_pool_nodes` reads them from the table itself (`accounts`).
//!
//! The table's words must be coherent between the nodes (one host, or a CXL device with
//! hardware coherence): a CAS on a non-coherent mapping means nothing.

use super::layout::*;
use super::Pool;
use crate::backend::{self, Problem};
use crate::config::TierSpec;
use crate::device::outside::ExtentSource;
use crate::lockfree::lend_table::{self, Account, LendTable};
use core::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

const ARENA_NAME: &[u8] = b"tiermalloc.shares";
/// "TMSHARE1" as a little-endian u64.
const TABLE_MAGIC: u64 = u64::from_le_bytes(*b"TMSHARE1");
/// 16 KiB, so that extents start on a slab boundary (`device::outside`).
const TABLE_BYTES: u64 = 16384;
const T_MAGIC: usize = 0;
const T_EXTENT: usize = 1;
const T_COUNT: usize = 2;
/// The first lend word.
const T_WORDS: usize = 8;
pub(crate) const MAX_EXTENTS: usize = crate::device::outside::MAX_EXTENTS;
const _: () = assert!(T_WORDS + MAX_EXTENTS <= TABLE_BYTES as usize / 8);
const DEFAULT_EXTENT: u64 = 1 << 20;
const TAG_MASK: u64 = 0x7fff_ffff;

/// This process's share of the pool: the arena mapped, its table, this node.
pub(crate) struct Shares {
    pool: Arc<Pool>,
    /// The arena's table (its first `T_WORDS + count` words).
    table: &'static [AtomicU64],
    extent: u64,
    count: usize,
    /// This node's tag in the table.
    me: u64,
    /// The share asked for, in extents (`share=`, raised by a profile's reservation).
    want: core::sync::atomic::AtomicUsize,
    /// The process that joined as `me`: a forked child (whose copy of the tier is private,
    /// `device::fork`) asks for and gives back nothing.
    pid: u32,
}

// Set while this thread asks for capacity: `reclaim` may allocate (it reads /proc), and an
// allocation made meanwhile must not come back here (it spills to the next tier instead).
pub(crate) static NOT_ASKING: u8 = 0;
pub(crate) static ASKING: u8 = 1;
crate::thread_slot::initial_exec_word!(
    asking_word,
    "__tiermalloc_pool_asking",
    crate::pool::share::NOT_ASKING
);

fn asking() -> bool {
    asking_word::get() == core::ptr::addr_of!(ASKING) as usize
}

impl Shares {
    fn words(&self) -> LendTable<'_> {
        LendTable {
            words: &self.table[T_WORDS..T_WORDS + self.count],
        }
    }

    /// Whether the node a table tag names still lives.
    fn live(&self, lend_tag: u64) -> bool {
        live_lend_tag(&self.pool, lend_tag)
    }

    /// Same host first (rank 0), then other hosts.
    fn rank(&self, lend_tag: u64) -> u32 {
        let Some(slot) = slot_of_tag(lend_tag) else {
            return 2;
        };
        (self.pool.load(node_at(slot) + NODE_HOST) != self.pool.host) as u32
    }

    /// Stores `lend_tag`'s figures into its registry slot (if the slot is still its), and
    /// returns them (in extents).
    fn record(&self, lend_tag: u64) -> Account {
        let a = self.words().account(lend_tag);
        store_account(&self.pool, lend_tag, a, self.extent);
        a
    }

    /// An extent: (index, borrowed).
    fn ask(&self) -> Option<(usize, bool)> {
        let t = self.words();
        if let Some(i) = t.take_own(self.me) {
            return Some((i, false));
        }
        // Extents that came back to the pool make the share whole again.
        let share = t.account(self.me).share as usize;
        let want = self.want.load(Ordering::Relaxed);
        if share < want && t.grant(self.me, want - share) > 0 {
            if let Some(i) = t.take_own(self.me) {
                return Some((i, false));
            }
        }
        let i = t.borrow(self.me, |owner| self.rank(owner))?;
        let (owner, _, _) = lend_table::parts(self.table[T_WORDS + i].load(Ordering::Relaxed));
        self.record(owner);
        Some((i, true))
    }
}

impl ExtentSource for Shares {
    fn acquire(&self) -> Option<(usize, bool)> {
        if asking() || super::getpid() != self.pid {
            return None;
        }
        asking_word::set(core::ptr::addr_of!(ASKING) as usize);
        let got = self.ask().or_else(|| {
            // Every node answered saturated: take back what dead nodes hold, then ask again.
            let reclaimed = self.words().reclaim(|tag| self.live(tag));
            (reclaimed > 0).then(|| self.ask()).flatten()
        });
        asking_word::set(core::ptr::addr_of!(NOT_ASKING) as usize);
        let a = self.record(self.me);
        note_in_use(a.in_use * self.extent);
        got
    }

    fn release(&self, index: usize) {
        if super::getpid() != self.pid {
            return;
        }
        let word = self.table[T_WORDS + index].load(Ordering::Relaxed);
        if self.words().release(self.me, index) {
            let (owner, _, _) = lend_table::parts(word);
            if owner != self.me {
                self.record(owner);
            }
            self.record(self.me);
        }
    }

    fn lent_and_borrowed(&self) -> (u64, u64) {
        let a = self.words().account(self.me);
        (a.lent * self.extent, a.borrowed * self.extent)
    }
}

/// Whether the node `lend_tag` (a registry tag cut to 31 bits) names still lives.
fn live_lend_tag(pool: &Pool, lend_tag: u64) -> bool {
    let Some(slot) = slot_of_tag(lend_tag) else {
        return false;
    };
    let (_, incarnation, _) = node_state_parts(pool.load(node_at(slot) + NODE_STATE));
    let tag = node_tag(slot, incarnation);
    tag & TAG_MASK == lend_tag && pool.tag_live(tag)
}

/// Stores an account into the registry slot of `lend_tag`, if that slot is still its.
fn store_account(pool: &Pool, lend_tag: u64, a: Account, extent: u64) {
    let Some(slot) = slot_of_tag(lend_tag) else {
        return;
    };
    let at = node_at(slot);
    let (_, incarnation, _) = node_state_parts(pool.load(at + NODE_STATE));
    if node_tag(slot, incarnation) & TAG_MASK != lend_tag {
        return;
    }
    for (off, extents) in [
        (NODE_SHARE, a.share),
        (NODE_IN_USE, a.in_use),
        (NODE_LENT, a.lent),
        (NODE_BORROWED, a.borrowed),
    ] {
        pool.word(at + off)
            .store(extents * extent, Ordering::Release);
    }
    pool.write_back_meta(at + NODE_SHARE, 32);
}

static SHARES: OnceLock<Shares> = OnceLock::new();

/// The most bytes of extents this node's tier has held in use (own and borrowed), and
/// `os::coarse_now_ns` when that was reached: what a profile records for the pool tier.
static PEAK: AtomicU64 = AtomicU64::new(0);
static PEAK_AT_NS: AtomicU64 = AtomicU64::new(0);
/// The word of this process's live profile record that peers read as its pool peak (null:
/// none).
static PEAK_WORD: core::sync::atomic::AtomicPtr<AtomicU64> =
    core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());

fn note_in_use(bytes: u64) {
    if bytes > PEAK.load(Ordering::Relaxed) && PEAK.fetch_max(bytes, Ordering::Relaxed) < bytes {
        PEAK_AT_NS.store(crate::os::coarse_now_ns(), Ordering::Relaxed);
        let word = PEAK_WORD.load(Ordering::Acquire);
        if !word.is_null() {
            // SAFETY: the live record stays mapped for the process's life (`publish_peak_to`).
            unsafe { (*word).fetch_max(bytes, Ordering::Relaxed) };
        }
    }
}

/// The pool tier's peak use in bytes and when it was reached (`os::coarse_now_ns`); (0, 0)
/// without a pool tier.
pub(crate) fn peak() -> (u64, u64) {
    (
        PEAK.load(Ordering::Relaxed),
        PEAK_AT_NS.load(Ordering::Relaxed),
    )
}

/// From now on the pool tier's peak is also raised in `word` (null: no longer), which must
/// stay mapped for the rest of the process.
pub(crate) fn publish_peak_to(word: *mut AtomicU64) {
    PEAK_WORD.store(word, Ordering::Release);
    if !word.is_null() {
        // SAFETY: the caller's contract.
        unsafe { (*word).fetch_max(PEAK.load(Ordering::Relaxed), Ordering::Relaxed) };
    }
}

/// The reservation of a profile (seed 003) on the pool tier: raises this node's share to
/// `bytes` (whole extents) out of the pool's unassigned capacity, at start, so the extents the
/// workload used last time are its own before it asks (beyond them it borrows on demand, as
/// any node). Returns the share now held, in bytes; `Err` when there is no pool tier. Extents
/// of the share the tier does not hold are idle, so lendable, as every share's are.
pub(crate) fn reserve(bytes: u64) -> Result<u64, &'static str> {
    let shares = SHARES
        .get()
        .ok_or("no pool tier (cxl:pool,share=) is open")?;
    let want = bytes.div_ceil(shares.extent) as usize;
    if want > shares.want.load(Ordering::Relaxed) {
        shares.want.store(want, Ordering::Relaxed);
    }
    let t = shares.words();
    let share = t.account(shares.me).share as usize;
    if share < want {
        t.grant(shares.me, want - share);
    }
    Ok(shares.record(shares.me).share * shares.extent)
}

/// Opens the tier `spec` describes (`KIND:pool,share=SIZE`) over the arena of the pool
/// `TIERMALLOC_POOL` names, creating the arena if no node has yet. A tier that cannot be had
/// is reported in one line by the caller (`device::outside::open_lent`).
pub(crate) fn open_tier(spec: &TierSpec) -> Result<(), Problem> {
    let pool = super::global()
        .ok_or(Problem::new(
            "needs a pool: TIERMALLOC_POOL is unset or could not be opened",
        ))?
        .clone();
    let full_tag = pool.me().map_err(|e| Problem {
        errno: e,
        ..Problem::new("cannot join the pool's registry")
    })?;
    let (offset, len) = arena(&pool, spec)?;
    let region = backend::map_shared_range(
        pool.fd,
        pool.spec.offset + offset,
        len as usize,
        pool.regular,
    )?;
    // SAFETY: the arena's first 16 KiB are mapped shared and live as long as the process (the
    // tier is never closed); its words are only accessed atomically.
    let table: &'static [AtomicU64] = unsafe {
        core::slice::from_raw_parts(region.base as *const AtomicU64, TABLE_BYTES as usize / 8)
    };
    let extent = table[T_EXTENT].load(Ordering::Acquire);
    let count = table[T_COUNT].load(Ordering::Acquire) as usize;
    if table[T_MAGIC].load(Ordering::Acquire) != TABLE_MAGIC
        || count == 0
        || count > MAX_EXTENTS
        || !extent.is_power_of_two()
        || TABLE_BYTES + count as u64 * extent > len
    {
        return Err(Problem::new(
            "the pool's space tiermalloc.shares holds no share table",
        ));
    }
    let share = spec.share.unwrap_or(0);
    let want = share.div_ceil(extent) as usize;
    let shares = Shares {
        pool,
        table,
        extent,
        count,
        me: full_tag & TAG_MASK,
        want: core::sync::atomic::AtomicUsize::new(want),
        pid: super::getpid(),
    };
    // What dead nodes left is the pool's again before this node takes its share.
    shares.words().reclaim(|tag| shares.live(tag));
    let got = shares.words().grant(shares.me, want);
    shares.record(shares.me);
    if got < want {
        crate::os::write_stderr(
            b"tiermalloc: TIERMALLOC_TIERS: pool tier: the pool had less unassigned capacity than \
              share= asks; the rest is borrowed from other nodes when needed\n",
        );
    }
    let region = crate::backend::Region {
        len: (TABLE_BYTES + count as u64 * extent) as usize,
        ..region
    };
    let shares = SHARES.get_or_init(|| shares);
    let arena = crate::device::outside::Arena {
        first: TABLE_BYTES,
        extent,
        count,
    };
    crate::device::outside::open_lent(spec, region, shares, arena)
}

/// The arena's offset and length in the pool, creating (and publishing) it if no node has
/// yet; this node holds a reference to it from then on.
fn arena(pool: &Arc<Pool>, spec: &TierSpec) -> Result<(u64, u64), Problem> {
    open_or_create(
        pool,
        ARENA_NAME,
        || create_arena(pool, spec),
        "cannot create the pool's share arena (size= of the tier sets its size)",
    )
}

/// The offset and length in the pool of the well-known shared space `name`, which
/// `create` creates and publishes if no node has yet (`create_what` says what failed when it
/// cannot); this node holds a reference to it from then on.
pub(super) fn open_or_create(
    pool: &Arc<Pool>,
    name: &[u8],
    create: impl Fn() -> Result<(), i32>,
    create_what: &'static str,
) -> Result<(u64, u64), Problem> {
    let started = super::realtime_ns();
    loop {
        match pool.open_shared(name, super::spaces::MapHow::Read) {
            Ok(_) => {
                let entry = pool
                    .find(name, |s| s == SPACE_SHARED)
                    .ok_or(Problem::new("a space of the pool vanished while opened"))?;
                return Ok((entry.offset(), entry.len()));
            }
            Err(libc::ENOENT) => {}
            Err(e) => {
                return Err(Problem {
                    errno: e,
                    ..Problem::new("cannot open a space of the pool")
                })
            }
        }
        match create() {
            Ok(()) => continue,
            // Another node is creating it: wait for it to be published (or swept, if that
            // node died before).
            Err(libc::EEXIST) => {}
            Err(e) => {
                return Err(Problem {
                    errno: e,
                    ..Problem::new(create_what)
                })
            }
        }
        if super::realtime_ns() - started > 10_000_000_000 {
            return Err(Problem::new(
                "a space of the pool has been in creation for 10 s",
            ));
        }
        let _ = pool.sweep();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Creates the arena: `size=` of the tier, else every free byte of the pool, cut into at most
/// MAX_EXTENTS extents of `extent=` bytes (default 1 MiB, larger if the arena needs it).
fn create_arena(pool: &Arc<Pool>, spec: &TierSpec) -> Result<(), i32> {
    let free = pool.free_bytes();
    let bytes = spec.size.unwrap_or(free).min(free);
    let data = bytes.saturating_sub(TABLE_BYTES);
    let extent = spec
        .extent
        .unwrap_or_else(|| DEFAULT_EXTENT.max((data / MAX_EXTENTS as u64).next_power_of_two()));
    let count = ((data / extent) as usize).min(MAX_EXTENTS);
    if count == 0 {
        return Err(libc::ENOSPC);
    }
    let len = TABLE_BYTES + count as u64 * extent;
    let base = pool.create(ARENA_NAME, len)?;
    // SAFETY: the new space is mapped read-write for its creator, at least 16 KiB long, zeroed.
    let table = unsafe { core::slice::from_raw_parts(base as *const AtomicU64, T_WORDS) };
    table[T_EXTENT].store(extent, Ordering::Relaxed);
    table[T_COUNT].store(count as u64, Ordering::Relaxed);
    table[T_MAGIC].store(TABLE_MAGIC, Ordering::Release);
    pool.publish(base)
}

/// The table of `pool`'s arena, mapped for a look and for `reclaim` (`None`: no arena).
struct TableView {
    base: *mut libc::c_void,
    extent: u64,
    count: usize,
}

impl TableView {
    fn open(pool: &Pool) -> Option<TableView> {
        let entry = pool.find(ARENA_NAME, |s| s == SPACE_SHARED)?;
        // SAFETY: mapping the table of the pool's descriptor, shared.
        let base = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                TABLE_BYTES as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                pool.fd,
                (pool.spec.offset + entry.offset()) as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let mut view = TableView {
            base,
            extent: 0,
            count: 0,
        };
        let w = view.all();
        let (magic, extent, count) = (
            w[T_MAGIC].load(Ordering::Acquire),
            w[T_EXTENT].load(Ordering::Acquire),
            w[T_COUNT].load(Ordering::Acquire) as usize,
        );
        // A view that returns `None` unmaps itself (`Drop`).
        (view.extent, view.count) = (extent, count);
        (magic == TABLE_MAGIC && count <= MAX_EXTENTS).then_some(view)
    }

    fn all(&self) -> &[AtomicU64] {
        // SAFETY: the table mapped for as long as `self`, accessed atomically.
        unsafe {
            core::slice::from_raw_parts(self.base as *const AtomicU64, TABLE_BYTES as usize / 8)
        }
    }

    fn table(&self) -> LendTable<'_> {
        LendTable {
            words: &self.all()[T_WORDS..T_WORDS + self.count],
        }
    }
}

impl Drop for TableView {
    fn drop(&mut self) {
        // SAFETY: our own mapping, not used after this.
        unsafe { libc::munmap(self.base, TABLE_BYTES as usize) };
    }
}

impl Pool {
    /// The capacity figures of registry tag `tag`, in bytes, from the share table
    /// (`None`: the pool has no share arena). What dead nodes hold is reclaimed first.
    pub(crate) fn share_account(&self, tag: u64) -> Option<Account> {
        let view = TableView::open(self)?;
        view.table().reclaim(|t| live_lend_tag(self, t));
        let a = view.table().account(tag & TAG_MASK);
        let e = view.extent;
        Some(Account {
            share: a.share * e,
            in_use: a.in_use * e,
            lent: a.lent * e,
            borrowed: a.borrowed * e,
        })
    }
}

/// Who lent to whom in this process's pool (its share tier's): `f(lender pid, borrower pid,
/// bytes)` once per pair, no more than 32 pairs. Allocates nothing (a statistics report
/// calls it, perhaps from a signal handler).
pub fn for_each_loan(mut f: impl FnMut(u32, u32, u64)) {
    let Some(shares) = SHARES.get() else {
        return;
    };
    let mut pairs = [(0u64, 0u64, 0u64); 32];
    let mut n = 0;
    shares.words().loans(|lender, borrower| {
        match pairs[..n]
            .iter_mut()
            .find(|p| p.0 == lender && p.1 == borrower)
        {
            Some(p) => p.2 += 1,
            None if n < 32 => {
                pairs[n] = (lender, borrower, 1);
                n += 1;
            }
            None => {}
        }
    });
    let pid = |tag: u64| {
        slot_of_tag(tag).map_or(0, |slot| shares.pool.load(node_at(slot) + NODE_PID) as u32)
    };
    for &(lender, borrower, extents) in &pairs[..n] {
        f(pid(lender), pid(borrower), extents * shares.extent);
    }
}
