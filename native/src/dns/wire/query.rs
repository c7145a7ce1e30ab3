//! A client's query: validated (one question, EDNS0 in its place) or
//! rejected with the rcode to answer it with, and the header-only reply to
//! a rejection.

use super::writer::write_opt;
use super::{err, flag, NameBuf, RType, Rcode, Reader, WireError, CLASSIC_UDP_LIMIT, HEADER_LEN, MAX_UDP_REPLY};

/// EDNS0 parameters of a message's OPT record (RFC 6891 §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub ext_rcode: u8,
    pub version: u8,
    pub dnssec_ok: bool,
}

impl Edns {
    /// The EDNS0 parameters an OPT record carries in its CLASS and TTL
    /// fields (RFC 6891 §6.1.2, §6.1.3).
    pub(super) fn from_opt(class: u16, ttl: u32) -> Edns {
        Edns { udp_size: class, ext_rcode: (ttl >> 24) as u8, version: (ttl >> 16) as u8, dnssec_ok: ttl & 0x8000 != 0 }
    }
}

/// A validated query: one question, optional EDNS0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub flags: u16,
    /// The question name as the client sent it (letter case kept).
    pub qname: NameBuf,
    pub qtype: RType,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

impl Query {
    pub fn opcode(&self) -> u16 {
        (self.flags & flag::OPCODE_MASK) >> 11
    }

    /// The largest reply this client gets over UDP: its advertised EDNS0
    /// size (RFC 6891 §6.2.5: below 512 counts as 512), or 512 without EDNS0
    /// (RFC 1035 §4.2.1), and never more than [`MAX_UDP_REPLY`]. Every UDP
    /// answer path sizes its reply with this.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => (e.udp_size as usize).clamp(CLASSIC_UDP_LIMIT, MAX_UDP_REPLY),
            None => CLASSIC_UDP_LIMIT,
        }
    }
}

/// Why a packet is not answered from the name table as a normal query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not worth a reply: too short to carry an ID, or a response (QR=1;
    /// answering responses invites reflection loops, RFC 5452 §9.1).
    Drop,
    /// Answer with this rcode, header only (RFC 1035 §4.1.1: FORMERR,
    /// NOTIMP); the reply is never larger than the query.
    Error { id: u16, flags: u16, rcode: Rcode, reason: WireError },
    /// EDNS version we do not speak (RFC 6891 §6.1.3): BADVERS with an OPT.
    BadVersion { id: u16, flags: u16 },
}

/// Skips a resource record, returning its type and, for OPT, the EDNS data.
fn skip_rr(r: &mut Reader<'_>, scratch: &mut NameBuf) -> Result<(RType, Option<Edns>), WireError> {
    let start = r.pos();
    r.name(scratch, "record owner")?;
    let ty = RType(r.u16("record type")?);
    let class = r.u16("record class")?;
    let ttl = r.u32("record TTL")?;
    let rdlen = r.u16("record length")?;
    r.bytes(rdlen as usize, "record data")?;
    if ty != RType::OPT {
        return Ok((ty, None));
    }
    if scratch.as_wire() != [0] {
        return err("OPT record with an owner other than the root", start);
    }
    Ok((ty, Some(Edns::from_opt(class, ttl))))
}

/// Parses a query from a client. Policy (RFC 1035 §4.1.1, RFC 6891, and
/// what miekg/dns, which Istio uses, accepts):
/// - shorter than a header, or QR set: dropped;
/// - opcode other than QUERY: NOTIMP;
/// - QDCOUNT other than 1, a malformed question or record, an OPT outside the
///   additional section, two OPTs, or an OPT not owned by the root: FORMERR;
/// - EDNS version above 0: BADVERS.
///
/// Bytes after the last counted record are ignored.
pub fn parse_query(packet: &[u8]) -> Result<Query, Reject> {
    if packet.len() < HEADER_LEN {
        return Err(Reject::Drop);
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let flags = u16::from_be_bytes([packet[2], packet[3]]);
    if flags & flag::QR != 0 {
        return Err(Reject::Drop);
    }
    let formerr = |reason: WireError| Reject::Error { id, flags, rcode: Rcode::FORMERR, reason };
    if flags & flag::OPCODE_MASK != 0 {
        return Err(Reject::Error { id, flags, rcode: Rcode::NOTIMP, reason: WireError { what: "opcode", at: 2 } });
    }
    let count = |i: usize| u16::from_be_bytes([packet[4 + 2 * i], packet[5 + 2 * i]]);
    let (qd, an, ns, ar) = (count(0), count(1), count(2), count(3));
    if qd != 1 {
        return Err(formerr(WireError { what: "question count is not 1", at: 4 }));
    }
    let mut r = Reader::new(packet, HEADER_LEN);
    let mut qname = NameBuf::default();
    r.name(&mut qname, "question name").map_err(formerr)?;
    let qtype = RType(r.u16("question type").map_err(formerr)?);
    let qclass = r.u16("question class").map_err(formerr)?;
    let mut scratch = NameBuf::default();
    for _ in 0..(an as u32 + ns as u32) {
        let at = r.pos();
        let (ty, _) = skip_rr(&mut r, &mut scratch).map_err(formerr)?;
        if ty == RType::OPT {
            return Err(formerr(WireError { what: "OPT record outside the additional section", at }));
        }
    }
    let mut edns = None;
    for _ in 0..ar {
        let at = r.pos();
        if let (_, Some(e)) = skip_rr(&mut r, &mut scratch).map_err(formerr)? {
            if edns.is_some() {
                return Err(formerr(WireError { what: "second OPT record", at }));
            }
            edns = Some(e);
        }
    }
    if let Some(e) = edns {
        if e.version != 0 {
            return Err(Reject::BadVersion { id, flags });
        }
    }
    Ok(Query { id, flags, qname, qtype, qclass, edns })
}

/// Writes the header-only error reply for a [`Reject`]. Returns the length,
/// 0 when the packet is to be dropped. The reply (12 bytes, or 23 with the
/// OPT of BADVERS) never exceeds what a client may receive; a FORMERR or
/// NOTIMP reply is never larger than the query that caused it.
pub fn write_reject(reject: &Reject, out: &mut [u8]) -> usize {
    let (id, flags, rc, opt) = match *reject {
        Reject::Drop => return 0,
        Reject::Error { id, flags, rcode, .. } => (id, flags, rcode, false),
        Reject::BadVersion { id, flags } => (id, flags, Rcode::BADVERS, true),
    };
    let len = if opt { HEADER_LEN + 11 } else { HEADER_LEN };
    if out.len() < len {
        return 0;
    }
    let f = flag::QR | (flags & (flag::OPCODE_MASK | flag::RD | flag::CD)) | rc.low_bits();
    out[..HEADER_LEN].copy_from_slice(&[0; HEADER_LEN]);
    out[0..2].copy_from_slice(&id.to_be_bytes());
    out[2..4].copy_from_slice(&f.to_be_bytes());
    if opt {
        out[11] = 1;
        write_opt(&mut out[HEADER_LEN..], rc.ext_bits(), false);
    }
    len
}
