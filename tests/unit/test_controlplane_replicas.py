"""Control-plane replicas over one etcd (pymesh.controlplane.replicas), all real parts: a
3-member etcd cluster (Debian's etcd 3.4), 2-3 ``pymesh controlplane --store etcd://...``
processes and simulated VM agents as real ADS streams. Checked:

- a VM held by replica A survives the grace-period sweeps of replica B (the leader); the
  health a VM reports to A reaches B's endpoints;
- the same VM connecting to two replicas at once makes one WorkloadEntry with two connection
  keys (``pymesh get`` names both replicas); it stays while either holds it and is deleted
  once, by the leader, after the last one;
- ``kill -9`` of a replica releases its VMs when its lease expires: the entry of a VM that did
  not come back is deleted once after the grace period; one that reconnected to another replica
  is kept; killing the leader moves the sweep to another replica;
- a replica paused past its lease gets a new one and registers its VMs again;
- a replica's connection keys follow its streams even when etcd applies a write after its
  deadline: a stray key (a claim of a refused stream) is released, a lost one (a release applied
  after the next claim) written again, both within the grace period;
- with etcd's quorum lost, new VMs are refused with UNAVAILABLE "registration store
  unavailable" (a burst within about one store deadline) while the replica keeps serving, and
  they register once quorum is back;
- every replica serves the same resources (delta versions are content hashes), so a delta
  client moving between replicas with unchanged state is sent nothing new;
- auto-allocated VIPs stay unique when replicas (in-process here) with different directories
  allocate from the same view of the store, and a restarted replica keeps its hosts' addresses.

Timings: lease TTL 3 s (etcd's minimum is 2 s), grace 3 s."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from pymesh.controlplane import ControlPlane
from pymesh.mesh.xds import CDS, EDS, LDS, NDS
from support.cp import AdsStream, pymesh_cli, vm_node
from support.etcd import EtcdCluster
from support.replicas import GRACE, TTL, Replica, ReplicaSet
from support.wait import wait_until

PORT = 18080
CLUSTER = f"outbound|{PORT}||product.default.svc.cluster.local"


class Mesh(ReplicaSet):
    def __init__(self, etcd: EtcdCluster, tmp: Path) -> None:
        super().__init__(etcd, tmp, PORT, "replicas")
        self.streams: list[AdsStream] = []

    def start(self, name: str, *extra: str, listen: str = "127.0.0.1:0", leader: bool = False) -> Replica:
        r = super().start(name, *extra, listen=listen)
        if leader:
            wait_until(lambda: r.replica()["leader"], timeout=10, interval=0.1)
        return r

    def connect(self, r: Replica, ip: str) -> AdsStream:
        """A VM agent's stream to ``r``, registered once its first answer arrives."""
        s = AdsStream(r.port, vm_node(ip))
        self.streams.append(s)
        s.send(CDS)
        assert s.recv(15).type_url == CDS
        return s

    def close(self) -> None:
        for s in self.streams:
            s.close()
        super().close()


@pytest.fixture
def mesh(etcd: EtcdCluster, tmp_path: Path) -> Iterator[Mesh]:
    etcd.wait_healthy(range(3))
    m = Mesh(etcd, tmp_path)
    yield m
    m.close()


def entry(ip: str) -> str:
    return f"product-vm-{ip}"


def test_connected_elsewhere_survives_the_sweep_and_one_entry_per_vm(mesh: Mesh) -> None:
    b = mesh.start("b", leader=True)  # B leads the sweeper
    a = mesh.start("a")
    assert not a.replica()["leader"]
    a_id, b_id = a.replica()["id"], b.replica()["id"]

    mesh.connect(a, "127.0.0.11")
    assert mesh.holders(entry("127.0.0.11")) == {a_id}

    # The same VM on both replicas at once: one entry, one connection key per replica.
    both = [AdsStream(r.port, vm_node("127.0.0.12")) for r in (a, b)]
    mesh.streams += both
    for s in both:
        s.send(CDS)
    for s in both:
        assert s.recv(15).type_url == CDS
    assert sorted(mesh.registered()) == [entry("127.0.0.11"), entry("127.0.0.12")]
    assert mesh.holders(entry("127.0.0.12")) == {a_id, b_id}
    got = subprocess.run(
        [*pymesh_cli(), "get", "workloadentries", entry("127.0.0.12"), "-o", "json", "--store", mesh.url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert got.returncode == 0, got.stderr
    shown = json.loads(got.stdout)["metadata"]["annotations"]["pymesh.io/connectedReplicas"]
    assert set(shown.split(",")) == {a_id, b_id}
    both[1].close()  # B lets go; A still holds it
    wait_until(lambda: mesh.holders(entry("127.0.0.12")) == {a_id}, timeout=5)

    # Both replicas serve both VMs (B learns A's registration from the store).
    for r in (a, b):
        wait_until(lambda r=r: {"127.0.0.11", "127.0.0.12"} <= eds_addresses(r.port), timeout=10)

    # A health-checked VM on A: what it reports reaches B's endpoints through the store.
    probed = AdsStream(a.port, vm_node("127.0.0.13", probe=True))
    mesh.streams.append(probed)
    probed.send(CDS)
    assert probed.recv(15).type_url == CDS
    probed.health(True)
    wait_until(lambda: "127.0.0.13" in eds_addresses(b.port), timeout=10)
    probed.health(False)
    wait_until(lambda: "127.0.0.13" not in eds_addresses(b.port), timeout=10)
    conditions = mesh.registered()[entry("127.0.0.13")]["status"]["conditions"]
    assert [c["status"] for c in conditions if c["type"] == "Healthy"] == ["False"]

    # Several of B's sweeps over more than the grace period: A's VMs stay. Both must pass, the
    # time and the sweeps (a loaded machine spaces the sweeps out).
    start, sweeps = time.monotonic(), b.replica()["sweeps"]
    wait_until(
        lambda: time.monotonic() - start >= GRACE + 2 and b.replica()["sweeps"] >= sweeps + 3,
        timeout=GRACE + 20,
        interval=0.2,
    )
    assert sorted(mesh.registered()) == [entry("127.0.0.11"), entry("127.0.0.12"), entry("127.0.0.13")]
    assert a.replica()["deleted"] == b.replica()["deleted"] == 0

    # A lets go of one: deleted once, by the leader, after the grace period.
    gone = time.monotonic()
    both[0].close()
    wait_until(lambda: entry("127.0.0.12") not in mesh.registered(), timeout=GRACE + 5, interval=0.1)
    assert time.monotonic() - gone >= GRACE - 0.5
    assert sorted(mesh.registered()) == [entry("127.0.0.11"), entry("127.0.0.13")]
    # etcd applies the delete before it answers the sweeper, which counts it then.
    wait_until(lambda: b.replica()["deleted"] >= 1, timeout=5)
    assert (b.replica()["deleted"], a.replica()["deleted"]) == (1, 0)

    # Same state, same resources on every replica; a delta client moving from A to B with what
    # A sent is sent nothing new. Each replica learns of the deletion at its own next poll of the
    # store, so both first serve the state without the entry (before that they may agree on the
    # old state, and one of them move on between two reads).
    for r in (a, b):
        wait_until(lambda r=r: "127.0.0.12" not in eds_addresses(r.port), timeout=10)
    held = delta_versions(a.port)
    assert held == delta_versions(b.port)
    assert held[CDS] and held[EDS] and held[LDS] and held[NDS]
    for t in (CDS, LDS, NDS, EDS):
        assert delta_first(b.port, t, held[t]).resources == []


def test_kill_9_releases_the_vms_of_a_replica(mesh: Mesh) -> None:
    a = mesh.start("a", leader=True)
    b = mesh.start("b")
    c = mesh.start("c")
    stay_away = mesh.connect(b, "127.0.0.21")
    moving = mesh.connect(b, "127.0.0.22")
    on_leader = mesh.connect(a, "127.0.0.23")
    assert len(mesh.registered()) == 3

    # kill -9 B: its agents see the stream end; one comes back on C, one does not.
    killed = time.monotonic()
    b.kill()
    for s in (stay_away, moving):
        s.wait_closed(10)
    mesh.connect(c, "127.0.0.22")
    wait_until(lambda: entry("127.0.0.21") not in mesh.registered(), timeout=TTL + GRACE + 6, interval=0.1)
    # No earlier than the lease's expiry (>= 2/3 TTL after the last refresh) plus the grace.
    assert time.monotonic() - killed >= TTL * 2 / 3 + GRACE - 0.5
    assert sorted(mesh.registered()) == [entry("127.0.0.22"), entry("127.0.0.23")]
    assert mesh.holders(entry("127.0.0.22")) == {c.replica()["id"]}
    wait_until(lambda: a.replica()["deleted"] >= 1, timeout=5)
    assert a.replica()["deleted"] == 1

    # kill -9 the leader with a VM that does not come back: C takes over the sweep.
    a.kill()
    on_leader.wait_closed(10)
    wait_until(lambda: entry("127.0.0.23") not in mesh.registered(), timeout=TTL + GRACE + 8, interval=0.1)
    assert c.replica()["leader"]
    wait_until(lambda: c.replica()["deleted"] >= 1, timeout=5)
    assert c.replica()["deleted"] == 1
    assert sorted(mesh.registered()) == [entry("127.0.0.22")]
    wait_until(lambda: {"127.0.0.2", "127.0.0.22"} == eds_addresses(c.port), timeout=5)


def test_a_paused_replica_registers_its_vms_again(mesh: Mesh) -> None:
    a = mesh.start("a", leader=True)
    b = mesh.start("b")
    mesh.connect(b, "127.0.0.31")
    b_id = b.replica()["id"]
    # SIGSTOP B past its lease and the grace: the leader deletes the entry (B's key is gone).
    b.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: entry("127.0.0.31") not in mesh.registered(), timeout=TTL + GRACE + 6, interval=0.1)
    finally:
        b.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: a.replica()["deleted"] >= 1, timeout=5)
    assert a.replica()["deleted"] == 1
    # On resume B finds its lease expired, takes a new one and claims its stream's entry again.
    wait_until(lambda: entry("127.0.0.31") in mesh.registered(), timeout=10, interval=0.1)
    assert mesh.holders(entry("127.0.0.31")) == {b_id}
    assert b.replica()["leases"] == 2
    wait_until(lambda: "127.0.0.31" in eds_addresses(a.port), timeout=10)


def test_stray_and_lost_connection_keys_are_reconciled(mesh: Mesh) -> None:
    a = mesh.start("a", leader=True)
    mesh.connect(a, "127.0.0.61")
    a_id, lease = a.replica()["id"], int(a.replica()["lease"], 16)
    # What a claim applied after its stream was refused leaves: a's key on a's lease, no stream.
    doc = json.loads(json.dumps(mesh.registered()[entry("127.0.0.61")]).replace("127.0.0.61", "127.0.0.62"))
    mesh.store.claim_registered(doc, a_id, lease)
    # What a release applied after the next claim of the same stream leaves: a live stream, no key.
    mesh.store.release_registered("default", entry("127.0.0.61"), a_id)
    wait_until(lambda: mesh.holders(entry("127.0.0.62")) == set(), timeout=GRACE, interval=0.1)
    wait_until(lambda: mesh.holders(entry("127.0.0.61")) == {a_id}, timeout=GRACE, interval=0.1)
    # The stream's entry was never swept; the stray one is, after the grace period.
    wait_until(lambda: entry("127.0.0.62") not in mesh.registered(), timeout=GRACE + 5, interval=0.1)
    assert sorted(mesh.registered()) == [entry("127.0.0.61")]
    wait_until(lambda: a.replica()["deleted"] >= 1, timeout=5)
    assert a.replica()["deleted"] == 1


# --- a delta client that can say what it already holds (initial_resource_versions) ----------


class Delta:
    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.requests: queue.Queue[Any] = queue.Queue()
        self.responses: queue.Queue[Any] = queue.Queue()
        self.first = True
        self.call = stub.DeltaAggregatedResources(iter(self.requests.get, None))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            for r in self.call:
                self.responses.put(r)
        except grpc.RpcError:
            pass
        self.responses.put(None)

    def ask(self, type_url: str, subscribe: list[str] | None = None, initial: dict[str, str] | None = None) -> Any:
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url, resource_names_subscribe=subscribe or [], initial_resource_versions=initial or {}
        )
        if self.first:
            req.node.CopyFrom(vm_node("127.0.0.99", group=""))
            self.first = False
        self.requests.put(req)
        r = self.responses.get(timeout=10)
        assert r is not None, "delta stream ended"
        self.requests.put(discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=r.nonce))
        return r

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()
        self.channel.close()
        self.reader.join(5)


def delta_versions(port: int) -> dict[str, dict[str, str]]:
    """(type -> name -> version) that a fresh delta client gets from the replica on ``port``."""
    d = Delta(port)
    try:
        out = {t: {x.name: x.version for x in d.ask(t).resources} for t in (CDS, LDS, NDS)}
        out[EDS] = {x.name: x.version for x in d.ask(EDS, subscribe=sorted(out[CDS])).resources}
        return out
    finally:
        d.close()


def delta_first(port: int, type_url: str, held: dict[str, str]) -> Any:
    d = Delta(port)
    try:
        return d.ask(type_url, subscribe=sorted(held) if type_url == EDS else None, initial=held)
    finally:
        d.close()


def eds_addresses(port: int) -> set[str]:
    from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

    d = Delta(port)
    try:
        r = d.ask(EDS, subscribe=[CLUSTER])
    finally:
        d.close()
    out = set()
    for res in r.resources:
        cla = ClusterLoadAssignment()
        res.resource.Unpack(cla)
        for group in cla.endpoints:
            out.update(e.endpoint.address.socket_address.address for e in group.lb_endpoints)
    return out


def test_vips_unique_across_replicas_with_different_configs_and_stable(mesh: Mesh, tmp_path: Path) -> None:
    """Each replica reads its own directory: the hosts only one of them serves must still get
    distinct addresses, the host both serve the same one, and a restart keeps them."""

    def se(name: str) -> str:
        return (
            f"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\n"
            f"spec: {{hosts: [{name}.example.com], resolution: DNS, ports: [{{number: 80, name: http}}]}}\n"
        )

    dirs = []
    for r in ("a", "b"):
        d = tmp_path / f"cfg-{r}"
        d.mkdir()
        (d / "own.yaml").write_text("---\n".join(se(f"{r}{i}") for i in range(5)))
        (d / "shared.yaml").write_text(se("shared"))
        dirs.append(d)

    def start(d: Path) -> ControlPlane:
        return ControlPlane(d, xds_listen="127.0.0.1:0", data_dir=tmp_path / d.name, store=mesh.url, lease_ttl=TTL)

    cps = [start(d) for d in dirs]
    # Both read the store before either allocates: each starts from the start of the range.
    with cps[0], cps[1]:
        vips = [cp.call_soon(lambda cp=cp: dict(cp.vips.allocations)) for cp in cps]
    own = [{h: p for h, p in v.items() if h[0] in "ab" or h.startswith("shared")} for v in vips]
    held = {**own[0], **own[1]}
    assert len(held) == 11 and len({v4 for v4, _ in held.values()}) == 11
    assert own[0]["shared.example.com"] == own[1]["shared.example.com"]
    with start(dirs[1]) as again:
        assert again.call_soon(lambda: {h: again.vips.get(h) for h in own[1]}) == own[1]


def test_quorum_loss_refuses_registrations_and_keeps_serving(mesh: Mesh, etcd: EtcdCluster) -> None:
    a = mesh.start("a", leader=True)
    mesh.connect(a, "127.0.0.41")
    stopped = [i for i in range(3) if etcd.procs[i] is not None][:2]
    for i in stopped:
        etcd.procs[i].send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        # A new VM is refused with UNAVAILABLE saying why, within the store's deadline.
        s = AdsStream(a.port, vm_node("127.0.0.42"))
        mesh.streams.append(s)
        s.send(CDS)
        err = s.wait_closed(15)
        assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE
        assert "registration store unavailable" in str(err.details())
        # Meanwhile the replica goes on serving (its loop never waits on etcd) ...
        other = AdsStream(a.port, vm_node("127.0.0.43", group=""))
        mesh.streams.append(other)
        other.send(CDS)
        assert other.recv(3).type_url == CDS
        assert a.replica()["store_error"]
        # ... and a burst of new VMs is refused within about one store deadline (5 s): one call
        # probes the store at a time, the others are refused at once (without that, 8 calls on
        # 4 io threads would take two deadlines).
        started = time.monotonic()
        burst = [AdsStream(a.port, vm_node(f"127.0.0.{50 + i}")) for i in range(8)]
        mesh.streams += burst
        for b in burst:
            b.send(CDS)
        for b in burst:
            err = b.wait_closed(15)
            assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 7.0
    finally:
        for i in stopped:
            etcd.procs[i].send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    etcd.wait_healthy(range(3))
    # Quorum back: the VM registers; nothing was deleted meanwhile.
    wait_until(lambda: not a.replica()["store_error"], timeout=15, interval=0.2)
    mesh.connect(a, "127.0.0.42")
    assert sorted(mesh.registered()) == [entry("127.0.0.41"), entry("127.0.0.42")]
