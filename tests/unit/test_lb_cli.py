"""`pymesh lb pick`, run as an operator runs it (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CLUSTERS_YAML = """
static_resources:
  clusters:
  - name: "outbound|9080||reviews.default.svc.cluster.local"
    lb_policy: ROUND_ROBIN
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 10.244.0.7, port_value: 9080}}}
          load_balancing_weight: 1
        - endpoint: {address: {socket_address: {address: 10.0.0.5, port_value: 9080}}}
          load_balancing_weight: 3
  - name: sessions
    lb_policy: MAGLEV
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 10.1.0.1, port_value: 6379}}}
        - endpoint: {address: {socket_address: {address: 10.1.0.2, port_value: 6379}}}
        - endpoint: {address: {socket_address: {address: 10.1.0.3, port_value: 6379}}}
  - name: down
    common_lb_config: {healthy_panic_threshold: {value: 0}}
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 10.2.0.1, port_value: 80}}}
          health_status: UNHEALTHY
"""
REVIEWS = "outbound|9080||reviews.default.svc.cluster.local"


@pytest.fixture
def clusters(tmp_path: Path) -> Path:
    p = tmp_path / "envoy.yaml"
    p.write_text(CLUSTERS_YAML)
    return p


def pymesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pymesh", *args], capture_output=True, text=True, timeout=60)


def test_pick_json_counts_follow_weights(clusters: Path) -> None:
    r = pymesh("lb", "pick", "--clusters", str(clusters), "--cluster", REVIEWS, "--count", "400", "--json")
    assert r.returncode == 0, r.stderr
    # Weighted round robin is exact over whole cycles (4 slots per cycle).
    assert json.loads(r.stdout) == {"10.0.0.5:9080": 300, "10.244.0.7:9080": 100}


def test_pick_table_output(clusters: Path) -> None:
    r = pymesh("lb", "pick", "--clusters", str(clusters), "--cluster", REVIEWS, "--count", "8", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert f"cluster {REVIEWS} (ROUND_ROBIN, 2 endpoints): 8 picks" in r.stdout
    assert "10.0.0.5:9080" in r.stdout and "75.00%" in r.stdout


def test_hash_key_sends_every_pick_to_one_endpoint(clusters: Path) -> None:
    outs = set()
    for seed in ("1", "2"):
        r = pymesh(
            "lb", "pick", "--clusters", str(clusters), "--cluster", "sessions", "--count", "50", "--hash-key", "u-1",
            "--json", "--seed", seed,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        assert list(got.values()) == [50]
        outs.add(next(iter(got)))
    assert len(outs) == 1


def test_no_healthy_upstream_exits_3(clusters: Path) -> None:
    r = pymesh("lb", "pick", "--clusters", str(clusters), "--cluster", "down", "--count", "5", "--json")
    assert r.returncode == 3
    assert json.loads(r.stdout) == {}


def test_errors_exit_1_with_a_message(clusters: Path, tmp_path: Path) -> None:
    r = pymesh("lb", "pick", "--clusters", str(clusters), "--cluster", "nope")
    assert r.returncode == 1 and 'no cluster "nope"' in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "x", "lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 4}}]))
    r = pymesh("lb", "pick", "--clusters", str(bad), "--cluster", "x")
    assert r.returncode == 1
    assert 'cluster "x": maglev_lb_config.table_size: 4 is not a prime number' in r.stderr


def test_assignments_replace_a_clusters_endpoints(clusters: Path, tmp_path: Path) -> None:
    eds = tmp_path / "eds.json"
    eds.write_text(
        json.dumps(
            {
                "resources": [
                    {
                        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                        "cluster_name": REVIEWS,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {"socket_address": {"address": "10.9.9.9", "port_value": 80}}
                                        }
                                    }
                                ]
                            }
                        ],
                    }
                ]
            }
        )
    )
    args = ("lb", "pick", "--clusters", str(clusters), "--assignments", str(eds), "--count", "4", "--json")
    r = pymesh(*args, "--cluster", REVIEWS)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"10.9.9.9:80": 4}
    # Unassigned clusters keep their endpoints.
    assert set(json.loads(pymesh(*args, "--cluster", "sessions").stdout)) <= {f"10.1.0.{i}:6379" for i in (1, 2, 3)}
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_name: nope\nendpoints: []\n")
    r = pymesh("lb", "pick", "--clusters", str(clusters), "--assignments", str(bad), "--cluster", REVIEWS)
    assert r.returncode == 1
    assert 'cluster "nope": cluster_name: no such cluster in the table' in r.stderr
