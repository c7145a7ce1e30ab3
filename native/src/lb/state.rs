//! Per-endpoint live state: what requests and outcomes change between
//! snapshots. It is shared (an `Arc` per endpoint) by every snapshot that
//! holds the endpoint, and carried over to the next table for endpoints that
//! stay (same `address:port`), as Envoy keeps a host's stats and outlier
//! state across EDS updates that keep the host.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

/// One endpoint's live state.
#[derive(Debug, Default)]
pub struct EndpointState {
    /// Requests in flight (Envoy's `rq_active`), read by LEAST_REQUEST.
    pub(crate) active: AtomicU32,
    /// Ejected by outlier detection right now (mirrors `ejection.ejected_at`).
    pub(crate) ejected: AtomicBool,
    /// The caller's active health check says the endpoint fails (Envoy's FAILED_ACTIVE_HC).
    pub(crate) hc_failed: AtomicBool,
    pub(crate) consecutive_5xx: AtomicU32,
    pub(crate) consecutive_gateway: AtomicU32,
    pub(crate) consecutive_local: AtomicU32,
    /// Outcomes in the current outlier-detection interval (success rate).
    pub(crate) window_total: AtomicU64,
    pub(crate) window_success: AtomicU64,
    pub(crate) ejection: Mutex<Ejection>,
}

/// Ejection bookkeeping, changed only by the outlier detector under its lock.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ejection {
    /// When the current ejection started (ms), if ejected.
    pub ejected_at: Option<u64>,
    /// Envoy's `eject_time_backoff`: multiplies the base ejection time.
    pub backoff: u32,
    /// Ejections over the endpoint's life.
    pub total: u64,
    /// Random extra ejection time of the current ejection (`max_ejection_time_jitter`).
    pub jitter: u64,
    /// When the endpoint last returned from an ejection.
    pub last_uneject: Option<u64>,
}

impl EndpointState {
    #[inline]
    pub fn active_requests(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    pub fn health_check_failed(&self) -> bool {
        self.hc_failed.load(Ordering::Acquire)
    }

    pub fn ejection(&self) -> Ejection {
        *self.ejection.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request to this endpoint started.
    pub fn request_started(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    /// A request finished; never goes below zero (a stray extra call is ignored).
    pub fn request_finished(&self) {
        let _ = self.active.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }

    pub(crate) fn reset_consecutive(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.consecutive_local.store(0, Ordering::Relaxed);
    }
}
