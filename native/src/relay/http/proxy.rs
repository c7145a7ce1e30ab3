//! One HTTP connection served, and each of its requests routed and
//! forwarded (Envoy's router filter, `source/common/router/router.cc`, with
//! the semantics of envoy/config/route/v3/route_components.proto and
//! `docs/root/configuration/http/http_filters/router_filter.rst`):
//!
//! - local replies as Envoy words them (`no healthy upstream`, `upstream
//!   request timeout`, `fault filter abort`, ...); to a gRPC request
//!   (content type `application/grpc*`) as a trailers-only gRPC response,
//!   its status mapped from the HTTP one as Envoy's
//!   `Grpc::Utility::httpToGrpcStatus` does;
//! - request headers: hop-by-hop ones dropped (RFC 9110 §7.6.1, `te:
//!   trailers` kept), `x-request-id` added when absent, `x-forwarded-proto`
//!   when absent, then the header mutations of the weighted cluster, the
//!   route, the virtual host and the configuration in that order, then the
//!   host and path rewrites;
//! - retries: up to `num_retries` more attempts, each on an endpoint not
//!   yet tried when the policy has the `previous_hosts` predicate, after a
//!   fully jittered exponential back-off (`[0, (2^n - 1) * base)`, capped at
//!   `max_interval`); retried on the policy's conditions: connect failure,
//!   reset before response headers, per-try timeout, 5xx / gateway errors /
//!   409 / listed statuses, and the gRPC statuses in response headers
//!   (trailers-only responses); a body larger than the replay buffer, or a
//!   spent retry budget (Envoy's `retry_budget` defaults: 20% of the active
//!   requests, at least 3 retries in flight), ends retrying;
//! - timeouts: the route timeout spans all attempts and back-offs until the
//!   response headers (504 `upstream request timeout`, never retried); the
//!   per-try timeout one attempt;
//! - mirrors get a copy of the request (host `<authority>-shadow`) once its
//!   body is complete and within the replay buffer; their responses are
//!   read and dropped.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::{self, BoxError, GrpcMessages, HttpBody, Replay, REPLAY_CAP};
use super::metrics::{Observed, Reporter};
use super::pool::{ConnectError, Downstream, Key};
use super::route::{
    Abort, Action, Forward, HashSpec, PortRoutes, Redirect, RetryOn, RetrySpec, Target, VirtualHost, MILLION,
};
use super::HttpState;
use crate::lb::{hash_key, EndpointState, LiveCluster, Outcome, Rng};
use crate::relay::accept::Ctx;
use crate::relay::accesslog::{Fields, HttpFields, RequestLog};
use crate::relay::admit::Phase;
use crate::relay::metrics::{Flags, InboundPeer, OutboundPeer, Route};
use crate::relay::mx::{self, PeerInfo};
use crate::relay::outbound::{pick, Picked};
use crate::relay::tls::{expected_identity, TlsIdentity};
use crate::relay::{monotonic_ms, Routes, Shared};

/// Envoy's names for the clusters istiod routes to outside the registry.
const PASSTHROUGH: &str = "PassthroughCluster";
const BLACKHOLE: &str = "BlackHoleCluster";
/// Request headers at most (Envoy's `max_request_headers_kb` default).
const MAX_HEAD_BYTES: u64 = 60 * 1024;
/// A route without a retry policy.
static NO_RETRY: RetrySpec = RetrySpec::NONE;

/// One downstream connection's view, shared by its requests.
struct Conn {
    sh: Arc<Shared>,
    port: Arc<PortRoutes>,
    tables: Arc<Routes>,
    orig: SocketAddr,
    peer: Option<IpAddr>,
    remote: Option<SocketAddr>,
    h2: bool,
    seq: AtomicU64,
    seed: u64,
    /// This connection's requests in flight (an idle timeout never ends a
    /// connection with one).
    active: AtomicU64,
    /// Served by the inbound: what its TLS handshake proved.
    inbound: Option<Inbound>,
}

/// An inbound connection's side of its requests' metrics
/// (`reporter="destination"`): the client's identity from its certificate
/// and ours, when mTLS.
#[derive(Debug, Default)]
pub(crate) struct Inbound {
    pub(crate) principal: Option<String>,
    pub(crate) local_principal: Option<String>,
}

impl Conn {
    fn http(&self) -> &HttpState {
        &self.sh.http
    }
}

/// Serves one connection already classified as HTTP (`h2`: it opened with
/// the HTTP/2 preface) until it ends, is idle for the relay's idle
/// timeout, or is killed (the caller's select).
pub(crate) async fn serve(
    ctx: Ctx<'_>,
    client: &TcpStream,
    orig: SocketAddr,
    port: Arc<PortRoutes>,
    tables: Arc<Routes>,
    h2: bool,
) {
    let io = Downstream { socket: client, st: ctx.st };
    serve_io(ctx, client, io, orig, port, tables, h2, None).await;
}

/// Serves the inbound's HTTP connection (`io`: the TLS connection, or the
/// socket itself) to the local app at `orig`: every request forwarded to
/// it with the inbound's one route (istiod's inbound route: any host, no
/// timeout, no retry), counted with `reporter="destination"`.
pub(crate) async fn serve_inbound<I>(ctx: Ctx<'_>, client: &TcpStream, io: I, orig: SocketAddr, h2: bool, side: Inbound)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let tables = ctx.sh.routes.load_full();
    serve_io(ctx, client, io, orig, super::route::PortRoutes::inbound(), tables, h2, Some(side)).await;
}

/// The inbound's plaintext HTTP connection: as [`serve_inbound`] on the
/// socket itself, with no identity on either side
/// (`connection_security_policy="none"`, `x-forwarded-proto: http`).
pub(crate) async fn serve_inbound_plain(ctx: Ctx<'_>, client: &TcpStream, orig: SocketAddr, h2: bool) {
    let io = Downstream { socket: client, st: ctx.st };
    serve_inbound(ctx, client, io, orig, h2, Inbound::default()).await;
}

#[allow(clippy::too_many_arguments)]
async fn serve_io<I>(
    ctx: Ctx<'_>,
    client: &TcpStream,
    io: I,
    orig: SocketAddr,
    port: Arc<PortRoutes>,
    tables: Arc<Routes>,
    h2: bool,
    inbound: Option<Inbound>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let sh = ctx.sh;
    let c = &sh.http.counters;
    c.connections.fetch_add(1, Ordering::Relaxed);
    if h2 {
        c.connections_h2.fetch_add(1, Ordering::Relaxed);
    }
    ctx.st.set_phase(Phase::Relay);
    // Its requests are logged one by one (Envoy's HTTP connection manager
    // logs requests, not the connection): no connection line.
    let conn = Arc::new(Conn {
        sh: sh.clone(),
        port,
        tables,
        orig,
        peer: client.peer_addr().ok().map(|a| a.ip()),
        remote: client.peer_addr().ok(),
        h2,
        seq: AtomicU64::new(0),
        seed: sh.seed ^ ctx.id.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        active: AtomicU64::new(0),
        inbound,
    });
    let watched = conn.clone();
    let svc = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(conn, req).await) }
    });
    let io = TokioIo::new(io);
    let idle = sh.cfg.idle_timeout;
    let serving = async {
        if h2 {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_concurrent_streams(1024)
                // Envoy's max_request_headers_kb default: 60 KiB.
                .max_header_list_size(MAX_HEAD_BYTES as u32)
                .keep_alive_interval(Duration::from_secs(60))
                .keep_alive_timeout(Duration::from_secs(20));
            let _ = b.serve_connection(io, svc).await;
        } else {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .keep_alive(true)
                .max_buf_size(64 * 1024)
                .header_read_timeout(Duration::from_secs(30));
            let _ = b.serve_connection(io, svc).await;
        }
    };
    tokio::pin!(serving);
    loop {
        let quiet = Duration::from_millis(monotonic_ms().saturating_sub(ctx.st.since_ms()));
        let wait = idle.map(|t| t.saturating_sub(quiet));
        tokio::select! {
            () = &mut serving => return,
            () = sleep_opt(wait) => {
                let quiet = Duration::from_millis(monotonic_ms().saturating_sub(ctx.st.since_ms()));
                if idle.is_some_and(|t| quiet >= t) && watched.active.load(Ordering::Relaxed) == 0 {
                    sh.counters.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if idle.is_some_and(|t| quiet >= t) {
                    // A request of this connection is in flight (a long
                    // poll, a slow upstream): look again later.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Counts a request in flight until dropped.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(a: &'a AtomicU64) -> InFlight<'a> {
        a.fetch_add(1, Ordering::Relaxed);
        InFlight(a)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus`.
fn grpc_status_of(http: u16) -> u32 {
    match http {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// A reply made here (Envoy's local reply), as gRPC to a gRPC request.
fn local_reply(status: u16, msg: &str, grpc: bool) -> Response<HttpBody> {
    if grpc {
        return grpc_reply(grpc_status_of(status), msg);
    }
    let mut r = Response::new(body::full(Bytes::from(msg.to_owned())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// A trailers-only gRPC response (gRPC over HTTP/2, "Trailers-Only").
fn grpc_reply(code: u32, msg: &str) -> Response<HttpBody> {
    let mut r = Response::new(body::empty());
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(msg) {
        h.insert("grpc-message", v);
    }
    r
}

/// RFC 9110 §7.6.1: the connection-specific fields, and those the
/// Connection field lists. `te: trailers` is kept (gRPC needs it).
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in [header::CONNECTION, header::TRANSFER_ENCODING, header::UPGRADE, header::PROXY_AUTHENTICATE] {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
    let te_trailers = h
        .get_all(header::TE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers"))));
    h.remove(header::TE);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn request_id(rng: &mut Rng) -> HeaderValue {
    let (a, b) = (rng.next_u64(), rng.next_u64());
    let s = format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    );
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

async fn handle(conn: Arc<Conn>, mut req: Request<Incoming>) -> Response<HttpBody> {
    let started = std::time::Instant::now();
    // The client's metadata exchange (inbound): read, and never passed to the app.
    let client_peer = if conn.inbound.is_some() { take_peer(req.headers_mut()) } else { None };
    let grpc = is_grpc(req.headers());
    let head = head_bytes(req.headers()) + uri_len(req.uri()) + req.method().as_str().len() as u64;
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_owned))
        .unwrap_or_default();
    let log = conn.sh.access_log.load().is_some().then(|| {
        let h = req.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        (
            std::time::SystemTime::now(),
            HttpFields {
                method: req.method().as_str().to_owned(),
                path: req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned(),
                protocol: match req.version() {
                    http::Version::HTTP_2 => "HTTP/2",
                    http::Version::HTTP_10 => "HTTP/1.0",
                    _ => "HTTP/1.1",
                },
                forwarded_for: get("x-forwarded-for"),
                user_agent: get("user-agent"),
                authority: host.clone(),
                ..HttpFields::default()
            },
        )
    });
    let (mut resp, mut meta) = route_request(&conn, req, host.clone(), grpc).await;
    if conn.inbound.is_some() {
        // Our workload back to an in-mesh client (istio/proxy peer_metadata:
        // the inbound propagates downstream when the client sent its own).
        let theirs = resp.headers_mut();
        theirs.remove(mx::header::METADATA);
        theirs.remove(mx::header::METADATA_ID);
        if client_peer.is_some() {
            put_peer(&conn.sh, theirs);
        }
        meta.peer = client_peer;
    }
    if resp.status().is_server_error() {
        conn.http().counters.responses_5xx.fetch_add(1, Ordering::Relaxed);
    }
    if !conn.sh.metrics.enabled() && log.is_none() {
        return resp;
    }
    let status = resp.status().as_u16();
    let grpc_status = grpc_status_in(resp.headers());
    let resp_head = head_bytes(resp.headers());
    let (parts, body) = resp.into_parts();
    let pending = Pending {
        conn,
        meta,
        started,
        grpc,
        status,
        grpc_status,
        request_head: head,
        response_bytes: resp_head,
        response_body: 0,
        response_messages: grpc.then(GrpcMessages::default),
        host,
        log,
    };
    Response::from_parts(parts, Observe { inner: body, pending: Some(pending) }.boxed_unsync())
}

/// What a request's metrics say beyond its response: where it went.
#[derive(Default)]
struct Meta {
    /// The cluster routed to; None: no route (or a local answer).
    cluster: Option<String>,
    passthrough: bool,
    workload: String,
    principal: Option<String>,
    local_principal: Option<String>,
    flags: Flags,
    replay: Option<Replay>,
    /// For the access log: the endpoint of the last attempt, the route's
    /// name, Envoy's response code details, why the last connect failed,
    /// the ms to the upstream's headers and the request id sent.
    upstream_host: Option<SocketAddr>,
    route_name: String,
    details: &'static str,
    transport_failure: String,
    service_time: Option<u64>,
    request_id: Option<HeaderValue>,
    /// The other side's metadata exchange: the upstream's response
    /// headers (outbound), the client's request headers (inbound).
    peer: Option<PeerInfo>,
}

impl Meta {
    fn flagged(flags: Flags, details: &'static str) -> Meta {
        Meta { flags, details, ..Meta::default() }
    }
}

/// The header bytes of a message, as HTTP/1.1 would write them (`name: value\r\n`).
fn head_bytes(h: &HeaderMap) -> u64 {
    h.iter().map(|(n, v)| (n.as_str().len() + v.len() + 4) as u64).sum()
}

/// The length of a request target as written, without writing it.
fn uri_len(u: &http::Uri) -> u64 {
    let pq = u.path_and_query().map_or(0, |p| p.as_str().len());
    let n = match (u.scheme_str(), u.authority()) {
        (Some(s), Some(a)) => s.len() + 3 + a.as_str().len() + pq,
        (None, Some(a)) => a.as_str().len() + pq,
        _ => pq,
    };
    n as u64
}

/// Removes a peer's metadata exchange headers and reads them; a value that
/// does not decode leaves the peer unknown.
fn take_peer(h: &mut HeaderMap) -> Option<PeerInfo> {
    let value = h.remove(mx::header::METADATA);
    let id = h.remove(mx::header::METADATA_ID);
    let v = value?;
    mx::parse_header(v.as_bytes(), id.as_ref().map_or(&b""[..], HeaderValue::as_bytes)).ok()
}

/// Adds our metadata exchange headers, when our workload is known.
fn put_peer(sh: &Shared, h: &mut HeaderMap) {
    let ours = sh.metrics.peer_headers();
    if !ours.known {
        return;
    }
    h.insert(mx::header::METADATA, ours.metadata.clone());
    h.insert(mx::header::METADATA_ID, ours.id.clone());
}

fn grpc_status_in(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

async fn route_request(
    conn: &Arc<Conn>,
    req: Request<Incoming>,
    authority: String,
    grpc: bool,
) -> (Response<HttpBody>, Meta) {
    let st = conn.http();
    let c = &st.counters;
    c.requests.fetch_add(1, Ordering::Relaxed);
    let _in_flight = InFlight::enter(&st.requests_active);
    let _on_conn = InFlight::enter(&conn.active);
    let n = conn.seq.fetch_add(1, Ordering::Relaxed);
    let mut rng = Rng::new(conn.seed ^ n.wrapping_mul(0xd6e8_feb8_6659_fd93));
    // Envoy's max_request_headers_kb default (60 KiB); HTTP/2 enforces it
    // in the codec, HTTP/1 here.
    if head_bytes(req.headers()) > MAX_HEAD_BYTES {
        return (
            local_reply(431, "request header fields too large", grpc),
            Meta::flagged(Flags::NONE, "request_headers_too_large"),
        );
    }
    let (parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let view = super::route::RequestView {
        method: parts.method.as_str(),
        authority: &authority,
        scheme: "http",
        path_and_query: &pq,
        headers: &parts.headers,
    };
    let port = conn.port.clone();
    let Some(vh) = port.virtual_host(&authority) else {
        c.no_route.fetch_add(1, Ordering::Relaxed);
        return (local_reply(404, "route_not_found", grpc), Meta::flagged(Flags::NO_ROUTE_FOUND, "route_not_found"));
    };
    let draw = rng.below(u64::from(MILLION)) as u32;
    let Some(route) = vh.routes.iter().find(|r| r.matches(&view, draw)) else {
        c.no_route.fetch_add(1, Ordering::Relaxed);
        return (local_reply(404, "route_not_found", grpc), Meta::flagged(Flags::NO_ROUTE_FOUND, "route_not_found"));
    };
    let (mut resp, meta) = match &route.action {
        Action::Direct { status, body } => {
            c.direct_responses.fetch_add(1, Ordering::Relaxed);
            let mut r = Response::new(body::full(body.clone()));
            *r.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if !body.is_empty() {
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            }
            (r, Meta::flagged(Flags::NONE, "direct_response"))
        }
        Action::Redirect(rd) => {
            c.redirects.fetch_add(1, Ordering::Relaxed);
            (redirect(rd, &authority, &pq, route), Meta::flagged(Flags::NONE, "direct_response"))
        }
        Action::Forward(fwd) => {
            let target = fwd.target(rng.next_u64());
            // Fault injection (envoy.filters.http.fault): the route's
            // config, else the virtual host's; delay, then abort.
            let mut fault_flags = Flags::NONE;
            if let Some(f) = route.fault.as_ref().or(vh.fault.as_ref()) {
                if let Some((d, share)) = f.delay {
                    if (rng.below(u64::from(MILLION)) as u32) < share {
                        c.fault_delays.fetch_add(1, Ordering::Relaxed);
                        fault_flags = Flags::DELAY_INJECTED;
                        tokio::time::sleep(d).await;
                    }
                }
                if let Some((what, share)) = f.abort {
                    if (rng.below(u64::from(MILLION)) as u32) < share {
                        c.fault_aborts.fetch_add(1, Ordering::Relaxed);
                        let r = match what {
                            Abort::Http(s) => local_reply(s, "fault filter abort", grpc),
                            Abort::Grpc(g) => grpc_reply(g, "fault filter abort"),
                        };
                        let meta = Meta {
                            cluster: Some(target.cluster.clone()),
                            passthrough: target.cluster == PASSTHROUGH,
                            flags: fault_flags.union(Flags::FAULT_INJECTED),
                            details: "fault_filter_abort",
                            ..Meta::default()
                        };
                        return (r, meta);
                    }
                }
            }
            let req = Prepared { parts, authority, pq, grpc };
            let (mut r, mut meta) = forward(conn, vh, route, fwd, target, req, body, rng).await;
            meta.flags = meta.flags.union(fault_flags);
            target.response_ops.apply(r.headers_mut());
            (r, meta)
        }
    };
    route.response_ops.apply(resp.headers_mut());
    vh.response_ops.apply(resp.headers_mut());
    port.response_ops.apply(resp.headers_mut());
    let mut meta = meta;
    meta.route_name.clone_from(&route.name);
    (resp, meta)
}

/// A request's metrics, counted when its response stream ends.
struct Pending {
    conn: Arc<Conn>,
    meta: Meta,
    started: std::time::Instant,
    grpc: bool,
    status: u16,
    grpc_status: Option<u32>,
    request_head: u64,
    response_bytes: u64,
    response_body: u64,
    /// The response's gRPC messages (gRPC requests).
    response_messages: Option<GrpcMessages>,
    host: String,
    /// When the access log is on: the request's start and its fields.
    log: Option<(std::time::SystemTime, HttpFields)>,
}

impl Pending {
    fn record(self) {
        let m = &self.meta;
        let route = match (&m.cluster, m.passthrough) {
            (_, true) => Route::Passthrough,
            (Some(c), false) => Route::Cluster(c),
            (None, false) => Route::Cluster(""),
        };
        let reporter = match &self.conn.inbound {
            Some(i) => Reporter::Destination(InboundPeer {
                principal: i.principal.as_deref(),
                local_principal: i.local_principal.as_deref(),
                mx: m.peer.as_ref(),
            }),
            None => Reporter::Source {
                route,
                peer: OutboundPeer {
                    workload: &m.workload,
                    principal: m.principal.as_deref(),
                    local_principal: m.local_principal.as_deref(),
                    mx: m.peer.as_ref(),
                },
            },
        };
        let o = Observed {
            reporter,
            host: &self.host,
            flags: m.flags,
            grpc: self.grpc,
            status: self.status,
            grpc_status: self.grpc_status,
        };
        let body_in = m.replay.as_ref().map_or(0, Replay::bytes_read);
        let elapsed = self.started.elapsed();
        let metrics = &self.conn.sh.metrics;
        if metrics.enabled() {
            let ms = elapsed.as_secs_f64() * 1000.0;
            let messages =
                (m.replay.as_ref().map_or(0, Replay::messages), self.response_messages.as_ref().map_or(0, |g| g.count));
            metrics.http.record(&metrics.local(), &o, ms, (self.request_head + body_in, self.response_bytes), messages);
        }
        let Some((wall, mut http)) = self.log else { return };
        let Some(al) = self.conn.sh.access_log.load_full() else { return };
        http.code = self.status;
        http.details = m.details;
        http.service_time = m.service_time;
        http.transport_failure.clone_from(&m.transport_failure);
        http.route_name.clone_from(&m.route_name);
        http.request_id = m.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let cluster = match (&m.cluster, m.passthrough) {
            // istiod's inbound cluster name.
            _ if self.conn.inbound.is_some() => format!("inbound|{}||", self.conn.orig.port()),
            (_, true) => crate::relay::metrics::PASSTHROUGH_CLUSTER.to_owned(),
            (Some(c), false) => c.clone(),
            (None, false) => String::new(),
        };
        let fields = Fields {
            routed: true,
            flags: m.flags,
            cluster,
            upstream_host: m.upstream_host,
            upstream_local: None,
            downstream_local: Some(self.conn.orig),
            downstream_remote: self.conn.remote,
            server_name: String::new(),
        };
        al.log_request(&RequestLog {
            wall,
            duration: elapsed,
            received: body_in,
            sent: self.response_body,
            fields,
            http,
        });
    }
}

/// The response body downstream, counting its bytes and reading the gRPC
/// status of its trailers; the request's metrics are counted at its end
/// (or when dropped: the client went away).
struct Observe {
    inner: HttpBody,
    pending: Option<Pending>,
}

impl Observe {
    fn finish(&mut self) {
        if let Some(p) = self.pending.take() {
            p.record();
        }
    }
}

impl Drop for Observe {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for Observe {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(p), Some(d)) = (self.pending.as_mut(), f.data_ref()) {
                    p.response_bytes += d.len() as u64;
                    p.response_body += d.len() as u64;
                    if let Some(m) = p.response_messages.as_mut() {
                        m.feed(d);
                    }
                }
                if let (Some(p), Some(t)) = (self.pending.as_mut(), f.trailers_ref()) {
                    p.grpc_status = grpc_status_in(t).or(p.grpc_status);
                    p.response_bytes += head_bytes(t);
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn redirect(rd: &Redirect, authority: &str, pq: &str, route: &super::route::Route) -> Response<HttpBody> {
    let (path, query) = match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    };
    let scheme = rd.scheme.as_deref().unwrap_or("http");
    let mut host = rd.host.clone().unwrap_or_else(|| super::route::strip_port(authority).to_owned());
    let orig_port = authority.rsplit_once(':').map(|(_, p)| p).filter(|p| p.bytes().all(|b| b.is_ascii_digit()));
    match (rd.port, orig_port) {
        (Some(p), _) => host = format!("{host}:{p}"),
        // The request's port stays unless the scheme changes (Envoy drops
        // it on an https redirect).
        (None, Some(p)) if rd.scheme.is_none() && rd.host.is_none() => host = format!("{host}:{p}"),
        _ => {}
    }
    let new_path = if let Some(p) = &rd.path {
        p.clone()
    } else if let Some(pre) = &rd.prefix_rewrite {
        route.replace_prefix(pre, path).unwrap_or_else(|| path.to_owned())
    } else {
        path.to_owned()
    };
    let mut loc = format!("{scheme}://{host}{new_path}");
    if let (Some(q), false) = (query, rd.strip_query || new_path.contains('?')) {
        loc.push('?');
        loc.push_str(q);
    }
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::from_u16(rd.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(&loc) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The request as received, taken apart.
struct Prepared {
    parts: http::request::Parts,
    authority: String,
    pq: String,
    grpc: bool,
}

/// Where a cluster's requests go.
enum Dest {
    Cluster(Arc<LiveCluster>),
    Orig(SocketAddr),
    Dns(String, u16),
}

/// Whether requests to `dest` go over HTTP/2: as its cluster's protocol
/// options say (on the inbound, the local app port's inbound cluster's),
/// else as the client's.
fn upstream_h2(conn: &Conn, dest: &Dest) -> bool {
    match dest {
        Dest::Cluster(cl) => cl.spec().config.upstream_h2.unwrap_or(conn.h2),
        Dest::Orig(app) if conn.inbound.is_some() => {
            conn.http().inbound_protocols.load().get(&app.port()).copied().flatten().unwrap_or(conn.h2)
        }
        Dest::Orig(_) | Dest::Dns(..) => conn.h2,
    }
}

/// One attempt's endpoint.
struct Endpoint {
    addr: SocketAddr,
    /// Its `istio.workload` metadata ("" when none).
    workload: String,
    /// The cluster's endpoint, for outlier reports and LEAST_REQUEST.
    state: Option<(Arc<LiveCluster>, usize, Arc<EndpointState>)>,
    tls: Option<(Option<String>, crate::relay::tls::PeerIdentity)>,
}

/// How an attempt failed before response headers.
enum Failure {
    /// The client's request body failed (malformed, reset): Envoy's
    /// downstream protocol error, answered 400, never held against the
    /// upstream nor retried.
    Downstream,
    Connect {
        timed_out: bool,
        why: String,
    },
    Reset {
        refused: bool,
        why: String,
    },
    PerTry,
    Deadline,
    NoHealthy,
    NoIdentity,
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    conn: &Arc<Conn>,
    vh: &VirtualHost,
    route: &super::route::Route,
    fwd: &Forward,
    target: &Target,
    req: Prepared,
    body: Incoming,
    mut rng: Rng,
) -> (Response<HttpBody>, Meta) {
    let st = conn.http();
    let c = &st.counters;
    let start = Instant::now();
    let deadline = fwd.timeout.map(|t| start + t);
    let spec = fwd.retry.as_ref().or(vh.retry.as_ref()).unwrap_or(&NO_RETRY);
    let replay = Replay::new(body, REPLAY_CAP, req.grpc);
    let mut meta = Meta {
        cluster: Some(target.cluster.clone()),
        passthrough: target.cluster == PASSTHROUGH,
        replay: Some(replay.clone()),
        ..Meta::default()
    };
    let meta_request_id;
    let Prepared { mut parts, authority, pq, grpc } = req;

    // The headers every attempt sends.
    let mut headers = std::mem::take(&mut parts.headers);
    strip_hop_by_hop(&mut headers);
    // Ours are added per attempt, to in-mesh endpoints only; an app's own never pass.
    headers.remove(mx::header::METADATA);
    headers.remove(mx::header::METADATA_ID);
    if !headers.contains_key("x-request-id") {
        headers.insert("x-request-id", request_id(&mut rng));
    }
    meta_request_id = headers.get("x-request-id").cloned();
    if !headers.contains_key("x-forwarded-proto") {
        // https when the client's connection was TLS (Envoy's scheme of the downstream).
        let proto = if conn.inbound.as_ref().is_some_and(|i| i.local_principal.is_some()) { "https" } else { "http" };
        headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    }
    target.request_ops.apply(&mut headers);
    route.request_ops.apply(&mut headers);
    vh.request_ops.apply(&mut headers);
    conn.port.request_ops.apply(&mut headers);
    let up_authority = match &fwd.host_rewrite {
        Some(h) => h.to_str().unwrap_or(&authority).to_owned(),
        None => authority.clone(),
    };
    meta.request_id = meta_request_id;
    let path = route.rewrite_path(fwd, &pq).unwrap_or_else(|| pq.clone());
    let hash = request_hash(&fwd.hash, &headers, &pq, conn.peer);

    for m in &fwd.mirrors {
        if (rng.below(u64::from(MILLION)) as u32) < m.fraction {
            let shadow = format!("{}-shadow", super::route::strip_port(&up_authority));
            let h = headers.clone();
            let (conn, cluster, replay, method, path) =
                (conn.clone(), m.cluster.clone(), replay.clone(), parts.method.clone(), path.clone());
            tokio::spawn(async move { mirror(conn, cluster, method, path, shadow, h, replay).await });
        }
    }

    let dest = match target.cluster.as_str() {
        PASSTHROUGH => Dest::Orig(conn.orig),
        BLACKHOLE => {
            c.no_healthy_upstream.fetch_add(1, Ordering::Relaxed);
            meta.flags = Flags::NO_HEALTHY_UPSTREAM;
            meta.details = "cluster_not_found";
            return (local_reply(502, "blocked by REGISTRY_ONLY", grpc), meta);
        }
        name => match conn.tables.lb.lb().cluster(name) {
            Some(cl) => Dest::Cluster(cl),
            None => match conn.tables.logical_dns.get(name) {
                Some((h, p)) => Dest::Dns(h.clone(), *p),
                None => {
                    c.unknown_cluster.fetch_add(1, Ordering::Relaxed);
                    meta.flags = Flags::NO_CLUSTER_FOUND;
                    meta.details = "cluster_not_found";
                    return (local_reply(503, "no cluster", grpc), meta);
                }
            },
        },
    };
    let sni = crate::mesh::outbound_sni(&target.cluster);
    let up_h2 = upstream_h2(conn, &dest);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut identity: Option<Arc<TlsIdentity>> = None;
    let mut waited_identity = false;
    let mut last: Option<Failure>;
    let mut retries_done = 0u32;
    loop {
        let attempt = retries_done + 1;
        if let Some(d) = deadline {
            if Instant::now() >= d {
                last = Some(Failure::Deadline);
                break;
            }
        }
        let avoid: &[SocketAddr] = if spec.previous_hosts || retries_done > 0 { &tried } else { &[] };
        let ep = match choose(conn, &dest, hash, &mut rng, avoid, sni.as_deref(), &mut identity, &mut waited_identity)
            .await
        {
            Ok(ep) => ep,
            Err(f) => {
                let stop = matches!(f, Failure::NoHealthy);
                last = Some(f);
                if stop {
                    break;
                }
                tried.clear();
                if !may_retry(st, spec, &replay, retries_done, &last) {
                    break;
                }
                retries_done += 1;
                backoff(spec, retries_done, deadline, &mut rng).await;
                continue;
            }
        };
        tried.push(ep.addr);
        meta.upstream_host = Some(ep.addr);
        meta.workload.clone_from(&ep.workload);
        meta.principal = match &ep.tls {
            Some((_, crate::relay::tls::PeerIdentity::AnyOf(ids))) if ids.len() == 1 => Some(ids[0].clone()),
            _ => None,
        };
        meta.local_principal = ep.tls.as_ref().and(identity.as_ref()).map(|id| id.uri().to_owned());
        let _retry_slot = (retries_done > 0).then(|| InFlight::enter(&st.retries_active));
        if retries_done > 0 {
            c.retries.fetch_add(1, Ordering::Relaxed);
        }
        // The last attempt the policy allows takes the headers; earlier ones copy them.
        let mut h = if retries_done >= spec.num_retries { std::mem::take(&mut headers) } else { headers.clone() };
        if vh.attempt_count {
            h.insert("x-envoy-attempt-count", HeaderValue::from(attempt));
        }
        if ep.tls.is_some() {
            put_peer(&conn.sh, &mut h);
        }
        let until = match (deadline, spec.per_try) {
            (Some(d), Some(p)) => Some(d.min(Instant::now() + p)),
            (Some(d), None) => Some(d),
            (None, Some(p)) => Some(Instant::now() + p),
            (None, None) => None,
        };
        let key = Key { addr: ep.addr, h2: up_h2, tls: ep.tls.clone() };
        if let Some((_, _, s)) = &ep.state {
            s.request_started();
        }
        let started = Finish(ep.state.as_ref().map(|(_, _, s)| s.clone()));
        let sent_at = Instant::now();
        let attempt_fut = send_once(conn, &key, identity.as_ref(), &parts.method, &up_authority, &path, h, &replay);
        let outcome = match until {
            Some(u) => match tokio::time::timeout_at(u, attempt_fut).await {
                Ok(r) => r,
                Err(_) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        Err(Failure::Deadline)
                    } else {
                        Err(Failure::PerTry)
                    }
                }
            },
            None => attempt_fut.await,
        };
        let report = |o: Outcome| {
            if let Some((cl, i, _)) = &ep.state {
                cl.report(*i, o, false, monotonic_ms());
            }
        };
        match outcome {
            Ok((mut resp, back)) => {
                let status = resp.status().as_u16();
                if conn.inbound.is_none() {
                    meta.peer = take_peer(resp.headers_mut());
                }
                report(Outcome::Http(status));
                if retriable_response(spec, status, resp.headers()) && may_retry(st, spec, &replay, retries_done, &None)
                {
                    retries_done += 1;
                    drop(resp);
                    backoff(spec, retries_done, deadline, &mut rng).await;
                    continue;
                }
                meta.details = "via_upstream";
                meta.service_time = Some(sent_at.elapsed().as_millis() as u64);
                return (respond(conn, resp, back, key, started), meta);
            }
            Err(f) => {
                meta.flags = meta.flags.union(match &f {
                    Failure::Downstream => Flags::NONE,
                    Failure::Connect { .. } | Failure::NoIdentity => Flags::UPSTREAM_CONNECT_FAILURE,
                    Failure::Reset { .. } => Flags::UPSTREAM_CONNECTION_TERMINATION,
                    Failure::PerTry | Failure::Deadline => Flags::UPSTREAM_REQUEST_TIMEOUT,
                    Failure::NoHealthy => Flags::NO_HEALTHY_UPSTREAM,
                });
                match &f {
                    Failure::Connect { timed_out, .. } => {
                        c.connect_failures.fetch_add(1, Ordering::Relaxed);
                        report(if *timed_out { Outcome::Timeout } else { Outcome::ConnectFailure });
                    }
                    Failure::Reset { .. } => {
                        c.upstream_resets.fetch_add(1, Ordering::Relaxed);
                        if key.h2 {
                            st.pool.forget_h2(&key);
                        }
                        report(Outcome::Http(503));
                    }
                    Failure::PerTry => {
                        c.per_try_timeouts.fetch_add(1, Ordering::Relaxed);
                        report(Outcome::Timeout);
                    }
                    Failure::Deadline => report(Outcome::Timeout),
                    Failure::NoHealthy | Failure::NoIdentity | Failure::Downstream => {}
                }
                if let Failure::Connect { why, .. } = &f {
                    meta.transport_failure.clone_from(why);
                }
                let deadline_hit = matches!(f, Failure::Deadline);
                last = Some(f);
                drop(started);
                if deadline_hit || !may_retry(st, spec, &replay, retries_done, &last) {
                    break;
                }
                retries_done += 1;
                backoff(spec, retries_done, deadline, &mut rng).await;
            }
        }
    }
    meta.flags = meta.flags.union(match &last {
        Some(Failure::Downstream) => Flags::NONE,
        Some(Failure::Deadline) | Some(Failure::PerTry) => Flags::UPSTREAM_REQUEST_TIMEOUT,
        Some(Failure::NoHealthy) | None => Flags::NO_HEALTHY_UPSTREAM,
        Some(Failure::Connect { .. }) | Some(Failure::NoIdentity) => Flags::UPSTREAM_CONNECT_FAILURE,
        Some(Failure::Reset { .. }) => Flags::UPSTREAM_CONNECTION_TERMINATION,
    });
    if retries_done > 0 {
        meta.flags = meta.flags.union(Flags::RETRY_LIMIT_EXCEEDED);
    }
    meta.details = match &last {
        Some(Failure::Downstream) => "downstream_remote_disconnect",
        Some(Failure::Deadline) | Some(Failure::PerTry) => "upstream_response_timeout",
        Some(Failure::NoHealthy) | None => "no_healthy_upstream",
        Some(Failure::Connect { .. }) | Some(Failure::NoIdentity) => {
            "upstream_reset_before_response_started{connection_failure}"
        }
        Some(Failure::Reset { .. }) => "upstream_reset_before_response_started{connection_termination}",
    };
    let r = match last {
        Some(Failure::Downstream) => local_reply(400, "malformed request body", grpc),
        Some(Failure::Deadline) | Some(Failure::PerTry) => {
            c.timeouts.fetch_add(1, Ordering::Relaxed);
            local_reply(504, "upstream request timeout", grpc)
        }
        Some(Failure::NoHealthy) | None => {
            c.no_healthy_upstream.fetch_add(1, Ordering::Relaxed);
            local_reply(503, "no healthy upstream", grpc)
        }
        Some(Failure::NoIdentity) => local_reply(
            503,
            "upstream connect error or disconnect/reset before headers. reset reason: no workload certificate",
            grpc,
        ),
        Some(Failure::Connect { why, .. }) => local_reply(
            503,
            &format!("upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: {why}"),
            grpc,
        ),
        Some(Failure::Reset { why, .. }) => local_reply(
            503,
            &format!("upstream connect error or disconnect/reset before headers. reset reason: connection termination: {why}"),
            grpc,
        ),
    };
    (r, meta)
}

/// Whether another attempt may follow: attempts left, the body replayable,
/// the failure one the policy retries, and the budget not spent.
fn may_retry(st: &HttpState, spec: &RetrySpec, replay: &Replay, done: u32, failure: &Option<Failure>) -> bool {
    if done >= spec.num_retries {
        return false;
    }
    let on = spec.on;
    let wanted = match failure {
        None => true, // a response the caller already found retriable
        Some(Failure::Connect { .. }) | Some(Failure::NoIdentity) => {
            on.has(RetryOn::CONNECT_FAILURE)
                || on.has(RetryOn::FIVE_XX)
                || on.has(RetryOn::GATEWAY_ERROR)
                || on.has(RetryOn::RESET)
                || on.has(RetryOn::RESET_BEFORE_REQUEST)
        }
        Some(Failure::Reset { refused, .. }) => {
            on.has(RetryOn::RESET)
                || on.has(RetryOn::FIVE_XX)
                || on.has(RetryOn::GATEWAY_ERROR)
                || (*refused && on.has(RetryOn::REFUSED_STREAM))
        }
        Some(Failure::PerTry) => on.has(RetryOn::FIVE_XX) || on.has(RetryOn::GATEWAY_ERROR) || on.has(RetryOn::RESET),
        Some(Failure::Deadline) | Some(Failure::NoHealthy) | Some(Failure::Downstream) => false,
    };
    if !wanted {
        return false;
    }
    let c = &st.counters;
    if !replay.replayable() {
        c.retry_overflow.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    let active = st.requests_active.load(Ordering::Relaxed);
    let budget = (active / 5).max(3);
    if st.retries_active.load(Ordering::Relaxed) >= budget {
        c.retry_overflow.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    true
}

/// Whether a response calls for a retry under `spec`.
fn retriable_response(spec: &RetrySpec, status: u16, h: &HeaderMap) -> bool {
    let on = spec.on;
    if on.has(RetryOn::FIVE_XX) && status >= 500 {
        return true;
    }
    if on.has(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504) {
        return true;
    }
    if on.has(RetryOn::RETRIABLE_4XX) && status == 409 {
        return true;
    }
    if on.has(RetryOn::RETRIABLE_STATUS_CODES) && spec.statuses.contains(&status) {
        return true;
    }
    if on.has(RetryOn::ENVOY_RATELIMITED) && h.contains_key("x-envoy-ratelimited") {
        return true;
    }
    // gRPC statuses count only in response headers (trailers-only).
    if let Some(g) = h.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u32>().ok()) {
        let hit = match g {
            1 => on.has(RetryOn::GRPC_CANCELLED),
            4 => on.has(RetryOn::GRPC_DEADLINE_EXCEEDED),
            8 => on.has(RetryOn::GRPC_RESOURCE_EXHAUSTED),
            13 => on.has(RetryOn::GRPC_INTERNAL),
            14 => on.has(RetryOn::GRPC_UNAVAILABLE),
            _ => false,
        };
        if hit {
            return true;
        }
    }
    false
}

/// Envoy's back-off: retry `n` (1-based) waits a uniform `[0, (2^n - 1) *
/// base)`, at most `max`, never past the route deadline.
async fn backoff(spec: &RetrySpec, n: u32, deadline: Option<Instant>, rng: &mut Rng) {
    let mult = (1u64 << n.min(20)) - 1;
    let upper = spec.base.saturating_mul(mult as u32).min(spec.max);
    let ms = upper.as_micros() as u64;
    if ms == 0 {
        return;
    }
    let wait = Duration::from_micros(rng.below(ms));
    let until = Instant::now() + wait;
    let until = deadline.map_or(until, |d| d.min(until));
    tokio::time::sleep_until(until).await;
}

fn request_hash(specs: &[HashSpec], h: &HeaderMap, pq: &str, peer: Option<IpAddr>) -> Option<u64> {
    for s in specs {
        let key: Option<String> = match s {
            HashSpec::Header(n) => h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned),
            HashSpec::SourceIp => peer.map(|p| p.to_string()),
            HashSpec::Cookie(name) => h.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
                v.split(';').find_map(|kv| {
                    let (k, val) = kv.trim().split_once('=')?;
                    (k == name).then(|| val.to_owned())
                })
            }),
            HashSpec::Query(name) => pq.split_once('?').and_then(|(_, q)| {
                q.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == name).then(|| v.to_owned())
                })
            }),
        };
        if let Some(k) = key {
            return Some(hash_key(k.as_bytes()));
        }
    }
    None
}

/// The endpoint for one attempt, and what it needs (identity for mTLS).
#[allow(clippy::too_many_arguments)]
async fn choose(
    conn: &Conn,
    dest: &Dest,
    hash: Option<u64>,
    rng: &mut Rng,
    avoid: &[SocketAddr],
    sni: Option<&str>,
    identity: &mut Option<Arc<TlsIdentity>>,
    waited: &mut bool,
) -> Result<Endpoint, Failure> {
    let sh = &conn.sh;
    match dest {
        Dest::Orig(a) => Ok(Endpoint { addr: *a, workload: String::new(), state: None, tls: None }),
        Dest::Dns(host, port) => {
            let addrs: Vec<SocketAddr> =
                match tokio::time::timeout(sh.cfg.connect_timeout, tokio::net::lookup_host((host.as_str(), *port)))
                    .await
                {
                    Ok(Ok(a)) => a.collect(),
                    _ => Vec::new(),
                };
            let a = addrs.iter().find(|a| !avoid.contains(a)).or(addrs.first()).ok_or(Failure::NoHealthy)?;
            Ok(Endpoint { addr: *a, workload: String::new(), state: None, tls: None })
        }
        Dest::Cluster(cl) => {
            let Picked { addr, index, istio, service_account, workload } =
                pick(sh, cl, hash, rng, avoid).ok_or(Failure::NoHealthy)?;
            let state = Some((cl.clone(), index, cl.state(index).clone()));
            if !istio {
                return Ok(Endpoint { addr, workload, state, tls: None });
            }
            if identity.is_none() {
                *identity = sh.tls.identity();
            }
            if identity.is_none() && !*waited {
                *waited = true;
                sh.tls.counters.identity_waits.fetch_add(1, Ordering::Relaxed);
                *identity = tokio::time::timeout(sh.cfg.connect_timeout, sh.tls.wait_identity()).await.ok();
            }
            let Some(id) = identity.as_ref() else {
                sh.tls.counters.no_identity.fetch_add(1, Ordering::Relaxed);
                return Err(Failure::NoIdentity);
            };
            let expect = expected_identity(&service_account, &workload, id.trust_domain());
            Ok(Endpoint { addr, workload, state, tls: Some((sni.map(str::to_owned), expect)) })
        }
    }
}

/// What an HTTP/1.1 connection returns to the pool once its response has
/// been read to the end.
type GiveBack = Option<hyper::client::conn::http1::SendRequest<HttpBody>>;

/// One request on one connection (pooled or new), to response headers.
#[allow(clippy::too_many_arguments)]
async fn send_once(
    conn: &Conn,
    key: &Key,
    identity: Option<&Arc<TlsIdentity>>,
    method: &http::Method,
    authority: &str,
    path: &str,
    headers: HeaderMap,
    replay: &Replay,
) -> Result<(Response<Incoming>, GiveBack), Failure> {
    let sh = &conn.sh;
    let st = conn.http();
    let (mut sender, reused) = st.pool.take(key, &sh.cfg, &sh.tls, identity).await.map_err(|e| match e {
        ConnectError::TimedOut => Failure::Connect { timed_out: true, why: "connect timeout".into() },
        ConnectError::Failed(why) => Failure::Connect { timed_out: false, why },
    })?;
    if reused {
        st.counters.pool_reused.fetch_add(1, Ordering::Relaxed);
    }
    let Some(req) = upstream_request(key, method.clone(), authority, path, headers, replay.attempt().boxed_unsync())
    else {
        return Err(Failure::Reset { refused: false, why: "invalid request target".into() });
    };
    match sender.send(req).await {
        Ok(resp) => Ok((resp, sender.into_h1())),
        Err(_) if replay.client_failed() => Err(Failure::Downstream),
        Err(e) => {
            let refused = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<h2::Error>())
                .is_some_and(|h| h.reason() == Some(h2::Reason::REFUSED_STREAM));
            Err(Failure::Reset { refused, why: e.to_string() })
        }
    }
}

/// The request one attempt (or a mirror) sends on `key`'s connection:
/// HTTP/2 carries the authority in the URI (`:authority`), HTTP/1.1 in
/// `Host`. None: the target is not a valid URI.
fn upstream_request(
    key: &Key,
    method: http::Method,
    authority: &str,
    path: &str,
    mut headers: HeaderMap,
    body: HttpBody,
) -> Option<Request<HttpBody>> {
    let uri = if key.h2 {
        headers.remove(header::HOST);
        format!("http://{authority}{path}").parse().ok()?
    } else {
        if let Ok(v) = HeaderValue::from_str(authority) {
            headers.insert(header::HOST, v);
        }
        path.parse().ok()?
    };
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Some(req)
}

/// Ends an endpoint's active request (LEAST_REQUEST) when dropped.
struct Finish(Option<Arc<EndpointState>>);

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.request_finished();
        }
    }
}

/// The response to send downstream, its body streamed from upstream.
fn respond(
    conn: &Arc<Conn>,
    resp: Response<Incoming>,
    back: GiveBack,
    key: Key,
    started: Finish,
) -> Response<HttpBody> {
    let (mut parts, incoming) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = Upstream { inner: incoming, done: Some(Done { conn: conn.clone(), key, back, _started: started }) };
    Response::from_parts(parts, body.boxed_unsync())
}

struct Done {
    conn: Arc<Conn>,
    key: Key,
    back: GiveBack,
    _started: Finish,
}

/// An upstream response body; at its end the HTTP/1.1 connection goes back
/// to the pool.
struct Upstream {
    inner: Incoming,
    done: Option<Done>,
}

impl Upstream {
    /// The response was read to the end: the HTTP/1.1 connection is idle
    /// again. hyper stops polling a body that says it has ended (a known
    /// length all read), so this runs after every frame and on drop too.
    fn finish_if_ended(&mut self) {
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }

    fn give_back(&mut self) {
        if let Some(d) = self.done.take() {
            if let Some(s) = d.back {
                d.conn.http().pool.give_back(&d.key, s);
            }
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.finish_if_ended();
    }
}

impl Body for Upstream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Err(_))) => {
                self.done = None;
            }
            Poll::Ready(Some(Ok(_))) => self.finish_if_ended(),
            Poll::Pending => {}
        }
        r.map(|o| o.map(|x| x.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Sends a copy of a request to `cluster` once its body is complete; the
/// response is read and dropped.
async fn mirror(
    conn: Arc<Conn>,
    cluster: String,
    method: http::Method,
    path: String,
    authority: String,
    headers: HeaderMap,
    replay: Replay,
) {
    let st = conn.http();
    let c = &st.counters;
    let whole = tokio::time::timeout(Duration::from_secs(30), replay.complete()).await.ok().flatten();
    let (Some((data, trailers)), Some(cl)) = (whole, conn.tables.lb.lb().cluster(&cluster)) else {
        c.mirror_skipped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut rng = Rng::new(conn.seed ^ conn.seq.fetch_add(1, Ordering::Relaxed).rotate_left(17));
    let (mut identity, mut waited) = (None, false);
    let sni = crate::mesh::outbound_sni(&cluster);
    let dest = Dest::Cluster(cl);
    let up_h2 = upstream_h2(&conn, &dest);
    let Ok(ep) = choose(&conn, &dest, None, &mut rng, &[], sni.as_deref(), &mut identity, &mut waited).await else {
        c.mirror_skipped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let key = Key { addr: ep.addr, h2: up_h2, tls: ep.tls };
    let sh = &conn.sh;
    let Ok((mut sender, _)) = st.pool.take(&key, &sh.cfg, &sh.tls, identity.as_ref()).await else {
        c.mirror_skipped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Some(req) = upstream_request(&key, method, &authority, &path, headers, body::recorded(data, trailers)) else {
        return;
    };
    c.mirrored.fetch_add(1, Ordering::Relaxed);
    let sent = tokio::time::timeout(sh.cfg.connect_timeout.max(Duration::from_secs(10)), sender.send(req)).await;
    if let Ok(Ok(resp)) = sent {
        let back = sender.into_h1();
        let mut b = Upstream {
            inner: resp.into_body(),
            done: Some(Done { conn: conn.clone(), key, back, _started: Finish(None) }),
        };
        while let Some(Ok(_)) = std::future::poll_fn(|cx| Pin::new(&mut b).poll_frame(cx)).await {}
    }
}
