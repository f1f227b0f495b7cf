//! Durable named roots: a table in the superblock's page mapping names (at most 63 bytes) to
//! block offsets, so that a later run finds what an earlier one left (`tm_root_set`,
//! `tm_root_get`).
//!
//! An entry is 80 bytes at `ROOTS_AT + 80 * i`: the name, NUL-padded to 64 bytes, the block's
//! offset from the region start (8 bytes), and a valid flag (8 bytes, 1 valid). A new entry
//! is written whole while invalid, then made valid by one store after an ordering point; a
//! root that moves is one 8-byte store of its offset; a removal one store of the flag. So a
//! crash leaves each root either as it was or as it was set. Callers serialise changes (the
//! tier's roots lock); the table is read only by `tm_root_get` and the checkers, never on a
//! malloc path.

use super::media;
use crate::backend::Region;

pub(crate) const ROOT_NAME_MAX: usize = 63;
const ROOTS_AT: u64 = 256;
pub(crate) const ROOT_SLOTS: usize = 48;
const ENTRY: u64 = 80;
const OFFSET_AT: u64 = 64;
const VALID_AT: u64 = 72;

const _: () = assert!(ROOTS_AT + ROOT_SLOTS as u64 * ENTRY <= super::SUPERBLOCK_BYTES);

/// Why a root could not be set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RootError {
    /// The name is empty, longer than 63 bytes, or holds a NUL.
    BadName,
    /// Every entry is taken.
    Full,
}

/// Where the valid flag of entry `i` lies in the region (8 bytes, 1 valid, 0 not).
pub(crate) fn valid_flag_at(i: usize) -> u64 {
    entry_at(i) + VALID_AT
}

fn entry_at(i: usize) -> u64 {
    ROOTS_AT + i as u64 * ENTRY
}

/// The valid entries of the table in `image` (the first 4 KiB of a region at least):
/// `f(name, offset)`.
pub(crate) fn for_each(image: &[u8], mut f: impl FnMut(&[u8], u64)) {
    for_each_entry(image, |_, name, offset| f(name, offset))
}

/// `for_each`, with each entry's index (`f(index, name, offset)`).
pub(crate) fn for_each_entry(image: &[u8], mut f: impl FnMut(usize, &[u8], u64)) {
    for i in 0..ROOT_SLOTS {
        let at = entry_at(i) as usize;
        let e = &image[at..at + ENTRY as usize];
        let valid = u64::from_le_bytes(e[72..80].try_into().unwrap_or([0; 8]));
        if valid == 1 {
            let name = &e[..64];
            let len = name
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(64)
                .min(ROOT_NAME_MAX);
            f(
                i,
                &name[..len],
                u64::from_le_bytes(e[64..72].try_into().unwrap_or([0; 8])),
            );
        }
    }
}

fn image(region: &Region) -> &[u8] {
    // SAFETY: the superblock page is mapped and readable as long as the region is.
    unsafe {
        core::slice::from_raw_parts(region.base as *const u8, super::SUPERBLOCK_BYTES as usize)
    }
}

fn check_name(name: &[u8]) -> Result<(), RootError> {
    if name.is_empty() || name.len() > ROOT_NAME_MAX || name.contains(&0) {
        return Err(RootError::BadName);
    }
    Ok(())
}

/// The entry index holding `name`, if any.
fn find(region: &Region, name: &[u8]) -> Option<usize> {
    let table = image(region);
    (0..ROOT_SLOTS).find(|&i| {
        let at = entry_at(i) as usize;
        let e = &table[at..at + ENTRY as usize];
        e[72..80] == 1u64.to_le_bytes() && e[..name.len()] == *name && e[name.len()] == 0
    })
}

/// The offset `name` maps to.
pub(crate) fn get(region: &Region, name: &[u8]) -> Option<u64> {
    check_name(name).ok()?;
    let i = find(region, name)?;
    let at = (entry_at(i) + OFFSET_AT) as usize;
    Some(u64::from_le_bytes(
        image(region)[at..at + 8].try_into().ok()?,
    ))
}

/// Maps `name` to `offset`, or removes it (`None`; removing a missing root is no error).
pub(crate) fn set(region: &Region, name: &[u8], offset: Option<u64>) -> Result<(), RootError> {
    check_name(name)?;
    match (find(region, name), offset) {
        (Some(i), Some(offset)) => {
            media::write_bytes(region, entry_at(i) + OFFSET_AT, &offset.to_le_bytes());
        }
        (Some(i), None) => {
            media::write_bytes(region, entry_at(i) + VALID_AT, &0u64.to_le_bytes());
        }
        (None, None) => {}
        (None, Some(offset)) => {
            let table = image(region);
            let i = (0..ROOT_SLOTS)
                .find(|&i| {
                    let at = (entry_at(i) + VALID_AT) as usize;
                    table[at..at + 8] != 1u64.to_le_bytes()
                })
                .ok_or(RootError::Full)?;
            let mut entry = [0u8; VALID_AT as usize];
            entry[..name.len()].copy_from_slice(name);
            entry[OFFSET_AT as usize..].copy_from_slice(&offset.to_le_bytes());
            media::write_bytes(region, entry_at(i), &entry);
            media::order(region);
            media::write_bytes(region, entry_at(i) + VALID_AT, &1u64.to_le_bytes());
        }
    }
    media::order(region);
    Ok(())
}
