"""The proxy's xDS node: its id and the metadata keys both ends use.

Node id ``<type>~<ip>~<id>~<dns-domain>`` (istio/istio
``pilot/pkg/model/context.go``: ``ServiceNode`` / ``ParseServiceNodeWithMetadata``):
exactly four parts, the type one of ``sidecar``, ``router``, ``waypoint``,
``ztunnel``; for a VM the id is ``<name>.<namespace>`` and the domain
``<namespace>.svc.<cluster domain>``.

Metadata (``NodeMetadata`` in ``pkg/model/proxy.go``): the agent turns every
``ISTIO_META_<KEY>`` environment variable into the string ``<KEY>`` and every
``ISTIO_METAJSON_<KEY>`` into parsed JSON; several keys are strings for
legacy reasons (booleans as ``"true"``: :func:`pymesh.mesh.values.truthy`,
``LABELS``/``PROXY_CONFIG``/``POD_PORTS`` possibly as JSON text). The keys
below are the ones pymesh writes or reads.
"""

from __future__ import annotations

from typing import NamedTuple

META_PREFIX = "ISTIO_META_"
METAJSON_PREFIX = "ISTIO_METAJSON_"
NODE_TYPES = ("sidecar", "router", "waypoint", "ztunnel")

# NodeMetadata keys (JSON tags in pkg/model/proxy.go).
NAMESPACE = "NAMESPACE"
NAME = "NAME"
LABELS = "LABELS"
INSTANCE_IPS = "INSTANCE_IPS"
PROXY_CONFIG = "PROXY_CONFIG"
SERVICE_ACCOUNT = "SERVICE_ACCOUNT"
ISTIO_VERSION = "ISTIO_VERSION"
INTERCEPTION_MODE = "INTERCEPTION_MODE"
CLUSTER_ID = "CLUSTER_ID"
NETWORK = "NETWORK"
GENERATOR = "GENERATOR"
DNS_CAPTURE = "DNS_CAPTURE"
DNS_AUTO_ALLOCATE = "DNS_AUTO_ALLOCATE"
AUTO_REGISTER_GROUP = "AUTO_REGISTER_GROUP"
WORKLOAD_ENTRY = "WORKLOAD_ENTRY"
WORKLOAD_NAME = "WORKLOAD_NAME"
POD_PORTS = "POD_PORTS"
MESH_ID = "MESH_ID"
# Keys whose value may arrive as JSON text.
JSON_KEYS = (PROXY_CONFIG, LABELS, POD_PORTS)


class NodeId(NamedTuple):
    type: str
    ip: str
    id: str  # "<name>.<namespace>"
    domain: str


class NodeIdError(ValueError):
    """Not a node id of Istio's form."""


def node_id(ip: str, name: str, namespace: str, domain: str, node_type: str = "sidecar") -> str:
    """``sidecar~10.0.0.5~vm-1.default~default.svc.cluster.local``."""
    for what, v in (("name", name), ("namespace", namespace)):
        if "~" in v:
            raise NodeIdError(f"node {what} {v!r} must not contain '~'")
    return f"{node_type}~{ip}~{name}.{namespace}~{namespace}.svc.{domain}"


def parse_node_id(text: str) -> NodeId:
    """The four parts; NodeIdError naming what is wrong."""
    parts = text.split("~")
    if len(parts) != 4:
        raise NodeIdError(f"node id {text!r}: expected <type>~<ip>~<id>~<domain> (4 parts separated by '~')")
    if parts[0] not in NODE_TYPES:
        raise NodeIdError(f"node id {text!r}: unknown proxy type {parts[0]!r} (one of {', '.join(NODE_TYPES)})")
    return NodeId(*parts)


def namespace_of(node: NodeId) -> str:
    """istiod's fallback when the metadata has no NAMESPACE: the id's
    ``<name>.<namespace>`` suffix, then the domain's first label."""
    if "." in node.id:
        return node.id.split(".", 1)[1]
    return node.domain.split(".", 1)[0] if node.domain else ""
