//! Envoy's access log for the relay's TCP connections and HTTP requests, in
//! Istio's formats: one line per TCP connection when it ends, as Envoy's
//! `tcp_proxy` access log writes it, and one per HTTP request when its
//! response ends, as the HTTP connection manager's does, with the format
//! istiod configures (istio/istio
//! `pilot/pkg/model/telemetry_logging.go`: `EnvoyTextLogFormat`, the same
//! format for HTTP and TCP, HTTP-only operators printing `-`;
//! `EnvoyJSONLogFormatIstio` for `accessLogEncoding: JSON`, missing values
//! `null`, numbers as numbers).
//!
//! Off the data path: a connection's task formats its line and offers it to
//! a bounded queue (`try_send`, never waiting); one writer thread appends
//! the lines to the file. A full queue drops the line and counts it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::metrics::Flags;
use crate::error::{Error, Result};

/// Lines queued at most before new ones are dropped.
pub const QUEUE: usize = 8192;

/// How a line is written (meshConfig `accessLogEncoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Text,
    Json,
}

/// What one connection did, filled in as it goes.
#[derive(Debug)]
pub(crate) struct ConnLog {
    wall: SystemTime,
    start: Instant,
    /// Bytes from the downstream (Envoy's `BYTES_RECEIVED`) and to it.
    pub(crate) received: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) fields: Mutex<Fields>,
}

/// The connection's addresses, cluster, flags and server name.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    /// Set when the connection reached a route (its metrics series was
    /// opened): only those are logged, as Envoy logs what reached a filter chain.
    pub(crate) routed: bool,
    pub(crate) flags: Flags,
    pub(crate) cluster: String,
    pub(crate) upstream_host: Option<SocketAddr>,
    pub(crate) upstream_local: Option<SocketAddr>,
    pub(crate) downstream_local: Option<SocketAddr>,
    pub(crate) downstream_remote: Option<SocketAddr>,
    pub(crate) server_name: String,
}

/// What an HTTP request adds to its line (the `%REQ(...)%`, `%PROTOCOL%`,
/// `%RESPONSE_CODE%`... operators a TCP line prints as `-`).
#[derive(Debug, Default)]
pub(crate) struct HttpFields {
    pub(crate) method: String,
    /// `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%`: the path before rewrites.
    pub(crate) path: String,
    /// `HTTP/1.1` or `HTTP/2`.
    pub(crate) protocol: &'static str,
    pub(crate) code: u16,
    /// `%RESPONSE_CODE_DETAILS%` (`via_upstream`, `route_not_found`, ...).
    pub(crate) details: &'static str,
    pub(crate) transport_failure: String,
    /// `%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%`: ms to the upstream's response headers.
    pub(crate) service_time: Option<u64>,
    pub(crate) forwarded_for: String,
    pub(crate) user_agent: String,
    pub(crate) request_id: String,
    pub(crate) authority: String,
    pub(crate) route_name: String,
}

/// One finished HTTP request: when it started, its byte counts (bodies),
/// the connection-level fields and its own.
#[derive(Debug)]
pub(crate) struct RequestLog {
    pub(crate) wall: SystemTime,
    pub(crate) duration: Duration,
    pub(crate) received: u64,
    pub(crate) sent: u64,
    pub(crate) fields: Fields,
    pub(crate) http: HttpFields,
}

impl ConnLog {
    pub(crate) fn new() -> ConnLog {
        ConnLog {
            wall: SystemTime::now(),
            start: Instant::now(),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            fields: Mutex::new(Fields::default()),
        }
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Fields) -> R) -> R {
        f(&mut self.fields.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The open access log: its queue and counters.
#[derive(Debug)]
pub struct AccessLog {
    encoding: Encoding,
    tx: Mutex<Option<SyncSender<String>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

impl AccessLog {
    /// Opens `path` for appending (created if missing) and starts its writer.
    pub fn open(path: &str, encoding: Encoding) -> Result<AccessLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::Io { path: path.to_owned(), source: e })?;
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        let writer = std::thread::Builder::new()
            .name("pymesh-accesslog".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(file);
                // Lines as they come; flushed whenever the queue is empty.
                while let Ok(first) = rx.recv() {
                    let mut line = Some(first);
                    while let Some(l) = line {
                        match out.write_all(l.as_bytes()) {
                            Ok(()) => c.written.fetch_add(1, Ordering::Relaxed),
                            Err(_) => c.failed.fetch_add(1, Ordering::Relaxed),
                        };
                        line = rx.try_recv().ok();
                    }
                    if out.flush().is_err() {
                        c.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let _ = out.flush();
            })
            .map_err(|e| Error::Io { path: "access log writer thread".into(), source: e })?;
        Ok(AccessLog { encoding, tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)), counts })
    }

    /// Queues the line of a connection that ended (dropped and counted when
    /// the queue is full).
    pub(crate) fn log(&self, c: &ConnLog) {
        let line = {
            let f = c.fields.lock().unwrap_or_else(|e| e.into_inner());
            if !f.routed {
                return;
            }
            let dur = c.start.elapsed();
            let (rx, tx) = (c.received.load(Ordering::Relaxed), c.sent.load(Ordering::Relaxed));
            match self.encoding {
                Encoding::Text => text(c.wall, dur, rx, tx, &f, None),
                Encoding::Json => json(c.wall, dur, rx, tx, &f, None),
            }
        };
        self.queue(line);
    }

    /// Queues the line of an HTTP request whose response ended.
    pub(crate) fn log_request(&self, r: &RequestLog) {
        let line = match self.encoding {
            Encoding::Text => text(r.wall, r.duration, r.received, r.sent, &r.fields, Some(&r.http)),
            Encoding::Json => json(r.wall, r.duration, r.received, r.sent, &r.fields, Some(&r.http)),
        };
        self.queue(line);
    }

    fn queue(&self, line: String) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let sent = match tx.as_ref() {
            Some(tx) => !matches!(tx.try_send(line), Err(TrySendError::Full(_) | TrySendError::Disconnected(_))),
            None => false,
        };
        if !sent {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines written, dropped (queue full), failed (write errors).
    pub fn stats(&self) -> (u64, u64, u64) {
        let c = &self.counts;
        (c.written.load(Ordering::Relaxed), c.dropped.load(Ordering::Relaxed), c.failed.load(Ordering::Relaxed))
    }

    /// Writes what is queued and stops the writer (also on drop).
    pub fn close(&self) {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(w) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = w.join();
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// Envoy's default `%START_TIME%`: `%Y-%m-%dT%H:%M:%S.%3fZ`, UTC.
pub fn start_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant, "chrono-Compatible
    // Low-Level Date Algorithms", days_from_civil's inverse).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

fn addr(a: Option<SocketAddr>) -> String {
    a.map_or_else(|| "-".to_owned(), |a| a.to_string())
}

fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// `EnvoyTextLogFormat` for a TCP connection (`http` None) or an HTTP request.
fn text(wall: SystemTime, dur: Duration, rx: u64, tx: u64, f: &Fields, http: Option<&HttpFields>) -> String {
    let mut s = String::with_capacity(256);
    let q = |v: &str| if v.is_empty() { "-".to_owned() } else { v.replace('"', "\\\"") };
    let head = match http {
        None => "- - -".to_owned(),
        Some(h) => format!("{} {} {}", dash(&h.method), q(&h.path), dash(h.protocol)),
    };
    let (code, details, failure) = match http {
        None => ("0".to_owned(), "-", "-".to_owned()),
        Some(h) => (h.code.to_string(), dash(h.details), q(&h.transport_failure)),
    };
    let service_time = http.and_then(|h| h.service_time).map_or_else(|| "-".to_owned(), |t| t.to_string());
    let req = |pick: fn(&HttpFields) -> &str| http.map_or_else(|| "-".to_owned(), |h| q(pick(h)));
    let _ = writeln!(
        s,
        "[{}] \"{head}\" {code} {} {details} - \"{failure}\" {rx} {tx} {} {service_time} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} {} {} {} {} {}",
        start_time(wall),
        f.flags.label(),
        dur.as_millis(),
        req(|h| &h.forwarded_for),
        req(|h| &h.user_agent),
        req(|h| &h.request_id),
        req(|h| &h.authority),
        addr(f.upstream_host),
        dash(&f.cluster),
        addr(f.upstream_local),
        addr(f.downstream_local),
        addr(f.downstream_remote),
        dash(&f.server_name),
        http.map_or("-", |h| dash(&h.route_name)),
    );
    s
}

/// A JSON string, or null for a missing value.
fn js(v: Option<&str>) -> String {
    match v {
        Some(s) if !s.is_empty() && s != "-" => serde_json::Value::String(s.to_owned()).to_string(),
        _ => "null".to_owned(),
    }
}

/// `EnvoyJSONLogFormatIstio` for a TCP connection (`http` None) or an HTTP
/// request, keys in Istio's order.
fn json(wall: SystemTime, dur: Duration, rx: u64, tx: u64, f: &Fields, http: Option<&HttpFields>) -> String {
    let a = |x: Option<SocketAddr>| x.map(|a| a.to_string());
    let h = |pick: fn(&HttpFields) -> &str| js(http.map(pick));
    let fields: [(&str, String); 24] = [
        ("start_time", js(Some(&start_time(wall)))),
        ("route_name", h(|h| &h.route_name)),
        ("method", h(|h| &h.method)),
        ("path", h(|h| &h.path)),
        ("protocol", h(|h| h.protocol)),
        ("response_code", http.map_or(0, |h| h.code).to_string()),
        // "-" without flags: Envoy's RESPONSE_FLAGS is that string, not an unset value.
        ("response_flags", serde_json::Value::String(f.flags.label()).to_string()),
        ("response_code_details", h(|h| h.details)),
        ("connection_termination_details", js(None)),
        ("upstream_transport_failure_reason", h(|h| &h.transport_failure)),
        ("bytes_received", rx.to_string()),
        ("bytes_sent", tx.to_string()),
        ("duration", dur.as_millis().to_string()),
        (
            "upstream_service_time",
            http.and_then(|h| h.service_time).map_or_else(|| "null".to_owned(), |t| t.to_string()),
        ),
        ("x_forwarded_for", h(|h| &h.forwarded_for)),
        ("user_agent", h(|h| &h.user_agent)),
        ("request_id", h(|h| &h.request_id)),
        ("authority", h(|h| &h.authority)),
        ("upstream_host", js(a(f.upstream_host).as_deref())),
        ("upstream_cluster", js(Some(&f.cluster))),
        ("upstream_local_address", js(a(f.upstream_local).as_deref())),
        ("downstream_local_address", js(a(f.downstream_local).as_deref())),
        ("downstream_remote_address", js(a(f.downstream_remote).as_deref())),
        ("requested_server_name", js(Some(&f.server_name))),
    ];
    let mut s = String::with_capacity(512);
    s.push('{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "\"{k}\":{v}");
    }
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_envoys_utc_with_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_653_813_042);
        assert_eq!(start_time(t), "2026-12-07T14:30:13.042Z");
        assert_eq!(start_time(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(start_time(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000Z");
    }

    fn fields() -> Fields {
        Fields {
            routed: true,
            flags: Flags::UPSTREAM_CONNECT_FAILURE,
            cluster: "outbound|9092||kafka.default.svc.cluster.local".into(),
            upstream_host: Some("10.0.0.9:9092".parse().unwrap()),
            upstream_local: Some("10.0.0.2:41000".parse().unwrap()),
            downstream_local: Some("10.96.0.9:9092".parse().unwrap()),
            downstream_remote: Some("127.0.0.1:56440".parse().unwrap()),
            server_name: String::new(),
        }
    }

    #[test]
    fn a_tcp_line_in_istios_text_format() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_653_813_042);
        let line = text(t, Duration::from_millis(12), 5, 7, &fields(), None);
        assert_eq!(
            line,
            "[2026-12-07T14:30:13.042Z] \"- - -\" 0 UF - - \"-\" 5 7 12 - \"-\" \"-\" \"-\" \"-\" \
             \"10.0.0.9:9092\" outbound|9092||kafka.default.svc.cluster.local 10.0.0.2:41000 \
             10.96.0.9:9092 127.0.0.1:56440 - -\n"
        );
        // Envoy's example line shape: 22 fields, "- - -" as one.
        let no_upstream = Fields { routed: true, flags: Flags::NO_HEALTHY_UPSTREAM, ..Default::default() };
        let l = text(t, Duration::ZERO, 0, 0, &no_upstream, None);
        assert!(l.ends_with("0 UH - - \"-\" 0 0 0 - \"-\" \"-\" \"-\" \"-\" \"-\" - - - - - -\n"), "{l}");
    }

    #[test]
    fn an_http_line_in_istios_text_and_json_formats() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_653_813_042);
        let http = HttpFields {
            method: "GET".into(),
            path: "/api/v1?x=1".into(),
            protocol: "HTTP/1.1",
            code: 200,
            details: "via_upstream",
            service_time: Some(3),
            user_agent: "curl/7.88.1".into(),
            request_id: "3f1c0a4e-1b2c-4d5e-8f90-123456789abc".into(),
            authority: "reviews:9080".into(),
            route_name: "default".into(),
            ..Default::default()
        };
        let mut f = fields();
        f.flags = Flags::NONE;
        let line = text(t, Duration::from_millis(4), 0, 295, &f, Some(&http));
        assert_eq!(
            line,
            "[2026-12-07T14:30:13.042Z] \"GET /api/v1?x=1 HTTP/1.1\" 200 - via_upstream - \"-\" 0 295 4 3 \"-\" \
             \"curl/7.88.1\" \"3f1c0a4e-1b2c-4d5e-8f90-123456789abc\" \"reviews:9080\" \"10.0.0.9:9092\" \
             outbound|9092||kafka.default.svc.cluster.local 10.0.0.2:41000 10.96.0.9:9092 127.0.0.1:56440 - default\n"
        );
        let v: serde_json::Value =
            serde_json::from_str(&json(t, Duration::from_millis(4), 0, 295, &f, Some(&http))).unwrap();
        assert_eq!(
            (v["method"].as_str(), v["path"].as_str(), v["protocol"].as_str()),
            (Some("GET"), Some("/api/v1?x=1"), Some("HTTP/1.1"))
        );
        assert_eq!((v["response_code"].as_u64(), v["upstream_service_time"].as_u64()), (Some(200), Some(3)));
        assert_eq!(
            (v["route_name"].as_str(), v["response_code_details"].as_str()),
            (Some("default"), Some("via_upstream"))
        );
        assert!(v["x_forwarded_for"].is_null());
    }

    #[test]
    fn a_tcp_line_in_istios_json_format() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_653_813_042);
        let line = json(t, Duration::from_millis(12), 5, 7, &fields(), None);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["start_time"], "2026-12-07T14:30:13.042Z");
        assert_eq!(v["response_flags"], "UF");
        assert_eq!(
            (v["bytes_received"].as_u64(), v["bytes_sent"].as_u64(), v["duration"].as_u64()),
            (Some(5), Some(7), Some(12))
        );
        assert!(v["method"].is_null() && v["requested_server_name"].is_null());
        assert_eq!(v["upstream_cluster"], "outbound|9092||kafka.default.svc.cluster.local");
        let keys: Vec<&str> = line
            .trim_matches(|c| c == '{' || c == '}' || c == '\n')
            .split(",\"")
            .map(|k| k.trim_start_matches('"').split('"').next().unwrap())
            .collect();
        assert_eq!(keys.first(), Some(&"start_time"));
        assert_eq!(keys.len(), 24);
    }

    #[test]
    fn lines_reach_the_file_and_a_full_queue_drops_and_counts() {
        let dir = std::env::temp_dir().join(format!("pymesh-al-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let log = AccessLog::open(path.to_str().unwrap(), Encoding::Text).unwrap();
        let c = ConnLog::new();
        c.with(|f| *f = fields());
        for _ in 0..3 {
            log.log(&c);
        }
        // Not routed: not logged.
        log.log(&ConnLog::new());
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert_eq!(log.stats(), (3, 0, 0));
        // After close the queue is gone: lines are dropped and counted, never block.
        log.log(&c);
        assert_eq!(log.stats().1, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
