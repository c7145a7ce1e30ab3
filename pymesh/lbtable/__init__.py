"""Endpoint selection and redirection tables (the lbtable).

The tables are native (``pymesh._native.LbTable`` and ``RedirectTable``,
Rust); this package loads what users already write into them: Envoy
``Cluster`` resources as files (JSON, or YAML), Python dicts, or the
protobuf messages of the ``xds-protos`` package as an xDS client receives
them (``Cluster``, a ``google.protobuf.Any`` wrapping one, a
``DiscoveryResponse`` or an Envoy ``Bootstrap``). EDS updates
(``ClusterLoadAssignment``, which an xDS client receives separately from
the ``Cluster``) replace the endpoints of clusters already loaded:
``load_assignments``.

Every input goes through the same native parser: protobuf messages are
converted with ``MessageToDict(preserving_proto_field_name=True)`` first,
so validation and error messages are identical whatever the source.

Example::

    from pymesh.lbtable import load_clusters
    table = load_clusters("clusters.yaml", seed=1)
    table.pick("outbound|9080||reviews.default.svc.cluster.local")
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from pymesh._native import (
    LbTable,
    ParseError,
    RedirectTable,
    UnknownClusterError,
    lb_hash_key,
    lb_priority_load,
)
from pymesh.mesh import xds

__all__ = [
    "ASSIGNMENT_TYPE_URL",
    "CLUSTER_TYPE_URL",
    "LbTable",
    "RedirectTable",
    "UnknownClusterError",
    "assignments_from_protobuf",
    "clusters_from_protobuf",
    "lb_hash_key",
    "lb_priority_load",
    "load_assignments",
    "load_clusters",
    "load_redirect_table",
]

CLUSTER_TYPE_URL = xds.CDS
ASSIGNMENT_TYPE_URL = xds.EDS

Locality = Mapping[str, str]


def _is_message(obj: object) -> bool:
    return hasattr(obj, "DESCRIPTOR") and hasattr(obj, "SerializeToString")


def _message_to_dict(msg: Any, type_url: str = CLUSTER_TYPE_URL) -> dict[str, Any]:
    from google.protobuf import json_format

    if msg.DESCRIPTOR.full_name == "google.protobuf.Any":
        if msg.type_url != type_url:
            raise ParseError(f"protobuf Any: type {msg.type_url!r} is not {type_url!r}")
        if type_url == CLUSTER_TYPE_URL:
            from envoy.config.cluster.v3 import cluster_pb2

            inner: Any = cluster_pb2.Cluster()
        else:
            from envoy.config.endpoint.v3 import endpoint_pb2

            inner = endpoint_pb2.ClusterLoadAssignment()
        msg.Unpack(inner)
        msg = inner
    d: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return d


def clusters_from_protobuf(messages: Any) -> list[dict[str, Any]] | dict[str, Any]:
    """Converts protobuf input into the dicts the native parser takes.

    Accepts one message or an iterable of them: ``envoy.config.cluster.v3.Cluster``,
    a ``google.protobuf.Any`` holding one, a ``DiscoveryResponse`` (its
    ``resources``) or an Envoy ``Bootstrap`` (its ``static_resources.clusters``).
    """
    if _is_message(messages):
        name = messages.DESCRIPTOR.full_name
        if name in ("envoy.service.discovery.v3.DiscoveryResponse", "envoy.config.bootstrap.v3.Bootstrap"):
            # The native parser knows both shapes ("resources" with @type,
            # "static_resources.clusters").
            return _message_to_dict(messages)
        return [_message_to_dict(messages)]
    out = []
    for i, m in enumerate(messages):
        if not _is_message(m):
            raise ParseError(f"clusters[{i}]: expected a protobuf message, got {type(m).__name__}")
        out.append(_message_to_dict(m))
    return out


def assignments_from_protobuf(messages: Any) -> list[dict[str, Any]] | dict[str, Any]:
    """Converts protobuf EDS input into the dicts ``LbTable.load_assignments`` takes.

    Accepts one message or an iterable of them:
    ``envoy.config.endpoint.v3.ClusterLoadAssignment``, a
    ``google.protobuf.Any`` holding one, or a ``DiscoveryResponse`` (its
    ``resources``, each checked to be a ``ClusterLoadAssignment``).
    """
    if _is_message(messages):
        if messages.DESCRIPTOR.full_name == "envoy.service.discovery.v3.DiscoveryResponse":
            # MessageToDict resolves the Any resources through the default
            # descriptor pool: make sure the EDS type is registered in it.
            from envoy.config.endpoint.v3 import endpoint_pb2  # noqa: F401

            return _message_to_dict(messages)
        return [_message_to_dict(messages, ASSIGNMENT_TYPE_URL)]
    out = []
    for i, m in enumerate(messages):
        if not _is_message(m):
            raise ParseError(f"assignments[{i}]: expected a protobuf message, got {type(m).__name__}")
        out.append(_message_to_dict(m, ASSIGNMENT_TYPE_URL))
    return out


def load_assignments(
    source: str | os.PathLike[str] | Mapping[str, Any] | Iterable[Any] | Any,
    *,
    table: LbTable,
    now: float | None = None,
) -> int:
    """EDS: replaces the endpoints of clusters already in ``table``.

    ``source`` is a file path (JSON, or YAML for ``.yaml``/``.yml``),
    Python data (a list of ``ClusterLoadAssignment`` dicts, one of them,
    ``{"assignments": [...]}``, an xDS response dict), or protobuf messages
    (see ``assignments_from_protobuf``). Each cluster keeps its settings and
    its endpoints' live state for endpoints that stay. An assignment for a
    cluster the table does not have, or an invalid field, raises a
    ``pymesh.PymeshError`` naming the cluster and field, and the table is
    unchanged. Returns the table's new generation.
    """
    if isinstance(source, (str, os.PathLike)):
        return table.load_assignments_file(os.fspath(source), now=now)
    if _is_message(source) or (
        isinstance(source, (list, tuple)) and len(source) > 0 and all(_is_message(m) for m in source)
    ):
        return table.load_assignments(assignments_from_protobuf(source), now=now)
    return table.load_assignments(source, now=now)


def load_clusters(
    source: str | os.PathLike[str] | Mapping[str, Any] | Iterable[Any] | Any,
    *,
    table: LbTable | None = None,
    seed: int | None = None,
    locality: Locality | None = None,
    failover: list[tuple[str, str]] | None = None,
    replace: bool = True,
    now: float | None = None,
) -> LbTable:
    """Loads clusters into ``table`` (a new one unless given) and returns it.

    ``source`` is a file path (JSON, or YAML for ``.yaml``/``.yml``), Python
    data (a list of cluster dicts, one cluster dict, ``{"clusters": [...]}``,
    an Envoy bootstrap dict), or protobuf messages (see
    ``clusters_from_protobuf``). ``seed``, ``locality`` and ``failover``
    configure a new table (see ``LbTable``). On an error the table is unchanged.
    """
    if table is None:
        table = LbTable(seed=seed, locality=locality, failover=failover)
    if isinstance(source, (str, os.PathLike)):
        table.load_file(os.fspath(source), replace=replace, now=now)
    elif _is_message(source) or (
        isinstance(source, (list, tuple)) and len(source) > 0 and all(_is_message(m) for m in source)
    ):
        table.load(clusters_from_protobuf(source), replace=replace, now=now)
    else:
        table.load(source, replace=replace, now=now)
    return table


def load_redirect_table(source: str | os.PathLike[str] | Mapping[str, Any]) -> RedirectTable:
    """Loads a redirection table from a file (JSON, or YAML) or a dict."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            from pymesh._native import FileError

            raise FileError(f"{path}: {e.strerror}") from e
        return RedirectTable.from_json(text, yaml=path.endswith((".yaml", ".yml")))
    return RedirectTable.from_dict(source)
