//! The accept tasks and what every accepted connection goes through: its
//! slot ([`super::admit`]), its original destination, the hand-off to the
//! outbound ([`super::outbound`]) or inbound ([`super::inbound`]) path, and
//! the plumbing both paths share: connecting upstream, the TLS handshake
//! with its identity check, and the two relays (plaintext with `splice`,
//! TLS through rustls), with the idle timeout and the end of a connection
//! (FIN, or RST after an error, an eviction or a stop).
//!
//! Everything here runs as tasks of the relay's event loop: nothing blocks
//! a thread, and a connection waiting for anything holds no thread.

use std::future::Future;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::Connection;
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;

use super::accesslog::ConnLog;
use super::admit::{ConnState, Phase, Refused};
use super::inbound::{INBOUND_SOURCE_V4, INBOUND_SOURCE_V6};
use super::limits::SourceKey;
use super::metrics::{ByteCount, Late, Opened, Tally};
use super::mx::{self, PeerInfo};
use super::splice::{pump, End};
use super::tls::pump::{handshake, with_deadline, HandshakeError, MxPump, Sides};
use super::tls::{peer_matches, PeerIdentity};
use super::{gateway, inbound, monotonic_ms, original_destination, outbound, Mode, Serving, Shared};

/// Outlier-detection sweeps (ejected endpoints coming back) run at least
/// this often even when no outcome is reported.
const TICK_EVERY: Duration = Duration::from_secs(1);

/// One connection's view of its relay: the shared state, this start's
/// slots and pools, and its own state (phase, idle clock, kill signal).
#[derive(Clone, Copy)]
pub(super) struct Ctx<'a> {
    pub(super) sh: &'a Arc<Shared>,
    pub(super) sv: &'a Serving,
    pub(super) st: &'a ConnState,
    pub(super) id: u64,
    /// What the access log will say of this connection.
    pub(super) log: &'a ConnLog,
}

pub(crate) async fn tick_loop(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(TICK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        shared.routes.load().lb.lb().tick(monotonic_ms());
    }
}

pub(crate) async fn accept_loop(shared: Arc<Shared>, serving: Arc<Serving>, listener: TcpListener) {
    let mut next_id: u64 = 0;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            // EMFILE and friends: back off a little rather than spin (the
            // limits keep our own connections below the descriptor budget,
            // so this is the rest of the process running out).
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let c = &shared.counters;
        c.accepted.fetch_add(1, Ordering::Relaxed);
        let slot = match serving.registry.admit(SourceKey::of(peer.ip())) {
            Ok((slot, evicted)) => {
                c.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
                slot
            }
            Err(why) => {
                match why {
                    Refused::Full => c.overflow.fetch_add(1, Ordering::Relaxed),
                    Refused::Source => c.source_overflow.fetch_add(1, Ordering::Relaxed),
                    Refused::Stopping => 0,
                };
                reset(&stream);
                continue;
            }
        };
        c.active.fetch_add(1, Ordering::AcqRel);
        next_id += 1;
        let id = next_id;
        let (sh, sv) = (shared.clone(), serving.clone());
        tokio::spawn(async move {
            let _active = Active(&sh.counters.active);
            let st = slot.state.clone();
            let log = ConnLog::new();
            log.with(|f| f.downstream_remote = Some(peer));
            let ctx = Ctx { sh: &sh, sv: &sv, st: &st, id, log: &log };
            tokio::select! {
                biased;
                () = st.killed() => {}
                () = serve(ctx, &stream) => {}
            }
            if let Some(al) = sh.access_log.load().as_ref() {
                al.log(&log);
            }
            if st.was_killed() {
                // Evicted or stopping: the client sees a reset, not an
                // orderly end (the upstream, if any, was reset by its guard).
                reset(&stream);
            }
            drop(slot);
        });
    }
}

/// Decrements the active-connection count when a connection's task ends.
struct Active<'a>(&'a AtomicU64);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Closes with RST (SO_LINGER 0) instead of FIN when the socket is closed,
/// so the peer sees an error, not an empty reply.
pub(super) fn reset(s: &impl AsFd) {
    let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// An upstream socket that is reset, not closed, when its connection is
/// killed (evicted or stopping) while it is open.
pub(super) struct Upstream<'a> {
    pub(super) stream: TcpStream,
    st: &'a ConnState,
}

impl Drop for Upstream<'_> {
    fn drop(&mut self) {
        if self.st.was_killed() {
            reset(&self.stream);
        }
    }
}

/// TCP keepalive (and TCP_USER_TIMEOUT as long) per `keepalive`.
pub(super) fn keepalive(s: &impl AsFd, time: Option<Duration>) {
    let Some(time) = time else { return };
    let interval = (time / 4).max(Duration::from_secs(1));
    let s = SockRef::from(s);
    let _ = s.set_tcp_keepalive(&TcpKeepalive::new().with_time(time).with_interval(interval).with_retries(4));
    // Also bounds how long sent bytes may stay unacknowledged (a backend
    // that vanished while we were writing), which keepalive alone does not.
    let _ = s.set_tcp_user_timeout(Some(time + interval * 4));
}

async fn serve(ctx: Ctx<'_>, client: &TcpStream) {
    let (sh, c) = (ctx.sh, &ctx.sh.counters);
    let _ = client.set_nodelay(true);
    keepalive(client, sh.cfg.keepalive);
    // A gateway's connections were addressed to it, not redirected.
    if matches!(sh.cfg.mode, Mode::Sni | Mode::Forward(_)) {
        ctx.log.with(|f| f.downstream_local = client.local_addr().ok());
    }
    match sh.cfg.mode {
        Mode::Sni => return gateway::sni(ctx, client).await,
        Mode::Forward(to) => return gateway::forward(ctx, client, to).await,
        Mode::Outbound | Mode::Inbound => {}
    }
    let local = client.local_addr().ok();
    let v6 = local.is_some_and(|a| a.is_ipv6());
    let orig = match original_destination(client.as_fd(), v6) {
        // Not redirected to us, or redirected to our own listener: relaying
        // would loop back into the proxy.
        Ok(o) if Some(o) != local && !sh.listen.lock().unwrap_or_else(|e| e.into_inner()).contains(&o) => o,
        _ => {
            c.no_original_dst.fetch_add(1, Ordering::Relaxed);
            reset(client);
            return;
        }
    };
    ctx.log.with(|f| f.downstream_local = Some(orig));
    if sh.cfg.mode == Mode::Inbound {
        inbound::serve(ctx, client, orig).await;
    } else {
        outbound::serve(ctx, client, orig).await;
    }
}

/// One connect attempt to `addr` within the connect timeout (a timeout is
/// `ErrorKind::TimedOut`).
pub(super) async fn connect<'a>(ctx: Ctx<'a>, addr: SocketAddr) -> std::io::Result<Upstream<'a>> {
    ctx.log.with(|f| (f.upstream_host, f.upstream_local) = (Some(addr), None));
    let stream = dial(&ctx.sh.cfg, addr).await?;
    ctx.log.with(|f| f.upstream_local = stream.local_addr().ok());
    Ok(Upstream { stream, st: ctx.st })
}

/// A socket connected to `addr` as the relay's upstream sockets are: the
/// relay's mark, the inbound's source address, no delay, keepalive; within
/// the connect timeout (a timeout is `ErrorKind::TimedOut`).
pub(super) async fn dial(cfg: &super::RelayConfig, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    if let Some(m) = cfg.mark {
        s.set_mark(m)?;
    }
    if cfg.mode == Mode::Inbound {
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
    keepalive(&s, cfg.keepalive);
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(s));
    match tokio::time::timeout(cfg.connect_timeout, socket.connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// One connect to where the connection was going (passthrough, bypass, the
/// inbound app), counted; when it fails the client is reset and None.
pub(super) async fn connect_direct<'a>(ctx: Ctx<'a>, client: &TcpStream, orig: SocketAddr) -> Option<Upstream<'a>> {
    let c = &ctx.sh.counters;
    ctx.st.set_phase(Phase::Connect);
    c.connect_attempts.fetch_add(1, Ordering::Relaxed);
    match connect(ctx, orig).await {
        Ok(up) => Some(up),
        Err(e) => {
            c.connect_failures.fetch_add(1, Ordering::Relaxed);
            if e.kind() == std::io::ErrorKind::TimedOut {
                c.connect_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            c.upstream_failed.fetch_add(1, Ordering::Relaxed);
            reset(client);
            None
        }
    }
}

/// `at`, or never.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// When the idle timeout expires if nothing moves before: the connection's
/// idle clock plus the timeout.
fn idle_deadline(st: &ConnState, idle: Option<Duration>) -> Option<Instant> {
    let t = idle?;
    let quiet = Duration::from_millis(monotonic_ms().saturating_sub(st.since_ms()));
    Some(Instant::now() + t.saturating_sub(quiet))
}

fn idle_expired(st: &ConnState, idle: Option<Duration>) -> bool {
    idle.is_some_and(|t| monotonic_ms().saturating_sub(st.since_ms()) >= t.as_millis() as u64)
}

/// Runs both directions of a plaintext relay: end of stream in one becomes
/// a `shutdown(SHUT_WR)` on the other socket (half-close), an error in
/// either ends both, and no byte either way for `idle` ends both as Idle.
pub(super) async fn both_ways(
    up: impl Future<Output = End>,
    down: impl Future<Output = End>,
    client: &TcpStream,
    upstream: &TcpStream,
    st: &ConnState,
    idle: Option<Duration>,
) -> End {
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    loop {
        tokio::select! {
            e = &mut up, if !up_done => {
                if e != End::Eof {
                    return End::Error;
                }
                // The client finished sending: pass the FIN on.
                let _ = SockRef::from(upstream).shutdown(Shutdown::Write);
                up_done = true;
            }
            e = &mut down, if !down_done => {
                if e != End::Eof {
                    return End::Error;
                }
                let _ = SockRef::from(client).shutdown(Shutdown::Write);
                down_done = true;
            }
            () = sleep_until(idle_deadline(st, idle)) => {
                if idle_expired(st, idle) {
                    return End::Idle;
                }
            }
        }
        if up_done && down_done {
            return End::Eof;
        }
    }
}

/// Counts how a relay ended and closes accordingly: Idle with FIN both ways
/// (like Envoy's idle timeout), Error with RST both ways.
fn finish(sh: &Shared, end: End, client: &TcpStream, upstream: &TcpStream) {
    let c = &sh.counters;
    match end {
        End::Eof => {}
        End::Idle => {
            c.idle_timeouts.fetch_add(1, Ordering::Relaxed);
            let _ = SockRef::from(client).shutdown(Shutdown::Both);
            let _ = SockRef::from(upstream).shutdown(Shutdown::Both);
        }
        End::Error => {
            c.resets.fetch_add(1, Ordering::Relaxed);
            reset(client);
            reset(upstream);
        }
    }
}

/// Relays a plaintext connection with `splice` until both sides are done;
/// bytes are counted in the relay's totals and in `series` (the client is
/// Istio's downstream: what it sends is `received`).
pub(super) async fn relay(ctx: Ctx<'_>, client: &TcpStream, upstream: &TcpStream, series: &Opened) {
    let (sh, sv, st) = (ctx.sh, ctx.sv, ctx.st);
    st.set_phase(Phase::Relay);
    let c = &sh.counters;
    let to_up = Tally { total: &c.bytes_sent, series: series.received(), conn: Some(&ctx.log.received) };
    let to_client = Tally { total: &c.bytes_received, series: series.sent(), conn: Some(&ctx.log.sent) };
    let up = pump(client, upstream, &sv.pipes, &to_up, st);
    let down = pump(upstream, client, &sv.pipes, &to_client, st);
    let end = both_ways(up, down, client, upstream, st, sh.cfg.idle_timeout).await;
    finish(sh, end, client, upstream);
}

/// Runs `conn`'s handshake on `sock` until `deadline` and checks the peer's
/// SPIFFE identity again afterwards (a resumed session does not go through
/// the verifier); the outcome, a failure to set `conn` up included, is
/// counted in the TLS counters.
pub(super) async fn secure(
    sh: &Shared,
    conn: Result<Connection, HandshakeError>,
    sock: &TcpStream,
    expect: &PeerIdentity,
    deadline: Instant,
) -> Result<Connection, HandshakeError> {
    let t = &sh.tls.counters;
    let result = match conn {
        Err(e) => Err(e),
        Ok(mut conn) => match with_deadline(deadline, handshake(&mut conn, sock)).await {
            Err(e) => Err(e),
            Ok(()) if !peer_matches(&conn, expect) => Err(HandshakeError::Tls(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))),
            Ok(()) => Ok(conn),
        },
    };
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

/// The series a TLS relay counts into: opened already, or once the
/// metadata exchange (`istio-peer-exchange` negotiated) says who the peer is.
pub(super) enum Series<'a> {
    Now(&'a Opened),
    /// Our frame, and the series to open with the peer.
    Mx(Vec<u8>, &'a Late<'a>),
}

/// Relays a connection one side of which is TLS (`tls_upstream`: the
/// upstream, for outbound origination; else the client, inbound) through
/// rustls (`super::tls::pump`); idle timeout and teardown as [`relay`], an
/// idle TLS side also getting a `close_notify`.
pub(super) async fn relay_tls(
    ctx: Ctx<'_>,
    client: &TcpStream,
    upstream: &TcpStream,
    mut conn: Connection,
    tls_upstream: bool,
    series: Series<'_>,
) {
    let (sh, sv, st) = (ctx.sh, ctx.sv, ctx.st);
    st.set_phase(Phase::Relay);
    let c = &sh.counters;
    // bytes_sent counts client -> upstream, bytes_received the reverse;
    // the series the other way round (Istio counts the downstream's bytes).
    let (now_up, now_down, late_up, late_down);
    let (to_up, to_client): (&dyn ByteCount, &dyn ByteCount) = match &series {
        Series::Now(o) => {
            now_up = Tally { total: &c.bytes_sent, series: o.received(), conn: Some(&ctx.log.received) };
            now_down = Tally { total: &c.bytes_received, series: o.sent(), conn: Some(&ctx.log.sent) };
            (&now_up, &now_down)
        }
        Series::Mx(_, late) => {
            late_up = late.tally(&c.bytes_sent, false, &ctx.log.received);
            late_down = late.tally(&c.bytes_received, true, &ctx.log.sent);
            (&late_up, &late_down)
        }
    };
    let sides: Sides<'_, dyn ByteCount> = if tls_upstream {
        Sides { tls: upstream, plain: client, to_tls: to_up, from_tls: to_client }
    } else {
        Sides { tls: client, plain: upstream, to_tls: to_client, from_tls: to_up }
    };
    let resolve = |peer: Option<PeerInfo>| {
        if let Series::Mx(_, late) = &series {
            late.resolve(peer.as_ref());
        }
    };
    let mx = match &series {
        Series::Mx(frame, _) => {
            Some(MxPump { frame: frame.clone(), reader: Some(mx::Reader::default()), done: &resolve })
        }
        Series::Now(_) => None,
    };
    let idle = sh.cfg.idle_timeout;
    let end = {
        let pumping = super::tls::pump::pump(&mut conn, &sides, &sv.bufs, st, mx);
        tokio::pin!(pumping);
        loop {
            tokio::select! {
                e = &mut pumping => break e,
                () = sleep_until(idle_deadline(st, idle)) => {
                    if idle_expired(st, idle) {
                        break End::Idle;
                    }
                }
            }
        }
    };
    if end == End::Idle {
        super::tls::pump::close_notify(&mut conn, sides.tls);
    }
    finish(sh, end, client, upstream);
    // A connection that ended before the exchange did is counted all the same.
    resolve(None);
}
