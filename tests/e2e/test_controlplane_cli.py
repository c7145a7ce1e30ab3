"""The example end to end through the CLI: `pymesh controlplane` on a copy of
pymesh/examples/mesh, a VM agent stream, gRPC's xDS client, `pymesh get`,
and a config change picked up by the file watcher."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from envoy.config.listener.v3.listener_pb2 import Listener

from pymesh.mesh.xds import LDS
from support.cp import AdsStream, Backend, example_config, pymesh_cli, vm_node, xds_calls
from support.ports import free_port
from support.procs import reap
from support.wait import wait_until

POD_IP, VM_IP = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def controlplane(tmp_path: Path) -> Iterator[tuple[int, int, Path, Path]]:
    port = free_port(POD_IP, VM_IP)
    cfg = example_config(tmp_path / "mesh", port)
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [*pymesh_cli(), "controlplane", "--config", str(cfg), "--xds-listen", "127.0.0.1:0", "--data-dir", str(data),
         "--grace-period", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("xds 127.0.0.1:"), proc.stderr.read() if proc.stderr else line
        yield int(line.rsplit(":", 1)[1]), port, cfg, data
    finally:
        proc.terminate()
        proc.wait(10)
        reap(proc)


def get(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*pymesh_cli(), "get", *args, "--data-dir", str(data)], capture_output=True, text=True, timeout=60
    )


def test_example_through_the_cli(controlplane: tuple[int, int, Path, Path]) -> None:
    xds, port, cfg, data = controlplane
    pod, vm = Backend(POD_IP, port, "pod"), Backend(VM_IP, port, "vm")
    agent = AdsStream(xds, vm_node(VM_IP))
    try:
        agent.send(LDS)
        r = agent.recv()
        names = {Listener.FromString(a.value).name for a in r.resources}
        # The API listeners, and for a sidecar the virtualInbound listener carrying its mTLS mode
        # and an outbound HTTP listener per HTTP port (product's is named grpc; payments' https is TCP).
        assert names == {
            f"product.default.svc.cluster.local:{port}",
            "api.payments.example.com:443",
            "virtualInbound",
            f"0.0.0.0_{port}",
        }
        agent.ack(r)
        wait_until(lambda: "product-vm-127.0.0.3" in get(data, "we").stdout)

        table = get(data, "we").stdout.splitlines()
        assert table[0].split() == ["NAME", "ADDRESS", "NETWORK", "HEALTHY", "CONNECTION", "AGE"]
        assert table[1].split()[:5] == ["product-vm-127.0.0.3", VM_IP, "-", "-", "Connected"]
        doc = yaml.safe_load(get(data, "we", "product-vm-127.0.0.3", "-o", "yaml").stdout)
        assert doc["kind"] == "WorkloadEntry" and doc["apiVersion"] == "networking.istio.io/v1"
        assert doc["spec"]["ports"] == {"grpc": port} and doc["spec"]["serviceAccount"] == "product"
        assert doc["metadata"]["ownerReferences"][0]["name"] == "product-vm"

        result = xds_calls(xds, f"product.default.svc.cluster.local:{port}", 30)
        assert result["errors"] == [] and set(result["counts"]) == {"pod", "vm"}

        # The watcher picks up a new file: a new listener reaches the agent.
        (cfg / "reviews.yaml").write_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\n"
            "spec: {clusterIP: 10.96.0.30, ports: [{name: grpc, port: 9080}]}\n"
        )
        r = agent.recv(timeout=10)
        assert len(r.resources) == 6  # product, payments, reviews, virtualInbound + 0.0.0.0_<port>, 0.0.0.0_9080
        agent.ack(r)
        svcs = json.loads(get(data, "svc", "-o", "json").stdout)["items"]
        assert sorted(s["metadata"]["name"] for s in svcs) == ["product", "reviews"]

        # A rejected object is reported by `get` on stderr and the rest keeps serving.
        (cfg / "broken.yaml").write_text(
            "kind: Service\napiVersion: v1\nmetadata: {name: b}\nspec: {ports: [{port: 0}]}\n"
        )
        time.sleep(1.5)
        out = get(data, "svc")
        assert "Service default/b" in out.stderr and "spec.ports[0].port" in out.stderr
        assert "reviews" in out.stdout
    finally:
        agent.close()
        pod.stop()
        vm.stop()


def test_get_without_a_database_and_unknown_kind(tmp_path: Path) -> None:
    out = get(tmp_path / "nothing", "we")
    assert out.returncode == 1 and "no control-plane database" in out.stderr
    out = get(tmp_path, "gadgets")
    assert out.returncode == 1 and 'resource type "gadgets"' in out.stderr
