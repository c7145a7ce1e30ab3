"""xDS type URLs and the helpers every xDS reader shares.

The type URLs are Envoy's v3 resources plus Istio's NDS name table and the
health report a VM sends (istio/istio ``pkg/model/xds.go``: ``ClusterType``,
``EndpointType``, ``NameTableType``, ``HealthInfoType``...; short names as
``GetShortType``). go-control-plane keeps the same list in
``pkg/resource/v3/resource.go``.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from pymesh.mesh.errors import XdsResourceError

log = logging.getLogger(__name__)

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


def metric_type(type_url: str) -> str:
    """The ``type`` label Istio's xDS metrics give a type URL (``pkg/model``
    ``GetMetricType``): ``cds``, ``eds``, ``lds``, ``rds``, ``sds``, ``nds``;
    any other type keeps its URL, as there."""
    short = SHORT.get(type_url)
    return short.lower() if short is not None and type_url != HEALTH else type_url


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
    parsers read). Every ``Any`` inside is resolved through the default
    descriptor pool, importing the xds-protos package that defines its type
    on first sight (:func:`load_type`); an ``Any`` of a type nobody here
    defines (Istio's private filters, ``istio.envoy.config.filter.http.alpn``)
    is emptied with a debug line: an extension pymesh does not use never
    makes a resource unusable (Envoy would reject an unknown extension it
    must run; pymesh runs none of them)."""
    from google.protobuf import json_format

    try:
        d: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
        return d
    except (TypeError, KeyError):
        pass  # an Any of a type the pool does not hold yet
    copy = type(msg)()
    copy.CopyFrom(msg)
    _resolve_anys(copy, type(msg).DESCRIPTOR.full_name)
    d = json_format.MessageToDict(copy, preserving_proto_field_name=True)
    return d


_LOADED: dict[str, bool] = {}


def load_type(type_url: str) -> bool:
    """Makes the message type of ``type_url`` known to the default descriptor
    pool, importing the ``*_pb2`` modules of its package from xds-protos
    (``envoy.extensions.filters.http.router.v3.Router`` →
    ``envoy/extensions/filters/http/router/v3/*_pb2``). False when no
    installed module defines it."""
    from google.protobuf import descriptor_pool

    name = type_url.rsplit("/", 1)[-1]
    pool = descriptor_pool.Default()
    try:
        pool.FindMessageTypeByName(name)
        return True
    except KeyError:
        pass
    package = name.rsplit(".", 1)[0]
    if package not in _LOADED:
        _LOADED[package] = _import_package(package)
    try:
        pool.FindMessageTypeByName(name)
        return True
    except KeyError:
        return False


def _import_package(package: str) -> bool:
    import importlib
    import pkgutil

    try:
        mod = importlib.import_module(package)
    except ImportError:
        return False
    found = False
    for info in pkgutil.iter_modules(getattr(mod, "__path__", [])):
        if info.name.endswith("_pb2"):
            try:
                importlib.import_module(f"{package}.{info.name}")
                found = True
            except Exception:  # a module that does not import (version skew) is one type less
                log.debug("xds: %s.%s does not import", package, info.name, exc_info=True)
    return found


def _resolve_anys(msg: Any, path: str) -> None:
    """Walks ``msg`` (in place): every ``Any`` of a known type is decoded,
    walked and packed again; one of an unknown type is cleared."""
    from google.protobuf import symbol_database

    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        if field.is_repeated:
            if field.message_type.GetOptions().map_entry:
                items = list(value.values()) if field.message_type.fields_by_name["value"].message_type else []
            else:
                items = list(value)
        else:
            items = [value]
        for i, item in enumerate(items):
            where = f"{path}.{field.name}" + (f"[{i}]" if len(items) > 1 else "")
            if item.DESCRIPTOR.full_name == "google.protobuf.Any":
                if not item.type_url:
                    continue
                if not load_type(item.type_url):
                    log.debug("xds: ignoring %s of unknown type %s", where, item.type_url)
                    item.Clear()
                    continue
                cls = symbol_database.Default().GetSymbol(item.type_url.rsplit("/", 1)[-1])
                inner = cls()
                if not item.Unpack(inner):
                    item.Clear()
                    continue
                _resolve_anys(inner, where)
                item.Pack(inner)
            else:
                _resolve_anys(item, where)


def pack(msg: Any) -> Any:
    """``msg`` in a ``google.protobuf.Any``."""
    from google.protobuf import any_pb2

    a = any_pb2.Any()
    a.Pack(msg)
    return a
