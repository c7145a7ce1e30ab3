//! The redirection table: what a captured outbound connection's original
//! destination (IP, port) becomes.
//!
//! The decision follows istio-iptables' `ISTIO_OUTPUT` chain, then the
//! sidecar's listeners:
//! 1. a destination port in `exclude_ports` is not captured (`-o`): Bypass;
//! 2. loopback (127.0.0.1/32, ::1/128) is never redirected (Istio's
//!    `-d 127.0.0.1/32 -j RETURN`): Bypass;
//! 3. an address in an excluded range (`-x`) is not captured, whatever
//!    include range also holds it, because iptables evaluates every exclude
//!    rule before the include rules: Bypass;
//! 4. an address in no included range (`-i`, default `*`) is not captured: Bypass;
//! 5. a captured (VIP, port) of a service goes to its cluster: Cluster;
//! 6. a captured destination on a port some service takes whole (istiod's
//!    `0.0.0.0_<port>` listener of a TCP port without an address) goes to
//!    that cluster: Cluster;
//! 7. anything else captured goes where `virtualOutbound`'s catch-all chain
//!    says: Istio's PassthroughCluster (`outboundTrafficPolicy: ALLOW_ANY`,
//!    the default): Passthrough; or a default cluster, BlackHoleCluster under
//!    `REGISTRY_ONLY` (a cluster without endpoints: the connection is closed).
//!
//! Cost per lookup does not depend on the number of services: one hash probe
//! for (VIP, port); prefix ranges are matched with one hash probe per
//! distinct prefix length in use, longest first (few in practice: /8, /12,
//! /16, /32), on the masked address; ports are one bit test. IPv4-mapped
//! IPv6 destinations (`::ffff:a.b.c.d`, what a dual-stack socket reports)
//! are classified as IPv4.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;

use serde_json::Value;

use crate::error::{Error, Result};

/// A 64-bit multiply-rotate hasher for fixed-size keys (addresses are not
/// attacker-chosen in a table the control plane builds).
#[derive(Default, Clone, Copy, Debug)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    #[inline]
    fn write_u128(&mut self, v: u128) {
        self.write_u64(v as u64);
        self.write_u64((v >> 64) as u64);
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    #[inline]
    fn write_u16(&mut self, v: u16) {
        self.write_u64(u64::from(v));
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// The verdict for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A service VIP:port; the index is into [`RedirectTable::clusters`].
    Cluster(u32),
    /// Captured, but no service: Istio's PassthroughCluster.
    Passthrough,
    /// Not captured at all: the connection goes straight out.
    Bypass,
}

/// A destination key: family-tagged 128-bit address plus port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    addr: u128,
    port: u16,
    v6: bool,
}

/// Prefix sets of one family: for each prefix length in use (longest first),
/// a set of masked addresses with an include/exclude flag.
#[derive(Debug, Default)]
struct Prefixes {
    lengths: Vec<(u8, FastMap<u128, u8>)>,
}

const INCLUDE: u8 = 1;
const EXCLUDE: u8 = 2;

fn mask(bits: u32, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        (!0u128 << (bits - u32::from(len))) & if bits == 128 { !0 } else { (1u128 << bits) - 1 }
    }
}

impl Prefixes {
    fn insert(&mut self, addr: u128, len: u8, bits: u32, flag: u8) {
        let m = addr & mask(bits, len);
        match self.lengths.iter_mut().find(|(l, _)| *l == len) {
            Some((_, set)) => *set.entry(m).or_default() |= flag,
            None => {
                let mut set = FastMap::default();
                set.insert(m, flag);
                self.lengths.push((len, set));
                self.lengths.sort_by_key(|l| std::cmp::Reverse(l.0));
            }
        }
    }

    /// Union of flags of every prefix containing `addr`, stopping early at an exclude.
    #[inline]
    fn flags(&self, addr: u128, bits: u32) -> u8 {
        let mut f = 0;
        for (len, set) in &self.lengths {
            if let Some(&x) = set.get(&(addr & mask(bits, *len))) {
                f |= x;
                if f & EXCLUDE != 0 {
                    break;
                }
            }
        }
        f
    }
}

/// The table. Build with [`RedirectTable::build`] or [`RedirectTable::from_value`].
#[derive(Debug)]
pub struct RedirectTable {
    vips: FastMap<Key, u32>,
    ports: FastMap<u16, u32>,
    default: Option<u32>,
    clusters: Vec<String>,
    v4: Prefixes,
    v6: Prefixes,
    excluded_ports: Box<[u64; 1024]>,
    services: usize,
}

/// One service entry: `address:port` -> cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub address: IpAddr,
    pub port: u16,
    pub cluster: String,
}

/// Where captured destinations no service claims go (istiod's listeners).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fallbacks {
    /// `port -> cluster`: every destination on the port (a `0.0.0.0_<port>` TCP listener).
    pub ports: Vec<(u16, String)>,
    /// The catch-all's cluster; `None`: Passthrough (ALLOW_ANY).
    pub default_cluster: Option<String>,
}

/// The capture settings of istio-iptables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// `-i`: CIDRs to capture; `["*"]` (everything) by default.
    pub include: Vec<String>,
    /// `-x`: CIDRs never captured.
    pub exclude: Vec<String>,
    /// `-o`: destination ports never captured.
    pub exclude_ports: Vec<u16>,
}

impl Default for Capture {
    fn default() -> Self {
        Capture { include: vec!["*".into()], exclude: Vec::new(), exclude_ports: Vec::new() }
    }
}

fn v4_key(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), false),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => (u128::from(u32::from(v4)), false),
            None => (u128::from(a), true),
        },
    }
}

/// Parses "10.0.0.0/8", "fd00::/8", a bare address (a /32 or /128) or "*".
fn parse_cidr(s: &str, field: &str) -> Result<Vec<(u128, u8, bool)>> {
    let s = s.trim();
    if s == "*" {
        return Ok(vec![(0, 0, false), (0, 0, true)]);
    }
    let bad = |why: &str| Error::entry("redirection", field, format!("{s:?}: {why}"));
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| bad("bad prefix length"))?)),
        None => (s, None),
    };
    let ip: IpAddr = a.parse().map_err(|_| bad("not an IP address or CIDR"))?;
    let (addr, v6) = match ip {
        IpAddr::V4(x) => (u128::from(u32::from(x)), false),
        IpAddr::V6(x) => (u128::from(x), true),
    };
    let bits = if v6 { 128 } else { 32 };
    let len = len.unwrap_or(bits);
    if u32::from(len) > u32::from(bits) {
        return Err(bad("prefix length too long for the address family"));
    }
    if addr & !mask(u32::from(bits), len) != 0 {
        return Err(bad("host bits set after the prefix"));
    }
    Ok(vec![(addr, len, v6)])
}

impl RedirectTable {
    /// Builds a table; fails naming the entry and field on invalid input.
    pub fn build(services: &[Service], capture: &Capture) -> Result<RedirectTable> {
        RedirectTable::build_with(services, &Fallbacks::default(), capture)
    }

    /// [`RedirectTable::build`] with port-wide clusters and a default for the rest.
    pub fn build_with(services: &[Service], fallbacks: &Fallbacks, capture: &Capture) -> Result<RedirectTable> {
        let mut t = RedirectTable {
            vips: FastMap::default(),
            ports: FastMap::default(),
            default: None,
            clusters: Vec::new(),
            v4: Prefixes::default(),
            v6: Prefixes::default(),
            excluded_ports: Box::new([0u64; 1024]),
            services: services.len(),
        };
        let mut names: HashMap<&str, u32> = HashMap::new();
        for (i, s) in services.iter().enumerate() {
            if s.cluster.is_empty() {
                return Err(Error::entry(format!("services[{i}]"), "cluster", "missing"));
            }
            let (addr, v6) = v4_key(s.address);
            let key = Key { addr, port: s.port, v6 };
            let next = t.clusters.len() as u32;
            let idx = *names.entry(s.cluster.as_str()).or_insert(next);
            if idx == next {
                t.clusters.push(s.cluster.clone());
            }
            if let Some(prev) = t.vips.insert(key, idx) {
                if prev != idx {
                    return Err(Error::entry(
                        format!("services[{i}]"),
                        "address",
                        format!("{}:{} already maps to cluster {:?}", s.address, s.port, t.clusters[prev as usize]),
                    ));
                }
            }
        }
        for (i, (port, cluster)) in fallbacks.ports.iter().enumerate() {
            if cluster.is_empty() || *port == 0 {
                return Err(Error::entry(format!("port_clusters[{i}]"), "cluster", "missing cluster or port 0"));
            }
            let next = t.clusters.len() as u32;
            let idx = *names.entry(cluster.as_str()).or_insert(next);
            if idx == next {
                t.clusters.push(cluster.clone());
            }
            if let Some(prev) = t.ports.insert(*port, idx) {
                if prev != idx {
                    return Err(Error::entry(
                        format!("port_clusters[{i}]"),
                        "port",
                        format!("port {port} already maps to cluster {:?}", t.clusters[prev as usize]),
                    ));
                }
            }
        }
        if let Some(d) = &fallbacks.default_cluster {
            if d.is_empty() {
                return Err(Error::entry("redirection", "default_cluster", "empty"));
            }
            let next = t.clusters.len() as u32;
            let idx = *names.entry(d.as_str()).or_insert(next);
            if idx == next {
                t.clusters.push(d.clone());
            }
            t.default = Some(idx);
        }
        let mut add = |list: &[String], flag: u8, field: &str| -> Result<()> {
            for (i, c) in list.iter().enumerate() {
                for (addr, len, v6) in parse_cidr(c, &format!("{field}[{i}]"))? {
                    if v6 {
                        t.v6.insert(addr, len, 128, flag);
                    } else {
                        t.v4.insert(addr, len, 32, flag);
                    }
                }
            }
            Ok(())
        };
        add(&capture.include, INCLUDE, "include_ip_ranges")?;
        add(&capture.exclude, EXCLUDE, "exclude_ip_ranges")?;
        add(&["127.0.0.1/32".to_owned(), "::1/128".to_owned()], EXCLUDE, "(loopback)")?;
        for &p in &capture.exclude_ports {
            t.excluded_ports[usize::from(p) >> 6] |= 1 << (p & 63);
        }
        Ok(t)
    }

    /// Classifies an original destination.
    #[inline]
    pub fn classify(&self, ip: IpAddr, port: u16) -> Verdict {
        if self.excluded_ports[usize::from(port) >> 6] & (1 << (port & 63)) != 0 {
            return Verdict::Bypass;
        }
        let (addr, v6) = v4_key(ip);
        let flags = if v6 { self.v6.flags(addr, 128) } else { self.v4.flags(addr, 32) };
        if flags & EXCLUDE != 0 || flags & INCLUDE == 0 {
            return Verdict::Bypass;
        }
        if let Some(&c) = self.vips.get(&Key { addr, port, v6 }) {
            return Verdict::Cluster(c);
        }
        if let Some(&c) = self.ports.get(&port) {
            return Verdict::Cluster(c);
        }
        match self.default {
            Some(c) => Verdict::Cluster(c),
            None => Verdict::Passthrough,
        }
    }

    /// The cluster names verdicts point into.
    pub fn clusters(&self) -> &[String] {
        &self.clusters
    }

    pub fn cluster_name(&self, v: Verdict) -> Option<&str> {
        match v {
            Verdict::Cluster(i) => self.clusters.get(i as usize).map(String::as_str),
            _ => None,
        }
    }

    /// Service entries (VIP:port pairs).
    pub fn len(&self) -> usize {
        self.services
    }

    pub fn is_empty(&self) -> bool {
        self.services == 0
    }

    /// Builds from a JSON document:
    /// `{"services": [{"address": "10.96.0.20", "port": 9080, "cluster": "outbound|9080||reviews..."}],
    ///   "port_clusters": [{"port": 9090, "cluster": "outbound|9090||db..."}], "default_cluster": "BlackHoleCluster",
    ///   "include_ip_ranges": ["*"], "exclude_ip_ranges": ["10.0.0.0/8"], "exclude_ports": [22]}`.
    /// Range lists may also be comma-separated strings, as istio-iptables takes them.
    pub fn from_value(v: &Value) -> Result<RedirectTable> {
        let obj = v.as_object().ok_or_else(|| Error::parse("redirection", "expected an object"))?;
        for k in obj.keys() {
            if ![
                "services",
                "port_clusters",
                "default_cluster",
                "include_ip_ranges",
                "exclude_ip_ranges",
                "exclude_ports",
            ]
            .contains(&k.as_str())
            {
                return Err(Error::entry("redirection", k, "unknown field"));
            }
        }
        let mut services = Vec::new();
        if let Some(list) = obj.get("services").filter(|v| !v.is_null()) {
            let list = list.as_array().ok_or_else(|| Error::entry("redirection", "services", "expected a list"))?;
            for (i, s) in list.iter().enumerate() {
                let e = |f: &str, why: &str| Error::entry(format!("services[{i}]"), f, why);
                let o = s.as_object().ok_or_else(|| e("(entry)", "expected an object"))?;
                for k in o.keys() {
                    if !["address", "port", "cluster"].contains(&k.as_str()) {
                        return Err(e(k, "unknown field"));
                    }
                }
                let a =
                    o.get("address").and_then(Value::as_str).ok_or_else(|| e("address", "missing or not a string"))?;
                let address: IpAddr = a.parse().map_err(|_| e("address", "not an IP address"))?;
                let port = o
                    .get("port")
                    .and_then(Value::as_u64)
                    .filter(|p| (1..=65535).contains(p))
                    .ok_or_else(|| e("port", "missing or not a port 1-65535"))? as u16;
                let cluster =
                    o.get("cluster").and_then(Value::as_str).ok_or_else(|| e("cluster", "missing or not a string"))?;
                services.push(Service { address, port, cluster: cluster.to_owned() });
            }
        }
        let mut fallbacks = Fallbacks::default();
        if let Some(list) = obj.get("port_clusters").filter(|v| !v.is_null()) {
            let list =
                list.as_array().ok_or_else(|| Error::entry("redirection", "port_clusters", "expected a list"))?;
            for (i, s) in list.iter().enumerate() {
                let e = |f: &str, why: &str| Error::entry(format!("port_clusters[{i}]"), f, why);
                let o = s.as_object().ok_or_else(|| e("(entry)", "expected an object"))?;
                for k in o.keys() {
                    if !["port", "cluster"].contains(&k.as_str()) {
                        return Err(e(k, "unknown field"));
                    }
                }
                let port = o
                    .get("port")
                    .and_then(Value::as_u64)
                    .filter(|p| (1..=65535).contains(p))
                    .ok_or_else(|| e("port", "missing or not a port 1-65535"))? as u16;
                let cluster =
                    o.get("cluster").and_then(Value::as_str).ok_or_else(|| e("cluster", "missing or not a string"))?;
                fallbacks.ports.push((port, cluster.to_owned()));
            }
        }
        match obj.get("default_cluster") {
            None | Some(Value::Null) => {}
            Some(Value::String(d)) => fallbacks.default_cluster = Some(d.clone()),
            Some(_) => return Err(Error::entry("redirection", "default_cluster", "expected a cluster name")),
        }
        let ranges = |k: &str| -> Result<Option<Vec<String>>> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => {
                    Ok(Some(s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(str::to_owned).collect()))
                }
                Some(Value::Array(a)) => a
                    .iter()
                    .enumerate()
                    .map(|(i, x)| {
                        x.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| Error::entry("redirection", format!("{k}[{i}]"), "expected a string"))
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some),
                Some(_) => Err(Error::entry("redirection", k, "expected a list of CIDRs")),
            }
        };
        let mut capture = Capture::default();
        if let Some(i) = ranges("include_ip_ranges")? {
            capture.include = i;
        }
        if let Some(x) = ranges("exclude_ip_ranges")? {
            capture.exclude = x;
        }
        if let Some(p) = obj.get("exclude_ports").filter(|v| !v.is_null()) {
            let items: Vec<Value> = match p {
                Value::String(s) => {
                    s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(|x| Value::String(x.into())).collect()
                }
                Value::Array(a) => a.clone(),
                _ => return Err(Error::entry("redirection", "exclude_ports", "expected a list of ports")),
            };
            for (i, x) in items.iter().enumerate() {
                let p =
                    x.as_u64().or_else(|| x.as_str().and_then(|s| s.parse().ok())).filter(|p| *p <= 65535).ok_or_else(
                        || Error::entry("redirection", format!("exclude_ports[{i}]"), "not a port 0-65535"),
                    )?;
                capture.exclude_ports.push(p as u16);
            }
        }
        RedirectTable::build_with(&services, &fallbacks, &capture)
    }

    /// Parses JSON (or YAML) text.
    pub fn parse(text: &str, yaml: bool) -> Result<RedirectTable> {
        let v: Value = if yaml {
            serde_yaml::from_str(text).map_err(|e| Error::parse("redirection", e))?
        } else {
            serde_json::from_str(text).map_err(|e| Error::parse("redirection", e))?
        };
        RedirectTable::from_value(&v)
    }
}
