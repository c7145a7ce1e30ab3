"""A real Prometheus server (Debian's ``prometheus`` package, run as a plain
process, never as the packaged service) scraping the endpoints a test names,
and its HTTP API (``/api/v1/query``) to read back what it stored.

Needs the ``prometheus`` binary (``scripts/install-system-deps.sh``): without
it a test is skipped with the reason, or fails when PYMESH_REQUIRE_ROOT_TESTS
is set (CI)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from support.ports import free_port
from support.procs import reap
from support.system import require_tools
from support.wait import wait_until

SCRAPE_INTERVAL = "1s"


class Prometheus:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    def _get(self, path: str, **params: str) -> Any:
        q = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{q}", timeout=5) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now: ``[{"metric": labels, "value": [t, "v"]}]``."""
        data = self._get("/api/v1/query", query=expr)
        if data["resultType"] != "vector":
            raise AssertionError(f"{expr}: a {data['resultType']}, not a vector")
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The value of ``expr`` when it is exactly one series, None when it is none."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise AssertionError(f"{expr}: {len(result)} series: {result}")
        return float(result[0]["value"][1])

    def wait_value(self, expr: str, expected: float, timeout: float = 20.0) -> None:
        """Waits until ``expr`` is ``expected`` (scrapes are every second); the last value seen on failure."""
        seen: list[float | None] = []

        def ok() -> bool:
            seen.append(self.value(expr))
            return seen[-1] == expected

        try:
            wait_until(ok, timeout=timeout, interval=0.25)
        except AssertionError:
            raise AssertionError(f"{expr}: expected {expected}, last seen {seen[-1:]}\n{self.targets()}") from None

    def targets(self) -> list[dict[str, Any]]:
        """The scrape targets with their health and last error."""
        active: list[dict[str, Any]] = self._get("/api/v1/targets")["activeTargets"]
        return [{k: t.get(k) for k in ("scrapeUrl", "health", "lastError", "labels")} for t in active]


def _config(jobs: Mapping[str, tuple[str, str]]) -> str:
    lines = [
        "global:",
        f"  scrape_interval: {SCRAPE_INTERVAL}",
        f"  scrape_timeout: {SCRAPE_INTERVAL}",
        "scrape_configs:",
    ]
    for job, (address, path) in jobs.items():
        lines += [
            f"  - job_name: {json.dumps(job)}",
            f"    metrics_path: {json.dumps(path)}",
            "    static_configs:",
            f"      - targets: [{json.dumps(address)}]",
        ]
    return "\n".join(lines) + "\n"


@contextmanager
def prometheus(tmp: Path, jobs: Mapping[str, tuple[str, str]]) -> Iterator[Prometheus]:
    """Prometheus scraping every ``job -> (host:port, path)`` each second, on a loopback port,
    its data in ``tmp``; stopped (and its data left in ``tmp``) on exit."""
    require_tools("prometheus")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "prometheus.yml").write_text(_config(jobs))
    port = free_port("127.0.0.1")
    log = tmp / "prometheus.log"
    exe = shutil.which("prometheus")
    assert exe is not None
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                exe,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", log)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited ({proc.returncode}): {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=1) as r:
                    return bool(r.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        wait_until(ready, timeout=30, interval=0.1)
        yield server
    finally:
        proc.terminate()
        if reap(proc, 10) is None:
            raise AssertionError("prometheus did not stop")
