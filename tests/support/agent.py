"""Real parts for the agent tests: VM bootstrap files shaped like istioctl's,
an agent built from them, DNS queries over UDP, probe targets (TCP, HTTP(S),
gRPC health), a scripted ADS server (a real gRPC peer that sends exactly the
pushes a test needs, e.g. a malformed one, and records every request) and the
xDS resources it pushes."""

from __future__ import annotations

import queue
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory

from pymesh.agent import Agent, AgentOptions, bootstrap, load_bootstrap
from pymesh.proto.nds import NameTable

VM_IP = "127.0.0.3"
POD_IP = "127.0.0.2"
PRODUCT = "product.default.svc.cluster.local"


def write_vm_files(
    directory: Path,
    cp_port: int,
    *,
    probe: Mapping[str, Any] | None = None,
    group: str = "product-vm",
    ip: str = VM_IP,
    extra_env: Mapping[str, str] | None = None,
    control_plane_auth: str = "NONE",
) -> Path:
    """The five files of ``istioctl x workload entry configure``, pointing at
    ``istiod.istio-system.svc:<cp_port>`` with the hosts file mapping that
    name to loopback (pymesh.agent.bootstrap.write_vm_files)."""
    import json

    env = {
        "CANONICAL_REVISION": "latest",
        "CANONICAL_SERVICE": "product",
        "ISTIO_INBOUND_PORTS": "*",
        "ISTIO_LOCAL_EXCLUDE_PORTS": "22,15090,15021,15020",
        "ISTIO_METAJSON_LABELS": json.dumps({"app": "product", "version": "vm"}, separators=(",", ":")),
        "ISTIO_META_CLUSTER_ID": "Kubernetes",
        "ISTIO_META_DNS_CAPTURE": "true",
        "ISTIO_META_MESH_ID": "",
        "ISTIO_META_NETWORK": "",
        "ISTIO_META_WORKLOAD_NAME": group,
        "ISTIO_NAMESPACE": "default",
        "ISTIO_SERVICE": f"{group}.default",
        "ISTIO_SERVICE_CIDR": "*",
        "ISTIO_SVC_IP": ip,
        "POD_NAMESPACE": "default",
        "SERVICE_ACCOUNT": "product",
        "TRUST_DOMAIN": "cluster.local",
    }
    if group:
        env["ISTIO_META_AUTO_REGISTER_GROUP"] = group
    env.update(extra_env or {})
    return bootstrap.write_vm_files(
        directory,
        env,
        discovery_address=f"istiod.istio-system.svc:{cp_port}",
        probe=probe,
        hosts={"istiod.istio-system.svc": "127.0.0.1"},
        root_cert=ROOT_CERT,
        control_plane_auth=control_plane_auth,
        token=TOKEN,
    )


# A self-signed certificate's PEM shape (the agent checks structure, not trust, until TLS).
ROOT_CERT = """-----BEGIN CERTIFICATE-----
MIIBszCCAVmgAwIBAgIUQ2h5c2ljYWxseSBhIHRlc3QgY2VydGlmaWNhdGUwCgYI
KoZIzj0EAwIwEzERMA8GA1UEAwwIcm9vdC1jYTAeFw0yNjAxMDEwMDAwMDBaFw0z
NjAxMDEwMDAwMDBaMBMxETAPBgNVBAMMCHJvb3QtY2EwWTATBgcqhkjOPQIBBggq
-----END CERTIFICATE-----
"""
# {"alg":"RS256"} . {"aud":["istio-ca"],"exp":1893456000,"sub":"system:serviceaccount:default:product"} . sig
TOKEN = (
    "eyJhbGciOiJSUzI1NiJ9."
    "eyJhdWQiOlsiaXN0aW8tY2EiXSwiZXhwIjoxODkzNDU2MDAwLCJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDpwcm9kdWN0In0."
    "c2lnbmF0dXJl\n"
)


def make_agent(vm_dir: Path, state_dir: Path, dns_port: int, **options: Any) -> Agent:
    settings: dict[str, Any] = {
        "dns_listen": [f"127.0.0.1:{dns_port}"],
        "dns_upstreams": [],
        "dns_workers": 1,
        "resolv_conf": str(vm_dir / "resolv.conf"),
        "state_dir": str(state_dir),
        "extra_ips": [],
        "pod_name": "vm-1",
        "backoff_base": 0.05,
        "backoff_max": 0.3,
    }
    settings.update(options)
    return Agent(load_bootstrap(vm_dir), AgentOptions(**settings))


def resolve(port: int, name: str, qtype: str = "A", timeout: float = 2.0) -> tuple[str, list[str]]:
    """(rcode name, addresses) of a UDP query to 127.0.0.1:port."""
    q = dns.message.make_query(name, qtype)
    r = dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)
    addrs = [str(rd) for rrset in r.answer for rd in rrset if rrset.rdtype == dns.rdatatype.from_text(qtype)]
    return dns.rcode.to_text(r.rcode()), addrs


class TcpApp:
    """A TCP server on ``host:port`` that accepts and closes connections (a
    listener that never accepts would fill its backlog under a fast probe)."""

    def __init__(self, host: str, port: int = 0) -> None:
        import socket

        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.peers: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer[0])
            conn.close()

    def close(self) -> None:
        import socket

        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Http:
    """An HTTP(S) server whose status code the test sets; records each request."""

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.status = 200
        self.requests: list[dict[str, Any]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(
                    {"path": self.path, "headers": dict(self.headers.items()), "client": self.client_address[0]}
                )
                self.send_response(outer.status)
                if 300 <= outer.status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), H)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- gRPC health: messages built from a descriptor here, independent of the agent's encoder.


def _health_messages() -> tuple[Any, Any]:
    fd = descriptor_pb2.FileDescriptorProto(name="test/health.proto", package="grpc.health.v1", syntax="proto3")
    req = fd.message_type.add(name="HealthCheckRequest")
    req.field.add(name="service", number=1, type=9, label=1)
    resp = fd.message_type.add(name="HealthCheckResponse")
    enum = resp.enum_type.add(name="ServingStatus")
    for i, n in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        enum.value.add(name=n, number=i)
    resp.field.add(
        name="status", number=1, type=14, label=1, type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus"
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    classes = message_factory.GetMessages([fd], pool=pool)
    return classes["grpc.health.v1.HealthCheckRequest"], classes["grpc.health.v1.HealthCheckResponse"]


Req, Resp = _health_messages()


class HealthServer:
    """A gRPC server with the standard health service (statuses by service name)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.status: dict[str, int] = {"": 1}
        self.user_agents: list[str] = []

        def check(request: Any, context: Any) -> Any:
            self.user_agents.append(dict(context.invocation_metadata()).get("user-agent", ""))
            if request.service not in self.status:
                context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
            return Resp(status=self.status[request.service])

        handler = grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health",
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    check, request_deserializer=Req.FromString, response_serializer=Resp.SerializeToString
                )
            },
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port(f"{host}:0")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0)


ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def ads_server(
    sotw: Callable[[Iterator[Any], Any], Iterator[Any]],
    delta: Callable[[Iterator[Any], Any], Iterator[Any]] | None = None,
    address: str = "127.0.0.1:0",
) -> tuple[grpc.Server, int]:
    """A started gRPC server of Envoy's AggregatedDiscoveryService on ``address``: ``sotw``
    serves StreamAggregatedResources, ``delta`` (when given) DeltaAggregatedResources; and its port."""
    methods = {
        "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
            sotw,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
        )
    }
    if delta is not None:
        methods["DeltaAggregatedResources"] = grpc.stream_stream_rpc_method_handler(
            delta,
            request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
            response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString,
        )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADS_SERVICE, methods),))
    port = server.add_insecure_port(address)
    server.start()
    return server, port


class ScriptedAds:
    """An ADS server whose responses the test sends with :meth:`push`; every
    request received is in ``requests`` (a queue of DiscoveryRequest)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, delta: bool = False) -> None:
        self.delta = delta
        self.requests: queue.Queue[Any] = queue.Queue()
        self._out: queue.Queue[Any] = queue.Queue()
        self._nonce = 0
        self._backlog: list[Any] = []  # requests received but not yet asked for, in order
        self.server, self.port = ads_server(self._stream, self._stream, f"{host}:{port}")

    def _stream(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        def read() -> None:
            try:
                for r in requests:
                    self.requests.put(r)
            except grpc.RpcError:
                pass  # the client went away

        threading.Thread(target=read, daemon=True).start()
        while context.is_active():
            try:
                item = self._out.get(timeout=0.1)
            except queue.Empty:
                continue
            yield item

    def push(self, type_url: str, version: str, resources: list[Any]) -> str:
        self._nonce += 1
        nonce = f"n{self._nonce}"
        self._out.put(
            discovery_pb2.DiscoveryResponse(type_url=type_url, version_info=version, nonce=nonce, resources=resources)
        )
        return nonce

    def push_delta(
        self, type_url: str, version: str, resources: Mapping[str, Any], removed: tuple[str, ...] = ()
    ) -> str:
        """A DeltaDiscoveryResponse: ``resources`` by name (each an Any), ``removed`` names."""
        self._nonce += 1
        nonce = f"n{self._nonce}"
        self._out.put(
            discovery_pb2.DeltaDiscoveryResponse(
                type_url=type_url,
                system_version_info=version,
                nonce=nonce,
                resources=[
                    discovery_pb2.Resource(name=n, version=f"{version}-{n}", resource=a) for n, a in resources.items()
                ],
                removed_resources=list(removed),
            )
        )
        return nonce

    def request(self, type_url: str, *, nonce: str | None = None, timeout: float = 10.0) -> Any:
        """The next request of ``type_url`` (answering ``nonce`` when given)."""

        def match(r: Any) -> bool:
            return bool(r.type_url == type_url and (nonce is None or r.response_nonce == nonce))

        for i, r in enumerate(self._backlog):
            if match(r):
                del self._backlog[i]
                return r
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {type_url} request (nonce {nonce}) within {timeout}s")
            try:
                r = self.requests.get(timeout=left)
            except queue.Empty:
                continue
            if match(r):
                return r
            self._backlog.append(r)

    def stop(self) -> None:
        self.server.stop(0)


# --- xDS resources as a control plane pushes them (the agent's ADS tests and benchmarks) -----

HOST = PRODUCT
C1 = f"outbound|8080||{HOST}"


def pack(msg: Any, type_url: str | None = None) -> Any:
    a = any_pb2.Any()
    a.Pack(msg)
    if type_url:
        a.type_url = type_url
    return a


def eds_cluster(name: str, **kw: Any) -> Any:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS, **kw)
    c.eds_cluster_config.eds_config.ads.SetInParent()
    c.eds_cluster_config.eds_config.resource_api_version = config_source_pb2.ApiVersion.V3
    c.eds_cluster_config.service_name = name
    return c


def cla(name: str, *addrs: str) -> Any:
    m = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    group = m.endpoints.add()
    group.load_balancing_weight.value = 1
    for a in addrs:
        ep = group.lb_endpoints.add()
        ep.endpoint.address.socket_address.address = a
        ep.endpoint.address.socket_address.port_value = 8080
    return m


def name_table(ip: str) -> Any:
    t = NameTable()
    info = t.table[HOST]
    info.ips.append(ip)
    info.registry = "Kubernetes"
    info.shortname = "product"
    info.namespace = "default"
    return t
