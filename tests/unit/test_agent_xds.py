"""The agent's ADS client against a scripted ADS server (a real gRPC peer):
the requests on the wire, ACK and NACK shapes, a rejected push of each type
leaving the serving tables as they were, health reports after the
subscriptions, and reconnect backoff with jitter."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import any_pb2

from pymesh.agent import XdsClient
from pymesh.agent.xds_client import HEALTH
from pymesh.mesh.xds import CDS, EDS, NDS
from pymesh.proto.nds import TYPE_URL as NDS_TYPE
from support.agent import C1, HOST, ScriptedAds, cla, eds_cluster, make_agent, name_table, pack, resolve, write_vm_files
from support.ports import free_port
from support.wait import wait_until


@pytest.fixture
def ads() -> Iterator[ScriptedAds]:
    s = ScriptedAds()
    yield s
    s.stop()


def addresses(agent: Any) -> list[str]:
    return sorted(e["address"] for e in agent.lb.endpoints(C1))


def test_acks_nacks_and_last_good_tables(ads: ScriptedAds, tmp_path: Path) -> None:
    probe = {"exec": {"command": ["/bin/true"]}, "periodSeconds": 30}
    vm = write_vm_files(tmp_path / "vm", ads.port, probe=probe)
    dport = free_port("127.0.0.1")
    agent = make_agent(vm, tmp_path / "state", dport)
    with agent:
        first = ads.request(CDS)
        assert first.node.id == "sidecar~127.0.0.3~vm-1.default~default.svc.cluster.local"
        md = first.node.metadata.fields
        assert md["AUTO_REGISTER_GROUP"].string_value == "product-vm"
        assert md["DNS_CAPTURE"].string_value == "true"
        assert md["NAMESPACE"].string_value == "default"
        assert md["INSTANCE_IPS"].string_value == "127.0.0.3"
        assert md["LABELS"].struct_value.fields["app"].string_value == "product"
        assert "readinessProbe" in md["PROXY_CONFIG"].struct_value.fields
        assert list(first.resource_names) == []  # CDS wildcard
        assert list(ads.request(NDS).resource_names) == []
        # The probe's report comes after the subscriptions (istiod drops a first-request report).
        health = ads.request(HEALTH)
        assert not health.HasField("error_detail") and not health.HasField("node")

        # v1: good CDS, EDS, NDS -> ACKs; the EDS subscription names the cluster.
        n = ads.push(CDS, "1", [pack(eds_cluster(C1))])
        ack = ads.request(CDS, nonce=n)
        assert ack.version_info == "1" and not ack.HasField("error_detail")
        sub = ads.request(EDS)
        assert list(sub.resource_names) == [C1]
        n = ads.push(EDS, "1", [pack(cla(C1, "10.0.0.1", "10.0.0.2"))])
        assert ads.request(EDS, nonce=n).version_info == "1"
        n = ads.push(NDS_TYPE, "1", [pack(name_table("10.96.0.20"), NDS_TYPE)])
        assert ads.request(NDS, nonce=n).version_info == "1"
        assert addresses(agent) == ["10.0.0.1:8080", "10.0.0.2:8080"]
        assert resolve(dport, HOST)[1] == ["10.96.0.20"]
        assert agent.route("10.96.0.20", 8080).cluster == C1

        # v2: a cluster the lbtable rejects -> NACK with the error, version stays "1".
        bad = eds_cluster(C1, lb_policy=cluster_pb2.Cluster.ROUND_ROBIN)
        bad.ring_hash_lb_config.minimum_ring_size.value = 1024
        n = ads.push(CDS, "2", [pack(bad)])
        nack = ads.request(CDS, nonce=n)
        assert nack.version_info == "1"
        assert nack.error_detail.code == 13 and "ring_hash_lb_config" in nack.error_detail.message
        assert C1 in nack.error_detail.message  # names the cluster
        assert addresses(agent) == ["10.0.0.1:8080", "10.0.0.2:8080"]

        # v2 EDS with an endpoint that is no IP -> NACK, endpoints unchanged.
        n = ads.push(EDS, "2", [pack(cla(C1, "10.0.0.9", "db.example"))])
        nack = ads.request(EDS, nonce=n)
        assert nack.version_info == "1" and "db.example" in nack.error_detail.message
        assert addresses(agent) == ["10.0.0.1:8080", "10.0.0.2:8080"]

        # v2 NDS that does not decode -> NACK, DNS answers from the last good table.
        garbage = any_pb2.Any(type_url=NDS_TYPE, value=b"\x0a\xff\xff\xff")
        n = ads.push(NDS_TYPE, "2", [garbage])
        nack = ads.request(NDS, nonce=n)
        assert nack.version_info == "1" and nack.error_detail.message
        assert resolve(dport, HOST)[1] == ["10.96.0.20"]
        # Two tables in one NDS response: NACK.
        n = ads.push(NDS_TYPE, "3", [pack(name_table("10.96.0.21"), NDS_TYPE)] * 2)
        assert "2 tables" in ads.request(NDS, nonce=n).error_detail.message

        # A resource of the wrong type in a CDS response: NACK.
        n = ads.push(CDS, "3", [pack(cla(C1, "10.0.0.1"))])
        assert "ClusterLoadAssignment" in ads.request(CDS, nonce=n).error_detail.message

        # v4: good again -> ACK "4"; the saved state is the last good one.
        n = ads.push(EDS, "4", [pack(cla(C1, "10.0.0.3"))])
        assert ads.request(EDS, nonce=n).version_info == "4"
        assert addresses(agent) == ["10.0.0.3:8080"]
        st = agent.status()
        assert st["stats"]["nacks"] == 5 and st["versions"][CDS] == "1" and st["versions"][EDS] == "4"

        # Removing the cluster unsubscribes its EDS and forgets its endpoints.
        n = ads.push(CDS, "5", [])
        assert ads.request(CDS, nonce=n).version_info == "5"
        assert list(ads.request(EDS).resource_names) == []
        assert agent.lb.clusters() == []
        assert agent.route("10.96.0.20", 8080).verdict == "passthrough"


def test_saved_state_is_the_last_good_one(ads: ScriptedAds, tmp_path: Path) -> None:
    vm = write_vm_files(tmp_path / "vm", ads.port)
    state = tmp_path / "state"
    agent = make_agent(vm, state, free_port("127.0.0.1"))
    with agent:
        ads.request(CDS)
        ads.request(CDS, nonce=ads.push(CDS, "1", [pack(eds_cluster(C1))]))
        ads.request(EDS, nonce=ads.push(EDS, "1", [pack(cla(C1, "10.0.0.1"))]))
        ads.request(EDS, nonce=ads.push(EDS, "2", [pack(cla(C1, "not-an-ip"))]))  # NACKed
    ads.stop()  # the control plane is gone for the restart
    again = make_agent(vm, state, free_port("127.0.0.1"))
    with again:
        assert again.loaded_from_disk == ["Cluster", "ClusterLoadAssignment"]
        assert addresses(again) == ["10.0.0.1:8080"]
        assert again.status()["versions"][EDS] == "1"


def test_corrupt_saved_state_is_ignored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "cds.pb").write_bytes(b"\xff\xff\xff garbage")
    port = free_port("127.0.0.1")  # nothing listens: the agent starts anyway
    vm = write_vm_files(tmp_path / "vm", port)
    agent = make_agent(vm, state, free_port("127.0.0.1"))
    with agent:
        assert agent.loaded_from_disk == []
        assert agent.lb.clusters() == []
        wait_until(lambda: agent.status()["xds"] == "backoff")


def test_reconnect_backoff_is_exponential_with_jitter(tmp_path: Path) -> None:
    from envoy.config.core.v3 import base_pb2

    port = free_port("127.0.0.1")  # nothing listens
    client = XdsClient(
        f"127.0.0.1:{port}",
        base_pb2.Node(id="sidecar~127.0.0.9~x.default~default.svc.cluster.local"),
        {},
        subscriptions={CDS: None},
        backoff_base=0.01,
        backoff_max=0.16,
        rng=random.Random(7),
    ).start()
    try:
        wait_until(lambda: len(client.waits) >= 8, timeout=10)
    finally:
        client.stop()
    waits = client.waits[:8]
    for n, w in enumerate(waits):
        d = min(0.16, 0.01 * 2**n)
        assert d / 2 <= w <= d, (n, w)
    assert len(set(waits[5:])) == len(waits[5:])  # jittered, not a fixed cap
    assert client.state == "stopped"


def test_stream_reset_resets_backoff_and_resubscribes(ads: ScriptedAds, tmp_path: Path) -> None:
    vm = write_vm_files(tmp_path / "vm", ads.port)
    agent = make_agent(vm, tmp_path / "state", free_port("127.0.0.1"))
    with agent:
        ads.request(CDS)
        ads.request(CDS, nonce=ads.push(CDS, "7", [pack(eds_cluster(C1))]))
        ads.request(EDS)
        port = ads.port
        ads.stop()
        wait_until(lambda: agent.status()["xds"] == "backoff")
        time.sleep(0.3)
        # A new server on the same port: the agent comes back with its versions and EDS names.
        again = ScriptedAds(port=port)
        assert again.port == port
        try:
            first = again.request(CDS)
            assert first.version_info == "7" and first.HasField("node")
            eds = again.request(EDS)
            assert list(eds.resource_names) == [C1] and eds.response_nonce == ""
        finally:
            again.stop()


def test_health_is_resent_periodically_without_transitions(ads: ScriptedAds, tmp_path: Path) -> None:
    probe = {"exec": {"command": ["/bin/false"]}, "periodSeconds": 30}
    vm = write_vm_files(tmp_path / "vm", ads.port, probe=probe)
    agent = make_agent(vm, tmp_path / "state", free_port("127.0.0.1"), health_resend_interval=0.2)
    with agent:
        reports = [ads.request(HEALTH, timeout=5) for _ in range(4)]
        assert agent.prober is not None and agent.prober.attempts == 1
    assert all(r.error_detail.code == 13 and "exited with status 1" in r.error_detail.message for r in reports)


def test_update_callbacks_and_a_custom_redirect_builder(ads: ScriptedAds, tmp_path: Path) -> None:
    from pymesh import RedirectTable

    seen: list[Any] = []

    def builder(services: list[dict[str, Any]]) -> Any:
        # What the capture side does: its own include/exclude settings around the agent's VIP list.
        return RedirectTable.from_dict({"services": services, "exclude_ip_ranges": ["10.96.0.0/16"]})

    vm = write_vm_files(tmp_path / "vm", ads.port)
    agent = make_agent(vm, tmp_path / "state", free_port("127.0.0.1"), redirect_builder=builder)
    agent.on_update(seen.append)
    assert seen[0].generation == 0 and seen[0].services == ()
    with agent:
        ads.request(CDS)
        ads.request(CDS, nonce=ads.push(CDS, "1", [pack(eds_cluster(C1))]))
        ads.request(NDS, nonce=ads.push(NDS_TYPE, "1", [pack(name_table("10.97.0.20"), NDS_TYPE)]))
        # Warming: the new cluster has no endpoints yet, so its VIP passes through.
        assert agent.status()["warming"] == [C1] and C1 not in agent.lb
        assert seen[-1].services == () and seen[-1].redirect.classify("10.97.0.20", 8080) == ("passthrough", None)
        ads.request(EDS, nonce=ads.push(EDS, "1", [pack(cla(C1, "10.0.0.1"))]))
        assert agent.status()["warming"] == []
        wait_until(lambda: seen[-1].services)
        t = seen[-1]
        assert t.services == ({"address": "10.97.0.20", "port": 8080, "cluster": C1},)
        assert t.redirect.classify("10.97.0.20", 8080) == ("cluster", C1)
        assert t.redirect.classify("10.96.0.1", 443) == ("bypass", None)  # the builder's exclusion
        assert t.lb is agent.lb and [x.generation for x in seen] == sorted({x.generation for x in seen})
        assert agent.environment()["ISTIO_SERVICE_CIDR"] == "*"


def test_an_eds_push_leaves_other_clusters_and_endpoint_state_alone(ads: ScriptedAds, tmp_path: Path) -> None:
    c2 = "outbound|9090||other.default.svc.cluster.local"
    vm = write_vm_files(tmp_path / "vm", ads.port)
    agent = make_agent(vm, tmp_path / "state", free_port("127.0.0.1"))
    with agent:
        ads.request(CDS)
        ads.request(CDS, nonce=ads.push(CDS, "1", [pack(eds_cluster(C1)), pack(eds_cluster(c2))]))
        assert sorted(ads.request(EDS).resource_names) == sorted([C1, c2])
        ads.request(EDS, nonce=ads.push(EDS, "1", [pack(cla(C1, "10.0.0.1")), pack(cla(c2, "10.0.1.1"))]))
        agent.lb.request_started(c2, "10.0.1.1:8080")
        agent.lb.request_started(C1, "10.0.0.1:8080")
        before = agent.lb.generation
        ads.request(EDS, nonce=ads.push(EDS, "2", [pack(cla(C1, "10.0.0.1", "10.0.0.5"))]))
        assert agent.lb.generation == before + 1
        assert addresses(agent) == ["10.0.0.1:8080", "10.0.0.5:8080"]
        assert [e["address"] for e in agent.lb.endpoints(c2)] == ["10.0.1.1:8080"]
        # In-flight requests survive: on the untouched cluster and on the endpoint that stayed.
        assert agent.lb.endpoints(c2)[0]["active_requests"] == 1
        kept = {e["address"]: e["active_requests"] for e in agent.lb.endpoints(C1)}
        assert kept == {"10.0.0.1:8080": 1, "10.0.0.5:8080": 0}


def test_status_port(ads: ScriptedAds, tmp_path: Path) -> None:
    import json
    import urllib.error
    import urllib.request

    sport = free_port("127.0.0.1")
    vm = write_vm_files(tmp_path / "vm", ads.port)
    agent = make_agent(vm, tmp_path / "state", free_port("127.0.0.1"), status_listen=f"127.0.0.1:{sport}")

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{sport}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    with agent:
        assert agent.status()["status"] == f"127.0.0.1:{sport}"
        code, body = get("/healthz/ready")
        assert code == 503 and "no clusters" in body
        ads.request(CDS)
        ads.request(CDS, nonce=ads.push(CDS, "1", [pack(eds_cluster(C1))]))
        ads.request(EDS, nonce=ads.push(EDS, "1", [pack(cla(C1, "10.0.0.1"))]))
        ads.request(NDS, nonce=ads.push(NDS_TYPE, "1", [pack(name_table("10.96.0.20"), NDS_TYPE)]))
        ads.request(NDS, nonce=ads.push(NDS_TYPE, "2", [any_pb2.Any(type_url=NDS_TYPE, value=b"\xff")]))  # NACK
        assert get("/healthz/ready") == (200, "ready")
        ndsz = json.loads(get("/debug/ndsz")[1])
        assert ndsz == [{"hostname": HOST, "ips": ["10.96.0.20"], "registry": "Kubernetes", "shortname": "product",
                         "namespace": "default"}]  # fmt: skip
        clusters = json.loads(get("/debug/clusters")[1])
        assert [e["address"] for e in clusters[C1]] == ["10.0.0.1:8080"]
        assert json.loads(get("/debug/status")[1])["versions"][NDS] == "1"
        code, text = get("/metrics")
        assert code == 200 and "pymesh_agent_xds_connected 1" in text and "pymesh_agent_xds_nacks_total 1" in text
        assert "pymesh_agent_endpoints 1" in text and "istio_agent_dns" in text
        assert get("/nope")[0] == 404
    # Stopped: the port is closed.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{sport}/healthz/ready", timeout=2)


def test_unchanged_resources_are_acked_without_rebuilding(ads: ScriptedAds, tmp_path: Path) -> None:
    c2 = "outbound|9090||other.default.svc.cluster.local"
    vm = write_vm_files(tmp_path / "vm", ads.port)
    agent = make_agent(vm, tmp_path / "state", free_port("127.0.0.1"))
    with agent:
        ads.request(CDS)
        ads.request(CDS, nonce=ads.push(CDS, "1", [pack(eds_cluster(C1)), pack(eds_cluster(c2))]))
        ads.request(EDS, nonce=ads.push(EDS, "1", [pack(cla(C1, "10.0.0.1")), pack(cla(c2, "10.0.1.1"))]))
        gen, tables_gen = agent.lb.generation, agent.tables.generation
        # The same state again (what a reconnect brings): ACKed, nothing rebuilt or republished.
        assert (
            ads.request(CDS, nonce=ads.push(CDS, "2", [pack(eds_cluster(C1)), pack(eds_cluster(c2))])).version_info
            == "2"
        )
        assert ads.request(EDS, nonce=ads.push(EDS, "2", [pack(cla(C1, "10.0.0.1"))])).version_info == "2"
        assert (agent.lb.generation, agent.tables.generation) == (gen, tables_gen)
        # One cluster changes: one upsert; one disappears: one removal.
        changed = eds_cluster(C1, lb_policy=cluster_pb2.Cluster.RANDOM)
        assert ads.request(CDS, nonce=ads.push(CDS, "3", [pack(changed)])).version_info == "3"
        assert agent.lb.clusters() == [C1] and agent.lb.cluster_info(C1)["policy"] == "RANDOM"
        assert agent.lb.generation == gen + 2
        assert addresses(agent) == ["10.0.0.1:8080"]  # its endpoints carried over


def test_attached_outbound_proxy_follows_the_tables(ads: ScriptedAds, tmp_path: Path) -> None:
    from pymesh.relay import start_outbound_proxy

    vm = write_vm_files(tmp_path / "vm", ads.port)
    agent = make_agent(vm, tmp_path / "state", free_port("127.0.0.1"))
    proxy = start_outbound_proxy(agent.lb, agent.redirect, listen=["127.0.0.1:0"])
    try:
        agent.attach(proxy)
        with agent:
            ads.request(CDS)
            ads.request(CDS, nonce=ads.push(CDS, "1", [pack(eds_cluster(C1))]))
            ads.request(EDS, nonce=ads.push(EDS, "1", [pack(cla(C1, "10.0.0.1"))]))
            assert proxy.tables[0].classify("10.96.0.20", 8080) == ("passthrough", None)  # no names yet
            ads.request(NDS, nonce=ads.push(NDS_TYPE, "1", [pack(name_table("10.96.0.20"), NDS_TYPE)]))
            redirect, lb = proxy.tables
            assert redirect.classify("10.96.0.20", 8080) == ("cluster", C1)
            assert lb.pick(C1) == "10.0.0.1:8080"
    finally:
        proxy.stop()


def test_delta_subscriptions_acks_nacks_and_removals(tmp_path: Path) -> None:
    ads = ScriptedAds(delta=True)
    vm = write_vm_files(tmp_path / "vm", ads.port)
    dport = free_port("127.0.0.1")
    agent = make_agent(vm, tmp_path / "state", dport, xds_delta=True)
    try:
        with agent:
            first = ads.request(CDS)
            assert first.HasField("node") and list(first.resource_names_subscribe) == ["*"]
            assert list(ads.request(NDS).resource_names_subscribe) == ["*"]
            n = ads.push_delta(CDS, "1", {C1: pack(eds_cluster(C1))})
            ack = ads.request(CDS, nonce=n)
            assert not ack.HasField("error_detail")
            sub = ads.request(EDS)
            assert list(sub.resource_names_subscribe) == [C1] and not sub.response_nonce
            n = ads.push_delta(EDS, "1", {C1: pack(cla(C1, "10.0.0.1"))})
            assert not ads.request(EDS, nonce=n).HasField("error_detail")
            n = ads.push_delta(NDS_TYPE, "1", {"": pack(name_table("10.96.0.20"), NDS_TYPE)})
            assert not ads.request(NDS, nonce=n).HasField("error_detail")
            assert addresses(agent) == ["10.0.0.1:8080"] and resolve(dport, HOST)[1] == ["10.96.0.20"]

            # A bad assignment: NACK; the held state and the tables stay.
            n = ads.push_delta(EDS, "2", {C1: pack(cla(C1, "bad-ip"))})
            nack = ads.request(EDS, nonce=n)
            assert nack.error_detail.code == 13 and "bad-ip" in nack.error_detail.message
            assert addresses(agent) == ["10.0.0.1:8080"]

            # A second cluster arrives incrementally: the first is kept (delta adds, SotW would replace).
            c2 = "outbound|9090||other.default.svc.cluster.local"
            ads.request(CDS, nonce=ads.push_delta(CDS, "3", {c2: pack(eds_cluster(c2))}))
            sub = ads.request(EDS)
            assert list(sub.resource_names_subscribe) == [c2] and not sub.resource_names_unsubscribe
            assert agent.lb.clusters() == [C1]  # c2 warms until its endpoints arrive
            ads.request(EDS, nonce=ads.push_delta(EDS, "3", {c2: pack(cla(c2, "10.0.1.1"))}))
            assert sorted(agent.lb.clusters()) == sorted([C1, c2])

            # Removal: the first cluster goes, its EDS is unsubscribed.
            ads.request(CDS, nonce=ads.push_delta(CDS, "4", {}, removed=(C1,)))
            unsub = ads.request(EDS)
            assert list(unsub.resource_names_unsubscribe) == [C1]
            assert agent.lb.clusters() == [c2]
            assert agent.route("10.96.0.20", 8080).verdict == "passthrough"

            # A new stream names what the agent holds, so the server can skip resending it.
            port = ads.port
            ads.stop()
            ads = ScriptedAds(port=port, delta=True)
            again = ads.request(CDS)
            assert again.HasField("node") and dict(again.initial_resource_versions) == {c2: f"3-{c2}"}
            eds = ads.request(EDS)
            assert list(eds.resource_names_subscribe) == [c2]
            assert dict(eds.initial_resource_versions) == {c2: f"3-{c2}"}  # C1's was dropped with its unsubscribe
    finally:
        ads.stop()


def test_saved_state_of_another_node_or_control_plane_is_not_served(ads: ScriptedAds, tmp_path: Path) -> None:
    vm = write_vm_files(tmp_path / "vm", ads.port)
    state = tmp_path / "state"
    with make_agent(vm, state, free_port("127.0.0.1")) as agent:
        ads.request(CDS)
        ads.request(CDS, nonce=ads.push(CDS, "1", [pack(eds_cluster(C1))]))
        ads.request(EDS, nonce=ads.push(EDS, "1", [pack(cla(C1, "10.0.0.1"))]))
        assert agent.lb.clusters() == [C1]
    ads.stop()
    # Same files, same state dir, another node name: the saved tables are someone else's.
    other = make_agent(vm, state, free_port("127.0.0.1"), pod_name="vm-2")
    with other:
        assert other.loaded_from_disk == [] and other.lb.clusters() == []
    assert not (state / "cds.pb").exists()  # discarded, never mixed with vm-2's own


def test_warming_cluster_without_endpoints_joins_after_the_timeout(ads: ScriptedAds, tmp_path: Path) -> None:
    vm = write_vm_files(tmp_path / "vm", ads.port)
    agent = make_agent(vm, tmp_path / "state", free_port("127.0.0.1"), warm_timeout=0.3)
    with agent:
        ads.request(CDS)
        ads.request(CDS, nonce=ads.push(CDS, "1", [pack(eds_cluster(C1))]))
        ads.request(EDS, nonce=ads.push(EDS, "1", [pack(cla(C1, "10.0.0.1"))]))
        ads.request(NDS, nonce=ads.push(NDS_TYPE, "1", [pack(name_table("10.96.0.20"), NDS_TYPE)]))
        # A changed definition of a cluster with endpoints: no warming, applied at once.
        changed = eds_cluster(C1, lb_policy=cluster_pb2.Cluster.RANDOM)
        c3 = "outbound|7070||product.default.svc.cluster.local"
        ads.request(CDS, nonce=ads.push(CDS, "2", [pack(changed), pack(eds_cluster(c3))]))
        assert agent.lb.cluster_info(C1)["policy"] == "RANDOM" and agent.status()["warming"] == [c3]
        assert agent.route("10.96.0.20", 7070).verdict == "passthrough"
        # Its EDS never comes: after warm_timeout it serves, with no endpoint to pick.
        wait_until(lambda: c3 in agent.lb, timeout=5)
        assert agent.status()["warming"] == [] and agent.lb.endpoints(c3) == []
        r = agent.route("10.96.0.20", 7070)
        assert (r.verdict, r.cluster, r.endpoint) == ("cluster", c3, None)
        # A bad new cluster is still rejected at CDS time, although it would warm.
        bad = eds_cluster("outbound|6060||x.default.svc.cluster.local", lb_policy=cluster_pb2.Cluster.ROUND_ROBIN)
        bad.maglev_lb_config.table_size.value = 65537
        nack = ads.request(CDS, nonce=ads.push(CDS, "3", [pack(changed), pack(eds_cluster(c3)), pack(bad)]))
        assert "maglev_lb_config" in nack.error_detail.message and agent.status()["warming"] == []
