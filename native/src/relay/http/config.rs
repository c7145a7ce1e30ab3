//! The part of Envoy's `RouteConfiguration` (envoy/config/route/v3/route.proto,
//! route_components.proto) that the HTTP data path acts on, read from its
//! proto3 JSON form (what `google.protobuf.json_format.MessageToJson` writes:
//! camelCase names, 64-bit integers as strings, durations as `"1.500s"`,
//! enums by name, `Any` as an object with `@type`). Fields the data path
//! does not use (metadata, decorators, stats, CORS, ...) are ignored, as the
//! protobuf JSON parser would keep them without effect here.
//!
//! These are wire shapes only; [`super::route`] compiles them into the
//! matchers the requests use, checking every value.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteConfiguration {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    pub request_headers_to_add: Vec<HeaderValueOption>,
    pub request_headers_to_remove: Vec<String>,
    pub response_headers_to_add: Vec<HeaderValueOption>,
    pub response_headers_to_remove: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    pub request_headers_to_add: Vec<HeaderValueOption>,
    pub request_headers_to_remove: Vec<String>,
    pub response_headers_to_add: Vec<HeaderValueOption>,
    pub response_headers_to_remove: Vec<String>,
    pub retry_policy: Option<RetryPolicy>,
    pub include_request_attempt_count: bool,
    pub typed_per_filter_config: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Route {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    pub route: Option<RouteAction>,
    pub redirect: Option<RedirectAction>,
    pub direct_response: Option<DirectResponseAction>,
    /// Envoy's `non_forwarding_action` and `filter_action`: refused (no
    /// sidecar route uses them).
    pub non_forwarding_action: Option<serde_json::Value>,
    pub filter_action: Option<serde_json::Value>,
    pub request_headers_to_add: Vec<HeaderValueOption>,
    pub request_headers_to_remove: Vec<String>,
    pub response_headers_to_add: Vec<HeaderValueOption>,
    pub response_headers_to_remove: Vec<String>,
    pub typed_per_filter_config: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteMatch {
    pub prefix: Option<String>,
    pub path: Option<String>,
    pub safe_regex: Option<RegexMatcher>,
    pub path_separated_prefix: Option<String>,
    /// Other path specifiers (connect_matcher, path_match_policy): refused.
    pub connect_matcher: Option<serde_json::Value>,
    pub path_match_policy: Option<serde_json::Value>,
    pub case_sensitive: Option<bool>,
    pub headers: Vec<HeaderMatcher>,
    pub query_parameters: Vec<QueryParameterMatcher>,
    pub grpc: Option<serde_json::Value>,
    /// `runtime_fraction`: a route that matches a share of requests.
    pub runtime_fraction: Option<RuntimeFractionalPercent>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RegexMatcher {
    pub regex: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StringMatcher {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub contains: Option<String>,
    pub safe_regex: Option<RegexMatcher>,
    pub ignore_case: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HeaderMatcher {
    pub name: String,
    pub exact_match: Option<String>,
    pub prefix_match: Option<String>,
    pub suffix_match: Option<String>,
    pub contains_match: Option<String>,
    pub safe_regex_match: Option<RegexMatcher>,
    pub present_match: Option<bool>,
    pub string_match: Option<StringMatcher>,
    pub range_match: Option<serde_json::Value>,
    pub invert_match: bool,
    pub treat_missing_header_as_empty: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct QueryParameterMatcher {
    pub name: String,
    pub string_match: Option<StringMatcher>,
    pub present_match: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RuntimeFractionalPercent {
    pub default_value: FractionalPercent,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FractionalPercent {
    pub numerator: u32,
    /// HUNDRED (the default), TEN_THOUSAND or MILLION.
    pub denominator: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteAction {
    pub cluster: Option<String>,
    pub weighted_clusters: Option<WeightedCluster>,
    pub cluster_header: Option<String>,
    pub cluster_specifier_plugin: Option<String>,
    pub timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub retry_policy: Option<RetryPolicy>,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<RegexRewrite>,
    pub host_rewrite_literal: Option<String>,
    pub request_mirror_policies: Vec<MirrorPolicy>,
    pub hash_policy: Vec<HashPolicy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WeightedCluster {
    pub clusters: Vec<ClusterWeight>,
    pub total_weight: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClusterWeight {
    pub name: String,
    pub weight: Option<u32>,
    pub request_headers_to_add: Vec<HeaderValueOption>,
    pub request_headers_to_remove: Vec<String>,
    pub response_headers_to_add: Vec<HeaderValueOption>,
    pub response_headers_to_remove: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RetryPolicy {
    pub retry_on: String,
    pub num_retries: Option<u32>,
    pub per_try_timeout: Option<String>,
    pub retry_host_predicate: Vec<serde_json::Value>,
    pub host_selection_retry_max_attempts: Option<String>,
    pub retriable_status_codes: Vec<u32>,
    pub retry_back_off: Option<RetryBackOff>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RetryBackOff {
    pub base_interval: Option<String>,
    pub max_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RegexRewrite {
    pub pattern: RegexMatcher,
    pub substitution: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MirrorPolicy {
    pub cluster: String,
    pub runtime_fraction: Option<RuntimeFractionalPercent>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HashPolicy {
    pub header: Option<HashHeader>,
    pub cookie: Option<HashCookie>,
    pub connection_properties: Option<HashConnection>,
    pub query_parameter: Option<HashQuery>,
    pub terminal: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HashHeader {
    pub header_name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HashCookie {
    pub name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HashConnection {
    pub source_ip: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HashQuery {
    pub name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RedirectAction {
    pub https_redirect: bool,
    pub scheme_redirect: Option<String>,
    pub host_redirect: Option<String>,
    pub port_redirect: Option<u32>,
    pub path_redirect: Option<String>,
    pub prefix_rewrite: Option<String>,
    /// MOVED_PERMANENTLY (the default), FOUND, SEE_OTHER, TEMPORARY_REDIRECT, PERMANENT_REDIRECT.
    pub response_code: Option<String>,
    pub strip_query: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DirectResponseAction {
    pub status: u32,
    pub body: Option<DataSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DataSource {
    pub inline_string: Option<String>,
    pub inline_bytes: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HeaderValueOption {
    pub header: HeaderValue,
    /// Deprecated `append` (BoolValue): true appends, false overwrites.
    pub append: Option<bool>,
    /// APPEND_IF_EXISTS_OR_ADD (the default), ADD_IF_ABSENT,
    /// OVERWRITE_IF_EXISTS_OR_ADD, OVERWRITE_IF_EXISTS.
    pub append_action: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HeaderValue {
    pub key: String,
    pub value: String,
}

/// `envoy.extensions.filters.http.fault.v3.HTTPFault`, the per-route config
/// Istio puts under `typed_per_filter_config["envoy.filters.http.fault"]`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpFault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultDelay {
    pub fixed_delay: Option<String>,
    pub percentage: Option<FractionalPercent>,
    pub header_delay: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultAbort {
    pub http_status: Option<u32>,
    pub grpc_status: Option<u32>,
    pub percentage: Option<FractionalPercent>,
    pub header_abort: Option<serde_json::Value>,
}
