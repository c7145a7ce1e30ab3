//! Istio's locality failover: endpoints are re-ranked into priorities by how
//! close their locality is to the proxy's own (pilot's
//! `loadbalancer.applyLocalityFailover`): same region, zone and sub-zone 0;
//! same region and zone 1; same region 2; anything else 3, or 4 when a
//! failover rule for the proxy's region names another target region. The
//! input priority is kept as the major key (`priority * 5 + rank`), then
//! priorities are renumbered 0..N without gaps.
//!
//! Istio applies this only to clusters with outlier detection (without it a
//! failed locality would never shed its load); pymesh does the same.

use std::collections::BTreeMap;

use super::cluster::ClusterSpec;
use super::endpoint::Locality;

/// The proxy's locality and Istio's `failover` rules (from region -> to region).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalityFailover {
    pub local: Locality,
    pub failover: Vec<(String, String)>,
}

fn rank(local: &Locality, l: &Locality, rules: &[(String, String)]) -> u32 {
    let r = if local.region == l.region {
        if local.zone == l.zone {
            if local.sub_zone == l.sub_zone {
                0
            } else {
                1
            }
        } else {
            2
        }
    } else {
        3
    };
    if r == 3 {
        if let Some((_, to)) = rules.iter().find(|(from, _)| *from == local.region) {
            if l.region != *to {
                return 4;
            }
        }
    }
    r
}

/// Re-ranks `spec`'s priorities; a no-op without outlier detection.
pub fn apply(spec: &mut ClusterSpec, f: &LocalityFailover) {
    if spec.config.outlier.is_none() {
        return;
    }
    let keyed: Vec<u32> = spec
        .groups
        .iter()
        .map(|g| g.priority.saturating_mul(5).saturating_add(rank(&f.local, &g.locality, &f.failover)))
        .collect();
    let mut order: BTreeMap<u32, u32> = keyed.iter().map(|&k| (k, 0)).collect();
    for (i, v) in order.values_mut().enumerate() {
        *v = i as u32;
    }
    for e in &mut spec.endpoints {
        e.priority = order[&keyed[e.group as usize]];
    }
}
