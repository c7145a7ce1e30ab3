"""Istio's NDS ``NameTable`` message (``nds.proto`` beside this file).

The message classes are built at import time from a descriptor written here,
not from protoc output, so they work with whichever protobuf runtime is
installed (generated code pins the runtime version it was made with).
``tests/unit/test_nds_proto.py`` checks this descriptor against ``nds.proto``.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from pymesh.mesh.xds import NDS

TYPE_URL = NDS
PACKAGE = "istio.networking.nds.v1"

_F = descriptor_pb2.FieldDescriptorProto


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto of nds.proto."""
    fd = descriptor_pb2.FileDescriptorProto(name="istio/networking/nds/v1/nds.proto", package=PACKAGE, syntax="proto3")
    table = fd.message_type.add(name="NameTable")
    info = table.nested_type.add(name="NameInfo")
    for number, name, label in (
        (1, "ips", _F.LABEL_REPEATED),
        (2, "registry", _F.LABEL_OPTIONAL),
        (3, "shortname", _F.LABEL_OPTIONAL),
        (4, "namespace", _F.LABEL_OPTIONAL),
        (5, "alt_hosts", _F.LABEL_REPEATED),
    ):
        field = info.field.add(name=name, number=number, type=_F.TYPE_STRING, label=label, json_name=_camel(name))
        if name == "alt_hosts":
            field.options.deprecated = True
    entry = table.nested_type.add(name="TableEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL, json_name="key")
    entry.field.add(
        name="value",
        number=2,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_OPTIONAL,
        type_name=f".{PACKAGE}.NameTable.NameInfo",
        json_name="value",
    )
    table.field.add(
        name="table",
        number=1,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_REPEATED,
        type_name=f".{PACKAGE}.NameTable.TableEntry",
        json_name="table",
    )
    return fd


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _classes() -> tuple[Any, Any]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_descriptor())
    table = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.NameTable"))
    return table, table.NameInfo


NameTable, NameInfo = _classes()
