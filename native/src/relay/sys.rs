//! The relay's own system calls: the splice path, which std, socket2 and
//! rustix's safe API would each cover only in part, and which is the
//! measured hot path of a plaintext connection (two `splice(2)` calls per
//! chunk, no copy through user space). Everything else the relay asks of the
//! kernel goes through tokio (sockets, readiness), socket2 (`SO_ORIGINAL_DST`,
//! `send` with `MSG_NOSIGNAL`, `peek`, socket options) or rustix
//! (`getrlimit`, `CLOCK_MONOTONIC`).
//!
//! Both ends of a pipe and every relayed socket are non-blocking: the pumps
//! run on the event loop, which must never block in a system call.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A non-blocking pipe (both ends close-on-exec) of at least `size` bytes when the
/// kernel allows it, else of its default size: `(read end, write end,
/// capacity)`. A bigger pipe moves more per `splice`; an unprivileged
/// process may be capped by /proc/sys/fs/pipe-max-size, so a refused
/// `F_SETPIPE_SZ` keeps the default rather than failing.
pub(crate) fn pipe(size: usize) -> io::Result<(OwnedFd, OwnedFd, usize)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are new, open, and owned
    // by nobody else; each is wrapped exactly once.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: fcntl with an integer argument on a descriptor owned here;
    // no memory is passed.
    let got = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
    let cap = if got > 0 {
        got
    } else {
        // SAFETY: as above, F_GETPIPE_SZ takes no argument.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ) }
    };
    Ok((r, w, usize::try_from(cap).unwrap_or(0).max(4096)))
}

/// One `splice(2)` of up to `len` bytes from `from` to `to` (one of them a
/// pipe), moving pages rather than copying them; retried on EINTR. Ok(0) is
/// end of stream from `from`. Never blocks: `SPLICE_F_NONBLOCK` for the
/// pipe, `O_NONBLOCK` on the socket; `WouldBlock` says which side to wait for
/// only because the pumps fill a pipe only when it is empty and drain it only
/// when it is not (see `splice::pump`).
pub(crate) fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: both descriptors are borrowed, so open for the call; null
        // offsets are what sockets and pipes require; no memory is passed.
        let n = unsafe {
            libc::splice(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                to.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if let Ok(n) = usize::try_from(n) {
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
