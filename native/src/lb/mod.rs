//! Endpoint selection (the lbtable) and redirection tables.
//!
//! Inputs are Envoy `Cluster` resources ([`parse`]), and EDS
//! `ClusterLoadAssignment`s for clusters already loaded ([`eds`]); each cluster becomes an
//! immutable [`ClusterSnapshot`] (endpoints, effective health, priority loads
//! and per-source pick structures) published through a [`LiveCluster`] in an
//! [`LbTable`]. Policies follow Envoy: ROUND_ROBIN, LEAST_REQUEST, RANDOM,
//! RING_HASH, MAGLEV; priorities with the overprovisioning factor and panic
//! threshold; locality-weighted balancing; Istio locality failover; outlier
//! detection. Per-endpoint live state carries over across snapshots.
//!
//! Time is always an argument (`now`, milliseconds on any monotonic clock),
//! so tests and the fuzz target drive it deterministically.
//!
//! [`RedirectTable`] classifies a captured connection's original destination.

mod cluster;
mod config;
mod eds;
mod endpoint;
mod failover;
mod maglev;
mod outlier;
mod parse;
pub mod priority;
mod redirect;
mod ring_hash;
mod rng;
mod sched;
mod source;
mod state;
mod table;

pub use cluster::{ClusterAssignment, ClusterSnapshot, ClusterSpec};
pub use config::{
    is_prime, ClusterConfig, LeastRequestConfig, OutlierConfig, Policy, RingHashConfig, MAGLEV_DEFAULT_TABLE_SIZE,
};
pub use eds::{assignments_from_value, parse_assignments, read_assignments};
pub use endpoint::{Endpoint, EndpointMeta, Health, HealthStatus, Locality, LocalityGroup};
pub use failover::LocalityFailover;
pub use outlier::Outcome;
pub use parse::{cluster_from_value, clusters_from_value, parse_clusters, read_clusters, MAX_PRIORITY};
pub use priority::{PriorityCounts, PriorityLoad, Source};
pub use redirect::{Capture, RedirectTable, Service, Verdict};
pub use rng::{hash_key, Rng};
pub use state::{Ejection, EndpointState};
pub use table::{ClusterGuard, LbTable, LiveCluster, UnknownCluster};

#[cfg(test)]
mod tests;
