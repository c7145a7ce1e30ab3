//! One direction of a relayed connection: socket → pipe → socket with
//! `splice(2)`, so payload pages move between socket buffers without being
//! copied through user space (haproxy's `option splice-auto`, Envoy has no
//! equivalent). Falls back to read/write where the kernel refuses splice.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// A pipe used as the splice buffer of one direction.
#[derive(Debug)]
pub(crate) struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    size: usize,
}

impl Pipe {
    pub(crate) fn new(size: usize) -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned here.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A bigger pipe moves more per system call; an unprivileged process
        // may be capped by /proc/sys/fs/pipe-max-size, so failure keeps the default.
        // SAFETY: fcntl on a descriptor we own.
        let got = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
        // SAFETY: as above.
        let size = if got > 0 {
            got as usize
        } else {
            unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ) }.max(4096) as usize
        };
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

fn retry<F: FnMut() -> isize>(mut f: F) -> io::Result<usize> {
    loop {
        let n = f();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Moves bytes from `from` to `to` until end of stream or an error; both
/// sockets are blocking. Counts delivered bytes into `bytes`.
pub(crate) fn pump(from: RawFd, to: RawFd, pipe: &Pipe, bytes: &AtomicU64, idle: Option<&IdleClock>) -> End {
    let (pr, pw) = (pipe.r.as_raw_fd(), pipe.w.as_raw_fd());
    loop {
        // SAFETY: plain descriptors; null offsets are required for sockets and pipes.
        let n = retry(|| unsafe {
            libc::splice(from, std::ptr::null_mut(), pw, std::ptr::null_mut(), pipe.size, libc::SPLICE_F_MOVE) as isize
        });
        let n = match n {
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
            // SAFETY: as above.
            match retry(|| unsafe {
                libc::splice(pr, std::ptr::null_mut(), to, std::ptr::null_mut(), left, libc::SPLICE_F_MOVE) as isize
            }) {
                Ok(0) | Err(_) => return End::Error,
                Ok(m) => {
                    left -= m;
                    bytes.fetch_add(m as u64, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The read/write fallback.
fn copy(from: RawFd, to: RawFd, bytes: &AtomicU64) -> End {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is a writable buffer of `buf.len()` bytes.
        let n = match retry(|| unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) }) {
            Ok(0) => return End::Eof,
            Ok(n) => n,
            Err(_) => return End::Error,
        };
        let mut off = 0;
        while off < n {
            // SAFETY: `buf[off..n]` is initialised and readable.
            match retry(|| unsafe { libc::write(to, buf[off..n].as_ptr().cast(), n - off) }) {
                Ok(0) | Err(_) => return End::Error,
                Ok(m) => {
                    off += m;
                    bytes.fetch_add(m as u64, Ordering::Relaxed);
                }
            }
        }
    }
}
