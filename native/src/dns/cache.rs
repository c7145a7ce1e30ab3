//! Cache of forwarded answers: TTL-respecting, with negative caching from the
//! SOA (RFC 2308), bounded by entries and by bytes, TTLs decremented on hits.
//!
//! Istio has no cache at all: every query it does not answer goes upstream
//! (istio `pkg/dns/client/dns.go`, `queryUpstream`;
//! <https://github.com/istio/istio/issues/58806>). Entries are
//! whole upstream messages, kept parsed so a hit is only a re-encode for the
//! asking client (its ID, question case and size limit). Eviction is by age
//! of insertion (FIFO) once a bound is reached; expired entries go first
//! because they are found and removed on lookup.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::wire::{flag, Message, NameBuf, Query, RType, Rcode};

/// Upper bounds on what we keep, whatever the upstream says: positive
/// answers one hour, negative ones 15 minutes (RFC 2308 §5 suggests 1–3 h;
/// shorter is kinder to names that come into existence).
pub const MAX_TTL: u32 = 3600;
pub const MAX_NEGATIVE_TTL: u32 = 900;

/// What identifies an answer: the name (case-folded, RFC 4343), type, class
/// and the DO and CD bits, which change what an upstream returns.
#[derive(Clone, PartialEq, Eq)]
pub struct CacheKey {
    name: NameBuf,
    qtype: RType,
    qclass: u16,
    bits: u8,
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}/{}/{}/{}", self.name, self.qtype, self.qclass, self.bits)
    }
}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.name.as_wire().hash(h);
        self.qtype.hash(h);
        self.qclass.hash(h);
        self.bits.hash(h);
    }
}

impl CacheKey {
    pub fn of(q: &Query) -> CacheKey {
        let bits = u8::from(q.edns.is_some_and(|e| e.dnssec_ok)) | (u8::from(q.flags & flag::CD != 0) << 1);
        CacheKey { name: q.qname.to_lowercase(), qtype: q.qtype, qclass: q.qclass, bits }
    }
}

struct Entry {
    msg: Arc<Message>,
    stored: Instant,
    ttl: u32,
    bytes: usize,
    seq: u64,
}

struct Inner {
    map: HashMap<CacheKey, Entry>,
    order: VecDeque<(CacheKey, u64)>,
    bytes: usize,
    seq: u64,
}

/// The cache. One lock; a hit holds it for a hash lookup and an `Arc` clone.
pub struct Cache {
    inner: Mutex<Inner>,
    max_entries: usize,
    max_bytes: usize,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("max_entries", &self.max_entries).field("max_bytes", &self.max_bytes).finish()
    }
}

/// How long `m` may be cached, or `None` if not at all.
///
/// - NOERROR with answers: the smallest answer TTL (RFC 2181 §5.2, §8);
/// - NXDOMAIN, or NOERROR without answers (NODATA): min(SOA TTL, SOA
///   MINIMUM) of the SOA in the authority section; without an SOA, not
///   cached (RFC 2308 §5);
/// - truncated answers, SERVFAIL and every other rcode: not cached.
pub fn cacheable_ttl(m: &Message) -> Option<u32> {
    if m.flags & flag::TC != 0 {
        return None;
    }
    match m.rcode() {
        Rcode::NOERROR if !m.answers.is_empty() => {
            let ttl = m.answers.iter().map(|r| r.ttl).min()?;
            (ttl > 0).then_some(ttl.min(MAX_TTL))
        }
        Rcode::NOERROR | Rcode::NXDOMAIN => {
            let soa = m.authority.iter().find(|r| r.rtype == RType::SOA)?;
            let d = &soa.rdata;
            let minimum = u32::from_be_bytes(d.get(d.len().checked_sub(4)?..)?.try_into().ok()?);
            let ttl = soa.ttl.min(minimum);
            (ttl > 0).then_some(ttl.min(MAX_NEGATIVE_TTL))
        }
        _ => None,
    }
}

/// Rough heap bytes of a message.
fn size_of(m: &Message) -> usize {
    let rec = |r: &super::wire::Record| std::mem::size_of_val(r) + r.rdata.capacity();
    std::mem::size_of::<Message>()
        + m.answers.iter().chain(&m.authority).chain(&m.additional).map(rec).sum::<usize>()
        + std::mem::size_of::<CacheKey>() * 2
}

impl Cache {
    pub fn new(max_entries: usize, max_bytes: usize) -> Cache {
        Cache {
            inner: Mutex::new(Inner { map: HashMap::new(), order: VecDeque::new(), bytes: 0, seq: 0 }),
            max_entries,
            max_bytes,
        }
    }

    /// A live entry and its age in whole seconds (to subtract from TTLs).
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<(Arc<Message>, u32)> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let e = g.map.get(key)?;
        let age = now.saturating_duration_since(e.stored);
        if age >= Duration::from_secs(e.ttl as u64) {
            let bytes = e.bytes;
            g.map.remove(key);
            g.bytes -= bytes;
            return None;
        }
        Some((e.msg.clone(), age.as_secs() as u32))
    }

    /// Stores `m` if it is cacheable; records above its TTL are clipped on
    /// output by the age, and the entry expires with its shortest TTL.
    pub fn insert(&self, key: CacheKey, m: Arc<Message>, now: Instant) {
        let Some(ttl) = cacheable_ttl(&m) else { return };
        let bytes = size_of(&m);
        if self.max_entries == 0 || bytes > self.max_bytes {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *g;
        inner.seq += 1;
        let seq = inner.seq;
        match inner.map.entry(key.clone()) {
            MapEntry::Occupied(mut o) => {
                inner.bytes -= o.get().bytes;
                o.insert(Entry { msg: m, stored: now, ttl, bytes, seq });
            }
            MapEntry::Vacant(v) => {
                v.insert(Entry { msg: m, stored: now, ttl, bytes, seq });
            }
        }
        inner.bytes += bytes;
        inner.order.push_back((key, seq));
        while inner.map.len() > self.max_entries || inner.bytes > self.max_bytes {
            let Some((k, s)) = inner.order.pop_front() else { break };
            // Queue items of replaced entries are stale: skip them.
            if inner.map.get(&k).is_some_and(|e| e.seq == s) {
                if let Some(e) = inner.map.remove(&k) {
                    inner.bytes -= e.bytes;
                }
            }
        }
        // Keep the queue from growing without bound under constant replacement.
        if inner.order.len() > 2 * self.max_entries + 64 {
            let map = &inner.map;
            inner.order.retain(|(k, s)| map.get(k).is_some_and(|e| e.seq == *s));
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes accounted to entries.
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::wire::{Record, CLASS_IN};

    fn q(name: &str) -> Query {
        Query {
            id: 1,
            flags: 0,
            qname: NameBuf::from_text(name).unwrap(),
            qtype: RType::A,
            qclass: CLASS_IN,
            edns: None,
        }
    }

    fn answer(ttl: u32) -> Arc<Message> {
        Arc::new(Message {
            flags: flag::QR,
            answers: vec![Record {
                name: NameBuf::from_text("a.example").unwrap(),
                rtype: RType::A,
                class: 1,
                ttl,
                rdata: vec![1, 2, 3, 4],
            }],
            ..Default::default()
        })
    }

    fn negative(rc: Rcode, soa_ttl: u32, minimum: u32) -> Arc<Message> {
        let mut rd = NameBuf::from_text("ns.example").unwrap().as_wire().to_vec();
        rd.extend_from_slice(NameBuf::from_text("h.example").unwrap().as_wire());
        rd.extend_from_slice(&[0; 16]);
        rd.extend_from_slice(&minimum.to_be_bytes());
        Arc::new(Message {
            flags: flag::QR | rc.0,
            authority: vec![Record {
                name: NameBuf::from_text("example").unwrap(),
                rtype: RType::SOA,
                class: 1,
                ttl: soa_ttl,
                rdata: rd,
            }],
            ..Default::default()
        })
    }

    #[test]
    fn ttls_and_negative_caching() {
        assert_eq!(cacheable_ttl(&answer(60)), Some(60));
        assert_eq!(cacheable_ttl(&answer(0)), None);
        assert_eq!(cacheable_ttl(&answer(1_000_000)), Some(MAX_TTL));
        assert_eq!(cacheable_ttl(&negative(Rcode::NXDOMAIN, 300, 20)), Some(20));
        assert_eq!(cacheable_ttl(&negative(Rcode::NOERROR, 10, 20)), Some(10));
        assert_eq!(cacheable_ttl(&negative(Rcode::SERVFAIL, 10, 20)), None);
        let no_soa = Message { flags: flag::QR | Rcode::NXDOMAIN.0, ..Default::default() };
        assert_eq!(cacheable_ttl(&no_soa), None);
    }

    #[test]
    fn hits_age_and_expire_case_insensitively() {
        let c = Cache::new(10, 1 << 20);
        let t0 = Instant::now();
        c.insert(CacheKey::of(&q("A.Example")), answer(60), t0);
        let (m, age) = c.get(&CacheKey::of(&q("a.example")), t0 + Duration::from_secs(15)).unwrap();
        assert_eq!((m.answers[0].ttl, age), (60, 15));
        assert!(c.get(&CacheKey::of(&q("a.example")), t0 + Duration::from_secs(60)).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn bounded_by_entries_and_bytes() {
        let c = Cache::new(3, 1 << 20);
        let t0 = Instant::now();
        for i in 0..10 {
            c.insert(CacheKey::of(&q(&format!("n{i}.example"))), answer(60), t0);
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(&CacheKey::of(&q("n9.example")), t0).is_some());
        assert!(c.get(&CacheKey::of(&q("n0.example")), t0).is_none());
        let one = size_of(&answer(60));
        let c = Cache::new(1000, one * 2);
        for i in 0..10 {
            c.insert(CacheKey::of(&q(&format!("n{i}.example"))), answer(60), t0);
        }
        assert_eq!(c.len(), 2);
        assert!(c.bytes() <= one * 2);
        // Replacing one key many times keeps the eviction queue bounded.
        let c = Cache::new(2, 1 << 20);
        for _ in 0..1000 {
            c.insert(CacheKey::of(&q("same.example")), answer(60), t0);
        }
        assert!(c.inner.lock().unwrap().order.len() <= 2 * 2 + 64 + 1);
    }
}
