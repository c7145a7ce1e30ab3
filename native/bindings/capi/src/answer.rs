//! The result of a lookup as C sees it, and the one function that fills it
//! from a core [`Hit`] (shared by snapshot and live lookups).

use std::ffi::{c_char, c_int, CStr};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ptr;

use pymesh_core::names::{Form, Hit, NameTable};

use crate::args;
use crate::error::{guard, pymesh_status, FfiError};

/// Size of the name buffers pymesh fills (`pymesh_name_answer.canonical`):
/// the longest name (253 characters, RFC 1035 section 2.3.4) plus the NUL,
/// rounded up. A buffer of this size is always large enough for a hostname.
pub const PYMESH_NAME_BUF_LEN: usize = 256;

/// Address family values of `pymesh_ip.family`.
pub const PYMESH_IPV4: u8 = 4;
/// See `PYMESH_IPV4`.
pub const PYMESH_IPV6: u8 = 6;

/// One IP address.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct pymesh_ip {
    /// `PYMESH_IPV4` (4) or `PYMESH_IPV6` (6).
    pub family: u8,
    /// The address in network byte order: 4 bytes for IPv4 (the other 12 are
    /// zero), 16 for IPv6.
    pub bytes: [u8; 16],
}

impl pymesh_ip {
    fn v4(a: &Ipv4Addr) -> pymesh_ip {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&a.octets());
        pymesh_ip { family: PYMESH_IPV4, bytes }
    }

    fn v6(a: &Ipv6Addr) -> pymesh_ip {
        pymesh_ip { family: PYMESH_IPV6, bytes: a.octets() }
    }
}

/// The form of a name under which a query matched its entry
/// (`pymesh_core::names::Form`; `pymesh_name_form_str` gives its stable name).
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pymesh_name_form {
    /// The entry's own hostname ("hostname").
    PYMESH_NAME_FORM_HOSTNAME = 0,
    /// One of the entry's alt hosts ("alt_host").
    PYMESH_NAME_FORM_ALT_HOST = 1,
    /// `name.namespace.svc` of a Kubernetes service ("name.namespace.svc").
    PYMESH_NAME_FORM_NAME_NAMESPACE_SVC = 2,
    /// `name.namespace` of a Kubernetes service ("name.namespace").
    PYMESH_NAME_FORM_NAME_NAMESPACE = 3,
    /// The bare name of a Kubernetes service in the proxy's namespace ("name").
    PYMESH_NAME_FORM_SHORT_NAME = 4,
    /// Below a wildcard host `*.domain` ("wildcard").
    PYMESH_NAME_FORM_WILDCARD = 5,
}

use pymesh_name_form::*;

impl From<Form> for pymesh_name_form {
    fn from(f: Form) -> pymesh_name_form {
        match f {
            Form::Hostname => PYMESH_NAME_FORM_HOSTNAME,
            Form::AltHost => PYMESH_NAME_FORM_ALT_HOST,
            Form::NameNamespaceSvc => PYMESH_NAME_FORM_NAME_NAMESPACE_SVC,
            Form::NameNamespace => PYMESH_NAME_FORM_NAME_NAMESPACE,
            Form::ShortName => PYMESH_NAME_FORM_SHORT_NAME,
            Form::Wildcard => PYMESH_NAME_FORM_WILDCARD,
        }
    }
}

/// The stable name of a form, the same string every pymesh interface uses
/// (`Form::as_str`): "hostname", "alt_host", "name.namespace.svc",
/// "name.namespace", "name", "wildcard". NULL for a value that is not a
/// `pymesh_name_form`.
///
/// The string is static: do not free it.
#[no_mangle]
pub extern "C" fn pymesh_name_form_str(form: c_int) -> *const c_char {
    guard(ptr::null(), || match form_c_str(form) {
        Some(s) => s.as_ptr(),
        None => ptr::null(),
    })
}

/// NUL-terminated twins of `Form::as_str` (a test checks they agree).
pub(crate) fn form_c_str(form: c_int) -> Option<&'static CStr> {
    Some(match form {
        0 => c"hostname",
        1 => c"alt_host",
        2 => c"name.namespace.svc",
        3 => c"name.namespace",
        4 => c"name",
        5 => c"wildcard",
        _ => return None,
    })
}

/// The answer to a lookup of a known name.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy)]
pub struct pymesh_name_answer {
    /// The canonical name, NUL-terminated: the entry's hostname, or for a
    /// wildcard match the (search-stripped, lower-cased) query name itself.
    pub canonical: [c_char; PYMESH_NAME_BUF_LEN],
    /// The form that matched.
    pub form: pymesh_name_form,
    /// Index into the configured search list of the domain stripped from the
    /// query before it matched, or -1 if the query matched as given.
    pub search_index: i32,
    /// Position of the matched entry in the table's iteration order (see
    /// `pymesh_name_table_entry_hostname`).
    pub entry: usize,
    /// Number of IPv4 addresses of the name (all of them, even if `addrs_cap`
    /// was smaller).
    pub n_ipv4: usize,
    /// Number of IPv6 addresses of the name (likewise).
    pub n_ipv6: usize,
}

/// Looks `name` up in `table` and writes the answer; shared by the snapshot
/// and live lookups.
///
/// # Safety
///
/// `name` is NULL or readable for `name_len` bytes; `out` is NULL or writable
/// for one answer; `addrs` is NULL or writable for `addrs_cap` addresses.
pub(crate) unsafe fn lookup_into(
    table: &NameTable,
    name: *const c_char,
    name_len: usize,
    out: *mut pymesh_name_answer,
    addrs: *mut pymesh_ip,
    addrs_cap: usize,
) -> Result<pymesh_status, FfiError> {
    if name.is_null() {
        return Err(FfiError::invalid_argument("name is NULL"));
    }
    if out.is_null() {
        return Err(FfiError::invalid_argument("out is NULL"));
    }
    if addrs.is_null() && addrs_cap > 0 {
        return Err(FfiError::invalid_argument(format!("addrs is NULL but addrs_cap is {addrs_cap}")));
    }
    // SAFETY: readable for name_len bytes by the contract.
    let name = unsafe { args::bytes(name.cast(), name_len, "name") }?;
    args::utf8(name, "name")?;
    table.lookup_with(name, |hit| match hit {
        None => {
            // SAFETY: out is non-NULL and writable.
            unsafe { out.write(empty_answer()) };
            Ok(pymesh_status::PYMESH_NOT_FOUND)
        }
        Some(hit) => {
            // SAFETY: as above; addrs is writable for addrs_cap addresses.
            unsafe { write_hit(&hit, out, addrs, addrs_cap) };
            Ok(pymesh_status::PYMESH_OK)
        }
    })
}

fn empty_answer() -> pymesh_name_answer {
    pymesh_name_answer {
        canonical: [0; PYMESH_NAME_BUF_LEN],
        form: PYMESH_NAME_FORM_HOSTNAME,
        search_index: -1,
        entry: 0,
        n_ipv4: 0,
        n_ipv6: 0,
    }
}

/// # Safety
///
/// `out` is writable for one answer; `addrs` is writable for `addrs_cap`
/// addresses (or `addrs_cap` is 0).
unsafe fn write_hit(hit: &Hit<'_>, out: *mut pymesh_name_answer, addrs: *mut pymesh_ip, addrs_cap: usize) {
    let mut answer = empty_answer();
    fill_name(&mut answer.canonical, hit.canonical);
    answer.form = hit.form.into();
    answer.search_index = hit.search_index.map_or(-1, |i| i32::try_from(i).unwrap_or(i32::MAX));
    answer.entry = hit.entry;
    answer.n_ipv4 = hit.ipv4.len();
    answer.n_ipv6 = hit.ipv6.len();
    // SAFETY: writable by the contract.
    unsafe { out.write(answer) };
    // Written through the raw pointer, never read: the caller's array may be
    // uninitialised memory.
    let all = hit.ipv4.iter().map(pymesh_ip::v4).chain(hit.ipv6.iter().map(pymesh_ip::v6));
    for (i, ip) in all.take(addrs_cap).enumerate() {
        // SAFETY: i < addrs_cap.
        unsafe { addrs.add(i).write(ip) };
    }
}

/// Copies a name (at most 253 bytes, checked by the core) into a name buffer
/// with its NUL.
fn fill_name(buf: &mut [c_char; PYMESH_NAME_BUF_LEN], name: &str) {
    let n = name.len().min(PYMESH_NAME_BUF_LEN - 1);
    for (dst, &b) in buf.iter_mut().zip(&name.as_bytes()[..n]) {
        *dst = b as c_char;
    }
    buf[n] = 0;
}
