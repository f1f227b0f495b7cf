//! The offline repair (`tiermalloc check PATH --repair`): makes a persistent heap's file sound
//! again where the damage leaves a sound heap to make, while no process has it open. Each
//! change is one line; a file that holds no tiermalloc heap is never written.
//!
//! What it repairs, in this order:
//! - a file cut short (a torn tail: a copy or a disk that stopped early): extended with
//!   zeroes to the length the superblock names, so the cut-off part reads as damage below;
//! - a broken header chain (a header without the magic, an impossible size or state): the
//!   stretch from the broken header to the next header from which the chain reaches the
//!   region's end intact (or to the end) becomes one extent: a live block when a root names
//!   its start and it holds something other than zeroes (the root keeps its data, a leak at
//!   worst), else free space (its blocks are lost, and said so);
//! - roots that name no live block: removed (a later `tm_root_get` would hand out free space);
//! - the dirty flag of a run that never closed the heap: cleared, last, once the rest is
//!   durable.
//!
//! The plan is made on a copy of the image and checked with `check_image` before one byte is
//! written: a plan that would not check sound writes nothing. The file's range is locked as
//! the library locks it when it opens a tier, so a heap in use is refused, not written under
//! a running process.

use super::check::{check_image, live_blocks, HeapReport};
use super::recover::{self, scan_from};
use super::roots;
use super::superblock::{self, DIRTY_AT, LAYOUT_VERSION, SUPERBLOCK_BYTES};
use crate::device::header::{HEADER_MAGIC, HEADER_SIZE, STATE_ALLOCATED, STATE_FREE};
use std::string::String;
use std::vec::Vec;

/// What `repair_file` did: one line per change (none for a sound, cleanly closed heap) and
/// the check of the repaired heap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    pub changes: Vec<String>,
    pub report: HeapReport,
}

/// The length of the region a heap's superblock names, if `superblock` (the first bytes of
/// the region, 4 KiB at least) is a tiermalloc superblock: how much of a file from its offset
/// the heap spans (a file may be longer, holding other things behind).
pub fn heap_region_len(superblock: &[u8]) -> Option<u64> {
    superblock::read(superblock).map(|f| f.region_len)
}

/// One write of the repair: `bytes` at `at` in the region.
struct Patch {
    at: u64,
    bytes: Vec<u8>,
}

fn header_bytes(size: u64, kind: u16, state: u16) -> Vec<u8> {
    let tail = HEADER_MAGIC as u64 | (kind as u64) << 32 | (state as u64) << 48;
    let mut b = size.to_le_bytes().to_vec();
    b.extend_from_slice(&tail.to_le_bytes());
    b
}

fn apply(image: &mut [u8], p: &Patch) {
    image[p.at as usize..p.at as usize + p.bytes.len()].copy_from_slice(&p.bytes);
}

/// The first 16-byte step behind `broken` from which the chain reaches the end intact.
fn chain_resumes(image: &[u8], broken: u64) -> u64 {
    let end = image.len() as u64;
    let mut at = broken + HEADER_SIZE;
    while at < end {
        let magic = u32::from_le_bytes(
            image[at as usize + 8..at as usize + 12]
                .try_into()
                .unwrap_or([0; 4]),
        );
        if magic == HEADER_MAGIC && scan_from(image, at, |_, _, _| true).is_ok() {
            return at;
        }
        at += HEADER_SIZE;
    }
    end
}

/// Plans the repair of `image` (a whole region holding a finished heap of its length), on
/// the image itself: the patches to write, the dirty flag's last, and a line for each.
fn plan(image: &mut [u8], changes: &mut Vec<String>) -> Vec<Patch> {
    let mut patches = Vec::new();
    let Some(fields) = superblock::read(image) else {
        return patches;
    };
    let mut root_starts = Vec::new();
    roots::for_each(image, |_, offset| root_starts.push(offset));
    // Each round mends the first break; a region of n granules has fewer than n breaks.
    while let Err(d) = recover::scan(image, |_, _, _| true) {
        let resume = chain_resumes(image, d.offset);
        let size = resume - d.offset - HEADER_SIZE;
        // All zeroes (a tail cut off and extended, a page never written): nothing to keep.
        let blank = image[(d.offset + HEADER_SIZE) as usize..resume as usize]
            .iter()
            .all(|&b| b == 0);
        let named = !blank && root_starts.contains(&(d.offset + HEADER_SIZE));
        let state = if named { STATE_ALLOCATED } else { STATE_FREE };
        let patch = Patch {
            at: d.offset,
            bytes: header_bytes(size, fields.kind as u16, state),
        };
        changes.push(std::format!(
            "offset {}: {}; bytes {}..{} made {}",
            d.offset,
            d.what,
            d.offset,
            resume,
            if named {
                "one live block, as the root naming it says (a leak at worst)"
            } else {
                "free space (any blocks there are lost)"
            }
        ));
        apply(image, &patch);
        patches.push(patch);
    }
    let mut live = Vec::new();
    let _ = recover::scan(image, |offset, len, extent| {
        live_blocks(offset, len, extent, |start, _| live.push(start));
        true
    });
    let mut dangling = Vec::new();
    roots::for_each_entry(image, |i, name, offset| {
        if live.binary_search(&offset).is_err() {
            dangling.push(i);
            changes.push(std::format!(
                "root \"{}\" named offset {offset}, which is no live block: removed",
                String::from_utf8_lossy(name)
            ));
        }
    });
    for i in dangling {
        let patch = Patch {
            at: roots::valid_flag_at(i),
            bytes: 0u64.to_le_bytes().to_vec(),
        };
        apply(image, &patch);
        patches.push(patch);
    }
    if !superblock::closed_cleanly(&fields) {
        let patch = Patch {
            at: DIRTY_AT,
            bytes: 0u32.to_le_bytes().to_vec(),
        };
        apply(image, &patch);
        patches.push(patch);
        changes.push(
            "the dirty flag (the last run never closed the heap) cleared: the heap checks sound"
                .into(),
        );
    }
    patches
}

/// Repairs the heap in the file (or device) at `path`, from byte `offset` on: see the module
/// comment. `Err` (nothing written) for a file that holds no tiermalloc heap, a heap in use, or
/// damage that the plan cannot make sound.
pub fn repair_file(path: &std::path::Path, offset: u64) -> Result<Repaired, String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let show = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| std::format!("{show}: {e}"))?;
    let file_len = file
        .metadata()
        .map_err(|e| std::format!("{show}: {e}"))?
        .len();
    let mut first = std::vec![0u8; SUPERBLOCK_BYTES as usize];
    let ours = |f: &superblock::Fields| {
        f.version == LAYOUT_VERSION
            && f.heap_start == SUPERBLOCK_BYTES
            && f.region_len % SUPERBLOCK_BYTES == 0
            && f.region_len >= 2 * SUPERBLOCK_BYTES
    };
    let region_len = match file_len >= offset + SUPERBLOCK_BYTES
        && file.read_exact_at(&mut first, offset).is_ok()
    {
        true => superblock::read(&first).filter(ours).map(|f| f.region_len),
        false => None,
    }
    .ok_or_else(|| {
        std::format!(
            "{show}: no tiermalloc superblock (magic TMHEAP) of a layout this version knows; left \
             untouched"
        )
    })?;
    // The lock a process using the range as a tier holds: a heap in use is not written.
    crate::backend::lock_range(file.as_raw_fd(), offset as usize, region_len as usize)
        .map_err(|_| std::format!("{show}: is in use by a running process; not repaired"))?;
    let mut changes = Vec::new();
    let have = file_len - offset;
    let extend = have < region_len;
    let mut image = Vec::new();
    image
        .try_reserve_exact(region_len as usize)
        .map_err(|_| std::format!("{show}: no memory to read its {region_len} bytes"))?;
    image.resize(region_len as usize, 0);
    file.read_exact_at(&mut image[..have.min(region_len) as usize], offset)
        .map_err(|e| std::format!("{show}: {e}"))?;
    if extend {
        changes.push(std::format!(
            "the file ends {} bytes short of the heap's region ({region_len} bytes from offset \
             {offset}): extended with zeroes",
            region_len - have
        ));
    }
    let patches = plan(&mut image, &mut changes);
    let report = check_image(&image).map_err(|why| std::format!("{show}: {why}"))?;
    if let Some(p) = report.problems.first() {
        return Err(std::format!(
            "{show}: the repair would leave a problem ({p}); nothing written"
        ));
    }
    let write = |p: &Patch| {
        file.write_all_at(&p.bytes, offset + p.at)
            .map_err(|e| std::format!("{show}: writing offset {}: {e}", p.at))
    };
    let sync = || file.sync_data().map_err(|e| std::format!("{show}: {e}"));
    if extend {
        file.set_len(offset + region_len)
            .map_err(|e| std::format!("{show}: extending it: {e}"))?;
    }
    // The dirty flag's patch (if any) is the last: cleared only once the rest is durable.
    let (flag, rest) = match patches.last() {
        Some(p) if p.at == DIRTY_AT => (Some(p), &patches[..patches.len() - 1]),
        _ => (None, &patches[..]),
    };
    rest.iter().try_for_each(write)?;
    sync()?;
    if let Some(p) = flag {
        write(p)?;
        sync()?;
    }
    Ok(Repaired { changes, report })
}
