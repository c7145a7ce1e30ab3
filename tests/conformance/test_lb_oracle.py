"""The native load balancer against the pure-Python oracle (tests/support/oracles/lb.py):
the hash key is xxHash64, the Maglev and ring-hash tables are the oracle's, and the
priority-load arithmetic agrees on random host counts (Hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pymesh import load_clusters
from pymesh.lbtable import lb_hash_key, lb_priority_load
from support.lb import cluster, ep
from support.oracles.lb import RingHash, maglev_counts, priority_load, xxh64


def test_hash_key_is_xxhash64_and_stable() -> None:
    assert lb_hash_key("user-1") == xxh64(b"user-1") == lb_hash_key(b"user-1")
    eps = [ep(f"10.1.0.{i}:8080") for i in range(1, 20)]
    a = load_clusters([cluster("m", "MAGLEV", eps)], seed=1)
    b = load_clusters([cluster("m", "MAGLEV", list(reversed(eps)))], seed=2)
    assert all(a.pick("m", f"k{i}") == b.pick("m", f"k{i}") for i in range(500))


def test_maglev_and_ring_tables_equal_the_oracle() -> None:
    keys = [f"10.3.0.{i}:80" for i in range(1, 8)]
    weights = [1, 1, 2, 3, 1, 5, 2]
    t = load_clusters([cluster("m", "MAGLEV", [ep(k, w) for k, w in zip(keys, weights, strict=True)])])
    native = t.table_entries("m")
    assert native == dict(zip(keys, maglev_counts(keys, weights), strict=True))
    t = load_clusters([cluster("r", "RING_HASH", [ep(k, w) for k, w in zip(keys, weights, strict=True)])])
    ring = RingHash(keys, weights)
    for i in range(2000):
        h = lb_hash_key(f"key-{i}")
        assert t.pick("r", f"key-{i}") == keys[ring.pick(h)]


@given(
    st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(0, 40)).map(
            lambda t: (t[0] + t[1] + t[2], t[1], t[2])
        ),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from([100, 140, 200, 1000]),
    st.integers(0, 100),
)
def test_priority_load_matches_oracle(counts: list[tuple[int, int, int]], opf: int, threshold: int) -> None:
    got = lb_priority_load(counts, overprovisioning_factor=opf, panic_threshold=threshold)
    want = priority_load(counts, opf, threshold)
    assert got == want
    assert sum(got["healthy"]) + sum(got["degraded"]) == 100
