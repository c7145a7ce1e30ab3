"""OutboundProxy.set_http_routes in-process (no root, no traffic): Envoy
RouteConfigurations in proto3 JSON are compiled, anything invalid is refused
with an error naming the route configuration, virtual host, route and field,
and a refused update leaves the routes in place. (Serving through routes that
survived a refused update is tests/netns/test_relay_http.py's.)"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pymesh import ConfigError, PymeshError
from pymesh.capture import CaptureConfig, redirect_table
from pymesh.lbtable import LbTable
from pymesh.relay import OutboundProxy

CLUSTER = "outbound|80||svc.default.svc.cluster.local"


def config(name: str = "80") -> dict[str, Any]:
    """A RouteConfiguration with one virtual host "vh" whose route [1] "bad" the cases spoil."""
    return {
        "name": name,
        "virtualHosts": [
            {
                "name": "vh",
                "domains": ["svc", "*.example.com", "svc.*", "*"],
                "routes": [
                    {
                        "name": "ok",
                        "match": {"prefix": "/a", "headers": [{"name": "end-user", "stringMatch": {"exact": "x"}}]},
                        "route": {
                            "weightedClusters": {
                                "clusters": [{"name": CLUSTER, "weight": 90}, {"name": "v2", "weight": 10}]
                            },
                            "timeout": "1.500s",
                            "retryPolicy": {
                                "retryOn": "5xx,reset,connect-failure,retriable-status-codes",
                                "numRetries": 2,
                                "perTryTimeout": "0.2s",
                                "retriableStatusCodes": [409],
                                "retryBackOff": {"baseInterval": "0.01s", "maxInterval": "0.1s"},
                            },
                            "requestMirrorPolicies": [
                                {"cluster": "m", "runtimeFraction": {"defaultValue": {"numerator": 5}}}
                            ],
                            "hashPolicy": [{"header": {"headerName": "x-user"}}],
                        },
                        "typedPerFilterConfig": {
                            "envoy.filters.http.fault": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                                "delay": {"fixedDelay": "0.2s", "percentage": {"numerator": 10}},
                                "abort": {
                                    "grpcStatus": 14,
                                    "percentage": {"numerator": 500000, "denominator": "MILLION"},
                                },
                            }
                        },
                    },
                    {"name": "bad", "match": {"prefix": "/"}, "route": {"cluster": CLUSTER}},
                ],
            }
        ],
    }


def spoiled(change: Callable[[dict[str, Any]], None]) -> str:
    rc = copy.deepcopy(config("bad-config"))
    change(rc["virtualHosts"][0]["routes"][1])
    return json.dumps(rc)


def set_(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Sets route["route"][key], or route[key] for a top-level route field ("=key")."""

    def change(r: dict[str, Any]) -> None:
        if key.startswith("="):
            r[key[1:]] = value
        else:
            r["route"][key] = value

    return change


def fault(f: dict[str, Any]) -> dict[str, Any]:
    return {"envoy.filters.http.fault": f}


# (what spoils route [1], the field path the error must name)
ROUTE_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("retry_on", set_("retryPolicy", {"retryOn": "5xx,bogus"}), "route.retry_policy.retry_on"),
    ("timeout", set_("timeout", "1.5"), "route.timeout"),
    (
        "per_try_timeout",
        set_("retryPolicy", {"retryOn": "5xx", "perTryTimeout": "soon"}),
        "retry_policy.per_try_timeout",
    ),
    (
        "back_off",
        set_("retryPolicy", {"retryOn": "5xx", "retryBackOff": {"baseInterval": "1s", "maxInterval": "0.5s"}}),
        "retry_policy.retry_back_off.max_interval",
    ),
    (
        "status_codes",
        set_("retryPolicy", {"retryOn": "5xx", "retriableStatusCodes": [99]}),
        "retriable_status_codes[0]",
    ),
    ("safe_regex", set_("=match", {"safeRegex": {"regex": "("}}), "match.safe_regex"),
    ("two_paths", set_("=match", {"prefix": "/", "path": "/x"}), "more than one path specifier"),
    ("header_name", set_("=match", {"prefix": "/", "headers": [{"name": ""}]}), "match.headers[0]"),
    (
        "query_regex",
        set_(
            "=match", {"prefix": "/", "queryParameters": [{"name": "q", "stringMatch": {"safeRegex": {"regex": "["}}}]}
        ),
        "match.query_parameters[0].string_match.safe_regex",
    ),
    (
        "fraction",
        set_(
            "=match", {"prefix": "/", "runtimeFraction": {"defaultValue": {"numerator": 1, "denominator": "BILLION"}}}
        ),
        "match.runtime_fraction.denominator",
    ),
    (
        "zero_weights",
        lambda r: r.update(route={"weightedClusters": {"clusters": [{"name": "a", "weight": 0}, {"name": "b"}]}}),
        "route.weighted_clusters",
    ),
    (
        "cluster_and_weights",
        set_("weightedClusters", {"clusters": [{"name": "a", "weight": 1}]}),
        "exactly one of cluster",
    ),
    ("regex_rewrite", set_("regexRewrite", {"pattern": {"regex": "(?<"}, "substitution": "x"}), "route.regex_rewrite"),
    ("hash_policy", set_("hashPolicy", [{}]), "route.hash_policy[0]"),
    ("host_rewrite", set_("hostRewriteLiteral", "bad\nhost"), "route.host_rewrite_literal"),
    ("no_action", lambda r: r.pop("route"), "exactly one of route, redirect, direct_response"),
    ("two_actions", set_("=directResponse", {"status": 200}), "exactly one of route, redirect, direct_response"),
    ("redirect_code", lambda r: r.update(route=None, redirect={"responseCode": "TEAPOT"}), "redirect.response_code"),
    ("direct_status", lambda r: r.update(route=None, directResponse={"status": 99}), "direct_response.status"),
    (
        "header_add_host",
        set_("=requestHeadersToAdd", [{"header": {"key": "Host", "value": "x"}}]),
        "request_headers_to_add[0]",
    ),
    (
        "append_action",
        set_("=requestHeadersToAdd", [{"header": {"key": "x-a", "value": "x"}, "appendAction": "SOMETIMES"}]),
        "request_headers_to_add[0]",
    ),
    (
        "abort_status",
        set_("=typedPerFilterConfig", fault({"abort": {"httpStatus": 700, "percentage": {"numerator": 1}}})),
        "abort.http_status",
    ),
    (
        "abort_both",
        set_("=typedPerFilterConfig", fault({"abort": {"httpStatus": 503, "grpcStatus": 14}})),
        "abort",
    ),
    ("delay_without_time", set_("=typedPerFilterConfig", fault({"delay": {"percentage": {"numerator": 1}}})), "delay"),
    (
        "delay_time",
        set_("=typedPerFilterConfig", fault({"delay": {"fixedDelay": "-1s", "percentage": {"numerator": 1}}})),
        "delay.fixed_delay",
    ),
]


@pytest.fixture
def proxy() -> Iterator[OutboundProxy]:
    p = OutboundProxy(redirect_table(CaptureConfig()), LbTable(seed=1), listen=["127.0.0.1:0"])
    p.set_http_routes([(80, json.dumps(config("80"))), (8080, json.dumps(config("8080")))], tcp=["10.0.0.1:80"])
    yield p
    p.stop()


def test_valid_route_configurations_compile(proxy: OutboundProxy) -> None:
    assert proxy.http_ports() == [80, 8080]
    stats = proxy.http_stats()
    assert stats["http_requests"] == 0 and stats["http_not_http"] == 0
    # An empty match object is proto3 JSON's prefix "" (every path).
    empty = {"virtualHosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {}, "route": {"cluster": "c"}}]}]}
    proxy.set_http_routes([(9090, json.dumps(empty))])
    assert proxy.http_ports() == [9090]
    proxy.set_http_routes([])
    assert proxy.http_ports() == []


@pytest.mark.parametrize(("change", "field"), [c[1:] for c in ROUTE_CASES], ids=[c[0] for c in ROUTE_CASES])
def test_an_invalid_route_is_refused_naming_it_and_the_routes_stay(
    proxy: OutboundProxy, change: Callable[[dict[str, Any]], None], field: str
) -> None:
    with pytest.raises(ConfigError) as e:
        proxy.set_http_routes([(81, json.dumps(config("81"))), (82, spoiled(change))])
    msg = str(e.value)
    assert isinstance(e.value, PymeshError)
    assert 'route configuration "bad-config" (port 82)' in msg, msg
    assert 'virtual_hosts[0] ("vh").routes[1] ("bad")' in msg, msg
    assert field in msg, msg
    # Nothing of the refused update was applied, not even its valid port.
    assert proxy.http_ports() == [80, 8080]


@pytest.mark.parametrize(
    ("routes", "tcp", "field"),
    [
        ([(82, "{")], [], "routes[port 82]"),
        ([(82, json.dumps({"virtualHosts": "x"}))], [], "routes[port 82]"),
        ([(82, json.dumps({"virtualHosts": [{"routes": [{"match": {"prefix": 3}}]}]}))], [], "routes[port 82]"),
        ([(82, json.dumps(config())), (82, json.dumps(config()))], [], "port given twice"),
        ([(82, json.dumps(config()))], ["10.0.0.1"], "tcp"),
    ],
    ids=["not-json", "wrong-type", "wrong-scalar", "port-twice", "tcp-destination"],
)
def test_undecodable_configurations_are_refused_and_the_routes_stay(
    proxy: OutboundProxy, routes: list[tuple[int, str]], tcp: list[str], field: str
) -> None:
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        proxy.set_http_routes(routes, tcp=tcp)
    assert proxy.http_ports() == [80, 8080]


def test_route_errors_are_config_errors_as_documented(proxy: OutboundProxy) -> None:
    # OutboundProxy.set_http_routes' docstring: anything invalid raises ConfigError,
    # a PymeshError like every error pymesh raises.
    from pymesh._native import PymeshError

    with pytest.raises(ConfigError, match="retry_on") as e:
        proxy.set_http_routes([(82, spoiled(ROUTE_CASES[0][1]))])
    assert isinstance(e.value, PymeshError)
    with pytest.raises(ConfigError, match="tcp"):
        proxy.set_http_routes([], tcp=["nonsense"])
