//! `check_flush`, reader's side: a shadow of `host_cache`'s invariant, kept apart from the
//! protocol, so that a path that forgets to invalidate (or to leave a debt) is caught on one
//! machine, where caches are coherent and a stale line can never be seen.
//!
//! Per host (the `host=` key lets a test process play another host), a file next to the pool,
//! `PATH.lines-HOST`, holds one word per 4 KiB page of the pool: `id << 32 | debted << 16 |
//! holders`. `holders` counts the mappings of space `id` on that host that may have brought
//! the page's lines into its caches (every page of a mapping counts, from map to let-go);
//! `debted`, the holders that died and were reclaimed from another host, whose lines stay
//! until the host pays its debt. Mapping space S over a page whose word counts holders or
//! debts of another space is the stale read the protocol must make impossible: it is refused
//! (EIO) with one line on stderr. Only with `check_flush` and without `coherent`.

use super::{Errno, Pool};
use core::sync::atomic::{AtomicU64, Ordering};

const HOLDERS: u64 = 0xffff;
const DEBTED: u64 = 0xffff << 16;

/// One host's shadow file, mapped.
struct Shadow {
    words: *mut AtomicU64,
    pages: usize,
}

impl Shadow {
    fn open(pool: &Pool, host: u64) -> Option<Shadow> {
        let mut path = pool.spec.path.as_bytes().to_vec();
        path.extend_from_slice(format!(".lines-{host:016x}").as_bytes());
        let path = std::ffi::CString::new(path).ok()?;
        let pages = (pool.total_len / 4096) as usize;
        let bytes = pages * 8;
        // SAFETY: plain calls on a file of ours; the mapping is checked below.
        unsafe {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC,
                0o600,
            );
            if fd < 0 {
                return None;
            }
            libc::ftruncate(fd, bytes as libc::off_t);
            let p = libc::mmap(
                core::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            libc::close(fd);
            (p != libc::MAP_FAILED).then(|| Shadow {
                words: p.cast(),
                pages,
            })
        }
    }

    /// The words of pool bytes `[offset, offset + len)`.
    fn words(&self, offset: u64, len: u64) -> &[AtomicU64] {
        let first = (offset / 4096) as usize;
        let last = (offset + len).div_ceil(4096) as usize;
        let (first, last) = (first.min(self.pages), last.min(self.pages));
        // SAFETY: the mapping holds `pages` words, accessed only atomically, until drop.
        unsafe { core::slice::from_raw_parts(self.words.add(first), last - first) }
    }

    fn update(&self, offset: u64, len: u64, f: impl Fn(u64) -> u64) {
        for w in self.words(offset, len) {
            let _ = w.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(f(v)));
        }
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        // SAFETY: our mapping of `pages` words.
        unsafe { libc::munmap(self.words.cast(), self.pages * 8) };
    }
}

impl Pool {
    fn shadow(&self, host: u64) -> Option<Shadow> {
        (self.spec.check_flush && !self.coherent())
            .then(|| Shadow::open(self, host))
            .flatten()
    }

    /// This host maps space `id` at `[offset, offset + len)`: refused (EIO) if its caches may
    /// hold lines of another space there; else counted as a holder.
    pub(crate) fn shadow_map(&self, id: u64, offset: u64, len: u64) -> Result<(), Errno> {
        let Some(shadow) = self.shadow(self.host) else {
            return Ok(());
        };
        let id32 = id & 0xffff_ffff;
        for (page, w) in shadow.words(offset, len).iter().enumerate() {
            let v = w.load(Ordering::Acquire);
            if v & (HOLDERS | DEBTED) != 0 && v >> 32 != id32 {
                crate::os::say(format_args!(
                    "tiermalloc: pool: space id {id}: page {page} may be stale in this host's \
                     caches: {} mapping(s) and {} unpaid debt(s) of space id {} were never \
                     invalidated",
                    v & HOLDERS,
                    (v & DEBTED) >> 16,
                    v >> 32
                ));
                return Err(libc::EIO);
            }
        }
        shadow.update(offset, len, |v| {
            let same = v >> 32 == id32;
            let holders = if same { v & HOLDERS } else { 0 };
            let debted = if same { v & DEBTED } else { 0 };
            id32 << 32 | debted | (holders + 1).min(HOLDERS)
        });
        Ok(())
    }

    /// A mapping of `[offset, offset + len)` on this host was let go (its lines invalidated).
    pub(crate) fn shadow_let_go(&self, offset: u64, len: u64) {
        if let Some(shadow) = self.shadow(self.host) {
            shadow.update(offset, len, |v| {
                v & !HOLDERS | (v & HOLDERS).saturating_sub(1)
            });
        }
    }

    /// `count` mappings of a dead node of `host` were reclaimed: their lines invalidated now
    /// (`invalidated`, same host) or left as a debt of that host.
    pub(crate) fn shadow_dead(
        &self,
        host: u64,
        offset: u64,
        len: u64,
        count: u64,
        invalidated: bool,
    ) {
        if let Some(shadow) = self.shadow(host) {
            shadow.update(offset, len, |v| {
                let holders = (v & HOLDERS).saturating_sub(count);
                let debted = if invalidated {
                    (v & DEBTED) >> 16
                } else {
                    (((v & DEBTED) >> 16) + count).min(0xffff)
                };
                v & !(HOLDERS | DEBTED) | debted << 16 | holders
            });
        }
    }

    /// This host paid its debt over `[offset, offset + len)`.
    pub(crate) fn shadow_paid(&self, offset: u64, len: u64) {
        if let Some(shadow) = self.shadow(self.host) {
            shadow.update(offset, len, |v| v & !DEBTED);
        }
    }
}
