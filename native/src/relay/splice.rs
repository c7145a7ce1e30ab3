//! The plaintext relay: socket → pipe → socket with `splice(2)`, so payload
//! pages move between socket buffers without being copied through user space
//! (haproxy's `option splice-auto`; Envoy has no equivalent), driven by the
//! event loop's readiness instead of a blocking thread per direction.
//!
//! One direction ([`pump`]) fills its pipe only when the pipe is empty and
//! drains it before reading again, exactly as the blocking pump did. That is
//! what lets readiness of the two *sockets* drive it alone: an empty pipe
//! always has room, so `WouldBlock` from the fill means the source socket
//! has nothing; a non-empty pipe always has bytes, so `WouldBlock` from the
//! drain means the destination socket is full. Pipes need no readiness of
//! their own (both ends are non-blocking all the same).
//!
//! Pipes are not a connection's: a direction takes one from the relay's
//! [`PipePool`] when bytes arrive and gives it back, empty, as soon as its
//! source has nothing more, like haproxy (`src/pipe.c`, `get_pipe` /
//! `put_pipe`, `tune.maxpipes`). An idle connection holds its two sockets
//! and nothing else; when every pipe is in use, a direction copies through a
//! small buffer instead ([`copy_chunk`]), so descriptors stay bounded.
//!
//! The cost this adds over the blocking pump is one readiness wait (an
//! `epoll_wait` return and a task poll) per burst, not per chunk: while the
//! source keeps data queued, fill and drain follow each other without waiting.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::admit::ConnState;
use super::metrics::ByteCount;
use super::monotonic_ms;
use super::sys;

/// A pipe used as the splice buffer of one direction while it moves bytes.
#[derive(Debug)]
pub(crate) struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    size: usize,
}

impl Pipe {
    /// A pipe of `size` bytes, or of the kernel's default if it refuses
    /// (`sys::pipe`).
    pub(crate) fn new(size: usize) -> io::Result<Pipe> {
        let (r, w, size) = sys::pipe(size)?;
        Ok(Pipe { r, w, size })
    }
}

/// Empty pipes kept for reuse at most (each is two descriptors).
const KEEP_PIPES: usize = 64;

/// A relay's pipes: at most `max` open (pooled and in use).
#[derive(Debug)]
pub(crate) struct PipePool {
    idle: Mutex<Vec<Pipe>>,
    open: AtomicUsize,
    max: usize,
    size: usize,
}

impl PipePool {
    pub(crate) fn new(max: usize, size: usize) -> PipePool {
        PipePool { idle: Mutex::new(Vec::new()), open: AtomicUsize::new(0), max, size }
    }

    /// An empty pipe, or None when `max` are open (or the kernel refuses one).
    pub(crate) fn take(&self) -> Option<Lease<'_>> {
        let pipe = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(pipe) = pipe {
            return Some(Lease { pool: self, pipe: Some(pipe) });
        }
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        match Pipe::new(self.size) {
            Ok(p) => Some(Lease { pool: self, pipe: Some(p) }),
            Err(_) => {
                self.open.fetch_sub(1, Ordering::AcqRel);
                None
            }
        }
    }

    /// Pipes open now (pooled and in use).
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// A pipe taken from the pool. Dropped (a direction that failed, or a
/// connection's task cancelled mid-transfer), it is closed, since it may
/// hold bytes; [`Lease::give_back`] returns an empty one for reuse.
#[derive(Debug)]
pub(crate) struct Lease<'a> {
    pool: &'a PipePool,
    pipe: Option<Pipe>,
}

impl Lease<'_> {
    fn pipe(&self) -> &Pipe {
        self.pipe.as_ref().expect("a lease holds its pipe until dropped")
    }

    /// Gives back the pipe, which must be empty.
    pub(crate) fn give_back(mut self) {
        let Some(p) = self.pipe.take() else { return };
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < KEEP_PIPES {
            idle.push(p);
        } else {
            drop(idle);
            drop(p);
            self.pool.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if self.pipe.take().is_some() {
            self.pool.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Why a direction, or a whole relayed connection, ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The source sent FIN and everything before it was delivered.
    Eof,
    /// A read or write failed (reset, broken pipe).
    Error,
    /// Neither direction moved a byte for the idle timeout.
    Idle,
}

/// The copy path's buffer (no pipe free, or a socket the kernel will not splice).
const COPY_CHUNK: usize = 64 * 1024;

/// Moves bytes from `from` to `to` until end of stream or an error; counts
/// delivered bytes into `bytes` and marks activity on `conn`.
pub(crate) async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    pool: &PipePool,
    bytes: &(impl ByteCount + ?Sized),
    conn: &ConnState,
) -> End {
    let mut lease: Option<Lease<'_>> = None;
    // The kernel refused splice on these sockets (EINVAL): copy from now on.
    let mut splice_ok = true;
    let end = loop {
        if from.readable().await.is_err() {
            break End::Error;
        }
        if lease.is_none() && splice_ok {
            lease = pool.take();
        }
        let Some(l) = lease.as_ref() else {
            match copy_chunk(from, to, bytes, conn).await {
                Ok(true) => continue,
                Ok(false) => break End::Eof,
                Err(_) => break End::Error,
            }
        };
        let p = l.pipe();
        let n = match from.try_io(Interest::READABLE, || sys::splice(from.as_fd(), p.w.as_fd(), p.size)) {
            Ok(0) => break End::Eof,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Nothing more queued: the pipe is empty, give it back.
                if let Some(l) = lease.take() {
                    l.give_back();
                }
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                splice_ok = false;
                if let Some(l) = lease.take() {
                    l.give_back();
                }
                continue;
            }
            Err(_) => break End::Error,
        };
        conn.touch(monotonic_ms());
        let mut left = n;
        while left > 0 {
            if to.writable().await.is_err() {
                break;
            }
            // No SPLICE_F_MORE: like MSG_MORE it would let the kernel hold a
            // partial segment back, which costs latency on request/response traffic.
            match to.try_io(Interest::WRITABLE, || sys::splice(p.r.as_fd(), to.as_fd(), left)) {
                Ok(0) => break,
                Ok(m) => {
                    left -= m;
                    bytes.add(m as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        if left > 0 {
            break End::Error;
        }
    };
    // At end of stream the pipe is empty (every fill was drained): reuse it.
    // After an error it may hold bytes: dropping the lease closes it.
    if let (End::Eof, Some(l)) = (end, lease) {
        l.give_back();
    }
    end
}

/// One read and its complete write through a user-space buffer: Ok(true)
/// bytes moved (or none were there after all), Ok(false) end of stream.
async fn copy_chunk(
    from: &TcpStream,
    to: &TcpStream,
    bytes: &(impl ByteCount + ?Sized),
    conn: &ConnState,
) -> io::Result<bool> {
    let mut buf = vec![0u8; COPY_CHUNK];
    let n = match from.try_read(&mut buf) {
        Ok(0) => return Ok(false),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
        Err(e) => return Err(e),
    };
    conn.touch(monotonic_ms());
    let mut off = 0;
    while off < n {
        to.writable().await?;
        // MSG_NOSIGNAL: a peer that went away is an EPIPE error, not a SIGPIPE.
        match to.try_io(Interest::WRITABLE, || SockRef::from(to).send_with_flags(&buf[off..n], libc::MSG_NOSIGNAL)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => {
                off += m;
                bytes.add(m as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
