//! Endpoint inspection through the C ABI: what `LbTable.endpoints()` gives
//! Python (address, weight, health, priority, locality, Istio metadata and
//! live state), as a list handle an embedding proxy walks and frees.
//!
//! The list is a copy taken at one moment: settings and health of the
//! snapshot serving then, active requests and ejection as they were. Its
//! strings belong to the list and stay valid until it is freed.

use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::ptr;

use pymesh_core::lb::{Health, HealthStatus};

use crate::answer::pymesh_ip;
use crate::args;
use crate::error::{boundary, guard, pymesh_status};
use crate::lb::{address_text, cluster_of, ip_to_c, pymesh_lb_table, PYMESH_LB_ADDR_LEN};

/// The health load balancing uses for an endpoint (Envoy's coarse health:
/// EDS status, the caller's active health checks and outlier ejection).
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pymesh_lb_health {
    PYMESH_LB_HEALTHY = 0,
    /// Takes load only when the healthy hosts cannot (Envoy's DEGRADED).
    PYMESH_LB_DEGRADED = 1,
    /// Picked only in panic.
    PYMESH_LB_UNHEALTHY = 2,
}

/// An endpoint's EDS `health_status` as given, with Envoy's numbers
/// (`envoy.config.core.v3.HealthStatus`).
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pymesh_lb_health_status {
    PYMESH_LB_STATUS_UNKNOWN = 0,
    PYMESH_LB_STATUS_HEALTHY = 1,
    PYMESH_LB_STATUS_UNHEALTHY = 2,
    PYMESH_LB_STATUS_DRAINING = 3,
    PYMESH_LB_STATUS_TIMEOUT = 4,
    PYMESH_LB_STATUS_DEGRADED = 5,
}

/// One endpoint of a cluster, as `pymesh_lb_endpoints` saw it. String
/// fields are NUL-terminated UTF-8 owned by the list (never NULL; "" when
/// unset; cut at an embedded NUL).
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy)]
pub struct pymesh_lb_endpoint_info {
    pub address: pymesh_ip,
    pub port: u16,
    /// `address:port` (`[v6]:port`), NUL-terminated.
    pub text: [c_char; PYMESH_LB_ADDR_LEN],
    /// Its `load_balancing_weight`.
    pub weight: u32,
    /// Its priority (after Istio locality failover, if configured).
    pub priority: u32,
    /// Its health for load balancing.
    pub health: pymesh_lb_health,
    /// Its EDS `health_status` as given.
    pub health_status: pymesh_lb_health_status,
    /// Its locality's region.
    pub region: *const c_char,
    /// Its locality's zone.
    pub zone: *const c_char,
    /// Its locality's sub-zone.
    pub sub_zone: *const c_char,
    /// Its locality's `load_balancing_weight` (0 when unset).
    pub locality_weight: u32,
    /// Requests in flight (`pymesh_lb_request_started` minus finished reports).
    pub active_requests: u32,
    /// Ejected by outlier detection now.
    pub ejected: bool,
    /// Times ejected over the endpoint's life.
    pub ejections: u64,
    /// The caller's last active health check failed.
    pub health_check_failed: bool,
    /// `endpoint.hostname`.
    pub hostname: *const c_char,
    /// Istio metadata: the transport socket match's `tlsMode` ("istio": the
    /// endpoint takes Istio mutual TLS; "" or "disabled": plain text).
    pub tls_mode: *const c_char,
    /// Istio metadata: the endpoint's `network`.
    pub network: *const c_char,
    /// Istio metadata: the `service_account` to verify (SPIFFE identity).
    pub service_account: *const c_char,
}

/// A copy of a cluster's endpoints (opaque; free with `pymesh_lb_endpoint_list_free`).
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct pymesh_lb_endpoint_list {
    items: Vec<pymesh_lb_endpoint_info>,
    /// What the items' string pointers point into (a `CString`'s bytes do
    /// not move when this vector grows).
    _strings: Vec<CString>,
}

/// Interned C copies of the list's strings.
#[derive(Default)]
struct Strings {
    owned: Vec<CString>,
    index: HashMap<String, *const c_char>,
}

impl Strings {
    fn get(&mut self, s: &str) -> *const c_char {
        if let Some(&p) = self.index.get(s) {
            return p;
        }
        let cut = s.split('\0').next().unwrap_or_default();
        let c = CString::new(cut).unwrap_or_default();
        let p = c.as_ptr();
        self.owned.push(c);
        self.index.insert(s.to_owned(), p);
        p
    }
}

fn health_c(h: Health) -> pymesh_lb_health {
    match h {
        Health::Healthy => pymesh_lb_health::PYMESH_LB_HEALTHY,
        Health::Degraded => pymesh_lb_health::PYMESH_LB_DEGRADED,
        Health::Unhealthy => pymesh_lb_health::PYMESH_LB_UNHEALTHY,
    }
}

fn status_c(s: HealthStatus) -> pymesh_lb_health_status {
    use pymesh_lb_health_status::*;
    match s {
        HealthStatus::Unknown => PYMESH_LB_STATUS_UNKNOWN,
        HealthStatus::Healthy => PYMESH_LB_STATUS_HEALTHY,
        HealthStatus::Unhealthy => PYMESH_LB_STATUS_UNHEALTHY,
        HealthStatus::Draining => PYMESH_LB_STATUS_DRAINING,
        HealthStatus::Timeout => PYMESH_LB_STATUS_TIMEOUT,
        HealthStatus::Degraded => PYMESH_LB_STATUS_DEGRADED,
    }
}

/// Copies the endpoints of `cluster`, in the order of its load assignment,
/// into a new list `*out` (NULL on error). An unknown cluster is
/// `PYMESH_ERR_INVALID_ARGUMENT`.
///
/// # Safety
///
/// `table` is a live table; `cluster` a NUL-terminated string; `out` valid
/// for writing a pointer; `error_message` as usual.
#[no_mangle]
pub unsafe extern "C" fn pymesh_lb_endpoints(
    table: *const pymesh_lb_table,
    cluster_name: *const c_char,
    out: *mut *mut pymesh_lb_endpoint_list,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            let out = args::out_handle(out, "out")?;
            let c = cluster_of(table, cluster_name)?;
            let snap = c.snapshot();
            let spec = c.spec();
            let mut strings = Strings::default();
            let items = snap
                .endpoints()
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let s = c.state(i);
                    let g = &spec.groups[e.group as usize];
                    pymesh_lb_endpoint_info {
                        address: ip_to_c(e.address.ip()),
                        port: e.address.port(),
                        text: address_text(e.address),
                        weight: e.weight,
                        priority: e.priority,
                        health: health_c(snap.health(i)),
                        health_status: status_c(e.health_status),
                        region: strings.get(&g.locality.region),
                        zone: strings.get(&g.locality.zone),
                        sub_zone: strings.get(&g.locality.sub_zone),
                        locality_weight: g.weight,
                        active_requests: s.active_requests(),
                        ejected: s.is_ejected(),
                        ejections: s.ejection().total,
                        health_check_failed: s.health_check_failed(),
                        hostname: strings.get(&e.hostname),
                        tls_mode: strings.get(&e.meta.tls_mode),
                        network: strings.get(&e.meta.network),
                        service_account: strings.get(&e.meta.service_account),
                    }
                })
                .collect();
            let list = pymesh_lb_endpoint_list { items, _strings: strings.owned };
            out.write(Box::into_raw(Box::new(list)));
            Ok(pymesh_status::PYMESH_OK)
        })
    }
}

/// The number of endpoints in a list (0 for NULL).
///
/// # Safety
///
/// `list` is NULL or a live list.
#[no_mangle]
pub unsafe extern "C" fn pymesh_lb_endpoint_list_len(list: *const pymesh_lb_endpoint_list) -> usize {
    // SAFETY: NULL or live by the contract.
    guard(0, || unsafe { list.as_ref() }.map_or(0, |l| l.items.len()))
}

/// Endpoint `index` of a list, or NULL when `list` is NULL or `index` is
/// out of range. The pointer (and its strings) are valid until the list is freed.
///
/// # Safety
///
/// `list` is NULL or a live list.
#[no_mangle]
pub unsafe extern "C" fn pymesh_lb_endpoint_list_get(
    list: *const pymesh_lb_endpoint_list,
    index: usize,
) -> *const pymesh_lb_endpoint_info {
    guard(ptr::null(), || {
        // SAFETY: NULL or live by the contract.
        unsafe { list.as_ref() }.and_then(|l| l.items.get(index)).map_or(ptr::null(), |e| e as *const _)
    })
}

/// Frees an endpoint list; NULL is ignored.
///
/// # Safety
///
/// `list` is NULL or from `pymesh_lb_endpoints`, not freed yet.
#[no_mangle]
pub unsafe extern "C" fn pymesh_lb_endpoint_list_free(list: *mut pymesh_lb_endpoint_list) {
    guard((), || {
        // SAFETY: the function's contract is free_handle's.
        unsafe { args::free_handle(list) }
    })
}

#[cfg(test)]
mod tests {
    use super::Strings;
    use std::ffi::CStr;

    #[test]
    fn strings_are_interned_and_cut_at_an_embedded_nul() {
        let mut s = Strings::default();
        let a = s.get("zone-a");
        assert_eq!(a, s.get("zone-a"), "one copy per distinct string");
        let cut = s.get("ab\0cd");
        // SAFETY: pointers into `s.owned`, alive while `s` is.
        unsafe {
            assert_eq!(CStr::from_ptr(a).to_str(), Ok("zone-a"));
            assert_eq!(CStr::from_ptr(cut).to_str(), Ok("ab"));
            assert_eq!(CStr::from_ptr(s.get("")).to_str(), Ok(""));
        }
        assert_eq!(s.owned.len(), 3);
    }
}
