"""Control-plane replicas on one etcd prefix, as real ``pymesh controlplane`` processes
(tests/unit/test_controlplane_replicas.py, test_controlplane_failover.py,
tests/e2e/test_replicas_faults.py): started, their ``/debug/status`` read, killed or stopped;
a set of them on a fresh prefix with the store they share."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from pymesh.controlplane.backend import open_store
from pymesh.controlplane.etcdstore import EtcdStore
from support.cp import example_config, pymesh_cli
from support.etcd import EtcdCluster
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


_prefixes = itertools.count()


class ReplicaSet:
    """Replicas (``start``) sharing a fresh prefix ``/pymesh/<name>-N`` of ``etcd`` and one mesh
    configuration (``example_config`` on ``port``), and the store they share, as the test reads it."""

    def __init__(self, etcd: EtcdCluster, tmp: Path, port: int, name: str) -> None:
        self.url = etcd.url(f"/pymesh/{name}-{next(_prefixes)}")
        self.cfg = example_config(tmp / "mesh", port)
        self.tmp = tmp
        self.replicas: list[Replica] = []
        store = open_store(self.url)
        assert isinstance(store, EtcdStore)
        self.store = store

    def start(self, name: str, *extra: str, listen: str = "127.0.0.1:0") -> Replica:
        r = Replica(name, self.url, self.cfg, self.tmp, *extra, listen=listen)
        self.replicas.append(r)
        return r

    def registered(self) -> dict[str, dict[str, Any]]:
        """The WorkloadEntries in the store, by name."""
        return {d["metadata"]["name"]: d for d in self.store.registered()}

    def holders(self, name: str) -> set[str]:
        """The replicas holding a connection of WorkloadEntry default/``name``."""
        return self.store.connections().get(("default", name), set())

    def close(self) -> None:
        for r in self.replicas:
            r.stop()
