//! Building a table entry by entry, for callers that hold their service data
//! in their own structures rather than in a document.

use std::ffi::c_char;

use pymesh_core::names::NameEntry;

use crate::args::{self, pymesh_name_config};
use crate::error::{boundary, guard, pymesh_status, FfiError};
use crate::table::{build_into, pymesh_name_table};

/// Collects entries for a name table (opaque).
///
/// Created by `pymesh_name_table_builder_new`, owned by the caller, released
/// with `pymesh_name_table_builder_free`. Not thread-safe: use one builder
/// from one thread at a time.
#[allow(non_camel_case_types)]
#[derive(Debug, Default)]
pub struct pymesh_name_table_builder {
    entries: Vec<NameEntry>,
}

/// Creates an empty builder. The caller owns it and frees it with
/// `pymesh_name_table_builder_free`. Returns NULL only if Rust panicked.
#[no_mangle]
pub extern "C" fn pymesh_name_table_builder_new() -> *mut pymesh_name_table_builder {
    guard(std::ptr::null_mut(), || Box::into_raw(Box::default()))
}

/// Frees a builder. NULL is allowed and does nothing.
///
/// # Safety
///
/// `builder` is NULL or a builder from `pymesh_name_table_builder_new` that
/// has not been freed.
#[no_mangle]
pub unsafe extern "C" fn pymesh_name_table_builder_free(builder: *mut pymesh_name_table_builder) {
    guard((), || {
        // SAFETY: the function's contract is free_handle's.
        unsafe { args::free_handle(builder) }
    })
}

/// Adds one entry (the fields of NDS `NameInfo` with its hostname key).
///
/// All strings are NUL-terminated UTF-8 and copied; nothing is retained.
/// `hostname` is required; `ips` holds `n_ips` address strings (IPv4 or IPv6,
/// none NULL; `ips` may be NULL when `n_ips` is 0); `registry` ("Kubernetes"
/// for a Kubernetes service), `shortname` and `service_namespace` may be NULL,
/// meaning "". Hostnames and addresses are validated by
/// `pymesh_name_table_builder_build`, which names the offending entry and
/// field; this function only rejects NULL and non-UTF-8 arguments
/// (`PYMESH_ERR_INVALID_ARGUMENT`), in which case nothing is added.
/// `error_message` as in `pymesh_name_table_from_json`.
///
/// # Safety
///
/// `builder` is NULL or a live builder not used by another thread; every
/// string pointer is NULL or NUL-terminated; `ips` is NULL or readable for
/// `n_ips` pointers; `error_message` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pymesh_name_table_builder_add(
    builder: *mut pymesh_name_table_builder,
    hostname: *const c_char,
    ips: *const *const c_char,
    n_ips: usize,
    registry: *const c_char,
    shortname: *const c_char,
    service_namespace: *const c_char,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            let b = builder.as_mut().ok_or_else(|| FfiError::invalid_argument("builder is NULL"))?;
            let opt = |p, what| args::opt_c_str(p, what).map(|s| s.unwrap_or_default().to_owned());
            let entry = NameEntry {
                hostname: args::c_str(hostname, "hostname")?.to_owned(),
                ips: args::c_str_array(ips, n_ips, "ips")?,
                registry: opt(registry, "registry")?,
                shortname: opt(shortname, "shortname")?,
                namespace: opt(service_namespace, "service_namespace")?,
                alt_hosts: Vec::new(),
            };
            b.entries.push(entry);
            Ok(pymesh_status::PYMESH_OK)
        })
    }
}

/// Builds a table from the entries added so far, for `config` (borrowed for
/// the call; NULL means defaults). The builder is left unchanged and can be
/// extended and built again.
///
/// On success `*out` receives a new table the caller owns (free with
/// `pymesh_name_table_free`); on error `*out` is NULL and the result is
/// `PYMESH_ERR_INVALID_ENTRY` (the message names the entry and field, e.g.
/// `entry "a.example": ips[1]: ...`), `PYMESH_ERR_INVALID_CONFIG` or
/// `PYMESH_ERR_INVALID_ARGUMENT`. Entries without any address are left out.
/// `error_message` as in `pymesh_name_table_from_json`.
///
/// # Safety
///
/// `builder` is NULL or a live builder not being changed by another thread;
/// `config` is NULL or a valid `pymesh_name_config`; `out` is NULL or
/// writable; `error_message` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pymesh_name_table_builder_build(
    builder: *const pymesh_name_table_builder,
    config: *const pymesh_name_config,
    out: *mut *mut pymesh_name_table,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            let out = args::out_handle(out, "out")?;
            let b = args::handle(builder, "builder")?;
            build_into(out, config, || Ok(&b.entries))
        })
    }
}
