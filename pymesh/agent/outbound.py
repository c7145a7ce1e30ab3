"""What a sidecar's outbound listeners and routes say about where a captured
connection goes, read as Envoy would match them (istiod builds them in
istio/istio ``pilot/pkg/networking/core/listener.go`` and
``httproute.go``):

- ``<VIP>_<port>`` listeners (TCP and TLS service ports with an address):
  a ``tcp_proxy`` to the service's cluster. The listener's address and port
  are the captured destination.
- ``0.0.0.0_<port>`` listeners of HTTP ports: an HTTP connection manager
  whose RDS route configuration (named ``"<port>"``) has one virtual host per
  service, its VIPs among the ``domains``; the catch-all route's cluster is
  where a connection to that VIP goes on the L4 path (one cluster per
  connection: a weighted split takes its heaviest cluster until requests are
  routed one by one).
- ``0.0.0.0_<port>`` listeners of TCP ports without an address: every
  destination on that port goes to the cluster.
- ``virtualOutbound`` (15001): its catch-all chain says what happens to
  anything else: ``PassthroughCluster`` (``outboundTrafficPolicy:
  ALLOW_ANY``, the default) or ``BlackHoleCluster`` (``REGISTRY_ONLY``).

Only what the relay uses is read; the rest of each listener (Istio's
metadata exchange, stats, CORS...) is left alone.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pymesh.mesh.addr import format_host_port

log = logging.getLogger(__name__)

VIRTUAL_OUTBOUND = "virtualOutbound"
PASSTHROUGH = "PassthroughCluster"
BLACKHOLE = "BlackHoleCluster"
_TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


@dataclass(frozen=True)
class OutboundView:
    """The outbound listeners' routing, as data."""

    services: tuple[tuple[str, int, str], ...] = ()  # (VIP, port, cluster) from <VIP>_<port> listeners
    http_ports: tuple[tuple[int, str], ...] = ()  # (port, route configuration name)
    port_clusters: tuple[tuple[int, str], ...] = ()  # (port, cluster): 0.0.0.0_<port> TCP listeners
    default: str = "passthrough"  # what virtualOutbound does with the rest: passthrough | blackhole
    listeners: int = 0  # outbound listeners read (0: the control plane sends none)

    @property
    def route_names(self) -> frozenset[str]:
        return frozenset(name for _, name in self.http_ports)


def _tcp_cluster(chain: Any) -> str | None:
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    for f in chain.filters:
        if f.typed_config.type_url == _TCP_PROXY:
            tp = tcp_proxy_pb2.TcpProxy()
            if f.typed_config.Unpack(tp):
                if tp.cluster:
                    return str(tp.cluster)
                if tp.HasField("weighted_clusters") and tp.weighted_clusters.clusters:
                    heaviest = max(tp.weighted_clusters.clusters, key=lambda c: c.weight)
                    return str(heaviest.name)
    return None


def _rds_name(chain: Any) -> str | None:
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

    for f in chain.filters:
        if f.typed_config.type_url == _HCM:
            m = hcm.HttpConnectionManager()
            if f.typed_config.Unpack(m) and m.HasField("rds"):
                return str(m.rds.route_config_name)
    return None


def read_listeners(listeners: Mapping[str, Any]) -> OutboundView:
    """The routing of the outbound listeners among ``listeners`` (by name)."""
    services: list[tuple[str, int, str]] = []
    http_ports: list[tuple[int, str]] = []
    port_clusters: list[tuple[int, str]] = []
    default = "passthrough"
    count = 0
    for name, lis in sorted(listeners.items()):
        if lis.HasField("api_listener"):
            continue  # proxyless gRPC shape: no address to capture
        sa = lis.address.socket_address
        if name == VIRTUAL_OUTBOUND:
            count += 1
            for chain in lis.filter_chains:
                m = chain.filter_chain_match
                if m.HasField("destination_port") or m.prefix_ranges:
                    continue  # the loop guard (15001 itself) and friends
                if _tcp_cluster(chain) == BLACKHOLE:
                    default = "blackhole"
            continue
        if lis.traffic_direction == 1 or name == "virtualInbound":  # INBOUND
            continue
        if not sa.port_value:
            continue
        count += 1
        try:
            ip = ipaddress.ip_address(sa.address)
        except ValueError:
            continue
        chains = [*lis.filter_chains, *([lis.default_filter_chain] if lis.HasField("default_filter_chain") else [])]
        rds = next((r for r in (_rds_name(c) for c in lis.filter_chains) if r), None)
        if rds is not None:
            http_ports.append((sa.port_value, rds))
            continue
        cluster = next((c for c in (_tcp_cluster(ch) for ch in chains) if c), None)
        if cluster is None or cluster == PASSTHROUGH:
            continue
        if ip.is_unspecified:
            port_clusters.append((sa.port_value, cluster))
        else:
            services.append((str(ip), sa.port_value, cluster))
    return OutboundView(tuple(services), tuple(http_ports), tuple(port_clusters), default, count)


def _catch_all(route: Any) -> bool:
    m = route.match
    return (
        m.WhichOneof("path_specifier") in ("prefix", None)
        and m.prefix in ("", "/")
        and not m.headers
        and not m.query_parameters
        and not m.HasField("grpc")
    )


def _route_cluster(route: Any) -> str | None:
    if route.WhichOneof("action") != "route":
        return None
    action = route.route
    if action.cluster:
        return str(action.cluster)
    if action.HasField("weighted_clusters") and action.weighted_clusters.clusters:
        heaviest = max(action.weighted_clusters.clusters, key=lambda c: c.weight.value)
        return str(heaviest.name)
    return None


def read_routes(view: OutboundView, routes: Mapping[str, Any]) -> list[tuple[str, int, str]]:
    """(VIP, port, cluster) for every IP-literal domain of the HTTP ports'
    virtual hosts: the catch-all route's cluster (else the last route's)."""
    out: list[tuple[str, int, str]] = []
    for port, name in view.http_ports:
        rc = routes.get(name)
        if rc is None:
            continue
        for vh in rc.virtual_hosts:
            ips = []
            for d in vh.domains:
                host = d.rsplit(":", 1)[0] if d.count(":") == 1 else d
                try:
                    ips.append(str(ipaddress.ip_address(host.strip("[]"))))
                except ValueError:
                    continue
            if not ips or not vh.routes:
                continue
            chosen = next((r for r in vh.routes if _catch_all(r)), vh.routes[-1])
            cluster = _route_cluster(chosen)
            if cluster is None or cluster == PASSTHROUGH:
                continue
            out.extend((ip, port, cluster) for ip in ips)
    return out


# The per-filter configs the data path reads; others (istio.stats, CORS...) are dropped
# before the route configuration goes to it as JSON (their types need not be known).
_PER_FILTER_READ = ("envoy.filters.http.fault",)


def _route_json(rc: Any) -> str:
    """``rc`` as proto3 JSON for the relay, without what it does not read and whose
    ``Any`` payloads JSON could only write with their types registered: metadata,
    other filters' per-route configs, retry host predicates' and priorities' configs
    (the predicate's name is what counts), internal redirect predicates."""
    from envoy.config.route.v3 import route_pb2
    from envoy.extensions.filters.http.fault.v3 import fault_pb2  # noqa: F401  (registers HTTPFault for JSON)
    from google.protobuf import json_format

    copy = route_pb2.RouteConfiguration()
    copy.CopyFrom(rc)
    copy.ClearField("cluster_specifier_plugins")
    copy.ClearField("typed_per_filter_config")
    copy.ClearField("metadata")
    for vh in copy.virtual_hosts:
        vh.ClearField("metadata")
        vh.ClearField("retry_policy_typed_config")
        vh.ClearField("matcher")  # the generic matcher tree (Any inputs): not used by sidecar routes
        for holder in (vh, *vh.routes):
            for key in [k for k in holder.typed_per_filter_config if k not in _PER_FILTER_READ]:
                del holder.typed_per_filter_config[key]
        policies = [vh.retry_policy] if vh.HasField("retry_policy") else []
        for r in vh.routes:
            r.ClearField("metadata")
            if r.HasField("route"):
                r.route.ClearField("internal_redirect_policy")
                if r.route.HasField("retry_policy"):
                    policies.append(r.route.retry_policy)
            for w in r.route.weighted_clusters.clusters:
                w.ClearField("typed_per_filter_config")
                w.ClearField("metadata_match")
        for p in policies:
            p.ClearField("retry_priority")
            for pred in p.retry_host_predicate:
                pred.ClearField("typed_config")
    return str(json_format.MessageToJson(copy, indent=None))


def http_routes(view: OutboundView, routes: Mapping[str, Any]) -> tuple[tuple[tuple[int, str], ...], tuple[str, ...]]:
    """What the relay's HTTP path takes (``OutboundProxy.set_http_routes``): each HTTP
    port's RouteConfiguration as proto3 JSON, and the ``<VIP>_<port>`` TCP destinations on
    those ports, which stay TCP (Envoy matches the VIP listener before ``0.0.0.0_<port>``).
    A port whose route configuration has not arrived yet stays TCP meanwhile."""
    ports = {p: routes[n] for p, n in view.http_ports if n in routes}
    out = tuple((p, _route_json(rc)) for p, rc in sorted(ports.items()))
    tcp = tuple(sorted(format_host_port(ip, p) for ip, p, _ in view.services if p in ports))
    return out, tcp


@dataclass
class RouteTables:
    """The listeners and routes last accepted (by name)."""

    listeners: dict[str, Any] = field(default_factory=dict)
    routes: dict[str, Any] = field(default_factory=dict)
    view: OutboundView = field(default_factory=OutboundView)

    def services(self) -> list[tuple[str, int, str]]:
        return [*self.view.services, *read_routes(self.view, self.routes)]

    def http(self) -> tuple[tuple[tuple[int, str], ...], tuple[str, ...]]:
        return http_routes(self.view, self.routes)
