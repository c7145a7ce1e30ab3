"""Istio's TCP metadata-exchange frame (``istio-peer-exchange``, istio/proxy
``source/extensions/filters/network/metadata_exchange``) as the native relays
write and read it, byte for byte against protobuf's own serializer (what an
Envoy peer writes: ``google.protobuf.Any`` of a ``Struct``, deterministic, behind
the magic and length). The exchange on live connections is in
tests/netns/test_relay_mtls.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from google.protobuf import any_pb2, struct_pb2

from pymesh._native import mx_frame, mx_parse

MAGIC = (0x3D230467).to_bytes(4, "big")
LOCAL = {
    "workload": "product-vm",
    "namespace": "default",
    "app": "product",
    "version": "vm",
    "canonical_service": "product",
    "canonical_revision": "vm",
    "cluster": "Kubernetes",
    "name": "vm-1",
    "node_id": "sidecar~10.0.0.5~vm-1.default~default.svc.cluster.local",
}


GOLDEN = """
import json, sys
from google.protobuf import any_pb2, struct_pb2
md, node_id = json.loads(sys.argv[1])
inner = struct_pb2.Struct()
inner.update({"x-envoy-peer-metadata": md, "x-envoy-peer-metadata-id": node_id})
value = inner.SerializeToString(deterministic=True)
msg = any_pb2.Any(type_url="type.googleapis.com/google.protobuf.Struct", value=value)
sys.stdout.buffer.write(msg.SerializeToString(deterministic=True))
"""


def golden(md: dict[str, Any], node_id: str) -> bytes:
    """The frame with map keys in byte order, as Envoy's C++ protobuf (and Go's) write them
    deterministically: protobuf's pure-Python serializer in a child process, since the upb one
    loaded here orders a key before its own prefix."""
    env = dict(os.environ, PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python")
    out = subprocess.run(
        [sys.executable, "-c", GOLDEN, json.dumps([md, node_id])], env=env, capture_output=True, check=True
    )
    return MAGIC + len(out.stdout).to_bytes(4, "big") + out.stdout


def upb_frame(md: dict[str, Any], node_id: str) -> bytes:
    """The same frame from the protobuf loaded here (any key order: a reader must not care)."""
    inner = struct_pb2.Struct()
    inner.update({"x-envoy-peer-metadata": md, "x-envoy-peer-metadata-id": node_id})
    msg = any_pb2.Any(
        type_url="type.googleapis.com/google.protobuf.Struct", value=inner.SerializeToString(deterministic=True)
    )
    data = msg.SerializeToString(deterministic=True)
    return MAGIC + len(data).to_bytes(4, "big") + data


def test_our_frame_is_protobufs_own_serialization_byte_for_byte() -> None:
    want = golden(
        {
            "NAME": "vm-1",
            "NAMESPACE": "default",
            "WORKLOAD_NAME": "product-vm",
            "CLUSTER_ID": "Kubernetes",
            "LABELS": {
                "app": "product",
                "version": "vm",
                "service.istio.io/canonical-name": "product",
                "service.istio.io/canonical-revision": "vm",
            },
        },
        LOCAL["node_id"],
    )
    assert mx_frame(LOCAL) == want
    # Unknown fields are left out, not sent empty (Envoy omits what it does not know).
    sparse = {"namespace": "default", "node_id": "router~1.2.3.4~gw.ns~ns.svc.cluster.local"}
    assert mx_frame(sparse) == golden({"NAMESPACE": "default"}, sparse["node_id"])


def test_a_peers_frame_reads_as_envoy_reads_it() -> None:
    frame = upb_frame(
        {
            "NAME": "reviews-v2-7d9",
            "NAMESPACE": "bookinfo",
            "WORKLOAD_NAME": "reviews-v2",
            "CLUSTER_ID": "east",
            "OWNER": "kubernetes://apis/apps/v1/namespaces/bookinfo/deployments/reviews-v2",
            "LABELS": {"app": "reviews", "app.kubernetes.io/version": "2.0", "version": "v2"},
            "PLATFORM_METADATA": {"gcp_project": "x"},
            "INSTANCE_IPS": ["10.1.2.3"],
        },
        "sidecar~10.1.2.3~reviews-v2-7d9.bookinfo~bookinfo.svc.cluster.local",
    )
    got = mx_parse(frame)
    assert got == {
        "id": "sidecar~10.1.2.3~reviews-v2-7d9.bookinfo~bookinfo.svc.cluster.local",
        "name": "reviews-v2-7d9",
        "namespace": "bookinfo",
        "workload": "reviews-v2",
        "cluster": "east",
        "app": "reviews",
        "version": "2.0",  # app.kubernetes.io/version wins over version
        "canonical_service": "",
        "canonical_revision": "",
    }
    assert mx_parse(mx_frame(LOCAL))["workload"] == "product-vm"


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (b"GET / HTTP/1.1\r\n", "wrong magic"),
        (MAGIC + (1 << 20).to_bytes(4, "big"), "over 16 KiB"),
        (MAGIC + (10).to_bytes(4, "big") + b"\x0a\x03abc", "truncated"),
        (MAGIC + (3).to_bytes(4, "big") + b"\x0a\x05a", "truncated length-delimited"),
        (MAGIC + (6).to_bytes(4, "big") + b"\x0a\x04abcd", "not a google.protobuf.Struct"),
        (upb_frame({}, "x") + b"!", "bytes after the frame"),
    ],
)
def test_malformed_frames_are_errors_naming_what_is_wrong(frame: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        mx_parse(frame)
