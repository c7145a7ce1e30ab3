//! One TLS connection relayed to one plaintext socket, as one task of the
//! relay's event loop.
//!
//! `splice` cannot carry TLS (the bytes must pass through the cipher in user
//! space, and kernel TLS is not available here), so a TLS connection gets
//! its own pump: both sockets non-blocking, the rustls connection in
//! between, and the readiness of the two sockets (tokio) deciding when to
//! run. One task serves both directions because the rustls state is shared
//! by them (a record read may produce a write: key updates, alerts).
//!
//! Buffers: socket reads take up to 256 KiB at once (many 16 KiB records
//! per system call), plaintext goes into rustls in 256 KiB writes (it cuts
//! them into records and encrypts into a buffer flushed with one `writev`).
//! This is why the pump drives rustls itself rather than through
//! tokio-rustls, whose reads go through rustls's deframer, one record at a
//! time (rustls `read_tls` reads at most a record's worth). The buffers come from
//! the relay's [`BufPool`] when bytes arrive and go back when the
//! connection waits with nothing in them, so an idle TLS connection holds
//! no buffer.
//!
//! Half-close, as the splice pumps do it: the peer's `close_notify` (or a
//! TCP FIN without it, which Envoy also treats as end of stream) becomes
//! `shutdown(SHUT_WR)` on the plaintext socket once everything before it was
//! delivered; end of stream from the plaintext side becomes our
//! `close_notify` and then `shutdown(SHUT_WR)` on the TLS socket. TLS 1.3
//! lets the other direction go on after a `close_notify` (RFC 8446 §6.1).

use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rustls::server::Acceptor;
use rustls::{Connection, ServerConfig, ServerConnection};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::relay::admit::ConnState;
use crate::relay::metrics::ByteCount;
use crate::relay::monotonic_ms;
use crate::relay::mx;
use crate::relay::splice::End;

const CHUNK: usize = 256 * 1024;

/// A socket as `Read`/`Write` for rustls's `read_tls`/`write_tls`: non-blocking
/// (`WouldBlock` clears the socket's readiness, so the next wait is real),
/// retrying EINTR. Writes are `send`/`sendmsg` with MSG_NOSIGNAL (socket2): a
/// peer that went away is an EPIPE error here, not a SIGPIPE.
pub(super) struct Sock<'a>(pub(super) &'a TcpStream);

impl Read for Sock<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.try_read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
}

impl Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let s = self.0;
        loop {
            match s.try_io(Interest::WRITABLE, || SockRef::from(s).send_with_flags(buf, libc::MSG_NOSIGNAL)) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let bufs = &bufs[..bufs.len().min(64)];
        let s = self.0;
        loop {
            match s.try_io(Interest::WRITABLE, || SockRef::from(s).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Why a handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// The TLS layer refused (the peer's certificate, its identity, the protocol).
    Tls(rustls::Error),
    /// The socket failed or closed before the handshake finished.
    Io(io::Error),
    /// Not finished by the deadline.
    Timeout,
}

impl HandshakeError {
    /// The peer's certificate (chain or identity) was what failed.
    pub fn is_peer_rejected(&self) -> bool {
        matches!(self, HandshakeError::Tls(rustls::Error::InvalidCertificate(_)))
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Tls(e) => write!(f, "TLS: {e}"),
            HandshakeError::Io(e) => write!(f, "I/O: {e}"),
            HandshakeError::Timeout => f.write_str("timed out"),
        }
    }
}

/// `fut` until `deadline`, else `HandshakeError::Timeout`.
pub async fn with_deadline<T>(
    deadline: tokio::time::Instant,
    fut: impl std::future::Future<Output = Result<T, HandshakeError>>,
) -> Result<T, HandshakeError> {
    tokio::time::timeout_at(deadline, fut).await.unwrap_or(Err(HandshakeError::Timeout))
}

/// Reads the ClientHello from `socket` (rustls's `Acceptor`) and continues
/// the handshake with the server config `pick` chooses from it, so a config
/// can depend on what the client offered (the inbound's ALPN, see
/// `TlsIdentity::inbound_config`). A malformed ClientHello, or one the
/// chosen config cannot serve, is a `Tls` error after the alert rustls
/// produced was sent (best effort), like a failure in [`handshake`]; EOF and
/// socket errors as there. Bound it with [`with_deadline`].
pub async fn accept(
    socket: &TcpStream,
    pick: impl FnOnce(&rustls::server::ClientHello<'_>) -> Arc<ServerConfig>,
) -> Result<ServerConnection, HandshakeError> {
    let mut sock = Sock(socket);
    let mut acceptor = Acceptor::default();
    let accepted = loop {
        match acceptor.read_tls(&mut sock) {
            Ok(0) => return Err(HandshakeError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) if would_block(&e) => {
                socket.readable().await.map_err(HandshakeError::Io)?;
                continue;
            }
            Err(e) => return Err(HandshakeError::Io(e)),
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) => {} // the ClientHello spans more records: read on
            Err((e, mut alert)) => {
                let _ = alert.write_all(&mut sock);
                return Err(HandshakeError::Tls(e));
            }
        }
    };
    let config = pick(&accepted.client_hello());
    let mut conn = accepted.into_connection(config).map_err(|(e, mut alert)| {
        let _ = alert.write_all(&mut sock);
        HandshakeError::Tls(e)
    })?;
    // Records that came with the ClientHello are buffered, not processed;
    // do it now, or [`handshake`] would wait for bytes already here.
    if let Err(e) = conn.process_new_packets() {
        let _ = conn.write_tls(&mut sock);
        return Err(HandshakeError::Tls(e));
    }
    Ok(conn)
}

/// Runs the handshake on `socket` until it completes or fails (bound it
/// with [`with_deadline`]). A fatal alert rustls produced is sent (best
/// effort) before returning the error.
pub async fn handshake(conn: &mut Connection, socket: &TcpStream) -> Result<(), HandshakeError> {
    let mut sock = Sock(socket);
    while conn.is_handshaking() {
        if conn.wants_write() {
            match conn.write_tls(&mut sock) {
                Ok(_) => continue,
                Err(e) if would_block(&e) => {
                    socket.writable().await.map_err(HandshakeError::Io)?;
                    continue;
                }
                Err(e) => return Err(HandshakeError::Io(e)),
            }
        }
        match conn.read_tls(&mut sock) {
            Ok(0) => return Err(HandshakeError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {
                if let Err(e) = conn.process_new_packets() {
                    // The alert rustls queued tells the peer why.
                    let _ = conn.write_tls(&mut sock);
                    return Err(HandshakeError::Tls(e));
                }
            }
            Err(e) if would_block(&e) => socket.readable().await.map_err(HandshakeError::Io)?,
            Err(e) => return Err(HandshakeError::Io(e)),
        }
    }
    // The last flight (a TLS 1.3 client's certificate and Finished, a
    // server's tickets) is queued when the handshake state ends: send it now,
    // so the peer's handshake completes without waiting for our first data.
    while conn.wants_write() {
        match conn.write_tls(&mut sock) {
            Ok(_) => {}
            Err(e) if would_block(&e) => socket.writable().await.map_err(HandshakeError::Io)?,
            Err(e) => return Err(HandshakeError::Io(e)),
        }
    }
    Ok(())
}

/// Sends a `close_notify` as far as the socket takes it now (the idle
/// timeout's goodbye; never waits).
pub(crate) fn close_notify(conn: &mut Connection, socket: &TcpStream) {
    conn.send_close_notify();
    let _ = conn.write_tls(&mut Sock(socket));
}

/// Empty buffers kept for reuse at most.
const KEEP_BUFS: usize = 32;

/// The TLS pumps' 256 KiB buffers, shared by a relay's connections: taken
/// when bytes arrive, given back when a connection waits with the buffer
/// empty.
#[derive(Debug, Default)]
pub(crate) struct BufPool(Mutex<Vec<Box<[u8]>>>);

impl BufPool {
    fn take(&self) -> Box<[u8]> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_else(|| vec![0; CHUNK].into_boxed_slice())
    }

    /// Whether the pool holds a buffer now.
    #[cfg(test)]
    pub(crate) fn is_empty_for_test(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    fn give(&self, b: Box<[u8]>) {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < KEEP_BUFS {
            pool.push(b);
        }
    }
}

/// A byte buffer with a consumed prefix; its memory only while it holds bytes.
#[derive(Default)]
struct Buf {
    data: Option<Box<[u8]>>,
    off: usize,
    len: usize,
}

impl Buf {
    fn is_empty(&self) -> bool {
        self.off == self.len
    }
    fn pending(&self) -> &[u8] {
        self.data.as_deref().map_or(&[], |d| &d[self.off..self.len])
    }
    fn consume(&mut self, n: usize) {
        self.off += n;
        if self.off == self.len {
            self.off = 0;
            self.len = 0;
        }
    }
    /// Free space at the end (a buffer is taken from the pool if none is held).
    fn space(&mut self, pool: &BufPool) -> &mut [u8] {
        let len = self.len;
        &mut self.data.get_or_insert_with(|| pool.take())[len..]
    }
    fn is_full(&self) -> bool {
        self.data.as_ref().is_some_and(|d| self.len == d.len())
    }
    /// Gives the memory back when nothing is pending.
    fn release(&mut self, pool: &BufPool) {
        if self.is_empty() {
            if let Some(d) = self.data.take() {
                pool.give(d);
            }
        }
    }
}

/// The two sockets and the byte counters of one relayed TLS connection.
#[derive(Debug)]
pub struct Sides<'a, B: ByteCount + ?Sized = AtomicU64> {
    /// The socket carrying TLS.
    pub tls: &'a TcpStream,
    /// The socket carrying plaintext.
    pub plain: &'a TcpStream,
    /// Plaintext bytes delivered from the plaintext side into TLS.
    pub to_tls: &'a B,
    /// Plaintext bytes delivered from TLS to the plaintext side.
    pub from_tls: &'a B,
}

/// Istio's TCP metadata exchange on this connection ([`crate::relay::mx`]):
/// our frame goes out before any application byte, the peer's is read off
/// the front of what it sends, and `done` hears the peer once (None when
/// its first bytes were no frame, or it ended before one).
pub(crate) struct MxPump<'a> {
    pub(crate) frame: Vec<u8>,
    pub(crate) reader: Option<mx::Reader>,
    pub(crate) done: &'a (dyn Fn(Option<mx::PeerInfo>) + Sync),
}

/// The state of one pump between two polls.
#[derive(Default)]
struct Pump {
    /// Application bytes a metadata-exchange read held before finding they
    /// were no frame: written to the plaintext side before `t2p`.
    prefix: Vec<u8>,
    p2t: Buf, // plaintext read, not yet accepted by rustls
    t2p: Buf, // plaintext decrypted, not yet written
    raw: Buf, // TLS bytes read, not yet fed to rustls
    plain_eof: bool,
    close_sent: bool,
    tls_shut: bool,
    tls_eof: bool,
    peer_done: bool,
    plain_shut: bool,
}

/// Relays between a TLS connection (handshake done) and a plaintext socket
/// until both directions ended (End::Eof) or one failed (End::Error, the
/// caller resets both sockets). Marks activity on `activity` whenever bytes
/// move; the caller applies the idle timeout (and then [`close_notify`]).
pub(crate) async fn pump<B: ByteCount + ?Sized>(
    conn: &mut Connection,
    s: &Sides<'_, B>,
    bufs: &BufPool,
    activity: &ConnState,
    mut mx: Option<MxPump<'_>>,
) -> End {
    let mut p = Pump::default();
    // Everything up to the limit is encrypted at once: one 256 KiB read
    // becomes 16 records in one flush.
    conn.set_buffer_limit(Some(2 * CHUNK));
    if let Some(m) = &mx {
        // Before any application byte (rustls takes it whole: far below the limit).
        if conn.writer().write_all(&m.frame).is_err() {
            return End::Error;
        }
    }
    let end = poll_fn(|cx| p.poll(cx, conn, s, bufs, activity, &mut mx)).await;
    if let Some(m) = &mut mx {
        if m.reader.take().is_some() {
            (m.done)(None);
        }
    }
    for b in [&mut p.p2t, &mut p.t2p, &mut p.raw] {
        b.consume(b.len - b.off);
        b.release(bufs);
    }
    end
}

impl Pump {
    fn poll<B: ByteCount + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
        s: &Sides<'_, B>,
        bufs: &BufPool,
        activity: &ConnState,
        mx: &mut Option<MxPump<'_>>,
    ) -> Poll<End> {
        let (mut tls, mut plain) = (Sock(s.tls), Sock(s.plain));
        loop {
            let mut moved = false;
            // 1. Plaintext side -> rustls (one read, then as much as rustls takes).
            if self.p2t.is_empty() && !self.plain_eof {
                match plain.read(self.p2t.space(bufs)) {
                    Ok(0) => {
                        self.plain_eof = true;
                        moved = true;
                    }
                    Ok(n) => {
                        self.p2t.off = 0;
                        self.p2t.len = n;
                        moved = true;
                    }
                    Err(e) if would_block(&e) => {}
                    Err(_) => return Poll::Ready(End::Error),
                }
            }
            if !self.p2t.is_empty() {
                match conn.writer().write(self.p2t.pending()) {
                    Ok(n) => {
                        self.p2t.consume(n);
                        s.to_tls.add(n as u64);
                        moved |= n > 0;
                    }
                    Err(_) => return Poll::Ready(End::Error),
                }
            }
            if self.plain_eof && self.p2t.is_empty() && !self.close_sent {
                conn.send_close_notify();
                self.close_sent = true;
            }
            // 2. rustls -> TLS socket.
            while conn.wants_write() {
                match conn.write_tls(&mut tls) {
                    Ok(_) => moved = true,
                    Err(e) if would_block(&e) => break,
                    Err(_) => return Poll::Ready(End::Error),
                }
            }
            if self.close_sent && !self.tls_shut && !conn.wants_write() {
                let _ = SockRef::from(s.tls).shutdown(Shutdown::Write);
                self.tls_shut = true;
            }
            // 3. The peer's metadata-exchange frame off the front, then
            // decrypted plaintext -> plaintext socket.
            if let Some(m) = mx.as_mut() {
                moved |= self.read_mx(m);
            }
            if !self.prefix.is_empty() {
                match plain.write(&self.prefix) {
                    Ok(n) => {
                        self.prefix.drain(..n);
                        s.from_tls.add(n as u64);
                        moved |= n > 0;
                    }
                    Err(e) if would_block(&e) => {}
                    Err(_) => return Poll::Ready(End::Error),
                }
            }
            if self.prefix.is_empty() && !self.t2p.is_empty() {
                match plain.write(self.t2p.pending()) {
                    Ok(n) => {
                        self.t2p.consume(n);
                        s.from_tls.add(n as u64);
                        moved |= n > 0;
                    }
                    Err(e) if would_block(&e) => {}
                    Err(_) => return Poll::Ready(End::Error),
                }
            }
            // 4. rustls plaintext -> t2p, feeding it the TLS bytes read so far.
            if !self.peer_done {
                match self.decrypt(conn, &mut tls, bufs) {
                    Ok(m) => moved |= m,
                    Err(()) => return Poll::Ready(End::Error),
                }
            }
            if self.peer_done && self.t2p.is_empty() && self.prefix.is_empty() && !self.plain_shut {
                let _ = SockRef::from(s.plain).shutdown(Shutdown::Write);
                self.plain_shut = true;
                moved = true;
            }
            if self.plain_shut && self.tls_shut {
                return Poll::Ready(End::Eof);
            }
            if moved {
                activity.touch(monotonic_ms());
                continue;
            }
            // Nothing moved: give back what holds nothing, then wait for what
            // could unblock us. A side with no interest is left out so its
            // HUP/ERR cannot spin the loop.
            for b in [&mut self.p2t, &mut self.t2p, &mut self.raw] {
                b.release(bufs);
            }
            let tls_in = !self.tls_eof && self.raw.is_empty() && !self.peer_done && !self.t2p.is_full();
            let tls_out = conn.wants_write();
            let plain_in = !self.plain_eof && self.p2t.is_empty();
            let plain_out = !self.t2p.is_empty() || !self.prefix.is_empty();
            if !(tls_in || tls_out || plain_in || plain_out) {
                // Nothing can make progress (should not happen): give up cleanly.
                return Poll::Ready(End::Error);
            }
            let mut ready = false;
            for (want, r) in [
                (tls_in, tls_in.then(|| s.tls.poll_read_ready(cx))),
                (tls_out, tls_out.then(|| s.tls.poll_write_ready(cx))),
                (plain_in, plain_in.then(|| s.plain.poll_read_ready(cx))),
                (plain_out, plain_out.then(|| s.plain.poll_write_ready(cx))),
            ] {
                match (want, r) {
                    (true, Some(Poll::Ready(Ok(())))) => ready = true,
                    (true, Some(Poll::Ready(Err(_)))) => return Poll::Ready(End::Error),
                    _ => {}
                }
            }
            if !ready {
                return Poll::Pending;
            }
        }
    }

    /// Step 3's metadata exchange: the peer's frame read off the front of
    /// `t2p`; bytes that were no frame become `prefix`. Ok(moved).
    fn read_mx(&mut self, m: &mut MxPump<'_>) -> bool {
        let Some(r) = m.reader.as_mut() else { return false };
        if self.t2p.is_empty() {
            if self.peer_done {
                // The peer ended before a whole frame: what it sent is data.
                self.prefix = r.abort();
                m.reader = None;
                (m.done)(None);
                return true;
            }
            return false;
        }
        let n = self.t2p.pending().len();
        match r.feed(self.t2p.pending()) {
            mx::Read::More => self.t2p.consume(n),
            mx::Read::Done { used, peer } => {
                self.t2p.consume(used);
                m.reader = None;
                (m.done)(peer.ok());
            }
            mx::Read::NotMx(held) => {
                // The bytes still in t2p stay there; the ones held before go first.
                self.prefix = held[..held.len() - n].to_vec();
                m.reader = None;
                (m.done)(None);
            }
        }
        true
    }

    /// Step 4: decrypted plaintext into `t2p`, reading the TLS socket when
    /// rustls needs bytes. Ok(moved); Err: the connection failed (an alert
    /// was sent when rustls had one).
    fn decrypt(&mut self, conn: &mut Connection, tls: &mut Sock<'_>, bufs: &BufPool) -> Result<bool, ()> {
        let mut moved = false;
        loop {
            if self.t2p.is_full() {
                return Ok(moved);
            }
            match conn.reader().read(self.t2p.space(bufs)) {
                Ok(0) => {
                    self.peer_done = true; // close_notify
                    return Ok(true);
                }
                Ok(n) => {
                    self.t2p.len += n;
                    moved = true;
                    continue;
                }
                Err(e) if would_block(&e) => {}
                // TCP FIN without close_notify: end of stream all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.peer_done = true;
                    return Ok(true);
                }
                Err(_) => return Err(()),
            }
            if self.raw.is_empty() {
                if self.tls_eof {
                    return Ok(moved);
                }
                match tls.read(self.raw.space(bufs)) {
                    Ok(0) => {
                        self.tls_eof = true;
                        moved = true;
                        // Tell rustls about the EOF; its reader then
                        // reports close_notify or an unexpected EOF.
                        let _ = conn.read_tls(&mut io::empty());
                        if conn.process_new_packets().is_err() {
                            let _ = conn.write_tls(tls);
                            return Err(());
                        }
                        continue;
                    }
                    Ok(n) => {
                        self.raw.off = 0;
                        self.raw.len = n;
                        moved = true;
                    }
                    Err(e) if would_block(&e) => return Ok(moved),
                    Err(_) => return Err(()),
                }
            }
            let mut src = self.raw.pending();
            let before = src.len();
            match conn.read_tls(&mut src) {
                Ok(_) => {
                    let used = before - src.len();
                    self.raw.consume(used);
                    if conn.process_new_packets().is_err() {
                        let _ = conn.write_tls(tls);
                        return Err(());
                    }
                }
                // The reader was just found empty, so this is not "received
                // plaintext full" but a deframing error: give up rather
                // than spin on bytes rustls refuses.
                Err(_) => return Err(()),
            }
        }
    }
}
