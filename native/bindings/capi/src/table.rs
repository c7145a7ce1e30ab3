//! Name table snapshots: built from a document, a file or NDS bytes, then
//! looked up and iterated. A snapshot is immutable, so any number of threads
//! may use one at once.

use std::ffi::c_char;

use pymesh_core::names::{decode_name_table, parse_document, read_file, Format, NameEntry, NameTable};

use crate::answer::{lookup_into, pymesh_ip, pymesh_name_answer};
use crate::args::{self, pymesh_name_config};
use crate::error::{boundary, guard, pymesh_status, FfiError};

/// An immutable name table snapshot (opaque).
///
/// Created by the `pymesh_name_table_from_*` functions and
/// `pymesh_name_table_builder_build`; owned by the caller, who releases it
/// with `pymesh_name_table_free` or hands it to
/// `pymesh_live_name_table_store`. Lookups from several threads at once are
/// safe.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct pymesh_name_table {
    pub(crate) table: NameTable,
}

/// Builds a table from entries and config and stores it in `*out`.
///
/// Every constructor clears `*out` first (with [`args::out_handle`]), before
/// any other check, so that `*out` is NULL on every error path.
///
/// # Safety
///
/// `out` came from [`args::out_handle`]; `config` as in [`args::name_config`].
pub(crate) unsafe fn build_into<E: AsRef<[NameEntry]>>(
    out: *mut *mut pymesh_name_table,
    config: *const pymesh_name_config,
    entries: impl FnOnce() -> Result<E, FfiError>,
) -> Result<pymesh_status, FfiError> {
    // SAFETY: forwarded contract.
    let config = unsafe { args::name_config(config) }?;
    let table = NameTable::build(entries()?.as_ref(), &config)?;
    // SAFETY: `out_handle` checked it is non-NULL and writable.
    unsafe { out.write(Box::into_raw(Box::new(pymesh_name_table { table }))) };
    Ok(pymesh_status::PYMESH_OK)
}

/// Builds a table from a name table document in JSON: the proto3 JSON form of
/// NDS `NameTable`, `{"table": {"<hostname>": {"ips": [...], "registry": ...,
/// "shortname": ..., "namespace": ..., "alt_hosts": [...]}}}`.
///
/// `json` is `json_len` bytes of UTF-8 (no NUL needed), borrowed for the call.
/// `config` is borrowed for the call; NULL means defaults. On success `*out`
/// receives a new table the caller owns (free with `pymesh_name_table_free`);
/// on error `*out` is NULL.
///
/// Returns `PYMESH_OK`, or `PYMESH_ERR_PARSE` (malformed document, not UTF-8),
/// `PYMESH_ERR_INVALID_ENTRY`, `PYMESH_ERR_INVALID_CONFIG`,
/// `PYMESH_ERR_INVALID_ARGUMENT`. If `error_message` is not NULL it receives
/// NULL on success or a message the caller frees with `pymesh_string_free`.
///
/// # Safety
///
/// `json` is NULL or readable for `json_len` bytes; `config` is NULL or a
/// valid `pymesh_name_config`; `out` is NULL or writable; `error_message` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pymesh_name_table_from_json(
    json: *const c_char,
    json_len: usize,
    config: *const pymesh_name_config,
    out: *mut *mut pymesh_name_table,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe { boundary(error_message, || from_text(json, json_len, Format::Json, config, out)) }
}

/// Builds a table from the same document in YAML; otherwise exactly as
/// `pymesh_name_table_from_json`.
///
/// # Safety
///
/// As for `pymesh_name_table_from_json`.
#[no_mangle]
pub unsafe extern "C" fn pymesh_name_table_from_yaml(
    yaml: *const c_char,
    yaml_len: usize,
    config: *const pymesh_name_config,
    out: *mut *mut pymesh_name_table,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe { boundary(error_message, || from_text(yaml, yaml_len, Format::Yaml, config, out)) }
}

/// # Safety
///
/// As for `pymesh_name_table_from_json`.
unsafe fn from_text(
    text: *const c_char,
    len: usize,
    format: Format,
    config: *const pymesh_name_config,
    out: *mut *mut pymesh_name_table,
) -> Result<pymesh_status, FfiError> {
    let source_name = match format {
        Format::Json => "<json>",
        Format::Yaml => "<yaml>",
    };
    // SAFETY: forwarded contract.
    let out = unsafe { args::out_handle(out, "out") }?;
    if text.is_null() {
        return Err(FfiError::invalid_argument(format!("{source_name} document is NULL")));
    }
    // SAFETY: readable for len bytes by the contract.
    let bytes = unsafe { args::bytes(text.cast(), len, "document") }?;
    let entries = || {
        // A document that is not UTF-8 is malformed input, like bad syntax.
        let text = std::str::from_utf8(bytes).map_err(|e| FfiError {
            status: pymesh_status::PYMESH_ERR_PARSE,
            message: format!("{source_name}: not valid UTF-8 (invalid byte at offset {})", e.valid_up_to()),
        })?;
        Ok(parse_document(text, format, source_name)?)
    };
    // SAFETY: forwarded contracts.
    unsafe { build_into(out, config, entries) }
}

/// Builds a table from a file: YAML if the name ends in `.yaml` or `.yml`,
/// JSON otherwise (`pymesh_core::names::read_file`).
///
/// `path` is a NUL-terminated UTF-8 path, borrowed for the call. Ownership of
/// `*out` and `error_message` as in `pymesh_name_table_from_json`; a file
/// that cannot be read gives `PYMESH_ERR_IO`.
///
/// # Safety
///
/// `path` is NULL or NUL-terminated; the other pointers as in
/// `pymesh_name_table_from_json`.
#[no_mangle]
pub unsafe extern "C" fn pymesh_name_table_from_file(
    path: *const c_char,
    config: *const pymesh_name_config,
    out: *mut *mut pymesh_name_table,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            let out = args::out_handle(out, "out")?;
            let path = args::c_str(path, "path")?;
            build_into(out, config, || Ok(read_file(path)?))
        })
    }
}

/// Builds a table from a serialized NDS `NameTable` protobuf message (what
/// istiod pushes to proxies). Decoding errors are `PYMESH_ERR_PARSE`.
///
/// `nds` is `nds_len` bytes borrowed for the call (NULL allowed when
/// `nds_len` is 0). Ownership of `*out` and `error_message` as in
/// `pymesh_name_table_from_json`.
///
/// # Safety
///
/// `nds` is NULL or readable for `nds_len` bytes; the other pointers as in
/// `pymesh_name_table_from_json`.
#[no_mangle]
pub unsafe extern "C" fn pymesh_name_table_from_nds(
    nds: *const u8,
    nds_len: usize,
    config: *const pymesh_name_config,
    out: *mut *mut pymesh_name_table,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            let out = args::out_handle(out, "out")?;
            let buf = args::bytes(nds, nds_len, "nds")?;
            build_into(out, config, || Ok(decode_name_table(buf)?))
        })
    }
}

/// Frees a table. NULL is allowed and does nothing.
///
/// # Safety
///
/// `table` is NULL or a table from pymesh that has not been freed or stored
/// into a live table, and that no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn pymesh_name_table_free(table: *mut pymesh_name_table) {
    guard((), || {
        // SAFETY: the function's contract is free_handle's.
        unsafe { args::free_handle(table) }
    })
}

/// Number of entries in the table (hostnames with at least one address);
/// 0 for NULL.
///
/// # Safety
///
/// `table` is NULL or a live table.
#[no_mangle]
pub unsafe extern "C" fn pymesh_name_table_len(table: *const pymesh_name_table) -> usize {
    // SAFETY: NULL or live by the contract.
    guard(0, || unsafe { table.as_ref() }.map_or(0, |t| t.table.len()))
}

/// Copies the hostname of the entry at `index` (0 <= index <
/// `pymesh_name_table_len`, in input order) into `buf` with its NUL.
///
/// A buffer of `PYMESH_NAME_BUF_LEN` bytes is always large enough; a smaller
/// one that does not fit the name gives `PYMESH_ERR_BUFFER_TOO_SMALL`. An
/// index out of range gives `PYMESH_ERR_INVALID_ARGUMENT`. `error_message` as
/// in `pymesh_name_table_from_json`.
///
/// # Safety
///
/// `table` is NULL or a live table; `buf` is NULL or writable for `buf_cap`
/// bytes; `error_message` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pymesh_name_table_entry_hostname(
    table: *const pymesh_name_table,
    index: usize,
    buf: *mut c_char,
    buf_cap: usize,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            let t = &args::handle(table, "table")?.table;
            let entry = t.entry(index).ok_or_else(|| {
                FfiError::invalid_argument(format!("index {index} is out of range (the table has {} entries)", t.len()))
            })?;
            if buf.is_null() {
                return Err(FfiError::invalid_argument("buf is NULL"));
            }
            let name = entry.hostname.as_bytes();
            if name.len() >= buf_cap {
                return Err(FfiError::buffer_too_small(format!(
                    "hostname needs {} bytes with its NUL, buf_cap is {buf_cap}",
                    name.len() + 1
                )));
            }
            // SAFETY: buf is writable for buf_cap > name.len() bytes.
            std::ptr::copy_nonoverlapping(name.as_ptr(), buf.cast::<u8>(), name.len());
            buf.add(name.len()).write(0);
            Ok(pymesh_status::PYMESH_OK)
        })
    }
}

/// Looks a name up in the table.
///
/// `name` is `name_len` bytes of UTF-8 (no NUL needed), in any letter case,
/// with or without the trailing dot, borrowed for the call.
///
/// Returns `PYMESH_OK` for a known name, with `*out` filled and the first
/// `min(addrs_cap, out->n_ipv4 + out->n_ipv6)` elements of `addrs` set to the
/// name's addresses, IPv4 first, each family in table order. A known name
/// without addresses of the family a query asks for is a NODATA answer, not
/// an unknown name. Returns `PYMESH_NOT_FOUND` for a name the table does not
/// know (`*out` then holds an empty name and zero counts): a DNS proxy
/// forwards it. Returns `PYMESH_ERR_INVALID_ARGUMENT` for a NULL `table`,
/// `name` or `out`, a NULL `addrs` with a non-zero `addrs_cap`, or a name
/// that is not UTF-8. `error_message` as in `pymesh_name_table_from_json`.
///
/// Allocates nothing unless an error message is returned.
///
/// # Safety
///
/// `table` is NULL or a live table; `name` is NULL or readable for `name_len`
/// bytes; `out` is NULL or writable; `addrs` is NULL or writable for
/// `addrs_cap` elements; `error_message` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pymesh_name_table_lookup(
    table: *const pymesh_name_table,
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
            let t = &args::handle(table, "table")?.table;
            lookup_into(t, name, name_len, out, addrs, addrs_cap)
        })
    }
}
