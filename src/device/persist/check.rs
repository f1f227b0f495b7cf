//! The offline checker: verifies a persistent heap image read-only (`tiermalloc check PATH`
//! calls `check_file`), with the same scan recovery uses plus the cross-checks recovery can
//! leave to the host metadata: roots that name no live block, slabs whose slots overlap the
//! next extent, free space accounting.

use super::recover::{self, Extent};
use super::{roots, superblock};
use std::string::String;
use std::vec::Vec;

/// What `check_file` found. `problems` is empty for a sound heap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeapReport {
    /// Bytes of the region (the file from `offset`).
    pub region_len: u64,
    pub heap_id: u64,
    /// Whether the last process that had the heap open closed it cleanly (its dirty flag
    /// clear). False after a kill or a crash; the scan recovers the heap either way.
    pub closed_cleanly: bool,
    /// Live blocks outside slabs, live slab slots, slabs with a live slot.
    pub blocks: u64,
    pub slots: u64,
    pub slabs: u64,
    /// Bytes of live blocks and slots, their headers included.
    pub in_use: u64,
    /// Bytes of free space and its largest extent (headers included).
    pub free_bytes: u64,
    pub largest_free: u64,
    /// Bytes of headers the scan read.
    pub bytes_read: u64,
    /// The roots: name and block offset.
    pub roots: Vec<(String, u64)>,
    /// One line per problem found.
    pub problems: Vec<String>,
}

/// Checks the heap in `image` (a whole region). `Err` when it holds no finished heap at all.
pub fn check_image(image: &[u8]) -> Result<HeapReport, String> {
    check_image_with_progress(image, &mut |_| {})
}

/// `check_image`, telling `progress` how far the scan has come (bytes of the region behind
/// it) now and then: for a progress bar over a large device.
pub fn check_image_with_progress(
    image: &[u8],
    progress: &mut dyn FnMut(u64),
) -> Result<HeapReport, String> {
    let fields = superblock::read(image).ok_or("no tiermalloc superblock (magic TMHEAP)")?;
    match superblock::examine(image) {
        superblock::Found::Heap => {}
        superblock::Found::Unfinished => return Err("a heap whose format never finished".into()),
        superblock::Found::OtherLength => {
            return Err(std::format!(
                "the superblock is for a region of {} bytes, the image has {}",
                fields.region_len,
                image.len()
            ))
        }
        superblock::Found::Other | superblock::Found::OtherLayout => {
            return Err(std::format!(
                "unknown heap layout version {}",
                fields.version
            ))
        }
    }
    let mut report = HeapReport {
        region_len: image.len() as u64,
        heap_id: fields.heap_id,
        closed_cleanly: superblock::closed_cleanly(&fields),
        ..HeapReport::default()
    };
    let mut live_starts = Vec::new();
    let mut free_run = 0u64;
    let mut told = 0u64;
    let scanned = recover::scan(image, |offset, len, extent| {
        if offset - told >= PROGRESS_STEP {
            told = offset;
            progress(offset);
        }
        match extent {
            Extent::Free | Extent::EmptySlab => {
                free_run += len;
                report.free_bytes += len;
                report.largest_free = report.largest_free.max(free_run);
                return true;
            }
            Extent::Block | Extent::Slab { .. } => {
                live_blocks(offset, len, extent, |start, bytes| {
                    live_starts.push(start);
                    report.in_use += bytes;
                })
            }
        }
        free_run = 0;
        true
    });
    match scanned {
        Ok(s) => {
            report.blocks = s.blocks;
            report.slots = s.live_slots;
            report.slabs = s.slabs;
            report.bytes_read = s.bytes_read;
        }
        Err(d) => report
            .problems
            .push(std::format!("offset {}: {}", d.offset, d.what)),
    }
    roots::for_each(image, |name, offset| {
        let name = String::from_utf8_lossy(name).into_owned();
        if live_starts.binary_search(&offset).is_err() {
            report.problems.push(std::format!(
                "root \"{name}\" names offset {offset}, which is no live block"
            ));
        }
        report.roots.push((name, offset));
    });
    Ok(report)
}

/// Bytes of the region between two calls of a progress callback.
const PROGRESS_STEP: u64 = 64 << 20;

/// The live blocks of one extent of the chain (the block, or a slab's live slots):
/// `f(block offset, bytes with its header)`, in address order.
pub(super) fn live_blocks(offset: u64, len: u64, extent: Extent, mut f: impl FnMut(u64, u64)) {
    match extent {
        Extent::Free | Extent::EmptySlab => {}
        Extent::Block => f(offset + 16, len),
        Extent::Slab { class, live, .. } => {
            let slot = crate::device::slabs::usable_of(class) + 16;
            for n in 0..crate::device::slabs::slots_of(class) {
                if live[n / 64] & (1 << (n % 64)) != 0 {
                    let at = offset + crate::device::slabs::SLAB_MARKER + n as u64 * slot;
                    f(at + 16, slot);
                }
            }
        }
    }
}

/// Checks the heap in the file (or device) at `path`, from byte `offset` on, read-only.
pub fn check_file(path: &std::path::Path, offset: u64) -> Result<HeapReport, String> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).map_err(|e| std::format!("{}: {e}", path.display()))?;
    let len = file
        .metadata()
        .map_err(|e| std::format!("{}: {e}", path.display()))?
        .len()
        .checked_sub(offset)
        .ok_or_else(|| std::format!("{}: shorter than offset {offset}", path.display()))?;
    let mut image = std::vec![0u8; len as usize & !4095];
    file.read_exact_at(&mut image, offset)
        .map_err(|e| std::format!("{}: {e}", path.display()))?;
    check_image(&image)
}
