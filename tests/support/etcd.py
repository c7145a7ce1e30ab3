"""A real local 3-member etcd cluster for the store tests.

Debian's ``etcd-server`` (``/usr/bin/etcd``, 3.4) run as three processes on free loopback ports,
never as the packaged system service: the pattern of etcd's own ``Procfile`` and
https://etcd.io/docs/v3.4/dev-guide/local_cluster/. Data directories go to /dev/shm when it
exists and members run with ``--unsafe-no-fsync`` (test-only), so the tests do no disk I/O
that other work on the machine would feel. Election and heartbeat stay at etcd's defaults:
lower values cause spurious elections on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from support.ports import free_port
from support.procs import reap
from support.system import require_tools

ETCD = "etcd"


class EtcdCluster:
    def __init__(self, size: int = 3) -> None:
        require_tools(ETCD)
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.dir = Path(tempfile.mkdtemp(prefix="pymesh-etcd-", dir=base))
        self.names = [f"m{i}" for i in range(size)]
        self.client_ports = [free_port() for _ in self.names]
        self.peer_ports = [free_port() for _ in self.names]
        self.procs: list[subprocess.Popen[Any] | None] = [None] * size
        self.token = f"pymesh-{os.getpid()}-{self.client_ports[0]}"

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    def url(self, prefix: str = "") -> str:
        return "etcd://" + ",".join(self.endpoints) + prefix

    def _args(self, i: int) -> list[str]:
        cluster = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports, strict=True))
        client = f"http://127.0.0.1:{self.client_ports[i]}"
        peer = f"http://127.0.0.1:{self.peer_ports[i]}"
        return [
            ETCD,
            "--name", self.names[i],
            "--data-dir", str(self.dir / self.names[i]),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", cluster,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",  # ignored once the data directory exists (restarts)
            "--unsafe-no-fsync",
            "--logger", "zap",
            "--log-outputs", str(self.dir / f"{self.names[i]}.log"),
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        for i in range(len(self.names)):
            self.start_member(i, wait=False)
        self.wait_healthy(range(len(self.names)), timeout)
        return self

    def start_member(self, i: int, *, wait: bool = True, timeout: float = 30.0) -> None:
        assert self.procs[i] is None or self.procs[i].poll() is not None  # type: ignore[union-attr]
        self.procs[i] = subprocess.Popen(
            self._args(i), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if wait:
            self.wait_healthy([i], timeout)

    def kill(self, i: int) -> None:
        p = self.procs[i]
        if p is not None:
            reap(p)
            self.procs[i] = None

    def healthy(self, i: int) -> bool:
        """etcd's /health: true when the member has a leader and can serve (etcdserver/api/etcdhttp)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.client_ports[i]}/health", timeout=2) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def wait_healthy(self, members: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(members)
        while pending:
            for i in list(pending):
                p = self.procs[i]
                if p is not None and p.poll() is not None:
                    raise RuntimeError(f"etcd member {self.names[i]} exited {p.returncode}: {self.log(i)[-2000:]}")
                if self.healthy(i):
                    pending.remove(i)
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"etcd members {[self.names[i] for i in pending]} not healthy in {timeout}s")
            if pending:
                time.sleep(0.1)

    def leader(self) -> int:
        """The index of the member that leads, by the gateway's maintenance status (the member's
        own id in ``header.member_id``, the leader's in ``leader``)."""
        for i, port in enumerate(self.client_ports):
            if self.procs[i] is None:
                continue
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v3/maintenance/status", data=b"{}", method="POST")
            try:
                with urllib.request.urlopen(req, timeout=2) as r:
                    doc = json.loads(r.read())
            except (OSError, ValueError):
                continue
            leader = doc.get("leader")
            if leader and leader != "0":
                return self._index_of(leader, doc["header"]["member_id"], i)
        raise RuntimeError("no etcd member knows a leader")

    def _index_of(self, member_id: str, asked_id: str, asked: int) -> int:
        if member_id == asked_id:
            return asked
        for i, port in enumerate(self.client_ports):
            if self.procs[i] is None or i == asked:
                continue
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v3/maintenance/status", data=b"{}", method="POST")
            with urllib.request.urlopen(req, timeout=2) as r:
                if json.loads(r.read())["header"]["member_id"] == member_id:
                    return i
        raise RuntimeError(f"etcd leader {member_id} is none of the running members")

    def log(self, i: int) -> str:
        try:
            return (self.dir / f"{self.names[i]}.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        for i in range(len(self.names)):
            self.kill(i)
        shutil.rmtree(self.dir, ignore_errors=True)
