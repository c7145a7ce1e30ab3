"""Sidecars get istiod's outbound HTTP shapes; gRPC clients keep theirs.

- The protocol of a port as Istio decides it (a ServiceEntry's declared one, a Service
  port's appProtocol, else its name's prefix, else "auto"), and that only HTTP and
  sniffed ports get an HTTP listener.
- The listener ``0.0.0.0_<port>`` and the route configuration ``"<port>"``, field by
  field: virtual hosts ``<host>:<port>`` sorted, their domains without ports, a domain
  another virtual host took dropped, ``allow_any`` last.
- A VirtualService as an Envoy sidecar gets it (rewrite, headers, mirrors, redirect
  port, decorators, ``max_grpc_timeout``), and gRPC's translation of the same without
  any of it.
- Over a real ADS stream: a sidecar's LDS and RDS, a gRPC client with the same view
  beside it, an unknown route name answered with an empty configuration, and pushes
  only where a route configuration changed.
- Parity with the route configurations istiod 1.29.0 sent a VM sidecar for the same
  configuration files (tests/fixtures/istiod/<scenario>/sidecar/rds.pb).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import struct_pb2

from pymesh.agent.outbound import read_listeners, read_routes
from pymesh.controlplane import ControlPlane
from pymesh.controlplane import generators as gen
from pymesh.controlplane import protocol as proto
from pymesh.controlplane.httproutes import RouteView
from pymesh.controlplane.node import parse_node
from pymesh.controlplane.registry import Registry, build_registry
from pymesh.controlplane.resources import LoadResult, load_documents
from pymesh.controlplane.snapshot import Snapshot, view_key
from pymesh.mesh.xds import CDS, LDS, RDS
from support.cp import AdsStream, vm_node
from support.istiod import FIXTURES, config_dir

WEB = "web.default.svc.cluster.local"
API = "api.other.svc.cluster.local"
LEGACY = "legacy.default.svc.cluster.local"
V1, V2 = f"outbound|80|v1|{WEB}", f"outbound|80|v2|{WEB}"
HVO = base_pb2.HeaderValueOption
OVERWRITE, APPEND = HVO.OVERWRITE_IF_EXISTS_OR_ADD, HVO.APPEND_IF_EXISTS_OR_ADD
MILLION, HUNDRED = percent_pb2.FractionalPercent.MILLION, percent_pb2.FractionalPercent.HUNDRED

MESH = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.1.1
  selector: {app: web}
  ports:
  - {name: http, port: 80}
  - {name: tcp-db, port: 5432}
  - {name: grpc-api, port: 9090}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: other}
spec:
  clusterIP: 10.96.1.2
  ports:
  - {name: tcp-web, port: 80, appProtocol: http}
  - {name: db, port: 3306}
  - {name: mongo-x, port: 27017}
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: default}
spec:
  clusterIP: 10.96.1.3
  ports:
  - {name: stuff, port: 7000}
  - {name: mail, port: 25}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [ext.example.com]
  addresses: [10.96.5.5]
  resolution: STATIC
  location: MESH_INTERNAL
  ports:
  - {number: 8443, name: tls, protocol: TLS}
  - {number: 7000, name: any}
  endpoints: [{address: 10.0.0.9}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: twin, namespace: default}
spec:
  hosts: [twin.example.com]
  addresses: [10.96.5.5]
  resolution: STATIC
  location: MESH_INTERNAL
  ports: [{number: 7000, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.10}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: w1, namespace: default}
spec: {address: 10.0.0.1, labels: {app: web, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: w2, namespace: default}
spec: {address: 10.0.0.2, labels: {app: web, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: default}
spec:
  host: web
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""


def virtual_service(timeout: str = "2s") -> dict[str, Any]:
    v1 = {"host": "web", "subset": "v1"}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "hosts": ["web"],
            "http": [
                {
                    "name": "rw",
                    "match": [{"uri": {"exact": "/old"}}],
                    "rewrite": {"uri": "/new"},
                    "headers": {
                        "request": {"set": {"x-set": "1", ":authority": "a.example"}, "add": {"x-add": "2"}},
                        "response": {"set": {"x-rset": "3"}, "add": {"x-radd": "4"}, "remove": ["x-rgone"]},
                    },
                    "route": [{"destination": v1}],
                },
                {
                    "name": "prefix",
                    "match": [{"uri": {"prefix": "/api"}}],
                    "rewrite": {"uri": "/v2/api", "authority": "b.example"},
                    "headers": {"request": {"remove": ["x-gone"]}},
                    "mirror": {"host": "web", "subset": "v2"},
                    "mirrorPercentage": {"value": 12.5},
                    "route": [{"destination": v1, "headers": {"request": {"set": {"x-dest": "d"}}}}],
                },
                {
                    "name": "regex",
                    "match": [{"uri": {"prefix": "/re"}}],
                    "rewrite": {"uriRegexRewrite": {"match": "^/re/(.*)", "rewrite": "/\\1"}},
                    "mirrors": [
                        {"destination": {"host": "web", "subset": "v2"}, "percentage": {"value": 50}},
                        {"destination": v1},
                        {"destination": {"host": "web"}, "percentage": {"value": 0}},
                    ],
                    "route": [{"destination": v1}],
                },
                {
                    "name": "int-mirror",
                    "match": [{"uri": {"prefix": "/im"}}],
                    "mirror": {"host": "web"},
                    "mirrorPercent": 30,
                    "route": [{"destination": v1}],
                },
                {
                    "name": "no-mirror",
                    "match": [{"uri": {"prefix": "/nm"}}],
                    "mirror": {"host": "web"},
                    "mirrorPercentage": {"value": 0},
                    "route": [{"destination": v1}],
                },
                {
                    "name": "moved",
                    "match": [{"uri": {"prefix": "/go"}}],
                    "redirect": {"uri": "/gone", "derivePort": "FROM_REQUEST_PORT"},
                },
                {
                    "name": "split",
                    "route": [
                        {
                            "destination": v1,
                            "weight": 80,
                            "headers": {"request": {"set": {"x-w": "v1"}, "add": {"host": "c.example"}}},
                        },
                        {"destination": {"host": "web", "subset": "v2"}, "weight": 20},
                    ],
                    "timeout": timeout,
                    "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 1}}},
                },
            ],
        },
    }


def registry_of(*docs: dict[str, Any]) -> Registry:
    res = LoadResult()
    load_documents(MESH + "".join("---\n" + yaml.safe_dump(d) for d in docs), "mesh.yaml", res)
    assert res.errors == [], [str(e) for e in res.errors]
    return build_registry(res.objects)


def hcm(lis: Any) -> Any:
    (chain,) = lis.filter_chains
    (f,) = chain.filters
    assert f.name == "envoy.filters.network.http_connection_manager"
    out = hcm_pb2.HttpConnectionManager()
    assert f.typed_config.Unpack(out)
    return out


def headers(items: Any) -> list[tuple[str, str, int]]:
    return [(h.header.key, h.header.value, h.append_action) for h in items]


def seconds(d: Any) -> float:
    return d.seconds + d.nanos / 1e9


# --- the protocol of a port ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "name", "l4", "app_protocol", "expected"),
    [
        (80, "http", "TCP", "", proto.HTTP),
        (80, "http-web", "TCP", "", proto.HTTP),
        (80, "HTTP2-x", "TCP", "", proto.HTTP2),
        (80, "grpc", "TCP", "", proto.GRPC),
        (80, "grpc-web", "TCP", "", proto.GRPC_WEB),
        (80, "GRPC-Web-ui", "TCP", "", proto.GRPC_WEB),  # before the '-' split
        (80, "http_proxy", "TCP", "", proto.HTTP_PROXY),
        (80, "tcp-db", "TCP", "", proto.TCP),
        (80, "tls", "TCP", "", proto.TLS),
        (80, "https-admin", "TCP", "", proto.HTTPS),
        (80, "mongo", "TCP", "", proto.MONGO),
        (80, "mysql", "TCP", "", proto.MYSQL),
        (80, "redis-cache", "TCP", "", proto.REDIS),
        (80, "web", "TCP", "", proto.AUTO),
        (80, "", "TCP", "", proto.AUTO),
        (80, "http", "SCTP", "", proto.HTTP),  # only UDP is special
        (53, "http", "UDP", "", proto.UDP),
        # Unknown names on the well-known server-first ports are TCP, not sniffed.
        (25, "mail", "TCP", "", proto.TCP),
        (53, "dns", "TCP", "", proto.TCP),
        (3306, "db", "TCP", "", proto.TCP),
        (27017, "db", "TCP", "", proto.TCP),
        # appProtocol wins over the name.
        (80, "tcp-web", "TCP", "http", proto.HTTP),
        (80, "http", "TCP", "mysql", proto.MYSQL),
        (80, "x", "TCP", "kubernetes.io/h2c", proto.HTTP2),
        (80, "x", "TCP", "kubernetes.io/ws", proto.HTTP),
        (80, "http", "TCP", "kubernetes.io/wss", proto.HTTPS),
        (80, "http", "TCP", "example.com/custom", proto.AUTO),
        (80, "http", "UDP", "http", proto.UDP),
    ],
)
def test_a_service_ports_protocol_is_istios(number: int, name: str, l4: str, app_protocol: str, expected: str) -> None:
    assert proto.of_kubernetes_port(number, name, l4, app_protocol) == expected


@pytest.mark.parametrize(
    ("declared", "expected", "http_listener"),
    [
        ("HTTP", proto.HTTP, True),
        ("http", proto.HTTP, True),
        ("HTTP2", proto.HTTP2, True),
        ("GRPC", proto.GRPC, True),
        ("GRPC-WEB", proto.GRPC_WEB, True),
        ("HTTP_PROXY", proto.HTTP_PROXY, True),
        ("", proto.AUTO, True),  # unset: sniffed, so it gets HTTP routes too
        ("TCP", proto.TCP, False),
        ("HTTPS", proto.HTTPS, False),
        ("TLS", proto.TLS, False),
        ("MONGO", proto.MONGO, False),
        ("MYSQL", proto.MYSQL, False),
        ("REDIS", proto.REDIS, False),
        ("UDP", proto.UDP, False),
    ],
)
def test_a_service_entry_ports_protocol_is_the_declared_one(declared: str, expected: str, http_listener: bool) -> None:
    assert proto.parse(declared) == expected
    assert proto.is_http_or_sniffed(expected) is http_listener
    assert proto.is_http(expected) is (http_listener and expected != proto.AUTO)


def test_the_registry_keeps_each_ports_protocol() -> None:
    reg = registry_of()
    got = {(s.hostname, p.number): p.istio_protocol for s in reg.services for p in s.ports}
    assert got == {
        (WEB, 80): proto.HTTP,
        (WEB, 5432): proto.TCP,
        (WEB, 9090): proto.GRPC,
        (WEB, 53): proto.UDP,
        (API, 80): proto.HTTP,  # appProtocol over the name tcp-web
        (API, 3306): proto.TCP,
        (API, 27017): proto.MONGO,
        (LEGACY, 7000): proto.AUTO,
        (LEGACY, 25): proto.TCP,
        ("ext.example.com", 8443): proto.TLS,
        ("ext.example.com", 7000): proto.AUTO,  # no protocol declared
        ("twin.example.com", 7000): proto.HTTP,
    }


# --- listeners ------------------------------------------------------------------------------


def test_only_http_and_sniffed_ports_get_an_outbound_http_listener() -> None:
    reg = registry_of(virtual_service())
    assert sorted(gen.sidecar_listeners(reg)) == ["0.0.0.0_7000", "0.0.0.0_80", "0.0.0.0_9090"]
    assert sorted(gen.sidecar_http_ports(reg)) == [80, 7000, 9090]
    assert [s.hostname for s in gen.sidecar_http_ports(reg)[7000]] == ["ext.example.com", LEGACY, "twin.example.com"]


def test_the_outbound_http_listener_field_by_field() -> None:
    listeners = gen.sidecar_listeners(registry_of(virtual_service()))
    lis = listeners["0.0.0.0_80"]
    assert lis.name == "0.0.0.0_80"
    assert (lis.address.socket_address.address, lis.address.socket_address.port_value) == ("0.0.0.0", 80)
    assert lis.traffic_direction == base_pb2.OUTBOUND
    assert lis.HasField("bind_to_port") and lis.bind_to_port.value is False
    assert not lis.HasField("api_listener")
    h = hcm(lis)
    assert h.stat_prefix == "outbound_0.0.0.0_80"
    assert h.rds.route_config_name == "80"
    src = h.rds.config_source
    assert src.HasField("ads") and src.resource_api_version == config_source_pb2.ApiVersion.V3
    assert src.HasField("initial_fetch_timeout") and seconds(src.initial_fetch_timeout) == 0
    # The VirtualService for web injects faults: the fault filter, then the router.
    assert [f.name for f in h.http_filters] == ["envoy.filters.http.fault", "envoy.filters.http.router"]
    # The VirtualService routes all of web's HTTP ports: 9090 too. None routes a service on 7000.
    assert [f.name for f in hcm(listeners["0.0.0.0_9090"]).http_filters] == [
        "envoy.filters.http.fault",
        "envoy.filters.http.router",
    ]
    assert [f.name for f in hcm(listeners["0.0.0.0_7000"]).http_filters] == ["envoy.filters.http.router"]
    assert hcm(listeners["0.0.0.0_7000"]).rds.route_config_name == "7000"


def test_a_tcp_service_on_an_http_port_number_keeps_its_vip_out_of_the_http_routes() -> None:
    """A TCP-class port gets no listener of its own, unless another service uses its number
    for HTTP: then istiod's <VIP>_<port> TCP proxy, which a destination matches first."""
    res = LoadResult()
    load_documents(
        MESH
        + "---\napiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: default}\n"
        + "spec: {clusterIP: 10.96.1.9, ports: [{name: tcp-x, port: 80}, {name: tcp-y, port: 81}]}\n",
        "mesh.yaml",
        res,
    )
    reg = build_registry(res.objects)
    listeners = gen.sidecar_listeners(reg)
    assert sorted(listeners) == ["0.0.0.0_7000", "0.0.0.0_80", "0.0.0.0_9090", "10.96.1.9_80"]
    lis = listeners["10.96.1.9_80"]
    assert (lis.address.socket_address.address, lis.address.socket_address.port_value) == ("10.96.1.9", 80)
    assert lis.traffic_direction == base_pb2.OUTBOUND and lis.bind_to_port.value is False
    (chain,) = lis.filter_chains
    (f,) = chain.filters
    tp = tcp_proxy_pb2.TcpProxy()
    assert f.name == "envoy.filters.network.tcp_proxy" and f.typed_config.Unpack(tp)
    assert tp.cluster == "outbound|80||db.default.svc.cluster.local"
    rc = gen.sidecar_routes(reg, RouteView.of("default", {}))["80"]
    assert "db.default.svc.cluster.local:80" not in [vh.name for vh in rc.virtual_hosts]
    # The agent reads it as istiod's: that VIP and port to the service's cluster.
    view = read_listeners(listeners)
    assert view.services == (("10.96.1.9", 80, "outbound|80||db.default.svc.cluster.local"),)


def test_grpc_clients_keep_their_api_listeners_only() -> None:
    reg = registry_of(virtual_service())
    grpc = gen.listeners(reg)
    assert not [n for n in grpc if n.startswith("0.0.0.0_")]
    lis = grpc[f"{WEB}:80"]
    assert lis.HasField("api_listener")
    h = hcm_pb2.HttpConnectionManager()
    assert lis.api_listener.api_listener.Unpack(h)
    assert h.rds.route_config_name == f"outbound|80||{WEB}"
    assert not h.rds.config_source.HasField("initial_fetch_timeout")


# --- route configurations -------------------------------------------------------------------


def test_the_route_configuration_field_by_field() -> None:
    rc = gen.sidecar_routes(registry_of(), RouteView.of("default", {}))["80"]
    assert rc.name == "80"
    assert rc.HasField("validate_clusters") and rc.validate_clusters.value is False
    assert rc.ignore_port_in_host_matching is True
    assert rc.max_direct_response_body_size_bytes.value == 1024 * 1024
    assert [vh.name for vh in rc.virtual_hosts] == [f"{API}:80", f"{WEB}:80", "allow_any"]
    web = rc.virtual_hosts[1]
    assert list(web.domains) == [WEB, f"{WEB}.", "web", "web.default.svc", "web.default", "10.96.1.1"]
    assert web.include_request_attempt_count is True
    # From another namespace: no bare short name (istiod's GenerateAltVirtualHosts).
    assert list(rc.virtual_hosts[0].domains) == [API, f"{API}.", "api.other", "api.other.svc", "10.96.1.2"]
    # The catch-all, last.
    allow = rc.virtual_hosts[-1]
    assert list(allow.domains) == ["*"] and allow.include_request_attempt_count
    (r,) = allow.routes
    assert (r.name, r.match.prefix, r.route.cluster) == ("allow_any", "/", "PassthroughCluster")
    assert r.route.HasField("timeout") and seconds(r.route.timeout) == 0
    assert r.route.HasField("max_grpc_timeout") and not r.route.HasField("retry_policy")
    # Without a VirtualService: istiod's default route and its trace decorator.
    (d,) = web.routes
    assert (d.name, d.match.prefix, d.route.cluster) == ("default", "/", f"outbound|80||{WEB}")
    assert d.decorator.operation == f"{WEB}:80/*"
    assert d.route.retry_policy.num_retries.value == 2 and seconds(d.route.max_grpc_timeout) == 0
    # A client in the service's namespace gets its short name; the ports are never in a domain.
    other = gen.sidecar_routes(registry_of(), RouteView.of("other", {}))["80"]
    assert "api" in other.virtual_hosts[0].domains and "web" not in other.virtual_hosts[1].domains
    for vh in [*rc.virtual_hosts, *other.virtual_hosts]:
        assert not [d for d in vh.domains if d.endswith(":80")]


def test_a_domain_another_virtual_host_holds_is_dropped() -> None:
    rc = gen.sidecar_routes(registry_of(), RouteView.of("default", {}))["7000"]
    assert [vh.name for vh in rc.virtual_hosts] == [
        "ext.example.com:7000",
        f"{LEGACY}:7000",
        "twin.example.com:7000",
        "allow_any",
    ]
    by_name = {vh.name: list(vh.domains) for vh in rc.virtual_hosts}
    assert by_name["ext.example.com:7000"] == ["ext.example.com", "ext.example.com.", "10.96.5.5"]
    # twin shares ext's VIP: httproute.go dedupeDomains leaves it to the first.
    assert by_name["twin.example.com:7000"] == ["twin.example.com", "twin.example.com."]


def test_both_naming_families_in_one_rds_view() -> None:
    snap = Snapshot(1, registry_of(virtual_service()))
    names = set(snap.resources(RDS, RouteView.of("default", {})))
    assert {"80", "7000", "9090"} <= names
    assert {f"outbound|80||{WEB}", f"outbound|5432||{WEB}", f"outbound|7000||{LEGACY}"} <= names
    assert "5432" not in names and "53" not in names


# --- a VirtualService as a sidecar gets it ---------------------------------------------------


def sidecar_vs_routes() -> dict[str, Any]:
    rc = gen.sidecar_routes(registry_of(virtual_service()), RouteView.of("default", {}))["80"]
    (vh,) = [vh for vh in rc.virtual_hosts if vh.name == f"{WEB}:80"]
    return {r.name: r for r in vh.routes}


def test_rewrite_and_headers() -> None:
    routes = sidecar_vs_routes()
    assert list(routes) == ["rw", "prefix", "regex", "int-mirror", "no-mirror", "moved", "split"]
    rw = routes["rw"]
    # An exact-path match with a uri rewrite: prefix_rewrite, which Envoy applies to the whole path.
    assert rw.match.path == "/old" and rw.route.prefix_rewrite == "/new"
    # :authority set in the request headers: dropped as a header, the host rewrite instead.
    assert rw.route.host_rewrite_literal == "a.example"
    assert headers(rw.request_headers_to_add) == [("x-set", "1", OVERWRITE), ("x-add", "2", APPEND)]
    assert headers(rw.response_headers_to_add) == [("x-rset", "3", OVERWRITE), ("x-radd", "4", APPEND)]
    assert list(rw.response_headers_to_remove) == ["x-rgone"] and not rw.request_headers_to_remove
    assert rw.route.cluster == V1 and rw.decorator.operation == f"{WEB}:80/old"
    p = routes["prefix"]
    assert (p.match.prefix, p.route.prefix_rewrite, p.route.host_rewrite_literal) == ("/api", "/v2/api", "b.example")
    # The one destination's headers join the route's.
    assert headers(p.request_headers_to_add) == [("x-dest", "d", OVERWRITE)]
    assert list(p.request_headers_to_remove) == ["x-gone"]
    rx = routes["regex"].route
    assert (rx.regex_rewrite.pattern.regex, rx.regex_rewrite.substitution) == ("^/re/(.*)", "/\\1")
    assert not rx.prefix_rewrite and not rx.host_rewrite_literal


def test_mirrors() -> None:
    routes = sidecar_vs_routes()

    def mirrors(name: str) -> list[tuple[str, int, int, bool]]:
        out = []
        for m in routes[name].route.request_mirror_policies:
            assert m.HasField("trace_sampled")
            f = m.runtime_fraction.default_value
            out.append((m.cluster, f.numerator, f.denominator, m.trace_sampled.value))
        return out

    assert mirrors("prefix") == [(V2, 125000, MILLION, False)]
    # mirrors[]: a percentage per million, none given: 100%, 0: no mirror.
    assert mirrors("regex") == [(V2, 500000, MILLION, False), (V1, 100, HUNDRED, False)]
    assert mirrors("int-mirror") == [(f"outbound|80||{WEB}", 30, HUNDRED, False)]
    assert mirrors("no-mirror") == []
    assert mirrors("rw") == []


def test_redirect_weights_timeout_fault_and_decorators() -> None:
    routes = sidecar_vs_routes()
    moved = routes["moved"]
    assert moved.WhichOneof("action") == "redirect"
    # derivePort FROM_REQUEST_PORT is the listener's port; 80 on http is left out.
    assert moved.redirect.path_redirect == "/gone" and moved.redirect.port_redirect == 0
    assert moved.decorator.operation == "web:80/go*"  # no single cluster: the VirtualService's name
    split = routes["split"]
    a = split.route
    assert [(c.name, c.weight.value) for c in a.weighted_clusters.clusters] == [(V1, 80), (V2, 20)]
    first, second = a.weighted_clusters.clusters
    # A weighted destination's headers stay on its cluster; its host header is its host rewrite.
    assert headers(first.request_headers_to_add) == [("x-w", "v1", OVERWRITE)]
    assert first.host_rewrite_literal == "c.example"
    assert not second.request_headers_to_add and not second.host_rewrite_literal
    assert not split.request_headers_to_add and not a.host_rewrite_literal
    # Envoy clients: timeout and max_grpc_timeout, never max_stream_duration.
    assert seconds(a.timeout) == 2 and seconds(a.max_grpc_timeout) == 2
    assert not a.HasField("max_stream_duration")
    f = fault_pb2.HTTPFault()
    assert split.typed_per_filter_config["envoy.filters.http.fault"].Unpack(f)
    assert (f.abort.http_status, f.abort.percentage.numerator) == (503, 10000)
    assert split.decorator.operation == "web:80/*"
    assert split.metadata.filter_metadata["istio"].fields["config"].string_value.endswith("/virtual-service/web")


def test_grpc_gets_the_same_virtual_service_without_what_it_ignores() -> None:
    rc = gen.routes(registry_of(virtual_service()), RouteView.of("default", {}))[f"outbound|80||{WEB}"]
    (vh,) = rc.virtual_hosts
    assert f"{WEB}:80" in vh.domains and "web:80" in vh.domains  # gRPC's domains carry the port
    assert not rc.HasField("validate_clusters") and not rc.ignore_port_in_host_matching
    assert [r.name for r in vh.routes] == ["rw", "prefix", "regex", "int-mirror", "no-mirror", "moved", "split"]
    for r in vh.routes:
        assert not r.HasField("decorator")
        assert not r.request_headers_to_add and not r.request_headers_to_remove
        assert not r.response_headers_to_add and not r.response_headers_to_remove
        if r.WhichOneof("action") == "route":
            a = r.route
            assert not a.prefix_rewrite and not a.HasField("regex_rewrite") and not a.host_rewrite_literal
            assert not a.request_mirror_policies and not a.HasField("max_grpc_timeout")
            assert a.HasField("max_stream_duration")
            for c in a.weighted_clusters.clusters:
                assert not c.request_headers_to_add and not c.host_rewrite_literal
    moved = vh.routes[5]
    assert moved.redirect.port_redirect == 0 and moved.redirect.path_redirect == "/gone"


@pytest.mark.parametrize(
    ("http", "field", "text"),
    [
        ({"headers": {"response": {"set": {":status": "200"}}}}, "spec.http[0].headers.response.set.:status", "pseudo"),
        ({"headers": {"request": {"add": {":path": "/x"}}}}, "spec.http[0].headers.request.add.:path", "pseudo"),
        ({"headers": {"response": {"set": {"host": "x"}}}}, "spec.http[0].headers.response.set.host", "host"),
        ({"headers": {"request": {"remove": ["host"]}}}, "spec.http[0].headers.request.remove[0]", "host"),
        ({"headers": {"request": {"set": {"x-a": "a\nb"}}}}, "spec.http[0].headers.request.set.x-a", "control"),
        (
            {"rewrite": {"authority": "a.example"}, "headers": {"request": {"set": {"host": "b.example"}}}},
            "spec.http[0].headers.request.set.host",
            "already rewritten",
        ),
        (
            {"rewrite": {"uriRegexRewrite": {"match": "(", "rewrite": "/"}}},
            "spec.http[0].rewrite.uriRegexRewrite.match",
            "",
        ),
        ({"rewrite": {"uriRegexRewrite": {"match": "x"}}}, "spec.http[0].rewrite.uriRegexRewrite.rewrite", "required"),
        (
            {"rewrite": {"uri": "/a", "uriRegexRewrite": {"match": "x", "rewrite": "y"}}},
            "spec.http[0].rewrite",
            "both",
        ),
        ({"mirrors": [{"percentage": {"value": 5}}]}, "spec.http[0].mirrors[0].destination", "required"),
        (
            {"mirrors": [{"destination": {"host": WEB}, "percentage": {"value": 150}}]},
            "spec.http[0].mirrors[0].percentage.value",
            "100",
        ),
        ({"mirrors": [{"destination": {"host": "*"}}]}, "spec.http[0].mirrors[0].destination.host", "'*'"),
        ({"mirror": {"host": WEB}, "mirrorPercentage": {"value": -1}}, "spec.http[0].mirrorPercentage.value", ""),
        ({"mirror": {"host": WEB}, "mirrorPercent": 101}, "spec.http[0].mirrorPercent", "100"),
    ],
)
def test_invalid_sidecar_fields_are_rejected_naming_the_field(http: dict[str, Any], field: str, text: str) -> None:
    doc = virtual_service()
    doc["spec"]["http"] = [{"route": [{"destination": {"host": WEB}}], **http}]
    res = LoadResult()
    load_documents(yaml.safe_dump(doc), "vs.yaml", res)
    assert res.objects == []
    (err,) = res.errors
    assert err.obj == "VirtualService default/web" and err.field == field, str(err)
    assert text in str(err)


@pytest.mark.parametrize(
    ("redirect", "field"),
    [
        ({"uri": "/x", "port": 70000}, "spec.http[0].redirect.port"),
        ({"uri": "/x", "derivePort": "NOW"}, "spec.http[0].redirect.derivePort"),
    ],
)
def test_invalid_redirect_ports_are_rejected(redirect: dict[str, Any], field: str) -> None:
    doc = virtual_service()
    doc["spec"]["http"] = [{"redirect": redirect}]
    res = LoadResult()
    load_documents(yaml.safe_dump(doc), "vs.yaml", res)
    (err,) = res.errors
    assert err.field == field, str(err)


def test_the_authority_may_be_set_once_through_the_request_headers() -> None:
    doc = virtual_service()
    doc["spec"]["http"] = [
        {"route": [{"destination": {"host": WEB}}], "headers": {"request": {"add": {":authority": "x.example"}}}}
    ]
    reg = registry_of(doc)
    (r,) = gen.sidecar_routes(reg, RouteView.of("default", {}))["80"].virtual_hosts[1].routes
    assert r.route.host_rewrite_literal == "x.example" and not r.request_headers_to_add


# --- what the VM agent reads from it ----------------------------------------------------------


def test_the_agent_maps_each_vip_on_an_http_port_to_the_catch_all_routes_cluster() -> None:
    """pymesh.agent.outbound reads these listeners and routes as it reads istiod's: the VIP
    of each virtual host to its catch-all route's cluster (a split: the heaviest)."""
    snap = Snapshot(1, registry_of(virtual_service()))
    proxy = parse_node(vm_node("10.0.0.5", group=""))
    lds = {n: listener_pb2.Listener.FromString(_value(e.sotw)) for n, e in snap.for_proxy(LDS, proxy).items()}
    view = read_listeners(lds)
    assert sorted(view.http_ports) == [(80, "80"), (7000, "7000"), (9090, "9090")]
    assert view.services == () and view.port_clusters == ()
    rds = {n: route_pb2.RouteConfiguration.FromString(_value(e.sotw)) for n, e in snap.for_proxy(RDS, proxy).items()}
    assert sorted(read_routes(view, rds)) == [
        ("10.96.1.1", 80, V1),
        ("10.96.1.1", 9090, f"outbound|9090|v1|{WEB}"),  # the same VirtualService, on the listener's port
        ("10.96.1.2", 80, f"outbound|80||{API}"),
        ("10.96.1.3", 7000, f"outbound|7000||{LEGACY}"),
        ("10.96.5.5", 7000, "outbound|7000||ext.example.com"),
    ]


def _value(sotw: bytes) -> bytes:
    (a,) = discovery_pb2.DiscoveryResponse.FromString(sotw).resources
    return bytes(a.value)


def test_sidecars_and_grpc_clients_with_one_view_share_the_rds_view_not_the_lds_one() -> None:
    sidecar = parse_node(vm_node("10.0.0.5", group=""))
    grpc = parse_node(vm_node("10.0.0.6", group="", extra={"GENERATOR": "grpc"}))
    assert view_key(RDS, sidecar) == view_key(RDS, grpc)
    assert view_key(LDS, sidecar) != view_key(LDS, grpc)


# --- over ADS -----------------------------------------------------------------------------------


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    cfg = tmp_path / "mesh"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(MESH)
    (cfg / "vs.yaml").write_text(yaml.safe_dump(virtual_service()))
    c = ControlPlane(cfg, xds_listen="127.0.0.1:0", persist=False, debounce=0.02)
    c.start()
    yield c
    c.stop()


def unpack(r: Any, cls: Any) -> dict[str, Any]:
    out = {}
    for a in r.resources:
        m = cls()
        assert a.Unpack(m)
        out[m.name] = m
    return out


def ask(s: AdsStream, type_url: str, names: tuple[str, ...] = ()) -> Any:
    s.send(type_url, names)
    r = s.recv()
    assert r.type_url == type_url
    s.ack(r, names)
    return r


def test_a_sidecar_gets_the_outbound_http_listeners_and_routes_over_ads(cp: ControlPlane) -> None:
    sidecar = AdsStream(cp.port, vm_node("127.0.0.31", group="", name="s"))
    grpc = AdsStream(cp.port, vm_node("127.0.0.32", group="", name="g", extra={"GENERATOR": "grpc"}))
    try:
        lis = unpack(ask(sidecar, LDS), listener_pb2.Listener)
        outbound = sorted(n for n in lis if n.startswith("0.0.0.0_"))
        assert outbound == ["0.0.0.0_7000", "0.0.0.0_80", "0.0.0.0_9090"]
        assert "virtualInbound" in lis and f"{WEB}:80" in lis  # the API listeners stay
        names = tuple(sorted(hcm(lis[n]).rds.route_config_name for n in outbound))
        rcs = unpack(ask(sidecar, RDS, names), route_pb2.RouteConfiguration)
        assert sorted(rcs) == ["7000", "80", "9090"]
        assert [vh.name for vh in rcs["80"].virtual_hosts] == [f"{API}:80", f"{WEB}:80", "allow_any"]
        assert rcs["80"].virtual_hosts[1].routes[0].route.prefix_rewrite == "/new"
        # A gRPC client beside it, with the same RDS view: its own listeners and route shapes.
        glis = unpack(ask(grpc, LDS), listener_pb2.Listener)
        assert not [n for n in glis if n.startswith("0.0.0.0_")] and "virtualInbound" not in glis
        (grc,) = unpack(ask(grpc, RDS, (f"outbound|80||{WEB}",)), route_pb2.RouteConfiguration).values()
        (vh,) = grc.virtual_hosts
        assert vh.name == f"{WEB}:80" and not vh.routes[0].route.prefix_rewrite
        assert vh.routes[0].route.HasField("max_stream_duration")
    finally:
        sidecar.close()
        grpc.close()


def test_an_unknown_route_name_gets_an_empty_configuration(cp: ControlPlane) -> None:
    s = AdsStream(cp.port, vm_node("127.0.0.33", group="", name="u"))
    try:
        rcs = unpack(ask(s, RDS, ("80", "12345")), route_pb2.RouteConfiguration)
        assert sorted(rcs) == ["12345", "80"]
        empty = rcs["12345"]
        assert not empty.virtual_hosts and empty.HasField("validate_clusters") and not empty.validate_clusters.value
    finally:
        s.close()


def test_a_route_change_is_pushed_only_to_whom_it_concerns(cp: ControlPlane) -> None:
    a = AdsStream(cp.port, vm_node("127.0.0.34", group="", name="a"))
    b = AdsStream(cp.port, vm_node("127.0.0.35", group="", name="b"))
    c = AdsStream(cp.port, vm_node("127.0.0.36", group="", name="c", extra={"GENERATOR": "grpc"}))
    d = AdsStream(cp.port, vm_node("127.0.0.37", group="", name="d", extra={"GENERATOR": "grpc"}))
    legacy = f"outbound|7000||{LEGACY}"
    subs = {a: ("7000", "80"), b: ("7000",), c: (legacy,), d: (f"outbound|80||{WEB}",)}
    try:
        for s, names in subs.items():
            ask(s, RDS, names)
        # The VirtualService for web changes: port 80's configurations, no others.
        (cp.config_dir / "vs.yaml").write_text(yaml.safe_dump(virtual_service(timeout="9s")))
        cp.reload()
        r = a.recv()
        assert [rc.name for rc in unpack(r, route_pb2.RouteConfiguration).values()] == ["80"]
        a.ack(r, subs[a])
        r = d.recv()
        assert list(unpack(r, route_pb2.RouteConfiguration)) == [f"outbound|80||{WEB}"]
        d.ack(r, subs[d])
        assert b.no_response(0.3) and c.no_response(0.1)
        # legacy goes: "7000" loses a virtual host; gRPC's configuration for it becomes empty.
        (cp.config_dir / "mesh.yaml").write_text(MESH.replace("name: legacy", "name: gone"))
        cp.reload()
        for s in (a, b):
            r = s.recv()
            (rc,) = unpack(r, route_pb2.RouteConfiguration).values()
            assert rc.name == "7000" and f"{LEGACY}:7000" not in [vh.name for vh in rc.virtual_hosts]
            s.ack(r, subs[s])
        r = c.recv()
        (rc,) = unpack(r, route_pb2.RouteConfiguration).values()
        assert rc.name == legacy and not rc.virtual_hosts
        assert d.no_response(0.3)
    finally:
        for s in subs:
            s.close()


# --- upstream protocol ----------------------------------------------------------------------------


def upstream_protocol(c: Any) -> str:
    """What a cluster tells Envoy (and the relay) to speak to its endpoints."""
    a = c.typed_extension_protocol_options.get(gen.HTTP_PROTOCOL_OPTIONS)
    if a is None:
        return "http/1.1"
    o = http_protocol_options_pb2.HttpProtocolOptions()
    assert a.Unpack(o)
    if o.HasField("use_downstream_protocol_config"):
        return "client's"
    assert o.explicit_http_config.HasField("http2_protocol_options"), o
    return "h2"


def test_each_ports_clusters_speak_the_protocol_istiod_sets() -> None:
    reg = registry_of()
    got = {n: upstream_protocol(c) for n, c in gen.clusters(reg, "envoy").items()}
    want = {
        f"outbound|80||{WEB}": "http/1.1",
        f"outbound|5432||{WEB}": "http/1.1",  # TCP: nothing said, as istiod
        f"outbound|9090||{WEB}": "h2",  # grpc-api
        f"outbound|7000||{LEGACY}": "client's",  # unknown protocol: sniffed, so the client's
        "outbound|7000||ext.example.com": "client's",
        "outbound|7000||twin.example.com": "http/1.1",
    }
    assert {n: got[n] for n in want} == want
    # Subsets get their port's protocol too.
    assert got[f"outbound|9090|v1|{WEB}"] == "h2" and got[f"outbound|80|v2|{WEB}"] == "http/1.1"
    # gRPC clients get no options at all (istiod's grpcgen): they speak HTTP/2 themselves.
    assert {upstream_protocol(c) for c in gen.clusters(reg, gen.GRPC).values()} == {"http/1.1"}


@pytest.mark.parametrize(
    ("rule", "subset", "want"),
    [
        # h2UpgradePolicy UPGRADE: HTTP/2 for an http port; a sniffed or grpc port keeps its own.
        ({"h2UpgradePolicy": "UPGRADE"}, {}, {80: "h2", 7000: "client's", 9090: "h2"}),
        ({"h2UpgradePolicy": "DO_NOT_UPGRADE"}, {}, {80: "http/1.1", 7000: "client's", 9090: "h2"}),
        # useClientProtocol wins over everything, even a grpc port's HTTP/2.
        ({"useClientProtocol": True, "h2UpgradePolicy": "UPGRADE"}, {}, {80: "client's", 9090: "client's"}),
        # A subset's connection pool overrides the rule's field by field.
        ({"h2UpgradePolicy": "UPGRADE"}, {"useClientProtocol": True}, {80: "client's"}),
        ({"useClientProtocol": True}, {"useClientProtocol": False}, {80: "http/1.1", 9090: "h2"}),
    ],
)
def test_a_destination_rules_connection_pool_picks_the_upstream_protocol(
    rule: dict[str, Any], subset: dict[str, Any], want: dict[int, str]
) -> None:
    hosts = {80: WEB, 9090: WEB, 7000: LEGACY}
    no_rules = MESH[: MESH.index("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule")]
    docs = [
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": h.split(".")[0], "namespace": "default"},
            "spec": {
                "host": h,
                "trafficPolicy": {"connectionPool": {"http": rule}},
                "subsets": [
                    {"name": "s", "labels": {"version": "v1"}, "trafficPolicy": {"connectionPool": {"http": subset}}}
                ],
            },
        }
        for h in (WEB, LEGACY)
    ]
    res = LoadResult()
    load_documents(no_rules + "".join("---\n" + yaml.safe_dump(d) for d in docs), "mesh.yaml", res)
    assert res.errors == [], [str(e) for e in res.errors]
    clusters = gen.clusters(build_registry(res.objects), "envoy")
    assert {p: upstream_protocol(clusters[f"outbound|{p}|s|{hosts[p]}"]) for p in want} == want


def test_an_unknown_h2_upgrade_policy_is_refused_naming_the_field() -> None:
    res = LoadResult()
    bad = MESH.replace(
        "  subsets: [{name: v1",
        "  trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: SOMETIMES}}}\n  subsets: [{name: v1",
    )
    load_documents(bad, "mesh.yaml", res)
    assert any("connectionPool.http.h2UpgradePolicy" in str(e) for e in res.errors), [str(e) for e in res.errors]


# --- parity with istiod ---------------------------------------------------------------------------

PARITY = ["plain", "subsets", "strict", "virtualservice", "accesslog", "multinetwork"]


def sidecar_node(scenario: str) -> Any:
    """The VM sidecar istiod answered (its manifest), without auto-registration."""
    client = json.loads((FIXTURES / scenario / "manifest.json").read_text())["clients"]["sidecar"]
    md = {k: v for k, v in client["metadata"].items() if k != "AUTO_REGISTER_GROUP"}
    s = struct_pb2.Struct()
    s.update(md)
    return base_pb2.Node(id=client["node_id"], metadata=s, user_agent_name="envoy")


def recorded(scenario: str, short: str, cls: Any) -> dict[str, Any]:
    r = discovery_pb2.DiscoveryResponse.FromString((FIXTURES / scenario / "sidecar" / f"{short}.pb").read_bytes())
    return unpack(r, cls)


def comparable(rc: Any) -> Any:
    """Per-filter configs decoded and re-encoded deterministically (Go and Python order
    the fields of an Any's bytes differently)."""
    out = route_pb2.RouteConfiguration()
    out.CopyFrom(rc)
    for vh in out.virtual_hosts:
        for r in vh.routes:
            for a in r.typed_per_filter_config.values():
                f = fault_pb2.HTTPFault()
                assert a.Unpack(f)
                a.value = f.SerializeToString(deterministic=True)
    return out


@pytest.mark.parametrize("scenario", PARITY)
def test_a_sidecars_outbound_http_listeners_and_routes_are_istiods(scenario: str, tmp_path: Path) -> None:
    ist_lis = {n: x for n, x in recorded(scenario, "lds", listener_pb2.Listener).items() if n.startswith("0.0.0.0_")}
    ist_rcs = recorded(scenario, "rds", route_pb2.RouteConfiguration)
    cp = ControlPlane(config_dir(scenario, tmp_path / "config"), xds_listen="127.0.0.1:0", persist=False)
    cp.start()
    s = AdsStream(cp.port, sidecar_node(scenario))
    try:
        lis = {n: x for n, x in unpack(ask(s, LDS), listener_pb2.Listener).items() if n.startswith("0.0.0.0_")}
        assert sorted(lis) == sorted(ist_lis)
        for name, ours in lis.items():
            theirs = ist_lis[name]
            assert ours.address == theirs.address and ours.traffic_direction == theirs.traffic_direction
            assert ours.bind_to_port == theirs.bind_to_port
            # istiod's one HTTP chain (beside its sniffing and passthrough chains) names the same routes.
            (ist_hcm,) = [h for h in (_chain_hcm(c) for c in theirs.filter_chains) if h is not None]
            assert hcm(ours).rds.route_config_name == ist_hcm.rds.route_config_name
            assert hcm(ours).rds.config_source == ist_hcm.rds.config_source
        names = tuple(sorted(hcm(x).rds.route_config_name for x in lis.values()))
        rcs = unpack(ask(s, RDS, names), route_pb2.RouteConfiguration)
        assert sorted(rcs) == sorted(ist_rcs)
        for name, rc in rcs.items():
            assert comparable(rc) == comparable(ist_rcs[name]), (scenario, name)
    finally:
        s.close()
        cp.stop()


@pytest.mark.parametrize("scenario", ["virtualservice", "autoalloc"])
def test_a_sidecars_clusters_speak_the_upstream_protocol_istiod_sets(scenario: str, tmp_path: Path) -> None:
    theirs = {n: upstream_protocol(c) for n, c in recorded(scenario, "cds", cluster_pb2.Cluster).items()}
    cp = ControlPlane(config_dir(scenario, tmp_path / "config"), xds_listen="127.0.0.1:0", persist=False)
    cp.start()
    s = AdsStream(cp.port, sidecar_node(scenario))
    try:
        ours = {n: upstream_protocol(c) for n, c in unpack(ask(s, CDS), cluster_pb2.Cluster).items()}
    finally:
        s.close()
        cp.stop()
    outbound = sorted(n for n in theirs if n.startswith("outbound|"))
    assert outbound and sorted(n for n in ours if n.startswith("outbound|")) == outbound
    assert {n: ours[n] for n in outbound} == {n: theirs[n] for n in outbound}


def _chain_hcm(chain: Any) -> Any:
    for f in chain.filters:
        h = hcm_pb2.HttpConnectionManager()
        if f.typed_config.Unpack(h):
            return h
    return None
