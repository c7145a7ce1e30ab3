//! Admission: every accepted connection takes a slot here before it is
//! served, and gives it back when it ends. The slots are bounded per relay
//! ([`Limits::max_connections`]) and per source ([`Limits::max_connections_per_source`]).
//!
//! # At the limit: evict the connection that is doing nothing, not the new one
//! When a new connection finds the relay (or its source) full, the slot is
//! made by closing (RST) the connections that have been doing nothing the
//! longest, and only when none qualifies is the new one refused:
//! 1. first, connections still before their first useful byte: waiting for
//!    bytes to tell TLS from plaintext, or for the rest of a ClientHello, or
//!    accepted [`SETUP_EVICTABLE_MS`] ago and still not started by a worker
//!    (under a flood the accept loop outruns the workers), oldest first;
//! 2. then connections that made no progress (a handshake stalled after its
//!    ClientHello, a connect, an identity wait) or moved no byte for at
//!    least [`EVICTABLE_IDLE_MS`], longest idle first.
//!
//! A connection that moved bytes within the last second is never evicted,
//! nor one whose handshake is under way since less than a second: a client
//! that sent a whole ClientHello is in a class of its own, so a flood of
//! partial ones evicts itself, not legitimate clients' handshakes.
//! Why not refuse the new connection instead (Envoy's
//! `envoy.overload_actions.reject_incoming_connections`, linkerd's load
//! shedding)? Because whoever holds the slots then keeps them: 170 idle
//! connections from any local user denied all captured egress for the hour
//! of the idle timeout, and 4,096 partial ClientHellos held every inbound
//! slot for the whole handshake deadline. Evicting what is idle
//! makes holding slots cost an attacker traffic, and costs a well-behaved
//! client at most an idle keep-alive connection, which HTTP clients reopen
//! and retry on by design (RFC 9112 §9.3.1). It is Envoy's own answer to
//! the same pressure, pushed to its limit: its overload manager's
//! `envoy.overload_actions.reduce_timeouts` shortens exactly these timers
//! as a resource fills (`ScaleTimersOverloadActionConfig` timer types
//! `TRANSPORT_SOCKET_CONNECT`, the TLS handshake, and
//! `HTTP_DOWNSTREAM_CONNECTION_IDLE`; envoy
//! `api/envoy/config/overload/v3/overload.proto`,
//! `source/common/event/scaled_range_timer_manager_impl.cc`), so at
//! saturation idle and handshaking connections go first; we pick them
//! directly instead of waiting for scaled timers.
//!
//! Within a class, the source holding the most slots gives one up first,
//! then the oldest: a flood's sources pay for the flood, and a client
//! whose ClientHello is still in the socket buffer when the relay fills
//! (one connection from its address) is not next in line behind a
//! flooding source's hundreds (the DNS proxy's TCP admission is fair per
//! client the same way, RFC 7766 §6.2.2).
//!
//! Victims are chosen by one scan of the relay's slots under the lock, and
//! a scan evicts a batch (1/64 of the limit, at least one), so under a
//! flood the scan's cost per admitted connection stays constant.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::limits::{Limits, SourceKey};
use super::monotonic_ms;

/// A connection that moved no byte for this long may be evicted when the
/// relay is full.
pub(crate) const EVICTABLE_IDLE_MS: u64 = 1000;
/// A connection still in [`Phase::Setup`] this long after accept is evicted like one
/// waiting for its first bytes (its task has not even started: nothing of it is lost).
pub(crate) const SETUP_EVICTABLE_MS: u64 = 50;

/// Evictions per scan: this fraction of the limit.
const EVICT_BATCH_DIVISOR: usize = 64;

/// Where a connection is in its life, for eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Accepted, being classified (original destination, tables): short.
    Setup = 0,
    /// Waiting for the first bytes (TLS or plaintext) or the whole
    /// ClientHello: nothing useful received yet.
    Hello = 1,
    /// The rest of an inbound TLS handshake, after a complete ClientHello.
    Handshake = 2,
    /// Waiting for an identity, resolving, connecting upstream, or the
    /// upstream TLS handshake.
    Connect = 3,
    /// Relaying bytes.
    Relay = 4,
}

/// What the connection's task and the registry share.
#[derive(Debug)]
pub(crate) struct ConnState {
    phase: AtomicU8,
    /// Milliseconds (monotonic) of the phase's start or the last byte moved:
    /// the idle clock the relay's idle timeout also reads.
    since_ms: AtomicU64,
    /// Set when the registry evicted the connection or the relay stops: the
    /// task closes its sockets with RST.
    killed: AtomicBool,
    kill: Notify,
}

impl ConnState {
    pub(crate) fn new(now: u64) -> ConnState {
        ConnState {
            phase: AtomicU8::new(Phase::Setup as u8),
            since_ms: AtomicU64::new(now),
            killed: AtomicBool::new(false),
            kill: Notify::new(),
        }
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.since_ms.store(monotonic_ms(), Ordering::Relaxed);
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Bytes moved now (the pumps call this per chunk).
    pub(crate) fn touch(&self, now_ms: u64) {
        self.since_ms.store(now_ms, Ordering::Relaxed);
    }

    pub(crate) fn since_ms(&self) -> u64 {
        self.since_ms.load(Ordering::Relaxed)
    }

    /// Completes when the connection was evicted or the relay is stopping.
    pub(crate) async fn killed(&self) {
        self.kill.notified().await;
    }

    pub(crate) fn was_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        // A permit is stored when the task is not waiting yet: never lost.
        self.kill.notify_one();
    }

    /// Eviction rank: (class, age), lower class first, older first within
    /// one; None: not evictable now.
    fn rank(&self, now: u64) -> Option<(u8, u64)> {
        let since = self.since_ms.load(Ordering::Relaxed);
        let age = now.saturating_sub(since);
        match self.phase.load(Ordering::Relaxed) {
            p if p == Phase::Hello as u8 => Some((0, age)),
            // Accepted but its task has not run for a while: under a flood the accept loop
            // admits faster than the workers start connections, and slots all in Setup
            // would refuse everyone (a legitimate client among them) with nothing to evict.
            p if p == Phase::Setup as u8 && age >= SETUP_EVICTABLE_MS => Some((0, age)),
            p if p != Phase::Setup as u8 && age >= EVICTABLE_IDLE_MS => Some((1, age)),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Entry {
    state: Arc<ConnState>,
    source: SourceKey,
}

#[derive(Debug, Default)]
struct Inner {
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
    by_source: HashMap<SourceKey, usize>,
    open: usize,
    stopping: bool,
}

impl Inner {
    fn remove(&mut self, i: usize) -> Option<Entry> {
        let e = self.slots.get_mut(i)?.take()?;
        self.free.push(i);
        self.open -= 1;
        if let Some(n) = self.by_source.get_mut(&e.source) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&e.source);
            }
        }
        Some(e)
    }

    /// Evicts up to `batch` of the most evictable connections (of `source`
    /// only, when given); how many went.
    fn evict(&mut self, source: Option<SourceKey>, batch: usize, now: u64) -> usize {
        let by_source = &self.by_source;
        let mut cands: Vec<((u8, usize, u64), usize)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let e = e.as_ref()?;
                if source.is_some_and(|s| s != e.source) {
                    return None;
                }
                // Lower class first; within a class the source holding the most
                // slots first, then the larger age.
                let held = by_source.get(&e.source).copied().unwrap_or(0);
                e.state.rank(now).map(|(class, age)| ((class, usize::MAX - held, u64::MAX - age), i))
            })
            .collect();
        let n = batch.min(cands.len());
        if n == 0 {
            return 0;
        }
        if n < cands.len() {
            cands.select_nth_unstable(n - 1);
        }
        for &(_, i) in &cands[..n] {
            if let Some(e) = self.remove(i) {
                e.state.kill();
            }
        }
        n
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The relay is full and nothing could be evicted.
    Full,
    /// Its source is at its cap and none of its connections could be evicted.
    Source,
    /// The relay is stopping.
    Stopping,
}

/// The connections of one relay.
#[derive(Debug)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    limits: Limits,
}

/// A connection's slot; given back when dropped (unless it was evicted,
/// which gave it back already).
#[derive(Debug)]
pub(crate) struct Slot {
    registry: Arc<Registry>,
    index: usize,
    pub(crate) state: Arc<ConnState>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.registry.inner.lock().unwrap_or_else(|e| e.into_inner());
        let ours = g.slots.get(self.index).and_then(Option::as_ref).is_some_and(|e| Arc::ptr_eq(&e.state, &self.state));
        if ours {
            g.remove(self.index);
        }
    }
}

impl Registry {
    pub(crate) fn new(limits: Limits) -> Registry {
        Registry { inner: Mutex::default(), limits }
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Connections holding a slot now.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).open
    }

    /// A slot for a connection from `source`, evicting idle connections when
    /// the source or the relay is full; `Ok((slot, evicted))`.
    pub(crate) fn admit(self: &Arc<Self>, source: SourceKey) -> Result<(Slot, usize), Refused> {
        let now = monotonic_ms();
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.stopping {
            return Err(Refused::Stopping);
        }
        let mut evicted = 0;
        let l = &self.limits;
        if g.by_source.get(&source).copied().unwrap_or(0) >= l.max_connections_per_source {
            let batch = (l.max_connections_per_source / EVICT_BATCH_DIVISOR).max(1);
            evicted += g.evict(Some(source), batch, now);
            if evicted == 0 {
                return Err(Refused::Source);
            }
        }
        if g.open >= l.max_connections {
            let batch = (l.max_connections / EVICT_BATCH_DIVISOR).max(1);
            let n = g.evict(None, batch, now);
            if n == 0 {
                return Err(Refused::Full);
            }
            evicted += n;
        }
        let state = Arc::new(ConnState::new(now));
        let entry = Entry { state: state.clone(), source };
        let index = match g.free.pop() {
            Some(i) => {
                g.slots[i] = Some(entry);
                i
            }
            None => {
                g.slots.push(Some(entry));
                g.slots.len() - 1
            }
        };
        g.open += 1;
        *g.by_source.entry(source).or_insert(0) += 1;
        drop(g);
        Ok((Slot { registry: self.clone(), index, state }, evicted))
    }

    /// Refuses new connections and tells every open one to close (RST).
    pub(crate) fn stop_all(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.stopping = true;
        for e in g.slots.iter().flatten() {
            e.state.kill();
        }
    }
}
