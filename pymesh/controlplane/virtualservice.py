"""VirtualService (``networking.istio.io`` v1, v1beta1, v1alpha3): the model, its
validation and which VirtualService a client gets for a host.

Validation follows Istio's webhook (istio/istio pkg/config/validation/validation.go
``ValidateVirtualService``, ``validateHTTPRoute``, ``validateHTTPRetry``,
``validateHTTPFaultInjection``, ``validateHTTPRedirect``, ``validateHTTPRewrite``,
``validateStringMatch``): a bad field raises :class:`ValidationError` naming it, so an
invalid VirtualService is rejected alone and its last good version keeps serving (the
control plane's rule for every kind). Weights need not sum to 100 (Istio dropped that
rule in 1.15); with more than one destination they must not all be 0.

Not served (rejected with a message saying so, rather than accepted and ignored):
delegation (empty ``hosts``, ``http[].delegate``). ``tcp[]``/``tls[]`` are validated and
kept but not served: proxyless gRPC clients speak HTTP/2 only.

Selection (:func:`index`) follows istiod for clients bound to ``mesh``
(pilot/pkg/model/virtualservice.go ``SelectVirtualServices``, push_context.go
``initVirtualServices``): short hosts resolve in the VirtualService's namespace
(pilot/pkg/model/config.go ``ResolveShortnameToFQDN``); a VirtualService whose
``gateways`` omit ``mesh`` does not apply; per host, the oldest VirtualService
(creationTimestamp, then namespace/name) wins and the others are reported as conflicts
(istiod drops the later duplicate virtual host, pilot/pkg/networking/core/httproute.go
``buildVirtualHost``); ``exportTo`` ``.`` / ``*`` / ``~`` / namespace names decide which
clients' namespaces see it.

Size: the model and its validation stay together, field by field beside the webhook
rule each mirrors, so a reader can check one against the other; the routes built
from the model live in :mod:`pymesh.controlplane.httproutes`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pymesh.controlplane import validation as v

if TYPE_CHECKING:
    from pymesh.controlplane.resources import Meta

MESH_GATEWAY = "mesh"
# pkg/config/validation/agent/validation.go: the retryOn policies Envoy and gRPC know.
RETRY_ON = frozenset(
    (
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "envoy-ratelimited",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    )
)
# gRPC status names (pkg/util/grpc: SupportedGRPCStatus), as a VirtualService abort names them.
GRPC_STATUS = {
    name: code
    for code, name in enumerate(
        (
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        )
    )
}
REDIRECT_CODES = (301, 302, 303, 307, 308)
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
# validation.go httpHeaderValueRegexp: no control characters but tab.
_HEADER_VALUE_BAD = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
_MAX_REGEX = 1024


@dataclass(frozen=True)
class StringMatch:
    kind: str  # "exact" | "prefix" | "regex" | "present" (an empty match or regex "*")
    value: str = ""


@dataclass(frozen=True)
class HttpMatch:
    name: str = ""
    uri: StringMatch | None = None
    ignore_uri_case: bool = False
    method: StringMatch | None = None
    authority: StringMatch | None = None
    scheme: StringMatch | None = None
    headers: tuple[tuple[str, StringMatch], ...] = ()
    without_headers: tuple[tuple[str, StringMatch], ...] = ()
    query_params: tuple[tuple[str, StringMatch], ...] = ()
    port: int = 0
    source_labels: Mapping[str, str] = field(default_factory=dict)
    source_namespace: str = ""
    gateways: tuple[str, ...] = ()


@dataclass(frozen=True)
class Destination:
    host: str  # as written; resolved against the VirtualService's namespace when served
    subset: str = ""
    port: int = 0
    weight: int = 0
    # route[].headers, validated (:func:`_headers`); sidecars apply them, gRPC ignores them.
    headers: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Mirror:
    """One ``mirrors[]`` entry: where a copy of each request goes, and for which share."""

    destination: Destination
    percentage: float | None = None  # percentage.value; None: every request (100%)


@dataclass(frozen=True)
class Retries:
    attempts: int
    per_try_timeout: float | None = None
    retry_on: str = ""
    retry_remote_localities: bool | None = None
    retry_ignore_previous_hosts: bool | None = None
    backoff: float | None = None


@dataclass(frozen=True)
class Fault:
    delay: float | None = None  # fixedDelay, seconds
    delay_percent: float | None = None  # percentage.value; None: the deprecated integer percent
    delay_int_percent: int = 0
    abort_http: int | None = None
    abort_grpc: int | None = None  # numeric gRPC code
    abort_percent: float | None = None


@dataclass(frozen=True)
class HttpRoute:
    name: str
    match: tuple[HttpMatch, ...]
    route: tuple[Destination, ...]
    redirect: Mapping[str, Any] | None = None
    direct_response: Mapping[str, Any] | None = None
    timeout: float | None = None
    retries: Retries | None = None
    fault: Fault | None = None
    # Kept as validated; sidecars get them translated (pymesh.controlplane.httproutes), gRPC
    # clients never (gRFC A28/A31: gRPC ignores them).
    rewrite: Mapping[str, Any] | None = None
    headers: Mapping[str, Any] | None = None
    mirror: Destination | None = None
    mirror_percentage: float | None = None  # mirrorPercentage.value
    mirror_percent: int | None = None  # the deprecated integer mirrorPercent
    mirrors: tuple[Mirror, ...] = ()


@dataclass(frozen=True)
class VirtualService:
    meta: Meta
    hosts: tuple[str, ...]
    gateways: tuple[str, ...]
    http: tuple[HttpRoute, ...]
    tcp_routes: int = 0  # validated, not served
    tls_routes: int = 0
    export_to: tuple[str, ...] = ()
    created: float | None = None
    api_version: str = "v1"

    @property
    def for_mesh(self) -> bool:
        return not self.gateways or MESH_GATEWAY in self.gateways


# --- parsing ----------------------------------------------------------------------------


def _bool(value: Any, f: str) -> bool:
    if not isinstance(value, bool):
        raise v.fail(f, f"{value!r} is not a boolean")
    return value


def _min_duration(value: Any, f: str) -> float:
    d = v.duration(value, f)
    if d < 0.001:
        raise v.fail(f, "must be at least 1ms")
    return d


def _string_match(raw: Any, f: str, *, empty_prefix: bool = False) -> StringMatch:
    m = v.mapping(raw, f)
    kinds = [k for k in ("exact", "prefix", "regex") if k in m]
    if len(kinds) > 1:
        raise v.fail(f, "only one of exact, prefix or regex")
    if not kinds:
        return StringMatch("present")
    kind = kinds[0]
    value = v.string(m[kind], f"{f}.{kind}")
    if kind == "prefix" and not value and not empty_prefix:
        raise v.fail(f"{f}.prefix", "must not be empty")
    if kind == "regex":
        if value == "*":
            return StringMatch("present")  # route.go canBeConvertedToPresentMatch
        if len(value) > _MAX_REGEX:
            raise v.fail(f"{f}.regex", f"longer than {_MAX_REGEX} characters")
        try:
            re.compile(value)
        except re.error as e:
            raise v.fail(f"{f}.regex", f"{value!r} is not a valid regular expression: {e}") from None
    return StringMatch(kind, value)


def _header_map(raw: Any, f: str) -> tuple[tuple[str, StringMatch], ...]:
    out = []
    for name, sm in v.mapping(raw, f).items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise v.fail(f"{f}.{name}", "header names must be lower-case and valid")
        out.append((name, _string_match(sm, f"{f}.{name}")))
    return tuple(sorted(out))  # route.go TranslateRouteMatch sorts header matchers by name


def _match(raw: Any, f: str, vs_gateways: tuple[str, ...]) -> HttpMatch:
    m = v.mapping(raw, f)
    port = v.port(m["port"], f"{f}.port") if m.get("port") else 0
    gateways = tuple(
        v.string(g, f"{f}.gateways[{i}]") for i, g in enumerate(v.sequence(m.get("gateways"), f"{f}.gateways"))
    )
    source_labels = v.labels(m.get("sourceLabels"), f"{f}.sourceLabels")
    if source_labels and vs_gateways and MESH_GATEWAY not in vs_gateways:
        raise v.fail(f"{f}.sourceLabels", "only applies to sidecars: gateways must include mesh")

    def opt(key: str, **kw: Any) -> StringMatch | None:
        return _string_match(m[key], f"{f}.{key}", **kw) if m.get(key) is not None else None

    return HttpMatch(
        name=v.string(m.get("name"), f"{f}.name"),
        uri=opt("uri", empty_prefix=True),
        ignore_uri_case=_bool(m["ignoreUriCase"], f"{f}.ignoreUriCase") if "ignoreUriCase" in m else False,
        method=opt("method"),
        authority=opt("authority"),
        scheme=opt("scheme"),
        headers=_header_map(m.get("headers"), f"{f}.headers"),
        without_headers=_header_map(m.get("withoutHeaders"), f"{f}.withoutHeaders"),
        query_params=tuple(
            sorted(
                (k, _string_match(q, f"{f}.queryParams.{k}", empty_prefix=True))
                for k, q in v.mapping(m.get("queryParams"), f"{f}.queryParams").items()
            )
        ),
        port=port,
        source_labels=source_labels,
        source_namespace=v.string(m.get("sourceNamespace"), f"{f}.sourceNamespace"),
        gateways=gateways,
    )


def _destination(raw: Any, f: str) -> Destination:
    d = v.mapping(raw, f, required=True)
    host = v.string(d.get("host"), f"{f}.host", required=True).lower()
    if host == "*":
        raise v.fail(f"{f}.host", "'*' is not a valid destination host")
    v.fqdn(host, f"{f}.host", wildcard=True)
    subset = v.string(d.get("subset"), f"{f}.subset")
    if subset:
        v.dns1123_label(subset, f"{f}.subset")
    port = 0
    if d.get("port") is not None:
        pm = v.mapping(d["port"], f"{f}.port")
        if pm.get("number") is not None:
            port = v.port(pm["number"], f"{f}.port.number")
    return Destination(host=host, subset=subset, port=port)


def _route_destinations(raw: Any, f: str) -> tuple[Destination, ...]:
    out: list[Destination] = []
    for i, r in enumerate(v.sequence(raw, f)):
        rf = f"{f}[{i}]"
        rm = v.mapping(r, rf)
        dest = _destination(rm.get("destination"), f"{rf}.destination")
        weight = v.integer(rm["weight"], f"{rf}.weight", minimum=0) if rm.get("weight") is not None else 0
        headers = _headers(rm["headers"], f"{rf}.headers") if rm.get("headers") is not None else None
        out.append(Destination(dest.host, dest.subset, dest.port, weight, headers))
    if len(out) > 1 and sum(d.weight for d in out) == 0:
        raise v.fail(f, "with more than one destination, the weights must not all be 0")
    return tuple(out)


def _retries(raw: Any, f: str) -> Retries:
    m = v.mapping(raw, f)
    attempts = v.integer(m.get("attempts", 0), f"{f}.attempts", minimum=0)
    per_try = _min_duration(m["perTryTimeout"], f"{f}.perTryTimeout") if m.get("perTryTimeout") else None
    retry_on = v.string(m.get("retryOn"), f"{f}.retryOn")
    remote = _bool(m["retryRemoteLocalities"], f"{f}.retryRemoteLocalities") if "retryRemoteLocalities" in m else None
    if attempts == 0 and (per_try is not None or retry_on or remote is not None):
        raise v.fail(f, "perTryTimeout, retryOn and retryRemoteLocalities need attempts > 0")
    for token in filter(None, (t.strip() for t in retry_on.split(","))):
        if token not in RETRY_ON and not (token.isdigit() and 100 <= int(token) <= 599):
            raise v.fail(f"{f}.retryOn", f"{token!r} is not a retry policy or an HTTP status code")
    ignore = m.get("retryIgnorePreviousHosts")
    backoff = _min_duration(m["backoff"], f"{f}.backoff") if m.get("backoff") else None
    return Retries(
        attempts=attempts,
        per_try_timeout=per_try,
        retry_on=retry_on,
        retry_remote_localities=remote,
        retry_ignore_previous_hosts=_bool(ignore, f"{f}.retryIgnorePreviousHosts") if ignore is not None else None,
        backoff=backoff,
    )


def _percentage(raw: Any, f: str) -> float:
    value = v.mapping(raw, f).get("value", 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise v.fail(f"{f}.value", f"{value!r} is not a number")
    if value != 0 and not 0.0001 <= value <= 100:
        raise v.fail(f"{f}.value", "must be 0 or between 0.0001 and 100")
    return float(value)


def _fault(raw: Any, f: str) -> Fault:
    m = v.mapping(raw, f)
    if not m.get("delay") and not m.get("abort"):
        raise v.fail(f, "needs an abort or a delay")
    out: dict[str, Any] = {}
    if m.get("delay"):
        d = v.mapping(m["delay"], f"{f}.delay")
        if d.get("exponentialDelay") is not None:
            raise v.fail(f"{f}.delay.exponentialDelay", "not supported")
        if d.get("fixedDelay") is None:
            raise v.fail(f"{f}.delay.fixedDelay", "is required")
        out["delay"] = _min_duration(d["fixedDelay"], f"{f}.delay.fixedDelay")
        if d.get("percentage") is not None:
            out["delay_percent"] = _percentage(d["percentage"], f"{f}.delay.percentage")
        else:
            out["delay_int_percent"] = v.integer(d.get("percent", 0), f"{f}.delay.percent", minimum=0, maximum=100)
    if m.get("abort"):
        a = v.mapping(m["abort"], f"{f}.abort")
        if a.get("http2Error") is not None:
            raise v.fail(f"{f}.abort.http2Error", "not supported")
        if a.get("httpStatus") is not None and a.get("grpcStatus") is not None:
            raise v.fail(f"{f}.abort", "only one of httpStatus or grpcStatus")
        if a.get("httpStatus") is not None:
            out["abort_http"] = v.integer(a["httpStatus"], f"{f}.abort.httpStatus", minimum=200, maximum=599)
        elif a.get("grpcStatus") is not None:
            name = v.string(a["grpcStatus"], f"{f}.abort.grpcStatus")
            if name not in GRPC_STATUS:
                raise v.fail(f"{f}.abort.grpcStatus", f"{name!r} is not a gRPC status name")
            out["abort_grpc"] = GRPC_STATUS[name]
        else:
            raise v.fail(f"{f}.abort", "needs httpStatus or grpcStatus")
        if a.get("percentage") is not None:
            out["abort_percent"] = _percentage(a["percentage"], f"{f}.abort.percentage")
    return Fault(**out)


def is_authority(name: str) -> bool:
    """route.go ``isAuthorityHeader``: setting it rewrites the authority."""
    return name.lower() in (":authority", "host")


def _header_value(value: Any, f: str) -> str:
    """validation.go ``ValidateHTTPHeaderValue`` (its control-character rule)."""
    text = v.string(value, f)
    if _HEADER_VALUE_BAD.search(text):
        raise v.fail(f, "header values cannot hold control characters")
    return text


def _headers(raw: Any, f: str) -> Mapping[str, Any]:
    """virtualservice.go ``validateHTTPRoute`` header manipulation: a request may set or add
    ``:authority``/``host`` (an authority rewrite), no other pseudo-header; responses and
    removals take neither (``ValidateHTTPHeaderWithAuthorityOperationName``,
    ``ValidateHTTPHeaderOperationName``); names are never empty, values strings."""
    m = v.mapping(raw, f)
    for part in ("request", "response"):
        pm = v.mapping(m.get(part), f"{f}.{part}")
        for op in ("set", "add"):
            for name, value in v.mapping(pm.get(op), f"{f}.{part}.{op}").items():
                where = f"{f}.{part}.{op}.{name}"
                if not isinstance(name, str) or not name:
                    raise v.fail(where, "header names cannot be empty")
                authority = part == "request" and is_authority(name)
                if not authority and (name.startswith(":") or name.lower() == "host"):
                    raise v.fail(where, "pseudo-headers and host can only be set as the request's authority")
                _header_value(value, where)
        for i, name in enumerate(v.sequence(pm.get("remove"), f"{f}.{part}.remove")):
            text = v.string(name, f"{f}.{part}.remove[{i}]", required=True)
            if text.startswith(":") or text.lower() == "host":
                raise v.fail(f"{f}.{part}.remove[{i}]", f"{text!r}: pseudo-headers and host cannot be removed")
    return m


def _authority_once(rewrite: Mapping[str, Any] | None, headers: Mapping[str, Any] | None, f: str) -> None:
    """virtualservice.go ``validateAuthorityRewrite``: the authority is rewritten in one place."""
    request = v.mapping((headers or {}).get("request"), f"{f}.headers.request")
    sources = [f"{f}.rewrite.authority"] if rewrite and rewrite.get("authority") else []
    for op in ("set", "add"):
        given = v.mapping(request.get(op), f"{f}.headers.request.{op}")
        sources += [f"{f}.headers.request.{op}.{k}" for k in given if is_authority(str(k))]
    if len(sources) > 1:
        raise v.fail(sources[1], f"the authority is already rewritten by {sources[0]}")


def _rewrite(raw: Any, f: str) -> Mapping[str, Any]:
    """validation.go ``validateHTTPRewrite``, ``validateURIRegexRewrite``."""
    m = v.mapping(raw, f)
    if not any(m.get(k) for k in ("uri", "uriRegexRewrite", "authority")):
        raise v.fail(f, "needs at least one of uri, uriRegexRewrite or authority")
    if m.get("uri") and m.get("uriRegexRewrite"):
        raise v.fail(f, "uri and uriRegexRewrite cannot both be set")
    v.string(m.get("uri"), f"{f}.uri")
    v.string(m.get("authority"), f"{f}.authority")
    if m.get("uriRegexRewrite") is not None:
        rx = v.mapping(m["uriRegexRewrite"], f"{f}.uriRegexRewrite")
        pattern = v.string(rx.get("match"), f"{f}.uriRegexRewrite.match", required=True)
        v.string(rx.get("rewrite"), f"{f}.uriRegexRewrite.rewrite", required=True)
        try:
            re.compile(pattern)
        except re.error as e:
            raise v.fail(f"{f}.uriRegexRewrite.match", f"{pattern!r} is not a valid regular expression: {e}") from None
    return m


def _mirror_share(raw: Any, f: str) -> float:
    """A mirror percentage (``mirrorPercentage``, ``mirrors[].percentage``): 0 to 100."""
    value = v.mapping(raw, f).get("value", 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise v.fail(f"{f}.value", "must be between 0 and 100")
    return float(value)


def _mirrors(raw: Any, f: str) -> tuple[Mirror, ...]:
    """validation.go ``validateHTTPMirrors``: each needs a destination."""
    out = []
    for i, item in enumerate(v.sequence(raw, f)):
        mf = f"{f}[{i}]"
        mm = v.mapping(item, mf, required=True)
        if mm.get("destination") is None:
            raise v.fail(f"{mf}.destination", "is required")
        dest = _destination(mm["destination"], f"{mf}.destination")
        share = _mirror_share(mm["percentage"], f"{mf}.percentage") if mm.get("percentage") is not None else None
        out.append(Mirror(dest, share))
    return tuple(out)


def _redirect(raw: Any, f: str, matches: tuple[HttpMatch, ...]) -> Mapping[str, Any]:
    m = v.mapping(raw, f)
    if m.get("uri") and m.get("prefixRewrite"):
        raise v.fail(f, "only one of uri or prefixRewrite")
    if m.get("prefixRewrite") and any(x.uri is not None and x.uri.kind != "prefix" for x in matches):
        raise v.fail(f"{f}.prefixRewrite", "needs every uri match to be a prefix match")
    if not any(m.get(k) for k in ("uri", "prefixRewrite", "authority", "scheme", "port", "derivePort")):
        raise v.fail(f, "needs at least one of uri, authority, scheme or port")
    for key in ("uri", "prefixRewrite", "authority", "scheme"):
        v.string(m.get(key), f"{f}.{key}")
    if m.get("port") is not None:
        v.port(m["port"], f"{f}.port")
    if m.get("derivePort") is not None:
        v.one_of(m["derivePort"], f"{f}.derivePort", ("FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"), default="")
    code = m.get("redirectCode")
    if code is not None and v.integer(code, f"{f}.redirectCode") not in REDIRECT_CODES:
        raise v.fail(f"{f}.redirectCode", f"must be one of {', '.join(map(str, REDIRECT_CODES))}")
    if m.get("scheme") and m["scheme"] not in ("http", "https"):
        raise v.fail(f"{f}.scheme", "must be http or https")
    return m


def _http_route(raw: Any, f: str, gateways: tuple[str, ...]) -> HttpRoute:
    m = v.mapping(raw, f)
    if m.get("delegate") is not None:
        raise v.fail(f"{f}.delegate", "not supported: pymesh does not serve VirtualService delegation")
    matches = tuple(
        _match(x, f"{f}.match[{i}]", gateways) for i, x in enumerate(v.sequence(m.get("match"), f"{f}.match"))
    )
    actions = [k for k in ("route", "redirect", "directResponse") if m.get(k)]
    if len(actions) != 1:
        raise v.fail(f, "needs exactly one of route, redirect or directResponse")
    if m.get("redirect") and (m.get("fault") or m.get("rewrite")):
        raise v.fail(f"{f}.redirect", "cannot be combined with fault or rewrite")
    if m.get("directResponse"):
        if m.get("fault") or m.get("rewrite"):
            raise v.fail(f"{f}.directResponse", "cannot be combined with fault or rewrite")
        dr = v.mapping(m["directResponse"], f"{f}.directResponse")
        v.integer(dr.get("status"), f"{f}.directResponse.status", minimum=200, maximum=599)
    if m.get("mirror") and m.get("mirrors"):
        raise v.fail(f, "mirror and mirrors cannot both be set")
    mirror_percentage = None
    if m.get("mirrorPercentage") is not None:
        mirror_percentage = _mirror_share(m["mirrorPercentage"], f"{f}.mirrorPercentage")
    mirror_percent = None
    for key in ("mirrorPercent", "mirror_percent"):  # deprecated; the CRD has both spellings
        if m.get(key) is not None:
            mirror_percent = v.integer(m[key], f"{f}.{key}", minimum=0, maximum=100)
    rewrite = _rewrite(m["rewrite"], f"{f}.rewrite") if m.get("rewrite") is not None else None
    headers = _headers(m["headers"], f"{f}.headers") if m.get("headers") is not None else None
    _authority_once(rewrite, headers, f)
    return HttpRoute(
        name=v.string(m.get("name"), f"{f}.name"),
        match=matches,
        route=_route_destinations(m.get("route"), f"{f}.route"),
        redirect=_redirect(m["redirect"], f"{f}.redirect", matches) if m.get("redirect") else None,
        direct_response=v.mapping(m.get("directResponse"), f"{f}.directResponse") or None,
        timeout=_min_duration(m["timeout"], f"{f}.timeout") if m.get("timeout") else None,
        retries=_retries(m["retries"], f"{f}.retries") if m.get("retries") is not None else None,
        fault=_fault(m["fault"], f"{f}.fault") if m.get("fault") is not None else None,
        rewrite=rewrite,
        headers=headers,
        mirror=_destination(m["mirror"], f"{f}.mirror") if m.get("mirror") else None,
        mirror_percentage=mirror_percentage,
        mirror_percent=mirror_percent,
        mirrors=_mirrors(m.get("mirrors"), f"{f}.mirrors"),
    )


def _l4_routes(raw: Any, f: str, *, tls: bool) -> int:
    items = v.sequence(raw, f)
    for i, r in enumerate(items):
        rm = v.mapping(r, f"{f}[{i}]")
        if tls:
            matches = v.sequence(rm.get("match"), f"{f}[{i}].match")
            if not matches:
                raise v.fail(f"{f}[{i}].match", "a TLS route needs at least one match")
            for j, mt in enumerate(matches):
                snis = v.sequence(
                    v.mapping(mt, f"{f}[{i}].match[{j}]").get("sniHosts"), f"{f}[{i}].match[{j}].sniHosts"
                )
                if not snis:
                    raise v.fail(f"{f}[{i}].match[{j}].sniHosts", "is required")
        _route_destinations(rm.get("route"), f"{f}[{i}].route")
    return len(items)


def parse(spec: Mapping[str, Any], meta: Meta, created: float | None, api_version: str) -> VirtualService:
    hosts_raw = v.sequence(spec.get("hosts"), "spec.hosts")
    if not hosts_raw:
        raise v.fail("spec.hosts", "is required (delegate VirtualServices are not supported)")
    gateways = tuple(
        v.string(g, f"spec.gateways[{i}]", required=True)
        for i, g in enumerate(v.sequence(spec.get("gateways"), "spec.gateways"))
    )
    mesh = not gateways or MESH_GATEWAY in gateways
    hosts: list[str] = []
    for i, h in enumerate(hosts_raw):
        f = f"spec.hosts[{i}]"
        host = v.string(h, f, required=True).lower()
        if host == "*" and mesh:
            raise v.fail(f, "'*' is not allowed for the mesh gateway")
        if not v.is_ip(host):
            v.fqdn(host, f, wildcard=True)
        for j, other in enumerate(hosts):
            if _overlap(host, other):
                raise v.fail(f, f"{host!r} overlaps spec.hosts[{j}] {other!r}")
        hosts.append(host)
    http = tuple(
        _http_route(r, f"spec.http[{i}]", gateways) for i, r in enumerate(v.sequence(spec.get("http"), "spec.http"))
    )
    tcp = _l4_routes(spec.get("tcp"), "spec.tcp", tls=False)
    tls = _l4_routes(spec.get("tls"), "spec.tls", tls=True)
    if not http and not tcp and not tls:
        raise v.fail("spec", "needs at least one of http, tcp or tls")
    export_to: list[str] = []
    for i, e in enumerate(v.sequence(spec.get("exportTo"), "spec.exportTo")):
        ex = v.string(e, f"spec.exportTo[{i}]", required=True)
        if ex not in (".", "*", "~"):
            v.dns1123_label(ex, f"spec.exportTo[{i}]")
        export_to.append(ex)
    if len(export_to) > 1 and ("*" in export_to or "~" in export_to):
        raise v.fail("spec.exportTo", "'*' and '~' cannot be combined with other entries")
    return VirtualService(
        meta=meta,
        hosts=tuple(hosts),
        gateways=gateways,
        http=http,
        tcp_routes=tcp,
        tls_routes=tls,
        export_to=tuple(export_to),
        created=created,
        api_version=api_version,
    )


def _overlap(a: str, b: str) -> bool:
    """Istio's duplicate-host rule: equal names, or one wildcard covering the other."""
    if a == b:
        return True
    return _covers(a, b) or _covers(b, a)


def _covers(pattern: str, name: str) -> bool:
    return pattern.startswith("*") and name.endswith(pattern[1:])


# --- selection --------------------------------------------------------------------------


def resolve(host: str, namespace: str, domain: str) -> str:
    """``ResolveShortnameToFQDN``: a name without a dot is in the given namespace."""
    if "." in host or host == "*" or host.startswith("*") or v.is_ip(host):
        return host
    return f"{host}.{namespace}.svc.{domain}"


def visible(vs: VirtualService, namespace: str) -> bool:
    """exportTo, as istiod reads it for a client in ``namespace`` (empty: meshConfig's
    default, ``*``)."""
    ex = vs.export_to or ("*",)
    if "~" in ex:
        return False
    return "*" in ex or namespace in ex or ("." in ex and namespace == vs.meta.namespace)


def precedence(vs: VirtualService) -> tuple[float, str, str]:
    """Oldest first (istiod's config ordering, pilot/pkg/model/config.go ``sortConfigByCreationTime``):
    creationTimestamp, then namespace and name. Without a timestamp: after those with one."""
    return (vs.created if vs.created is not None else float("inf"), vs.meta.namespace, vs.meta.name)


@dataclass(frozen=True)
class Index:
    """VirtualServices for ``mesh`` by resolved host, each host's candidates oldest first."""

    by_host: Mapping[str, tuple[VirtualService, ...]]
    wildcards: tuple[tuple[str, tuple[VirtualService, ...]], ...]  # most specific first
    conflicts: tuple[str, ...]
    total: int = 0  # every VirtualService, for mesh or not (istiod's pilot_virt_services)

    def for_host(self, host: str, namespace: str) -> VirtualService | None:
        """The VirtualService a client in ``namespace`` gets for ``host``: the oldest
        visible one naming it exactly, else the most specific visible wildcard's."""
        for vs in self.by_host.get(host, ()):
            if visible(vs, namespace):
                return vs
        for pattern, group in self.wildcards:
            if _covers(pattern, host):
                for vs in group:
                    if visible(vs, namespace):
                        return vs
        return None

    def candidates(self, host: str) -> tuple[VirtualService, ...]:
        out = list(self.by_host.get(host, ()))
        for pattern, group in self.wildcards:
            if _covers(pattern, host):
                out += group
        return tuple(out)


def index(vss: Iterable[VirtualService], domain: str) -> Index:
    vss = list(vss)
    exact: dict[str, list[VirtualService]] = {}
    wild: dict[str, list[VirtualService]] = {}
    for vs in sorted((x for x in vss if x.for_mesh), key=precedence):
        for h in vs.hosts:
            host = resolve(h, vs.meta.namespace, domain)
            (wild if host.startswith("*") else exact).setdefault(host, []).append(vs)
    conflicts: list[str] = []
    for host, group in sorted({**exact, **wild}.items()):
        winner = group[0]
        for loser in group[1:]:
            if _shared_audience(winner, loser):
                conflicts.append(
                    f"VirtualService {loser.meta.namespace}/{loser.meta.name}: host {host} is already routed by "
                    f"VirtualService {winner.meta.namespace}/{winner.meta.name} (older); ignored for that host"
                )
    return Index(
        by_host={h: tuple(g) for h, g in exact.items()},
        wildcards=tuple((h, tuple(g)) for h, g in sorted(wild.items(), key=lambda p: -len(p[0]))),
        conflicts=tuple(conflicts),
        total=len(vss),
    )


def _shared_audience(a: VirtualService, b: VirtualService) -> bool:
    """Whether some client namespace sees both (then the older one hides the other)."""
    ea, eb = a.export_to or ("*",), b.export_to or ("*",)
    if "~" in ea or "~" in eb:
        return False
    if "*" in ea or "*" in eb:
        return True
    na = {a.meta.namespace if x == "." else x for x in ea}
    nb = {b.meta.namespace if x == "." else x for x in eb}
    return bool(na & nb)
