//! The inbound path (Istio's inbound passthrough, port 15006): every
//! connection goes to the local app it was for, from 127.0.0.6 / ::6;
//! PeerAuthentication decides first whether it is plaintext passed through,
//! mTLS to terminate (a TLS ClientHello is detected by peeking, as Envoy's
//! tls_inspector does), or refused.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustls::Connection;

use super::accept::{connect_direct, relay, relay_tls, reset, secure};
use super::tls::pump::HandshakeError;
use super::tls::{PeerAuthentication, TlsIdentity};
use super::Shared;

/// Istio's inbound passthrough source addresses (`InboundPassthroughBindIpv4/6`):
/// the capture rules return `-o lo -s 127.0.0.6` first, so the proxy's own
/// connection to the local app is not redirected back to it.
pub(super) const INBOUND_SOURCE_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
pub(super) const INBOUND_SOURCE_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

/// An inbound connection to the local app at `orig`.
pub(super) fn serve(shared: &Arc<Shared>, client: TcpStream, orig: SocketAddr, id: u64) {
    match inbound_policy(shared, &client) {
        Inbound::Plaintext => {}
        Inbound::Tls(identity) => return inbound_tls(shared, client, orig, &identity, id),
        Inbound::Refused => return,
    }
    // Every connection goes to the local app it was for (Istio's
    // InboundPassthroughCluster); no table applies.
    shared.counters.passthrough.fetch_add(1, Ordering::Relaxed);
    if let Some(up) = connect_direct(shared, &client, orig) {
        relay(shared, client, up, id);
    }
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
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 6];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Detected::Plain;
        }
        let wait = Timespec::try_from(left.clamp(Duration::from_millis(1), Duration::from_secs(60)))
            .unwrap_or(Timespec { tv_sec: 60, tv_nsec: 0 });
        match poll(&mut [PollFd::new(client, PollFlags::IN)], Some(&wait)) {
            Ok(0) => return Detected::Plain,
            Ok(_) => {}
            // EINTR: wait again.
            Err(_) => continue,
        }
        // Readable (bytes, EOF or an error), and only this thread reads the
        // socket: the peek returns at once although the socket blocks.
        let n = match client.peek(&mut buf) {
            Ok(0) => return Detected::Closed,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => continue,
            Err(_) => return Detected::Closed,
        };
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
        .and_then(|()| identity.accept(&client, deadline))
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
