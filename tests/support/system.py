"""What a test needs from the host, and what happens when the host lacks it.

A test that needs root, a capability or a system tool calls :func:`require_root`,
:func:`require_tools` or :func:`require_module` first. When the need is not met it is
skipped with the reason, unless PYMESH_REQUIRE_ROOT_TESTS is set (CI sets it, through
``make test-python``): then it fails, so no skipped test hides a missing feature in CI.
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import NoReturn

import pytest

REQUIRE_ENV = "PYMESH_REQUIRE_ROOT_TESTS"
INSTALL_HINT = "run scripts/install-system-deps.sh"
# capabilities(7): what `ip netns add/exec` (mounts, setns) and the capture rules need.
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21


def required() -> bool:
    """Whether a test that cannot run here must fail rather than skip."""
    return os.environ.get(REQUIRE_ENV, "") != ""


def unavailable(reason: str) -> NoReturn:
    """Skips the test with ``reason``; fails it instead when PYMESH_REQUIRE_ROOT_TESTS is set."""
    if required():
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set: this test must run here)", pytrace=False)
    pytest.skip(reason)


def _effective_caps() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def require_root(why: str) -> None:
    """Root with CAP_NET_ADMIN and CAP_SYS_ADMIN (a container may give root without them)."""
    if os.geteuid() != 0:
        unavailable(f"{why}: needs root")
    caps = _effective_caps()
    missing = [
        name
        for name, bit in (("CAP_NET_ADMIN", CAP_NET_ADMIN), ("CAP_SYS_ADMIN", CAP_SYS_ADMIN))
        if not caps >> bit & 1
    ]
    if missing:
        unavailable(f"{why}: root here lacks {', '.join(missing)}")


def require_tools(*tools: str) -> None:
    """Every one of ``tools`` on PATH."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        unavailable(f"missing tools {missing}: {INSTALL_HINT}")


def require_module(name: str, why: str) -> ModuleType:
    """The Python module ``name`` (a test dependency that is not pymesh's)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        unavailable(f"cannot import {name}: {why}")
