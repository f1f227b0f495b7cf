//! Which of the pool's data bytes a host's caches may hold, so that opening a space needs no
//! invalidation on a device whose hosts do not share caches (CXL 2.0).
//!
//! A space's bytes change only between its create and its publish, by its creator, who
//! writes them back before the publish store (`spaces::publish`); from then on they are read
//! only until the space is deleted, and a space is deleted only when nothing maps it. So a
//! reader on host H can read a stale line of space S only if H's caches kept a line of S's
//! extent from *before* S was written: a line of an earlier space on the same bytes. This
//! module keeps the invariant that rules that out:
//!
//! > **A host's caches hold a line of the data area only while a mapping of that byte lives
//! > on the host, or while a debt in the pool names the host and covers the byte.**
//!
//! It is kept by the side that let go of the bytes, not by the next reader:
//! - a process closing a mapping first invalidates (`clflushopt`: writes back and drops) the
//!   pages it touched — those present in its page tables (/proc/self/pagemap); a CPU loads a
//!   line only through a translation it has, and prefetchers stay within a present page.
//!   A PRIVATE mapping's copied pages were read from the device by the kernel, so it
//!   invalidates those through a mapping of the device; a copy made at open (`private=copy`)
//!   invalidates the source right after copying; republish invalidates the source bytes the
//!   kernel copied (`copy_file_range`);
//! - a node that dies cannot do it. The process that reclaims its holdings (`sweep`) does it for
//!   it when it runs on the same host (before the reference is given back). A node found dead
//!   from another host (its lease ran out) leaves a *debt* for its host in the pool: `[lo, hi)`
//!   (the hull of what it held), which the next process of that host to create or open a space
//!   pays — invalidates the range — under the pool lock before it maps anything. If the debt
//!   table is full, the holding is not released: the space stays referenced (not deleted,
//!   its bytes not reused), which is safe, and said once on stderr.
//!
//! Opening therefore costs no invalidation of the space, whatever its size; closing costs one
//! read of the mapping's pagemap and an invalidation of the pages touched (proportional to
//! what the reader read). With `coherent` none of this runs. `check_flush` also keeps a shadow
//! of the invariant (`stale_check`) and refuses a mapping the invariant does not cover.
//!
//! What is assumed: the kernel touches the device's bytes only when asked (`copy_file_range`,
//! the `check_flush` mode's `pread`/`pwrite`), so speculative loads through its direct map are
//! not a source of lines; and a node found dead by its lease really is dead (the lease must
//! exceed any stall). A creator found dead from another host may have left *dirty* lines on its
//! host, which that host may write back at any time: its private space's bytes are freed with
//! a debt like any other, which removes them from that host's caches only when the debt is
//! paid (the same hazard a pool without this module has; a quarantine of such extents until
//! the debt is paid is not done).

use super::coherence;
use super::layout::*;
use super::map::{Mapping, Mode};
use super::txn::Txn;
use super::{testing, Pool};

/// Ranges `(from, len)` (bytes, page-aligned, relative to `base`) of the mapping
/// `[base, base + len)` that this process touched: present in its page tables, or swapped
/// out. `None` if its page tables cannot be read.
pub(crate) fn touched_ranges(base: usize, len: usize) -> Option<Vec<(usize, usize)>> {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    super::pagemap::touched(base, len, |from, l, _| match ranges.last_mut() {
        Some(last) if last.0 + last.1 == from => last.1 += l,
        _ => ranges.push((from, l)),
    })?;
    Some(ranges)
}

impl Pool {
    /// Before this process unmaps `m`: invalidates on this host the lines it may have brought
    /// into the caches (see the module comment).
    pub(crate) fn let_go(&self, m: &Mapping) {
        if self.coherent() {
            return;
        }
        match m.mode {
            Mode::PrivateCopy => {} // its source was invalidated right after the copy
            Mode::Creator | Mode::Read => match touched_ranges(m.base, m.len) {
                Some(ranges) => {
                    for (from, len) in ranges {
                        coherence::invalidate(false, (m.base + from) as *const u8, len);
                    }
                }
                None => coherence::invalidate(false, m.base as *const u8, m.len),
            },
            Mode::Private => {
                let ranges = touched_ranges(m.base, m.len).unwrap_or_else(|| vec![(0, m.len)]);
                if !ranges.is_empty() {
                    self.invalidate_device(m.offset, m.len, &ranges, false);
                }
            }
        }
        self.shadow_let_go(m.offset, m.len as u64);
    }

    /// Invalidates on this host the pool's bytes `[offset + from, offset + from + len)` for
    /// each of `ranges`, through a mapping of the device `[offset, offset + extent)` made for
    /// the purpose (`populate` when the ranges cover most of it).
    pub(crate) fn invalidate_device(
        &self,
        offset: u64,
        extent: usize,
        ranges: &[(usize, usize)],
        populate: bool,
    ) {
        let flags = libc::MAP_SHARED | if populate { libc::MAP_POPULATE } else { 0 };
        match self.map_device(offset, extent, libc::PROT_READ, flags, None) {
            Ok(base) => {
                for &(from, len) in ranges {
                    coherence::invalidate(false, (base + from) as *const u8, len);
                }
                // SAFETY: our mapping, made just above, used by nothing else.
                unsafe { super::map::unmap(base, extent) };
            }
            Err(e) => crate::os::say(format_args!(
                "tiermalloc: pool: cannot map bytes [{offset:#x}, +{extent:#x}) to invalidate \
                 them: {}",
                std::io::Error::from_raw_os_error(e)
            )),
        }
    }

    /// This host's debt record, if any.
    fn my_debt(&self) -> Option<usize> {
        (0..MAX_DEBTS).find(|&d| self.load(debt_at(d) + D_HOST) == self.host)
    }

    /// Pays this host's debt, under the pool lock and before mapping anything: invalidates the
    /// range and plans the stores that clear the record into `txn`.
    pub(crate) fn pay_debt(&self, txn: &mut Txn) {
        if self.coherent() {
            return;
        }
        let Some(d) = self.my_debt() else { return };
        let at = debt_at(d);
        let (lo, hi) = (self.load(at + D_LO), self.load(at + D_HI));
        if lo < hi && hi <= self.total_len {
            let len = (hi - lo) as usize;
            self.invalidate_device(lo, len, &[(0, len)], true);
            self.shadow_paid(lo, hi - lo);
        }
        txn.set(at + D_LO, 0);
        txn.set(at + D_HI, 0);
        txn.set(at + D_HOST, 0);
    }

    /// Plans the stores recording that `host` may cache lines of `[lo, hi)` (widening its
    /// debt); false if the debt table is full. At most one per transaction.
    pub(crate) fn txn_owe(&self, txn: &mut Txn, host: u64, lo: u64, hi: u64) -> bool {
        if testing::debts_forgotten() {
            return true; // the broken protocol the checker must catch
        }
        let existing = (0..MAX_DEBTS).find(|&d| self.load(debt_at(d) + D_HOST) == host);
        let Some(d) =
            existing.or_else(|| (0..MAX_DEBTS).find(|&d| self.load(debt_at(d) + D_HOST) == 0))
        else {
            return false;
        };
        let at = debt_at(d);
        let (old_lo, old_hi) = (self.load(at + D_LO), self.load(at + D_HI));
        let (new_lo, new_hi) = if existing.is_some() && old_lo < old_hi {
            (old_lo.min(lo), old_hi.max(hi))
        } else {
            (lo, hi)
        };
        txn.set(at + D_LO, new_lo);
        txn.set(at + D_HI, new_hi);
        txn.set(at + D_HOST, host);
        true
    }

    /// Before a dead node's holding of the space at `[offset, offset + len)` is released:
    /// invalidates the bytes now if the node ran on this host, else plans its host's debt.
    /// False if neither can be done (the debt table is full): keep the holding.
    pub(crate) fn forget_dead_lines(
        &self,
        txn: &mut Txn,
        host: u64,
        offset: u64,
        len: u64,
        count: u64,
    ) -> bool {
        if self.coherent() {
            return true;
        }
        if host == self.host {
            self.invalidate_device(offset, len as usize, &[(0, len as usize)], true);
            self.shadow_dead(host, offset, len, count, true);
            return true;
        }
        if !self.txn_owe(txn, host, offset, offset + len) {
            self.say_full("host debt table", MAX_DEBTS);
            return false;
        }
        self.shadow_dead(host, offset, len, count, false);
        true
    }
}
