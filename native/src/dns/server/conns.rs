//! TCP connections: how many are open in all and per client, and which one
//! makes room when a new client arrives at a limit.
//!
//! Refusing new connections at the limit let 512 kept-alive connections
//! (one query every few seconds, inside any idle timeout) lock every
//! legitimate TCP client out. Here a new connection at a limit closes the
//! *oldest idle* one instead (no query in flight; least recently active),
//! first among its own client's connections when that client holds its
//! share, else among all; only when every connection is busy is the new one
//! turned away. RFC 7766 §6.2.3 lets a server close idle connections under
//! resource pressure, and §6.2.2 lets it limit connections per client
//! address; clients must expect either (§6.2.4 and §6.2.1). A client is its
//! IPv4 address or IPv6 /64 (`admit::client_key`).
//!
//! The registry is a map under a mutex taken on accept and on close, never
//! per query: a query touches only its connection's two atomics (in flight,
//! last active) and the registry's activity counter, whose values order
//! connections by their last query exactly (no clock read, no ties).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::admit::client_key;
use crate::dns::metrics::{Metrics, TcpReject};

/// What a connection shares with the registry.
#[derive(Debug)]
pub(super) struct ConnState {
    inflight: AtomicU32,
    /// The registry's activity count at the connection's last query (or
    /// admission): the smallest is the least recently active.
    last_active: AtomicU64,
    /// Notified when the connection is evicted to make room.
    pub(super) evict: Notify,
}

impl ConnState {
    /// A query of this connection started: it is busy until [`ConnState::end`].
    #[inline]
    fn begin(&self, stamp: u64) {
        self.inflight.fetch_add(1, Relaxed);
        self.last_active.store(stamp, Relaxed);
    }

    #[inline]
    fn end(&self) {
        self.inflight.fetch_sub(1, Relaxed);
    }

    fn idle(&self) -> bool {
        self.inflight.load(Relaxed) == 0
    }
}

#[derive(Debug)]
struct Entry {
    client: u64,
    state: Arc<ConnState>,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    conns: HashMap<u64, Entry>,
    per_client: HashMap<u64, usize>,
}

impl Registry {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.conns.remove(&id)?;
        if let Some(n) = self.per_client.get_mut(&e.client) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&e.client);
            }
        }
        Some(e)
    }

    /// The idle connection least recently active, of `client` or of anyone.
    fn oldest_idle(&self, client: Option<u64>) -> Option<u64> {
        self.conns
            .iter()
            .filter(|(_, e)| client.map_or(true, |c| e.client == c) && e.state.idle())
            .min_by_key(|(_, e)| e.state.last_active.load(Relaxed))
            .map(|(id, _)| *id)
    }
}

/// Every TCP connection of a server.
#[derive(Debug)]
pub(super) struct Conns {
    registry: Mutex<Registry>,
    open: AtomicUsize,
    /// Counts admissions and queries: the order of activity.
    activity: AtomicU64,
    max_total: usize,
    max_per_client: usize,
    metrics: Arc<Metrics>,
}

/// An admitted connection's place in the registry; leaves it when dropped.
#[derive(Debug)]
pub(super) struct Ticket {
    conns: Arc<Conns>,
    id: u64,
    pub(super) state: Arc<ConnState>,
}

impl Ticket {
    /// A query of this connection in progress: the connection is busy (never
    /// evicted) until every [`Busy`] of it is dropped.
    pub(super) fn busy(&self) -> Busy {
        self.state.begin(self.conns.stamp());
        Busy(self.state.clone())
    }
}

/// See [`Ticket::busy`].
#[derive(Debug)]
pub(super) struct Busy(Arc<ConnState>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut r = self.conns.registry.lock().unwrap_or_else(|p| p.into_inner());
        if r.remove(self.id).is_some() {
            self.conns.open.fetch_sub(1, Relaxed);
        }
    }
}

impl Conns {
    pub(super) fn new(max_total: usize, max_per_client: usize, metrics: Arc<Metrics>) -> Conns {
        Conns {
            registry: Mutex::new(Registry::default()),
            open: AtomicUsize::new(0),
            activity: AtomicU64::new(0),
            max_total: max_total.max(1),
            max_per_client: max_per_client.max(1),
            metrics,
        }
    }

    /// The next activity stamp.
    fn stamp(&self) -> u64 {
        self.activity.fetch_add(1, Relaxed)
    }

    /// Open connections.
    pub(super) fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    fn evict(&self, r: &mut Registry, id: u64) {
        if let Some(e) = r.remove(id) {
            self.open.fetch_sub(1, Relaxed);
            // Stored if the connection is not waiting right now: never lost.
            e.state.evict.notify_one();
            self.metrics.tcp_evicted();
        }
    }

    /// Admits a connection from `peer`, evicting the oldest idle connection
    /// when a limit is reached; turned away (and counted) when every
    /// connection in the way is busy.
    pub(super) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Ticket, TcpReject> {
        let client = client_key(peer);
        let mut r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if r.per_client.get(&client).copied().unwrap_or(0) >= self.max_per_client {
            let Some(victim) = r.oldest_idle(Some(client)) else {
                self.metrics.tcp_rejected(TcpReject::ClientLimit);
                return Err(TcpReject::ClientLimit);
            };
            self.evict(&mut r, victim);
        }
        if r.conns.len() >= self.max_total {
            let Some(victim) = r.oldest_idle(None) else {
                self.metrics.tcp_rejected(TcpReject::Limit);
                return Err(TcpReject::Limit);
            };
            self.evict(&mut r, victim);
        }
        r.next_id += 1;
        let id = r.next_id;
        let state = Arc::new(ConnState {
            inflight: AtomicU32::new(0),
            last_active: AtomicU64::new(self.stamp()),
            evict: Notify::new(),
        });
        r.conns.insert(id, Entry { client, state: state.clone() });
        *r.per_client.entry(client).or_insert(0) += 1;
        self.open.fetch_add(1, Relaxed);
        Ok(Ticket { conns: self.clone(), id, state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn conns(total: usize, per_client: usize) -> (Arc<Conns>, Arc<Metrics>) {
        let m = Arc::new(Metrics::default());
        (Arc::new(Conns::new(total, per_client, m.clone())), m)
    }

    /// Whether `t` was told to close (a stored notification completes at once).
    fn evicted(t: &Ticket) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_millis(1), t.state.evict.notified()).await.is_ok()
        })
    }

    #[test]
    fn at_the_total_the_oldest_idle_connection_makes_room() {
        let (c, m) = conns(3, 10);
        let a = c.admit(ip("192.0.2.1")).unwrap();
        let b = c.admit(ip("192.0.2.2")).unwrap();
        let d = c.admit(ip("192.0.2.3")).unwrap();
        // `a` is busy, `b` was active after `d`: `d` is the oldest idle one.
        let _a_busy = a.busy();
        drop(b.busy());
        let e = c.admit(ip("192.0.2.4")).unwrap();
        assert!(evicted(&d) && !evicted(&a) && !evicted(&b));
        assert_eq!((c.open(), m.stats().tcp_evicted), (3, 1));
        // Dropping the evicted ticket later changes nothing more.
        drop(d);
        assert_eq!(c.open(), 3);
        // Everyone busy: the newcomer is turned away.
        let _busy = (b.busy(), e.busy());
        assert_eq!(c.admit(ip("192.0.2.5")).unwrap_err(), TcpReject::Limit);
        assert_eq!(m.stats().tcp_rejected, vec![("not_allowed", 0), ("client_limit", 0), ("limit", 1)]);
        drop((_busy, _a_busy, a, b, e));
        assert_eq!(c.open(), 0);
    }

    #[test]
    fn a_client_at_its_share_gives_up_its_own_oldest_idle_connection() {
        let (c, _) = conns(100, 2);
        let a1 = c.admit(ip("192.0.2.1")).unwrap();
        let a2 = c.admit(ip("192.0.2.1")).unwrap();
        let other = c.admit(ip("192.0.2.9")).unwrap();
        let a3 = c.admit(ip("192.0.2.1")).unwrap();
        assert!(evicted(&a1) && !evicted(&a2) && !evicted(&other));
        let _busy = (a2.busy(), a3.busy());
        assert_eq!(c.admit(ip("192.0.2.1")).unwrap_err(), TcpReject::ClientLimit);
        // Another client is not affected by this one's share.
        let _o2 = c.admit(ip("192.0.2.10")).unwrap();
        drop((_busy, a1, a2, a3, other));
        assert_eq!(c.open(), 1);
    }
}
