"""Agent push application: what a CDS/EDS push costs the agent (decode the
``Any`` resources, validate and build the native lbtable, publish), beside
baselines run in the same process.

- ``full push``: ``agent`` (CDS then EDS through the agent's handlers) vs
  ``lbtable-direct`` (``LbTable.load`` of the same clusters as ready-made
  dicts: the native build alone, the floor).
- ``one-cluster EDS update``: ``agent`` (rebuilds only the cluster named,
  an upsert) vs ``full-reload`` (reloading every cluster, what a naive
  client does on each EDS response).

Compare medians within a group. Short mode (PYMESH_BENCH_SHORT=1): 100 and
1,000 clusters; full: also 10,000. Persistence is off (it is I/O, measured
by neither)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import SHORT
from google.protobuf import json_format

from pymesh import LbTable
from pymesh.mesh.xds import CDS, EDS
from support.agent import cla, eds_cluster, make_agent, pack, write_vm_files

SIZES = [100, 1_000] if SHORT else [100, 1_000, 10_000]


def name(i: int) -> str:
    return f"outbound|8080||svc-{i}.ns-{i % 50}.svc.cluster.local"


def endpoints(i: int) -> Any:
    """Cluster ``i``'s assignment: two endpoints."""
    return cla(name(i), f"10.{i >> 8 & 255}.{i & 255}.1", f"10.{i >> 8 & 255}.{i & 255}.2")


def resources(n: int) -> tuple[list[Any], list[Any]]:
    clusters = [pack(eds_cluster(name(i))) for i in range(n)]
    cla_s = [pack(endpoints(i)) for i in range(n)]
    return clusters, cla_s


def agent() -> Any:
    d = Path(tempfile.mkdtemp())
    return make_agent(write_vm_files(d / "vm", 1), d / "state", 1, persist=False)


def push(a: Any, clusters: list[Any], cla_s: list[Any]) -> None:
    """A full push through the agent's handlers: CDS, then EDS (version 1, persistence off)."""
    a.mesh.on_cds(CDS, clusters, "1", persist=False)
    a.mesh.on_eds(EDS, cla_s, "1", persist=False)


def pushed(n: int) -> tuple[Any, list[Any]]:
    """An agent holding ``n`` clusters and their endpoints; the clusters (as pushed)."""
    clusters, cla_s = resources(n)
    a = agent()
    push(a, clusters, cla_s)
    return a, clusters


def dicts(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        c = json_format.MessageToDict(eds_cluster(name(i)), preserving_proto_field_name=True)
        c["load_assignment"] = json_format.MessageToDict(endpoints(i), preserving_proto_field_name=True)
        out.append(c)
    return out


@pytest.mark.parametrize("impl", ["agent", "lbtable-direct"])
@pytest.mark.parametrize("n", SIZES)
def test_full_push(benchmark: Any, n: int, impl: str) -> None:
    benchmark.group = f"full push {n:>6,} clusters"
    if impl == "agent":
        clusters, cla_s = resources(n)
        agents: list[Any] = []

        def fresh() -> tuple[tuple[Any], dict[str, Any]]:
            agents.append(agent())
            return (agents[-1],), {}

        benchmark.pedantic(lambda a: push(a, clusters, cla_s), setup=fresh, rounds=3 if n >= 10_000 else 10)
        assert len(agents[-1].lb) == n and len(agents[-1].lb.endpoints(name(0))) == 2
    else:
        ds = dicts(n)
        table = LbTable(seed=1)
        benchmark.pedantic(table.load, args=(ds,), kwargs={"replace": True}, rounds=3 if n >= 10_000 else 10)
        assert len(table) == n


@pytest.mark.parametrize("impl", ["agent", "full-reload"])
@pytest.mark.parametrize("n", SIZES)
def test_one_cluster_eds_update(benchmark: Any, n: int, impl: str) -> None:
    benchmark.group = f"one-cluster EDS update @ {n:>6,} clusters"
    a, _ = pushed(n)
    updates = [[pack(cla(name(7), "10.200.0.1"))], [pack(cla(name(7), "10.200.0.1", "10.200.0.2"))]]
    flip = iter(range(1 << 30))
    if impl == "agent":
        # Alternate two assignments: an unchanged one would be skipped, not rebuilt.
        benchmark(lambda: a.mesh.on_eds(EDS, updates[next(flip) % 2], "2", persist=False))
    else:
        full = a.mesh._lb_input(
            a.mesh.clusters, {**a.mesh.assignments, name(7): json_format.MessageToDict(cla(name(7), "10.200.0.1"))}
        )
        benchmark(a.lb.load, full, replace=True)
    assert a.lb.endpoints(name(7))[0]["address"] == "10.200.0.1:8080"


@pytest.mark.parametrize("impl", ["agent", "full-reload"])
@pytest.mark.parametrize("n", SIZES)
def test_cds_push_one_changed(benchmark: Any, n: int, impl: str) -> None:
    """A SotW CDS push carries every cluster; one of them changed."""
    benchmark.group = f"CDS push, 1 changed @ {n:>6,} clusters"
    a, clusters = pushed(n)
    from envoy.config.cluster.v3 import cluster_pb2

    pushes = []
    for policy in (cluster_pb2.Cluster.RANDOM, cluster_pb2.Cluster.ROUND_ROBIN):
        push = list(clusters)
        push[7] = pack(eds_cluster(name(7), lb_policy=policy))
        pushes.append(push)
    flip = iter(range(1 << 30))
    if impl == "agent":
        benchmark(lambda: a.mesh.on_cds(CDS, pushes[next(flip) % 2], "2", persist=False))
    else:
        benchmark(lambda: a.lb.load(a.mesh._lb_input(a.mesh.clusters, a.mesh.assignments), replace=True))
    assert len(a.lb) == n
