//! `TIERMALLOC_POOL=path=PATH[,size=][,offset=][,create][,format][,collect_age=][,lease=]
//! [,coherent][,check_flush][,private=copy]`: what a pool is and how it behaves.
//!
//! Sizes take K/M/G/T suffixes (the tier parser's `parse_size`); durations take `ms`, `s`,
//! `m` or `h` (a bare number is milliseconds). A bad spec is refused whole with a reason; the
//! caller prints it in one line and runs on without a pool.

use crate::config::parse_size;
use std::ffi::CString;

/// How a PRIVATE mapping is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrivateHow {
    /// `MAP_PRIVATE` of the device, falling back to a copy where the device refuses it.
    CopyOnWrite,
    /// Always a copy into anonymous memory (what a device without MAP_PRIVATE gets; a key so
    /// the fallback is tested).
    Copy,
}

#[derive(Clone, Debug)]
pub struct PoolSpec {
    pub path: CString,
    pub size: Option<u64>,
    pub offset: u64,
    pub create: bool,
    /// Overwrite a region that holds something other than a pool.
    pub format: bool,
    /// Apply the deletion rule with this age automatically (on create and close).
    pub collect_age_ms: Option<u64>,
    /// A node whose heartbeat is older than this, on another host, is dead.
    pub lease_ms: u64,
    /// The device is cache-coherent with every host using it: skip write-backs and
    /// invalidations.
    pub coherent: bool,
    /// Debug: check that every byte of a space reached the device before its publish store.
    pub check_flush: bool,
    pub private: PrivateHow,
    /// Tests only: the host id this process claims (to play a node of another host).
    pub host: Option<u64>,
}

pub(crate) const DEFAULT_LEASE_MS: u64 = 10_000;

/// Parses `10`, `10ms`, `3s`, `2m`, `1h` into milliseconds.
fn parse_duration_ms(v: &[u8]) -> Option<u64> {
    let (digits, scale) = if let Some(d) = v.strip_suffix(b"ms") {
        (d, 1)
    } else if let Some(d) = v.strip_suffix(b"s") {
        (d, 1000)
    } else if let Some(d) = v.strip_suffix(b"m") {
        (d, 60_000)
    } else if let Some(d) = v.strip_suffix(b"h") {
        (d, 3_600_000)
    } else {
        (v, 1)
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    core::str::from_utf8(digits)
        .ok()?
        .parse::<u64>()
        .ok()?
        .checked_mul(scale)
}

impl PoolSpec {
    pub fn parse(text: &[u8]) -> Result<PoolSpec, &'static str> {
        let mut path = None;
        let mut spec = PoolSpec {
            path: CString::default(),
            size: None,
            offset: 0,
            create: false,
            format: false,
            collect_age_ms: None,
            lease_ms: DEFAULT_LEASE_MS,
            coherent: false,
            check_flush: false,
            private: PrivateHow::CopyOnWrite,
            host: None,
        };
        for option in text.split(|&c| c == b',').filter(|o| !o.is_empty()) {
            let (key, value) = match option.iter().position(|&c| c == b'=') {
                Some(i) => (&option[..i], Some(&option[i + 1..])),
                None => (option, None),
            };
            match (key, value) {
                (b"path", Some(v)) if !v.is_empty() => {
                    path = Some(CString::new(v).map_err(|_| "path= holds a NUL byte")?)
                }
                (b"size", Some(v)) => spec.size = Some(parse_size(v).ok_or("bad size= value")?),
                (b"offset", Some(v)) => spec.offset = parse_size(v).ok_or("bad offset= value")?,
                (b"create", None) => spec.create = true,
                (b"format", None) => spec.format = true,
                (b"coherent", None) => spec.coherent = true,
                (b"check_flush", None) => spec.check_flush = true,
                (b"collect_age", Some(v)) => {
                    spec.collect_age_ms =
                        Some(parse_duration_ms(v).ok_or("bad collect_age= duration")?)
                }
                (b"lease", Some(v)) => {
                    spec.lease_ms = parse_duration_ms(v)
                        .filter(|&ms| ms >= 100)
                        .ok_or("lease= must be a duration of at least 100ms")?
                }
                (b"private", Some(b"copy")) => spec.private = PrivateHow::Copy,
                (b"private", Some(b"cow")) => spec.private = PrivateHow::CopyOnWrite,
                (b"host", Some(v)) => spec.host = Some(parse_size(v).ok_or("bad host= value")?),
                _ => {
                    return Err("unknown key (expected path, size, offset, create, format, \
                                collect_age, lease, coherent, check_flush, private)")
                }
            }
        }
        spec.path = path.ok_or("needs path=")?;
        if spec.offset % crate::os::PAGE_SIZE as u64 != 0 {
            return Err("offset= must be a multiple of the page size (4096)");
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_bad_ones_are_named() {
        let s = PoolSpec::parse(
            b"path=/dev/shm/p,size=64M,create,collect_age=2s,lease=500ms,coherent,private=copy",
        )
        .unwrap();
        assert_eq!(s.path.as_bytes(), b"/dev/shm/p");
        assert_eq!(s.size, Some(64 << 20));
        assert!(s.create && s.coherent && !s.check_flush && !s.format);
        assert_eq!(s.collect_age_ms, Some(2000));
        assert_eq!(s.lease_ms, 500);
        assert_eq!(s.private, PrivateHow::Copy);
        assert_eq!(
            PoolSpec::parse(b"path=/x").unwrap().lease_ms,
            DEFAULT_LEASE_MS
        );
        assert_eq!(PoolSpec::parse(b"size=1M").unwrap_err(), "needs path=");
        assert!(PoolSpec::parse(b"path=/x,size=1Q")
            .unwrap_err()
            .contains("size="));
        assert!(PoolSpec::parse(b"path=/x,lease=5")
            .unwrap_err()
            .contains("lease="));
        assert!(PoolSpec::parse(b"path=/x,offset=100")
            .unwrap_err()
            .contains("offset="));
        assert!(PoolSpec::parse(b"path=/x,colour=red")
            .unwrap_err()
            .contains("unknown key"));
        assert_eq!(parse_duration_ms(b"3m"), Some(180_000));
        assert_eq!(parse_duration_ms(b"7"), Some(7));
        assert_eq!(parse_duration_ms(b"s"), None);
    }
}
