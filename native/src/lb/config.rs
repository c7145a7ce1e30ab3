//! A cluster's load-balancing settings, with Envoy's defaults.

/// `Cluster.lb_policy` values we implement (Envoy `LbPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    RoundRobin,
    LeastRequest,
    Random,
    RingHash,
    Maglev,
}

impl Policy {
    pub fn from_name(s: &str) -> Option<Policy> {
        Some(match s {
            "ROUND_ROBIN" => Policy::RoundRobin,
            "LEAST_REQUEST" => Policy::LeastRequest,
            "RANDOM" => Policy::Random,
            "RING_HASH" => Policy::RingHash,
            "MAGLEV" => Policy::Maglev,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "ROUND_ROBIN",
            Policy::LeastRequest => "LEAST_REQUEST",
            Policy::Random => "RANDOM",
            Policy::RingHash => "RING_HASH",
            Policy::Maglev => "MAGLEV",
        }
    }

    /// Ring hash and Maglev pick by the request's hash (Envoy's thread-aware LBs).
    pub fn is_hashing(self) -> bool {
        matches!(self, Policy::RingHash | Policy::Maglev)
    }
}

/// `Cluster.RingHashLbConfig`; Envoy's defaults and caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingHashConfig {
    pub minimum_ring_size: u64,
    pub maximum_ring_size: u64,
}

/// Envoy caps both ring sizes at 8M entries.
pub const RING_SIZE_CAP: u64 = 8 * 1024 * 1024;

impl Default for RingHashConfig {
    fn default() -> Self {
        RingHashConfig { minimum_ring_size: 1024, maximum_ring_size: RING_SIZE_CAP }
    }
}

/// Maglev's default table size (a prime), and Envoy's upper limit.
pub const MAGLEV_DEFAULT_TABLE_SIZE: u64 = 65537;
pub const MAGLEV_MAX_TABLE_SIZE: u64 = 5_000_011;

/// `Cluster.LeastRequestLbConfig`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeastRequestConfig {
    /// Hosts sampled per pick (>= 2; Envoy's default 2, "power of two choices").
    pub choice_count: u32,
    /// Exponent of the active-request term in the weighted case (default 1.0).
    pub active_request_bias: f64,
}

impl Default for LeastRequestConfig {
    fn default() -> Self {
        LeastRequestConfig { choice_count: 2, active_request_bias: 1.0 }
    }
}

/// `Cluster.outlier_detection`, Envoy's defaults (`outlier_detection.proto`).
/// Durations are milliseconds; percentages 0..=100.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_5xx: u32,
    pub enforcing_consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    /// 0 by default: gateway-failure ejection is off unless enabled.
    pub enforcing_consecutive_gateway_failure: u32,
    pub split_external_local_origin_errors: bool,
    pub consecutive_local_origin_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    pub interval_ms: u64,
    pub base_ejection_time_ms: u64,
    pub max_ejection_time_ms: u64,
    pub max_ejection_time_jitter_ms: u64,
    /// 10 by default: with fewer than 10 hosts nothing can be ejected unless
    /// `always_eject_one_host` (Envoy since 2023, PRs #27624/#27909).
    pub max_ejection_percent: u32,
    pub always_eject_one_host: bool,
    pub success_rate_minimum_hosts: u32,
    pub success_rate_request_volume: u32,
    /// Read as /1000: 1900 means 1.9 standard deviations.
    pub success_rate_stdev_factor: u32,
    pub enforcing_success_rate: u32,
    pub failure_percentage_threshold: u32,
    /// 0 by default: failure-percentage ejection is off unless enabled.
    pub enforcing_failure_percentage: u32,
    pub failure_percentage_minimum_hosts: u32,
    pub failure_percentage_request_volume: u32,
    pub successful_active_health_check_uneject_host: bool,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_5xx: 5,
            enforcing_consecutive_5xx: 100,
            consecutive_gateway_failure: 5,
            enforcing_consecutive_gateway_failure: 0,
            split_external_local_origin_errors: false,
            consecutive_local_origin_failure: 5,
            enforcing_consecutive_local_origin_failure: 100,
            interval_ms: 10_000,
            base_ejection_time_ms: 30_000,
            max_ejection_time_ms: 300_000,
            max_ejection_time_jitter_ms: 0,
            max_ejection_percent: 10,
            always_eject_one_host: false,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            enforcing_success_rate: 100,
            failure_percentage_threshold: 85,
            enforcing_failure_percentage: 0,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
            successful_active_health_check_uneject_host: true,
        }
    }
}

/// Everything about a cluster except its endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub policy: Policy,
    /// `ClusterLoadAssignment.policy.overprovisioning_factor`, a percentage (140 = 1.4).
    pub overprovisioning_factor: u32,
    /// `CommonLbConfig.healthy_panic_threshold`, rounded to a whole percent
    /// (Envoy's `PROTOBUF_PERCENT_TO_ROUNDED_INTEGER_OR_DEFAULT(.., 100, 50)`); 0 disables panic.
    pub panic_threshold: u32,
    /// `CommonLbConfig.locality_weighted_lb_config` is set.
    pub locality_weighted: bool,
    /// `CommonLbConfig.consistent_hashing_lb_config.use_hostname_for_hashing`.
    pub use_hostname_for_hashing: bool,
    pub ring_hash: RingHashConfig,
    pub maglev_table_size: u64,
    pub least_request: LeastRequestConfig,
    pub outlier: Option<OutlierConfig>,
    /// The HTTP protocol to the endpoints: Some(true) HTTP/2, Some(false)
    /// HTTP/1.1 (Envoy's default), None the downstream's
    /// (`xds::cluster::upstream_protocol`).
    pub upstream_h2: Option<bool>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            policy: Policy::RoundRobin,
            overprovisioning_factor: 140,
            panic_threshold: 50,
            locality_weighted: false,
            use_hostname_for_hashing: false,
            ring_hash: RingHashConfig::default(),
            maglev_table_size: MAGLEV_DEFAULT_TABLE_SIZE,
            least_request: LeastRequestConfig::default(),
            outlier: None,
            upstream_h2: Some(false),
        }
    }
}

/// A deterministic primality test for table sizes (<= 5,000,011: trial division suffices).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}
