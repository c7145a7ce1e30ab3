//! Decoding Istio's NDS `NameTable` protobuf (`proto/nds.proto`,
//! `istio.networking.nds.v1`) straight from its wire bytes.
//!
//! A hand-written decoder for five fields keeps the core free of code
//! generation. The bytes come from the network: every length is checked, a
//! malformed message is an error value naming the byte offset, never a panic.
//! Unknown fields are skipped as proto3 requires.

use super::NameEntry;
use crate::error::{Error, Result};

const SRC: &str = "NDS NameTable";

struct Reader<'b> {
    buf: &'b [u8],
    pos: usize,
    /// Offset of `buf` inside the whole message, for error messages.
    base: usize,
}

impl<'b> Reader<'b> {
    fn new(buf: &'b [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    fn err(&self, what: &str) -> Error {
        Error::parse(SRC, format!("{what} at byte {}", self.base + self.pos))
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else { return Err(self.err("truncated varint")) };
            self.pos += 1;
            v |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    /// Reads a key; returns (field number, wire type).
    fn key(&mut self) -> Result<(u64, u8)> {
        let k = self.varint()?;
        let field = k >> 3;
        if field == 0 {
            return Err(self.err("field number 0"));
        }
        Ok((field, (k & 7) as u8))
    }

    fn bytes(&mut self) -> Result<(&'b [u8], usize)> {
        let len = self.varint()?;
        let start = self.pos;
        let end = usize::try_from(len).ok().and_then(|l| start.checked_add(l)).filter(|&e| e <= self.buf.len());
        let Some(end) = end else { return Err(self.err("length runs past the end of the message")) };
        self.pos = end;
        Ok((&self.buf[start..end], self.base + start))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.base + self.pos;
        let (b, _) = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| Error::parse(SRC, format!("{what} is not valid UTF-8 at byte {at}")))
    }

    fn skip(&mut self, wire: u8) -> Result<()> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.advance(8),
            2 => self.bytes().map(drop),
            5 => self.advance(4),
            _ => Err(self.err(&format!("unsupported wire type {wire}"))),
        }
    }

    fn advance(&mut self, n: usize) -> Result<()> {
        if self.buf.len() - self.pos < n {
            return Err(self.err("truncated fixed-width field"));
        }
        self.pos += n;
        Ok(())
    }
}

fn expect_len(r: &Reader, wire: u8, what: &str) -> Result<()> {
    if wire != 2 {
        return Err(r.err(&format!("{what} has wire type {wire}, expected length-delimited")));
    }
    Ok(())
}

/// Decodes a serialized `NameTable` into entries (map order as on the wire).
pub fn decode_name_table(buf: &[u8]) -> Result<Vec<NameEntry>> {
    let mut out = Vec::new();
    let mut r = Reader::new(buf, 0);
    while !r.done() {
        let (field, wire) = r.key()?;
        if field != 1 {
            r.skip(wire)?;
            continue;
        }
        expect_len(&r, wire, "table entry")?;
        let (entry, base) = r.bytes()?;
        out.push(decode_map_entry(entry, base)?);
    }
    Ok(out)
}

fn decode_map_entry(buf: &[u8], base: usize) -> Result<NameEntry> {
    let mut r = Reader::new(buf, base);
    let mut e = NameEntry::default();
    while !r.done() {
        let (field, wire) = r.key()?;
        match field {
            1 => {
                expect_len(&r, wire, "table key")?;
                e.hostname = r.string("table key")?;
            }
            2 => {
                expect_len(&r, wire, "NameInfo")?;
                let (info, b) = r.bytes()?;
                // Fields of a repeated occurrence merge, as protobuf defines.
                decode_name_info(info, b, &mut e)?;
            }
            _ => r.skip(wire)?,
        }
    }
    Ok(e)
}

fn decode_name_info(buf: &[u8], base: usize, e: &mut NameEntry) -> Result<()> {
    let mut r = Reader::new(buf, base);
    while !r.done() {
        let (field, wire) = r.key()?;
        match field {
            1..=5 => expect_len(&r, wire, "NameInfo field")?,
            _ => {
                r.skip(wire)?;
                continue;
            }
        }
        match field {
            1 => e.ips.push(r.string("ips")?),
            2 => e.registry = r.string("registry")?,
            3 => e.shortname = r.string("shortname")?,
            4 => e.namespace = r.string("namespace")?,
            _ => e.alt_hosts.push(r.string("alt_hosts")?),
        }
    }
    Ok(())
}

/// Encodes entries as a `NameTable` message (used by tests and tools that
/// speak NDS; the control plane has its own generated code).
pub fn encode_name_table(entries: &[NameEntry]) -> Vec<u8> {
    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn put_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
        put_varint(out, field << 3 | 2);
        put_varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
    let mut out = Vec::new();
    for e in entries {
        let mut info = Vec::new();
        for ip in &e.ips {
            put_bytes(&mut info, 1, ip.as_bytes());
        }
        for (f, s) in [(2, &e.registry), (3, &e.shortname), (4, &e.namespace)] {
            if !s.is_empty() {
                put_bytes(&mut info, f, s.as_bytes());
            }
        }
        for a in &e.alt_hosts {
            put_bytes(&mut info, 5, a.as_bytes());
        }
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, e.hostname.as_bytes());
        put_bytes(&mut entry, 2, &info);
        put_bytes(&mut out, 1, &entry);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut e = NameEntry::kubernetes("a.b.svc.cluster.local", "a", "b", ["10.0.0.1", "fd00::1"]);
        e.alt_hosts.push("alias.example".into());
        let entries = vec![e, NameEntry::new("x.example.com", ["1.2.3.4"])];
        assert_eq!(decode_name_table(&encode_name_table(&entries)).unwrap(), entries);
    }

    #[test]
    fn malformed_messages_are_errors() {
        let good = encode_name_table(&[NameEntry::new("x.example.com", ["1.2.3.4"])]);
        for cut in 1..good.len() {
            assert!(decode_name_table(&good[..cut]).is_err(), "truncated at {cut} accepted");
        }
        assert!(decode_name_table(&[0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]).is_err());
        assert!(decode_name_table(&[0x0B]).is_err()); // wire type 3 (group)
        assert!(decode_name_table(&[0x08, 0x01]).is_err()); // field 1 as varint
        let e = decode_name_table(&[0x0A, 0x04, 0x0A, 0x02, 0xC3, 0x28]).unwrap_err();
        assert!(e.to_string().contains("UTF-8"), "{e}");
    }
}
