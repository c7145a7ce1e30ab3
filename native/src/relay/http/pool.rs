//! Upstream HTTP connections, pooled per endpoint, protocol and TLS
//! identity (Envoy's connection pools are per cluster host and protocol;
//! ztunnel's per destination and identity, `src/proxy/pool.rs`):
//!
//! - HTTP/1.1: idle keep-alive connections; a connection goes back to the
//!   pool once its response body has been read to the end, and a taken
//!   one must say it is ready for a request (hyper's `SendRequest::ready`),
//!   else it is dropped. At most [`MAX_IDLE_H1`] idle per key.
//! - HTTP/2: one multiplexed connection per key, shared by every request;
//!   replaced when it closes.
//!
//! Connections run as tasks of the relay's runtime (hyper's connection
//! futures); a connection's task ends when hyper closes it (the peer
//! closed, an error, or no handle left and no request in flight).
//! Upstream mTLS uses tokio-rustls with the workload identity's client
//! config for the endpoint's identity and Istio's ALPN for HTTP
//! ([`crate::relay::tls::Alpn`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::body::HttpBody;
use crate::relay::tls::{server_name, spiffe_ids, Alpn, MeshTls, PeerIdentity, TlsIdentity};
use crate::relay::RelayConfig;

/// Idle HTTP/1.1 connections kept per key.
pub const MAX_IDLE_H1: usize = 64;
/// Keys kept before the least useful are forgotten (their connections
/// close when their last request ends).
const MAX_KEYS: usize = 4096;

/// What a pooled connection is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub addr: SocketAddr,
    pub h2: bool,
    /// mTLS: the SNI and the identity the endpoint must have.
    pub tls: Option<(Option<String>, PeerIdentity)>,
}

/// A sender for one request.
#[derive(Debug)]
pub enum Sender {
    H1(http1::SendRequest<HttpBody>),
    H2(http2::SendRequest<HttpBody>),
}

impl Sender {
    /// The HTTP/1.1 connection, to go back to the pool after its response.
    pub fn into_h1(self) -> Option<http1::SendRequest<HttpBody>> {
        match self {
            Sender::H1(s) => Some(s),
            Sender::H2(_) => None,
        }
    }

    pub async fn send(&mut self, req: http::Request<HttpBody>) -> hyper::Result<http::Response<hyper::body::Incoming>> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

/// Why a connection could not be had.
#[derive(Debug)]
pub enum ConnectError {
    /// TCP connect refused/unreachable, or the TLS handshake failed.
    Failed(String),
    TimedOut,
}

#[derive(Debug, Default)]
pub struct Pool {
    h1: Mutex<HashMap<Key, Vec<http1::SendRequest<HttpBody>>>>,
    h2: Mutex<HashMap<Key, http2::SendRequest<HttpBody>>>,
    /// One HTTP/2 dial at a time per key: requests arriving while the
    /// connection is being set up wait for it and share it (as Envoy's pool
    /// does), instead of each dialing its own.
    dialing: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

impl Pool {
    /// A sender for `key`: a pooled one that is ready, else a new
    /// connection (`connect` dials it).
    pub async fn take(
        &self,
        key: &Key,
        cfg: &RelayConfig,
        tls: &MeshTls,
        identity: Option<&Arc<TlsIdentity>>,
    ) -> Result<(Sender, bool), ConnectError> {
        let mut _dial_turn = None;
        if key.h2 {
            if let Some(s) = self.shared_h2(key).await {
                return Ok((Sender::H2(s), true));
            }
            let turn = {
                let mut d = self.dialing.lock().unwrap_or_else(|e| e.into_inner());
                if d.len() >= MAX_KEYS {
                    d.clear();
                }
                d.entry(key.clone()).or_default().clone()
            };
            _dial_turn = Some(turn.lock_owned().await);
            // Dialed by the request that had the turn before.
            if let Some(s) = self.shared_h2(key).await {
                return Ok((Sender::H2(s), true));
            }
        } else {
            loop {
                let idle = {
                    let mut m = self.h1.lock().unwrap_or_else(|e| e.into_inner());
                    m.get_mut(key).and_then(Vec::pop)
                };
                let Some(mut s) = idle else { break };
                if s.is_closed() {
                    continue;
                }
                // Ready at once when idle (asked once, without arming a
                // timer); a connection whose last response is still being
                // read is not idle and never here.
                match std::future::poll_fn(|cx| Poll::Ready(s.poll_ready(cx))).await {
                    Poll::Ready(Ok(())) => return Ok((Sender::H1(s), true)),
                    Poll::Ready(Err(_)) => continue,
                    Poll::Pending => {}
                }
                match tokio::time::timeout(Duration::from_millis(50), s.ready()).await {
                    Ok(Ok(())) => return Ok((Sender::H1(s), true)),
                    _ => continue,
                }
            }
        }
        let io = dial(key, cfg, tls, identity).await?;
        if key.h2 {
            let mut b = http2::Builder::new(TokioExecutor::new());
            b.timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(60))
                .keep_alive_timeout(Duration::from_secs(20));
            let (s, conn) = b.handshake(TokioIo::new(io)).await.map_err(|e| ConnectError::Failed(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut m = self.h2.lock().unwrap_or_else(|e| e.into_inner());
            if m.len() >= MAX_KEYS {
                m.retain(|_, s| !s.is_closed());
                if m.len() >= MAX_KEYS {
                    m.clear();
                }
            }
            m.insert(key.clone(), s.clone());
            Ok((Sender::H2(s), false))
        } else {
            let (s, conn) = http1::Builder::new()
                .handshake(TokioIo::new(io))
                .await
                .map_err(|e| ConnectError::Failed(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok((Sender::H1(s), false))
        }
    }

    /// The open HTTP/2 connection for `key`, ready for a stream.
    async fn shared_h2(&self, key: &Key) -> Option<http2::SendRequest<HttpBody>> {
        let existing = {
            let m = self.h2.lock().unwrap_or_else(|e| e.into_inner());
            m.get(key).filter(|s| !s.is_closed()).cloned()
        };
        let mut s = existing?;
        s.ready().await.ok()?;
        Some(s)
    }

    /// An HTTP/1.1 connection whose response was read to the end, back to
    /// the pool.
    pub fn give_back(&self, key: &Key, s: http1::SendRequest<HttpBody>) {
        if s.is_closed() {
            return;
        }
        let mut m = self.h1.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_KEYS && !m.contains_key(key) {
            m.retain(|_, v| {
                v.retain(|s| !s.is_closed());
                !v.is_empty()
            });
            if m.len() >= MAX_KEYS {
                return;
            }
        }
        let v = m.entry(key.clone()).or_default();
        if v.len() < MAX_IDLE_H1 {
            v.push(s);
        }
    }

    /// Forgets an HTTP/2 connection that failed a request at the
    /// connection level (the next request dials anew).
    pub fn forget_h2(&self, key: &Key) {
        self.h2.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    /// Idle HTTP/1.1 and open HTTP/2 connections held.
    pub fn held(&self) -> (usize, usize) {
        let h1 = self.h1.lock().unwrap_or_else(|e| e.into_inner()).values().map(Vec::len).sum();
        let h2 = self.h2.lock().unwrap_or_else(|e| e.into_inner()).values().filter(|s| !s.is_closed()).count();
        (h1, h2)
    }
}

/// The byte stream under a pooled connection.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Io::Plain(_) => "Io::Plain",
            Io::Tls(_) => "Io::Tls",
        })
    }
}

async fn dial(
    key: &Key,
    cfg: &RelayConfig,
    mesh: &MeshTls,
    identity: Option<&Arc<TlsIdentity>>,
) -> Result<Io, ConnectError> {
    let tcp = match crate::relay::accept::dial(cfg, key.addr).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(ConnectError::TimedOut),
        Err(e) => return Err(ConnectError::Failed(e.to_string())),
    };
    let Some((sni, expect)) = &key.tls else { return Ok(Io::Plain(tcp)) };
    let Some(identity) = identity else { return Err(ConnectError::Failed("no workload identity".into())) };
    let alpn = if key.h2 { Alpn::H2 } else { Alpn::Http11 };
    let cfg_tls = identity.client_config(expect.clone(), mesh.session_resumption(), alpn);
    let connector = tokio_rustls::TlsConnector::from(cfg_tls);
    let name = server_name(sni.as_deref(), key.addr.ip());
    let t = &mesh.counters;
    let tls = match tokio::time::timeout(cfg.connect_timeout, connector.connect(name, tcp)).await {
        Err(_) => {
            t.handshake_failures.fetch_add(1, Ordering::Relaxed);
            return Err(ConnectError::TimedOut);
        }
        Ok(Err(e)) => {
            t.handshake_failures.fetch_add(1, Ordering::Relaxed);
            return Err(ConnectError::Failed(format!("TLS handshake: {e}")));
        }
        Ok(Ok(s)) => s,
    };
    // A resumed session skips the verifier: check the identity again.
    let ok = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .is_some_and(|leaf| expect.accepts(spiffe_ids(leaf.as_ref()).iter().map(String::as_str)));
    if !ok {
        t.handshake_failures.fetch_add(1, Ordering::Relaxed);
        return Err(ConnectError::Failed("peer identity does not match the endpoint's".into()));
    }
    if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        t.resumed.fetch_add(1, Ordering::Relaxed);
    }
    t.handshakes.fetch_add(1, Ordering::Relaxed);
    Ok(Io::Tls(Box::new(tls)))
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The downstream connection as hyper reads it: the relay's borrowed
/// socket, every read and write moving the connection's idle clock.
pub struct Downstream<'a> {
    pub socket: &'a TcpStream,
    pub st: &'a crate::relay::admit::ConnState,
}

impl AsyncRead for Downstream<'_> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        loop {
            match self.socket.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let unfilled = buf.initialize_unfilled();
            match self.socket.try_read(unfilled) {
                Ok(n) => {
                    buf.advance(n);
                    self.st.touch(crate::relay::monotonic_ms());
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Downstream<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        loop {
            match self.socket.poll_write_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            match self.socket.try_write(buf) {
                Ok(n) => {
                    self.st.touch(crate::relay::monotonic_ms());
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            match self.socket.poll_write_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            match self.socket.try_write_vectored(bufs) {
                Ok(n) => {
                    self.st.touch(crate::relay::monotonic_ms());
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let _ = socket2::SockRef::from(self.socket).shutdown(std::net::Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}
