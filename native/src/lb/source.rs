//! A host source: the hosts one pick chooses among (a priority's healthy,
//! degraded or, in panic, all hosts) with the policy's precomputed structure.

use std::sync::atomic::{AtomicU64, Ordering};

use super::config::Policy;
use super::maglev::Maglev;
use super::ring_hash::Ring;
use super::rng::Rng;
use super::sched::weighted_slots;
use super::state::EndpointState;

/// How a source picks among its hosts.
#[derive(Debug)]
pub(crate) enum Picker {
    /// All weights equal: `hosts[counter++ % n]` (RR), uniform draws (RANDOM, LR).
    Equal,
    /// Weighted: a slot sequence in EDF order (RR), weighted draws (LR).
    Weighted {
        slots: Box<[u32]>,
        weights: Box<[u32]>,
    },
    Ring(Ring),
    Maglev(Maglev),
}

/// Least-request's comparison: with equal weights, fewer active requests
/// wins (Envoy's P2C); with weights, lower `active^bias / weight` wins.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeastRequest {
    pub(crate) choices: u32,
    pub(crate) bias: f64,
}

#[derive(Debug)]
pub(crate) struct HostSource {
    /// Endpoint indices of the cluster.
    pub(crate) hosts: Box<[u32]>,
    pub(crate) picker: Picker,
    /// Round-robin position; starts at a random point.
    counter: AtomicU64,
    /// Locality-weighted balancing: which group (below) each turn goes to.
    localities: Option<Localities>,
}

#[derive(Debug)]
struct Localities {
    slots: Box<[u32]>,
    counter: AtomicU64,
    groups: Box<[HostSource]>,
}

/// What the build of a source needs to know about each host.
pub(crate) struct HostInfo<'a> {
    pub(crate) index: u32,
    pub(crate) weight: u32,
    pub(crate) key: &'a str,
}

impl HostSource {
    /// A source over `hosts` for `policy`. `hash_weights` (same length) are
    /// the weights hashing policies use (host weights, or host x locality
    /// weights under locality-weighted balancing).
    pub(crate) fn build(
        policy: Policy,
        hosts: &[HostInfo<'_>],
        hash_weights: Option<&[f64]>,
        ring: (u64, u64),
        maglev_size: u64,
        seed: u64,
    ) -> HostSource {
        let idx: Box<[u32]> = hosts.iter().map(|h| h.index).collect();
        let equal = hosts.windows(2).all(|w| w[0].weight == w[1].weight);
        let picker = match policy {
            Policy::RingHash | Policy::Maglev if !hosts.is_empty() => {
                let keys: Vec<&str> = hosts.iter().map(|h| h.key).collect();
                let w: Vec<f64> = match hash_weights {
                    Some(w) => w.to_vec(),
                    None => hosts.iter().map(|h| f64::from(h.weight)).collect(),
                };
                if policy == Policy::RingHash {
                    Picker::Ring(Ring::build(&keys, &w, ring.0, ring.1))
                } else {
                    Picker::Maglev(Maglev::build(&keys, &w, maglev_size))
                }
            }
            // RANDOM ignores weights (Envoy's random_lb.cc: hosts[r % n]).
            Policy::Random => Picker::Equal,
            // LEAST_REQUEST with bias 0 is plain weighted round robin in Envoy;
            // equal weights take the unweighted fast path either way.
            _ if equal || hosts.len() < 2 => Picker::Equal,
            Policy::RoundRobin | Policy::LeastRequest => {
                let w: Vec<u64> = hosts.iter().map(|h| u64::from(h.weight)).collect();
                Picker::Weighted { slots: weighted_slots(&w), weights: hosts.iter().map(|h| h.weight).collect() }
            }
            Policy::RingHash | Policy::Maglev => Picker::Equal,
        };
        HostSource { hosts: idx, picker, counter: AtomicU64::new(seed), localities: None }
    }

    /// Adds locality-weighted balancing: `groups` are per-locality sources and
    /// `weights` their effective weights (integers, any scale).
    pub(crate) fn with_localities(mut self, groups: Vec<HostSource>, weights: &[u64], seed: u64) -> HostSource {
        if weights.iter().any(|&w| w > 0) && groups.len() > 1 {
            self.localities = Some(Localities {
                slots: weighted_slots(weights),
                counter: AtomicU64::new(seed),
                groups: groups.into(),
            });
        }
        self
    }

    /// Picks an endpoint index. `h` is the request hash (hashing policies) or
    /// a random value; `states` gives active-request counts.
    #[inline]
    pub(crate) fn pick(
        &self,
        policy: Policy,
        h: u64,
        rng: &mut Rng,
        states: &[std::sync::Arc<EndpointState>],
        lr: LeastRequest,
    ) -> Option<u32> {
        if let Some(l) = &self.localities {
            let turn = l.counter.fetch_add(1, Ordering::Relaxed);
            let g = &l.groups[l.slots[(turn % l.slots.len() as u64) as usize] as usize];
            return g.pick_here(policy, h, rng, states, lr);
        }
        self.pick_here(policy, h, rng, states, lr)
    }

    #[inline]
    fn pick_here(
        &self,
        policy: Policy,
        h: u64,
        rng: &mut Rng,
        states: &[std::sync::Arc<EndpointState>],
        lr: LeastRequest,
    ) -> Option<u32> {
        let n = self.hosts.len();
        if n == 0 {
            return None;
        }
        let pos = match (&self.picker, policy) {
            (Picker::Ring(r), _) => r.lookup(h) as usize,
            (Picker::Maglev(m), _) => m.lookup(h) as usize,
            (Picker::Equal, Policy::Random) => rng.below(n as u64) as usize,
            (Picker::Equal, Policy::LeastRequest) if n > 1 => {
                // Envoy's N_CHOICES: draws with replacement; strictly fewer
                // active requests wins, so the first draw wins ties.
                let mut best = rng.below(n as u64) as usize;
                let mut best_a = states[self.hosts[best] as usize].active_requests();
                for _ in 1..lr.choices {
                    let c = rng.below(n as u64) as usize;
                    let a = states[self.hosts[c] as usize].active_requests();
                    if a < best_a {
                        (best, best_a) = (c, a);
                    }
                }
                best
            }
            (Picker::Weighted { slots, weights }, Policy::LeastRequest) if lr.bias != 0.0 => {
                // Weighted least request without a shared EDF heap: draw
                // candidates in proportion to weight, keep the one with the
                // lowest active^bias / weight. With no load every score ties
                // and the first draw wins, so the split follows the weights;
                // under load, a host with twice the weight carries twice the
                // requests before it loses. (Envoy: EDF over weight /
                // (active + 1)^bias; same aim, lock-free here.)
                let score = |p: usize| {
                    let a = f64::from(states[self.hosts[p] as usize].active_requests());
                    let a = if lr.bias == 1.0 { a } else { a.powf(lr.bias) };
                    a / f64::from(weights[p])
                };
                let mut best = slots[rng.below(slots.len() as u64) as usize] as usize;
                let mut best_s = score(best);
                for _ in 1..lr.choices {
                    let c = slots[rng.below(slots.len() as u64) as usize] as usize;
                    let s = score(c);
                    if s < best_s {
                        (best, best_s) = (c, s);
                    }
                }
                best
            }
            (Picker::Weighted { slots, .. }, _) => {
                let turn = self.counter.fetch_add(1, Ordering::Relaxed);
                slots[(turn % slots.len() as u64) as usize] as usize
            }
            (Picker::Equal, _) => {
                let turn = self.counter.fetch_add(1, Ordering::Relaxed);
                (turn % n as u64) as usize
            }
        };
        Some(self.hosts[pos])
    }

    /// Table entries per host for hashing policies (inspection), by endpoint index.
    pub(crate) fn table_counts(&self) -> Option<Vec<(u32, u64)>> {
        let c = match &self.picker {
            Picker::Ring(r) => r.counts(self.hosts.len()),
            Picker::Maglev(m) => m.counts(self.hosts.len()),
            _ => return None,
        };
        Some(self.hosts.iter().copied().zip(c).collect())
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        let own = self.hosts.len() * 4
            + match &self.picker {
                Picker::Equal => 0,
                Picker::Weighted { slots, weights } => slots.len() * 4 + weights.len() * 4,
                Picker::Ring(r) => r.heap_bytes(),
                Picker::Maglev(m) => m.heap_bytes(),
            };
        own + self
            .localities
            .as_ref()
            .map_or(0, |l| l.slots.len() * 4 + l.groups.iter().map(|g| g.heap_bytes()).sum::<usize>())
    }
}
