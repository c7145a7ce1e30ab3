//! The writer: a message into the caller's buffer, never past a limit, with
//! names compressed (RFC 1035 §4.1.4) and a record either written whole or
//! not at all; the replies built with it (an upstream's answer re-encoded
//! for the client, our query to an upstream) and the OPT record.

use super::message::{layout, Layout};
use super::{flag, Edns, Message, Query, RType, Rcode, Record, EDNS_UDP_SIZE, MAX_MESSAGE};

/// OPT record length on the wire (no options).
pub const OPT_LEN: usize = 11;

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
        self.u16(rec.rtype.0)?;
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
        | m.rcode().low_bits();
    if w.header(q.id, flags, [1, 0, 0, 0]).is_err() {
        return 0;
    }
    let opt = shape.edns.is_some();
    if opt {
        w.reserve_tail(OPT_LEN);
    }
    if w.name(q.qname.as_wire(), true).and_then(|_| w.u16(q.qtype.0)).and_then(|_| w.u16(q.qclass)).is_err() {
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
        let ext = m.rcode().ext_bits();
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

/// Writes a reply that carries only `rcode` (SERVFAIL when shedding load,
/// REFUSED for a client outside the allow-list): the client's ID, RD and CD,
/// its question as asked and an OPT if it sent one (RFC 6891 §7). Nothing
/// the query did not hold itself, so it is never an amplifier. No
/// allocation. Returns the length, 0 if `out` is too small.
pub fn write_status(q: &Query, rcode: Rcode, out: &mut [u8]) -> usize {
    let mut w = Writer::new(out, MAX_MESSAGE);
    let flags = flag::QR | flag::RA | (q.flags & (flag::OPCODE_MASK | flag::RD | flag::CD)) | rcode.low_bits();
    let ok = w
        .header(q.id, flags, [1, 0, 0, u16::from(q.edns.is_some())])
        .and_then(|_| w.name(q.qname.as_wire(), false))
        .and_then(|_| w.u16(q.qtype.0))
        .and_then(|_| w.u16(q.qclass))
        .and_then(|_| match q.edns {
            Some(e) => w.opt(rcode.ext_bits(), e.dnssec_ok),
            None => Ok(()),
        });
    if ok.is_err() {
        return 0;
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
        .and_then(|_| w.u16(q.qtype.0))
        .and_then(|_| w.u16(q.qclass))
        .and_then(|_| w.opt(0, q.edns.is_some_and(|e| e.dnssec_ok)));
    if ok.is_err() {
        return 0;
    }
    w.finish()
}

/// Writes an 11-byte OPT record advertising [`EDNS_UDP_SIZE`].
pub(super) fn write_opt(out: &mut [u8], ext_rcode: u8, dnssec_ok: bool) {
    let ttl: u32 = ((ext_rcode as u32) << 24) | if dnssec_ok { 0x8000 } else { 0 };
    out[0] = 0;
    out[1..3].copy_from_slice(&RType::OPT.0.to_be_bytes());
    out[3..5].copy_from_slice(&EDNS_UDP_SIZE.to_be_bytes());
    out[5..9].copy_from_slice(&ttl.to_be_bytes());
    out[9..11].copy_from_slice(&0u16.to_be_bytes());
}
