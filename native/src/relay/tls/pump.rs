//! One TLS connection relayed to one plaintext socket, on one thread.
//!
//! `splice` cannot carry TLS (the bytes must pass through the cipher in user
//! space, and kernel TLS is not available here), so a TLS connection gets
//! its own loop: both sockets non-blocking, `poll(2)` over the two, and the
//! rustls connection in between. One thread serves both directions because
//! the rustls state is shared by them (a record read may produce a write:
//! key updates, alerts); two threads would need a lock on every record.
//!
//! Buffers: socket reads take up to 256 KiB at once (many 16 KiB records
//! per system call), plaintext goes into rustls in 256 KiB writes (it cuts
//! them into records and encrypts into a buffer flushed with one `writev`).
//!
//! Half-close, as the splice pumps do it: the peer's `close_notify` (or a
//! TCP FIN without it, which Envoy also treats as end of stream) becomes
//! `shutdown(SHUT_WR)` on the plaintext socket once everything before it was
//! delivered; end of stream from the plaintext side becomes our
//! `close_notify` and then `shutdown(SHUT_WR)` on the TLS socket. TLS 1.3
//! lets the other direction go on after a `close_notify` (RFC 8446 §6.1).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustls::server::Acceptor;
use rustls::{Connection, ServerConfig, ServerConnection};
use socket2::SockRef;

use crate::relay::splice::End;

const CHUNK: usize = 256 * 1024;

/// A socket as `Read`/`Write` for rustls's `read_tls`/`write_tls`, retrying
/// EINTR. Writes are `send`/`sendmsg` with MSG_NOSIGNAL (socket2): a peer
/// that went away is an EPIPE error here, not a SIGPIPE.
struct Sock<'a>(&'a TcpStream);

impl Read for Sock<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
}

impl Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match SockRef::from(self.0).send_with_flags(buf, libc::MSG_NOSIGNAL) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let bufs = &bufs[..bufs.len().min(64)];
        loop {
            match SockRef::from(self.0).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL) {
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

/// A poll timeout of at least a millisecond (as the relay always waited).
fn timespec(d: Duration) -> Timespec {
    Timespec::try_from(d.max(Duration::from_millis(1))).unwrap_or(Timespec { tv_sec: i64::MAX, tv_nsec: 0 })
}

/// Waits for `events` on `sock` until `deadline`; false on timeout.
fn wait(sock: &TcpStream, events: PollFlags, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return false;
    }
    // An error (EINTR) is not a timeout: the caller tries again.
    !matches!(poll(&mut [PollFd::new(sock, events)], Some(&timespec(left))), Ok(0))
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

/// Reads the ClientHello from the non-blocking `socket` (rustls's
/// `Acceptor`) and continues the handshake with the server config `pick`
/// chooses from it, so a config can depend on what the client offered
/// (the inbound's ALPN, see `TlsIdentity::inbound_config`). A malformed
/// ClientHello, or one the chosen config cannot serve, is a `Tls` error
/// after the alert rustls produced was sent (best effort), like a failure
/// in [`handshake`]; EOF, socket errors and `deadline` as there.
pub fn accept(
    socket: &TcpStream,
    deadline: Instant,
    pick: impl FnOnce(&rustls::server::ClientHello<'_>) -> Arc<ServerConfig>,
) -> Result<ServerConnection, HandshakeError> {
    let mut sock = Sock(socket);
    let mut acceptor = Acceptor::default();
    let accepted = loop {
        match acceptor.read_tls(&mut sock) {
            Ok(0) => return Err(HandshakeError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) if would_block(&e) => {
                if !wait(socket, PollFlags::IN, deadline) {
                    return Err(HandshakeError::Timeout);
                }
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

/// Runs the handshake on the non-blocking `socket` until it completes,
/// fails, or `deadline` passes. A fatal alert rustls produced is sent
/// (best effort) before returning the error.
pub fn handshake(conn: &mut Connection, socket: &TcpStream, deadline: Instant) -> Result<(), HandshakeError> {
    let mut sock = Sock(socket);
    while conn.is_handshaking() {
        if conn.wants_write() {
            match conn.write_tls(&mut sock) {
                Ok(_) => continue,
                Err(e) if would_block(&e) => {
                    if !wait(socket, PollFlags::OUT, deadline) {
                        return Err(HandshakeError::Timeout);
                    }
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
            Err(e) if would_block(&e) => {
                if !wait(socket, PollFlags::IN, deadline) {
                    return Err(HandshakeError::Timeout);
                }
            }
            Err(e) => return Err(HandshakeError::Io(e)),
        }
    }
    // The last flight (a TLS 1.3 client's certificate and Finished, a
    // server's tickets) is queued when the handshake state ends: send it now,
    // so the peer's handshake completes without waiting for our first data.
    while conn.wants_write() {
        match conn.write_tls(&mut sock) {
            Ok(_) => {}
            Err(e) if would_block(&e) => {
                if !wait(socket, PollFlags::OUT, deadline) {
                    return Err(HandshakeError::Timeout);
                }
            }
            Err(e) => return Err(HandshakeError::Io(e)),
        }
    }
    Ok(())
}

/// A byte buffer with a consumed prefix.
struct Buf {
    data: Vec<u8>,
    off: usize,
    len: usize,
}

impl Buf {
    fn new() -> Buf {
        Buf { data: vec![0; CHUNK], off: 0, len: 0 }
    }
    fn is_empty(&self) -> bool {
        self.off == self.len
    }
    fn pending(&self) -> &[u8] {
        &self.data[self.off..self.len]
    }
    fn consume(&mut self, n: usize) {
        self.off += n;
        if self.off == self.len {
            self.off = 0;
            self.len = 0;
        }
    }
    /// Free space at the end.
    fn space(&mut self) -> &mut [u8] {
        &mut self.data[self.len..]
    }
}

/// The two sockets and the byte counters of one relayed TLS connection.
#[derive(Debug)]
pub struct Sides<'a> {
    /// The socket carrying TLS.
    pub tls: &'a TcpStream,
    /// The socket carrying plaintext.
    pub plain: &'a TcpStream,
    /// Plaintext bytes delivered from the plaintext side into TLS.
    pub to_tls: &'a AtomicU64,
    /// Plaintext bytes delivered from TLS to the plaintext side.
    pub from_tls: &'a AtomicU64,
}

/// Relays between a TLS connection (handshake done) and a plaintext socket
/// until both directions ended (End::Eof), one failed (End::Error, the
/// caller resets both sockets), or nothing moved for `idle` (End::Idle;
/// close_notify has been queued and flushed as far as the socket took it).
/// Both sockets must be non-blocking.
pub fn pump(conn: &mut Connection, s: &Sides<'_>, idle: Option<Duration>) -> End {
    let (mut tls, mut plain) = (Sock(s.tls), Sock(s.plain));
    let mut p2t = Buf::new(); // plaintext read, not yet accepted by rustls
    let mut t2p = Buf::new(); // plaintext decrypted, not yet written
    let mut raw = Buf::new(); // TLS bytes read, not yet fed to rustls
                              // Everything up to the limit is encrypted at once: one 256 KiB read
                              // becomes 16 records in one flush.
    conn.set_buffer_limit(Some(2 * CHUNK));
    let (mut plain_eof, mut close_sent, mut tls_shut) = (false, false, false);
    let (mut tls_eof, mut peer_done, mut plain_shut) = (false, false, false);
    let mut last = Instant::now();
    loop {
        let mut moved = false;
        // 1. Plaintext side -> rustls (one read, then as much as rustls takes).
        if p2t.is_empty() && !plain_eof {
            match plain.read(&mut p2t.data) {
                Ok(0) => {
                    plain_eof = true;
                    moved = true;
                }
                Ok(n) => {
                    p2t.off = 0;
                    p2t.len = n;
                    moved = true;
                }
                Err(e) if would_block(&e) => {}
                Err(_) => return End::Error,
            }
        }
        if !p2t.is_empty() {
            match conn.writer().write(p2t.pending()) {
                Ok(n) => {
                    p2t.consume(n);
                    s.to_tls.fetch_add(n as u64, Ordering::Relaxed);
                    moved |= n > 0;
                }
                Err(_) => return End::Error,
            }
        }
        if plain_eof && p2t.is_empty() && !close_sent {
            conn.send_close_notify();
            close_sent = true;
        }
        // 2. rustls -> TLS socket.
        while conn.wants_write() {
            match conn.write_tls(&mut tls) {
                Ok(_) => moved = true,
                Err(e) if would_block(&e) => break,
                Err(_) => return End::Error,
            }
        }
        if close_sent && !tls_shut && !conn.wants_write() {
            let _ = s.tls.shutdown(Shutdown::Write);
            tls_shut = true;
        }
        // 3. Decrypted plaintext -> plaintext socket.
        if !t2p.is_empty() {
            match plain.write(t2p.pending()) {
                Ok(n) => {
                    t2p.consume(n);
                    s.from_tls.fetch_add(n as u64, Ordering::Relaxed);
                    moved |= n > 0;
                }
                Err(e) if would_block(&e) => {}
                Err(_) => return End::Error,
            }
        }
        // 4. rustls plaintext -> t2p, feeding it the TLS bytes read so far.
        if !peer_done {
            loop {
                if t2p.space().is_empty() {
                    break;
                }
                match conn.reader().read(t2p.space()) {
                    Ok(0) => {
                        peer_done = true; // close_notify
                        break;
                    }
                    Ok(n) => {
                        t2p.len += n;
                        moved = true;
                        continue;
                    }
                    Err(e) if would_block(&e) => {}
                    // TCP FIN without close_notify: end of stream all the same.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        peer_done = true;
                        break;
                    }
                    Err(_) => return End::Error,
                }
                if raw.is_empty() {
                    if tls_eof {
                        break;
                    }
                    match tls.read(&mut raw.data) {
                        Ok(0) => {
                            tls_eof = true;
                            moved = true;
                            // Tell rustls about the EOF; its reader then
                            // reports close_notify or an unexpected EOF.
                            let _ = conn.read_tls(&mut io::empty());
                            if conn.process_new_packets().is_err() {
                                let _ = conn.write_tls(&mut tls);
                                return End::Error;
                            }
                            continue;
                        }
                        Ok(n) => {
                            raw.off = 0;
                            raw.len = n;
                            moved = true;
                        }
                        Err(e) if would_block(&e) => break,
                        Err(_) => return End::Error,
                    }
                }
                let mut src = raw.pending();
                let before = src.len();
                match conn.read_tls(&mut src) {
                    Ok(_) => {
                        let used = before - src.len();
                        raw.consume(used);
                        if let Err(_e) = conn.process_new_packets() {
                            let _ = conn.write_tls(&mut tls);
                            return End::Error;
                        }
                    }
                    // The reader was just found empty, so this is not "received
                    // plaintext full" but a deframing error: give up rather
                    // than spin on bytes rustls refuses.
                    Err(_) => return End::Error,
                }
            }
        }
        if peer_done && t2p.is_empty() && !plain_shut {
            let _ = s.plain.shutdown(Shutdown::Write);
            plain_shut = true;
            moved = true;
        }
        if plain_shut && tls_shut {
            return End::Eof;
        }
        if moved {
            last = Instant::now();
            continue;
        }
        // Nothing moved: wait for what could unblock us. A side with no
        // interest is left out so its HUP/ERR cannot spin the loop.
        let (mut tls_ev, mut plain_ev) = (PollFlags::empty(), PollFlags::empty());
        if !tls_eof && raw.is_empty() && !peer_done {
            tls_ev |= PollFlags::IN;
        }
        if conn.wants_write() {
            tls_ev |= PollFlags::OUT;
        }
        if !plain_eof && p2t.is_empty() {
            plain_ev |= PollFlags::IN;
        }
        if !t2p.is_empty() {
            plain_ev |= PollFlags::OUT;
        }
        let mut both = [PollFd::new(s.tls, tls_ev), PollFd::new(s.plain, plain_ev)];
        let fds = match (tls_ev.is_empty(), plain_ev.is_empty()) {
            (false, false) => &mut both[..],
            (false, true) => &mut both[..1],
            (true, false) => &mut both[1..],
            // Nothing can make progress (should not happen): give up cleanly.
            (true, true) => return End::Error,
        };
        let timeout = match idle {
            Some(t) => {
                let left = t.saturating_sub(last.elapsed());
                if left.is_zero() {
                    conn.send_close_notify();
                    let _ = conn.write_tls(&mut tls);
                    return End::Idle;
                }
                Some(timespec(left))
            }
            None => None,
        };
        if let Err(e) = poll(fds, timeout.as_ref()) {
            if e != rustix::io::Errno::INTR {
                return End::Error;
            }
        }
    }
}
