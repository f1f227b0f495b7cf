//! Device tiers: a region mapped by `backend`, served by an extent heap (`extent_heap`),
//! blocks of up to 4080 bytes grouped in slabs (`slabs`), a header before every block
//! (`header`); every piece of metadata lives in host DRAM.
//!
//! Device memory is only ever written, and only headers: `malloc` writes the block's whole
//! header (size, magic, kind, state) in one 16-byte store, `free` writes the state. The size
//! on `free` and `malloc_usable_size` comes from the host-side extent map, never from the
//! header, so neither operation reads the device. A free of a pointer the host metadata does
//! not know as a live block start (a double free, a pointer into a block) is refused before
//! anything is written, and reported.
//!
//! The region starts with a superblock and its headers form a chain a later run recovers
//! (`persist`): opening a tier formats its region or rebuilds the heap from it; a block cut
//! from free space (`publish`), a slab retired, a block resized in place write the few header
//! bytes more the chain needs, in the order `persist` gives, under the heap lock.
//!
//! `fork` handling (a child's private copy of a shared region, the locks held across it) is in
//! `fork`. The opened tiers are kept here, one per kind, for the layers above (`get`).
//!
//! Room is left by name for `device/evacuate` (moving live blocks, same addresses).

pub mod evacuate;
pub(crate) mod extent_cache;
pub mod extent_heap;
pub(crate) mod extent_stash;
pub mod fork;
mod free_space;
pub mod header;
pub mod heartbeat;
pub(crate) mod outside;
mod own_line;
pub mod persist;
pub(crate) mod reserve_use;
pub mod slabs;
mod slabs_ahead;
pub(crate) mod slot_cache;
mod stash_use;
mod touched_pages;

use crate::backend::{self, Problem, Region};
use crate::config::TierSpec;
use crate::kind::{Fit, Kind};
use crate::os;
use crate::pagemap::{self, ChunkTag};
use crate::stats::{SharedCounter, TierCounters, TierStats};
use core::ffi::CStr;
use core::fmt::Write;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use evacuate::{DeviceState, LiveExtents};
use extent_cache::{CacheFree, Evicted, ExtentCache, Held, Pushed};
use extent_heap::{Carved, ExtentHeap, FreeError, HeapStats};
use header::{BlockHeader, HEADER_MAGIC, HEADER_SIZE, STATE_ALLOCATED, STATE_FREE};
use own_line::OwnLine;
use persist::{media, owner, recover::Extent, Opening, STATE_SLAB, SUPERBLOCK_BYTES};
use slabs::{SlabTotals, Slabs, SLAB_BYTES};

/// Every extent offset and length is a multiple of this: the header size, so that a block
/// (16 bytes after its extent's start) can be aligned to any power of two.
const GRANULE: u64 = HEADER_SIZE;
/// Slab descriptors a recovery makes present at a time, ahead of the scan (`metadata`).
const DESCS_AHEAD: usize = 512;

// Test-only: makes `publish` write in a wrong order (the crash-point checker's self-test).
#[cfg(test)]
std::thread_local! {
    pub(crate) static BREAK_ORDER: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// One configured device tier.
///
/// Invariants: the heap manages offsets `[0, region.len)`; an allocated extent at `off` is
/// either a block, with its header at `region.base + off` and the block 16 bytes on, or a slab
/// of `slabs` (its slots laid out the same way); the page map tags every chunk of
/// `region.reserved` with this tier's kind. Lock order: a slab class's lock, then a lane of
/// the extent cache, then the heap's.
pub(crate) struct DeviceTier {
    pub kind: Kind,
    region: Region,
    heap: OwnLine<crate::futex_mutex::Mutex<ExtentHeap>>,
    /// Blocks of up to 4080 bytes, in slabs (`device_slabs`).
    slabs: Slabs,
    /// Freed blocks of 4 KiB to 256 KiB kept per lane, and their live bits (`extent_cache`);
    /// `None` for a tier lent its capacity (its extents go back to the pool) or when host
    /// memory for its table could not be had.
    cache: Option<ExtentCache>,
    /// Whether frees and requests use `cache`'s lanes (`lanes`): under best fit only (a cached
    /// extent is a good fit, at most a quarter longer than asked; worst fit's point is the
    /// largest hole), never in an inherited tier. `extent_cache::SPAN` while they do, 0 while
    /// they do not: one load and one compare on a request's hit path answer "is there a
    /// cache", "is it on" and "is the length one it serves" (`cache_for`). Invariant: nonzero
    /// only while `cache` is `Some`.
    lanes_span: AtomicU64,
    /// The second word of a live block's header (magic, kind, "allocated": `BlockHeader::tail`),
    /// made once: a request's hit path loads it into the header's store (`write_header`).
    live_tail: u64,
    /// The id under which threads cache this tier's slab slots (`slot_cache`); 0: they do not.
    slot_cache_id: AtomicU64,
    /// The most slot bytes one thread caches for this tier.
    slot_budget: u64,
    /// The most bytes (extent lengths) this tier serves at once (`limit=`).
    limit: u64,
    /// Blocks allocated and freed outside slabs (slabs count their own).
    allocations: OwnLine<SharedCounter>,
    frees: OwnLine<SharedCounter>,
    /// Failures and spills, bumped by placement.
    pub counters: TierCounters,
    /// The mapping is shared with the processes this one forks (until a child handler makes
    /// its own copy private).
    shared_across_fork: AtomicBool,
    /// Set in a forked child whose shared region could not be made private (see the module
    /// comment); never cleared.
    inherited: AtomicBool,
    /// Serialises changes to the roots table, and reads against them (`persist::roots`).
    roots: crate::futex_mutex::Mutex<()>,
    /// The device behind the region now, and a live move onto another one (`evacuate`).
    device: DeviceState,
    /// Whether the run before this open closed the heap cleanly (its dirty flag clear);
    /// `None` when this open formatted the region.
    previous_run_clean: Option<bool>,
    /// The process that opened the tier: only it closes the heap cleanly (a forked child
    /// exiting must not mark a heap clean that its parent still writes).
    opened_by: i32,
    /// Our claim on the region's owner record (`persist::owner`), `None` on anonymous memory.
    claim: Option<owner::Claim>,
    /// Capacity lent from outside, extent by extent (a pool tier, `outside`); `None`: the
    /// whole region is the tier's.
    outside: Option<outside::Outside>,
    /// The last slab cut, whose writes a cut at the same place need not repeat
    /// (`persist::slab_memo`); under the heap lock.
    slab_memo: OwnLine<persist::SlabMemo>,
    /// The region's pages known present, so that a cut's writes under the heap lock do not
    /// fault (`touched_pages`).
    touched: touched_pages::TouchedPages,
}

impl DeviceTier {
    /// Maps and prepares the tier `spec` describes: formats its region, or recovers the
    /// heap it holds, or refuses it (`persist::decide`).
    pub fn open(spec: &TierSpec) -> Result<DeviceTier, Problem> {
        let region = backend::map_region(spec).map_err(|problem| match spec.path() {
            // This host's lock refused it: name the owner the record holds.
            Some(path) if problem.what == backend::IN_USE => Problem {
                holder: owner::named_in_file(path, spec.offset),
                ..problem
            },
            _ => problem,
        })?;
        let mut claim = None;
        let built = persist::decide(&region, spec)
            .and_then(|opening| evacuate::stitch_split_heap(&region, spec, opening))
            .and_then(|opening| {
                claim = Self::claim(&region)?;
                Self::metadata(&region, spec, opening)
            });
        let (heap, slabs, previous_run_clean, recovered_blocks) = match built {
            Ok(built) => built,
            Err(problem) => {
                if let Some(claim) = claim {
                    owner::release(&region, claim);
                }
                // SAFETY: nothing uses the region; recovery wrote nothing but marker states.
                unsafe { backend::unmap_region(region) };
                return Err(problem);
            }
        };
        let tier = Self::over(spec, region, heap, slabs, previous_run_clean, None, claim);
        // The live blocks recovered count as allocations of this run (`TierStats`), as their
        // slab slots do (`Slabs::adopt`): their frees never outnumber the allocations.
        tier.allocations.add(recovered_blocks);
        Ok(tier)
    }

    /// The tier over a mapped region and its host metadata.
    fn over(
        spec: &TierSpec,
        region: Region,
        mut heap: ExtentHeap,
        slabs: Slabs,
        previous_run_clean: Option<bool>,
        outside: Option<outside::Outside>,
        claim: Option<owner::Claim>,
    ) -> DeviceTier {
        heap.set_carve_from_end(true);
        let cache = match outside {
            None => ExtentCache::new(region.len as u64),
            Some(_) => None,
        };
        pagemap::set(
            region.base,
            region.reserved,
            ChunkTag::device(spec.kind),
            ChunkTag::device(spec.kind),
        );
        DeviceTier {
            kind: spec.kind,
            region,
            heap: OwnLine(crate::futex_mutex::Mutex::new(heap)),
            slabs,
            lanes_span: AtomicU64::new(if cache.is_some() && spec.fit == Fit::Best {
                extent_cache::SPAN
            } else {
                0
            }),
            cache,
            live_tail: BlockHeader {
                size: 0,
                magic: HEADER_MAGIC,
                kind: spec.kind as u16,
                state: STATE_ALLOCATED,
            }
            .tail(),
            slot_cache_id: AtomicU64::new(0),
            slot_budget: slot_cache::budget_of(region.len as u64),
            limit: spec.limit.unwrap_or(u64::MAX),
            allocations: OwnLine(SharedCounter::new()),
            frees: OwnLine(SharedCounter::new()),
            counters: TierCounters::new(),
            shared_across_fork: AtomicBool::new(region.shared_across_fork),
            inherited: AtomicBool::new(false),
            roots: crate::futex_mutex::Mutex::new(()),
            device: DeviceState::new(&region, spec),
            previous_run_clean,
            // SAFETY: no preconditions.
            opened_by: unsafe { libc::getpid() },
            claim,
            slab_memo: OwnLine(persist::SlabMemo::new(outside.is_none())),
            outside,
            touched: touched_pages::TouchedPages::new(region.len as u64),
        }
    }

    /// Claims the region's owner record for this process (`persist::owner`); `None` for
    /// memory no other process can map. A live owner refuses the open, named.
    fn claim(region: &Region) -> Result<Option<owner::Claim>, Problem> {
        if !owner::recorded(region) {
            return Ok(None);
        }
        owner::claim(region).map(Some).map_err(|holder| Problem {
            holder: Some(holder),
            ..Problem::new("is open in another process")
        })
    }

    /// Refreshes the owner record's heartbeat (the heartbeat thread, `heartbeat.rs`), in the
    /// process that opened the tier. False when the claim is no longer ours.
    pub fn heartbeat(&self) -> bool {
        match self.claim {
            // SAFETY: no preconditions.
            Some(claim) if unsafe { libc::getpid() } == self.opened_by => {
                owner::heartbeat(&self.backing(), claim)
            }
            _ => true,
        }
    }

    /// Whether this tier holds an owner record a heartbeat must keep fresh
    /// (`persist::owner::beats`).
    pub fn needs_heartbeat(&self) -> bool {
        self.claim.is_some() && owner::beats(&self.backing())
    }

    /// Whether the run before this open ended with a clean close (`None`: this open formatted
    /// the region).
    pub fn previous_run_clean(&self) -> Option<bool> {
        self.previous_run_clean
    }

    /// Closes the heap cleanly at process exit (`front::runtime`): every write of this run
    /// made durable, then the superblock's dirty flag cleared, so that the next open knows the
    /// run ended cleanly. Only in the process that opened the tier; a region in anonymous
    /// memory keeps nothing and is skipped. Writes by threads still running after this are
    /// crash-ordered like any other: the flag tells how the run ended, recovery does not
    /// depend on it. False if a flush failed (the flag then stays set).
    pub fn close_cleanly(&self) -> bool {
        if self.backing().media == backend::Media::Anonymous
            || self.outside.is_some()
            || self.inherited.load(Ordering::Relaxed)
            // SAFETY: no preconditions.
            || unsafe { libc::getpid() } != self.opened_by
        {
            return true;
        }
        let backing = self.backing();
        let clean = persist::superblock::mark_clean(&backing);
        if let Some(claim) = self.claim {
            owner::release(&backing, claim);
        }
        clean
    }

    /// The region as the device behind it now has it: media, barrier, register page and
    /// descriptor are the target's after a move (`evacuate`). Everything that makes writes
    /// durable goes through this.
    #[inline]
    fn backing(&self) -> Region {
        self.device.backing(&self.region)
    }

    /// `backing()` for one header store on a malloc or free path: `media::write_header` and
    /// `media::write_state` use only the region's base (the same on every device) and the
    /// media, so only the media is loaded.
    #[inline]
    fn store_target(&self) -> Region {
        Region {
            media: self.device.media(),
            ..self.region
        }
    }

    /// The host metadata of a region: a fresh heap after formatting it, or the heap its
    /// header chain holds (one scan, `persist::recover`).
    fn metadata(
        region: &Region,
        spec: &TierSpec,
        opening: Opening,
    ) -> Result<(ExtentHeap, Slabs, Option<bool>, u64), Problem> {
        const NO_MEMORY: &str = "no host memory for the tier's metadata";
        let len = region.len as u64;
        let mut builder =
            ExtentHeap::builder(len, GRANULE, spec.fit).ok_or(Problem::new(NO_MEMORY))?;
        let slabs = Slabs::new(len).ok_or(Problem::new(NO_MEMORY))?;
        builder.push(SUPERBLOCK_BYTES, false);
        // Live blocks outside slabs the recovery finds (slabs count their own slots).
        let mut blocks = 0;
        let previous_run_clean = match opening {
            Opening::Format => {
                persist::superblock::format(region, spec.kind as u32);
                builder.push(len - SUPERBLOCK_BYTES, true);
                None
            }
            Opening::Recover => {
                os::advise_sequential(region.base as *mut u8, region.len, region.lock_fd);
                // SAFETY: the region is mapped and readable; nothing else uses it yet.
                let image =
                    unsafe { core::slice::from_raw_parts(region.base as *const u8, region.len) };
                let clean = persist::superblock::read(image)
                    .is_some_and(|f| persist::superblock::closed_cleanly(&f));
                // Slab descriptors and live bits below this window are present
                // (`prefault_windows`).
                let mut descs_ready = 0;
                let scanned = persist::recover::scan(image, |offset, extent_len, extent| {
                    let free = match extent {
                        Extent::Free => true,
                        Extent::Block => {
                            blocks += 1;
                            false
                        }
                        Extent::EmptySlab => {
                            // Free space from now on: its marker must say so before a block
                            // is cut from it (the chain's invariant, `persist`).
                            media::write_state(region, offset, STATE_FREE);
                            true
                        }
                        Extent::Slab {
                            class,
                            live,
                            headers,
                        } => {
                            let window = (offset / SLAB_BYTES) as usize;
                            if window >= descs_ready {
                                // 512 windows (64 KiB of descriptors and as many of live
                                // bits, 8 MiB of region) at a time: at most that much made
                                // present for windows left without a slab.
                                slabs.prefault_windows(window, DESCS_AHEAD);
                                descs_ready = window + DESCS_AHEAD;
                            }
                            if !slabs.adopt(offset, class, live, headers) {
                                return false;
                            }
                            false
                        }
                    };
                    builder.push(extent_len, free)
                });
                if let Err(damage) = scanned {
                    return Err(Problem {
                        at: Some(damage.offset),
                        ..Problem::new(damage.what)
                    });
                }
                media::order(region);
                persist::superblock::mark_dirty(region);
                Some(clean)
            }
        };
        let heap = builder.finish().ok_or(Problem::new(NO_MEMORY))?;
        Ok((heap, slabs, previous_run_clean, blocks))
    }

    /// A block of at least `size` bytes aligned to `align` (a power of two ≥ 16), its header
    /// written; `None` if the tier is full or at its limit.
    pub fn alloc(&self, size: usize, align: usize) -> Option<*mut u8> {
        self.alloc_sized(size, align).map(|(p, _)| p.as_ptr())
    }

    /// `alloc`, with the block's usable size (what `usable_size` would answer), known here
    /// without a second lookup: the Rust `Allocator` returns it with every block. Inlined
    /// whole into its callers: a request served by the extent cache calls nothing. The block
    /// comes as `NonNull` from every path, so that no caller tests it for null.
    #[inline(always)]
    pub fn alloc_sized(&self, size: usize, align: usize) -> Option<(NonNull<u8>, usize)> {
        // A request for 0 bytes gets a block of one granule (slabs' smallest class), as on
        // DRAM: its usable size is not 0 (which `realloc` would take for "not a block"), and
        // its address is not the next block's header.
        if let Some(class) = Slabs::class_of(size, align) {
            return self.alloc_slot_block(class);
        }
        let len = (size.max(1) as u64).checked_add(HEADER_SIZE)?;
        if let Some(cache) = self.cache_for(len, align as u64) {
            // This thread's stash, no lock: the path of almost every request of a cached size,
            // which returns from here (the slow path's answer comes back in two registers).
            // No test of `inherited`: an inherited tier's lanes are off (`become_inherited`),
            // and the slow path asks.
            if let Some(stash) = extent_stash::current_for(cache) {
                // SAFETY: `current_for` gives this thread's own stash.
                if let Some((offset, extent)) = unsafe { stash.take(len) } {
                    self.hand_out_cached(cache, offset, extent);
                    return Some((self.block_nonnull(offset), (extent - HEADER_SIZE) as usize));
                }
            } else if let Some((offset, extent, wake)) = cache.try_pop(len) {
                // The lane free, no wait: a thread without a stash.
                self.hand_out_cached(cache, offset, extent);
                let block = (self.block_nonnull(offset), (extent - HEADER_SIZE) as usize);
                if wake {
                    return Some(Self::woken(cache, block));
                }
                return Some(block);
            }
        }
        self.alloc_block_slow(len, align as u64)
    }

    /// A block in a slab slot of `class` and its usable size (`alloc_sized`'s slab part): out
    /// of line and in two registers, so that a request outside the slabs saves no register
    /// for this one's call.
    #[inline(never)]
    fn alloc_slot_block(&self, class: usize) -> Option<(NonNull<u8>, usize)> {
        if self.inherited.load(Ordering::Relaxed) {
            return None;
        }
        let offset = self.alloc_slot(class)?;
        Some((
            NonNull::new(self.block_at(offset))?,
            slabs::usable_of(class) as usize,
        ))
    }

    /// The block whose extent (or slot) starts at `offset`.
    #[inline(always)]
    fn block_at(&self, offset: u64) -> *mut u8 {
        let p = (self.region.base + (offset + HEADER_SIZE) as usize) as *mut u8;
        if p.is_null() {
            // SAFETY: `base` is a mapping's address and `offset` a header's offset in it, so
            // the sum is an address in the mapping, never null. Said so that the callers'
            // test for a null block (a failed request) leaves the paths that found one.
            unsafe { core::hint::unreachable_unchecked() }
        }
        p
    }

    /// `block_at`, as the non-null address it is.
    #[inline(always)]
    fn block_nonnull(&self, offset: u64) -> NonNull<u8> {
        // SAFETY: never null (`block_at`).
        unsafe { NonNull::new_unchecked(self.block_at(offset)) }
    }

    /// Whether `p` lies in this tier's region (a caller that knows the tier skips the page
    /// map: the Rust `Allocator` of one tier).
    #[inline]
    pub fn holds(&self, p: *const u8) -> bool {
        (p as usize).wrapping_sub(self.region.base) < self.region.len
    }

    /// A new slab of `class` for `lane` (`Slabs::take`): its extent, claimed and its marker
    /// written.
    fn new_slab(&self, class: usize, lane: slabs::Lane) -> Option<u64> {
        self.new_slab_for(class, lane, false)
    }

    /// `new_slab`, or with `ahead` one cut ahead of need by a profile's fill thread
    /// (`slabs_ahead`): counted as held but not used, and cut without waiting for that fill.
    fn new_slab_for(&self, class: usize, lane: slabs::Lane, ahead: bool) -> Option<u64> {
        let claim = |offset| {
            self.slabs.claim(offset, class, lane);
            if ahead {
                self.slabs.note_ahead();
            }
        };
        let marker = STATE_SLAB | class as u16;
        self.alloc_extent(SLAB_BYTES, SLAB_BYTES, 0, marker, !ahead, claim)
            .map(|(offset, _)| offset)
    }

    /// Gives the extent of slab `slab`, whose last slot was given back, to the heap (under the
    /// slot's class lock: `Slabs::release`).
    fn retire_slab(&self, slab: u64) {
        // Retiring writes nothing to the device: the last slot's state, written by
        // `mark_free`, already makes the slab one with no live slot, free space to a recovery
        // scan. Its marker stays, as the head of free space, until a block or slab is cut over
        // it (`persist`: a marker whose slots are all free, or whose size a cut rewrote, is
        // free).
        let mut heap = self.heap.lock();
        // The slot's state ordered before the window is handed back (an `sfence` on DAX,
        // nothing on a file or BAR): a new slab of the same class made there by another
        // thread must not reach the device before it, or that slot would come back live.
        media::order(&self.backing());
        self.slabs.unclaim(slab);
        let freed = heap.free(slab);
        debug_assert!(freed.is_ok(), "a retired slab is an allocated extent");
        self.release_if_empty(&mut heap, slab);
    }

    /// A block outside the slabs, of at least `len` bytes (header included) aligned to
    /// `align`, when this thread's lane could not answer at once (`alloc_sized`): its address
    /// and usable size (in two registers: no answer through memory). Out of line, so that the
    /// hit path saves no registers.
    #[inline(never)]
    fn alloc_block_slow(&self, len: u64, align: u64) -> Option<(NonNull<u8>, usize)> {
        if self.inherited.load(Ordering::Relaxed) {
            return None;
        }
        let (offset, extent) = self.alloc_block_extent_slow(len, align)?;
        Some((
            NonNull::new(self.block_at(offset))?,
            (extent - HEADER_SIZE) as usize,
        ))
    }

    /// `block`, once a thread waiting for this thread's lane is woken (`try_pop`): out of line
    /// and last, a tail call.
    #[cold]
    #[inline(never)]
    fn woken(cache: &ExtentCache, block: (NonNull<u8>, usize)) -> (NonNull<u8>, usize) {
        cache.wake_own_lane();
        block
    }

    /// The extent cache, if a block of `len` bytes (header included) aligned to `align` is
    /// one it serves.
    #[inline(always)]
    fn cache_for(&self, len: u64, align: u64) -> Option<&ExtentCache> {
        let span = self.lanes_span.load(Ordering::Relaxed);
        if !extent_cache::served(len, align, span) {
            return None;
        }
        // SAFETY: `served` is false while `lanes_span` is 0, which it is unless `cache` is
        // `Some` (its invariant).
        Some(unsafe { self.cache_while_on() })
    }

    /// The extent cache if its lanes are on (`lanes_span`).
    #[inline(always)]
    fn lanes(&self) -> Option<&ExtentCache> {
        if self.lanes_span.load(Ordering::Relaxed) == 0 {
            return None;
        }
        // SAFETY: `lanes_span` is nonzero only while `cache` is `Some` (its invariant).
        Some(unsafe { self.cache_while_on() })
    }

    /// The extent cache, known to be there.
    ///
    /// # Safety
    /// `cache` is `Some` (`lanes_span` was seen nonzero: `cache` never changes after the tier
    /// is made).
    #[inline(always)]
    unsafe fn cache_while_on(&self) -> &ExtentCache {
        match &self.cache {
            Some(cache) => cache,
            // SAFETY: per the contract.
            None => unsafe { core::hint::unreachable_unchecked() },
        }
    }

    /// Turns the lanes on or off (no-op without a cache); the caller empties them after
    /// turning them off.
    fn set_lanes(&self, on: bool) {
        let span = if on && self.cache.is_some() {
            extent_cache::SPAN
        } else {
            0
        };
        self.lanes_span.store(span, Ordering::Relaxed);
    }

    /// Makes the extent a lane gave out a live block: its whole header, then its live bit.
    #[inline(always)]
    fn hand_out_cached(&self, cache: &ExtentCache, offset: u64, extent: u64) {
        self.write_header(offset, extent);
        cache.revive(offset, extent);
    }

    /// The extent of a block outside the slabs, its header written, when the lane could not
    /// answer at once: the lane waited for (or given to this thread first), then the heap.
    /// Counted (the lane counts its own).
    #[inline(always)]
    fn alloc_block_extent_slow(&self, len: u64, align: u64) -> Option<(u64, u64)> {
        let cache = self.cache_for(len, align);
        if let Some(cache) = cache {
            let found = self.take_from_stash(cache, len).or_else(|| cache.pop(len));
            if let Some((offset, extent)) = found {
                self.hand_out_cached(cache, offset, extent);
                return Some((offset, extent));
            }
        }
        let (offset, extent) =
            self.alloc_extent(len, align, HEADER_SIZE, STATE_ALLOCATED, true, |_| {})?;
        if let Some(cache) = cache.filter(|_| extent_cache::cached_size(extent, align)) {
            cache.adopt(offset, extent);
        }
        self.allocations.add(1);
        Some((offset, extent))
    }

    /// Gives every extent the lanes of the extent cache hold back to the heap (statistics, a
    /// full tier).
    fn drain_cache(&self) {
        let Some(cache) = &self.cache else {
            return;
        };
        // This thread's stash too (other threads' stay theirs: `extent_stash`'s bound).
        self.give_back_own_stash();
        for lane in 0..slabs::LANES {
            loop {
                let mut evicted = Evicted::<{ extent_cache::DRAIN_BATCH }>::new();
                let emptied = cache.take_lane(lane, &mut evicted);
                self.free_cached(cache, evicted.as_slice());
                if emptied {
                    break;
                }
            }
        }
    }

    /// Frees extents the cache gave back (their headers already say "free"), under one heap
    /// lock.
    #[inline]
    fn free_cached(&self, cache: &ExtentCache, offsets: &[u64]) {
        if !offsets.is_empty() {
            self.free_cached_now(cache, offsets);
        }
    }

    /// `free_cached` of at least one extent: out of line, so that the free it follows (which
    /// seldom gives any back) stays short.
    #[inline(never)]
    fn free_cached_now(&self, cache: &ExtentCache, offsets: &[u64]) {
        let mut heap = self.heap.lock_patient();
        for &offset in offsets {
            cache.forget(offset);
            let freed = heap.free(offset);
            debug_assert!(freed.is_ok(), "a cached extent is allocated in the heap");
        }
    }

    /// Writes the header of the live block whose extent (or slot) of `extent` bytes starts at
    /// `offset`.
    fn write_header(&self, offset: u64, extent: u64) {
        let size = extent - HEADER_SIZE;
        media::write_header_with_tail(&self.store_target(), offset, size, &self.live_tail);
    }

    /// Writes a header with `state` for the extent of `extent` bytes at `offset`, which the
    /// caller holds (a granule multiple inside the region), onto `backing` (`self.backing()`,
    /// read once by a caller that writes several times).
    fn write_header_on(&self, backing: &Region, offset: u64, extent: u64, state: u16) {
        let header = BlockHeader {
            size: extent - HEADER_SIZE,
            magic: HEADER_MAGIC,
            kind: self.kind as u16,
            state,
        };
        media::write_header(backing, offset, header);
    }

    /// Makes a block just cut from free space visible on the device, in the order the
    /// recovery scan needs (`persist`): a new free extent behind it first, then its header
    /// (with `state`), then the shrunk size of the free extent in front, which links it into
    /// the chain. Runs under the heap lock: another cut from the same free extent must not
    /// interleave its size write with ours.
    fn publish(&self, carved: &Carved, state: u16) {
        // A slab cut again where the last one was: the device holds these writes already.
        if !self.slab_memo.must_write(carved, state) {
            return;
        }
        let backing = self.backing();
        if let Some((tail, len)) = carved.tail {
            self.write_header_on(&backing, tail, len, STATE_FREE);
            media::order(&backing);
        }
        #[cfg(test)]
        if BREAK_ORDER.with(|b| b.get()) {
            // The wrong order the crash-point checker must catch: the block linked into the
            // chain before its header is written.
            if let Some((front, len)) = carved.front {
                media::write_size(&backing, front, len - HEADER_SIZE);
            }
            self.write_header_on(&backing, carved.offset, carved.len, state);
            return;
        }
        self.write_header_on(&backing, carved.offset, carved.len, state);
        if let Some((front, len)) = carved.front {
            media::order(&backing);
            media::write_size(&backing, front, len - HEADER_SIZE);
        }
    }

    /// An extent of the heap, within the tier's `limit=`: `(offset, length)`. `claim(offset)`
    /// runs before the heap's lock is released. With `fill_wait`, waits for a profile's
    /// reserve being made present to get ahead of the cut (`reserve_use::wait_for_fill`);
    /// the fill thread itself cuts without.
    // Out of line: the heap's path, taken on a miss of the caches, is long and seldom run.
    #[inline(never)]
    fn alloc_extent(
        &self,
        len: u64,
        align: u64,
        prefix: u64,
        state: u16,
        fill_wait: bool,
        claim: impl FnOnce(u64),
    ) -> Option<(u64, u64)> {
        if let Some(outside) = &self.outside {
            if !outside.can_fit(len, align) {
                return None;
            }
        }
        let mut claim = Some(claim);
        let mut faulted_in = false;
        // A workload profile's reserve being made present: this cut waits to land in it.
        if fill_wait {
            reserve_use::wait_for_fill(self.kind, len);
        }
        // Full or at `limit=` while the extent cache holds freed blocks: they go back to the
        // heap, then once more.
        let mut may_drain = self.cache.is_some();
        let mut drain = |heap: crate::futex_mutex::MutexGuard<'_, ExtentHeap>| {
            drop(heap);
            let cached = self.cache.as_ref().is_some_and(|c| c.cached_bytes() > 0)
                || self.own_stash_bytes() > 0;
            let again = core::mem::take(&mut may_drain) && cached;
            if again {
                self.drain_cache();
            }
            again
        };
        loop {
            let mut heap = self.heap.lock_patient();
            if self.over_limit(heap.in_use().saturating_add(len)) {
                if drain(heap) {
                    continue;
                }
                return None;
            }
            if let Some(carved) = heap.alloc_carved(len, align, prefix) {
                // Pages the cut would write that may fault: undone, made present without the
                // lock, tried again once (`touched_pages`).
                // Not the front's page: its header was written when its free extent was made (a
                // cut's tail, a block's free, a merge), on a page known since its cut.
                let writes = [Some(carved.offset), carved.tail.map(|t| t.0)];
                if !faulted_in && !self.touched.knows_all(writes) {
                    if let Some(missing) = self.touched.missing(writes) {
                        let _ = heap.free(carved.offset);
                        drop(heap);
                        self.touched.make_present(self.region.base, &missing);
                        faulted_in = true;
                        continue;
                    }
                }
                if self.over_limit(heap.in_use()) {
                    let _ = heap.free(carved.offset);
                    if drain(heap) {
                        continue;
                    }
                    return None;
                }
                if let Some(claim) = claim.take() {
                    claim(carved.offset);
                }
                if let Some(outside) = &self.outside {
                    outside.note_in_use(heap.in_use().saturating_sub(outside.overhead()));
                }
                #[cfg(test)]
                touched_pages::note_published(self.region.base, &carved);
                self.publish(&carved, state);
                // A workload profile counts the pages cut and the tier's peak (slabs cut
                // ahead and not used yet are no use of the workload's).
                let in_use = heap
                    .in_use()
                    .saturating_sub(self.overhead() + self.slabs.ahead_unused_bytes());
                let (offset, len) = (carved.offset, carved.len);
                reserve_use::note_carved(self.kind, offset, len, in_use);
                return Some((carved.offset, carved.len));
            }
            if drain(heap) {
                continue;
            }
            // Full: a tier lent its capacity asks for one more extent, then tries again.
            match &self.outside {
                Some(outside) if self.receive_extent(outside) => {}
                _ => return None,
            }
        }
    }

    /// Whether `in_use` bytes of extents (the superblock's included) would be more than
    /// `limit=` allows.
    fn over_limit(&self, in_use: u64) -> bool {
        self.limit != u64::MAX && in_use.saturating_sub(self.overhead()) > self.limit
    }

    /// Bytes of the heap's allocated extents that hold no block: the superblock, or for a
    /// tier lent its capacity, the source's table, fences and placeholders (`outside`).
    fn overhead(&self) -> u64 {
        self.outside
            .as_ref()
            .map_or(SUPERBLOCK_BYTES, outside::Outside::overhead)
    }

    /// Writes "free" into the state of the header at `offset` (unless the tier is inherited).
    /// The caller still holds the block, so no new owner of its bytes can be writing there.
    fn mark_free(&self, offset: u64) {
        if !self.inherited.load(Ordering::Relaxed) {
            // The header lies in the mapped region and its block is still ours. Only the
            // state field is written (a recovery scan of a PMR sees it).
            media::write_state(&self.store_target(), offset, STATE_FREE);
        }
    }

    /// The extent offset of block `p` of this tier (`p` must be inside the region).
    fn offset_of(&self, p: *mut u8) -> Option<u64> {
        (p as usize)
            .checked_sub(self.region.base + HEADER_SIZE as usize)
            .map(|o| o as u64)
    }

    /// Frees block `p`; refuses (changing nothing) a pointer that is not a live block start.
    /// `free_or_report`'s dispatch, with the refusal returned (for tests; the paths report).
    #[cfg(test)]
    pub fn free(&self, p: *mut u8) -> Result<(), FreeError> {
        match self.offset_of(p) {
            Some(offset) if self.slabs.holds_live(offset) => self.free_in_slab(offset),
            Some(offset) => self.free_outside_slabs(offset),
            None => Err(FreeError::NotAllocated),
        }
    }

    /// A free of the block at `offset`, outside the slabs: a cached-size block into this
    /// thread's lane, else the heap's. The lane's part calls nothing.
    #[inline(always)]
    fn free_outside_slabs(&self, offset: u64) -> Result<(), FreeError> {
        self.free_if_cached(offset)
            .unwrap_or_else(|| self.free_uncached(offset))
    }

    /// A free of the block at `offset` if the extent cache names it (a cached-size block,
    /// into this thread's lane); `None`: not named, nothing done. Only a block outside the
    /// slabs is named (a table entry is present only while the heap holds its block's
    /// extent), so this needs no slab test.
    #[inline(always)]
    fn free_if_cached(&self, offset: u64) -> Option<Result<(), FreeError>> {
        if offset >= self.region.len as u64 {
            return None;
        }
        // SAFETY: tested just above.
        unsafe { self.free_if_cached_in_region(offset) }
    }

    /// `free_if_cached` of a block whose caller knows `offset` is in the region (the table
    /// has its bucket).
    ///
    /// # Safety
    /// `offset` lies in the region.
    #[inline(always)]
    unsafe fn free_if_cached_in_region(&self, offset: u64) -> Option<Result<(), FreeError>> {
        debug_assert!(offset < self.region.len as u64);
        let cache = self.lanes()?;
        match cache.free(offset) {
            CacheFree::NotCached => None,
            CacheFree::Refused(error) => Some(Err(error)),
            CacheFree::Taken(len) => {
                // The block is ours until the heap gets it back: its state first. No test of
                // `inherited`: an inherited tier's lanes are off (`after_fork_in_child`).
                media::write_state(&self.store_target(), offset, STATE_FREE);
                // This thread's stash with room, no lock: almost every free of the size.
                let stash = extent_stash::current_for(cache);
                // SAFETY: `current_for` gives this thread's own stash; the live bit was
                // cleared just above.
                if !stash.is_some_and(|stash| unsafe { stash.try_put(offset, len) }) {
                    self.free_to_stash_or_lane(cache, offset, len);
                }
                Some(Ok(()))
            }
        }
    }

    /// A free of a cached-size block into this thread's lane (a thread without a stash).
    fn free_to_lane(&self, cache: &ExtentCache, offset: u64, len: u64) {
        // The lane free and with room, no wait.
        match cache.try_push(offset, len) {
            Pushed::Done => {}
            Pushed::Busy => self.push_cached(cache, offset, len),
            Pushed::Full(lane) => self.push_cached_held(cache, lane, offset, len),
        }
    }

    /// The end of a free whose extent `try_push` could not take: the lane waited for, and
    /// what it gives back to make room handed to the heap.
    #[inline(never)]
    fn push_cached(&self, cache: &ExtentCache, offset: u64, len: u64) {
        let mut evicted = Evicted::<{ extent_cache::PUSH_EVICTS }>::new();
        cache.push(offset, len, &mut evicted);
        self.free_cached(cache, evicted.as_slice());
    }

    /// `push_cached` into the lane `try_push` found full and still holds.
    #[inline(never)]
    fn push_cached_held(&self, cache: &ExtentCache, lane: Held<'_>, offset: u64, len: u64) {
        let mut evicted = Evicted::<{ extent_cache::PUSH_EVICTS }>::new();
        cache.push_held(lane, offset, len, &mut evicted);
        self.free_cached(cache, evicted.as_slice());
    }

    /// A free of a block in a slab (`Slabs::holds_live`): the slabs' (or, if the slab went
    /// since, which only a pointer that is no live block sees, the heap's).
    #[inline]
    fn free_in_slab(&self, offset: u64) -> Result<(), FreeError> {
        match self.free_slot(offset) {
            Some(result) => result,
            None => self.free_uncached(offset),
        }
    }

    /// A free of a block outside the slabs that the extent cache does not name: the heap's.
    #[inline(never)]
    fn free_uncached(&self, offset: u64) -> Result<(), FreeError> {
        let in_region = offset < self.region.len as u64;
        let mut heap = self.heap.lock();
        heap.allocated(offset)?;
        if let Some(cache) = self.cache.as_ref().filter(|_| in_region) {
            // A block allocated while the lanes were on (the fit changed since); one still
            // waiting in a lane was freed already.
            if cache.named_len(offset) == Some(None) {
                return Err(FreeError::DoubleFree);
            }
            cache.forget(offset);
        }
        // Before the heap frees the extent: once it does, another thread may make it a block
        // and write its header there.
        self.mark_free(offset);
        let freed = heap.free(offset);
        debug_assert!(freed.is_ok(), "checked above, under the same lock");
        self.release_if_empty(&mut heap, offset);
        self.frees.add(1);
        Ok(())
    }

    /// Frees block `p`; a pointer that is not a live block start is counted as a failure and
    /// reported (then the process aborts, unless `TIERMALLOC_ON_ERROR=ignore`).
    ///
    /// Inlined into its callers as far as the slab test: a slab's free and every other go on
    /// in one call each (tail calls), so that neither pays the other's registers.
    #[inline(always)]
    pub fn free_or_report(&self, p: *mut u8) {
        match self.offset_of(p) {
            Some(offset) if self.slabs.holds_live(offset) => self.free_in_slab_or_report(p, offset),
            Some(offset) => self.free_outside_slabs_or_report(p, offset),
            None => self.report_failed_free(p, FreeError::NotAllocated),
        }
    }

    /// `free_or_report` of a block whose caller says it was asked for `size` bytes aligned to
    /// `align` (the Rust `Allocator`'s layout): for a size no slab serves, the extent cache is
    /// asked first and the slab test is left to a block it does not name. A wrong layout
    /// costs only that order: what the cache does not name goes through `free_or_report`'s
    /// whole dispatch.
    ///
    /// # Safety
    /// `p` lies in the region (`holds`), so a block offset found from it is in the region
    /// too and the cache's own region test is left out.
    #[inline(always)]
    pub unsafe fn free_sized_or_report(&self, p: *mut u8, size: usize, align: usize) {
        debug_assert!(self.holds(p));
        match self.offset_of(p) {
            Some(offset) if Slabs::class_of(size, align).is_none() => {
                // SAFETY: `offset` is `p`'s less the header, in the region (contract).
                unsafe { self.free_cached_first_or_report(p, offset) }
            }
            _ => self.free_or_report(p),
        }
    }

    /// `free_sized_or_report` of a block of a size no slab serves, at `offset`: one the
    /// extent cache does not name goes through `free_or_report`'s whole dispatch.
    ///
    /// # Safety
    /// `offset` lies in the region.
    #[inline(never)]
    unsafe fn free_cached_first_or_report(&self, p: *mut u8, offset: u64) {
        // SAFETY: forwarded (contract).
        match unsafe { self.free_if_cached_in_region(offset) } {
            Some(Ok(())) => {}
            Some(Err(error)) => self.report_failed_free(p, error),
            None => self.free_or_report(p),
        }
    }

    /// `free_or_report` of the block at `offset`, outside the slabs.
    #[inline(never)]
    fn free_outside_slabs_or_report(&self, p: *mut u8, offset: u64) {
        if let Err(error) = self.free_outside_slabs(offset) {
            self.report_failed_free(p, error);
        }
    }

    /// `free_in_slab`, reporting a refusal.
    #[inline(never)]
    fn free_in_slab_or_report(&self, p: *mut u8, offset: u64) {
        if let Err(error) = self.free_in_slab(offset) {
            self.report_failed_free(p, error);
        }
    }

    #[cold]
    #[inline(never)]
    fn report_failed_free(&self, p: *mut u8, error: FreeError) {
        self.counters.failures.add(1);
        report_bad_free(self.kind, p, error);
    }

    /// Resizes live block `p` to `size` bytes where it lies: true if it already fits and would
    /// not waste more than half of itself, or if a block outside the slabs grows into the free
    /// space right behind it or gives its tail back (its header rewritten). False (nothing
    /// changed) for a slab block or when the space behind is taken: the caller moves the block
    /// (which reads it from the device; this does not).
    pub fn resize_in_place(&self, p: *mut u8, size: usize) -> bool {
        let Some(old) = self.usable_size(p) else {
            return false;
        };
        if size <= old && size >= old / 2 {
            return true;
        }
        let Some(offset) = self.offset_of(p) else {
            return false;
        };
        if self.slabs.holds_live(offset) || self.inherited.load(Ordering::Relaxed) {
            return false;
        }
        let Some(len) = (size.max(1) as u64).checked_add(HEADER_SIZE) else {
            return false;
        };
        if len > old as u64 + HEADER_SIZE {
            // A freed block right behind that waits in a lane is free space to grow into.
            self.withdraw_from_cache(offset + old as u64 + HEADER_SIZE);
        }
        let mut heap = self.heap.lock();
        let Ok(old) = heap.allocated(offset) else {
            return false;
        };
        if len > old && self.over_limit(heap.in_use().saturating_add(len - old)) {
            return false;
        }
        let Some((extent, behind)) = heap.resize_carved(offset, len) else {
            return false;
        };
        if let Some(cache) = &self.cache {
            // A cached-size block stays one at its new length only if the table named it.
            if cache.names_live(offset) {
                cache.forget(offset);
                if extent_cache::cached_size(extent, GRANULE) {
                    cache.adopt(offset, extent);
                }
            }
        }
        // Under the heap lock, the free extent behind first (`publish`). Its header may land
        // on the free extent a remembered slab cut names.
        self.slab_memo.forget();
        let backing = self.backing();
        if let Some((start, len)) = behind {
            self.write_header_on(&backing, start, len, STATE_FREE);
            media::order(&backing);
        }
        self.write_header_on(&backing, offset, extent, STATE_ALLOCATED);
        true
    }

    /// The usable size of live block `p` from host metadata (no device read).
    pub fn usable_size(&self, p: *mut u8) -> Option<usize> {
        let offset = self.offset_of(p)?;
        let len = match self.slabs.slot_len(offset) {
            Some(slot) => slot?,
            // A cached-size extent's length is in the cache's table: no heap lock.
            None => match self.cache_named_len(offset) {
                Some(named) => named?,
                None => self.heap.lock().allocated_len(offset)?,
            },
        };
        Some((len - HEADER_SIZE) as usize)
    }

    /// Gives the extent at `offset` back to the heap if it is a freed block waiting in this
    /// thread's extent stash or in a lane of the extent cache (not while another thread takes
    /// it from there; not from another thread's stash).
    fn withdraw_from_cache(&self, offset: u64) {
        if let Some(cache) = self
            .cache
            .as_ref()
            .filter(|_| offset < self.region.len as u64)
        {
            if self.withdraw_from_own_stash(cache, offset) || cache.withdraw(offset) {
                self.free_cached(cache, &[offset]);
            }
        }
    }

    /// The extent cache's word on the extent at `offset`: see `ExtentCache::named_len`.
    fn cache_named_len(&self, offset: u64) -> Option<Option<u64>> {
        let cache = self
            .cache
            .as_ref()
            .filter(|_| offset < self.region.len as u64)?;
        cache.named_len(offset)
    }

    /// Whether the extent at `offset` (in the region) holds a freed block waiting in the
    /// extent cache: allocated in the heap, but no live block.
    fn freed_in_cache(&self, offset: u64) -> bool {
        self.cache_named_len(offset) == Some(None)
    }

    /// The offset of `p` from the region's start, if `p` lies in the region.
    pub fn offset_in_region(&self, p: *const u8) -> Option<u64> {
        let o = (p as usize).checked_sub(self.region.base)?;
        (o < self.region.len).then_some(o as u64)
    }

    /// The address at `offset` of the region, if inside it.
    pub fn at_offset(&self, offset: u64) -> Option<*mut u8> {
        (offset < self.region.len as u64).then(|| (self.region.base + offset as usize) as *mut u8)
    }

    /// Makes `[p, p + len)` and every earlier write to the region durable (`tm_persist`).
    /// `Err(errno)`: `EINVAL` if the range is not inside the region, else the kernel's.
    pub fn persist(&self, p: *const u8, len: usize) -> Result<(), i32> {
        let offset = self.offset_in_region(p).ok_or(libc::EINVAL)? as usize;
        if len > self.region.len - offset {
            return Err(libc::EINVAL);
        }
        if persist::persist(&self.backing(), offset, len) {
            Ok(())
        } else {
            Err(os::errno())
        }
    }

    /// Maps root `name` to live block `block`, or removes it (`None`). `Err(errno)`:
    /// `EINVAL` for a bad name or a pointer that is no live block of this tier, `ENOSPC` when
    /// the table is full.
    pub fn root_set(&self, name: &[u8], block: Option<*mut u8>) -> Result<(), i32> {
        let offset = match block {
            Some(p) => {
                self.usable_size(p).ok_or(libc::EINVAL)?;
                Some((p as usize - self.region.base) as u64)
            }
            None => None,
        };
        let _serial = self.roots.lock();
        persist::roots::set(&self.backing(), name, offset).map_err(|e| match e {
            persist::roots::RootError::BadName => libc::EINVAL,
            persist::roots::RootError::Full => libc::ENOSPC,
        })
    }

    /// The live block root `name` maps to (`None`: no such root, or its block is not live).
    pub fn root_get(&self, name: &[u8]) -> Option<*mut u8> {
        // Under the roots lock: a root being set is never read half-written.
        let offset = {
            let _serial = self.roots.lock();
            persist::roots::get(&self.backing(), name)?
        };
        let p = self.at_offset(offset)?;
        self.usable_size(p).map(|_| p)
    }

    /// The first live block after block `prev` in address order (from the start when
    /// `None`); host metadata only. `prev` must be a live block of this tier, or `None`.
    pub fn next_block(&self, prev: Option<*mut u8>) -> Option<*mut u8> {
        let block = |offset: u64| (self.region.base + (offset + HEADER_SIZE) as usize) as *mut u8;
        let mut after = match prev {
            None => None,
            Some(p) => {
                let offset = self.offset_of(p)?;
                let window = offset - offset % SLAB_BYTES;
                if self.slabs.slab_class(window).is_some() && offset != window {
                    if let Some(slot) = self.slabs.next_live(window, Some(offset)) {
                        return Some(block(slot));
                    }
                    Some(window)
                } else {
                    Some(offset)
                }
            }
        };
        loop {
            let (offset, _) = self.heap.lock().next_allocated(after)?;
            after = Some(offset);
            if offset < SUPERBLOCK_BYTES {
                continue;
            }
            if self.slabs.slab_class(offset).is_some() {
                if let Some(slot) = self.slabs.next_live(offset, None) {
                    return Some(block(slot));
                }
                continue;
            }
            if self.freed_in_cache(offset) {
                continue;
            }
            return Some(block(offset));
        }
    }

    /// Moves the tier's bytes onto `target` (the `spare=` path if `None`) while its blocks
    /// stay in use at the same addresses (`evacuate`).
    pub fn evacuate(&self, target: Option<&CStr>) -> Result<evacuate::Report, Problem> {
        if self.inherited.load(Ordering::Relaxed) {
            return Err(Problem {
                what: "the tier was inherited from the parent process and serves nothing here",
                errno: libc::EINVAL,
                room: None,
                at: None,
                holder: None,
            });
        }
        if self.outside.is_some() {
            // Its extents live in the pool's shared arena, beside other nodes' extents.
            return Err(Problem {
                what: "a share of the pool cannot be moved: its bytes belong to the pool",
                errno: libc::EOPNOTSUPP,
                room: None,
                at: None,
                holder: None,
            });
        }
        let target = target.or(self.spare()).ok_or(Problem {
            what: "no target given and no spare= configured",
            errno: libc::EINVAL,
            room: None,
            at: None,
            holder: None,
        })?;
        let report = evacuate::evacuate(self.kind, &self.region, &self.device, self, target)?;
        // A file or device now, mapped shared: `fork` must copy it for the child.
        self.shared_across_fork.store(true, Ordering::Relaxed);
        Ok(report)
    }

    /// The `spare=` path.
    pub fn spare(&self) -> Option<&CStr> {
        self.device.spare()
    }

    pub fn set_fit(&self, fit: Fit) {
        if self.cache.is_some() {
            // The lanes serve best fit only (`extent_cache`).
            // Never in an inherited tier (`after_fork_in_child`).
            self.set_lanes(fit == Fit::Best && !self.inherited.load(Ordering::Relaxed));
            if fit != Fit::Best {
                self.drain_cache();
            }
        }
        self.heap.lock().set_fit(fit);
    }

    /// The mapped region.
    #[cfg(test)]
    pub fn region(&self) -> Region {
        self.region
    }

    pub fn stats(&self) -> TierStats {
        self.figures().stats
    }

    /// The tier's figures for a statistics report.
    pub fn figures(&self) -> DeviceFigures {
        // Exact figures: freed blocks waiting in the lanes are free space of the heap again,
        // and so are this thread's cached slots (other threads' count as idle below).
        self.give_back_own_slots();
        self.drain_cache();
        let cached = slot_cache::cached_totals(self.slot_cache_id.load(Ordering::Relaxed), true);
        let h = self.heap.lock().stats();
        self.figures_of(h, self.slabs.totals(), cached.unwrap_or_default())
    }

    /// The figures, or `None` while a lock is held: a report from a signal handler or from
    /// inside an allocation must not wait for the thread it interrupted.
    pub fn try_figures(&self) -> Option<DeviceFigures> {
        let id = self.slot_cache_id.load(Ordering::Relaxed);
        let cached = slot_cache::cached_totals(id, false)?;
        let h = self.heap.try_lock()?.stats();
        Some(self.figures_of(h, self.slabs.try_totals()?, cached))
    }

    /// `cached`: the threads' slot caches' and extent stashes' `(bytes, allocations, frees)`.
    fn figures_of(
        &self,
        h: HeapStats,
        slabs: SlabTotals,
        cached: (u64, u64, u64),
    ) -> DeviceFigures {
        let stats = self.stats_of(h, slabs, cached);
        DeviceFigures {
            from_limit: self.limit != u64::MAX && stats.capacity == self.limit,
            stats,
            peak_in_use: match &self.outside {
                Some(outside) => outside.peak(),
                None => h.peak_in_use.saturating_sub(SUPERBLOCK_BYTES),
            },
            mapped: self.region.len as u64,
            from_pool: self.outside.is_some(),
        }
    }

    fn stats_of(&self, mut h: HeapStats, slabs: SlabTotals, slots: (u64, u64, u64)) -> TierStats {
        // The superblock (or a lent tier's placeholders) is allocated in the heap, but no block.
        let (lent, borrowed) = match &self.outside {
            Some(outside) => {
                h.capacity = outside.capacity() + self.overhead();
                outside.lent_and_borrowed()
            }
            None => (0, 0),
        };
        // Saturating: a lent tier's overhead is read after the heap's lock was let go.
        h.capacity = h.capacity.saturating_sub(self.overhead());
        h.in_use = h.in_use.saturating_sub(self.overhead());
        let capacity = h.capacity.min(self.limit);
        let reserve = reserve_use::figures(self.kind);
        // Slabs are allocated extents; their slots without a live block are not in use (free,
        // or in a thread's cache), nor are the freed extents the cache holds.
        let cached = self.cache.as_ref().map_or(0, ExtentCache::cached_bytes);
        let lanes = self.cache.as_ref().map_or((0, 0), ExtentCache::counts);
        let in_use = h
            .in_use
            .saturating_sub(slabs.idle_bytes)
            .saturating_sub(slots.0)
            .saturating_sub(cached);
        TierStats {
            capacity,
            in_use,
            free_bytes: capacity.saturating_sub(in_use),
            largest_free: h
                .largest_free
                .saturating_sub(HEADER_SIZE)
                .min(capacity.saturating_sub(h.in_use)),
            allocations: self.allocations.get() + slabs.allocations + slots.1 + lanes.0,
            frees: self.frees.get() + slabs.frees + slots.2 + lanes.1,
            failures: self.counters.failures.get(),
            spilled_in: self.counters.spilled_in.get(),
            spilled_out: self.counters.spilled_out.get(),
            lent,
            borrowed,
            reserved: reserve.reserved,
            reserve_used: reserve.used,
            reserve_miss: reserve.miss,
            ..TierStats::default()
        }
    }
}

/// A device tier's figures for a statistics report: `tm_stats`, plus the most bytes its
/// extents (blocks, and slabs whole) have taken at once, and the bytes mapped for it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DeviceFigures {
    pub stats: TierStats,
    pub peak_in_use: u64,
    pub mapped: u64,
    /// Its capacity is lent to it from the shared pool (`outside`).
    pub from_pool: bool,
    /// Its capacity is its `limit=` (smaller than the device region), not the region.
    pub from_limit: bool,
}

impl LiveExtents for DeviceTier {
    fn hold_and_list(
        &self,
        lo: u64,
        hi: u64,
        hint: &mut u64,
        read_at: evacuate::DeviceBytes,
        hold: &mut dyn FnMut() -> bool,
        live: &mut dyn FnMut(u64, u64),
    ) -> bool {
        let heap = self.heap.lock();
        heap.for_each_extent_between(lo, hi, hint, |offset, len, free| {
            if free {
                // SAFETY: a free extent of the region (mapped where `read_at` says), which
                // the held heap lock keeps free.
                unsafe { evacuate::free_headers(read_at, offset, len, hi, &mut *live) }
            } else {
                live(offset, len)
            }
        });
        hold()
    }
}

/// The opened device tiers, by kind (`Cxl`, `Cmb`, `Pmr`: index `kind - 1`). Each is set once,
/// by the library's constructor, before the program can start a thread.
static OPENED: [spin::Once<DeviceTier>; 3] =
    [spin::Once::new(), spin::Once::new(), spin::Once::new()];

/// Opens the device tier `spec` describes and keeps it for `get` (once per kind: the
/// configuration lists each kind once); reports a tier that cannot be used in one line on
/// stderr and returns false (the program runs on without it).
pub fn open(spec: &TierSpec) -> bool {
    debug_assert!(spec.kind != Kind::Dram);
    let slot = &OPENED[spec.kind as usize - 1];
    if slot.is_completed() {
        return false;
    }
    match DeviceTier::open(spec) {
        Ok(tier) => {
            if crate::config::get().verbose {
                report_opening(spec.kind, spec.path(), tier.previous_run_clean);
            }
            let tier = slot.call_once(|| tier);
            // SAFETY: kept in `OPENED` for the process's life, never moved.
            unsafe { tier.enable_slot_cache() };
            crate::device_sigbus::install(device_path);
            true
        }
        Err(problem) => {
            report_tier(spec.kind, spec.path(), problem);
            false
        }
    }
}

/// Writes the path of the file or device behind tier `kind` now (what its descriptor names,
/// `/proc/self/fd`; after a move, the target) into `buf`; its length, or 0 if unknown (anonymous
/// memory, no such tier). Async-signal-safe (`readlink`), for the SIGBUS line.
fn device_path(kind: Kind, buf: &mut [u8]) -> usize {
    let Some(fd) = get(kind)
        .map(|t| t.device.current_fd())
        .filter(|&fd| fd >= 0)
    else {
        return 0;
    };
    let mut link = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0";
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (fd as u32, 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        link[14 + i] = digits[len - 1 - i];
    }
    // SAFETY: a NUL-terminated path (at most 10 digits after 14 bytes, in 25) and our buffer.
    let got = unsafe { libc::readlink(link.as_ptr().cast(), buf.as_mut_ptr().cast(), buf.len()) };
    if got <= 0 || got as usize >= buf.len() {
        0
    } else {
        got as usize
    }
}

/// The opened tier of device kind `kind`.
#[inline]
pub fn get(kind: Kind) -> Option<&'static DeviceTier> {
    OPENED.get((kind as usize).wrapping_sub(1))?.get()
}

/// `get` of a kind whose tier is open: no test of the `Once` (a tier stays in `OPENED` for the
/// process's life once opened).
///
/// # Safety
/// `get(kind)` answered `Some` before (in this process).
#[inline(always)]
pub unsafe fn get_opened(kind: Kind) -> &'static DeviceTier {
    debug_assert!(get(kind).is_some());
    // SAFETY: per the contract, `kind` is a device kind (its slot exists) whose `Once` is
    // complete, and stays so.
    unsafe { OPENED.get_unchecked(kind as usize - 1).get_unchecked() }
}

/// Moves device tier `kind` onto `target` (its `spare=` if `None`) in place (`evacuate`).
/// `Err(EINVAL)` for DRAM, `Err(ENODEV)` for a kind not configured; other failures are
/// reported in one line on stderr, and with `TIERMALLOC_VERBOSE=1` a success too.
pub fn evacuate_kind(kind: Kind, target: Option<&CStr>) -> Result<evacuate::Report, i32> {
    if kind == Kind::Dram {
        return Err(libc::EINVAL);
    }
    let tier = get(kind).ok_or(libc::ENODEV)?;
    let report = tier.evacuate(target).map_err(|problem| {
        evacuate::report_failure(kind, target, &problem);
        problem.errno
    })?;
    if crate::config::get().verbose {
        evacuate::report_success(kind, target.or(tier.spare()), &report);
    }
    Ok(report)
}

/// Calls `f` on every opened device tier.
pub(crate) fn for_each_device(f: impl FnMut(&DeviceTier)) {
    OPENED.iter().filter_map(spin::Once::get).for_each(f);
}

/// Closes every opened device tier cleanly (at process exit): see `DeviceTier::close_cleanly`.
/// A failed flush is reported in one line; the heap then stays marked dirty.
pub fn close_all() {
    for_each_device(close_one);
}

/// `close_all` for one opened tier: out of line and cold, so that the exit path every process
/// runs (link/hot_text.ld) holds only the loop over the tiers, none of them opened there.
#[cold]
#[inline(never)]
fn close_one(tier: &DeviceTier) {
    if tier.close_cleanly() {
        return;
    }
    let kind = tier.kind;
    let mut line = os::LineBuf::new();
    let _ = write!(
        line,
        "tiermalloc: tier '{}': flushing at exit failed; the heap stays marked dirty",
        kind.name()
    );
    os::write_errno_text(&mut line, os::errno());
    let _ = writeln!(line);
    line.flush();
}

/// `TIERMALLOC_VERBOSE=1`: one line saying how a tier opened: formatted, or recovered after
/// a clean close or after a run that did not end cleanly.
fn report_opening(kind: Kind, path: Option<&[u8]>, previous_run_clean: Option<bool>) {
    let mut line = os::LineBuf::new();
    let _ = write!(line, "tiermalloc: ");
    write_tier_name(&mut line, kind, path);
    let how = match previous_run_clean {
        None => "formatted",
        Some(true) => "recovered; the last run closed it cleanly",
        Some(false) => "recovered; the last run did not close it cleanly (killed or crashed)",
    };
    let _ = writeln!(line, ": {how}");
    line.flush();
}

/// "tier 'KIND' (PATH)", how the lines about a tier name it.
fn write_tier_name(line: &mut os::LineBuf, kind: Kind, path: Option<&[u8]>) {
    let _ = write!(line, "tier '{}'", kind.name());
    if let Some(path) = path {
        let _ = write!(
            line,
            " ({})",
            core::str::from_utf8(path).unwrap_or("<not UTF-8>")
        );
    }
}

pub(crate) fn report_tier(kind: Kind, path: Option<&[u8]>, problem: Problem) {
    let mut line = os::LineBuf::new();
    let _ = write!(line, "tiermalloc: TIERMALLOC_TIERS: ");
    write_tier_name(&mut line, kind, path);
    let _ = write!(line, ": {}", problem.what);
    if let Some(at) = problem.at {
        let _ = write!(line, " at offset {at}");
    }
    if let Some((needed, free)) = problem.room {
        let _ = write!(line, " (size {needed} bytes, {free} bytes free)");
    }
    if let Some(holder) = problem.holder {
        let _ = write!(
            line,
            ": pid {} on host '{}' owns it (its owner record; taken over once that process \
             is gone, or from another host once its heartbeat is {} s old)",
            holder.pid,
            holder.host_name(),
            owner::LEASE_MS / 1000
        );
    }
    os::write_errno_text(&mut line, problem.errno);
    let _ = writeln!(line, "; tier skipped");
    line.flush();
}

/// Reports a refused free in one line, then aborts unless `TIERMALLOC_ON_ERROR=ignore`.
#[cold]
fn report_bad_free(kind: Kind, p: *mut u8, error: FreeError) {
    let what = match error {
        FreeError::DoubleFree => crate::misuse::Misuse::DoubleFree,
        FreeError::NotAllocated => crate::misuse::Misuse::NotABlockStart,
    };
    crate::misuse::report_on("free", p, kind.name(), what);
}

/// Tiers live for the whole process in `OPENED`; only tests close one (to open its file again).
#[cfg(test)]
impl Drop for DeviceTier {
    fn drop(&mut self) {
        // Threads' cached slots go with the tier.
        slot_cache::forget_tier(self.slot_cache_id.load(Ordering::Relaxed));
        // A test's tier closes as a process's would at exit.
        self.close_cleanly();
        // The device behind the region now (a move replaces the first): its descriptor and
        // register page.
        // SAFETY: the tier is going away with every block of it (tests only).
        unsafe { backend::unmap_region(self.backing()) };
    }
}

#[cfg(test)]
mod extent_cache_tests;
#[cfg(test)]
mod extent_stash_tests;
#[cfg(test)]
mod lane_tests;
#[cfg(test)]
mod slot_cache_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod touched_pages_tests;
