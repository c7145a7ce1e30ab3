//! DNS wire format (RFC 1035 §4): hostile-input parsing into validated types,
//! and a writer that compresses names and truncates at a size limit.
//!
//! Parsing never panics and never reads past a bound it checked first: every
//! read goes through [`Reader`], whose methods return a [`WireError`] naming
//! what was being read and at which offset. Names are decompressed into a
//! fixed [`NameBuf`] (255 bytes, RFC 1035 §2.3.4), so a query costs no heap
//! allocation. Compression pointers must point strictly backwards and the
//! decompressed name must stay within 255 bytes, which bounds every loop.

use std::fmt;

/// Fixed DNS header length.
pub const HEADER_LEN: usize = 12;
/// Longest name on the wire, root label included (RFC 1035 §2.3.4).
pub const MAX_WIRE_NAME: usize = 255;
/// UDP payload limit without EDNS0 (RFC 1035 §4.2.1).
pub const CLASSIC_UDP_LIMIT: usize = 512;
/// The EDNS0 UDP size we advertise and ask upstreams for (DNS flag day 2020).
pub const EDNS_UDP_SIZE: u16 = 1232;
/// Largest DNS message (TCP length prefix, RFC 1035 §4.2.2).
pub const MAX_MESSAGE: usize = 65535;

/// Record types the proxy treats specially.
pub mod rtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const CNAME: u16 = 5;
    pub const SOA: u16 = 6;
    pub const PTR: u16 = 12;
    pub const MX: u16 = 15;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const OPT: u16 = 41;
    pub const IXFR: u16 = 251;
    pub const AXFR: u16 = 252;
    pub const MAILB: u16 = 253;
    pub const MAILA: u16 = 254;
    pub const ANY: u16 = 255;
}

pub const CLASS_IN: u16 = 1;

/// Response codes (RFC 1035 §4.1.1, RFC 6891 §9 for BADVERS).
pub mod rcode {
    pub const NOERROR: u16 = 0;
    pub const FORMERR: u16 = 1;
    pub const SERVFAIL: u16 = 2;
    pub const NXDOMAIN: u16 = 3;
    pub const NOTIMP: u16 = 4;
    pub const REFUSED: u16 = 5;
    pub const BADVERS: u16 = 16;
}

/// Header flag bits (RFC 1035 §4.1.1, RFC 4035 §3.1.6 for AD/CD).
pub mod flag {
    pub const QR: u16 = 0x8000;
    pub const AA: u16 = 0x0400;
    pub const TC: u16 = 0x0200;
    pub const RD: u16 = 0x0100;
    pub const RA: u16 = 0x0080;
    pub const AD: u16 = 0x0020;
    pub const CD: u16 = 0x0010;
    pub const OPCODE_MASK: u16 = 0x7800;
}

/// A malformed message: what was being read and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError {
    pub what: &'static str,
    pub at: usize,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed DNS message: {} at offset {}", self.what, self.at)
    }
}

impl std::error::Error for WireError {}

fn err<T>(what: &'static str, at: usize) -> Result<T, WireError> {
    Err(WireError { what, at })
}

/// A bounds-checked cursor over a message.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(msg: &'a [u8], pos: usize) -> Reader<'a> {
        Reader { msg, pos }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        let b = *self.msg.get(self.pos).ok_or(WireError { what, at: self.pos })?;
        self.pos += 1;
        Ok(b)
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.msg.len()).ok_or(WireError { what, at: self.pos })?;
        let b = &self.msg[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    /// Reads a possibly compressed name into `out` (uncompressed wire form).
    pub fn name(&mut self, out: &mut NameBuf, what: &'static str) -> Result<(), WireError> {
        self.pos = read_name(self.msg, self.pos, out, what)?;
        Ok(())
    }
}

/// A name in uncompressed wire form (length-prefixed labels, root label
/// last), at most 255 bytes, held inline.
#[derive(Clone)]
pub struct NameBuf {
    buf: [u8; MAX_WIRE_NAME],
    len: u8,
}

impl Default for NameBuf {
    fn default() -> Self {
        NameBuf { buf: [0; MAX_WIRE_NAME], len: 0 }
    }
}

impl PartialEq for NameBuf {
    fn eq(&self, other: &Self) -> bool {
        self.as_wire() == other.as_wire()
    }
}

impl Eq for NameBuf {}

impl fmt::Debug for NameBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = [0u8; 1024];
        let n = self.to_text(&mut s);
        f.debug_tuple("NameBuf").field(&String::from_utf8_lossy(&s[..n])).finish()
    }
}

impl NameBuf {
    /// The name in uncompressed wire form.
    #[inline]
    pub fn as_wire(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    /// Builds a name from presentation text (`"a.b.c"`, optional trailing
    /// dot; `""` or `"."` is the root). Labels are taken as given: no escapes.
    pub fn from_text(text: &str) -> Option<NameBuf> {
        let t = text.strip_suffix('.').unwrap_or(text);
        let mut n = NameBuf::default();
        let mut len = 0usize;
        if !t.is_empty() {
            for label in t.split('.') {
                if label.is_empty() || label.len() > 63 || len + 1 + label.len() + 1 > MAX_WIRE_NAME {
                    return None;
                }
                n.buf[len] = label.len() as u8;
                n.buf[len + 1..len + 1 + label.len()].copy_from_slice(label.as_bytes());
                len += 1 + label.len();
            }
        }
        n.buf[len] = 0;
        n.len = (len + 1) as u8;
        Some(n)
    }

    /// Builds a name from uncompressed wire bytes, checking label structure.
    pub fn from_wire(wire: &[u8]) -> Option<NameBuf> {
        let mut n = NameBuf::default();
        let end = read_name(wire, 0, &mut n, "name").ok()?;
        (end == wire.len()).then_some(n)
    }

    /// Number of labels, root excluded.
    pub fn label_count(&self) -> usize {
        let w = self.as_wire();
        let (mut i, mut n) = (0, 0);
        while i < w.len() && w[i] != 0 {
            i += 1 + w[i] as usize;
            n += 1;
        }
        n
    }

    /// Writes the presentation form, lower-cased, without the trailing dot,
    /// for lookups. `None` if a label holds a `.` or a non-ASCII byte (such a
    /// name can never be in the table) or `out` is too small.
    pub fn to_lookup_text<'o>(&self, out: &'o mut [u8; 253]) -> Option<&'o [u8]> {
        let w = self.as_wire();
        let (mut i, mut o) = (0usize, 0usize);
        while i < w.len() && w[i] != 0 {
            let l = w[i] as usize;
            if o != 0 {
                *out.get_mut(o)? = b'.';
                o += 1;
            }
            for &b in w.get(i + 1..i + 1 + l)? {
                if b == b'.' || !b.is_ascii() {
                    return None;
                }
                *out.get_mut(o)? = b.to_ascii_lowercase();
                o += 1;
            }
            i += 1 + l;
        }
        Some(&out[..o])
    }

    /// Writes the presentation form with a trailing dot, escaping bytes that
    /// are not printable (RFC 1035 §5.1 `\DDD`). Returns the length written.
    pub fn to_text(&self, out: &mut [u8]) -> usize {
        let w = self.as_wire();
        let mut o = 0usize;
        let mut put = |b: u8, o: &mut usize| {
            if let Some(slot) = out.get_mut(*o) {
                *slot = b;
                *o += 1;
            }
        };
        let mut i = 0;
        while i < w.len() && w[i] != 0 {
            let l = w[i] as usize;
            for &b in &w[i + 1..(i + 1 + l).min(w.len())] {
                if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                    put(b, &mut o);
                } else {
                    for c in [b'\\', b'0' + b / 100, b'0' + (b / 10) % 10, b'0' + b % 10] {
                        put(c, &mut o);
                    }
                }
            }
            put(b'.', &mut o);
            i += 1 + l;
        }
        if o == 0 {
            put(b'.', &mut o);
        }
        o
    }

    /// Whether `suffix` (uncompressed wire form) is a label-aligned suffix of
    /// this name, compared case-insensitively; returns its offset here.
    pub fn suffix_offset(&self, suffix: &[u8]) -> Option<usize> {
        let w = self.as_wire();
        let mut i = 0usize;
        loop {
            if w.len() - i == suffix.len() && w[i..].eq_ignore_ascii_case(suffix) {
                return Some(i);
            }
            if i >= w.len() || w[i] == 0 {
                return None;
            }
            i += 1 + w[i] as usize;
        }
    }

    /// Case-insensitive equality (RFC 4343).
    pub fn eq_ignore_case(&self, other: &NameBuf) -> bool {
        self.as_wire().eq_ignore_ascii_case(other.as_wire())
    }

    /// The name lower-cased (for cache keys).
    pub fn to_lowercase(&self) -> NameBuf {
        let mut n = self.clone();
        n.buf[..n.len as usize].make_ascii_lowercase();
        n
    }
}

/// Decompresses the name at `pos` into `out`; returns the offset after it
/// (after the first pointer, if any).
pub fn read_name(msg: &[u8], mut pos: usize, out: &mut NameBuf, what: &'static str) -> Result<usize, WireError> {
    let mut len = 0usize;
    let mut end: Option<usize> = None;
    loop {
        let Some(&l) = msg.get(pos) else { return err(what, pos) };
        match l & 0xC0 {
            0x00 => {
                let l = l as usize;
                if len + 1 + l > MAX_WIRE_NAME {
                    return err("name longer than 255 bytes", pos);
                }
                let Some(label) = msg.get(pos..pos + 1 + l) else { return err(what, pos) };
                out.buf[len..len + 1 + l].copy_from_slice(label);
                len += 1 + l;
                pos += 1 + l;
                if l == 0 {
                    out.len = len as u8;
                    return Ok(end.unwrap_or(pos));
                }
            }
            0xC0 => {
                let Some(&lo) = msg.get(pos + 1) else { return err(what, pos) };
                let target = (((l & 0x3F) as usize) << 8) | lo as usize;
                // Strictly backwards: together with the 255-byte limit this
                // makes every chain of pointers finite.
                if target >= pos {
                    return err("compression pointer not pointing backwards", pos);
                }
                end.get_or_insert(pos + 2);
                pos = target;
            }
            // 0x40 (RFC 6891 extended labels, obsolete) and 0x80 (reserved).
            _ => return err("unknown label type", pos),
        }
    }
}

/// EDNS0 parameters of a message's OPT record (RFC 6891 §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub ext_rcode: u8,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// A validated query: one question, optional EDNS0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub flags: u16,
    /// The question name as the client sent it (letter case kept).
    pub qname: NameBuf,
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

impl Query {
    pub fn opcode(&self) -> u16 {
        (self.flags & flag::OPCODE_MASK) >> 11
    }

    /// The largest response the client accepts (RFC 1035 §4.2.1, RFC 6891
    /// §6.2.5: an advertised size below 512 is treated as 512).
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => (e.udp_size as usize).max(CLASSIC_UDP_LIMIT),
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
    Error { id: u16, flags: u16, rcode: u16, reason: WireError },
    /// EDNS version we do not speak (RFC 6891 §6.1.3): BADVERS with an OPT.
    BadVersion { id: u16, flags: u16 },
}

/// Skips a resource record, returning its type and, for OPT, the EDNS data.
fn skip_rr(r: &mut Reader<'_>, scratch: &mut NameBuf) -> Result<(u16, Option<Edns>), WireError> {
    let start = r.pos();
    r.name(scratch, "record owner")?;
    let ty = r.u16("record type")?;
    let class = r.u16("record class")?;
    let ttl = r.u32("record TTL")?;
    let rdlen = r.u16("record length")?;
    r.bytes(rdlen as usize, "record data")?;
    if ty != rtype::OPT {
        return Ok((ty, None));
    }
    if scratch.as_wire() != [0] {
        return err("OPT record with an owner other than the root", start);
    }
    Ok((
        ty,
        Some(Edns {
            udp_size: class,
            ext_rcode: (ttl >> 24) as u8,
            version: (ttl >> 16) as u8,
            dnssec_ok: ttl & 0x8000 != 0,
        }),
    ))
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
    let formerr = |reason: WireError| Reject::Error { id, flags, rcode: rcode::FORMERR, reason };
    if flags & flag::OPCODE_MASK != 0 {
        return Err(Reject::Error { id, flags, rcode: rcode::NOTIMP, reason: WireError { what: "opcode", at: 2 } });
    }
    let count = |i: usize| u16::from_be_bytes([packet[4 + 2 * i], packet[5 + 2 * i]]);
    let (qd, an, ns, ar) = (count(0), count(1), count(2), count(3));
    if qd != 1 {
        return Err(formerr(WireError { what: "question count is not 1", at: 4 }));
    }
    let mut r = Reader::new(packet, HEADER_LEN);
    let mut qname = NameBuf::default();
    r.name(&mut qname, "question name").map_err(formerr)?;
    let qtype = r.u16("question type").map_err(formerr)?;
    let qclass = r.u16("question class").map_err(formerr)?;
    let mut scratch = NameBuf::default();
    for _ in 0..(an as u32 + ns as u32) {
        let at = r.pos();
        let (ty, _) = skip_rr(&mut r, &mut scratch).map_err(formerr)?;
        if ty == rtype::OPT {
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
        Reject::BadVersion { id, flags } => (id, flags, rcode::BADVERS, true),
    };
    let len = if opt { HEADER_LEN + 11 } else { HEADER_LEN };
    if out.len() < len {
        return 0;
    }
    let f = flag::QR | (flags & (flag::OPCODE_MASK | flag::RD | flag::CD)) | (rc & 0xF);
    out[..HEADER_LEN].copy_from_slice(&[0; HEADER_LEN]);
    out[0..2].copy_from_slice(&id.to_be_bytes());
    out[2..4].copy_from_slice(&f.to_be_bytes());
    if opt {
        out[11] = 1;
        write_opt(&mut out[HEADER_LEN..], (rc >> 4) as u8, false);
    }
    len
}

/// Writes an 11-byte OPT record advertising [`EDNS_UDP_SIZE`].
fn write_opt(out: &mut [u8], ext_rcode: u8, dnssec_ok: bool) {
    let ttl: u32 = ((ext_rcode as u32) << 24) | if dnssec_ok { 0x8000 } else { 0 };
    out[0] = 0;
    out[1..3].copy_from_slice(&rtype::OPT.to_be_bytes());
    out[3..5].copy_from_slice(&EDNS_UDP_SIZE.to_be_bytes());
    out[5..9].copy_from_slice(&ttl.to_be_bytes());
    out[9..11].copy_from_slice(&0u16.to_be_bytes());
}

/// OPT record length on the wire (no options).
pub const OPT_LEN: usize = 11;

/// A resource record with its data in uncompressed form (names inside the
/// data of the RFC 1035 types decompressed, so it can be re-encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: NameBuf,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub rdata: Vec<u8>,
}

/// The shape of a record type's data, for decompressing and compressing the
/// names inside it. Compression on output only for the RFC 1035 types
/// (RFC 3597 §4); the others are decompressed on input (servers do compress
/// SRV) but written uncompressed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    Opaque,
    /// Fixed prefix bytes, then `names` names, then fixed suffix bytes.
    Names {
        prefix: usize,
        names: usize,
        suffix: usize,
        compress: bool,
    },
}

fn layout(ty: u16) -> Layout {
    let n = |prefix, names, suffix, compress| Layout::Names { prefix, names, suffix, compress };
    match ty {
        2..=5 | 7..=9 | 12 => n(0, 1, 0, true), // NS MD MF CNAME MB MG MR PTR
        6 => n(0, 2, 20, true),                 // SOA
        14 => n(0, 2, 0, true),                 // MINFO
        15 => n(2, 1, 0, true),                 // MX
        17 => n(0, 2, 0, false),                // RP
        18 | 21 | 36 => n(2, 1, 0, false),      // AFSDB RT KX
        33 => n(6, 1, 0, false),                // SRV
        39 => n(0, 1, 0, false),                // DNAME (RFC 6672: never compressed)
        _ => Layout::Opaque,
    }
}

/// A full message as received from an upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub id: u16,
    pub flags: u16,
    pub question: Option<(NameBuf, u16, u16)>,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    /// Additional records except the OPT.
    pub additional: Vec<Record>,
    pub edns: Option<Edns>,
}

impl Message {
    /// The full rcode, EDNS extended bits included.
    pub fn rcode(&self) -> u16 {
        (self.flags & 0xF) | self.edns.map_or(0, |e| (e.ext_rcode as u16) << 4)
    }
}

fn read_record(r: &mut Reader<'_>, msg: &[u8]) -> Result<(Record, Option<Edns>), WireError> {
    let mut name = NameBuf::default();
    let start = r.pos();
    r.name(&mut name, "record owner")?;
    let rtype = r.u16("record type")?;
    let class = r.u16("record class")?;
    let ttl = r.u32("record TTL")?;
    let rdlen = r.u16("record length")? as usize;
    let rd_start = r.pos();
    let raw = r.bytes(rdlen, "record data")?;
    if rtype == rtype::OPT {
        if name.as_wire() != [0] {
            return err("OPT record with an owner other than the root", start);
        }
        let e = Edns {
            udp_size: class,
            ext_rcode: (ttl >> 24) as u8,
            version: (ttl >> 16) as u8,
            dnssec_ok: ttl & 0x8000 != 0,
        };
        return Ok((Record { name, rtype, class, ttl, rdata: Vec::new() }, Some(e)));
    }
    let rdata = match layout(rtype) {
        Layout::Opaque => raw.to_vec(),
        Layout::Names { prefix, names, suffix, .. } => {
            let mut out = Vec::with_capacity(rdlen + 16);
            let mut p = rd_start;
            out.extend_from_slice(Reader::new(msg, p).bytes(prefix, "record data")?);
            p += prefix;
            let mut n = NameBuf::default();
            for _ in 0..names {
                p = read_name(&msg[..rd_start + rdlen], p, &mut n, "name in record data")?;
                out.extend_from_slice(n.as_wire());
            }
            let rest = Reader::new(&msg[..rd_start + rdlen], p).bytes(suffix, "record data")?;
            out.extend_from_slice(rest);
            if p + suffix != rd_start + rdlen {
                return err("record data length does not match its contents", rd_start);
            }
            out
        }
    };
    Ok((Record { name, rtype, class, ttl, rdata }, None))
}

/// Parses a whole message (an upstream's response). Strict: any malformed
/// record fails the message, which the forwarder then treats as a failed
/// attempt. Record counts are bounded by the message length (each record
/// takes at least 11 bytes), so memory stays proportional to the input.
pub fn parse_message(msg: &[u8]) -> Result<Message, WireError> {
    let mut r = Reader::new(msg, 0);
    let id = r.u16("header")?;
    let flags = r.u16("header")?;
    let qd = r.u16("header")?;
    let an = r.u16("header")?;
    let ns = r.u16("header")?;
    let ar = r.u16("header")?;
    if qd > 1 {
        return err("more than one question", 4);
    }
    let mut m = Message { id, flags, ..Default::default() };
    if qd == 1 {
        let mut n = NameBuf::default();
        r.name(&mut n, "question name")?;
        let t = r.u16("question type")?;
        let c = r.u16("question class")?;
        m.question = Some((n, t, c));
    }
    let cap = |n: u16| (n as usize).min(msg.len() / 11);
    m.answers.reserve(cap(an));
    for _ in 0..an {
        let (rec, e) = read_record(&mut r, msg)?;
        if e.is_some() {
            return err("OPT record in the answer section", r.pos());
        }
        m.answers.push(rec);
    }
    for _ in 0..ns {
        let (rec, e) = read_record(&mut r, msg)?;
        if e.is_some() {
            return err("OPT record in the authority section", r.pos());
        }
        m.authority.push(rec);
    }
    for _ in 0..ar {
        let at = r.pos();
        let (rec, e) = read_record(&mut r, msg)?;
        match e {
            Some(_) if m.edns.is_some() => return err("second OPT record", at),
            Some(e) => m.edns = Some(e),
            None => m.additional.push(rec),
        }
    }
    Ok(m)
}

/// Names already written, for compression (RFC 1035 §4.1.4). A fixed table:
/// when full, later names are still written, only less compressed.
const COMP_SLOTS: usize = 64;

/// Writes a message into a caller buffer, never past `limit`.
#[derive(Debug)]
pub struct Writer<'b> {
    buf: &'b mut [u8],
    len: usize,
    limit: usize,
    comp: [u16; COMP_SLOTS],
    ncomp: usize,
}

/// The writer ran out of room; the partial record was rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl<'b> Writer<'b> {
    /// A writer over `buf` that never writes more than `limit` bytes.
    pub fn new(buf: &'b mut [u8], limit: usize) -> Writer<'b> {
        let limit = limit.min(buf.len()).min(MAX_MESSAGE);
        Writer { buf, len: 0, limit, comp: [0; COMP_SLOTS], ncomp: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Reserves room at the end (for an OPT record written last).
    pub fn reserve_tail(&mut self, n: usize) {
        self.limit = self.limit.saturating_sub(n);
    }

    pub fn release_tail(&mut self, n: usize) {
        self.limit = (self.limit + n).min(self.buf.len()).min(MAX_MESSAGE);
    }

    pub fn bytes(&mut self, b: &[u8]) -> Result<(), Full> {
        let end = self.len + b.len();
        if end > self.limit {
            return Err(Full);
        }
        self.buf[self.len..end].copy_from_slice(b);
        self.len = end;
        Ok(())
    }

    pub fn u16(&mut self, v: u16) -> Result<(), Full> {
        self.bytes(&v.to_be_bytes())
    }

    pub fn u32(&mut self, v: u32) -> Result<(), Full> {
        self.bytes(&v.to_be_bytes())
    }

    /// Overwrites a u16 already written (header counts and flags).
    pub fn set_u16(&mut self, at: usize, v: u16) {
        if at + 2 <= self.len {
            self.buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
        }
    }

    pub fn header(&mut self, id: u16, flags: u16, counts: [u16; 4]) -> Result<(), Full> {
        self.u16(id)?;
        self.u16(flags)?;
        for c in counts {
            self.u16(c)?;
        }
        Ok(())
    }

    /// Whether the (uncompressed) name `suffix` is written at `off`,
    /// compared case-insensitively, following pointers.
    fn matches_at(&self, mut off: usize, suffix: &[u8]) -> bool {
        let mut i = 0usize;
        let mut hops = 0;
        loop {
            let Some(&l) = self.buf[..self.len].get(off) else { return false };
            if l & 0xC0 == 0xC0 {
                let Some(&lo) = self.buf[..self.len].get(off + 1) else { return false };
                off = (((l & 0x3F) as usize) << 8) | lo as usize;
                hops += 1;
                if hops > 128 {
                    return false;
                }
                continue;
            }
            let l = l as usize;
            let Some(a) = self.buf[..self.len].get(off..off + 1 + l) else { return false };
            let Some(b) = suffix.get(i..i + 1 + l) else { return false };
            if !a.eq_ignore_ascii_case(b) {
                return false;
            }
            if l == 0 {
                return i + 1 == suffix.len();
            }
            off += 1 + l;
            i += 1 + l;
        }
    }

    /// Writes an uncompressed wire name, compressed against what is already
    /// written when `compress` is set. Records new suffixes for later names.
    pub fn name(&mut self, name: &[u8], compress: bool) -> Result<(), Full> {
        let start_len = self.len;
        let start_ncomp = self.ncomp;
        let mut i = 0usize;
        while i < name.len() && name[i] != 0 {
            let suffix = &name[i..];
            if compress {
                if let Some(&off) = self.comp[..self.ncomp].iter().find(|&&o| self.matches_at(o as usize, suffix)) {
                    if let Err(e) = self.u16(0xC000 | off) {
                        self.len = start_len;
                        self.ncomp = start_ncomp;
                        return Err(e);
                    }
                    return Ok(());
                }
            }
            // Pointers can address only the first 16 KiB.
            if self.len < 0x4000 && self.ncomp < COMP_SLOTS {
                self.comp[self.ncomp] = self.len as u16;
                self.ncomp += 1;
            }
            let l = name[i] as usize;
            let label = &name[i..(i + 1 + l).min(name.len())];
            if let Err(e) = self.bytes(label) {
                self.len = start_len;
                self.ncomp = start_ncomp;
                return Err(e);
            }
            i += 1 + l;
        }
        self.bytes(&[0]).inspect_err(|_| {
            self.len = start_len;
            self.ncomp = start_ncomp;
        })
    }

    /// Registers a name written at `off` (e.g. the question copied verbatim)
    /// as a compression target.
    pub fn note_name_at(&mut self, off: usize, name: &[u8]) {
        let mut i = 0usize;
        while i < name.len() && name[i] != 0 && self.ncomp < COMP_SLOTS && off + i < 0x4000 {
            self.comp[self.ncomp] = (off + i) as u16;
            self.ncomp += 1;
            i += 1 + name[i] as usize;
        }
    }

    /// Writes a whole record, or nothing: on [`Full`] the writer is as before.
    pub fn record(&mut self, rec: &Record, ttl: u32) -> Result<(), Full> {
        let (len0, ncomp0) = (self.len, self.ncomp);
        let r = self.record_inner(rec, ttl);
        if r.is_err() {
            self.len = len0;
            self.ncomp = ncomp0;
        }
        r
    }

    fn record_inner(&mut self, rec: &Record, ttl: u32) -> Result<(), Full> {
        self.name(rec.name.as_wire(), true)?;
        self.u16(rec.rtype)?;
        self.u16(rec.class)?;
        self.u32(ttl)?;
        let len_at = self.len;
        self.u16(0)?;
        match layout(rec.rtype) {
            Layout::Opaque => self.bytes(&rec.rdata)?,
            Layout::Names { prefix, names, suffix, compress } => {
                let d = &rec.rdata;
                let mut p = prefix.min(d.len());
                self.bytes(&d[..p])?;
                for _ in 0..names {
                    let n = wire_name_len(&d[p..]);
                    self.name(&d[p..p + n], compress)?;
                    p += n;
                }
                self.bytes(&d[p..(p + suffix).min(d.len())])?;
            }
        }
        let rdlen = self.len - len_at - 2;
        self.set_u16(len_at, rdlen as u16);
        Ok(())
    }

    /// Appends the OPT record (room must have been reserved).
    pub fn opt(&mut self, ext_rcode: u8, dnssec_ok: bool) -> Result<(), Full> {
        let end = self.len + OPT_LEN;
        if end > self.limit {
            return Err(Full);
        }
        write_opt(&mut self.buf[self.len..end], ext_rcode, dnssec_ok);
        self.len = end;
        Ok(())
    }

    pub fn finish(self) -> usize {
        self.len
    }
}

/// Length of the uncompressed name at the start of `b` (clamped to `b`).
fn wire_name_len(b: &[u8]) -> usize {
    let mut i = 0usize;
    while i < b.len() && b[i] != 0 {
        i += 1 + b[i] as usize;
    }
    (i + 1).min(b.len())
}

/// How a response is sized: the client's limit and whether to add an OPT.
#[derive(Debug, Clone, Copy)]
pub struct ReplyShape {
    pub limit: usize,
    pub edns: Option<Edns>,
}

/// Writes `m` as the answer to the client's query `q`: the client's ID, RD,
/// CD and question (letter case as asked), the upstream's rcode, AA, AD and
/// RA, records with their TTLs reduced by `age` seconds, an OPT if the client
/// sent one. Records are dropped from the end (additional first, RFC 2181
/// §9: their loss needs no TC) when the answer exceeds `shape.limit`; losing
/// answer or authority records sets TC. Always compressed. Returns the length.
pub fn write_response(q: &Query, m: &Message, age: u32, shape: ReplyShape, out: &mut [u8]) -> usize {
    let mut w = Writer::new(out, shape.limit);
    let flags = flag::QR
        | (q.flags & (flag::OPCODE_MASK | flag::RD | flag::CD))
        | (m.flags & (flag::AA | flag::AD | flag::TC))
        | flag::RA
        | (m.rcode() & 0xF);
    if w.header(q.id, flags, [1, 0, 0, 0]).is_err() {
        return 0;
    }
    let opt = shape.edns.is_some();
    if opt {
        w.reserve_tail(OPT_LEN);
    }
    if w.name(q.qname.as_wire(), true).and_then(|_| w.u16(q.qtype)).and_then(|_| w.u16(q.qclass)).is_err() {
        return 0;
    }
    let mut tc = false;
    let mut counts = [0u16; 3];
    for (i, section) in [&m.answers, &m.authority, &m.additional].into_iter().enumerate() {
        for rec in section.iter() {
            if tc {
                break;
            }
            if w.record(rec, rec.ttl.saturating_sub(age)).is_err() {
                if i < 2 {
                    tc = true;
                }
                break;
            }
            counts[i] += 1;
        }
    }
    if opt {
        w.release_tail(OPT_LEN);
        let ext = (m.rcode() >> 4) as u8;
        if w.opt(ext, shape.edns.is_some_and(|e| e.dnssec_ok)).is_ok() {
            w.set_u16(10, counts[2] + 1);
        }
    }
    if tc {
        w.set_u16(2, flags | flag::TC);
    }
    w.set_u16(6, counts[0]);
    w.set_u16(8, counts[1]);
    if !opt {
        w.set_u16(10, counts[2]);
    }
    w.finish()
}

/// Writes a query to an upstream: our own ID, RD, the client's CD, the
/// question exactly as the client asked it, and our EDNS0 OPT (1232 bytes,
/// DO mirrored) so answers larger than 512 bytes arrive (istio/istio#61371).
pub fn write_upstream_query(id: u16, q: &Query, out: &mut [u8]) -> usize {
    let mut w = Writer::new(out, out.len());
    let flags = flag::RD | (q.flags & flag::CD);
    let ok = w
        .header(id, flags, [1, 0, 0, 1])
        .and_then(|_| w.name(q.qname.as_wire(), false))
        .and_then(|_| w.u16(q.qtype))
        .and_then(|_| w.u16(q.qclass))
        .and_then(|_| w.opt(0, q.edns.is_some_and(|e| e.dnssec_ok)));
    if ok.is_err() {
        return 0;
    }
    w.finish()
}

#[cfg(test)]
mod tests;
