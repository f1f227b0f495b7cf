//! Device tiers: a region mapped by `backend`, served by an extent heap (`heap`), blocks of up
//! to 4080 bytes grouped in slabs (`device_slabs`); every piece of metadata lives in host DRAM.
//!
//! Device memory is only ever written, and only the 16-byte header before each block:
//! `malloc` writes the whole header (size, magic, kind, state) in one 16-byte store, `free`
//! writes the state. The size on `free` and `malloc_usable_size` comes from the host-side
//! extent map, never from the header, so neither operation reads the device. A free of a
//! pointer the host metadata does not know as a live block start (a double free, a pointer
//! into a block) is refused before anything is written, and reported.
//!
//! After `fork`, a child would share a file- or device-backed region with its parent (the
//! mapping is `MAP_SHARED`; the kernel cannot copy a device on write), while each process has
//! its own copy of the host metadata: the child's writes to the blocks it inherited (a shell
//! editing its variables, an interpreter its reference counts) would land in the parent's
//! live data, and its allocations in extents the parent also hands out. So the child handler
//! gives the child what `fork` gives it for DRAM, a private copy: it copies every allocated
//! extent (host metadata says which) into fresh anonymous memory and moves that over the
//! region, while the parent waits in its own handler (`place`). The cost is one read of the
//! bytes in use per `fork` (none after `vfork`/`posix_spawn`, which run no handlers); the
//! child's tier is then ordinary memory, and its writes never reach the device. If that
//! memory cannot be had, the tier becomes *inherited* in the child: it serves no new block
//! (plain requests spill, `tm_malloc` fails with `ENOMEM`) and frees skip the header write,
//! so at least the allocator never hands out the parent's blocks. NUMA-bound tiers are
//! anonymous memory already, copied on write like DRAM.

use crate::backend::{self, Problem, Region};
use crate::config::{Fit, Kind, TierSpec};
use crate::device_slabs::{SlabFree, SlabTotals, Slabs, SLAB_BYTES};
use crate::heap::{ExtentHeap, FreeError, HeapStats};
use crate::os;
use crate::pagemap::{self, ChunkTag};
use crate::stats::{SharedCounter, TierStats};
use core::sync::atomic::{AtomicBool, Ordering};

/// Bytes of the header before every device block (`TM_HEADER_SIZE`).
pub(crate) const HEADER_SIZE: u64 = 16;
/// Every extent offset and length is a multiple of this: the header size, so that a block
/// (16 bytes after its extent's start) can be aligned to any power of two.
const GRANULE: u64 = HEADER_SIZE;
/// `tm_block_header::magic`: "TMHB" in little-endian ASCII.
pub(crate) const HEADER_MAGIC: u32 = u32::from_le_bytes(*b"TMHB");
pub(crate) const STATE_ALLOCATED: u16 = 1;
pub(crate) const STATE_FREE: u16 = 2;

/// The header written immediately before each block on CXL, CMB and PMR (the C header's
/// `tm_block_header`): `((const tm_block_header *)p)[-1].size == tm_usable_size(p)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockHeader {
    /// Usable bytes of the block.
    pub size: u64,
    /// `HEADER_MAGIC` ("TMHB"), marking a header written by tiermalloc.
    pub magic: u32,
    /// The block's `tm_kind`.
    pub kind: u16,
    /// 1 allocated, 2 free.
    pub state: u16,
}

const _: () = assert!(core::mem::size_of::<BlockHeader>() == HEADER_SIZE as usize);

impl BlockHeader {
    /// Writes the header at `dst` as one 16-byte store, never reading it: on a PCIe BAR a
    /// single write transaction (a field-by-field copy is four: 8 + 4 + 2 + 2 bytes).
    ///
    /// # Safety
    /// `dst` is 16-byte aligned (extents start on a granule) and writable.
    #[inline]
    unsafe fn store(self, dst: *mut BlockHeader) {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::{__m128i, _mm_set_epi64x};
            // The header's second word, laid out as the struct is on a little-endian target.
            let tail = self.magic as u64 | (self.kind as u64) << 32 | (self.state as u64) << 48;
            // SAFETY: SSE2 is part of the x86_64 baseline. The store: the caller's contract;
            // a volatile store of one SSE register is one aligned 16-byte store.
            unsafe {
                let v = _mm_set_epi64x(tail as i64, self.size as i64);
                (dst as *mut __m128i).write_volatile(v);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        // SAFETY: the caller's contract.
        unsafe {
            dst.write_volatile(self)
        };
    }
}

/// A device tier's figures for a statistics report: `tm_stats`, plus the most bytes its
/// extents (blocks, and slabs whole) have taken at once, and the bytes mapped for it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DeviceFigures {
    pub stats: TierStats,
    pub peak_in_use: u64,
    pub mapped: u64,
}

/// One configured device tier.
///
/// Invariants: the heap manages offsets `[0, region.len)`; an allocated extent at `off` is
/// either a block, with its header at `region.base + off` and the block 16 bytes on, or a slab
/// of `slabs` (its slots laid out the same way); the page map tags every chunk of
/// `region.reserved` with this tier's kind. Lock order: a slab class's lock, then the heap's.
pub(crate) struct DeviceTier {
    pub kind: Kind,
    region: Region,
    heap: spin::Mutex<ExtentHeap>,
    /// Blocks of up to 4080 bytes, in slabs (`device_slabs`).
    slabs: Slabs,
    /// The most bytes (extent lengths) this tier serves at once (`limit=`).
    limit: u64,
    /// Blocks allocated and freed outside slabs (slabs count their own).
    allocations: SharedCounter,
    frees: SharedCounter,
    pub failures: SharedCounter,
    pub spilled_in: SharedCounter,
    pub spilled_out: SharedCounter,
    /// The mapping is shared with the processes this one forks (until a child handler makes
    /// its own copy private).
    shared_across_fork: AtomicBool,
    /// Set in a forked child whose shared region could not be made private (see the module
    /// comment); never cleared.
    inherited: AtomicBool,
}

impl DeviceTier {
    /// Maps and prepares the tier `spec` describes.
    pub fn open(spec: &TierSpec) -> Result<DeviceTier, Problem> {
        let region = backend::map_region(spec)?;
        let metadata = ExtentHeap::new(region.len as u64, GRANULE, spec.fit)
            .zip(Slabs::new(region.len as u64));
        let Some((heap, slabs)) = metadata else {
            // SAFETY: nothing uses the fresh region.
            unsafe { backend::unmap_region(region) };
            return Err(Problem {
                what: "no host memory for the tier's metadata",
                errno: 0,
            });
        };
        pagemap::set(
            region.base,
            region.reserved,
            ChunkTag::device(spec.kind),
            ChunkTag::device(spec.kind),
        );
        Ok(DeviceTier {
            kind: spec.kind,
            region,
            heap: spin::Mutex::new(heap),
            slabs,
            limit: spec.limit.unwrap_or(u64::MAX),
            allocations: SharedCounter::new(),
            frees: SharedCounter::new(),
            failures: SharedCounter::new(),
            spilled_in: SharedCounter::new(),
            spilled_out: SharedCounter::new(),
            shared_across_fork: AtomicBool::new(region.shared_across_fork),
            inherited: AtomicBool::new(false),
        })
    }

    /// A block of at least `size` bytes aligned to `align` (a power of two ≥ 16), its header
    /// written; `None` if the tier is full or at its limit.
    pub fn alloc(&self, size: usize, align: usize) -> Option<*mut u8> {
        if self.inherited.load(Ordering::Relaxed) {
            return None;
        }
        // A request for 0 bytes gets a block of one granule (slabs' smallest class), as on
        // DRAM: its usable size is not 0 (which `realloc` would take for "not a block"), and
        // its address is not the next block's header.
        let (offset, extent) = match Slabs::class_of(size, align) {
            Some(class) => self.slabs.alloc(class, || {
                let claim = |offset| self.slabs.claim(offset, class);
                self.alloc_extent(SLAB_BYTES, SLAB_BYTES, 0, claim)
                    .map(|(offset, _)| offset)
            })?,
            None => {
                let len = (size.max(1) as u64).checked_add(HEADER_SIZE)?;
                let extent = self.alloc_extent(len, align as u64, HEADER_SIZE, |_| {})?;
                self.allocations.add(1);
                extent
            }
        };
        self.write_header(offset, extent);
        Some((self.region.base + (offset + HEADER_SIZE) as usize) as *mut u8)
    }

    /// Writes the header of the live block whose extent (or slot) of `extent` bytes starts at
    /// `offset`.
    fn write_header(&self, offset: u64, extent: u64) {
        let header = BlockHeader {
            size: extent - HEADER_SIZE,
            magic: HEADER_MAGIC,
            kind: self.kind as u16,
            state: STATE_ALLOCATED,
        };
        // SAFETY: the caller holds the extent; it lies inside the mapped region, and its start
        // (region base + a granule multiple) is 16-byte aligned.
        unsafe { header.store((self.region.base + offset as usize) as *mut BlockHeader) };
    }

    /// An extent of the heap, within the tier's `limit=`: `(offset, length)`. `claim(offset)`
    /// runs before the heap's lock is released.
    fn alloc_extent(
        &self,
        len: u64,
        align: u64,
        prefix: u64,
        claim: impl FnOnce(u64),
    ) -> Option<(u64, u64)> {
        let mut heap = self.heap.lock();
        if self.over_limit(heap.in_use().saturating_add(len)) {
            return None;
        }
        let (offset, extent) = heap.alloc(len, align, prefix)?;
        if self.over_limit(heap.in_use()) {
            let _ = heap.free(offset);
            return None;
        }
        claim(offset);
        Some((offset, extent))
    }

    /// Whether `in_use` bytes of extents would be more than `limit=` allows.
    fn over_limit(&self, in_use: u64) -> bool {
        self.limit != u64::MAX && in_use > self.limit
    }

    /// Writes "free" into the state of the header at `offset` (unless the tier is inherited).
    /// The caller still holds the block, so no new owner of its bytes can be writing there.
    fn mark_free(&self, offset: u64) {
        if !self.inherited.load(Ordering::Relaxed) {
            let header = (self.region.base + offset as usize) as *mut BlockHeader;
            // SAFETY: the header lies in the mapped region and its block is still ours. Only
            // the state field is written (a recovery scan of a PMR sees it).
            unsafe { core::ptr::addr_of_mut!((*header).state).write_volatile(STATE_FREE) };
        }
    }

    /// The extent offset of block `p` of this tier (`p` must be inside the region).
    fn offset_of(&self, p: *mut u8) -> Option<u64> {
        (p as usize)
            .checked_sub(self.region.base + HEADER_SIZE as usize)
            .map(|o| o as u64)
    }

    /// Frees block `p`; refuses (changing nothing) a pointer that is not a live block start.
    pub fn free(&self, p: *mut u8) -> Result<(), FreeError> {
        let offset = self.offset_of(p).ok_or(FreeError::NotAllocated)?;
        let retire = |slab| {
            let mut heap = self.heap.lock();
            self.slabs.unclaim(slab);
            let freed = heap.free(slab);
            debug_assert!(freed.is_ok(), "a retired slab is an allocated extent");
        };
        match self.slabs.free(offset, || self.mark_free(offset), retire) {
            SlabFree::Freed => {}
            SlabFree::Refused(error) => return Err(error),
            SlabFree::NotSlab => {
                let mut heap = self.heap.lock();
                heap.allocated(offset)?;
                // Before the heap frees the extent: once it does, another thread may make it
                // a block and write its header there.
                self.mark_free(offset);
                let freed = heap.free(offset);
                debug_assert!(freed.is_ok(), "checked above, under the same lock");
                self.frees.add(1);
            }
        }
        Ok(())
    }

    /// Resizes live block `p` to `size` bytes where it lies, rewriting its header: a block
    /// outside the slabs grows into the free space right behind it, or gives its tail back.
    /// False (nothing changed) for a slab block or when the space behind is taken: the caller
    /// moves the block (which reads it from the device; this does not).
    pub fn resize_in_place(&self, p: *mut u8, size: usize) -> bool {
        let Some(offset) = self.offset_of(p) else {
            return false;
        };
        if self.slabs.holds_live(offset) || self.inherited.load(Ordering::Relaxed) {
            return false;
        }
        let Some(len) = (size.max(1) as u64).checked_add(HEADER_SIZE) else {
            return false;
        };
        let extent = {
            let mut heap = self.heap.lock();
            let Ok(old) = heap.allocated(offset) else {
                return false;
            };
            if len > old && self.over_limit(heap.in_use().saturating_add(len - old)) {
                return false;
            }
            match heap.resize(offset, len) {
                Some(extent) => extent,
                None => return false,
            }
        };
        self.write_header(offset, extent);
        true
    }

    /// The usable size of live block `p` from host metadata (no device read).
    pub fn usable_size(&self, p: *mut u8) -> Option<usize> {
        let offset = self.offset_of(p)?;
        let len = match self.slabs.slot_len(offset) {
            Some(slot) => slot?,
            None => self.heap.lock().allocated_len(offset)?,
        };
        Some((len - HEADER_SIZE) as usize)
    }

    /// Takes the slab locks and the heap lock, in that order, and keeps them (`fork` prepare
    /// handler).
    pub fn lock_for_fork(&self) {
        self.slabs.lock_all();
        core::mem::forget(self.heap.lock());
    }

    /// Releases the locks `lock_for_fork` kept (`fork` parent handler).
    pub fn unlock_after_fork(&self) {
        // SAFETY: the prepare handler of this same fork took the lock and forgot its guard.
        unsafe { self.heap.force_unlock() };
        self.slabs.unlock_all();
    }

    /// Whether a `fork` now would share this tier's bytes with the child.
    pub fn is_shared_across_fork(&self) -> bool {
        self.shared_across_fork.load(Ordering::Relaxed)
    }

    /// The `fork` child handler: releases the lock and gives the child a private copy of a
    /// shared region, or failing that makes the tier inherited (see the module comment).
    pub fn after_fork_in_child(&self) {
        self.unlock_after_fork();
        if !self.is_shared_across_fork() {
            return;
        }
        if self.copy_region_privately() {
            self.shared_across_fork.store(false, Ordering::Relaxed);
        } else {
            self.inherited.store(true, Ordering::Relaxed);
        }
    }

    /// Replaces the region's mapping by anonymous memory holding a copy of every allocated
    /// extent. The child is single-threaded here, so the lock is free and nobody else runs.
    fn copy_region_privately(&self) -> bool {
        let len = self.region.len;
        let Some(copy) = os::map_anonymous(len) else {
            return false;
        };
        let copy = copy.as_ptr();
        let heap = self.heap.lock();
        heap.for_each_allocated(|offset, extent| {
            // SAFETY: the extent lies inside both the region and the fresh copy of its length;
            // the two mappings are distinct.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    (self.region.base + offset as usize) as *const u8,
                    copy.add(offset as usize),
                    extent as usize,
                )
            };
        });
        drop(heap);
        // SAFETY: `copy` is our fresh anonymous mapping of `len` bytes; `[base, base + len)` is
        // the region, ours, and holds nothing the copy does not.
        let moved = unsafe { os::remap_to(copy, len, self.region.base as *mut u8, len) };
        if !moved {
            // SAFETY: our own mapping, not handed out.
            unsafe { os::unmap(copy, len) };
        }
        moved
    }

    pub fn set_fit(&self, fit: Fit) {
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

    /// The tier's figures for a report.
    pub fn figures(&self) -> DeviceFigures {
        let h = self.heap.lock().stats();
        self.figures_of(h, self.slabs.totals())
    }

    /// The figures, or `None` while a lock is held: a report from a signal handler or from
    /// inside an allocation must not wait for the thread it interrupted.
    pub fn try_figures(&self) -> Option<DeviceFigures> {
        let h = self.heap.try_lock()?.stats();
        Some(self.figures_of(h, self.slabs.try_totals()?))
    }

    fn figures_of(&self, h: HeapStats, slabs: SlabTotals) -> DeviceFigures {
        DeviceFigures {
            stats: self.stats_of(h, slabs),
            peak_in_use: h.peak_in_use,
            mapped: self.region.len as u64,
        }
    }

    fn stats_of(&self, h: HeapStats, slabs: SlabTotals) -> TierStats {
        let capacity = h.capacity.min(self.limit);
        // Slabs are allocated extents; their slots without a live block are not in use.
        let in_use = h.in_use.saturating_sub(slabs.idle_bytes);
        TierStats {
            capacity,
            in_use,
            free_bytes: capacity.saturating_sub(in_use),
            largest_free: h
                .largest_free
                .saturating_sub(HEADER_SIZE)
                .min(capacity.saturating_sub(h.in_use)),
            allocations: self.allocations.get() + slabs.allocations,
            frees: self.frees.get() + slabs.frees,
            failures: self.failures.get(),
            spilled_in: self.spilled_in.get(),
            spilled_out: self.spilled_out.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Report};
    use crate::test_rng::Rng;

    struct Ignore;
    impl Report for Ignore {
        fn problem(&mut self, _: &str, _: &[u8], _: &str) {}
    }

    fn open(name: &str, extra: &str) -> (DeviceTier, String) {
        let path = format!("/dev/shm/tiermalloc-tier-{}-{name}", std::process::id());
        let text = format!("pmr:path={path},size=4M,create{extra}");
        let config = parse(Some(text.as_bytes()), None, None, None, &mut Ignore);
        (DeviceTier::open(&config.tiers()[0]).unwrap(), path)
    }

    #[test]
    fn headers_match_host_metadata_and_free_refuses_bad_pointers() {
        let (tier, path) = open("headers", "");
        let p = tier.alloc(1000, 16).unwrap();
        let region = tier.region();
        assert!(p as usize > region.base && (p as usize) < region.base + region.len);
        assert_eq!(p as usize % 16, 0);
        // SAFETY: the header sits right before the block, inside the mapping.
        let header = unsafe { *(p as *const BlockHeader).sub(1) };
        assert_eq!(header.size as usize, tier.usable_size(p).unwrap());
        assert!(header.size >= 1000);
        assert_eq!(
            (header.magic, header.kind, header.state),
            (HEADER_MAGIC, Kind::Pmr as u16, STATE_ALLOCATED)
        );
        // SAFETY: inside the block.
        assert_eq!(
            tier.free(unsafe { p.add(64) }),
            Err(FreeError::NotAllocated)
        );
        assert_eq!(tier.free(p), Ok(()));
        // SAFETY: as above.
        assert_eq!(
            unsafe { (*(p as *const BlockHeader).sub(1)).state },
            STATE_FREE
        );
        assert_eq!(tier.free(p), Err(FreeError::DoubleFree));
        let s = tier.stats();
        assert_eq!((s.allocations, s.frees, s.in_use), (1, 1, 0));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn limit_caps_the_bytes_served() {
        let (tier, path) = open("limit", ",limit=1M");
        let mut blocks = Vec::new();
        while let Some(p) = tier.alloc(100_000, 16) {
            blocks.push(p);
        }
        assert_eq!(blocks.len(), 10, "ten 100 kB blocks fit under 1 MiB");
        assert!(tier.stats().in_use <= 1 << 20);
        for p in blocks {
            tier.free(p).unwrap();
        }
        std::fs::remove_file(path).unwrap();
    }

    /// Checks the header of live block `p` against the host metadata and the request.
    fn check_header(tier: &DeviceTier, p: *mut u8, request: usize) {
        // SAFETY: the header sits right before the block, inside the mapping.
        let header = unsafe { *(p as *const BlockHeader).sub(1) };
        assert_eq!(header.size as usize, tier.usable_size(p).unwrap());
        assert!(header.size as usize >= request.max(1));
        assert_eq!(
            (header.magic, header.state),
            (HEADER_MAGIC, STATE_ALLOCATED)
        );
    }

    #[test]
    fn small_blocks_share_slabs_that_go_back_whole() {
        let (tier, path) = open("slabs", "");
        let capacity = tier.stats().capacity;
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut blocks: Vec<(*mut u8, usize, u8)> = Vec::new();
        for i in 0..6000 {
            let size = (rng.next() % 513) as usize;
            let p = tier.alloc(size, 16).unwrap();
            assert_eq!(p as usize % 16, 0);
            check_header(&tier, p, size);
            // SAFETY: the block holds `size` bytes.
            unsafe { p.write_bytes(i as u8, size) };
            blocks.push((p, size, i as u8));
        }
        // in_use counts the live slots (header included), not the free slots of their slabs.
        let in_use: u64 = blocks
            .iter()
            .map(|&(p, _, _)| tier.usable_size(p).unwrap() as u64 + HEADER_SIZE)
            .sum();
        assert_eq!(tier.stats().in_use, in_use);
        let mut sorted: Vec<usize> = blocks.iter().map(|&(p, _, _)| p as usize).collect();
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            let usable = tier.usable_size(w[0] as *mut u8).unwrap();
            assert!(
                w[0] + usable + HEADER_SIZE as usize <= w[1],
                "blocks overlap"
            );
        }
        while !blocks.is_empty() {
            let (p, size, fill) = blocks.swap_remove((rng.next() % blocks.len() as u64) as usize);
            // SAFETY: the block holds `size` bytes, written above.
            let bytes = unsafe { core::slice::from_raw_parts(p, size) };
            assert!(
                bytes.iter().all(|&b| b == fill),
                "a block lost its contents"
            );
            tier.free(p).unwrap();
        }
        let s = tier.stats();
        assert_eq!((s.allocations, s.frees, s.in_use), (6000, 6000, 0));
        assert_eq!(
            s.largest_free,
            capacity - HEADER_SIZE,
            "every slab went back"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn slab_blocks_refuse_double_and_interior_frees() {
        let (tier, path) = open("slab-bad", "");
        let p = tier.alloc(100, 16).unwrap();
        let q = tier.alloc(100, 16).unwrap();
        // SAFETY: pointers into the blocks (never dereferenced).
        let (inside, past) = unsafe { (p.add(16), q.add(4096)) };
        assert_eq!(tier.free(inside), Err(FreeError::NotAllocated));
        assert_eq!(
            tier.free(past),
            Err(FreeError::DoubleFree),
            "a free slot of the slab"
        );
        assert_eq!(tier.usable_size(inside), None);
        assert_eq!(tier.free(p), Ok(()));
        // SAFETY: the header sits right before the block.
        assert_eq!(
            unsafe { (*(p as *const BlockHeader).sub(1)).state },
            STATE_FREE
        );
        assert_eq!(tier.free(p), Err(FreeError::DoubleFree));
        assert_eq!(tier.usable_size(p), None);
        assert_eq!(tier.free(q), Ok(()));
        // The slab went back to the heap with q: a free of p now meets free space there.
        assert_eq!(tier.free(p), Err(FreeError::DoubleFree));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn threads_share_slabs_and_free_each_others_blocks() {
        let (tier, path) = open("slab-threads", ",size=64M");
        let tier = std::sync::Arc::new(tier);
        let handed: std::sync::Arc<std::sync::Mutex<Vec<(usize, usize, u8)>>> = Default::default();
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                let (tier, handed) = (tier.clone(), handed.clone());
                std::thread::spawn(move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
                    let mut mine: Vec<(usize, usize, u8)> = Vec::new();
                    for round in 0..40_000u32 {
                        let check = |(p, size, fill): (usize, usize, u8)| {
                            // SAFETY: a live block of `size` bytes filled with `fill`.
                            let b = unsafe { core::slice::from_raw_parts(p as *const u8, size) };
                            assert!(b.iter().all(|&x| x == fill), "contents changed");
                            tier.free(p as *mut u8).unwrap();
                        };
                        if mine.len() < 300 && rng.next() % 2 == 0 {
                            let size = (rng.next() % 6000) as usize; // slabs and extents
                            let p = tier.alloc(size, 16).unwrap();
                            // SAFETY: the block holds `size` bytes.
                            unsafe { p.write_bytes(round as u8, size) };
                            mine.push((p as usize, size, round as u8));
                        } else if let Some(block) = mine.pop() {
                            if round % 3 == 0 {
                                handed.lock().unwrap().push(block);
                            } else {
                                check(block);
                            }
                        }
                        if round % 64 == 0 {
                            let theirs: Vec<_> = handed.lock().unwrap().drain(..).collect();
                            theirs.into_iter().for_each(check);
                        }
                    }
                    mine
                })
            })
            .collect();
        let mut left: Vec<_> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        left.extend(handed.lock().unwrap().drain(..));
        for (p, _, _) in left {
            tier.free(p as *mut u8).unwrap();
        }
        let s = tier.stats();
        assert_eq!((s.in_use, s.allocations), (0, s.frees));
        assert_eq!(s.largest_free, s.capacity - HEADER_SIZE);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn alignment_is_honoured() {
        let (tier, path) = open("align", "");
        for align in [16usize, 64, 4096, 1 << 20] {
            let p = tier
                .alloc(100, align)
                .unwrap_or_else(|| panic!("align {align}"));
            assert_eq!(p as usize % align, 0);
            tier.free(p).unwrap();
        }
        std::fs::remove_file(path).unwrap();
    }
}
