"""The seed's example end to end: Service `product` selects a pod and the
WorkloadEntries of group `product-vm`; a VM connects over ADS and is
registered; gRPC's own xDS client (``xds:///product.default.svc.cluster.local:<port>``)
sends calls that land on both the pod's and the VM's gRPC servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster

from pymesh import NameTable
from pymesh.controlplane import ControlPlane
from pymesh.mesh.xds import CDS, NDS
from pymesh.proto.nds import NameTable as NdsTable
from support.cp import AdsStream, Backend, example_config, vm_node, xds_calls
from support.ports import free_port

POD_IP, VM_IP = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[tuple[ControlPlane, int]]:
    port = free_port(POD_IP, VM_IP)
    cfg = example_config(tmp_path / "mesh", port)
    cp = ControlPlane(cfg, xds_listen="127.0.0.1:0", data_dir=tmp_path / "data", grace_period=1.0, debounce=0.02)
    cp.start()
    yield cp, port
    cp.stop()


def test_vm_registers_and_grpc_xds_client_reaches_pod_and_vm(mesh: tuple[ControlPlane, int]) -> None:
    cp, port = mesh
    pod, vm = Backend(POD_IP, port, "pod"), Backend(VM_IP, port, "vm")
    stream = AdsStream(cp.port, vm_node(VM_IP))
    try:
        # The VM's agent asks for its name table (NDS) and clusters, as istio-agent does.
        stream.send(NDS)
        r = stream.recv()
        assert r.type_url == NDS and len(r.resources) == 1
        table = NdsTable.FromString(r.resources[0].value)
        assert list(table.table["product.default.svc.cluster.local"].ips) == ["10.96.0.20"]
        native = NameTable.from_nds(table, namespace="default")
        assert native.lookup("product").ipv4 == ("10.96.0.20",)
        stream.ack(r)
        stream.send(CDS)
        r = stream.recv()
        names = {Cluster.FromString(a.value).name for a in r.resources}
        assert f"outbound|{port}||product.default.svc.cluster.local" in names
        assert f"outbound|{port}|vm|product.default.svc.cluster.local" in names  # the DestinationRule's subset
        stream.ack(r)

        cp.flush()
        entry = cp.registered_entry("default", f"product-vm-{VM_IP}")
        assert entry is not None
        assert entry["spec"]["address"] == VM_IP
        assert entry["metadata"]["labels"] == {"app": "product", "version": "vm"}
        assert entry["metadata"]["annotations"]["istio.io/autoRegistrationGroup"] == "product-vm"

        result = xds_calls(cp.port, f"product.default.svc.cluster.local:{port}", 40)
        assert result["errors"] == []
        assert set(result["counts"]) == {"pod", "vm"}
        # Round robin over two endpoints: close to an even split (the first
        # picks happen while the second subchannel is still connecting).
        assert min(result["counts"].values()) >= 15
    finally:
        stream.close()
        pod.stop()
        vm.stop()


def test_destination_rule_consistent_hash_pins_a_user_to_one_backend(mesh: tuple[ControlPlane, int]) -> None:
    cp, port = mesh
    (cp.config_dir / "external.yaml").write_text(
        (cp.config_dir / "external.yaml")
        .read_text()
        .replace("simple: ROUND_ROBIN", "consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 1024}}")
    )
    cp.reload()
    assert not cp.errors
    pod, vm = Backend(POD_IP, port, "pod"), Backend(VM_IP, port, "vm")
    stream = AdsStream(cp.port, vm_node(VM_IP))
    try:
        stream.send(CDS)
        stream.ack(stream.recv())
        cp.flush()
        target = f"product.default.svc.cluster.local:{port}"
        landed = set()
        for user in [f"user-{i}" for i in range(12)]:
            result = xds_calls(cp.port, target, 8, metadata=(f"x-user={user}",))
            assert result["errors"] == []
            # gRPC's ring hash over the header: every call of one user on one backend.
            assert len(result["counts"]) == 1, (user, result)
            landed |= set(result["counts"])
        assert landed == {"pod", "vm"}  # and the users spread over both (all on one: p = 2^-11)
    finally:
        stream.close()
        pod.stop()
        vm.stop()
