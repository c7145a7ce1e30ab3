//! The outbound path (Istio's `virtualOutbound`, port 15001): a captured
//! connection is classified by its original destination; a service's goes
//! to an endpoint of its cluster, picked with the cluster's policy, with
//! connect retries and outlier-detection reports, and Istio mTLS to
//! endpoints that take it; LOGICAL_DNS clusters are resolved per
//! connection; everything else goes where it was going.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use rustls::Connection;

use super::accept::{connect, connect_direct, relay, relay_tls, reset, secure};
use super::tls::pump::HandshakeError;
use super::tls::{expected_identity, TlsIdentity};
use super::{monotonic_ms, Routes, Shared};
use crate::lb::{hash_key, Endpoint, Outcome, Rng, Verdict};

/// An outbound connection (port 15001) to `orig`: classified by the
/// redirection table; a cluster's connection goes to one of its endpoints
/// (picked with the cluster's policy, connect retries, outlier reports,
/// mTLS origination per endpoint), anything else to `orig` itself.
pub(super) fn serve(shared: &Arc<Shared>, client: TcpStream, orig: SocketAddr, id: u64) {
    let c = &shared.counters;
    let routes: Arc<Routes> = shared.routes.load_full();
    let redirect = routes.redirect.redirect();
    let verdict = redirect.classify(orig.ip(), orig.port());
    let Verdict::Cluster(_) = verdict else {
        let counter = if verdict == Verdict::Bypass { &c.bypass } else { &c.passthrough };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(up) = connect_direct(shared, &client, orig) {
            relay(shared, client, up, id);
        }
        return;
    };
    let name = redirect.cluster_name(verdict).unwrap_or_default();
    let Some(cluster) = routes.lb.lb().cluster(name) else {
        match routes.logical_dns.get(name) {
            Some((host, port)) => logical_dns(shared, client, host, *port, id),
            None => {
                c.unknown_cluster.fetch_add(1, Ordering::Relaxed);
                reset(&client);
            }
        }
        return;
    };
    c.cluster.fetch_add(1, Ordering::Relaxed);
    let mut rng = Rng::new(shared.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
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
    for attempt in 0..shared.cfg.connect_attempts {
        // A fresh snapshot per attempt: a failure may just have ejected the
        // endpoint. Like Envoy's `previous_hosts` retry predicate, re-pick a
        // few times to avoid an endpoint that already failed.
        let snap = cluster.snapshot();
        let mut pick = None;
        for k in 0..3 {
            // A hash always lands on the same endpoint: once it failed,
            // re-pick at random (Envoy's retry host predicate does the same
            // job by re-hashing).
            pick = snap.pick(if k == 0 { hash } else { None }, &mut rng);
            match pick {
                Some(i) if tried.contains(&snap.endpoints()[i].address) => continue,
                _ => break,
            }
        }
        let Some(i) = pick else {
            c.no_healthy_upstream.fetch_add(1, Ordering::Relaxed);
            reset(&client);
            return;
        };
        let addr = snap.endpoints()[i].address;
        let index = cluster.endpoint_index(&addr).unwrap_or(i);
        if attempt > 0 {
            c.retries.fetch_add(1, Ordering::Relaxed);
        }
        c.connect_attempts.fetch_add(1, Ordering::Relaxed);
        match connect(addr, shared) {
            Ok(up) => {
                // Endpoints with a sidecar (tlsMode istio) get Istio mTLS
                // when we hold an identity; a failed handshake is a failed
                // connect, as in Envoy (the TLS transport socket's connect
                // is part of the upstream connection), so it is reported to
                // outlier detection and another endpoint is tried.
                let ep = &snap.endpoints()[i];
                let session = match tls_for(shared, ep) {
                    None => None,
                    Some(identity) => match originate(shared, &identity, &up, ep, name) {
                        Ok(conn) => Some(conn),
                        Err(e) => {
                            c.connect_failures.fetch_add(1, Ordering::Relaxed);
                            let outcome = if matches!(e, HandshakeError::Timeout) {
                                c.connect_timeouts.fetch_add(1, Ordering::Relaxed);
                                Outcome::Timeout
                            } else {
                                Outcome::ConnectFailure
                            };
                            cluster.report(index, outcome, false, monotonic_ms());
                            tried.push(addr);
                            continue;
                        }
                    },
                };
                cluster.report(index, Outcome::ConnectSuccess, false, monotonic_ms());
                // The connection is the endpoint's active request (LEAST_REQUEST).
                let state = cluster.state(index).clone();
                state.request_started();
                match session {
                    Some(conn) => relay_tls(shared, client, up, conn, true, id),
                    None => relay(shared, client, up, id),
                }
                state.request_finished();
                return;
            }
            Err(e) => {
                c.connect_failures.fetch_add(1, Ordering::Relaxed);
                // Envoy tells a connect timeout (LocalOriginTimeout, 504 when
                // local-origin errors are not split) from a refused or
                // unreachable connect (LocalOriginConnectFailed, 503).
                let outcome = if e.kind() == std::io::ErrorKind::TimedOut {
                    c.connect_timeouts.fetch_add(1, Ordering::Relaxed);
                    Outcome::Timeout
                } else {
                    Outcome::ConnectFailure
                };
                cluster.report(index, outcome, false, monotonic_ms());
                tried.push(addr);
            }
        }
    }
    c.upstream_failed.fetch_add(1, Ordering::Relaxed);
    reset(&client);
}

/// A LOGICAL_DNS cluster: resolve the host now (this thread may block; it
/// serves only this connection) and try its addresses in order, up to
/// `connect_attempts`. There is no endpoint state to report outcomes to.
fn logical_dns(shared: &Arc<Shared>, client: TcpStream, host: &str, port: u16, id: u64) {
    use std::net::ToSocketAddrs;
    let c = &shared.counters;
    c.cluster.fetch_add(1, Ordering::Relaxed);
    let addrs: Vec<SocketAddr> = match (host, port).to_socket_addrs() {
        Ok(a) => a.take(shared.cfg.connect_attempts as usize).collect(),
        Err(_) => Vec::new(),
    };
    if addrs.is_empty() {
        c.no_healthy_upstream.fetch_add(1, Ordering::Relaxed);
        reset(&client);
        return;
    }
    for (attempt, addr) in addrs.into_iter().enumerate() {
        if attempt > 0 {
            c.retries.fetch_add(1, Ordering::Relaxed);
        }
        c.connect_attempts.fetch_add(1, Ordering::Relaxed);
        match connect(addr, shared) {
            Ok(up) => return relay(shared, client, up, id),
            Err(_) => {
                c.connect_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    c.upstream_failed.fetch_add(1, Ordering::Relaxed);
    reset(&client);
}

/// The identity to originate mTLS with to `ep`: only endpoints that take
/// Istio mTLS (`tlsMode: istio`, set by istiod for workloads with a
/// sidecar), and only while we hold an identity. Others stay plaintext on
/// the splice path.
fn tls_for(shared: &Shared, ep: &Endpoint) -> Option<Arc<TlsIdentity>> {
    if ep.meta.tls_mode != crate::mesh::TLS_MODE_ISTIO {
        return None;
    }
    shared.tls.identity()
}

/// The mTLS handshake to an endpoint, its identity checked against its
/// EDS metadata, within the connect timeout.
fn originate(
    shared: &Shared,
    identity: &TlsIdentity,
    up: &TcpStream,
    ep: &Endpoint,
    cluster: &str,
) -> Result<Connection, HandshakeError> {
    let expect = expected_identity(&ep.meta.service_account, &ep.meta.workload, identity.trust_domain());
    let sni = crate::mesh::outbound_sni(cluster);
    let conn = identity
        .client(expect.clone(), sni.as_deref(), ep.address.ip(), shared.tls.session_resumption())
        .map(Connection::Client)
        .map_err(HandshakeError::Tls);
    secure(shared, conn, up, &expect, Instant::now() + shared.cfg.connect_timeout)
}
