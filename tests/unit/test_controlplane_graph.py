"""The traffic graph (``/api/v1/graph``, pymesh/controlplane/graph.py): edges computed by a
real Prometheus (Debian's binary, support/prometheus.py) from Istio's families served by a
metrics endpoint of the test, whose counters grow at known rates; and, with no Prometheus,
by the control plane scraping the status port of a proxy connected over ADS.

Needs the ``prometheus`` binary for the first tests: without it they are skipped with the
reason, or fail when PYMESH_REQUIRE_ROOT_TESTS is set (CI)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pymesh.controlplane import ControlPlane
from pymesh.controlplane.graph import PrometheusSource, quantile
from support.cp import AdsStream, example_config, vm_node
from support.ports import free_port
from support.prometheus import prometheus
from support.wait import wait_until

PRODUCT = "product.default.svc.cluster.local"
DB = "db.default.svc.cluster.local"
VM_SA = "spiffe://cluster.local/ns/default/sa/vm"


def labels(**kw: str) -> str:
    base = {
        "reporter": "source",
        "source_workload": "product-vm",
        "source_workload_namespace": "default",
        "source_principal": VM_SA,
        "destination_service": PRODUCT,
        "destination_workload": "product-pod",
        "destination_workload_namespace": "default",
        "connection_security_policy": "unknown",
        "request_protocol": "http",
    }
    base.update(kw)
    return "{" + ",".join(f'{k}="{v}"' for k, v in base.items()) + "}"


def exposition(t: float) -> str:
    """Istio's families ``t`` seconds after start, every counter at a fixed rate: product gets
    8 ok + 2 failing requests/s (latency buckets: 2/s under 10 ms, 6/s 10-50 ms, 2/s 50-100 ms),
    db 1000 bytes/s sent and 250 received without a peer identity; the destination's own
    report (ignored: the graph is the source's) would double it."""
    tcp = labels(
        source_workload="client", destination_service=DB, destination_workload="unknown", source_principal="unknown"
    )
    tcp = tcp.replace(',request_protocol="http"', ',request_protocol="tcp"')
    return "".join(
        [
            "# TYPE istio_requests_total counter\n",
            f"istio_requests_total{labels(response_code='200')} {8 * t}\n",
            f"istio_requests_total{labels(response_code='503')} {2 * t}\n",
            f"istio_requests_total{labels(reporter='destination', response_code='200')} {100 * t}\n",
            "# TYPE istio_request_duration_milliseconds histogram\n",
            *(
                f"istio_request_duration_milliseconds_bucket{labels(le=le)[:-1]}}} {n * t}\n"
                for le, n in (("10.0", 2), ("50.0", 8), ("100.0", 10), ("+Inf", 10))
            ),
            f"istio_request_duration_milliseconds_sum{labels()} {300 * t}\n",
            f"istio_request_duration_milliseconds_count{labels()} {10 * t}\n",
            "# TYPE istio_tcp_sent_bytes_total counter\n",
            f"istio_tcp_sent_bytes_total{tcp} {1000 * t}\n",
            "# TYPE istio_tcp_received_bytes_total counter\n",
            f"istio_tcp_received_bytes_total{tcp} {250 * t}\n",
        ]
    )


@pytest.fixture
def endpoint() -> Iterator[str]:
    """The metrics endpoint on 127.0.0.3 (the proxy's address in the ADS test): host:port."""
    t0 = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = exposition(time.monotonic() - t0).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.3", free_port("127.0.0.3")), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.3:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def by_pair(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["source"], e["target"]): e for e in doc["edges"]}


VM, POD, CLIENT = "workload:default/product-vm", "workload:default/product-pod", "workload:default/client"


def check_edges(doc: dict[str, Any], rel: float) -> None:
    edges = by_pair(doc)
    assert set(edges) == {(VM, f"service:{PRODUCT}"), (f"service:{PRODUCT}", POD), (CLIENT, f"service:{DB}")}
    for pair in ((VM, f"service:{PRODUCT}"), (f"service:{PRODUCT}", POD)):
        e = edges[pair]
        assert e["protocol"] == "http" and e["mtls"] is True, e
        assert e["requestsPerSecond"] == pytest.approx(10, rel=rel), e
        assert e["errorRate"] == pytest.approx(0.2, rel=0.01), e
        # Linear within the bucket holding the rank: 10 + 40 * (5 - 2) / 6, 50 + 50 * (9.9 - 8) / 2.
        assert e["p50Ms"] == pytest.approx(30, rel=0.01) and e["p99Ms"] == pytest.approx(97.5, rel=0.01), e
    tcp = edges[(CLIENT, f"service:{DB}")]
    assert tcp["protocol"] == "tcp" and tcp["mtls"] is False
    assert tcp["bytesPerSecond"] == pytest.approx(1250, rel=rel), tcp
    assert tcp["sentBytesPerSecond"] == pytest.approx(1000, rel=rel), tcp
    assert tcp["receivedBytesPerSecond"] == pytest.approx(250, rel=rel), tcp
    kinds = {n["id"]: n["kind"] for n in doc["nodes"]}
    assert kinds == {VM: "workload", POD: "workload", CLIENT: "workload", f"service:{PRODUCT}": "service"} | {
        f"service:{DB}": "service"
    }


def test_edges_from_a_real_prometheus(tmp_path: Path, endpoint: str) -> None:
    with prometheus(tmp_path / "prom", {"proxy": (endpoint, "/stats/prometheus")}) as prom:
        # A 5 s window once the series are older than it: rate() over whole 1 s scrapes is the slope.
        wait_until(
            lambda: (
                (prom.value("count_over_time(istio_requests_total{reporter='source',response_code='200'}[5s])") or 0)
                >= 5
            )
        )
        time.sleep(1.5)
        check_edges(PrometheusSource(prom.url, window="5s").graph().document(), rel=0.05)


def test_the_api_reads_the_configured_prometheus(tmp_path: Path, endpoint: str) -> None:
    with prometheus(tmp_path / "prom", {"proxy": (endpoint, "/stats/prometheus")}) as prom:
        c = ControlPlane(
            example_config(tmp_path / "mesh", 8080),
            xds_listen="127.0.0.1:0",
            data_dir=tmp_path / "data",
            instance_id="replica-a",
            monitoring_listen="127.0.0.1:0",
            prometheus_url=prom.url,
        )
        c.start()
        try:

            def doc() -> dict[str, Any]:
                url = f"http://{c.monitoring.address}/api/v1/graph"
                with urllib.request.urlopen(url, timeout=10) as r:
                    body: dict[str, Any] = json.loads(r.read())
                return body

            wait_until(lambda: len(doc()["edges"]) == 3, timeout=20)
            body = doc()
            assert (body["replica"], body["source"], body["window"], body["error"]) == (
                "replica-a",
                f"prometheus:{prom.url}",
                "1m",
                "",
            )
            # Over a 1 m window younger series give rates below the slope; the ratios hold.
            e = by_pair(body)[(VM, f"service:{PRODUCT}")]
            assert e["requestsPerSecond"] > 0 and e["errorRate"] == pytest.approx(0.2, rel=0.01)
            assert e["p50Ms"] == pytest.approx(30, rel=0.01) and e["mtls"] is True
        finally:
            c.stop()


def test_edges_from_the_agents_status_ports(tmp_path: Path, endpoint: str) -> None:
    """No Prometheus: the control plane scrapes the status port of each proxy with a stream here."""
    c = ControlPlane(
        example_config(tmp_path / "mesh", 8080),
        xds_listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        instance_id="replica-a",
        monitoring_listen="127.0.0.1:0",
        agent_status_port=int(endpoint.rsplit(":", 1)[1]),
    )
    c.start()
    vm = AdsStream(c.port, vm_node("127.0.0.3", group="", name="vm-1"))
    dead = AdsStream(c.port, vm_node("127.0.0.9", group="", name="gone"))
    try:
        for s in (vm, dead):
            s.send("type.googleapis.com/envoy.config.cluster.v3.Cluster")
            s.recv()

        def doc() -> dict[str, Any]:
            with urllib.request.urlopen(f"http://{c.monitoring.address}/api/v1/graph", timeout=10) as r:
                body: dict[str, Any] = json.loads(r.read())
            return body

        first = doc()  # one scrape: no rate yet
        assert first["source"] == "agents" and first["edges"] == [] and first["window"] is None
        assert set(first["unreachable"]) == {"127.0.0.9"}
        time.sleep(2)
        check_edges(doc(), rel=0.1)
    finally:
        vm.close()
        dead.close()
        c.stop()


def test_quantile_matches_histogram_quantile() -> None:
    inf = float("inf")
    b = {10.0: 2.0, 50.0: 8.0, 100.0: 10.0, inf: 10.0}
    assert quantile(0.5, b) == pytest.approx(30) and quantile(0.99, b) == pytest.approx(97.5)
    assert quantile(0.99, {10.0: 1.0, inf: 10.0}) == 10.0  # in +Inf: the highest finite bound
    assert quantile(0.5, {10.0: 0.0, inf: 0.0}) is None
