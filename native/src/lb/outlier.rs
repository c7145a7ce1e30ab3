//! Outlier detection with Envoy's semantics (`outlier_detection_impl.cc`,
//! `docs/root/intro/arch_overview/upstream/outlier.rst`).
//!
//! Outcomes are reported by the caller; consecutive-error counters are
//! atomics on the endpoint, and only a counter reaching its threshold, or an
//! interval sweep, takes the cluster's detector lock. An ejection or return
//! changes health, so the cluster's snapshot is rebuilt and swapped by the
//! caller of these functions (the table), in the same call.
//!
//! Envoy's defaults apply (see [`OutlierConfig`]). Notably the default
//! `max_ejection_percent` of 10 means a cluster of fewer than 10 endpoints
//! ejects nothing (`100 * (ejected + 1) / hosts <= 10` never holds) unless
//! `always_eject_one_host` is set — Envoy's behaviour since 2023.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::config::OutlierConfig;
use super::rng::Rng;
use super::state::EndpointState;

/// What happened to one request (or connection attempt) to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP response with this status (5xx counts as an error; 502, 503
    /// and 504 are also gateway errors).
    Http(u16),
    /// A connection could not be established (local origin).
    ConnectFailure,
    /// The request timed out (local origin).
    Timeout,
    /// A connection was established (local origin).
    ConnectSuccess,
}

impl Outcome {
    /// Parses "success", "5xx", "gateway", "connect_failure", "timeout",
    /// "connect_success" or an HTTP status "100".."599".
    pub fn from_name(s: &str) -> Option<Outcome> {
        Some(match s {
            "success" | "ok" => Outcome::Http(200),
            "5xx" | "error" => Outcome::Http(500),
            "gateway" | "gateway_error" => Outcome::Http(503),
            "connect_failure" | "connect_failed" => Outcome::ConnectFailure,
            "timeout" => Outcome::Timeout,
            "connect_success" => Outcome::ConnectSuccess,
            _ => match s.parse::<u16>() {
                Ok(code) if (100..600).contains(&code) => Outcome::Http(code),
                _ => return None,
            },
        })
    }
}

/// Which detector fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Consecutive5xx,
    ConsecutiveGateway,
    ConsecutiveLocal,
    SuccessRate,
    FailurePercentage,
}

/// A cluster's detector: configuration, the sweep clock and the random
/// source of `enforcing_*` percentages and jitter.
#[derive(Debug)]
pub(crate) struct Detector {
    pub(crate) cfg: OutlierConfig,
    next_sweep: u64,
    rng: Rng,
}

fn is_gateway(code: u16) -> bool {
    matches!(code, 502..=504)
}

impl Detector {
    pub(crate) fn new(cfg: OutlierConfig, now: u64, seed: u64) -> Detector {
        Detector { cfg, next_sweep: now.saturating_add(cfg.interval_ms), rng: Rng::new(seed) }
    }

    /// Records `outcome` on `host` (index into `states`); returns whether an
    /// ejection happened (health changed).
    pub(crate) fn report(&mut self, states: &[Arc<EndpointState>], host: usize, outcome: Outcome, now: u64) -> bool {
        let s = &states[host];
        let cfg = self.cfg;
        // Without split_external_local_origin_errors, Envoy maps local-origin
        // results to HTTP codes: connect failure 503, timeout 504, connect
        // success 200 (`resultToHttpCode`).
        let code = match outcome {
            Outcome::Http(c) => Some(c),
            _ if !cfg.split_external_local_origin_errors => Some(match outcome {
                Outcome::ConnectFailure => 503,
                Outcome::Timeout => 504,
                _ => 200,
            }),
            _ => None,
        };
        let mut fired = Vec::new();
        match code {
            Some(c) => {
                s.window_total.fetch_add(1, Ordering::Relaxed);
                if (500..600).contains(&c) {
                    if is_gateway(c) {
                        if s.consecutive_gateway.fetch_add(1, Ordering::AcqRel) + 1 == cfg.consecutive_gateway_failure {
                            fired.push(Kind::ConsecutiveGateway);
                        }
                    } else {
                        s.consecutive_gateway.store(0, Ordering::Relaxed);
                    }
                    if s.consecutive_5xx.fetch_add(1, Ordering::AcqRel) + 1 == cfg.consecutive_5xx {
                        fired.push(Kind::Consecutive5xx);
                    }
                } else {
                    s.window_success.fetch_add(1, Ordering::Relaxed);
                    s.consecutive_5xx.store(0, Ordering::Relaxed);
                    s.consecutive_gateway.store(0, Ordering::Relaxed);
                }
            }
            None => match outcome {
                Outcome::ConnectFailure | Outcome::Timeout => {
                    if s.consecutive_local.fetch_add(1, Ordering::AcqRel) + 1 == cfg.consecutive_local_origin_failure {
                        fired.push(Kind::ConsecutiveLocal);
                    }
                }
                _ => s.consecutive_local.store(0, Ordering::Relaxed),
            },
        }
        let mut changed = false;
        for kind in fired {
            // Envoy resets the counter that fired, so a later burst is seen
            // again even without an interleaved success.
            match kind {
                Kind::Consecutive5xx => s.consecutive_5xx.store(0, Ordering::Relaxed),
                Kind::ConsecutiveGateway => s.consecutive_gateway.store(0, Ordering::Relaxed),
                Kind::ConsecutiveLocal => s.consecutive_local.store(0, Ordering::Relaxed),
                _ => {}
            }
            changed |= self.try_eject(states, host, kind, now);
        }
        changed | self.sweep(states, now)
    }

    fn enforcing(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Consecutive5xx => self.cfg.enforcing_consecutive_5xx,
            Kind::ConsecutiveGateway => self.cfg.enforcing_consecutive_gateway_failure,
            Kind::ConsecutiveLocal => self.cfg.enforcing_consecutive_local_origin_failure,
            Kind::SuccessRate => self.cfg.enforcing_success_rate,
            Kind::FailurePercentage => self.cfg.enforcing_failure_percentage,
        }
    }

    /// Envoy's `ejectHost`: the ejection cap, then the enforcing percentage.
    fn try_eject(&mut self, states: &[Arc<EndpointState>], host: usize, kind: Kind, now: u64) -> bool {
        let s = &states[host];
        if s.is_ejected() {
            return false;
        }
        let ejected = states.iter().filter(|s| s.is_ejected()).count() as u64;
        let allowed = (self.cfg.always_eject_one_host && ejected == 0)
            || 100 * (ejected + 1) <= u64::from(self.cfg.max_ejection_percent.min(100)) * states.len() as u64;
        if !allowed {
            return false;
        }
        let enforce = self.enforcing(kind);
        if enforce == 0 || (enforce < 100 && self.rng.below(100) >= u64::from(enforce)) {
            return false;
        }
        let mut ej = s.ejection.lock().unwrap_or_else(|e| e.into_inner());
        // Backoff grows while base * backoff < max + base (Envoy's cap).
        let (base, max) = (self.cfg.base_ejection_time_ms, self.cfg.max_ejection_time_ms);
        if base.saturating_mul(u64::from(ej.backoff)) < max.saturating_add(base) {
            ej.backoff += 1;
        }
        ej.total += 1;
        ej.ejected_at = Some(now);
        ej.jitter = if self.cfg.max_ejection_time_jitter_ms > 0 {
            self.rng.below(self.cfg.max_ejection_time_jitter_ms + 1)
        } else {
            0
        };
        s.ejected.store(true, Ordering::Release);
        true
    }

    /// Returns an ejected host (Envoy: counters reset so a few new errors do not re-eject it).
    pub(crate) fn uneject(s: &EndpointState, now: u64) {
        let mut ej = s.ejection.lock().unwrap_or_else(|e| e.into_inner());
        ej.ejected_at = None;
        ej.last_uneject = Some(now);
        s.ejected.store(false, Ordering::Release);
        s.reset_consecutive();
    }

    /// The interval sweep, when one is due: returns ejected hosts whose time
    /// ran out, decays backoff, runs success-rate and failure-percentage
    /// detection over the interval's outcomes. Ejection times are therefore
    /// rounded up to the interval, as in Envoy.
    pub(crate) fn sweep(&mut self, states: &[Arc<EndpointState>], now: u64) -> bool {
        if now < self.next_sweep {
            return false;
        }
        let interval = self.cfg.interval_ms.max(1);
        let missed = (now - self.next_sweep) / interval + 1;
        self.next_sweep = self.next_sweep.saturating_add(missed.saturating_mul(interval));
        let (base, max) = (self.cfg.base_ejection_time_ms, self.cfg.max_ejection_time_ms);
        let mut changed = false;
        for s in states {
            let ej = s.ejection();
            match ej.ejected_at {
                Some(at) => {
                    let dur = base.saturating_mul(u64::from(ej.backoff)).min(max.max(base)) + ej.jitter;
                    if now.saturating_sub(at) >= dur {
                        Self::uneject(s, now);
                        changed = true;
                    }
                }
                None if ej.backoff > 0 => {
                    let mut e = s.ejection.lock().unwrap_or_else(|e| e.into_inner());
                    e.backoff = e.backoff.saturating_sub(missed.min(u64::from(u32::MAX)) as u32);
                }
                None => {}
            }
        }
        changed |= self.statistical(states, now);
        for s in states {
            s.window_total.store(0, Ordering::Relaxed);
            s.window_success.store(0, Ordering::Relaxed);
        }
        changed
    }

    /// Success-rate and failure-percentage ejection over the interval.
    fn statistical(&mut self, states: &[Arc<EndpointState>], now: u64) -> bool {
        let window: Vec<(usize, f64, u64)> = states
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_ejected())
            .map(|(i, s)| {
                let t = s.window_total.load(Ordering::Relaxed);
                let ok = s.window_success.load(Ordering::Relaxed);
                (i, if t == 0 { 100.0 } else { 100.0 * ok as f64 / t as f64 }, t)
            })
            .collect();
        let mut changed = false;
        let cfg = self.cfg;
        let sr: Vec<&(usize, f64, u64)> =
            window.iter().filter(|w| w.2 >= u64::from(cfg.success_rate_request_volume)).collect();
        if cfg.enforcing_success_rate > 0 && !sr.is_empty() && sr.len() >= cfg.success_rate_minimum_hosts as usize {
            let mean = sr.iter().map(|w| w.1).sum::<f64>() / sr.len() as f64;
            let var = sr.iter().map(|w| (w.1 - mean).powi(2)).sum::<f64>() / sr.len() as f64;
            let threshold = mean - f64::from(cfg.success_rate_stdev_factor) / 1000.0 * var.sqrt();
            for w in sr {
                if w.1 < threshold {
                    changed |= self.try_eject(states, w.0, Kind::SuccessRate, now);
                }
            }
        }
        let fp: Vec<&(usize, f64, u64)> =
            window.iter().filter(|w| w.2 >= u64::from(cfg.failure_percentage_request_volume)).collect();
        if cfg.enforcing_failure_percentage > 0
            && !fp.is_empty()
            && fp.len() >= cfg.failure_percentage_minimum_hosts as usize
        {
            for w in fp {
                if 100.0 - w.1 >= f64::from(cfg.failure_percentage_threshold) {
                    changed |= self.try_eject(states, w.0, Kind::FailurePercentage, now);
                }
            }
        }
        changed
    }
}

impl Detector {
    /// Keeps the sweep schedule of the detector a new table replaces.
    pub(crate) fn clone_clock_from(&mut self, other: &Detector) {
        self.next_sweep = other.next_sweep;
    }
}
