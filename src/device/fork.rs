//! Everything `fork` asks of the device tiers, in one place.
//!
//! After `fork`, a child would share a file- or device-backed region with its parent (the
//! mapping is `MAP_SHARED`; the kernel cannot copy a device on write), while each process has
//! its own copy of the host metadata: the child's writes to the blocks it inherited (a shell
//! editing its variables, an interpreter its reference counts) would land in the parent's
//! live data, and its allocations in extents the parent also hands out. So the child handler
//! gives the child what `fork` gives it for DRAM, a private copy: it copies every allocated
//! extent (host metadata says which) into fresh anonymous memory and moves that over the
//! region, while the parent waits in its own handler. The cost is one read of the
//! bytes in use per `fork` (none after `vfork`/`posix_spawn`, which run no handlers); the
//! child's tier is then ordinary memory, and its writes never reach the device. If that
//! memory cannot be had, the tier becomes *inherited* in the child: it serves no new block
//! (plain requests spill, `tm_malloc` fails with `ENOMEM`) and frees skip the header write,
//! so at least the allocator never hands out the parent's blocks. NUMA-bound tiers are
//! anonymous memory already, copied on write like DRAM.
//!
//! The handlers hold every device tier's locks across `fork`, so that the child never inherits
//! one held by a thread that does not exist there.

use super::{for_each_device, DeviceTier};
use crate::os;
use core::sync::atomic::{AtomicI32, Ordering};

/// The pipe through which a forked child tells its parent that it has made its copy of the
/// shared tiers (`-1` when no copy is needed).
static FORK_PIPE: [AtomicI32; 2] = [AtomicI32::new(-1), AtomicI32::new(-1)];

/// Holds every device tier's lock across `fork`, so the child never inherits one held by a
/// thread that does not exist there, and gives the child a private copy of every tier whose
/// mapping `fork` would share (see the module comment). The parent waits until the child has made
/// that copy, so that the copy is what the parent's memory was at the `fork`. Registered from the
/// constructor (registration allocates, so never from inside `malloc`).
pub fn register_fork_handlers() {
    extern "C" fn prepare() {
        let mut any_shared = false;
        for_each_device(|t| any_shared |= t.is_shared_across_fork());
        if any_shared {
            let mut fds = [-1; 2];
            // SAFETY: `fds` is a valid out-array of two descriptors.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == 0 {
                FORK_PIPE[0].store(fds[0], Ordering::Relaxed);
                FORK_PIPE[1].store(fds[1], Ordering::Relaxed);
            }
        }
        // The slot caches' registry first: the lock order.
        super::slot_cache::lock_for_fork();
        for_each_device(|t| t.lock_for_fork());
    }
    extern "C" fn in_parent() {
        let (read_end, write_end) = take_fork_pipe();
        if read_end >= 0 {
            os::keep_errno(|| {
                let mut byte = 0u8;
                // SAFETY: our own descriptors. The read returns when the child writes its byte,
                // or at end of file if it exits (or dies) first; either way it is done copying.
                unsafe {
                    libc::close(write_end);
                    while libc::read(read_end, (&mut byte as *mut u8).cast(), 1) < 0
                        && os::errno() == libc::EINTR
                    {}
                    libc::close(read_end);
                }
            });
        }
        // Only now: meanwhile no thread of the parent could take a new block.
        for_each_device(|t| t.unlock_after_fork());
        super::slot_cache::unlock_after_fork();
    }
    extern "C" fn in_child() {
        for_each_device(|t| t.after_fork_in_child());
        super::slot_cache::after_fork_in_child();
        let (read_end, write_end) = take_fork_pipe();
        if read_end >= 0 {
            os::keep_errno(|| {
                // SAFETY: our own descriptors, inherited from the parent.
                unsafe {
                    libc::write(write_end, b"c".as_ptr().cast(), 1);
                    libc::close(write_end);
                    libc::close(read_end);
                }
            });
        }
    }
    fn take_fork_pipe() -> (i32, i32) {
        (
            FORK_PIPE[0].swap(-1, Ordering::Relaxed),
            FORK_PIPE[1].swap(-1, Ordering::Relaxed),
        )
    }
    let mut any = false;
    for_each_device(|_| any = true);
    if any {
        // SAFETY: plain functions; pthread_atfork has no other preconditions.
        unsafe { libc::pthread_atfork(Some(prepare), Some(in_parent), Some(in_child)) };
    }
}

impl DeviceTier {
    /// Takes the slab locks, the extent cache's lane locks, the heap lock and the page-map
    /// read's (`touched_pages`), in that order (the tier's lock order), and keeps them (`fork`
    /// prepare handler).
    fn lock_for_fork(&self) {
        self.slabs.lock_all();
        if let Some(cache) = &self.cache {
            cache.lock_all();
        }
        core::mem::forget(self.heap.lock());
        self.touched.lock_for_fork();
    }

    /// Releases the locks `lock_for_fork` kept (`fork` parent handler).
    fn unlock_after_fork(&self) {
        self.touched.unlock_after_fork();
        // SAFETY: the prepare handler of this same fork took the lock and forgot its guard.
        unsafe { self.heap.force_unlock() };
        self.slabs.unlock_all();
        if let Some(cache) = &self.cache {
            cache.unlock_all();
        }
    }

    /// Whether a `fork` now would share this tier's bytes with the child.
    fn is_shared_across_fork(&self) -> bool {
        self.shared_across_fork.load(Ordering::Relaxed)
    }

    /// The `fork` child handler: releases the lock and gives the child a private copy of a
    /// shared region, or failing that makes the tier inherited (see the module comment).
    fn after_fork_in_child(&self) {
        self.unlock_after_fork();
        self.device.after_fork_in_child();
        if !self.is_shared_across_fork() {
            return;
        }
        if self.copy_region_privately() {
            self.shared_across_fork.store(false, Ordering::Relaxed);
            self.device.close_in_child();
        } else {
            self.become_inherited();
        }
    }

    /// Makes the tier inherited: it serves no block and its frees write nothing to the
    /// device. The lanes' free path, which writes the state without asking, is turned off
    /// (frees go to the heap's, which asks).
    pub(super) fn become_inherited(&self) {
        self.inherited.store(true, Ordering::Relaxed);
        self.set_lanes(false);
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
            if !self.copied_on_fork(offset) {
                return;
            }
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
}
