"""Istio's ``istio.v1.auth`` CA messages (``ca.proto`` beside this file),
built at import time from a descriptor written here, like :mod:`pymesh.proto.nds`
(no generated code pinned to a protobuf runtime). ``tests/unit/test_security_ca.py``
compiles ca.proto with protoc and compares."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

PACKAGE = "istio.v1.auth"
SERVICE = f"{PACKAGE}.IstioCertificateService"
METHOD = f"/{SERVICE}/CreateCertificate"

_F = descriptor_pb2.FieldDescriptorProto


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(
        name="istio/v1/auth/ca.proto", package=PACKAGE, syntax="proto3", dependency=["google/protobuf/struct.proto"]
    )
    req = fd.message_type.add(name="IstioCertificateRequest")
    req.field.add(name="csr", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL, json_name="csr")
    req.field.add(
        name="validity_duration",
        number=3,
        type=_F.TYPE_INT64,
        label=_F.LABEL_OPTIONAL,
        json_name="validityDuration",
    )
    req.field.add(
        name="metadata",
        number=4,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_OPTIONAL,
        type_name=".google.protobuf.Struct",
        json_name="metadata",
    )
    resp = fd.message_type.add(name="IstioCertificateResponse")
    resp.field.add(name="cert_chain", number=1, type=_F.TYPE_STRING, label=_F.LABEL_REPEATED, json_name="certChain")
    svc = fd.service.add(name="IstioCertificateService")
    svc.method.add(
        name="CreateCertificate",
        input_type=f".{PACKAGE}.IstioCertificateRequest",
        output_type=f".{PACKAGE}.IstioCertificateResponse",
    )
    return fd


def _classes() -> tuple[Any, Any]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(struct_pb2.DESCRIPTOR.serialized_pb))
    pool.Add(file_descriptor())
    req = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.IstioCertificateRequest"))
    resp = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.IstioCertificateResponse"))
    return req, resp


IstioCertificateRequest, IstioCertificateResponse = _classes()
