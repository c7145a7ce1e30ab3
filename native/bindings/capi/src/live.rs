//! The live table of an embedding proxy: snapshots are built off the hot path
//! and published with one atomic swap; lookups take no lock
//! (`pymesh_core::names::LiveNameTable`).

use std::ffi::c_char;
use std::sync::{Arc, OnceLock};

use pymesh_core::names::{LiveNameTable, NameConfig, NameTable};

use crate::answer::{lookup_into, pymesh_ip, pymesh_name_answer};
use crate::args;
use crate::error::{boundary, guard, pymesh_status, FfiError};
use crate::table::pymesh_name_table;

/// The snapshot serving now, swapped atomically (opaque).
///
/// Created by `pymesh_live_name_table_new`, owned by the caller, released
/// with `pymesh_live_name_table_free`. Lookups and stores may run on any
/// number of threads at once; a lookup sees either the old or the new
/// snapshot, never a mix.
#[allow(non_camel_case_types)]
#[derive(Debug, Default)]
pub struct pymesh_live_name_table {
    live: LiveNameTable,
}

/// Creates a live table with no snapshot yet (lookups return
/// `PYMESH_NOT_FOUND` until the first store). The caller owns it and frees it
/// with `pymesh_live_name_table_free`. Returns NULL only if Rust panicked.
#[no_mangle]
pub extern "C" fn pymesh_live_name_table_new() -> *mut pymesh_live_name_table {
    guard(std::ptr::null_mut(), || Box::into_raw(Box::default()))
}

/// Frees a live table and the snapshot it holds. NULL is allowed and does
/// nothing.
///
/// # Safety
///
/// `live` is NULL or a live table from `pymesh_live_name_table_new` that has
/// not been freed and that no other thread is still using.
#[no_mangle]
pub unsafe extern "C" fn pymesh_live_name_table_free(live: *mut pymesh_live_name_table) {
    guard((), || {
        // SAFETY: the function's contract is free_handle's.
        unsafe { args::free_handle(live) }
    })
}

/// Publishes `table` as the snapshot serving from now on.
///
/// Takes ownership of `table` in every case: after the call the caller must
/// not use or free it, even on error (then it has been freed). The previous
/// snapshot is freed once the last lookup still reading it returns. If
/// `generation` is not NULL it receives the number of snapshots published so
/// far (1 after the first store). Returns `PYMESH_OK`, or
/// `PYMESH_ERR_INVALID_ARGUMENT` for a NULL `live` or `table`.
/// `error_message` as in `pymesh_name_table_from_json`.
///
/// # Safety
///
/// `live` is NULL or a live table; `table` is NULL or a table from pymesh not
/// yet freed or stored; `generation` and `error_message` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pymesh_live_name_table_store(
    live: *const pymesh_live_name_table,
    table: *mut pymesh_name_table,
    generation: *mut u64,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            // Owned from here on, so that every path below frees it.
            let table = (!table.is_null()).then(|| Box::from_raw(table));
            let live = args::handle(live, "live")?;
            let table = table.ok_or_else(|| FfiError::invalid_argument("table is NULL"))?;
            let n = live.live.store(Arc::new(table.table));
            if !generation.is_null() {
                generation.write(n);
            }
            Ok(pymesh_status::PYMESH_OK)
        })
    }
}

/// Number of snapshots published so far (0 before the first store, and for
/// NULL).
///
/// # Safety
///
/// `live` is NULL or a live table.
#[no_mangle]
pub unsafe extern "C" fn pymesh_live_name_table_generation(live: *const pymesh_live_name_table) -> u64 {
    // SAFETY: NULL or live by the contract.
    guard(0, || unsafe { live.as_ref() }.map_or(0, |l| l.live.generation()))
}

/// Looks a name up in the snapshot serving now; arguments, results and
/// ownership exactly as in `pymesh_name_table_lookup`. Before the first
/// store every name is `PYMESH_NOT_FOUND`. Takes no lock.
///
/// `out->entry` refers to the snapshot that answered, which may already have
/// been replaced when the call returns.
///
/// # Safety
///
/// `live` is NULL or a live table; the other pointers as in
/// `pymesh_name_table_lookup`.
#[no_mangle]
pub unsafe extern "C" fn pymesh_live_name_table_lookup(
    live: *const pymesh_live_name_table,
    name: *const c_char,
    name_len: usize,
    out: *mut pymesh_name_answer,
    addrs: *mut pymesh_ip,
    addrs_cap: usize,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            let snapshot = args::handle(live, "live")?.live.load();
            match snapshot.as_deref() {
                Some(t) => lookup_into(t, name, name_len, out, addrs, addrs_cap),
                // No table yet: validate the arguments as a lookup would, in
                // an empty table, so a caller's bug shows before the first store.
                None => lookup_into(empty_table(), name, name_len, out, addrs, addrs_cap),
            }
        })
    }
}

/// The table that knows nothing, shared by live tables without a snapshot.
fn empty_table() -> &'static NameTable {
    static EMPTY: OnceLock<NameTable> = OnceLock::new();
    EMPTY.get_or_init(|| NameTable::build(&[], &NameConfig::default()).expect("the empty table is valid"))
}
