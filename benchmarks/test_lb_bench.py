"""lbtable benchmarks through Python: the native table beside pure-Python
reference implementations (tests/support/oracles/lb.py), same inputs, same process.

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

from pymesh import LbTable, RedirectTable
from support.oracles.lb import EdfScheduler, RingHash, classify, maglev_table, xxh64

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


# A batch pick (``pick_counts``) shares one hash key, so it is measured for the
# unhashed policies only; hashed picks are timed per key.
PICK_CASES = [
    (policy, impl)
    for policy in ("ROUND_ROBIN", "ROUND_ROBIN_WEIGHTED", "RING_HASH", "MAGLEV")
    for impl in ("native-batch", "native", "reference")
    if not (impl == "native-batch" and policy in ("RING_HASH", "MAGLEV"))
]


@pytest.mark.parametrize(("policy", "impl"), PICK_CASES)
def test_pick(benchmark: Any, policy: str, impl: str) -> None:
    weighted = policy.endswith("_WEIGHTED")
    real = policy.removesuffix("_WEIGHTED")
    n = 100
    table = LbTable(seed=1)
    table.load([cluster(real, n, weighted)])
    benchmark.group = f"pick x{BATCH} {policy}"
    keys = KEYS if real in ("RING_HASH", "MAGLEV") else None
    if impl == "native-batch":
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


def envoy_host(i: int) -> str:
    """Hosts named like Envoy's HostLoss benchmark (`tcp://10.0.x.y:6379`)."""
    return f"10.0.{i // 256}.{i % 256}:6379"


# (policy, hosts, extra Cluster fields, bound per removal, bound on the mean)
# on the exact figure (Maglev: every slot; ring hash: 200k uniform hashes).
DISRUPTION: list[tuple[str, int, dict[str, Any], float, float]] = [
    # Envoy's default ring: 11 entries per host, only the removed host's keys
    # move but 11 arcs vary by 30%: 0.6x-2.3x per removal.
    ("RING_HASH", 100, {}, 2.5, 1.5),
    # Envoy's HostLoss configuration (500 hosts, min ring 64K): only the
    # removed host's keys move; its arcs vary by 1/sqrt(132) = 8.7%. Envoy's
    # own case (the last host) is checked against 1.2x below.
    ("RING_HASH", 500, {"ring_hash_lb_config": {"minimum_ring_size": 65536}}, 1.35, 1.1),
    # Maglev moves more than the removed host's keys; a larger (prime)
    # table_size brings it within the 1.2x.
    ("MAGLEV", 100, {}, 2.0, 2.0),
    ("MAGLEV", 100, {"maglev_lb_config": {"table_size": 655_373}}, 1.2, 1.2),
]


def _disruption_cluster(policy: str, hosts: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    eps = [
        {"endpoint": {"address": {"socket_address": {"address": h.split(":")[0], "port_value": 6379}}}} for h in hosts
    ]
    return {"name": "c", "lb_policy": policy, "load_assignment": {"endpoints": [{"lb_endpoints": eps}]}, **extra}


@pytest.mark.parametrize(("policy", "n", "extra", "bound", "mean_bound"), DISRUPTION)
def test_disruption(policy: str, n: int, extra: dict[str, Any], bound: float, mean_bound: float) -> None:
    """Not timed: keys moved when one of `n` endpoints is removed, over the
    optimum (1/n, Envoy's host_loss_over_N_optimal), per removal. The
    reference (tests/support/oracles/lb.py, pure Python) computes the exact figure
    from its own tables; the native table answers every sampled key exactly
    as the reference does (before and after each removal), so the figure is
    the native table's too. Both are timed and printed side by side."""
    import time

    hosts = [envoy_host(i) for i in range(n)]
    removals = [n - 1, *range(0, n, n // (4 if SHORT else 10))]
    sample = [f"key-{k}" for k in range(5_000 if SHORT else 20_000)]
    sample_h = [xxh64(k.encode()) for k in sample]
    m = extra.get("maglev_lb_config", {}).get("table_size", 65537)
    ring_min = extra.get("ring_hash_lb_config", {}).get("minimum_ring_size", 1024)
    rnd = random.Random(7)
    uniform = [rnd.getrandbits(64) for _ in range(200_000)] if policy == "RING_HASH" else []

    def reference(hs: list[str]) -> tuple[list[str], list[str]]:
        """(host of every exact key, host of every sampled key)."""
        if policy == "MAGLEV":
            t = maglev_table(hs, [1] * len(hs), m)
            return [hs[i] for i in t], [hs[t[h % m]] for h in sample_h]
        ring = RingHash(hs, [1] * len(hs), ring_min)
        return [hs[ring.pick(h)] for h in uniform], [hs[ring.pick(h)] for h in sample_h]

    def native(hs: list[str]) -> list[str | None]:
        t = LbTable(seed=1)
        t.load([_disruption_cluster(policy, hs, extra)])
        return [t.pick("c", k) for k in sample]

    t_ref = t_nat = 0.0
    start = time.perf_counter()
    exact_before, ref_sample_before = reference(hosts)
    t_ref += time.perf_counter() - start
    start = time.perf_counter()
    nat_before = native(hosts)
    t_nat += time.perf_counter() - start
    assert nat_before == ref_sample_before
    exact, sampled = [], []
    for r in removals:
        fewer = hosts[:r] + hosts[r + 1 :]
        start = time.perf_counter()
        exact_after, ref_sample_after = reference(fewer)
        t_ref += time.perf_counter() - start
        start = time.perf_counter()
        nat_after = native(fewer)
        t_nat += time.perf_counter() - start
        assert nat_after == ref_sample_after, f"native and reference tables differ after removing #{r}"
        exact.append(sum(a != b for a, b in zip(exact_before, exact_after, strict=True)) / len(exact_before) * n)
        sampled.append(sum(a != b for a, b in zip(nat_before, nat_after, strict=True)) / len(sample) * n)
    mean = sum(exact) / len(exact)
    label = f"{policy} {n} hosts {extra or 'defaults'}"
    print(
        f"\ndisruption {label}: removing the last host {exact[0]:.2f}x; one of {len(exact) - 1} spread hosts "
        f"{min(exact[1:]):.2f}x-{max(exact[1:]):.2f}x, mean {mean:.2f}x the optimum (reference, exact; "
        f"{t_ref:.2f} s) | native on {len(sample):,} keys: mean {sum(sampled) / len(sampled):.2f}x ({t_nat:.2f} s)"
    )
    for r, x in zip(removals, exact, strict=True):
        assert x <= bound, f"{label}: removing #{r} moved {x:.3f}x the optimum"
    assert mean <= mean_bound
    if policy == "RING_HASH" and n == 500:
        assert exact[0] <= 1.2, f"Envoy's HostLoss case (the last of 500 hosts): {exact[0]:.3f}x"
