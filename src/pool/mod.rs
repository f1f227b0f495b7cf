//! The shared pool (seed 001): one device — a CXL memory device, a file, a PCI BAR — that any
//! number of processes on one or several hosts open at once, holding named *spaces*. A process
//! creates a private read-write space, fills it and publishes it; others open it read-only
//! (the device mapped directly) or privately (copy-on-write); a private copy can be published
//! again as a new space; spaces nobody maps are deleted by age.
//!
//! Everything the processes coordinate through lives on the device (`layout`): a superblock, a
//! redo log, a registry of nodes (one per process), a directory of spaces and a table of who
//! holds which space. Mutations take the pool lock — a word on the device naming its holder
//! (`lockfree::lease_lock`) — and go through the redo log (`txn`), so a process killed at any
//! instruction leaves either all or none of an operation's stores, and the next process to
//! take the lock finishes it. A dead holder is recognised by its registry slot (`registry`):
//! at once on the same host (its pid is gone), after its lease elsewhere. Look-ups take no
//! lock: directory entries are published records (`lockfree::published`) with a checksum.
//! No host-OS lock, file lock or futex coordinates anything, so hosts that share only the
//! device coordinate as processes on one host do (`exec_mark`'s file lock only tells, on its
//! own host, whether a node exec'd).
//!
//! Modules: `spec` (the `TIERMALLOC_POOL` keys), `layout` (the bytes on the device),
//! `coherence` (write-back and invalidation), `host_cache` (which lines a host may hold, so
//! that opening needs no invalidation), `stale_check` (its `check_flush` shadow), `fork` (a
//! forked child's inherited mappings counted as its own), `exec_mark` (a node that exec'd
//! told from one that lives), `txn` (lock + redo log), `registry` (nodes),
//! `directory` (entries), `extents` (where a space's bytes go), `map` (this process's
//! mappings), `pagemap` (which pages a mapping touched), `spaces` (the operations), `limits`
//! (saying which table is full), `check` (the consistency checker), `api` (the Rust types). The C
//! functions are in `front/capi_pool.rs`.

pub mod api;
pub mod check;
mod coherence;
mod directory;
mod exec_mark;
mod extents;
mod fork;
mod host_cache;
mod layout;
mod limits;
mod map;
mod nodes;
mod pagemap;
mod probe;
pub mod profile_records_for_test;
pub(crate) mod profiles;
pub(crate) mod registry;
pub mod share;
mod spaces;
mod spec;
mod stale_check;
pub mod testing;
mod txn;

pub use api::{MapMode, Space, SpaceMap, SpaceState};
pub use nodes::NodeInfo;
pub use probe::holds_pool;
pub use spec::PoolSpec;

use crate::os;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use layout::*;
use std::sync::{Arc, OnceLock, Weak};

/// An errno value: how every pool operation fails.
pub type Errno = i32;

/// One opened pool: the device's metadata mapped read-write, its geometry, this process's
/// node and mappings.
pub struct Pool {
    pub(crate) spec: PoolSpec,
    pub(crate) fd: i32,
    /// `[0, meta_len)` of the pool, mapped shared read-write: the metadata, `META_END` bytes,
    /// rounded up to the granule (device DAX maps only whole multiples of its alignment).
    meta: *mut u8,
    meta_len: usize,
    pub(crate) total_len: u64,
    pub(crate) data_start: u64,
    pub(crate) granule: u64,
    pub(crate) host: u64,
    /// Whether the file is a regular file (holes can be punched to zero a space).
    pub(crate) regular: bool,
    pub(crate) node: crate::futex_mutex::Mutex<registry::Node>,
    pub(crate) maps: crate::futex_mutex::Mutex<map::MapTable>,
    heartbeat_stop: Arc<AtomicBool>,
    /// This pool's own `Arc`, for the heartbeat thread a node starts when it joins.
    weak: OnceLock<Weak<Pool>>,
}

// SAFETY: `meta` points to a shared mapping owned by the pool, accessed only through atomics;
// the process-local parts are behind mutexes.
unsafe impl Send for Pool {}
// SAFETY: as above.
unsafe impl Sync for Pool {}

/// Why a pool could not be opened: a fixed reason and the errno of the failing call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenError {
    pub what: &'static str,
    pub errno: i32,
}

impl OpenError {
    fn new(what: &'static str) -> Self {
        OpenError { what, errno: 0 }
    }
    fn os(what: &'static str) -> Self {
        OpenError {
            what,
            errno: os::errno(),
        }
    }
}

impl core::fmt::Display for OpenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.errno != 0 {
            write!(
                f,
                "{}: {}",
                self.what,
                std::io::Error::from_raw_os_error(self.errno)
            )
        } else {
            f.write_str(self.what)
        }
    }
}

pub(crate) use crate::liveness::realtime_ns;

pub(crate) fn getpid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::getpid() as u32 }
}

impl Pool {
    /// Opens (formatting when new) the pool `spec` names, and starts this process's
    /// heartbeat. The node joins the registry on first use.
    pub fn open(spec: PoolSpec) -> Result<Arc<Pool>, OpenError> {
        let flags = libc::O_RDWR | libc::O_CLOEXEC | if spec.create { libc::O_CREAT } else { 0 };
        // SAFETY: the path is NUL-terminated.
        let fd = unsafe { libc::open(spec.path.as_ptr(), flags, 0o600 as libc::c_uint) };
        if fd < 0 {
            return Err(OpenError::os("cannot open"));
        }
        let close_on_error = |e: OpenError| {
            // SAFETY: our descriptor.
            unsafe { libc::close(fd) };
            e
        };
        let (len, regular) = pool_len(&spec, fd).map_err(close_on_error)?;
        let granule: u64 = if regular { 4096 } else { 2 << 20 };
        let data_start = (META_END as u64).next_multiple_of(granule);
        let total_len = len / granule * granule;
        if total_len < data_start + granule {
            return Err(close_on_error(OpenError::new(
                "is too small for a pool (metadata takes 96 KiB, plus one granule of data)",
            )));
        }
        let meta_len = data_start as usize;
        // SAFETY: mapping our descriptor's first meta_len bytes of the pool, shared.
        let meta = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                meta_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                spec.offset as libc::off_t,
            )
        };
        if meta == libc::MAP_FAILED {
            return Err(close_on_error(OpenError::os(
                "cannot map the pool's metadata",
            )));
        }
        let host = spec.host.unwrap_or_else(host_id);
        let mut pool = Pool {
            spec,
            fd,
            meta: meta.cast(),
            meta_len,
            total_len,
            data_start,
            granule,
            host,
            regular,
            node: crate::futex_mutex::Mutex::new(registry::Node::NONE),
            maps: crate::futex_mutex::Mutex::new(map::MapTable::new()),
            heartbeat_stop: Arc::new(AtomicBool::new(false)),
            weak: OnceLock::new(),
        };
        pool.format_or_attach()?;
        let pool = Arc::new(pool);
        let _ = pool.weak.set(Arc::downgrade(&pool));
        fork::register(Arc::as_ptr(&pool));
        Ok(pool)
    }

    /// The metadata word at byte offset `off`.
    pub(crate) fn word(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off % 8 == 0 && off < META_END);
        // SAFETY: `off` is inside the metadata mapping, which lives as long as `self`, and is
        // 8-aligned (the mapping is page-aligned); device words are only accessed atomically.
        unsafe { AtomicU64::from_ptr(self.meta.add(off).cast()) }
    }

    pub(crate) fn load(&self, off: usize) -> u64 {
        self.word(off).load(Ordering::Acquire)
    }

    pub(crate) fn meta_ptr(&self, off: usize) -> *const u8 {
        // SAFETY: inside the mapping (callers pass layout offsets).
        unsafe { self.meta.add(off) }
    }

    pub(crate) fn coherent(&self) -> bool {
        self.spec.coherent
    }

    /// Writes back metadata `[off, off + len)`.
    pub(crate) fn write_back_meta(&self, off: usize, len: usize) {
        coherence::write_back(self.coherent(), self.meta_ptr(off), len);
    }

    /// Invalidates metadata `[off, off + len)` before reading it.
    pub(crate) fn invalidate_meta(&self, off: usize, len: usize) {
        coherence::invalidate(self.coherent(), self.meta_ptr(off), len);
    }

    /// Formats a new (all-zero) pool, waits for another process formatting it, or checks an
    /// existing one.
    fn format_or_attach(&mut self) -> Result<(), OpenError> {
        let started = realtime_ns();
        let mut overwriting = false;
        loop {
            self.invalidate_meta(0, 4096);
            let magic = self.load(SB_MAGIC);
            if magic == MAGIC {
                return self.attach();
            }
            let claim = self.load(SB_FORMAT);
            if magic != 0 || (claim == 0 && !overwriting && !self.meta_is_zero()) {
                let heap = crate::device::persist::superblock::has_magic(&magic.to_le_bytes());
                if heap && !self.spec.format {
                    // `format` here would wipe a tier's persistent heap: say what it is.
                    return Err(OpenError::new(
                        "holds a tiermalloc heap (a tier's file, TIERMALLOC_TIERS's, not a \
                         pool); left untouched",
                    ));
                }
                if !self.spec.format || overwriting {
                    return Err(OpenError::new(
                        "holds data that is not a tiermalloc pool (add format to overwrite it)",
                    ));
                }
                overwriting = true;
                self.word(SB_MAGIC).store(0, Ordering::Release);
                self.word(SB_FORMAT).store(0, Ordering::Release);
                continue;
            }
            let now_secs = realtime_ns() / 1_000_000_000;
            let mine = now_secs << 32 | getpid() as u64;
            // A claim older than 5 s belongs to a formatter that died: take it over.
            let stale = claim != 0 && now_secs.saturating_sub(claim >> 32) > 5;
            if (claim == 0 || stale)
                && self
                    .word(SB_FORMAT)
                    .compare_exchange(claim, mine, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                self.format();
                return self.attach();
            }
            if realtime_ns() - started > 30_000_000_000 {
                return Err(OpenError::new(
                    "another process has been formatting it for 30 s",
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn meta_is_zero(&self) -> bool {
        (0..META_END)
            .step_by(8)
            .filter(|&off| off != SB_FORMAT)
            .all(|off| self.load(off) == 0)
    }

    fn format(&self) {
        for off in (8..META_END).step_by(8).filter(|&off| off != SB_FORMAT) {
            self.word(off).store(0, Ordering::Relaxed);
        }
        self.word(SB_VERSION).store(VERSION, Ordering::Relaxed);
        self.word(SB_TOTAL_LEN)
            .store(self.total_len, Ordering::Relaxed);
        self.word(SB_DATA_START)
            .store(self.data_start, Ordering::Relaxed);
        self.word(SB_GRANULE).store(self.granule, Ordering::Relaxed);
        self.word(SB_NEXT_ID).store(1, Ordering::Relaxed);
        self.write_back_meta(0, META_END);
        self.word(SB_MAGIC).store(MAGIC, Ordering::Release);
        self.word(SB_FORMAT).store(0, Ordering::Release);
        self.write_back_meta(0, 64);
    }

    /// Takes the geometry the superblock records.
    fn attach(&mut self) -> Result<(), OpenError> {
        if self.load(SB_VERSION) != VERSION {
            return Err(OpenError::new("is a pool of another layout version"));
        }
        let total = self.load(SB_TOTAL_LEN);
        let granule = self.load(SB_GRANULE);
        let data_start = self.load(SB_DATA_START);
        if total > self.total_len {
            return Err(OpenError::new(
                "is a pool larger than the file or size= given",
            ));
        }
        if !granule.is_power_of_two() || granule < 4096 || data_start < META_END as u64 {
            return Err(OpenError::new("has a damaged superblock"));
        }
        self.total_len = total;
        self.granule = granule;
        self.data_start = data_start;
        Ok(())
    }

    pub(crate) fn weak_self(&self) -> Option<Arc<Pool>> {
        self.weak.get()?.upgrade()
    }

    pub(crate) fn start_heartbeat(self: &Arc<Pool>) {
        let weak = Arc::downgrade(self);
        let stop = self.heartbeat_stop.clone();
        let period = std::time::Duration::from_millis((self.spec.lease_ms / 4).max(25));
        let _ = std::thread::Builder::new()
            .name("tiermalloc-pool".into())
            .spawn(move || loop {
                std::thread::sleep(period);
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                match weak.upgrade() {
                    Some(pool) => pool.heartbeat(),
                    None => return,
                }
            });
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        fork::unregister(self);
        self.heartbeat_stop.store(true, Ordering::Relaxed);
        self.leave();
        // SAFETY: the metadata mapping and descriptor are ours; nothing uses them after drop.
        unsafe {
            libc::munmap(self.meta.cast(), self.meta_len);
            libc::close(self.fd);
        }
    }
}

/// The pool's length in bytes, and whether the file is a regular file (else a character
/// device, whose size must be given).
fn pool_len(spec: &PoolSpec, fd: i32) -> Result<(u64, bool), OpenError> {
    // SAFETY: `st` is a valid out-parameter.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: our descriptor.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(OpenError::os("cannot stat"));
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => {
            let len = crate::backend::file_range_len(
                fd,
                st.st_size as u64,
                spec.size,
                spec.offset,
                spec.create,
            )
            .map_err(|p| OpenError {
                what: p.what,
                errno: p.errno,
            })?;
            Ok((len, true))
        }
        libc::S_IFCHR => Ok((
            spec.size
                .ok_or(OpenError::new("a device pool needs size="))?,
            false,
        )),
        _ => Err(OpenError::new(
            "is neither a regular file nor a character device",
        )),
    }
}

/// This host's identity (`liveness::host_id`).
fn host_id() -> u64 {
    crate::liveness::host_id()
}

/// The pool `TIERMALLOC_POOL` names, opened on first use; `None` (ENODEV for the caller) when
/// it is unset or cannot be opened, which is said once on stderr.
pub fn global() -> Option<&'static Arc<Pool>> {
    static GLOBAL: OnceLock<Option<Arc<Pool>>> = OnceLock::new();
    GLOBAL
        .get_or_init(|| {
            let text = os::getenv(b"TIERMALLOC_POOL")?;
            let report = |why: &dyn core::fmt::Display| {
                crate::os::say(format_args!(
                    "tiermalloc: TIERMALLOC_POOL: '{}': {why}; no pool",
                    String::from_utf8_lossy(text)
                ))
            };
            let spec = PoolSpec::parse(text).map_err(|why| report(&why)).ok()?;
            Pool::open(spec).map_err(|e| report(&e)).ok()
        })
        .as_ref()
}
