//! Envoy `Cluster` resources (proto3 JSON, as parsed into a
//! `serde_json::Value`) to validated [`ClusterSpec`]s. This is the one
//! parser: Python hands it dicts converted from YAML or from protobuf
//! messages (`MessageToDict(preserving_proto_field_name=True)`), the C ABI
//! hands it JSON text, so every input is validated, and rejected, alike.
//!
//! Field names may be snake_case or lowerCamelCase, as proto3 JSON allows.
//! Fields are sorted into three kinds: those the load balancer implements
//! (parsed and validated), those that do not change endpoint selection
//! (connection, protocol, TLS, stats settings: accepted and ignored), and
//! those that would change selection in ways pymesh does not implement
//! (subsets, slow start, zone-aware routing, ...): rejected, naming the
//! cluster and field, rather than silently balancing differently from Envoy.
//! Unknown fields are rejected like a strict proto3 JSON parser does.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use serde_json::{Map, Value};

use super::cluster::{ClusterAssignment, ClusterSpec};
use super::config::{
    is_prime, ClusterConfig, LeastRequestConfig, OutlierConfig, Policy, RingHashConfig, MAGLEV_MAX_TABLE_SIZE,
    RING_SIZE_CAP,
};
use super::endpoint::{Endpoint, EndpointMeta, HealthStatus, Locality, LocalityGroup};
use crate::error::{Error, Result};

/// Envoy's limit on `LocalityLbEndpoints.priority`.
pub const MAX_PRIORITY: u32 = 128;

/// Where we are: the cluster's label and a field path.
struct Ctx<'a> {
    cluster: &'a str,
}

impl Ctx<'_> {
    fn err(&self, field: impl std::fmt::Display, reason: impl std::fmt::Display) -> Error {
        Error::cluster(self.cluster, field, reason)
    }
}

fn camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut up = false;
    for c in s.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.push(c.to_ascii_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A proto message as a JSON object, read field by field.
struct Msg<'a> {
    obj: &'a Map<String, Value>,
    path: String,
}

impl<'a> Msg<'a> {
    fn new(ctx: &Ctx<'_>, v: &'a Value, path: &str) -> Result<Msg<'a>> {
        match v {
            Value::Object(obj) => Ok(Msg { obj, path: path.to_owned() }),
            other => Err(ctx.err(path_or(path), format!("expected an object, got {}", kind(other)))),
        }
    }

    fn field_path(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// The value of field `name` (snake_case, or its camelCase form); null counts as absent.
    fn get(&self, name: &str) -> Option<&'a Value> {
        // The camelCase form is only built when the snake_case one is absent
        // and could differ (parsing 50k endpoints must not allocate per field).
        match self.obj.get(name) {
            Some(v) => Some(v),
            None if name.contains('_') => self.obj.get(&camel(name)),
            None => None,
        }
        .filter(|v| !v.is_null())
    }

    /// Rejects fields that are neither `known` nor `ignored`, and those in
    /// `unsupported` when present (with `why`).
    fn check(&self, ctx: &Ctx<'_>, known: &[&str], ignored: &[&str], unsupported: &[(&str, &str)]) -> Result<()> {
        for (k, v) in self.obj {
            if v.is_null() {
                continue;
            }
            // Only a key with an upper-case letter can be a camelCase form.
            let camel_key = k.bytes().any(|b| b.is_ascii_uppercase());
            let same = |f: &str| f == k || (camel_key && camel(f) == *k);
            let is = |list: &[&str]| list.iter().any(|f| same(f));
            if let Some((f, why)) = unsupported.iter().find(|(f, _)| same(f)) {
                if !is_default(v) {
                    return Err(ctx.err(self.field_path(f), format!("not supported: {why}")));
                }
                continue;
            }
            if !(is(known) || is(ignored)) {
                return Err(ctx.err(self.field_path(k), "unknown field"));
            }
        }
        Ok(())
    }
}

/// proto3 JSON omits defaults; an explicitly given default (false, 0, "",
/// [], {}) means the same and is accepted for unsupported fields.
fn is_default(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

fn path_or(p: &str) -> &str {
    if p.is_empty() {
        "(cluster)"
    } else {
        p
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn string<'a>(ctx: &Ctx<'_>, m: &Msg<'a>, name: &str) -> Result<&'a str> {
    match m.get(name) {
        None => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(ctx.err(m.field_path(name), format!("expected a string, got {}", kind(v)))),
    }
}

fn boolean(ctx: &Ctx<'_>, m: &Msg<'_>, name: &str) -> Result<bool> {
    match m.get(name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ctx.err(m.field_path(name), format!("expected true or false, got {}", kind(v)))),
    }
}

/// An unsigned integer field (proto3 JSON also allows integers as strings).
/// Accepts a `{"value": n}` wrapper object too.
fn uint(ctx: &Ctx<'_>, m: &Msg<'_>, name: &str, max: u64) -> Result<Option<u64>> {
    let Some(v) = m.get(name) else { return Ok(None) };
    let path = m.field_path(name);
    let v = match v {
        Value::Object(o) if o.len() == 1 && o.contains_key("value") => &o["value"],
        v => v,
    };
    let n = match v {
        Value::Number(n) => {
            n.as_u64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as u64))
        }
        Value::String(s) => s.parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n <= max => Ok(Some(n)),
        Some(n) => Err(ctx.err(path, format!("{n} is out of range (at most {max})"))),
        None => Err(ctx.err(path, format!("expected a non-negative integer, got {v}"))),
    }
}

fn number(ctx: &Ctx<'_>, v: &Value, path: &str) -> Result<f64> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| ctx.err(path, "not a number")),
        Value::String(s) => s.parse::<f64>().map_err(|_| ctx.err(path, format!("expected a number, got {s:?}"))),
        v => Err(ctx.err(path, format!("expected a number, got {}", kind(v)))),
    }
}

/// A `google.protobuf.Duration` in proto3 JSON ("1.5s") as milliseconds.
fn duration_ms(ctx: &Ctx<'_>, m: &Msg<'_>, name: &str) -> Result<Option<u64>> {
    let Some(v) = m.get(name) else { return Ok(None) };
    let path = m.field_path(name);
    let bad = || ctx.err(&path, format!("expected a duration like \"10s\" or \"0.5s\", got {v}"));
    let s = v.as_str().ok_or_else(bad)?;
    let secs = s.strip_suffix('s').ok_or_else(bad)?;
    let (whole, frac) = secs.split_once('.').unwrap_or((secs, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 9
    {
        return Err(bad());
    }
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    let mut nanos: u64 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| bad())? };
    for _ in frac.len()..9 {
        nanos *= 10;
    }
    whole.checked_mul(1000).and_then(|ms| ms.checked_add(nanos.div_ceil(1_000_000))).map(Some).ok_or_else(bad)
}

/// A `type.v3.Percent` (`{"value": 50.0}`) rounded to a whole percent, capped at 100.
fn percent(ctx: &Ctx<'_>, m: &Msg<'_>, name: &str) -> Result<Option<u32>> {
    let Some(v) = m.get(name) else { return Ok(None) };
    let path = m.field_path(name);
    let pm = Msg::new(ctx, v, &path)?;
    pm.check(ctx, &["value"], &[], &[])?;
    let x = match pm.get("value") {
        None => 0.0,
        Some(v) => number(ctx, v, &pm.field_path("value"))?,
    };
    if !(0.0..=100.0).contains(&x) {
        return Err(ctx.err(pm.field_path("value"), format!("{x} is not a percentage (0 to 100)")));
    }
    Ok(Some(x.round() as u32))
}

/// An enum given by name or number.
fn enum_field<'v>(ctx: &Ctx<'_>, m: &Msg<'v>, name: &str) -> Result<Option<EnumVal<'v>>> {
    match m.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(EnumVal::Name(s))),
        Some(Value::Number(n)) if n.as_i64().is_some() => Ok(Some(EnumVal::Num(n.as_i64().unwrap_or_default()))),
        Some(v) => Err(ctx.err(m.field_path(name), format!("expected an enum name, got {}", kind(v)))),
    }
}

enum EnumVal<'a> {
    Name(&'a str),
    Num(i64),
}

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

fn outlier_detection(ctx: &Ctx<'_>, m: &Msg<'_>) -> Result<OutlierConfig> {
    const PCT: &[&str] = &[
        "enforcing_consecutive_5xx",
        "enforcing_consecutive_gateway_failure",
        "enforcing_consecutive_local_origin_failure",
        "enforcing_success_rate",
        "enforcing_failure_percentage",
        "max_ejection_percent",
        "failure_percentage_threshold",
    ];
    m.check(
        ctx,
        &[
            "consecutive_5xx",
            "consecutive_gateway_failure",
            "consecutive_local_origin_failure",
            "split_external_local_origin_errors",
            "interval",
            "base_ejection_time",
            "max_ejection_time",
            "max_ejection_time_jitter",
            "always_eject_one_host",
            "success_rate_minimum_hosts",
            "success_rate_request_volume",
            "success_rate_stdev_factor",
            "failure_percentage_minimum_hosts",
            "failure_percentage_request_volume",
            "successful_active_health_check_uneject_host",
            "enforcing_consecutive_5xx",
            "enforcing_consecutive_gateway_failure",
            "enforcing_consecutive_local_origin_failure",
            "enforcing_success_rate",
            "enforcing_failure_percentage",
            "max_ejection_percent",
            "failure_percentage_threshold",
        ],
        &[],
        &[
            ("enforcing_local_origin_success_rate", "local-origin success-rate ejection"),
            ("enforcing_failure_percentage_local_origin", "local-origin failure-percentage ejection"),
            ("detector", "outlier detector extensions"),
            ("monitors", "outlier detection monitors"),
        ],
    )?;
    let mut c = OutlierConfig::default();
    let u32f = |name: &str, slot: &mut u32, max: u64| -> Result<()> {
        if let Some(n) = uint(ctx, m, name, max)? {
            *slot = n as u32;
        }
        Ok(())
    };
    u32f("consecutive_5xx", &mut c.consecutive_5xx, u64::from(u32::MAX))?;
    u32f("consecutive_gateway_failure", &mut c.consecutive_gateway_failure, u64::from(u32::MAX))?;
    u32f("consecutive_local_origin_failure", &mut c.consecutive_local_origin_failure, u64::from(u32::MAX))?;
    u32f("success_rate_minimum_hosts", &mut c.success_rate_minimum_hosts, u64::from(u32::MAX))?;
    u32f("success_rate_request_volume", &mut c.success_rate_request_volume, u64::from(u32::MAX))?;
    u32f("success_rate_stdev_factor", &mut c.success_rate_stdev_factor, u64::from(u32::MAX))?;
    u32f("failure_percentage_minimum_hosts", &mut c.failure_percentage_minimum_hosts, u64::from(u32::MAX))?;
    u32f("failure_percentage_request_volume", &mut c.failure_percentage_request_volume, u64::from(u32::MAX))?;
    for &p in PCT {
        let slot = match p {
            "enforcing_consecutive_5xx" => &mut c.enforcing_consecutive_5xx,
            "enforcing_consecutive_gateway_failure" => &mut c.enforcing_consecutive_gateway_failure,
            "enforcing_consecutive_local_origin_failure" => &mut c.enforcing_consecutive_local_origin_failure,
            "enforcing_success_rate" => &mut c.enforcing_success_rate,
            "enforcing_failure_percentage" => &mut c.enforcing_failure_percentage,
            "max_ejection_percent" => &mut c.max_ejection_percent,
            _ => &mut c.failure_percentage_threshold,
        };
        u32f(p, slot, 100)?;
    }
    c.split_external_local_origin_errors = boolean(ctx, m, "split_external_local_origin_errors")?;
    c.always_eject_one_host = boolean(ctx, m, "always_eject_one_host")?;
    if m.get("successful_active_health_check_uneject_host").is_some() {
        c.successful_active_health_check_uneject_host = boolean(ctx, m, "successful_active_health_check_uneject_host")?;
    }
    if let Some(ms) = duration_ms(ctx, m, "interval")? {
        if ms == 0 {
            return Err(ctx.err("outlier_detection.interval", "must be positive"));
        }
        c.interval_ms = ms;
    }
    let base_set = duration_ms(ctx, m, "base_ejection_time")?;
    if let Some(ms) = base_set {
        c.base_ejection_time_ms = ms;
    }
    if let Some(ms) = duration_ms(ctx, m, "max_ejection_time")? {
        c.max_ejection_time_ms = ms;
    } else if c.base_ejection_time_ms > c.max_ejection_time_ms {
        // Envoy: an unset max_ejection_time follows a larger base_ejection_time.
        c.max_ejection_time_ms = c.base_ejection_time_ms;
    }
    if c.max_ejection_time_ms < c.base_ejection_time_ms {
        return Err(ctx.err(
            "outlier_detection.max_ejection_time",
            format!("{} ms is shorter than base_ejection_time {} ms", c.max_ejection_time_ms, c.base_ejection_time_ms),
        ));
    }
    if let Some(ms) = duration_ms(ctx, m, "max_ejection_time_jitter")? {
        c.max_ejection_time_jitter_ms = ms;
    }
    Ok(c)
}

/// One `ClusterLoadAssignment` (a cluster's `load_assignment`, or an EDS
/// resource on its own), with field paths relative to `m`.
fn load_assignment(ctx: &Ctx<'_>, m: &Msg<'_>) -> Result<ClusterAssignment> {
    m.check(ctx, &["cluster_name", "endpoints", "policy"], &["@type"], &[("named_endpoints", "named endpoints")])?;
    let cluster = string(ctx, m, "cluster_name")?.to_owned();
    let mut overprovisioning_factor = None;
    if let Some(v) = m.get("policy") {
        let p = Msg::new(ctx, v, &m.field_path("policy"))?;
        p.check(
            ctx,
            &["overprovisioning_factor"],
            &["endpoint_stale_after"],
            &[("drop_overloads", "drop overloads"), ("weighted_priority_health", "weighted priority health")],
        )?;
        if let Some(n) = uint(ctx, &p, "overprovisioning_factor", u64::from(u32::MAX))? {
            if n == 0 {
                return Err(ctx.err(p.field_path("overprovisioning_factor"), "must be positive"));
            }
            overprovisioning_factor = Some(n as u32);
        }
    }
    let mut groups: Vec<LocalityGroup> = Vec::new();
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let mut seen: HashSet<SocketAddr> = HashSet::new();
    let list = match m.get("endpoints") {
        None => return Ok(ClusterAssignment { cluster, overprovisioning_factor, groups, endpoints }),
        Some(Value::Array(a)) => a,
        Some(v) => return Err(ctx.err(m.field_path("endpoints"), format!("expected a list, got {}", kind(v)))),
    };
    for (gi, g) in list.iter().enumerate() {
        let gpath = m.field_path(&format!("endpoints[{gi}]"));
        let gm = Msg::new(ctx, g, &gpath)?;
        gm.check(
            ctx,
            &["locality", "lb_endpoints", "load_balancing_weight", "priority"],
            &["proximity", "metadata"],
            &[("leds_cluster_locality_config", "LEDS"), ("load_balancer_endpoints", "LEDS")],
        )?;
        let mut loc = Locality::default();
        if let Some(v) = gm.get("locality") {
            let lm = Msg::new(ctx, v, &gm.field_path("locality"))?;
            lm.check(ctx, &["region", "zone", "sub_zone"], &[], &[])?;
            loc = Locality {
                region: string(ctx, &lm, "region")?.to_owned(),
                zone: string(ctx, &lm, "zone")?.to_owned(),
                sub_zone: string(ctx, &lm, "sub_zone")?.to_owned(),
            };
        }
        let weight = uint(ctx, &gm, "load_balancing_weight", u64::from(u32::MAX))?.unwrap_or(0) as u32;
        let priority = uint(ctx, &gm, "priority", u64::from(MAX_PRIORITY))?.unwrap_or(0) as u32;
        if let Some(prev) = groups.iter().position(|x| x.locality == loc && x.priority == priority) {
            return Err(ctx.err(
                gm.field_path("locality"),
                format!("locality {loc} at priority {priority} is already endpoints[{prev}]"),
            ));
        }
        groups.push(LocalityGroup { locality: loc, weight, priority });
        let eps = match gm.get("lb_endpoints") {
            None => continue,
            Some(Value::Array(a)) => a,
            Some(v) => return Err(ctx.err(gm.field_path("lb_endpoints"), format!("expected a list, got {}", kind(v)))),
        };
        for (ei, e) in eps.iter().enumerate() {
            let epath = format!("{gpath}.lb_endpoints[{ei}]");
            let ep = lb_endpoint(ctx, &Msg::new(ctx, e, &epath)?, gi as u32, priority)?;
            if !seen.insert(ep.address) {
                return Err(ctx.err(epath, format!("duplicate endpoint {}", ep.address)));
            }
            endpoints.push(ep);
        }
    }
    Ok(ClusterAssignment { cluster, overprovisioning_factor, groups, endpoints })
}

/// Parses one EDS `ClusterLoadAssignment`; `pos` labels it in errors when
/// it names no cluster. Endpoint hash keys stay unfilled (the `envoy.lb`
/// `hash_key` only) until the cluster's settings are known
/// ([`ClusterSpec::with_assignment`]).
pub(super) fn assignment_from_value(v: &Value, pos: usize) -> Result<ClusterAssignment> {
    let label = v
        .as_object()
        .and_then(|o| o.get("cluster_name").or_else(|| o.get("clusterName")))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map_or_else(|| format!("#{pos}"), str::to_owned);
    let ctx = Ctx { cluster: &label };
    let a = load_assignment(&ctx, &Msg::new(&ctx, v, "")?)?;
    if a.cluster.is_empty() {
        return Err(ctx.err("cluster_name", "missing: an EDS assignment names the cluster it is for"));
    }
    Ok(a)
}

fn lb_endpoint(ctx: &Ctx<'_>, m: &Msg<'_>, group: u32, priority: u32) -> Result<Endpoint> {
    m.check(ctx, &["endpoint", "health_status", "load_balancing_weight", "metadata"], &["endpoint_name"], &[])?;
    let Some(ev) = m.get("endpoint") else {
        return Err(ctx.err(m.field_path("endpoint"), "missing"));
    };
    let em = Msg::new(ctx, ev, &m.field_path("endpoint"))?;
    em.check(ctx, &["address", "hostname"], &["health_check_config", "additional_addresses"], &[])?;
    let Some(av) = em.get("address") else {
        return Err(ctx.err(em.field_path("address"), "missing"));
    };
    let am = Msg::new(ctx, av, &em.field_path("address"))?;
    am.check(
        ctx,
        &["socket_address"],
        &[],
        &[("pipe", "Unix socket endpoints"), ("envoy_internal_address", "internal addresses")],
    )?;
    let Some(sv) = am.get("socket_address") else {
        return Err(ctx.err(am.field_path("socket_address"), "missing"));
    };
    let sm = Msg::new(ctx, sv, &am.field_path("socket_address"))?;
    sm.check(
        ctx,
        &["address", "port_value", "protocol"],
        &["ipv4_compat"],
        &[("named_port", "named ports"), ("resolver_name", "custom resolvers")],
    )?;
    match enum_field(ctx, &sm, "protocol")? {
        None | Some(EnumVal::Name("TCP")) | Some(EnumVal::Num(0)) => {}
        Some(_) => return Err(ctx.err(sm.field_path("protocol"), "only TCP endpoints are supported")),
    }
    let host = string(ctx, &sm, "address")?;
    let ip: IpAddr =
        host.parse().map_err(|_| ctx.err(sm.field_path("address"), format!("{host:?} is not an IP address")))?;
    let port = match uint(ctx, &sm, "port_value", 65535)? {
        Some(p) if p > 0 => p as u16,
        _ => return Err(ctx.err(sm.field_path("port_value"), "missing or 0: a port 1-65535 is required")),
    };
    let health_status = match enum_field(ctx, m, "health_status")? {
        None => HealthStatus::Unknown,
        Some(EnumVal::Name(s)) => HealthStatus::from_name(s)
            .ok_or_else(|| ctx.err(m.field_path("health_status"), format!("unknown health status {s:?}")))?,
        Some(EnumVal::Num(n)) => HealthStatus::from_number(n)
            .ok_or_else(|| ctx.err(m.field_path("health_status"), format!("unknown health status {n}")))?,
    };
    let weight = match uint(ctx, m, "load_balancing_weight", u64::from(u32::MAX))? {
        None => 1,
        Some(0) => return Err(ctx.err(m.field_path("load_balancing_weight"), "must be at least 1")),
        Some(w) => w as u32,
    };
    let (meta, lb_hash_key) = match m.get("metadata") {
        Some(v) => metadata(ctx, &Msg::new(ctx, v, &m.field_path("metadata"))?)?,
        None => (EndpointMeta::default(), None),
    };
    Ok(Endpoint {
        address: SocketAddr::new(ip, port),
        weight,
        health_status,
        group,
        priority,
        hostname: string(ctx, &em, "hostname")?.to_owned(),
        hash_key: lb_hash_key.unwrap_or_default(),
        meta,
    })
}

/// Istio's endpoint metadata and Envoy's `envoy.lb` labels / hash key.
fn metadata(ctx: &Ctx<'_>, m: &Msg<'_>) -> Result<(EndpointMeta, Option<String>)> {
    m.check(ctx, &["filter_metadata"], &["typed_filter_metadata"], &[])?;
    let mut meta = EndpointMeta::default();
    let mut hash_key = None;
    let Some(fv) = m.get("filter_metadata") else { return Ok((meta, None)) };
    // Keys of filter_metadata and the structs below are data, not proto
    // field names: they are read verbatim.
    let Value::Object(f) = fv else {
        return Err(ctx.err(m.field_path("filter_metadata"), format!("expected an object, got {}", kind(fv))));
    };
    let s = |ns: &str, key: &str| -> Option<String> { f.get(ns)?.get(key)?.as_str().map(str::to_owned) };
    meta.tls_mode = s("envoy.transport_socket_match", "tlsMode").unwrap_or_default();
    meta.network = s("istio", "network").unwrap_or_default();
    meta.service_account = s("istio", "service_account").or_else(|| s("istio", "serviceAccount")).unwrap_or_default();
    meta.workload = s("istio", "workload").unwrap_or_default();
    if let Some(Value::Object(lb)) = f.get("envoy.lb") {
        for (k, v) in lb {
            if let Value::String(v) = v {
                if k == "hash_key" {
                    hash_key = Some(v.clone());
                } else {
                    meta.labels.push((k.clone(), v.clone()));
                }
            }
        }
        meta.labels.sort();
    }
    Ok((meta, hash_key))
}

/// Fills each endpoint's hash key: `envoy.lb` `hash_key`, else the hostname
/// with `use_hostname_for_hashing`, else the address (Envoy's `hashKey()`).
pub(super) fn finish_hash_keys(spec: &mut ClusterSpec) {
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
            if !t.ends_with("envoy.config.cluster.v3.Cluster") {
                return Err(Error::cluster(
                    format!("#{i}"),
                    "@type",
                    format!("{t:?} is not an envoy.config.cluster.v3.Cluster"),
                ));
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
