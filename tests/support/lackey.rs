//! One line of `valgrind --tool=lackey --trace-mem=yes` output, read as a data access. Shared
//! by `tests/device_touches.rs` (through `support`) and `benches/inregion.rs` (by `#[path]`),
//! which count the accesses that fall inside a device tier's mapping.

/// What an access did: a load, a store, or a read-modify-write (lackey's `M`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    Load,
    Store,
    Modify,
}

impl Access {
    pub fn loads(self) -> bool {
        self != Access::Store
    }
    pub fn stores(self) -> bool {
        self != Access::Load
    }
}

/// `(access, address, size)` of a data line (` L 04222cac,8`); `None` for instruction fetches
/// (`I`), lackey's own messages and anything else.
pub fn data_access(line: &str) -> Option<(Access, u64, u64)> {
    let mut parts = line.split_whitespace();
    let access = match parts.next()? {
        "L" => Access::Load,
        "S" => Access::Store,
        "M" => Access::Modify,
        _ => return None,
    };
    let (addr, size) = parts.next()?.split_once(',')?;
    Some((
        access,
        u64::from_str_radix(addr, 16).ok()?,
        size.parse().ok()?,
    ))
}
