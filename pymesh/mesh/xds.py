"""xDS type URLs and the helpers every xDS reader shares.

The type URLs are Envoy's v3 resources plus Istio's NDS name table and the
health report a VM sends (istio/istio ``pkg/model/xds.go``: ``ClusterType``,
``EndpointType``, ``NameTableType``, ``HealthInfoType``...; short names as
``GetShortType``). go-control-plane keeps the same list in
``pkg/resource/v3/resource.go``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pymesh.mesh.errors import XdsResourceError

_PREFIX = "type.googleapis.com/"
CDS = _PREFIX + "envoy.config.cluster.v3.Cluster"
EDS = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = _PREFIX + "envoy.config.listener.v3.Listener"
RDS = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
SDS = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
NDS = _PREFIX + "istio.networking.nds.v1.NameTable"
HEALTH = _PREFIX + "istio.v1.HealthInformation"

SHORT = {CDS: "CDS", EDS: "EDS", LDS: "LDS", RDS: "RDS", SDS: "SDS", NDS: "NDS", HEALTH: "HEALTH"}
BY_SHORT = {v: k for k, v in SHORT.items()}

# EDS endpoint metadata istiod writes (pilot/pkg/networking/util/util.go,
# AppendLbEndpointMetadata): filter -> key.
ISTIO_FILTER = "istio"
SERVICE_ACCOUNT_KEY = "service_account"  # istio.service_account: the endpoint's SPIFFE identity
WORKLOAD_KEY = "workload"  # istio.workload: "name;namespace;canonical service;revision;cluster"
TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"
TLS_MODE_KEY = "tlsMode"  # envoy.transport_socket_match.tlsMode: "istio" or "disabled"

# google.rpc.Code INTERNAL: what Envoy and istio-agent put in NACKs and unhealthy reports.
CODE_INTERNAL = 13

M = TypeVar("M")


def short_name(type_url: str) -> str:
    """``CDS``, ``EDS``... for the known types, else the message name."""
    return SHORT.get(type_url) or type_url.rsplit("/", 1)[-1].rsplit(".", 1)[-1]


def unpack(any_msg: Any, type_url: str, cls: type[M]) -> M:
    """Decodes a ``google.protobuf.Any`` that must be of ``type_url``."""
    if any_msg.type_url != type_url:
        raise XdsResourceError(f"resource of type {any_msg.type_url!r} in a {short_name(type_url)} response")
    msg = cls()
    try:
        msg.ParseFromString(any_msg.value)  # type: ignore[attr-defined]
    except Exception as e:  # protobuf's DecodeError, or RuntimeError from the upb backend
        raise XdsResourceError(f"{type_url.rsplit('.', 1)[-1]} does not decode: {e}") from e
    return msg


def to_dict(msg: Any) -> dict[str, Any]:
    """A message as proto3 JSON with the proto field names (what the native
    parsers read)."""
    from google.protobuf import json_format

    d: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return d


def pack(msg: Any) -> Any:
    """``msg`` in a ``google.protobuf.Any``."""
    from google.protobuf import any_pb2

    a = any_pb2.Any()
    a.Pack(msg)
    return a
