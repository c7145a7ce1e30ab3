//! Istio's HTTP metrics of the HTTP paths, outbound (`reporter="source"`)
//! and inbound (`reporter="destination"`):
//! `istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes` and `istio_response_bytes`, one series per label
//! set of Istio's 25 labels (istio/proxy
//! `source/extensions/filters/http/istio_stats/istio_stats.cc`), counted when
//! a request's stream ends. The labels are those of the TCP metrics
//! ([`crate::relay::metrics::outbound_labels`]: local workload, the
//! endpoint's `istio.workload` metadata, the upstream identity) with
//! `request_protocol` `http` or `grpc`, `response_code` (`0` when no
//! response came), `grpc_response_status` (empty for non-gRPC) and Envoy's
//! response flags. Histograms use Envoy's default buckets
//! (`source/common/stats/histogram_impl.cc`), for the byte ones too.
//!
//! A request finds its series by a short key (cluster, endpoint workload,
//! identities, status, flags) without building the labels; they are built
//! once per new series. The key is written into a buffer of the worker
//! thread and looked up in that thread's own cache first, so a request
//! takes no lock and allocates nothing once its series is known to the
//! thread (the registry's map is locked for a series new to the thread);
//! the counters are relaxed atomics. At most `max` series (the TCP metrics'
//! cap); a request that would add one more is counted as dropped.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::relay::metrics::{
    escape_into, inbound_labels, join, outbound_labels, Flags, InboundPeer, LocalWorkload, OutboundPeer, Route,
    WORKLOAD_LABELS,
};

/// Istio's HTTP label names, in istio_stats.cc's order.
pub const HTTP_LABELS: [&str; 25] = join(
    WORKLOAD_LABELS,
    ["request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy"],
);

/// Envoy's default histogram buckets.
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// A histogram: per-bucket counts (not cumulative), the count and the sum
/// (in thousandths).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; 19],
    count: AtomicU64,
    sum_milli: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, v: f64) {
        let v = if v.is_finite() && v > 0.0 { v } else { 0.0 };
        if let Some(i) = BUCKETS.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_milli.fetch_add((v * 1000.0) as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket, the count and the sum.
    pub fn read(&self) -> ([u64; 19], u64, f64) {
        let mut out = [0u64; 19];
        let mut acc = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            acc += b.load(Ordering::Relaxed);
            out[i] = acc;
        }
        (out, self.count.load(Ordering::Relaxed), self.sum_milli.load(Ordering::Relaxed) as f64 / 1000.0)
    }
}

/// One label set's values.
#[derive(Debug, Default)]
pub struct HttpSeries {
    pub requests: AtomicU64,
    pub duration_ms: Histogram,
    pub request_bytes: Histogram,
    pub response_bytes: Histogram,
    /// gRPC messages each way (gRPC series only).
    pub request_messages: AtomicU64,
    pub response_messages: AtomicU64,
}

/// Which side counted a request, and what it knows of the other.
#[derive(Debug, Clone, Copy)]
pub enum Reporter<'a> {
    /// The outbound (`reporter="source"`): the route and the upstream.
    Source { route: Route<'a>, peer: OutboundPeer<'a> },
    /// The inbound (`reporter="destination"`): the client.
    Destination(InboundPeer<'a>),
}

/// What one request's labels are made of.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub reporter: Reporter<'a>,
    /// The request's host, the destination service of a PassthroughCluster
    /// request (istio_stats.cc falls back to the Host header).
    pub host: &'a str,
    pub flags: Flags,
    pub grpc: bool,
    /// 0: no response (reset, or a failure before headers).
    pub status: u16,
    pub grpc_status: Option<u32>,
}

type Entry = (Arc<[String; 25]>, Arc<HttpSeries>);

/// A relay's HTTP series.
#[derive(Debug)]
pub struct HttpMetrics {
    /// Names this registry in the threads' caches (never reused).
    id: u64,
    series: Mutex<HashMap<String, Entry>>,
    max: usize,
    dropped: AtomicU64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How many registries a thread keeps series of (a process runs one or two
/// relays; tests and benchmarks start many one after another).
const CACHED_REGISTRIES: usize = 8;

/// A worker thread's key buffer and the series it has counted into, by
/// registry id and key.
#[derive(Default)]
struct ThreadSeries {
    key: String,
    seen: HashMap<u64, HashMap<String, Arc<HttpSeries>>>,
}

thread_local! {
    static THREAD_SERIES: RefCell<ThreadSeries> = RefCell::new(ThreadSeries::default());
}

impl HttpMetrics {
    pub fn new(max: usize) -> HttpMetrics {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        HttpMetrics { id, series: Mutex::new(HashMap::new()), max, dropped: AtomicU64::new(0) }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Counts one finished request; `messages`: its gRPC messages each way.
    pub fn record(&self, local: &LocalWorkload, o: &Observed<'_>, ms: f64, bytes: (u64, u64), messages: (u64, u64)) {
        let Some(s) = self.series(local, o) else { return };
        s.requests.fetch_add(1, Ordering::Relaxed);
        s.duration_ms.observe(ms);
        s.request_bytes.observe(bytes.0 as f64);
        s.response_bytes.observe(bytes.1 as f64);
        if o.grpc {
            s.request_messages.fetch_add(messages.0, Ordering::Relaxed);
            s.response_messages.fetch_add(messages.1, Ordering::Relaxed);
        }
    }

    fn series(&self, local: &LocalWorkload, o: &Observed<'_>) -> Option<Arc<HttpSeries>> {
        // A request counted while the thread's locals are being destroyed (a
        // response body dropped at shutdown) goes straight to the registry.
        THREAD_SERIES.try_with(|t| self.cached(t, local, o)).unwrap_or_else(|_| self.uncached(local, o))
    }

    fn cached(&self, t: &RefCell<ThreadSeries>, local: &LocalWorkload, o: &Observed<'_>) -> Option<Arc<HttpSeries>> {
        let Ok(mut t) = t.try_borrow_mut() else { return self.uncached(local, o) };
        let ThreadSeries { key, seen } = &mut *t;
        key.clear();
        write_key(key, o);
        if let Some(s) = seen.get(&self.id).and_then(|m| m.get(key.as_str())) {
            return Some(s.clone());
        }
        let s = self.shared(local, o, key)?;
        if !seen.contains_key(&self.id) && seen.len() >= CACHED_REGISTRIES {
            seen.clear();
        }
        let mine = seen.entry(self.id).or_default();
        if mine.len() >= self.max {
            mine.clear();
        }
        mine.insert(key.clone(), s.clone());
        Some(s)
    }

    fn uncached(&self, local: &LocalWorkload, o: &Observed<'_>) -> Option<Arc<HttpSeries>> {
        let mut key = String::new();
        write_key(&mut key, o);
        self.shared(local, o, &key)
    }

    /// The registry's series for `key`, created when there is room.
    fn shared(&self, local: &LocalWorkload, o: &Observed<'_>, key: &str) -> Option<Arc<HttpSeries>> {
        let mut map = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, s)) = map.get(key) {
            return Some(s.clone());
        }
        if map.len() >= self.max {
            drop(map);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let s = Arc::new(HttpSeries::default());
        map.insert(key.to_owned(), (Arc::new(labels(local, o)), s.clone()));
        Some(s)
    }

    /// Every series, sorted by labels.
    pub fn snapshot(&self) -> Vec<(Arc<[String; 25]>, Arc<HttpSeries>)> {
        let map = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Entry> = map.values().cloned().collect();
        drop(map);
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// A request's series key: what its labels are made of, beside the local
/// workload (the same for every request of a registry).
fn write_key(key: &mut String, o: &Observed<'_>) {
    use std::fmt::Write as _;
    let mx = match o.reporter {
        Reporter::Source { route, peer } => {
            let cluster = match route {
                Route::Cluster(c) => c,
                Route::Passthrough => "",
            };
            let host = if matches!(route, Route::Passthrough) { o.host } else { "" };
            let _ = write!(
                key,
                "s\u{1f}{cluster}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{host}",
                peer.workload,
                peer.principal.unwrap_or_default(),
                peer.local_principal.unwrap_or_default(),
            );
            peer.mx
        }
        Reporter::Destination(peer) => {
            let _ = write!(
                key,
                "d\u{1f}{}\u{1f}{}",
                peer.principal.unwrap_or_default(),
                peer.local_principal.unwrap_or_default()
            );
            peer.mx
        }
    };
    if let Some(m) = mx {
        for v in
            [&m.workload, &m.namespace, &m.app, &m.version, &m.canonical_service, &m.canonical_revision, &m.cluster]
        {
            key.push('\u{1f}');
            key.push_str(v);
        }
    }
    let _ = write!(
        key,
        "\u{1e}{}\u{1f}{}\u{1f}{}\u{1f}{}",
        o.status,
        o.grpc_status.map_or(-1, i64::from),
        o.flags.bits(),
        u8::from(o.grpc),
    );
}

/// The 25 label values of a request.
pub fn labels(local: &LocalWorkload, o: &Observed<'_>) -> [String; 25] {
    let (t, passthrough) = match &o.reporter {
        Reporter::Source { route, peer } => {
            (outbound_labels(local, *route, peer, o.flags).0, matches!(route, Route::Passthrough))
        }
        Reporter::Destination(peer) => (inbound_labels(local, peer, o.flags).0, false),
    };
    let [reporter, sw, swn, sp, sa, sv, scs, scr, sc, dw, dwn, dp, da, dv, ds, dsn, dsns, dcs, dcr, dc, _proto, flags, csp] =
        t;
    let ds =
        if passthrough && !o.host.is_empty() { crate::relay::http::route::strip_port(o.host).to_owned() } else { ds };
    [
        reporter,
        sw,
        swn,
        sp,
        sa,
        sv,
        scs,
        scr,
        sc,
        dw,
        dwn,
        dp,
        da,
        dv,
        ds,
        dsn,
        dsns,
        dcs,
        dcr,
        dc,
        if o.grpc { "grpc" } else { "http" }.to_owned(),
        o.status.to_string(),
        o.grpc_status.map(|g| g.to_string()).unwrap_or_default(),
        flags,
        csp,
    ]
}

/// The HTTP families of several registries in the Prometheus text format
/// 0.0.4, appended to `out`: each family once with HELP and TYPE.
pub fn render_text(registries: &[&HttpMetrics], out: &mut String) {
    use std::fmt::Write as _;
    let series: Vec<Entry> = registries.iter().flat_map(|m| m.snapshot()).collect();
    let labels: Vec<String> = series
        .iter()
        .map(|(l, _)| {
            let mut s = String::with_capacity(700);
            for (i, (k, v)) in HTTP_LABELS.iter().zip(l.iter()).enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(k);
                s.push_str("=\"");
                escape_into(&mut s, v);
                s.push('"');
            }
            s
        })
        .collect();
    let name = "istio_requests_total";
    let _ = writeln!(out, "# HELP {name} Total requests.\n# TYPE {name} counter");
    for ((_, s), l) in series.iter().zip(&labels) {
        let _ = writeln!(out, "{name}{{{l}}} {}", s.requests.load(Ordering::Relaxed));
    }
    // istio_stats.cc counts messages for gRPC only: the families hold the
    // gRPC series (`request_protocol` follows the workload labels).
    const PROTOCOL: usize = WORKLOAD_LABELS.len();
    type Count = fn(&HttpSeries) -> &AtomicU64;
    let counts: [(&str, &str, Count); 2] = [
        ("istio_request_messages_total", "Total gRPC messages received from the client.", |s| &s.request_messages),
        ("istio_response_messages_total", "Total gRPC messages sent to the client.", |s| &s.response_messages),
    ];
    for (name, help, pick) in counts {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for ((_, s), l) in series.iter().zip(&labels).filter(|((values, _), _)| values[PROTOCOL] == "grpc") {
            let _ = writeln!(out, "{name}{{{l}}} {}", pick(s).load(Ordering::Relaxed));
        }
    }
    type Pick = fn(&HttpSeries) -> &Histogram;
    let hists: [(&str, &str, Pick); 3] = [
        ("istio_request_duration_milliseconds", "Request duration in milliseconds.", |s| &s.duration_ms),
        ("istio_request_bytes", "Request sizes in bytes.", |s| &s.request_bytes),
        ("istio_response_bytes", "Response sizes in bytes.", |s| &s.response_bytes),
    ];
    for (name, help, pick) in hists {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for ((_, s), l) in series.iter().zip(&labels) {
            let (cum, count, sum) = pick(s).read();
            for (b, c) in BUCKETS.iter().zip(cum) {
                let _ = writeln!(out, "{name}_bucket{{{l},le=\"{b}\"}} {c}");
            }
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{name}_sum{{{l}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{l}}} {count}");
        }
    }
}
