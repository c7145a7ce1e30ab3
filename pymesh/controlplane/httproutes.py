"""HTTP routes for proxyless gRPC clients, as istiod builds them.

istiod's gRPC generator (istio/istio pilot/pkg/networking/grpcgen/rds.go
``buildHTTPRoute``) runs the sidecar translation (pilot/pkg/networking/core/route/route.go
``BuildHTTPRoutesForVirtualService``, ``TranslateRoute``, ``applyHTTPRouteDestination``,
``TranslateRouteMatch``, ``setTimeout``, ``TranslateFault``; route/retry/retry.go
``ConvertPolicy``) and keeps the virtual host of the requested service. The same here:

- A service without a VirtualService: one route ``default``, prefix ``/``, to its cluster,
  timeout 0 and istiod's default retry policy (``BuildDefaultHTTPOutboundRoute``).
- With one (:mod:`.virtualservice` picks it): a route per ``http[i].match[j]`` in order, a
  rule without match being one catch-all; generation stops after the first catch-all
  (prefix ``/``, no header or query matcher: ``IsCatchAllRoute``). Matches whose ``port``,
  ``gateways`` (without ``mesh``), ``sourceLabels`` or ``sourceNamespace`` exclude the
  client are left out (``sourceMatchHTTP``).
- One destination: ``cluster``; several: ``weighted_clusters`` without the 0 weights.
  Cluster ``outbound|port|subset|host``: the destination port, else the service's only
  port, else the listener's (``GetDestinationCluster``).
- The timeout (0: none) in ``timeout`` and, since gRPC reads only that (gRFC A31),
  ``max_stream_duration.max_stream_duration``.
- ``retry_policy``: the VirtualService's ``retries`` or, without, istiod's default
  (2 retries on connect-failure, refused-stream, unavailable, cancelled,
  retriable-status-codes); ``attempts: 0`` means none. gRPC keeps only the gRPC codes of
  ``retry_on`` (gRFC A44). The previous-hosts predicate is left out when the one
  destination hashes consistently.
- ``fault``: the ``envoy.filters.http.fault`` per-route config (gRFC A33); the listener
  then carries the fault filter before the router (:func:`has_fault`).
- A DestinationRule's ``consistentHash`` (the subset's, else the rule's:
  ``HashForHTTPDestination``) adds a hash policy per destination.

Not translated, because gRPC ignores them (gRFC A28/A31/A81): ``rewrite``, ``headers``,
``mirror``, CORS, route decorators. Redirects and direct responses are sent as actions:
gRPC fails the RPCs they match with UNAVAILABLE (gRFC A36), as with istiod.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import duration_pb2, struct_pb2

from pymesh.controlplane.virtualservice import (
    MESH_GATEWAY,
    Destination,
    Fault,
    HttpMatch,
    HttpRoute,
    Retries,
    StringMatch,
    VirtualService,
    resolve,
)
from pymesh.mesh import xds
from pymesh.mesh.clusters import cluster_name
from pymesh.mesh.values import go_duration

if TYPE_CHECKING:
    from pymesh.controlplane.registry import Registry, ServiceModel

FAULT_FILTER = "envoy.filters.http.fault"
# route/retry/retry.go: defaultRetryOn and the previous-hosts predicate.
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"


@dataclass(frozen=True)
class RouteView:
    """What of a client selects its routes: its namespace (exportTo, sourceNamespace)
    and labels (sourceLabels)."""

    namespace: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def of(namespace: str, labels: Mapping[str, str]) -> RouteView:
        return RouteView(namespace, tuple(sorted(labels.items())))


def _duration(seconds: float) -> Any:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


# --- hash policy ------------------------------------------------------------------------


def hash_policy(ch: Mapping[str, Any] | None) -> Any:
    """route.go ``ConsistentHashToHashPolicy``."""
    if ch is None:
        return None
    hp = rc.RouteAction.HashPolicy
    if ch.get("httpHeaderName"):
        return hp(header=hp.Header(header_name=str(ch["httpHeaderName"])))
    if ch.get("useSourceIp"):
        return hp(connection_properties=hp.ConnectionProperties(source_ip=True))
    if ch.get("httpQueryParameterName"):
        return hp(query_parameter=hp.QueryParameter(name=str(ch["httpQueryParameterName"])))
    cookie = ch.get("httpCookie")
    if isinstance(cookie, Mapping):
        c = hp.Cookie(name=str(cookie.get("name", "")), path=str(cookie.get("path", "")))
        if cookie.get("ttl"):
            c.ttl.CopyFrom(_duration(go_duration(cookie["ttl"])))
        return hp(cookie=c)
    return None


def _destination_hash(registry: Registry, host: str, subset: str) -> Mapping[str, Any] | None:
    """route.go ``HashForHTTPDestination``: the subset's consistentHash, else the rule's."""
    dr = registry.destination_rule(host)
    if dr is None:
        return None
    for s in dr.subsets:
        if s.name == subset and s.policy is not None and s.policy.consistent_hash is not None:
            return s.policy.consistent_hash
    return dr.policy.consistent_hash if dr.policy is not None else None


# --- retries, timeout, fault ------------------------------------------------------------


def retry_policy(retries: Retries | None, consistent_hash: bool) -> Any:
    """retry.go ``ConvertPolicy`` (meshConfig has no ``defaultHttpRetryPolicy`` in pymesh)."""
    if retries is not None and retries.attempts <= 0:
        return None
    out = rc.RetryPolicy(retry_on=DEFAULT_RETRY_ON, host_selection_retry_max_attempts=5)
    out.num_retries.value = 2
    if not consistent_hash:
        out.retry_host_predicate.add(name=PREVIOUS_HOSTS).typed_config.Pack(previous_hosts_pb2.PreviousHostsPredicate())
    if retries is None:
        return out
    out.num_retries.value = retries.attempts
    if retries.retry_on:
        tokens = [t.strip() for t in retries.retry_on.split(",") if t.strip()]
        codes = [int(t) for t in tokens if t.isdigit()]
        policies = [t for t in tokens if not t.isdigit()]
        if codes and "retriable-status-codes" not in policies:
            policies.append("retriable-status-codes")
        out.retry_on = ",".join(policies)
        out.retriable_status_codes.extend(codes)
    if retries.per_try_timeout is not None:
        out.per_try_timeout.CopyFrom(_duration(retries.per_try_timeout))
    if retries.retry_ignore_previous_hosts is not None:
        del out.retry_host_predicate[:]
        if retries.retry_ignore_previous_hosts:
            out.retry_host_predicate.add(name=PREVIOUS_HOSTS).typed_config.Pack(
                previous_hosts_pb2.PreviousHostsPredicate()
            )
    if retries.retry_remote_localities:
        rp = out.retry_priority
        rp.name = "envoy.retry_priorities.previous_priorities"
        cfg = struct_pb2.Struct()
        cfg.update({"update_frequency": 2})
        rp.typed_config.Pack(cfg)
    if retries.backoff is not None:
        out.retry_back_off.base_interval.CopyFrom(_duration(retries.backoff))
    return out


def _percent(value: float) -> Any:
    """route.go ``translatePercentToFractionalPercent``: percent * 10000 per million."""
    return percent_pb2.FractionalPercent(
        numerator=int(value * 10000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def fault(f: Fault) -> Any:
    """route.go ``TranslateFault``."""
    out = fault_pb2.HTTPFault()
    if f.delay is not None:
        out.delay.fixed_delay.CopyFrom(_duration(f.delay))
        if f.delay_percent is not None:
            out.delay.percentage.CopyFrom(_percent(f.delay_percent))
        else:
            out.delay.percentage.CopyFrom(
                percent_pb2.FractionalPercent(
                    numerator=f.delay_int_percent, denominator=percent_pb2.FractionalPercent.HUNDRED
                )
            )
    if f.abort_http is not None or f.abort_grpc is not None:
        if f.abort_http is not None:
            out.abort.http_status = f.abort_http
        else:
            out.abort.grpc_status = f.abort_grpc or 0
        if f.abort_percent is not None:
            out.abort.percentage.CopyFrom(_percent(f.abort_percent))
    return out


# --- matches ----------------------------------------------------------------------------


def _string_matcher(m: StringMatch) -> Any:
    """pilot/pkg/networking/util ``ConvertToEnvoyMatch``."""
    if m.kind == "exact":
        return string_pb2.StringMatcher(exact=m.value)
    if m.kind == "prefix":
        return string_pb2.StringMatcher(prefix=m.value)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=m.value))


def _header(name: str, m: StringMatch, *, invert: bool = False) -> Any:
    """route.go ``translateHeaderMatch``: an empty match or regex ``*`` is present_match."""
    h = rc.HeaderMatcher(name=name)
    if m.kind == "present":
        h.present_match = True
    else:
        h.string_match.CopyFrom(_string_matcher(m))
    if invert:
        h.invert_match = True
        if m.kind != "present":
            h.treat_missing_header_as_empty = True
    return h


def route_match(m: HttpMatch | None) -> Any:
    """route.go ``TranslateRouteMatch``."""
    out = rc.RouteMatch(prefix="/")
    if m is None:
        return out
    headers = [_header(n, s) for n, s in m.headers] + [_header(n, s, invert=True) for n, s in m.without_headers]
    headers.sort(key=lambda h: h.name)
    out.headers.extend(headers)
    if m.uri is not None:
        if m.uri.kind == "exact":
            out.path = m.uri.value
        elif m.uri.kind == "prefix":
            out.prefix = m.uri.value
        elif m.uri.kind == "regex":
            out.safe_regex.regex = m.uri.value
    out.case_sensitive.value = not m.ignore_uri_case
    for pseudo, sm in ((":method", m.method), (":authority", m.authority), (":scheme", m.scheme)):
        if sm is not None:
            out.headers.append(_header(pseudo, sm))
    for name, sm in m.query_params:
        q = out.query_parameters.add(name=name)
        if sm.kind == "present":
            q.present_match = True
        else:
            q.string_match.CopyFrom(_string_matcher(sm))
    return out


def _catch_all(r: Any) -> bool:
    """route.go ``IsCatchAllRoute``."""
    spec = r.match.WhichOneof("path_specifier")
    catchall = (spec == "prefix" and r.match.prefix == "/") or (
        spec == "safe_regex" and r.match.safe_regex.regex == ".*"
    )
    return catchall and not r.match.headers and not r.match.query_parameters


def _applies(m: HttpMatch | None, port: int, view: RouteView) -> bool:
    """route.go ``TranslateRoute`` (port) and ``sourceMatchHTTP``."""
    if m is None:
        return True
    if m.port and m.port != port:
        return False
    if m.gateways:
        return MESH_GATEWAY in m.gateways
    labels = dict(view.labels)
    if any(labels.get(k) != val for k, val in m.source_labels.items()):
        return False
    return not m.source_namespace or m.source_namespace == view.namespace


# --- routes -----------------------------------------------------------------------------


def _cluster(d: Destination, vs: VirtualService, registry: Registry, listener_port: int) -> tuple[str, str]:
    """(cluster, resolved host): route.go ``GetDestinationCluster``."""
    host = resolve(d.host, vs.meta.namespace, registry.domain)
    port = d.port
    if not port:
        svc = registry.by_host.get(host)
        port = svc.ports[0].number if svc is not None and len(svc.ports) == 1 else listener_port
    return cluster_name(host, port, d.subset), host


def _action(rule: HttpRoute, vs: VirtualService, registry: Registry, port: int) -> Any:
    """route.go ``applyHTTPRouteDestination``."""
    action = rc.RouteAction()
    timeout = _duration(rule.timeout or 0.0)
    action.timeout.CopyFrom(timeout)
    # setTimeout: proxyless gRPC reads max_stream_duration (gRFC A31), not timeout.
    action.max_stream_duration.max_stream_duration.CopyFrom(timeout)
    consistent = False
    if len(rule.route) == 1:
        name, host = _cluster(rule.route[0], vs, registry, port)
        action.cluster = name
        ch = _destination_hash(registry, host, rule.route[0].subset)
        consistent = ch is not None
        if (hp := hash_policy(ch)) is not None:
            action.hash_policy.append(hp)
    else:
        for d in rule.route:
            if d.weight == 0:
                continue  # dropped when there are others (validation refuses all-zero)
            name, host = _cluster(d, vs, registry, port)
            action.weighted_clusters.clusters.add(name=name).weight.value = d.weight
            if (hp := hash_policy(_destination_hash(registry, host, d.subset))) is not None:
                action.hash_policy.append(hp)
    policy = retry_policy(rule.retries, consistent)
    if policy is not None:
        action.retry_policy.CopyFrom(policy)
    return action


def _redirect(raw: Mapping[str, Any]) -> Any:
    out = rc.RedirectAction(host_redirect=str(raw.get("authority", "")))
    if raw.get("prefixRewrite"):
        out.prefix_rewrite = str(raw["prefixRewrite"])
    else:
        out.path_redirect = str(raw.get("uri", ""))
    if raw.get("scheme"):
        out.scheme_redirect = str(raw["scheme"])
    if raw.get("port"):
        out.port_redirect = int(raw["port"])
    codes = {
        301: "MOVED_PERMANENTLY",
        302: "FOUND",
        303: "SEE_OTHER",
        307: "TEMPORARY_REDIRECT",
        308: "PERMANENT_REDIRECT",
    }
    out.response_code = rc.RedirectAction.RedirectResponseCode.Value(codes[int(raw.get("redirectCode") or 301)])
    return out


def _translate(rule: HttpRoute, m: HttpMatch | None, vs: VirtualService, registry: Registry, port: int) -> Any:
    """route.go ``TranslateRoute``."""
    name = f"{rule.name}.{m.name}" if m is not None and m.name else rule.name
    out = rc.Route(name=name, match=route_match(m))
    # util.BuildConfigInfoMetadata: the VirtualService the route came from.
    path = f"/apis/networking.istio.io/{vs.api_version}/namespaces/{vs.meta.namespace}"
    out.metadata.filter_metadata["istio"].update({"config": f"{path}/virtual-service/{vs.meta.name}"})
    if rule.redirect is not None:
        out.redirect.CopyFrom(_redirect(rule.redirect))
    elif rule.direct_response is not None:
        out.direct_response.status = int(rule.direct_response.get("status", 0))
        body = rule.direct_response.get("body")
        if isinstance(body, Mapping) and body.get("string"):
            out.direct_response.body.inline_string = str(body["string"])
    else:
        out.route.CopyFrom(_action(rule, vs, registry, port))
    if rule.fault is not None:
        out.typed_per_filter_config[FAULT_FILTER].CopyFrom(xds.pack(fault(rule.fault)))
    return out


def virtual_service_routes(vs: VirtualService, registry: Registry, port: int, view: RouteView) -> list[Any]:
    """route.go ``BuildHTTPRoutesForVirtualService``."""
    out: list[Any] = []
    for rule in vs.http:
        if not rule.match:
            out.append(_translate(rule, None, vs, registry, port))
            break
        done = False
        for m in rule.match:
            if not _applies(m, port, view):
                continue
            r = _translate(rule, m, vs, registry, port)
            out.append(r)
            if _catch_all(r):
                done = True
                break
        if done:
            break
    return out


def default_route(cluster: str, hashing: list[Any]) -> Any:
    """route.go ``BuildDefaultHTTPOutboundRoute``: ``setTimeout`` without a node sets
    ``max_grpc_timeout`` (gRPC reads neither it nor ``timeout``)."""
    action = rc.RouteAction(cluster=cluster, hash_policy=hashing)
    action.timeout.CopyFrom(_duration(0))
    action.max_grpc_timeout.CopyFrom(_duration(0))
    action.retry_policy.CopyFrom(retry_policy(None, False))
    return rc.Route(name="default", match=rc.RouteMatch(prefix="/"), route=action)


def service_routes(svc: ServiceModel, port: int, registry: Registry, view: RouteView, hashing: list[Any]) -> list[Any]:
    vs = registry.virtual_services.for_host(svc.hostname, view.namespace)
    if vs is not None and vs.http:
        routes = virtual_service_routes(vs, registry, port, view)
        if routes:
            return routes
    return [default_route(cluster_name(svc.hostname, port), hashing)]


def has_fault(registry: Registry, host: str) -> bool:
    """Whether any VirtualService a client could get for ``host`` injects faults: its
    listener then carries the fault filter (istiod's always does; gRPC needs it only
    for routes with a fault config, gRFC A33)."""
    return any(r.fault is not None for vs in registry.virtual_services.candidates(host) for r in vs.http)
