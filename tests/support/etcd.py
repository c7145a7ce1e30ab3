"""A real local 3-member etcd cluster for the store tests, and a watch of a prefix recording
every change (:class:`Watch`: an oracle of what was written, independent of the code under test).

Debian's ``etcd-server`` (``/usr/bin/etcd``, 3.4) run as three processes on free loopback ports,
never as the packaged system service: the pattern of etcd's own ``Procfile`` and
https://etcd.io/docs/v3.4/dev-guide/local_cluster/. Data directories go to /dev/shm when it
exists and members run with ``--unsafe-no-fsync`` (test-only), so the tests do no disk I/O
that other work on the machine would feel. Election and heartbeat stay at etcd's defaults:
lower values cause spurious elections on a loaded 2-core machine.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
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
            return bool(member_json(self.client_ports[i], "/health").get("health") == "true")
        except (OSError, ValueError):
            return False  # down, or HTTP 503 while it has no leader

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
            try:
                doc = member_json(port, "/v3/maintenance/status", {})
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
            if member_json(port, "/v3/maintenance/status", {})["header"]["member_id"] == member_id:
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

    def call(self, path: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """POST ``body`` to the JSON gateway of the first running member that answers."""
        last: Exception | None = None
        for i, port in enumerate(self.client_ports):
            if self.procs[i] is None:
                continue
            try:
                return member_json(port, path, body, timeout)
            except (OSError, ValueError) as e:
                last = e
        raise RuntimeError(f"no etcd member answered {path}: {last}")


def member_json(port: int, path: str, body: dict[str, Any] | None = None, timeout: float = 2.0) -> dict[str, Any]:
    """A member's JSON answer to GET ``path``, or to a POST of ``body``. An error status raises
    urllib's HTTPError with its response closed: urllib leaves the connection open in it, and one
    dropped unclosed is reported (ResourceWarning, an error here) whenever the garbage collector
    gets to it, in whichever test runs then."""
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", data=data, timeout=timeout) as r:
            doc: dict[str, Any] = json.loads(r.read())
            return doc
    except urllib.error.HTTPError as e:
        e.close()
        raise


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` covering every key that starts with ``prefix`` (clientv3's ``GetPrefixRangeEnd``)."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    end[-1] += 1
    return bytes(end)


@dataclass(frozen=True)
class Event:
    at: float  # time.monotonic() when it arrived here: no earlier than the write itself
    type: str  # PUT or DELETE
    key: str
    revision: int  # the key's mod_revision (a DELETE's: the revision of the delete)


class Watch:
    """Every event under ``prefix`` (the keys ``<prefix>/...``) from ``start_revision`` on, in
    ``events``, read by a thread over the JSON gateway's ``/v3/watch`` stream
    (https://etcd.io/docs/v3.4/dev-guide/api_grpc_gateway/). When its member goes away the
    stream is opened again on another from the next revision; etcd keeps every revision here
    (no compaction), so nothing is missed. A frozen member (SIGSTOP) only delays the events
    until it runs again."""

    def __init__(self, cluster: EtcdCluster, prefix: str, start_revision: int = 1) -> None:
        self.cluster = cluster
        self.prefix = prefix.encode() + b"/"
        self.next_revision = start_revision
        self.events: list[Event] = []
        self.reconnects = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(target=self._run, name="etcd-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for member in itertools.cycle(range(len(self.cluster.client_ports))):
            if self._stop.is_set():
                return
            if self.cluster.procs[member] is not None:
                try:
                    self._stream(self.cluster.client_ports[member])
                except (OSError, http.client.HTTPException, ValueError):
                    pass
                self.reconnects += 1
            time.sleep(0.1)

    def _stream(self, port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            create = {
                "key": b64(self.prefix),
                "range_end": b64(prefix_end(self.prefix)),
                "start_revision": str(self.next_revision),
            }
            conn.request("POST", "/v3/watch", body=json.dumps({"create_request": create}))
            resp = conn.getresponse()
            if resp.status != 200:
                return
            if conn.sock is not None:
                conn.sock.settimeout(None)  # events come when they come; close() ends the read
            self._conn = conn
            while not self._stop.is_set():
                line = resp.readline()
                if not line:
                    return
                result = json.loads(line).get("result") or {}
                if result.get("canceled"):
                    return
                now = time.monotonic()
                with self._lock:
                    for ev in result.get("events") or ():
                        kv = ev["kv"]
                        rev = int(kv["mod_revision"])
                        key = base64.b64decode(kv["key"]).decode(errors="replace")
                        self.events.append(Event(now, ev.get("type", "PUT"), key, rev))
                        self.next_revision = max(self.next_revision, rev + 1)
        finally:
            self._conn = None
            conn.close()

    def barrier(self, timeout: float = 30.0) -> int:
        """Writes a key under the prefix and waits until its event has arrived: every write
        before this call is then in ``events``. Returns its revision."""
        key = self.prefix + b"~watch-barrier"
        doc = self.cluster.call("/v3/kv/put", {"key": b64(key), "value": b64(str(time.monotonic()).encode())})
        rev = int(doc["header"]["revision"])
        deadline = time.monotonic() + timeout
        while self.next_revision <= rev:
            if time.monotonic() > deadline:
                raise AssertionError(f"the etcd watch did not reach revision {rev} in {timeout}s")
            time.sleep(0.02)
        return rev

    def since(self, revision: int, key_prefix: str = "") -> list[Event]:
        """The events after ``revision`` whose key starts with ``key_prefix``."""
        with self._lock:
            return [e for e in self.events if e.revision > revision and e.key.startswith(key_prefix)]

    def close(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(10)
