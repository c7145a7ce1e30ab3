"""The Prometheus endpoints, scraped by a real Prometheus: the control plane's
monitoring port (istiod's 15014 ``/metrics``: ``pilot_*``, ``citadel_server_*``
beside ``pymesh_controlplane_*``) and the agent's status port (istio-agent's
15020 ``/stats/prometheus``). Values are driven by real ADS streams and read
back through Prometheus's query API; the text itself is parsed with
``prometheus_client``'s parser to check every family has HELP and TYPE."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from prometheus_client.parser import text_string_to_metric_families

from pymesh.agent.certs import WorkloadCerts
from pymesh.controlplane import ControlPlane
from pymesh.controlplane.ca.service import SecurityOptions
from pymesh.controlplane.xdsmetrics import MAX_REJECT_SERIES, XdsMetrics
from pymesh.mesh.pki import make_csr, new_key
from pymesh.mesh.xds import CDS, EDS, NDS
from pymesh.proto import ca as ca_pb
from pymesh.proto.nds import TYPE_URL as NDS_TYPE
from support.agent import C1, ScriptedAds, cla, eds_cluster, make_agent, name_table, pack, write_vm_files
from support.cp import AdsStream, example_config, vm_node
from support.ports import free_port
from support.prometheus import prometheus
from support.sec import tls_channel


def fetch(address: str, path: str) -> str:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return str(r.read().decode())


def families(text: str) -> dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]:
    """name -> (type, samples); fails on a family without HELP or TYPE (the parser makes
    those "untyped" with no documentation) or one named twice."""
    out: dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]] = {}
    for m in text_string_to_metric_families(text):
        assert m.type != "untyped" and m.documentation, f"{m.name}: no TYPE or HELP"
        assert m.name not in out, f"{m.name} appears twice"
        out[m.name] = (m.type, [(s.name, s.labels, s.value) for s in m.samples])
    return out


@pytest.fixture
def ads() -> Iterator[ScriptedAds]:
    s = ScriptedAds()
    yield s
    s.stop()


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    c = ControlPlane(
        example_config(tmp_path / "mesh", 18080),
        xds_listen="127.0.0.1:0",
        persist=False,
        debounce=0.02,
        monitoring_listen="127.0.0.1:0",
    )
    c.start()
    yield c
    c.stop()


def test_control_plane_istiod_families_scraped_by_prometheus(cp: ControlPlane, tmp_path: Path) -> None:
    node_a = vm_node("127.0.0.9", group="", name="a", extra={"ISTIO_VERSION": "1.29.0"})
    a = AdsStream(cp.port, node_a)
    b = AdsStream(cp.port, vm_node("127.0.0.10", group="", name="b"))
    try:
        a.send(CDS)
        ra = a.recv()
        a.send(CDS, version="", nonce=ra.nonce, error="cluster rejected by the test")  # a NACK, code 13
        b.send(CDS)
        b.ack(b.recv())
        services = len(cp.snapshot.registry.services)
        (cp.config_dir / "extra.yaml").write_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: extra}\n"
            "spec: {clusterIP: 10.96.9.9, ports: [{name: grpc, port: 81}]}\n"
        )
        cp.reload()
        # The push: both streams subscribe CDS wildcard, so both get the new cluster.
        assert a.recv().type_url == CDS and b.recv().type_url == CDS
        text = fetch(cp.monitoring.address, "/metrics")
        fams = families(text)
        # Istio's sums keep their bare names (no _total), typed counter.
        assert "# TYPE pilot_xds_pushes counter\n" in text and 'pilot_xds_pushes{type="cds"} 4.0\n' in text
        assert fams["pilot_total_xds_rejects"][0] == "counter"
        assert fams["pilot_xds_push_time"][0] == "histogram" and fams["pilot_xds"][0] == "gauge"
        assert fams["pymesh_controlplane_xds_nacks"][1] == [("pymesh_controlplane_xds_nacks_total", {}, 1.0)]
        assert "citadel_server_csr_count" not in fams  # no CA on this control plane

        node = "sidecar~127.0.0.9~a.default~default.svc.cluster.local"
        with prometheus(tmp_path / "prom", {"istiod": (cp.monitoring.address, "/metrics")}) as prom:
            prom.wait_value("sum(pilot_xds)", 2)
            assert prom.value('pilot_xds{version="1.29.0"}') == 1
            assert prom.value('pilot_xds{version=""}') == 1
            assert prom.value('pilot_xds_pushes{type="cds"}') == 4  # 2 first answers + 2 pushed
            assert prom.value('pilot_xds_push_time_count{type="cds"}') == 4
            assert prom.value('pilot_xds_push_time_bucket{type="cds",le="+Inf"}') == 4
            assert prom.value(f'pilot_xds_config_size_bytes_count{{type="{CDS}"}}') == 4
            assert prom.value('pilot_total_xds_rejects{type="cds"}') == 1
            assert prom.value(f'pilot_xds_cds_reject{{node="{node}",err="Internal"}}') == 1
            assert prom.value("pilot_xds_eds_reject") is None
            assert prom.value("pilot_proxy_convergence_time_count") == 2  # one per proxy pushed
            assert prom.value("pilot_services") == services + 1
            assert prom.value("pilot_virt_services") == 0
            # A proxy leaves: its version's series stays, at 0 (as istiod's tracker does).
            a.close()
            prom.wait_value('pilot_xds{version="1.29.0"}', 0)
            assert prom.value("sum(pilot_xds)") == 1
            assert prom.value('up{job="istiod"}') == 1
    finally:
        a.close()
        b.close()


def test_reject_series_are_capped_and_what_is_dropped_is_counted() -> None:
    m = XdsMetrics()
    for i in range(MAX_REJECT_SERIES + 10):
        m.rejected(CDS, f"sidecar~10.0.0.{i}~x.ns~ns.svc.cluster.local", 13)
    m.rejected(CDS, "sidecar~10.0.0.0~x.ns~ns.svc.cluster.local", 13)  # a known series still counts
    m.rejected(NDS, "any", 99)  # no legacy gauge for NDS: counted in the total only
    assert len(m.reject_series) == MAX_REJECT_SERIES and m.reject_series_dropped == 10
    assert m.reject_series[("cds", "sidecar~10.0.0.0~x.ns~ns.svc.cluster.local", "Internal")] == 2
    assert m.rejects == {"cds": MAX_REJECT_SERIES + 11, "nds": 1}


def test_ca_families(tmp_path: Path) -> None:
    cp = ControlPlane(
        example_config(tmp_path / "mesh", 18080),
        xds_listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        security=SecurityOptions(secure_listen="127.0.0.1:0"),
        debounce=0.02,
        monitoring_listen="127.0.0.1:0",
    ).start()
    try:
        token = cp.security.tokens.create("default", "product")
        WorkloadCerts(
            f"127.0.0.1:{cp.secure_port}", cp.security.ca.root_pem, tmp_path / "certs", token=lambda: token
        ).fetch()
        with tls_channel(cp.secure_port, cp.security.ca.root_pem) as ch:
            call = ch.unary_unary(ca_pb.METHOD, request_serializer=lambda m: m.SerializeToString())
            with pytest.raises(grpc.RpcError):  # no credentials: an authentication failure
                call(ca_pb.IstioCertificateRequest(csr=make_csr(new_key()).decode()), timeout=10)
            with pytest.raises(grpc.RpcError):  # authenticated, but the CSR does not parse
                call(
                    ca_pb.IstioCertificateRequest(csr="not a csr"),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=10,
                )
        fams = families(fetch(cp.monitoring.address, "/metrics"))
        assert fams["citadel_server_csr_count"] == ("counter", [("citadel_server_csr_count_total", {}, 3.0)])
        assert fams["citadel_server_success_cert_issuance_count"][1][0][2] == 1
        assert fams["citadel_server_authentication_failure_count"][1][0][2] == 1
        assert fams["citadel_server_csr_sign_err_count"][1] == [
            ("citadel_server_csr_sign_err_count_total", {"error": "CSR_ERROR"}, 1.0)
        ]
        root = cp.security.ca.root.not_valid_after_utc.timestamp()
        assert fams["citadel_server_root_cert_expiry_timestamp"][1][0][2] == root
    finally:
        cp.stop()


def test_agent_stats_prometheus_scraped_by_prometheus(ads: ScriptedAds, tmp_path: Path) -> None:
    sport = free_port("127.0.0.1")
    vm = write_vm_files(tmp_path / "vm", ads.port)
    agent = make_agent(
        vm,
        tmp_path / "state",
        free_port("127.0.0.1"),
        status_listen=f"127.0.0.1:{sport}",
        outbound_listen=["127.0.0.1:0"],
    )
    with agent:
        ads.request(CDS)
        ads.request(CDS, nonce=ads.push(CDS, "1", [pack(eds_cluster(C1))]))
        ads.request(EDS, nonce=ads.push(EDS, "1", [pack(cla(C1, "10.0.0.1"))]))
        ads.request(NDS, nonce=ads.push(NDS_TYPE, "1", [pack(name_table("10.96.0.20"), NDS_TYPE)]))
        ads.request(NDS, nonce=ads.push(NDS_TYPE, "2", [any_pb2.Any(type_url=NDS_TYPE, value=b"\xff")]))  # NACK
        address = f"127.0.0.1:{sport}"
        text = fetch(address, "/stats/prometheus")
        fams = families(text)
        assert fams["pymesh_agent_xds_pushes"][1] == [
            ("pymesh_agent_xds_pushes_total", {"type": t}, n) for t, n in (("cds", 1.0), ("eds", 1.0), ("nds", 2.0))
        ]
        assert fams["pymesh_agent_relay_active"][1] == [("pymesh_agent_relay_active", {"relay": "outbound"}, 0.0)]
        assert "istio_agent_dns_requests" in fams  # the DNS proxy's own section, merged
        with prometheus(tmp_path / "prom", {"vm": (address, "/stats/prometheus")}) as prom:
            prom.wait_value("pymesh_agent_xds_connected", 1)
            assert prom.value('pymesh_agent_xds_pushes_total{type="nds"}') == 2
            assert prom.value('pymesh_agent_xds_rejects_total{type="nds"}') == 1
            assert prom.value('pymesh_agent_xds_rejects_total{type="cds"}') == 0
            last_cds = prom.value('pymesh_agent_xds_last_push_timestamp_seconds{type="cds"}')
            assert last_cds is not None and abs(last_cds - time.time()) < 60
            assert prom.value('pymesh_agent_relay_accepted_total{relay="outbound"}') == 0
            assert prom.value("istio_agent_dns_requests_total") == 0
            assert prom.value("pymesh_agent_healthy") == -1  # no probe configured
        agent.client.stop()  # type: ignore[union-attr]
        assert families(fetch(address, "/metrics"))["pymesh_agent_xds_connected"][1][0][2] == 0
