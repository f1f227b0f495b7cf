//! `tm_pool_nodes`: the shared pool's live nodes, for C. The record is `pool::NodeInfo`
//! itself, laid out for C (cbindgen names it `tm_node_info`).

use super::capi_pool::with_pool;
use crate::pool::NodeInfo;
use core::ffi::c_int;

/// Fills `out` with up to `max` live nodes (this process joins first, so it is one) and
/// returns how many live nodes there are (may exceed `max`), or -1 + ENODEV (no pool).
///
/// # Safety
/// `out` must be valid for `max` writes (NULL when `max` is 0).
#[no_mangle]
pub unsafe extern "C" fn tm_pool_nodes(out: *mut NodeInfo, max: usize) -> c_int {
    with_pool(-1, |p| {
        let mut n = 0usize;
        p.nodes(|info| {
            if n < max && !out.is_null() {
                // SAFETY: n < max, and `out` is valid for `max` writes (contract).
                unsafe { out.add(n).write(info) };
            }
            n += 1;
        })?;
        Ok(n.min(c_int::MAX as usize) as c_int)
    })
}
