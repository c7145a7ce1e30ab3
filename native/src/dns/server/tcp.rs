//! DNS over TCP (RFC 7766): several queries per connection, answered
//! concurrently and written back as each is ready (pipelining, RFC 7766
//! §6.2.1.1), with an idle timeout between queries and a read timeout within
//! one, so a slow or silent client holds only its own task, never a worker.
//! Istio (miekg defaults) serves one connection's queries one by one.
//!
//! What one connection can hold is bounded: at most `tcp_max_inflight`
//! queries in flight (the connection is not read further until one is
//! answered), each query at most [`MAX_TCP_QUERY`] bytes, replies encoded in
//! a per-thread buffer and copied out at their real size, forwards admitted
//! by the server's pending-forward limits (SERVFAIL at once beyond). Which
//! connections are open at all is `conns`: per-client and total limits,
//! the oldest idle connection closed to admit a new one.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;

use super::conns::{Busy, Conns, Ticket};
use super::{ServerConfig, Shared};
use crate::dns::acl::AllowList;
use crate::dns::answer::{answer_packet, Decision, Outcome, Transport};
use crate::dns::forward::with_scratch;
use crate::dns::metrics::TcpReject;
use crate::dns::wire::{write_status, Query, Rcode};

/// The longest query read over TCP. A query is a question and an OPT: a few
/// hundred bytes even with EDNS padding (RFC 8467) or cookies; a client
/// announcing more is not asking a question, and the connection is closed
/// (it would otherwise pin a buffer of up to 64 KiB for the read timeout).
pub(super) const MAX_TCP_QUERY: usize = 4096;

#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    idle: Duration,
    read: Duration,
    max_inflight: usize,
}

impl From<&ServerConfig> for Limits {
    fn from(c: &ServerConfig) -> Limits {
        Limits { idle: c.tcp_idle_timeout, read: c.tcp_read_timeout, max_inflight: c.tcp_max_inflight.max(1) }
    }
}

pub(super) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    limits: Limits,
    conns: Arc<Conns>,
    acl: Option<Arc<AllowList>>,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Closed at once (RFC 7766 §6.2.2 lets a server close connections to
        // protect itself): a client outside the allow-list, or one that would
        // go over a limit with no idle connection to make room.
        if acl.as_ref().is_some_and(|a| !a.allows(peer.ip())) {
            shared.metrics.tcp_rejected(TcpReject::NotAllowed);
            continue;
        }
        let Ok(ticket) = conns.admit(peer.ip()) else { continue };
        tokio::spawn(connection(stream, peer.ip(), shared.clone(), limits, ticket));
    }
}

/// A reply framed for TCP (RFC 1035 §4.2.2: its length first), written by
/// `write` into the thread's buffer and copied out at its real size.
fn framed(write: impl FnOnce(&mut [u8]) -> usize) -> Vec<u8> {
    with_scratch(|out| {
        let n = write(&mut out[2..]);
        out[..2].copy_from_slice(&(n as u16).to_be_bytes());
        out[..n + 2].to_vec()
    })
}

/// What to do with one query.
#[allow(clippy::large_enum_variant, reason = "as `Decision`: the query moves by value, unboxed")]
enum Step {
    Send(Vec<u8>),
    Forward(Query),
    Close,
}

async fn connection(stream: TcpStream, client: IpAddr, shared: Arc<Shared>, limits: Limits, ticket: Ticket) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(limits.max_inflight);
    let write_timeout = limits.read;
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            // A client that does not read its answers is cut off too.
            if !matches!(timeout(write_timeout, wr.write_all(&b)).await, Ok(Ok(()))) {
                break;
            }
        }
    });
    let inflight = Arc::new(Semaphore::new(limits.max_inflight));
    let mut rotation = 0u32;
    loop {
        let read = async {
            let len = match timeout(limits.idle, rd.read_u16()).await {
                Ok(Ok(n)) => n as usize,
                _ => return None, // idle, closed, or reset
            };
            if len > MAX_TCP_QUERY {
                shared.metrics.dropped();
                return None;
            }
            let mut buf = vec![0u8; len];
            matches!(timeout(limits.read, rd.read_exact(&mut buf)).await, Ok(Ok(_))).then_some(buf)
        };
        let buf = tokio::select! {
            biased;
            // Evicted to admit a newer connection: only ever while idle.
            _ = ticket.state.evict.notified() => break,
            b = read => match b {
                Some(b) => b,
                None => break,
            },
        };
        let busy = ticket.busy();
        // At `max_inflight` queries in flight, wait for one to finish before
        // reading more: a pipelining client holds no more than that.
        let Ok(permit) = inflight.clone().acquire_owned().await else { break };
        rotation = rotation.wrapping_add(1);
        let step = {
            let snap = shared.table.load();
            let cfg = shared.answer.load();
            with_scratch(|out| {
                match answer_packet(snap.as_deref(), &cfg, &buf, Transport::Tcp, rotation, &mut out[2..]) {
                    Decision::Reply { len, outcome, qtype, rcode } => {
                        shared.metrics.query(outcome, qtype, rcode);
                        out[..2].copy_from_slice(&(len as u16).to_be_bytes());
                        Step::Send(out[..len + 2].to_vec())
                    }
                    Decision::Forward(q) => Step::Forward(q),
                    Decision::Drop => Step::Close,
                }
            })
        };
        match step {
            Step::Send(reply) => {
                if tx.send(reply).await.is_err() {
                    break;
                }
            }
            Step::Close => {
                // Garbage on a stream: the framing can no longer be trusted.
                shared.metrics.dropped();
                break;
            }
            Step::Forward(q) => {
                if let Some(reply) = forward(&shared, client, q, &tx, (busy, permit)) {
                    if tx.send(reply).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// A query the table does not answer: the cache's answer, or SERVFAIL at
/// once when a pending-forward limit is reached (both returned, framed, for
/// the caller to send), else an upstream task that sends the reply itself and
/// releases `held` (the connection's busy mark and in-flight permit) when done.
fn forward(
    shared: &Arc<Shared>,
    client: IpAddr,
    q: Query,
    tx: &mpsc::Sender<Vec<u8>>,
    held: (Busy, OwnedSemaphorePermit),
) -> Option<Vec<u8>> {
    // A cache hit costs no upstream slot.
    let hit = with_scratch(|out| {
        let n = shared.forwarder.cached_reply(&q, Transport::Tcp, &mut out[2..])?;
        out[..2].copy_from_slice(&(n as u16).to_be_bytes());
        shared.metrics.query(Outcome::CacheHit, q.qtype, Rcode(u16::from(out[5]) & 0xF));
        Some(out[..n + 2].to_vec())
    });
    if hit.is_some() {
        return hit;
    }
    let slot = match shared.gate.admit(client) {
        Ok(slot) => slot,
        Err(limit) => {
            shared.metrics.forward_rejected(limit);
            shared.metrics.query(Outcome::Overloaded, q.qtype, Rcode::SERVFAIL);
            return Some(framed(|out| write_status(&q, Rcode::SERVFAIL, out)));
        }
    };
    let shared = shared.clone();
    let tx = tx.clone();
    tokio::spawn(async move {
        let (reply, outcome, rcode) = shared.forwarder.reply(&q, Transport::Tcp).await;
        drop(slot);
        shared.metrics.query(outcome, q.qtype, rcode);
        if !reply.is_empty() {
            let _ = tx.send(reply).await;
        }
        drop(held);
    });
    None
}
