"""Benchmark setup: sizes follow PYMESH_BENCH_SHORT (CI) or full mode.

The pure-Python reference models the benchmarks race against are the tests' oracles, in the
``support`` package (tests/support/oracles): pyproject's pytest ``pythonpath`` makes it
importable here as in the tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHORT = os.environ.get("PYMESH_BENCH_SHORT") == "1"
HERE = Path(__file__).resolve().parent
# pyproject's per-test timeout (pytest-timeout) is for tests; a full-mode benchmark (a million
# names through the pure-Python reference, say) legitimately runs longer.
TIMEOUT = 300 if SHORT else 1800


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.timeout(TIMEOUT))
