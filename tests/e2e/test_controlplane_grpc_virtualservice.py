"""A VirtualService, end to end through gRPC's own xDS client (grpcio; gRFC A28 routing,
A31 weighted clusters): the seed's example (a pod, version v1, and a VM that
auto-registers, version vm) with DestinationRule subsets ``pod`` and ``vm`` and a
VirtualService sending ``x-canary: true`` to the VM, everything else 90/10 pod/vm. Calls
land on real gRPC servers on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pymesh.controlplane import ControlPlane
from pymesh.mesh.xds import CDS
from support.cp import AdsStream, Backend, example_config, vm_node, xds_calls
from support.ports import free_port

POD_IP, VM_IP = "127.0.0.2", "127.0.0.3"
HOST = "product.default.svc.cluster.local"


def virtual_service() -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "product", "namespace": "default"},
            "spec": {
                "hosts": ["product"],  # a short name: product.default.svc.cluster.local
                "http": [
                    {
                        "name": "canary",
                        "match": [{"headers": {"x-canary": {"exact": "true"}}}],
                        "route": [{"destination": {"host": "product", "subset": "vm"}}],
                    },
                    {
                        "name": "split",
                        "route": [
                            {"destination": {"host": "product", "subset": "pod"}, "weight": 90},
                            {"destination": {"host": "product", "subset": "vm"}, "weight": 10},
                        ],
                        "timeout": "10s",
                    },
                ],
            },
        }
    )


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[tuple[ControlPlane, int]]:
    port = free_port(POD_IP, VM_IP)
    cfg = example_config(tmp_path / "mesh", port)
    ext = cfg / "external.yaml"
    ext.write_text(ext.read_text() + "    - name: pod\n      labels:\n        version: v1\n")
    (cfg / "virtualservice.yaml").write_text(virtual_service())
    cp = ControlPlane(cfg, xds_listen="127.0.0.1:0", data_dir=tmp_path / "data", grace_period=1.0, debounce=0.02)
    cp.start()
    assert not cp.errors, cp.errors
    yield cp, port
    cp.stop()


def test_a_weighted_split_and_a_header_match_reach_the_right_subsets(mesh: tuple[ControlPlane, int]) -> None:
    cp, port = mesh
    pod, vm = Backend(POD_IP, port, "pod"), Backend(VM_IP, port, "vm")
    stream = AdsStream(cp.port, vm_node(VM_IP))  # the VM connects: auto-registered, version vm
    try:
        stream.send(CDS)
        stream.ack(stream.recv())
        cp.flush()
        assert cp.registered_entry("default", f"product-vm-{VM_IP}") is not None
        target = f"{HOST}:{port}"

        canary = xds_calls(cp.port, target, 20, metadata=("x-canary=true",))
        assert canary["errors"] == [] and canary["counts"] == {"vm": 20}

        split = xds_calls(cp.port, target, 300)
        assert split["errors"] == []
        counts = split["counts"]
        assert set(counts) <= {"pod", "vm"} and sum(counts.values()) == 300
        # 10% of 300 on the VM: 30 expected, sd about 5.2; outside 8..60 has p < 1e-5.
        assert 8 <= counts.get("vm", 0) <= 60, counts
    finally:
        stream.close()
        pod.stop()
        vm.stop()
