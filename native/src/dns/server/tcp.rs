//! DNS over TCP (RFC 7766): several queries per connection, answered
//! concurrently and written back as each is ready (pipelining, RFC 7766
//! §6.2.1.1),
//! with an idle timeout between queries and a read timeout within one, so a
//! slow or silent client holds only its own task, never a worker.
//! Istio (miekg defaults) serves one connection's queries one by one.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::timeout;

use super::{ServerConfig, Shared};
use crate::dns::answer::{answer_packet, Decision, Transport};
use crate::dns::wire::MAX_MESSAGE;

#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    idle: Duration,
    read: Duration,
    max_connections: usize,
    max_inflight: usize,
}

impl From<&ServerConfig> for Limits {
    fn from(c: &ServerConfig) -> Limits {
        Limits {
            idle: c.tcp_idle_timeout,
            read: c.tcp_read_timeout,
            max_connections: c.tcp_max_connections.max(1),
            max_inflight: c.tcp_max_inflight.max(1),
        }
    }
}

pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>, limits: Limits) {
    let conns = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Over the limit: close at once rather than queue (RFC 7766 §6.2.2
        // lets a server close connections to protect itself).
        let Ok(permit) = conns.clone().try_acquire_owned() else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            connection(stream, shared, limits).await;
            drop(permit);
        });
    }
}

fn framed(mut reply: Vec<u8>, len: usize) -> Vec<u8> {
    reply.truncate(len);
    let mut out = Vec::with_capacity(len + 2);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&reply);
    out
}

async fn connection(stream: TcpStream, shared: Arc<Shared>, limits: Limits) {
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
        let len = match timeout(limits.idle, rd.read_u16()).await {
            Ok(Ok(n)) => n as usize,
            _ => break, // idle, closed, or reset
        };
        let mut buf = vec![0u8; len];
        if !matches!(timeout(limits.read, rd.read_exact(&mut buf)).await, Ok(Ok(_))) {
            break;
        }
        let Ok(permit) = inflight.clone().acquire_owned().await else { break };
        rotation = rotation.wrapping_add(1);
        let mut out = vec![0u8; MAX_MESSAGE];
        let decision = {
            let snap = shared.table.load();
            let cfg = shared.answer.load();
            answer_packet(snap.as_deref(), &cfg, &buf, Transport::Tcp, rotation, &mut out)
        };
        match decision {
            Decision::Reply { len, outcome, qtype, rcode } => {
                shared.metrics.query(outcome, qtype, rcode);
                if tx.send(framed(out, len)).await.is_err() {
                    break;
                }
                drop(permit);
            }
            Decision::Drop => {
                // Garbage on a stream: the framing can no longer be trusted.
                shared.metrics.dropped();
                break;
            }
            Decision::Forward(q) => {
                let shared = shared.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let (reply, outcome, rcode) = shared.forwarder.reply(&q, Transport::Tcp).await;
                    shared.metrics.query(outcome, q.qtype, rcode);
                    let n = reply.len();
                    if n > 0 {
                        let _ = tx.send(framed(reply, n)).await;
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
