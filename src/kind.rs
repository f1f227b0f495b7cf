//! The vocabulary every layer shares: which tier (`Kind`) and which fit policy (`Fit`).
//! Nothing here depends on anything else of the crate.

/// The memory kinds, as numbered by the C contract (`tm_kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    Dram = 0,
    Cxl = 1,
    Cmb = 2,
    Pmr = 3,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Dram, Kind::Cxl, Kind::Cmb, Kind::Pmr];

    pub fn from_u32(v: u32) -> Option<Kind> {
        Kind::ALL.get(v as usize).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Dram => "dram",
            Kind::Cxl => "cxl",
            Kind::Cmb => "cmb",
            Kind::Pmr => "pmr",
        }
    }

    pub(crate) fn parse(s: &[u8]) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name().as_bytes() == s)
    }
}

/// Fit policy of a device tier: which free extent a block of 4 KiB or more (or aligned to more
/// than 16) takes; smaller blocks share slabs, which the policy places.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Fit {
    Best = 0,
    Worst = 1,
}
