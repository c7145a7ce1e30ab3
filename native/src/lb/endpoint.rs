//! What a cluster holds: endpoints with their address, weight, EDS health,
//! priority, locality and the metadata a proxy needs.

use std::fmt;
use std::net::SocketAddr;

/// An endpoint's EDS `HealthStatus` (`envoy/config/core/v3/health_check.proto`),
/// kept as given so it can be inspected; [`HealthStatus::coarse`] is what
/// load balancing uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HealthStatus {
    /// UNKNOWN (0): treated as healthy, like Envoy without active health checks.
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
    /// DRAINING: treated as unhealthy (Envoy's EDS_STATUS_DRAINING flag).
    Draining,
    /// TIMEOUT (HDS only): treated as unhealthy.
    Timeout,
    Degraded,
}

impl HealthStatus {
    /// From the proto3 JSON enum name or number.
    pub fn from_name(s: &str) -> Option<HealthStatus> {
        Some(match s {
            "UNKNOWN" => HealthStatus::Unknown,
            "HEALTHY" => HealthStatus::Healthy,
            "UNHEALTHY" => HealthStatus::Unhealthy,
            "DRAINING" => HealthStatus::Draining,
            "TIMEOUT" => HealthStatus::Timeout,
            "DEGRADED" => HealthStatus::Degraded,
            _ => return None,
        })
    }

    pub fn from_number(n: i64) -> Option<HealthStatus> {
        Some(match n {
            0 => HealthStatus::Unknown,
            1 => HealthStatus::Healthy,
            2 => HealthStatus::Unhealthy,
            3 => HealthStatus::Draining,
            4 => HealthStatus::Timeout,
            5 => HealthStatus::Degraded,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Unknown => "UNKNOWN",
            HealthStatus::Healthy => "HEALTHY",
            HealthStatus::Unhealthy => "UNHEALTHY",
            HealthStatus::Draining => "DRAINING",
            HealthStatus::Timeout => "TIMEOUT",
            HealthStatus::Degraded => "DEGRADED",
        }
    }

    /// Envoy's coarse health of a host from EDS alone (`HostImpl::coarseHealth`).
    pub fn coarse(self) -> Health {
        match self {
            HealthStatus::Unknown | HealthStatus::Healthy => Health::Healthy,
            HealthStatus::Degraded => Health::Degraded,
            HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout => Health::Unhealthy,
        }
    }
}

/// The health load balancing sees (Envoy's `Host::Health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// Envoy's `core.v3.Locality` (region / zone / sub_zone).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.region, self.zone, self.sub_zone)
    }
}

/// One `LocalityLbEndpoints` group: a locality at a priority, with its weight.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalityGroup {
    pub locality: Locality,
    /// `load_balancing_weight`; 0 when unset (such a locality gets no traffic
    /// under locality-weighted balancing, as in Envoy).
    pub weight: u32,
    /// The priority as given in the input (before Istio failover re-ranking).
    pub priority: u32,
}

/// The Istio metadata a proxy needs to talk to an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointMeta {
    /// `filter_metadata["envoy.transport_socket_match"].tlsMode`: "istio" means
    /// the endpoint has a sidecar and takes Istio mTLS; "" or "disabled" plain text.
    pub tls_mode: String,
    /// `filter_metadata.istio.network`: the endpoint's network (split horizon).
    pub network: String,
    /// `filter_metadata.istio.service_account`: the identity to verify (SPIFFE SAN).
    pub service_account: String,
    /// `filter_metadata.istio.workload`: "name;namespace;canonical service;revision;cluster".
    pub workload: String,
    /// String fields of `filter_metadata["envoy.lb"]` (Envoy's subset labels), sorted.
    pub labels: Vec<(String, String)>,
}

/// One endpoint of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// `load_balancing_weight`, 1 when unset (Envoy requires >= 1).
    pub weight: u32,
    pub health_status: HealthStatus,
    /// Index into the cluster's locality groups.
    pub group: u32,
    /// The effective priority (after Istio locality failover, when applied).
    pub priority: u32,
    /// `endpoint.hostname`, used as the hash key with `use_hostname_for_hashing`.
    pub hostname: String,
    /// What ring hash and Maglev hash for this endpoint: `envoy.lb` metadata
    /// `hash_key`, else the hostname when configured, else `ip:port` (Envoy's
    /// `hashKey()`; IPv6 as `[addr]:port`, like Envoy's `asString()`).
    pub hash_key: String,
    pub meta: EndpointMeta,
}
