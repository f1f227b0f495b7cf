//! This process's mappings of spaces, and how each kind is made.
//!
//! - the creator's mapping of its PRIVATE space: the device, shared, read-write (with the
//!   debug key `check_flush`: a private copy-on-write mapping whose pages reach the device
//!   only through `write_back`, emulating a CPU cache that is not coherent with other hosts);
//!   made read-only in place when the space is published;
//! - READ: the device, shared, read-only: no copy, a write faults;
//! - PRIVATE: the device, `MAP_PRIVATE`: pages are read from the device until written, and
//!   only written pages are copied into this process's memory. A device that refuses
//!   `MAP_PRIVATE` (device DAX does) gets a copy of the whole space in anonymous memory
//!   instead, as does the key `private=copy`.
//!
//! The table maps each base address to its space; it is process-local state (a host mutex
//! is right here: no other process ever sees it).

use super::{Errno, Pool};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The creator's read-write mapping of its private space.
    Creator,
    /// The creator's mapping after publish, or an open READ.
    Read,
    /// Copy-on-write of the device.
    Private,
    /// A private copy in anonymous memory (no MAP_PRIVATE on this device).
    PrivateCopy,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Mapping {
    pub base: usize,
    /// Where the space's extent starts in the pool.
    pub offset: u64,
    /// Bytes mapped (the space's extent length).
    pub len: usize,
    /// The space's size as created.
    pub size: u64,
    pub index: usize,
    pub id: u64,
    pub mode: Mode,
}

const MAX_MAPS: usize = 512;

pub(crate) struct MapTable {
    maps: [Option<Mapping>; MAX_MAPS],
}

impl MapTable {
    pub const fn new() -> Self {
        MapTable {
            maps: [None; MAX_MAPS],
        }
    }

    pub fn insert(&mut self, m: Mapping) -> bool {
        match self.maps.iter_mut().find(|s| s.is_none()) {
            Some(slot) => {
                *slot = Some(m);
                true
            }
            None => false,
        }
    }

    pub fn get(&self, base: usize) -> Option<Mapping> {
        self.maps.iter().flatten().find(|m| m.base == base).copied()
    }

    pub fn set_mode(&mut self, base: usize, mode: Mode) {
        if let Some(m) = self.maps.iter_mut().flatten().find(|m| m.base == base) {
            m.mode = mode;
        }
    }

    pub fn remove(&mut self, base: usize) -> Option<Mapping> {
        let slot = self
            .maps
            .iter_mut()
            .find(|s| matches!(s, Some(m) if m.base == base))?;
        slot.take()
    }

    /// Every mapping (copies).
    pub fn iter(&self) -> impl Iterator<Item = Mapping> + '_ {
        self.maps.iter().flatten().copied()
    }

    /// Every mapping, the table left empty.
    pub fn drain(&mut self) -> impl Iterator<Item = Mapping> + '_ {
        self.maps.iter_mut().filter_map(Option::take)
    }

    /// A forked child's table: the inherited mappings stay mapped but are not this node's.
    pub fn forget_all(&mut self) {
        self.maps = [None; MAX_MAPS];
    }
}

fn last_errno() -> Errno {
    crate::os::errno()
}

impl Pool {
    /// Maps the pool's bytes `[offset, offset + len)`.
    pub(crate) fn map_device(
        &self,
        offset: u64,
        len: usize,
        prot: i32,
        flags: i32,
        at: Option<usize>,
    ) -> Result<usize, Errno> {
        let fixed = if at.is_some() { libc::MAP_FIXED } else { 0 };
        // SAFETY: mapping our descriptor; with MAP_FIXED only over a mapping of ours that the
        // caller replaces.
        let p = unsafe {
            libc::mmap(
                at.unwrap_or(0) as *mut libc::c_void,
                len,
                prot,
                flags | fixed,
                self.fd,
                (self.spec.offset + offset) as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            Err(last_errno())
        } else {
            Ok(p as usize)
        }
    }

    /// A PRIVATE mapping of the space at `offset`: copy-on-write of the device, or a copy.
    pub(crate) fn map_private(&self, offset: u64, len: usize) -> Result<(usize, Mode), Errno> {
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        if self.spec.private == super::spec::PrivateHow::CopyOnWrite {
            if let Ok(base) = self.map_device(offset, len, rw, libc::MAP_PRIVATE, None) {
                return Ok((base, Mode::Private));
            }
        }
        let copy = crate::os::map_anonymous(len).ok_or(libc::ENOMEM)?.as_ptr();
        let source = match self.map_device(offset, len, libc::PROT_READ, libc::MAP_SHARED, None) {
            Ok(s) => s,
            Err(e) => {
                // SAFETY: our fresh anonymous mapping.
                unsafe { crate::os::unmap(copy, len) };
                return Err(e);
            }
        };
        // SAFETY: both mappings are `len` bytes, readable (source) and writable (copy),
        // disjoint; the source mapping is ours and unmapped right after.
        unsafe {
            core::ptr::copy_nonoverlapping(source as *const u8, copy, len);
        }
        // Every line of the source was read: none may stay in this host's caches after this
        // mapping goes (`host_cache`).
        super::coherence::invalidate(self.coherent(), source as *const u8, len);
        // SAFETY: our mapping, made above; nothing refers to it.
        unsafe { libc::munmap(source as *mut libc::c_void, len) };
        Ok((copy as usize, Mode::PrivateCopy))
    }

    /// Zeroes the pool's bytes `[offset, offset + len)` of a new space: a hole punched in a
    /// regular file (no bytes written), else stores through `base`.
    pub(crate) fn zero(&self, offset: u64, len: usize, base: usize) {
        if self.regular {
            // SAFETY: our descriptor; punching a hole in a range only this new space uses.
            let rc = unsafe {
                libc::fallocate(
                    self.fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    (self.spec.offset + offset) as libc::off_t,
                    len as libc::off_t,
                )
            };
            if rc == 0 && !self.spec.check_flush {
                return;
            }
        }
        // SAFETY: `base` maps `len` writable bytes of the new space (the creator's mapping).
        unsafe { (base as *mut u8).write_bytes(0, len) };
    }
}

/// Unmaps a mapping made here.
///
/// # Safety
/// Nothing may use `[base, base + len)` afterwards.
pub(crate) unsafe fn unmap(base: usize, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { libc::munmap(base as *mut libc::c_void, len) };
}
