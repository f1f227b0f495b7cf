//! The pool's consistency checker: walks the on-device metadata with the pool lock held
//! (after replaying any committed log) and lists every broken invariant of `layout`.
//! Tests run it after killing processes in the middle of operations; the CLI can run it
//! offline.

use super::layout::*;
use super::Pool;
use crate::lockfree::published;

impl Pool {
    /// Every invariant the metadata breaks, as one line each; empty when consistent.
    pub fn check(&self) -> Result<Vec<String>, i32> {
        let _locked = self.lock()?;
        self.invalidate_meta(0, META_END);
        let mut problems = Vec::new();
        if self.load(SB_MAGIC) != MAGIC {
            problems.push("superblock magic is wrong".to_string());
        }
        let next_id = self.load(SB_NEXT_ID);
        let mut extents = Vec::new();
        let mut names: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut refs_of = Vec::new();
        for index in 0..MAX_SPACES {
            let at = entry_at(index);
            let word = self.load(at + E_PUBLISH);
            let state = published::state_of(word);
            if state == SPACE_FREE {
                continue;
            }
            let Some(e) = self.read_entry(index) else {
                problems.push(format!(
                    "entry {index}: state {state:#x} is not a whole publication (checksum or state)"
                ));
                continue;
            };
            if e.state() != SPACE_PRIVATE && e.state() != SPACE_SHARED {
                problems.push(format!("entry {index}: state {:#x}", e.state()));
            }
            let (name, len) = e.name();
            if len == 0 || len > NAME_MAX || name[len..].iter().any(|&b| b != 0) {
                problems.push(format!("entry {index}: bad name"));
            }
            if let Some(other) = names.iter().find(|(n, _)| n[..] == name[..len]) {
                problems.push(format!(
                    "entry {index}: name {:?} also used by space {}",
                    String::from_utf8_lossy(&name[..len]),
                    other.1
                ));
            }
            names.push((name[..len].to_vec(), e.id()));
            if e.id() == 0 || e.id() >= next_id {
                problems.push(format!(
                    "entry {index}: id {} not below next id {next_id}",
                    e.id()
                ));
            }
            if e.offset() < self.data_start
                || e.offset() % self.granule != 0
                || e.len() % self.granule != 0
                || e.len() < e.size()
                || e.offset() + e.len() > self.total_len
            {
                problems.push(format!(
                    "entry {index}: extent [{:#x}, +{:#x}) of size {} is outside the data area or \
                     unaligned",
                    e.offset(),
                    e.len(),
                    e.size()
                ));
            }
            extents.push((e.offset(), e.len(), index));
            refs_of.push((e.id(), index, self.refs(index), 0u64));
        }
        extents.sort_unstable();
        for pair in extents.windows(2) {
            if pair[0].0 + pair[0].1 > pair[1].0 {
                problems.push(format!("entries {} and {} overlap", pair[0].2, pair[1].2));
            }
        }
        let ids: Vec<u64> = refs_of.iter().map(|r| r.0).collect();
        for (i, id) in ids.iter().enumerate() {
            if ids[..i].contains(id) {
                problems.push(format!("id {id} is used twice"));
            }
        }
        for h in 0..MAX_HOLDINGS {
            let at = holding_at(h);
            let tag = self.load(at + H_TAG);
            if tag == 0 {
                if self.load(at + H_COUNT) != 0 {
                    problems.push(format!("holding {h}: free but counts"));
                }
                continue;
            }
            let (index, id) = holding_space_parts(self.load(at + H_SPACE));
            let count = self.load(at + H_COUNT);
            if count == 0 {
                problems.push(format!("holding {h}: count 0"));
            }
            match refs_of.iter_mut().find(|r| r.0 == id && r.1 == index) {
                Some(r) => r.3 += count,
                None => problems.push(format!(
                    "holding {h}: names no live space (id {id}, entry {index})"
                )),
            }
            match slot_of_tag(tag) {
                Some(slot) => {
                    let (_, inc, state) = node_state_parts(self.load(node_at(slot) + NODE_STATE));
                    if state == NODE_FREE && node_tag(slot, inc) == tag {
                        problems.push(format!("holding {h}: its node's slot is free"));
                    }
                }
                None => problems.push(format!("holding {h}: tag {tag:#x} names no slot")),
            }
        }
        for (id, index, refs, counted) in refs_of {
            if refs != counted {
                problems.push(format!(
                    "entry {index} (id {id}): refs {refs} but holdings count {counted}"
                ));
            }
        }
        for d in 0..MAX_DEBTS {
            let at = debt_at(d);
            let (host, lo, hi) = (
                self.load(at + D_HOST),
                self.load(at + D_LO),
                self.load(at + D_HI),
            );
            if host != 0 && !(self.data_start <= lo && lo < hi && hi <= self.total_len) {
                problems.push(format!(
                    "debt {d}: host {host:#x} owes [{lo:#x}, {hi:#x}), not a range of the data area"
                ));
            }
        }
        let lock = self.load(SB_LOCK);
        if slot_of_tag(lock).is_none() {
            problems.push(format!("lock word {lock:#x} is not a node tag"));
        }
        Ok(problems)
    }
}
