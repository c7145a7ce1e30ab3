//! Which clients a listener serves.
//!
//! Istio's DNS proxy listens on localhost only (istio
//! `pilot/cmd/pilot-agent/options/options.go`: `DNS_PROXY_ADDR` defaults to
//! `localhost:15053`), so it never answers another host. A listener here may
//! be bound elsewhere (`:53` on a VM without capture rules, a gateway), and
//! an open resolver is an amplifier for anyone who can forge a source
//! address. The rule:
//! - a loopback listener serves whoever reaches it: only this host can (the
//!   kernel drops packets from other hosts to or from loopback addresses as
//!   martians), and captured queries (`REDIRECT` to `127.0.0.1:15053`) keep
//!   their original, non-loopback source address;
//! - any other listener serves loopback clients plus the networks of its
//!   allow-list and refuses everyone else: REFUSED over UDP (with the
//!   question echoed, never larger than the query), the connection closed at
//!   once over TCP. Without an allow-list that means this host's loopback
//!   clients only, and the server warns at start ([`exposure_warnings`]).
//!
//! Matching is a scan of a few prefixes with integer masks: no allocation,
//! no lock, on every datagram of a non-loopback listener (and nothing at all
//! on a loopback one).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// An IPv4 or IPv6 network: `10.0.0.0/8`, `fd00::/8`, or one address (a /32
/// or /128). The address bits past the prefix must be zero, so a typo such
/// as `10.0.0.1/8` is an error rather than a surprise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: u128,
    len: u8,
    v6: bool,
}

fn mask(bits: u32, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        (u128::MAX << (bits - u32::from(len))) & (u128::MAX >> (128 - bits))
    }
}

/// An address as (bits, is IPv6); an IPv4-mapped IPv6 address is its IPv4 address.
fn key(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), false),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => (u128::from(u32::from(v4)), false),
            None => (u128::from(a), true),
        },
    }
}

/// Whether `ip` is a loopback address (127.0.0.0/8, ::1, or IPv4-mapped 127/8).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

impl Cidr {
    /// Whether `ip` is in this network.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (a, v6) = key(ip);
        let bits = if self.v6 { 128 } else { 32 };
        v6 == self.v6 && a & mask(bits, self.len) == self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let t = s.trim();
        let (a, len) = match t.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| format!("{s:?}: bad prefix length"))?)),
            None => (t, None),
        };
        let ip: IpAddr = a.parse().map_err(|_| format!("{s:?}: not an IP address or CIDR"))?;
        let (addr, v6) = match ip {
            IpAddr::V4(x) => (u128::from(u32::from(x)), false),
            IpAddr::V6(x) => (u128::from(x), true),
        };
        let bits: u8 = if v6 { 128 } else { 32 };
        let len = len.unwrap_or(bits);
        if len > bits {
            return Err(format!("{s:?}: prefix length above {bits}"));
        }
        if addr & !mask(u32::from(bits), len) != 0 {
            return Err(format!("{s:?}: address bits set past the prefix length"));
        }
        Ok(Cidr { addr, len, v6 })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.v6 {
            write!(f, "{}/{}", std::net::Ipv6Addr::from(self.addr), self.len)
        } else {
            write!(f, "{}/{}", std::net::Ipv4Addr::from(self.addr as u32), self.len)
        }
    }
}

/// The clients a non-loopback listener serves: loopback, and these networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<Cidr>,
}

impl AllowList {
    pub fn new(nets: Vec<Cidr>) -> AllowList {
        AllowList { nets }
    }

    /// Parses networks in text form; the error names the position.
    pub fn parse<S: AsRef<str>>(nets: &[S]) -> Result<AllowList, String> {
        let nets = nets
            .iter()
            .enumerate()
            .map(|(i, s)| s.as_ref().parse::<Cidr>().map_err(|e| format!("[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowList { nets })
    }

    pub fn nets(&self) -> &[Cidr] {
        &self.nets
    }

    /// Whether a query from `ip` is served.
    #[inline]
    pub fn allows(&self, ip: IpAddr) -> bool {
        is_loopback(ip) || self.nets.iter().any(|n| n.contains(ip))
    }
}

/// What an operator should hear about at start: a listener off loopback
/// without an allow-list (only loopback clients are served there), or with
/// one that lets in every address (an open resolver).
pub fn exposure_warnings(listen: &[SocketAddr], allow: &AllowList) -> Vec<String> {
    let mut out = Vec::new();
    for a in listen.iter().filter(|a| !is_loopback(a.ip())) {
        if allow.nets.is_empty() {
            out.push(format!(
                "DNS listener {a} is not on loopback and no client allow-list is set: only this host's loopback \
                 clients are served, queries from other addresses are refused (list the networks to serve in the \
                 allow-list)"
            ));
        } else if let Some(all) = allow.nets.iter().find(|n| n.len == 0) {
            out.push(format!(
                "DNS listener {a} serves every address (allow-list has {all}): an open resolver can be used to \
                 amplify attacks on forged source addresses"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_matches_networks() {
        let n: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains(ip("10.1.2.3")) && !n.contains(ip("10.2.0.1")) && !n.contains(ip("fd00::1")));
        assert!(n.contains(ip("::ffff:10.1.9.9")), "an IPv4-mapped client is its IPv4 address");
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        assert_eq!(one.to_string(), "192.0.2.7/32");
        let v6: Cidr = "fd00:10::/32".parse().unwrap();
        assert!(v6.contains(ip("fd00:10::5")) && !v6.contains(ip("fd00:11::5")) && !v6.contains(ip("10.0.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("2001:db8::1")));
        assert!("::/0".parse::<Cidr>().unwrap().contains(ip("2001:db8::1")));
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "fd00::/129", "nope", "10.0.0.0/x", "", "10.0.0.0/-1"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_is_always_allowed_the_rest_only_when_listed() {
        let none = AllowList::default();
        for lo in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            assert!(none.allows(ip(lo)), "{lo}");
        }
        assert!(!none.allows(ip("192.0.2.1")) && !none.allows(ip("fd00::1")));
        let some = AllowList::parse(&["192.0.2.0/24", "fd00::/8"]).unwrap();
        assert!(some.allows(ip("192.0.2.200")) && some.allows(ip("fd12::1")) && !some.allows(ip("198.51.100.1")));
        assert_eq!(AllowList::parse(&["10.0.0.0/8", "bad"]).unwrap_err(), "[1]: \"bad\": not an IP address or CIDR");
    }

    #[test]
    fn warns_about_listeners_off_loopback() {
        let lo: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:53".parse().unwrap();
        let v6: SocketAddr = "[::1]:53".parse().unwrap();
        assert!(exposure_warnings(&[lo, v6], &AllowList::default()).is_empty());
        let w = exposure_warnings(&[lo, any], &AllowList::default());
        assert!(w.len() == 1 && w[0].contains("0.0.0.0:53") && w[0].contains("no client allow-list"), "{w:?}");
        assert!(exposure_warnings(&[any], &AllowList::parse(&["10.0.0.0/8"]).unwrap()).is_empty());
        let w = exposure_warnings(&[any], &AllowList::parse(&["0.0.0.0/0"]).unwrap());
        assert!(w.len() == 1 && w[0].contains("open resolver"), "{w:?}");
    }
}
