//! Local answers from a name table snapshot, written straight into the
//! caller's buffer: no allocation, one table lookup per query.
//!
//! Where this differs from Istio's agent (istio `pkg/dns/client/dns.go`,
//! `LocalDNSServer.ServeDNS` and `LookupTable.lookupHost`):
//! - NODATA carries an SOA in the authority section (RFC 2308 §2.2) so
//!   clients can cache the absence; Istio sends none.
//! - Other query types for Kubernetes names of the cluster domain get NODATA
//!   with an SOA (we are authoritative for them); Istio forwards them and the
//!   upstream may say NXDOMAIN for a name that exists (istio/istio#54189).
//! - PTR for every table address (Istio: "TODO: handle PTR records for
//!   reverse dns lookups", in `lookupHost`).
//! - Owners are the question name as asked, never a CNAME to Istio-only names
//!   (istio/istio#35421, #57276) nor a literal `*` (istio/istio#47264, #61732).
//! - Several addresses rotate (round robin) instead of being shuffled
//!   (Istio's `roundRobinResponse`).
//! - Optional authoritative zones: unknown names under them get NXDOMAIN
//!   with an SOA locally, so search-list expansions stop reaching the
//!   upstream (istio/istio#57532).
//! - Answers are compressed and truncated to the client's limit with TC
//!   (RFC 1035 §4.2.1, RFC 6891 §6.2.3; istio/istio#29675, istio/ztunnel#2060);
//!   over UDP that limit is never above 1232 bytes, whatever the client
//!   advertises (`wire::MAX_UDP_REPLY`; Istio honours up to 65,535).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::names::QueryName;

use super::table::AnswerSource;
use super::wire::{
    flag, parse_query, write_reject, write_status, NameBuf, Query, RType, Rcode, Reject, CLASSIC_UDP_LIMIT, CLASS_IN,
    HEADER_LEN, MAX_MESSAGE, MAX_WIRE_NAME, OPT_LEN,
};

/// Default TTL of local answers, as Istio's `defaultTTLInSeconds`.
pub const DEFAULT_TTL: u32 = 30;

/// How local answers are made.
#[derive(Debug, Clone)]
pub struct AnswerConfig {
    /// TTL of local records and of the SOA (and its MINIMUM, which bounds
    /// negative caching, RFC 2308 §5).
    pub ttl: u32,
    /// Zones we are authoritative for: unknown names below them are NXDOMAIN.
    pub zones: Vec<NameBuf>,
}

impl Default for AnswerConfig {
    fn default() -> Self {
        AnswerConfig { ttl: DEFAULT_TTL, zones: Vec::new() }
    }
}

impl AnswerConfig {
    /// Builds a config from zone names in presentation form.
    pub fn new(ttl: u32, zones: &[String]) -> Result<AnswerConfig, String> {
        let mut zs = Vec::with_capacity(zones.len());
        for z in zones {
            let n = NameBuf::from_text(z)
                .filter(|n| n.label_count() > 0)
                .ok_or_else(|| format!("zone {z:?}: not a valid domain name"))?;
            zs.push(n.to_lowercase());
        }
        Ok(AnswerConfig { ttl, zones: zs })
    }
}

/// The transport a query came over, which sets the response size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What happened to a query, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    /// Answered from the table with records.
    Local = 0,
    /// Answered from the table: known name, no record of the type (NODATA + SOA).
    NoData = 1,
    /// Unknown name under an authoritative zone (NXDOMAIN + SOA).
    NxDomain = 2,
    /// Forwarded upstream and answered by it.
    Forwarded = 3,
    /// Forwarded name answered from the cache.
    CacheHit = 4,
    /// Every upstream attempt failed: SERVFAIL.
    UpstreamFailure = 5,
    /// Malformed query: FORMERR, NOTIMP or BADVERS.
    Malformed = 6,
    /// Not answered at all (runt packet, a response, no room).
    Dropped = 7,
    /// An upstream answer that did not match what we asked, dropped.
    DroppedSpoof = 8,
    /// A client outside the allow-list of a non-loopback listener: REFUSED.
    Refused = 9,
    /// A forward beyond the pending-forward limits: SERVFAIL at once.
    Overloaded = 10,
}

impl Outcome {
    pub const ALL: [Outcome; 11] = [
        Outcome::Local,
        Outcome::NoData,
        Outcome::NxDomain,
        Outcome::Forwarded,
        Outcome::CacheHit,
        Outcome::UpstreamFailure,
        Outcome::Malformed,
        Outcome::Dropped,
        Outcome::DroppedSpoof,
        Outcome::Refused,
        Outcome::Overloaded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Local => "local",
            Outcome::NoData => "nodata",
            Outcome::NxDomain => "nxdomain",
            Outcome::Forwarded => "forwarded",
            Outcome::CacheHit => "cache_hit",
            Outcome::UpstreamFailure => "upstream_failure",
            Outcome::Malformed => "malformed",
            Outcome::Dropped => "dropped",
            Outcome::DroppedSpoof => "dropped_spoof",
            Outcome::Refused => "refused",
            Outcome::Overloaded => "overloaded",
        }
    }
}

/// What to do with a packet.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "the query moves by value, so that a forward answered from the cache or shed at the limits \
              allocates nothing; a Decision lives on the stack for one call"
)]
pub enum Decision {
    /// `len` bytes of `out` are the reply.
    Reply { len: usize, outcome: Outcome, qtype: RType, rcode: Rcode },
    /// Not ours: ask an upstream.
    Forward(Query),
    /// Send nothing.
    Drop,
}

/// The size limit for a reply to `q` over `transport`.
pub fn reply_limit(q: &Query, transport: Transport) -> usize {
    match transport {
        Transport::Udp => q.udp_limit(),
        Transport::Tcp => MAX_MESSAGE,
    }
}

/// Parses `packet` and answers it from `table` if it is ours. `rotation`
/// picks the first of several addresses (callers pass a counter).
pub fn answer_packet<S: AnswerSource + ?Sized>(
    table: Option<&S>,
    cfg: &AnswerConfig,
    packet: &[u8],
    transport: Transport,
    rotation: u32,
    out: &mut [u8],
) -> Decision {
    let q = match parse_query(packet) {
        Ok(q) => q,
        Err(reject) => {
            let len = write_reject(&reject, out);
            return match reject {
                Reject::Drop => Decision::Drop,
                _ if len == 0 => Decision::Drop,
                Reject::Error { rcode, .. } => {
                    Decision::Reply { len, outcome: Outcome::Malformed, qtype: RType(0), rcode }
                }
                Reject::BadVersion { .. } => {
                    Decision::Reply { len, outcome: Outcome::Malformed, qtype: RType(0), rcode: Rcode::BADVERS }
                }
            };
        }
    };
    match answer_query(table, cfg, &q, reply_limit(&q, transport), rotation, out) {
        Some((len, outcome, rc)) => Decision::Reply { len, outcome, qtype: q.qtype, rcode: rc },
        None => Decision::Forward(q),
    }
}

/// The reply to a packet from a client we do not serve (outside the
/// allow-list of a non-loopback listener): REFUSED (RFC 1035 §4.1.1: refused
/// "for policy reasons") with the question echoed, as BIND's `allow-query`
/// and Unbound's `access-control: refuse` answer, so the client fails over at
/// once instead of timing out. The reply holds only what the query held
/// (header, question, OPT): no amplification. Malformed packets from such a
/// client are dropped: nothing is owed to it.
pub fn refuse_packet(packet: &[u8], out: &mut [u8]) -> Decision {
    let Ok(q) = parse_query(packet) else { return Decision::Drop };
    match write_status(&q, Rcode::REFUSED, out) {
        0 => Decision::Drop,
        len => Decision::Reply { len, outcome: Outcome::Refused, qtype: q.qtype, rcode: Rcode::REFUSED },
    }
}

/// What the table says about a query.
enum Local<'t> {
    /// Records of one or both families.
    Addrs {
        v4: &'t [Ipv4Addr],
        v6: &'t [Ipv6Addr],
    },
    Ptr(&'t str),
    NoData,
    NxDomain {
        zone_off: usize,
    },
}

fn decide<'t, S: AnswerSource + ?Sized>(table: &'t S, cfg: &AnswerConfig, q: &Query) -> Option<Local<'t>> {
    if q.qclass != CLASS_IN {
        return None; // CHAOS etc.: the upstream's business.
    }
    let mut text = [0u8; 253];
    let name = q.qname.to_lookup_text(&mut text)?;
    if q.qtype == RType::PTR {
        if let Some(host) = reverse_addr(name).and_then(|a| table.ptr(&a)) {
            return Some(Local::Ptr(host));
        }
    }
    let qn = QueryName::new(name);
    // The hit borrows the query name too; the entry's view borrows only the table.
    let entry = qn.as_ref().and_then(|qn| table.names().lookup(qn)).map(|h| h.entry);
    if let Some((entry, hit)) = entry.and_then(|i| Some((i, table.names().entry(i)?))) {
        return Some(match q.qtype {
            RType::A => Local::Addrs { v4: hit.ipv4, v6: &[] },
            RType::AAAA => Local::Addrs { v4: &[], v6: hit.ipv6 },
            RType::ANY => Local::Addrs { v4: hit.ipv4, v6: hit.ipv6 },
            _ if table.is_authoritative(entry) => Local::NoData,
            // A ServiceEntry host: other types (MX, TXT, HTTPS...) may exist upstream.
            _ => return None,
        })
        .map(|l| match l {
            Local::Addrs { v4: [], v6: [] } => Local::NoData,
            l => l,
        });
    }
    let zone_off = cfg.zones.iter().find_map(|z| q.qname.suffix_offset(z.as_wire()))?;
    Some(Local::NxDomain { zone_off })
}

/// Answers a parsed query from the table into `out` (at most `limit` bytes).
/// `None`: not ours, forward it. Returns the length, outcome and rcode.
pub fn answer_query<S: AnswerSource + ?Sized>(
    table: Option<&S>,
    cfg: &AnswerConfig,
    q: &Query,
    limit: usize,
    rotation: u32,
    out: &mut [u8],
) -> Option<(usize, Outcome, Rcode)> {
    let local = decide(table?, cfg, q)?;
    let table = table?;
    let limit = limit.min(out.len()).min(MAX_MESSAGE);
    let qname = q.qname.as_wire();
    let opt_len = if q.edns.is_some() { OPT_LEN } else { 0 };
    // Header, question, OPT and one SOA always fit in 512 bytes: the
    // question is at most 259 bytes and the SOA is written with pointers.
    if limit < CLASSIC_UDP_LIMIT {
        return None;
    }
    let (rc, outcome) = match local {
        Local::NxDomain { .. } => (Rcode::NXDOMAIN, Outcome::NxDomain),
        Local::NoData => (Rcode::NOERROR, Outcome::NoData),
        _ => (Rcode::NOERROR, Outcome::Local),
    };
    let flags = flag::QR | flag::AA | flag::RA | (q.flags & (flag::OPCODE_MASK | flag::RD | flag::CD)) | rc.low_bits();
    let mut b = Buf { out, len: 0 };
    b.u16(q.id);
    b.u16(flags);
    b.put(&[0, 1, 0, 0, 0, 0, 0, u8::from(q.edns.is_some())]);
    b.put(qname);
    b.u16(q.qtype.0);
    b.u16(q.qclass);
    let room = limit - b.len - opt_len;
    let mut answers = 0u16;
    let mut truncated = false;
    let ttl = cfg.ttl;
    match local {
        Local::Addrs { v4, v6 } => {
            // Owner: a pointer to the question (offset 12), so it echoes the
            // client's letter case and costs 2 bytes.
            let mut left = room;
            for (addrs, ty, len) in [(AddrList::V4(v4), RType::A, 4usize), (AddrList::V6(v6), RType::AAAA, 16usize)] {
                let n = addrs.len();
                if n == 0 {
                    continue;
                }
                let rec = 12 + len;
                let fit = (left / rec).min(n);
                truncated |= fit < n;
                let start = rotation as usize % n;
                for i in 0..fit {
                    b.put(&[0xC0, HEADER_LEN as u8]);
                    b.u16(ty.0);
                    b.u16(CLASS_IN);
                    b.u32(ttl);
                    b.u16(len as u16);
                    addrs.put((start + i) % n, &mut b);
                }
                left -= fit * rec;
                answers += fit as u16;
            }
        }
        Local::Ptr(host) => {
            let host = NameBuf::from_text(host).unwrap_or_default();
            let rec = 12 + host.as_wire().len();
            if rec <= room {
                b.put(&[0xC0, HEADER_LEN as u8]);
                b.u16(RType::PTR.0);
                b.u16(CLASS_IN);
                b.u32(ttl);
                b.u16(host.as_wire().len() as u16);
                b.put(host.as_wire());
                answers = 1;
            } else {
                truncated = true;
            }
        }
        Local::NoData | Local::NxDomain { .. } => {
            let zone_off = match local {
                Local::NxDomain { zone_off } => zone_off,
                _ => soa_zone(table, cfg, &q.qname),
            };
            write_soa(&mut b, qname.len() - zone_off, HEADER_LEN + zone_off, ttl, table.serial());
            b.out[9] = 1; // NSCOUNT
        }
    }
    b.out[7] = answers as u8;
    b.out[6] = (answers >> 8) as u8;
    if truncated {
        b.out[2] |= (flag::TC >> 8) as u8;
    }
    if let Some(e) = q.edns {
        let ttl: u32 = if e.dnssec_ok { 0x8000 } else { 0 };
        b.put(&[0]);
        b.u16(RType::OPT.0);
        b.u16(super::wire::EDNS_UDP_SIZE);
        b.u32(ttl);
        b.u16(0);
    }
    debug_assert!(b.len <= limit);
    Some((b.len, outcome, rc))
}

/// The SOA owner for a negative answer about `qname`: the cluster domain, an
/// authoritative zone, or the name itself, always a suffix of the question
/// so that resolvers accept it (RFC 2308 §3) and it compresses to a pointer.
fn soa_zone<S: AnswerSource + ?Sized>(table: &S, cfg: &AnswerConfig, qname: &NameBuf) -> usize {
    let domain = table.domain();
    qname
        .suffix_offset(domain.as_wire())
        .filter(|_| domain.label_count() > 0)
        .or_else(|| cfg.zones.iter().find_map(|z| qname.suffix_offset(z.as_wire())))
        .unwrap_or(0)
}

/// Writes `zone SOA ns.dns.zone hostmaster.zone serial 3600 600 86400 ttl`
/// with every name a pointer into the question.
fn write_soa(b: &mut Buf<'_>, zone_len: usize, zone_at: usize, ttl: u32, serial: u32) {
    let ptr = [0xC0 | (zone_at >> 8) as u8, zone_at as u8];
    let fits = |prefix: usize| zone_len + prefix <= MAX_WIRE_NAME;
    let mname: &[u8] = if fits(7) { b"\x02ns\x03dns" } else { b"" };
    let rname: &[u8] = if fits(11) { b"\x0ahostmaster" } else { b"" };
    b.put(&ptr);
    b.u16(RType::SOA.0);
    b.u16(CLASS_IN);
    b.u32(ttl);
    b.u16((mname.len() + 2 + rname.len() + 2 + 20) as u16);
    b.put(mname);
    b.put(&ptr);
    b.put(rname);
    b.put(&ptr);
    for v in [serial, 3600, 600, 86400, ttl] {
        b.u32(v);
    }
}

enum AddrList<'a> {
    V4(&'a [Ipv4Addr]),
    V6(&'a [Ipv6Addr]),
}

impl AddrList<'_> {
    fn len(&self) -> usize {
        match self {
            AddrList::V4(a) => a.len(),
            AddrList::V6(a) => a.len(),
        }
    }

    fn put(&self, i: usize, b: &mut Buf<'_>) {
        match self {
            AddrList::V4(a) => b.put(&a[i].octets()),
            AddrList::V6(a) => b.put(&a[i].octets()),
        }
    }
}

/// An append cursor whose callers have checked the room beforehand
/// (`answer_query` sizes everything against `limit`); a write past the end
/// is dropped rather than panicking.
struct Buf<'o> {
    out: &'o mut [u8],
    len: usize,
}

impl Buf<'_> {
    #[inline]
    fn put(&mut self, b: &[u8]) {
        if let Some(dst) = self.out.get_mut(self.len..self.len + b.len()) {
            dst.copy_from_slice(b);
            self.len += b.len();
        }
    }

    #[inline]
    fn u16(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }

    #[inline]
    fn u32(&mut self, v: u32) {
        self.put(&v.to_be_bytes());
    }
}

/// The address of a full reverse name (`4.3.2.1.in-addr.arpa`, or 32 nibbles
/// under `ip6.arpa`, RFC 1035 §3.5, RFC 3596 §2.5); lower-case input.
pub fn reverse_addr(name: &[u8]) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(b".in-addr.arpa") {
        let mut o = [0u8; 4];
        let mut n = 0;
        for label in rest.split(|&b| b == b'.') {
            if n == 4 || label.is_empty() || label.len() > 3 || !label.iter().all(u8::is_ascii_digit) {
                return None;
            }
            if label.len() > 1 && label[0] == b'0' {
                return None;
            }
            let v: u32 = label.iter().fold(0, |acc, d| acc * 10 + (d - b'0') as u32);
            o[3 - n] = u8::try_from(v).ok()?;
            n += 1;
        }
        return (n == 4).then(|| IpAddr::V4(Ipv4Addr::from(o)));
    }
    let rest = name.strip_suffix(b".ip6.arpa")?;
    if rest.len() != 63 {
        return None;
    }
    let mut v: u128 = 0;
    for (i, label) in rest.split(|&b| b == b'.').enumerate() {
        let [c] = label else { return None };
        let d = (*c as char).to_digit(16)? as u128;
        v |= d << (4 * i);
    }
    Some(IpAddr::V6(Ipv6Addr::from(v)))
}

#[cfg(test)]
mod tests;
