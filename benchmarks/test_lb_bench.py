"""lbtable benchmarks through Python: the native table beside pure-Python
reference implementations (tests/oracle_lb.py), same inputs, same process.

Groups pair `native` with `reference`; compare medians within a group.
- pick: 1,000 picks per round per policy (native `pick_counts` in one call,
  native `pick` one call each, and the reference: EDF heap for weighted
  round robin, `bisect` on the ring, a Maglev table lookup, with the hash
  computed by the Python xxHash64 for the hashing ones).
- build: loading clusters of 100 / 1k / 10k (/ 50k in full mode) endpoints
  from dicts; Maglev and ring tables of 100 hosts (reference: the oracle's
  Envoy-literal builders).
- classify: 1,000 destinations per round (reference: istio-iptables rules
  with `ipaddress`).
- disruption: keys moved when 1 of 100 endpoints goes (printed, asserted
  within Envoy's documented bounds).
Short mode (PYMESH_BENCH_SHORT=1, CI): smaller sizes and fewer rounds."""

from __future__ import annotations

import random
from typing import Any

import pytest
from conftest import SHORT
from oracle_lb import EdfScheduler, RingHash, classify, maglev_table, xxh64

from pymesh import LbTable, RedirectTable

SIZES = [100, 1_000, 10_000] if SHORT else [100, 1_000, 10_000, 50_000]
BATCH = 1_000


def addr(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:6379"


def cluster(policy: str, n: int, weighted: bool = False) -> dict[str, Any]:
    eps = [
        {
            "endpoint": {"address": {"socket_address": {"address": addr(i).split(":")[0], "port_value": 6379}}},
            "load_balancing_weight": 1 + i % 4 if weighted else 1,
        }
        for i in range(n)
    ]
    return {"name": "c", "lb_policy": policy, "load_assignment": {"endpoints": [{"lb_endpoints": eps}]}}


KEYS = [f"session-{i:08}" for i in range(BATCH)]


@pytest.mark.parametrize("impl", ["native-batch", "native", "reference"])
@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "ROUND_ROBIN_WEIGHTED", "RING_HASH", "MAGLEV"])
def test_pick(benchmark: Any, policy: str, impl: str) -> None:
    weighted = policy.endswith("_WEIGHTED")
    real = policy.removesuffix("_WEIGHTED")
    n = 100
    table = LbTable(seed=1)
    table.load([cluster(real, n, weighted)])
    benchmark.group = f"pick x{BATCH} {policy}"
    keys = KEYS if real in ("RING_HASH", "MAGLEV") else None
    if impl == "native-batch":
        if keys:
            pytest.skip("a batch pick shares one key; hashed picks are per key")
        out = benchmark(table.pick_counts, "c", BATCH)
        assert sum(out.values()) == BATCH
        return
    if impl == "native":
        if keys:
            picks = benchmark(lambda: [table.pick("c", k) for k in keys])
        else:
            picks = benchmark(lambda: [table.pick("c") for _ in range(BATCH)])
        assert len(picks) == BATCH
        return
    hosts = [addr(i) for i in range(n)]
    weights = [1 + i % 4 if weighted else 1 for i in range(n)]
    if real == "ROUND_ROBIN":
        edf = EdfScheduler(weights)
        picks = benchmark(lambda: [hosts[edf.pick()] for _ in range(BATCH)])
    elif real == "RING_HASH":
        ring = RingHash(hosts, weights)
        picks = benchmark(lambda: [hosts[ring.pick(xxh64(k.encode()))] for k in KEYS])
        native = [table.pick("c", k) for k in KEYS]
        assert picks == native  # same ring, same answers
    else:
        mt = maglev_table(hosts, weights)
        picks = benchmark(lambda: [hosts[mt[xxh64(k.encode()) % len(mt)]] for k in KEYS])
        assert picks == [table.pick("c", k) for k in KEYS]
    assert len(picks) == BATCH


class _RefTable:
    """The reference 'build': validate endpoints and lay out host lists
    per priority and health, in plain Python."""

    def __init__(self, clusters: list[dict[str, Any]]):
        self.hosts: dict[str, list[str]] = {}
        for c in clusters:
            out = []
            seen = set()
            for g in c["load_assignment"]["endpoints"]:
                for e in g["lb_endpoints"]:
                    sa = e["endpoint"]["address"]["socket_address"]
                    a = f"{sa['address']}:{sa['port_value']}"
                    if a in seen:
                        raise ValueError(a)
                    seen.add(a)
                    if e.get("health_status", "UNKNOWN") in ("UNKNOWN", "HEALTHY"):
                        out.append(a)
            self.hosts[c["name"]] = out


@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("n", SIZES)
def test_build_round_robin(benchmark: Any, n: int, impl: str) -> None:
    clusters = [cluster("ROUND_ROBIN", n)]
    benchmark.group = f"build ROUND_ROBIN {n:>6,} endpoints (from dicts)"
    rounds = 3 if n >= 10_000 else 10
    if impl == "native":

        def build() -> LbTable:
            t = LbTable(seed=1)
            t.load(clusters)
            return t

        t = benchmark.pedantic(build, rounds=rounds)
        assert t.cluster_info("c")["endpoints"] == n
    else:
        ref = benchmark.pedantic(_RefTable, args=(clusters,), rounds=rounds)
        assert len(ref.hosts["c"]) == n


@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("policy", ["MAGLEV", "RING_HASH"])
def test_build_hash_table_100(benchmark: Any, policy: str, impl: str) -> None:
    clusters = [cluster(policy, 100)]
    hosts = [addr(i) for i in range(100)]
    benchmark.group = f"build {policy} 100 hosts"
    if impl == "native":

        def build() -> LbTable:
            t = LbTable(seed=1)
            t.load(clusters)
            return t

        benchmark.pedantic(build, rounds=5 if SHORT else 20)
    elif policy == "MAGLEV":
        benchmark.pedantic(maglev_table, args=(hosts, [1] * 100), rounds=1)
    else:
        benchmark.pedantic(RingHash, args=(hosts, [1] * 100), rounds=3)


REDIRECT = {
    "services": [
        {"address": f"10.96.{i >> 8}.{i & 255}", "port": 80 + i % 3, "cluster": f"outbound|{80 + i % 3}||svc-{i}"}
        for i in range(1_000)
    ],
    "include_ip_ranges": ["10.0.0.0/8", "172.16.0.0/12"],
    "exclude_ip_ranges": ["10.96.250.0/24", "10.1.2.3/32"],
    "exclude_ports": [22, 15090],
}


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_classify(benchmark: Any, impl: str) -> None:
    rnd = random.Random(3)
    dests = []
    for _ in range(BATCH):
        i = rnd.randrange(1_000)
        dests.append(
            rnd.choice(
                [(f"10.96.{i >> 8}.{i & 255}", 80 + i % 3), (f"10.20.0.{i & 255}", 443), (f"192.168.0.{i & 255}", 80)]
            )
        )
    benchmark.group = f"classify x{BATCH} (1,000 services)"
    table = RedirectTable.from_dict(REDIRECT)
    if impl == "native":
        out = benchmark(lambda: [table.classify(ip, p) for ip, p in dests])
    else:
        services = [(s["address"], s["port"], s["cluster"]) for s in REDIRECT["services"]]
        inc, exc, ports = REDIRECT["include_ip_ranges"], REDIRECT["exclude_ip_ranges"], REDIRECT["exclude_ports"]
        out = benchmark.pedantic(
            lambda: [classify(services, inc, exc, ports, ip, p) for ip, p in dests], rounds=1 if SHORT else 3
        )
        assert out == [table.classify(ip, p) for ip, p in dests]
    assert len(out) == BATCH


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_disruption_one_of_100(policy: str) -> None:
    """Not timed: keys moved when one of 100 endpoints is removed, over the optimum."""
    full = LbTable(seed=1)
    full.load([cluster(policy, 100)])
    keys = [f"k{i}" for i in range(20_000)]
    before = [full.pick("c", k) for k in keys]
    ratios = []
    for removed in range(0, 100, 10):
        c = cluster(policy, 100)
        del c["load_assignment"]["endpoints"][0]["lb_endpoints"][removed]
        t = LbTable(seed=1)
        t.load([c])
        after = [t.pick("c", k) for k in keys]
        moved = [b for a, b in zip(after, before, strict=True) if a != b]
        if policy == "RING_HASH":
            # Nearly minimal: the removed endpoint's keys move (how many that
            # is depends on its arcs: +-30% with Envoy's default 1,024-entry
            # ring and 100 hosts), plus the odd entry that Envoy's
            # floating-point running totals hand to a neighbour.
            assert sum(m == addr(removed) for m in moved) >= 0.8 * len(moved)
        ratios.append(len(moved) / len(keys) / 0.01)
    mean = sum(ratios) / len(ratios)
    print(f"\ndisruption {policy} 1 of 100: {mean:.2f}x the optimum (worst {max(ratios):.2f}x)")
    # Maglev moves more than the minimum by design (Envoy's docs: about twice).
    assert mean <= (1.5 if policy == "RING_HASH" else 2.0)
