"""Control-plane replicas under faults with a few hundred VM agents, invariants asserted after
each fault. tests/unit/test_controlplane_replicas.py checks each mechanism with a handful of
streams; benchmarks/ha_bench.py runs thousands of agents and asserts nothing. Here:

- etcd: 3 real members on loopback (the ``etcd`` fixture, tests/support/etcd.py);
- 3 real ``pymesh controlplane --store etcd://...`` replicas (tests/support/replicas.py), started
  at once so their VIP allocations race; lease TTL 3 s (etcd's minimum is 2 s), grace 6 s;
- AGENTS simulated VM agents (tests/support/peers/cp_agents.py, one child process, the
  simulator the benchmarks use): one real ADS stream each (CDS, NDS, EDS of 3 clusters, every
  response ACKed), auto-registering into WorkloadGroup ``bench/bench-vm``, agent i starting on
  replica i mod 3 and reconnecting elsewhere with the real agent's backoff
  (pymesh/agent/xds_client.py). The simulator records each stream it had (first answer to end);
- an etcd watch on the replicas' prefix from revision 1 (``support.etcd.Watch``): every write
  with the time it arrived, so deletions are judged by etcd's own history against the agents'
  record of their streams, not by what the control plane says about itself.

The mesh: 20 Services with two pods (what the agents' EDS watches), Service ``vm`` selecting the
group (its endpoints are every registered VM: how each replica serves the registrations) and
10 ServiceEntries without addresses (auto-allocated VIPs).

The faults, in order, one test each; each leaves the mesh whole again (every replica and etcd
member running) and the next starts from a converged mesh:

1. the fleet connects (a storm over three replicas started at once);
2. ``kill -9`` of the replica holding a third of the agents (the sweeper's leader): its agents
   move to the other two; it is started again (a new process on the same port);
3. ``SIGSTOP`` of the replica holding the most agents until etcd has expired its lease (its
   connection keys are gone), then ``SIGCONT``: its agents never noticed and it claims their
   entries again before the grace period ends;
4. ``kill -9`` of the etcd leader while a tenth of the agents reconnect (each releases on one
   replica and registers on another during the election); the member is started again;
5. quorum loss: two members SIGSTOPped while new VMs connect, then SIGCONT;
6. twenty VMs connecting to two replicas at the same time; then one stream of each ends (the
   entry stays), then the other (the entry is deleted once, after the grace period).

Invariants after each fault (``Mesh.converge`` polls them until they hold, bounded;
``Mesh.history`` judges the store's writes):

- no lost registration and no duplicate: the store holds exactly one WorkloadEntry per VM with
  a live agent, at its address, and no other; addresses are unique;
- each entry's connection keys name exactly the live replicas its VM's streams are on, and no
  connection key outlives its entry;
- no entry deleted while a replica held a connection key of it (etcd's order of events), while
  its VM was connected, or before its VM had been gone for the grace period (every DELETE in
  the watch against the agents' record of their streams); in faults 1, 2, 3 and 5 no entry of a
  VM registered before the fault deleted at all, nor written (a VM moving between replicas
  writes only its connection keys; two replicas registering one VM at once create it once);
- VIPs unique (the records and the address index agree 1:1) and unchanged since the start;
- every agent on a live replica, its stream's first CDS, NDS and EDS ACKed, and the versions it
  last ACKed (content hashes) the ones its replica serves now;
- every live replica serves the same snapshot (CDS, NDS, LDS and EDS versions of a probe
  stream) and the ``vm`` Service's endpoints are exactly the registered VMs, on every replica;
- one sweeper leader among the live replicas, none reporting a store error.

During the quorum loss, also: the replicas keep serving the snapshot they had (a probe stream
gets the same versions), no agent loses its stream, new VMs are refused with UNAVAILABLE
"registration store unavailable ...", nothing registered is deleted, and the new VMs register
by themselves once quorum is back.

AGENTS is 300: 100 streams per replica, so a killed or paused replica's share is a burst of
claims many times the replica's 4 io threads, and the whole module takes about 60 s on a 2-core
machine shared with the etcd members, the three replicas and the simulator (the fixed delays
dominate: lease TTL, grace period, the agents' backoff while etcd refuses). Run with ``-s`` to
see each fault's timings.

What this found about etcd under faults, which the replicas must handle: a write sent to a
member that then froze (or lost its leader) gets no answer before the store's deadline (5 s),
so registrations wait that long once the replica's io threads hold such writes (fault 4); a
frozen etcd leader that resumes after more than a lease TTL, still leading, expires every lease
at once, and every replica takes a new lease and claims its VMs again within the grace period
(fault 5, in some runs);
and a write whose answer was lost may still be applied after the deadline: a refused VM's
claim left a connection key of a replica without its stream, which kept the entry "connected"
for as long as that replica ran (fault 5; the replicas now reconcile their keys with their
streams, pymesh/controlplane/replicas.py).
"""

from __future__ import annotations

import base64
import itertools
import json
import signal
import statistics
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from pymesh.mesh.xds import CDS, EDS, LDS, NDS
from support.cp import AdsStream, vm_node
from support.etcd import EtcdCluster, Watch, b64, prefix_end
from support.fleet import Agents
from support.ports import free_port
from support.replicas import Replica
from support.wait import wait_until

AGENTS = 300
SERVICES = 20  # Services the agents' EDS watches, 3 clusters each
EDS_PER_AGENT = 3
ENTRIES = 10  # ServiceEntries without addresses: auto-allocated VIPs
TTL = 3  # --lease-ttl
GRACE = 6.0  # --grace-period: above the SIGSTOP fault's lease expiry plus the re-claims
GROUP = "bench-vm"
VM_CLUSTER = "outbound|8080||vm.bench.svc.cluster.local"
CLUSTERS = tuple(sorted([f"outbound|80||svc-{i:04d}.bench.svc.cluster.local" for i in range(SERVICES)] + [VM_CLUSTER]))
REFUSED = "UNAVAILABLE: registration store unavailable"  # how a stream is refused while etcd fails
# What grpcio's asyncio client reports instead of the server's status when one of its writes
# was in flight as the server ended the stream (https://github.com/grpc/grpc/issues/36066): the
# agents write their three subscriptions at once, and a refusal may cross the last of them.
GRPC_ARTIFACT = "INTERNAL: Internal error from Core"
CONVERGE = 45.0  # seconds for the invariants to hold after a fault (they take 1-10)
_prefixes = itertools.count()


def ip_of(ident: int) -> str:
    return f"10.200.{ident // 250}.{ident % 250 + 1}"  # as peers/cp_agents.py gives its agents


def entry_of(ident: int) -> str:
    return f"{GROUP}-{ip_of(ident)}"  # pymesh.controlplane.autoregistration.entry_name


def mesh_yaml() -> str:
    docs = [
        f"apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {{name: {GROUP}, namespace: bench}}\n"
        f"spec:\n  metadata: {{labels: {{app: {GROUP}}}}}\n  template: {{ports: {{grpc: 8080}}}}\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: vm, namespace: bench}\n"
        f"spec: {{clusterIP: 10.96.250.1, selector: {{app: {GROUP}}}, ports: [{{name: grpc, port: 8080}}]}}\n",
    ]
    for i in range(SERVICES):
        name = f"svc-{i:04d}"
        docs.append(
            f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bench}}\n"
            f"spec: {{clusterIP: 10.96.0.{i + 1}, selector: {{app: {name}}}, ports: [{{name: grpc, port: 80}}]}}\n"
        )
        for pod in (1, 2):
            docs.append(
                f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}-{pod}, namespace: bench, "
                f"labels: {{app: {name}}}}}\nstatus: {{podIP: 10.100.{i}.{pod}}}\n"
            )
    for i in range(ENTRIES):
        docs.append(
            f"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ext-{i}, namespace: bench}}\n"
            f"spec: {{hosts: [ext-{i}.example.com], resolution: DNS, ports: [{{number: 443, name: tls, "
            "protocol: TLS}]}\n"
        )
    return "---\n".join(docs)


# --- what a replica serves: a probe stream with the agents' view, not registering ----------------

PROBE_NODE = vm_node("10.200.250.1", group="", namespace="bench")


@dataclass(frozen=True)
class Served:
    versions: dict[str, str]  # type -> SotW version_info (a hash of the resources sent)
    vm_ips: frozenset[str]  # the `vm` Service's endpoints


def served(port: int, timeout: float = 10.0) -> Served:
    s = AdsStream(port, PROBE_NODE)
    try:
        s.send(CDS)
        s.send(NDS)
        s.send(LDS)
        s.send(EDS, CLUSTERS)
        got: dict[str, Any] = {}
        deadline = time.monotonic() + timeout
        while len(got) < 4:
            r = s.recv(max(0.1, deadline - time.monotonic()))
            got.setdefault(r.type_url, r)
    finally:
        s.close()
    ips: set[str] = set()
    for res in got[EDS].resources:
        cla = ClusterLoadAssignment()
        res.Unpack(cla)
        if cla.cluster_name == VM_CLUSTER:
            for group in cla.endpoints:
                ips.update(e.endpoint.address.socket_address.address for e in group.lb_endpoints)
    return Served({t: r.version_info for t, r in got.items()}, frozenset(ips))


# --- the store as etcd holds it (one range read: one revision) ------------------------------------


@dataclass
class Stored:
    revision: int
    entries: dict[str, dict[str, Any]]  # name -> WorkloadEntry (namespace bench)
    conns: dict[str, set[str]]  # entry name -> replica ids holding a connection key
    vips: dict[str, tuple[str, str]]  # host -> (v4, v6)
    vip_index: dict[str, str]  # v4 -> host
    leader: str  # the sweeper leader's replica id


def read_store(etcd: EtcdCluster, prefix: str) -> Stored:
    start = f"{prefix}/".encode()
    doc = etcd.call("/v3/kv/range", {"key": b64(start), "range_end": b64(prefix_end(start))})
    out = Stored(int(doc["header"]["revision"]), {}, {}, {}, {}, "")
    for kv in doc.get("kvs") or ():
        key = base64.b64decode(kv["key"])[len(start) :].decode()
        value = base64.b64decode(kv.get("value", ""))
        table, *parts = [urllib.parse.unquote(p) for p in key.split("/")]
        if table == "registered" and parts[0] == "bench":
            out.entries[parts[1]] = json.loads(value)
        elif table == "conn" and parts[0] == "bench":
            out.conns.setdefault(parts[1], set()).add(parts[2])
        elif table == "vips":
            rec = json.loads(value)
            out.vips[parts[0]] = (rec["v4"], rec["v6"])
        elif table == "vipip":
            out.vip_index[parts[0]] = value.decode()
        elif table == "leader" and parts == ["sweeper"]:
            out.leader = value.decode()
    return out


# --- the mesh ------------------------------------------------------------------------------------


class Mesh:
    """The replicas (index k serves on ``ports[k]``, the simulator's address k, across restarts),
    the fleet, the watch, and the invariants."""

    def __init__(self, etcd: EtcdCluster, tmp: Path) -> None:
        self.etcd = etcd
        self.tmp = tmp
        self.prefix = f"/pymesh/faults-{next(_prefixes)}"
        self.url = etcd.url(self.prefix)
        self.cfg = tmp / "mesh"
        self.cfg.mkdir()
        (self.cfg / "mesh.yaml").write_text(mesh_yaml())
        self.ports = [free_port() for _ in range(3)]
        self.replicas: list[Replica | None] = [None] * 3
        self.ids: list[str] = [""] * 3
        self.paused: set[int] = set()
        self.restarts = itertools.count(1)
        self.watch = Watch(etcd, self.prefix)
        self.agents: Agents | None = None
        self.vips: dict[str, tuple[str, str]] = {}  # as first seen; must never change
        self.checked_at = 0  # the store revision of the last check

    # replicas --------------------------------------------------------------------------------

    def start_replica(self, k: int, name: str = "") -> Replica:
        r = Replica(
            name or f"r{k}", self.url, self.cfg, self.tmp, listen=f"127.0.0.1:{self.ports[k]}", ttl=TTL, grace=GRACE
        )
        self.replicas[k] = r
        self.ids[k] = r.replica()["id"]
        return r

    def start_replicas(self) -> None:
        """All three at once: their first VIP allocations race in the store."""
        errors: list[BaseException] = []

        def start(k: int) -> None:
            try:
                self.start_replica(k)
            except BaseException as e:  # re-raised below, in the test's thread
                errors.append(e)

        threads = [threading.Thread(target=start, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if errors:
            raise errors[0]

    def live(self) -> list[int]:
        return [k for k, r in enumerate(self.replicas) if r is not None and r.proc.poll() is None]

    def replica(self, k: int) -> Replica:
        r = self.replicas[k]
        assert r is not None
        return r

    def fleet(self) -> Agents:
        assert self.agents is not None
        return self.agents

    def start_agents(self) -> None:
        self.agents = Agents(self.ports, AGENTS, SERVICES, EDS_PER_AGENT, register=GROUP, log=self.tmp / "agents.log")
        self.agents.wait_ready(90)

    def close(self) -> None:
        for k in self.paused:
            self.replica(k).proc.send_signal(signal.SIGCONT)
        if self.agents is not None:
            self.agents.stop()
        for r in self.replicas:
            if r is not None:
                r.stop()
        self.watch.close()

    # the invariants --------------------------------------------------------------------------

    def problems(self, dump: dict[str, Any]) -> list[str]:
        """What does not hold (yet) of the invariants that are states; empty when all hold."""
        out: list[str] = []
        live = self.live()
        stored = read_store(self.etcd, self.prefix)
        now = {k: served(self.ports[k]) for k in live}

        # Agents: on a live replica, current stream established, holding what it serves now.
        active = [i for i in range(len(dump["ident"])) if not dump["stopped"][i]]
        by_ident: dict[int, list[int]] = {}
        eds: dict[int, set[str]] = {}
        for i in active:
            by_ident.setdefault(dump["ident"][i], []).append(i)
            k, spans = dump["addr"][i], dump["spans"][i]
            if k not in live or not spans or spans[-1][1] != 0.0:
                out.append(f"agent {i} not connected to a live replica (address {k}, streams {spans[-2:]})")
                continue
            if dump["est_at"][i] < spans[-1][0]:
                out.append(f"agent {i}: its stream to replica {k} has not ACKed CDS, NDS and EDS yet")
                continue
            for t, url in (("cds", CDS), ("nds", NDS)):
                held, serves = dump["ver"][t][i], now[k].versions[url]
                if held != serves:
                    out.append(f"agent {i} on replica {k} holds {t} {held}, the replica serves {serves}")
            eds.setdefault(dump["ident"][i] * 7 % SERVICES, set()).add(dump["ver"]["eds"][i])
        out += [f"agents watching the same clusters hold EDS versions {sorted(v)}" for v in eds.values() if len(v) > 1]

        # The store: one entry per VM with a live agent, at its address; connection keys exact.
        want = {entry_of(ident): ident for ident in by_ident}
        if set(stored.entries) != set(want):
            missing, extra = sorted(set(want) - set(stored.entries)), sorted(set(stored.entries) - set(want))
            out.append(f"entries: {len(missing)} missing {missing[:5]}, {len(extra)} extra {extra[:5]}")
        addresses = [e["spec"]["address"] for e in stored.entries.values()]
        if len(set(addresses)) != len(addresses):
            out.append("two entries with one address")
        for name, ident in want.items():
            doc = stored.entries.get(name)
            if doc is not None and doc["spec"]["address"] != ip_of(ident):
                out.append(f"{name} has address {doc['spec']['address']}")
            holders = {self.ids[dump["addr"][i]] for i in by_ident[ident]}
            keys = stored.conns.get(name, set())
            if keys != holders:
                out.append(f"{name}: connection keys of {sorted(keys)}, streams on {sorted(holders)}")
        if set(stored.conns) - set(stored.entries):
            out.append(f"connection keys without an entry: {sorted(set(stored.conns) - set(stored.entries))[:5]}")

        # VIPs: one per host, unique, indexed 1:1, never changed.
        hosts = {f"ext-{i}.example.com" for i in range(ENTRIES)}
        if set(stored.vips) != hosts:
            out.append(f"VIP records for {sorted(stored.vips)}")
        v4s, v6s = [p[0] for p in stored.vips.values()], [p[1] for p in stored.vips.values()]
        if len(set(v4s)) != len(v4s) or len(set(v6s)) != len(v6s):
            out.append(f"a VIP given twice: {stored.vips}")
        if stored.vip_index != {v4: h for h, (v4, _) in stored.vips.items()}:
            out.append(f"the VIP index {stored.vip_index} is not the records {stored.vips}")
        if self.vips and stored.vips != self.vips:
            out.append(f"VIPs changed: {self.vips} -> {stored.vips}")

        # Replicas: one snapshot, serving every registered VM; one leader, no store error.
        if len({tuple(sorted(s.versions.items())) for s in now.values()}) != 1:
            out.append(f"replicas serve different snapshots: {[now[k].versions for k in live]}")
        ips = {ip_of(ident) for ident in by_ident}
        for k in live:
            if now[k].vm_ips != ips:
                out.append(f"replica {k}'s vm endpoints: {len(now[k].vm_ips)}, {len(ips)} registered VMs")
        statuses = {k: self.replica(k).replica() for k in live if k not in self.paused}
        leaders = [k for k, st in statuses.items() if st["leader"]]
        if len(leaders) != 1 or stored.leader != self.ids[leaders[0]]:
            out.append(f"sweeper leaders: replicas {leaders}, the store names {stored.leader}")
        out += [f"replica {k}: store error {st['store_error']}" for k, st in statuses.items() if st["store_error"]]
        if not out and not self.vips:
            self.vips = stored.vips
        self.checked_at = stored.revision
        return out

    def converge(self, what: str, timeout: float = CONVERGE) -> dict[str, Any]:
        """Waits until every invariant holds; returns the fleet's state then."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            dump = self.fleet().ask("dump")
            found = self.problems(dump)
            if not found:
                print(f"{what}: converged in {time.monotonic() - t0:.1f} s")
                return dump
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not converged in {timeout:g} s:\n  " + "\n  ".join(found[:25]))
            time.sleep(0.5)

    def history(self, since: int, dump: dict[str, Any]) -> tuple[list[tuple[str, float]], Counter[str]]:
        """The entries deleted after store revision ``since`` (name, when the watch saw it) and
        how many times each entry was written since. Fails if one was deleted while a replica
        held a connection key of it (by etcd's order of events), while its VM had a stream
        (by the agents' record), or before its VM had been gone for the grace period. Call
        after ``converge``: the watch is read up to now."""
        self.watch.barrier()
        spans: dict[str, list[list[float]]] = {}
        for i, ident in enumerate(dump["ident"]):
            spans.setdefault(entry_of(ident), []).extend(dump["spans"][i])
        registered, conn = f"{self.prefix}/registered/bench/", f"{self.prefix}/conn/bench/"
        held: dict[str, set[str]] = {}  # entry -> replicas with a connection key, replayed
        deleted: list[tuple[str, float]] = []
        writes: Counter[str] = Counter()
        for ev in self.watch.since(0):
            if ev.key.startswith(conn):
                name, replica = (urllib.parse.unquote(p) for p in ev.key[len(conn) :].split("/"))
                if ev.type == "DELETE":
                    held.get(name, set()).discard(replica)
                else:
                    held.setdefault(name, set()).add(replica)
                continue
            if ev.revision <= since or not ev.key.startswith(registered):
                continue
            name = urllib.parse.unquote(ev.key[len(registered) :])
            if ev.type != "DELETE":
                writes[name] += 1
                continue
            assert not held.get(name), f"{name} deleted (revision {ev.revision}) while {held[name]} held it"
            # The watch saw it at ev.at, at most a moment after etcd applied it: a stream the
            # agent saw open a second before that and after it was open when it was deleted.
            before = [s for s in spans.get(name, []) if s[0] < ev.at]
            during = [s for s in before if s[0] <= ev.at - 1.0 and (s[1] == 0.0 or s[1] >= ev.at)]
            assert not during, f"{name} deleted (revision {ev.revision}) while its VM was connected: {during}"
            ended = max((s[1] for s in before), default=0.0)
            assert ended <= ev.at - (GRACE - 0.5), (
                f"{name} deleted {ev.at - ended:.1f} s after its VM's last stream ended, before the grace period"
            )
            deleted.append((name, ev.at))
        return deleted, writes


@pytest.fixture(scope="module")
def mesh(etcd: EtcdCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    etcd.wait_healthy(range(3))
    m = Mesh(etcd, tmp_path_factory.mktemp("faults"))
    try:
        m.start_replicas()
        m.start_agents()
        yield m
    finally:
        m.close()


def recovery(d0: dict[str, Any], d1: dict[str, Any], agents: list[int], since: float) -> str:
    """How long ``agents`` took from ``since`` to a new stream with CDS, NDS and EDS ACKed."""
    est0 = d0["est"] + [0] * (len(d1["est"]) - len(d0["est"]))  # agents spawned since d0 had none
    times = sorted(d1["est_at"][i] - since for i in agents if d1["est"][i] > est0[i])
    if not times:
        return "none re-established"
    return f"{len(times)}/{len(agents)} re-established, p50 {statistics.median(times):.2f} s, max {times[-1]:.2f} s"


def lost_streams(d0: dict[str, Any], d1: dict[str, Any]) -> list[int]:
    return [i for i in range(len(d0["lost"])) if d1["lost"][i] > d0["lost"][i]]


def timed(what: str) -> Callable[[], None]:
    t0 = time.monotonic()
    return lambda: print(f"{what}: {time.monotonic() - t0:.1f} s")


# --- the faults, in order -------------------------------------------------------------------------


def test_the_fleet_registers_once_on_every_replica(mesh: Mesh) -> None:
    dump = mesh.converge("connect storm")
    assert len(mesh.vips) == ENTRIES
    deleted, writes = mesh.history(0, dump)
    assert deleted == []
    assert set(writes.values()) == {1}  # each entry written once, by one replica
    print(f"agents per replica {[dump['addr'].count(k) for k in range(3)]}")


def test_kill_9_of_the_replica_holding_a_third(mesh: Mesh) -> None:
    before = mesh.converge("before kill -9")
    rev = mesh.checked_at
    # The sweeper's leader (so the sweep moves too); it holds a third of the agents.
    k = next(k for k in mesh.live() if mesh.replica(k).replica()["leader"])
    victims = [i for i, a in enumerate(before["addr"]) if a == k]
    assert len(victims) >= AGENTS // 4
    killed = time.monotonic()
    mesh.replica(k).kill()
    after = mesh.converge(f"kill -9 of replica {k} ({len(victims)} agents)")
    print(f"  failover: {recovery(before, after, victims, killed)}")
    assert all(after["addr"][i] != k for i in victims)
    assert lost_streams(before, after) == victims  # nobody else was disturbed
    assert mesh.history(rev, after) == ([], Counter())  # moved without a write to their entries
    # Back as a new process on the same port (a new replica id), with the same VIPs.
    mesh.start_replica(k, name=f"r{k}-{next(mesh.restarts)}")
    mesh.converge(f"replica {k} restarted")


def test_sigstop_of_a_replica_past_its_lease(mesh: Mesh) -> None:
    before = mesh.converge("before SIGSTOP")
    rev = mesh.checked_at
    k = max(mesh.live(), key=lambda k: before["addr"].count(k))
    held = [i for i, a in enumerate(before["addr"]) if a == k]
    r, rid = mesh.replica(k), mesh.ids[k]
    leases = r.replica()["leases"]
    done = timed(f"SIGSTOP of replica {k} ({len(held)} agents) until its lease expired")
    r.proc.send_signal(signal.SIGSTOP)
    mesh.paused.add(k)
    try:
        # Paused until etcd has expired its lease: every connection key of it gone. Its agents'
        # streams stay open (TCP is up); the leader's grace for their entries starts.
        wait_until(lambda: all(rid not in h for h in read_store(mesh.etcd, mesh.prefix).conns.values()), TTL + 10, 0.1)
        done()
    finally:
        r.proc.send_signal(signal.SIGCONT)
        mesh.paused.discard(k)
    after = mesh.converge(f"SIGCONT of replica {k}")
    assert r.replica()["leases"] == leases + 1  # a new lease, its VMs claimed again on it
    assert lost_streams(before, after) == []  # its agents never noticed
    assert mesh.history(rev, after) == ([], Counter())  # claimed again within the grace period


def test_kill_9_of_the_etcd_leader_while_agents_reconnect(mesh: Mesh) -> None:
    before = mesh.converge("before the etcd leader's kill")
    rev = mesh.checked_at
    leader = mesh.etcd.leader()
    mesh.etcd.kill(leader)
    t0 = time.monotonic()
    moved = mesh.fleet().ask("drop", 10, 0)["agents"]  # releases and registrations during the election
    mesh.etcd.wait_healthy([m for m in range(3) if m != leader], timeout=30)
    print(f"etcd member {leader} (leader) killed: the others have a leader after {time.monotonic() - t0:.1f} s")
    mesh.etcd.start_member(leader)
    after = mesh.converge(f"etcd member {leader} back ({len(moved)} agents reconnected meanwhile)")
    print(f"  reconnects: {recovery(before, after, moved, t0)}")
    assert set(lost_streams(before, after)) == set(moved)
    # A reconnect slowed by the election (the agents' backoff grows while they are refused) may
    # outlast the grace period once the old replica's release went through: its entry may then be
    # deleted, and registered again. ``history`` checks that was legitimate.
    deleted, _ = mesh.history(rev, after)
    print(f"  entries deleted meanwhile (their VMs gone for the grace period): {len(deleted)}")


def test_quorum_loss_keeps_serving_and_recovers_by_itself(mesh: Mesh) -> None:
    before = mesh.converge("before quorum loss")
    rev = mesh.checked_at
    snapshot = {k: served(mesh.ports[k]).versions for k in mesh.live()}
    stopped = [mesh.etcd.leader()]
    stopped.append(next(m for m in range(3) if m not in stopped))
    for m in stopped:
        mesh.etcd.procs[m].send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    t0 = time.monotonic()
    try:
        # New VMs on every replica: refused with UNAVAILABLE and why; they retry (backoff).
        new = []
        for k in range(3):
            new += mesh.fleet().ask("spawn", 1000 + 4 * k, 1004 + 4 * k, k)["agents"]
        deadline = time.monotonic() + 30
        while True:
            dump = mesh.fleet().ask("dump")
            refused = [i for i in new if any(e.startswith(REFUSED) for _, e in dump["errors"][i])]
            if len(refused) == len(new):
                break
            assert time.monotonic() < deadline, f"not refused: {set(new) - set(refused)}: {dump['errors'][new[0]]}"
            time.sleep(0.2)
        print(f"quorum lost: {len(new)} new VMs refused within {time.monotonic() - t0:.1f} s")
        # Longer than a lease and a grace period: nothing may expire or be swept meanwhile.
        time.sleep(max(0.0, t0 + TTL + GRACE - time.monotonic()))
        dump = mesh.fleet().ask("dump")
        other = [e for i in new for _, e in dump["errors"][i] if not e.startswith(REFUSED) and e != GRPC_ARTIFACT]
        assert not other, other
        assert all(not dump["spans"][i] for i in new)  # none was answered
        # Meanwhile every replica serves the snapshot it had, and knows the store fails.
        for k in mesh.live():
            assert served(mesh.ports[k]).versions == snapshot[k]
        assert all(mesh.replica(k).replica()["store_error"] for k in mesh.live())
        assert lost_streams(before, dump) == []
    finally:
        for m in stopped:
            mesh.etcd.procs[m].send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    print(f"  quorum back after {time.monotonic() - t0:.1f} s")
    resumed = time.monotonic()
    leases = {k: mesh.replica(k).replica()["leases"] for k in mesh.live()}
    after = mesh.converge("quorum back: the new VMs registered by themselves")
    print(f"  new VMs: {recovery(before, after, new, resumed)} after quorum came back")
    # A frozen etcd leader that resumes may expire every lease at once (its deadlines passed while
    # it was stopped): then every replica takes a new lease and claims its VMs again, within the
    # grace period (``history`` below fails otherwise).
    replaced = [k for k in mesh.live() if mesh.replica(k).replica()["leases"] > leases[k]]
    print(f"  replicas whose lease expired after quorum came back: {replaced}")
    assert lost_streams(before, after) == []
    # Nothing registered before the loss was deleted or written. A refused VM's claim that etcd
    # applied after its deadline may have created its entry early: that entry, if swept before
    # the VM came back (``history`` checks it was legitimate), was written again.
    deleted, writes = mesh.history(rev, after)
    registered = {entry_of(ident) for i, ident in enumerate(before["ident"]) if not before["stopped"][i]}
    assert not {name for name, _ in deleted} & registered
    assert set(writes) == {entry_of(after["ident"][i]) for i in new}
    print(f"  entries of refused VMs created by a late write and swept before the VM came back: {len(deleted)}")


def test_one_vm_on_two_replicas_at_once(mesh: Mesh) -> None:
    mesh.converge("before the concurrent connects")
    rev = mesh.checked_at
    deleted0 = sum(mesh.replica(k).replica()["deleted"] for k in mesh.live())
    # 20 VMs, each connecting to two replicas at the same moment (create-if-absent races).
    pairs = mesh.fleet().ask("spawn", 2000, 2010, "0,1")["agents"]
    pairs += mesh.fleet().ask("spawn", 2010, 2020, "1,2")["agents"]
    dump = mesh.converge("20 VMs on two replicas each")  # one entry each, both replicas' keys
    for i in pairs:
        assert dump["spans"][i], f"agent {i} (VM {dump['ident'][i]}) was never answered"
    first, second = pairs[0::2], pairs[1::2]  # spawn answers per VM: one agent per address
    assert [dump["ident"][i] for i in first] == [dump["ident"][i] for i in second]
    # One stream of each ends: the other replica still holds the VM, past the grace period.
    mesh.fleet().ask("stop", ",".join(map(str, first)))
    mesh.converge("one stream of each ended")
    time.sleep(GRACE + 2)
    dump = mesh.converge("the grace period later, the other stream still up")
    names = {entry_of(dump["ident"][i]) for i in second}
    assert mesh.history(rev, dump) == ([], Counter(names))  # each written once: one creation won
    # The other ends too: each entry is deleted once, after the grace period.
    ended = time.monotonic()
    mesh.fleet().ask("stop", ",".join(map(str, second)))
    dump = mesh.converge("both streams ended and the grace period over", timeout=GRACE + CONVERGE)
    gone, _ = mesh.history(rev, dump)
    after = [t - ended for _, t in gone]
    print(f"  {len(gone)} deleted {min(after, default=0):.1f}-{max(after, default=0):.1f} s after the streams ended")
    assert sorted(n for n, _ in gone) == sorted(names)  # each once, nothing else
    assert sum(mesh.replica(k).replica()["deleted"] for k in mesh.live()) - deleted0 == len(names)
