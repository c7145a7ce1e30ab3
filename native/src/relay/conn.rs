//! The acceptor loop and the life of one connection: original destination,
//! classification, endpoint pick with connect retries and outlier reports,
//! then the two pumps.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::Connection;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::orig_dst::original_destination;
use super::splice::{pump, End, IdleClock, Pipe};
use super::tls::pump::{handshake, HandshakeError, Sides};
use super::tls::{expected_identity, istio_sni, peer_matches, PeerAuthentication, PeerIdentity, TlsIdentity};
use super::{monotonic_ms, Routes, Shared};
use crate::lb::{hash_key, Endpoint, Outcome, Rng, Verdict};

/// Outlier-detection sweeps (ejected endpoints coming back) run at least
/// this often even when no outcome is reported.
const TICK_EVERY_MS: u64 = 1000;

pub(crate) fn accept_loop(shared: Arc<Shared>, listeners: Vec<(TcpListener, SocketAddr)>, wake: RawFd) {
    let mut fds: Vec<libc::pollfd> =
        listeners.iter().map(|(l, _)| libc::pollfd { fd: l.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    fds.push(libc::pollfd { fd: wake, events: libc::POLLIN, revents: 0 });
    let mut next_id: u64 = 0;
    let mut last_tick = monotonic_ms();
    loop {
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, TICK_EVERY_MS as libc::c_int) };
        if shared.stopping.load(Ordering::SeqCst) || fds.last().is_some_and(|f| f.revents != 0) {
            return;
        }
        let now = monotonic_ms();
        if now.saturating_sub(last_tick) >= TICK_EVERY_MS {
            last_tick = now;
            shared.routes.load().lb.lb().tick(now);
        }
        if r <= 0 {
            continue;
        }
        for (i, (l, _)) in listeners.iter().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            loop {
                let stream = match l.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // EMFILE and friends: back off a little rather than spin.
                    Err(_) => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        break;
                    }
                };
                let c = &shared.counters;
                c.accepted.fetch_add(1, Ordering::Relaxed);
                if c.active.load(Ordering::Acquire) as usize >= shared.cfg.max_connections {
                    c.overflow.fetch_add(1, Ordering::Relaxed);
                    reset(&stream);
                    continue;
                }
                c.active.fetch_add(1, Ordering::AcqRel);
                next_id += 1;
                let id = next_id;
                let sh = shared.clone();
                let spawned = shared.pool.execute(move || {
                    let _active = Active(&sh.counters.active);
                    serve(&sh, stream, id);
                });
                if spawned.is_err() {
                    c.active.fetch_sub(1, Ordering::AcqRel);
                    c.overflow.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Decrements the active-connection count when a connection thread ends.
struct Active<'a>(&'a AtomicU64);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Closes with RST (SO_LINGER 0) instead of FIN, so the peer sees an error,
/// not an empty reply.
fn reset(s: &TcpStream) {
    let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// Istio's inbound passthrough source addresses (`InboundPassthroughBindIpv4/6`):
/// the capture rules return `-o lo -s 127.0.0.6` first, so the proxy's own
/// connection to the local app is not redirected back to it.
const INBOUND_SOURCE_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
const INBOUND_SOURCE_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

fn connect(addr: SocketAddr, shared: &Shared) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(m) = shared.cfg.mark {
        s.set_mark(m)?;
    }
    if shared.cfg.inbound {
        let src: SocketAddr = match addr {
            SocketAddr::V4(_) => (INBOUND_SOURCE_V4, 0).into(),
            SocketAddr::V6(_) => {
                // ::6 is not an address of lo by default; free-bind lets the
                // socket use it (replies need ::6 routed locally).
                s.set_freebind_v6(true)?;
                (INBOUND_SOURCE_V6, 0).into()
            }
        };
        s.bind(&src.into())?;
    }
    s.set_tcp_nodelay(true)?;
    s.connect_timeout(&addr.into(), shared.cfg.connect_timeout)?;
    Ok(s.into())
}

/// One connect to where the connection was going (passthrough, bypass, the
/// inbound app), counted; when it fails the client is reset and None.
fn connect_direct(shared: &Shared, client: &TcpStream, orig: SocketAddr) -> Option<TcpStream> {
    let c = &shared.counters;
    c.connect_attempts.fetch_add(1, Ordering::Relaxed);
    match connect(orig, shared) {
        Ok(up) => Some(up),
        Err(_) => {
            c.connect_failures.fetch_add(1, Ordering::Relaxed);
            c.upstream_failed.fetch_add(1, Ordering::Relaxed);
            reset(client);
            None
        }
    }
}

fn serve(shared: &Arc<Shared>, client: TcpStream, id: u64) {
    let c = &shared.counters;
    let _ = client.set_nodelay(true);
    let local = client.local_addr().ok();
    let v6 = local.is_some_and(|a| a.is_ipv6());
    let orig = match original_destination(client.as_raw_fd(), v6) {
        // Not redirected to us, or redirected to our own listener: relaying
        // would loop back into the proxy.
        Ok(o) if Some(o) != local && !shared.listen.lock().unwrap_or_else(|e| e.into_inner()).contains(&o) => o,
        _ => {
            c.no_original_dst.fetch_add(1, Ordering::Relaxed);
            reset(&client);
            return;
        }
    };
    if shared.cfg.inbound {
        match inbound_policy(shared, &client) {
            Inbound::Plaintext => {}
            Inbound::Tls(identity) => return inbound_tls(shared, client, orig, &identity, id),
            Inbound::Refused => return,
        }
    }
    let routes: Arc<Routes> = shared.routes.load_full();
    let redirect = routes.redirect.redirect();
    // Inbound (15006): every connection goes to the local app it was for
    // (Istio's InboundPassthroughCluster); no table applies.
    let verdict = if shared.cfg.inbound { Verdict::Passthrough } else { redirect.classify(orig.ip(), orig.port()) };
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

/// Removes a connection from the open set when its relay ends.
struct Registered<'a>(&'a Shared, u64);

impl<'a> Registered<'a> {
    /// Adds the connection's descriptors to the open set (which `stop`
    /// shuts down); once the relay is stopping the client is reset instead
    /// and None returned. Checked under the set's lock, so `stop` never
    /// misses a connection registered concurrently.
    fn open(shared: &'a Shared, id: u64, client: &TcpStream, fds: [RawFd; 2]) -> Option<Self> {
        let mut open = shared.open.lock().unwrap_or_else(|e| e.into_inner());
        if shared.stopping.load(Ordering::SeqCst) {
            reset(client);
            return None;
        }
        open.insert(id, fds);
        Some(Registered(shared, id))
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.open.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.1);
    }
}

fn relay(shared: &Arc<Shared>, client: TcpStream, upstream: TcpStream, id: u64) {
    let c = &shared.counters;
    let (cfd, ufd) = (client.as_raw_fd(), upstream.as_raw_fd());
    let Some(registered) = Registered::open(shared, id, &client, [cfd, ufd]) else { return };
    let (p_up, p_down) = match (Pipe::new(shared.cfg.pipe_size), Pipe::new(shared.cfg.pipe_size)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => {
            reset(&client);
            reset(&upstream);
            drop(registered);
            return;
        }
    };
    // Either pump ending in an error shuts both sockets down, which wakes
    // the other pump out of its blocking splice.
    let both_down = || {
        // SAFETY: both descriptors are open until this function returns.
        unsafe {
            libc::shutdown(cfd, libc::SHUT_RDWR);
            libc::shutdown(ufd, libc::SHUT_RDWR);
        }
    };
    let idle = shared.cfg.idle_timeout.map(|t| {
        // Wake blocked reads twice per timeout to look at the shared clock.
        let wake = (t / 2).max(Duration::from_millis(10));
        let _ = SockRef::from(&client).set_read_timeout(Some(wake));
        let _ = SockRef::from(&upstream).set_read_timeout(Some(wake));
        Arc::new(IdleClock { last_ms: AtomicU64::new(monotonic_ms()), timeout_ms: t.as_millis() as u64 })
    });
    // The upstream -> client direction runs on a pool thread; this thread
    // waits for it before closing the descriptors it uses.
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<End>(1);
    let sh = shared.clone();
    let idle_down = idle.clone();
    let job = move || {
        let end = pump(ufd, cfd, &p_down, &sh.counters.bytes_received, idle_down.as_deref());
        // SAFETY: the descriptors stay open until `relay` has received `end`.
        unsafe {
            match end {
                // Upstream finished sending: pass the FIN on (half-close).
                End::Eof => libc::shutdown(cfd, libc::SHUT_WR),
                End::Error | End::Idle => {
                    libc::shutdown(cfd, libc::SHUT_RDWR);
                    libc::shutdown(ufd, libc::SHUT_RDWR)
                }
            };
        }
        let _ = done_tx.send(end);
    };
    let down = if shared.pool.execute(job).is_err() {
        both_down();
        End::Error
    } else {
        let up = pump(cfd, ufd, &p_up, &c.bytes_sent, idle.as_deref());
        match up {
            // SAFETY: descriptor open until this function returns.
            End::Eof => unsafe { libc::shutdown(ufd, libc::SHUT_WR) },
            End::Error | End::Idle => {
                both_down();
                0
            }
        };
        // A job that died without sending counts as an error.
        let down = done_rx.recv().unwrap_or(End::Error);
        if up == End::Error || down == End::Error {
            End::Error
        } else if up == End::Idle || down == End::Idle {
            End::Idle
        } else {
            End::Eof
        }
    };
    if down == End::Idle {
        // Closed with FIN both ways (the shutdowns above), like Envoy's idle timeout.
        c.idle_timeouts.fetch_add(1, Ordering::Relaxed);
    }
    if down == End::Error {
        c.resets.fetch_add(1, Ordering::Relaxed);
        reset(&client);
        reset(&upstream);
    }
    // Unregister before the descriptors close, so `stop` never shuts down a
    // reused descriptor number.
    drop(registered);
    drop(client);
    drop(upstream);
}

/// The identity to originate mTLS with to `ep`: only endpoints that take
/// Istio mTLS (`tlsMode: istio`, set by istiod for workloads with a
/// sidecar), and only while we hold an identity. Others stay plaintext on
/// the splice path.
fn tls_for(shared: &Shared, ep: &Endpoint) -> Option<Arc<TlsIdentity>> {
    if ep.meta.tls_mode != "istio" {
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
    let sni = istio_sni(cluster);
    let conn = identity
        .client(expect.clone(), sni.as_deref(), ep.address.ip(), shared.tls.session_resumption())
        .map(Connection::Client)
        .map_err(HandshakeError::Tls);
    secure(shared, conn, up, &expect, Instant::now() + shared.cfg.connect_timeout)
}

/// Runs `conn`'s handshake on `sock` until `deadline` (the connect timeout)
/// and checks the peer's SPIFFE identity again afterwards (a resumed session
/// does not go through the verifier); the outcome, a failure to set `conn`
/// up included, is counted in the TLS counters.
fn secure(
    shared: &Shared,
    conn: Result<Connection, HandshakeError>,
    sock: &TcpStream,
    expect: &PeerIdentity,
    deadline: Instant,
) -> Result<Connection, HandshakeError> {
    let t = &shared.tls.counters;
    let result = conn.and_then(|mut conn| {
        sock.set_nonblocking(true).map_err(HandshakeError::Io)?;
        handshake(&mut conn, sock.as_raw_fd(), deadline)?;
        if !peer_matches(&conn, expect) {
            return Err(HandshakeError::Tls(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )));
        }
        Ok(conn)
    });
    match &result {
        Ok(conn) => {
            if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                t.resumed.fetch_add(1, Ordering::Relaxed);
            }
            t.handshakes.fetch_add(1, Ordering::Relaxed)
        }
        Err(e) => {
            if e.is_peer_rejected() {
                t.peer_rejected.fetch_add(1, Ordering::Relaxed);
            }
            t.handshake_failures.fetch_add(1, Ordering::Relaxed)
        }
    };
    result
}

/// How long the inbound waits for a client's first bytes to tell TLS from
/// plaintext. Envoy's tls_inspector waits for the listener filter timeout;
/// Istio's inbound then continues as plaintext
/// (`continue_on_listener_filters_timeout`), which is what lets
/// server-first protocols through in PERMISSIVE mode, after this delay.
const DETECT_TIMEOUT: Duration = Duration::from_secs(5);

enum Inbound {
    /// Pass the bytes through to the app as they are.
    Plaintext,
    /// Terminate mTLS with this identity.
    Tls(Arc<TlsIdentity>),
    /// Closed (STRICT plaintext, no identity for STRICT, or the client left).
    Refused,
}

/// Istio's PeerAuthentication on the inbound listener. Without an identity
/// PERMISSIVE is plain passthrough with no inspection (the relay as it was
/// before mTLS); STRICT without one refuses everything (fail closed).
fn inbound_policy(shared: &Shared, client: &TcpStream) -> Inbound {
    let t = &shared.tls.counters;
    let mode = shared.tls.peer_authentication();
    let identity = shared.tls.identity();
    if mode == PeerAuthentication::Disable || (identity.is_none() && mode == PeerAuthentication::Permissive) {
        t.plaintext_passthrough.fetch_add(1, Ordering::Relaxed);
        return Inbound::Plaintext;
    }
    match detect(client, DETECT_TIMEOUT) {
        Detected::Closed => Inbound::Refused,
        Detected::Tls => match identity {
            Some(id) => Inbound::Tls(id),
            None => {
                t.plaintext_refused.fetch_add(1, Ordering::Relaxed);
                reset(client);
                Inbound::Refused
            }
        },
        Detected::Plain if mode == PeerAuthentication::Permissive => {
            t.plaintext_passthrough.fetch_add(1, Ordering::Relaxed);
            Inbound::Plaintext
        }
        Detected::Plain => {
            t.plaintext_refused.fetch_add(1, Ordering::Relaxed);
            reset(client);
            Inbound::Refused
        }
    }
}

enum Detected {
    Tls,
    Plain,
    Closed,
}

/// Envoy's tls_inspector, reduced to what the decision needs: a TLS
/// connection starts with a handshake record (content type 22, RFC 8446
/// §5.1) of a 3.x record version holding a ClientHello (handshake type 1).
/// The bytes are peeked, so the TLS layer or the app reads them all.
fn detect(client: &TcpStream, timeout: Duration) -> Detected {
    let fd = client.as_raw_fd();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 6];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Detected::Plain;
        }
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, left.as_millis().clamp(1, 60_000) as libc::c_int) };
        if r == 0 {
            return Detected::Plain;
        }
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n == 0 {
            return Detected::Closed;
        }
        if n < 0 {
            match std::io::Error::last_os_error().kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => continue,
                _ => return Detected::Closed,
            }
        }
        let n = n as usize;
        if buf[0] != 0x16 || (n >= 2 && buf[1] != 3) {
            return Detected::Plain;
        }
        if n >= 6 {
            return if buf[5] == 1 { Detected::Tls } else { Detected::Plain };
        }
        // Part of a record header: the rest is on its way.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The inbound mTLS side: handshake (the client's certificate and identity
/// checked by the server config's verifier), then the app is connected to
/// from 127.0.0.6 exactly as for plaintext, and the plaintext relayed.
fn inbound_tls(shared: &Arc<Shared>, client: TcpStream, orig: SocketAddr, identity: &TlsIdentity, id: u64) {
    // The ClientHello is read first, for the config to pick by its ALPN
    // (`TlsIdentity::inbound_config`); a malformed one fails here and is
    // counted by `secure` like any failed handshake. One deadline covers it
    // and the rest of the handshake.
    let deadline = Instant::now() + shared.cfg.connect_timeout;
    let server = client
        .set_nonblocking(true)
        .map_err(HandshakeError::Io)
        .and_then(|()| identity.accept(client.as_raw_fd(), deadline))
        .map(Connection::Server);
    let Ok(conn) = secure(shared, server, &client, &shared.tls.inbound_expect(identity), deadline) else {
        // A plain close (not a reset), so the alert just sent is read.
        return;
    };
    shared.counters.passthrough.fetch_add(1, Ordering::Relaxed);
    if let Some(up) = connect_direct(shared, &client, orig) {
        relay_tls(shared, client, up, conn, false, id);
    }
}

/// Relays a connection one side of which is TLS (`tls_upstream`: the
/// upstream, for outbound origination; else the client, inbound) on this
/// one thread (`super::tls::pump`); counters and teardown as [`relay`].
fn relay_tls(
    shared: &Arc<Shared>,
    client: TcpStream,
    upstream: TcpStream,
    mut conn: Connection,
    tls_upstream: bool,
    id: u64,
) {
    let c = &shared.counters;
    let (cfd, ufd) = (client.as_raw_fd(), upstream.as_raw_fd());
    let Some(registered) = Registered::open(shared, id, &client, [cfd, ufd]) else { return };
    let nonblocking = client.set_nonblocking(true).and_then(|_| upstream.set_nonblocking(true));
    let end = if nonblocking.is_err() {
        End::Error
    } else {
        // bytes_sent counts client -> upstream, bytes_received the reverse.
        let sides = if tls_upstream {
            Sides { tls: ufd, plain: cfd, to_tls: &c.bytes_sent, from_tls: &c.bytes_received }
        } else {
            Sides { tls: cfd, plain: ufd, to_tls: &c.bytes_received, from_tls: &c.bytes_sent }
        };
        super::tls::pump::pump(&mut conn, &sides, shared.cfg.idle_timeout)
    };
    match end {
        End::Eof => {}
        End::Idle => {
            c.idle_timeouts.fetch_add(1, Ordering::Relaxed);
            // SAFETY: both descriptors are open until the drops below.
            unsafe {
                libc::shutdown(cfd, libc::SHUT_RDWR);
                libc::shutdown(ufd, libc::SHUT_RDWR);
            }
        }
        End::Error => {
            c.resets.fetch_add(1, Ordering::Relaxed);
            reset(&client);
            reset(&upstream);
        }
    }
    drop(registered);
    drop(client);
    drop(upstream);
}
