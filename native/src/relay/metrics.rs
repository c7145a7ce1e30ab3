//! Istio's standard TCP metrics, kept by the relay per connection:
//! `istio_tcp_connections_opened_total`, `istio_tcp_connections_closed_total`,
//! `istio_tcp_sent_bytes_total` and `istio_tcp_received_bytes_total`, each
//! with Istio's default TCP label set (istio/proxy
//! `source/extensions/filters/http/istio_stats/istio_stats.cc`: the labels of
//! `istio_requests_total` minus `response_code` and `grpc_response_status`,
//! `request_protocol="tcp"`), every label always present and `unknown` when
//! its value is not known, as ztunnel fills them (`DefaultedUnknown`,
//! `src/proxy/metrics.rs`).
//!
//! Where values come from (istio_stats.cc `populatePeerInfo`):
//! - the local workload ([`LocalWorkload`], set by the agent from its node
//!   metadata): the `source_*` labels on the outbound (`reporter="source"`),
//!   the `destination_*` labels on the inbound (`reporter="destination"`);
//! - the peer: what its metadata exchange said when the mTLS handshake
//!   negotiated `istio-peer-exchange` ([`super::mx`]; the connection's series
//!   is then opened when the exchange ends, as Istio opens its TCP metrics
//!   then); else, on the outbound, the endpoint's EDS metadata `istio.workload`
//!   (`name;namespace;canonical service;canonical revision;cluster`, istio
//!   `pilot/pkg/networking/util/util.go` `AppendLbEndpointMetadata`; Envoy's
//!   fallback when no metadata exchange happened, istio/proxy
//!   `extensions/common/metadata_object.cc` `convertEndpointMetadata`); on
//!   the inbound without an exchange only the client certificate is known,
//!   so `source_workload`, `source_app`, ... are `unknown`, as an Envoy
//!   inbound reports a peer without a sidecar;
//! - the service: the cluster's name (`outbound|port|subset|host`); the
//!   principals: the certificates of the mTLS handshake.
//!
//! Bytes follow Istio's direction, which is the downstream's: `received` is
//! what the downstream (the connecting client) sent, `sent` what it was
//! sent (Envoy's `StreamInfo::bytesReceived` / `bytesSent`), on both
//! reporters.
//!
//! Hot path: a connection resolves its label set once, when its upstream is
//! known (or it failed), and takes the registry's lock once to find or add
//! its series; bytes are then added with relaxed atomics to the series it
//! holds (an `Arc`), per pump chunk, so the counts are live, as Envoy's
//! periodic TCP reports are (every 5 s) but without a timer. Series are
//! capped ([`DEFAULT_MAX_SERIES`]): a connection whose label set would be
//! one too many is counted in [`TcpMetrics::dropped`] instead (Envoy has no
//! cap; the labels here hold no per-connection value, so the count of
//! series is bounded by the mesh's workloads and services anyway).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::mx::PeerInfo;
use crate::mesh;

/// Label sets kept at most per relay.
pub const DEFAULT_MAX_SERIES: usize = 10_000;

/// The labels Istio's TCP and HTTP metrics share, first in both, in the
/// order of istio_stats.cc: who reports, the source and destination
/// workloads and the destination service.
pub const WORKLOAD_LABELS: [&str; 20] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
];

/// `a` then `b` (label lists built from [`WORKLOAD_LABELS`]).
pub const fn join<const A: usize, const B: usize, const C: usize>(
    a: [&'static str; A],
    b: [&'static str; B],
) -> [&'static str; C] {
    assert!(A + B == C);
    let mut out = [""; C];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    while i < C {
        out[i] = b[i - A];
        i += 1;
    }
    out
}

/// Istio's default TCP label names, in the order of istio_stats.cc.
pub const TCP_LABELS: [&str; 23] =
    join(WORKLOAD_LABELS, ["request_protocol", "response_flags", "connection_security_policy"]);

const UNKNOWN: &str = "unknown";
/// A peer's canonical revision when not known (istio_stats.cc; istio
/// `pkg/kube/labels/labels.go` `CanonicalService` ends with it too).
const LATEST: &str = "latest";
/// Istio's cluster for captured traffic to no known service.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";

/// This proxy's workload, as its node metadata describes it (istio-agent's
/// `WORKLOAD_NAME`, `NAMESPACE`, the `app`, `version` and canonical
/// labels, `CLUSTER_ID`). An empty field is reported as `unknown`, an
/// empty canonical revision as `latest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalWorkload {
    pub workload: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub cluster: String,
    /// The instance (VM or pod) name and the node id: what the metadata
    /// exchange tells peers (`NAME`, `x-envoy-peer-metadata-id`); no label.
    pub name: String,
    pub node_id: String,
}

/// Envoy's response flags (envoy `source/common/stream_info/utility.cc`,
/// `ResponseFlagUtils`): a bit set printed comma-joined in Envoy's order,
/// `-` when empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(u16);

impl Flags {
    pub const NONE: Flags = Flags(0);
    /// `UH`: no healthy upstream.
    pub const NO_HEALTHY_UPSTREAM: Flags = Flags(1);
    /// `UF`: upstream connection failure.
    pub const UPSTREAM_CONNECT_FAILURE: Flags = Flags(2);
    /// `URX`: connect attempts exhausted (Envoy's tcp_proxy sets it with
    /// `UF` once `max_connect_attempts` failed, `tcp_proxy.cc`), or the
    /// router's retries.
    pub const RETRY_LIMIT_EXCEEDED: Flags = Flags(4);
    /// `NC`: the route's cluster is not known.
    pub const NO_CLUSTER_FOUND: Flags = Flags(8);
    /// `UT`: upstream request timeout (504).
    pub const UPSTREAM_REQUEST_TIMEOUT: Flags = Flags(16);
    /// `UC`: upstream connection termination (reset before response headers).
    pub const UPSTREAM_CONNECTION_TERMINATION: Flags = Flags(32);
    /// `NR`: no route (404).
    pub const NO_ROUTE_FOUND: Flags = Flags(64);
    /// `DI`: the request was delayed by fault injection.
    pub const DELAY_INJECTED: Flags = Flags(128);
    /// `FI`: the request was aborted by fault injection.
    pub const FAULT_INJECTED: Flags = Flags(256);

    /// Envoy's order (`ResponseFlagUtils::CORE_RESPONSE_FLAGS`).
    const ORDER: [(Flags, &'static str); 9] = [
        (Flags::NO_HEALTHY_UPSTREAM, "UH"),
        (Flags::UPSTREAM_REQUEST_TIMEOUT, "UT"),
        (Flags::UPSTREAM_CONNECT_FAILURE, "UF"),
        (Flags::UPSTREAM_CONNECTION_TERMINATION, "UC"),
        (Flags::NO_ROUTE_FOUND, "NR"),
        (Flags::DELAY_INJECTED, "DI"),
        (Flags::FAULT_INJECTED, "FI"),
        (Flags::RETRY_LIMIT_EXCEEDED, "URX"),
        (Flags::NO_CLUSTER_FOUND, "NC"),
    ];

    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    pub const fn bits(self) -> u16 {
        self.0
    }

    /// The `response_flags` label value.
    pub fn label(self) -> String {
        if self.0 == 0 {
            return "-".to_owned();
        }
        let names: Vec<&str> = Flags::ORDER.iter().filter(|(f, _)| self.0 & f.0 != 0).map(|(_, n)| *n).collect();
        names.join(",")
    }
}

/// One label set: the values of [`TCP_LABELS`], in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpLabels(pub [String; 23]);

impl TcpLabels {
    /// (name, value) pairs in [`TCP_LABELS`] order.
    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        TCP_LABELS.iter().copied().zip(self.0.iter().map(String::as_str))
    }

    /// The value of label `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

pub(crate) fn or(v: &str, default: &str) -> String {
    if v.is_empty() { default } else { v }.to_owned()
}

/// The fields of an `istio.workload` endpoint metadata value, empty when
/// missing (a value with fewer than 5 fields is taken as far as it goes;
/// Envoy's `convertEndpointMetadata` ignores it then, which gives the same
/// `unknown`s for the fields it lacks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerWorkload<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub canonical_service: &'a str,
    pub canonical_revision: &'a str,
    pub cluster: &'a str,
}

impl<'a> PeerWorkload<'a> {
    pub fn parse(value: &'a str) -> PeerWorkload<'a> {
        let mut f = value.split(';');
        let mut next = || f.next().unwrap_or_default();
        PeerWorkload {
            name: next(),
            namespace: next(),
            canonical_service: next(),
            canonical_revision: next(),
            cluster: next(),
        }
    }
}

/// A service host's name and namespace: `<name>.<namespace>.svc.<domain>`
/// (a Kubernetes service: istiod's cluster metadata `services[0].name` and
/// `.namespace`), else the host itself as the name and no namespace (a
/// ServiceEntry host, whose `services[0].name` istiod sets to the host).
pub fn service_name(host: &str) -> (&str, Option<&str>) {
    let mut parts = host.splitn(4, '.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(ns), Some("svc"), Some(domain))
            if !name.is_empty() && !ns.is_empty() && !domain.is_empty() =>
        {
            (name, Some(ns))
        }
        _ => (host, None),
    }
}

/// Where an outbound connection went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// A service's cluster, by name (`outbound|port|subset|host`).
    Cluster(&'a str),
    /// Istio's PassthroughCluster (no service; also connections the table
    /// says are not captured, which reach the relay all the same).
    Passthrough,
}

/// What an outbound connection knows of its peer.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutboundPeer<'a> {
    /// The endpoint's `istio.workload` metadata ("" when none).
    pub workload: &'a str,
    /// The SPIFFE identity the upstream's certificate proved (mTLS).
    pub principal: Option<&'a str>,
    /// Ours, presented in that handshake.
    pub local_principal: Option<&'a str>,
    /// What the upstream's metadata exchange said, when it ran.
    pub mx: Option<&'a PeerInfo>,
}

/// The label set of an outbound connection (`reporter="source"`).
pub fn outbound_labels(local: &LocalWorkload, route: Route<'_>, peer: &OutboundPeer<'_>, flags: Flags) -> TcpLabels {
    // The metadata exchange first, then the endpoint's `istio.workload`
    // (istio_stats.cc `populatePeerInfo`: the peer from filter state, else
    // the upstream host's metadata).
    let eds = PeerWorkload::parse(peer.workload);
    let mx = peer.mx;
    let w = match mx {
        Some(m) => PeerWorkload {
            name: &m.workload,
            namespace: &m.namespace,
            canonical_service: &m.canonical_service,
            canonical_revision: &m.canonical_revision,
            cluster: &m.cluster,
        },
        None => eds,
    };
    // The namespace of the upstream's certificate first, then the peer's.
    let cert_ns = peer.principal.and_then(mesh::parse_spiffe).map(|id| id.namespace).unwrap_or_default();
    let dest_ns = if cert_ns.is_empty() { w.namespace } else { cert_ns };
    let (service, service_name, service_ns) = match route {
        Route::Cluster(name) => match mesh::parse_cluster_name(name) {
            Some(c) => {
                let (n, ns) = service_name(c.host);
                (c.host.to_owned(), n.to_owned(), or(ns.unwrap_or(w.namespace), UNKNOWN))
            }
            None => (or(name, UNKNOWN), or(name, UNKNOWN), or(w.namespace, UNKNOWN)),
        },
        // No cluster metadata and no Host header on TCP: the service is
        // unknown and its name is the cluster's (istio_stats.cc).
        Route::Passthrough => (UNKNOWN.to_owned(), PASSTHROUGH_CLUSTER.to_owned(), or(w.namespace, UNKNOWN)),
    };
    TcpLabels([
        "source".to_owned(),
        or(&local.workload, UNKNOWN),
        or(&local.namespace, UNKNOWN),
        or(peer.local_principal.unwrap_or_default(), UNKNOWN),
        or(&local.app, UNKNOWN),
        or(&local.version, UNKNOWN),
        or(&local.canonical_service, UNKNOWN),
        or(&local.canonical_revision, LATEST),
        or(&local.cluster, UNKNOWN),
        or(w.name, UNKNOWN),
        or(dest_ns, UNKNOWN),
        or(peer.principal.unwrap_or_default(), UNKNOWN),
        // Not in `istio.workload`: only the metadata exchange tells.
        or(mx.map(|m| m.app.as_str()).unwrap_or_default(), UNKNOWN),
        or(mx.map(|m| m.version.as_str()).unwrap_or_default(), UNKNOWN),
        service,
        service_name,
        service_ns,
        or(w.canonical_service, UNKNOWN),
        or(w.canonical_revision, LATEST),
        or(w.cluster, UNKNOWN),
        "tcp".to_owned(),
        flags.label(),
        // The client side never evaluates it (istio_stats.cc).
        UNKNOWN.to_owned(),
    ])
}

/// What an inbound connection knows of its peer: only the client
/// certificate of an mTLS handshake, and our own identity in it.
#[derive(Debug, Clone, Copy, Default)]
pub struct InboundPeer<'a> {
    pub principal: Option<&'a str>,
    pub local_principal: Option<&'a str>,
    /// What the client's metadata exchange said, when it ran.
    pub mx: Option<&'a PeerInfo>,
}

/// The label set of an inbound connection (`reporter="destination"`). The
/// relay's inbound is a passthrough with no service metadata, so the
/// service is the local canonical service (istio_stats.cc's inbound
/// fallback) in the local namespace.
pub fn inbound_labels(local: &LocalWorkload, peer: &InboundPeer<'_>, flags: Flags) -> TcpLabels {
    let cert_ns = peer.principal.and_then(mesh::parse_spiffe).map(|id| id.namespace).unwrap_or_default();
    let mtls = peer.principal.is_some() && peer.local_principal.is_some();
    let canonical = or(&local.canonical_service, UNKNOWN);
    let m = |f: fn(&PeerInfo) -> &str| peer.mx.map(f).unwrap_or_default();
    let peer_ns = if cert_ns.is_empty() { m(|p| &p.namespace) } else { cert_ns };
    TcpLabels([
        "destination".to_owned(),
        or(m(|p| &p.workload), UNKNOWN),
        or(peer_ns, UNKNOWN),
        or(peer.principal.unwrap_or_default(), UNKNOWN),
        or(m(|p| &p.app), UNKNOWN),
        or(m(|p| &p.version), UNKNOWN),
        or(m(|p| &p.canonical_service), UNKNOWN),
        or(m(|p| &p.canonical_revision), LATEST),
        or(m(|p| &p.cluster), UNKNOWN),
        or(&local.workload, UNKNOWN),
        or(&local.namespace, UNKNOWN),
        or(peer.local_principal.unwrap_or_default(), UNKNOWN),
        or(&local.app, UNKNOWN),
        or(&local.version, UNKNOWN),
        canonical.clone(),
        canonical.clone(),
        or(&local.namespace, UNKNOWN),
        canonical,
        or(&local.canonical_revision, LATEST),
        or(&local.cluster, UNKNOWN),
        "tcp".to_owned(),
        flags.label(),
        if mtls { "mutual_tls" } else { "none" }.to_owned(),
    ])
}

/// One label set's counters.
#[derive(Debug, Default)]
pub struct TcpSeries {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    /// Bytes sent to the downstream (the connecting client).
    pub sent: AtomicU64,
    /// Bytes received from the downstream.
    pub received: AtomicU64,
}

/// A copy of one series' counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpValues {
    pub opened: u64,
    pub closed: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
}

/// A relay's series, by label set, and its local workload.
#[derive(Debug)]
pub struct TcpMetrics {
    local: ArcSwap<LocalWorkload>,
    peer_headers: ArcSwap<super::mx::PeerHeaders>,
    series: Mutex<HashMap<Arc<TcpLabels>, Arc<TcpSeries>>>,
    max: usize,
    dropped: AtomicU64,
    /// Off: connections get no series (Istio's Telemetry API `metrics`
    /// with `disabled: true`); their label sets are not even built.
    enabled: std::sync::atomic::AtomicBool,
    /// The HTTP path's request series (same local workload, switch and cap).
    pub(crate) http: super::http::metrics::HttpMetrics,
}

impl Default for TcpMetrics {
    fn default() -> Self {
        TcpMetrics::new(DEFAULT_MAX_SERIES)
    }
}

impl TcpMetrics {
    /// A registry of at most `max` label sets.
    pub fn new(max: usize) -> TcpMetrics {
        TcpMetrics {
            local: ArcSwap::from_pointee(LocalWorkload::default()),
            peer_headers: ArcSwap::from_pointee(super::mx::PeerHeaders::new(&LocalWorkload::default())),
            series: Mutex::new(HashMap::new()),
            max,
            dropped: AtomicU64::new(0),
            enabled: std::sync::atomic::AtomicBool::new(true),
            http: super::http::metrics::HttpMetrics::new(max),
        }
    }

    /// Turns the metrics on or off for connections from now on.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The local workload for connections from now on.
    pub fn set_local(&self, local: LocalWorkload) {
        self.peer_headers.store(Arc::new(super::mx::PeerHeaders::new(&local)));
        self.local.store(Arc::new(local));
    }

    /// Our HTTP metadata exchange headers, encoded once per local workload.
    pub fn peer_headers(&self) -> Arc<super::mx::PeerHeaders> {
        self.peer_headers.load_full()
    }

    pub fn local(&self) -> Arc<LocalWorkload> {
        self.local.load_full()
    }

    /// The series of `labels`, added if new; None (and counted as dropped)
    /// when it is new and the registry is full.
    pub fn series(&self, labels: TcpLabels) -> Option<Arc<TcpSeries>> {
        let mut map = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(&labels) {
            return Some(s.clone());
        }
        if map.len() >= self.max {
            drop(map);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let s = Arc::new(TcpSeries::default());
        map.insert(Arc::new(labels), s.clone());
        Some(s)
    }

    /// Connections (and HTTP requests) not counted because their label set
    /// would have exceeded the cap.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed) + self.http.dropped()
    }

    /// Every series with a copy of its counters, sorted by labels.
    pub fn snapshot(&self) -> Vec<(Arc<TcpLabels>, TcpValues)> {
        let map = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out: Vec<(Arc<TcpLabels>, TcpValues)> = map
            .iter()
            .map(|(k, s)| {
                let v = TcpValues {
                    opened: l(&s.opened),
                    closed: l(&s.closed),
                    sent_bytes: l(&s.sent),
                    received_bytes: l(&s.received),
                };
                (k.clone(), v)
            })
            .collect();
        drop(map);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// Where a pump adds the bytes it delivered: the relay's total and,
/// once known, the connection's series.
pub trait ByteCount: Sync {
    fn add(&self, n: u64);
}

impl ByteCount for AtomicU64 {
    fn add(&self, n: u64) {
        self.fetch_add(n, Ordering::Relaxed);
    }
}

/// A relay total and a series counter.
#[derive(Debug, Clone, Copy)]
pub struct Tally<'a> {
    pub total: &'a AtomicU64,
    pub series: Option<&'a AtomicU64>,
    /// The connection's own count (its access-log line).
    pub conn: Option<&'a AtomicU64>,
}

impl ByteCount for Tally<'_> {
    fn add(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
        for c in [self.series, self.conn].into_iter().flatten() {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Istio's four TCP families: (name, HELP text as Istio's "Istio Standard
/// Metrics" page words it, the value of a series).
const FAMILIES: [Family; 4] = [
    ("istio_tcp_connections_opened_total", "Total TCP connections opened.", |v| v.opened),
    ("istio_tcp_connections_closed_total", "Total TCP connections closed.", |v| v.closed),
    ("istio_tcp_sent_bytes_total", "Total bytes sent during response in case of a TCP connection.", |v| v.sent_bytes),
    ("istio_tcp_received_bytes_total", "Total bytes received during request in case of a TCP connection.", |v| {
        v.received_bytes
    }),
];

type Family = (&'static str, &'static str, fn(&TcpValues) -> u64);

/// A label value escaped for the text format: backslash, double quote and
/// line feed (Prometheus "Exposition formats", text format 0.0.4).
pub(crate) fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The series of several registries (the agent's relays) as Istio's TCP
/// families in the Prometheus text format 0.0.4: each family once, with
/// HELP and TYPE even when it has no series, labels in Istio's order. Built
/// here rather than through Python objects: 10,000 series are 40,000 lines.
pub fn render_text(registries: &[&TcpMetrics]) -> String {
    use std::fmt::Write as _;
    let series: Vec<(Arc<TcpLabels>, TcpValues)> = registries.iter().flat_map(|m| m.snapshot()).collect();
    // The label part of each series, built once for the four families.
    let labels: Vec<String> = series
        .iter()
        .map(|(l, _)| {
            let mut s = String::with_capacity(640);
            s.push('{');
            for (i, (k, v)) in l.pairs().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(k);
                s.push_str("=\"");
                escape_into(&mut s, v);
                s.push('"');
            }
            s.push('}');
            s
        })
        .collect();
    let mut out = String::with_capacity(series.len() * 4 * 700 + 1024);
    for (name, help, value) in FAMILIES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for ((_, v), l) in series.iter().zip(&labels) {
            let _ = writeln!(out, "{name}{l} {}", value(v));
        }
    }
    let http: Vec<&super::http::metrics::HttpMetrics> = registries.iter().map(|m| &m.http).collect();
    super::http::metrics::render_text(&http, &mut out);
    out
}

/// One connection's series: counted opened when made, closed when dropped
/// (however the connection's task ends: also when evicted or stopped).
#[derive(Debug)]
pub(crate) struct Opened(pub(crate) Option<Arc<TcpSeries>>);

impl Opened {
    /// A connection's series, its labels made by `labels` only when the metrics are on.
    pub(crate) fn open_with(metrics: &TcpMetrics, labels: impl FnOnce() -> TcpLabels) -> Opened {
        if !metrics.enabled() {
            return Opened(None);
        }
        Opened::open(metrics, labels())
    }

    pub(crate) fn open(metrics: &TcpMetrics, labels: TcpLabels) -> Opened {
        let s = metrics.series(labels);
        if let Some(s) = &s {
            s.opened.fetch_add(1, Ordering::Relaxed);
        }
        Opened(s)
    }

    /// The counter of bytes sent to the downstream.
    pub(crate) fn sent(&self) -> Option<&AtomicU64> {
        self.0.as_deref().map(|s| &s.sent)
    }

    /// The counter of bytes received from the downstream.
    pub(crate) fn received(&self) -> Option<&AtomicU64> {
        self.0.as_deref().map(|s| &s.received)
    }
}

/// A connection's series opened once its peer is known (when the metadata
/// exchange ends, as Istio's TCP metrics wait for it), bytes moved before
/// that held and added then. One task counts and resolves, so no byte is
/// lost between the two.
pub(crate) struct Late<'a> {
    cell: std::sync::OnceLock<Opened>,
    pending: [AtomicU64; 2],
    open: OpenWith<'a>,
}

/// Opens a connection's series with what is known of its peer.
type OpenWith<'a> = Box<dyn Fn(Option<&PeerInfo>) -> Opened + Send + Sync + 'a>;

impl<'a> Late<'a> {
    pub(crate) fn new(open: impl Fn(Option<&PeerInfo>) -> Opened + Send + Sync + 'a) -> Late<'a> {
        Late { cell: std::sync::OnceLock::new(), pending: Default::default(), open: Box::new(open) }
    }

    /// Opens the series with what is known of the peer (once; later calls do nothing).
    pub(crate) fn resolve(&self, peer: Option<&PeerInfo>) {
        if self.cell.get().is_some() {
            return;
        }
        let o = (self.open)(peer);
        if let Some(c) = o.sent() {
            c.fetch_add(self.pending[0].swap(0, Ordering::Relaxed), Ordering::Relaxed);
        }
        if let Some(c) = o.received() {
            c.fetch_add(self.pending[1].swap(0, Ordering::Relaxed), Ordering::Relaxed);
        }
        let _ = self.cell.set(o);
    }

    /// A relay total and this series' counter of bytes sent (`sent`) or received.
    pub(crate) fn tally(&'a self, total: &'a AtomicU64, sent: bool, conn: &'a AtomicU64) -> LateTally<'a> {
        LateTally { total, late: self, dir: usize::from(!sent), conn }
    }
}

pub(crate) struct LateTally<'a> {
    total: &'a AtomicU64,
    late: &'a Late<'a>,
    dir: usize,
    conn: &'a AtomicU64,
}

impl ByteCount for LateTally<'_> {
    fn add(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
        self.conn.fetch_add(n, Ordering::Relaxed);
        match self.late.cell.get() {
            Some(o) => {
                if let Some(c) = if self.dir == 0 { o.sent() } else { o.received() } {
                    c.fetch_add(n, Ordering::Relaxed);
                }
            }
            None => {
                self.late.pending[self.dir].fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.closed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalWorkload {
        LocalWorkload {
            workload: "client-vm".into(),
            namespace: "apps".into(),
            app: "client".into(),
            version: "v2".into(),
            canonical_service: "client".into(),
            canonical_revision: "v2".into(),
            cluster: "vm-net".into(),
            ..Default::default()
        }
    }

    fn map(l: &TcpLabels) -> HashMap<&'static str, &str> {
        l.pairs().collect()
    }

    #[test]
    fn istio_workload_metadata_is_parsed_field_by_field() {
        let w = PeerWorkload::parse("reviews-v1;default;reviews;v1;Kubernetes");
        assert_eq!(
            w,
            PeerWorkload {
                name: "reviews-v1",
                namespace: "default",
                canonical_service: "reviews",
                canonical_revision: "v1",
                cluster: "Kubernetes"
            }
        );
        assert_eq!(PeerWorkload::parse(""), PeerWorkload::default());
        assert_eq!(PeerWorkload::parse("a;b"), PeerWorkload { name: "a", namespace: "b", ..Default::default() });
    }

    #[test]
    fn service_hosts_split_into_name_and_namespace() {
        assert_eq!(service_name("reviews.default.svc.cluster.local"), ("reviews", Some("default")));
        assert_eq!(service_name("api.example.com"), ("api.example.com", None));
        assert_eq!(service_name("a.b.svc"), ("a.b.svc", None));
        assert_eq!(service_name("a..svc.x"), ("a..svc.x", None));
    }

    #[test]
    fn outbound_labels_with_mtls_and_metadata() {
        let peer = OutboundPeer {
            workload: "reviews-v1;default;reviews;v1;Kubernetes",
            principal: Some("spiffe://cluster.local/ns/default/sa/reviews"),
            local_principal: Some("spiffe://cluster.local/ns/apps/sa/client"),
            mx: None,
        };
        let l = outbound_labels(
            &local(),
            Route::Cluster("outbound|9080|v1|reviews.default.svc.cluster.local"),
            &peer,
            Flags::NONE,
        );
        let m = map(&l);
        assert_eq!(m.len(), 23);
        assert_eq!(m["reporter"], "source");
        assert_eq!(m["source_workload"], "client-vm");
        assert_eq!(m["source_workload_namespace"], "apps");
        assert_eq!(m["source_principal"], "spiffe://cluster.local/ns/apps/sa/client");
        assert_eq!(m["source_cluster"], "vm-net");
        assert_eq!(m["destination_workload"], "reviews-v1");
        assert_eq!(m["destination_workload_namespace"], "default");
        assert_eq!(m["destination_principal"], "spiffe://cluster.local/ns/default/sa/reviews");
        assert_eq!((m["destination_app"], m["destination_version"]), ("unknown", "unknown"));
        assert_eq!(m["destination_service"], "reviews.default.svc.cluster.local");
        assert_eq!(m["destination_service_name"], "reviews");
        assert_eq!(m["destination_service_namespace"], "default");
        assert_eq!(m["destination_canonical_service"], "reviews");
        assert_eq!(m["destination_canonical_revision"], "v1");
        assert_eq!(m["destination_cluster"], "Kubernetes");
        assert_eq!(m["request_protocol"], "tcp");
        assert_eq!(m["response_flags"], "-");
        assert_eq!(m["connection_security_policy"], "unknown");
    }

    #[test]
    fn unknown_everywhere_a_value_is_missing() {
        let l = outbound_labels(&LocalWorkload::default(), Route::Passthrough, &OutboundPeer::default(), Flags::NONE);
        for (k, v) in l.pairs() {
            let want = match k {
                "reporter" => "source",
                "request_protocol" => "tcp",
                "response_flags" => "-",
                "destination_service_name" => "PassthroughCluster",
                "source_canonical_revision" | "destination_canonical_revision" => "latest",
                _ => "unknown",
            };
            assert_eq!(v, want, "{k}");
        }
        // A ServiceEntry host: its own name; the namespace from the peer when known.
        let peer = OutboundPeer { workload: "db;data;db;latest;", ..Default::default() };
        let m = outbound_labels(&local(), Route::Cluster("outbound|5432||db.example.com"), &peer, Flags::NONE);
        let m = map(&m);
        assert_eq!(
            (m["destination_service"], m["destination_service_name"], m["destination_service_namespace"]),
            ("db.example.com", "db.example.com", "data")
        );
        assert_eq!(m["destination_cluster"], "unknown");
    }

    #[test]
    fn inbound_labels_from_the_client_certificate() {
        let peer = InboundPeer {
            principal: Some("spiffe://cluster.local/ns/web/sa/frontend"),
            local_principal: Some("spiffe://cluster.local/ns/apps/sa/client"),
            mx: None,
        };
        let m = inbound_labels(&local(), &peer, Flags::NONE);
        let m = map(&m);
        assert_eq!(m["reporter"], "destination");
        assert_eq!(m["source_principal"], "spiffe://cluster.local/ns/web/sa/frontend");
        assert_eq!(m["source_workload_namespace"], "web");
        assert_eq!((m["source_workload"], m["source_canonical_revision"]), ("unknown", "latest"));
        assert_eq!(m["destination_workload"], "client-vm");
        assert_eq!(m["destination_principal"], "spiffe://cluster.local/ns/apps/sa/client");
        assert_eq!(m["destination_service"], "client");
        assert_eq!(m["destination_service_namespace"], "apps");
        assert_eq!(m["connection_security_policy"], "mutual_tls");
        let plain = inbound_labels(&local(), &InboundPeer::default(), Flags::UPSTREAM_CONNECT_FAILURE);
        let plain = map(&plain);
        assert_eq!(plain["connection_security_policy"], "none");
        assert_eq!((plain["source_principal"], plain["destination_principal"]), ("unknown", "unknown"));
        assert_eq!(plain["response_flags"], "UF");
    }

    #[test]
    fn the_metadata_exchange_fills_the_peers_labels_on_both_reporters() {
        let info = PeerInfo {
            workload: "frontend-v2".into(),
            namespace: "web".into(),
            app: "frontend".into(),
            version: "v2".into(),
            canonical_service: "frontend".into(),
            canonical_revision: "v2".into(),
            cluster: "east".into(),
            ..Default::default()
        };
        let peer = InboundPeer { principal: None, local_principal: None, mx: Some(&info) };
        let m = inbound_labels(&local(), &peer, Flags::NONE);
        let m = map(&m);
        assert_eq!(
            (m["source_workload"], m["source_workload_namespace"], m["source_app"], m["source_version"]),
            ("frontend-v2", "web", "frontend", "v2")
        );
        assert_eq!(
            (m["source_canonical_service"], m["source_canonical_revision"], m["source_cluster"]),
            ("frontend", "v2", "east")
        );
        // Outbound: the exchange wins over the endpoint's istio.workload, and adds app and version.
        let peer = OutboundPeer { workload: "old;other;old;v0;west", mx: Some(&info), ..Default::default() };
        let l = outbound_labels(
            &local(),
            Route::Cluster("outbound|80||frontend.web.svc.cluster.local"),
            &peer,
            Flags::NONE,
        );
        let m = map(&l);
        assert_eq!(
            (
                m["destination_workload"],
                m["destination_workload_namespace"],
                m["destination_app"],
                m["destination_version"]
            ),
            ("frontend-v2", "web", "frontend", "v2")
        );
        assert_eq!((m["destination_canonical_revision"], m["destination_cluster"]), ("v2", "east"));
    }

    #[test]
    fn the_text_has_each_family_once_with_escaped_labels() {
        let (a, b) = (TcpMetrics::new(10), TcpMetrics::new(10));
        let mut odd = local();
        odd.workload = "a\"b\\c\nd".into();
        let l1 = outbound_labels(&odd, Route::Passthrough, &OutboundPeer::default(), Flags::NONE);
        let l2 = inbound_labels(&local(), &InboundPeer::default(), Flags::NONE);
        let (o1, o2) = (Opened::open(&a, l1), Opened::open(&b, l2));
        Tally { total: &AtomicU64::new(0), series: o1.sent(), conn: None }.add(10);
        let text = render_text(&[&a, &b]);
        assert_eq!(text.matches("# TYPE istio_tcp_sent_bytes_total counter\n").count(), 1);
        assert_eq!(text.lines().filter(|l| l.starts_with("istio_tcp_connections_opened_total{")).count(), 2);
        assert!(text.contains(r#"source_workload="a\"b\\c\nd""#), "{text}");
        assert!(text.contains(r#"reporter="source",source_workload="#));
        assert!(text
            .lines()
            .any(|l| l.starts_with("istio_tcp_sent_bytes_total{reporter=\"source\"") && l.ends_with(" 10")));
        // No series yet: the families are still typed (4 TCP, 6 HTTP and gRPC).
        let empty = render_text(&[&TcpMetrics::new(1)]);
        assert_eq!(empty.lines().count(), 20);
        assert_eq!(empty.matches("# TYPE istio_requests_total counter\n").count(), 1);
        assert_eq!(empty.matches("# TYPE istio_request_messages_total counter\n").count(), 1);
        drop((o1, o2));
    }

    #[test]
    fn response_flags_print_in_envoys_order() {
        assert_eq!(Flags::NONE.label(), "-");
        assert_eq!(Flags::RETRY_LIMIT_EXCEEDED.union(Flags::UPSTREAM_CONNECT_FAILURE).label(), "UF,URX");
        assert_eq!(Flags::NO_HEALTHY_UPSTREAM.label(), "UH");
        assert_eq!(Flags::NO_CLUSTER_FOUND.label(), "NC");
    }

    #[test]
    fn series_are_shared_by_label_set_and_capped() {
        let m = TcpMetrics::new(2);
        let a = outbound_labels(&local(), Route::Passthrough, &OutboundPeer::default(), Flags::NONE);
        let b = inbound_labels(&local(), &InboundPeer::default(), Flags::NONE);
        let c = outbound_labels(&local(), Route::Passthrough, &OutboundPeer::default(), Flags::NO_HEALTHY_UPSTREAM);
        {
            let o1 = Opened::open(&m, a.clone());
            let o2 = Opened::open(&m, a.clone());
            assert!(Arc::ptr_eq(o1.0.as_ref().unwrap(), o2.0.as_ref().unwrap()));
            Tally { total: &AtomicU64::new(0), series: o1.sent(), conn: None }.add(10);
            Tally { total: &AtomicU64::new(0), series: o2.received(), conn: None }.add(7);
            let _ = Opened::open(&m, b);
            let dropped = Opened::open(&m, c);
            assert!(dropped.0.is_none());
            let snap = m.snapshot();
            let (_, v) = snap.iter().find(|(l, _)| **l == a).unwrap();
            assert_eq!(*v, TcpValues { opened: 2, closed: 0, sent_bytes: 10, received_bytes: 7 });
        }
        assert_eq!(m.dropped(), 1);
        let snap = m.snapshot();
        assert_eq!(snap.len(), 2);
        assert!(snap.iter().all(|(_, v)| v.opened == v.closed));
    }
}
