//! A cluster snapshot: one immutable view of a cluster's endpoints, their
//! effective health, the priority loads and every host source's pick
//! structure, built off the hot path. Picks only read it (plus atomic
//! round-robin counters and the endpoints' active-request counts).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::config::{ClusterConfig, Policy};
use super::endpoint::{Endpoint, Health, LocalityGroup};
use super::priority::{self, PriorityCounts, PriorityLoad, Source};
use super::rng::{mix64, Rng};
use super::source::{HostInfo, HostSource, LeastRequest};
use super::state::EndpointState;

/// A validated cluster: what the parser produces and a snapshot is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    pub name: String,
    pub config: ClusterConfig,
    /// `LocalityLbEndpoints` groups; endpoints point into it.
    pub groups: Vec<LocalityGroup>,
    pub endpoints: Vec<Endpoint>,
}

/// A validated EDS `ClusterLoadAssignment`: new endpoints for a cluster the
/// table already has (Envoy's EDS: the `Cluster` comes from CDS, its
/// endpoints separately).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterAssignment {
    /// `cluster_name`: the cluster these endpoints are for.
    pub cluster: String,
    /// `policy.overprovisioning_factor` if given.
    pub overprovisioning_factor: Option<u32>,
    pub groups: Vec<LocalityGroup>,
    pub endpoints: Vec<Endpoint>,
}

impl ClusterSpec {
    /// This cluster with `a`'s endpoints: the cluster's own settings, the
    /// assignment's groups, endpoints and overprovisioning factor. Like
    /// Envoy, an assignment without `policy.overprovisioning_factor` means
    /// the default 140 (the factor belongs to each assignment, it is not
    /// kept from the previous one).
    pub fn with_assignment(&self, a: ClusterAssignment) -> ClusterSpec {
        let mut config = self.config.clone();
        config.overprovisioning_factor =
            a.overprovisioning_factor.unwrap_or(ClusterConfig::default().overprovisioning_factor);
        let mut spec = ClusterSpec { name: self.name.clone(), config, groups: a.groups, endpoints: a.endpoints };
        super::xds::finish_hash_keys(&mut spec);
        spec
    }
}

/// An immutable, pickable view of one cluster.
#[derive(Debug)]
pub struct ClusterSnapshot {
    spec: Arc<ClusterSpec>,
    states: Arc<[Arc<EndpointState>]>,
    health: Box<[Health]>,
    counts: Vec<PriorityCounts>,
    load: PriorityLoad,
    choice: Box<[(u16, Source); 100]>,
    /// `priority * 3 + source` (Healthy 0, Degraded 1, All 2); built only for
    /// sources that can receive load.
    sources: Box<[Option<HostSource>]>,
    lr: LeastRequest,
}

fn slot(src: Source) -> usize {
    match src {
        Source::Healthy => 0,
        Source::Degraded => 1,
        Source::All => 2,
    }
}

/// The health a snapshot uses for an endpoint: EDS status, the caller's
/// active health check and outlier ejection (Envoy's coarse health: any
/// failure flag makes the host unhealthy).
pub(crate) fn effective_health(e: &Endpoint, s: &EndpointState) -> Health {
    if s.is_ejected() || s.health_check_failed() {
        Health::Unhealthy
    } else {
        e.health_status.coarse()
    }
}

impl ClusterSnapshot {
    /// Builds a snapshot. `states` has one entry per endpoint of `spec`;
    /// `seed` randomises round-robin starting points.
    pub fn build(spec: Arc<ClusterSpec>, states: Arc<[Arc<EndpointState>]>, seed: u64) -> ClusterSnapshot {
        assert_eq!(spec.endpoints.len(), states.len(), "one state per endpoint");
        let cfg = &spec.config;
        let health: Box<[Health]> =
            spec.endpoints.iter().zip(states.iter()).map(|(e, s)| effective_health(e, s)).collect();
        let n_prio = spec.endpoints.iter().map(|e| e.priority as usize + 1).max().unwrap_or(1);
        let mut counts = vec![PriorityCounts::default(); n_prio];
        for (e, h) in spec.endpoints.iter().zip(health.iter()) {
            let c = &mut counts[e.priority as usize];
            c.total += 1;
            match h {
                Health::Healthy => c.healthy += 1,
                Health::Degraded => c.degraded += 1,
                Health::Unhealthy => {}
            }
        }
        let load = priority::compute(&counts, cfg.overprovisioning_factor, cfg.panic_threshold);
        let choice = priority::choice_table(&load);
        let mut sources: Vec<Option<HostSource>> = (0..n_prio * 3).map(|_| None).collect();
        // Which (priority, source) pairs can receive load.
        let mut needed = vec![false; n_prio * 3];
        for &(p, src) in choice.iter() {
            needed[p as usize * 3 + slot(src)] = true;
        }
        for (i, need) in needed.iter().enumerate() {
            if !need {
                continue;
            }
            let (p, src) = (i / 3, [Source::Healthy, Source::Degraded, Source::All][i % 3]);
            let members: Vec<u32> = (0..spec.endpoints.len() as u32)
                .filter(|&j| {
                    let e = &spec.endpoints[j as usize];
                    e.priority as usize == p
                        && match src {
                            Source::Healthy => health[j as usize] == Health::Healthy,
                            Source::Degraded => health[j as usize] == Health::Degraded,
                            Source::All => true,
                        }
                })
                .collect();
            let src_seed = mix64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9));
            sources[i] = Some(build_source(&spec, &members, src, src_seed));
        }
        let lr = LeastRequest {
            choices: cfg.least_request.choice_count.max(2),
            bias: cfg.least_request.active_request_bias,
        };
        ClusterSnapshot { spec, states, health, counts, load, choice, sources: sources.into(), lr }
    }

    /// Picks an endpoint (its index in [`ClusterSnapshot::endpoints`]), or
    /// `None` when no endpoint may take the request ("no healthy upstream").
    ///
    /// `hash` is the request's hash for RING_HASH / MAGLEV (see
    /// [`super::rng::hash_key`]); without one those policies pick at random,
    /// like Envoy. Other policies ignore it.
    #[inline]
    pub fn pick(&self, hash: Option<u64>, rng: &mut Rng) -> Option<usize> {
        let policy = self.spec.config.policy;
        let h = match hash {
            Some(h) if policy.is_hashing() => h,
            _ => rng.next_u64(),
        };
        // Envoy's choosePriority(h % 100 + 1): for hashing policies the same
        // hash picks the priority, so stable hosts give stable answers.
        let (p, src) = self.choice[(h % 100) as usize];
        let source = self.sources[p as usize * 3 + slot(src)].as_ref()?;
        // The host draw uses fresh randomness for non-hashing policies: Envoy's
        // RANDOM reuses the priority draw (`hosts[r % n]`), which correlates
        // the two when n and 100 share factors.
        source.pick(policy, h, rng, &self.states, self.lr).map(|i| i as usize)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn spec(&self) -> &Arc<ClusterSpec> {
        &self.spec
    }

    pub fn policy(&self) -> Policy {
        self.spec.config.policy
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.spec.endpoints
    }

    pub fn states(&self) -> &Arc<[Arc<EndpointState>]> {
        &self.states
    }

    /// Effective health of endpoint `i` when this snapshot was built.
    pub fn health(&self, i: usize) -> Health {
        self.health[i]
    }

    pub fn priority_counts(&self) -> &[PriorityCounts] {
        &self.counts
    }

    pub fn priority_load(&self) -> &PriorityLoad {
        &self.load
    }

    /// Ring / Maglev entries per endpoint index of one (priority, source), if hashing.
    pub fn table_counts(&self, priority: usize, source: Source) -> Option<Vec<(u32, u64)>> {
        self.sources.get(priority * 3 + slot(source))?.as_ref()?.table_counts()
    }

    /// Heap bytes of the pick structures (not the endpoint list itself).
    pub fn heap_bytes(&self) -> usize {
        self.sources.iter().flatten().map(HostSource::heap_bytes).sum::<usize>() + self.health.len()
    }
}

/// Builds the source for `members` (endpoint indices) of one priority.
fn build_source(spec: &ClusterSpec, members: &[u32], src: Source, seed: u64) -> HostSource {
    let cfg = &spec.config;
    let info = |j: u32| {
        let e = &spec.endpoints[j as usize];
        HostInfo { index: j, weight: e.weight, key: e.hash_key.as_str() }
    };
    let hosts: Vec<HostInfo<'_>> = members.iter().map(|&j| info(j)).collect();
    let build = |hosts: &[HostInfo<'_>], hw: Option<&[f64]>, seed: u64| {
        HostSource::build(
            cfg.policy,
            hosts,
            hw,
            (cfg.ring_hash.minimum_ring_size, cfg.ring_hash.maximum_ring_size),
            cfg.maglev_table_size,
            seed,
        )
    };
    // Envoy does no locality weighting in panic (all hosts, straight away).
    if !cfg.locality_weighted || src == Source::All {
        return build(&hosts, None, seed);
    }
    // Hosts per locality group, in group order.
    let mut by_group: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for &j in members {
        by_group.entry(spec.endpoints[j as usize].group).or_default().push(j);
    }
    if cfg.policy.is_hashing() {
        // Ring hash and Maglev fold locality weights into host weights
        // (Envoy's normalizeLocalityWeights): locality share x host share.
        let loc_sum: f64 = by_group.keys().map(|&g| f64::from(spec.groups[g as usize].weight)).sum();
        if loc_sum == 0.0 {
            return build(&hosts, None, seed);
        }
        let mut hs = Vec::new();
        let mut hw = Vec::new();
        for (&g, js) in &by_group {
            let lw = f64::from(spec.groups[g as usize].weight) / loc_sum;
            if lw == 0.0 {
                continue;
            }
            let host_sum: f64 = js.iter().map(|&j| f64::from(spec.endpoints[j as usize].weight)).sum();
            for &j in js {
                hs.push(info(j));
                hw.push(lw * f64::from(spec.endpoints[j as usize].weight) / host_sum);
            }
        }
        return build(&hs, Some(&hw), seed);
    }
    // Other policies pick a locality first (Envoy's locality WRR), with the
    // effective weight w_l * min(1, OPF/100 * eligible_l / total_l): a
    // partly unavailable locality sheds load like a priority does.
    // A group is one (locality, priority) pair, so its total is all its endpoints.
    let mut totals: BTreeMap<u32, u32> = BTreeMap::new();
    for e in &spec.endpoints {
        *totals.entry(e.group).or_default() += 1;
    }
    let opf = f64::from(cfg.overprovisioning_factor) / 100.0;
    let mut groups = Vec::new();
    let mut weights = Vec::new();
    for (k, (&g, js)) in by_group.iter().enumerate() {
        let total = f64::from(totals.get(&g).copied().unwrap_or(1).max(1));
        let eff = f64::from(spec.groups[g as usize].weight) * (opf * js.len() as f64 / total).min(1.0);
        let hs: Vec<HostInfo<'_>> = js.iter().map(|&j| info(j)).collect();
        groups.push(build(&hs, None, mix64(seed.wrapping_add(k as u64 + 1))));
        // Integer weights for the slot table: parts per million.
        weights.push((eff * 1e6).round() as u64);
    }
    build(&hosts, None, seed).with_localities(groups, &weights, mix64(!seed))
}
