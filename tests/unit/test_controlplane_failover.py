"""Agents fail over between control-plane replicas, and replicas bound how many streams they
set up at once. All real parts: a 3-member etcd cluster (Debian's etcd 3.4), ``pymesh
controlplane --store etcd://...`` processes, a ``pymesh agent --no-dataplane`` process (DNS and
xDS only) given every replica's address, and test ADS streams.

- ``kill -9`` of the replica the agent is connected to (the replicas given as an
  ``--xds-address`` list, or as several hosts-file lines for discoveryAddress's name): within
  3 s (one backoff step, about 0.4 s here) the agent is on
  another replica with CDS, EDS and NDS acknowledged there, its WorkloadEntry is never
  deleted (the new replica holds its connection before the dead one's lease expires, and the
  grace-period sweep then finds it connected), and its DNS proxy answers every query of a
  loop that runs through the whole failover;
- a replica started with ``--max-pending-streams 2`` refuses a burst of simultaneous
  registering streams beyond the bound with RESOURCE_EXHAUSTED "control plane busy: 2 streams
  being set up, retry", counts them in /metrics, and every refused stream succeeds when retried.

Timings: lease TTL 3 s (etcd's minimum is 2 s), grace 3 s."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pymesh.mesh.xds import CDS
from support.agent import PRODUCT, VM_IP, resolve, write_vm_files
from support.cp import AdsStream, vm_node
from support.etcd import EtcdCluster
from support.ports import free_port
from support.procs import Lines, reap
from support.replicas import GRACE, TTL, ReplicaSet
from support.wait import wait_until

PORT = 18090
BUSY = "control plane busy: 2 streams being set up, retry"


class Mesh(ReplicaSet):
    def __init__(self, etcd: EtcdCluster, tmp: Path) -> None:
        super().__init__(etcd, tmp, PORT, "failover")

    def entries(self) -> set[str]:
        return set(self.registered())


@pytest.fixture
def mesh(etcd: EtcdCluster, tmp_path: Path) -> Iterator[Mesh]:
    etcd.wait_healthy(range(3))
    m = Mesh(etcd, tmp_path)
    yield m
    m.close()


class DnsLoop:
    """Queries the agent's DNS proxy back to back until stopped; keeps every failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answered = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                got = resolve(self.port, PRODUCT, timeout=1.0)
            except Exception as e:  # a timeout or a refused port is a failure too
                self.failures.append(f"{type(e).__name__}: {e}")
            else:
                if got == ("NOERROR", ["10.96.0.20"]):
                    self.answered += 1
                else:
                    self.failures.append(repr(got))
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)


class EntryWatch:
    """Polls the store for one WorkloadEntry until stopped; counts the polls that miss it."""

    def __init__(self, mesh: Mesh, name: str) -> None:
        self.polls = 0
        self.missing = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(mesh, name), daemon=True)
        self._t.start()

    def _run(self, mesh: Mesh, name: str) -> None:
        while not self._stop.wait(0.1):
            self.polls += 1
            self.missing += name not in mesh.entries()

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)


def agent_status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/debug/status", timeout=5) as r:
        doc: dict[str, Any] = json.loads(r.read())
    return doc


@pytest.mark.parametrize("given", ["xds-address", "hosts"])
def test_agent_leaves_a_killed_replica_for_another_and_dns_never_stops(mesh: Mesh, tmp_path: Path, given: str) -> None:
    """``given``: the replicas as an ``--xds-address`` list, or as three lines of the bootstrap
    hosts file for discoveryAddress's host (replicas on three loopback addresses, one port)."""
    ips = ("127.0.0.1", "127.0.0.2", "127.0.0.4")  # VM_IP (127.0.0.3) is the VM's
    port = free_port(*ips)
    listen = {"a": f"{ips[0]}:{port}", "b": f"{ips[1]}:{port}", "c": f"{ips[2]}:{port}"}
    replicas = [mesh.start(n, listen=listen[n] if given == "hosts" else "127.0.0.1:0") for n in ("a", "b", "c")]
    ids = {r.name: r.status()["replica"]["id"] for r in replicas}
    vm = write_vm_files(tmp_path / "vm", replicas[0].port)
    dport, sport = free_port("127.0.0.1"), free_port("127.0.0.1")
    cmd = [sys.executable, "-m", "pymesh", "agent", "--config-dir", str(vm), "--dns-listen", f"127.0.0.1:{dport}"]
    cmd += ["--state-dir", str(tmp_path / "state"), "--pod-name", "vm-1", "--resolv-conf", str(tmp_path / "none")]
    cmd += ["--status-listen", f"127.0.0.1:{sport}", "--no-dataplane"]
    if given == "hosts":
        (vm / "hosts").write_text("".join(f"{ip} istiod.istio-system.svc\n" for ip in ips))
    else:
        cmd += ["--xds-address", ",".join(r.address for r in replicas)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    saw = Lines(proc).saw
    name = f"product-vm-{VM_IP}"
    loop: DnsLoop | None = None
    watch: EntryWatch | None = None
    try:
        wait_until(lambda: saw("xDS connected"), timeout=15)
        wait_until(lambda: saw("tables: 2 names, 2 clusters"), timeout=10)
        assert saw("control plane " + ",".join(r.address for r in replicas))
        holder = wait_until(lambda: [r for r in replicas if r.connections() == 1], timeout=5)[0]
        assert mesh.holders(name) == {ids[holder.name]}
        loop = DnsLoop(dport)
        watch = EntryWatch(mesh, name)
        wait_until(lambda: loop.answered >= 5 and watch.polls >= 2, timeout=5)

        killed_at = time.monotonic()
        holder.kill()
        rest = [r for r in replicas if r is not holder]
        new = wait_until(lambda: [r for r in rest if r.connections() == 1], timeout=5)[0]
        moved_s = time.monotonic() - killed_at
        # Back with the configuration acknowledged on the new replica: CDS, EDS and NDS applied
        # again after the kill (SotW resends them on a new stream), and the replica counts ACKs.
        since = time.time() - (time.monotonic() - killed_at)
        wait_until(
            lambda: all(
                (agent_status(sport)["xds_types"].get(t) or {}).get("last_push", 0) > since
                for t in ("cds", "eds", "nds")
            ),
            timeout=5,
        )
        assert agent_status(sport)["xds"] == "connected"
        # The agent records a push as applied before its ACK is sent: the replica counts the
        # ACKs as they arrive.
        wait_until(lambda: new.status()["xds"]["acks"] >= 3, timeout=5)
        # The entry is held by the new replica; the dead one's key goes with its lease, and the
        # sweep (moved to a live replica if the dead one led) finds the VM connected: never deleted.
        time.sleep(max(0.0, killed_at + TTL + GRACE + 2 - time.monotonic()))
        watch.stop()
        assert watch.missing == 0 and watch.polls > 50, (watch.missing, watch.polls)
        assert mesh.holders(name) == {ids[new.name]}
        loop.stop()
        assert not loop.failures, loop.failures[:5]
        assert loop.answered > 50
        assert moved_s < 3.0, moved_s
        print(f"failover: on {new.name} {moved_s:.2f}s after kill -9 of {holder.name}; {loop.answered} DNS answers")
    finally:
        for w in (loop, watch):
            if w is not None:
                w.stop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        reap(proc)


def test_a_burst_past_max_pending_streams_is_refused_then_admitted_on_retry(mesh: Mesh) -> None:
    r = mesh.start("a", "--max-pending-streams", "2")
    ips = [f"127.0.1.{i}" for i in range(1, 41)]
    streams = [AdsStream(r.port, vm_node(ip)) for ip in ips]
    refused: list[str] = []
    try:
        for s in streams:  # every stream open first, then all the first requests at once
            grpc.channel_ready_future(s.channel).result(timeout=10)
        for s in streams:
            s.send(CDS)
        for ip, s in zip(ips, streams, strict=True):
            try:
                assert s.recv(15).type_url == CDS
            except AssertionError:
                err = s.wait_closed()
                assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
                assert err.details() == BUSY
                refused.append(ip)
        assert 0 < len(refused) < len(ips), refused
        print(f"admission: {len(refused)} of {len(ips)} simultaneous streams refused")
        xds = r.status()["xds"]
        assert xds["refused_busy"] == len(refused) and xds["pending"] == 0 and xds["max_pending"] == 2
        metrics = r.get("/metrics").decode()
        assert f"pymesh_controlplane_xds_streams_refused_busy_total {float(len(refused))}" in metrics
        assert "pymesh_controlplane_xds_streams_pending 0.0" in metrics
        # What an agent does next (back off, retry): each refused VM gets in, one at a time.
        for ip in refused:
            s = AdsStream(r.port, vm_node(ip))
            streams.append(s)
            s.send(CDS)
            assert s.recv(15).type_url == CDS
        assert r.connections() == len(ips)
        assert {f"product-vm-{ip}" for ip in ips} <= mesh.entries()
    finally:
        for s in streams:
            s.close()
