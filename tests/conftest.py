"""Shared test setup: Hypothesis profiles (``fast`` by default, ``slow`` with
PYMESH_HYPOTHESIS=slow), the tier markers (tests/README.md: every test under
tests/netns is marked ``netns``, every test under tests/e2e ``e2e``) and the
``shared_dir`` fixture."""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from support.paths import TESTS

settings.register_profile("fast", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("PYMESH_HYPOTHESIS", "fast"))

# The folder a test lives in gives its tier marker.
TIER_MARKS = {"netns": pytest.mark.netns, "e2e": pytest.mark.e2e, "hostile": pytest.mark.hostile}


# pymesh/relay/pytls.py leaks: _LoopThread.stop() stops its asyncio loop but never closes it, nor
# the transports and StreamWriters of the connections it cancels, so the loop, its self-pipe
# (an AF_UNIX socketpair) and those sockets are left to the garbage collector, whose
# ResourceWarnings are errors here. Production code these tests may not change: until it is
# fixed, a test that runs InboundMtls or MtlsOriginator in-process is marked `pytls_leaks`, which
# ignores exactly these warnings for that test and collects its garbage before it ends (so none
# is left for a later, unmarked test to trip over). Remove with the fix.
PYTLS_LEAKS = [
    "ignore:unclosed event loop:ResourceWarning",
    "ignore:unclosed transport:ResourceWarning",
    "ignore:unclosed <StreamWriter:ResourceWarning",
    "ignore:unclosed <socket.socket:ResourceWarning",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("pytls_leaks") is not None:
            for f in PYTLS_LEAKS:
                item.add_marker(pytest.mark.filterwarnings(f))
        try:
            tier = item.path.relative_to(TESTS).parts[0]
        except ValueError:
            continue  # not under tests/
        mark = TIER_MARKS.get(tier)
        if mark is not None:
            item.add_marker(mark)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    try:
        return (yield)
    finally:
        if item.get_closest_marker("pytls_leaks") is not None:
            # After teardown, once pytest dropped the test's fixture values, and still inside
            # the test's warning filters (the warnings plugin wraps this hook from outside).
            gc.collect()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A temporary directory other users can read: the agent's and the application's uids
    in the namespace tests (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="pymesh-test-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)
