//! The outbound proxy for Python: `OutboundProxy` (start, stop, swap tables,
//! stats). It serves from the very `LbTable` and `RedirectTable` objects the
//! caller holds (both are frozen, so the native threads read them without
//! the GIL), so outcomes the proxy reports are visible through the caller's
//! `LbTable`, and clusters loaded into it serve at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use pymesh_core::lb as core_lb;
use pymesh_core::relay::{self as core, LbSource, RedirectSource, RelayConfig, Routes};

use crate::errors::{tls_error, to_py, ConfigError};
use crate::lb::{LbTable, RedirectTable};

/// A Python `LbTable` as the core's table source.
#[derive(Debug)]
struct PyLb(Py<LbTable>);

impl LbSource for PyLb {
    fn lb(&self) -> &core_lb::LbTable {
        &self.0.get().inner
    }
}

#[derive(Debug)]
struct PyRedirect(Py<RedirectTable>);

impl RedirectSource for PyRedirect {
    fn redirect(&self) -> &core_lb::RedirectTable {
        &self.0.get().inner
    }
}

fn seconds(field: &str, v: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| ConfigError::new_err(format!("{field}: {v} is not a positive duration in seconds")))
}

/// `mode` (`outbound`, `inbound`, `sni`, `forward`; `inbound=True` is
/// `mode="inbound"`) and, for `forward`, `forward_to` (`ADDR:PORT`).
fn relay_mode(mode: Option<&str>, inbound: bool, forward_to: Option<&str>) -> PyResult<core::Mode> {
    let mode = match (mode, inbound) {
        (None, false) => "outbound",
        (None, true) => "inbound",
        (Some(m), false) => m,
        (Some(m), true) if m == "inbound" => m,
        (Some(m), true) => return Err(ConfigError::new_err(format!("mode: {m:?} contradicts inbound=True"))),
    };
    if mode != "forward" && forward_to.is_some() {
        return Err(ConfigError::new_err(format!("forward_to: only for mode \"forward\", not {mode:?}")));
    }
    Ok(match mode {
        "outbound" => core::Mode::Outbound,
        "inbound" => core::Mode::Inbound,
        "sni" => core::Mode::Sni,
        "forward" => {
            let to = forward_to.ok_or_else(|| ConfigError::new_err("forward_to: mode \"forward\" needs ADDR:PORT"))?;
            core::Mode::Forward(to.parse().map_err(|_| {
                ConfigError::new_err(format!("forward_to: {to:?} is not an address ADDR:PORT (IPv6 as [ADDR]:PORT)"))
            })?)
        }
        other => {
            return Err(ConfigError::new_err(format!(
                "mode: {other:?} is not one of \"outbound\", \"inbound\", \"sni\", \"forward\""
            )))
        }
    })
}

/// The outbound proxy on 15001 (see `pymesh.relay`).
#[pyclass(frozen, module = "pymesh._native")]
#[derive(Debug)]
pub struct OutboundProxy {
    inner: core::Relay,
    tables: std::sync::Mutex<(Py<RedirectTable>, Py<LbTable>)>,
    logical_dns: std::sync::Mutex<Arc<HashMap<String, (String, u16)>>>,
}

#[pymethods]
impl OutboundProxy {
    #[new]
    #[pyo3(signature = (
        redirect,
        lb,
        *,
        listen = vec!["127.0.0.1:15001".to_owned(), "[::1]:15001".to_owned()],
        connect_timeout = 10.0,
        connect_attempts = 3,
        max_connections = None,
        mark = None,
        pipe_size = 1 << 18,
        seed = None,
        logical_dns = None,
        inbound = false,
        idle_timeout = Some(3600.0),
        max_connections_per_source = None,
        hello_timeout = 3.0,
        keepalive = Some(60.0),
        workers = 0,
        auto_mtls = true,
        mode = None,
        forward_to = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        redirect: Py<RedirectTable>,
        lb: Py<LbTable>,
        listen: Vec<String>,
        connect_timeout: f64,
        connect_attempts: u32,
        max_connections: Option<usize>,
        mark: Option<u32>,
        pipe_size: usize,
        seed: Option<u64>,
        logical_dns: Option<HashMap<String, (String, u16)>>,
        inbound: bool,
        idle_timeout: Option<f64>,
        max_connections_per_source: Option<usize>,
        hello_timeout: f64,
        keepalive: Option<f64>,
        workers: usize,
        auto_mtls: bool,
        mode: Option<String>,
        forward_to: Option<String>,
    ) -> PyResult<OutboundProxy> {
        let mode = relay_mode(mode.as_deref(), inbound, forward_to.as_deref())?;
        let listen = listen
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse().map_err(|_| {
                    ConfigError::new_err(format!(
                        "listen[{i}]: {s:?} is not an address ADDR:PORT (IPv6 as [ADDR]:PORT)"
                    ))
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let cfg = RelayConfig {
            listen,
            connect_timeout: seconds("connect_timeout", connect_timeout)?,
            connect_attempts,
            max_connections,
            max_connections_per_source,
            hello_timeout: seconds("hello_timeout", hello_timeout)?,
            keepalive: keepalive.map(|t| seconds("keepalive", t)).transpose()?,
            workers,
            auto_mtls,
            mark,
            pipe_size,
            seed,
            idle_timeout: idle_timeout.map(|t| seconds("idle_timeout", t)).transpose()?,
            mode,
        };
        let logical = Arc::new(logical_dns.unwrap_or_default());
        let routes = Routes {
            redirect: Arc::new(PyRedirect(redirect.clone_ref(py))),
            lb: Arc::new(PyLb(lb.clone_ref(py))),
            logical_dns: logical.clone(),
        };
        Ok(OutboundProxy {
            inner: core::Relay::new(cfg, routes).map_err(to_py)?,
            tables: std::sync::Mutex::new((redirect, lb)),
            logical_dns: std::sync::Mutex::new(logical),
        })
    }

    /// Binds the listeners and starts serving; returns the bound addresses.
    fn start(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let a = py.detach(|| self.inner.start()).map_err(to_py)?;
        Ok(a.iter().map(ToString::to_string).collect())
    }

    /// Stops accepting, resets open connections and waits up to `grace`
    /// seconds for them to end (idempotent).
    #[pyo3(signature = (grace = 1.0))]
    fn stop(&self, py: Python<'_>, grace: f64) -> PyResult<()> {
        let g = Duration::try_from_secs_f64(grace)
            .map_err(|_| ConfigError::new_err(format!("grace: {grace} is not a duration in seconds")))?;
        py.detach(|| self.inner.stop(g));
        Ok(())
    }

    /// Serves new connections from other tables (any may be left None to
    /// keep the current one). `logical_dns` maps LOGICAL_DNS cluster names
    /// to (host, port), resolved per connection. Connections already open
    /// keep theirs.
    #[pyo3(signature = (*, redirect = None, lb = None, logical_dns = None))]
    fn swap_tables(
        &self,
        py: Python<'_>,
        redirect: Option<Py<RedirectTable>>,
        lb: Option<Py<LbTable>>,
        logical_dns: Option<HashMap<String, (String, u16)>>,
    ) {
        let mut t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let mut l = self.logical_dns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = redirect {
            t.0 = r;
        }
        if let Some(x) = lb {
            t.1 = x;
        }
        if let Some(d) = logical_dns {
            *l = Arc::new(d);
        }
        let routes = Routes {
            redirect: Arc::new(PyRedirect(t.0.clone_ref(py))),
            lb: Arc::new(PyLb(t.1.clone_ref(py))),
            logical_dns: l.clone(),
        };
        self.inner.swap_routes(routes);
    }

    /// The tables serving now: (redirect, lb).
    #[getter]
    fn tables(&self, py: Python<'_>) -> (Py<RedirectTable>, Py<LbTable>) {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        (t.0.clone_ref(py), t.1.clone_ref(py))
    }

    /// Counters (connections by route, connect attempts and failures,
    /// bytes each way, resets).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        for (k, v) in [
            ("accepted", s.accepted),
            ("active", s.active),
            ("cluster", s.cluster),
            ("passthrough", s.passthrough),
            ("bypass", s.bypass),
            ("connect_attempts", s.connect_attempts),
            ("connect_failures", s.connect_failures),
            ("connect_timeouts", s.connect_timeouts),
            ("retries", s.retries),
            ("no_healthy_upstream", s.no_healthy_upstream),
            ("unknown_cluster", s.unknown_cluster),
            ("no_original_dst", s.no_original_dst),
            ("upstream_failed", s.upstream_failed),
            ("overflow", s.overflow),
            ("source_overflow", s.source_overflow),
            ("evicted", s.evicted),
            ("hello_timeouts", s.hello_timeouts),
            ("bytes_sent", s.bytes_sent),
            ("bytes_received", s.bytes_received),
            ("resets", s.resets),
            ("idle_timeouts", s.idle_timeouts),
            ("not_tls", s.not_tls),
            ("sni_refused", s.sni_refused),
            ("metric_series_dropped", s.metric_series_dropped),
        ] {
            d.set_item(k, v)?;
        }
        let (written, dropped, failed) = self.inner.access_log().map(|l| l.stats()).unwrap_or_default();
        d.set_item("access_log_lines", written)?;
        d.set_item("access_log_dropped", dropped)?;
        d.set_item("access_log_failed", failed)?;
        Ok(d)
    }

    /// HTTP routes for the outbound: `(listener port, RouteConfiguration
    /// as proto3 JSON)` pairs, as `google.protobuf.json_format.MessageToJson`
    /// writes Envoy's `envoy.config.route.v3.RouteConfiguration`; `tcp`:
    /// `"ip:port"` destinations that stay TCP on those ports (istiod's
    /// `<VIP>_<port>` TCP listeners). Connections to a port with routes
    /// whose first bytes are HTTP are then routed per request. Compiled
    /// here (without the GIL) and swapped atomically; anything invalid
    /// raises `ConfigError` (a `PymeshError`) naming the route configuration,
    /// virtual host, route and field, and the routes serving stay.
    #[pyo3(signature = (routes, tcp = Vec::new()))]
    fn set_http_routes(&self, py: Python<'_>, routes: Vec<(u16, String)>, tcp: Vec<String>) -> PyResult<()> {
        let mut dests = Vec::with_capacity(tcp.len());
        for t in &tcp {
            dests.push(
                t.parse::<std::net::SocketAddr>()
                    .map_err(|_| ConfigError::new_err(format!("tcp: {t:?} is not an ip:port")))?,
            );
        }
        let built = build_http_routes(py, &routes, &dests)?;
        self.inner.set_http_routes(built);
        Ok(())
    }

    /// The inbound's upstream HTTP protocol per local app port, from
    /// istiod's inbound clusters: `(port, cluster as proto3 JSON)` pairs,
    /// each cluster's `HttpProtocolOptions` read as the outbound reads a
    /// cluster's (HTTP/2, HTTP/1.1 when nothing is said, or the client's).
    /// Replaces the previous set; a port not listed gets the client's
    /// protocol. A cluster that is not JSON raises `ConfigError` and
    /// changes nothing.
    fn set_inbound_clusters(&self, clusters: Vec<(u16, String)>) -> PyResult<()> {
        let mut protocols = HashMap::with_capacity(clusters.len());
        for (port, text) in &clusters {
            let v: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| ConfigError::new_err(format!("inbound cluster for port {port}: not JSON: {e}")))?;
            protocols.insert(*port, core_lb::xds::http_protocol_of(&v));
        }
        self.inner.set_inbound_protocols(protocols);
        Ok(())
    }

    /// The ports with HTTP routes.
    fn http_ports(&self) -> Vec<u16> {
        self.inner.http_routes().ports()
    }

    /// The HTTP path's counters (`http_requests`, `http_retries`,
    /// `http_timeouts`, `http_fault_aborts`, ...) and pooled connections.
    fn http_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in self.inner.http_stats() {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    /// Envoy's access log, a line per connection as it ends, appended to
    /// `path` in Istio's `TEXT` or `JSON` format (meshConfig `accessLogFile`,
    /// `accessLogEncoding`); None stops it (queued lines are written first).
    #[pyo3(signature = (path, encoding = "TEXT"))]
    fn set_access_log(&self, py: Python<'_>, path: Option<&str>, encoding: &str) -> PyResult<()> {
        let enc = match encoding.to_ascii_uppercase().as_str() {
            "TEXT" => core::accesslog::Encoding::Text,
            "JSON" => core::accesslog::Encoding::Json,
            other => return Err(ConfigError::new_err(format!("encoding: {other:?} is not TEXT or JSON"))),
        };
        let log = match path {
            Some(p) => Some(Arc::new(core::accesslog::AccessLog::open(p, enc).map_err(to_py)?)),
            None => None,
        };
        if let Some(old) = self.inner.set_access_log(log) {
            py.detach(|| old.close());
        }
        Ok(())
    }

    /// Sets the workload identity for mTLS (PEM: certificate chain leaf
    /// first, private key, mesh roots); the trust domain defaults to the
    /// one in the certificate's SPIFFE URI. New connections use it, open
    /// ones keep their sessions. Invalid input raises `TlsConfigError` (a
    /// `ConfigError` and a `ValueError`) naming what is wrong, and the
    /// previous identity stays in use.
    #[pyo3(signature = (cert_chain_pem, key_pem, roots_pem, trust_domain = None))]
    fn set_identity(
        &self,
        py: Python<'_>,
        cert_chain_pem: &str,
        key_pem: &str,
        roots_pem: &str,
        trust_domain: Option<&str>,
    ) -> PyResult<()> {
        py.detach(|| self.inner.tls().set_identity(cert_chain_pem, key_pem, roots_pem, trust_domain))
            .map_err(|e| tls_error(py, e.to_string()))
    }

    /// Drops the identity for new connections: those to `tlsMode: istio`
    /// endpoints wait (up to the connect timeout) for the next one or are
    /// refused, never sent in plaintext; inbound STRICT refuses everything,
    /// PERMISSIVE passes plaintext through.
    fn clear_identity(&self) {
        self.inner.tls().clear_identity();
    }

    /// The SPIFFE URI of the identity in use, or None.
    #[getter]
    fn identity(&self) -> Option<String> {
        self.inner.tls().identity().map(|i| i.uri().to_owned())
    }

    /// Istio PeerAuthentication mode of the inbound listener: "STRICT",
    /// "PERMISSIVE" (default) or "DISABLE"; applies to new connections.
    fn set_peer_authentication(&self, py: Python<'_>, mode: &str) -> PyResult<()> {
        let m = mode.parse::<core::PeerAuthentication>().map_err(|e| tls_error(py, e.to_string()))?;
        self.inner.tls().set_peer_authentication(m);
        Ok(())
    }

    #[getter]
    fn peer_authentication(&self) -> &'static str {
        self.inner.tls().peer_authentication().as_str()
    }

    /// Whether mTLS connections this proxy originates resume TLS sessions
    /// (default True, as Envoy's upstream TLS does; False: a full handshake
    /// every time). The identity is checked after every handshake either way.
    fn set_session_resumption(&self, enabled: bool) {
        self.inner.tls().set_session_resumption(enabled);
    }

    /// Restricts the client identities the inbound accepts to these SPIFFE
    /// URIs; None: any identity of the trust domain.
    #[pyo3(signature = (identities))]
    fn set_allowed_identities(&self, identities: Option<Vec<String>>) {
        self.inner.tls().set_allowed_identities(identities);
    }

    /// TLS counters: handshakes, handshake_failures, peer_rejected,
    /// plaintext_passthrough, plaintext_refused, identity_updates, resumed,
    /// identity_waits, no_identity.
    fn tls_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.tls().stats();
        let d = PyDict::new(py);
        for (k, v) in [
            ("handshakes", s.handshakes),
            ("handshake_failures", s.handshake_failures),
            ("peer_rejected", s.peer_rejected),
            ("plaintext_passthrough", s.plaintext_passthrough),
            ("plaintext_refused", s.plaintext_refused),
            ("identity_updates", s.identity_updates),
            ("resumed", s.resumed),
            ("identity_waits", s.identity_waits),
            ("no_identity", s.no_identity),
        ] {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    /// Describes this proxy's own workload for Istio's TCP metrics (the
    /// `source_*` labels of the outbound, the `destination_*` ones of the
    /// inbound): a dict of any of the keys workload, namespace, app,
    /// version, canonical_service, canonical_revision, cluster (string
    /// values; missing or empty ones are reported as "unknown", the
    /// canonical revision as "latest"). Applies to new connections. The
    /// principals come from the mTLS handshakes, not from here.
    fn set_local_workload(&self, workload: &Bound<'_, PyDict>) -> PyResult<()> {
        self.inner.tcp_metrics().set_local(local_workload_from(workload)?);
        Ok(())
    }

    /// Istio's TCP metrics on (default) or off for connections from now on
    /// (off: no series, no label sets built; Istio's Telemetry API
    /// `metrics` with `disabled: true`).
    fn set_tcp_metrics_enabled(&self, on: bool) {
        self.inner.tcp_metrics().set_enabled(on);
    }

    /// The local workload set with `set_local_workload` (all keys; "" where unset).
    fn local_workload<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let l = self.inner.tcp_metrics().local();
        let d = PyDict::new(py);
        for (k, v) in [
            ("workload", &l.workload),
            ("namespace", &l.namespace),
            ("app", &l.app),
            ("version", &l.version),
            ("canonical_service", &l.canonical_service),
            ("canonical_revision", &l.canonical_revision),
            ("cluster", &l.cluster),
            ("name", &l.name),
            ("node_id", &l.node_id),
        ] {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    /// Istio's TCP metrics: one (labels, values) pair per label set, labels
    /// a dict of Istio's 23 TCP labels, values a dict of connections_opened,
    /// connections_closed, sent_bytes (to the connecting client),
    /// received_bytes (from it).
    fn tcp_metrics<'py>(&self, py: Python<'py>) -> PyResult<Vec<(Bound<'py, PyDict>, Bound<'py, PyDict>)>> {
        let snap = self.inner.tcp_metrics().snapshot();
        let mut out = Vec::with_capacity(snap.len());
        for (labels, v) in snap {
            let l = PyDict::new(py);
            for (k, val) in labels.pairs() {
                l.set_item(k, val)?;
            }
            let d = PyDict::new(py);
            d.set_item("connections_opened", v.opened)?;
            d.set_item("connections_closed", v.closed)?;
            d.set_item("sent_bytes", v.sent_bytes)?;
            d.set_item("received_bytes", v.received_bytes)?;
            out.push((l, d));
        }
        Ok(out)
    }

    /// The limits in force (running), else those a start would derive now
    /// from the file-descriptor budget: max_connections,
    /// max_connections_per_source, max_pipes, fd_limit (the soft
    /// RLIMIT_NOFILE; -1: unlimited), pipes_open.
    fn limits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let l = self.inner.limits();
        let d = PyDict::new(py);
        d.set_item("max_connections", l.max_connections)?;
        d.set_item("max_connections_per_source", l.max_connections_per_source)?;
        d.set_item("max_pipes", l.max_pipes)?;
        d.set_item("fd_limit", i64::try_from(l.fd_limit).unwrap_or(-1))?;
        d.set_item("pipes_open", self.inner.pipes_open())?;
        Ok(d)
    }

    /// The bound listen addresses (empty when stopped).
    #[getter]
    fn addresses(&self) -> Vec<String> {
        self.inner.local_addrs().iter().map(ToString::to_string).collect()
    }

    #[getter]
    fn running(&self) -> bool {
        self.inner.is_running()
    }

    fn __repr__(&self) -> String {
        format!("OutboundProxy(running={}, addresses={:?})", self.inner.is_running(), self.addresses())
    }
}

/// The original destination of a connected socket's redirected connection
/// ("ip:port"), read with SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST.
#[pyfunction]
fn original_destination(fd: i32, ipv6: bool) -> PyResult<String> {
    let err = |e: std::io::Error| crate::errors::PymeshError::new_err(format!("original destination of fd {fd}: {e}"));
    if fd < 0 {
        return Err(err(std::io::Error::from_raw_os_error(9))); // EBADF, as getsockopt(-1) says
    }
    // SAFETY: `fd` is not -1, and the caller's socket (`socket.fileno()`)
    // stays open for this call: the GIL is held throughout, so no Python
    // code can close it meanwhile. The borrow only reads a socket option;
    // should the number not be a socket, getsockopt fails with an error.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    core::original_destination(socket, ipv6).map(|a| a.to_string()).map_err(err)
}

/// A `LocalWorkload` from a dict of its string fields (unknown keys refused).
fn local_workload_from(workload: &Bound<'_, PyDict>) -> PyResult<core::LocalWorkload> {
    let mut local = core::LocalWorkload::default();
    for (k, v) in workload.iter() {
        let key: String = k.extract().map_err(|_| ConfigError::new_err("local workload: keys must be strings"))?;
        let value: String =
            v.extract().map_err(|_| ConfigError::new_err(format!("local workload: {key} must be a string")))?;
        let field = match key.as_str() {
            "workload" => &mut local.workload,
            "namespace" => &mut local.namespace,
            "app" => &mut local.app,
            "version" => &mut local.version,
            "canonical_service" => &mut local.canonical_service,
            "canonical_revision" => &mut local.canonical_revision,
            "cluster" => &mut local.cluster,
            "name" => &mut local.name,
            "node_id" => &mut local.node_id,
            _ => {
                return Err(ConfigError::new_err(format!(
                    "local workload: unknown key {key:?} (workload, namespace, app, version, \
                     canonical_service, canonical_revision, cluster, name, node_id)"
                )))
            }
        };
        *field = value;
    }
    Ok(local)
}

/// The TCP metadata-exchange frame (`istio-peer-exchange`) the relays send
/// for this local workload (keys as `OutboundProxy.set_local_workload`).
#[pyfunction]
fn mx_frame<'py>(py: Python<'py>, workload: &Bound<'py, PyDict>) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
    Ok(pyo3::types::PyBytes::new(py, &core::mx::frame(&local_workload_from(workload)?)))
}

/// What a metadata-exchange frame (header and payload) says of the peer;
/// ValueError naming what is wrong otherwise.
#[pyfunction]
fn mx_parse<'py>(py: Python<'py>, frame: &[u8]) -> PyResult<Bound<'py, PyDict>> {
    let bad = |why: &str| pyo3::exceptions::PyValueError::new_err(format!("metadata exchange frame: {why}"));
    let mut r = core::mx::Reader::default();
    let info = match r.feed(frame) {
        core::mx::Read::Done { used, peer } if used == frame.len() => peer.map_err(bad)?,
        core::mx::Read::Done { .. } => return Err(bad("bytes after the frame")),
        core::mx::Read::More => return Err(bad("truncated")),
        core::mx::Read::NotMx(_) => return Err(bad("wrong magic or a length over 16 KiB")),
    };
    let d = PyDict::new(py);
    for (k, v) in [
        ("id", &info.id),
        ("name", &info.name),
        ("namespace", &info.namespace),
        ("workload", &info.workload),
        ("cluster", &info.cluster),
        ("app", &info.app),
        ("version", &info.version),
        ("canonical_service", &info.canonical_service),
        ("canonical_revision", &info.canonical_revision),
    ] {
        d.set_item(k, v)?;
    }
    Ok(d)
}

/// Istio's TCP families over the series of these relays, in the Prometheus
/// text format (each family once; what the agent's `/stats/prometheus` serves).
#[pyfunction]
fn tcp_metrics_text(py: Python<'_>, relays: Vec<Py<OutboundProxy>>) -> String {
    let held: Vec<&OutboundProxy> = relays.iter().map(|r| r.get()).collect();
    let registries: Vec<&core::TcpMetrics> = held.iter().map(|r| r.inner.tcp_metrics()).collect();
    py.detach(|| core::metrics::render_text(&registries))
}

fn build_http_routes(
    py: Python<'_>,
    routes: &[(u16, String)],
    dests: &[std::net::SocketAddr],
) -> PyResult<core::http::HttpRoutes> {
    py.detach(|| {
        let items: Vec<(u16, &str)> = routes.iter().map(|(p, j)| (*p, j.as_str())).collect();
        core::http::HttpRoutes::build(&items, dests)
    })
    .map_err(to_py)
}

/// Checks HTTP routes as `OutboundProxy.set_http_routes` would take them
/// (`(port, RouteConfiguration JSON)` pairs), serving nothing: raises
/// `ConfigError` naming the route configuration, virtual host, route and
/// field of the first problem (an agent NACKs such an RDS push).
#[pyfunction]
fn check_http_routes(py: Python<'_>, routes: Vec<(u16, String)>) -> PyResult<()> {
    build_http_routes(py, &routes, &[]).map(drop)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(check_http_routes, m)?)?;
    m.add_function(wrap_pyfunction!(tcp_metrics_text, m)?)?;
    m.add_class::<OutboundProxy>()?;
    m.add_function(wrap_pyfunction!(original_destination, m)?)?;
    m.add_function(wrap_pyfunction!(mx_frame, m)?)?;
    m.add_function(wrap_pyfunction!(mx_parse, m)?)?;
    Ok(())
}
