"""Istio's cluster names and their SNI form.

``direction|port|subset|host`` (istio/istio ``pilot/pkg/model/service.go``:
``BuildSubsetKey`` / ``ParseSubsetKey``) names Envoy clusters, EDS service
names and, for gRPC, the ``xds:///`` targets' clusters. The DNS-SRV form
``outbound_.port_.subset_.host`` (``BuildDNSSrvSubsetKey``) is the SNI a
sidecar sends in mesh mTLS and what an east-west gateway's
AUTO_PASSTHROUGH routes on.

Parsing is stricter than Istio's (which takes any text and yields port 0):
the direction must be ``inbound`` or ``outbound``, the port 1-65535 in
digits, the host non-empty; a separator left in the host (``|``, or ``_.``
in the SNI form) makes the name invalid (Istio's ``ParseSubsetKey`` would silently drop what
follows it). The Rust core keeps the same rules in
``native/src/mesh.rs``; ``tests/cases/mesh.cases`` holds the cases both
test suites run.
"""

from __future__ import annotations

from typing import NamedTuple

DIRECTIONS = ("inbound", "outbound")
# istiod's cluster for outbound traffic to destinations the mesh does not know
# (pilot/pkg/networking/util/util.go ``PassthroughCluster``): the original destination.
# A sidecar's per-port route configurations end with a catch-all virtual host routing to it
# (outboundTrafficPolicy ALLOW_ANY); readers treat it as "not a mesh cluster".
PASSTHROUGH_CLUSTER = "PassthroughCluster"
# Cluster types the lbtable serves (endpoints are IPs); LOGICAL_DNS/STRICT_DNS
# clusters are resolved by the proxy, ORIGINAL_DST ones are the destination itself.
LB_TYPES = ("STATIC", "EDS", None)


class ClusterName(NamedTuple):
    direction: str
    port: int
    subset: str
    host: str


def _port(text: str) -> int | None:
    if not text or not (text.isascii() and text.isdigit()):
        return None
    p = int(text)
    return p if 0 < p < 65536 else None


def cluster_name(host: str, port: int, subset: str = "", direction: str = "outbound") -> str:
    """``outbound|8080|v1|reviews.default.svc.cluster.local``."""
    return f"{direction}|{port}|{subset}|{host}"


def inbound_cluster_port(name: str) -> int | None:
    """The port of a sidecar's inbound cluster, ``inbound|<port>||`` (istiod's
    ``BuildInboundSubsetKey``: no subset, no host), else None."""
    direction, _, rest = name.partition("|")
    port_text, sep, tail = rest.partition("|")
    if direction != "inbound" or not sep or tail != "|":
        return None
    return _port(port_text)


def parse_cluster_name(name: str) -> ClusterName | None:
    """The parts of an Istio cluster name, or None when ``name`` is not one."""
    direction, sep1, rest = name.partition("|")
    port_text, sep2, rest = rest.partition("|")
    subset, sep3, host = rest.partition("|")
    if not (sep1 and sep2 and sep3) or direction not in DIRECTIONS or not host or "|" in host:
        return None
    port = _port(port_text)
    if port is None:
        return None
    return ClusterName(direction, port, subset, host)


def sni(host: str, port: int, subset: str = "", direction: str = "outbound") -> str:
    """``outbound_.8080_.v1_.reviews.default.svc.cluster.local``."""
    return f"{direction}_.{port}_.{subset}_.{host}"


def parse_sni(text: str) -> ClusterName | None:
    """The parts of an Istio SNI (DNS-SRV form), or None."""
    direction, sep1, rest = text.partition("_.")
    port_text, sep2, rest = rest.partition("_.")
    subset, sep3, host = rest.partition("_.")
    if not (sep1 and sep2 and sep3) or direction not in DIRECTIONS or not host or "_." in host:
        return None
    port = _port(port_text)
    if port is None:
        return None
    return ClusterName(direction, port, subset, host)


def sni_of_cluster(name: str) -> str | None:
    """The SNI for a cluster name (None when it is not an Istio cluster name)."""
    c = parse_cluster_name(name)
    return None if c is None else sni(c.host, c.port, c.subset, c.direction)
