"""pymesh.lbtable through Python: every input form (files, dicts, protobuf
messages from xds-protos), picks per policy against the weights, outcomes
and outlier detection with injected time, state carried across updates,
classification, and errors. The comparisons of the native hash, Maglev and
ring tables and priority arithmetic with the pure-Python oracle are in
tests/conformance/test_lb_oracle.py."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pymesh import FileError, InvalidEntryError, LbTable, ParseError, PymeshError, UnknownClusterError, load_clusters
from pymesh.lbtable import lb_priority_load, load_redirect_table
from support.lb import cluster, ep

WEIGHTS = {"10.0.0.1:80": 1, "10.0.0.2:80": 2, "10.0.0.3:80": 3, "10.0.0.4:80": 4}


def chi2_ok(counts: dict[str | None, int], shares: dict[str, float]) -> None:
    """Chi-square against the expected shares with a p ~ 1e-6 bound (fixed
    seeds make it deterministic; a sampler ignoring weights fails by far)."""
    n = sum(counts.values())
    total = sum(shares.values())
    x = sum((counts.get(k, 0) - n * w / total) ** 2 / (n * w / total) for k, w in shares.items())
    df = len(shares) - 1
    crit = df * (1 - 2 / (9 * df) + 4.75 * (2 / (9 * df)) ** 0.5) ** 3
    assert set(counts) == set(shares), counts
    assert x < crit, f"chi2 {x:.1f} >= {crit:.1f}: {counts}"


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST", "RING_HASH", "MAGLEV"])
def test_weighted_policies_follow_weights(policy: str) -> None:
    extra: dict[str, Any] = {}
    if policy == "RING_HASH":
        extra["ring_hash_lb_config"] = {"minimum_ring_size": 1 << 20}
    t = load_clusters([cluster("c", policy, [ep(a, w) for a, w in WEIGHTS.items()], **extra)], seed=7)
    if policy in ("RING_HASH", "MAGLEV"):
        counts: Counter[str | None] = Counter(t.pick("c", f"req-{i}") for i in range(40_000))
    else:
        counts = Counter(t.pick_counts("c", 40_000))
    chi2_ok(dict(counts), {k: float(v) for k, v in WEIGHTS.items()})


def test_random_ignores_weights() -> None:
    t = load_clusters([cluster("c", "RANDOM", [ep(a, w) for a, w in WEIGHTS.items()])], seed=3)
    chi2_ok(t.pick_counts("c", 40_000), dict.fromkeys(WEIGHTS, 1.0))


def test_round_robin_over_one_cycle_is_exact() -> None:
    t = load_clusters([cluster("c", "ROUND_ROBIN", [ep(a, w) for a, w in WEIGHTS.items()])], seed=11)
    assert t.pick_counts("c", 10 * 50) == {k: v * 50 for k, v in WEIGHTS.items()}


def test_least_request_uses_reported_requests() -> None:
    t = load_clusters([cluster("c", "LEAST_REQUEST", [ep("10.0.0.1:80"), ep("10.0.0.2:80")])], seed=1)
    for _ in range(5):
        t.request_started("c", "10.0.0.1:80")
    share = t.pick_counts("c", 20_000).get("10.0.0.1:80", 0) / 20_000
    assert 0.22 < share < 0.28  # P2C: the busy host wins only when drawn twice
    for _ in range(5):
        t.report("c", "10.0.0.1:80", 200, finished=True, now=1.0)
    assert t.endpoints("c")[0]["active_requests"] == 0
    share = t.pick_counts("c", 20_000).get("10.0.0.1:80", 0) / 20_000
    assert 0.47 < share < 0.53


def test_priority_load_rejects_impossible_counts() -> None:
    with pytest.raises(InvalidEntryError, match=r"counts\[0\]"):
        lb_priority_load([(1, 1, 1)])


def test_outlier_ejection_and_return_with_injected_time() -> None:
    eps = [ep(f"10.9.0.{i}:80") for i in range(1, 11)]
    t = load_clusters([cluster("c", "ROUND_ROBIN", eps, outlier_detection={"interval": "1s"})], seed=1, now=0.0)
    for i in range(4):
        assert not t.report("c", "10.9.0.1:80", 503, now=0.1 + i / 100)
    assert t.report("c", "10.9.0.1:80", "5xx", now=0.2)
    state = {e["address"]: e for e in t.endpoints("c")}
    assert state["10.9.0.1:80"]["ejected"] and state["10.9.0.1:80"]["health"] == "unhealthy"
    assert "10.9.0.1:80" not in t.pick_counts("c", 1000)
    assert t.tick(now=30.0) == 0  # base 30 s from 0.2 s: not yet at the 30 s sweep
    assert t.tick(now=31.0) == 1
    assert "10.9.0.1:80" in t.pick_counts("c", 1000)
    assert t.endpoints("c")[0]["ejections"] == 1


def test_under_ten_hosts_nothing_is_ejected_by_default() -> None:
    eps = [ep(f"10.9.0.{i}:80") for i in range(1, 10)]
    t = load_clusters([cluster("c", "ROUND_ROBIN", eps, outlier_detection={})], now=0.0)
    for i in range(20):
        t.report("c", "10.9.0.1:80", 500, now=i)
    assert not t.endpoints("c")[0]["ejected"]


def test_state_carries_over_and_removed_clusters_go() -> None:
    eps = [ep(f"10.9.0.{i}:80") for i in range(1, 11)]
    t = load_clusters(
        [cluster("c", "ROUND_ROBIN", eps, outlier_detection={}), cluster("d", "RANDOM", eps[:1])], now=0.0
    )
    t.request_started("c", "10.9.0.2:80")
    t.set_health_check("c", "10.9.0.3:80", False, now=1.0)
    g = t.generation
    t.load([cluster("c", "ROUND_ROBIN", [*eps[:5], ep("10.9.0.99:80")], outlier_detection={})], now=2.0)
    assert t.generation == g + 1
    assert t.clusters() == ["c"] and "d" not in t
    state = {e["address"]: e for e in t.endpoints("c")}
    assert state["10.9.0.2:80"]["active_requests"] == 1
    assert state["10.9.0.3:80"]["health"] == "unhealthy" and state["10.9.0.3:80"]["health_check_failed"]
    assert state["10.9.0.99:80"]["health"] == "healthy"
    t.load([cluster("e", "RANDOM", eps[:1])], replace=False)
    assert t.clusters() == ["c", "e"]
    assert t.remove(["e", "zzz"]) == 1


def test_failed_load_keeps_the_serving_table() -> None:
    t = load_clusters([cluster("c", "ROUND_ROBIN", [ep("10.0.0.1:80")])])
    g = t.generation
    with pytest.raises(InvalidEntryError, match=r'cluster "c": load_assignment\.endpoints\[0\]\.lb_endpoints\[1\]'):
        t.load([cluster("c", "ROUND_ROBIN", [ep("10.0.0.1:80"), ep("10.0.0.1:80")])])
    assert t.generation == g and t.pick("c") == "10.0.0.1:80"


def test_errors_are_pymesh_errors() -> None:
    t = load_clusters([cluster("c", "ROUND_ROBIN", [ep("10.0.0.1:80")])])
    with pytest.raises(UnknownClusterError):
        t.pick("nope")
    with pytest.raises(UnknownClusterError, match=r"no endpoint 10\.0\.0\.2:80"):
        t.report("c", "10.0.0.2:80", 500, now=0)
    with pytest.raises(PymeshError, match="outcome"):
        t.report("c", "10.0.0.1:80", "meh", now=0)
    with pytest.raises(PymeshError, match="hash_key"):
        t.pick("c", 5)  # type: ignore[arg-type]
    with pytest.raises(ParseError):
        t.load_json("{not json")
    with pytest.raises(ParseError):
        t.load([object()])
    with pytest.raises(FileError):
        load_clusters("/nonexistent/clusters.yaml")
    assert issubclass(UnknownClusterError, PymeshError)


def test_files_yaml_bootstrap_and_istio_metadata(tmp_path: Path) -> None:
    y = tmp_path / "envoy.yaml"
    y.write_text(
        """
static_resources:
  clusters:
  - name: outbound|9080||reviews.default.svc.cluster.local
    type: EDS
    connect_timeout: 1s
    lb_policy: RING_HASH
    load_assignment:
      cluster_name: outbound|9080||reviews.default.svc.cluster.local
      endpoints:
      - locality: {region: us-east1, zone: us-east1-b}
        lb_endpoints:
        - endpoint: {address: {socket_address: {address: 10.244.0.7, port_value: 9080}}}
          metadata:
            filter_metadata:
              istio: {workload: "reviews-v1;default;reviews;v1;Kubernetes", service_account: reviews}
              envoy.transport_socket_match: {tlsMode: istio}
        - endpoint: {address: {socket_address: {address: "fd00::9", port_value: 9080}}}
          health_status: DRAINING
"""
    )
    t = load_clusters(y)
    name = "outbound|9080||reviews.default.svc.cluster.local"
    e = t.endpoints(name)
    assert e[0]["tls_mode"] == "istio" and e[0]["service_account"] == "reviews"
    assert e[0]["locality"] == {"region": "us-east1", "zone": "us-east1-b", "sub_zone": ""}
    assert e[1]["address"] == "[fd00::9]:9080" and e[1]["health_status"] == "DRAINING"
    assert t.cluster_info(name)["policy"] == "RING_HASH"
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"clusters": [cluster("x", "RANDOM", [ep("10.0.0.1:1")])]}))
    assert load_clusters(j).clusters() == ["x"]


def _proto_cluster() -> Any:
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.core.v3 import health_check_pb2

    c = cluster_pb2.Cluster(name="outbound|80||web", lb_policy=cluster_pb2.Cluster.MAGLEV)
    c.type = cluster_pb2.Cluster.EDS
    c.maglev_lb_config.table_size.value = 65537
    c.common_lb_config.healthy_panic_threshold.value = 0
    c.outlier_detection.consecutive_5xx.value = 3
    c.outlier_detection.base_ejection_time.FromSeconds(5)
    la = c.load_assignment
    la.cluster_name = c.name
    for p, ips in enumerate((["10.5.0.1", "10.5.0.2"], ["10.5.1.1"])):
        g = la.endpoints.add(priority=p)
        g.locality.region = "r1"
        g.locality.zone = f"z{p}"
        for ip in ips:
            e = g.lb_endpoints.add()
            e.endpoint.address.socket_address.address = ip
            e.endpoint.address.socket_address.port_value = 80
            e.health_status = health_check_pb2.HEALTHY
            e.load_balancing_weight.value = 2
    return c


def test_protobuf_messages_from_xds_protos() -> None:
    from envoy.service.discovery.v3 import discovery_pb2
    from google.protobuf import any_pb2

    c = _proto_cluster()
    t = load_clusters(c)
    assert t.cluster_info("outbound|80||web")["policy"] == "MAGLEV"
    assert t.priority_load("outbound|80||web")["healthy"] == [100, 0]
    a = any_pb2.Any()
    a.Pack(c)
    assert load_clusters([a]).clusters() == ["outbound|80||web"]
    resp = discovery_pb2.DiscoveryResponse(type_url=a.type_url, resources=[a])
    t2 = load_clusters(resp)
    assert [t2.pick("outbound|80||web", f"k{i}") for i in range(50)] == [
        t.pick("outbound|80||web", f"k{i}") for i in range(50)
    ]
    # The same invalid setting gives the same message through protobuf and dicts.
    c.maglev_lb_config.table_size.value = 65536
    with pytest.raises(InvalidEntryError) as from_proto:
        load_clusters(c)
    d = {"name": "outbound|80||web", "lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 65536}}
    with pytest.raises(InvalidEntryError) as from_dict:
        load_clusters([d])
    assert str(from_proto.value) == str(from_dict.value)
    other = any_pb2.Any(type_url="type.googleapis.com/envoy.config.listener.v3.Listener")
    with pytest.raises(ParseError, match="Listener"):
        load_clusters([other])


def test_locality_failover_from_python() -> None:
    groups = [
        {"locality": {"region": "r2"}, "lb_endpoints": [ep("10.0.2.1:80")]},
        {"locality": {"region": "r1", "zone": "z1"}, "lb_endpoints": [ep("10.0.1.1:80")]},
    ]
    c = {"name": "c", "load_assignment": {"endpoints": groups}, "outlier_detection": {}}
    t = LbTable(seed=1, locality={"region": "r1", "zone": "z1"})
    t.load([c])
    assert {e["address"]: e["priority"] for e in t.endpoints("c")} == {"10.0.2.1:80": 1, "10.0.1.1:80": 0}
    assert t.pick_counts("c", 50) == {"10.0.1.1:80": 50}
    t.set_health_check("c", "10.0.1.1:80", False, now=0)
    assert t.pick_counts("c", 50) == {"10.0.2.1:80": 50}


def test_picks_from_many_threads_while_tables_swap() -> None:
    eps = [ep(f"10.7.0.{i}:80") for i in range(1, 30)]
    t = load_clusters([cluster("c", "ROUND_ROBIN", eps)], seed=1)
    stop = threading.Event()
    bad: list[object] = []

    def picker() -> None:
        while not stop.is_set():
            a = t.pick("c")
            if a is None or not a.startswith("10.7.0."):
                bad.append(a)

    threads = [threading.Thread(target=picker) for _ in range(3)]
    for th in threads:
        th.start()
    for i in range(50):
        t.load([cluster("c", "ROUND_ROBIN", eps[: 5 + i % 20])])
    stop.set()
    for th in threads:
        th.join()
    assert not bad


def test_redirect_table_from_file_and_dict(tmp_path: Path) -> None:
    doc = {
        "services": [{"address": "10.96.0.20", "port": 9080, "cluster": "outbound|9080||reviews"}],
        "exclude_ports": "22, 15090",
    }
    p = tmp_path / "r.yaml"
    p.write_text("services:\n- {address: 10.96.0.20, port: 9080, cluster: 'outbound|9080||reviews'}\n")
    for r in (load_redirect_table(doc), load_redirect_table(p)):
        assert r.classify("10.96.0.20", 9080) == ("cluster", "outbound|9080||reviews")
        assert r.classify("10.96.0.21", 9080) == ("passthrough", None)
        assert len(r) == 1
    assert load_redirect_table(doc).classify("10.96.0.20", 22) == ("bypass", None)
    with pytest.raises(InvalidEntryError, match=r"entry \"services\[0\]\": port"):
        load_redirect_table({"services": [{"address": "10.0.0.1", "port": 0, "cluster": "c"}]})
    with pytest.raises(PymeshError):
        load_redirect_table(doc).classify("not-an-ip", 1)
