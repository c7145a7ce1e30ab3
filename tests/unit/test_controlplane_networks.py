"""Networks in the control plane: a workload's network, network gateways, and
istiod's split-horizon EDS filter (pymesh/controlplane/networks.py,
``EndpointsByNetworkFilter`` in istio/istio pilot/pkg/xds/endpoints/ep_filters.go),
unit by unit, over real ADS streams, and against istiod 1.29.0's recorded
answer for scripts/istiod/scenarios/multinetwork."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2

from pymesh.controlplane import ControlPlane
from pymesh.controlplane import generators as gen
from pymesh.controlplane.errors import ValidationError
from pymesh.controlplane.networks import MeshNetworks, load_mesh_networks, parse_mesh_networks, unreachable_endpoints
from pymesh.controlplane.registry import build_registry
from pymesh.controlplane.resources import LoadResult, load_documents
from pymesh.controlplane.vips import VipAllocator
from pymesh.mesh.xds import CDS, EDS
from support.cp import AdsStream, vm_node
from support.istiod import FIXTURES, config_dir, networks_file, recorded, served, view
from support.wait import wait_until

HOST = "web.ns1.svc.cluster.local"
CL = gen.cluster_name(HOST, 80)
SE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: ns1}
spec:
  hosts: [web.ns1.svc.cluster.local]
  addresses: [10.96.0.10]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: web}}
"""


def entry(name: str, ip: str, network: str = "", *, mtls: bool = True, weight: int = 0, locality: str = "") -> str:
    spec: dict[str, Any] = {"address": ip, "labels": {"app": "web"}}
    if network:
        spec["network"] = network
    if mtls:
        spec["serviceAccount"] = "web"
    if weight:
        spec["weight"] = weight
    if locality:
        spec["locality"] = locality
    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": "ns1"},
        "spec": spec,
    }
    return "---\n" + json.dumps(doc) + "\n"


def gateway_service(
    name: str, network: str, *, lb_ip: str = "", external_ip: str = "", port: int = 15443, port_label: str = ""
) -> str:
    labels = {"topology.istio.io/network": network} if network else {}
    if port_label:
        labels["networking.istio.io/gatewayPort"] = port_label
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "istio-system", "labels": labels},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "tls", "port": port}]},
    }
    if external_ip:
        doc["spec"]["externalIPs"] = [external_ip]
    if lb_ip:
        doc["status"] = {"loadBalancer": {"ingress": [{"ip": lb_ip}]}}
    return "---\n" + json.dumps(doc) + "\n"


def registry(extra: str, networks: dict[str, Any] | None = None) -> Any:
    r = LoadResult()
    load_documents(SE + extra, "t.yaml", r)
    assert not r.errors, [str(e) for e in r.errors]
    mesh = parse_mesh_networks({"networks": networks}) if networks else MeshNetworks()
    return build_registry(r.objects, vips=VipAllocator(), mesh_networks=mesh)


def endpoints(reg: Any, network: str = "", locality: str = "") -> list[tuple[str, int, int, str, str, str]]:
    """(address, port, weight, locality, tlsMode, workload) of the web cluster, for a proxy on ``network``."""
    cla = gen.endpoints(reg, gen.EdsView(network=network, locality=locality))[CL]
    return _flat(cla)


def _flat(cla: Any) -> list[tuple[str, int, int, str, str, str]]:
    out = []
    for loc in cla.endpoints:
        assert loc.load_balancing_weight.value == sum(e.load_balancing_weight.value for e in loc.lb_endpoints)
        where = "/".join(p for p in (loc.locality.region, loc.locality.zone) if p)
        for e in loc.lb_endpoints:
            md = e.metadata.filter_metadata
            tls = md["envoy.transport_socket_match"].fields["tlsMode"].string_value
            out.append(
                (
                    e.endpoint.address.socket_address.address,
                    e.endpoint.address.socket_address.port_value,
                    e.load_balancing_weight.value,
                    where,
                    tls,
                    md["istio"].fields["workload"].string_value,
                )
            )
    return sorted(out)


NET_B_GW = {"network-b": {"gateways": [{"address": "192.0.2.100", "port": 15443}]}}


# --- the filter ------------------------------------------------------------------------------


def test_same_network_endpoints_are_sent_as_they_are() -> None:
    reg = registry(entry("a1", "10.0.0.1", "network-a") + entry("a2", "10.0.0.2", "network-a"), NET_B_GW)
    assert [e[:3] for e in endpoints(reg, "network-a")] == [("10.0.0.1", 80, 1), ("10.0.0.2", 80, 1)]


def test_other_network_with_gateway_and_mtls_becomes_the_gateway_with_the_summed_weight() -> None:
    reg = registry(
        entry("a1", "10.0.0.1", "network-a")
        + entry("b1", "10.1.0.1", "network-b", weight=3)
        + entry("b2", "10.1.0.2", "network-b"),
        NET_B_GW,
    )
    assert endpoints(reg, "network-a") == [
        ("10.0.0.1", 80, 1, "", "istio", "a1;ns1;web;latest;Kubernetes"),
        ("192.0.2.100", 15443, 4, "", "istio", ";;;;"),
    ]
    # A proxy on network-b gets its own endpoints and not network-a's gateway (network-a has none).
    assert [e[:3] for e in endpoints(reg, "network-b")] == [
        ("10.0.0.1", 80, 1),
        ("10.1.0.1", 80, 3),
        ("10.1.0.2", 80, 1),
    ]


def test_a_networks_gateway_gets_its_own_networks_endpoints_only() -> None:
    # A router (east-west gateway) on network-a: network-b's endpoints are neither sent
    # nor replaced by network-b's gateway, which would bounce traffic between gateways.
    reg = registry(entry("a1", "10.0.0.1", "network-a") + entry("b1", "10.1.0.1", "network-b"), NET_B_GW)
    cla = gen.endpoints(reg, gen.EdsView(network="network-a", local_only=True))[CL]
    assert [e[:3] for e in _flat(cla)] == [("10.0.0.1", 80, 1)]
    # A sidecar on the same network reaches network-b through its gateway.
    assert [e[:3] for e in endpoints(reg, "network-a")] == [("10.0.0.1", 80, 1), ("192.0.2.100", 15443, 1)]
    # A router without a network sees every endpoint as it is.
    cla = gen.endpoints(reg, gen.EdsView(network="", local_only=False))[CL]
    assert [e[0] for e in _flat(cla)] == ["10.0.0.1", "10.1.0.1"]


def test_other_network_without_mtls_is_dropped_and_reported() -> None:
    reg = registry(
        entry("a1", "10.0.0.1", "network-a") + entry("b1", "10.1.0.1", "network-b", mtls=False),
        NET_B_GW,
    )
    assert [e[:3] for e in endpoints(reg, "network-a")] == [("10.0.0.1", 80, 1)]
    assert [e[:3] for e in endpoints(reg, "network-b")] == [("10.0.0.1", 80, 1), ("10.1.0.1", 80, 1)]
    assert unreachable_endpoints(reg) == [
        "web.ns1.svc.cluster.local:80 WorkloadEntry ns1/b1 10.1.0.1:80 (network network-b, tlsMode disabled)"
    ]


def test_a_network_without_gateway_is_sent_as_it_is() -> None:
    """istiod keeps endpoints of a network without a gateway (and everything when no
    gateway exists at all), reachable or not: pymesh follows it."""
    eps = entry("a1", "10.0.0.1", "network-a") + entry("c1", "10.2.0.1", "network-c", mtls=False)
    for nets in (None, NET_B_GW):
        reg = registry(eps, nets)
        assert [e[:3] for e in endpoints(reg, "network-a")] == [("10.0.0.1", 80, 1), ("10.2.0.1", 80, 1)]
        assert unreachable_endpoints(reg) == []


def test_a_proxy_without_network_and_endpoints_without_one_are_in_every_network() -> None:
    """``Proxy.InNetwork``: an unset network on either side counts as the same network."""
    reg = registry(entry("b1", "10.1.0.1", "network-b") + entry("x", "10.9.0.1"), NET_B_GW)
    assert [e[:3] for e in endpoints(reg, "")] == [("10.1.0.1", 80, 1), ("10.9.0.1", 80, 1)]
    assert [e[:3] for e in endpoints(reg, "network-a")] == [("10.9.0.1", 80, 1), ("192.0.2.100", 15443, 1)]


def test_several_gateways_split_the_weight_scaled_by_the_lcm() -> None:
    """Two gateways for network-b, one for network-c: every weight is multiplied by
    lcm(2, 1) = 2 and network-b's sum is split evenly between its gateways."""
    nets = {
        "network-b": {"gateways": [{"address": "192.0.2.2", "port": 15443}, {"address": "192.0.2.1", "port": 15443}]},
        "network-c": {"gateways": [{"address": "192.0.2.9", "port": 16443}]},
    }
    reg = registry(
        entry("a1", "10.0.0.1", "network-a")
        + entry("b1", "10.1.0.1", "network-b", weight=3)
        + entry("b2", "10.1.0.2", "network-b")
        + entry("c1", "10.2.0.1", "network-c"),
        nets,
    )
    assert [e[:3] for e in endpoints(reg, "network-a")] == [
        ("10.0.0.1", 80, 2),
        ("192.0.2.1", 15443, 4),
        ("192.0.2.2", 15443, 4),
        ("192.0.2.9", 16443, 2),
    ]


def test_gateway_endpoints_keep_the_locality_of_the_endpoints_they_replace() -> None:
    reg = registry(
        entry("a1", "10.0.0.1", "network-a", locality="r1/z1")
        + entry("b1", "10.1.0.1", "network-b", locality="r2/z2")
        + entry("b2", "10.1.0.2", "network-b", locality="r2/z2"),
        NET_B_GW,
    )
    assert [(e[0], e[2], e[3]) for e in endpoints(reg, "network-a")] == [
        ("10.0.0.1", 1, "r1/z1"),
        ("192.0.2.100", 2, "r2/z2"),
    ]


def test_one_gateway_for_endpoints_in_two_localities_is_sent_once() -> None:
    """istiod would repeat the gateway in each locality; gRPC rejects a repeated address,
    so pymesh keeps it in the first locality with both weights."""
    reg = registry(
        entry("b1", "10.1.0.1", "network-b", locality="r1/z1") + entry("b2", "10.1.0.2", "network-b", locality="r2/z2"),
        NET_B_GW,
    )
    assert [(e[0], e[2], e[3]) for e in endpoints(reg, "network-a")] == [("192.0.2.100", 2, "r1/z1")]


def test_one_ip_on_two_networks_without_gateways_prefers_the_proxys_network() -> None:
    reg = registry(entry("x-net1", "10.1.0.5", "net1") + entry("x-net2", "10.1.0.5", "net2"))
    for net in ("net1", "net2"):
        assert [e[5] for e in endpoints(reg, net)] == [f"x-{net};ns1;web;latest;Kubernetes"]


@pytest.mark.parametrize(
    ("svc", "expected"),
    [
        (gateway_service("eastwest", "network-b", lb_ip="192.0.2.7"), ("192.0.2.7", 15443)),
        (gateway_service("eastwest", "network-b", external_ip="192.0.2.8"), ("192.0.2.8", 15443)),
        (
            gateway_service("eastwest", "network-b", lb_ip="192.0.2.7", port=16443, port_label="16443"),
            ("192.0.2.7", 16443),
        ),
    ],
    ids=["lb-status", "external-ip", "gateway-port-label"],
)
def test_gateway_from_a_labelled_service(svc: str, expected: tuple[str, int]) -> None:
    reg = registry(entry("b1", "10.1.0.1", "network-b") + svc)
    assert [(g.address, g.port, g.network) for g in reg.gateways.all()] == [(*expected, "network-b")]
    assert [e[:2] for e in endpoints(reg, "network-a")] == [expected]


def test_a_labelled_service_without_the_gateway_port_is_no_gateway() -> None:
    reg = registry(
        entry("b1", "10.1.0.1", "network-b") + gateway_service("eastwest", "network-b", lb_ip="192.0.2.7", port=443)
    )
    assert reg.gateways.all() == []
    assert [e[:2] for e in endpoints(reg, "network-a")] == [("10.1.0.1", 80)]


def test_gateway_from_mesh_networks_registry_service_name() -> None:
    """registryServiceName counts for a network whose fromRegistry is this cluster (istiod's
    ``reloadMeshNetworks``); its address is the Service's external address, its port meshNetworks'."""
    svc = gateway_service("istio-eastwestgateway", "", lb_ip="192.0.2.50")
    name = "istio-eastwestgateway.istio-system.svc.cluster.local"
    gw = {"registryServiceName": name, "port": 15443}
    ours = {"network-b": {"endpoints": [{"fromRegistry": "Kubernetes"}], "gateways": [gw]}}
    reg = registry(entry("b1", "10.1.0.1", "network-b") + svc, ours)
    assert [(g.address, g.port, g.network, g.cluster) for g in reg.gateways.all()] == [
        ("192.0.2.50", 15443, "network-b", "Kubernetes")
    ]
    assert [e[:2] for e in endpoints(reg, "network-a")] == [("192.0.2.50", 15443)]
    theirs = {"network-b": {"endpoints": [{"fromRegistry": "other-cluster"}], "gateways": [gw]}}
    assert registry(entry("b1", "10.1.0.1", "network-b") + svc, theirs).gateways.all() == []


def test_gateways_of_the_endpoints_cluster_are_preferred() -> None:
    """A Service gateway is in this cluster, a meshNetworks address gateway in none: the
    cluster's own wins for this cluster's endpoints, and the weights scale by lcm(2, 1, 1)."""
    reg = registry(
        entry("b1", "10.1.0.1", "network-b") + gateway_service("eastwest", "network-b", lb_ip="192.0.2.7"), NET_B_GW
    )
    assert [(e[0], e[2]) for e in endpoints(reg, "network-a")] == [("192.0.2.7", 2)]


def test_pod_network_from_label_then_mesh_networks() -> None:
    def pod(name: str, ip: str, network: str = "") -> str:
        labels = {"app": "web", "security.istio.io/tlsMode": "istio"}
        if network:
            labels["topology.istio.io/network"] = network
        doc = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "ns1", "labels": labels},
            "status": {"podIP": ip, "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }
        return "---\n" + json.dumps(doc) + "\n"

    pods = pod("labelled", "10.1.0.1", "network-x") + pod("by-cidr", "10.1.0.2") + pod("other", "10.3.0.1")
    by_cidr = {"network-b": {"endpoints": [{"fromCidr": "10.1.0.0/16"}]}}
    reg = registry(pods, by_cidr)
    nets = {ep.name: ep.network for ep in reg.endpoints[(HOST, 80)]}
    assert nets == {"labelled": "network-x", "by-cidr": "network-b", "other": ""}
    by_registry = {**by_cidr, "network-a": {"endpoints": [{"fromRegistry": "Kubernetes"}]}}
    nets = {ep.name: ep.network for ep in registry(pods, by_registry).endpoints[(HOST, 80)]}
    assert nets == {"labelled": "network-x", "by-cidr": "network-a", "other": "network-a"}


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("networks: {n: {endpoints: [{fromCidr: 10.0.0.0/33}]}}", "networks.n.endpoints[0].fromCidr"),
        ("networks: {n: {endpoints: [{fromCidr: 10.0.0.0/8, fromRegistry: K}]}}", "networks.n.endpoints[0]"),
        ("networks: {n: {gateways: [{address: 192.0.2.1}]}}", "networks.n.gateways[0].port"),
        ("networks: {n: {gateways: [{address: 192.0.2.1, port: 70000}]}}", "networks.n.gateways[0].port"),
        (
            "networks: {n: {gateways: [{registryServiceName: 'a b', port: 15443}]}}",
            "networks.n.gateways[0].registryServiceName",
        ),
        ("networks: {n: {gatewayz: []}}", "networks.n.gatewayz"),
    ],
)
def test_mesh_networks_errors_name_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    f = tmp_path / "meshNetworks.yaml"
    f.write_text(text)
    with pytest.raises(ValidationError) as e:
        load_mesh_networks(f)
    assert e.value.file == str(f) and e.value.field == field, str(e.value)


def test_mesh_networks_file_missing_is_no_networks(tmp_path: Path) -> None:
    assert load_mesh_networks(tmp_path / "absent.yaml") == MeshNetworks()


# --- over ADS streams ------------------------------------------------------------------------

VM_GROUP = """
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: web-vm, namespace: ns1}
spec:
  metadata: {labels: {app: web}}
  template: {serviceAccount: web, network: network-a}
"""


def _cla(r: Any) -> ClusterLoadAssignment:
    (a,) = r.resources
    return ClusterLoadAssignment.FromString(a.value)


def _eds(cp: ControlPlane, network: str, name: str) -> tuple[AdsStream, Any]:
    s = AdsStream(cp.port, vm_node("127.0.0.9", group="", namespace="ns1", name=name, network=network))
    s.send(CDS)
    s.ack(s.recv())
    s.send(EDS, (CL,))
    r = s.recv()
    s.ack(r, (CL,))
    return s, r


@pytest.fixture
def net_cp(tmp_path: Path) -> Iterator[tuple[ControlPlane, Path]]:
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "web.yaml").write_text(SE + entry("a1", "10.0.0.1", "network-a") + entry("b1", "10.1.0.1", "network-b"))
    (cfg / "group.yaml").write_text(VM_GROUP)
    nets = tmp_path / "meshNetworks.yaml"
    nets.write_text(json.dumps({"networks": NET_B_GW}))
    cp = ControlPlane(
        cfg, xds_listen="127.0.0.1:0", persist=False, debounce=0.02, watch_interval=0.05, mesh_networks=nets
    )
    cp.start()
    yield cp, nets
    cp.stop()


def test_two_proxies_on_two_networks_get_their_own_assignments(net_cp: tuple[ControlPlane, Path]) -> None:
    cp, _ = net_cp
    a, ra = _eds(cp, "network-a", "client-a")
    b, rb = _eds(cp, "network-b", "client-b")
    try:
        assert [e[:3] for e in _flat(_cla(ra))] == [("10.0.0.1", 80, 1), ("192.0.2.100", 15443, 1)]
        assert [e[:3] for e in _flat(_cla(rb))] == [("10.0.0.1", 80, 1), ("10.1.0.1", 80, 1)]
        assert cp.status()["networks"]["gateways"] == ["network-b=192.0.2.100:15443"]
    finally:
        a.close()
        b.close()


def test_a_gateway_change_pushes_only_eds(net_cp: tuple[ControlPlane, Path]) -> None:
    cp, nets = net_cp
    s, _ = _eds(cp, "network-a", "client-a")
    try:
        moved = {"network-b": {"gateways": [{"address": "192.0.2.200", "port": 15443}]}}
        nets.write_text(json.dumps({"networks": moved}))
        r = s.recv()
        assert r.type_url == EDS
        assert [e[:2] for e in _flat(_cla(r))] == [("10.0.0.1", 80), ("192.0.2.200", 15443)]
        s.ack(r, (CL,))
        assert s.no_response(0.5)  # no CDS (nor anything else) followed
        # An invalid file is reported and changes nothing.
        nets.write_text("networks: {network-b: {gateways: [{address: 192.0.2.1}]}}")
        wait_until(lambda: cp.status()["networks"]["mesh_networks"]["error"] != "")
        assert "networks.network-b.gateways[0].port" in cp.status()["networks"]["mesh_networks"]["error"]
        assert s.no_response(0.3)
    finally:
        s.close()


def test_an_auto_registered_vm_network_overrides_the_template(net_cp: tuple[ControlPlane, Path]) -> None:
    """The group's template says network-a; the VM's NETWORK metadata says network-b, and
    proxies on network-a reach it through network-b's gateway."""
    cp, _ = net_cp
    vm = AdsStream(cp.port, vm_node("10.1.0.7", group="web-vm", namespace="ns1", name="vm-b", network="network-b"))
    vm.send(CDS)
    vm.ack(vm.recv())
    try:
        got = cp.registered_entry("ns1", "web-vm-10.1.0.7-network-b")
        assert got is not None and got["spec"]["network"] == "network-b"
        cp.flush()
        s, r = _eds(cp, "network-a", "client-a")
        assert [e[:3] for e in _flat(_cla(r))] == [("10.0.0.1", 80, 1), ("192.0.2.100", 15443, 2)]
        s.close()
    finally:
        vm.close()


# --- istiod's recorded answer ------------------------------------------------------------------


PRODUCT = "outbound|8080||product.default.svc.cluster.local"


def test_multinetwork_product_endpoints_are_istiods(tmp_path: Path) -> None:
    """scripts/istiod/scenarios/multinetwork: product has one entry on network-a and two on
    network-b (behind 192.0.2.100:15443); both of istiod's clients are on network-a. The gRPC
    client is asked in gRPC's order; the sidecar's EDS is compared on the same cluster."""
    scenario = "multinetwork"
    nets = networks_file(scenario)
    assert nets is not None
    cp = ControlPlane(
        config_dir(scenario, tmp_path / "config"), xds_listen="127.0.0.1:0", persist=False, mesh_networks=nets
    )
    cp.start()
    try:
        ours = view(served(cp.port, scenario))["endpoints"]
        theirs = view(recorded(scenario))["endpoints"]
        assert ours[PRODUCT] == theirs[PRODUCT]
        assert ("192.0.2.100", 15443, 2, ("", "", ""), 3, "istio", ";;;;") in ours[PRODUCT]

        manifest = json.loads((FIXTURES / scenario / "manifest.json").read_text())["clients"]["sidecar"]
        recorded_sidecar = discovery_pb2.DiscoveryResponse.FromString(
            (FIXTURES / scenario / "sidecar" / "eds.pb").read_bytes()
        )
        # The workload metadata differs (istiod adds the canonical name, revision and cluster): compared
        # are address, port, weight, locality and tlsMode.
        want = {c.cluster_name: [e[:5] for e in _flat(c)] for c in map(_cla_of, recorded_sidecar.resources)}
        md = struct_pb2.Struct()
        md.update({k: v for k, v in manifest["metadata"].items() if k != "AUTO_REGISTER_GROUP"})
        s = AdsStream(cp.port, base_pb2.Node(id=manifest["node_id"], metadata=md, user_agent_name="envoy"))
        try:
            s.send(EDS, (PRODUCT,))
            r = s.recv()
            assert [e[:5] for e in _flat(_cla(r))] == want[PRODUCT]
        finally:
            s.close()
    finally:
        cp.stop()


def _cla_of(a: Any) -> ClusterLoadAssignment:
    return ClusterLoadAssignment.FromString(a.value)
