//! The Rust API of the shared pool: `Pool` (opened from a spec or `TIERMALLOC_POOL`),
//! `Space` (what stat and list report), `SpaceMap` (a mapping of a space, giving `&[u8]`,
//! or `&mut [u8]` where the mode allows writing, and closing on drop).
//!
//! ```no_run
//! use tiermalloc::pool::{MapMode, Pool};
//! let pool = Pool::open_str("path=/dev/shm/my-pool,size=64M,create").unwrap();
//! let mut space = pool.create_space("weights", 1 << 20).unwrap();
//! space.as_mut_slice().unwrap()[0] = 42;
//! space.publish().unwrap();
//! let reader = pool.open_space("weights", MapMode::Read).unwrap();
//! assert_eq!(reader.as_slice()[0], 42);
//! ```

use super::spaces::{MapHow, SpaceView};
use super::{Pool, PoolSpec};
use std::io;
use std::sync::Arc;

pub use super::spaces::MapHow as MapMode;

/// Whether a space is still its creator's (read-write) or published (read-only, shared).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceState {
    Private,
    Shared,
}

/// A space as the directory records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Space {
    pub name: String,
    /// Unique in the pool, never reused.
    pub id: u64,
    pub size: u64,
    pub state: SpaceState,
    /// Live mappings held by processes, the creator's included.
    pub refs: u64,
    /// CLOCK_REALTIME of creation, in nanoseconds.
    pub created_ns: u64,
}

impl From<SpaceView> for Space {
    fn from(v: SpaceView) -> Space {
        let (name, len) = v.entry.name();
        Space {
            name: String::from_utf8_lossy(&name[..len]).into_owned(),
            id: v.entry.id(),
            size: v.entry.size(),
            state: if v.entry.state() == super::layout::SPACE_SHARED {
                SpaceState::Shared
            } else {
                SpaceState::Private
            },
            refs: v.refs,
            created_ns: v.entry.created(),
        }
    }
}

fn os_error(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

/// One mapping of a space; closed (unmapped, its reference given back) on drop.
pub struct SpaceMap {
    pool: Arc<Pool>,
    base: usize,
    size: usize,
    writable: bool,
}

impl SpaceMap {
    /// The space's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `base` maps at least `size` readable bytes until drop.
        unsafe { core::slice::from_raw_parts(self.base as *const u8, self.size) }
    }

    /// The space's bytes, writable: the creator's mapping before publish, or a PRIVATE
    /// mapping (the writes stay in this process). `None` for a READ mapping.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        // SAFETY: `base` maps `size` bytes, writable when `writable`; `&mut self` makes the
        // borrow unique.
        self.writable
            .then(|| unsafe { core::slice::from_raw_parts_mut(self.base as *mut u8, self.size) })
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.base as *const u8
    }

    pub fn len(&self) -> usize {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Publishes the creator's private space: from now on it is read-only and others can
    /// open it.
    pub fn publish(&mut self) -> io::Result<()> {
        self.pool.publish(self.base).map_err(os_error)?;
        self.writable = false;
        Ok(())
    }

    /// This PRIVATE mapping's contents as a new shared space, opened READ.
    pub fn republish(&self, name: &str) -> io::Result<SpaceMap> {
        let base = self
            .pool
            .republish(self.base, name.as_bytes())
            .map_err(os_error)?;
        Ok(SpaceMap {
            pool: self.pool.clone(),
            base,
            size: self.size,
            writable: false,
        })
    }
}

impl Drop for SpaceMap {
    fn drop(&mut self) {
        let _ = self.pool.close(self.base);
    }
}

impl Pool {
    /// Opens the pool a `TIERMALLOC_POOL`-style spec names (`path=…,size=…,create`).
    pub fn open_str(spec: &str) -> io::Result<Arc<Pool>> {
        let spec = PoolSpec::parse(spec.as_bytes())
            .map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))?;
        Pool::open(spec).map_err(|e| io::Error::other(e.to_string()))
    }

    /// A new private space, zeroed, mapped read-write for this process.
    pub fn create_space(self: &Arc<Self>, name: &str, size: usize) -> io::Result<SpaceMap> {
        let base = self
            .create(name.as_bytes(), size as u64)
            .map_err(os_error)?;
        Ok(SpaceMap {
            pool: self.clone(),
            base,
            size,
            writable: true,
        })
    }

    /// Opens a shared space: READ maps the device read-only, PRIVATE copy-on-write.
    pub fn open_space(self: &Arc<Self>, name: &str, how: MapMode) -> io::Result<SpaceMap> {
        let (base, size) = self.open_shared(name.as_bytes(), how).map_err(os_error)?;
        Ok(SpaceMap {
            pool: self.clone(),
            base,
            size: size as usize,
            writable: how == MapHow::Private,
        })
    }

    /// The space named `name`.
    pub fn space(&self, name: &str) -> io::Result<Space> {
        self.stat(name.as_bytes())
            .map(Space::from)
            .map_err(os_error)
    }

    /// Every space of the pool.
    pub fn spaces(&self) -> Vec<Space> {
        let mut all = Vec::new();
        self.list(|v| all.push(Space::from(v)));
        all
    }

    /// Applies the deletion rule: how many spaces were deleted.
    pub fn collect_spaces(&self, min_age: std::time::Duration) -> io::Result<usize> {
        self.collect(min_age.as_millis() as u64).map_err(os_error)
    }

    /// Bytes of the data area not used by any space.
    pub fn free_space(&self) -> u64 {
        let _ = self.sweep();
        self.free_bytes()
    }
}
