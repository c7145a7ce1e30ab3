//! Envoy `Cluster` resources to validated [`ClusterSpec`]s: the policy and
//! its settings, outlier detection ([`super::outlier`]), the inline
//! `load_assignment` ([`super::assignment`]), and the documents clusters
//! come in.
//!
//! Fields are sorted into three kinds: those the load balancer implements
//! (parsed and validated), those that do not change endpoint selection
//! (connection, protocol, TLS, stats settings: accepted and ignored), and
//! those that would change selection in ways pymesh does not implement
//! (subsets, slow start, zone-aware routing, ...): rejected, naming the
//! cluster and field, rather than silently balancing differently from Envoy.
//! Unknown fields are rejected like a strict proto3 JSON parser does.

use std::collections::HashSet;

use serde_json::Value;

use super::assignment::load_assignment;
use super::json::{boolean, enum_field, number, percent, string, uint, Ctx, EnumVal, Msg};
use super::outlier::outlier_detection;
use crate::error::{Error, Result};
use crate::lb::cluster::ClusterSpec;
use crate::lb::config::{
    is_prime, ClusterConfig, LeastRequestConfig, Policy, RingHashConfig, MAGLEV_MAX_TABLE_SIZE, RING_SIZE_CAP,
};

/// The type URL of a CDS resource.
pub const CLUSTER_TYPE: &str = "envoy.config.cluster.v3.Cluster";

/// Cluster fields that do not affect endpoint selection.
const IGNORED_CLUSTER_FIELDS: &[&str] = &[
    "@type",
    "alt_stat_name",
    "eds_cluster_config",
    "connect_timeout",
    "per_connection_buffer_limit_bytes",
    "circuit_breakers",
    "transport_socket",
    "transport_socket_matches",
    "metadata",
    "upstream_connection_options",
    "typed_extension_protocol_options",
    "http_protocol_options",
    "http2_protocol_options",
    "common_http_protocol_options",
    "upstream_http_protocol_options",
    "protocol_selection",
    "cleanup_interval",
    "upstream_bind_config",
    "track_timeout_budgets",
    "track_cluster_stats",
    "filters",
    "upstream_config",
    "close_connections_on_host_health_failure",
    "ignore_health_on_host_removal",
    "lrs_server",
    "max_requests_per_connection",
    "wait_for_warm_on_init",
    "preconnect_policy",
    "connection_pool_per_downstream_connection",
    "dns_lookup_family",
    "dns_refresh_rate",
    "dns_failure_refresh_rate",
    "respect_dns_ttl",
    "dns_jitter",
    "dns_resolvers",
    "use_tcp_for_dns_lookups",
    "dns_resolution_config",
    "typed_dns_resolver_config",
    // Active health checking is the agent's job; it reports results with
    // `set_health_check`, so the checks' definitions do not matter here.
    "health_checks",
    "respect_dns_ttl",
];

const UNSUPPORTED_CLUSTER_FIELDS: &[(&str, &str)] = &[
    ("lb_subset_config", "subset load balancing"),
    ("original_dst_lb_config", "ORIGINAL_DST clusters"),
    ("load_balancing_policy", "typed load-balancing policy extensions; use lb_policy"),
    ("cluster_type", "custom cluster types"),
    ("round_robin_lb_config", "round robin slow start"),
];

/// Parses one `Cluster`. `pos` labels it in errors when it has no name.
pub fn cluster_from_value(v: &Value, pos: usize) -> Result<ClusterSpec> {
    let label = v
        .as_object()
        .and_then(|o| o.get("name"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map_or_else(|| format!("#{pos}"), str::to_owned);
    let ctx = Ctx { cluster: &label };
    let m = Msg::new(&ctx, v, "")?;
    m.check(
        &ctx,
        &[
            "name",
            "type",
            "lb_policy",
            "load_assignment",
            "common_lb_config",
            "ring_hash_lb_config",
            "maglev_lb_config",
            "least_request_lb_config",
            "outlier_detection",
        ],
        IGNORED_CLUSTER_FIELDS,
        UNSUPPORTED_CLUSTER_FIELDS,
    )?;
    let name = string(&ctx, &m, "name")?;
    if name.is_empty() {
        return Err(ctx.err("name", "missing: every cluster needs a name"));
    }
    match enum_field(&ctx, &m, "type")? {
        None | Some(EnumVal::Name("STATIC" | "EDS")) | Some(EnumVal::Num(0 | 3)) => {}
        Some(EnumVal::Name(t @ ("STRICT_DNS" | "LOGICAL_DNS" | "ORIGINAL_DST"))) => {
            return Err(ctx.err("type", format!("{t} is not supported: endpoints must be IP addresses (STATIC or EDS)")))
        }
        Some(EnumVal::Name(t)) => return Err(ctx.err("type", format!("unknown cluster type {t:?}"))),
        Some(EnumVal::Num(n)) => {
            return Err(ctx.err("type", format!("cluster type {n} is not supported (STATIC or EDS)")))
        }
    }
    let policy = match enum_field(&ctx, &m, "lb_policy")? {
        None => Policy::RoundRobin,
        Some(EnumVal::Name(s)) => Policy::from_name(s).ok_or_else(|| {
            ctx.err(
                "lb_policy",
                format!("{s:?} is not supported (ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH or MAGLEV)"),
            )
        })?,
        Some(EnumVal::Num(n)) => match n {
            0 => Policy::RoundRobin,
            1 => Policy::LeastRequest,
            2 => Policy::RingHash,
            3 => Policy::Random,
            5 => Policy::Maglev,
            _ => return Err(ctx.err("lb_policy", format!("policy number {n} is not supported"))),
        },
    };
    let mut cfg = ClusterConfig { policy, ..ClusterConfig::default() };
    if let Some(v) = m.get("common_lb_config") {
        common_lb_config(&ctx, &mut cfg, &Msg::new(&ctx, v, "common_lb_config")?)?;
    }
    if let Some(v) = m.get("ring_hash_lb_config") {
        let r = Msg::new(&ctx, v, "ring_hash_lb_config")?;
        r.check(&ctx, &["minimum_ring_size", "maximum_ring_size", "hash_function"], &[], &[])?;
        let mut rh = RingHashConfig::default();
        if let Some(n) = uint(&ctx, &r, "minimum_ring_size", RING_SIZE_CAP)? {
            rh.minimum_ring_size = n.max(1);
        }
        if let Some(n) = uint(&ctx, &r, "maximum_ring_size", RING_SIZE_CAP)? {
            rh.maximum_ring_size = n.max(1);
        }
        if rh.minimum_ring_size > rh.maximum_ring_size {
            return Err(ctx.err(
                "ring_hash_lb_config.minimum_ring_size",
                format!("{} is larger than maximum_ring_size {}", rh.minimum_ring_size, rh.maximum_ring_size),
            ));
        }
        match enum_field(&ctx, &r, "hash_function")? {
            None | Some(EnumVal::Name("XX_HASH" | "DEFAULT_HASH")) | Some(EnumVal::Num(0)) => {}
            Some(_) => return Err(ctx.err("ring_hash_lb_config.hash_function", "only XX_HASH (xxHash64) is supported")),
        }
        if cfg.policy != Policy::RingHash {
            return Err(ctx.err("ring_hash_lb_config", format!("set, but lb_policy is {}", cfg.policy.as_str())));
        }
        cfg.ring_hash = rh;
    }
    if let Some(v) = m.get("maglev_lb_config") {
        let r = Msg::new(&ctx, v, "maglev_lb_config")?;
        r.check(&ctx, &["table_size"], &[], &[])?;
        if let Some(n) = uint(&ctx, &r, "table_size", MAGLEV_MAX_TABLE_SIZE)? {
            if !is_prime(n) {
                return Err(ctx.err("maglev_lb_config.table_size", format!("{n} is not a prime number")));
            }
            cfg.maglev_table_size = n;
        }
        if cfg.policy != Policy::Maglev {
            return Err(ctx.err("maglev_lb_config", format!("set, but lb_policy is {}", cfg.policy.as_str())));
        }
    }
    if let Some(v) = m.get("least_request_lb_config") {
        let r = Msg::new(&ctx, v, "least_request_lb_config")?;
        r.check(&ctx, &["choice_count", "active_request_bias"], &[], &[("slow_start_config", "slow start")])?;
        let mut lr = LeastRequestConfig::default();
        if let Some(n) = uint(&ctx, &r, "choice_count", 1024)? {
            if n < 2 {
                return Err(ctx.err("least_request_lb_config.choice_count", format!("{n} is below 2")));
            }
            lr.choice_count = n as u32;
        }
        if let Some(b) = r.get("active_request_bias") {
            // A RuntimeDouble: {"default_value": x, "runtime_key": k}.
            let bm = Msg::new(&ctx, b, "least_request_lb_config.active_request_bias")?;
            bm.check(&ctx, &["default_value"], &["runtime_key"], &[])?;
            let x = match bm.get("default_value") {
                Some(v) => number(&ctx, v, &bm.field_path("default_value"))?,
                None => 0.0,
            };
            if !(x.is_finite() && x >= 0.0) {
                return Err(ctx.err(bm.field_path("default_value"), format!("{x} must be a number >= 0")));
            }
            lr.active_request_bias = x;
        }
        if cfg.policy != Policy::LeastRequest {
            return Err(ctx.err("least_request_lb_config", format!("set, but lb_policy is {}", cfg.policy.as_str())));
        }
        cfg.least_request = lr;
    }
    if let Some(v) = m.get("outlier_detection") {
        cfg.outlier = Some(outlier_detection(&ctx, &Msg::new(&ctx, v, "outlier_detection")?)?);
    }
    cfg.upstream_h2 = upstream_protocol(&ctx, &m);
    let (groups, endpoints) = match m.get("load_assignment") {
        Some(v) => {
            let a = load_assignment(&ctx, &Msg::new(&ctx, v, "load_assignment")?)?;
            if let Some(opf) = a.overprovisioning_factor {
                cfg.overprovisioning_factor = opf;
            }
            (a.groups, a.endpoints)
        }
        None => (Vec::new(), Vec::new()),
    };
    let mut spec = ClusterSpec { name: name.to_owned(), config: cfg, groups, endpoints };
    finish_hash_keys(&mut spec);
    Ok(spec)
}

fn common_lb_config(ctx: &Ctx<'_>, cfg: &mut ClusterConfig, m: &Msg<'_>) -> Result<()> {
    m.check(
        ctx,
        &["healthy_panic_threshold", "locality_weighted_lb_config", "consistent_hashing_lb_config"],
        &["update_merge_window", "ignore_new_hosts_until_first_hc", "close_connections_on_host_set_change"],
        &[
            ("zone_aware_lb_config", "zone-aware routing (use locality-weighted balancing or Istio locality failover)"),
            ("override_host_status", "host override"),
        ],
    )?;
    if let Some(p) = percent(ctx, m, "healthy_panic_threshold")? {
        cfg.panic_threshold = p;
    }
    if let Some(v) = m.get("locality_weighted_lb_config") {
        Msg::new(ctx, v, "common_lb_config.locality_weighted_lb_config")?.check(ctx, &[], &[], &[])?;
        cfg.locality_weighted = true;
    }
    if let Some(v) = m.get("consistent_hashing_lb_config") {
        let c = Msg::new(ctx, v, "common_lb_config.consistent_hashing_lb_config")?;
        c.check(
            ctx,
            &["use_hostname_for_hashing"],
            &[],
            &[("hash_balance_factor", "bounded-load consistent hashing")],
        )?;
        cfg.use_hostname_for_hashing = boolean(ctx, &c, "use_hostname_for_hashing")?;
    }
    Ok(())
}

/// Fills each endpoint's hash key: `envoy.lb` `hash_key`, else the hostname
/// with `use_hostname_for_hashing`, else the address (Envoy's `hashKey()`).
pub(crate) fn finish_hash_keys(spec: &mut ClusterSpec) {
    let use_host = spec.config.use_hostname_for_hashing;
    for e in &mut spec.endpoints {
        if !e.hash_key.is_empty() {
            continue;
        }
        e.hash_key = if use_host && !e.hostname.is_empty() { e.hostname.clone() } else { e.address.to_string() };
    }
}

/// Every cluster in a document: a list of clusters, one cluster, `{"clusters": [...]}`,
/// an Envoy bootstrap (`static_resources.clusters`) or an xDS response
/// (`resources`, each with `@type` Cluster).
/// The protocol an HTTP request takes to this cluster's endpoints, as
/// Envoy decides it: `typed_extension_protocol_options`
/// `envoy.extensions.upstreams.http.v3.HttpProtocolOptions` with
/// `explicit_http_config.http2_protocol_options` (or the deprecated
/// top-level `http2_protocol_options`): HTTP/2, as istiod sets for
/// `http2`/`grpc` ports and `h2UpgradePolicy: UPGRADE` (istio
/// `pilot/pkg/networking/core/cluster_builder.go setH2Options`);
/// `use_downstream_protocol_config` or `auto_config`: None, the client's
/// protocol, as istiod sets for ports of unknown protocol on sidecars
/// (`setUseDownstreamProtocol`); anything else, including no options at
/// all: HTTP/1.1, Envoy's default, which is what an `http` port gets from
/// istiod, so an HTTP/2 client of an HTTP/1.1-only app is downgraded
/// rather than sending the app a preface it cannot read. Read leniently:
/// the rest of these options do not change where a request goes.
fn upstream_protocol(ctx: &Ctx<'_>, m: &Msg<'_>) -> Option<bool> {
    if m.get("http2_protocol_options").is_some() {
        return Some(true);
    }
    let opts = m
        .get("typed_extension_protocol_options")
        .and_then(|v| Msg::new(ctx, v, "typed_extension_protocol_options").ok())
        .and_then(|all| all.get(HTTP_PROTOCOL_OPTIONS).and_then(|v| Msg::new(ctx, v, HTTP_PROTOCOL_OPTIONS).ok()));
    let Some(opts) = opts else { return Some(false) };
    if opts.get("use_downstream_protocol_config").is_some() || opts.get("auto_config").is_some() {
        return None;
    }
    let explicit = opts.get("explicit_http_config").and_then(|v| Msg::new(ctx, v, "explicit_http_config").ok());
    Some(explicit.is_some_and(|e| e.get("http2_protocol_options").is_some()))
}

/// The upstream HTTP protocol a cluster in proto3 JSON names, as
/// [`upstream_protocol`] reads it, for a cluster the lbtable does not serve:
/// istiod's inbound clusters (`inbound|<port>||`, ORIGINAL_DST), which say
/// what the inbound speaks to the local app on that port. A value that is
/// not an object says nothing: HTTP/1.1.
pub fn http_protocol_of(v: &Value) -> Option<bool> {
    let ctx = Ctx { cluster: "inbound" };
    match Msg::new(&ctx, v, "cluster") {
        Ok(m) => upstream_protocol(&ctx, &m),
        Err(_) => Some(false),
    }
}

/// The extension key (and type) of upstream HTTP protocol options.
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

pub fn clusters_from_value(v: &Value, source_name: &str) -> Result<Vec<ClusterSpec>> {
    let list: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) => {
            if let Some(sr) = o.get("static_resources").or_else(|| o.get("staticResources")) {
                match sr.get("clusters") {
                    Some(Value::Array(a)) => a.iter().collect(),
                    None | Some(Value::Null) => Vec::new(),
                    Some(_) => return Err(Error::parse(source_name, "static_resources.clusters: expected a list")),
                }
            } else if let Some(c) = o.get("clusters") {
                match c {
                    Value::Array(a) => a.iter().collect(),
                    _ => return Err(Error::parse(source_name, "clusters: expected a list")),
                }
            } else if let Some(r) = o.get("resources") {
                match r {
                    Value::Array(a) => a.iter().collect(),
                    _ => return Err(Error::parse(source_name, "resources: expected a list")),
                }
            } else if o.contains_key("name") {
                vec![v]
            } else {
                return Err(Error::parse(
                    source_name,
                    "expected a Cluster, a list of clusters, {\"clusters\": [...]}, an Envoy bootstrap or an xDS response",
                ));
            }
        }
        _ => return Err(Error::parse(source_name, "expected a Cluster or a list of clusters")),
    };
    let mut out = Vec::with_capacity(list.len());
    let mut names = HashSet::new();
    for (i, c) in list.into_iter().enumerate() {
        if let Some(t) = c.get("@type").and_then(Value::as_str) {
            if !t.ends_with(CLUSTER_TYPE) {
                return Err(Error::cluster(format!("#{i}"), "@type", format!("{t:?} is not an {CLUSTER_TYPE}")));
            }
        }
        let spec = cluster_from_value(c, i)?;
        if !names.insert(spec.name.clone()) {
            return Err(Error::cluster(&spec.name, "name", "defined twice"));
        }
        out.push(spec);
    }
    Ok(out)
}

/// Parses clusters from JSON or YAML text.
pub fn parse_clusters(text: &str, yaml: bool, source_name: &str) -> Result<Vec<ClusterSpec>> {
    let v: Value = if yaml {
        serde_yaml::from_str(text).map_err(|e| Error::parse(source_name, e))?
    } else {
        serde_json::from_str(text).map_err(|e| Error::parse(source_name, e))?
    };
    clusters_from_value(&v, source_name)
}

/// Reads clusters from a file: YAML for `.yaml` / `.yml`, JSON otherwise.
pub fn read_clusters(path: &str) -> Result<Vec<ClusterSpec>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
    let yaml = path.ends_with(".yaml") || path.ends_with(".yml");
    parse_clusters(&text, yaml, path)
}
