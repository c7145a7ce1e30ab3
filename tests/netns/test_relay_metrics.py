"""Istio's TCP metrics from the native relays, end to end with real capture:
in a private network namespace nftables REDIRECTs service VIPs
(127.1.0.0/16:80) to the outbound proxy (15001) and the app ports (8000,
8001) to the inbound (15006), so client -> VIP -> outbound -> captured
endpoint -> inbound -> app. Each relay's ``tcp_metrics()`` must then hold
one series per connection kind with Istio's labels filled exactly
(``reporter="source"`` on the outbound, ``"destination"`` on the inbound),
the bytes in Istio's direction (``received`` = what the client sent), and
the text the agent serves must parse with every family typed and every
series fully labelled.

Needs root (a network namespace, setns(2), nftables REDIRECT rules), iproute2
and nft: without them it is skipped with the reason, or fails when
PYMESH_REQUIRE_ROOT_TESTS is set (CI)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pymesh.agent.status import istio_tcp
from pymesh.controlplane.ca.ca import CertificateAuthority
from pymesh.relay import OutboundProxy, start_inbound_passthrough
from support.kiali import KIALI_TCP_GROUP
from support.netns import inside, nft_netns
from support.relays import Apps, echo, exchange, settled, tables
from support.sec import issue
from support.wait import wait_until

CLIENT = "spiffe://cluster.local/ns/default/sa/client"
PRODUCT = "spiffe://cluster.local/ns/default/sa/product"
APP = "127.0.0.3"
REFUSED = "127.0.0.9"  # not captured, nothing listens: every connect fails
REPLY = 3333  # what the app on 8001 answers, whatever it got
RULES = """
table ip pmmetrics {
  chain output {
    type nat hook output priority -100; policy accept;
    ip daddr 127.1.0.0/16 tcp dport 80 redirect to :15001
    ip saddr 127.0.0.6 return
    ip daddr 127.0.0.3 tcp dport { 8000, 8001 } redirect to :15006
  }
}
"""
PRODUCT_WORKLOAD = "product-v1;default;product;v1;Kubernetes"
REPLY_WORKLOAD = "reply-v2;shop;reply;v2;east"
CLIENT_SELF = {
    "workload": "client-vm",
    "namespace": "default",
    "app": "client",
    "version": "v1",
    "canonical_service": "client",
    "canonical_revision": "v1",
    "cluster": "vm-cluster",
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
TCP_LABELS = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
]


def cluster(name: str, addr: str, port: int, meta: dict[str, Any]) -> dict[str, Any]:
    ep: dict[str, Any] = {"endpoint": {"address": {"socket_address": {"address": addr, "port_value": port}}}}
    ep["metadata"] = {"filter_metadata": meta}
    return {"name": name, "lb_policy": "ROUND_ROBIN", "load_assignment": {"endpoints": [{"lb_endpoints": [ep]}]}}


CLUSTERS = {
    # Istio mTLS to the echo app.
    "127.1.0.1": cluster(
        "outbound|80||product.default.svc.cluster.local",
        APP,
        8000,
        {
            "envoy.transport_socket_match": {"tlsMode": "istio"},
            "istio": {"service_account": PRODUCT, "workload": PRODUCT_WORKLOAD},
        },
    ),
    # Plaintext (no tlsMode) to the replying app; a ServiceEntry-style host.
    "127.1.0.2": cluster("outbound|80||reply.example.com", APP, 8001, {"istio": {"workload": REPLY_WORKLOAD}}),
    # Nothing answers.
    "127.1.0.3": cluster("outbound|80||gone.default.svc.cluster.local", REFUSED, 9, {}),
}


def reply(c: socket.socket) -> None:
    """The app on :8001: reads to EOF, answers REPLY bytes."""
    with c, contextlib.suppress(OSError):
        while c.recv(1 << 16):
            pass
        c.sendall(b"r" * REPLY)


@pytest.fixture(scope="module")
def relays(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OutboundProxy, OutboundProxy]]:
    with nft_netns("pmmet", RULES, "the relay metrics tests capture in a network namespace") as ns, inside(ns):
        tmp = tmp_path_factory.mktemp("ca")
        ca = CertificateAuthority(tmp / "ca")
        apps = Apps({8000: echo, 8001: reply})
        lb, redirect = tables(CLUSTERS)
        outbound = OutboundProxy(redirect, lb, listen=["127.0.0.1:15001"], connect_timeout=3.0, seed=1)
        outbound.set_local_workload(CLIENT_SELF)
        outbound.set_identity(*issue(ca, tmp / "client", "client").args())
        outbound.start()
        inbound = start_inbound_passthrough(listen=["127.0.0.1:15006"], connect_timeout=3.0)
        inbound.set_local_workload(PRODUCT_SELF)
        inbound.set_identity(*issue(ca, tmp / "product", "product").args())
        try:
            yield outbound, inbound
        finally:
            outbound.stop()
            inbound.stop()
            apps.close()


def find(proxy: OutboundProxy, **labels: str) -> tuple[dict[str, str], dict[str, int]]:
    got = [(ls, v) for ls, v in proxy.tcp_metrics() if all(ls[k] == x for k, x in labels.items())]
    assert len(got) == 1, (labels, proxy.tcp_metrics())
    return got[0]


def test_istio_tcp_series_with_exact_labels_and_bytes(relays: tuple[OutboundProxy, OutboundProxy]) -> None:
    outbound, inbound = relays
    n = 100_000
    payload = bytes(range(256)) * (n // 256) + b"x" * (n % 256)
    for _ in range(2):
        assert exchange("127.1.0.1", 80, payload) == payload  # mTLS, echoed
    assert exchange("127.1.0.2", 80, payload) == b"r" * REPLY  # plaintext, asymmetric
    assert exchange("127.1.0.3", 80, b"lost") == b""  # nothing answers
    settled(outbound, inbound)

    # The outbound (client side): this VM's own labels as the source.
    source = {
        "source_workload": "client-vm",
        "source_workload_namespace": "default",
        "source_app": "client",
        "source_version": "v1",
        "source_canonical_service": "client",
        "source_canonical_revision": "v1",
        "source_cluster": "vm-cluster",
    }
    labels, values = find(outbound, destination_service="product.default.svc.cluster.local")
    assert list(labels) == TCP_LABELS
    assert labels == {
        "reporter": "source",
        **source,
        "source_principal": CLIENT,
        "destination_workload": "product-v1",
        "destination_workload_namespace": "default",
        "destination_principal": PRODUCT,
        # From the inbound's metadata exchange (istio-peer-exchange): not in istio.workload.
        "destination_app": "product",
        "destination_version": "v1",
        "destination_service": "product.default.svc.cluster.local",
        "destination_service_name": "product",
        "destination_service_namespace": "default",
        "destination_canonical_service": "product",
        "destination_canonical_revision": "v1",
        "destination_cluster": "Kubernetes",
        "request_protocol": "tcp",
        "response_flags": "-",
        "connection_security_policy": "unknown",
    }
    assert values == {"connections_opened": 2, "connections_closed": 2, "sent_bytes": 2 * n, "received_bytes": 2 * n}

    labels, values = find(outbound, destination_service="reply.example.com")
    assert (labels["source_principal"], labels["destination_principal"]) == ("unknown", "unknown")
    assert (labels["destination_workload"], labels["destination_workload_namespace"]) == ("reply-v2", "shop")
    service = (labels["destination_service_name"], labels["destination_service_namespace"])
    assert service == ("reply.example.com", "shop")
    assert (labels["destination_canonical_revision"], labels["destination_cluster"]) == ("v2", "east")
    # Istio's direction: received from the client, sent to it.
    assert values == {"connections_opened": 1, "connections_closed": 1, "sent_bytes": REPLY, "received_bytes": n}

    labels, values = find(outbound, destination_service="gone.default.svc.cluster.local")
    assert labels["response_flags"] == "UF,URX" and labels["destination_workload"] == "unknown"
    assert values == {"connections_opened": 1, "connections_closed": 1, "sent_bytes": 0, "received_bytes": 0}
    assert len(outbound.tcp_metrics()) == 3

    # The inbound (server side): the peer by its certificate and its metadata exchange.
    labels, values = find(inbound, connection_security_policy="mutual_tls")
    assert list(labels) == TCP_LABELS
    assert labels == {
        "reporter": "destination",
        **source,
        "source_principal": CLIENT,
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
        "request_protocol": "tcp",
        "response_flags": "-",
        "connection_security_policy": "mutual_tls",
    }
    assert values == {"connections_opened": 2, "connections_closed": 2, "sent_bytes": 2 * n, "received_bytes": 2 * n}
    labels, values = find(inbound, connection_security_policy="none")
    assert (labels["source_principal"], labels["destination_principal"]) == ("unknown", "unknown")
    assert values == {"connections_opened": 1, "connections_closed": 1, "sent_bytes": REPLY, "received_bytes": n}
    assert outbound.stats()["metric_series_dropped"] == 0


def test_the_served_text_parses_with_help_type_and_every_label(relays: tuple[OutboundProxy, OutboundProxy]) -> None:
    text = istio_tcp(relays)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("connections_opened", "connections_closed", "sent_bytes", "received_bytes"):
        fam = families[f"istio_tcp_{name}"]
        assert fam.type == "counter" and fam.documentation
        assert f"# TYPE istio_tcp_{name}_total counter" in text
        assert fam.samples
        for s in fam.samples:
            assert s.name == f"istio_tcp_{name}_total"
            assert sorted(s.labels) == sorted(TCP_LABELS)
            assert all(v for v in s.labels.values())
    reporters = {s.labels["reporter"] for s in families["istio_tcp_sent_bytes"].samples}
    assert reporters == {"source", "destination"}


def test_local_workload_is_checked(tmp_path: Path) -> None:
    from pymesh import ConfigError

    proxy = start_inbound_passthrough(listen=["127.0.0.1:0"])
    try:
        with pytest.raises(ConfigError, match="unknown key"):
            proxy.set_local_workload({"pod": "x"})
        with pytest.raises(ConfigError, match="app must be a string"):
            proxy.set_local_workload({"app": 1})  # type: ignore[dict-item]
        proxy.set_local_workload({"workload": "w"})
        assert proxy.local_workload()["workload"] == "w" and proxy.local_workload()["app"] == ""
        assert proxy.tcp_metrics() == []
    finally:
        proxy.stop()


def test_kialis_tcp_graph_queries_see_the_edge_from_a_real_prometheus(
    relays: tuple[OutboundProxy, OutboundProxy], tmp_path: Path
) -> None:
    from pymesh.admin import PROMETHEUS_TEXT, AdminServer
    from support.prometheus import prometheus

    outbound, inbound = relays

    # The agent's /stats/prometheus rendering of the relays' series, in the namespace
    # (this thread is in it, so Prometheus started from here scrapes it there too).
    def page(_: str) -> tuple[int, str, bytes]:
        return 200, PROMETHEUS_TEXT, istio_tcp([outbound, inbound]).encode()

    server = AdminServer("127.0.0.1:0", {"/stats/prometheus": page}, name="t")
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            exchange("127.1.0.1", 80, b"k" * 4096)
            time.sleep(0.1)

    t = threading.Thread(target=traffic, daemon=True)
    try:
        with prometheus(tmp_path / "prom", {"vm": (server.address, "/stats/prometheus")}) as prom:
            t.start()
            by = KIALI_TCP_GROUP
            # Kiali's third query (edges out of the namespace, reported by the source), then the
            # destination reporter's view of the same traffic, its source known by metadata exchange.
            src_sel = 'reporter="source",source_workload_namespace="default"'
            dst_sel = 'reporter="destination",destination_workload_namespace="default"'
            source = f"sum(rate(istio_tcp_sent_bytes_total{{{src_sel}}}[1m])) by ({by}) > 0"
            dest = (
                f"sum(rate(istio_tcp_received_bytes_total{{{dst_sel}}}[1m])) by ({by},connection_security_policy) > 0"
            )

            def edge(expr: str) -> dict[str, str] | None:
                for r in prom.query(expr):
                    if r["metric"].get("destination_workload") == "product-v1":
                        return dict(r["metric"])
                return None

            out = wait_until(lambda: edge(source), timeout=30, interval=0.5)
            assert (out["source_workload"], out["source_canonical_service"]) == ("client-vm", "client")
            assert (out["destination_workload"], out["destination_canonical_revision"]) == ("product-v1", "v1")
            assert out["response_flags"] == "-" and out["destination_service"] == "product.default.svc.cluster.local"
            inn = wait_until(lambda: edge(dest), timeout=30, interval=0.5)
            assert (inn["source_workload"], inn["source_cluster"]) == ("client-vm", "vm-cluster")
            assert inn["connection_security_policy"] == "mutual_tls"
            assert set(by.split(",")) <= set(inn) and set(by.split(",")) <= set(out)
    finally:
        stop.set()
        if t.is_alive():
            t.join(10)
        server.stop()
