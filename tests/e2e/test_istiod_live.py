"""The VM agent (``pymesh agent``, a real process) against a real istiod.

Needs Istio's pilot-discovery built from source at a release tag
(``scripts/istiod/build.sh DIR 1.29.0``, docs/istiod-interop.md §1) and
named by PYMESH_ISTIOD; CI does not build it (5-6 minutes and 2.4 GB), so
there the replayed responses of tests/unit/test_istiod_replay.py stand in.
``scripts/istiod/record.py live`` runs istiod from the scenario's files
without Kubernetes and the agent against it over plaintext (15010), then
reports the agent's NACKs, its DNS answers, its status and istiod's fate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.paths import ROOT

ISTIOD = os.environ.get("PYMESH_ISTIOD", "")
pytestmark = pytest.mark.skipif(not ISTIOD, reason="PYMESH_ISTIOD (a pilot-discovery binary) is not set")
RECORD = ROOT / "scripts" / "istiod" / "record.py"


def live(tmp: Path, scenario: str, *extra: str, duration: float = 8) -> dict[str, Any]:
    out = tmp / scenario
    argv = [sys.executable, str(RECORD), "live", "--istiod", ISTIOD, "--scenario", scenario, "--out", str(out)]
    p = subprocess.run([*argv, "--duration", str(duration), *extra], capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    result: dict[str, Any] = json.loads((out / "result.json").read_text())
    return result


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("scenario", "mode"), [("plain", "PERMISSIVE"), ("strict", "STRICT"), ("autoalloc", None)])
def test_the_agent_joins_istiod_without_a_nack(tmp_path: Path, scenario: str, mode: str | None) -> None:
    r = live(tmp_path, scenario)
    assert r["nacks"] == [] and r["istiod_nacks"] == [], (r["nacks"], r["istiod_nacks"])
    st = r["status"]
    assert st["xds"] == "connected" and st["stats"]["nacks"] == 0
    assert len(st["versions"]) == 5  # CDS, EDS, LDS, RDS, NDS all applied
    assert r["dns"]["product.default.svc.cluster.local"] == ["10.96.0.20"]
    assert st["clusters"] >= 6 and st["endpoints"] >= 2
    if mode is not None:
        assert st["peer_authentication"] == mode
    assert r["istiod_alive"] and r["agent_exit"] == 0


@pytest.mark.timeout(300)
def test_the_agent_survives_istiod_dropping_the_stream_on_a_health_report(tmp_path: Path) -> None:
    """istiod 1.29.0 without Kubernetes dies of a nil pointer on a health report
    (docs/istiod-interop.md §6): the agent keeps serving what it has."""
    r = live(tmp_path, "plain", "--probe", "exec")
    assert r["istiod_panic"] is not None and not r["istiod_alive"]
    assert r["dns"]["product.default.svc.cluster.local"] == ["10.96.0.20"]  # served on, from its tables
    assert r["agent_exit"] == 0


@pytest.mark.timeout(300)
def test_health_reports_reach_istiod_with_its_workaround(tmp_path: Path) -> None:
    r = live(tmp_path, "plain", "--probe", "exec", "--env", "PILOT_ENABLE_WORKLOAD_ENTRY_HEALTHCHECKS=false")
    st = r["status"]
    assert r["istiod_alive"] and r["istiod_panic"] is None
    assert st["stats"]["health_reports"] >= 1 and st["health"] == [True, ""]
    assert r["nacks"] == []
