//! Saying, in one line on stderr, why the pool answered ENOSPC: which of its tables is full
//! (directory of spaces, holdings, host debts) or that no free extent is large enough.

use super::layout::*;
use super::Pool;

impl Pool {
    /// One line: the pool's table `what`, of `entries` entries, is full.
    pub(crate) fn say_full(&self, what: &str, entries: usize) {
        crate::os::say(format_args!(
            "tiermalloc: pool '{}': its {what} is full ({entries} entries); ENOSPC",
            self.spec.path.to_string_lossy()
        ));
    }

    /// After a create failed with ENOSPC (sweep and retry included): says why.
    pub(crate) fn say_why_no_space(&self, name: &[u8], len: u64) {
        if self.free_entry_index().is_none() {
            self.say_full("directory of spaces", MAX_SPACES);
        } else if (0..MAX_HOLDINGS).all(|h| self.load(holding_at(h) + H_TAG) != 0) {
            self.say_full("holdings table", MAX_HOLDINGS);
        } else {
            crate::os::say(format_args!(
                "tiermalloc: pool '{}': no free extent of {len} bytes for space '{}' ({} bytes \
                 free in all); ENOSPC",
                self.spec.path.to_string_lossy(),
                String::from_utf8_lossy(name),
                self.free_bytes()
            ));
        }
    }

    /// A create of `size` bytes refused before it looked for room: whole granules of `size`
    /// exceed the pool's data area (or the address space, for sizes near `SIZE_MAX`).
    pub(crate) fn say_too_large(&self, name: &[u8], size: u64) {
        crate::os::say(format_args!(
            "tiermalloc: pool '{}': space '{}' of {size} bytes is larger than the pool's data \
             area ({} bytes); ENOSPC",
            self.spec.path.to_string_lossy(),
            String::from_utf8_lossy(name),
            self.total_len - self.data_start
        ));
    }
}
