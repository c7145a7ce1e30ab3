//! The outbound path (Istio's `virtualOutbound`, port 15001): a captured
//! connection is classified by its original destination; a service's goes
//! to an endpoint of its cluster, picked with the cluster's policy, with
//! connect retries and outlier-detection reports, and Istio mTLS to
//! endpoints that take it; LOGICAL_DNS clusters are resolved per
//! connection; everything else goes where it was going.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rustls::Connection;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::accept::{connect, connect_direct, relay, relay_tls, reset, secure, Ctx, Series};
use super::admit::Phase;
use super::metrics::{outbound_labels, Flags, Late, Opened, OutboundPeer, Route};
use super::tls::pump::HandshakeError;
use super::tls::{expected_identity, peer_spiffe, TlsIdentity};
use super::{monotonic_ms, Counters, Routes, Shared};
use crate::lb::{hash_key, LiveCluster, Outcome, Rng, Verdict};

/// What a connection (or request) needs of the endpoint it picked (copied
/// out of the cluster's snapshot, which is not held across waits).
pub(super) struct Picked {
    pub(super) addr: SocketAddr,
    pub(super) index: usize,
    /// `tlsMode: istio`: Istio mTLS, never plaintext.
    pub(super) istio: bool,
    pub(super) service_account: String,
    pub(super) workload: String,
}

/// An endpoint of `cluster` by its policy, from a fresh snapshot (a failure
/// may just have ejected one). Like Envoy's `previous_hosts` retry
/// predicate, re-picks a few times to avoid an endpoint in `tried`.
pub(super) fn pick(
    sh: &Shared,
    cluster: &LiveCluster,
    hash: Option<u64>,
    rng: &mut Rng,
    tried: &[SocketAddr],
) -> Option<Picked> {
    let snap = cluster.snapshot();
    let mut pick = None;
    for k in 0..3 {
        // A hash always lands on the same endpoint: once it failed,
        // re-pick at random (Envoy's retry host predicate does the
        // same job by re-hashing).
        pick = snap.pick(if k == 0 { hash } else { None }, rng);
        match pick {
            Some(i) if tried.contains(&snap.endpoints()[i].address) => continue,
            _ => break,
        }
    }
    pick.map(|i| {
        let ep = &snap.endpoints()[i];
        Picked {
            addr: ep.address,
            index: cluster.endpoint_index(&ep.address).unwrap_or(i),
            istio: sh.cfg.auto_mtls && ep.meta.tls_mode == crate::mesh::TLS_MODE_ISTIO,
            service_account: ep.meta.service_account.clone(),
            workload: ep.meta.workload.clone(),
        }
    })
}

/// An outbound connection (port 15001) to `orig`: classified by the
/// redirection table; a cluster's connection goes to one of its endpoints
/// (picked with the cluster's policy, connect retries, outlier reports,
/// mTLS origination per endpoint), anything else to `orig` itself.
pub(super) async fn serve(ctx: Ctx<'_>, client: &TcpStream, orig: SocketAddr) {
    let (sh, c) = (ctx.sh, &ctx.sh.counters);
    let routes: Arc<Routes> = sh.routes.load_full();
    let redirect = routes.redirect.redirect();
    let verdict = redirect.classify(orig.ip(), orig.port());
    // A port with HTTP routes (istiod's `0.0.0.0_<port>` HTTP listener):
    // served per request when the client speaks HTTP, else as TCP below.
    if verdict != Verdict::Bypass {
        let port_routes = sh.http.routes.load().for_destination(orig).cloned();
        if let Some(pr) = port_routes {
            if let Some(h2) = super::http::detect_served(ctx, client).await {
                return super::http::serve(ctx, client, orig, pr, routes, h2).await;
            }
        }
    }
    let Verdict::Cluster(_) = verdict else {
        let counter = if verdict == Verdict::Bypass { &c.bypass } else { &c.passthrough };
        counter.fetch_add(1, Ordering::Relaxed);
        let none = OutboundPeer::default();
        match connect_direct(ctx, client, orig).await {
            Some(up) => relay(ctx, client, &up.stream, &open(ctx, Route::Passthrough, &none, Flags::NONE)).await,
            None => drop(open(ctx, Route::Passthrough, &none, CONNECT_FAILED)),
        }
        return;
    };
    let name = redirect.cluster_name(verdict).unwrap_or_default();
    to_cluster(ctx, client, &routes, name).await;
}

/// A connection for cluster `name` (from the redirection table, or a
/// gateway's SNI): an endpoint picked with the cluster's policy, connect
/// retries, outlier reports, mTLS origination per endpoint (never when
/// `auto_mtls` is off, as on a gateway, which passes the client's TLS on),
/// then relayed.
pub(super) async fn to_cluster(ctx: Ctx<'_>, client: &TcpStream, routes: &Routes, name: &str) {
    let (sh, c) = (ctx.sh, &ctx.sh.counters);
    let Some(cluster) = routes.lb.lb().cluster(name) else {
        match routes.logical_dns.get(name) {
            Some((host, port)) => logical_dns(ctx, client, name, host, *port).await,
            None => {
                c.unknown_cluster.fetch_add(1, Ordering::Relaxed);
                drop(open(ctx, Route::Cluster(name), &OutboundPeer::default(), Flags::NO_CLUSTER_FOUND));
                reset(client);
            }
        }
        return;
    };
    c.cluster.fetch_add(1, Ordering::Relaxed);
    ctx.st.set_phase(Phase::Connect);
    let mut rng = Rng::new(sh.seed ^ ctx.id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    // RING_HASH / MAGLEV: a TCP connection's only key is its source
    // (Istio's consistentHash.useSourceIp -> tcp_proxy hash_policy
    // source_ip); the key is the address's text, as `LbTable.pick(cluster,
    // hash_key="10.0.0.1")` takes it, so both give the same endpoint.
    let hash = if cluster.spec().config.policy.is_hashing() {
        client.peer_addr().ok().map(|a| hash_key(a.ip().to_string().as_bytes()))
    } else {
        None
    };
    let mut tried: Vec<SocketAddr> = Vec::new();
    // Set once this connection waited the connect timeout for an identity
    // in vain: later `tlsMode: istio` picks fail at once.
    let mut no_identity = false;
    // Envoy's response flags accumulate over the attempts (a connection
    // that succeeded on a retry still says UF), and the peer is the last
    // endpoint tried (the stream's upstream host).
    let mut flags = Flags::NONE;
    let mut last_workload = String::new();
    for attempt in 0..sh.cfg.connect_attempts {
        // A fresh snapshot per attempt: a failure may just have ejected the
        // endpoint. Like Envoy's `previous_hosts` retry predicate, re-pick a
        // few times to avoid an endpoint that already failed.
        let picked = pick(sh, &cluster, hash, &mut rng, &tried);
        let Some(ep) = picked else {
            c.no_healthy_upstream.fetch_add(1, Ordering::Relaxed);
            let peer = OutboundPeer { workload: &last_workload, ..Default::default() };
            drop(open(ctx, Route::Cluster(name), &peer, flags.union(Flags::NO_HEALTHY_UPSTREAM)));
            reset(client);
            return;
        };
        last_workload.clone_from(&ep.workload);
        if attempt > 0 {
            c.retries.fetch_add(1, Ordering::Relaxed);
        }
        // Endpoints with a sidecar (tlsMode istio) get Istio mTLS, and only
        // mTLS: without an identity yet, wait for one (bounded) rather than
        // send in the clear. Not reported to outlier detection:
        // the endpoint did nothing wrong, and ejecting every endpoint for
        // our own missing certificate would outlast it.
        let identity = if ep.istio {
            match identity_for(ctx, &mut no_identity).await {
                Some(id) => Some(id),
                None => {
                    tried.push(ep.addr);
                    continue;
                }
            }
        } else {
            None
        };
        c.connect_attempts.fetch_add(1, Ordering::Relaxed);
        let up = match connect(ctx, ep.addr).await {
            Ok(up) => up,
            Err(e) => {
                let outcome = connect_failed(c, e.kind() == std::io::ErrorKind::TimedOut);
                cluster.report(ep.index, outcome, false, monotonic_ms());
                tried.push(ep.addr);
                flags = flags.union(Flags::UPSTREAM_CONNECT_FAILURE);
                continue;
            }
        };
        // A failed handshake is a failed connect, as in Envoy (the TLS
        // transport socket's connect is part of the upstream connection), so
        // it is reported to outlier detection and another endpoint is tried.
        let session = match &identity {
            None => None,
            Some(identity) => match originate(ctx, identity, &up.stream, &ep, name).await {
                Ok(conn) => Some(conn),
                Err(e) => {
                    let outcome = connect_failed(c, matches!(e, HandshakeError::Timeout));
                    cluster.report(ep.index, outcome, false, monotonic_ms());
                    tried.push(ep.addr);
                    flags = flags.union(Flags::UPSTREAM_CONNECT_FAILURE);
                    continue;
                }
            },
        };
        cluster.report(ep.index, Outcome::ConnectSuccess, false, monotonic_ms());
        // The connection is the endpoint's active request (LEAST_REQUEST),
        // until its task ends, however it ends.
        let state = cluster.state(ep.index).clone();
        state.request_started();
        let _finished = Finished(&state);
        let principal = session.as_ref().and_then(peer_spiffe);
        let peer = OutboundPeer {
            workload: &ep.workload,
            principal: principal.as_deref(),
            local_principal: identity.as_deref().filter(|_| session.is_some()).map(TlsIdentity::uri),
            mx: None,
        };
        match session {
            Some(conn) if negotiated_mx(&conn) => {
                // The series waits for the upstream's metadata exchange.
                let late = Late::new(|mx| open(ctx, Route::Cluster(name), &OutboundPeer { mx, ..peer }, flags));
                let frame = super::mx::frame(&sh.metrics.local());
                relay_tls(ctx, client, &up.stream, conn, true, Series::Mx(frame, &late)).await;
            }
            Some(conn) => {
                let series = open(ctx, Route::Cluster(name), &peer, flags);
                relay_tls(ctx, client, &up.stream, conn, true, Series::Now(&series)).await;
            }
            None => relay(ctx, client, &up.stream, &open(ctx, Route::Cluster(name), &peer, flags)).await,
        }
        return;
    }
    c.upstream_failed.fetch_add(1, Ordering::Relaxed);
    let peer = OutboundPeer { workload: &last_workload, ..Default::default() };
    drop(open(ctx, Route::Cluster(name), &peer, flags.union(Flags::RETRY_LIMIT_EXCEEDED)));
    reset(client);
}

/// The handshake negotiated Istio's TCP metadata exchange.
pub(super) fn negotiated_mx(conn: &Connection) -> bool {
    conn.alpn_protocol() == Some(crate::mesh::alpn::PEER_EXCHANGE.as_bytes())
}

/// Every connect attempt failed: Envoy's tcp_proxy sets `UF` on the
/// failure and `URX` once `max_connect_attempts` are used up.
const CONNECT_FAILED: Flags = Flags::UPSTREAM_CONNECT_FAILURE.union(Flags::RETRY_LIMIT_EXCEEDED);

/// The connection's series (`reporter="source"`), counted opened now and
/// closed when dropped.
fn open(ctx: Ctx<'_>, route: Route<'_>, peer: &OutboundPeer<'_>, flags: Flags) -> Opened {
    let m = &ctx.sh.metrics;
    logged(ctx, route, flags);
    Opened::open_with(m, || outbound_labels(&m.local(), route, peer, flags))
}

/// The connection reached a route: its access-log line has a cluster and flags.
pub(super) fn logged(ctx: Ctx<'_>, route: Route<'_>, flags: Flags) {
    ctx.log.with(|f| {
        f.routed = true;
        f.flags = flags;
        f.cluster = match route {
            Route::Cluster(name) => name.to_owned(),
            Route::Passthrough => super::metrics::PASSTHROUGH_CLUSTER.to_owned(),
        };
    });
}

/// Ends an endpoint's active request when the connection's task ends
/// (also when it is evicted or stopped mid-relay).
pub(super) struct Finished<'a>(pub(super) &'a crate::lb::EndpointState);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The identity to originate with to a `tlsMode: istio` endpoint: the one
/// held, else the first published within the connect timeout; None (and
/// counted) when none came, or when this connection already waited in vain.
/// Counts a failed connect (or handshake) and says how outlier detection sees it:
/// Envoy tells a connect timeout (LocalOriginTimeout, 504 when local-origin
/// errors are not split) from a refused or unreachable connect
/// (LocalOriginConnectFailed, 503).
pub(super) fn connect_failed(c: &Counters, timed_out: bool) -> Outcome {
    c.connect_failures.fetch_add(1, Ordering::Relaxed);
    if timed_out {
        c.connect_timeouts.fetch_add(1, Ordering::Relaxed);
        Outcome::Timeout
    } else {
        Outcome::ConnectFailure
    }
}

pub(super) async fn identity_for(ctx: Ctx<'_>, waited_in_vain: &mut bool) -> Option<Arc<TlsIdentity>> {
    let tls = &ctx.sh.tls;
    if let Some(id) = tls.identity() {
        return Some(id);
    }
    if *waited_in_vain {
        return None;
    }
    tls.counters.identity_waits.fetch_add(1, Ordering::Relaxed);
    match tokio::time::timeout(ctx.sh.cfg.connect_timeout, tls.wait_identity()).await {
        Ok(id) => Some(id),
        Err(_) => {
            tls.counters.no_identity.fetch_add(1, Ordering::Relaxed);
            *waited_in_vain = true;
            None
        }
    }
}

/// A LOGICAL_DNS cluster: resolve the host now (getaddrinfo on the event
/// loop's blocking pool, within the connect timeout) and try its addresses
/// in order, up to `connect_attempts`. There is no endpoint state to report
/// outcomes to.
async fn logical_dns(ctx: Ctx<'_>, client: &TcpStream, name: &str, host: &str, port: u16) {
    let (sh, c) = (ctx.sh, &ctx.sh.counters);
    c.cluster.fetch_add(1, Ordering::Relaxed);
    ctx.st.set_phase(Phase::Connect);
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(sh.cfg.connect_timeout, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(a)) => a.take(sh.cfg.connect_attempts as usize).collect(),
            _ => Vec::new(),
        };
    let route = Route::Cluster(name);
    let none = OutboundPeer::default();
    if addrs.is_empty() {
        c.no_healthy_upstream.fetch_add(1, Ordering::Relaxed);
        drop(open(ctx, route, &none, Flags::NO_HEALTHY_UPSTREAM));
        reset(client);
        return;
    }
    let mut flags = Flags::NONE;
    for (attempt, addr) in addrs.into_iter().enumerate() {
        if attempt > 0 {
            c.retries.fetch_add(1, Ordering::Relaxed);
        }
        c.connect_attempts.fetch_add(1, Ordering::Relaxed);
        match connect(ctx, addr).await {
            Ok(up) => return relay(ctx, client, &up.stream, &open(ctx, route, &none, flags)).await,
            Err(e) => {
                c.connect_failures.fetch_add(1, Ordering::Relaxed);
                if e.kind() == std::io::ErrorKind::TimedOut {
                    c.connect_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                flags = flags.union(Flags::UPSTREAM_CONNECT_FAILURE);
            }
        }
    }
    c.upstream_failed.fetch_add(1, Ordering::Relaxed);
    drop(open(ctx, route, &none, flags.union(Flags::RETRY_LIMIT_EXCEEDED)));
    reset(client);
}

/// The mTLS handshake to an endpoint, its identity checked against its
/// EDS metadata, within the connect timeout.
async fn originate(
    ctx: Ctx<'_>,
    identity: &TlsIdentity,
    up: &TcpStream,
    ep: &Picked,
    cluster: &str,
) -> Result<Connection, HandshakeError> {
    let sh = ctx.sh;
    let expect = expected_identity(&ep.service_account, &ep.workload, identity.trust_domain());
    let sni = crate::mesh::outbound_sni(cluster);
    let conn = identity
        .client(expect.clone(), sni.as_deref(), ep.addr.ip(), sh.tls.session_resumption())
        .map(Connection::Client)
        .map_err(HandshakeError::Tls);
    secure(sh, conn, up, &expect, Instant::now() + sh.cfg.connect_timeout).await
}
