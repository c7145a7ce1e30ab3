"""Control-plane replicas on one etcd prefix, as real ``pymesh controlplane`` processes
(tests/unit/test_controlplane_replicas.py, test_controlplane_failover.py,
tests/e2e/test_replicas_faults.py): started, their ``/debug/status`` read, killed or stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from support.cp import pymesh_cli
from support.procs import reap

TTL = 3  # --lease-ttl (etcd's minimum is 2 s)
GRACE = 3.0  # --grace-period


class Replica:
    """One ``pymesh controlplane`` process on the shared store ``url``."""

    def __init__(
        self,
        name: str,
        url: str,
        cfg: Path,
        tmp: Path,
        *extra: str,
        listen: str = "127.0.0.1:0",
        ttl: int = TTL,
        grace: float = GRACE,
    ) -> None:
        self.name = name
        self.log = tmp / f"{name}.log"
        argv = [
            *pymesh_cli(), "controlplane", "--config", str(cfg), "--xds-listen", listen,
            "--data-dir", str(tmp / name), "--store", url, "--grace-period", str(grace),
            "--lease-ttl", str(ttl), "--debounce", "0.05", "--monitoring-listen", "127.0.0.1:0", *extra,
        ]  # fmt: skip
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
        assert self.proc.stdout is not None
        lines = {}
        for _ in range(2):
            line = self.proc.stdout.readline()
            assert line, f"replica {name} exited: {self.log.read_text()[-3000:]}"
            kind, addr = line.split()
            lines[kind] = addr
        self.address = lines["xds"]
        self.port = int(self.address.rsplit(":", 1)[1])
        self.monitoring = lines["monitoring"]

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://{self.monitoring}{path}", timeout=5) as r:
            body: bytes = r.read()
        return body

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.get("/debug/status"))
        return doc

    def replica(self) -> dict[str, Any]:
        got: dict[str, Any] = self.status()["replica"]
        return got

    def connections(self) -> int:
        try:
            return int(self.status()["xds"]["connections"])
        except OSError:
            return -1

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        reap(self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        reap(self.proc)
