"""Real parts for the security tests: a control plane with its TLS port,
and ADS streams over TLS channels (with or without a client certificate)."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import grpc
from agent_helpers import write_vm_files
from cp_helpers import example_config
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from pymesh.controlplane import ControlPlane
from pymesh.controlplane.ca.service import SecurityOptions

PORT = 18080
SERVER_NAME = "istiod.istio-system.svc"


def secure_cp(tmp: Path, name: str = "cp", *, plaintext: bool = False, **opts: Any) -> ControlPlane:
    cfg = example_config(tmp / f"{name}-mesh", PORT)
    sec = SecurityOptions(secure_listen="127.0.0.1:0", **opts)
    return ControlPlane(
        cfg, xds_listen="127.0.0.1:0", data_dir=tmp / f"{name}-data", security=sec, plaintext=plaintext, debounce=0.02
    ).start()


def secure_vm_files(directory: Path, cp_port: int, root: str, token: str | None = None, **opts: Any) -> Path:
    """istioctl's VM files (``write_vm_files``) for a control plane's TLS port: its
    ``root-cert.pem``, the bootstrap ``istio-token`` when given, and an empty resolv.conf (no
    upstream resolver needed)."""
    d = write_vm_files(directory, cp_port, **opts)
    (d / "root-cert.pem").write_text(root)
    if token is not None:
        (d / "istio-token").write_text(token + "\n")
    (d / "resolv.conf").write_text("")
    return d


def tls_channel(port: int, root_pem: str, key: bytes | None = None, chain: bytes | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(root_pem.encode(), key, chain)
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", SERVER_NAME)])


class Stream:
    """One SotW ADS stream on a given channel; first request carries the node."""

    def __init__(self, channel: grpc.Channel, node: Any, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.channel = channel
        self.q: queue.Queue[Any] = queue.Queue()
        self.responses: queue.Queue[Any] = queue.Queue()
        self.error: grpc.RpcError | None = None
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.call = stub.StreamAggregatedResources(iter(self.q.get, None), metadata=metadata)
        self.node = node
        self.first = True
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self) -> None:
        try:
            for r in self.call:
                self.responses.put(r)
        except grpc.RpcError as e:
            self.error = e
        self.responses.put(None)

    def send(self, type_url: str, version: str = "", nonce: str = "") -> None:
        req = discovery_pb2.DiscoveryRequest(type_url=type_url, version_info=version, response_nonce=nonce)
        if self.first:
            req.node.CopyFrom(self.node)
            self.first = False
        self.q.put(req)

    def recv(self, timeout: float = 10.0) -> Any:
        r = self.responses.get(timeout=timeout)
        if r is None:
            self.responses.put(None)
            raise AssertionError(f"stream ended: {self.error}")
        return r

    def failure(self, timeout: float = 10.0) -> grpc.RpcError:
        self.t.join(timeout)
        assert self.error is not None, "the stream was not refused"
        return self.error

    def close(self) -> None:
        self.q.put(None)
        self.call.cancel()
        self.channel.close()
