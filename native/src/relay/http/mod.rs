//! The outbound HTTP path: connections captured to a port that has HTTP
//! routes (istiod's `0.0.0.0_<port>` listener with an HTTP connection
//! manager and RDS `"<port>"`) whose first bytes are HTTP are served per
//! request instead of spliced, as Envoy's HTTP connection manager and
//! router do on a sidecar:
//!
//! 1. protocol detection ([`detect`]): the HTTP/2 connection preface
//!    (RFC 9113 §3.4), or an HTTP/1.x request head (RFC 9112 §3) without an
//!    `Upgrade` field (WebSocket connections stay TCP), in the first bytes,
//!    peeked (never consumed) within `hello_timeout`;
//!    anything else, or nothing in time, goes on as TCP, as linkerd2-proxy's
//!    `linkerd/http/detect` falls back to opaque TCP and as Istio's
//!    `protocolDetectionTimeout` does;
//! 2. hyper serves the connection (HTTP/1.1 keep-alive or HTTP/2);
//! 3. each request is routed ([`route`]) and forwarded ([`proxy`]): weighted
//!    cluster, endpoint from the lbtable with the cluster's policy and
//!    outlier detection fed by every response, pooled upstream connections
//!    ([`pool`]), Istio mTLS with Istio's HTTP ALPN to `tlsMode: istio`
//!    endpoints, retries with a replay buffer and a retry budget, per-try
//!    and route timeouts, fault injection, header and URI rewrites,
//!    redirects, direct responses and mirroring.
//!
//! Routes are compiled off the hot path ([`HttpRoutes::build`]) and swapped
//! atomically; a connection keeps the routes it was accepted with.

mod body;
pub mod config;
pub mod metrics;
mod pool;
mod proxy;
pub mod route;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpStream;
use tokio::time::Instant;

pub use route::HttpRoutes;

use super::accept::Ctx;
use super::admit::Phase;
pub(super) use proxy::{serve, serve_inbound, serve_inbound_plain, Inbound};

/// The relay's HTTP state: routes, upstream pool, counters.
#[derive(Debug, Default)]
pub(crate) struct HttpState {
    pub(crate) routes: ArcSwap<HttpRoutes>,
    pub(crate) pool: pool::Pool,
    pub(crate) counters: HttpCounters,
    /// The inbound's upstream protocol per local app port, from istiod's
    /// `inbound|<port>||` clusters (`xds::http_protocol_of`: Some(true)
    /// HTTP/2, Some(false) HTTP/1.1, None the client's); a port not listed
    /// gets the client's.
    pub(crate) inbound_protocols: ArcSwap<std::collections::HashMap<u16, Option<bool>>>,
    /// Requests in flight and retries in flight, for the retry budget.
    pub(crate) requests_active: AtomicU64,
    pub(crate) retries_active: AtomicU64,
}

/// What the HTTP path did; read with `Relay::stats` (`http_*`).
#[derive(Debug, Default)]
pub(crate) struct HttpCounters {
    pub(crate) connections: AtomicU64,
    pub(crate) connections_h2: AtomicU64,
    /// Captured to an HTTP port but not HTTP: served as TCP.
    pub(crate) not_http: AtomicU64,
    /// HTTP/1 connections opening with an upgrade request: served as TCP.
    pub(crate) upgrades: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) no_route: AtomicU64,
    pub(crate) direct_responses: AtomicU64,
    pub(crate) redirects: AtomicU64,
    pub(crate) retries: AtomicU64,
    /// Retries not made: the budget was spent, or the body outgrew the
    /// replay buffer.
    pub(crate) retry_overflow: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) per_try_timeouts: AtomicU64,
    pub(crate) fault_aborts: AtomicU64,
    pub(crate) fault_delays: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) upstream_resets: AtomicU64,
    pub(crate) no_healthy_upstream: AtomicU64,
    pub(crate) unknown_cluster: AtomicU64,
    pub(crate) pool_reused: AtomicU64,
    pub(crate) mirrored: AtomicU64,
    pub(crate) mirror_skipped: AtomicU64,
    pub(crate) responses_5xx: AtomicU64,
}

impl HttpCounters {
    pub(crate) fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("http_connections", g(&self.connections)),
            ("http_connections_h2", g(&self.connections_h2)),
            ("http_not_http", g(&self.not_http)),
            ("http_upgrades_as_tcp", g(&self.upgrades)),
            ("http_requests", g(&self.requests)),
            ("http_no_route", g(&self.no_route)),
            ("http_direct_responses", g(&self.direct_responses)),
            ("http_redirects", g(&self.redirects)),
            ("http_retries", g(&self.retries)),
            ("http_retry_overflow", g(&self.retry_overflow)),
            ("http_timeouts", g(&self.timeouts)),
            ("http_per_try_timeouts", g(&self.per_try_timeouts)),
            ("http_fault_aborts", g(&self.fault_aborts)),
            ("http_fault_delays", g(&self.fault_delays)),
            ("http_connect_failures", g(&self.connect_failures)),
            ("http_upstream_resets", g(&self.upstream_resets)),
            ("http_no_healthy_upstream", g(&self.no_healthy_upstream)),
            ("http_unknown_cluster", g(&self.unknown_cluster)),
            ("http_pool_reused", g(&self.pool_reused)),
            ("http_mirrored", g(&self.mirrored)),
            ("http_mirror_skipped", g(&self.mirror_skipped)),
            ("http_responses_5xx", g(&self.responses_5xx)),
        ]
    }
}

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    /// HTTP/1 asking for a protocol upgrade: served as TCP.
    Upgrade,
    Other,
}

/// RFC 9113 §3.4.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes looked at, at most: a request line longer than this is not one
/// worth routing (linkerd2-proxy reads 1024 bytes for the same decision).
const DETECT_BYTES: usize = 2048;

/// Classifies the first bytes; None: not enough yet to tell.
pub fn classify(b: &[u8]) -> Option<Detected> {
    if b.is_empty() {
        return None;
    }
    if b.len() >= PREFACE.len() {
        if b.starts_with(PREFACE) {
            return Some(Detected::Http2);
        }
    } else if PREFACE.starts_with(b) {
        return None;
    }
    // An HTTP/1 request line starts with a method token (RFC 9110 §9:
    // tchar); TLS (0x16), SSH, database protocols... do not.
    if !b[0].is_ascii_alphabetic() {
        return Some(Detected::Other);
    }
    let Some(eol) = b.iter().position(|c| *c == b'\n') else {
        return if b.len() >= DETECT_BYTES || !b.iter().all(|c| c.is_ascii_graphic() || *c == b' ' || *c == b'\r') {
            Some(Detected::Other)
        } else {
            None
        };
    };
    let line = &b[..=eol];
    let mut headers: [httparse::Header<'_>; 0] = [];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(line) {
        Ok(_) | Err(httparse::Error::TooManyHeaders) if req.version.is_some() => {}
        _ => return Some(Detected::Other),
    }
    // An upgrade (WebSocket, h2c) takes the connection over after the
    // first exchange: such a connection stays on the L4 path, as it was
    // before the HTTP path existed (Istio's routes allow WebSocket
    // upgrades; this relay does not proxy upgraded streams per request).
    // So the head is read to its end (or as far as DETECT_BYTES goes).
    let end = b
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .or_else(|| b.windows(2).position(|w| w == b"\n\n").map(|p| p + 2));
    let head = match end {
        Some(e) => &b[..e],
        None if b.len() >= DETECT_BYTES => b,
        None => return None,
    };
    let upgrade = head.split(|c| *c == b'\n').skip(1).any(|l| l.len() > 8 && l[..8].eq_ignore_ascii_case(b"upgrade:"));
    Some(if upgrade { Detected::Upgrade } else { Detected::Http1 })
}

/// Waits for the connection's first bytes (peeked, left in the socket)
/// until they tell HTTP from anything else, within `hello_timeout`.
pub(super) async fn detect(ctx: Ctx<'_>, client: &TcpStream) -> Detected {
    ctx.st.set_phase(Phase::Hello);
    let deadline = Instant::now() + ctx.sh.cfg.hello_timeout;
    let mut buf = vec![0u8; DETECT_BYTES];
    loop {
        let n = match tokio::time::timeout_at(deadline, client.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Detected::Other,
        };
        if let Some(d) = classify(&buf[..n]) {
            return d;
        }
        // More bytes are coming (a peek returns at once while any are
        // queued): look again shortly.
        if Instant::now() >= deadline {
            return Detected::Other;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// [`detect`] for a path that serves HTTP per request: Some(h2) when the
/// client speaks HTTP/1.x (false) or HTTP/2 (true); None when the
/// connection is to be relayed as TCP, counted as an upgrade or as not HTTP.
pub(super) async fn detect_served(ctx: Ctx<'_>, client: &TcpStream) -> Option<bool> {
    let c = &ctx.sh.http.counters;
    match detect(ctx, client).await {
        Detected::Http1 => Some(false),
        Detected::Http2 => Some(true),
        Detected::Upgrade => {
            c.upgrades.fetch_add(1, Ordering::Relaxed);
            None
        }
        Detected::Other => {
            c.not_http.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests;
