//! A UDP worker: batches of datagrams in, local answers out, forwarded
//! queries handed to the runtime. The local path allocates nothing: buffers
//! are allocated once per worker, the snapshot is one atomic load per batch.
//! So does what a flood mostly meets: the allow-list check of a listener off
//! loopback (REFUSED) and the pending-forward limits (SERVFAIL), answered in
//! the same batch.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::runtime::Handle;

use super::Shared;
use crate::dns::acl::AllowList;
use crate::dns::answer::{answer_packet, refuse_packet, Decision, Outcome, Transport};
use crate::dns::metrics::LocalCounts;
use crate::dns::wire::{flag, write_status, Query, Rcode, MAX_UDP_REPLY};

/// Datagrams per `recvmmsg`/`sendmmsg` call.
const BATCH: usize = 32;
/// Receive buffer per datagram. A query is at most a few hundred bytes; a
/// larger datagram is cut (and, seen as truncated, dropped).
const RECV_BUF: usize = 4096;
/// Send buffer per datagram: no UDP reply is larger (`wire::MAX_UDP_REPLY`).
const SEND_BUF: usize = MAX_UDP_REPLY;

/// Whether a reply carries TC (for the truncation counter).
#[inline]
fn truncated(reply: &[u8]) -> bool {
    reply.get(2).is_some_and(|b| (u16::from(*b) << 8) & flag::TC != 0)
}

/// What a datagram from `from` gets: REFUSED when the listener checks its
/// clients and `from` is not allowed, else the table's answer (or a forward).
#[inline]
fn decide(
    acl: Option<&AllowList>,
    from: Option<SocketAddr>,
    answer: impl FnOnce(&mut [u8]) -> Decision,
    packet: &[u8],
    out: &mut [u8],
) -> Decision {
    match acl {
        Some(a) if !from.is_some_and(|f| a.allows(f.ip())) => refuse_packet(packet, out),
        _ => answer(out),
    }
}

/// Hands a query the table does not answer to the runtime: the cache first
/// (synchronously, still without allocation), else, if the pending-forward
/// limits admit it, an upstream task whose reply is sent on this worker's
/// socket; over a limit, SERVFAIL at once.
#[inline]
fn forward(
    shared: &Arc<Shared>,
    rt: &Handle,
    sock: &Arc<UdpSocket>,
    q: Query,
    client: Option<SocketAddr>,
    out: &mut [u8],
    counts: &mut LocalCounts,
) -> Option<usize> {
    if let Some(n) = shared.forwarder.cached_reply(&q, Transport::Udp, out) {
        counts.query(Outcome::CacheHit, q.qtype, Rcode(u16::from_be_bytes([out[2], out[3]]) & 0xF));
        return Some(n);
    }
    let client = client?;
    let slot = match shared.gate.admit(client.ip()) {
        Ok(slot) => slot,
        Err(limit) => {
            counts.forward_rejected(limit);
            counts.query(Outcome::Overloaded, q.qtype, Rcode::SERVFAIL);
            return Some(write_status(&q, Rcode::SERVFAIL, out)).filter(|&n| n > 0);
        }
    };
    let shared = shared.clone();
    let sock = sock.clone();
    rt.spawn(async move {
        let (reply, outcome, rcode) = shared.forwarder.reply(&q, Transport::Udp).await;
        drop(slot);
        shared.metrics.query(outcome, q.qtype, rcode);
        if truncated(&reply) {
            shared.metrics.udp_truncated();
        }
        if !reply.is_empty() {
            let _ = sock.send_to(&reply, client);
        }
    });
    None
}

#[cfg(target_os = "linux")]
pub(super) fn worker(sock: Arc<UdpSocket>, shared: Arc<Shared>, rt: Handle, acl: Option<Arc<AllowList>>) {
    use std::os::fd::AsRawFd;

    let fd = sock.as_raw_fd();
    let mut rbufs = vec![0u8; BATCH * RECV_BUF];
    let mut wbufs = vec![0u8; BATCH * SEND_BUF];
    // SAFETY: sockaddr_storage is plain C data; all-zero is a valid value.
    let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut riov: Vec<libc::iovec> = vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BATCH];
    let mut wiov = riov.clone();
    // SAFETY: mmsghdr is plain C data (null pointers, zero lengths); all-zero
    // is a valid value, and every header is filled in before a call uses it.
    let mut rmsg: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    // SAFETY: as above.
    let mut wmsg: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut rotation = 0u32;
    let mut counts = LocalCounts::default();
    while !shared.stop.load(Ordering::Acquire) {
        shared.metrics.flush(&mut counts);
        for i in 0..BATCH {
            riov[i] = libc::iovec { iov_base: rbufs[i * RECV_BUF..].as_mut_ptr().cast(), iov_len: RECV_BUF };
            let h = &mut rmsg[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut riov[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            rmsg[i].msg_len = 0;
        }
        // SAFETY: every header points at buffers owned by this frame that
        // outlive the call; BATCH headers are valid. MSG_WAITFORONE: block
        // for the first datagram (up to SO_RCVTIMEO), then take what is queued.
        let n =
            unsafe { libc::recvmmsg(fd, rmsg.as_mut_ptr(), BATCH as u32, libc::MSG_WAITFORONE, std::ptr::null_mut()) };
        if n <= 0 {
            continue; // timeout (to look at `stop`), EINTR, or a transient error
        }
        let snap = shared.table.load();
        let cfg = shared.answer.load();
        let mut nsend = 0usize;
        for i in 0..n as usize {
            let len = rmsg[i].msg_len as usize;
            if rmsg[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                counts.dropped();
                continue;
            }
            rotation = rotation.wrapping_add(1);
            let packet = &rbufs[i * RECV_BUF..i * RECV_BUF + len.min(RECV_BUF)];
            let out = &mut wbufs[nsend * SEND_BUF..(nsend + 1) * SEND_BUF];
            let from = sockaddr(&names[i]);
            let answer = |out: &mut [u8]| answer_packet(snap.as_deref(), &cfg, packet, Transport::Udp, rotation, out);
            let reply = match decide(acl.as_deref(), from, answer, packet, out) {
                Decision::Reply { len, outcome, qtype, rcode } => {
                    counts.query(outcome, qtype, rcode);
                    Some(len)
                }
                Decision::Drop => {
                    counts.dropped();
                    None
                }
                Decision::Forward(q) => forward(&shared, &rt, &sock, q, from, out, &mut counts),
            };
            if let Some(len) = reply {
                if truncated(&out[..len]) {
                    counts.udp_truncated();
                }
                wiov[nsend] = libc::iovec { iov_base: out.as_mut_ptr().cast(), iov_len: len };
                let h = &mut wmsg[nsend].msg_hdr;
                h.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = rmsg[i].msg_hdr.msg_namelen;
                h.msg_iov = &mut wiov[nsend];
                h.msg_iovlen = 1;
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
                h.msg_flags = 0;
                nsend += 1;
            }
        }
        // Counted before the replies leave, so a client that got its answer
        // sees it in the stats.
        shared.metrics.flush(&mut counts);
        let mut sent = 0usize;
        while sent < nsend {
            // SAFETY: headers `sent..nsend` point at live buffers of this frame.
            let r = unsafe { libc::sendmmsg(fd, wmsg[sent..].as_mut_ptr(), (nsend - sent) as u32, 0) };
            if r <= 0 {
                // A reply that cannot be sent (e.g. the client's address
                // vanished) is skipped; the client will retry.
                sent += 1;
            } else {
                sent += r as usize;
            }
        }
    }
}

/// The peer address of a datagram.
#[cfg(target_os = "linux")]
fn sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match s.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id)))
        }
        _ => None,
    }
}

/// Portable fallback: one datagram per system call.
#[cfg(not(target_os = "linux"))]
pub(super) fn worker(sock: Arc<UdpSocket>, shared: Arc<Shared>, rt: Handle, acl: Option<Arc<AllowList>>) {
    let mut rbuf = vec![0u8; RECV_BUF];
    let mut wbuf = vec![0u8; SEND_BUF];
    let mut rotation = 0u32;
    let mut counts = LocalCounts::default();
    while !shared.stop.load(Ordering::Acquire) {
        shared.metrics.flush(&mut counts);
        let Ok((len, from)) = sock.recv_from(&mut rbuf) else { continue };
        rotation = rotation.wrapping_add(1);
        let snap = shared.table.load();
        let cfg = shared.answer.load();
        let packet = &rbuf[..len];
        let answer = |out: &mut [u8]| answer_packet(snap.as_deref(), &cfg, packet, Transport::Udp, rotation, out);
        let reply = match decide(acl.as_deref(), Some(from), answer, packet, &mut wbuf) {
            Decision::Reply { len, outcome, qtype, rcode } => {
                counts.query(outcome, qtype, rcode);
                Some(len)
            }
            Decision::Drop => {
                counts.dropped();
                None
            }
            Decision::Forward(q) => forward(&shared, &rt, &sock, q, Some(from), &mut wbuf, &mut counts),
        };
        if let Some(n) = reply {
            if truncated(&wbuf[..n]) {
                counts.udp_truncated();
            }
        }
        shared.metrics.flush(&mut counts);
        if let Some(n) = reply {
            let _ = sock.send_to(&wbuf[..n], from);
        }
    }
}
