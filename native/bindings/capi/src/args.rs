//! Checked conversion of C arguments into Rust values. A NULL where one is not
//! allowed, text that is not UTF-8, or an impossible length is an
//! `PYMESH_ERR_INVALID_ARGUMENT` naming the parameter, never undefined behaviour.

use std::ffi::{c_char, CStr};
use std::ptr;

use pymesh_core::names::NameConfig;

use crate::error::FfiError;

/// Frees a handle pymesh handed out with `Box::into_raw`; NULL is ignored.
/// The one body behind every `pymesh_*_free`.
///
/// # Safety
///
/// `p` is NULL or came from `Box::into_raw(Box<T>)` and was not freed yet.
pub(crate) unsafe fn free_handle<T>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: forwarded contract.
        drop(unsafe { Box::from_raw(p) });
    }
}

/// The configuration a table is built for: the serving proxy's namespace,
/// cluster domain and DNS search list (`pymesh_core::names::NameConfig`).
///
/// Every pointer is borrowed for the duration of the call only. A NULL
/// `pymesh_name_config *` means all defaults.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy)]
pub struct pymesh_name_config {
    /// The proxy's own namespace (`POD_NAMESPACE`), NUL-terminated UTF-8.
    /// Bare service names resolve only for services of this namespace.
    /// NULL or "" means none.
    pub proxy_namespace: *const c_char,
    /// The cluster domain, NUL-terminated UTF-8. NULL means "cluster.local".
    pub domain: *const c_char,
    /// The resolv.conf search list, in order: `search_len` NUL-terminated
    /// UTF-8 strings, none of them NULL. May be NULL when `search_len` is 0.
    pub search: *const *const c_char,
    /// Number of strings in `search`.
    pub search_len: usize,
}

/// A required NUL-terminated UTF-8 string.
///
/// # Safety
///
/// `p` is NULL or points to a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, FfiError> {
    // SAFETY: forwarded contract.
    unsafe { opt_c_str(p, what) }?.ok_or_else(|| FfiError::invalid_argument(format!("{what} is NULL")))
}

/// An optional NUL-terminated UTF-8 string: NULL gives `None`.
///
/// # Safety
///
/// As for [`c_str`].
pub(crate) unsafe fn opt_c_str<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, FfiError> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL and NUL-terminated by the contract.
    let s = unsafe { CStr::from_ptr(p) };
    utf8(s.to_bytes(), what).map(Some)
}

/// Bytes as UTF-8 text, or an error naming the parameter and the first bad byte.
pub(crate) fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, FfiError> {
    std::str::from_utf8(bytes).map_err(|e| {
        FfiError::invalid_argument(format!("{what} is not valid UTF-8 (invalid byte at offset {})", e.valid_up_to()))
    })
}

/// A byte buffer given as pointer and length; NULL is allowed for length 0.
///
/// # Safety
///
/// `p` is NULL or valid for reading `len` bytes that outlive `'a`.
pub(crate) unsafe fn bytes<'a>(p: *const u8, len: usize, what: &str) -> Result<&'a [u8], FfiError> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(FfiError::invalid_argument(format!("{what} is NULL but its length is {len}")));
    }
    if len > isize::MAX as usize {
        return Err(FfiError::invalid_argument(format!("{what}: length {len} is larger than any buffer")));
    }
    // SAFETY: non-NULL, readable for `len` bytes by the contract, len <= isize::MAX.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// A text buffer given as pointer and length (NULL allowed for length 0),
/// as UTF-8.
///
/// # Safety
///
/// As for [`bytes`].
pub(crate) unsafe fn text<'a>(p: *const c_char, len: usize, what: &str) -> Result<&'a str, FfiError> {
    // SAFETY: forwarded contract.
    utf8(unsafe { bytes(p.cast(), len, what) }?, what)
}

/// A required out-parameter: NULL is an error naming it.
pub(crate) fn out_ptr<T>(p: *mut T, what: &str) -> Result<*mut T, FfiError> {
    if p.is_null() {
        Err(FfiError::invalid_argument(format!("{what} is NULL")))
    } else {
        Ok(p)
    }
}

/// Writes an optional out-parameter: NULL means the caller does not want it.
///
/// # Safety
///
/// `p` is NULL or valid for writing a `T`.
pub(crate) unsafe fn write_opt<T>(p: *mut T, v: T) {
    if !p.is_null() {
        // SAFETY: non-NULL and writable by the contract.
        unsafe { p.write(v) }
    }
}

/// An array of `n` required NUL-terminated UTF-8 strings, copied.
///
/// # Safety
///
/// `p` is NULL or valid for reading `n` pointers, each NULL or a
/// NUL-terminated string.
pub(crate) unsafe fn c_str_array(p: *const *const c_char, n: usize, what: &str) -> Result<Vec<String>, FfiError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() {
        return Err(FfiError::invalid_argument(format!("{what} is NULL but its count is {n}")));
    }
    if n > isize::MAX as usize / std::mem::size_of::<*const c_char>() {
        return Err(FfiError::invalid_argument(format!("{what}: count {n} is larger than any array")));
    }
    // SAFETY: non-NULL and readable for `n` pointers by the contract.
    let items = unsafe { std::slice::from_raw_parts(p, n) };
    items
        .iter()
        .enumerate()
        // SAFETY: each item is NULL or NUL-terminated by the contract.
        .map(|(i, &s)| unsafe { c_str(s, &format!("{what}[{i}]")) }.map(str::to_owned))
        .collect()
}

/// A shared reference to a handle; NULL is an error.
///
/// # Safety
///
/// `p` is NULL or a live handle of type `T` that outlives `'a`.
pub(crate) unsafe fn handle<'a, T>(p: *const T, what: &str) -> Result<&'a T, FfiError> {
    // SAFETY: forwarded contract.
    unsafe { p.as_ref() }.ok_or_else(|| FfiError::invalid_argument(format!("{what} is NULL")))
}

/// A required out-pointer, cleared (set to NULL) so that it holds NULL on
/// every error path.
///
/// # Safety
///
/// `p` is NULL or valid for writing one pointer.
pub(crate) unsafe fn out_handle<T>(p: *mut *mut T, what: &str) -> Result<*mut *mut T, FfiError> {
    if p.is_null() {
        return Err(FfiError::invalid_argument(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and writable by the contract.
    unsafe { p.write(ptr::null_mut()) };
    Ok(p)
}

/// Converts a C configuration; NULL means all defaults.
///
/// # Safety
///
/// `config` is NULL or points to a `pymesh_name_config` whose pointers obey
/// the rules documented on its fields.
pub(crate) unsafe fn name_config(config: *const pymesh_name_config) -> Result<NameConfig, FfiError> {
    let mut out = NameConfig::default();
    // SAFETY: NULL or a valid config by the contract.
    let Some(c) = (unsafe { config.as_ref() }) else {
        return Ok(out);
    };
    // SAFETY: the field contracts of `pymesh_name_config` (NULL or a
    // NUL-terminated string), which the caller promised above.
    if let Some(ns) = unsafe { opt_c_str(c.proxy_namespace, "config->proxy_namespace") }? {
        out.namespace = ns.to_owned();
    }
    // SAFETY: as above.
    if let Some(domain) = unsafe { opt_c_str(c.domain, "config->domain") }? {
        out.domain = domain.to_owned();
    }
    // SAFETY: as above (`search` holds `search_len` such strings, or is NULL
    // with length 0).
    out.search = unsafe { c_str_array(c.search, c.search_len, "config->search") }?;
    Ok(out)
}
