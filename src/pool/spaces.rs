//! The space operations of seed 001, as the contract (DESIGN.md, "The shared pool") states
//! them: create, publish, open (READ or PRIVATE), close, republish, stat, list, collect.
//!
//! Each mutation is one or a few transactions under the pool lock (`txn`); mappings are made
//! outside the lock, after the reference that protects them is counted, and a failed mapping
//! gives its reference back. Deletion rule: a SHARED space with `refs == 0` and age (now −
//! created) at least the given age; a PRIVATE space whose creator closed it or died.
//!
//! Costs: publish writes back the space's bytes (unless `coherent`) and stores three words;
//! open stores five; a READ mapping copies nothing; a PRIVATE mapping copies each page the
//! process writes, when it writes it; republish writes the new extent once (the pages the
//! process wrote from its memory, the others device to device with `copy_file_range`, which
//! faults nothing into either mapping), then publishes it.

use super::coherence;
use super::directory::Entry;
use super::layout::*;
use super::map::{self, Mapping, Mode};
use super::txn::Txn;
use super::{realtime_ns, Errno, Pool};

/// How a shared space is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapHow {
    Read,
    Private,
}

/// A space as `stat` and `list` report it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpaceView {
    pub entry: Entry,
    pub refs: u64,
}

fn check_name(name: &[u8]) -> Result<(), Errno> {
    if name.len() > NAME_MAX {
        Err(libc::ENAMETOOLONG)
    } else if name.is_empty() || name.contains(&0) {
        Err(libc::EINVAL)
    } else {
        Ok(())
    }
}

impl Pool {
    fn auto_collect(&self) {
        if let Some(age) = self.spec.collect_age_ms {
            let _ = self.collect(age);
        }
    }

    /// A new PRIVATE space of `size` bytes (zeroed), mapped read-write for this process.
    pub(crate) fn create(&self, name: &[u8], size: u64) -> Result<usize, Errno> {
        check_name(name)?;
        if size == 0 {
            return Err(libc::EINVAL);
        }
        // A size the data area could never hold, `SIZE_MAX` (whose rounding overflows)
        // included: ENOSPC, said in one line with the name and the size.
        let Some(len) = size
            .checked_next_multiple_of(self.granule)
            .filter(|&len| len <= self.total_len - self.data_start)
        else {
            self.say_too_large(name, size);
            return Err(libc::ENOSPC);
        };
        self.auto_collect();
        // Room or the name may be held by a dead creator's private space: sweep, then again
        // (`stat` and `list` sweep first, so they call such a name free).
        let entry = self.create_entry(name, size, len).or_else(|e| match e {
            libc::ENOSPC | libc::EEXIST => {
                self.sweep()?;
                self.create_entry(name, size, len).inspect_err(|&e| {
                    if e == libc::ENOSPC {
                        self.say_why_no_space(name, len);
                    }
                })
            }
            e => Err(e),
        })?;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = if self.spec.check_flush {
            libc::MAP_PRIVATE
        } else {
            libc::MAP_SHARED
        };
        let mapping = Mapping {
            base: 0,
            offset: entry.offset(),
            len: len as usize,
            size,
            index: entry.index,
            id: entry.id(),
            mode: Mode::Creator,
        };
        let mapped = self
            .shadow_map(entry.id(), entry.offset(), len)
            .and_then(|()| {
                self.map_device(entry.offset(), len as usize, prot, flags, None)
                    .inspect_err(|_| self.shadow_let_go(entry.offset(), len))
            });
        let base = match mapped {
            Ok(base) => base,
            Err(e) => {
                self.drop_reference(&mapping);
                return Err(e);
            }
        };
        self.zero(entry.offset(), len as usize, base);
        self.remember(Mapping { base, ..mapping })?;
        Ok(base)
    }

    fn create_entry(&self, name: &[u8], size: u64, len: u64) -> Result<Entry, Errno> {
        let locked = self.lock()?;
        if self.find(name, |s| s != SPACE_FREE).is_some() {
            return Err(libc::EEXIST);
        }
        let (index, old_publish) = self.free_entry_index().ok_or(libc::ENOSPC)?;
        let offset = self.find_gap(len).ok_or(libc::ENOSPC)?;
        let id = self.load(SB_NEXT_ID);
        let entry = Entry::new(
            index,
            id,
            size,
            offset,
            len,
            realtime_ns(),
            locked.tag,
            name,
        );
        let mut txn = Txn::new();
        self.txn_write_entry(&mut txn, &entry, old_publish, SPACE_PRIVATE);
        self.txn_hold(&mut txn, locked.tag, &entry)
            .ok_or(libc::ENOSPC)?;
        txn.set(SB_NEXT_ID, id + 1);
        self.pay_debt(&mut txn);
        locked.commit(&txn);
        Ok(entry)
    }

    /// Records a mapping in this process's table; a full table gives the reference back.
    fn remember(&self, m: Mapping) -> Result<(), Errno> {
        if self.maps.lock().insert(m) {
            return Ok(());
        }
        self.let_go(&m);
        // SAFETY: the mapping was just made and never handed out.
        unsafe { map::unmap(m.base, m.len) };
        self.drop_reference(&m);
        Err(libc::ENOMEM)
    }

    /// Gives back the reference `m` counted; deletes a private space its creator let go.
    fn drop_reference(&self, m: &Mapping) {
        let Ok(locked) = self.lock() else { return };
        let Some(entry) = self.read_entry(m.index).filter(|e| e.id() == m.id) else {
            return;
        };
        let mut txn = Txn::new();
        self.txn_unhold(&mut txn, locked.tag, &entry);
        if entry.state() == SPACE_PRIVATE && m.mode == Mode::Creator {
            self.txn_free_entry(&mut txn, &entry);
        }
        locked.commit(&txn);
    }

    /// PRIVATE -> SHARED: the creator's mapping becomes read-only, the bytes are written
    /// back, then the entry's state changes with one publish store.
    pub(crate) fn publish(&self, base: usize) -> Result<(), Errno> {
        let m = self
            .maps
            .lock()
            .get(base)
            .filter(|m| m.mode == Mode::Creator)
            .ok_or(libc::EINVAL)?;
        // SAFETY: `base` is our mapping of `m.len` bytes.
        if unsafe { libc::mprotect(base as *mut libc::c_void, m.len, libc::PROT_READ) } != 0 {
            return Err(crate::os::errno());
        }
        let entry = self
            .read_entry(m.index)
            .filter(|e| e.id() == m.id && e.state() == SPACE_PRIVATE)
            .ok_or(libc::EINVAL)?;
        let flushed = m.len - (super::testing::short_flush_bytes() as usize).min(m.len);
        if self.spec.check_flush {
            self.emulated_write_back(&entry, base, flushed)?;
            self.check_written_back(&entry, base, m.len)?;
            self.map_device(
                entry.offset(),
                m.len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                Some(base),
            )?;
        } else {
            coherence::write_back(self.coherent(), base as *const u8, flushed);
        }
        let locked = self.lock()?;
        let entry = self
            .read_entry(m.index)
            .filter(|e| e.id() == m.id && e.state() == SPACE_PRIVATE)
            .ok_or(libc::EINVAL)?;
        let mut txn = Txn::new();
        self.txn_set_state(&mut txn, &entry, SPACE_SHARED);
        locked.commit(&txn);
        drop(locked);
        self.maps.lock().set_mode(base, Mode::Read);
        Ok(())
    }

    /// `check_flush`: the creator's pages are private, so only what `write_back` copies
    /// reaches the device, as on a host whose cache other hosts do not see.
    fn emulated_write_back(&self, entry: &Entry, base: usize, len: usize) -> Result<(), Errno> {
        let mut done = 0;
        while done < len {
            // SAFETY: reading our mapping; writing our descriptor.
            let n = unsafe {
                libc::pwrite(
                    self.fd,
                    (base + done) as *const libc::c_void,
                    len - done,
                    (self.spec.offset + entry.offset() + done as u64) as libc::off_t,
                )
            };
            if n <= 0 {
                return Err(libc::EIO);
            }
            done += n as usize;
        }
        Ok(())
    }

    /// `check_flush`: every byte of the space on the device equals the creator's view.
    fn check_written_back(&self, entry: &Entry, base: usize, len: usize) -> Result<(), Errno> {
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0;
        while done < len {
            let want = buf.len().min(len - done);
            // SAFETY: reading our descriptor into our buffer.
            let n = unsafe {
                libc::pread(
                    self.fd,
                    buf.as_mut_ptr().cast(),
                    want,
                    (self.spec.offset + entry.offset() + done as u64) as libc::off_t,
                )
            };
            if n <= 0 {
                return Err(libc::EIO);
            }
            let n = n as usize;
            // SAFETY: `base` maps `len` readable bytes.
            let view = unsafe { core::slice::from_raw_parts((base + done) as *const u8, n) };
            if let Some(i) = (0..n).find(|&i| view[i] != buf[i]) {
                let (name, name_len) = entry.name();
                crate::os::say(format_args!(
                    "tiermalloc: pool: space '{}': byte {} was not written back before its publish \
                     store",
                    String::from_utf8_lossy(&name[..name_len]),
                    done + i
                ));
                return Err(libc::EIO);
            }
            done += n;
        }
        Ok(())
    }

    /// Opens a SHARED space: its base and size.
    pub(crate) fn open_shared(&self, name: &[u8], how: MapHow) -> Result<(usize, u64), Errno> {
        check_name(name)?;
        let mut counted = None;
        for _ in 0..8 {
            let seen = self.find(name, |s| s == SPACE_SHARED).ok_or(libc::ENOENT)?;
            let locked = self.lock()?;
            match self.read_entry(seen.index) {
                Some(now) if now.publish == seen.publish => {
                    let mut txn = Txn::new();
                    if self.txn_hold(&mut txn, locked.tag, &now).is_none() {
                        self.say_full("holdings table", MAX_HOLDINGS);
                        return Err(libc::ENOSPC);
                    }
                    self.pay_debt(&mut txn);
                    locked.commit(&txn);
                    counted = Some(now);
                    break;
                }
                _ => continue, // deleted or republished meanwhile: look again
            }
        }
        let entry = counted.ok_or(libc::ENOENT)?;
        let len = entry.len() as usize;
        let mapping = Mapping {
            base: 0,
            offset: entry.offset(),
            len,
            size: entry.size(),
            index: entry.index,
            id: entry.id(),
            mode: Mode::Read,
        };
        // No invalidation: this host holds no line of the extent that predates the space
        // (`host_cache`).
        if let Err(e) = self.shadow_map(entry.id(), entry.offset(), len as u64) {
            self.drop_reference(&mapping);
            return Err(e);
        }
        let mapped = match how {
            MapHow::Read => self
                .map_device(entry.offset(), len, libc::PROT_READ, libc::MAP_SHARED, None)
                .map(|b| (b, Mode::Read)),
            MapHow::Private => self.map_private(entry.offset(), len),
        };
        let (base, mode) = match mapped {
            Ok(m) => m,
            Err(e) => {
                self.shadow_let_go(entry.offset(), len as u64);
                self.drop_reference(&mapping);
                return Err(e);
            }
        };
        self.remember(Mapping {
            base,
            mode,
            ..mapping
        })?;
        Ok((base, entry.size()))
    }

    /// Unmaps a mapping of ours and gives its reference back.
    pub(crate) fn close(&self, base: usize) -> Result<(), Errno> {
        let m = self.maps.lock().remove(base).ok_or(libc::EINVAL)?;
        self.let_go(&m);
        // SAFETY: the caller gives the mapping up (contract of tm_space_close).
        unsafe { map::unmap(m.base, m.len) };
        self.drop_reference(&m);
        self.auto_collect();
        Ok(())
    }

    /// A PRIVATE mapping's contents as a new SHARED space named `name`, opened READ.
    pub(crate) fn republish(&self, base: usize, name: &[u8]) -> Result<usize, Errno> {
        let m = self
            .maps
            .lock()
            .get(base)
            .filter(|m| matches!(m.mode, Mode::Private | Mode::PrivateCopy))
            .ok_or(libc::EINVAL)?;
        let new = self.create(name, m.size)?;
        self.copy_private(&m, new);
        if let Err(e) = self.publish(new) {
            let _ = self.close(new);
            return Err(e);
        }
        Ok(new)
    }

    /// Copies PRIVATE mapping `m` into the new space at `new` (its creator's mapping): the
    /// pages this process wrote from its memory, the others from the device to the device by
    /// `copy_file_range`, without faulting them into either mapping. Where the pages cannot be
    /// told apart (no /proc/self/pagemap, a copy made at open, `check_flush`, a device file),
    /// the whole mapping is copied.
    fn copy_private(&self, m: &Mapping, new: usize) {
        let copy = |from: usize, len: usize| {
            // SAFETY: `[from, from + len)` lies in both mappings (each `m.len` bytes): the
            // source readable, the new space writable; they are distinct mappings.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    (m.base + from) as *const u8,
                    (new + from) as *mut u8,
                    len,
                )
            }
        };
        let source = self.read_entry(m.index).filter(|e| e.id() == m.id);
        let target = self
            .maps
            .lock()
            .get(new)
            .and_then(|t| self.read_entry(t.index));
        let written = (m.mode == Mode::Private && self.regular && !self.spec.check_flush)
            .then(|| written_pages(m.base, m.len))
            .flatten();
        let (Some(source), Some(target), Some(written)) = (source, target, written) else {
            copy(0, m.len);
            return;
        };
        let mut page = 0;
        let mut read_by_kernel = Vec::new();
        while page < written.len() {
            let run = written[page..]
                .iter()
                .take_while(|&&w| w == written[page])
                .count();
            let (from, len) = (page * crate::os::PAGE_SIZE, run * crate::os::PAGE_SIZE);
            if written[page] {
                copy(from, len);
            } else if self.copy_on_device(
                source.offset() + from as u64,
                target.offset() + from as u64,
                len,
            ) {
                read_by_kernel.push((from, len));
            } else {
                copy(from, len);
            }
            page += run;
        }
        // The kernel read those source bytes on this host: drop its lines (`host_cache`). The
        // target's are written back and dropped by the publish that follows.
        if !self.coherent() && !read_by_kernel.is_empty() {
            self.invalidate_device(source.offset(), m.len, &read_by_kernel, false);
        }
    }

    /// Copies `len` bytes of the pool from `from` to `to` inside the kernel.
    fn copy_on_device(&self, from: u64, to: u64, len: usize) -> bool {
        let mut src = (self.spec.offset + from) as libc::loff_t;
        let mut dst = (self.spec.offset + to) as libc::loff_t;
        let mut left = len;
        while left > 0 {
            // SAFETY: our descriptor, both ranges inside the pool; the offsets are ours.
            let n = unsafe { libc::copy_file_range(self.fd, &mut src, self.fd, &mut dst, left, 0) };
            if n <= 0 {
                return false;
            }
            left -= n as usize;
        }
        true
    }

    /// The space named `name` (PRIVATE or SHARED).
    pub(crate) fn stat(&self, name: &[u8]) -> Result<SpaceView, Errno> {
        // As create and open: an empty name (or one with a NUL) is EINVAL, not ENOENT.
        check_name(name)?;
        let _ = self.sweep();
        let entry = self.find(name, |s| s != SPACE_FREE).ok_or(libc::ENOENT)?;
        Ok(SpaceView {
            refs: self.refs(entry.index),
            entry,
        })
    }

    /// Every space, in directory order.
    pub(crate) fn list(&self, mut visit: impl FnMut(SpaceView)) -> usize {
        let _ = self.sweep();
        let mut n = 0;
        for index in 0..MAX_SPACES {
            if let Some(entry) = self.read_entry(index) {
                visit(SpaceView {
                    refs: self.refs(index),
                    entry,
                });
                n += 1;
            }
        }
        n
    }

    /// Deletes the SHARED spaces with `refs == 0` and age >= `min_age_ms`, and the private
    /// spaces of dead creators: how many.
    pub(crate) fn collect(&self, min_age_ms: u64) -> Result<usize, Errno> {
        let mut deleted = self.sweep()?;
        let locked = self.lock()?;
        let now = realtime_ns();
        for index in 0..MAX_SPACES {
            let Some(entry) = self.read_entry(index) else {
                continue;
            };
            let old_enough = now.saturating_sub(entry.created()) / 1_000_000 >= min_age_ms;
            if entry.state() == SPACE_SHARED && self.refs(index) == 0 && old_enough {
                let mut txn = Txn::new();
                self.txn_free_entry(&mut txn, &entry);
                locked.commit(&txn);
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

/// Which pages of the private file mapping `[base, base + len)` this process wrote; `None`
/// if its page tables cannot be read.
fn written_pages(base: usize, len: usize) -> Option<Vec<bool>> {
    let mut written = vec![false; len / crate::os::PAGE_SIZE];
    super::pagemap::touched(base, len, |from, l, what| {
        if what.copied {
            let first = from / crate::os::PAGE_SIZE;
            written[first..first + l / crate::os::PAGE_SIZE].fill(true);
        }
    })?;
    Some(written)
}
