"""Control-plane benchmarks.

- ``generation`` group: the resources 20 proxies of one view need after a
  change, pymesh (generated once per snapshot and view, shared) beside the
  naive baseline (generated per proxy). Compare medians within the group.
- The end-to-end push convergence script (benchmarks/controlplane_bench.py,
  real ADS streams on loopback) run once at a small size so it keeps
  working; its full run (1,000 services, 2,000 agents) is a documented
  command, see that file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import SHORT
from controlplane_bench import write_mesh

from pymesh.controlplane.registry import build_registry
from pymesh.controlplane.resources import load_path
from pymesh.controlplane.snapshot import CDS, EDS, NDS, Snapshot, encode, generate, view_key
from pymesh.controlplane.vips import VipAllocator

HERE = Path(__file__).resolve().parent
SERVICES = 100 if SHORT else 1000
PROXIES = 20


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cfg = tmp_path_factory.mktemp("mesh")
    write_mesh(cfg, SERVICES)
    result = load_path(cfg)
    assert not result.errors
    return build_registry(result.objects, vips=VipAllocator())


def _proxy() -> Any:
    from envoy.config.core.v3 import base_pb2
    from google.protobuf import struct_pb2

    from pymesh.controlplane.node import parse_node

    md = struct_pb2.Struct()
    md.update({"NAMESPACE": "bench", "DNS_CAPTURE": "true", "INSTANCE_IPS": "10.200.0.1"})
    return parse_node(base_pb2.Node(id="sidecar~10.200.0.1~a.bench~bench.svc.cluster.local", metadata=md))


@pytest.mark.benchmark(group="generation")
def test_generation_pymesh_shared_per_view(benchmark: Any, registry: Any) -> None:
    proxy = _proxy()

    def run() -> int:
        snap = Snapshot(2, registry)
        return sum(len(snap.for_proxy(t, proxy)) for _ in range(PROXIES) for t in (CDS, EDS, NDS))

    assert benchmark(run) == PROXIES * (2 * SERVICES + 1)


@pytest.mark.benchmark(group="generation")
def test_generation_naive_per_proxy(benchmark: Any, registry: Any) -> None:
    proxy = _proxy()

    def run() -> int:
        n = 0
        for _ in range(PROXIES):
            for t in (CDS, EDS, NDS):
                n += len({k: encode(t, k, m) for k, m in generate(registry, t, view_key(t, proxy)).items()})
        return n

    assert benchmark(run) == PROXIES * (2 * SERVICES + 1)


def test_push_convergence_script_runs() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(HERE / "controlplane_bench.py"),
            "--services",
            "40",
            "--agents",
            "30",
            "--eds",
            "5",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout)
    inc, naive = r["incremental"], r["naive"]
    for key in ("endpoints_s", "new-service_s", "rss_per_agent_kb", "connect_all_s"):
        assert inc[key] >= 0 and naive[key] >= 0
    # Push targeting: an endpoint change reaches only the agents watching that cluster
    # (30 agents x 5 of 40 clusters: a few), the baseline resends everything to everyone.
    assert 0 < inc["endpoints_responses"] < naive["endpoints_responses"] == 3 * 30
    # A new service changes CDS and NDS for every agent, and nothing in their EDS.
    assert inc["new-service_responses"] == 2 * 30
    delta = r["incremental_delta"]
    assert delta["delta"] and delta["new-service_responses"] == 2 * 30
    assert delta["endpoints_responses"] == inc["endpoints_responses"]
