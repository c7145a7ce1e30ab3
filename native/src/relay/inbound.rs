//! The inbound path (Istio's inbound passthrough, port 15006): every
//! connection goes to the local app it was for, from 127.0.0.6 / ::6;
//! PeerAuthentication decides first whether it is plaintext passed through,
//! mTLS to terminate (a TLS ClientHello is detected by peeking, as Envoy's
//! tls_inspector does), or refused. HTTP (by ALPN over mTLS; by its first
//! bytes in plaintext, when PERMISSIVE has already waited for them) is
//! served per request (`http::serve_inbound`), everything else relayed.
//! Plaintext with no inspection at all (DISABLE, or PERMISSIVE without an
//! identity) stays a pure relay: waiting there for a client's first bytes
//! would hold up server-first protocols (MySQL, SMTP) that never send any.
//!
//! Deadlines before the handshake: the ClientHello must have arrived within
//! `hello_timeout` of accept (3 s by default; before the hardening, the whole 10 s
//! handshake deadline, so 4,096 connections sending 11 bytes each held every
//! slot); the rest of the handshake within `connect_timeout` of accept.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rustls::Connection;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::accept::{connect_direct, relay, relay_tls, reset, secure, Ctx, Series};
use super::admit::Phase;
use super::http::Inbound as HttpInbound;
use super::metrics::{inbound_labels, Flags, InboundPeer, Late, Opened};
use super::outbound::negotiated_mx;
use super::tls::pump::{with_deadline, HandshakeError};
use super::tls::stream::TlsStream;
use super::tls::{peer_spiffe, PeerAuthentication, TlsIdentity};

/// Istio's inbound passthrough source addresses (`InboundPassthroughBindIpv4/6`):
/// the capture rules return `-o lo -s 127.0.0.6` first, so the proxy's own
/// connection to the local app is not redirected back to it.
pub(super) const INBOUND_SOURCE_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
pub(super) const INBOUND_SOURCE_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

/// An inbound connection to the local app at `orig`.
pub(super) async fn serve(ctx: Ctx<'_>, client: &TcpStream, orig: SocketAddr) {
    let accepted = Instant::now();
    let inspected = match inbound_policy(ctx, client, accepted).await {
        Inbound::Plaintext { inspected } => inspected,
        Inbound::Tls(identity) => return inbound_tls(ctx, client, orig, &identity, accepted).await,
        Inbound::Refused => return,
    };
    // Every connection goes to the local app it was for (Istio's
    // InboundPassthroughCluster); no table applies.
    ctx.sh.counters.passthrough.fetch_add(1, Ordering::Relaxed);
    if inspected {
        // A plaintext client that spoke first (PERMISSIVE): HTTP is served
        // per request as over mTLS (Istio's plaintext HTTP inbound chain),
        // with no identity on either side; anything else is relayed.
        if let Some(h2) = super::http::detect_served(ctx, client).await {
            return super::http::serve_inbound_plain(ctx, client, orig, h2).await;
        }
    }
    let none = InboundPeer::default();
    match connect_direct(ctx, client, orig).await {
        Some(up) => relay(ctx, client, &up.stream, &open(ctx, &none, Flags::NONE)).await,
        None => drop(open(ctx, &none, CONNECT_FAILED)),
    }
}

/// The app refused or did not answer: `UF` and, its one attempt used up, `URX`.
const CONNECT_FAILED: Flags = Flags::UPSTREAM_CONNECT_FAILURE.union(Flags::RETRY_LIMIT_EXCEEDED);

/// The connection's series (`reporter="destination"`), counted opened now
/// and closed when dropped. Only connections that got past the
/// PeerAuthentication check and the handshake are counted: a refused one
/// reaches no filter chain in Envoy, so no istio_stats filter sees it.
fn open(ctx: Ctx<'_>, peer: &InboundPeer<'_>, flags: Flags) -> Opened {
    let m = &ctx.sh.metrics;
    ctx.log.with(|f| {
        f.routed = true;
        f.flags = flags;
        f.cluster = INBOUND_CLUSTER.to_owned();
    });
    Opened::open_with(m, || inbound_labels(&m.local(), peer, flags))
}

/// Istio's cluster for inbound passthrough (istio `pilot/pkg/util/protocol`
/// `InboundPassthroughCluster`).
const INBOUND_CLUSTER: &str = "InboundPassthroughCluster";

/// How long the inbound waits, in PERMISSIVE mode, for a client's first
/// bytes before treating a silent connection as plaintext. Envoy's
/// tls_inspector waits for the listener filter timeout; Istio's inbound
/// then continues as plaintext (`continue_on_listener_filters_timeout`),
/// which is what lets server-first protocols through in PERMISSIVE mode,
/// after this delay. A connection that started a TLS record but never
/// completed its header is closed at `hello_timeout` instead.
const DETECT_TIMEOUT: Duration = Duration::from_secs(5);

enum Inbound {
    /// Pass the bytes through to the app, HTTP per request when `inspected`
    /// (the client's first bytes have arrived and are not TLS).
    Plaintext { inspected: bool },
    /// Terminate mTLS with this identity.
    Tls(Arc<TlsIdentity>),
    /// Closed (STRICT plaintext, no identity for STRICT, too slow, or the client left).
    Refused,
}

/// Istio's PeerAuthentication on the inbound listener. Without an identity
/// PERMISSIVE is plain passthrough with no inspection (the relay as it was
/// before mTLS); STRICT without one refuses everything (fail closed).
async fn inbound_policy(ctx: Ctx<'_>, client: &TcpStream, accepted: Instant) -> Inbound {
    let (sh, t) = (ctx.sh, &ctx.sh.tls.counters);
    let mode = sh.tls.peer_authentication();
    let identity = sh.tls.identity();
    if mode == PeerAuthentication::Disable || (identity.is_none() && mode == PeerAuthentication::Permissive) {
        t.plaintext_passthrough.fetch_add(1, Ordering::Relaxed);
        return Inbound::Plaintext { inspected: false };
    }
    ctx.st.set_phase(Phase::Hello);
    let hello_by = accepted + sh.cfg.hello_timeout;
    // STRICT: silence is never going to be served.
    let silent_by = if mode == PeerAuthentication::Permissive { accepted + DETECT_TIMEOUT } else { hello_by };
    match detect(client, silent_by, hello_by).await {
        Detected::Closed => Inbound::Refused,
        Detected::Tls => match identity {
            Some(id) => Inbound::Tls(id),
            None => {
                t.plaintext_refused.fetch_add(1, Ordering::Relaxed);
                reset(client);
                Inbound::Refused
            }
        },
        Detected::Silent if mode == PeerAuthentication::Permissive => {
            t.plaintext_passthrough.fetch_add(1, Ordering::Relaxed);
            Inbound::Plaintext { inspected: false }
        }
        Detected::Plain if mode == PeerAuthentication::Permissive => {
            t.plaintext_passthrough.fetch_add(1, Ordering::Relaxed);
            Inbound::Plaintext { inspected: true }
        }
        Detected::Plain => {
            t.plaintext_refused.fetch_add(1, Ordering::Relaxed);
            reset(client);
            Inbound::Refused
        }
        Detected::Silent | Detected::Partial => {
            sh.counters.hello_timeouts.fetch_add(1, Ordering::Relaxed);
            reset(client);
            Inbound::Refused
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Detected {
    Tls,
    Plain,
    /// No byte before the silence deadline.
    Silent,
    /// The start of a TLS record header, never completed by the hello deadline.
    Partial,
    Closed,
}

/// Envoy's tls_inspector, reduced to what the decision needs: a TLS
/// connection starts with a handshake record (content type 22, RFC 8446
/// §5.1) of a 3.x record version holding a ClientHello (handshake type 1).
/// The bytes are peeked (`MSG_PEEK`), so the TLS layer or the app reads them
/// all. When too few have arrived, the socket's readiness is cleared and
/// the task waits for the next segment (edge-triggered, as Envoy's listener
/// filters wait for more data), never polling in a loop.
pub(super) async fn detect(client: &TcpStream, silent_by: Instant, hello_by: Instant) -> Detected {
    let mut seen = 0usize;
    loop {
        let by = if seen == 0 { silent_by } else { hello_by };
        match tokio::time::timeout_at(by, client.readable()).await {
            Err(_) if seen == 0 => return Detected::Silent,
            Err(_) => return Detected::Partial,
            Ok(Err(_)) => return Detected::Closed,
            Ok(Ok(())) => {}
        }
        let mut buf = [0u8; 6];
        let peeked = client.try_io(Interest::READABLE, || {
            let n =
                rustix::net::recv(client, &mut buf[..], rustix::net::RecvFlags::PEEK).map_err(std::io::Error::from)?.0;
            let header = &buf[..n];
            let tls_so_far = n > 0 && header[0] == 0x16 && (n < 2 || header[1] == 3);
            if tls_so_far && n < 6 {
                // Part of a record header: wait for the rest.
                seen = n;
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match peeked {
            Ok(0) => return Detected::Closed,
            Ok(_) if buf[0] != 0x16 || buf[1] != 3 => return Detected::Plain,
            Ok(_) => return if buf[5] == 1 { Detected::Tls } else { Detected::Plain },
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {}
            Err(_) => return Detected::Closed,
        }
    }
}

/// Whether the negotiated ALPN is one of HTTP, and which: Some(true) for
/// HTTP/2. The inbound negotiates `h2` / `http/1.1` with a sidecar that
/// offers Istio's HTTP values (istio `pilot/pkg/networking/core`
/// `ALPNDownstreamWithMxc`: `istio-peer-exchange`, `h2`, `http/1.1`), and
/// Istio's own values with a client offering nothing else.
fn http_alpn(conn: &Connection) -> Option<bool> {
    match conn.alpn_protocol()? {
        b"h2" | b"istio-h2" => Some(true),
        b"http/1.1" | b"istio-http/1.1" | b"istio-http/1.0" => Some(false),
        _ => None,
    }
}

/// The inbound mTLS side: handshake (the client's certificate and identity
/// checked by the server config's verifier), then the app is connected to
/// from 127.0.0.6 exactly as for plaintext, and the plaintext relayed.
async fn inbound_tls(ctx: Ctx<'_>, client: &TcpStream, orig: SocketAddr, identity: &TlsIdentity, accepted: Instant) {
    let sh = ctx.sh;
    // The ClientHello is read first, for the config to pick by its ALPN
    // (`TlsIdentity::inbound_config`), by `hello_timeout`; a malformed one
    // fails here and is counted by `secure` like any failed handshake. The
    // rest of the handshake must be done by the connect timeout.
    let server = match with_deadline(accepted + sh.cfg.hello_timeout, identity.accept(client)).await {
        Err(HandshakeError::Timeout) => {
            sh.counters.hello_timeouts.fetch_add(1, Ordering::Relaxed);
            Err(HandshakeError::Timeout)
        }
        r => r.map(Connection::Server),
    };
    // A whole ClientHello: no longer among the first to be evicted.
    ctx.st.set_phase(Phase::Handshake);
    let Ok(conn) =
        secure(sh, server, client, &sh.tls.inbound_expect(identity), accepted + sh.cfg.connect_timeout).await
    else {
        // A plain close (not a reset), so the alert just sent is read.
        return;
    };
    sh.counters.passthrough.fetch_add(1, Ordering::Relaxed);
    if let Connection::Server(s) = &conn {
        let name = s.server_name().unwrap_or_default().to_owned();
        ctx.log.with(|f| f.server_name = name);
    }
    let principal = peer_spiffe(&conn);
    if let Some(h2) = http_alpn(&conn) {
        // Istio's inbound HTTP filter chain (chosen by the client's HTTP
        // ALPN): requests served and forwarded one by one.
        let side = HttpInbound { principal, local_principal: Some(identity.uri().to_owned()) };
        let io = TlsStream::new(client, conn, ctx.st);
        return super::http::serve_inbound(ctx, client, io, orig, h2, side).await;
    }
    let peer = InboundPeer { principal: principal.as_deref(), local_principal: Some(identity.uri()), mx: None };
    match connect_direct(ctx, client, orig).await {
        Some(up) if negotiated_mx(&conn) => {
            // The series waits for the client's metadata exchange.
            let late = Late::new(|mx| open(ctx, &InboundPeer { mx, ..peer }, Flags::NONE));
            let frame = super::mx::frame(&sh.metrics.local());
            relay_tls(ctx, client, &up.stream, conn, false, Series::Mx(frame, &late)).await;
        }
        Some(up) => relay_tls(ctx, client, &up.stream, conn, false, Series::Now(&open(ctx, &peer, Flags::NONE))).await,
        None => drop(open(ctx, &peer, CONNECT_FAILED)),
    }
}
