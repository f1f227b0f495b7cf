//! The pool's profile records opened from outside the crate, for the crash test of their
//! protocol (`tests/profile_crash.rs`). Kept apart from `testing`, whose hooks the lowest
//! layers of the pool call, so that those hooks import nothing above them.

/// The pool's profile records (`pool::profiles`), for the crash test of their protocol
/// (`tests/profile_crash.rs`): writers appending in a loop are killed at random points.
pub struct ProfileRecordsForTest(super::profiles::ProfileRecords);

impl ProfileRecordsForTest {
    /// Words of one profile record.
    pub const FIELDS: usize = super::profiles::FIELDS;
    /// Records kept per name.
    pub const RUNS: usize = super::profiles::RUNS;

    /// The records of the pool `spec` names (a `TIERMALLOC_POOL` value).
    pub fn open(spec: &str) -> Result<Self, String> {
        let spec = super::PoolSpec::parse(spec.as_bytes()).map_err(str::to_owned)?;
        let pool = super::Pool::open(spec).map_err(|e| e.to_string())?;
        super::profiles::ProfileRecords::open_in(pool)
            .map(ProfileRecordsForTest)
            .map_err(str::to_owned)
    }

    /// Appends one record of `name`; whether it was published.
    pub fn append(&self, name: &str, fields: [u64; Self::FIELDS]) -> bool {
        self.0.append(name.as_bytes(), fields).is_ok()
    }

    /// The whole records of `name`, and how many of its entries are not whole.
    pub fn entries(&self, name: &str) -> (Vec<[u64; Self::FIELDS]>, usize) {
        self.0.entries(name.as_bytes())
    }
}
