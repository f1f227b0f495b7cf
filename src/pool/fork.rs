//! A forked child's inherited mappings of spaces, counted as its own references.
//!
//! `fork` copies every mapping of a space into the child, which may go on reading it after
//! its parent closed it or died; unless the child holds references of its own, the space could
//! be deleted and its bytes reused under it. So the `fork` child handler makes the child a node
//! of its own (a new registry slot: its pid differs) and records a holding for every mapping
//! in the process's table, before the child's program runs on. An inherited creator's mapping
//! of a private space becomes a plain reference in the child: closing it there does not delete
//! the parent's space, and only the parent may publish it.
//!
//! The handlers hold each pool's node and mapping-table mutexes across `fork`, so the child
//! never inherits one held by a thread that does not exist there, and the parent's handler
//! waits (a pipe) until the child has counted its references, so that nothing the parent does
//! next can delete a space under the child. A child of a process with no
//! mapping open only closes its copy of the parent's exec-mark descriptor (fork + exec stays
//! cheap). A child that execs or exits gives its references back: its node is judged gone
//! (`exec_mark`: its mark's descriptor closed at exec, its pid gone at exit) and the next
//! sweep releases its holdings, once, and never the parent's, which are its own node's.

use super::map::Mode;
use super::registry::Node;
use super::txn::Txn;
use super::Pool;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, Ordering};
use std::os::unix::ffi::OsStrExt;
// One line on stderr without std's stderr lock, which another thread of the parent may have
// held at the fork, for ever in the child.
use crate::os::say;

const MAX_POOLS: usize = 16;

/// The pools open in this process (`Pool::open` registers, `Drop` unregisters).
static POOLS: [AtomicPtr<Pool>; MAX_POOLS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_POOLS];

/// Registers `pool` for the `fork` handlers (installed on first use).
pub(crate) fn register(pool: *const Pool) {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if !INSTALLED.swap(true, Ordering::AcqRel) {
        // SAFETY: plain functions; pthread_atfork has no other preconditions.
        unsafe { libc::pthread_atfork(Some(prepare), Some(in_parent), Some(in_child)) };
    }
    for slot in &POOLS {
        if slot
            .compare_exchange(
                core::ptr::null_mut(),
                pool as *mut Pool,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            return;
        }
    }
    say(format_args!(
        "tiermalloc: pool: more than {MAX_POOLS} pools open in one process: a forked child's \
         mappings of the last ones are not counted"
    ));
}

/// Unregisters `pool` (its drop).
pub(crate) fn unregister(pool: *const Pool) {
    for slot in &POOLS {
        let _ = slot.compare_exchange(
            pool as *mut Pool,
            core::ptr::null_mut(),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

fn for_each_pool(mut f: impl FnMut(&Pool)) {
    for slot in &POOLS {
        let p = slot.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: a registered pool lives until its drop unregisters it; a drop racing a
            // fork is the caller's own use-after-close.
            f(unsafe { &*p });
        }
    }
}

/// The pipe through which a forked child tells its parent that it has counted its inherited
/// mappings (`-1` when no pool has any).
static ADOPTED_PIPE: [AtomicI32; 2] = [AtomicI32::new(-1), AtomicI32::new(-1)];

extern "C" fn prepare() {
    let mut any_mapping = false;
    for_each_pool(|pool| {
        core::mem::forget(pool.node.lock());
        // SAFETY: forgotten guards; the handlers of this fork unlock them.
        let maps = pool.maps.lock();
        any_mapping |= maps.iter().next().is_some();
        core::mem::forget(maps);
    });
    if any_mapping {
        let mut fds = [-1; 2];
        // SAFETY: a valid out-array of two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == 0 {
            ADOPTED_PIPE[0].store(fds[0], Ordering::Relaxed);
            ADOPTED_PIPE[1].store(fds[1], Ordering::Relaxed);
        }
    }
}

fn take_pipe() -> (i32, i32) {
    (
        ADOPTED_PIPE[0].swap(-1, Ordering::Relaxed),
        ADOPTED_PIPE[1].swap(-1, Ordering::Relaxed),
    )
}

extern "C" fn in_parent() {
    // SAFETY: the prepare handler of this same fork took both and forgot the guards.
    for_each_pool(|pool| unsafe {
        pool.maps.force_unlock();
        pool.node.force_unlock();
    });
    let (read_end, write_end) = take_pipe();
    if read_end >= 0 {
        // Until the child has counted its references, a close here could delete a space
        // under it: wait for its byte (or end of file, if it died first).
        crate::os::keep_errno(|| {
            let mut byte = 0u8;
            // SAFETY: our own descriptors.
            unsafe {
                libc::close(write_end);
                while libc::read(read_end, (&mut byte as *mut u8).cast(), 1) < 0
                    && crate::os::errno() == libc::EINTR
                {}
                libc::close(read_end);
            }
        });
    }
}

extern "C" fn in_child() {
    crate::os::keep_errno(|| {
        // SAFETY: as in `in_parent`; the child has only this thread.
        for_each_pool(|pool| unsafe {
            pool.maps.force_unlock();
            pool.node.force_unlock();
        });
        // The parent's exec mark is its own: a copy here would keep it held after the parent
        // exec'd.
        for_each_pool(|pool| pool.node.lock().close_mark());
        for_each_pool(Pool::adopt_inherited_mappings);
        let (read_end, write_end) = take_pipe();
        if write_end >= 0 {
            // SAFETY: our own descriptors, inherited from the parent.
            unsafe {
                libc::write(write_end, b"a".as_ptr().cast(), 1);
                libc::close(write_end);
                libc::close(read_end);
            }
        }
    });
}

impl Pool {
    /// In a forked child: joins as a node of its own and holds every inherited mapping.
    fn adopt_inherited_mappings(&self) {
        let inherited: Vec<_> = self.maps.lock().iter().collect();
        if inherited.is_empty() {
            return;
        }
        {
            // A fresh node for this pid; the mappings stay in the table (`me` would drop them).
            let mut node = self.node.lock();
            *node = Node {
                heartbeat_pid: node.heartbeat_pid,
                ..Node::NONE
            };
        }
        let locked = match self.lock() {
            Ok(locked) => locked,
            Err(e) => {
                self.say_not_adopted(e);
                self.maps.lock().forget_all();
                return;
            }
        };
        for m in inherited {
            let entry = self.read_entry(m.index).filter(|e| e.id() == m.id);
            let mut txn = Txn::new();
            match entry.and_then(|e| self.txn_hold(&mut txn, locked.tag, &e)) {
                Some(()) => {
                    locked.commit(&txn);
                    if m.mode == Mode::Creator {
                        self.maps.lock().set_mode(m.base, Mode::Read);
                    }
                }
                None => {
                    self.say_not_adopted(libc::ENOSPC);
                    self.maps.lock().remove(m.base);
                }
            }
        }
    }

    fn say_not_adopted(&self, errno: i32) {
        say(format_args!(
            "tiermalloc: pool '{}': a forked child's inherited mapping is not counted as its \
             reference: {}",
            std::path::Path::new(std::ffi::OsStr::from_bytes(self.spec.path.as_bytes())).display(),
            std::io::Error::from_raw_os_error(errno)
        ));
    }
}
