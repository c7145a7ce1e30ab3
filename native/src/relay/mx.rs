//! Istio's TCP metadata exchange (`istio-peer-exchange`): each side of an
//! mTLS connection whose ALPN negotiated `istio-peer-exchange` writes, as its
//! first plaintext bytes, a frame describing its workload, and reads and
//! strips the peer's before passing application bytes on (istio/proxy
//! `source/extensions/filters/network/metadata_exchange/metadata_exchange.cc`
//! and `metadata_exchange_initial_header.h`):
//!
//! ```text
//! uint32 big-endian magic     0x3D230467
//! uint32 big-endian data_size
//! data: google.protobuf.Any { type_url "type.googleapis.com/google.protobuf.Struct",
//!        value: Struct { "x-envoy-peer-metadata": Struct of the workload,
//!                        "x-envoy-peer-metadata-id": node id } }
//! ```
//!
//! The workload Struct holds istio/proxy `extensions/common/metadata_object.cc`
//! `convertWorkloadMetadataToStruct`'s keys: `NAME`, `NAMESPACE`,
//! `WORKLOAD_NAME`, `CLUSTER_ID`, `LABELS` (`app`, `version`,
//! `service.istio.io/canonical-name`, `service.istio.io/canonical-revision`).
//! A frame with another magic is not a frame: its bytes are application
//! data and the peer is unknown, as Envoy treats it.
//!
//! The protobuf here is written and read by hand (only `Any`, `Struct`,
//! `Value` with string, struct and list values are needed), deterministically
//! as protobuf's own serializers do with deterministic output: map entries
//! sorted by key. `tests/unit/test_relay_mx.py` checks the bytes against
//! Python's protobuf.

use super::metrics::LocalWorkload;

pub const MAGIC: u32 = 0x3D23_0467;
/// The frame header: magic and length.
pub const HEADER: usize = 8;
/// Largest payload accepted (a workload's metadata is well under a KiB;
/// Envoy reads whatever length the header says).
pub const MAX_PAYLOAD: usize = 16 * 1024;
const TYPE_URL: &str = "type.googleapis.com/google.protobuf.Struct";
use header::{METADATA, METADATA_ID};
/// Canonical labels (istio `pkg/model/labels`, istio/proxy `metadata_object.h`).
pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";

/// What a peer's frame said of its workload ("" where it said nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub workload: String,
    pub cluster: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
}

// --- encoding ------------------------------------------------------------------------

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field.
fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    varint(out, u64::from(field << 3 | 2));
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

enum Val<'a> {
    Str(&'a str),
    Struct(Vec<(&'a str, Val<'a>)>),
}

/// `google.protobuf.Value`: string_value = 3, struct_value = 5.
fn value(v: &Val<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    match v {
        Val::Str(s) => bytes_field(&mut out, 3, s.as_bytes()),
        Val::Struct(fields) => bytes_field(&mut out, 5, &structure(fields)),
    }
    out
}

/// `google.protobuf.Struct`: map<string, Value> fields = 1, entries
/// (key = 1, value = 2) sorted by key.
fn structure(fields: &[(&str, Val<'_>)]) -> Vec<u8> {
    let mut sorted: Vec<&(&str, Val<'_>)> = fields.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::new();
    for (k, v) in sorted {
        let mut entry = Vec::new();
        bytes_field(&mut entry, 1, k.as_bytes());
        bytes_field(&mut entry, 2, &value(v));
        bytes_field(&mut out, 1, &entry);
    }
    out
}

/// The workload Struct's fields (`x-envoy-peer-metadata`'s value): empty
/// values are left out (Envoy leaves unset fields out).
fn workload_md(local: &LocalWorkload) -> Vec<(&str, Val<'_>)> {
    let mut labels: Vec<(&str, Val<'_>)> = Vec::new();
    for (k, v) in [
        ("app", &local.app),
        ("version", &local.version),
        (CANONICAL_NAME, &local.canonical_service),
        (CANONICAL_REVISION, &local.canonical_revision),
    ] {
        if !v.is_empty() {
            labels.push((k, Val::Str(v)));
        }
    }
    let mut md: Vec<(&str, Val<'_>)> = Vec::new();
    for (k, v) in [
        ("NAME", &local.name),
        ("NAMESPACE", &local.namespace),
        ("WORKLOAD_NAME", &local.workload),
        ("CLUSTER_ID", &local.cluster),
    ] {
        if !v.is_empty() {
            md.push((k, Val::Str(v)));
        }
    }
    if !labels.is_empty() {
        md.push(("LABELS", Val::Struct(labels)));
    }
    md
}

/// Our frame: header and payload, for this workload and node id.
pub fn frame(local: &LocalWorkload) -> Vec<u8> {
    let top = vec![(METADATA, Val::Struct(workload_md(local))), (METADATA_ID, Val::Str(&local.node_id))];
    let mut any = Vec::new();
    bytes_field(&mut any, 1, TYPE_URL.as_bytes());
    bytes_field(&mut any, 2, &structure(&top));
    let mut out = Vec::with_capacity(HEADER + any.len());
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&(any.len() as u32).to_be_bytes());
    out.extend_from_slice(&any);
    out
}

/// Istio's HTTP metadata exchange (istio/proxy
/// `source/extensions/filters/http/peer_metadata/filter.cc`, `propagation`
/// and `discovery` by headers): a sidecar sends its workload as
/// `x-envoy-peer-metadata`, the base64 (RFC 4648 §4, padded) of the
/// serialized workload Struct, and its node id as
/// `x-envoy-peer-metadata-id`, on requests to in-mesh endpoints and on the
/// inbound's responses to in-mesh clients; the receiver reads and removes
/// both before the application sees the message.
pub mod header {
    /// The workload Struct, base64.
    pub const METADATA: &str = "x-envoy-peer-metadata";
    /// The node id.
    pub const METADATA_ID: &str = "x-envoy-peer-metadata-id";
    /// The largest encoded value read (a workload Struct is a few hundred
    /// bytes; the frame's payload limit, in base64).
    pub const MAX_ENCODED: usize = super::MAX_PAYLOAD / 3 * 4 + 4;
}

/// Our `x-envoy-peer-metadata` and `-id` values.
#[derive(Debug, Clone)]
pub struct PeerHeaders {
    pub metadata: http::HeaderValue,
    pub id: http::HeaderValue,
    /// Whether there is anything to say: a relay not told its workload
    /// sends no headers (its peers keep the endpoint's EDS metadata).
    pub known: bool,
}

impl PeerHeaders {
    pub fn new(local: &LocalWorkload) -> PeerHeaders {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(structure(&workload_md(local)));
        PeerHeaders {
            // Base64 is always a valid field value; a node id with bytes
            // a field cannot hold is sent empty.
            metadata: http::HeaderValue::from_str(&b64).unwrap_or(http::HeaderValue::from_static("")),
            id: http::HeaderValue::from_str(&local.node_id).unwrap_or(http::HeaderValue::from_static("")),
            known: !(local.workload.is_empty() && local.name.is_empty()),
        }
    }
}

/// A peer's `x-envoy-peer-metadata` (and `-id`) values, read; an encoding
/// or protobuf error says what was wrong.
pub fn parse_header(value: &[u8], id: &[u8]) -> Result<PeerInfo, &'static str> {
    use base64::Engine as _;
    if value.len() > header::MAX_ENCODED {
        return Err("x-envoy-peer-metadata is too long");
    }
    let md =
        base64::engine::general_purpose::STANDARD.decode(value).map_err(|_| "x-envoy-peer-metadata is not base64")?;
    let mut info = PeerInfo::default();
    workload_fields(&md, &mut info)?;
    info.id = String::from_utf8_lossy(id).into_owned();
    Ok(info)
}

// --- decoding ------------------------------------------------------------------------

/// Fields of one protobuf message, bounds-checked: (number, wire type, the
/// bytes of a length-delimited field). Varint and fixed fields are skipped.
fn fields(mut b: &[u8]) -> Result<Vec<(u32, &[u8])>, &'static str> {
    fn read_varint(b: &mut &[u8]) -> Result<u64, &'static str> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&byte, rest) = b.split_first().ok_or("truncated varint")?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err("varint too long")
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = read_varint(&mut b)?;
        let (field, wire) = ((key >> 3) as u32, key & 7);
        match wire {
            0 => {
                read_varint(&mut b)?;
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                b = b.get(n..).ok_or("truncated fixed field")?;
            }
            2 => {
                let n = usize::try_from(read_varint(&mut b)?).map_err(|_| "length too large")?;
                let v = b.get(..n).ok_or("truncated length-delimited field")?;
                b = &b[n..];
                out.push((field, v));
            }
            _ => return Err("unsupported wire type"),
        }
    }
    Ok(out)
}

/// A Struct's entries: key -> the Value's bytes (the last one wins, as in
/// protobuf's map parsing).
fn struct_entries(b: &[u8]) -> Result<Vec<(String, &[u8])>, &'static str> {
    let mut out: Vec<(String, &[u8])> = Vec::new();
    for (f, entry) in fields(b)? {
        if f != 1 {
            continue;
        }
        let (mut key, mut val) = (None, &[][..]);
        for (ef, v) in fields(entry)? {
            match ef {
                1 => key = Some(std::str::from_utf8(v).map_err(|_| "map key is not UTF-8")?.to_owned()),
                2 => val = v,
                _ => {}
            }
        }
        let key = key.ok_or("map entry without a key")?;
        out.retain(|(k, _)| *k != key);
        out.push((key, val));
    }
    Ok(out)
}

/// A Value's string (field 3), if it is one.
fn value_str(b: &[u8]) -> Option<String> {
    let f = fields(b).ok()?;
    f.iter().rev().find(|(n, _)| *n == 3).and_then(|(_, v)| std::str::from_utf8(v).ok()).map(str::to_owned)
}

/// A Value's struct (field 5), if it is one.
fn value_struct(b: &[u8]) -> Option<&[u8]> {
    fields(b).ok()?.into_iter().rev().find(|(n, _)| *n == 5).map(|(_, v)| v)
}

/// Reads a frame's payload (after the header).
pub fn parse_payload(payload: &[u8]) -> Result<PeerInfo, &'static str> {
    let mut type_url = "";
    let mut value: &[u8] = &[];
    for (f, v) in fields(payload)? {
        match f {
            1 => type_url = std::str::from_utf8(v).map_err(|_| "type_url is not UTF-8")?,
            2 => value = v,
            _ => {}
        }
    }
    if type_url != TYPE_URL {
        return Err("the payload is not a google.protobuf.Struct");
    }
    let mut info = PeerInfo::default();
    for (k, v) in struct_entries(value)? {
        match k.as_str() {
            METADATA_ID => info.id = value_str(v).unwrap_or_default(),
            METADATA => {
                let md = value_struct(v).ok_or("x-envoy-peer-metadata is not a struct")?;
                workload_fields(md, &mut info)?;
            }
            _ => {}
        }
    }
    Ok(info)
}

fn workload_fields(md: &[u8], info: &mut PeerInfo) -> Result<(), &'static str> {
    let (mut app, mut app_k8s, mut version, mut version_k8s) =
        (String::new(), String::new(), String::new(), String::new());
    for (k, v) in struct_entries(md)? {
        match k.as_str() {
            "NAME" => info.name = value_str(v).unwrap_or_default(),
            "NAMESPACE" => info.namespace = value_str(v).unwrap_or_default(),
            "WORKLOAD_NAME" => info.workload = value_str(v).unwrap_or_default(),
            "CLUSTER_ID" => info.cluster = value_str(v).unwrap_or_default(),
            "LABELS" => {
                let Some(labels) = value_struct(v) else { continue };
                for (lk, lv) in struct_entries(labels)? {
                    let s = value_str(lv).unwrap_or_default();
                    match lk.as_str() {
                        "app" => app = s,
                        "app.kubernetes.io/name" => app_k8s = s,
                        "version" => version = s,
                        "app.kubernetes.io/version" => version_k8s = s,
                        CANONICAL_NAME => info.canonical_service = s,
                        CANONICAL_REVISION => info.canonical_revision = s,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    // metadata_object.cc: the app.kubernetes.io labels first.
    info.app = if app_k8s.is_empty() { app } else { app_k8s };
    info.version = if version_k8s.is_empty() { version } else { version_k8s };
    Ok(())
}

/// Reading the peer's frame from the first plaintext bytes of a connection.
#[derive(Debug, Default)]
pub struct Reader {
    buf: Vec<u8>,
}

/// What the bytes fed so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// More bytes are needed; all given were taken.
    More,
    /// The frame is complete after `used` of the bytes given; the rest is
    /// application data. The peer, or why its frame was not understood
    /// (a well-framed but unreadable payload: no peer, nothing passed on).
    Done { used: usize, peer: Result<PeerInfo, &'static str> },
    /// Not a frame (wrong magic or a length over the limit): these bytes,
    /// held so far plus the ones given, are application data.
    NotMx(Vec<u8>),
}

impl Reader {
    /// Gives up (the peer ended its stream before a whole frame): the bytes
    /// held so far, which are application data.
    pub fn abort(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Feeds the next plaintext bytes.
    pub fn feed(&mut self, bytes: &[u8]) -> Read {
        let before = self.buf.len();
        let want_header = HEADER.saturating_sub(before);
        if want_header > 0 {
            let take = want_header.min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            if self.buf.len() < HEADER {
                return Read::More;
            }
            let magic = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
            let len = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
            if magic != MAGIC || len > MAX_PAYLOAD {
                let mut held = std::mem::take(&mut self.buf);
                held.extend_from_slice(&bytes[take..]);
                return Read::NotMx(held);
            }
            return self.payload(&bytes[take..], take);
        }
        self.payload(bytes, 0)
    }

    fn payload(&mut self, bytes: &[u8], used_before: usize) -> Read {
        let len = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
        let need = HEADER + len - self.buf.len();
        let take = need.min(bytes.len());
        self.buf.extend_from_slice(&bytes[..take]);
        if self.buf.len() < HEADER + len {
            return Read::More;
        }
        let peer = parse_payload(&self.buf[HEADER..]);
        self.buf = Vec::new();
        Read::Done { used: used_before + take, peer }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalWorkload {
        LocalWorkload {
            workload: "product-vm".into(),
            namespace: "default".into(),
            app: "product".into(),
            version: "vm".into(),
            canonical_service: "product".into(),
            canonical_revision: "vm".into(),
            cluster: "Kubernetes".into(),
            name: "vm-1".into(),
            node_id: "sidecar~10.0.0.1~vm-1.default~default.svc.cluster.local".into(),
        }
    }

    #[test]
    fn a_frame_reads_back_as_the_workload_it_describes() {
        let f = frame(&local());
        assert_eq!(&f[..4], &MAGIC.to_be_bytes());
        assert_eq!(u32::from_be_bytes([f[4], f[5], f[6], f[7]]) as usize, f.len() - HEADER);
        let peer = parse_payload(&f[HEADER..]).unwrap();
        assert_eq!(
            peer,
            PeerInfo {
                id: "sidecar~10.0.0.1~vm-1.default~default.svc.cluster.local".into(),
                name: "vm-1".into(),
                namespace: "default".into(),
                workload: "product-vm".into(),
                cluster: "Kubernetes".into(),
                app: "product".into(),
                version: "vm".into(),
                canonical_service: "product".into(),
                canonical_revision: "vm".into(),
            }
        );
    }

    #[test]
    fn http_headers_read_back_as_the_workload_and_bad_ones_are_errors() {
        let h = PeerHeaders::new(&local());
        let peer = parse_header(h.metadata.as_bytes(), h.id.as_bytes()).unwrap();
        let framed = parse_payload(&frame(&local())[HEADER..]).unwrap();
        assert_eq!(peer, framed, "the header carries what the frame carries");
        // The value is the frame's workload Struct, base64.
        use base64::Engine as _;
        let md = base64::engine::general_purpose::STANDARD.decode(h.metadata.as_bytes()).unwrap();
        let f = frame(&local());
        assert!(f.windows(md.len()).any(|w| w == md.as_slice()));
        assert_eq!(parse_header(b"%%% not base64", b"").unwrap_err(), "x-envoy-peer-metadata is not base64");
        assert!(parse_header(b"AAECAwQFBgcICQ==", b"").is_err());
        assert!(parse_header(&vec![b'A'; header::MAX_ENCODED + 4], b"").is_err());
        // Empty: an empty Struct, nothing known.
        assert_eq!(parse_header(b"", b"id").unwrap(), PeerInfo { id: "id".into(), ..PeerInfo::default() });
        // A node id a header cannot hold is sent empty, never a panic.
        let odd = LocalWorkload { node_id: "a\nb".into(), ..local() };
        assert_eq!(PeerHeaders::new(&odd).id, "");
    }

    #[test]
    fn the_reader_takes_a_frame_in_any_pieces_and_leaves_what_follows() {
        let mut bytes = frame(&local());
        let n = bytes.len();
        bytes.extend_from_slice(b"app data");
        for cut in [1, 3, 8, 9, n - 1, n, n + 3] {
            let mut r = Reader::default();
            let first = r.feed(&bytes[..cut.min(bytes.len())]);
            let got = if cut < n {
                assert_eq!(first, Read::More, "cut {cut}");
                r.feed(&bytes[cut..])
            } else {
                first
            };
            match got {
                Read::Done { used, peer } => {
                    let consumed = if cut < n { used + cut } else { used };
                    assert_eq!(consumed, n, "cut {cut}");
                    assert_eq!(peer.unwrap().workload, "product-vm");
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn other_bytes_are_application_data_and_garbage_is_an_error_not_a_panic() {
        let mut r = Reader::default();
        assert_eq!(r.feed(b"GET / HT"), Read::NotMx(b"GET / HT".to_vec()));
        let mut r = Reader::default();
        assert_eq!(r.feed(b"SSH-"), Read::More);
        assert_eq!(r.feed(b"2.0-x\r\n"), Read::NotMx(b"SSH-2.0-x\r\n".to_vec()));
        // A length over the limit: not a frame.
        let mut big = MAGIC.to_be_bytes().to_vec();
        big.extend_from_slice(&(MAX_PAYLOAD as u32 + 1).to_be_bytes());
        assert!(matches!(Reader::default().feed(&big), Read::NotMx(_)));
        // Framed garbage: consumed, no peer.
        let mut rng = crate::lb::Rng::new(3);
        let good = frame(&local());
        for _ in 0..5000 {
            let mut b = good.clone();
            for _ in 0..3 {
                let i = HEADER + (rng.next_u64() as usize) % (b.len() - HEADER);
                b[i] = rng.next_u64() as u8;
            }
            match Reader::default().feed(&b) {
                Read::Done { used, .. } => assert_eq!(used, b.len()),
                other => panic!("{other:?}"),
            }
        }
    }
}
