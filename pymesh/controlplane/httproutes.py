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

For gRPC clients, not translated because gRPC ignores them (gRFC A28/A31/A81): ``rewrite``,
``headers``, ``mirror``, CORS, route decorators. Redirects and direct responses are sent as
actions: gRPC fails the RPCs they match with UNAVAILABLE (gRFC A36), as with istiod.

Sidecars (``sidecar=True``: the routes of the shared per-port route configurations,
:func:`pymesh.controlplane.generators.sidecar_routes`) get what istiod gives an Envoy
sidecar from the same translation:

- the timeout in ``timeout`` and ``max_grpc_timeout`` (``setTimeout`` for Envoy clients),
  never ``max_stream_duration``;
- ``rewrite``: ``uri`` as ``prefix_rewrite`` (Envoy swaps the matched prefix, or the whole
  path when the match is an exact ``path``: istiod sends the same field for both),
  ``uriRegexRewrite`` as ``regex_rewrite``, ``authority`` as ``host_rewrite_literal``
  (``applyHTTPRouteDestination``);
- ``headers`` (``TranslateHeadersOperations``): ``set`` as ``request_headers_to_add`` with
  ``OVERWRITE_IF_EXISTS_OR_ADD``, ``add`` with ``APPEND_IF_EXISTS_OR_ADD`` (each sorted by
  name), ``remove`` as ``request_headers_to_remove``, the same for responses; pseudo-headers
  and ``host`` are dropped, a request's ``:authority``/``host`` becoming the host rewrite.
  A destination's own ``headers`` join the route's (one destination) or go on its weighted
  cluster (``processDestination``, ``processWeightedDestination``);
- ``mirror`` with ``mirrorPercentage`` (or the integer ``mirrorPercent``; 100% without
  either; none at 0) and ``mirrors[]`` as ``request_mirror_policies`` (``MirrorPercent``,
  ``MirrorPercentByPolicy``, ``TranslateRequestMirrorPolicy``);
- redirects with ``derivePort`` and without an explicit ``:80``/``:443`` (``ApplyRedirect``);
- the trace ``decorator`` (``GetRouteOperation``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import duration_pb2, struct_pb2, wrappers_pb2

from pymesh.controlplane.virtualservice import (
    MESH_GATEWAY,
    Destination,
    Fault,
    HttpMatch,
    HttpRoute,
    Retries,
    StringMatch,
    VirtualService,
    is_authority,
    resolve,
)
from pymesh.mesh import xds
from pymesh.mesh.clusters import cluster_name, parse_cluster_name
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


# --- sidecar-only translation (gRPC ignores these: gRFC A28/A31) --------------------------


@dataclass(frozen=True)
class HeaderOps:
    """route.go ``HeadersOperations``: a ``headers`` block as Envoy route fields."""

    request_add: tuple[Any, ...] = ()
    request_remove: tuple[str, ...] = ()
    response_add: tuple[Any, ...] = ()
    response_remove: tuple[str, ...] = ()
    authority: str = ""  # a request's :authority/host set or add: the host rewrite


def _internal(name: str) -> bool:
    """route.go ``isInternalHeader``: headers a route cannot edit."""
    return name.startswith(":") or name.lower() == "host"


def _append_headers(raw: Any, append: bool) -> tuple[list[Any], str]:
    """route.go ``translateAppendHeaders``: sorted by name; the authority taken out."""
    hvo = base_pb2.HeaderValueOption
    how = hvo.APPEND_IF_EXISTS_OR_ADD if append else hvo.OVERWRITE_IF_EXISTS_OR_ADD
    out, authority = [], ""
    for key, value in sorted((raw or {}).items()):
        if is_authority(key):
            authority = str(value)
        if _internal(key):
            continue
        out.append(hvo(header=base_pb2.HeaderValue(key=key, value=str(value)), append_action=how))
    return out, authority


def header_ops(raw: Mapping[str, Any] | None) -> HeaderOps:
    """route.go ``TranslateHeadersOperations``: ``set`` then ``add``; an authority ``set``
    wins over one ``add``ed."""
    req = (raw or {}).get("request") or {}
    resp = (raw or {}).get("response") or {}
    req_set, set_authority = _append_headers(req.get("set"), False)
    req_add, add_authority = _append_headers(req.get("add"), True)
    resp_set, _ = _append_headers(resp.get("set"), False)
    resp_add, _ = _append_headers(resp.get("add"), True)
    return HeaderOps(
        request_add=(*req_set, *req_add),
        request_remove=tuple(str(k) for k in req.get("remove") or () if not _internal(str(k))),
        response_add=(*resp_set, *resp_add),
        response_remove=tuple(str(k) for k in resp.get("remove") or () if not _internal(str(k))),
        authority=set_authority or add_authority,
    )


def _add_headers(target: Any, ops: HeaderOps) -> None:
    """Appends ``ops`` to a Route or a WeightedCluster.ClusterWeight (same field names)."""
    target.request_headers_to_add.extend(ops.request_add)
    target.request_headers_to_remove.extend(ops.request_remove)
    target.response_headers_to_add.extend(ops.response_add)
    target.response_headers_to_remove.extend(ops.response_remove)


def mirror_fraction(percentage: float | None, int_percent: int | None = None) -> Any:
    """route.go ``MirrorPercent``/``MirrorPercentByPolicy``: a percentage per million, the
    deprecated integer per hundred, 100% without either; None (no mirror) at 0."""
    if percentage is not None:
        return _percent(percentage) if percentage > 0 else None
    if int_percent is not None:
        if int_percent <= 0:
            return None
        return percent_pb2.FractionalPercent(numerator=int_percent, denominator=percent_pb2.FractionalPercent.HUNDRED)
    return percent_pb2.FractionalPercent(numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED)


def _mirror_policy(cluster: str, fraction: Any) -> Any:
    """route.go ``TranslateRequestMirrorPolicy``."""
    p = rc.RouteAction.RequestMirrorPolicy(cluster=cluster)
    p.runtime_fraction.default_value.CopyFrom(fraction)
    p.trace_sampled.CopyFrom(wrappers_pb2.BoolValue(value=False))
    return p


def _sidecar_action(
    out: Any, action: Any, rule: HttpRoute, vs: VirtualService, registry: Registry, port: int, authority: str
) -> None:
    """What ``applyHTTPRouteDestination`` adds for an Envoy client: rewrites, the authority,
    mirrors, and each destination's headers (``processDestination``,
    ``processWeightedDestination``)."""
    rewrite = rule.rewrite or {}
    regex = rewrite.get("uriRegexRewrite")
    if isinstance(regex, Mapping):
        action.regex_rewrite.pattern.regex = str(regex.get("match", ""))
        action.regex_rewrite.substitution = str(regex.get("rewrite", ""))
    elif rewrite.get("uri"):
        # Envoy swaps the matched prefix, or the whole path when the match is an exact path.
        action.prefix_rewrite = str(rewrite["uri"])
    if rewrite.get("authority"):
        authority = str(rewrite["authority"])
    if authority:
        action.host_rewrite_literal = authority
    mirrors = []
    if rule.mirror is not None:
        mirrors.append((rule.mirror, mirror_fraction(rule.mirror_percentage, rule.mirror_percent)))
    mirrors += [(m.destination, mirror_fraction(m.percentage)) for m in rule.mirrors]
    for dest, fraction in mirrors:
        if fraction is not None:
            action.request_mirror_policies.append(_mirror_policy(_cluster(dest, vs, registry, port)[0], fraction))
    if len(rule.route) == 1:
        if rule.route[0].headers is not None:
            ops = header_ops(rule.route[0].headers)
            _add_headers(out, ops)
            if ops.authority and action.WhichOneof("host_rewrite_specifier") is None:
                action.host_rewrite_literal = ops.authority
        return
    weighted = iter(action.weighted_clusters.clusters)
    for d in rule.route:
        if d.weight == 0:
            continue  # not in weighted_clusters (_action)
        entry = next(weighted)
        if d.headers is not None:
            ops = header_ops(d.headers)
            _add_headers(entry, ops)
            if ops.authority:
                entry.host_rewrite_literal = ops.authority


def _operation(r: Any, vs_name: str, port: int) -> str:
    """route.go ``GetRouteOperation``: ``<host>:<port><path>`` for one cluster, else the
    VirtualService's name for the host."""
    m = r.match
    spec = m.WhichOneof("path_specifier")
    path = "/*"
    if spec == "prefix":
        path = f"{m.prefix}*"
    elif spec == "path":
        path = m.path
    elif spec == "safe_regex":
        path = m.safe_regex.regex
    parsed = parse_cluster_name(r.route.cluster) if r.WhichOneof("action") == "route" else None
    if parsed is not None:
        return f"{parsed.host}:{parsed.port}{path}"
    return f"{vs_name}:{port}{path}"


# --- routes -----------------------------------------------------------------------------


def _cluster(d: Destination, vs: VirtualService, registry: Registry, listener_port: int) -> tuple[str, str]:
    """(cluster, resolved host): route.go ``GetDestinationCluster``."""
    host = resolve(d.host, vs.meta.namespace, registry.domain)
    port = d.port
    if not port:
        svc = registry.by_host.get(host)
        port = svc.ports[0].number if svc is not None and len(svc.ports) == 1 else listener_port
    return cluster_name(host, port, d.subset), host


def _action(rule: HttpRoute, vs: VirtualService, registry: Registry, port: int, *, sidecar: bool = False) -> Any:
    """route.go ``applyHTTPRouteDestination``."""
    action = rc.RouteAction()
    timeout = _duration(rule.timeout or 0.0)
    action.timeout.CopyFrom(timeout)
    if sidecar:
        # setTimeout for Envoy clients: a gRPC request's grpc-timeout is capped by the same value.
        action.max_grpc_timeout.CopyFrom(timeout)
    else:
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


_REDIRECT_CODES = {
    301: "MOVED_PERMANENTLY",
    302: "FOUND",
    303: "SEE_OTHER",
    307: "TEMPORARY_REDIRECT",
    308: "PERMANENT_REDIRECT",
}


def _redirect(raw: Mapping[str, Any], listener_port: int | None = None) -> Any:
    """route.go ``ApplyRedirect``; ``listener_port`` (sidecars) adds its port rules:
    ``derivePort: FROM_REQUEST_PORT`` is the listener's port, and the scheme's default port
    (80 for http, 443 for https) is left out."""
    out = rc.RedirectAction(host_redirect=str(raw.get("authority", "")))
    if raw.get("prefixRewrite"):
        out.prefix_rewrite = str(raw["prefixRewrite"])
    else:
        out.path_redirect = str(raw.get("uri", ""))
    if raw.get("scheme"):
        out.scheme_redirect = str(raw["scheme"])
    if raw.get("port"):
        out.port_redirect = int(raw["port"])
    if listener_port is not None and (raw.get("port") or raw.get("derivePort")):
        if not raw.get("port") and raw.get("derivePort") == "FROM_REQUEST_PORT":
            out.port_redirect = listener_port
        scheme = str(raw.get("scheme") or "http")  # a sidecar never terminates TLS
        if (out.port_redirect, scheme) in ((80, "http"), (443, "https")):
            out.port_redirect = 0
    code = _REDIRECT_CODES[int(raw.get("redirectCode") or 301)]
    out.response_code = rc.RedirectAction.RedirectResponseCode.Value(code)
    return out


def _translate(
    rule: HttpRoute, m: HttpMatch | None, vs: VirtualService, registry: Registry, port: int, sidecar: bool
) -> Any:
    """route.go ``TranslateRoute``."""
    name = f"{rule.name}.{m.name}" if m is not None and m.name else rule.name
    out = rc.Route(name=name, match=route_match(m))
    # util.BuildConfigInfoMetadata: the VirtualService the route came from.
    path = f"/apis/networking.istio.io/{vs.api_version}/namespaces/{vs.meta.namespace}"
    out.metadata.filter_metadata["istio"].update({"config": f"{path}/virtual-service/{vs.meta.name}"})
    authority = ""
    if sidecar and rule.headers is not None:
        ops = header_ops(rule.headers)
        _add_headers(out, ops)
        authority = ops.authority
    if rule.redirect is not None:
        out.redirect.CopyFrom(_redirect(rule.redirect, port if sidecar else None))
    elif rule.direct_response is not None:
        out.direct_response.status = int(rule.direct_response.get("status", 0))
        body = rule.direct_response.get("body")
        if isinstance(body, Mapping) and body.get("string"):
            out.direct_response.body.inline_string = str(body["string"])
    else:
        out.route.CopyFrom(_action(rule, vs, registry, port, sidecar=sidecar))
        if sidecar:
            _sidecar_action(out, out.route, rule, vs, registry, port, authority)
    if sidecar:
        out.decorator.operation = _operation(out, vs.meta.name, port)
    if rule.fault is not None:
        out.typed_per_filter_config[FAULT_FILTER].CopyFrom(xds.pack(fault(rule.fault)))
    return out


def virtual_service_routes(
    vs: VirtualService, registry: Registry, port: int, view: RouteView, *, sidecar: bool = False
) -> list[Any]:
    """route.go ``BuildHTTPRoutesForVirtualService``; ``sidecar``: as for an Envoy client."""
    out: list[Any] = []
    for rule in vs.http:
        if not rule.match:
            out.append(_translate(rule, None, vs, registry, port, sidecar))
            break
        done = False
        for m in rule.match:
            if not _applies(m, port, view):
                continue
            r = _translate(rule, m, vs, registry, port, sidecar)
            out.append(r)
            if _catch_all(r):
                done = True
                break
        if done:
            break
    return out


def default_route(cluster: str, hashing: list[Any], operation: str = "") -> Any:
    """route.go ``BuildDefaultHTTPOutboundRoute``: ``setTimeout`` without a node sets
    ``max_grpc_timeout`` (gRPC reads neither it nor ``timeout``); ``operation``: the
    trace decorator a sidecar gets (``telemetry.TraceOperation``: ``<host>:<port>/*``)."""
    action = rc.RouteAction(cluster=cluster, hash_policy=hashing)
    action.timeout.CopyFrom(_duration(0))
    action.max_grpc_timeout.CopyFrom(_duration(0))
    action.retry_policy.CopyFrom(retry_policy(None, False))
    out = rc.Route(name="default", match=rc.RouteMatch(prefix="/"), route=action)
    if operation:
        out.decorator.operation = operation
    return out


def service_routes(
    svc: ServiceModel, port: int, registry: Registry, view: RouteView, hashing: list[Any], *, sidecar: bool = False
) -> list[Any]:
    vs = registry.virtual_services.for_host(svc.hostname, view.namespace)
    if vs is not None and vs.http:
        routes = virtual_service_routes(vs, registry, port, view, sidecar=sidecar)
        if routes:
            return routes
    operation = f"{svc.hostname}:{port}/*" if sidecar else ""
    return [default_route(cluster_name(svc.hostname, port), hashing, operation)]


def has_fault(registry: Registry, host: str) -> bool:
    """Whether any VirtualService a client could get for ``host`` injects faults: its
    listener then carries the fault filter (istiod's always does; gRPC needs it only
    for routes with a fault config, gRFC A33)."""
    return any(r.fault is not None for vs in registry.virtual_services.candidates(host) for r in vs.http)
