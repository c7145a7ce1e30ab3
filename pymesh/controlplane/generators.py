"""CDS, EDS, LDS and RDS resources from a registry snapshot.

The shapes are the ones gRPC's own xDS client accepts (gRFC A27,
https://github.com/grpc/proposal/blob/master/A27-xds-global-load-balancing.md;
grpc-go ``xds/internal/xdsclient/xdsresource/unmarshal_*.go``), as istiod
generates them for ``GENERATOR=grpc`` (istio/istio ``pilot/pkg/networking/grpcgen``):

- Listener ``<host>:<port>`` with an ``api_listener`` holding an
  HttpConnectionManager whose RDS config source is ADS and whose last (only)
  HTTP filter is the router; its address is the service's VIP, as istiod's.
- RouteConfiguration named as the cluster, ``outbound|<port>||<host>``, as
  istiod names it for gRPC: one virtual host ``<host>:<port>`` whose domains
  are istiod's (the host, with a trailing dot, its short names when it is a
  ``<name>.<namespace>.svc.<domain>`` name, the VIPs; each bare and with the
  port: ``route.generateVirtualHostDomains``), its routes those of the
  VirtualService for the host (:mod:`.httproutes`: matches, weighted subset
  clusters, timeout, retries, fault), else istiod's ``default`` route: prefix
  ``/`` to the cluster with istiod's default retry policy (and the
  DestinationRule's hash policy when it asks for consistent hashing); the fault
  filter before the router when a VirtualService injects faults.
  tests/unit/test_istiod_grpc_parity.py checks all of this against istiod's
  recorded answers.
- Cluster ``outbound|<port>|<subset>|<host>`` (Istio's naming), type EDS
  over ADS, EDS service name = cluster name; policy from the
  DestinationRule.
- ClusterLoadAssignment: endpoints grouped by locality, every locality with
  a ``load_balancing_weight`` (gRPC silently drops localities without one),
  no duplicate addresses (gRPC NACKs them), priorities without gaps; per
  proxy network, endpoints of other networks that have a gateway replaced by
  the gateway or dropped (istiod's split horizon: :mod:`.networks`,
  :func:`load_assignment`).

Sidecars (the VM agent, any Envoy-style client) get the API listeners and the
gRPC-named route configurations too, and also istiod's outbound HTTP shapes
(``listener.go buildSidecarOutboundHTTPListenerOpts``, ``httproute.go
buildSidecarOutboundHTTPRouteConfig``), for every port whose protocol is HTTP or
unknown (sniffed: :mod:`.protocol`) on a routable service:

- Listener ``0.0.0.0_<port>`` (``0.0.0.0:<port>``, OUTBOUND, not bound): one filter
  chain, an HttpConnectionManager whose RDS (ADS, no initial fetch timeout) names
  the route configuration ``"<port>"``; the fault filter before the router when a
  VirtualService for a service on the port injects faults.
- RouteConfiguration ``"<port>"``: ``validate_clusters`` false,
  ``ignore_port_in_host_matching``, a 1 MiB direct-response body limit; one virtual
  host ``<host>:<port>`` per service on the port (sorted by name; a domain already
  taken by an earlier one dropped: ``dedupeDomains``), its domains without ports,
  its routes the VirtualService's as an Envoy client gets them
  (:mod:`.httproutes`, ``sidecar=True``) else istiod's ``default`` route; last the
  catch-all ``allow_any`` (``*`` to ``PassthroughCluster``, timeout 0:
  ``buildCatchAllVirtualHost``; pymesh models no outboundTrafficPolicy, so never
  ``block_all``).

TCP-class ports get no outbound listener beyond the API one (the agent maps their
VIPs from NDS and CDS), except where another service uses the same port number for
HTTP: there istiod's ``<VIP>_<port>`` TCP proxy listener keeps the VIP out of the
port's HTTP routes.

Policy per client type: gRPC NACKs ``LEAST_REQUEST``, ``RANDOM`` and
``MAGLEV``, so for ``grpc`` those become ``ROUND_ROBIN`` (and Maglev
consistent hashing becomes ``RING_HASH``); Envoy-type proxies get them as
configured. ``PASSTHROUGH`` (original destination) is served as
``ROUND_ROBIN`` by both: pymesh has no original-destination clusters yet.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import duration_pb2, struct_pb2, wrappers_pb2

from pymesh.controlplane import httproutes, protocol
from pymesh.controlplane import networks as nets
from pymesh.controlplane.networks import DEFAULT_CLUSTER_ID, Gateway, NetworkGateways
from pymesh.controlplane.registry import Endpoint, Registry, ServiceModel
from pymesh.controlplane.resources import DestinationRule, TrafficPolicy
from pymesh.mesh import xds
from pymesh.mesh.clusters import PASSTHROUGH_CLUSTER, cluster_name
from pymesh.mesh.node import canonical_revision, canonical_service

log = logging.getLogger("pymesh.controlplane")

ROUTER_FILTER = "envoy.filters.http.router"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"
GRPC = "grpc"
ALLOW_ANY = "allow_any"  # istiod's util.Passthrough: the catch-all virtual host and route
# route.go DefaultMaxDirectResponseBodySizeBytes.
MAX_DIRECT_RESPONSE_BODY = 1024 * 1024


def _ads() -> Any:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.ApiVersion.V3
    )


_pack = xds.pack


def _duration(seconds: float) -> Any:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


# --- LDS / RDS --------------------------------------------------------------------------


def _routable(svc: ServiceModel) -> bool:
    # gRPC (and our API listeners) need an HTTP/2-capable TCP port; UDP ports get nothing.
    return svc.resolution != "Passthrough" or svc.registry == "Kubernetes"


def listeners(registry: Registry) -> dict[str, Any]:
    out: dict[str, Any] = {}
    router = hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=_pack(router_pb2.Router()))
    # Before the router, as istiod orders them (grpcgen/lds.go), when a VirtualService injects faults.
    fault = hcm_pb2.HttpFilter(name=httproutes.FAULT_FILTER, typed_config=_pack(fault_pb2.HTTPFault()))
    for svc in registry.services:
        if not _routable(svc):
            continue
        for p in svc.ports:
            if p.protocol == "UDP":
                continue
            name = f"{svc.hostname}:{p.number}"
            hcm = hcm_pb2.HttpConnectionManager(
                stat_prefix=name,
                rds=hcm_pb2.Rds(config_source=_ads(), route_config_name=cluster_name(svc.hostname, p.number)),
                http_filters=[fault, router] if httproutes.has_fault(registry, svc.hostname) else [router],
            )
            lis = listener_pb2.Listener(name=name, api_listener=api_listener_pb2.ApiListener(api_listener=_pack(hcm)))
            vips = _vips(svc)
            if vips:
                lis.address.socket_address.address = vips[0]
                lis.address.socket_address.port_value = p.number
            out[name] = lis
    return out


def _vips(svc: ServiceModel) -> list[str]:
    return [a for a in (*svc.addresses, *svc.auto_addresses) if a and "/" not in a]


def _domains(svc: ServiceModel, port: int, domain: str, *, client_namespace: str | None = None) -> list[str]:
    """istiod's virtual host domains (istio/istio pilot/pkg/networking/core/httproute.go
    ``generateVirtualHostDomains``, ``GenerateAltVirtualHosts``): the host and the host
    with a trailing dot; for ``<name>.<ns>.svc.<domain>`` the short forms ``<name>``,
    ``<name>.<ns>.svc``, ``<name>.<ns>``; then the VIPs.

    For a gRPC client (``client_namespace`` None) each bare and with ``:<port>``; istiod
    adds ``<name>`` only for clients in ``<ns>``, pymesh for every client
    (docs/istiod-interop.md §9). For a sidecar (its namespace given) each bare only, as
    istiod sets ``ignore_port_in_host_matching`` (``SidecarIgnorePort``); ``<name>`` only
    from ``<ns>`` (other namespaces get ``<name>.<ns>``, ``<name>.<ns>.svc``: a shared
    per-port configuration cannot hold ``reviews`` twice); a Kubernetes headless
    service's names also as ``*.<name>``; IPv6 VIPs in brackets (``util.IPv6Compliant``)."""
    host = svc.hostname
    names = [host, f"{host}."]
    labels = host.split(".")
    if host.endswith(f".svc.{domain}") and len(labels) == 3 + len(domain.split(".")):
        name, ns = labels[0], labels[1]
        if client_namespace is None or client_namespace == ns:
            names += [name, f"{name}.{ns}.svc", f"{name}.{ns}"]
        else:
            names += [f"{name}.{ns}", f"{name}.{ns}.svc"]
    if client_namespace is None:
        out: list[str] = []
        for n in [*names, *_vips(svc)]:
            out += [n, f"{n}:{port}"]
        return out
    if svc.resolution == "Passthrough" and svc.registry == "Kubernetes":
        names += [f"*.{n}" for n in names]
    return [*names, *(f"[{a}]" if ":" in a else a for a in _vips(svc))]


def _hash_policies(policy: TrafficPolicy | None) -> list[Any]:
    if policy is None or policy.consistent_hash is None:
        return []
    hp = httproutes.hash_policy(policy.consistent_hash)
    return [hp] if hp is not None else []


def routes(registry: Registry, view: httproutes.RouteView | None = None) -> dict[str, Any]:
    """One route configuration per service port; its routes from the VirtualService the
    client's view selects (:mod:`.httproutes`), else istiod's default route."""
    view = view or httproutes.RouteView()
    out: dict[str, Any] = {}
    for svc in registry.services:
        if not _routable(svc):
            continue
        dr = registry.destination_rule(svc.hostname)
        hashing = _hash_policies(dr.policy if dr else None)
        for p in svc.ports:
            if p.protocol == "UDP":
                continue
            name = cluster_name(svc.hostname, p.number)
            domains = _domains(svc, p.number, registry.domain)
            rs = httproutes.service_routes(svc, p.number, registry, view, hashing)
            vh = route_components_pb2.VirtualHost(name=f"{svc.hostname}:{p.number}", domains=domains, routes=rs)
            out[name] = route_pb2.RouteConfiguration(name=name, virtual_hosts=[vh])
    return out


# --- sidecar outbound HTTP (LDS / RDS) ---------------------------------------------------


def sidecar_http_ports(registry: Registry) -> dict[int, list[ServiceModel]]:
    """Port number -> the routable services (in hostname order) on which it is HTTP or
    sniffed: the ports that get a ``0.0.0.0_<port>`` listener and a ``"<port>"`` route
    configuration."""
    out: dict[int, list[ServiceModel]] = {}
    for svc in registry.services:
        if not _routable(svc):
            continue
        for p in svc.ports:
            if p.protocol == "UDP" or not protocol.is_http_or_sniffed(p.istio_protocol):
                continue
            members = out.setdefault(p.number, [])
            if not members or members[-1] is not svc:
                members.append(svc)
    return out


def _rds_source() -> Any:
    # listener_builder.go: ADS, and no initial fetch timeout (the listener waits for its routes).
    src = _ads()
    src.initial_fetch_timeout.CopyFrom(_duration(0))
    return src


def sidecar_listeners(registry: Registry) -> dict[str, Any]:
    """istiod's outbound HTTP listeners for a sidecar: ``0.0.0.0_<port>`` per HTTP port."""
    out: dict[str, Any] = {}
    router = hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=_pack(router_pb2.Router()))
    fault = hcm_pb2.HttpFilter(name=httproutes.FAULT_FILTER, typed_config=_pack(fault_pb2.HTTPFault()))
    http_ports = sidecar_http_ports(registry)
    for port, svcs in sorted(http_ports.items()):
        name = f"0.0.0.0_{port}"
        faulty = any(httproutes.has_fault(registry, s.hostname) for s in svcs)
        hcm = hcm_pb2.HttpConnectionManager(
            stat_prefix=f"outbound_{name}",
            rds=hcm_pb2.Rds(config_source=_rds_source(), route_config_name=str(port)),
            http_filters=[fault, router] if faulty else [router],
        )
        chain = listener_components_pb2.FilterChain(
            filters=[listener_components_pb2.Filter(name=HCM_FILTER, typed_config=_pack(hcm))]
        )
        lis = listener_pb2.Listener(name=name, traffic_direction=base_pb2.OUTBOUND, filter_chains=[chain])
        lis.address.socket_address.address = "0.0.0.0"
        lis.address.socket_address.port_value = port
        # Captured traffic arrives through the agent's redirection, never on a bound 0.0.0.0:<port>.
        lis.bind_to_port.CopyFrom(wrappers_pb2.BoolValue(value=False))
        out[name] = lis
    out.update(_shadowed_tcp_listeners(registry, set(http_ports)))
    return out


def _shadowed_tcp_listeners(registry: Registry, http_ports: set[int]) -> dict[str, Any]:
    """istiod's ``<VIP>_<port>`` TCP proxy listener (``listener.go``, ``tcp_proxy`` to the
    service's cluster) for a TCP-class port whose number another service uses for HTTP:
    a destination matches its VIP listener before ``0.0.0.0_<port>``, so its connections
    stay TCP instead of entering that port's HTTP routes. Other TCP-class ports get no
    outbound listener (the agent maps their VIPs from NDS and CDS)."""
    out: dict[str, Any] = {}
    for svc in registry.services:
        if not _routable(svc):
            continue
        for p in svc.ports:
            if p.number not in http_ports or p.protocol == "UDP":
                continue
            if protocol.is_http_or_sniffed(p.istio_protocol) or p.istio_protocol == protocol.UDP:
                continue
            cluster = cluster_name(svc.hostname, p.number)
            tp = tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster)
            chain = listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name=TCP_PROXY_FILTER, typed_config=_pack(tp))]
            )
            for vip in _vips(svc):
                name = f"{vip}_{p.number}"
                if name in out:
                    log.warning("%s:%d is a VIP of two TCP services; the first is kept", vip, p.number)
                    continue
                lis = listener_pb2.Listener(name=name, traffic_direction=base_pb2.OUTBOUND, filter_chains=[chain])
                lis.address.socket_address.address = vip
                lis.address.socket_address.port_value = p.number
                lis.bind_to_port.CopyFrom(wrappers_pb2.BoolValue(value=False))
                out[name] = lis
    return out


def _allow_any() -> Any:
    """httproute.go ``buildCatchAllVirtualHost`` (ALLOW_ANY): anything else on the port to
    its original destination, without a timeout."""
    action = route_components_pb2.RouteAction(cluster=PASSTHROUGH_CLUSTER)
    action.timeout.CopyFrom(_duration(0))
    action.max_grpc_timeout.CopyFrom(_duration(0))
    r = route_components_pb2.Route(name=ALLOW_ANY, match=route_components_pb2.RouteMatch(prefix="/"), route=action)
    return route_components_pb2.VirtualHost(
        name=ALLOW_ANY, domains=["*"], routes=[r], include_request_attempt_count=True
    )


def sidecar_routes(registry: Registry, view: httproutes.RouteView | None = None) -> dict[str, Any]:
    """istiod's per-port route configurations for a sidecar with this view."""
    view = view or httproutes.RouteView()
    out: dict[str, Any] = {}
    for port, svcs in sorted(sidecar_http_ports(registry).items()):
        taken: set[str] = set()
        vhosts = []
        for svc in svcs:
            domains = []
            for d in _domains(svc, port, registry.domain, client_namespace=view.namespace):
                if d.lower() not in taken:  # httproute.go dedupeDomains: the first virtual host keeps it
                    taken.add(d.lower())
                    domains.append(d)
            if not domains:
                continue
            dr = registry.destination_rule(svc.hostname)
            hashing = _hash_policies(dr.policy if dr else None)
            rs = httproutes.service_routes(svc, port, registry, view, hashing, sidecar=True)
            vhosts.append(
                route_components_pb2.VirtualHost(
                    name=f"{svc.hostname}:{port}", domains=domains, routes=rs, include_request_attempt_count=True
                )
            )
        vhosts.sort(key=lambda vh: vh.name)  # util.SortVirtualHosts, then the catch-all last
        name = str(port)
        rc = route_pb2.RouteConfiguration(name=name, virtual_hosts=[*vhosts, _allow_any()])
        rc.validate_clusters.CopyFrom(wrappers_pb2.BoolValue(value=False))
        rc.ignore_port_in_host_matching = True
        rc.max_direct_response_body_size_bytes.value = MAX_DIRECT_RESPONSE_BODY
        out[name] = rc
    return out


def empty_route_configuration(name: str) -> Any:
    """What istiod answers for a route configuration it cannot build (httproute.go
    ``BuildHTTPRoutes``): the name, no virtual hosts, never a missing resource."""
    rc = route_pb2.RouteConfiguration(name=name)
    rc.validate_clusters.CopyFrom(wrappers_pb2.BoolValue(value=False))
    return rc


# --- CDS ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lb:
    policy: int
    ring_min: int = 0


def _lb(policy: TrafficPolicy | None, generator: str) -> _Lb:
    C = cluster_pb2.Cluster
    if policy is None:
        return _Lb(C.ROUND_ROBIN)
    if policy.consistent_hash is not None:
        ch = policy.consistent_hash
        ring_raw = ch.get("ringHash")
        ring: Mapping[str, Any] = ring_raw if isinstance(ring_raw, Mapping) else {}
        ring_min = int(ring.get("minimumRingSize", 0) or ch.get("minimumRingSize", 0) or 0)
        if ch.get("maglev") is not None and generator != GRPC:
            return _Lb(C.MAGLEV)
        return _Lb(C.RING_HASH, ring_min)
    simple = policy.simple
    if simple in ("LEAST_REQUEST", "LEAST_CONN"):
        return _Lb(C.ROUND_ROBIN if generator == GRPC else C.LEAST_REQUEST)
    if simple == "RANDOM":
        return _Lb(C.ROUND_ROBIN if generator == GRPC else C.RANDOM)
    return _Lb(C.ROUND_ROBIN)


def _outlier(policy: TrafficPolicy | None) -> Any:
    od = policy.outlier if policy else None
    if od is None:
        return None
    msg = outlier_detection_pb2.OutlierDetection()
    if od.consecutive_5xx is not None:
        msg.consecutive_5xx.value = od.consecutive_5xx
        msg.enforcing_consecutive_5xx.value = 100 if od.consecutive_5xx > 0 else 0
    if od.consecutive_gateway_errors is not None:
        msg.consecutive_gateway_failure.value = od.consecutive_gateway_errors
        msg.enforcing_consecutive_gateway_failure.value = 100 if od.consecutive_gateway_errors > 0 else 0
    if od.interval is not None:
        msg.interval.CopyFrom(_duration(od.interval))
    if od.base_ejection_time is not None:
        msg.base_ejection_time.CopyFrom(_duration(od.base_ejection_time))
    if od.max_ejection_percent is not None:
        msg.max_ejection_percent.value = od.max_ejection_percent
    return msg


def _merge(base: TrafficPolicy | None, over: TrafficPolicy | None) -> TrafficPolicy | None:
    """A subset's policy overrides the rule's field by field (Istio's
    ``MergeTrafficPolicy`` at the granularity we model)."""
    if over is None:
        return base
    if base is None:
        return over
    lb_set = bool(over.simple or over.consistent_hash is not None)
    return TrafficPolicy(
        simple=over.simple if lb_set else base.simple,
        consistent_hash=over.consistent_hash if lb_set else base.consistent_hash,
        locality=over.locality if over.locality is not None else base.locality,
        outlier=over.outlier if over.outlier is not None else base.outlier,
        h2_upgrade=over.h2_upgrade or base.h2_upgrade,
        use_client_protocol=over.use_client_protocol
        if over.use_client_protocol is not None
        else base.use_client_protocol,
    )


HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


H2, CLIENTS = "h2", "client's"


def _upstream_protocol(c: Any, port_protocol: str, generator: str, policy: TrafficPolicy | None) -> None:
    """The upstream HTTP protocol as istiod sets it for sidecars (``pilot/pkg/networking/core``
    ``cluster_builder.go setUpstreamProtocol``, then ``cluster_traffic_policy.go``
    ``applyH2Upgrade`` and ``useClientProtocol``): HTTP/2 to the endpoints of
    ``http2``/``grpc``/``grpc-web`` ports (``setH2Options``), the client's protocol for
    ports of unknown protocol (``setUseDownstreamProtocol``: the proxy sniffed it), nothing
    for the rest (Envoy's HTTP/1.1); then the DestinationRule's ``useClientProtocol`` makes
    it the client's, else its ``h2UpgradePolicy: UPGRADE`` makes a port with nothing set
    HTTP/2 (pymesh models no mesh-wide ``h2UpgradePolicy``: istiod's default, no upgrade).
    gRPC clients get none of it, as from istiod's ``grpcgen``: they speak HTTP/2."""
    if generator == GRPC:
        return
    mode = H2 if protocol.is_http2(port_protocol) else CLIENTS if port_protocol == protocol.AUTO else ""
    if policy is not None and policy.use_client_protocol:
        mode = CLIENTS
    elif policy is not None and policy.h2_upgrade == "UPGRADE" and not mode:
        mode = H2
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    if mode == H2:
        opts.explicit_http_config.http2_protocol_options.SetInParent()
    elif mode == CLIENTS:
        opts.use_downstream_protocol_config.http_protocol_options.SetInParent()
        opts.use_downstream_protocol_config.http2_protocol_options.SetInParent()
    else:
        return
    c.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Pack(opts)


def _cluster(
    name: str,
    policy: TrafficPolicy | None,
    generator: str,
    port_protocol: str,
    dns_host: str = "",
    dns_port: int = 0,
) -> Any:
    lb = _lb(policy, generator)
    c = cluster_pb2.Cluster(name=name, lb_policy=lb.policy)
    _upstream_protocol(c, port_protocol, generator, policy)
    c.connect_timeout.CopyFrom(_duration(10.0))
    if dns_host:
        # gRPC (A37) and Envoy resolve DNS ServiceEntries themselves.
        c.type = cluster_pb2.Cluster.LOGICAL_DNS
        ep = endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=dns_host, port_value=dns_port)
                )
            )
        )
        c.load_assignment.CopyFrom(
            endpoint_pb2.ClusterLoadAssignment(
                cluster_name=name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[ep])]
            )
        )
    else:
        c.type = cluster_pb2.Cluster.EDS
        c.eds_cluster_config.eds_config.CopyFrom(_ads())
        c.eds_cluster_config.service_name = name
    if lb.policy == cluster_pb2.Cluster.RING_HASH and lb.ring_min:
        c.ring_hash_lb_config.minimum_ring_size.value = lb.ring_min
    od = _outlier(policy)
    if od is not None:
        c.outlier_detection.CopyFrom(od)
    return c


def clusters(registry: Registry, generator: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for svc in registry.services:
        if not _routable(svc):
            continue
        dr = registry.destination_rule(svc.hostname)
        base = dr.policy if dr else None
        for p in svc.ports:
            if p.protocol == "UDP":
                continue
            dns_host = ""
            if svc.resolution in ("DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"):
                eps = registry.endpoints.get((svc.hostname, p.number), ())
                if eps and not any(_is_ip(e.address) for e in eps):
                    dns_host = eps[0].address  # LOGICAL_DNS takes one name
            dns_port = 0
            if dns_host:
                dns_port = registry.endpoints[(svc.hostname, p.number)][0].port
            name = cluster_name(svc.hostname, p.number)
            out[name] = _cluster(name, base, generator, p.istio_protocol, dns_host, dns_port)
            for subset in dr.subsets if dr else ():
                sname = cluster_name(svc.hostname, p.number, subset.name)
                policy = _merge(base, subset.policy)
                out[sname] = _cluster(sname, policy, generator, p.istio_protocol, dns_host, dns_port)
    return out


# --- EDS ------------------------------------------------------------------------------


def _is_ip(a: str) -> bool:
    from pymesh.controlplane.validation import is_ip

    return is_ip(a)


@dataclass(frozen=True)
class EdsView:
    """What of a proxy shapes its endpoints: its network (which endpoints it
    reaches directly, which through a network gateway: :mod:`.networks`) and
    its locality (failover priorities). Two proxies on different networks get
    different ClusterLoadAssignments: the view is the snapshot's cache key."""

    network: str = ""
    locality: str = ""
    # A gateway (``router`` node) on a network: only that network's endpoints
    # (:func:`pymesh.controlplane.networks.route`).
    local_only: bool = False


def _priority(ep_locality: str, proxy_locality: str) -> int:
    """Istio's locality failover without explicit ``failover`` rules: 0 =
    same region/zone/subzone, 1 = same region/zone, 2 = same region, 3 = other."""
    mine = proxy_locality.split("/")
    theirs = ep_locality.split("/")
    same = 0
    for a, b in zip(mine[:3], theirs[:3], strict=False):
        if a != b or not a:
            break
        same += 1
    return 3 - same


def _locality_msg(locality: str) -> Any:
    parts = [*locality.split("/"), "", "", ""][:3]
    return base_pb2.Locality(region=parts[0], zone=parts[1], sub_zone=parts[2])


def _endpoint_metadata(lb: Any, tls_mode: str, fields: Mapping[str, str]) -> None:
    if tls_mode != "disabled":
        md = struct_pb2.Struct()
        md.update({"tlsMode": tls_mode})
        lb.metadata.filter_metadata["envoy.transport_socket_match"].CopyFrom(md)
    istio = struct_pb2.Struct()
    istio.update(fields)
    lb.metadata.filter_metadata["istio"].CopyFrom(istio)


def load_assignment(
    name: str,
    eps: Sequence[Endpoint],
    view: EdsView,
    policy: TrafficPolicy | None,
    subset_labels: Mapping[str, str],
    gateways: NetworkGateways | None = None,
    cluster: str = DEFAULT_CLUSTER_ID,
) -> Any:
    """istiod's ``EndpointBuilder.generate`` then ``EndpointsByNetworkFilter``
    (istio/istio pilot/pkg/xds/endpoints/endpoint_builder.go, ep_filters.go):
    endpoints grouped by locality; with any network gateway configured, every
    weight is multiplied by the gateways' scale factor, endpoints the proxy
    reaches through a gateway are replaced, in their locality, by one endpoint
    per gateway (``gw:port``, the summed weights split evenly, ``tlsMode:
    istio``, workload ``;;;;``), and endpoints of a gatewayed network without
    Istio mTLS are dropped. gRPC rejects duplicate addresses, so an address is
    sent once: among direct endpoints the one on the proxy's own network
    wins (then kind/namespace/name), and a gateway that several localities
    would carry stays in the first, with their summed weight."""
    gws = gateways or NetworkGateways()
    failover = bool(policy and policy.outlier is not None and view.locality)
    if policy is not None and policy.locality is not None and policy.locality.get("enabled") is False:
        failover = False
    scale = gws.scale if gws.enabled else 1
    direct: list[Endpoint] = []
    via: list[tuple[Endpoint, tuple[Gateway, ...]]] = []
    for ep in eps:
        if not _is_ip(ep.address):
            continue
        if any(ep.labels.get(k) != val for k, val in subset_labels.items()):
            continue
        how, through = nets.route(ep.network, ep.tls_mode, cluster, view.network, gws, local_only=view.local_only)
        if how == nets.DIRECT:
            direct.append(ep)
        elif how == nets.VIA_GATEWAY:
            via.append((ep, through))
    # One endpoint per address (gRPC NACKs duplicates): the proxy's own network first.
    chosen: dict[tuple[str, int], Endpoint] = {}
    for ep in sorted(direct, key=lambda e: not (view.network and e.network == view.network)):
        chosen.setdefault((ep.address, ep.port), ep)
    kept = {id(e) for e in chosen.values()}
    groups: dict[tuple[int, str], list[Endpoint]] = {}
    gw_groups: dict[tuple[int, str], dict[Gateway, int]] = {}
    for ep in direct:
        if id(ep) in kept:
            prio = _priority(ep.locality, view.locality) if failover else 0
            groups.setdefault((prio, ep.locality), []).append(ep)
    for ep, through in via:
        prio = _priority(ep.locality, view.locality) if failover else 0
        groups.setdefault((prio, ep.locality), [])
        nets.split_weight(nets.scaled(ep.weight, scale), through, gw_groups.setdefault((prio, ep.locality), {}))
    # gRPC rejects priority gaps: renumber the priorities that exist densely.
    dense = {p: i for i, p in enumerate(sorted({p for p, _ in groups}))}
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    taken = set(chosen)
    gw_lb: dict[tuple[str, int], Any] = {}
    for key, members in sorted(groups.items()):
        prio, loc = key
        lle = cla.endpoints.add(locality=_locality_msg(loc), priority=dense[prio])
        for m in members:
            lb = lle.lb_endpoints.add(health_status=health_check_pb2.HEALTHY)
            lb.endpoint.address.socket_address.address = m.address
            lb.endpoint.address.socket_address.port_value = m.port
            lb.load_balancing_weight.value = nets.scaled(m.weight, scale)
            # istiod's "name;namespace;canonical service;canonical revision;cluster"
            # (pilot/pkg/model/endpoint.go, the istio.workload metadata telemetry reads).
            wl = m.workload or m.name
            canon = f"{canonical_service(dict(m.labels), wl)};{canonical_revision(dict(m.labels))}"
            fields = {"workload": f"{wl};{m.namespace};{canon};{cluster}"}
            if m.service_account:
                # The workload's identity (Pod serviceAccountName, WorkloadEntry serviceAccount) as a
                # SPIFFE URI: the relay verifies the peer certificate of a tlsMode=istio endpoint
                # against it (Istio checks the same SANs, carried in the cluster's TLS context).
                fields["service_account"] = m.service_account
            _endpoint_metadata(lb, m.tls_mode, fields)
        for g, weight in sorted(gw_groups.get(key, {}).items()):
            addr = (g.address, g.port)
            if addr in gw_lb:  # already in an earlier locality: one address, the weights summed
                held = gw_lb[addr].load_balancing_weight
                held.value = min(held.value + max(weight, 1), nets.MAX_UINT32)
                continue
            if addr in taken:
                log.warning("cluster %s: gateway %s:%d is also a workload address; not added", name, *addr)
                continue
            lb = lle.lb_endpoints.add(health_status=health_check_pb2.HEALTHY)
            lb.endpoint.address.socket_address.address = g.address
            lb.endpoint.address.socket_address.port_value = g.port
            lb.load_balancing_weight.value = max(weight, 1)  # istiod: a 0 share becomes 1
            _endpoint_metadata(lb, "istio", {"workload": ";;;;"})
            gw_lb[addr] = lb
    if any(not lle.lb_endpoints for lle in cla.endpoints):  # all of a locality went through a gateway
        nonempty = [lle for lle in cla.endpoints if lle.lb_endpoints]
        del cla.endpoints[:]
        cla.endpoints.extend(nonempty)
        renumber = {p: i for i, p in enumerate(sorted({lle.priority for lle in cla.endpoints}))}
        for lle in cla.endpoints:
            lle.priority = renumber[lle.priority]
    for lle in cla.endpoints:  # locality weights last: a later locality may have added to a gateway's
        lle.load_balancing_weight.value = min(
            sum(e.load_balancing_weight.value for e in lle.lb_endpoints), nets.MAX_UINT32
        )
    return cla


def endpoints(registry: Registry, view: EdsView) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for svc in registry.services:
        if not _routable(svc):
            continue
        dr: DestinationRule | None = registry.destination_rule(svc.hostname)
        base = dr.policy if dr else None
        for p in svc.ports:
            if p.protocol == "UDP":
                continue
            eps = registry.endpoints.get((svc.hostname, p.number), ())
            if eps and not any(_is_ip(e.address) for e in eps):
                continue  # LOGICAL_DNS cluster: no EDS
            name = cluster_name(svc.hostname, p.number)
            gws, cid = registry.gateways, registry.cluster_id
            out[name] = load_assignment(name, eps, view, base, {}, gws, cid)
            for subset in dr.subsets if dr else ():
                sname = cluster_name(svc.hostname, p.number, subset.name)
                policy = _merge(base, subset.policy)
                out[sname] = load_assignment(sname, eps, view, policy, subset.labels, gws, cid)
    return out


def wrapped_uint(value: int) -> Any:
    return wrappers_pb2.UInt32Value(value=value)
