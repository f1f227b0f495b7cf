//! Why a tier's region could not be had: the one error every backend path returns, which the
//! device tier prints in one line with the tier and its path.

use crate::os;

/// Why a tier could not be mapped: a fixed text, plus the `errno` of the failing call if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    pub what: &'static str,
    pub errno: i32,
    /// For a file system without room: the bytes asked for and the bytes free.
    pub room: Option<(u64, u64)>,
    /// The region offset the problem is at (a damaged heap), if any.
    pub at: Option<u64>,
    /// The live process that holds the region (a tier opened elsewhere), if that is why.
    pub holder: Option<crate::liveness::HolderName>,
}

impl Problem {
    pub(crate) fn new(what: &'static str) -> Self {
        Problem {
            what,
            errno: 0,
            room: None,
            at: None,
            holder: None,
        }
    }
    pub(crate) fn os(what: &'static str) -> Self {
        Problem {
            what,
            errno: os::errno(),
            room: None,
            at: None,
            holder: None,
        }
    }
    pub(crate) fn no_room(needed: u64, free: u64) -> Self {
        Problem {
            what: "the file system has no room for the file",
            errno: 0,
            room: Some((needed, free)),
            at: None,
            holder: None,
        }
    }
}
