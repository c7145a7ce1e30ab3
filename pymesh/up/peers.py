"""The small real peers of ``pymesh up``: gRPC servers standing in for the
pod and the VM's own workload, and the example mesh they serve."""

from __future__ import annotations

import socket
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pymesh._native import PymeshError

POD_IP = "127.0.0.2"
VM_IP = "127.0.0.3"
EXAMPLE_PORT = 8080
GET_METHOD = "/product.Product/Get"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"
SERVING = b"\x08\x01"  # grpc.health.v1.HealthCheckResponse{status: SERVING}


class UpError(PymeshError):
    """A step of ``pymesh up`` failed; the message names the step."""


class Workload:
    """A gRPC server on ``ip:port`` that answers ``/product.Product/Get``
    with its own name and the standard health check (raw bytes: no
    generated code needed)."""

    def __init__(self, name: str, ip: str, port: int) -> None:
        from concurrent import futures

        import grpc

        self.name = name
        self.address = f"{ip}:{port}"
        reply = f"{name} ({self.address})".encode()
        self.calls = 0

        def get(_req: bytes, _ctx: Any) -> bytes:
            self.calls += 1
            return reply

        def health(_req: bytes, _ctx: Any) -> bytes:
            return SERVING

        ident: Callable[[bytes], bytes] = lambda b: b  # noqa: E731
        handlers = {
            GET_METHOD: grpc.unary_unary_rpc_method_handler(get, ident, ident),
            HEALTH_METHOD: grpc.unary_unary_rpc_method_handler(health, ident, ident),
        }

        class Generic(grpc.GenericRpcHandler):  # type: ignore[misc]
            def service(self, details: Any) -> Any:
                return handlers.get(details.method)

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)])
        self.server.add_generic_rpc_handlers((Generic(),))
        try:
            bound = self.server.add_insecure_port(self.address)
        except RuntimeError as e:  # grpcio raises on a failed bind (older versions return 0)
            raise UpError(f"{name}: cannot listen on {self.address}: {e}") from None
        if bound == 0:
            raise UpError(f"{name}: cannot listen on {self.address}")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0).wait(5)


def port_free(ip: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def free_port(kind: int = socket.SOCK_STREAM, ip: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((ip, 0))
        port: int = s.getsockname()[1]
    return port


def service_port() -> int:
    """8080 as in the example when both backend addresses can take it, else
    one free port both can take."""
    port = EXAMPLE_PORT
    for _ in range(20):
        if port_free(POD_IP, port) and port_free(VM_IP, port):
            return port
        port = free_port(ip=POD_IP)
    raise UpError("no port free on both 127.0.0.2 and 127.0.0.3")


def example_mesh(dest: Path, port: int) -> Path:
    """The example resources, copied; the port rewritten when it is not 8080."""
    dest.mkdir()
    src = resources.files("pymesh") / "examples" / "mesh"
    for f in src.iterdir():
        if not f.name.endswith(".yaml"):
            continue
        text = f.read_text()
        if port != EXAMPLE_PORT:
            docs = [d for d in yaml.safe_load_all(text) if d]
            for d in docs:
                rewrite_port(d, port)
            text = yaml.safe_dump_all(docs, sort_keys=False)
        (dest / f.name).write_text(text)
    return dest


def rewrite_port(doc: dict[str, Any], port: int) -> None:
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    if kind == "Service":
        for p in spec.get("ports", []):
            if p.get("port") == EXAMPLE_PORT:
                p["port"] = p["targetPort"] = port
    elif kind == "Pod":
        for c in spec.get("containers", []):
            for p in c.get("ports", []):
                if p.get("containerPort") == EXAMPLE_PORT:
                    p["containerPort"] = port
    elif kind == "WorkloadGroup":
        ports = spec.get("template", {}).get("ports", {})
        for k, v in list(ports.items()):
            if v == EXAMPLE_PORT:
                ports[k] = port
        for probe in spec.get("probe", {}).values():
            if isinstance(probe, dict) and probe.get("port") == EXAMPLE_PORT:
                probe["port"] = port
