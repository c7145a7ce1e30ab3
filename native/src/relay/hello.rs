//! The server name of a TLS ClientHello, read without terminating TLS: what
//! Envoy's `tls_inspector` listener filter gives an SNI-routed passthrough
//! listener (Istio's east-west gateway, `AUTO_PASSTHROUGH`).
//!
//! Formats (every length checked against what holds it):
//! - TLS record (RFC 8446 §5.1): content type 22 (handshake), a legacy
//!   version 3.x, a 16-bit length of at most 2^14; a ClientHello may span
//!   several handshake records, whose payloads are concatenated;
//! - handshake message (§4): type 1 (client_hello), a 24-bit length;
//! - ClientHello (§4.1.2): legacy_version (2), random (32),
//!   legacy_session_id <0..32>, cipher_suites <2..2^16-2>,
//!   legacy_compression_methods <1..2^8-1>, extensions <8..2^16-1>
//!   (absent only in a pre-TLS 1.2 hello, which then has no SNI);
//! - server_name extension, type 0 (RFC 6066 §3): a ServerNameList <1..2^16-1>
//!   of (name_type, name); name_type 0 is host_name <1..2^16-1>, ASCII,
//!   no trailing dot. Only the first host_name is taken, as BoringSSL does.

/// How much of a ClientHello is read at most (Envoy's tls_inspector
/// `max_client_hello_size` default, 64 KiB).
pub const MAX_HELLO: usize = 64 * 1024;

const RECORD_HEADER: usize = 5;
const MAX_RECORD: usize = 1 << 14;
const CONTENT_HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const HOST_NAME: u8 = 0;
/// A DNS name is at most 253 characters (RFC 1035 §3.1, without the dot).
const MAX_NAME: usize = 253;

/// What the bytes read so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A whole ClientHello; its server name if it sent one.
    Complete(Option<String>),
    /// A ClientHello so far, not all of it yet.
    Incomplete,
    /// Not a TLS ClientHello, or a malformed one (what is wrong).
    NotTls(&'static str),
}

/// Reads the ClientHello at the start of `bytes` (the connection's first
/// bytes, possibly not all of them yet).
pub fn parse(bytes: &[u8]) -> Hello {
    let mut msg: Vec<u8> = Vec::new();
    let mut at = 0usize;
    loop {
        let Some(header) = bytes.get(at..at + RECORD_HEADER) else {
            return check_partial_header(&bytes[at..]);
        };
        if header[0] != CONTENT_HANDSHAKE {
            return Hello::NotTls(if at == 0 {
                "not a TLS handshake record"
            } else {
                "a non-handshake record inside the ClientHello"
            });
        }
        if header[1] != 3 {
            return Hello::NotTls("not a TLS 3.x record version");
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD {
            return Hello::NotTls("record length out of range");
        }
        let body_at = at + RECORD_HEADER;
        let Some(body) = bytes.get(body_at..body_at + len) else {
            // A whole record is needed to go on (its bytes so far are not
            // checked: the first record's handshake header is).
            if msg.is_empty() {
                if let Some(early) = bytes.get(body_at..) {
                    if let Some(h) = early.first() {
                        if *h != CLIENT_HELLO {
                            return Hello::NotTls("the first handshake message is not a ClientHello");
                        }
                    }
                }
            }
            return Hello::Incomplete;
        };
        msg.extend_from_slice(body);
        at = body_at + len;
        if msg[0] != CLIENT_HELLO {
            return Hello::NotTls("the first handshake message is not a ClientHello");
        }
        if msg.len() < 4 {
            continue;
        }
        let need = 4 + (usize::from(msg[1]) << 16 | usize::from(msg[2]) << 8 | usize::from(msg[3]));
        if need > MAX_HELLO {
            return Hello::NotTls("ClientHello larger than 64 KiB");
        }
        if msg.len() >= need {
            return match client_hello(&msg[4..need]) {
                Ok(name) => Hello::Complete(name),
                Err(why) => Hello::NotTls(why),
            };
        }
        if at >= MAX_HELLO {
            return Hello::NotTls("ClientHello larger than 64 KiB");
        }
    }
}

/// The start of a record header: TLS so far, or not.
fn check_partial_header(h: &[u8]) -> Hello {
    match h {
        [t, ..] if *t != CONTENT_HANDSHAKE => Hello::NotTls("not a TLS handshake record"),
        [_, v, ..] if *v != 3 => Hello::NotTls("not a TLS 3.x record version"),
        _ => Hello::Incomplete,
    }
}

/// A cursor over a ClientHello's fields; every read is bounds-checked.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], &'static str> {
        if self.b.len() < n {
            return Err(what);
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, &'static str> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, &'static str> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a 1- or 2-byte length prefix.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], &'static str> {
        let n = usize::from(self.u8(what)?);
        self.take(n, what)
    }

    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], &'static str> {
        let n = usize::from(self.u16(what)?);
        self.take(n, what)
    }
}

/// The server name of a ClientHello body (after the handshake header).
fn client_hello(body: &[u8]) -> Result<Option<String>, &'static str> {
    let mut r = Reader { b: body };
    r.take(2 + 32, "ClientHello truncated in version/random")?;
    if r.vec8("ClientHello truncated in session id")?.len() > 32 {
        return Err("session id longer than 32 bytes");
    }
    let suites = r.vec16("ClientHello truncated in cipher suites")?;
    if suites.len() < 2 || suites.len() % 2 != 0 {
        return Err("malformed cipher suites");
    }
    if r.vec8("ClientHello truncated in compression methods")?.is_empty() {
        return Err("no compression method");
    }
    if r.b.is_empty() {
        return Ok(None);
    }
    let mut exts = Reader { b: r.vec16("ClientHello truncated in extensions")? };
    if !r.b.is_empty() {
        return Err("bytes after the extensions");
    }
    let mut name = None;
    while !exts.b.is_empty() {
        let kind = exts.u16("extension truncated")?;
        let data = exts.vec16("extension truncated")?;
        if kind == EXT_SERVER_NAME {
            if name.is_some() {
                return Err("two server_name extensions");
            }
            name = Some(server_name(data)?);
        }
    }
    Ok(name.flatten())
}

/// The first host_name of a server_name extension (RFC 6066 §3).
fn server_name(data: &[u8]) -> Result<Option<String>, &'static str> {
    let mut r = Reader { b: data };
    let mut list = Reader { b: r.vec16("server_name truncated")? };
    if !r.b.is_empty() || list.b.is_empty() {
        return Err("malformed server_name list");
    }
    let mut first = None;
    while !list.b.is_empty() {
        let kind = list.u8("server_name truncated")?;
        let name = list.vec16("server_name truncated")?;
        if kind == HOST_NAME && first.is_none() {
            if name.is_empty() || name.len() > MAX_NAME {
                return Err("host_name length out of range");
            }
            if !name.iter().all(|&c| c.is_ascii_graphic()) || name.ends_with(b".") {
                return Err("host_name is not a DNS name");
            }
            first = Some(String::from_utf8_lossy(name).into_owned());
        }
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as a client library writes one: rustls, to `sni`.
    fn rustls_hello(sni: &str) -> Vec<u8> {
        use std::sync::Arc;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let roots = rustls::RootCertStore::empty();
        let cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_the_sni_of_a_real_client_hello() {
        let sni = "outbound_.9080_.v1_.product.default.svc.cluster.local";
        let hello = rustls_hello(sni);
        assert_eq!(parse(&hello), Hello::Complete(Some(sni.to_owned())));
        // Every proper prefix is incomplete, never an error or a name.
        for n in 0..hello.len() {
            assert_eq!(parse(&hello[..n]), Hello::Incomplete, "prefix {n}");
        }
        // Bytes after the hello (the client's next flight) do not matter.
        let mut more = hello.clone();
        more.extend_from_slice(&[0x14, 3, 3, 0, 1, 1]);
        assert_eq!(parse(&more), Hello::Complete(Some(sni.to_owned())));
    }

    #[test]
    fn reassembles_a_hello_split_over_records() {
        let sni = "outbound_.80_._.a.b.svc.cluster.local";
        let hello = rustls_hello(sni);
        let msg = &hello[RECORD_HEADER..];
        let mut split = Vec::new();
        for part in [&msg[..3], &msg[3..40], &msg[40..]] {
            split.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(parse(&split), Hello::Complete(Some(sni.to_owned())));
        for n in 0..split.len() {
            assert_eq!(parse(&split[..n]), Hello::Incomplete, "prefix {n}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_client_hello() {
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Hello::NotTls(_)));
        assert!(matches!(parse(b"PRI * HTTP/2.0\r\n"), Hello::NotTls(_)));
        assert!(matches!(parse(&[22, 2, 0]), Hello::NotTls(_)));
        assert!(matches!(parse(&[22, 3, 1, 0, 0]), Hello::NotTls(_)));
        assert!(matches!(parse(&[22, 3, 1, 0x40, 1]), Hello::NotTls(_)));
        // A ServerHello where a ClientHello should be.
        assert!(matches!(parse(&[22, 3, 3, 0, 4, 2, 0, 0, 0]), Hello::NotTls(_)));
        assert!(matches!(parse(&[22, 3, 3, 0, 8, 2]), Hello::NotTls(_)));
    }

    #[test]
    fn every_corruption_is_an_answer_not_a_panic() {
        let hello = rustls_hello("outbound_.80_._.x.y.svc.cluster.local");
        let mut rng = crate::lb::Rng::new(7);
        for _ in 0..20_000 {
            let mut b = hello.clone();
            for _ in 0..1 + rng.next_u64() % 4 {
                let i = (rng.next_u64() as usize) % b.len();
                b[i] = rng.next_u64() as u8;
            }
            let cut = (rng.next_u64() as usize) % (b.len() + 1);
            let _ = parse(&b[..cut]);
            let _ = parse(&b);
        }
    }

    #[test]
    fn hello_without_sni_or_extensions() {
        // version, random, empty session id, one suite, null compression.
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0; 32]);
        body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
        let mut msg = vec![CLIENT_HELLO, 0, 0, body.len() as u8];
        msg.extend_from_slice(&body);
        let mut rec = vec![CONTENT_HANDSHAKE, 3, 1, 0, msg.len() as u8];
        rec.extend_from_slice(&msg);
        assert_eq!(parse(&rec), Hello::Complete(None));
        // A name with a trailing dot, or not ASCII: refused.
        let ext = |name: &[u8]| {
            let mut sn = vec![HOST_NAME];
            sn.extend_from_slice(&(name.len() as u16).to_be_bytes());
            sn.extend_from_slice(name);
            let mut list = (sn.len() as u16).to_be_bytes().to_vec();
            list.extend_from_slice(&sn);
            let mut e = vec![0, 0];
            e.extend_from_slice(&(list.len() as u16).to_be_bytes());
            e.extend_from_slice(&list);
            let mut b = body.clone();
            b.extend_from_slice(&(e.len() as u16).to_be_bytes());
            b.extend_from_slice(&e);
            let mut m = vec![CLIENT_HELLO, 0, 0, b.len() as u8];
            m.extend_from_slice(&b);
            let mut r = vec![CONTENT_HANDSHAKE, 3, 1, 0, m.len() as u8];
            r.extend_from_slice(&m);
            parse(&r)
        };
        assert_eq!(ext(b"a.b"), Hello::Complete(Some("a.b".to_owned())));
        assert!(matches!(ext(b"a.b."), Hello::NotTls(_)));
        assert!(matches!(ext("ä.b".as_bytes()), Hello::NotTls(_)));
        assert!(matches!(ext(b""), Hello::NotTls(_)));
    }
}
