"""The proxy behind an xDS stream: its node ID and metadata, parsed as
istiod parses them (``ParseServiceNodeWithMetadata`` in
pilot/pkg/model/context.go; keys of ``NodeMetadata`` in pkg/model/proxy.go).

Node ID: ``<type>~<ip>~<id>~<dns-domain>``, exactly four parts; the type is
``sidecar``, ``router``, ``waypoint`` or ``ztunnel``. For a VM the id is
``<name>.<namespace>`` and the domain ``<namespace>.svc.cluster.local``.
Metadata keys are the ``ISTIO_META_<KEY>`` environment names without the
prefix; several are strings for legacy reasons (booleans as ``"true"``,
``POD_PORTS`` and ``PROXY_CONFIG`` possibly as JSON text).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from pymesh.controlplane.errors import NodeError
from pymesh.mesh import node as meta
from pymesh.mesh.node import NODE_TYPES, NodeIdError, namespace_of, parse_node_id
from pymesh.mesh.values import truthy

__all__ = ["NODE_TYPES", "Proxy", "parse_node"]


def _json_field(value: Any, key: str) -> Any:
    if isinstance(value, str) and value:
        try:
            return json.loads(value)
        except ValueError:
            raise NodeError(f"node metadata {key}: not valid JSON") from None
    return value


@dataclass(frozen=True)
class Proxy:
    """What the control plane needs to know about one connected proxy."""

    node_id: str
    type: str
    ip_addresses: tuple[str, ...]
    id: str  # "<name>.<namespace>"
    dns_domain: str
    namespace: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    locality: str = ""  # region/zone/subzone, "" when the node carries none
    has_locality: bool = False
    user_agent: str = ""

    @property
    def network(self) -> str:
        return str(self.metadata.get(meta.NETWORK) or "")

    @property
    def cluster_id(self) -> str:
        return str(self.metadata.get(meta.CLUSTER_ID) or "")

    @property
    def generator(self) -> str:
        """``grpc`` for proxyless gRPC clients (Istio's ``GENERATOR=grpc``,
        also inferred from a gRPC user agent so a plain gRPC bootstrap works),
        else ``envoy``."""
        gen = str(self.metadata.get(meta.GENERATOR) or "")
        if gen:
            return gen.lower()
        return "grpc" if self.user_agent.lower().startswith("grpc") else "envoy"

    @property
    def auto_register_group(self) -> str:
        return str(self.metadata.get(meta.AUTO_REGISTER_GROUP) or "")

    @property
    def workload_entry(self) -> str:
        return str(self.metadata.get(meta.WORKLOAD_ENTRY) or "")

    @property
    def dns_capture(self) -> bool:
        return truthy(self.metadata.get(meta.DNS_CAPTURE))

    @property
    def dns_auto_allocate(self) -> bool:
        return truthy(self.metadata.get(meta.DNS_AUTO_ALLOCATE))

    @property
    def proxy_config(self) -> Mapping[str, Any]:
        pc = self.metadata.get(meta.PROXY_CONFIG)
        return pc if isinstance(pc, Mapping) else {}

    @property
    def ip_families(self) -> frozenset[int]:
        # Textual form is normalised by parse_node: IPv6 has ':', IPv4 never.
        return frozenset(6 if ":" in a else 4 for a in self.ip_addresses)


def parse_node(node: Any) -> Proxy:
    """Parses an ``envoy.config.core.v3.Node``; raises :class:`NodeError`
    naming what is wrong (the stream is then failed with INVALID_ARGUMENT)."""
    node_id = node.id
    try:
        parsed = parse_node_id(node_id)
    except NodeIdError as e:
        raise NodeError(str(e)) from None
    ntype, ip, pid, domain = parsed
    raw: dict[str, Any] = json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}
    # istio-agent strips ISTIO_META_ (string) and ISTIO_METAJSON_ (JSON) from
    # its environment when it builds the node; a hand-written bootstrap may
    # carry the environment names as they are, so accept both.
    md: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith(meta.METAJSON_PREFIX):
            md.setdefault(key[len(meta.METAJSON_PREFIX) :], _json_field(value, key))
        elif key.startswith(meta.META_PREFIX):
            md.setdefault(key[len(meta.META_PREFIX) :], value)
    for key, value in raw.items():
        if not key.startswith("ISTIO_META"):
            md[key] = value
    for key in meta.JSON_KEYS:
        if key in md:
            md[key] = _json_field(md[key], key)
    # INSTANCE_IPS (comma-joined) takes precedence over the IP in the id.
    ips_raw = str(md.get(meta.INSTANCE_IPS) or "") or ip
    ips: list[str] = []
    for a in ips_raw.split(","):
        a = a.strip()
        if not a:
            continue
        try:
            ips.append(str(ipaddress.ip_address(a)))
        except ValueError:
            raise NodeError(f"node {node_id!r}: {a!r} is not an IP address (INSTANCE_IPS / node id)") from None
    namespace = str(md.get(meta.NAMESPACE) or "") or namespace_of(parsed)
    labels = md.get(meta.LABELS)
    label_map = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {}
    has_loc = node.HasField("locality")
    loc = ""
    if has_loc:
        loc = "/".join(p for p in (node.locality.region, node.locality.zone, node.locality.sub_zone))
        loc = loc.rstrip("/")
    return Proxy(
        node_id=node_id,
        type=ntype,
        ip_addresses=tuple(ips),
        id=pid,
        dns_domain=domain,
        namespace=namespace,
        metadata=md,
        labels=label_map,
        locality=loc,
        has_locality=has_loc,
        user_agent=node.user_agent_name,
    )
