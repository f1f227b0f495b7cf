//! The registry of nodes: one slot per process using the pool, naming its host, pid and
//! heartbeat, so that every other process can tell whether it still lives.
//!
//! A process joins by claiming a free (or dead) slot with one compare-and-swap on its state
//! word — no lock, since taking the pool lock needs a tag — then writes its host, pid and
//! start time and marks the slot ALIVE. Its tag (`layout::node_tag`: slot and incarnation)
//! names it in the lock word, in holdings and as creator of spaces.
//!
//! A tag is live (`tag_live`) when its slot still carries that incarnation and: the slot is
//! ALIVE and, on our host, its pid exists with the recorded start time (a dead pid is seen at
//! once, a reused pid too) and it has not exec'd (`exec_mark`), or, on another host, its
//! heartbeat is younger than the lease; or the slot is JOINING and its claim younger than the
//! lease. A heartbeat thread refreshes the heartbeat every quarter lease. `sweep` reclaims
//! what dead tags hold: their mappings (holdings, and the refs they count), their private
//! spaces, their slots.

use super::exec_mark::{boottime_ns, image_id, NODE_PID_IMAGED, NODE_PID_MARKED};
use super::layout::*;
use super::txn::{Locked, Txn};
use super::{getpid, realtime_ns, Errno, Pool};
use core::sync::atomic::Ordering;

/// This process's node in one pool.
#[derive(Clone, Copy)]
pub(crate) struct Node {
    pub pid: u32,
    pub slot: usize,
    pub tag: u64,
    /// The process that started the heartbeat thread (a forked child starts its own).
    pub heartbeat_pid: u32,
    /// The descriptor holding this node's exec mark (`exec_mark`), -1 if none. A forked
    /// child closes its inherited copy (`close_mark`) at once.
    pub mark_fd: i32,
}

impl Node {
    pub(crate) const NONE: Node = Node {
        pid: 0,
        slot: 0,
        tag: 0,
        heartbeat_pid: 0,
        mark_fd: -1,
    };

    /// Closes the exec-mark descriptor: a forked child's copy of its parent's (which would keep
    /// the parent's mark held after the parent exec'd), or ours when leaving.
    /// Async-signal-safe.
    pub(crate) fn close_mark(&mut self) {
        if self.mark_fd >= 0 {
            // SAFETY: the child's copy of the parent's descriptor; nothing else uses it.
            crate::os::keep_errno(|| unsafe { libc::close(self.mark_fd) });
            self.mark_fd = -1;
        }
    }
}

pub(crate) use crate::liveness::pid_start;

impl Pool {
    /// This process's tag, joining the registry first if it has not (or if it is a child
    /// forked from a process that had: the child is a node of its own; the `fork` handler
    /// has made it one and counted its inherited mappings, else they are forgotten here).
    pub(crate) fn me(&self) -> Result<u64, Errno> {
        let pid = getpid();
        let mut node = self.node.lock();
        if node.tag != 0 && node.pid == pid {
            return Ok(node.tag);
        }
        if node.tag != 0 {
            self.maps.lock().forget_all();
        }
        node.close_mark();
        let (slot, tag, mark_fd) = self.join(pid)?;
        let start_heartbeat = node.heartbeat_pid != pid;
        *node = Node {
            pid,
            slot,
            tag,
            heartbeat_pid: pid,
            mark_fd,
        };
        drop(node);
        if start_heartbeat {
            if let Some(me) = self.weak_self() {
                me.start_heartbeat();
            }
        }
        Ok(tag)
    }

    /// Claims a slot for process `pid`: the slot, its tag and the exec mark's descriptor.
    fn join(&self, pid: u32) -> Result<(usize, u64, i32), Errno> {
        let start = pid_start(pid).unwrap_or(0);
        for pass in 0..2 {
            for slot in 0..MAX_NODES {
                let at = node_at(slot);
                self.invalidate_meta(at, NODE_BYTES);
                let word = self.load(at + NODE_STATE);
                let (_, incarnation, state) = node_state_parts(word);
                // First pass: free slots; second pass: slots of dead nodes too.
                let takeable = state == NODE_FREE
                    || (pass == 1 && !self.tag_live(node_tag(slot, incarnation)));
                if !takeable {
                    continue;
                }
                let now_secs = realtime_ns() / 1_000_000_000;
                let next = (incarnation + 1) & 0xff_ffff;
                let next = next.max(1);
                let joining = node_state_word(now_secs, next, NODE_JOINING);
                if self
                    .word(at + NODE_STATE)
                    .compare_exchange(word, joining, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                self.word(at + NODE_HOST)
                    .store(self.host, Ordering::Relaxed);
                let mark_fd = self.take_exec_mark(slot);
                let marked = if mark_fd >= 0 {
                    NODE_PID_MARKED | NODE_PID_IMAGED
                } else {
                    0
                };
                self.word(at + NODE_META_AT)
                    .store(self.meta_ptr(0) as u64, Ordering::Relaxed);
                self.word(at + NODE_IMAGE)
                    .store(image_id(), Ordering::Relaxed);
                self.word(at + NODE_JOINED)
                    .store(boottime_ns(), Ordering::Relaxed);
                self.word(at + NODE_PID)
                    .store(pid as u64 | marked, Ordering::Relaxed);
                self.word(at + NODE_PID_START)
                    .store(start, Ordering::Relaxed);
                self.word(at + NODE_HEARTBEAT)
                    .store(realtime_ns(), Ordering::Relaxed);
                self.write_back_meta(at, NODE_BYTES);
                self.word(at + NODE_STATE).store(
                    node_state_word(now_secs, next, NODE_ALIVE),
                    Ordering::Release,
                );
                self.write_back_meta(at, 8);
                return Ok((slot, node_tag(slot, next), mark_fd));
            }
        }
        self.say_full("registry of nodes", MAX_NODES);
        Err(libc::EUSERS)
    }

    /// Refreshes this node's heartbeat (the heartbeat thread calls it).
    pub(crate) fn heartbeat(&self) {
        let node = *self.node.lock();
        if node.tag == 0 || node.pid != getpid() {
            return;
        }
        let at = node_at(node.slot);
        let (_, incarnation, _) = node_state_parts(self.load(at + NODE_STATE));
        if node_tag(node.slot, incarnation) == node.tag {
            self.word(at + NODE_HEARTBEAT)
                .store(realtime_ns(), Ordering::Release);
            self.write_back_meta(at + NODE_HEARTBEAT, 8);
        }
    }

    /// Whether the node `tag` names still lives (see the module comment).
    pub(crate) fn tag_live(&self, tag: u64) -> bool {
        let Some(slot) = slot_of_tag(tag) else {
            return false;
        };
        // `try_lock`: `join` asks about other slots while `me` holds the lock (waiting for
        // our own lock would never end); the slot check below answers for our own tag too.
        if let Some(node) = self.node.try_lock() {
            if node.tag == tag && node.pid == getpid() {
                return true;
            }
        }
        let at = node_at(slot);
        self.invalidate_meta(at, NODE_BYTES);
        let (claim_secs, incarnation, state) = node_state_parts(self.load(at + NODE_STATE));
        if node_tag(slot, incarnation) != tag {
            return false;
        }
        let lease_ns = self.spec.lease_ms * 1_000_000;
        let now = realtime_ns();
        match state {
            NODE_JOINING => now / 1_000_000_000 <= claim_secs + self.spec.lease_ms / 1000 + 1,
            NODE_ALIVE => {
                let host = self.load(at + NODE_HOST);
                let pid_word = self.load(at + NODE_PID);
                let holder = crate::liveness::Holder {
                    host,
                    pid: pid_word as u32,
                    pid_start: self.load(at + NODE_PID_START),
                    heartbeat_ns: self.load(at + NODE_HEARTBEAT),
                };
                holder.live(self.host, lease_ns, now)
                    && !(host == self.host
                        && pid_word & NODE_PID_MARKED != 0
                        && self.exec_mark_gone(slot, pid_word as u32))
            }
            _ => false,
        }
    }

    /// Reclaims everything dead nodes hold: their holdings (and the refs those count), their
    /// private spaces, their registry slots. Each space's reclaim is its own transaction.
    /// Returns how many private spaces of dead creators it deleted.
    pub(crate) fn sweep(&self) -> Result<usize, Errno> {
        let mut deleted = 0;
        let locked = self.lock()?;
        let mut verdicts: [(u64, bool); 16] = [(0, false); 16];
        let mut live = |tag: u64| -> bool {
            if let Some(v) = verdicts.iter().find(|v| v.0 == tag) {
                return v.1;
            }
            let v = self.tag_live(tag);
            verdicts.rotate_right(1);
            verdicts[0] = (tag, v);
            v
        };
        for h in 0..MAX_HOLDINGS {
            let at = holding_at(h);
            let tag = self.load(at + H_TAG);
            if tag == 0 || live(tag) {
                continue;
            }
            if self.release_holding(&locked, h, tag, true) {
                deleted += 1;
            }
        }
        for index in 0..MAX_SPACES {
            if let Some(entry) = self.read_entry(index) {
                if entry.state() == SPACE_PRIVATE && !live(entry.creator()) {
                    let mut txn = Txn::new();
                    self.txn_free_entry(&mut txn, &entry);
                    locked.commit(&txn);
                    deleted += 1;
                }
            }
        }
        for slot in 0..MAX_NODES {
            let at = node_at(slot);
            let word = self.load(at + NODE_STATE);
            let (_, incarnation, state) = node_state_parts(word);
            if state != NODE_FREE && !live(node_tag(slot, incarnation)) {
                self.free_slot(slot, word);
            }
        }
        Ok(deleted)
    }

    /// Frees registry slot `slot` if its state word is still `word`: a CAS, not a logged
    /// store, because joiners claim slots without the lock.
    fn free_slot(&self, slot: usize, word: u64) {
        let at = node_at(slot);
        let (secs, incarnation, _) = node_state_parts(word);
        let _ = self.word(at + NODE_STATE).compare_exchange(
            word,
            node_state_word(secs, incarnation, NODE_FREE),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        self.write_back_meta(at, 8);
    }

    /// Gives back every mapping holding `h` (of node `tag`) counts, deleting the space if it
    /// is a private space of that node: one transaction. A dead node's lines of the space are
    /// dealt with first (`host_cache::forget_dead_lines`); if they cannot be, the holding stays.
    /// Whether it deleted a space.
    fn release_holding(&self, locked: &Locked<'_>, h: usize, tag: u64, dead: bool) -> bool {
        let at = holding_at(h);
        let mut txn = Txn::new();
        let mut deleted = false;
        let (index, id) = holding_space_parts(self.load(at + H_SPACE));
        let count = self.load(at + H_COUNT);
        if let Some(entry) = self.read_entry(index).filter(|e| e.id() == id) {
            let host = self.load(at + H_HOST);
            if dead && !self.forget_dead_lines(&mut txn, host, entry.offset(), entry.len(), count) {
                return false;
            }
            let refs = self.load(entry_at(index) + E_REFS);
            txn.set(entry_at(index) + E_REFS, refs.saturating_sub(count));
            if entry.state() == SPACE_PRIVATE && entry.creator() == tag {
                self.txn_free_entry(&mut txn, &entry);
                deleted = true;
            }
        }
        self.txn_clear_holding(&mut txn, h);
        locked.commit(&txn);
        deleted
    }

    /// This node leaves: its mappings' holdings and private spaces go, its slot is freed.
    pub(crate) fn leave(&self) {
        let node = *self.node.lock();
        if node.tag == 0 || node.pid != getpid() {
            return;
        }
        // Mappings still open (their owners are going too): their lines first.
        let open: Vec<_> = self.maps.lock().drain().collect();
        for m in &open {
            self.let_go(m);
        }
        if let Ok(locked) = self.lock() {
            for h in 0..MAX_HOLDINGS {
                if self.load(holding_at(h) + H_TAG) == node.tag {
                    self.release_holding(&locked, h, node.tag, false);
                }
            }
        }
        let word = self.load(node_at(node.slot) + NODE_STATE);
        let (_, incarnation, _) = node_state_parts(word);
        if node_tag(node.slot, incarnation) == node.tag {
            self.free_slot(node.slot, word);
        }
        let mut node = self.node.lock();
        // Ours (the pid matched above): the slot is free, so the mark goes too.
        node.close_mark();
        *node = Node::NONE;
    }
}
