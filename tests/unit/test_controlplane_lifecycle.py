"""Registration lifecycle over real ADS streams: connect, disconnect,
reconnect within and after the grace period, a control-plane restart in
between (SQLite), health reports flipping the endpoint, the NACK path,
invalid config, a missing group, and two VMs with one IP in two networks."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from pymesh.controlplane import ControlPlane
from pymesh.mesh.xds import CDS, EDS
from support.cp import AdsStream, example_config, pymesh_cli, vm_node
from support.wait import wait_until

PORT = 18080
VM_IP = "127.0.0.3"
ENTRY = f"product-vm-{VM_IP}"
CLUSTER = f"outbound|{PORT}||product.default.svc.cluster.local"
GRACE = 2.0  # short for tests, long enough for a loaded CI machine to reconnect within it


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return example_config(tmp_path / "mesh", PORT)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def start(cfg: Path, data: Path, grace: float = GRACE) -> ControlPlane:
    return ControlPlane(cfg, xds_listen="127.0.0.1:0", data_dir=data, grace_period=grace, debounce=0.02).start()


@pytest.fixture
def cp(cfg: Path, data: Path) -> Iterator[ControlPlane]:
    c = start(cfg, data)
    yield c
    c.stop()


def connect(cp: ControlPlane, **kw: Any) -> AdsStream:
    s = AdsStream(cp.port, vm_node(kw.pop("ip", VM_IP), **kw))
    s.send(CDS)
    s.ack(s.recv())
    return s


def annotations(cp: ControlPlane, name: str = ENTRY) -> dict[str, str]:
    e = cp.registered_entry("default", name)
    return dict(e["metadata"]["annotations"]) if e else {}


def eds_addresses(r: Any) -> list[str]:
    out = []
    for a in r.resources:
        cla = ClusterLoadAssignment.FromString(a.value)
        for loc in cla.endpoints:
            out += [e.endpoint.address.socket_address.address for e in loc.lb_endpoints]
    return sorted(out)


def watcher(cp: ControlPlane, network: str = "") -> tuple[AdsStream, Any]:
    """A client proxy (no registration) watching the product cluster's endpoints."""
    s = AdsStream(cp.port, vm_node("127.0.0.9", group="", name="client", network=network))
    s.send(EDS, (CLUSTER,))
    r = s.recv()
    s.ack(r, (CLUSTER,))
    return s, r


def test_reconnect_within_grace_keeps_the_entry_and_it_goes_after_grace(cp: ControlPlane) -> None:
    s1 = connect(cp)
    entry = cp.registered_entry("default", ENTRY)
    assert entry is not None
    uid = entry["metadata"]["uid"]
    ann = annotations(cp)
    assert ann["istio.io/workloadController"] == cp.instance_id
    assert "istio.io/connectedAt" in ann and "istio.io/disconnectedAt" not in ann
    assert entry["metadata"]["ownerReferences"][0]["kind"] == "WorkloadGroup"
    assert entry["metadata"]["ownerReferences"][0]["name"] == "product-vm"

    s1.close()
    wait_until(lambda: "istio.io/disconnectedAt" in annotations(cp))
    assert "istio.io/connectedAt" not in annotations(cp)
    s2 = connect(cp)  # back within the grace period
    ann = annotations(cp)
    assert "istio.io/connectedAt" in ann and "istio.io/disconnectedAt" not in ann
    time.sleep(GRACE * 1.5)
    entry = cp.registered_entry("default", ENTRY)
    assert entry is not None and entry["metadata"]["uid"] == uid  # kept, not recreated

    gone_at = time.monotonic()
    s2.close()
    wait_until(lambda: cp.registered_entry("default", ENTRY) is None, timeout=10)
    assert time.monotonic() - gone_at >= GRACE * 0.9
    # A reconnect after the grace period registers a new entry.
    s3 = connect(cp)
    entry = cp.registered_entry("default", ENTRY)
    assert entry is not None and entry["metadata"]["uid"] != uid
    s3.close()


def test_two_streams_of_one_vm_keep_the_entry_until_the_last_closes(cp: ControlPlane) -> None:
    a, b = connect(cp), connect(cp)
    a.close()
    time.sleep(GRACE * 1.5)
    assert "istio.io/connectedAt" in annotations(cp)
    b.close()
    wait_until(lambda: cp.registered_entry("default", ENTRY) is None, timeout=10)


def test_restart_keeps_registered_entries_and_a_returning_vm_keeps_its_entry(cfg: Path, data: Path) -> None:
    cp1 = start(cfg, data)
    s = connect(cp1)
    uid = cp1.registered_entry("default", ENTRY)["metadata"]["uid"]  # type: ignore[index]
    cp1.stop()
    s.close()

    # A longer grace period here: `pymesh get` (a subprocess) must run inside it on a loaded machine.
    cp2 = start(cfg, data, grace=3.0)
    try:
        entry = cp2.registered_entry("default", ENTRY)
        assert entry is not None and entry["metadata"]["uid"] == uid
        assert "istio.io/disconnectedAt" in entry["metadata"]["annotations"]
        # Come back within the grace period after the restart, before anything
        # slow (a subprocess on a loaded machine) can eat into it.
        s = connect(cp2)
        # The CLI reads the same data directory.
        out = subprocess.run(
            [*pymesh_cli(), "get", "workloadentries", "-o", "json", "--data-dir", str(data)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        items = json.loads(out.stdout)["items"]
        assert [i["metadata"]["name"] for i in items] == [ENTRY]
        assert items[0]["spec"]["address"] == VM_IP
        time.sleep(3.0 * 1.2)  # past the grace period, still connected
        entry = cp2.registered_entry("default", ENTRY)
        assert entry is not None and entry["metadata"]["uid"] == uid
        s.close()
    finally:
        cp2.stop()

    # Restart again and let nobody come back: removed one grace period later.
    cp3 = start(cfg, data)
    try:
        assert cp3.registered_entry("default", ENTRY) is not None
        wait_until(lambda: cp3.registered_entry("default", ENTRY) is None, timeout=10)
    finally:
        cp3.stop()


def test_health_reports_move_the_endpoint_in_and_out(cp: ControlPlane) -> None:
    w, first = watcher(cp)
    assert eds_addresses(first) == ["127.0.0.2"]
    vm = connect(cp, probe=True)
    assert annotations(cp)["proxy.istio.io/health-checks-enabled"] == "true"
    # A health-checked entry receives no traffic before its first healthy report.
    assert w.no_response(0.5)

    vm.health(True)
    r = w.recv()
    assert eds_addresses(r) == ["127.0.0.2", VM_IP]
    w.ack(r, (CLUSTER,))
    cond = cp.registered_entry("default", ENTRY)["status"]["conditions"][0]  # type: ignore[index]
    assert cond["type"] == "Healthy" and cond["status"] == "True" and "message" not in cond

    vm.health(False, "connect: connection refused")
    r = w.recv()
    assert eds_addresses(r) == ["127.0.0.2"]
    w.ack(r, (CLUSTER,))
    cond = cp.registered_entry("default", ENTRY)["status"]["conditions"][0]  # type: ignore[index]
    assert cond["status"] == "False" and cond["message"] == "connect: connection refused"
    vm.close()
    w.close()


def test_without_readiness_probe_the_vm_serves_at_once(cp: ControlPlane) -> None:
    w, _ = watcher(cp)
    vm = connect(cp)
    r = w.recv()
    assert eds_addresses(r) == ["127.0.0.2", VM_IP]
    vm.close()
    w.close()


def test_nack_keeps_the_client_on_its_version_and_is_logged(
    cp: ControlPlane, cfg: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pymesh.controlplane")
    s = AdsStream(cp.port, vm_node("127.0.0.9", group="", name="client"))
    s.send(EDS, (CLUSTER,))
    r1 = s.recv()
    s.send(EDS, (CLUSTER,), version="", nonce=r1.nonce, error="duplicate endpoint address")
    wait_until(lambda: cp.ads.nacks)
    n = cp.ads.nacks[-1]
    assert (n.type_url, n.message, n.nonce) == (EDS, "duplicate endpoint address", r1.nonce)
    assert any("NACK" in m and "duplicate endpoint address" in m for m in caplog.messages)
    assert s.no_response(0.5)  # nothing resent: the client keeps its last good version

    # The next change is still pushed after a NACK.
    text = (cfg / "product.yaml").read_text().replace("podIP: 127.0.0.2", "podIP: 127.0.0.4")
    (cfg / "product.yaml").write_text(text)
    cp.reload()
    r2 = s.recv()
    assert eds_addresses(r2) == ["127.0.0.4"] and r2.version_info != r1.version_info
    s.close()


def test_invalid_yaml_and_objects_are_rejected_by_name_and_the_rest_serves(cp: ControlPlane, cfg: Path) -> None:
    (cfg / "broken.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x\n")
    (cfg / "bad.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: default}\n"
        "spec: {ports: [{name: http, port: 70000}]}\n"
    )
    cp.reload()
    errors = sorted(str(e) for e in cp.errors)
    assert len(errors) == 2
    assert any(str(cfg / "bad.yaml") in e and "Service default/bad" in e and "spec.ports[0].port" in e for e in errors)
    assert any(str(cfg / "broken.yaml") in e and "invalid YAML" in e and "line " in e for e in errors)
    assert "product.default.svc.cluster.local" in cp.snapshot.registry.by_host
    assert "bad.default.svc.cluster.local" not in cp.snapshot.registry.by_host

    # A valid object turned invalid keeps serving its last good version.
    good = (cfg / "product.yaml").read_text()
    (cfg / "product.yaml").write_text(good.replace("clusterIP: 10.96.0.20", "clusterIP: 10.96.0.999"))
    cp.reload()
    assert any("Service default/product" in str(e) and "spec.clusterIP" in str(e) for e in cp.errors)
    assert cp.snapshot.registry.by_host["product.default.svc.cluster.local"].addresses == ("10.96.0.20",)
    (cfg / "product.yaml").write_text(good.replace("clusterIP: 10.96.0.20", "clusterIP: 10.96.0.21"))
    cp.reload()
    assert cp.snapshot.registry.by_host["product.default.svc.cluster.local"].addresses == ("10.96.0.21",)


def test_missing_group_fails_the_stream_with_failed_precondition(cp: ControlPlane) -> None:
    s = AdsStream(cp.port, vm_node(VM_IP, group="no-such-group"))
    s.send(CDS)
    err = s.wait_closed()
    assert err is not None
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot find WorkloadGroup default/no-such-group" in str(err.details())
    assert cp.registered_entry("default", f"no-such-group-{VM_IP}") is None
    s.close()


def test_two_vms_with_one_ip_in_two_networks(cp: ControlPlane) -> None:
    ip = "10.1.0.5"
    a = connect(cp, ip=ip, network="net1", name="vm-a")
    b = connect(cp, ip=ip, network="net2", name="vm-b")
    assert cp.registered_entry("default", f"product-vm-{ip}-net1")["spec"]["network"] == "net1"  # type: ignore[index]
    assert cp.registered_entry("default", f"product-vm-{ip}-net2")["spec"]["network"] == "net2"  # type: ignore[index]
    cp.flush()
    for net in ("net1", "net2"):
        w, r = watcher(cp, network=net)
        cla = ClusterLoadAssignment.FromString(r.resources[0].value)
        vms = [
            e.metadata.filter_metadata["istio"].fields["workload"].string_value
            for loc in cla.endpoints
            for e in loc.lb_endpoints
            if e.endpoint.address.socket_address.address == ip
        ]
        # One endpoint for the IP: the VM of the watcher's own network. Its workload is its
        # group's name (istiod's WorkloadNameFromWorkloadEntry): the network shows in the entry.
        assert vms == ["product-vm;default;product;vm;Kubernetes"]
        entry = cp.registered_entry("default", f"product-vm-{ip}-{net}")
        assert entry is not None and entry["metadata"]["annotations"]["istio.io/autoRegistrationGroup"] == "product-vm"
        w.close()
    a.close()
    wait_until(lambda: cp.registered_entry("default", f"product-vm-{ip}-net1") is None, timeout=10)
    assert cp.registered_entry("default", f"product-vm-{ip}-net2") is not None
    b.close()


PRECREATED = """apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: legacy-vm
  namespace: default
  annotations: {proxy.istio.io/health-checks-enabled: "true"}
spec: {address: 127.0.0.5, labels: {app: product}, ports: {grpc: 18080}}
"""


def test_health_checked_precreated_entry_via_workload_entry_metadata(cp: ControlPlane, cfg: Path, data: Path) -> None:
    (cfg / "legacy.yaml").write_text(PRECREATED)
    cp.reload()
    w, first = watcher(cp)
    assert eds_addresses(first) == ["127.0.0.2"]  # no Healthy condition yet: excluded
    vm = AdsStream(cp.port, vm_node("127.0.0.5", group="", name="legacy", extra={"WORKLOAD_ENTRY": "legacy-vm"}))
    vm.send(CDS)
    vm.ack(vm.recv())
    vm.health(True)
    r = w.recv()
    assert eds_addresses(r) == ["127.0.0.2", "127.0.0.5"]
    w.ack(r, (CLUSTER,))
    out = subprocess.run(
        [*pymesh_cli(), "get", "we", "legacy-vm", "-o", "json", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    doc = json.loads(out.stdout)
    assert doc["status"]["conditions"][0]["status"] == "True"
    assert doc["metadata"]["annotations"]["istio.io/workloadController"] == cp.instance_id
    # Disconnected past the grace period: the Healthy condition is removed, the endpoint goes.
    vm.close()
    r = w.recv(timeout=10)
    assert eds_addresses(r) == ["127.0.0.2"]
    w.close()
    # A WORKLOAD_ENTRY that does not exist fails the stream.
    bad = AdsStream(cp.port, vm_node("127.0.0.6", group="", name="x", extra={"WORKLOAD_ENTRY": "nope"}))
    bad.send(CDS)
    err = bad.wait_closed()
    assert err is not None and err.code() == grpc.StatusCode.NOT_FOUND
    bad.close()


def test_group_deletion_removes_its_entries_and_recreation_registers_connected_vms(cp: ControlPlane, cfg: Path) -> None:
    vm = connect(cp)
    uid = cp.registered_entry("default", ENTRY)["metadata"]["uid"]  # type: ignore[index]
    product = (cfg / "product.yaml").read_text()
    head, sep, _group = product.partition("---\napiVersion: networking.istio.io/v1\nkind: WorkloadGroup")
    assert sep
    (cfg / "product.yaml").write_text(head)
    cp.reload()
    assert cp.registered_entry("default", ENTRY) is None  # owner gone: garbage-collected
    (cfg / "product.yaml").write_text(product)
    cp.reload()
    # The VM stayed connected: registered again when the group came back (istio/istio PR #44709).
    entry = cp.registered_entry("default", ENTRY)
    assert entry is not None and entry["metadata"]["uid"] != uid
    assert "istio.io/connectedAt" in entry["metadata"]["annotations"]
    vm.close()
    wait_until(lambda: cp.registered_entry("default", ENTRY) is None, timeout=10)


def test_state_of_the_world_versions_are_the_contents(tmp_path: Path) -> None:
    """Two control planes (two replicas, or one restarted) with the same configuration send the
    same version_info for the same resources, so an agent moving between them is told the
    version it holds; a change gives another version, changing it back the first one again."""
    from pymesh.mesh.xds import CDS
    from support.cp import AdsStream, example_config, vm_node

    cfg = example_config(tmp_path / "mesh", 18080)
    planes = [
        ControlPlane(cfg, xds_listen="127.0.0.1:0", data_dir=tmp_path / name, debounce=0.02).start()
        for name in ("a", "b")
    ]
    try:
        versions = []
        for cp in planes:
            s = AdsStream(cp.port, vm_node("127.0.0.9", group=""))
            s.send(CDS)
            versions.append(s.recv().version_info)
            s.close()
        assert versions[0] == versions[1] and not versions[0].isdigit()
        a = planes[0]
        s = AdsStream(a.port, vm_node("127.0.0.9", group=""))
        s.send(CDS)
        first = s.recv()
        s.ack(first)
        extra = cfg / "extra.yaml"
        extra.write_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: extra, namespace: default}\n"
            "spec: {clusterIP: 10.96.0.99, ports: [{name: http, port: 80}]}\n"
        )
        a.reload()
        changed = s.recv()
        assert changed.version_info != first.version_info
        s.ack(changed)
        extra.unlink()
        a.reload()
        assert s.recv().version_info == first.version_info
        s.close()
    finally:
        for cp in planes:
            cp.stop()
