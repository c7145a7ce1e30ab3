//! The lbtable through the C ABI: a cluster table (load Envoy clusters and
//! EDS assignments, pick, report outcomes, advance time, inspect priority
//! loads; Istio locality failover) and a redirection table (classify a
//! destination). Endpoint inspection is in `lb_inspect`. Same conventions
//! as the name table: opaque handles with NULL-safe frees, a
//! `pymesh_status` and an optional `char **error_message`, every body
//! under the panic boundary, and picks and classifications that write into
//! caller memory without allocating.
//!
//! The argument checks every per-cluster call starts with (table, cluster
//! name, endpoint, required and optional out-parameters) are the helpers
//! below and in `args`, so each function states only what is its own.

use std::cell::RefCell;
use std::ffi::c_char;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ptr;
use std::sync::{Arc, Mutex};

use pymesh_core::lb::{self as core, Locality, LocalityFailover, Outcome, Rng, Verdict};

use crate::answer::{pymesh_ip, PYMESH_IPV4, PYMESH_IPV6};
use crate::args;
use crate::error::{boundary, guard, pymesh_status, FfiError};

/// Size of `pymesh_lb_endpoint.text`: the longest `[IPv6]:port` plus the NUL.
pub const PYMESH_LB_ADDR_LEN: usize = 64;

/// A cluster table (opaque): Envoy clusters, their endpoints' live state,
/// and the snapshots picks read. Picks from several threads at once are
/// safe; so are loads, reports and ticks, which swap snapshots atomically.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct pymesh_lb_table {
    inner: core::LbTable,
    /// The pick random source of a seeded table (reproducible); unseeded
    /// tables use a per-thread generator and take no lock.
    seeded: Option<Mutex<Rng>>,
}

thread_local! {
    static THREAD_RNG: RefCell<Rng> = RefCell::new(Rng::from_entropy());
}

impl pymesh_lb_table {
    fn with_rng<T>(&self, f: impl FnOnce(&mut Rng) -> T) -> T {
        match &self.seeded {
            Some(m) => f(&mut m.lock().unwrap_or_else(|e| e.into_inner())),
            None => THREAD_RNG.with(|r| f(&mut r.borrow_mut())),
        }
    }
}

/// The endpoint a pick chose.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy)]
pub struct pymesh_lb_endpoint {
    pub address: pymesh_ip,
    pub port: u16,
    /// The endpoint's priority (after Istio locality failover, if configured).
    pub priority: u32,
    /// Its `load_balancing_weight`.
    pub weight: u32,
    /// `address:port` (`[v6]:port`), NUL-terminated.
    pub text: [c_char; PYMESH_LB_ADDR_LEN],
}

/// What happened to a request, for `pymesh_lb_report`.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pymesh_lb_outcome {
    /// An HTTP response; its status is the `http_status` argument (5xx are
    /// errors; 502-504 also gateway errors).
    PYMESH_LB_HTTP = 0,
    /// The connection could not be established.
    PYMESH_LB_CONNECT_FAILURE = 1,
    /// The request timed out.
    PYMESH_LB_TIMEOUT = 2,
    /// The connection was established.
    PYMESH_LB_CONNECT_SUCCESS = 3,
}

/// A redirection verdict.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pymesh_redirect_verdict {
    /// A service VIP:port: the cluster's name was written.
    PYMESH_REDIRECT_CLUSTER = 0,
    /// Captured but no service: Istio's PassthroughCluster.
    PYMESH_REDIRECT_PASSTHROUGH = 1,
    /// Not captured (excluded port or range, loopback, not included).
    PYMESH_REDIRECT_BYPASS = 2,
}

/// A redirection table (opaque, immutable; safe to share between threads).
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct pymesh_redirect_table {
    inner: core::RedirectTable,
}

fn ip_of(p: &pymesh_ip, what: &str) -> Result<IpAddr, FfiError> {
    match p.family {
        PYMESH_IPV4 => Ok(IpAddr::V4(Ipv4Addr::new(p.bytes[0], p.bytes[1], p.bytes[2], p.bytes[3]))),
        PYMESH_IPV6 => Ok(IpAddr::V6(Ipv6Addr::from(p.bytes))),
        f => Err(FfiError::invalid_argument(format!("{what}->family is {f}, not PYMESH_IPV4 or PYMESH_IPV6"))),
    }
}

pub(crate) fn ip_to_c(ip: IpAddr) -> pymesh_ip {
    match ip {
        IpAddr::V4(a) => {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&a.octets());
            pymesh_ip { family: PYMESH_IPV4, bytes }
        }
        IpAddr::V6(a) => pymesh_ip { family: PYMESH_IPV6, bytes: a.octets() },
    }
}

pub(crate) fn write_text(buf: &mut [c_char], s: &str) {
    let n = s.len().min(buf.len() - 1);
    for (d, b) in buf.iter_mut().zip(s.as_bytes()[..n].iter()) {
        *d = *b as c_char;
    }
    buf[n] = 0;
}

/// The proxy's own locality and Istio's failover rules, for Istio locality
/// failover (`pymesh_lb_table_new_failover`; Python's `LbTable(locality=,
/// failover=)`): clusters with outlier detection rank their endpoints into
/// priorities by closeness (pilot's `applyLocalityFailover`): same region,
/// zone and sub-zone first, then same zone, same region, other regions,
/// and regions other than a failover rule's target last.
///
/// Every pointer is borrowed for the duration of the call only.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy)]
pub struct pymesh_lb_failover {
    /// The proxy's region, NUL-terminated UTF-8; NULL means "".
    pub region: *const c_char,
    /// The proxy's zone; NULL means "".
    pub zone: *const c_char,
    /// The proxy's sub-zone; NULL means "".
    pub sub_zone: *const c_char,
    /// Istio's `failover` rules: traffic from region `failover_from[i]`
    /// fails over to region `failover_to[i]` before any other region.
    /// `failover_len` strings each, none NULL; NULL when `failover_len` is 0.
    pub failover_from: *const *const c_char,
    /// The target regions, as above.
    pub failover_to: *const *const c_char,
    /// Number of rules.
    pub failover_len: usize,
}

/// Converts a C failover configuration; NULL means none.
///
/// # Safety
///
/// `f` is NULL or points to a `pymesh_lb_failover` whose pointers obey the
/// rules documented on its fields.
unsafe fn failover_of(f: *const pymesh_lb_failover) -> Result<Option<LocalityFailover>, FfiError> {
    // SAFETY: NULL or valid by the contract.
    let Some(f) = (unsafe { f.as_ref() }) else { return Ok(None) };
    // SAFETY: the field contracts of `pymesh_lb_failover` (NULL or
    // NUL-terminated strings), promised by the caller; `s` is only applied
    // to its string fields.
    let s = |p, what| unsafe { args::opt_c_str(p, what) }.map(|s| s.unwrap_or_default().to_owned());
    let local = Locality {
        region: s(f.region, "failover->region")?,
        zone: s(f.zone, "failover->zone")?,
        sub_zone: s(f.sub_zone, "failover->sub_zone")?,
    };
    // SAFETY: as above: `failover_len` strings each, or NULL with length 0.
    let from = unsafe { args::c_str_array(f.failover_from, f.failover_len, "failover->failover_from") }?;
    // SAFETY: as above.
    let to = unsafe { args::c_str_array(f.failover_to, f.failover_len, "failover->failover_to") }?;
    Ok(Some(LocalityFailover { local, failover: from.into_iter().zip(to).collect() }))
}

/// Creates an empty cluster table. With `seeded`, `seed` fixes every random
/// choice (round-robin starts, picks, outlier enforcement) for reproducible
/// runs; otherwise they are random.
///
/// # Safety
///
/// `out` is valid for writing a pointer; `error_message` is NULL or valid for writing one.
#[no_mangle]
pub unsafe extern "C" fn pymesh_lb_table_new(
    seed: u64,
    seeded: bool,
    out: *mut *mut pymesh_lb_table,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts (no failover configuration).
    unsafe { pymesh_lb_table_new_failover(seed, seeded, ptr::null(), out, error_message) }
}

/// Like `pymesh_lb_table_new`, for a proxy at a locality: with `failover`
/// (NULL for none), clusters with outlier detection get Istio locality
/// failover (see `pymesh_lb_failover`); Istio applies it only there, since
/// without outlier detection a failed locality would never shed its load.
///
/// # Safety
///
/// As for `pymesh_lb_table_new`; `failover` is NULL or a valid `pymesh_lb_failover`.
#[no_mangle]
pub unsafe extern "C" fn pymesh_lb_table_new_failover(
    seed: u64,
    seeded: bool,
    failover: *const pymesh_lb_failover,
    out: *mut *mut pymesh_lb_table,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            let out = args::out_handle(out, "out")?;
            let t = pymesh_lb_table {
                inner: core::LbTable::new(seeded.then_some(seed), failover_of(failover)?),
                seeded: seeded.then(|| Mutex::new(Rng::new(seed))),
            };
            out.write(Box::into_raw(Box::new(t)));
            Ok(pymesh_status::PYMESH_OK)
        })
    }
}

/// Frees a cluster table; NULL is ignored.
///
/// # Safety
///
/// `table` is NULL or a table from `pymesh_lb_table_new` not freed yet.
#[no_mangle]
pub unsafe extern "C" fn pymesh_lb_table_free(table: *mut pymesh_lb_table) {
    guard((), || {
        // SAFETY: the function's contract is free_handle's.
        unsafe { args::free_handle(table) }
    })
}

/// What a load reads: a table and `text_len` bytes of UTF-8 text.
///
/// # Safety
///
/// `table` is NULL or live; `text` NULL (only with length 0) or readable.
unsafe fn table_text<'a>(
    table: *const pymesh_lb_table,
    text: *const c_char,
    text_len: usize,
) -> Result<(&'a pymesh_lb_table, &'a str), FfiError> {
    // SAFETY: forwarded contracts.
    let t = unsafe { args::handle(table, "table") }?;
    // SAFETY: `text` is NULL (only with length 0) or readable, by the contract.
    Ok((t, unsafe { args::text(text, text_len, "text") }?))
}

/// What a file load reads: a table and a path.
///
/// # Safety
///
/// `table` is NULL or live; `path` NULL or NUL-terminated.
unsafe fn table_path<'a>(
    table: *const pymesh_lb_table,
    path: *const c_char,
) -> Result<(&'a pymesh_lb_table, &'a str), FfiError> {
    // SAFETY: forwarded contracts.
    let t = unsafe { args::handle(table, "table") }?;
    // SAFETY: `path` is NULL or NUL-terminated, by the contract.
    Ok((t, unsafe { args::c_str(path, "path") }?))
}

/// Replaces the table's clusters with the Envoy `Cluster` resources in
/// `text` (proto3 JSON, or YAML when `yaml`): a list of clusters, one
/// cluster, `{"clusters": [...]}` or an Envoy bootstrap. Endpoints that stay
/// keep their live state. On any error (`PYMESH_ERR_INVALID_ENTRY` naming
/// the cluster and field, or `PYMESH_ERR_PARSE`) the table is unchanged.
/// `now_ms` is the current time on the caller's monotonic clock.
///
/// # Safety
///
/// `table` is a live table; `text` is valid for reading `text_len` bytes
/// (NULL only with length 0); `error_message` as usual.
#[no_mangle]
pub unsafe extern "C" fn pymesh_lb_table_load(
    table: *mut pymesh_lb_table,
    text: *const c_char,
    text_len: usize,
    yaml: bool,
    now_ms: u64,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            let (t, text) = table_text(table, text, text_len)?;
            t.inner.set_clusters(core::parse_clusters(text, yaml, "<text>")?, now_ms);
            Ok(pymesh_status::PYMESH_OK)
        })
    }
}

/// Like `pymesh_lb_table_load`, from a file (YAML for .yaml/.yml, JSON otherwise).
///
/// # Safety
///
/// `table` is a live table; `path` a NUL-terminated string; `error_message` as usual.
#[no_mangle]
pub unsafe extern "C" fn pymesh_lb_table_load_file(
    table: *mut pymesh_lb_table,
    path: *const c_char,
    now_ms: u64,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            let (t, path) = table_path(table, path)?;
            t.inner.set_clusters(core::read_clusters(path)?, now_ms);
            Ok(pymesh_status::PYMESH_OK)
        })
    }
}

/// EDS: replaces the endpoints of clusters the table already has with the
/// Envoy `ClusterLoadAssignment`s in `text` (proto3 JSON, or YAML when
/// `yaml`): a list of them, one, `{"assignments": [...]}` or an xDS
/// response. Each cluster keeps its settings; endpoints that stay keep
/// their live state; other clusters are untouched. An assignment for a
/// cluster the table does not have, or any invalid field, is
/// `PYMESH_ERR_INVALID_ENTRY` naming the cluster and field (or
/// `PYMESH_ERR_PARSE`), and then nothing changes.
///
/// # Safety
///
/// As for `pymesh_lb_table_load`.
#[no_mangle]
pub unsafe extern "C" fn pymesh_lb_table_load_assignments(
    table: *mut pymesh_lb_table,
    text: *const c_char,
    text_len: usize,
    yaml: bool,
    now_ms: u64,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            let (t, text) = table_text(table, text, text_len)?;
            t.inner.set_assignments(core::parse_assignments(text, yaml, "<text>")?, now_ms)?;
            Ok(pymesh_status::PYMESH_OK)
        })
    }
}

/// Like `pymesh_lb_table_load_assignments`, from a file (YAML for
/// .yaml/.yml, JSON otherwise).
///
/// # Safety
///
/// As for `pymesh_lb_table_load_file`.
#[no_mangle]
pub unsafe extern "C" fn pymesh_lb_table_load_assignments_file(
    table: *mut pymesh_lb_table,
    path: *const c_char,
    now_ms: u64,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            let (t, path) = table_path(table, path)?;
            t.inner.set_assignments(core::read_assignments(path)?, now_ms)?;
            Ok(pymesh_status::PYMESH_OK)
        })
    }
}

/// The number of clusters (0 for NULL).
///
/// # Safety
///
/// `table` is NULL or a live table.
#[no_mangle]
pub unsafe extern "C" fn pymesh_lb_table_len(table: *const pymesh_lb_table) -> usize {
    // SAFETY: NULL or live by the contract.
    guard(0, || unsafe { table.as_ref() }.map_or(0, |t| t.inner.len()))
}

fn unknown_cluster(name: &str) -> FfiError {
    FfiError::invalid_argument(format!("no cluster {name:?}"))
}

/// The table and the cluster name every per-cluster call starts with.
///
/// # Safety
///
/// `table` is NULL or live; `cluster_name` NULL or NUL-terminated.
unsafe fn named<'a>(
    table: *const pymesh_lb_table,
    cluster_name: *const c_char,
) -> Result<(&'a pymesh_lb_table, &'a str), FfiError> {
    // SAFETY: forwarded contracts.
    let t = unsafe { args::handle(table, "table") }?;
    // SAFETY: `cluster_name` is NULL or NUL-terminated, by the contract.
    Ok((t, unsafe { args::c_str(cluster_name, "cluster") }?))
}

/// The cluster `name` of `t`.
fn find(t: &pymesh_lb_table, name: &str) -> Result<Arc<core::LiveCluster>, FfiError> {
    t.inner.cluster(name).ok_or_else(|| unknown_cluster(name))
}

/// The named cluster of the table.
///
/// # Safety
///
/// As for [`named`].
pub(crate) unsafe fn cluster_of(
    table: *const pymesh_lb_table,
    cluster_name: *const c_char,
) -> Result<Arc<core::LiveCluster>, FfiError> {
    // SAFETY: forwarded contracts.
    let (t, name) = unsafe { named(table, cluster_name) }?;
    find(t, name)
}

/// `address:port` (`[v6]:port`) as a C string in place, without allocating.
pub(crate) fn address_text(addr: SocketAddr) -> [c_char; PYMESH_LB_ADDR_LEN] {
    let mut buf = [0u8; PYMESH_LB_ADDR_LEN];
    let mut cur = &mut buf[..];
    let _ = std::io::Write::write_fmt(&mut cur, format_args!("{addr}"));
    let len = PYMESH_LB_ADDR_LEN - cur.len();
    let mut text = [0; PYMESH_LB_ADDR_LEN];
    write_text(&mut text, std::str::from_utf8(&buf[..len]).unwrap_or_default());
    text
}

/// Picks an endpoint of `cluster` into `*out`. `hash_key` (`hash_key_len`
/// bytes; NULL for none) is the request's key for RING_HASH and MAGLEV
/// (hashed with xxHash64 like Envoy); other policies ignore it.
///
/// Returns `PYMESH_OK`, or `PYMESH_NOT_FOUND` (no message) when no endpoint
/// may take the request ("no healthy upstream"). An unknown cluster is
/// `PYMESH_ERR_INVALID_ARGUMENT`. Allocates nothing.
///
/// # Safety
///
/// `table` is a live table; `cluster` a NUL-terminated string; `hash_key`
/// NULL or valid for `hash_key_len` bytes; `out` valid for writing;
/// `error_message` as usual.
#[no_mangle]
pub unsafe extern "C" fn pymesh_lb_pick(
    table: *const pymesh_lb_table,
    cluster_name: *const c_char,
    hash_key: *const u8,
    hash_key_len: usize,
    out: *mut pymesh_lb_endpoint,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            let (t, name) = named(table, cluster_name)?;
            let out = args::out_ptr(out, "out")?;
            let hash = if hash_key.is_null() {
                None
            } else {
                Some(core::hash_key(args::bytes(hash_key, hash_key_len, "hash_key")?))
            };
            // The by-name pick reads the thread's snapshot cache (no
            // reference counting); the endpoint is copied out as it is picked.
            let picked = t.with_rng(|rng| {
                t.inner.pick_with(name, hash, rng, |e| pymesh_lb_endpoint {
                    address: ip_to_c(e.address.ip()),
                    port: e.address.port(),
                    priority: e.priority,
                    weight: e.weight,
                    text: address_text(e.address),
                })
            });
            match picked.map_err(|_| unknown_cluster(name))? {
                Some(ep) => {
                    out.write(ep);
                    Ok(pymesh_status::PYMESH_OK)
                }
                None => Ok(pymesh_status::PYMESH_NOT_FOUND),
            }
        })
    }
}

/// The named cluster and the index of its endpoint `endpoint` ("ip:port").
///
/// # Safety
///
/// As for [`named`]; `endpoint` NULL or NUL-terminated.
unsafe fn endpoint_of(
    table: *const pymesh_lb_table,
    cluster_name: *const c_char,
    endpoint: *const c_char,
) -> Result<(Arc<core::LiveCluster>, usize), FfiError> {
    // SAFETY: forwarded contracts.
    let (t, name) = unsafe { named(table, cluster_name) }?;
    // SAFETY: `endpoint` is NULL or NUL-terminated, by the contract.
    let ep = unsafe { args::c_str(endpoint, "endpoint") }?;
    let addr: SocketAddr =
        ep.parse().map_err(|_| FfiError::invalid_argument(format!("endpoint {ep:?} is not \"ip:port\"")))?;
    let c = find(t, name)?;
    let i = c
        .endpoint_index(&addr)
        .ok_or_else(|| FfiError::invalid_argument(format!("cluster {name:?} has no endpoint {addr}")))?;
    Ok((c, i))
}

/// A request to `endpoint` ("ip:port") of `cluster` started (LEAST_REQUEST
/// counts requests in flight; end it with `pymesh_lb_report(.., finished = true, ..)`).
///
/// # Safety
///
/// `table` live; `cluster`, `endpoint` NUL-terminated; `error_message` as usual.
#[no_mangle]
pub unsafe extern "C" fn pymesh_lb_request_started(
    table: *const pymesh_lb_table,
    cluster_name: *const c_char,
    endpoint: *const c_char,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            let (c, i) = endpoint_of(table, cluster_name, endpoint)?;
            c.state(i).request_started();
            Ok(pymesh_status::PYMESH_OK)
        })
    }
}

/// Reports a request's outcome to outlier detection (and, with `finished`,
/// ends one request in flight). `*health_changed` (if not NULL) is set to
/// whether an endpoint was ejected or returned, i.e. a new snapshot serves.
///
/// # Safety
///
/// As for `pymesh_lb_request_started`; `health_changed` NULL or writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn pymesh_lb_report(
    table: *const pymesh_lb_table,
    cluster_name: *const c_char,
    endpoint: *const c_char,
    outcome: pymesh_lb_outcome,
    http_status: u16,
    finished: bool,
    now_ms: u64,
    health_changed: *mut bool,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            let o = match outcome {
                pymesh_lb_outcome::PYMESH_LB_HTTP if (100..600).contains(&http_status) => Outcome::Http(http_status),
                pymesh_lb_outcome::PYMESH_LB_HTTP => {
                    return Err(FfiError::invalid_argument(format!("http_status {http_status} is not 100-599")))
                }
                pymesh_lb_outcome::PYMESH_LB_CONNECT_FAILURE => Outcome::ConnectFailure,
                pymesh_lb_outcome::PYMESH_LB_TIMEOUT => Outcome::Timeout,
                pymesh_lb_outcome::PYMESH_LB_CONNECT_SUCCESS => Outcome::ConnectSuccess,
            };
            let (c, i) = endpoint_of(table, cluster_name, endpoint)?;
            args::write_opt(health_changed, c.report(i, o, finished, now_ms));
            Ok(pymesh_status::PYMESH_OK)
        })
    }
}

/// The caller's active health check result for an endpoint.
///
/// # Safety
///
/// As for `pymesh_lb_request_started`.
#[no_mangle]
pub unsafe extern "C" fn pymesh_lb_set_health_check(
    table: *const pymesh_lb_table,
    cluster_name: *const c_char,
    endpoint: *const c_char,
    healthy: bool,
    now_ms: u64,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            let (c, i) = endpoint_of(table, cluster_name, endpoint)?;
            c.set_health_check(i, healthy, now_ms);
            Ok(pymesh_status::PYMESH_OK)
        })
    }
}

/// Advances time to `now_ms`: runs due outlier-detection sweeps. Returns
/// how many clusters changed health (0 for NULL).
///
/// # Safety
///
/// `table` is NULL or a live table.
#[no_mangle]
pub unsafe extern "C" fn pymesh_lb_tick(table: *const pymesh_lb_table, now_ms: u64) -> usize {
    // SAFETY: NULL or live by the contract.
    guard(0, || unsafe { table.as_ref() }.map_or(0, |t| t.inner.tick(now_ms)))
}

/// Writes a cluster's priority loads: per priority, the percent of requests
/// for its healthy and degraded hosts and whether it is in panic. `*count`
/// receives the number of priorities; `PYMESH_ERR_BUFFER_TOO_SMALL` when it
/// exceeds `capacity` (nothing written then).
///
/// # Safety
///
/// `table` live; `cluster` NUL-terminated; `healthy`, `degraded`, `panic`
/// valid for `capacity` elements (NULL only with capacity 0); `count` writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn pymesh_lb_priority_load(
    table: *const pymesh_lb_table,
    cluster_name: *const c_char,
    healthy: *mut u32,
    degraded: *mut u32,
    panic: *mut bool,
    capacity: usize,
    count: *mut usize,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            let (t, name) = named(table, cluster_name)?;
            let count = args::out_ptr(count, "count")?;
            let c = find(t, name)?;
            let snap = c.snapshot();
            let l = snap.priority_load();
            let n = l.healthy.len();
            count.write(n);
            if n > capacity {
                return Err(FfiError::buffer_too_small(format!("{n} priorities, capacity {capacity}")));
            }
            if healthy.is_null() || degraded.is_null() || panic.is_null() {
                return Err(FfiError::invalid_argument("healthy, degraded or panic is NULL"));
            }
            for i in 0..n {
                healthy.add(i).write(l.healthy[i]);
                degraded.add(i).write(l.degraded[i]);
                panic.add(i).write(l.panic[i]);
            }
            Ok(pymesh_status::PYMESH_OK)
        })
    }
}

/// Builds a redirection table from JSON (or YAML) text:
/// `{"services": [{"address", "port", "cluster"}], "include_ip_ranges",
/// "exclude_ip_ranges", "exclude_ports"}`.
///
/// # Safety
///
/// `text` valid for `text_len` bytes; `out` writable; `error_message` as usual.
#[no_mangle]
pub unsafe extern "C" fn pymesh_redirect_table_from_json(
    text: *const c_char,
    text_len: usize,
    yaml: bool,
    out: *mut *mut pymesh_redirect_table,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            let out = args::out_handle(out, "out")?;
            let inner = core::RedirectTable::parse(args::text(text, text_len, "text")?, yaml)?;
            out.write(Box::into_raw(Box::new(pymesh_redirect_table { inner })));
            Ok(pymesh_status::PYMESH_OK)
        })
    }
}

/// Frees a redirection table; NULL is ignored.
///
/// # Safety
///
/// `table` is NULL or from `pymesh_redirect_table_from_json`, not freed yet.
#[no_mangle]
pub unsafe extern "C" fn pymesh_redirect_table_free(table: *mut pymesh_redirect_table) {
    guard((), || {
        // SAFETY: the function's contract is free_handle's.
        unsafe { args::free_handle(table) }
    })
}

/// Classifies an original destination. On `PYMESH_REDIRECT_CLUSTER` the
/// cluster's name is written to `cluster_buf` (NUL-terminated;
/// `PYMESH_ERR_BUFFER_TOO_SMALL` if it does not fit in `cluster_cap`,
/// `cluster_buf` may be NULL when `cluster_cap` is 0 and the name is not
/// wanted). Allocates nothing.
///
/// # Safety
///
/// `table` live; `address` readable; `verdict` writable; `cluster_buf`
/// valid for `cluster_cap` bytes; `error_message` as usual.
#[no_mangle]
pub unsafe extern "C" fn pymesh_redirect_classify(
    table: *const pymesh_redirect_table,
    address: *const pymesh_ip,
    port: u16,
    verdict: *mut pymesh_redirect_verdict,
    cluster_buf: *mut c_char,
    cluster_cap: usize,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            let t = args::handle(table, "table")?;
            let a = args::handle(address, "address")?;
            let verdict = args::out_ptr(verdict, "verdict")?;
            let ip = ip_of(a, "address")?;
            let v = t.inner.classify(ip, port);
            let cv = match v {
                Verdict::Cluster(_) => pymesh_redirect_verdict::PYMESH_REDIRECT_CLUSTER,
                Verdict::Passthrough => pymesh_redirect_verdict::PYMESH_REDIRECT_PASSTHROUGH,
                Verdict::Bypass => pymesh_redirect_verdict::PYMESH_REDIRECT_BYPASS,
            };
            verdict.write(cv);
            if let (Some(name), true) = (t.inner.cluster_name(v), cluster_cap > 0) {
                if cluster_buf.is_null() {
                    return Err(FfiError::invalid_argument("cluster_buf is NULL"));
                }
                if name.len() + 1 > cluster_cap {
                    return Err(FfiError::buffer_too_small(format!(
                        "cluster name needs {} bytes, cluster_cap is {cluster_cap}",
                        name.len() + 1
                    )));
                }
                let buf = std::slice::from_raw_parts_mut(cluster_buf, cluster_cap);
                write_text(buf, name);
            }
            Ok(pymesh_status::PYMESH_OK)
        })
    }
}
