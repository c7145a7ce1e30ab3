//! The acceptor loop and what every accepted connection goes through: its
//! original destination, the hand-off to the outbound ([`super::outbound`])
//! or inbound ([`super::inbound`]) path, and the plumbing both paths share:
//! connecting upstream, registering the sockets so `stop` can shut them
//! down, and the two relays (plaintext with `splice`, TLS on one thread).

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustls::Connection;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::inbound::{INBOUND_SOURCE_V4, INBOUND_SOURCE_V6};
use super::splice::{pump, End, IdleClock, Pipe};
use super::tls::pump::{handshake, HandshakeError, Sides};
use super::tls::{peer_matches, PeerIdentity};
use super::{inbound, monotonic_ms, original_destination, outbound, Shared};

/// Outlier-detection sweeps (ejected endpoints coming back) run at least
/// this often even when no outcome is reported.
const TICK_EVERY_MS: u64 = 1000;

pub(crate) fn accept_loop(shared: Arc<Shared>, listeners: Vec<(TcpListener, SocketAddr)>, wake: OwnedFd) {
    let mut fds: Vec<PollFd<'_>> = listeners.iter().map(|(l, _)| PollFd::new(l, PollFlags::IN)).collect();
    fds.push(PollFd::new(&wake, PollFlags::IN));
    let tick = Timespec::try_from(Duration::from_millis(TICK_EVERY_MS)).unwrap_or(Timespec { tv_sec: 1, tv_nsec: 0 });
    let mut next_id: u64 = 0;
    let mut last_tick = monotonic_ms();
    loop {
        let r = poll(&mut fds, Some(&tick)).unwrap_or(0);
        if shared.stopping.load(Ordering::SeqCst) || fds.last().is_some_and(|f| !f.revents().is_empty()) {
            return;
        }
        let now = monotonic_ms();
        if now.saturating_sub(last_tick) >= TICK_EVERY_MS {
            last_tick = now;
            shared.routes.load().lb.lb().tick(now);
        }
        if r == 0 {
            continue;
        }
        for (i, (l, _)) in listeners.iter().enumerate() {
            if fds[i].revents().is_empty() {
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
pub(super) fn reset(s: &TcpStream) {
    let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
}

pub(super) fn connect(addr: SocketAddr, shared: &Shared) -> std::io::Result<TcpStream> {
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
pub(super) fn connect_direct(shared: &Shared, client: &TcpStream, orig: SocketAddr) -> Option<TcpStream> {
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
    let orig = match original_destination(client.as_fd(), v6) {
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
        inbound::serve(shared, client, orig, id);
    } else {
        outbound::serve(shared, client, orig, id);
    }
}

/// Removes a connection from the open set when its relay ends.
struct Registered<'a>(&'a Shared, u64);

impl<'a> Registered<'a> {
    /// Adds the connection's sockets to the open set (which `stop` shuts
    /// down); once the relay is stopping the client is reset instead
    /// and None returned. Checked under the set's lock, so `stop` never
    /// misses a connection registered concurrently.
    fn open(shared: &'a Shared, id: u64, client: &Arc<TcpStream>, upstream: &Arc<TcpStream>) -> Option<Self> {
        let mut open = shared.open.lock().unwrap_or_else(|e| e.into_inner());
        if shared.stopping.load(Ordering::SeqCst) {
            reset(client);
            return None;
        }
        open.insert(id, [client.clone(), upstream.clone()]);
        Some(Registered(shared, id))
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.open.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.1);
    }
}

/// Shuts both sockets down (both directions), which wakes a pump blocked
/// in `splice` on either of them.
fn both_down(client: &TcpStream, upstream: &TcpStream) {
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
}

pub(super) fn relay(shared: &Arc<Shared>, client: TcpStream, upstream: TcpStream, id: u64) {
    let c = &shared.counters;
    let (client, upstream) = (Arc::new(client), Arc::new(upstream));
    let Some(registered) = Registered::open(shared, id, &client, &upstream) else { return };
    let (p_up, p_down) = match (Pipe::new(shared.cfg.pipe_size), Pipe::new(shared.cfg.pipe_size)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => {
            reset(&client);
            reset(&upstream);
            drop(registered);
            return;
        }
    };
    let idle = shared.cfg.idle_timeout.map(|t| {
        // Wake blocked reads twice per timeout to look at the shared clock.
        let wake = (t / 2).max(Duration::from_millis(10));
        let _ = SockRef::from(&*client).set_read_timeout(Some(wake));
        let _ = SockRef::from(&*upstream).set_read_timeout(Some(wake));
        Arc::new(IdleClock { last_ms: AtomicU64::new(monotonic_ms()), timeout_ms: t.as_millis() as u64 })
    });
    // The upstream -> client direction runs on a pool thread; either pump
    // ending in an error shuts both sockets down, which wakes the other
    // pump out of its blocking splice.
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<End>(1);
    let sh = shared.clone();
    let idle_down = idle.clone();
    let (cl, up) = (client.clone(), upstream.clone());
    let job = move || {
        let end = pump(&up, &cl, &p_down, &sh.counters.bytes_received, idle_down.as_deref());
        match end {
            // Upstream finished sending: pass the FIN on (half-close).
            End::Eof => {
                let _ = cl.shutdown(Shutdown::Write);
            }
            End::Error | End::Idle => both_down(&cl, &up),
        }
        // This thread's handles go before `relay` hears the end, so the
        // sockets close in `relay`, as they would without the pool.
        drop((cl, up));
        let _ = done_tx.send(end);
    };
    let down = if shared.pool.execute(job).is_err() {
        both_down(&client, &upstream);
        End::Error
    } else {
        let up = pump(&client, &upstream, &p_up, &c.bytes_sent, idle.as_deref());
        match up {
            End::Eof => {
                let _ = upstream.shutdown(Shutdown::Write);
            }
            End::Error | End::Idle => both_down(&client, &upstream),
        }
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
    // The open set holds the last other handles: unregistering lets the
    // sockets close when this function drops its own.
    drop(registered);
}

/// Runs `conn`'s handshake on `sock` until `deadline` (the connect timeout)
/// and checks the peer's SPIFFE identity again afterwards (a resumed session
/// does not go through the verifier); the outcome, a failure to set `conn`
/// up included, is counted in the TLS counters.
pub(super) fn secure(
    shared: &Shared,
    conn: Result<Connection, HandshakeError>,
    sock: &TcpStream,
    expect: &PeerIdentity,
    deadline: Instant,
) -> Result<Connection, HandshakeError> {
    let t = &shared.tls.counters;
    let result = conn.and_then(|mut conn| {
        sock.set_nonblocking(true).map_err(HandshakeError::Io)?;
        handshake(&mut conn, sock, deadline)?;
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

/// Relays a connection one side of which is TLS (`tls_upstream`: the
/// upstream, for outbound origination; else the client, inbound) on this
/// one thread (`super::tls::pump`); counters and teardown as [`relay`].
pub(super) fn relay_tls(
    shared: &Arc<Shared>,
    client: TcpStream,
    upstream: TcpStream,
    mut conn: Connection,
    tls_upstream: bool,
    id: u64,
) {
    let c = &shared.counters;
    let (client, upstream) = (Arc::new(client), Arc::new(upstream));
    let Some(registered) = Registered::open(shared, id, &client, &upstream) else { return };
    let nonblocking = client.set_nonblocking(true).and_then(|_| upstream.set_nonblocking(true));
    let end = if nonblocking.is_err() {
        End::Error
    } else {
        // bytes_sent counts client -> upstream, bytes_received the reverse.
        let sides = if tls_upstream {
            Sides { tls: &upstream, plain: &client, to_tls: &c.bytes_sent, from_tls: &c.bytes_received }
        } else {
            Sides { tls: &client, plain: &upstream, to_tls: &c.bytes_received, from_tls: &c.bytes_sent }
        };
        super::tls::pump::pump(&mut conn, &sides, shared.cfg.idle_timeout)
    };
    match end {
        End::Eof => {}
        End::Idle => {
            c.idle_timeouts.fetch_add(1, Ordering::Relaxed);
            both_down(&client, &upstream);
        }
        End::Error => {
            c.resets.fetch_add(1, Ordering::Relaxed);
            reset(&client);
            reset(&upstream);
        }
    }
    drop(registered);
}
