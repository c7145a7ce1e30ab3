//! EDS `ClusterLoadAssignment`s: a cluster's inline `load_assignment`, or
//! resources on their own, as an xDS client receives them separately from
//! the `Cluster` (Envoy's EDS clusters). Each EDS assignment replaces the
//! endpoints of one cluster the table already has
//! ([`crate::lb::LbTable::set_assignments`]); the cluster's settings stay.
//!
//! Documents: a list of assignments, one assignment, `{"assignments": [...]}`
//! or an xDS response (`resources`, each with `@type`
//! `ClusterLoadAssignment`). Validation and messages are the `Cluster`
//! parser's own (an inline `load_assignment` is the same message).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

use super::json::{enum_field, kind, string, uint, Ctx, EnumVal, Msg};
use crate::error::{Error, Result};
use crate::lb::cluster::ClusterAssignment;
use crate::lb::endpoint::{Endpoint, EndpointMeta, HealthStatus, Locality, LocalityGroup};
use crate::mesh::{metadata, MetadataKey};

/// Envoy's limit on `LocalityLbEndpoints.priority`.
pub const MAX_PRIORITY: u32 = 128;

/// One `ClusterLoadAssignment` (a cluster's `load_assignment`, or an EDS
/// resource on its own), with field paths relative to `m`.
pub(super) fn load_assignment(ctx: &Ctx<'_>, m: &Msg<'_>) -> Result<ClusterAssignment> {
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
fn assignment_from_value(v: &Value, pos: usize) -> Result<ClusterAssignment> {
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
        Some(v) => endpoint_metadata(ctx, &Msg::new(ctx, v, &m.field_path("metadata"))?)?,
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

/// Istio's endpoint metadata ([`crate::mesh::metadata`]) and Envoy's
/// `envoy.lb` labels / hash key.
fn endpoint_metadata(ctx: &Ctx<'_>, m: &Msg<'_>) -> Result<(EndpointMeta, Option<String>)> {
    m.check(ctx, &["filter_metadata"], &["typed_filter_metadata"], &[])?;
    let mut meta = EndpointMeta::default();
    let mut hash_key = None;
    let Some(fv) = m.get("filter_metadata") else { return Ok((meta, None)) };
    // Keys of filter_metadata and the structs below are data, not proto
    // field names: they are read verbatim.
    let Value::Object(f) = fv else {
        return Err(ctx.err(m.field_path("filter_metadata"), format!("expected an object, got {}", kind(fv))));
    };
    let s = |k: MetadataKey| -> Option<String> { f.get(k.filter)?.get(k.key)?.as_str().map(str::to_owned) };
    meta.tls_mode = s(metadata::TLS_MODE).unwrap_or_default();
    meta.network = s(metadata::NETWORK).unwrap_or_default();
    meta.service_account =
        s(metadata::SERVICE_ACCOUNT).or_else(|| s(metadata::SERVICE_ACCOUNT_CAMEL)).unwrap_or_default();
    meta.workload = s(metadata::WORKLOAD).unwrap_or_default();
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

/// The type URL of an EDS resource.
pub const ASSIGNMENT_TYPE: &str = "envoy.config.endpoint.v3.ClusterLoadAssignment";

/// Every assignment in a document (see the module docs). Two assignments
/// for one cluster in one document are an error, as Envoy NACKs an EDS
/// response that repeats a resource.
pub fn assignments_from_value(v: &Value, source_name: &str) -> Result<Vec<ClusterAssignment>> {
    let list: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) => match o.get("resources").or_else(|| o.get("assignments")) {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(_) => return Err(Error::parse(source_name, "resources: expected a list")),
            None if o.contains_key("cluster_name") || o.contains_key("clusterName") || o.contains_key("endpoints") => {
                vec![v]
            }
            None => {
                return Err(Error::parse(
                    source_name,
                    "expected a ClusterLoadAssignment, a list of them, {\"assignments\": [...]} or an xDS response",
                ))
            }
        },
        _ => return Err(Error::parse(source_name, "expected a ClusterLoadAssignment or a list of them")),
    };
    let mut out = Vec::with_capacity(list.len());
    let mut names = HashSet::new();
    for (i, a) in list.into_iter().enumerate() {
        if let Some(t) = a.get("@type").and_then(Value::as_str) {
            if !t.ends_with(ASSIGNMENT_TYPE) {
                return Err(Error::cluster(format!("#{i}"), "@type", format!("{t:?} is not an {ASSIGNMENT_TYPE}")));
            }
        }
        let a = assignment_from_value(a, i)?;
        if !names.insert(a.cluster.clone()) {
            return Err(Error::cluster(&a.cluster, "cluster_name", "assigned twice in one update"));
        }
        out.push(a);
    }
    Ok(out)
}

/// Parses assignments from JSON or YAML text.
pub fn parse_assignments(text: &str, yaml: bool, source_name: &str) -> Result<Vec<ClusterAssignment>> {
    let v: Value = if yaml {
        serde_yaml::from_str(text).map_err(|e| Error::parse(source_name, e))?
    } else {
        serde_json::from_str(text).map_err(|e| Error::parse(source_name, e))?
    };
    assignments_from_value(&v, source_name)
}

/// Reads assignments from a file: YAML for `.yaml` / `.yml`, JSON otherwise.
pub fn read_assignments(path: &str) -> Result<Vec<ClusterAssignment>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
    let yaml = path.ends_with(".yaml") || path.ends_with(".yml");
    parse_assignments(&text, yaml, path)
}
