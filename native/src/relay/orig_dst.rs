//! The original destination of a redirected connection.
//!
//! `REDIRECT` (nat table, iptables or nftables) rewrites the destination of
//! a connection's packets to the proxy; the conntrack entry keeps the
//! original tuple, which netfilter exposes as the socket options
//! `SO_ORIGINAL_DST` (`SOL_IP`, `linux/netfilter_ipv4.h`) and
//! `IP6T_SO_ORIGINAL_DST` (`SOL_IPV6`, `linux/netfilter_ipv6/ip6_tables.h`),
//! both 80. Envoy's `original_dst` listener filter reads the same options.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

const SO_ORIGINAL_DST: libc::c_int = 80;
const IP6T_SO_ORIGINAL_DST: libc::c_int = 80;

/// The destination `fd`'s connection had before it was redirected.
/// `v6` is the family of the accepted socket. Fails with `ENOENT` when the
/// connection was not redirected (no conntrack NAT entry).
pub fn original_destination(fd: RawFd, v6: bool) -> io::Result<SocketAddr> {
    if v6 {
        // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
        let mut sa: libc::sockaddr_in6 = unsafe { zeroed() };
        let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: `sa`/`len` describe a writable buffer of the right size.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                IP6T_SO_ORIGINAL_DST,
                (&mut sa as *mut libc::sockaddr_in6).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
        Ok(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(sa.sin6_port), 0, sa.sin6_scope_id)))
    } else {
        // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
        let mut sa: libc::sockaddr_in = unsafe { zeroed() };
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `sa`/`len` describe a writable buffer of the right size.
        let r = unsafe {
            libc::getsockopt(fd, libc::SOL_IP, SO_ORIGINAL_DST, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len)
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
        Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sa.sin_port))))
    }
}
