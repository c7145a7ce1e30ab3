"""Networks: which network a workload is on, the gateways that reach each
network, and istiod's split-horizon EDS filter.

A workload's network, as istiod decides it:

- a WorkloadEntry's (or a ServiceEntry endpoint's) ``spec.network``; an
  auto-registered entry gets the VM's ``NETWORK`` node metadata, which
  overrides the WorkloadGroup template (:mod:`.autoregistration`). istiod's
  endpoint carries ``spec.network`` alone (``convertEndpoint`` in
  istio/istio pilot/pkg/serviceregistry/serviceentry/conversion.go sets
  ``Network: wle.Network``; the meshNetworks fallback of
  ``workloadEntryNetwork`` only reaches the endpoint's labels), so pymesh
  does the same;
- a pod's label ``topology.istio.io/network``, else the network of
  meshNetworks whose ``fromRegistry`` names this cluster (``--cluster-id``,
  istiod's ``Kubernetes``), else the network whose ``fromCidr`` holds the
  pod IP (``Controller.Network`` in pilot/pkg/serviceregistry/kube/controller/
  controller.go, ``networkFromMeshNetworks`` in .../controller/network.go).
  istiod reads a label on its own system namespace in between; pymesh has no
  Namespace objects, so that step is skipped.

A proxy's network is its node metadata ``NETWORK`` (:mod:`.node`).

Gateways (``NetworkManager.reload`` in pilot/pkg/model/network.go and
``getGatewayDetails`` / ``extractGatewaysInner`` in
pilot/pkg/serviceregistry/kube/controller/network.go): a Service labelled
``topology.istio.io/network`` that has the port of label
``networking.istio.io/gatewayPort`` (default 15443) among its ports, at each
of its external addresses (``status.loadBalancer.ingress[].ip`` of a
LoadBalancer Service, ``spec.externalIPs``; istiod does not read
``spec.loadBalancerIP``); meshNetworks ``gateways`` by ``address``; and by
``registryServiceName`` (the Service's external addresses, the gateway's
port) for a network whose ``fromRegistry`` names this cluster. Addresses
that are not IPs (load balancer host names) are left out: istiod resolves
them (``RESOLVE_HOSTNAME_GATEWAYS``), pymesh does not.

The filter is :func:`split` (``EndpointsByNetworkFilter`` in
pilot/pkg/xds/endpoints/ep_filters.go), used by
:func:`pymesh.controlplane.generators.load_assignment`.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pymesh.controlplane import validation as v
from pymesh.controlplane.errors import ValidationError
from pymesh.controlplane.resources import Service
from pymesh.controlplane.yamlsafe import DEFAULT_LIMITS, Limits, YamlSyntaxError, units
from pymesh.mesh.defaults import GATEWAY_MTLS_PORT

if TYPE_CHECKING:
    from pymesh.controlplane.registry import Registry

log = logging.getLogger("pymesh.controlplane")

DEFAULT_CLUSTER_ID = "Kubernetes"  # istiod's --clusterID default
NETWORK_LABEL = "topology.istio.io/network"
GATEWAY_PORT_LABEL = "networking.istio.io/gatewayPort"
MAX_UINT32 = 0xFFFFFFFF

IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- meshNetworks ------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewaySpec:
    """One meshNetworks gateway: ``address`` or ``registry_service_name``, and a port."""

    address: str
    registry_service_name: str
    port: int


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    cidrs: tuple[IpNet, ...]
    registries: tuple[str, ...]
    gateways: tuple[GatewaySpec, ...]


@dataclass(frozen=True)
class MeshNetworks:
    """istiod's meshNetworks (istio/api ``mesh/v1alpha1/network.proto``), networks by name."""

    networks: tuple[NetworkSpec, ...] = ()

    def network_from_registry(self, cluster_id: str) -> str:
        """The network whose ``fromRegistry`` names ``cluster_id`` (the first by
        name when several do; istiod keeps the first it meets and warns)."""
        for n in self.networks:
            if cluster_id in n.registries:
                return n.name
        return ""

    def network_from_cidr(self, ip: str) -> str:
        """The network whose ``fromCidr`` holds ``ip``: the longest prefix, then the name."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return ""
        best: tuple[int, str] | None = None
        for n in self.networks:
            for c in n.cidrs:
                if addr.version == c.version and addr in c and (best is None or c.prefixlen > best[0]):
                    best = (c.prefixlen, n.name)
        return best[1] if best else ""

    def network_of(self, ip: str, cluster_id: str) -> str:
        """``networkFromMeshNetworks``: ``fromRegistry`` first, then ``fromCidr``."""
        return self.network_from_registry(cluster_id) or self.network_from_cidr(ip)

    def address_gateways(self) -> list[Gateway]:
        return [Gateway(g.address, g.port, n.name, "") for n in self.networks for g in n.gateways if g.address]

    def service_gateways(self, cluster_id: str) -> dict[str, list[tuple[str, int]]]:
        """registryServiceName -> [(network, port)], for the networks whose
        ``fromRegistry`` names this cluster (``reloadMeshNetworks``)."""
        out: dict[str, list[tuple[str, int]]] = {}
        for n in self.networks:
            if cluster_id not in n.registries:
                continue
            for g in n.gateways:
                if g.registry_service_name:
                    out.setdefault(g.registry_service_name, []).append((n.name, g.port))
        return out


def _only_keys(m: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for k in m:
        if k not in allowed:
            raise v.fail(f"{where}.{k}", f"unknown field (allowed: {', '.join(allowed)})")


def parse_mesh_networks(doc: Any) -> MeshNetworks:
    """Validates as istiod's ``ValidateMeshNetworks`` (pkg/config/validation/agent/
    validation.go): a CIDR, a DNS-1123 label registry, a gateway address that is an
    IP (or a host name) or an FQDN service name, a port in 1..65535. Errors name the field."""
    if doc is None:
        return MeshNetworks()
    top = v.mapping(doc, "(top level)")
    _only_keys(top, ("networks",), "")
    nets = v.mapping(top.get("networks"), "networks")
    out: list[NetworkSpec] = []
    for name in sorted(nets):
        f = f"networks.{name}"
        if not isinstance(name, str) or not name:
            raise v.fail(f, "a network needs a name")
        body = v.mapping(nets[name], f)
        _only_keys(body, ("endpoints", "gateways"), f)
        cidrs: list[IpNet] = []
        registries: list[str] = []
        for i, ep in enumerate(v.sequence(body.get("endpoints"), f"{f}.endpoints")):
            ef = f"{f}.endpoints[{i}]"
            em = v.mapping(ep, ef)
            _only_keys(em, ("fromCidr", "fromRegistry"), ef)
            if ("fromCidr" in em) == ("fromRegistry" in em):
                raise v.fail(ef, "needs exactly one of fromCidr, fromRegistry")
            if "fromCidr" in em:
                cidr = v.string(em["fromCidr"], f"{ef}.fromCidr", required=True)
                try:
                    cidrs.append(ipaddress.ip_network(cidr, strict=False))
                except ValueError:
                    raise v.fail(f"{ef}.fromCidr", f"{cidr!r} is not a CIDR") from None
            else:
                reg = v.string(em["fromRegistry"], f"{ef}.fromRegistry", required=True)
                v.dns1123_label(reg.lower(), f"{ef}.fromRegistry")
                registries.append(reg)
        gateways: list[GatewaySpec] = []
        for i, gw in enumerate(v.sequence(body.get("gateways"), f"{f}.gateways")):
            gf = f"{f}.gateways[{i}]"
            gm = v.mapping(gw, gf)
            _only_keys(gm, ("address", "registryServiceName", "port", "locality"), gf)
            if ("address" in gm) == ("registryServiceName" in gm):
                raise v.fail(gf, "needs exactly one of address, registryServiceName")
            port = v.port(gm.get("port"), f"{gf}.port")
            if "address" in gm:
                addr = v.string(gm["address"], f"{gf}.address", required=True)
                if v.is_ip(addr):
                    addr = str(ipaddress.ip_address(addr))
                else:
                    v.fqdn(addr, f"{gf}.address")
                gateways.append(GatewaySpec(addr, "", port))
            else:
                svc = v.string(gm["registryServiceName"], f"{gf}.registryServiceName", required=True)
                gateways.append(GatewaySpec("", v.fqdn(svc, f"{gf}.registryServiceName"), port))
        out.append(NetworkSpec(name, tuple(cidrs), tuple(registries), tuple(gateways)))
    return MeshNetworks(tuple(out))


def load_mesh_networks(path: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS) -> MeshNetworks:
    """istiod's ``--networksConfig`` file (YAML or JSON). A missing file is no
    networks, as istiod ("Using default mesh networks"); anything else wrong
    raises :class:`ValidationError` naming the file and the field."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return MeshNetworks()
    except OSError as e:
        raise ValidationError(f"cannot read: {e.strerror}", file=str(p), whole_file=True) from None
    if len(data) > limits.max_file_bytes:
        raise ValidationError(f"more than {limits.max_file_bytes} bytes", file=str(p), whole_file=True)
    try:
        docs = list(units(data.decode("utf-8"), limits))
    except (YamlSyntaxError, UnicodeDecodeError) as e:
        raise ValidationError(f"not YAML: {e}", file=str(p), whole_file=True) from None
    if len(docs) > 1:
        raise ValidationError("holds more than one YAML document", file=str(p), whole_file=True)
    if docs and docs[0].problem is not None:
        raise ValidationError(f"line {docs[0].problem.line}: {docs[0].problem.message}", file=str(p))
    try:
        return parse_mesh_networks(docs[0].value if docs else None)
    except ValidationError as e:
        raise e.located(file=str(p)) from None


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class NetworksFile:
    """The meshNetworks file, watched as istiod watches its ``--networksConfig``: read at
    start (an invalid file is an error then), re-read when its stamp changes; a file
    that turns invalid is reported (``error``) and the last good networks stay."""

    def __init__(self, path: Path, limits: Limits = DEFAULT_LIMITS) -> None:
        self.path = path
        self.limits = limits
        self.error = ""
        self.stamp = _stamp(path)
        self.current = load_mesh_networks(path, limits)

    def refresh(self) -> bool:
        """Re-reads a changed file; True when the networks it gives changed."""
        stamp = _stamp(self.path)
        if stamp == self.stamp:
            return False
        self.stamp = stamp
        try:
            new = load_mesh_networks(self.path, self.limits)
        except ValidationError as e:
            self.error = str(e)
            log.error("meshNetworks not applied, the last valid one stays: %s", e)
            return False
        self.error = ""
        if new == self.current:
            return False
        self.current = new
        log.info("meshNetworks %s: %d network(s)", self.path, len(new.networks))
        return True


# --- gateways ----------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Gateway:
    """``model.NetworkGateway``; ordered by address then port (``SortGateways``)."""

    address: str
    port: int
    network: str
    cluster: str  # "" for meshNetworks address gateways (istiod has no cluster for them)


@dataclass(frozen=True)
class NetworkGateways:
    by_network: Mapping[str, tuple[Gateway, ...]] = field(default_factory=dict)
    by_network_cluster: Mapping[tuple[str, str], tuple[Gateway, ...]] = field(default_factory=dict)
    # Least common multiple of the gateway counts per network and per (network, cluster):
    # every endpoint weight is multiplied by it so a weight splits evenly over gateways.
    scale: int = 1

    @classmethod
    def of(cls, gateways: Iterable[Gateway]) -> NetworkGateways:
        """``NetworkGateways.update``: deduplicated, indexed, sorted, lcm computed."""
        unique = sorted(set(gateways))
        by_net: dict[str, list[Gateway]] = {}
        by_nc: dict[tuple[str, str], list[Gateway]] = {}
        for g in unique:
            by_net.setdefault(g.network, []).append(g)
            by_nc.setdefault((g.network, g.cluster), []).append(g)
        scale = 1
        for group in (*by_net.values(), *by_nc.values()):
            scale = math.lcm(scale, len(group))
        return cls(
            {k: tuple(gs) for k, gs in by_net.items()},
            {k: tuple(gs) for k, gs in by_nc.items()},
            scale,
        )

    @property
    def enabled(self) -> bool:
        """``IsMultiNetworkEnabled``: any gateway at all. Without one, every endpoint is sent as it is."""
        return bool(self.by_network)

    def select(self, network: str, cluster: str) -> tuple[Gateway, ...]:
        """``selectNetworkGateways``: the network's gateways in the endpoint's cluster, else all of the network's."""
        return self.by_network_cluster.get((network, cluster)) or self.by_network.get(network, ())

    def all(self) -> list[Gateway]:
        return sorted(g for gs in self.by_network.values() for g in gs)


def service_gateway_details(
    svc: Service, from_mesh: Mapping[str, list[tuple[str, int]]], host: str
) -> list[tuple[str, int]]:
    """(network, port) pairs a Service is a gateway for (``getGatewayDetails``): by its
    network label (port from ``networking.istio.io/gatewayPort`` or 15443, which the
    Service must expose), else by meshNetworks ``registryServiceName``."""
    labels = svc.meta.labels
    nw = labels.get(NETWORK_LABEL, "")
    if nw:
        port = GATEWAY_MTLS_PORT
        raw = labels.get(GATEWAY_PORT_LABEL, "")
        if raw:
            try:
                port = int(raw)
            except ValueError:
                log.warning(
                    "Service %s/%s: %s=%r is not a port; using %d",
                    svc.meta.namespace,
                    svc.meta.name,
                    GATEWAY_PORT_LABEL,
                    raw,
                    GATEWAY_MTLS_PORT,
                )
        if not any(p.port == port for p in svc.ports):
            log.warning(
                "Service %s/%s is labelled as the gateway of network %s but has no port %d; ignored",
                svc.meta.namespace,
                svc.meta.name,
                nw,
                port,
            )
            return []
        return [(nw, port)]
    return list(from_mesh.get(host, ()))


def discover_gateways(services: Iterable[tuple[str, Service]], mesh: MeshNetworks, cluster_id: str) -> NetworkGateways:
    """Every gateway: meshNetworks addresses, then Services ((hostname, Service) pairs)."""
    gateways = mesh.address_gateways()
    from_mesh = mesh.service_gateways(cluster_id)
    for host, svc in services:
        details = service_gateway_details(svc, from_mesh, host)
        if not details:
            continue
        addresses = svc.external_addresses
        if not addresses:
            log.warning(
                "Service %s/%s is a network gateway without an external address", svc.meta.namespace, svc.meta.name
            )
        for addr in addresses:
            if not v.is_ip(addr):
                log.warning(
                    "gateway Service %s/%s: host name %r is not resolved; ignored",
                    svc.meta.namespace,
                    svc.meta.name,
                    addr,
                )
                continue
            for nw, port in details:
                gateways.append(Gateway(str(ipaddress.ip_address(addr)), port, nw, cluster_id))
    for g in list(gateways):
        if not v.is_ip(g.address):
            log.warning(
                "meshNetworks gateway %s of network %s: host names are not resolved; ignored", g.address, g.network
            )
            gateways.remove(g)
    return NetworkGateways.of(gateways)


# --- the EDS filter -----------------------------------------------------------------------


def in_network(endpoint_network: str, proxy_network: str) -> bool:
    """``Proxy.InNetwork`` (pilot/pkg/model/context.go): the same network, or either one unset."""
    return not endpoint_network or not proxy_network or endpoint_network == proxy_network


def scaled(weight: int, scale: int) -> int:
    """``scaleEndpointLBWeight``: 0 counts as 1; capped at the uint32 maximum."""
    if weight <= 0:
        return scale
    return min(weight * scale, MAX_UINT32)


DIRECT, VIA_GATEWAY, DROPPED = "direct", "gateway", "dropped"


def route(
    ep_network: str,
    tls_mode: str,
    cluster: str,
    proxy_network: str,
    gateways: NetworkGateways,
    *,
    local_only: bool = False,
) -> tuple[str, tuple[Gateway, ...]]:
    """How a proxy on ``proxy_network`` reaches an endpoint (``EndpointsByNetworkFilter``):
    directly when multi-network is off (no gateway anywhere), when it is in the
    proxy's network (or either is unset), or when its network has no gateway; else
    through its network's gateways when it takes Istio mTLS (the gateway routes by
    the SNI of that mTLS); else not at all. ``local_only`` (a network's east-west
    gateway): an endpoint of another network is not reached at all, since sending
    it on to that network's gateway would only bounce traffic between gateways.
    This is pymesh's choice where istiod applies the sidecar filter to gateways too."""
    if not gateways.enabled or in_network(ep_network, proxy_network):
        return DIRECT, ()
    if local_only:
        return DROPPED, ()
    gws = gateways.select(ep_network, cluster)
    if not gws:
        return DIRECT, ()
    if tls_mode != "istio":
        return DROPPED, ()
    return VIA_GATEWAY, gws


def split_weight(weight: int, gws: tuple[Gateway, ...], into: dict[Gateway, int]) -> None:
    """``splitWeightAmongGateways``: the integer share of each gateway."""
    share = weight // len(gws)
    for g in gws:
        into[g] = min(into.get(g, 0) + share, MAX_UINT32)


def unreachable_endpoints(registry: Registry) -> list[str]:
    """Endpoints every proxy on another network loses: their network has a gateway and
    they take no Istio mTLS (the filter drops them). For status and debugging."""
    gws = registry.gateways
    if not gws.enabled:
        return []
    out: list[str] = []
    for (host, port), eps in sorted(registry.endpoints.items()):
        for ep in eps:
            if ep.network and ep.tls_mode != "istio" and gws.select(ep.network, registry.cluster_id):
                out.append(
                    f"{host}:{port} {ep.kind} {ep.namespace}/{ep.name} {ep.address}:{ep.port} "
                    f"(network {ep.network}, tlsMode {ep.tls_mode})"
                )
    return out
