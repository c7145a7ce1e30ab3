//! Route tables compiled from RouteConfigurations ([`super::config`]), and
//! how a request finds its route, as Envoy's router does
//! (envoy `source/common/router/config_impl.cc`, route_components.proto):
//!
//! - the virtual host by the request's host (`:authority` or `Host`, port
//!   dropped: istiod sets `ignore_port_in_host_matching`), lowercased:
//!   an exact domain first, then suffix wildcards (`*.example.com`,
//!   `*-bar.example.com`), then prefix wildcards (`example.*`), the longest
//!   first, then `*`; a wildcard stands for at least one character;
//! - the first route of that host whose match passes: path (`prefix`,
//!   `path`, `safe_regex` on the whole path, `path_separated_prefix`; the
//!   query string excluded; `case_sensitive` defaults to true), every header
//!   matcher (the values of a repeated header joined with `,`; pseudo
//!   headers `:method`, `:authority`, `:scheme`, `:path` readable),
//!   every query parameter matcher, `grpc` (content type
//!   `application/grpc...`) and `runtime_fraction` (a share of requests).
//!
//! Everything is checked when the table is built; a request never meets a
//! malformed value. Errors name the route configuration, the virtual host
//! and route by index and name, and the field.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use regex::Regex;

use super::config as wire;
use crate::error::{Error, Result};

/// Per million, Envoy's finest fraction.
pub const MILLION: u32 = 1_000_000;

/// Every HTTP port's routes, and the destinations that stay TCP on them.
#[derive(Debug, Default)]
pub struct HttpRoutes {
    ports: HashMap<u16, Arc<PortRoutes>>,
    /// `<VIP>_<port>` TCP listeners on a port that also has HTTP routes
    /// (istiod's VIP listener wins over `0.0.0.0_<port>` in Envoy's
    /// listener match): these destinations keep the L4 path.
    tcp: HashSet<SocketAddr>,
}

impl HttpRoutes {
    /// Compiles `(listener port, RouteConfiguration JSON)` pairs; `tcp`: the
    /// destinations that stay on the L4 path.
    pub fn build(items: &[(u16, &str)], tcp: &[SocketAddr]) -> Result<HttpRoutes> {
        let mut ports = HashMap::new();
        for (port, json) in items {
            let rc: wire::RouteConfiguration =
                serde_json::from_str(json).map_err(|e| Error::config(format!("routes[port {port}]"), e))?;
            let compiled = PortRoutes::compile(&rc).map_err(|e| match e {
                Error::InvalidConfig { field, reason } => Error::InvalidConfig {
                    field: format!("route configuration {:?} (port {port}): {field}", rc.name),
                    reason,
                },
                other => other,
            })?;
            if ports.insert(*port, Arc::new(compiled)).is_some() {
                return Err(Error::config(format!("routes[port {port}]"), "port given twice"));
            }
        }
        Ok(HttpRoutes { ports, tcp: tcp.iter().copied().collect() })
    }

    /// The routes of a destination port, unless the destination stays TCP.
    pub fn for_destination(&self, orig: SocketAddr) -> Option<&Arc<PortRoutes>> {
        if self.tcp.contains(&orig) {
            return None;
        }
        self.ports.get(&orig.port())
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.ports.keys().copied().collect();
        p.sort_unstable();
        p
    }
}

/// One RouteConfiguration.
#[derive(Debug)]
pub struct PortRoutes {
    pub name: String,
    pub vhosts: Vec<VirtualHost>,
    exact: HashMap<String, usize>,
    /// `*<suffix>` domains, longest suffix first.
    suffix: Vec<(String, usize)>,
    /// `<prefix>*` domains, longest prefix first.
    prefix: Vec<(String, usize)>,
    any: Option<usize>,
    pub request_ops: HeaderOps,
    pub response_ops: HeaderOps,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    pub routes: Vec<Route>,
    pub request_ops: HeaderOps,
    pub response_ops: HeaderOps,
    pub retry: Option<RetrySpec>,
    pub attempt_count: bool,
    pub fault: Option<Fault>,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatch>,
    query: Vec<QueryMatch>,
    grpc: bool,
    /// Matches this share of requests (per million); None: all.
    fraction: Option<u32>,
    pub action: Action,
    pub request_ops: HeaderOps,
    pub response_ops: HeaderOps,
    pub fault: Option<Fault>,
}

#[derive(Debug)]
enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Regex),
    Separated(String),
}

#[derive(Debug)]
enum StrMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

#[derive(Debug)]
enum ValueMatch {
    Present(bool),
    Str { m: StrMatch, ignore_case: bool },
}

#[derive(Debug)]
struct HeaderMatch {
    name: String,
    value: ValueMatch,
    invert: bool,
    missing_as_empty: bool,
}

#[derive(Debug)]
struct QueryMatch {
    name: String,
    value: ValueMatch,
}

#[derive(Debug)]
pub enum Action {
    Forward(Forward),
    Redirect(Redirect),
    Direct { status: u16, body: Bytes },
}

#[derive(Debug)]
pub struct Forward {
    pub targets: Vec<Target>,
    total: u64,
    /// None: no timeout (istiod's `0s`).
    pub timeout: Option<Duration>,
    /// None: the virtual host's, else Envoy's default (one retry on
    /// nothing: no retries).
    pub retry: Option<RetrySpec>,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: Option<HeaderValue>,
    pub mirrors: Vec<Mirror>,
    pub hash: Vec<HashSpec>,
}

#[derive(Debug)]
pub struct Target {
    pub cluster: String,
    pub weight: u64,
    pub request_ops: HeaderOps,
    pub response_ops: HeaderOps,
}

#[derive(Debug)]
pub struct Mirror {
    pub cluster: String,
    /// Per million.
    pub fraction: u32,
}

#[derive(Debug, Clone)]
pub enum HashSpec {
    Header(HeaderName),
    Cookie(String),
    SourceIp,
    Query(String),
}

#[derive(Debug)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub status: u16,
    pub strip_query: bool,
}

/// Retry conditions (Envoy's `x-envoy-retry-on` / `x-envoy-retry-grpc-on`
/// values, router_filter.rst).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(u32);

impl RetryOn {
    pub const FIVE_XX: RetryOn = RetryOn(1);
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    pub const RESET: RetryOn = RetryOn(1 << 2);
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 3);
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 4);
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 5);
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 6);
    pub const RESET_BEFORE_REQUEST: RetryOn = RetryOn(1 << 7);
    pub const ENVOY_RATELIMITED: RetryOn = RetryOn(1 << 8);
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 9);
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 10);
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 11);
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 12);
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 13);
    /// Accepted and never true here (no header matchers for retries).
    const IGNORED: RetryOn = RetryOn(0);

    pub fn has(self, f: RetryOn) -> bool {
        self.0 & f.0 != 0
    }

    fn parse(s: &str) -> std::result::Result<RetryOn, String> {
        let mut on = RetryOn(0);
        for tok in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let f = match tok {
                "5xx" => Self::FIVE_XX,
                "gateway-error" => Self::GATEWAY_ERROR,
                "reset" => Self::RESET,
                "connect-failure" => Self::CONNECT_FAILURE,
                "retriable-4xx" => Self::RETRIABLE_4XX,
                "refused-stream" => Self::REFUSED_STREAM,
                "retriable-status-codes" => Self::RETRIABLE_STATUS_CODES,
                "reset-before-request" => Self::RESET_BEFORE_REQUEST,
                "envoy-ratelimited" => Self::ENVOY_RATELIMITED,
                "cancelled" => Self::GRPC_CANCELLED,
                "deadline-exceeded" => Self::GRPC_DEADLINE_EXCEEDED,
                "internal" => Self::GRPC_INTERNAL,
                "resource-exhausted" => Self::GRPC_RESOURCE_EXHAUSTED,
                "unavailable" => Self::GRPC_UNAVAILABLE,
                "retriable-headers" | "http3-post-connect-failure" => Self::IGNORED,
                other => return Err(format!("unknown retry condition {other:?}")),
            };
            on.0 |= f.0;
        }
        Ok(on)
    }
}

#[derive(Debug, Clone)]
pub struct RetrySpec {
    pub num_retries: u32,
    pub on: RetryOn,
    pub statuses: Vec<u16>,
    pub per_try: Option<Duration>,
    pub previous_hosts: bool,
    pub host_attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl RetrySpec {
    /// Envoy's route without a retry policy: no retries.
    pub const NONE: RetrySpec = RetrySpec {
        num_retries: 0,
        on: RetryOn(0),
        statuses: Vec::new(),
        per_try: None,
        previous_hosts: false,
        host_attempts: 1,
        base: Duration::from_millis(25),
        max: Duration::from_millis(250),
    };
}

#[derive(Debug, Clone)]
pub struct Fault {
    pub delay: Option<(Duration, u32)>,
    /// HTTP status or gRPC status, and the share (per million).
    pub abort: Option<(Abort, u32)>,
}

#[derive(Debug, Clone, Copy)]
pub enum Abort {
    Http(u16),
    Grpc(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Append {
    AppendOrAdd,
    AddIfAbsent,
    OverwriteOrAdd,
    OverwriteIfExists,
}

#[derive(Debug, Default, Clone)]
pub struct HeaderOps {
    pub add: Vec<(HeaderName, HeaderValue, Append)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Removes, then adds (Envoy's order for one level).
    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v, how) in &self.add {
            match how {
                Append::AppendOrAdd => {
                    h.append(n.clone(), v.clone());
                }
                Append::AddIfAbsent => {
                    if !h.contains_key(n) {
                        h.insert(n.clone(), v.clone());
                    }
                }
                Append::OverwriteOrAdd => {
                    h.insert(n.clone(), v.clone());
                }
                Append::OverwriteIfExists => {
                    if h.contains_key(n) {
                        h.insert(n.clone(), v.clone());
                    }
                }
            }
        }
    }
}

/// What a route is matched against.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub authority: &'a str,
    pub scheme: &'a str,
    /// The path and query as received (`:path`).
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
}

impl RequestView<'_> {
    fn path(&self) -> &str {
        self.path_and_query.split_once('?').map_or(self.path_and_query, |(p, _)| p)
    }

    fn query(&self) -> &str {
        self.path_and_query.split_once('?').map_or("", |(_, q)| q)
    }

    /// A header's value, repeated values joined with `,` (Envoy's
    /// `HeaderUtility::getAllOfHeaderAsString`); pseudo headers from the
    /// request line.
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        match name {
            ":method" => return Some(Cow::Borrowed(self.method)),
            ":authority" | "host" if !self.authority.is_empty() => return Some(Cow::Borrowed(self.authority)),
            ":scheme" => return Some(Cow::Borrowed(self.scheme)),
            ":path" => return Some(Cow::Borrowed(self.path_and_query)),
            _ => {}
        }
        let mut values = self.headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()));
        let first = values.next()?;
        let mut rest = values.peekable();
        if rest.peek().is_none() {
            return Some(first);
        }
        let mut joined = first.into_owned();
        for v in rest {
            joined.push(',');
            joined.push_str(&v);
        }
        Some(Cow::Owned(joined))
    }
}

fn field_err(field: impl Into<String>, reason: impl std::fmt::Display) -> Error {
    Error::InvalidConfig { field: field.into(), reason: reason.to_string() }
}

/// A proto3 JSON duration (`"1.500s"`), at most 10 years.
pub fn duration(s: &str, field: &str) -> Result<Duration> {
    let secs = s
        .strip_suffix('s')
        .and_then(|n| n.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0 && *v <= 315_360_000.0)
        .ok_or_else(|| field_err(field, format!("not a duration: {s:?}")))?;
    Ok(Duration::from_secs_f64(secs))
}

fn per_million(p: &wire::FractionalPercent, field: &str) -> Result<u32> {
    let scale = match p.denominator.as_deref().unwrap_or("HUNDRED") {
        "HUNDRED" => 10_000,
        "TEN_THOUSAND" => 100,
        "MILLION" => 1,
        other => return Err(field_err(format!("{field}.denominator"), format!("unknown denominator {other:?}"))),
    };
    Ok(p.numerator.saturating_mul(scale).min(MILLION))
}

/// Envoy's safe_regex matches the whole value.
fn full_regex(re: &str, field: &str) -> Result<Regex> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| field_err(field, format!("invalid regex {re:?}: {e}")))
}

fn header_name(n: &str, field: &str) -> Result<HeaderName> {
    HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
        .map_err(|_| field_err(field, format!("not a header name: {n:?}")))
}

fn header_ops(add: &[wire::HeaderValueOption], remove: &[String], field: &str) -> Result<HeaderOps> {
    let mut ops = HeaderOps::default();
    for (i, o) in add.iter().enumerate() {
        let f = format!("{field}.request_headers_to_add[{i}]");
        let name = header_name(&o.header.key, &f)?;
        if name.as_str().starts_with(':') || name == http::header::HOST {
            return Err(field_err(f, "pseudo headers and host cannot be set here"));
        }
        let value = HeaderValue::from_str(&o.header.value).map_err(|_| field_err(&f, "not a header value"))?;
        let how = match (o.append_action.as_deref(), o.append) {
            (Some("APPEND_IF_EXISTS_OR_ADD"), _) | (None, Some(true)) | (None, None) => Append::AppendOrAdd,
            (Some("ADD_IF_ABSENT"), _) => Append::AddIfAbsent,
            (Some("OVERWRITE_IF_EXISTS_OR_ADD"), _) | (None, Some(false)) => Append::OverwriteOrAdd,
            (Some("OVERWRITE_IF_EXISTS"), _) => Append::OverwriteIfExists,
            (Some(other), _) => return Err(field_err(f, format!("unknown append_action {other:?}"))),
        };
        ops.add.push((name, value, how));
    }
    for (i, n) in remove.iter().enumerate() {
        ops.remove.push(header_name(n, &format!("{field}.request_headers_to_remove[{i}]"))?);
    }
    Ok(ops)
}

fn response_ops(add: &[wire::HeaderValueOption], remove: &[String], field: &str) -> Result<HeaderOps> {
    header_ops(add, remove, &format!("{field}(response)"))
}

fn str_match(m: &wire::StringMatcher, field: &str) -> Result<StrMatch> {
    let got = [m.exact.is_some(), m.prefix.is_some(), m.suffix.is_some(), m.contains.is_some(), m.safe_regex.is_some()];
    if got.iter().filter(|x| **x).count() != 1 {
        return Err(field_err(field, "exactly one of exact, prefix, suffix, contains, safe_regex"));
    }
    let lower = |s: &String| if m.ignore_case { s.to_lowercase() } else { s.clone() };
    Ok(if let Some(s) = &m.exact {
        StrMatch::Exact(lower(s))
    } else if let Some(s) = &m.prefix {
        StrMatch::Prefix(lower(s))
    } else if let Some(s) = &m.suffix {
        StrMatch::Suffix(lower(s))
    } else if let Some(s) = &m.contains {
        StrMatch::Contains(lower(s))
    } else {
        let re = m.safe_regex.as_ref().map(|r| r.regex.as_str()).unwrap_or_default();
        StrMatch::Regex(full_regex(re, &format!("{field}.safe_regex"))?)
    })
}

impl StrMatch {
    fn matches(&self, v: &str, ignore_case: bool) -> bool {
        if let StrMatch::Regex(re) = self {
            return re.is_match(v);
        }
        let owned;
        let v = if ignore_case {
            owned = v.to_lowercase();
            owned.as_str()
        } else {
            v
        };
        match self {
            StrMatch::Exact(s) => v == s,
            StrMatch::Prefix(s) => v.starts_with(s.as_str()),
            StrMatch::Suffix(s) => v.ends_with(s.as_str()),
            StrMatch::Contains(s) => v.contains(s.as_str()),
            StrMatch::Regex(_) => false,
        }
    }
}

fn header_match(h: &wire::HeaderMatcher, field: &str) -> Result<HeaderMatch> {
    let name = h.name.to_ascii_lowercase();
    if name.is_empty() {
        return Err(field_err(field, "header matcher without a name"));
    }
    let s = |v: &String, m: fn(String) -> StrMatch| ValueMatch::Str { m: m(v.clone()), ignore_case: false };
    let value = if let Some(v) = &h.exact_match {
        s(v, StrMatch::Exact)
    } else if let Some(v) = &h.prefix_match {
        s(v, StrMatch::Prefix)
    } else if let Some(v) = &h.suffix_match {
        s(v, StrMatch::Suffix)
    } else if let Some(v) = &h.contains_match {
        s(v, StrMatch::Contains)
    } else if let Some(r) = &h.safe_regex_match {
        ValueMatch::Str {
            m: StrMatch::Regex(full_regex(&r.regex, &format!("{field}.safe_regex_match"))?),
            ignore_case: false,
        }
    } else if let Some(m) = &h.string_match {
        ValueMatch::Str { m: str_match(m, &format!("{field}.string_match"))?, ignore_case: m.ignore_case }
    } else if h.range_match.is_some() {
        return Err(field_err(format!("{field}.range_match"), "not supported"));
    } else {
        // No specifier (or present_match): the header's presence.
        ValueMatch::Present(h.present_match.unwrap_or(true))
    };
    Ok(HeaderMatch { name, value, invert: h.invert_match, missing_as_empty: h.treat_missing_header_as_empty })
}

impl HeaderMatch {
    fn matches(&self, req: &RequestView<'_>) -> bool {
        let got = req.header(&self.name);
        let hit = match (&self.value, got) {
            (ValueMatch::Present(want), got) => got.is_some() == *want,
            (ValueMatch::Str { m, ignore_case }, Some(v)) => m.matches(&v, *ignore_case),
            (ValueMatch::Str { m, ignore_case }, None) if self.missing_as_empty => m.matches("", *ignore_case),
            // A value matcher never matches a missing header, inverted or
            // not (Envoy's HeaderUtility::matchHeaders).
            (ValueMatch::Str { .. }, None) => return false,
        };
        hit != self.invert
    }
}

impl QueryMatch {
    fn matches(&self, query: &str) -> bool {
        let found = query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == self.name).then_some(v)
        });
        match (&self.value, found) {
            (ValueMatch::Present(want), f) => f.is_some() == *want,
            (ValueMatch::Str { m, ignore_case }, Some(v)) => m.matches(v, *ignore_case),
            (ValueMatch::Str { .. }, None) => false,
        }
    }
}

fn retry_spec(p: &wire::RetryPolicy, field: &str) -> Result<RetrySpec> {
    let on = RetryOn::parse(&p.retry_on).map_err(|e| field_err(format!("{field}.retry_on"), e))?;
    let mut statuses = Vec::new();
    for (i, s) in p.retriable_status_codes.iter().enumerate() {
        match u16::try_from(*s) {
            Ok(s) if (100..600).contains(&s) => statuses.push(s),
            _ => return Err(field_err(format!("{field}.retriable_status_codes[{i}]"), format!("not a status: {s}"))),
        }
    }
    let per_try = match &p.per_try_timeout {
        Some(t) => Some(duration(t, &format!("{field}.per_try_timeout"))?).filter(|d| !d.is_zero()),
        None => None,
    };
    let previous_hosts = p
        .retry_host_predicate
        .iter()
        .any(|v| v.get("name").and_then(|n| n.as_str()) == Some("envoy.retry_host_predicates.previous_hosts"));
    let host_attempts = match &p.host_selection_retry_max_attempts {
        Some(s) => s.parse::<i64>().map_err(|_| field_err(format!("{field}.host_selection_retry_max_attempts"), s))?,
        None => 1,
    };
    let (mut base, mut max) = (Duration::from_millis(25), None);
    if let Some(b) = &p.retry_back_off {
        if let Some(t) = &b.base_interval {
            base = duration(t, &format!("{field}.retry_back_off.base_interval"))?;
            if base.is_zero() {
                return Err(field_err(format!("{field}.retry_back_off.base_interval"), "must be > 0"));
            }
        }
        if let Some(t) = &b.max_interval {
            max = Some(duration(t, &format!("{field}.retry_back_off.max_interval"))?);
        }
    }
    let max = max.unwrap_or(base * 10);
    if max < base {
        return Err(field_err(format!("{field}.retry_back_off.max_interval"), "less than base_interval"));
    }
    Ok(RetrySpec {
        // Envoy: num_retries defaults to 1.
        num_retries: p.num_retries.unwrap_or(1),
        on,
        statuses,
        per_try,
        previous_hosts,
        host_attempts: host_attempts.clamp(1, 16) as u32,
        base,
        max,
    })
}

const FAULT_FILTER: &str = "envoy.filters.http.fault";

fn fault(per_filter: &std::collections::BTreeMap<String, serde_json::Value>, field: &str) -> Result<Option<Fault>> {
    let Some(v) = per_filter.get(FAULT_FILTER) else { return Ok(None) };
    let field = format!("{field}.typed_per_filter_config[{FAULT_FILTER:?}]");
    let f: wire::HttpFault = serde_json::from_value(v.clone()).map_err(|e| field_err(&field, e))?;
    let delay = match &f.delay {
        None => None,
        Some(d) => {
            if d.header_delay.is_some() {
                return Err(field_err(format!("{field}.delay.header_delay"), "not supported"));
            }
            let t = d.fixed_delay.as_deref().ok_or_else(|| field_err(format!("{field}.delay"), "no fixed_delay"))?;
            let share = match &d.percentage {
                Some(p) => per_million(p, &format!("{field}.delay.percentage"))?,
                None => MILLION,
            };
            Some((duration(t, &format!("{field}.delay.fixed_delay"))?, share))
        }
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            if a.header_abort.is_some() {
                return Err(field_err(format!("{field}.abort.header_abort"), "not supported"));
            }
            let what = match (a.http_status, a.grpc_status) {
                (Some(s), None) => match u16::try_from(s) {
                    Ok(s) if (200..600).contains(&s) => Abort::Http(s),
                    _ => return Err(field_err(format!("{field}.abort.http_status"), format!("not a status: {s}"))),
                },
                (None, Some(g)) => Abort::Grpc(g),
                _ => return Err(field_err(format!("{field}.abort"), "exactly one of http_status, grpc_status")),
            };
            let share = match &a.percentage {
                Some(p) => per_million(p, &format!("{field}.abort.percentage"))?,
                None => MILLION,
            };
            Some((what, share))
        }
    };
    Ok(Some(Fault { delay, abort }))
}

fn redirect_status(code: Option<&str>, field: &str) -> Result<u16> {
    Ok(match code.unwrap_or("MOVED_PERMANENTLY") {
        "MOVED_PERMANENTLY" => 301,
        "FOUND" => 302,
        "SEE_OTHER" => 303,
        "TEMPORARY_REDIRECT" => 307,
        "PERMANENT_REDIRECT" => 308,
        other => return Err(field_err(format!("{field}.response_code"), format!("unknown {other:?}"))),
    })
}

fn forward(a: &wire::RouteAction, field: &str) -> Result<Forward> {
    if a.cluster_header.is_some() || a.cluster_specifier_plugin.is_some() {
        return Err(field_err(field, "cluster_header and cluster_specifier_plugin are not supported"));
    }
    let mut targets = Vec::new();
    match (&a.cluster, &a.weighted_clusters) {
        (Some(c), None) if !c.is_empty() => targets.push(Target {
            cluster: c.clone(),
            weight: 1,
            request_ops: HeaderOps::default(),
            response_ops: HeaderOps::default(),
        }),
        (None, Some(w)) => {
            for (i, c) in w.clusters.iter().enumerate() {
                let f = format!("{field}.weighted_clusters.clusters[{i}]");
                if c.name.is_empty() {
                    return Err(field_err(f, "no cluster name"));
                }
                targets.push(Target {
                    cluster: c.name.clone(),
                    weight: u64::from(c.weight.unwrap_or(0)),
                    request_ops: header_ops(&c.request_headers_to_add, &c.request_headers_to_remove, &f)?,
                    response_ops: response_ops(&c.response_headers_to_add, &c.response_headers_to_remove, &f)?,
                });
            }
        }
        _ => return Err(field_err(field, "exactly one of cluster, weighted_clusters")),
    }
    let total: u64 = targets.iter().map(|t| t.weight).sum();
    if total == 0 {
        return Err(field_err(format!("{field}.weighted_clusters"), "weights sum to 0"));
    }
    let timeout = match &a.timeout {
        Some(t) => Some(duration(t, &format!("{field}.timeout"))?).filter(|d| !d.is_zero()),
        // Envoy's default route timeout is 15 s; istiod always sets one.
        None => Some(Duration::from_secs(15)),
    };
    let retry = a.retry_policy.as_ref().map(|p| retry_spec(p, &format!("{field}.retry_policy"))).transpose()?;
    // Envoy's regex_rewrite replaces every match in the path (RE2's
    // GlobalReplace): the pattern is not anchored.
    let regex_rewrite = match &a.regex_rewrite {
        Some(r) => {
            let re = regex::RegexBuilder::new(&r.pattern.regex).size_limit(1 << 20).build().map_err(|e| {
                field_err(format!("{field}.regex_rewrite"), format!("invalid regex {:?}: {e}", r.pattern.regex))
            })?;
            Some((re, r.substitution.clone()))
        }
        None => None,
    };
    let host_rewrite = match &a.host_rewrite_literal {
        Some(h) => Some(HeaderValue::from_str(h).map_err(|_| field_err(format!("{field}.host_rewrite_literal"), h))?),
        None => None,
    };
    let mut mirrors = Vec::new();
    for (i, m) in a.request_mirror_policies.iter().enumerate() {
        let f = format!("{field}.request_mirror_policies[{i}]");
        if m.cluster.is_empty() {
            return Err(field_err(f, "no cluster"));
        }
        let fraction = match &m.runtime_fraction {
            Some(r) => per_million(&r.default_value, &format!("{f}.runtime_fraction"))?,
            None => MILLION,
        };
        mirrors.push(Mirror { cluster: m.cluster.clone(), fraction });
    }
    let mut hash = Vec::new();
    for (i, h) in a.hash_policy.iter().enumerate() {
        let f = format!("{field}.hash_policy[{i}]");
        hash.push(if let Some(hd) = &h.header {
            HashSpec::Header(header_name(&hd.header_name, &f)?)
        } else if let Some(c) = &h.cookie {
            HashSpec::Cookie(c.name.clone())
        } else if h.connection_properties.as_ref().is_some_and(|c| c.source_ip) {
            HashSpec::SourceIp
        } else if let Some(q) = &h.query_parameter {
            HashSpec::Query(q.name.clone())
        } else {
            return Err(field_err(f, "no supported hash policy (header, cookie, source_ip, query_parameter)"));
        });
    }
    Ok(Forward {
        targets,
        total,
        timeout,
        retry,
        prefix_rewrite: a.prefix_rewrite.clone(),
        regex_rewrite,
        host_rewrite,
        mirrors,
        hash,
    })
}

impl Forward {
    /// The weighted target for a uniform draw `r`.
    pub fn target(&self, r: u64) -> &Target {
        let mut at = r % self.total;
        for t in &self.targets {
            if at < t.weight {
                return t;
            }
            at -= t.weight;
        }
        &self.targets[self.targets.len() - 1]
    }
}

fn route(r: &wire::Route, field: &str) -> Result<Route> {
    let m = &r.matcher;
    let specs = [m.prefix.is_some(), m.path.is_some(), m.safe_regex.is_some(), m.path_separated_prefix.is_some()];
    if m.connect_matcher.is_some() || m.path_match_policy.is_some() {
        return Err(field_err(format!("{field}.match"), "connect_matcher and path_match_policy are not supported"));
    }
    let path = match specs.iter().filter(|x| **x).count() {
        // An empty match object is prefix "" in proto3 JSON (the default
        // oneof member is not written).
        0 => PathMatch::Prefix(String::new()),
        1 => {
            if let Some(p) = &m.prefix {
                PathMatch::Prefix(p.clone())
            } else if let Some(p) = &m.path {
                PathMatch::Exact(p.clone())
            } else if let Some(re) = &m.safe_regex {
                PathMatch::Regex(full_regex(&re.regex, &format!("{field}.match.safe_regex"))?)
            } else {
                PathMatch::Separated(m.path_separated_prefix.clone().unwrap_or_default())
            }
        }
        _ => return Err(field_err(format!("{field}.match"), "more than one path specifier")),
    };
    let case_sensitive = m.case_sensitive.unwrap_or(true);
    let path = match path {
        PathMatch::Prefix(p) if !case_sensitive => PathMatch::Prefix(p.to_lowercase()),
        PathMatch::Exact(p) if !case_sensitive => PathMatch::Exact(p.to_lowercase()),
        PathMatch::Separated(p) if !case_sensitive => PathMatch::Separated(p.to_lowercase()),
        other => other,
    };
    let mut headers = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        headers.push(header_match(h, &format!("{field}.match.headers[{i}]"))?);
    }
    let mut query = Vec::new();
    for (i, q) in m.query_parameters.iter().enumerate() {
        let f = format!("{field}.match.query_parameters[{i}]");
        let value = match (&q.string_match, q.present_match) {
            (Some(s), _) => {
                ValueMatch::Str { m: str_match(s, &format!("{f}.string_match"))?, ignore_case: s.ignore_case }
            }
            (None, Some(p)) => ValueMatch::Present(p),
            (None, None) => ValueMatch::Present(true),
        };
        query.push(QueryMatch { name: q.name.clone(), value });
    }
    let fraction = match &m.runtime_fraction {
        Some(rf) => Some(per_million(&rf.default_value, &format!("{field}.match.runtime_fraction"))?),
        None => None,
    };
    if r.non_forwarding_action.is_some() || r.filter_action.is_some() {
        return Err(field_err(field, "non_forwarding_action and filter_action are not supported"));
    }
    let action = match (&r.route, &r.redirect, &r.direct_response) {
        (Some(a), None, None) => Action::Forward(forward(a, &format!("{field}.route"))?),
        (None, Some(rd), None) => {
            let f = format!("{field}.redirect");
            let scheme = if rd.https_redirect { Some("https".to_owned()) } else { rd.scheme_redirect.clone() };
            let port = match rd.port_redirect {
                None | Some(0) => None,
                Some(p) => Some(u16::try_from(p).map_err(|_| field_err(format!("{f}.port_redirect"), p))?),
            };
            if rd.path_redirect.is_some() && rd.prefix_rewrite.is_some() {
                return Err(field_err(f, "both path_redirect and prefix_rewrite"));
            }
            Action::Redirect(Redirect {
                scheme,
                host: rd.host_redirect.clone(),
                port,
                path: rd.path_redirect.clone(),
                prefix_rewrite: rd.prefix_rewrite.clone(),
                status: redirect_status(rd.response_code.as_deref(), &f)?,
                strip_query: rd.strip_query,
            })
        }
        (None, None, Some(d)) => {
            let f = format!("{field}.direct_response");
            let status = match u16::try_from(d.status) {
                Ok(s) if (200..600).contains(&s) => s,
                _ => return Err(field_err(format!("{f}.status"), format!("not a status: {}", d.status))),
            };
            let body = match &d.body {
                None => Bytes::new(),
                Some(b) => match (&b.inline_string, &b.inline_bytes) {
                    (Some(s), _) => Bytes::from(s.clone()),
                    (None, Some(b64)) => Bytes::from(
                        base64_decode(b64).ok_or_else(|| field_err(format!("{f}.body.inline_bytes"), "not base64"))?,
                    ),
                    (None, None) => return Err(field_err(format!("{f}.body"), "only inline bodies are supported")),
                },
            };
            if body.len() > 1 << 20 {
                return Err(field_err(format!("{f}.body"), "larger than 1 MiB"));
            }
            Action::Direct { status, body }
        }
        _ => return Err(field_err(field, "exactly one of route, redirect, direct_response")),
    };
    Ok(Route {
        name: r.name.clone(),
        path,
        case_sensitive,
        headers,
        query,
        grpc: m.grpc.is_some(),
        fraction,
        action,
        request_ops: header_ops(&r.request_headers_to_add, &r.request_headers_to_remove, field)?,
        response_ops: response_ops(&r.response_headers_to_add, &r.response_headers_to_remove, field)?,
        fault: fault(&r.typed_per_filter_config, field)?,
    })
}

/// Standard base64 (RFC 4648 §4), as proto3 JSON writes `bytes`.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        let take = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend_from_slice(&n.to_be_bytes()[1..=take]);
    }
    Some(out)
}

impl Route {
    /// Whether the request matches; `draw` is a uniform draw below
    /// [`MILLION`] for `runtime_fraction`.
    pub fn matches(&self, req: &RequestView<'_>, draw: u32) -> bool {
        let path = req.path();
        let lowered;
        let path = if self.case_sensitive {
            path
        } else {
            lowered = path.to_lowercase();
            lowered.as_str()
        };
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
            PathMatch::Regex(re) => re.is_match(path),
            PathMatch::Separated(p) => {
                path.strip_prefix(p.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
        };
        if !path_ok {
            return false;
        }
        if self.grpc
            && !req
                .headers
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
        {
            return false;
        }
        if !self.headers.iter().all(|h| h.matches(req)) {
            return false;
        }
        let query = req.query();
        if !self.query.iter().all(|q| q.matches(query)) {
            return false;
        }
        self.fraction.map_or(true, |f| draw < f)
    }

    /// The path after `prefix_rewrite` / `regex_rewrite` (the query kept).
    pub fn rewrite_path(&self, fwd: &Forward, path_and_query: &str) -> Option<String> {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let new = if let Some(pre) = &fwd.prefix_rewrite {
            self.replace_prefix(pre, path)?
        } else if let Some((re, sub)) = &fwd.regex_rewrite {
            // RE2 substitutions write groups as \1; the regex crate as ${1}.
            re.replace_all(path, to_regex_substitution(sub).as_str()).into_owned()
        } else {
            return None;
        };
        let new = if new.is_empty() { "/".to_owned() } else { new };
        Some(match query {
            Some(q) => format!("{new}?{q}"),
            None => new,
        })
    }

    /// `path` with the part this route matched replaced by `pre` (Envoy's
    /// `prefix_rewrite`, for routes and redirects); None for regex routes.
    pub fn replace_prefix(&self, pre: &str, path: &str) -> Option<String> {
        let matched_len = match &self.path {
            PathMatch::Prefix(p) | PathMatch::Separated(p) => p.len().min(path.len()),
            PathMatch::Exact(_) => path.len(),
            PathMatch::Regex(_) => return None,
        };
        let mut s = String::with_capacity(pre.len() + path.len());
        s.push_str(pre);
        s.push_str(path.get(matched_len..).unwrap_or_default());
        Some(s)
    }
}

/// `\N` group references (RE2) as `${N}` (regex crate); a literal `$` escaped.
fn to_regex_substitution(sub: &str) -> String {
    let mut out = String::with_capacity(sub.len() + 4);
    let mut chars = sub.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                let d = chars.next().unwrap_or('0');
                out.push_str(&format!("${{{d}}}"));
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

impl PortRoutes {
    fn compile(rc: &wire::RouteConfiguration) -> Result<PortRoutes> {
        let mut vhosts = Vec::new();
        let (mut exact, mut suffix, mut prefix, mut any) = (HashMap::new(), Vec::new(), Vec::new(), None);
        for (i, vh) in rc.virtual_hosts.iter().enumerate() {
            let field = format!("virtual_hosts[{i}] ({:?})", vh.name);
            let mut routes = Vec::new();
            for (j, r) in vh.routes.iter().enumerate() {
                routes.push(route(r, &format!("{field}.routes[{j}] ({:?})", r.name))?);
            }
            let idx = vhosts.len();
            for d in &vh.domains {
                let d = d.to_ascii_lowercase();
                // istiod lists `host:port` forms too; the port is ignored
                // (ignore_port_in_host_matching), so they add nothing.
                if d == "*" {
                    any.get_or_insert(idx);
                } else if let Some(s) = d.strip_prefix('*') {
                    suffix.push((s.to_owned(), idx));
                } else if let Some(p) = d.strip_suffix('*') {
                    prefix.push((p.to_owned(), idx));
                } else {
                    // Envoy refuses a domain listed twice; istiod drops
                    // duplicates. The first virtual host keeps it.
                    exact.entry(strip_port(&d).to_owned()).or_insert(idx);
                }
            }
            vhosts.push(VirtualHost {
                name: vh.name.clone(),
                routes,
                request_ops: header_ops(&vh.request_headers_to_add, &vh.request_headers_to_remove, &field)?,
                response_ops: response_ops(&vh.response_headers_to_add, &vh.response_headers_to_remove, &field)?,
                retry: vh.retry_policy.as_ref().map(|p| retry_spec(p, &format!("{field}.retry_policy"))).transpose()?,
                attempt_count: vh.include_request_attempt_count,
                fault: fault(&vh.typed_per_filter_config, &field)?,
            });
        }
        suffix.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        prefix.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Ok(PortRoutes {
            name: rc.name.clone(),
            vhosts,
            exact,
            suffix,
            prefix,
            any,
            request_ops: header_ops(&rc.request_headers_to_add, &rc.request_headers_to_remove, "")?,
            response_ops: response_ops(&rc.response_headers_to_add, &rc.response_headers_to_remove, "")?,
        })
    }

    /// The inbound's routes: every host to the local app, no timeout
    /// (istiod's inbound route configuration, `inbound|<port>||`: domains
    /// `*`, prefix `/`, `timeout: 0s`, no retry policy). Compiled once.
    pub fn inbound() -> Arc<PortRoutes> {
        static INBOUND: std::sync::OnceLock<Arc<PortRoutes>> = std::sync::OnceLock::new();
        INBOUND
            .get_or_init(|| {
                let rc: wire::RouteConfiguration = serde_json::from_str(
                    r#"{"name": "inbound", "virtualHosts": [{"name": "inbound", "domains": ["*"],
                        "routes": [{"name": "default", "match": {"prefix": "/"},
                                    "route": {"cluster": "PassthroughCluster", "timeout": "0s"}}]}]}"#,
                )
                .unwrap_or_default();
                Arc::new(PortRoutes::compile(&rc).unwrap_or_else(|_| PortRoutes::empty()))
            })
            .clone()
    }

    fn empty() -> PortRoutes {
        PortRoutes {
            name: String::new(),
            vhosts: Vec::new(),
            exact: HashMap::new(),
            suffix: Vec::new(),
            prefix: Vec::new(),
            any: None,
            request_ops: HeaderOps::default(),
            response_ops: HeaderOps::default(),
        }
    }

    /// The virtual host for a request's host (its port ignored).
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        let host = strip_port(host);
        let owned;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            owned = host.to_ascii_lowercase();
            owned.as_str()
        } else {
            host
        };
        let i = self
            .exact
            .get(host)
            .copied()
            .or_else(|| {
                self.suffix.iter().find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str())).map(|x| x.1)
            })
            .or_else(|| {
                self.prefix.iter().find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str())).map(|x| x.1)
            })
            .or(self.any)?;
        self.vhosts.get(i)
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` without the port.
pub fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(host, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        // One colon: a port. More: a bare IPv6 address.
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}
