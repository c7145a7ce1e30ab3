//! Istio's conventions that the core reads, one home each: cluster names and
//! their SNI form, SPIFFE identities, the EDS metadata keys and the ALPN
//! lists of Istio mTLS. The Python layer keeps the same conventions in
//! `pymesh/mesh/`; both are held to one list of cases,
//! `tests/cases/mesh.cases` (driven here by `native/tests/conformance/mesh.rs`).
//!
//! Where Istio's parsers are lenient, these are stricter, so a name that
//! would mean something different to istiod is refused rather than guessed:
//! - cluster names (istio `pilot/pkg/model/service.go`, `BuildSubsetKey` /
//!   `ParseSubsetKey`): exactly four `|`-separated parts; the direction is
//!   `inbound` or `outbound` in lower case; the port is ASCII digits with a
//!   value 1-65535 (Istio's `strconv.Atoi` would read a bad port as 0); the
//!   host is not empty (so Istio's `inbound|8080||` is not a name of this
//!   form); the subset may be empty. A fifth part is refused: Istio's
//!   `ParseSubsetKey` also returns no host when a `|` remains after the
//!   subset.
//! - the SNI / DNS-SRV form `outbound_.<port>_.<subset>_.<host>` (istio
//!   `BuildDNSSrvSubsetKey`, the default SNI of Istio mTLS): the same rules,
//!   `_.` as separator; a host that still holds `_.` is refused, as
//!   `ParseSubsetKey` does.
//! - SPIFFE identities `spiffe://<trust-domain>/ns/<ns>/sa/<sa>` (istio
//!   `pkg/spiffe/spiffe.go`, `Identity.String` / `ParseIdentity`): exactly
//!   those five path parts, none empty.

use std::fmt;

/// Traffic direction of an Istio cluster (istio `pilot/pkg/model`
/// `TrafficDirection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    /// `inbound` or `outbound`, exactly (Istio writes them in lower case).
    pub fn from_name(s: &str) -> Option<Direction> {
        match s {
            "inbound" => Some(Direction::Inbound),
            "outbound" => Some(Direction::Outbound),
            _ => None,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parts of an Istio cluster name `direction|port|subset|host`, borrowed
/// from the name they were parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClusterName<'a> {
    pub direction: Direction,
    pub port: u16,
    /// Empty for a service's default cluster.
    pub subset: &'a str,
    pub host: &'a str,
}

impl ClusterName<'_> {
    /// `direction|port|subset|host` (istio `BuildSubsetKey`).
    pub fn cluster_name(&self) -> String {
        cluster_name(self.direction, self.port, self.subset, self.host)
    }

    /// `direction_.port_.subset_.host` (istio `BuildDNSSrvSubsetKey`).
    pub fn sni(&self) -> String {
        sni(self.direction, self.port, self.subset, self.host)
    }
}

/// `direction|port|subset|host` (istio `BuildSubsetKey`).
pub fn cluster_name(direction: Direction, port: u16, subset: &str, host: &str) -> String {
    format!("{direction}|{port}|{subset}|{host}")
}

/// `direction_.port_.subset_.host`, the DNS-SRV form of a cluster name and
/// the SNI an Istio sidecar sends to an in-mesh endpoint (istio
/// `BuildDNSSrvSubsetKey`).
pub fn sni(direction: Direction, port: u16, subset: &str, host: &str) -> String {
    format!("{direction}_.{port}_.{subset}_.{host}")
}

/// A port as Istio writes one into a name: ASCII digits, 1-65535. Leading
/// zeros are read as `strconv.Atoi` reads them (`080` is 80).
fn port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|&p| p != 0)
}

/// The four parts after the direction, `sep`-separated: port, subset, host.
fn parts<'a>(direction: Direction, rest: &'a str, sep: &str) -> Option<ClusterName<'a>> {
    let (p, rest) = rest.split_once(sep)?;
    let (subset, host) = rest.split_once(sep)?;
    if host.is_empty() || host.contains(sep) {
        return None;
    }
    Some(ClusterName { direction, port: port(p)?, subset, host })
}

/// Parses `direction|port|subset|host` (see the module docs for what is
/// refused); None for anything else.
pub fn parse_cluster_name(name: &str) -> Option<ClusterName<'_>> {
    let (d, rest) = name.split_once('|')?;
    parts(Direction::from_name(d)?, rest, "|")
}

/// Parses the SNI form `direction_.port_.subset_.host`; None for anything else.
pub fn parse_sni(sni: &str) -> Option<ClusterName<'_>> {
    let (d, rest) = sni.split_once("_.")?;
    parts(Direction::from_name(d)?, rest, "_.")
}

/// Istio's upstream SNI for an outbound cluster: the SNI form of its name.
/// Other names (inbound clusters, names not of Istio's form): None.
pub fn outbound_sni(cluster: &str) -> Option<String> {
    parse_cluster_name(cluster).filter(|c| c.direction == Direction::Outbound).map(|c| c.sni())
}

/// The scheme of SPIFFE IDs.
pub const SPIFFE_PREFIX: &str = "spiffe://";

/// A SPIFFE identity as Istio issues them, borrowed from its URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpiffeId<'a> {
    pub trust_domain: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
}

impl fmt::Display for SpiffeId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SPIFFE_PREFIX}{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

/// `spiffe://<td>/ns/<ns>/sa/<sa>` (istio `pkg/spiffe` `Identity.String`).
pub fn spiffe_uri(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    SpiffeId { trust_domain, namespace, service_account }.to_string()
}

/// Parses `spiffe://<td>/ns/<ns>/sa/<sa>` (istio `pkg/spiffe`
/// `ParseIdentity`, but no part may be empty); None for anything else.
pub fn parse_spiffe(uri: &str) -> Option<SpiffeId<'_>> {
    let mut it = uri.strip_prefix(SPIFFE_PREFIX)?.split('/');
    let (trust_domain, ns, namespace, sa, service_account) =
        (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || ns != "ns" || sa != "sa" {
        return None;
    }
    if trust_domain.is_empty() || namespace.is_empty() || service_account.is_empty() {
        return None;
    }
    Some(SpiffeId { trust_domain, namespace, service_account })
}

/// The trust domain of any `spiffe://` URI (the authority, up to the first
/// `/`; empty when there is none), whatever its path; None without the scheme.
pub fn spiffe_trust_domain(uri: &str) -> Option<&str> {
    uri.strip_prefix(SPIFFE_PREFIX).map(|rest| rest.split('/').next().unwrap_or_default())
}

/// Whether `uri` is a SPIFFE ID of `trust_domain` (any path).
pub fn in_trust_domain(uri: &str, trust_domain: &str) -> bool {
    uri.strip_prefix(SPIFFE_PREFIX)
        .and_then(|rest| rest.strip_prefix(trust_domain))
        .is_some_and(|rest| rest.starts_with('/'))
}

/// One key of an endpoint's `metadata.filter_metadata`: the filter's
/// namespace and the key in its struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MetadataKey {
    pub filter: &'static str,
    pub key: &'static str,
}

/// Endpoint metadata keys of Istio's EDS. `tlsMode` and `workload` are
/// istiod's (istio `pilot/pkg/networking/util/util.go`,
/// `AppendLbEndpointMetadata`); `service_account` (the identity an endpoint
/// must present) is what pymesh's control plane adds beside them.
pub mod metadata {
    use super::MetadataKey;

    /// `envoy.transport_socket_match` `tlsMode`: [`super::TLS_MODE_ISTIO`]
    /// for an endpoint with a sidecar, which takes Istio mTLS.
    pub const TLS_MODE: MetadataKey = MetadataKey { filter: "envoy.transport_socket_match", key: "tlsMode" };
    /// `istio` `service_account`: a SPIFFE URI or a bare service account.
    pub const SERVICE_ACCOUNT: MetadataKey = MetadataKey { filter: "istio", key: "service_account" };
    /// The lowerCamelCase spelling of [`SERVICE_ACCOUNT`]'s key, also read.
    pub const SERVICE_ACCOUNT_CAMEL: MetadataKey = MetadataKey { filter: "istio", key: "serviceAccount" };
    /// `istio` `workload`: `name;namespace;canonical-service;canonical-revision;cluster`.
    pub const WORKLOAD: MetadataKey = MetadataKey { filter: "istio", key: "workload" };
    /// `istio` `network`.
    pub const NETWORK: MetadataKey = MetadataKey { filter: "istio", key: "network" };
}

/// The `tlsMode` of an endpoint that takes Istio mTLS (istio
/// `pkg/model` `IstioMutualTLSModeLabel`).
pub const TLS_MODE_ISTIO: &str = "istio";

/// The namespace field of an `istio.workload` value (`name;namespace;...`);
/// empty when there is none.
pub fn workload_namespace(workload: &str) -> &str {
    workload.split(';').nth(1).unwrap_or_default()
}

/// ALPN of Istio mTLS.
pub mod alpn {
    /// What a sidecar offers on in-mesh TCP (istio
    /// `pilot/pkg/networking/util/util.go`, `ALPNInMeshWithMxc`).
    pub const OUTBOUND_TCP: [&str; 2] = [PEER_EXCHANGE, "istio"];
    /// Istio's TCP metadata exchange (istio/proxy `metadata_exchange`).
    pub const PEER_EXCHANGE: &str = "istio-peer-exchange";
    /// What the inbound negotiates, in preference order: as Envoy's
    /// inbound TLS context lists them (istio `pilot/pkg/networking/util`,
    /// `ALPNDownstreamWithMxc`: metadata exchange, which the relay speaks
    /// (`relay::mx`), then h2 and http/1.1, so a sidecar offering Istio's
    /// HTTP values, which include `h2` or `http/1.1`, gets the HTTP path),
    /// then `istio` and Istio's HTTP values themselves (istio
    /// `pilot/pkg/networking/core/listener.go`, `allIstioMtlsALPNs`) for
    /// clients offering only those.
    pub const INBOUND: [&str; 7] =
        [PEER_EXCHANGE, "h2", "http/1.1", "istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"];
    /// What a sidecar offers for HTTP/2 over mTLS (istio
    /// `pilot/pkg/xds/filters/filters.go`, `mtlsHTTP2ALPN`, set by the
    /// `istio.alpn` filter).
    pub const HTTP_H2: [&str; 3] = ["istio-h2", "istio", "h2"];
    /// HTTP/1.1 over mTLS (`mtlsHTTP11ALPN`, as above).
    pub const HTTP_11: [&str; 3] = ["istio-http/1.1", "istio", "http/1.1"];
    /// HTTP/1.0 over mTLS (`mtlsHTTP10ALPN`, as above).
    pub const HTTP_10: [&str; 3] = ["istio-http/1.0", "istio", "http/1.0"];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_round_trip_and_strict_parts_are_refused() {
        let c = parse_cluster_name("outbound|9080|v1|reviews.default.svc.cluster.local").unwrap();
        assert_eq!(
            c,
            ClusterName {
                direction: Direction::Outbound,
                port: 9080,
                subset: "v1",
                host: "reviews.default.svc.cluster.local"
            }
        );
        assert_eq!(c.cluster_name(), "outbound|9080|v1|reviews.default.svc.cluster.local");
        assert_eq!(c.sni(), "outbound_.9080_.v1_.reviews.default.svc.cluster.local");
        assert_eq!(parse_sni(&c.sni()), Some(c));
        for bad in [
            "outbound|x80||h",
            "outbound|0||h",
            "outbound|65536||h",
            "outbound|80||",
            "Outbound|80||h",
            "outbound|80|a|b|c",
        ] {
            assert_eq!(parse_cluster_name(bad), None, "{bad}");
        }
        assert_eq!(outbound_sni("inbound|80||h"), None);
        assert_eq!(outbound_sni("outbound|80||h").as_deref(), Some("outbound_.80_._.h"));
    }

    #[test]
    fn spiffe_ids_format_and_parse() {
        let id = parse_spiffe("spiffe://cluster.local/ns/default/sa/product").unwrap();
        assert_eq!((id.trust_domain, id.namespace, id.service_account), ("cluster.local", "default", "product"));
        assert_eq!(id.to_string(), spiffe_uri("cluster.local", "default", "product"));
        assert_eq!(parse_spiffe("spiffe://td/ns//sa/x"), None);
        assert_eq!(spiffe_trust_domain("spiffe://td.example/anything"), Some("td.example"));
        assert!(in_trust_domain("spiffe://td/x", "td") && !in_trust_domain("spiffe://tdx/x", "td"));
    }
}
