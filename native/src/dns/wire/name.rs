//! Names in uncompressed wire form, held inline ([`NameBuf`]), and their
//! decompression from a message ([`read_name`]): pointers must point
//! strictly backwards and the name must stay within 255 bytes, which bounds
//! every loop (RFC 1035 §2.3.4, §4.1.4).

use std::fmt;

use super::{err, WireError, MAX_WIRE_NAME};

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
