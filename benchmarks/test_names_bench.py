"""Name table benchmarks: the native table beside the pure-Python reference
model (tests/support/oracles/names.py), same inputs, same process.

Groups pair `native` with `reference`; compare medians within a group.
Short mode (PYMESH_BENCH_SHORT=1, CI): 1k and 100k names; full: also 1M."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from conftest import SHORT
from meshgen import NAMESPACE, SEARCH, entries, queries

from pymesh import LiveNameTable, NameTable
from support.oracles.names import OracleNameTable

SIZES = [1_000, 100_000] if SHORT else [1_000, 100_000, 1_000_000]
BATCH = 1_000
_cache: dict[int, tuple[list[dict[str, Any]], NameTable, OracleNameTable]] = {}


def tables(n: int) -> tuple[list[dict[str, Any]], NameTable, OracleNameTable]:
    if n not in _cache:
        es = entries(n)
        native = NameTable.from_entries(es, namespace=NAMESPACE, search=SEARCH)
        ref = OracleNameTable(es, namespace=NAMESPACE, search=SEARCH)
        _cache.clear()  # keep one size alive at a time (1M of each is large)
        _cache[n] = (es, native, ref)
    return _cache[n]


@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("n", SIZES)
def test_build(benchmark: Any, n: int, impl: str) -> None:
    es = tables(n)[0]
    benchmark.group = f"build {n:>9,} names"
    if impl == "native":
        t = benchmark.pedantic(NameTable.from_entries, args=(es,), kwargs={"namespace": NAMESPACE, "search": SEARCH},
                               rounds=3 if n >= 100_000 else 10)  # fmt: skip
    else:
        t = benchmark.pedantic(
            OracleNameTable, args=(es, NAMESPACE, "cluster.local", SEARCH), rounds=1 if n >= 100_000 else 5
        )
    assert len(t) == n


@pytest.mark.parametrize("impl", ["native", "native-one-by-one", "reference"])
@pytest.mark.parametrize("mix", ["fqdn", "short", "search", "miss"])
@pytest.mark.parametrize("n", SIZES)
def test_lookup_batch(benchmark: Any, n: int, mix: str, impl: str) -> None:
    """1,000 lookups per round, answers as address tuples (None if unknown)."""
    _, native, ref = tables(n)
    names = queries(n, BATCH)[mix]
    benchmark.group = f"lookup x{BATCH} {mix:>6} @ {n:>9,} names"
    if impl == "native":
        out = benchmark(native.lookup_many, names)
    elif impl == "native-one-by-one":
        out = benchmark(lambda: [native.lookup(q) for q in names])
    else:

        def run() -> list[Any]:
            return [None if (r := ref.lookup(q)) is None else r[3] for q in names]

        out = benchmark(run)
    assert (out.count(None) == BATCH) == (mix == "miss")


def test_lookup_while_rebuilding(benchmark: Any) -> None:
    """Batch lookups on a live table while another thread keeps building
    100k-name tables and swapping them in (the build releases the GIL)."""
    n = 100_000
    es, native, _ = tables(n)
    live = LiveNameTable(native)
    names = queries(n, BATCH)["fqdn"]
    stop = threading.Event()
    swaps = 0

    def rebuild() -> None:
        nonlocal swaps
        while not stop.is_set():
            live.swap(NameTable.from_entries(es, namespace=NAMESPACE, search=SEARCH))
            swaps += 1

    th = threading.Thread(target=rebuild)
    th.start()
    try:
        benchmark.group = f"lookup x{BATCH} during rebuilds @ {n:,} names"
        out = benchmark(live.lookup_many, names)
    finally:
        stop.set()
        th.join()
    assert None not in out and swaps >= 1
    benchmark.extra_info["swaps"] = swaps


@pytest.mark.parametrize("n", SIZES)
def test_bytes_per_entry(benchmark: Any, n: int) -> None:
    """Heap bytes per entry beyond the names' own bytes (reported, not timed)."""
    native = tables(n)[1]
    total, names = native.heap_bytes
    benchmark.group = "memory"
    benchmark.extra_info["bytes_per_entry_beyond_names"] = round((total - names) / n, 1)
    benchmark.extra_info["name_bytes_per_entry"] = round(names / n, 1)
    benchmark.pedantic(lambda: native.heap_bytes, rounds=1)
    assert (total - names) / n < 150
