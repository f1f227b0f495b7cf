//! The registry's live nodes, as `tm_pool_nodes` lists them: each one's slot, pid, host, last
//! heartbeat and capacity words (share, in use, lent, borrowed).

use super::layout::*;
use super::{Errno, Pool};

/// One live node (a process using the pool); `tm_node_info` in C. `share`, `in_use`, `lent`
/// and `borrowed` are its figures in the pool's share table (`share`), 0 for a node with no
/// pool tier.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its registry slot.
    pub node: u32,
    pub pid: u32,
    /// Its host (boot and pid namespace): nodes with equal `host` share a kernel.
    pub host: u64,
    /// Bytes of the pool given to it as its share, used by it, lent to others, borrowed.
    pub share: u64,
    pub in_use: u64,
    pub lent: u64,
    pub borrowed: u64,
    /// CLOCK_REALTIME of its last heartbeat.
    pub heartbeat_ns: u64,
}

impl Pool {
    /// Calls `f` for every live node, this process's included (it joins the registry first).
    pub fn nodes(&self, mut f: impl FnMut(NodeInfo)) -> Result<(), Errno> {
        self.me()?;
        for slot in 0..MAX_NODES {
            let at = node_at(slot);
            self.invalidate_meta(at, NODE_BYTES);
            let (_, incarnation, state) = node_state_parts(self.load(at + NODE_STATE));
            let tag = node_tag(slot, incarnation);
            if state != NODE_ALIVE || !self.tag_live(tag) {
                continue;
            }
            let shares = self.share_account(tag);
            f(NodeInfo {
                node: slot as u32,
                pid: self.load(at + NODE_PID) as u32,
                host: self.load(at + NODE_HOST),
                share: shares.map_or(self.load(at + NODE_SHARE), |a| a.share),
                in_use: shares.map_or(self.load(at + NODE_IN_USE), |a| a.in_use),
                lent: shares.map_or(self.load(at + NODE_LENT), |a| a.lent),
                borrowed: shares.map_or(self.load(at + NODE_BORROWED), |a| a.borrowed),
                heartbeat_ns: self.load(at + NODE_HEARTBEAT),
            });
        }
        Ok(())
    }
}
