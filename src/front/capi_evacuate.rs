//! `tm_evacuate`: the C entry of a device tier's live move onto another device (`evacuate`).

use super::capi::KindArg;
use crate::device;
use crate::kind::Kind;
use crate::os::set_errno;
use core::ffi::{c_char, c_int, CStr};

/// Moves every byte of device tier `kind` onto `target` (a file or device at least as large as the
/// tier; a regular file is created or extended; NULL means the tier's `spare=` path) while the
/// program's threads keep using its blocks, which keep their addresses. Afterwards the tier's range
/// is backed by `target` at the same offsets and the old device is closed. Returns 0, or -1 +
/// errno: EINVAL (TM_DRAM, an unknown kind, NULL without `spare=`, an empty `target`), ENAMETOOLONG
/// (a `target` over 255 bytes, or longer than a persistent tier's move record holds), ENODEV (kind
/// not configured), EOPNOTSUPP (the tier's backing cannot be moved safely: only shmem, hugetlbfs
/// and NUMA tiers can), EBUSY (a move of it is running, the target is in use by another process, or
/// the target is the tier's own device), ENOSPC/EFBIG (target too small), or the error of opening
/// or mapping `target`; each failure is also explained in one line on stderr. On failure the tier
/// is left as it was, unless the kernel refuses to map the target midway (out of memory or
/// mappings): then the tier works on, split between both devices, and both stay open. A `target` of
/// the form `numa=N` moves a `numa=` tier onto NUMA node N in place (`move_pages`; EINVAL for
/// another tier or a node that does not exist, EBUSY if some page could not move).
///
/// # Safety
/// `target` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn tm_evacuate(kind: KindArg, target: *const c_char) -> c_int {
    let Some(kind) = Kind::from_u32(kind.0) else {
        set_errno(libc::EINVAL);
        return -1;
    };
    // SAFETY: a NUL-terminated string (contract).
    let target = (!target.is_null()).then(|| unsafe { CStr::from_ptr(target) });
    match device::evacuate_kind(kind, target) {
        Ok(_) => 0,
        Err(errno) => {
            set_errno(errno);
            -1
        }
    }
}
