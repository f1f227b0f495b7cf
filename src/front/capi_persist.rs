//! The C interface of persistent device tiers (`include/tiermalloc.h`): durability
//! (`tm_persist`), durable named roots, a walk over live blocks, and offsets from a region's
//! start, which stay valid when the region maps at another address next run.

use crate::device::{self, DeviceTier};
use crate::front::capi::KindArg;
use crate::kind::Kind;
use crate::os::set_errno;
use core::ffi::{c_char, c_int, c_void, CStr};
use core::ptr;

/// The device tier `k` names: `Err(errno)` (EINVAL unknown kind or DRAM, ENODEV not
/// configured).
fn device_tier(k: KindArg) -> Result<&'static DeviceTier, c_int> {
    match Kind::from_u32(k.0) {
        None | Some(Kind::Dram) => Err(libc::EINVAL),
        Some(kind) => device::get(kind).ok_or(libc::ENODEV),
    }
}

/// The device tier holding address `p`, if any.
fn tier_of(p: *const c_void) -> Option<&'static DeviceTier> {
    match crate::tier::kind_of(p.cast())? {
        Kind::Dram => None,
        kind => device::get(kind),
    }
}

fn fail(errno: c_int) -> c_int {
    set_errno(errno);
    -1
}

/// Makes `[addr, addr + len)` on a device tier durable, and with it every earlier write to
/// that tier (block headers included): `msync` for a file, cache-line write-back and fence
/// for DAX, a read of the device for a PCI BAR. 0, or -1 + errno (EINVAL: not on a device
/// tier, or the range leaves its region).
#[no_mangle]
pub extern "C" fn tm_persist(addr: *const c_void, len: usize) -> c_int {
    match tier_of(addr).map(|t| t.persist(addr.cast(), len)) {
        Some(Ok(())) => 0,
        Some(Err(e)) => fail(e),
        None => fail(libc::EINVAL),
    }
}

/// The name as bytes (at most 63, checked by the tier), or EINVAL for NULL.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
unsafe fn name_bytes<'a>(name: *const c_char) -> Result<&'a [u8], c_int> {
    if name.is_null() {
        return Err(libc::EINVAL);
    }
    // SAFETY: NUL-terminated (contract).
    Ok(unsafe { CStr::from_ptr(name) }.to_bytes())
}

/// Maps durable root `name` (1 to 63 bytes) of tier `kind` to `block`, a live block of that
/// tier; `block` NULL removes the root. The change is ordered on the device (a crash leaves
/// the old or the new mapping) but durable only after `tm_persist`. 0, or -1 + errno (EINVAL
/// bad kind, name or block; ENODEV kind not configured; ENOSPC the table of 48 roots is full).
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn tm_root_set(
    kind: KindArg,
    name: *const c_char,
    block: *const c_void,
) -> c_int {
    // SAFETY: forwarded.
    let result = device_tier(kind).and_then(|t| Ok((t, unsafe { name_bytes(name) }?)));
    let result = result.and_then(|(tier, name)| {
        let block = (!block.is_null()).then_some(block as *mut u8);
        tier.root_set(name, block)
    });
    match result {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

/// The live block durable root `name` of tier `kind` names, or NULL + errno (ENOENT no such
/// root, or its block is no longer live; EINVAL bad kind or name; ENODEV not configured).
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn tm_root_get(kind: KindArg, name: *const c_char) -> *mut c_void {
    // SAFETY: forwarded.
    let result = device_tier(kind).and_then(|t| Ok((t, unsafe { name_bytes(name) }?)));
    match result.map(|(tier, name)| tier.root_get(name)) {
        Ok(Some(p)) => p.cast(),
        Ok(None) => {
            set_errno(libc::ENOENT);
            ptr::null_mut()
        }
        Err(e) => {
            set_errno(e);
            ptr::null_mut()
        }
    }
}

/// The live blocks of tier `kind` in address order: `tm_next_block(kind, NULL)` is the first,
/// `tm_next_block(kind, p)` the one after live block `p`; NULL at the end (errno untouched),
/// or NULL + errno for a bad kind (EINVAL), one not configured (ENODEV), or a `prev` outside
/// the tier's region (EINVAL: a walk that would otherwise look ended).
#[no_mangle]
pub extern "C" fn tm_next_block(kind: KindArg, prev: *const c_void) -> *mut c_void {
    match device_tier(kind) {
        Ok(tier) if !prev.is_null() && tier.offset_in_region(prev.cast()).is_none() => {
            set_errno(libc::EINVAL);
            ptr::null_mut()
        }
        Ok(tier) => {
            let prev = (!prev.is_null()).then_some(prev as *mut u8);
            tier.next_block(prev).map_or(ptr::null_mut(), |p| p.cast())
        }
        Err(e) => {
            set_errno(e);
            ptr::null_mut()
        }
    }
}

/// The offset of `p` from the start of its device tier's region (stable across runs, where
/// the address is not); `UINT64_MAX` if `p` is not on a device tier.
#[no_mangle]
pub extern "C" fn tm_offset_of(p: *const c_void) -> u64 {
    tier_of(p)
        .and_then(|t| t.offset_in_region(p.cast()))
        .unwrap_or(u64::MAX)
}

/// The address at `offset` of tier `kind`'s region (the inverse of `tm_offset_of`), or NULL
/// + EINVAL outside the region or for a kind that is not a configured device tier.
#[no_mangle]
pub extern "C" fn tm_at_offset(kind: KindArg, offset: u64) -> *mut c_void {
    match device_tier(kind).ok().and_then(|t| t.at_offset(offset)) {
        Some(p) => p.cast(),
        None => {
            set_errno(libc::EINVAL);
            ptr::null_mut()
        }
    }
}
