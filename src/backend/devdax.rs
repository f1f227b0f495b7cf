//! Device DAX (`/dev/daxX.Y`, a character device): its size and alignment come from sysfs
//! (`/sys/dev/char/MAJOR:MINOR/{size,align}`), and every mapping of it must start and end on
//! that alignment (2 MiB for a namespace made with `ndctl create-namespace -m devdax -a 2M`):
//! the kernel answers EINVAL otherwise, which says nothing about why. We check first.

use super::{page_floor, read_sysfs_number, PathBuf, Problem};
use crate::config::TierSpec;
use crate::os;

/// The usable length of the device DAX `rdev` for `spec`: its size from `offset=` on, or
/// `size=`, checked against the device's size and alignment.
pub(super) fn device_len(spec: &TierSpec, rdev: libc::dev_t) -> Result<usize, Problem> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let mut path = PathBuf::new();
    let device_size = read_sysfs_number(path.format(major, minor, b"size"));
    let align =
        read_sysfs_number(path.format(major, minor, b"align")).unwrap_or(os::PAGE_SIZE as u64);
    let available = device_size
        .and_then(|s| s.checked_sub(spec.offset))
        .ok_or(Problem::new(
            "device size unknown (no sysfs size) or below offset=",
        ))?;
    let len = match spec.size {
        Some(size) if size > available => {
            return Err(Problem::new("size= is larger than the device"))
        }
        Some(size) => size,
        None => available,
    };
    if align == 0 || spec.offset % align != 0 || len % align != 0 {
        return Err(Problem::new(if align == 2 << 20 {
            "offset= and size= must be multiples of the device's alignment (2 MiB, sysfs align)"
        } else {
            "offset= and size= must be multiples of the device's alignment (sysfs align)"
        }));
    }
    page_floor(len)
}
