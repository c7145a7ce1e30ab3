//! Endpoint selection (the lbtable) and redirection tables.
//!
//! Inputs are Envoy `Cluster` resources and EDS `ClusterLoadAssignment`s
//! for clusters already loaded ([`xds`]); each cluster becomes an
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
mod endpoint;
mod failover;
mod maglev;
mod outlier;
pub mod priority;
mod redirect;
mod ring_hash;
mod rng;
mod sched;
mod source;
mod state;
mod table;
pub mod xds;

pub use cluster::{ClusterAssignment, ClusterSnapshot, ClusterSpec};
pub use config::{
    is_prime, ClusterConfig, LeastRequestConfig, OutlierConfig, Policy, RingHashConfig, MAGLEV_DEFAULT_TABLE_SIZE,
};
pub use endpoint::{Endpoint, EndpointMeta, Health, HealthStatus, Locality, LocalityGroup};
pub use failover::LocalityFailover;
pub use outlier::Outcome;
pub use priority::{PriorityCounts, PriorityLoad, Source};
pub use redirect::{Capture, RedirectTable, Service, Verdict};
pub use rng::{hash_key, Rng};
pub use state::{Ejection, EndpointState};
pub use table::{ClusterGuard, LbTable, LiveCluster, UnknownCluster};
pub use xds::{
    assignments_from_value, cluster_from_value, clusters_from_value, parse_assignments, parse_clusters,
    read_assignments, read_clusters, MAX_PRIORITY,
};

#[cfg(test)]
mod tests;
