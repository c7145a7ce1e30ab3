"""``pymesh get`` for every kind (VirtualService, PeerAuthentication, Telemetry, the
short names) and for meshNetworks, and ``pymesh describe workloadentry``, run as the
``pymesh`` command against a real control plane: config directory, store on disk,
monitoring port with the JSON API, real ADS streams on loopback (a VM that registers and
reports its probe, a proxy on another network)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pymesh.controlplane import ControlPlane
from pymesh.mesh.xds import EDS
from support.cp import AdsStream, example_config, pymesh_cli, vm_node
from support.ports import free_port
from support.wait import wait_until

PRODUCT = "product.default.svc.cluster.local"
CLUSTER = f"outbound|8080||{PRODUCT}"
VM = "product-vm-127.0.0.3"
EXTRA = f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: product, namespace: default}}
spec:
  hosts: [{PRODUCT}]
  gateways: [mesh]
  http: [{{route: [{{destination: {{host: {PRODUCT}, subset: vm}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: strict, namespace: default}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: logs, namespace: default}}
spec:
  selector: {{matchLabels: {{app: product}}}}
  accessLogging: [{{providers: [{{name: envoy}}]}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: legacy-vm, namespace: default}}
spec: {{address: 127.0.0.30, network: net-a, serviceAccount: product, labels: {{app: product, version: legacy}}}}
"""
NETWORKS = """\
networks:
  net-a:
    endpoints: [{fromCidr: 127.0.0.0/24}]
    gateways: [{address: 192.0.2.1, port: 15443}]
  net-b:
    endpoints: [{fromRegistry: Kubernetes}]
"""


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    cfg = example_config(tmp_path / "mesh", 8080)
    (cfg / "extra.yaml").write_text(EXTRA)
    (tmp_path / "networks.yaml").write_text(NETWORKS)
    c = ControlPlane(
        cfg,
        xds_listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        debounce=0.02,
        instance_id="replica-a",
        monitoring_listen="127.0.0.1:0",
        mesh_networks=tmp_path / "networks.yaml",
    )
    c.start()
    yield c
    c.stop()


def pymesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*pymesh_cli(), *args], capture_output=True, text=True, timeout=60)


def data_dir(cp: ControlPlane) -> str:
    return str(cp.config_dir.parent / "data")  # the fixture's --data-dir


def url(cp: ControlPlane) -> str:
    return f"http://{cp.monitoring.address}"


def table(out: str) -> list[list[str]]:
    return [ln.split() for ln in out.splitlines()]


@pytest.mark.parametrize(
    ("name", "header", "row"),
    [
        ("vs", ["NAME", "GATEWAYS", "HOSTS", "AGE"], ["product", "mesh", PRODUCT]),
        ("virtualservices", ["NAME", "GATEWAYS", "HOSTS", "AGE"], ["product", "mesh", PRODUCT]),
        ("pa", ["NAME", "MODE", "AGE"], ["strict", "STRICT"]),
        ("telemetry", ["NAME", "SELECTOR", "ACCESS-LOG", "AGE"], ["logs", "app=product", "envoy"]),
        ("dr", ["NAME", "HOST", "AGE"], ["product", PRODUCT]),
        (
            "se",
            ["NAME", "HOSTS", "ADDRESSES", "LOCATION", "RESOLUTION", "AGE"],
            ["payments-api", "api.payments.example.com"],
        ),
        ("wg", ["NAME", "AGE"], ["product-vm"]),
        (
            "we",
            ["NAME", "ADDRESS", "NETWORK", "HEALTHY", "CONNECTION", "AGE"],
            ["legacy-vm", "127.0.0.30", "net-a", "-", "-"],
        ),
    ],
)
def test_get_every_kind_by_its_short_name(cp: ControlPlane, name: str, header: list[str], row: list[str]) -> None:
    data = data_dir(cp)
    out = pymesh("get", name, "--data-dir", data)
    assert out.returncode == 0, out.stderr
    lines = table(out.stdout)
    assert lines[0] == header
    assert lines[1][: len(row)] == row
    # -o wide: the SOURCE column, the file it comes from.
    wide = table(pymesh("get", name, "-o", "wide", "--data-dir", data).stdout)
    assert wide[0] == [*header, "SOURCE"] and wide[1][-1].startswith("file:")
    # -A: a NAMESPACE column first.
    assert table(pymesh("get", name, "-A", "--data-dir", data).stdout)[1][0] == "default"


def test_get_by_name_as_json_and_yaml(cp: ControlPlane) -> None:
    data = data_dir(cp)
    out = pymesh("get", "virtualservice", "product", "-o", "json", "--data-dir", data)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert (doc["apiVersion"], doc["kind"]) == ("networking.istio.io/v1", "VirtualService")
    assert doc["metadata"]["name"] == "product" and doc["metadata"]["namespace"] == "default"
    assert doc["spec"]["hosts"] == [PRODUCT] and doc["spec"]["gateways"] == ["mesh"]
    assert doc["spec"]["http"][0]["route"][0]["destination"] == {"host": PRODUCT, "subset": "vm"}

    doc = yaml.safe_load(pymesh("get", "peerauthentications", "strict", "-o", "yaml", "--data-dir", data).stdout)
    assert (doc["apiVersion"], doc["kind"], doc["spec"]) == (
        "security.istio.io/v1",
        "PeerAuthentication",
        {"mtls": {"mode": "STRICT"}},
    )
    doc = json.loads(pymesh("get", "telemetries", "-o", "json", "--data-dir", data).stdout)
    assert doc["kind"] == "List" and [i["kind"] for i in doc["items"]] == ["Telemetry"]
    assert doc["items"][0]["apiVersion"] == "telemetry.istio.io/v1"
    assert doc["items"][0]["spec"]["accessLogging"] == [{"providers": [{"name": "envoy"}]}]


def test_get_errors_are_clear_and_exit_non_zero(cp: ControlPlane) -> None:
    data = data_dir(cp)
    out = pymesh("get", "gateways", "--data-dir", data)
    assert out.returncode == 1
    assert 'the server doesn\'t have a resource type "gateways"' in out.stderr
    assert "virtualservices" in out.stderr and "telemetries" in out.stderr and "networks" in out.stderr
    out = pymesh("get", "vs", "nope", "--data-dir", data)
    assert out.returncode == 1 and 'Error from server (NotFound): virtualservices "nope" not found' in out.stderr
    out = pymesh("get", "pa", "strict", "-n", "other", "--data-dir", data)
    assert out.returncode == 1 and "NotFound" in out.stderr
    out = pymesh("get", "networks", "nope", "--control-plane", url(cp))
    assert out.returncode == 1 and 'Error from server (NotFound): network "nope" not found' in out.stderr


def test_get_networks_from_the_running_control_plane_and_from_a_file(cp: ControlPlane, tmp_path: Path) -> None:
    out = pymesh("get", "networks", "--control-plane", url(cp))
    assert out.returncode == 0, out.stderr
    assert table(out.stdout) == [
        ["NAME", "FROM", "GATEWAYS", "IN", "USE"],
        ["net-a", "127.0.0.0/24", "192.0.2.1:15443", "192.0.2.1:15443"],
        ["net-b", "registry:Kubernetes", "<none>", "<none>"],
    ]
    wide = table(pymesh("get", "networks", "-o", "wide", "--control-plane", url(cp)).stdout)
    assert wide[0][-1] == "SOURCE" and wide[1][-1] == str(tmp_path / "networks.yaml")

    # -o yaml: the meshNetworks document itself, which --mesh-networks reads back.
    out = pymesh("get", "networks", "-o", "yaml", "--control-plane", url(cp))
    doc = yaml.safe_load(out.stdout)
    assert doc == {
        "networks": {
            "net-a": {
                "endpoints": [{"fromCidr": "127.0.0.0/24"}],
                "gateways": [{"address": "192.0.2.1", "port": 15443}],
            },
            "net-b": {"endpoints": [{"fromRegistry": "Kubernetes"}]},
        }
    }
    (tmp_path / "copy.yaml").write_text(out.stdout)
    one = json.loads(
        pymesh("get", "networks", "net-b", "-o", "json", "--mesh-networks", str(tmp_path / "copy.yaml")).stdout
    )
    assert one == {"networks": {"net-b": {"endpoints": [{"fromRegistry": "Kubernetes"}]}}}
    # From a file alone, the gateways in use are not known.
    rows = table(pymesh("get", "networks", "--mesh-networks", str(tmp_path / "copy.yaml")).stdout)
    assert rows[1] == ["net-a", "127.0.0.0/24", "192.0.2.1:15443", "-"]

    # Nothing to read: why meshNetworks are not in the store, and what to give instead.
    dead = f"http://127.0.0.1:{free_port()}"
    out = pymesh("get", "networks", "--control-plane", dead)
    assert out.returncode == 1
    assert "meshNetworks are not in the store" in out.stderr and dead in out.stderr and "--mesh-networks" in out.stderr


def describe(cp: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    return pymesh("describe", *args, "--data-dir", data_dir(cp), "--control-plane", url(cp))


def test_describe_workloadentry(cp: ControlPlane) -> None:
    vm = AdsStream(cp.port, vm_node("127.0.0.3", probe=True))
    other = AdsStream(cp.port, vm_node("127.0.0.9", group="", name="remote", network="net-b"))
    try:
        for s in (vm, other):
            s.send(EDS, (CLUSTER,))
            s.ack(s.recv(), (CLUSTER,))
        vm.health(False, "dial tcp 127.0.0.3:8080: connection refused")

        def healthy_false() -> dict[str, Any] | None:
            out = describe(cp, "workloadentry", VM, "-o", "json")
            d: dict[str, Any] = json.loads(out.stdout) if out.returncode == 0 else {}
            return d if ((d.get("entry") or {}).get("health") or {}).get("status") == "False" else None

        d = wait_until(healthy_false)
        assert d["workloadEntry"]["spec"]["address"] == "127.0.0.3"
        assert d["workloadEntry"]["spec"]["labels"] == {"app": "product", "version": "vm"}
        assert d["entry"]["connected"] is True and d["entry"]["controller"] == "replica-a"
        assert d["entry"]["health"]["message"] == "dial tcp 127.0.0.3:8080: connection refused"
        assert [(s["kind"], s["name"], s["selector"]) for s in d["selectedBy"]] == [
            ("Service", "product", {"app": "product"})
        ]
        assert d["endpoints"] == [] and d["apiError"] is None and d["storeError"] is None

        text = describe(cp, "we", VM).stdout.splitlines()
        assert text[0] == f"WorkloadEntry: {VM}"
        fields = {ln.split(":", 1)[0].strip(): ln.split(":", 1)[1].strip() for ln in text[1:10]}
        assert fields["Namespace"] == "default" and fields["Address"] == "127.0.0.3" and fields["Network"] == "-"
        assert fields["Labels"] == "app=product, version=vm" and fields["Service account"] == "product"
        assert fields["Source"] == "registered (WorkloadGroup product-vm)"
        assert fields["Connection"].startswith("Connected to replica-a since ")
        assert fields["Healthy"].startswith("False since ")
        assert fields["Healthy"].endswith(": dial tcp 127.0.0.3:8080: connection refused")
        assert (
            f"   Service product ({PRODUCT}), selector app=product: not an endpoint now (Healthy is not True)" in text
        )

        # Healthy: an endpoint of product; each proxy's view of it.
        vm.health(True)
        wait_until(lambda: json.loads(describe(cp, "we", VM, "-o", "json").stdout)["endpoints"])
        # The pushes the new endpoint caused: each proxy is STALE until it ACKs them.
        for s in (vm, other):
            while not s.no_response(0.5):
                s.ack(s.recv(), (CLUSTER,))
        wait_until(
            lambda: {p["eds"] for p in json.loads(describe(cp, "we", VM, "-o", "json").stdout)["proxies"]} == {"SYNCED"}
        )
        d = json.loads(describe(cp, "we", VM, "-o", "json").stdout)
        (ep,) = d["endpoints"]
        assert (ep["hostname"], ep["servicePort"], ep["address"], ep["port"]) == (PRODUCT, 8080, "127.0.0.3", 8080)
        assert (ep["health"], ep["tlsMode"], ep["service"]) == ("HEALTHY", "istio", "default/product")
        views = {p["proxyId"]: p for p in d["proxies"]}
        assert set(views) == {"vm-1.default", "remote.default"}
        assert views["vm-1.default"]["views"] == [
            {"cluster": CLUSTER, "endpoint": "127.0.0.3:8080", "reachedAt": "127.0.0.3:8080", "how": "direct"}
        ]
        assert views["remote.default"]["network"] == "net-b"

        # The configured entry on net-a: the proxy on net-b reaches it through net-a's gateway.
        d = json.loads(describe(cp, "we", "legacy-vm", "-o", "json").stdout)
        assert d["workloadEntry"]["metadata"]["annotations"]["pymesh.io/source"].startswith("file:")
        assert d["entry"]["healthChecked"] is False and d["entry"]["network"] == "net-a"
        views = {p["proxyId"]: p["views"] for p in d["proxies"]}
        assert views["remote.default"] == [
            {
                "cluster": CLUSTER,
                "endpoint": "127.0.0.30:8080",
                "reachedAt": "192.0.2.1:15443",
                "how": "through the gateway of network net-a",
            }
        ]
        assert views["vm-1.default"][0]["how"] == "direct"  # its network is unset: in every network
        text = describe(cp, "we", "legacy-vm").stdout
        assert f"   {PRODUCT}:8080 -> 127.0.0.30:8080  HEALTHY  tlsMode istio  network net-a" in text
        assert f"      {CLUSTER}: 192.0.2.1:15443 (through the gateway of network net-a)" in text
        assert "   remote.default (replica replica-a, network net-b): EDS SYNCED" in text
    finally:
        vm.close()
        other.close()


def test_describe_with_the_store_only_and_errors(cp: ControlPlane) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    out = pymesh("describe", "we", "legacy-vm", "--data-dir", data_dir(cp), "--control-plane", dead)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "   Address:          127.0.0.30" in lines and "   Network:          net-a" in lines
    assert "   Healthy:          not health-checked" in lines
    assert "   Service product (product.default.svc.cluster.local), selector app=product" in lines
    assert lines[-1].startswith("Endpoints and proxies: the control plane's API is needed (cannot read " + dead)
    d = json.loads(
        pymesh("describe", "we", "legacy-vm", "-o", "json", "--data-dir", data_dir(cp), "--control-plane", dead).stdout
    )
    assert d["entry"] is None and d["proxies"] is None and dead in d["apiError"]

    out = describe(cp, "we", "nope")
    assert out.returncode == 1
    assert out.stderr.strip() == (
        'Error from server (NotFound): workloadentry "nope" not found in namespace "default" '
        "(not in the store, nor in the control plane's API)"
    )
    out = describe(cp, "we", "legacy-vm", "-n", "other")
    assert out.returncode == 1 and 'namespace "other"' in out.stderr
    out = describe(cp, "serviceentry", "payments-api")
    assert out.returncode == 1 and 'unsupported resource type "serviceentry"' in out.stderr
