//! A gateway's listeners: the east-west gateway's `AUTO_PASSTHROUGH` port
//! ([`sni`], 15443) and plain forwards to one address ([`forward`], the
//! control plane's 15012 and 15017), neither of which terminates TLS.
//!
//! `AUTO_PASSTHROUGH` as Istio configures it on an east-west gateway
//! (istio/istio `pilot/pkg/networking/core/gateway.go`,
//! `buildGatewayListenerTLSContext` / sni-dnat clusters; the `Gateway`
//! resource's `tls.mode: AUTO_PASSTHROUGH`, networking/v1beta1/gateway.proto):
//! the client's ClientHello is read, not answered (Envoy's tls_inspector),
//! its server name `outbound_.<port>_.<subset>_.<host>` names the cluster
//! `outbound|<port>|<subset>|<host>`, an endpoint of that cluster on the
//! gateway's side is picked with the cluster's policy and the still
//! encrypted bytes are spliced to it: the mTLS session runs end to end
//! between the two sidecars. What is not a ClientHello, a hello without a
//! name of that form, or a cluster the gateway does not know is refused
//! (reset) and counted (`not_tls`, `sni_refused`, `unknown_cluster`).
//!
//! The ClientHello is peeked (`MSG_PEEK`), never consumed, within
//! `hello_timeout` of accept; at most [`hello::MAX_HELLO`] bytes.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::accept::{connect_direct, relay, reset, Ctx};
use super::admit::Phase;
use super::hello::{self, Hello};
use super::metrics::{outbound_labels, Flags, Opened, OutboundPeer, Route};
use super::{outbound, Routes};
use crate::mesh::{parse_sni, Direction};

/// The `AUTO_PASSTHROUGH` port: route by the ClientHello's server name.
pub(super) async fn sni(ctx: Ctx<'_>, client: &TcpStream) {
    let (sh, c) = (ctx.sh, &ctx.sh.counters);
    ctx.st.set_phase(Phase::Hello);
    let name = match read_hello(client, Instant::now() + sh.cfg.hello_timeout).await {
        Read::Hello(Some(name)) => name,
        Read::Hello(None) => {
            c.sni_refused.fetch_add(1, Ordering::Relaxed);
            return reset(client);
        }
        Read::NotTls => {
            c.not_tls.fetch_add(1, Ordering::Relaxed);
            return reset(client);
        }
        Read::Timeout => {
            c.hello_timeouts.fetch_add(1, Ordering::Relaxed);
            return reset(client);
        }
        Read::Closed => return,
    };
    let cluster = match parse_sni(&name) {
        Some(n) if n.direction == Direction::Outbound => n.cluster_name(),
        _ => {
            c.sni_refused.fetch_add(1, Ordering::Relaxed);
            return reset(client);
        }
    };
    ctx.log.with(|f| f.server_name.clone_from(&name));
    ctx.st.set_phase(Phase::Handshake);
    let routes: Arc<Routes> = sh.routes.load_full();
    outbound::to_cluster(ctx, client, &routes, &cluster).await;
}

/// A forwarded port: every connection to `to`, bytes as they are.
pub(super) async fn forward(ctx: Ctx<'_>, client: &TcpStream, to: SocketAddr) {
    let sh = ctx.sh;
    sh.counters.passthrough.fetch_add(1, Ordering::Relaxed);
    let none = OutboundPeer::default();
    let m = &sh.metrics;
    let open = |flags| {
        outbound::logged(ctx, Route::Passthrough, flags);
        Opened::open_with(m, || outbound_labels(&m.local(), Route::Passthrough, &none, flags))
    };
    match connect_direct(ctx, client, to).await {
        Some(up) => relay(ctx, client, &up.stream, &open(Flags::NONE)).await,
        None => drop(open(Flags::UPSTREAM_CONNECT_FAILURE.union(Flags::RETRY_LIMIT_EXCEEDED))),
    }
}

enum Read {
    /// A whole ClientHello, and its server name if any.
    Hello(Option<String>),
    NotTls,
    Timeout,
    Closed,
}

/// Peeks at the connection's first bytes until they hold a whole
/// ClientHello (or cannot be one), by `deadline`. When a peek finds no more
/// than the last one, the socket's readiness is cleared and the task waits
/// for the next segment (edge-triggered), never polling in a loop.
async fn read_hello(client: &TcpStream, deadline: Instant) -> Read {
    let mut buf = vec![0u8; 2048];
    loop {
        match tokio::time::timeout_at(deadline, client.readable()).await {
            Err(_) => return Read::Timeout,
            Ok(Err(_)) => return Read::Closed,
            Ok(Ok(())) => {}
        }
        let peeked = client.try_io(Interest::READABLE, || {
            let n =
                rustix::net::recv(client, &mut buf[..], rustix::net::RecvFlags::PEEK).map_err(std::io::Error::from)?.0;
            match hello::parse(&buf[..n]) {
                _ if n == 0 => Ok(Read::Closed),
                Hello::Complete(name) => Ok(Read::Hello(name)),
                Hello::NotTls(_) => Ok(Read::NotTls),
                Hello::Incomplete if n < buf.len() => Err(std::io::ErrorKind::WouldBlock.into()),
                Hello::Incomplete if n < hello::MAX_HELLO => {
                    // The buffer is full: a larger one, and peek again
                    // without waiting (readiness is kept on this error).
                    buf.resize((n * 4).min(hello::MAX_HELLO), 0);
                    Err(std::io::ErrorKind::Interrupted.into())
                }
                Hello::Incomplete => Ok(Read::NotTls),
            }
        });
        match peeked {
            Ok(r) => return r,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {}
            Err(_) => return Read::Closed,
        }
    }
}
