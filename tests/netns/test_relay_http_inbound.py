"""The inbound's HTTP path end to end with real capture, and Istio's HTTP
metadata exchange between two relays: in a private network namespace
nftables REDIRECTs service VIPs (127.1.0.0/16:80) to the outbound proxy
(15001) and the app ports of 127.0.0.3 to the inbound (15006), so client ->
VIP -> outbound (HTTP routes, mTLS with Istio's HTTP ALPN) -> captured
endpoint -> inbound (HTTP/1.1 or HTTP/2 served per request) -> app.

Checked: the app gets every request from 127.0.0.6 and never a
``x-envoy-peer-metadata`` header; the client never gets one back
either; ``istio_requests_total`` is counted on both sides with Istio's
labels, the destination side (``reporter="destination"``) naming the client
workload from the request's metadata headers and the mTLS identities, the
source side naming the destination's app and version that only the
response's metadata headers carry; gRPC over HTTP/2; an app that is down;
and a client whose metadata header is garbage (served, peer unknown).

Needs root (a network namespace, setns(2), nftables REDIRECT rules), iproute2,
nft and grpcio: without them it is skipped with the reason, or fails when
PYMESH_REQUIRE_ROOT_TESTS is set (CI)."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pymesh._native import tcp_metrics_text
from pymesh.controlplane.ca.ca import CertificateAuthority
from pymesh.relay import OutboundProxy, start_inbound_passthrough
from support.kiali import KIALI_HTTP_GROUP
from support.lb import http_options
from support.netns import inside, nft_netns
from support.relays import tables
from support.sec import issue
from support.system import require_module
from support.wait import wait_until

CLIENT = "spiffe://cluster.local/ns/default/sa/client"
PRODUCT = "spiffe://cluster.local/ns/default/sa/product"
APP = "127.0.0.3"
HTTP_PORT, GRPC_PORT, DOWN_PORT = 8080, 8081, 8082  # nothing listens on DOWN_PORT
RULES = f"""
table ip pmhttpin {{
  chain output {{
    type nat hook output priority -100; policy accept;
    ip daddr 127.1.0.0/16 tcp dport 80 redirect to :15001
    ip saddr 127.0.0.6 return
    ip daddr {APP} tcp dport {{ {HTTP_PORT}, {GRPC_PORT}, {DOWN_PORT} }} redirect to :15006
  }}
}}
"""
# The endpoint's istio.workload names no app or version: only the inbound's
# response headers can tell the source side those.
PRODUCT_WORKLOAD = "product-v1;default;product;v1;Kubernetes"
CLIENT_SELF = {
    "workload": "client-vm",
    "namespace": "default",
    "app": "client",
    "version": "v1",
    "canonical_service": "client",
    "canonical_revision": "v1",
    "cluster": "vm-cluster",
    "name": "client-vm-1",
    "node_id": "sidecar~10.0.0.1~client-vm-1.default~default.svc.cluster.local",
}
PRODUCT_SELF = {
    "workload": "product-v1",
    "namespace": "default",
    "app": "product",
    "version": "v1",
    "canonical_service": "product",
    "canonical_revision": "v1",
    "cluster": "Kubernetes",
}
SERVICES = {
    "127.1.0.1": ("product.default.svc.cluster.local", HTTP_PORT),
    "127.1.0.2": ("grpc.default.svc.cluster.local", GRPC_PORT),
    "127.1.0.3": ("down.default.svc.cluster.local", DOWN_PORT),
    # The http app again, its outbound cluster upgraded to HTTP/2 (h2UpgradePolicy: UPGRADE).
    "127.1.0.4": ("upgraded.default.svc.cluster.local", HTTP_PORT),
}


def cluster(host: str, port: int) -> dict[str, Any]:
    ep = {
        "endpoint": {"address": {"socket_address": {"address": APP, "port_value": port}}},
        "metadata": {
            "filter_metadata": {
                "envoy.transport_socket_match": {"tlsMode": "istio"},
                "istio": {"service_account": PRODUCT, "workload": PRODUCT_WORKLOAD},
            }
        },
    }
    # istiod's CDS: HTTP/2 to a grpc port's endpoints (and an upgraded http port's), HTTP/1.1
    # (nothing said) to an http port's.
    return {
        "name": f"outbound|80||{host}",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"endpoints": [{"lb_endpoints": [ep]}]},
        **(http_options("http2ProtocolOptions") if port == GRPC_PORT or host.startswith("upgraded") else {}),
    }


def routes() -> str:
    """Port 80's RouteConfiguration as istiod shapes it: a virtual host per service."""
    vhosts = [
        {
            "name": f"{host}:80",
            "domains": [host, vip, f"{vip}:80"],
            "routes": [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": f"outbound|80||{host}"}}],
        }
        for vip, (host, _) in SERVICES.items()
    ]
    return json.dumps({"name": "80", "virtualHosts": vhosts})


class App(http.server.ThreadingHTTPServer):
    """Answers every request with the headers it got, as JSON; /status/N with status N."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((APP, HTTP_PORT), Handler)
        self.peers: list[str] = []


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: App

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.peers.append(self.client_address[0])
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        code = int(self.path.rsplit("/", 1)[1]) if self.path.startswith("/status/") else 200
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        # An app's own metadata header never reaches the client.
        self.send_header("x-envoy-peer-metadata-id", "forged-by-the-app")
        self.end_headers()
        self.wfile.write(body)


class Mesh:
    def __init__(self, outbound: OutboundProxy, inbound: OutboundProxy, app: App, ca: CertificateAuthority, tmp: Path):
        self.outbound, self.inbound, self.app, self.ca, self.tmp = outbound, inbound, app, ca, tmp

    def requests(self, proxy: OutboundProxy, family: str = "istio_requests") -> list[tuple[dict[str, str], float]]:
        text = tcp_metrics_text([proxy])
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        fam = fams.get(family)
        return [(dict(s.labels), s.value) for s in fam.samples if s.name == f"{family}_total"] if fam else []

    def series(
        self, proxy: OutboundProxy, family: str = "istio_requests", **labels: str
    ) -> tuple[dict[str, str], float]:
        got = [(ls, v) for ls, v in self.requests(proxy, family) if all(ls[k] == x for k, x in labels.items())]
        assert len(got) == 1, (labels, self.requests(proxy, family))
        return got[0]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with nft_netns("pmhttpin", RULES, "the inbound HTTP tests capture in a network namespace") as ns, inside(ns):
        tmp = tmp_path_factory.mktemp("httpin")
        ca = CertificateAuthority(tmp / "ca")
        app = App()
        threading.Thread(target=app.serve_forever, daemon=True).start()
        lb, redirect = tables({vip: cluster(host, port) for vip, (host, port) in SERVICES.items()})
        outbound = OutboundProxy(redirect, lb, listen=["127.0.0.1:15001"], connect_timeout=3.0, seed=1)
        outbound.set_local_workload(CLIENT_SELF)
        outbound.set_identity(*issue(ca, tmp / "client", "client").args())
        outbound.set_http_routes([(80, routes())])
        outbound.start()
        inbound = start_inbound_passthrough(listen=["127.0.0.1:15006"], connect_timeout=3.0)
        inbound.set_local_workload(PRODUCT_SELF)
        inbound.set_identity(*issue(ca, tmp / "product", "product").args())
        try:
            yield Mesh(outbound, inbound, app, ca, tmp)
        finally:
            outbound.stop()
            inbound.stop()
            app.shutdown()
            app.server_close()


def get(host: str, path: str) -> tuple[int, dict[str, str], bytes]:
    c = http.client.HTTPConnection(host, 80, timeout=10)
    try:
        c.request("GET", path, headers={"x-envoy-peer-metadata": "Zm9yZ2Vk", "x-envoy-peer-metadata-id": "forged"})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def settled(m: Mesh, want: int) -> None:
    """Series are counted when a response stream ends, just after the client has read it."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if sum(v for _, v in m.requests(m.inbound)) >= want and sum(v for _, v in m.requests(m.outbound)) >= want:
            return
        time.sleep(0.02)


def test_http1_requests_cross_both_relays_with_metadata_exchanged_and_stripped(mesh: Mesh) -> None:
    for _ in range(3):
        status, headers, body = get("127.1.0.1", "/hello")
        assert status == 200
        assert not any(k.startswith("x-envoy-peer-metadata") for k in headers), headers
        seen = json.loads(body)
        assert not any(k.startswith("x-envoy-peer-metadata") for k in seen), seen
        # Set by the outbound (the app spoke plain HTTP), kept by the inbound as Envoy keeps it.
        assert seen["x-forwarded-proto"] == "http"
        assert len(seen["x-request-id"]) == 36
        assert seen["host"] == "127.1.0.1"
    status, _, _ = get("127.1.0.1", "/status/503")
    assert status == 503
    # The inbound reached the app from Istio's inbound source address.
    assert set(mesh.app.peers) == {"127.0.0.6"}
    settled(mesh, 4)

    source = {
        "source_workload": "client-vm",
        "source_workload_namespace": "default",
        "source_principal": CLIENT,
        "source_app": "client",
        "source_version": "v1",
        "source_canonical_service": "client",
        "source_canonical_revision": "v1",
        "source_cluster": "vm-cluster",
    }
    labels, n = mesh.series(mesh.inbound, response_code="200")
    assert n == 3
    assert labels == {
        "reporter": "destination",
        **source,
        "destination_workload": "product-v1",
        "destination_workload_namespace": "default",
        "destination_principal": PRODUCT,
        "destination_app": "product",
        "destination_version": "v1",
        "destination_service": "product",
        "destination_service_name": "product",
        "destination_service_namespace": "default",
        "destination_canonical_service": "product",
        "destination_canonical_revision": "v1",
        "destination_cluster": "Kubernetes",
        "request_protocol": "http",
        "response_code": "200",
        "grpc_response_status": "",
        "response_flags": "-",
        "connection_security_policy": "mutual_tls",
    }
    labels, n = mesh.series(mesh.inbound, response_code="503")
    assert n == 1 and labels["source_workload"] == "client-vm"

    labels, n = mesh.series(mesh.outbound, response_code="200")
    assert n == 3
    assert labels["reporter"] == "source"
    assert {k: labels[k] for k in source} == source
    # destination_app and _version come only from the inbound's response headers.
    assert (labels["destination_app"], labels["destination_version"]) == ("product", "v1")
    assert (labels["destination_workload"], labels["destination_principal"]) == ("product-v1", PRODUCT)
    assert labels["destination_service"] == "product.default.svc.cluster.local"


@contextlib.contextmanager
def grpc_echo() -> Iterator[list[dict[str, str]]]:
    """A grpcio server on the app's gRPC port: test.Echo/Unary echoes, ``fail`` is NOT_FOUND;
    yields the metadata of every call it got."""
    grpc = require_module("grpc", "the inbound HTTP/2 tests drive a grpcio client and server")
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    seen: list[dict[str, str]] = []

    def unary(req: bytes, ctx: Any) -> bytes:
        seen.append(dict(ctx.invocation_metadata()))
        if req == b"fail":
            ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return b"echo " + req

    handler = grpc.method_handlers_generic_handler("test.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)})
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"{APP}:{GRPC_PORT}")
    server.start()
    try:
        yield seen
    finally:
        server.stop(0)


def rpcs(target: str, n: int) -> None:
    """``n`` echo calls and one that fails, on one channel to ``target``."""
    import grpc

    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary("/test.Echo/Unary")
        for i in range(n):
            assert call(f"m{i}".encode(), timeout=10) == f"echo m{i}".encode()
        with pytest.raises(grpc.RpcError) as err:
            call(b"fail", timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_over_http2_is_served_per_rpc_by_the_inbound(mesh: Mesh) -> None:
    with grpc_echo() as seen:
        rpcs("127.1.0.2:80", 5)
    assert len(seen) == 6
    assert not any(k.startswith("x-envoy-peer-metadata") for md in seen for k in md), seen
    settled(mesh, 4 + 6)
    labels, n = mesh.series(mesh.inbound, request_protocol="grpc", grpc_response_status="0")
    assert n == 5
    assert (labels["source_workload"], labels["connection_security_policy"]) == ("client-vm", "mutual_tls")
    assert labels["response_code"] == "200"
    _, n = mesh.series(mesh.inbound, request_protocol="grpc", grpc_response_status="5")
    assert n == 1
    # One message each way per successful RPC (the failed one: a request, no response message).
    ok = {"request_protocol": "grpc", "grpc_response_status": "0"}
    for proxy in (mesh.inbound, mesh.outbound):
        assert mesh.series(proxy, "istio_request_messages", **ok)[1] == 5
        assert mesh.series(proxy, "istio_response_messages", **ok)[1] == 5
        failed = {"request_protocol": "grpc", "grpc_response_status": "5"}
        assert mesh.series(proxy, "istio_request_messages", **failed)[1] == 1
        assert mesh.series(proxy, "istio_response_messages", **failed)[1] == 0
    # HTTP series have no message counts.
    assert all(ls["request_protocol"] == "grpc" for ls, _ in mesh.requests(mesh.inbound, "istio_request_messages"))
    labels, n = mesh.series(mesh.outbound, request_protocol="grpc", grpc_response_status="0")
    assert n == 5 and labels["destination_app"] == "product"
    assert mesh.inbound.http_stats()["http_connections_h2"] >= 1


def test_an_app_that_is_down_is_a_503_flagged_uf_on_the_inbound(mesh: Mesh) -> None:
    before = sum(v for _, v in mesh.requests(mesh.inbound))
    status, _, body = get("127.1.0.3", "/")
    assert status == 503, body
    settled(mesh, before + 1)
    labels, _ = mesh.series(mesh.inbound, response_code="503", response_flags="UF")
    assert labels["destination_workload"] == "product-v1"


def test_garbage_metadata_from_a_client_leaves_the_peer_unknown_and_the_request_served(mesh: Mesh) -> None:
    """An mTLS client (a Python ssl socket with a mesh certificate) speaking
    HTTP/1.1 straight to the captured app port, with a metadata header that
    is not base64 and one that is base64 of garbage."""
    rogue = issue(mesh.ca, mesh.tmp / "rogue", "rogue")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=rogue.root)
    ctx.load_cert_chain(rogue.dir / "cert-chain.pem", rogue.dir / "key.pem")
    ctx.set_alpn_protocols(["istio-http/1.1", "istio", "http/1.1"])
    before = sum(v for _, v in mesh.requests(mesh.inbound))
    for value in ("%%% not base64 %%%", "AAECAwQFBgcICQ=="):
        with socket.create_connection((APP, HTTP_PORT), timeout=10) as raw:
            with ctx.wrap_socket(raw) as tls:
                assert tls.selected_alpn_protocol() == "http/1.1"
                tls.sendall(
                    f"GET /x HTTP/1.1\r\nhost: product\r\nx-envoy-peer-metadata: {value}\r\n"
                    "connection: close\r\n\r\n".encode()
                )
                reply = b""
                while chunk := tls.recv(65536):
                    reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), reply
        seen = json.loads(body)
        assert "x-envoy-peer-metadata" not in seen
        # No proxy before it: the inbound says the client's connection was TLS.
        assert seen["x-forwarded-proto"] == "https"
    settled(mesh, before + 2)
    labels, n = mesh.series(mesh.inbound, source_principal="spiffe://cluster.local/ns/default/sa/rogue")
    assert n == 2
    assert (labels["source_workload"], labels["source_app"]) == ("unknown", "unknown")
    assert labels["source_workload_namespace"] == "default"  # from the certificate


def test_the_inbound_speaks_the_protocol_istiods_inbound_cluster_names(mesh: Mesh) -> None:
    """A client sidecar that upgrades to HTTP/2 (istio-h2 over mTLS) in front of an app that
    speaks HTTP/1.1 only: istiod's ``inbound|<port>||`` cluster for an http port says nothing,
    so Envoy's inbound speaks HTTP/1.1 to the app; told no cluster, the inbound speaks the
    client's protocol, which this app cannot read."""
    before = mesh.inbound.http_stats()["http_connections_h2"]
    status, _, _ = get("127.1.0.4", "/upgraded")
    assert status >= 500  # HTTP/2 to Python's HTTP/1.1 server
    assert mesh.inbound.http_stats()["http_connections_h2"] > before  # the client's leg was HTTP/2
    inbound_cluster = {"name": f"inbound|{HTTP_PORT}||", "type": "ORIGINAL_DST", "lbPolicy": "CLUSTER_PROVIDED"}
    mesh.inbound.set_inbound_clusters([(HTTP_PORT, json.dumps(inbound_cluster))])
    try:
        for _ in range(2):
            status, _, body = get("127.1.0.4", "/upgraded")
            assert status == 200, body
            seen = json.loads(body)
            assert seen["host"] == "127.1.0.4" and not any(k.startswith("x-envoy-peer-metadata") for k in seen)
    finally:
        mesh.inbound.set_inbound_clusters([])


def test_kialis_http_graph_sees_both_reporters_from_a_real_prometheus(mesh: Mesh, tmp_path: Path) -> None:
    """The agent's /stats/prometheus rendering of both relays, scraped by Debian's Prometheus
    while requests (200s and 503s) cross them: Kiali's HTTP graph query finds the edge from
    each reporter with every label it groups by, the destination's marked mutual_tls."""
    from pymesh.admin import PROMETHEUS_TEXT, AdminServer
    from pymesh.agent.status import istio_tcp
    from support.prometheus import prometheus

    def page(_: str) -> tuple[int, str, bytes]:
        return 200, PROMETHEUS_TEXT, istio_tcp([mesh.outbound, mesh.inbound]).encode()

    server = AdminServer("127.0.0.1:0", {"/stats/prometheus": page}, name="t")
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            for path in ("/hello", "/hello", "/status/503"):
                get("127.1.0.1", path)
            time.sleep(0.1)

    t = threading.Thread(target=traffic, daemon=True)
    try:
        with prometheus(tmp_path / "prom", {"vm": (server.address, "/stats/prometheus")}) as prom:
            t.start()
            by = f"{KIALI_HTTP_GROUP},connection_security_policy"

            def edges(reporter: str) -> dict[str, dict[str, str]] | None:
                sel = f'reporter="{reporter}",source_workload_namespace="default"'
                rows = prom.query(f"sum(rate(istio_requests_total{{{sel}}}[1m])) by ({by}) > 0")
                got = {r["metric"]["response_code"]: dict(r["metric"]) for r in rows}
                return got if {"200", "503"} <= set(got) else None

            for reporter in ("source", "destination"):
                got = wait_until(lambda r=reporter: edges(r), timeout=30, interval=0.5)
                for code, row in got.items():
                    # Prometheus drops empty labels: gRPC's status on an HTTP series.
                    assert set(by.split(",")) - {"grpc_response_status"} <= set(row), (reporter, row)
                    assert (row["source_workload"], row["destination_workload"]) == ("client-vm", "product-v1"), row
                    assert row["destination_canonical_revision"] == "v1" and row["request_protocol"] == "http"
                    assert row["connection_security_policy"] == (
                        "mutual_tls" if reporter == "destination" else "unknown"
                    ), row
                    assert row["response_flags"] == "-", (code, row)
    finally:
        stop.set()
        if t.is_alive():
            t.join(10)
        server.stop()


def test_plaintext_http_from_outside_the_mesh_is_served_per_request(mesh: Mesh) -> None:
    """PERMISSIVE: a client with no sidecar speaks plain HTTP/1.1 straight to the captured app
    port. The inbound, having waited for its first bytes to tell TLS from plaintext, serves
    the requests one by one as over mTLS (Istio's plaintext HTTP inbound chain): counted with
    ``connection_security_policy="none"`` and no identity on either side."""
    before, stats = sum(v for _, v in mesh.requests(mesh.inbound)), mesh.inbound.http_stats()
    c = http.client.HTTPConnection(APP, HTTP_PORT, timeout=10)
    try:
        for i in range(3):
            c.request("GET", f"/plain/{i}", headers={"x-envoy-peer-metadata": "Zm9yZ2Vk"})
            r = c.getresponse()
            body, headers = r.read(), {k.lower() for k, _ in r.getheaders()}
            assert r.status == 200, body
            # No metadata back to a client that sent none that decodes.
            assert not any(k.startswith("x-envoy-peer-metadata") for k in headers), headers
            seen = json.loads(body)
            assert not any(k.startswith("x-envoy-peer-metadata") for k in seen), seen
            assert (seen["x-forwarded-proto"], len(seen["x-request-id"])) == ("http", 36)
    finally:
        c.close()
    settled_inbound(mesh, before + 3)
    after = mesh.inbound.http_stats()
    # One keep-alive connection, three requests.
    assert (after["http_connections"] - stats["http_connections"], after["http_requests"] - stats["http_requests"]) == (
        1,
        3,
    )
    labels, n = mesh.series(mesh.inbound, connection_security_policy="none", request_protocol="http")
    assert n == 3
    assert labels["reporter"] == "destination" and labels["response_code"] == "200"
    assert (labels["source_principal"], labels["destination_principal"]) == ("unknown", "unknown")
    assert (labels["source_workload"], labels["destination_workload"]) == ("unknown", "product-v1")


def test_plaintext_grpc_and_a_non_http_client_on_the_inbound(mesh: Mesh) -> None:
    """The HTTP/2 preface in plaintext is served per RPC; bytes that are not HTTP are relayed
    to the app as they are (the app's own answer comes back)."""
    before, stats = sum(v for _, v in mesh.requests(mesh.inbound)), mesh.inbound.http_stats()
    with grpc_echo() as seen:
        rpcs(f"{APP}:{GRPC_PORT}", 4)
    assert len(seen) == 5
    settled_inbound(mesh, before + 5)
    labels, n = mesh.series(
        mesh.inbound, connection_security_policy="none", request_protocol="grpc", grpc_response_status="0"
    )
    assert n == 4 and labels["source_workload"] == "unknown"
    plain_ok = {"connection_security_policy": "none", "grpc_response_status": "0"}
    assert mesh.series(mesh.inbound, "istio_request_messages", **plain_ok)[1] == 4
    mid = mesh.inbound.http_stats()
    assert mid["http_connections_h2"] - stats["http_connections_h2"] >= 1

    with socket.create_connection((APP, HTTP_PORT), timeout=10) as raw:
        raw.sendall(b"PING\r\n")
        reply = b""
        while chunk := raw.recv(65536):
            reply += chunk
    # Python's http.server answering a line it cannot parse: the bytes reached the app untouched.
    assert b"Bad request syntax ('PING')" in reply, reply
    after = mesh.inbound.http_stats()
    assert after["http_connections"] == mid["http_connections"]
    assert after["http_not_http"] - mid["http_not_http"] == 1


def settled_inbound(m: Mesh, want: int) -> None:
    """The inbound's series, counted when a response stream ends (just after the client read it)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sum(v for _, v in m.requests(m.inbound)) < want:
        time.sleep(0.02)
