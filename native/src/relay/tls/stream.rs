//! A terminated TLS connection as tokio's `AsyncRead`/`AsyncWrite`, for the
//! inbound HTTP path: hyper reads the decrypted requests and writes the
//! responses through it.
//!
//! The relay does its handshakes itself (`pump::accept`, `accept::secure`,
//! with their deadlines and counters), so the connection is already
//! established here; tokio-rustls cannot take over an established rustls
//! connection, which is why this small adapter exists. It drives rustls as
//! tokio-rustls's `common::Stream` does (rustls `Connection::read_tls`,
//! `process_new_packets`, `reader`, `writer`, `write_tls`), over the relay's
//! borrowed, non-blocking socket ([`Sock`]: a full socket is `WouldBlock`,
//! which clears tokio's readiness, so the next wait is real).
//!
//! End of stream: the peer's `close_notify`, or a TCP FIN without it (Envoy
//! treats both as end of stream), is a read of 0 bytes. Writes go out
//! before more plaintext is taken (rustls's buffer never grows past one
//! write), so a client that stops reading stops the server's writes.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::Connection;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::pump::Sock;
use crate::relay::admit::ConnState;
use crate::relay::monotonic_ms;

/// An established TLS connection over the relay's socket.
pub(crate) struct TlsStream<'a> {
    socket: &'a TcpStream,
    conn: Connection,
    st: &'a ConnState,
    /// The socket reached end of stream.
    eof: bool,
    closing: bool,
}

impl std::fmt::Debug for TlsStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream").field("eof", &self.eof).finish_non_exhaustive()
    }
}

impl<'a> TlsStream<'a> {
    pub(crate) fn new(socket: &'a TcpStream, conn: Connection, st: &'a ConnState) -> TlsStream<'a> {
        TlsStream { socket, conn, st, eof: false, closing: false }
    }

    /// Writes what rustls holds until it is empty or the socket is full.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut Sock(self.socket)) {
                Ok(_) => self.st.touch(monotonic_ms()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => match self.socket.poll_write_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                },
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes what can go without waiting (a key update's answer, a
    /// ticket, a response just encrypted); the rest waits for the next
    /// write or flush.
    fn try_drain(&mut self) {
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut Sock(self.socket)).is_err() {
                return;
            }
        }
    }
}

impl AsyncRead for TlsStream<'_> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match this.conn.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    // 0: the peer's close_notify.
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !this.eof => {}
                // A FIN without close_notify: end of stream, as Envoy reads it.
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::UnexpectedEof) => {
                    return Poll::Ready(Ok(()))
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            match this.conn.read_tls(&mut Sock(this.socket)) {
                Ok(0) => this.eof = true,
                Ok(_) => {
                    this.st.touch(monotonic_ms());
                    if let Err(e) = this.conn.process_new_packets() {
                        // The alert rustls queued, best effort.
                        this.try_drain();
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                    this.try_drain();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => match this.socket.poll_read_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                },
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TlsStream<'_> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other.map_ok(|()| 0),
        }
        let n = this.conn.writer().write(buf)?;
        this.try_drain();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_drain(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.closing {
            this.closing = true;
            this.conn.send_close_notify();
        }
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let _ = SockRef::from(this.socket).shutdown(Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}
