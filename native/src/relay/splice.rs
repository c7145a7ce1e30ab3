//! One direction of a relayed connection: socket → pipe → socket with
//! `splice(2)`, so payload pages move between socket buffers without being
//! copied through user space (haproxy's `option splice-auto`, Envoy has no
//! equivalent). Falls back to read/write where the kernel refuses splice.

use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use socket2::SockRef;

use super::sys;

/// A pipe used as the splice buffer of one direction.
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

/// Why a pump ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The source sent FIN and everything before it was delivered.
    Eof,
    /// A read or write failed (reset, broken pipe, shutdown by `stop`).
    Error,
    /// Neither direction moved a byte for the idle timeout.
    Idle,
}

/// The idle clock a connection's two pumps share (Envoy tcp_proxy
/// `idle_timeout`: no bytes in either direction). The sockets carry
/// SO_RCVTIMEO, so a blocked splice wakes up to look at it.
#[derive(Debug)]
pub(crate) struct IdleClock {
    pub(crate) last_ms: AtomicU64,
    pub(crate) timeout_ms: u64,
}

/// Moves bytes from `from` to `to` until end of stream or an error; both
/// sockets are blocking. Counts delivered bytes into `bytes`.
pub(crate) fn pump(from: &TcpStream, to: &TcpStream, pipe: &Pipe, bytes: &AtomicU64, idle: Option<&IdleClock>) -> End {
    loop {
        let n = match sys::splice(from.as_fd(), pipe.w.as_fd(), pipe.size) {
            Ok(0) => return End::Eof,
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return copy(from, to, bytes),
            // SO_RCVTIMEO expired: idle only if the other direction was quiet too.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match idle {
                Some(c) if super::monotonic_ms().saturating_sub(c.last_ms.load(Ordering::Relaxed)) >= c.timeout_ms => {
                    return End::Idle
                }
                _ => continue,
            },
            Err(_) => return End::Error,
        };
        if let Some(c) = idle {
            c.last_ms.store(super::monotonic_ms(), Ordering::Relaxed);
        }
        let mut left = n;
        while left > 0 {
            // No SPLICE_F_MORE: like MSG_MORE it would let the kernel hold a
            // partial segment back, which costs latency on request/response traffic.
            match sys::splice(pipe.r.as_fd(), to.as_fd(), left) {
                Ok(0) | Err(_) => return End::Error,
                Ok(m) => {
                    left -= m;
                    bytes.fetch_add(m as u64, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The read/write fallback, for sockets the kernel will not splice.
fn copy(mut from: &TcpStream, to: &TcpStream, bytes: &AtomicU64) -> End {
    let to = SockRef::from(to);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return End::Eof,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return End::Error,
        };
        let mut off = 0;
        while off < n {
            // MSG_NOSIGNAL: a peer that went away is an EPIPE error, not a SIGPIPE.
            match to.send_with_flags(&buf[off..n], libc::MSG_NOSIGNAL) {
                Ok(0) => return End::Error,
                Ok(m) => {
                    off += m;
                    bytes.fetch_add(m as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return End::Error,
            }
        }
    }
}
