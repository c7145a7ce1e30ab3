//! Names the table does not answer: the cache, then one upstream query per
//! distinct question in flight (identical concurrent queries coalesced), the
//! answer relayed to each client truncated to its own limit.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::oneshot;

use super::answer::{reply_limit, Outcome, Transport};
use super::cache::{Cache, CacheKey};
use super::metrics::Metrics;
use super::upstream::{UpstreamConfig, Upstreams};
use super::wire::{flag, write_response, Message, Query, Rcode, ReplyShape, MAX_MESSAGE};

type Waiters = Vec<oneshot::Sender<Option<Arc<Message>>>>;

thread_local! {
    /// Where replies are encoded, one buffer per thread (room for the
    /// largest message and its TCP length prefix).
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; MAX_MESSAGE + 2].into_boxed_slice());
}

/// Runs `f` on this thread's 64 KiB encoding buffer (a fresh one if `f`
/// nests): a reply is written there and copied out at its real size, so no
/// reply holds a buffer of the largest size (a flood of TCP queries held one
/// each). Synchronous: never hold it across an await.
pub fn with_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut b) => f(&mut b),
        Err(_) => f(&mut vec![0u8; MAX_MESSAGE + 2]),
    })
}

/// Cache, coalescing and upstreams.
#[derive(Debug)]
pub struct Forwarder {
    upstreams: ArcSwap<Upstreams>,
    cache: Option<Cache>,
    inflight: Mutex<HashMap<CacheKey, Waiters>>,
    metrics: Arc<Metrics>,
}

/// Removes the in-flight entry if the leading query is cancelled, so the
/// followers get `None` (their senders drop) instead of waiting forever.
struct Leader<'f> {
    f: &'f Forwarder,
    key: Option<CacheKey>,
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.f.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&k);
        }
    }
}

impl Forwarder {
    /// `cache_entries == 0` turns the cache off.
    pub fn new(cfg: UpstreamConfig, cache_entries: usize, cache_bytes: usize, metrics: Arc<Metrics>) -> Forwarder {
        Forwarder {
            upstreams: ArcSwap::from_pointee(Upstreams::new(cfg, metrics.clone())),
            cache: (cache_entries > 0).then(|| Cache::new(cache_entries, cache_bytes)),
            inflight: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    pub fn set_upstreams(&self, cfg: UpstreamConfig) {
        self.upstreams.store(Arc::new(Upstreams::new(cfg, self.metrics.clone())));
    }

    pub fn upstreams(&self) -> Arc<Upstreams> {
        self.upstreams.load_full()
    }

    pub fn cache_len(&self) -> usize {
        self.cache.as_ref().map_or(0, Cache::len)
    }

    pub fn cache_bytes(&self) -> usize {
        self.cache.as_ref().map_or(0, Cache::bytes)
    }

    /// Distinct questions waiting for an upstream now (each with its
    /// coalesced followers); back to 0 once every upstream answered or timed out.
    pub fn in_flight(&self) -> usize {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Stores an answer for `q` as if an upstream had given it (benchmarks, tests).
    pub fn insert_for_test(&self, q: &Query, m: Arc<Message>) {
        if let Some(c) = &self.cache {
            c.insert(CacheKey::of(q), m, Instant::now());
        }
    }

    /// Answers from the cache into `out` if it can; the length written.
    /// Called on the UDP fast path, so no await and no allocation.
    pub fn cached_reply(&self, q: &Query, transport: Transport, out: &mut [u8]) -> Option<usize> {
        let (m, age) = self.cache.as_ref()?.get(&CacheKey::of(q), Instant::now())?;
        let n = write_response(q, &m, age, shape(q, transport), out);
        (n > 0).then_some(n)
    }

    /// The upstream answer for `q` (cache, coalescing, hedged upstreams).
    pub async fn resolve(&self, q: &Query) -> (Option<Arc<Message>>, u32, Outcome) {
        let key = CacheKey::of(q);
        let now = Instant::now();
        if let Some((m, age)) = self.cache.as_ref().and_then(|c| c.get(&key, now)) {
            return (Some(m), age, Outcome::CacheHit);
        }
        let rx = {
            let mut g = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match g.get_mut(&key) {
                Some(w) => {
                    let (tx, rx) = oneshot::channel();
                    w.push(tx);
                    Some(rx)
                }
                None => {
                    g.insert(key.clone(), Vec::new());
                    None
                }
            }
        };
        if let Some(rx) = rx {
            self.metrics.coalesce();
            let m = rx.await.ok().flatten();
            let outcome = if m.is_some() { Outcome::Forwarded } else { Outcome::UpstreamFailure };
            return (m, 0, outcome);
        }
        let mut leader = Leader { f: self, key: Some(key) };
        self.metrics.upstream_request();
        let upstreams = self.upstreams.load_full();
        let m = upstreams.resolve(q).await.map(Arc::new);
        self.metrics.upstream_done(now.elapsed(), m.is_none());
        let key = leader.key.take().unwrap_or_else(|| CacheKey::of(q));
        if let (Some(c), Some(m)) = (&self.cache, &m) {
            c.insert(key.clone(), m.clone(), Instant::now());
        }
        let waiters = self.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&key).unwrap_or_default();
        for w in waiters {
            let _ = w.send(m.clone());
        }
        let outcome = if m.is_some() { Outcome::Forwarded } else { Outcome::UpstreamFailure };
        (m, 0, outcome)
    }

    /// The reply bytes for a forwarded query (SERVFAIL when every upstream
    /// failed), with the outcome and rcode for metrics. Sized by
    /// [`reply_limit`] (over UDP the client's size, at most 1232 bytes, with
    /// TC when cut); over TCP framed, its two-byte length first (RFC 1035
    /// §4.2.2). Exactly as long as the reply.
    pub async fn reply(&self, q: &Query, transport: Transport) -> (Vec<u8>, Outcome, Rcode) {
        let (m, age, outcome) = self.resolve(q).await;
        let servfail;
        let msg = match &m {
            Some(m) => &**m,
            None => {
                // Istio #29673: never NXDOMAIN on upstream failure.
                servfail = Message { flags: flag::QR | Rcode::SERVFAIL.0, ..Default::default() };
                &servfail
            }
        };
        let prefix = if transport == Transport::Tcp { 2 } else { 0 };
        let out = with_scratch(|buf| {
            let n = write_response(q, msg, age, shape(q, transport), &mut buf[prefix..]);
            if n == 0 {
                return Vec::new();
            }
            if prefix == 2 {
                buf[..2].copy_from_slice(&(n as u16).to_be_bytes());
            }
            buf[..prefix + n].to_vec()
        });
        (out, outcome, msg.rcode())
    }
}

fn shape(q: &Query, transport: Transport) -> ReplyShape {
    ReplyShape { limit: reply_limit(q, transport), edns: q.edns }
}
