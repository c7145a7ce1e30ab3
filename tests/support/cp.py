"""Real parts for the control-plane tests: an ADS client stream (what a VM
agent sends), gRPC backends bound to distinct loopback addresses, and a
runner for gRPC's own xDS client in a subprocess (one XdsClient per process)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from pymesh.mesh.xds import HEALTH
from support.paths import EXAMPLE_MESH
from support.peers import CP_XDS_CLIENT

METHOD = "/pymesh.test.Echo/Who"


def example_config(dest: Path, port: int) -> Path:
    """The shipped example (pymesh/examples/mesh) with its service port moved to ``port``."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in EXAMPLE_MESH.glob("*.yaml"):
        (dest / f.name).write_text(f.read_text().replace("8080", str(port)))
    return dest


def vm_node(
    ip: str,
    *,
    group: str = "product-vm",
    namespace: str = "default",
    name: str = "vm-1",
    network: str = "",
    probe: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Any:
    md: dict[str, Any] = {"NAMESPACE": namespace, "INSTANCE_IPS": ip, "DNS_CAPTURE": "true"}
    if group:
        md["AUTO_REGISTER_GROUP"] = group
    if network:
        md["NETWORK"] = network
    if probe:
        md["PROXY_CONFIG"] = {"readinessProbe": {"tcpSocket": {"port": 8080}}}
    md.update(extra or {})
    s = struct_pb2.Struct()
    s.update(md)
    return base_pb2.Node(
        id=f"sidecar~{ip}~{name}.{namespace}~{namespace}.svc.cluster.local", metadata=s, user_agent_name="pymesh-test"
    )


class AdsStream:
    """One ADS stream (SotW or delta) driven by the test, request by request."""

    def __init__(self, port: int, node: Any, *, delta: bool = False, host: str = "127.0.0.1") -> None:
        self.node = node
        self.delta = delta
        self.channel = grpc.insecure_channel(f"{host}:{port}")
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self._requests: queue.Queue[Any] = queue.Queue()
        self.responses: queue.Queue[Any] = queue.Queue()
        self.error: grpc.RpcError | None = None
        self._first = True
        call = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self._call = call(iter(self._requests.get, None))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for r in self._call:
                self.responses.put(r)
        except grpc.RpcError as e:
            self.error = e
        finally:
            self.responses.put(None)

    def send(
        self,
        type_url: str,
        names: tuple[str, ...] = (),
        *,
        version: str = "",
        nonce: str = "",
        error: str | None = None,
        subscribe: tuple[str, ...] = (),
        unsubscribe: tuple[str, ...] = (),
    ) -> None:
        if self.delta:
            req = discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url,
                response_nonce=nonce,
                resource_names_subscribe=list(subscribe),
                resource_names_unsubscribe=list(unsubscribe),
            )
        else:
            req = discovery_pb2.DiscoveryRequest(
                type_url=type_url, resource_names=list(names), version_info=version, response_nonce=nonce
            )
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=13, message=error))
        if self._first:
            req.node.CopyFrom(self.node)
            self._first = False
        self._requests.put(req)

    def recv(self, timeout: float = 10.0) -> Any:
        try:
            r = self.responses.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no xDS response within {timeout}s") from None
        if r is None:
            self.responses.put(None)
            raise AssertionError(f"stream ended: {self.error}")
        return r

    def no_response(self, wait: float = 0.5) -> bool:
        try:
            r = self.responses.get(timeout=wait)
        except queue.Empty:
            return True
        self.responses.put(r)
        return r is None

    def ack(self, r: Any, names: tuple[str, ...] = ()) -> None:
        if self.delta:
            self.send(r.type_url, nonce=r.nonce)
        else:
            self.send(r.type_url, names, version=r.version_info, nonce=r.nonce)

    def health(self, healthy: bool, message: str = "probe failed") -> None:
        self.send(HEALTH, error=None if healthy else message)

    def wait_closed(self, timeout: float = 10.0) -> grpc.RpcError | None:
        self._reader.join(timeout)
        return self.error

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self.channel.close()
        self._reader.join(5)


class Backend:
    """A gRPC server on ``ip:port`` answering METHOD with its own name."""

    def __init__(self, ip: str, port: int, name: str) -> None:
        self.name = name
        self.calls = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))

        def who(request: bytes, context: Any) -> bytes:
            self.calls += 1
            return name.encode()

        handler = grpc.method_handlers_generic_handler(
            "pymesh.test.Echo",
            {"Who": grpc.unary_unary_rpc_method_handler(who, request_deserializer=None, response_serializer=None)},
        )
        self.server.add_generic_rpc_handlers((handler,))
        if self.server.add_insecure_port(f"{ip}:{port}") == 0:
            raise RuntimeError(f"cannot bind {ip}:{port}")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0)


def bootstrap(xds_port: int, *, network: str = "") -> str:
    md: dict[str, Any] = {"GENERATOR": "grpc", "NAMESPACE": "default"}
    if network:
        md["NETWORK"] = network
    return json.dumps(
        {
            "xds_servers": [
                {
                    "server_uri": f"127.0.0.1:{xds_port}",
                    "channel_creds": [{"type": "insecure"}],
                    "server_features": ["xds_v3"],
                }
            ],
            "node": {"id": "sidecar~127.0.0.1~client.default~default.svc.cluster.local", "metadata": md},
        }
    )


def xds_calls(
    xds_port: int, target: str, calls: int, *, timeout: float = 60.0, network: str = "", metadata: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Runs gRPC's xDS client in a subprocess against ``target``; returns
    ``{"counts": {backend: n}, "errors": [...]}``."""
    env = dict(os.environ, GRPC_XDS_BOOTSTRAP_CONFIG=bootstrap(xds_port, network=network))
    env.pop("GRPC_XDS_BOOTSTRAP", None)
    out = subprocess.run(
        [sys.executable, CP_XDS_CLIENT, target, str(calls), *metadata],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise AssertionError(f"xDS client failed ({out.returncode}): {out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def responses_until(stream: AdsStream, type_url: str, timeout: float = 10.0) -> Iterator[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = stream.recv(max(0.05, deadline - time.monotonic()))
        if r.type_url == type_url:
            yield r


def pymesh_cli() -> list[str]:
    exe = shutil.which("pymesh", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "pymesh"]
