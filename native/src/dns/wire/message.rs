//! Whole messages as upstreams send them: every record parsed, names in
//! the data of the types that carry them decompressed, so an answer can be
//! re-encoded (and compressed again) for the client.

use super::{err, read_name, Edns, NameBuf, RType, Rcode, Reader, WireError};

/// A resource record with its data in uncompressed form (names inside the
/// data of the RFC 1035 types decompressed, so it can be re-encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: NameBuf,
    pub rtype: RType,
    pub class: u16,
    pub ttl: u32,
    pub rdata: Vec<u8>,
}

/// The shape of a record type's data, for decompressing and compressing the
/// names inside it. Compression on output only for the RFC 1035 types
/// (RFC 3597 §4); the others are decompressed on input (servers do compress
/// SRV) but written uncompressed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    Opaque,
    /// Fixed prefix bytes, then `names` names, then fixed suffix bytes.
    Names {
        prefix: usize,
        names: usize,
        suffix: usize,
        compress: bool,
    },
}

pub(super) fn layout(ty: RType) -> Layout {
    let n = |prefix, names, suffix, compress| Layout::Names { prefix, names, suffix, compress };
    match ty.0 {
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
    /// Name, type and class.
    pub question: Option<(NameBuf, RType, u16)>,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    /// Additional records except the OPT.
    pub additional: Vec<Record>,
    pub edns: Option<Edns>,
}

impl Message {
    /// The full rcode, EDNS extended bits included.
    pub fn rcode(&self) -> Rcode {
        Rcode((self.flags & 0xF) | self.edns.map_or(0, |e| (e.ext_rcode as u16) << 4))
    }
}

fn read_record(r: &mut Reader<'_>, msg: &[u8]) -> Result<(Record, Option<Edns>), WireError> {
    let mut name = NameBuf::default();
    let start = r.pos();
    r.name(&mut name, "record owner")?;
    let rtype = RType(r.u16("record type")?);
    let class = r.u16("record class")?;
    let ttl = r.u32("record TTL")?;
    let rdlen = r.u16("record length")? as usize;
    let rd_start = r.pos();
    let raw = r.bytes(rdlen, "record data")?;
    if rtype == RType::OPT {
        if name.as_wire() != [0] {
            return err("OPT record with an owner other than the root", start);
        }
        let e = Edns::from_opt(class, ttl);
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
        let t = RType(r.u16("question type")?);
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
