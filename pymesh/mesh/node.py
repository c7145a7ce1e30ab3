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


# Workload labels Istio reads for telemetry (istio ``pkg/kube/labels/labels.go``,
# ``pkg/config/constants``).
CANONICAL_NAME_LABEL = "service.istio.io/canonical-name"
CANONICAL_REVISION_LABEL = "service.istio.io/canonical-revision"
WORKLOAD_NAME_LABEL = "service.istio.io/workload-name"


def app_label(labels: dict[str, str]) -> str:
    """The workload's app: ``app.kubernetes.io/name``, else ``app`` (istio/proxy
    ``extensions/common/metadata_object.cc``); "" when neither is set."""
    return labels.get("app.kubernetes.io/name") or labels.get("app") or ""


def version_label(labels: dict[str, str]) -> str:
    """``app.kubernetes.io/version``, else ``version``; "" when neither is set."""
    return labels.get("app.kubernetes.io/version") or labels.get("version") or ""


def canonical_service(labels: dict[str, str], workload_name: str) -> str:
    """istiod's ``CanonicalService`` name: the canonical-name label, then
    ``app.kubernetes.io/name``, then ``app``, then the workload name."""
    return labels.get(CANONICAL_NAME_LABEL) or app_label(labels) or workload_name


def canonical_revision(labels: dict[str, str]) -> str:
    """istiod's ``CanonicalService`` revision: the canonical-revision label,
    then ``app.kubernetes.io/version``, then ``version``, then ``latest``."""
    return labels.get(CANONICAL_REVISION_LABEL) or version_label(labels) or "latest"
