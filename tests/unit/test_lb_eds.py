"""EDS through Python: ClusterLoadAssignments (dicts, JSON/YAML text and
files, xds-protos messages, a DiscoveryResponse) replace the endpoints of
clusters already in the table, keep the clusters' settings and the live
state of endpoints that stay, and are rejected whole, naming the cluster
and field, when a cluster is unknown or a field is invalid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pymesh import InvalidEntryError, LbTable, ParseError, PymeshError, load_clusters
from pymesh.lbtable import ASSIGNMENT_TYPE_URL, assignments_from_protobuf, load_assignments


def ep(addr: str, **extra: Any) -> dict[str, Any]:
    ip, _, port = addr.rpartition(":")
    return {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": int(port)}}}, **extra}


def assignment(name: str, addrs: list[str], **extra: Any) -> dict[str, Any]:
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [ep(a) for a in addrs]}], **extra}


def eds_cluster(name: str, policy: str = "ROUND_ROBIN", **extra: Any) -> dict[str, Any]:
    """A Cluster as CDS sends it for EDS: no load_assignment."""
    return {
        "name": name,
        "type": "EDS",
        "lb_policy": policy,
        "eds_cluster_config": {"eds_config": {"ads": {}}},
        **extra,
    }


TEN = [f"10.9.0.{i}:80" for i in range(1, 11)]


def test_assignment_swaps_endpoints_and_keeps_state_and_settings() -> None:
    t = load_clusters([eds_cluster("c", outlier_detection={}), eds_cluster("d", "RANDOM")], seed=1, now=0.0)
    assert t.pick("c") is None, "an EDS cluster has no endpoints before its first assignment"
    g = t.load_assignments([assignment("c", TEN), assignment("d", ["10.8.0.1:80"])], now=0.0)
    assert g == t.generation
    for i in range(5):
        t.report("c", "10.9.0.1:80", 503, now=1.0 + i)
    t.request_started("c", "10.9.0.2:80")
    d_before = t.endpoints("d")
    # .10 goes, .77 comes, the assignment's policy sets the factor.
    t.load_assignments(assignment("c", [*TEN[:9], "10.9.0.77:80"], policy={"overprovisioning_factor": 200}), now=10.0)
    state = {e["address"]: e for e in t.endpoints("c")}
    assert set(state) == {*TEN[:9], "10.9.0.77:80"}
    assert state["10.9.0.1:80"]["ejected"] and state["10.9.0.1:80"]["ejections"] == 1
    assert state["10.9.0.2:80"]["active_requests"] == 1
    info = t.cluster_info("c")
    assert info["overprovisioning_factor"] == 200 and info["outlier_detection"] and info["policy"] == "ROUND_ROBIN"
    assert t.endpoints("d") == d_before
    picks = t.pick_counts("c", 900)
    assert "10.9.0.1:80" not in picks and "10.9.0.10:80" not in picks and "10.9.0.77:80" in picks
    # An assignment without a policy: Envoy's default factor again.
    t.load_assignments({"assignments": [assignment("c", TEN[:3])]}, now=11.0)
    assert t.cluster_info("c")["overprovisioning_factor"] == 140


def test_unknown_cluster_or_bad_field_changes_nothing() -> None:
    t = load_clusters([eds_cluster("c")], seed=1)
    t.load_assignments([assignment("c", ["10.0.0.1:80"])])
    g = t.generation
    with pytest.raises(InvalidEntryError, match=r'cluster "nope": cluster_name: no such cluster in the table'):
        t.load_assignments([assignment("c", ["10.0.0.2:80"]), assignment("nope", ["10.0.0.3:80"])])
    bad = assignment("c", ["10.0.0.2:80"])
    bad["endpoints"][0]["lb_endpoints"][0]["load_balancing_weight"] = 0
    with pytest.raises(
        InvalidEntryError,
        match=r'cluster "c": endpoints\[0\]\.lb_endpoints\[0\]\.load_balancing_weight: must be at least 1',
    ):
        t.load_assignments([bad])
    with pytest.raises(InvalidEntryError, match=r'cluster "#0": cluster_name: missing'):
        t.load_assignments([{"endpoints": []}])
    with pytest.raises(ParseError):
        t.load_assignments_json("[{")
    with pytest.raises(PymeshError):
        t.load_assignments(42)
    assert t.generation == g
    assert t.pick("c") == "10.0.0.1:80"


def test_text_and_files(tmp_path: Path) -> None:
    t = load_clusters([eds_cluster("c", "MAGLEV")], seed=1)
    y = tmp_path / "eds.yaml"
    y.write_text(
        "resources:\n"
        f"- '@type': {ASSIGNMENT_TYPE_URL}\n"
        "  clusterName: c\n"
        "  endpoints:\n"
        "  - lbEndpoints:\n"
        "    - endpoint: {address: {socketAddress: {address: 10.1.0.1, portValue: 8080}}}\n"
    )
    load_assignments(y, table=t)
    assert t.pick("c", "k") == "10.1.0.1:8080"
    t.load_assignments_json('[{"cluster_name": "c", "endpoints": [{"lb_endpoints": [' + _ep_json("10.1.0.2") + "]}]}]")
    assert t.pick("c", "k") == "10.1.0.2:8080"


def _ep_json(ip: str) -> str:
    return json.dumps({"endpoint": {"address": {"socket_address": {"address": ip, "port_value": 8080}}}})


def test_protobuf_assignments_hash_like_an_inline_cluster() -> None:
    from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
    from envoy.service.discovery.v3 import discovery_pb2
    from google.protobuf import any_pb2

    addrs = [f"10.2.0.{i}:6379" for i in range(1, 31)]
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="outbound|6379||redis")
    group = cla.endpoints.add()
    for a in addrs:
        ip, _, port = a.rpartition(":")
        lb = group.lb_endpoints.add()
        lb.endpoint.address.socket_address.address = ip
        lb.endpoint.address.socket_address.port_value = int(port)
    assert isinstance(group, endpoint_components_pb2.LocalityLbEndpoints)
    inline = load_clusters(
        [
            {
                **eds_cluster("outbound|6379||redis", "RING_HASH"),
                "load_assignment": assignment("outbound|6379||redis", addrs),
            }
        ]
    )
    keys = [f"session-{i}" for i in range(300)]
    want = [inline.pick("outbound|6379||redis", k) for k in keys]
    for source in (cla, [cla]):
        t = load_clusters([eds_cluster("outbound|6379||redis", "RING_HASH")])
        load_assignments(source, table=t)
        assert [t.pick("outbound|6379||redis", k) for k in keys] == want
    a = any_pb2.Any()
    a.Pack(cla)
    t = load_clusters([eds_cluster("outbound|6379||redis", "RING_HASH")])
    load_assignments(discovery_pb2.DiscoveryResponse(type_url=a.type_url, resources=[a]), table=t)
    assert [t.pick("outbound|6379||redis", k) for k in keys] == want
    assert assignments_from_protobuf([a])[0]["cluster_name"] == "outbound|6379||redis"
    # A Cluster where an assignment belongs is named.
    from envoy.config.cluster.v3 import cluster_pb2

    wrong = any_pb2.Any()
    wrong.Pack(cluster_pb2.Cluster(name="outbound|6379||redis"))
    with pytest.raises(ParseError, match="ClusterLoadAssignment"):
        load_assignments([wrong], table=t)
    resp = discovery_pb2.DiscoveryResponse(resources=[wrong])
    with pytest.raises(InvalidEntryError, match=r"is not an envoy\.config\.endpoint\.v3\.ClusterLoadAssignment"):
        load_assignments(resp, table=t)


def test_locality_failover_applies_to_assignments() -> None:
    t = LbTable(seed=1, locality={"region": "r1", "zone": "z1"})
    t.load([eds_cluster("c", outlier_detection={})])
    t.load_assignments(
        {
            "cluster_name": "c",
            "endpoints": [
                {"locality": {"region": "r2"}, "lb_endpoints": [ep("10.0.2.1:80")]},
                {"locality": {"region": "r1", "zone": "z1"}, "lb_endpoints": [ep("10.0.1.1:80")]},
            ],
        }
    )
    prio = {e["address"]: e["priority"] for e in t.endpoints("c")}
    assert prio == {"10.0.1.1:80": 0, "10.0.2.1:80": 1}
    assert t.pick_counts("c", 50) == {"10.0.1.1:80": 50}


def test_discovery_response_from_the_wire_in_a_fresh_process() -> None:
    """An xDS client holds a DiscoveryResponse decoded from bytes and may
    never have imported the EDS module: its Any resources still resolve."""
    import subprocess
    import sys

    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.service.discovery.v3 import discovery_pb2
    from google.protobuf import any_pb2

    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="c")
    lb = cla.endpoints.add().lb_endpoints.add()
    lb.endpoint.address.socket_address.address = "10.3.0.1"
    lb.endpoint.address.socket_address.port_value = 80
    a = any_pb2.Any()
    a.Pack(cla)
    wire = discovery_pb2.DiscoveryResponse(type_url=a.type_url, resources=[a]).SerializeToString()
    code = (
        "import sys\n"
        "from envoy.service.discovery.v3 import discovery_pb2\n"
        "from pymesh import load_clusters\n"
        "from pymesh.lbtable import load_assignments\n"
        "resp = discovery_pb2.DiscoveryResponse.FromString(sys.stdin.buffer.read())\n"
        "t = load_clusters([{'name': 'c', 'type': 'EDS'}])\n"
        "load_assignments(resp, table=t)\n"
        "print(t.pick('c'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], input=wire, capture_output=True, check=True, timeout=60)
    assert out.stdout.decode().strip() == "10.3.0.1:80", out.stderr.decode()
