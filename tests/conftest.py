"""Shared test setup: Hypothesis profiles (``fast`` by default, ``slow`` with
PYMESH_HYPOTHESIS=slow), the tier markers (tests/README.md: every test under
tests/netns is marked ``netns``, every test under tests/e2e ``e2e``) and the
``shared_dir`` and ``etcd`` fixtures."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from support.etcd import EtcdCluster
from support.paths import TESTS

settings.register_profile("fast", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("PYMESH_HYPOTHESIS", "fast"))

# The folder a test lives in gives its tier marker.
TIER_MARKS = {"netns": pytest.mark.netns, "e2e": pytest.mark.e2e, "hostile": pytest.mark.hostile}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            tier = item.path.relative_to(TESTS).parts[0]
        except ValueError:
            continue  # not under tests/
        mark = TIER_MARKS.get(tier)
        if mark is not None:
            item.add_marker(mark)
            # Run in parallel (pytest-xdist, ``--dist loadgroup``), these tiers still run one at
            # a time on one worker: they share fixed namespace names, addresses and ports, and
            # the floods and timings of one would be another's noise.
            item.add_marker(pytest.mark.xdist_group("serial"))


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A temporary directory other users can read: the agent's and the application's uids
    in the namespace tests (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="pymesh-test-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    """A real 3-member etcd on loopback ports (tests/support/etcd.py), one per test module."""
    c = EtcdCluster().start()
    yield c
    c.stop()
