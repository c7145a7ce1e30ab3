"""xDS generation (CDS/EDS/LDS/RDS/NDS), node parsing, delta ADS and
push targeting."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3.listener_pb2 import Listener
from google.protobuf import struct_pb2

from pymesh import NameTable
from pymesh.controlplane import ControlPlane, NodeError
from pymesh.controlplane import generators as gen
from pymesh.controlplane.nametable import NdsView, build_name_table
from pymesh.controlplane.node import parse_node
from pymesh.controlplane.registry import build_registry
from pymesh.controlplane.resources import LoadResult, load_documents
from pymesh.controlplane.vips import VipAllocator
from pymesh.mesh.xds import CDS, EDS, LDS, NDS
from support.cp import AdsStream, example_config, vm_node

BASE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns1}
spec: {clusterIP: 10.96.1.1, selector: {app: web}, ports: [{name: grpc, port: 80, targetPort: 8080}]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: a, namespace: ns1}
spec: {address: 10.0.0.1, labels: {app: web, version: v1}, locality: r1/z1/s1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: b, namespace: ns1}
spec: {address: 10.0.0.2, labels: {app: web, version: v2}, locality: r1/z2, weight: 4}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: c, namespace: ns1}
spec: {address: 10.0.0.3, labels: {app: web, version: v2}, locality: r2/z9}
"""

HOST = "web.ns1.svc.cluster.local"
CL = gen.cluster_name(HOST, 80)


def registry(extra: str = "") -> Any:
    r = LoadResult()
    load_documents(BASE + extra, "t.yaml", r)
    assert not r.errors, [str(e) for e in r.errors]
    return build_registry(r.objects, vips=VipAllocator())


def dr(policy: str) -> str:
    return f"""
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: ns1}}
spec:
  host: web
  trafficPolicy: {policy}
  subsets: [{{name: v2, labels: {{version: v2}}}}]
"""


@pytest.mark.parametrize(
    ("policy", "grpc", "envoy"),
    [
        ("{}", Cluster.ROUND_ROBIN, Cluster.ROUND_ROBIN),
        ("{loadBalancer: {simple: LEAST_REQUEST}}", Cluster.ROUND_ROBIN, Cluster.LEAST_REQUEST),
        ("{loadBalancer: {simple: RANDOM}}", Cluster.ROUND_ROBIN, Cluster.RANDOM),
        ("{loadBalancer: {consistentHash: {httpHeaderName: x-user, maglev: {}}}}", Cluster.RING_HASH, Cluster.MAGLEV),
    ],
)
def test_destination_rule_policy_per_client_type(policy: str, grpc: int, envoy: int) -> None:
    reg = registry(dr(policy))
    assert gen.clusters(reg, "grpc")[CL].lb_policy == grpc
    assert gen.clusters(reg, "envoy")[CL].lb_policy == envoy


def test_consistent_hash_ring_size_outlier_detection_and_route_hash_policy() -> None:
    reg = registry(
        dr(
            "{loadBalancer: {consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 2048}}},"
            " outlierDetection: {consecutive5xxErrors: 7, interval: 5s, baseEjectionTime: 30s, maxEjectionPercent: 50}}"
        )
    )
    c = gen.clusters(reg, "grpc")[CL]
    assert c.type == Cluster.EDS and c.eds_cluster_config.service_name == CL
    assert c.eds_cluster_config.eds_config.HasField("ads")
    assert c.ring_hash_lb_config.minimum_ring_size.value == 2048
    od = c.outlier_detection
    assert (od.consecutive_5xx.value, od.interval.seconds, od.base_ejection_time.seconds) == (7, 5, 30)
    assert od.max_ejection_percent.value == 50
    route = gen.routes(reg)[CL].virtual_hosts[0].routes[0]
    assert route.route.cluster == CL
    assert route.route.hash_policy[0].header.header_name == "x-user"
    # The subset cluster inherits the rule's policy and selects by labels.
    sub = gen.cluster_name(HOST, 80, "v2")
    assert gen.clusters(reg, "grpc")[sub].lb_policy == Cluster.RING_HASH
    cla = gen.endpoints(reg, gen.EdsView())[sub]
    assert sorted(e.endpoint.address.socket_address.address for loc in cla.endpoints for e in loc.lb_endpoints) == [
        "10.0.0.2",
        "10.0.0.3",
    ]


def test_listener_is_an_api_listener_with_router_last() -> None:
    from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
        HttpConnectionManager,
    )

    lis = gen.listeners(registry())[f"{HOST}:80"]
    hcm = HttpConnectionManager()
    lis.api_listener.api_listener.Unpack(hcm)
    assert hcm.rds.route_config_name == CL and hcm.rds.config_source.HasField("ads")  # istiod's name for gRPC
    assert (lis.address.socket_address.address, lis.address.socket_address.port_value) == ("10.96.1.1", 80)
    assert hcm.http_filters[-1].name == "envoy.filters.http.router"
    vh = gen.routes(registry())[CL].virtual_hosts[0]
    assert f"{HOST}:80" in vh.domains and "web.ns1:80" in vh.domains and "10.96.1.1:80" in vh.domains


def test_eds_locality_weights_and_failover_priorities_without_gaps() -> None:
    plain = gen.endpoints(registry(), gen.EdsView())[CL]
    weights = {(loc.locality.region, loc.locality.zone): loc.load_balancing_weight.value for loc in plain.endpoints}
    # gRPC drops localities without a weight: every locality has one (sum of its endpoint weights).
    assert weights == {("r1", "z1"): 1, ("r1", "z2"): 4, ("r2", "z9"): 1}
    assert {loc.priority for loc in plain.endpoints} == {0}
    # With outlier detection and a proxy locality, Istio's failover priorities apply, renumbered densely.
    reg = registry(dr("{outlierDetection: {consecutive5xxErrors: 5}}"))
    cla = gen.endpoints(reg, gen.EdsView(locality="r1/z2/x"))[CL]
    prio = {loc.lb_endpoints[0].endpoint.address.socket_address.address: loc.priority for loc in cla.endpoints}
    assert prio == {"10.0.0.2": 0, "10.0.0.1": 1, "10.0.0.3": 2}


def test_duplicate_addresses_are_sent_once() -> None:
    extra = """
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: z-dup, namespace: ns1}
spec: {address: 10.0.0.1, labels: {app: web}}
"""
    cla = gen.endpoints(registry(extra), gen.EdsView())[CL]
    addrs = [e.endpoint.address.socket_address.address for loc in cla.endpoints for e in loc.lb_endpoints]
    assert sorted(addrs) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


NDS_EXTRA = """
---
apiVersion: v1
kind: Service
metadata: {name: mysql, namespace: db}
spec: {clusterIP: None, selector: {app: mysql}, ports: [{name: tcp, port: 3306}]}
---
apiVersion: v1
kind: Pod
metadata: {name: mysql-0, namespace: db, labels: {app: mysql}}
spec: {hostname: mysql-0, subdomain: mysql}
status: {podIP: 10.244.1.7}
---
apiVersion: v1
kind: Pod
metadata: {name: mysql-1, namespace: db, labels: {app: mysql}}
status: {podIP: 10.244.2.9}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pay, namespace: ns1}
spec: {hosts: [api.pay.example.com], resolution: DNS, ports: [{number: 443, name: tls, protocol: TLS}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shadow, namespace: ns1}
spec: {hosts: [web.ns1.svc.cluster.local], addresses: [10.1.1.1], resolution: STATIC, ports: [{number: 80, name: h}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: corp, namespace: ns1}
spec: {hosts: ["*.corp.example.com"], addresses: [10.8.0.1, "fd00::1", 10.9.0.0/16], resolution: NONE}
"""


def test_name_table_like_istiod() -> None:
    reg = registry(NDS_EXTRA)
    t = build_name_table(reg, NdsView(dns_capture=True, families=frozenset(), network=""))
    web = t.table[HOST]
    # A Kubernetes Service wins over a ServiceEntry for the same host.
    assert (list(web.ips), web.registry, web.shortname, web.namespace) == (["10.96.1.1"], "Kubernetes", "web", "ns1")
    # Headless: endpoint IPs, and a per-pod name for the pod with hostname + subdomain.
    assert sorted(t.table["mysql.db.svc.cluster.local"].ips) == ["10.244.1.7", "10.244.2.9"]
    assert list(t.table["mysql-0.mysql.db.svc.cluster.local"].ips) == ["10.244.1.7"]
    assert t.table["mysql-0.mysql.db.svc.cluster.local"].shortname == "mysql-0.mysql"
    # Auto-allocated VIPs, only for proxies capturing DNS; CIDRs dropped.
    assert list(t.table["api.pay.example.com"].ips) == ["240.240.0.1", "2001:2::1"]
    assert t.table["api.pay.example.com"].registry == "External"
    assert list(t.table["*.corp.example.com"].ips) == ["10.8.0.1", "fd00::1"]
    no_capture = build_name_table(reg, NdsView(dns_capture=False, families=frozenset(), network=""))
    assert "api.pay.example.com" not in no_capture.table
    v4_only = build_name_table(reg, NdsView(dns_capture=True, families=frozenset({4}), network=""))
    assert list(v4_only.table["api.pay.example.com"].ips) == ["240.240.0.1"]
    # The native table (what the agent's DNS proxy serves) reads it as Istio's agent would.
    native = NameTable.from_nds(t, namespace="ns1")
    assert native.lookup("web").ipv4 == ("10.96.1.1",)
    assert native.lookup("mysql-0.mysql.db").ipv4 == ("10.244.1.7",)


def _node(node_id: str, **md: Any) -> Any:
    s = struct_pb2.Struct()
    s.update(md)
    return base_pb2.Node(id=node_id, metadata=s, locality=base_pb2.Locality(region="r1", zone="z1"))


def test_node_id_and_metadata() -> None:
    p = parse_node(
        _node(
            "sidecar~10.0.0.9~vm-1.ns1~ns1.svc.cluster.local",
            INSTANCE_IPS="10.0.0.5,fd00::5",
            NETWORK="net1",
            GENERATOR="grpc",
            LABELS='{"app": "web"}',
            PROXY_CONFIG={"readinessProbe": {"tcpSocket": {"port": 80}}},
            DNS_CAPTURE="true",
        )
    )
    assert (p.type, p.id, p.namespace, p.ip_addresses) == ("sidecar", "vm-1.ns1", "ns1", ("10.0.0.5", "fd00::5"))
    assert (p.network, p.generator, p.labels, p.dns_capture, p.locality) == (
        "net1",
        "grpc",
        {"app": "web"},
        True,
        "r1/z1",
    )
    assert "readinessProbe" in p.proxy_config and p.ip_families == frozenset({4, 6})
    for bad, why in (
        ("sidecar~10.0.0.1~x", "4 parts"),
        ("gateway~1.1.1.1~a.b~c", "unknown proxy type"),
        ("sidecar~nope~a.b~c", "not an IP"),
    ):
        with pytest.raises(NodeError, match=why):
            parse_node(_node(bad))


# --- over real streams --------------------------------------------------------------------


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    c = ControlPlane(example_config(tmp_path / "mesh", 18080), xds_listen="127.0.0.1:0", persist=False, debounce=0.02)
    c.start()
    yield c
    c.stop()


def add_service(cp: ControlPlane, name: str) -> None:
    (cp.config_dir / f"{name}.yaml").write_text(
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n"
        "spec: {clusterIP: 10.96.9.9, ports: [{name: grpc, port: 81}]}\n"
    )
    cp.reload()


def test_delta_ads_wildcard_then_changes_and_removals(cp: ControlPlane) -> None:
    s = AdsStream(cp.port, vm_node("127.0.0.9", group="", name="d"), delta=True)
    s.send(CDS)
    r = s.recv()
    names = {x.name for x in r.resources}
    assert "outbound|18080||product.default.svc.cluster.local" in names and r.removed_resources == []
    assert all(len(x.version) == 16 for x in r.resources)
    s.ack(r)
    add_service(cp, "extra")
    r = s.recv()
    assert [x.name for x in r.resources] == ["outbound|81||extra.default.svc.cluster.local"]
    s.ack(r)
    (cp.config_dir / "extra.yaml").unlink()
    cp.reload()
    r = s.recv()
    assert list(r.removed_resources) == ["outbound|81||extra.default.svc.cluster.local"] and not r.resources
    s.ack(r)
    # Explicit subscription to a name that does not exist: reported removed.
    s.send(EDS, subscribe=("outbound|1||nope.default.svc.cluster.local",))
    r = s.recv()
    assert list(r.removed_resources) == ["outbound|1||nope.default.svc.cluster.local"]
    s.close()


def test_pushes_go_only_to_affected_connections(cp: ControlPlane) -> None:
    product = "outbound|18080||product.default.svc.cluster.local"
    eds_watch = AdsStream(cp.port, vm_node("127.0.0.9", group="", name="e"))
    eds_watch.send(EDS, (product,))
    nds_watch = AdsStream(cp.port, vm_node("127.0.0.8", group="", name="n"))
    nds_watch.send(NDS)
    lds_watch = AdsStream(cp.port, vm_node("127.0.0.7", group="", name="l"))
    lds_watch.send(LDS)
    for s, names in ((eds_watch, (product,)), (nds_watch, ()), (lds_watch, ())):
        r = s.recv()
        assert len(r.resources) >= 1
        s.ack(r, names)
    before = cp.ads.stats["pushes"]
    add_service(cp, "extra")  # a new name (NDS) and listener (LDS); the product endpoints are unchanged
    r = nds_watch.recv()
    assert b"extra.default.svc.cluster.local" in r.resources[0].value
    r = lds_watch.recv()
    # SotW LDS: the full set. 3 API listeners, the sidecar's virtualInbound and its outbound
    # HTTP listeners: product's and extra's ports are named grpc, payments' https is TCP.
    assert sorted(Listener.FromString(a.value).name for a in r.resources) == [
        "0.0.0.0_18080",
        "0.0.0.0_81",
        "api.payments.example.com:443",
        "extra.default.svc.cluster.local:81",
        "product.default.svc.cluster.local:18080",
        "virtualInbound",
    ]
    assert eds_watch.no_response(0.3)
    assert cp.ads.stats["pushes"] - before == 2
    for s in (eds_watch, nds_watch, lds_watch):
        s.close()


def test_undecodable_requests_fail_only_their_stream(cp: ControlPlane) -> None:
    import grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{cp.port}")
    call = channel.stream_stream(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.RpcError) as info:
        list(call(iter([b"\xff\xff\xff\xff garbage"]), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()
    # The server keeps serving everyone else.
    s = AdsStream(cp.port, vm_node("127.0.0.9", group="", name="after"))
    s.send(CDS)
    assert len(s.recv().resources) >= 2
    s.close()


def test_first_request_without_node_is_rejected(cp: ControlPlane) -> None:
    import grpc

    s = AdsStream(cp.port, base_pb2.Node())
    s.send(CDS)
    err = s.wait_closed()
    assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must carry the node" in str(err.details())
    s.close()


def test_istio_meta_environment_names_are_accepted() -> None:
    p = parse_node(
        _node(
            "sidecar~10.0.0.9~vm-1.ns1~ns1.svc.cluster.local",
            ISTIO_META_AUTO_REGISTER_GROUP="grp",
            ISTIO_META_NETWORK="n1",
            ISTIO_METAJSON_LABELS='{"app": "x"}',
        )
    )
    assert (p.auto_register_group, p.network, p.labels) == ("grp", "n1", {"app": "x"})
