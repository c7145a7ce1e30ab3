"""Simulated VM agents for the control-plane benchmarks and the replica fault tests
(benchmarks/controlplane_bench.py, benchmarks/ha_bench.py, tests/e2e/test_replicas_faults.py):
COUNT ADS streams (SotW or delta), each on its own TCP connection, each subscribing like an
istio-agent sidecar scoped to a few services: CDS (wildcard), NDS, and EDS
for EDS_PER_AGENT clusters; every response is ACKed at once.

Agent i's identity (its node id and INSTANCE_IPS 10.200.<i // 250>.<i % 250 + 1>, hence the
WorkloadEntry it registers) is its ident, i for the first COUNT agents; ``spawn`` may start
more agents with any ident, several with the same one (one VM holding several streams).

    cp_agents.py PORT COUNT SERVICES EDS_PER_AGENT [sotw|delta]
    cp_agents.py PORT,PORT,... COUNT SERVICES EDS_PER_AGENT [sotw|delta] [--failover] [--register GROUP] [--control]

Prints ``ready`` once every agent has ACKed its first CDS, NDS and EDS
response, then runs until stdin closes.

Options (benchmarks/ha_bench.py; without them the behaviour is the one
benchmarks/controlplane_bench.py relies on):

- several addresses (``PORT`` or ``HOST:PORT``, comma-separated): agent i
  starts on address i mod N;
- ``--failover``: a stream that ends or fails is opened again on another
  address, with the real agent's policy (pymesh/agent/xds_client.py): rounds of
  every address in a random order, a new round never starting with the address
  just left; the n-th consecutive failed attempt waits uniform [d/2, d],
  d = min(30 s, 0.5 s * 2^n), and a stream that delivered a response resets n. Without it
  a failed stream ends the run (``failed``), as before;
- ``--register GROUP``: the node asks to be auto-registered into
  WorkloadGroup GROUP (``AUTO_REGISTER_GROUP``, namespace ``bench``);
- ``--control``: stdin is read line by line, each command answered with one
  JSON line. Times are ``time.monotonic()`` stamps: the system-wide
  CLOCK_MONOTONIC (clock_gettime(2)), so the parent compares them with its
  own. An agent is *established* when its stream's first CDS, NDS and EDS
  responses are all ACKed.

  - ``dump``: each agent's ident, current address, streams established and when,
    streams lost and when, busy refusals, ACKs, last ACK time and last ACKed
    ``version_info`` per type, its ``spans`` (``[first response, stream end]``
    of each stream that answered, end 0 while it is open), its last errors
    (``[time, "CODE: details"]``, the last five) and whether it was stopped;
  - ``acked SINCE TIMEOUT TYPE[,TYPE] [SERVICE]``: waits up to TIMEOUT s
    until every agent (or every one watching SERVICE's cluster in EDS) has
    ACKed a response of each TYPE (cds, nds, eds) after SINCE; answers
    ``ok``, ``targets``, ``pending`` and the first and last ACK of any
    agent and type after SINCE, overall and by the agents' current address;
  - ``mark``: remembers each agent's address and streams established;
  - ``recovered ADDR TIMEOUT``: waits up to TIMEOUT s until every agent
    that was on address index ADDR at the mark has established a new
    stream; answers their establishment times, how many are pending, and
    how many other agents lost a stream since the mark;
  - ``spawn FROM TO ADDR[,ADDR...]``: starts one agent per ident in [FROM, TO) and
    address index, all at once (a VM connecting to two replicas at the same
    time); answers their agent numbers;
  - ``drop EVERY REST``: ends the current stream of every agent i with
    i % EVERY == REST (a client-side cancel); each opens a new one, as after any
    lost stream;
  - ``stop I[,I...]``: ends those agents for good (their stream is cancelled).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import time
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
NDS = "type.googleapis.com/istio.networking.nds.v1.NameTable"
SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
DELTA = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
TYPES = {"cds": CDS, "nds": NDS, "eds": EDS}
# The real agent's reconnect policy (pymesh/agent/xds_client.py: backoff_base, backoff_max).
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0


def _header_class() -> object:
    """A DiscoveryResponse with only version_info (1), type_url (4) and nonce
    (5): what an agent needs to ACK. The resources stay unparsed bytes, so the
    simulated fleet (2,000 agents in one process, on the server's cores)
    spends little CPU on payloads real agents parse on their own machines."""
    f = descriptor_pb2.FileDescriptorProto(name="bench_header.proto", package="bench", syntax="proto3")
    m = f.message_type.add(name="ResponseHeader")
    for name, number in (("version_info", 1), ("type_url", 4), ("nonce", 5)):
        m.field.add(name=name, number=number, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING, label=1)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.ResponseHeader"))


HEADER: Any = _header_class()


def cluster(i: int) -> str:
    return f"outbound|80||svc-{i:04d}.bench.svc.cluster.local"


class Fleet:
    """What the agents share: options, the ready count, and each agent's state for ``dump``."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.addrs = [x if ":" in x else f"127.0.0.1:{x}" for x in a.addresses.split(",")]
        self.initial, self.services, self.eds = a.count, a.services, a.eds
        self.delta = a.mode == "delta"
        self.failover = a.failover
        self.group = a.register
        self.ready = asyncio.Event()
        self.established_once = 0
        self.ident: list[int] = []
        self.addr: list[int] = []
        self.est: list[int] = []
        self.est_at: list[float] = []
        self.lost: list[int] = []
        self.lost_at: list[float] = []
        self.busy: list[int] = []
        self.acks: dict[str, list[int]] = {t: [] for t in TYPES}
        self.ack_at: dict[str, list[float]] = {t: [] for t in TYPES}
        self.ver: dict[str, list[str]] = {t: [] for t in TYPES}
        self.spans: list[list[list[float]]] = []
        self.errors: list[list[tuple[float, str]]] = []
        self.stopped: list[bool] = []
        self.calls: list[Any] = []  # the current stream's call, None between streams
        self.tasks: list[asyncio.Future[None]] = []
        self.dropping: set[int] = set()
        for i in range(a.count):
            self.add(i, i % len(self.addrs))
        self.marked: tuple[list[int], list[int], list[int], int] = ([], [], [], 0)
        self.start: Any = None  # set by main: starts agent i's task

    def add(self, ident: int, addr: int) -> int:
        """A new agent (not started): its number."""
        self.ident.append(ident)
        self.addr.append(addr)
        for xs in (self.est, self.lost, self.busy):
            xs.append(0)
        for ys in (self.est_at, self.lost_at):
            ys.append(0.0)
        for t in TYPES:
            self.acks[t].append(0)
            self.ack_at[t].append(0.0)
            self.ver[t].append("")
        self.spans.append([])
        self.errors.append([])
        self.stopped.append(False)
        self.calls.append(None)
        return len(self.ident) - 1

    @property
    def count(self) -> int:
        return len(self.ident)

    def dump(self) -> dict[str, Any]:
        return {
            "now": time.monotonic(),
            "addrs": self.addrs,
            "ident": self.ident,
            "addr": self.addr,
            "est": self.est,
            "est_at": self.est_at,
            "lost": self.lost,
            "lost_at": self.lost_at,
            "busy": self.busy,
            "acks": self.acks,
            "ack_at": self.ack_at,
            "ver": self.ver,
            "spans": self.spans,
            "errors": self.errors,
            "stopped": self.stopped,
        }

    def watching(self, service: int) -> list[int]:
        """The agents whose EDS subscription holds ``service``'s cluster (see ``stream``)."""
        return [i for i in range(self.count) if (service - self.ident[i] * 7) % self.services < self.eds]

    async def acked(self, since: float, timeout: float, types: list[str], service: int | None) -> dict[str, Any]:
        targets = range(self.count) if service is None else self.watching(service)
        deadline = time.monotonic() + timeout
        while True:
            pending = sum(1 for i in targets if any(self.ack_at[t][i] <= since for t in types))
            if pending == 0 or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)  # the ACK stamps are exact; this only decides when to answer
        after = [x for t in TYPES for x in self.ack_at[t] if x > since]
        by_addr: dict[int, list[float]] = {}
        for t in TYPES:
            for i, x in enumerate(self.ack_at[t]):
                if x > since:
                    span = by_addr.setdefault(self.addr[i], [x, x])
                    span[0], span[1] = min(span[0], x), max(span[1], x)
        return {
            "ok": pending == 0,
            "targets": len(targets),
            "pending": pending,
            "first": min(after, default=0.0),
            "last": max(after, default=0.0),
            "by_addr": by_addr,
        }

    def mark(self) -> dict[str, Any]:
        self.marked = (list(self.addr), list(self.est), list(self.lost), sum(self.busy))
        return {"agents": [self.marked[0].count(k) for k in range(len(self.addrs))]}

    async def recovered(self, addr: int, timeout: float) -> dict[str, Any]:
        at, est, lost, busy = self.marked
        victims = [i for i in range(len(at)) if at[i] == addr]
        deadline = time.monotonic() + timeout
        while True:
            pending = sum(1 for i in victims if self.est[i] <= est[i])
            if pending == 0 or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)  # the ACK stamps are exact; this only decides when to answer
        return {
            "ok": pending == 0,
            "victims": len(victims),
            "pending": pending,
            "established_at": [self.est_at[i] for i in victims if self.est[i] > est[i]],
            "others_lost": sum(1 for i in range(len(at)) if at[i] != addr and self.lost[i] > lost[i]),
            "busy_refusals": sum(self.busy) - busy,
            "agents": [self.addr.count(k) for k in range(len(self.addrs))],
        }

    async def command(self, line: str) -> dict[str, Any]:
        word, *rest = line.split()
        if word == "dump":
            return self.dump()
        if word == "acked":
            service = int(rest[3]) if len(rest) > 3 else None
            return await self.acked(float(rest[0]), float(rest[1]), rest[2].split(","), service)
        if word == "mark":
            return self.mark()
        if word == "recovered":
            return await self.recovered(int(rest[0]), float(rest[1]))
        if word == "spawn":
            first, end = int(rest[0]), int(rest[1])
            new = [self.add(ident, int(k)) for ident in range(first, end) for k in rest[2].split(",")]
            for i in new:
                self.start(i)
            return {"agents": new}
        if word == "drop":
            every, remainder = int(rest[0]), int(rest[1])
            dropped = []
            for i in range(self.count):
                call = self.calls[i]
                if i % every == remainder and call is not None and not self.stopped[i]:
                    self.dropping.add(i)
                    call.cancel()
                    dropped.append(i)
            return {"agents": dropped}
        if word == "stop":
            ids = [int(x) for x in rest[0].split(",")]
            for i in ids:
                self.stopped[i] = True
                self.tasks[i].cancel()
            await asyncio.gather(*(self.tasks[i] for i in ids), return_exceptions=True)
            return {"agents": ids}
        return {"error": f"unknown command {word!r}"}


SHORT = {v: k for k, v in TYPES.items()}


def failed(i: int, fleet: Fleet, code: grpc.StatusCode, details: str | None) -> None:
    """Agent ``i``'s stream ended with an error status."""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        fleet.busy[i] += 1
    fleet.errors[i] = [*fleet.errors[i][-4:], (time.monotonic(), f"{code.name}: {details}")]


async def stream(i: int, fleet: Fleet, wait_for_ready: bool) -> bool:
    """One ADS stream of agent ``i`` to its current address, until it ends (EOF: returns) or
    fails (raises). Returns whether it delivered a response."""
    delta = fleet.delta
    ident = fleet.ident[i]
    channel = grpc.aio.insecure_channel(fleet.addrs[fleet.addr[i]], options=[("grpc.use_local_subchannel_pool", 1)])
    got = False
    try:
        request: Any = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
        # wait_for_ready: a fleet connecting at once may find the listen backlog full; retry, do not fail.
        call = channel.stream_stream(
            DELTA if delta else SOTW,
            request_serializer=request.SerializeToString,
            response_deserializer=HEADER.FromString,
        )(wait_for_ready=wait_for_ready)
        fleet.calls[i] = call
        md = struct_pb2.Struct()
        ip = f"10.200.{ident // 250}.{ident % 250 + 1}"
        meta = {"NAMESPACE": "bench", "DNS_CAPTURE": "true", "INSTANCE_IPS": ip}
        if fleet.group:
            meta["AUTO_REGISTER_GROUP"] = fleet.group
        md.update(meta)
        node = base_pb2.Node(id=f"sidecar~{ip}~agent-{ident}.bench~bench.svc.cluster.local", metadata=md)
        services, eds = fleet.services, fleet.eds
        names = {EDS: [cluster((ident * 7 + k) % services) for k in range(eds)], CDS: [], NDS: []}
        if delta:
            await call.write(request(type_url=CDS, node=node, resource_names_subscribe=["*"]))
            await call.write(request(type_url=NDS, resource_names_subscribe=["*"]))
            await call.write(request(type_url=EDS, resource_names_subscribe=names[EDS]))
        else:
            await call.write(request(type_url=CDS, node=node))
            await call.write(request(type_url=NDS))
            await call.write(request(type_url=EDS, resource_names=names[EDS]))
        first = {CDS, NDS, EDS}
        while True:
            r = await call.read()
            if r is grpc.aio.EOF:
                return got
            if not got:
                fleet.spans[i].append([time.monotonic(), 0.0])  # registered: the first answer follows it
            got = True
            if delta:
                await call.write(request(type_url=r.type_url, response_nonce=r.nonce))
            else:
                ack = request(type_url=r.type_url, version_info=r.version_info, response_nonce=r.nonce)
                ack.resource_names.extend(names[r.type_url])
                await call.write(ack)
            short = SHORT.get(r.type_url)
            if short is not None:
                fleet.acks[short][i] += 1
                fleet.ack_at[short][i] = time.monotonic()
                fleet.ver[short][i] = r.version_info
            if first:
                first.discard(r.type_url)
                if not first:
                    fleet.est[i] += 1
                    fleet.est_at[i] = time.monotonic()
                    if fleet.est[i] == 1:
                        fleet.established_once += 1
                        if fleet.established_once == fleet.initial:
                            fleet.ready.set()
    except grpc.aio.AioRpcError as e:
        failed(i, fleet, e.code(), e.details())
        if not fleet.failover:
            raise
        return got
    except (asyncio.CancelledError, asyncio.InvalidStateError) as e:
        if i in fleet.dropping and not fleet.stopped[i]:
            return got  # ``drop``: the stream was cancelled, not the agent (``stop`` marks those first)
        if isinstance(e, asyncio.CancelledError):
            raise
        # "RPC already finished": the server ended the stream (refused it) while a request was
        # being written; its status says why.
        failed(i, fleet, await call.code(), await call.details())
        if not fleet.failover:
            raise
        return got
    finally:
        fleet.dropping.discard(i)
        fleet.calls[i] = None
        if got:
            fleet.spans[i][-1][1] = time.monotonic()
        await channel.close()


# Per agent: what is left of its current round of addresses (the real agent's rounds).
rounds: dict[int, list[int]] = collections.defaultdict(list)


async def agent(i: int, fleet: Fleet, rng: random.Random) -> None:
    attempt = 0
    while not fleet.stopped[i]:
        # The first stream waits for its channel (a fleet connecting at once may find the
        # listen backlog full); a reconnect must not wait on a dead replica's address.
        got = await stream(i, fleet, wait_for_ready=fleet.est[i] == 0 and attempt == 0)
        if not fleet.failover:
            return  # EOF ends the agent, as before
        fleet.lost[i] += 1
        fleet.lost_at[i] = time.monotonic()
        if got:
            attempt = 0
        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt)
        attempt += 1
        await asyncio.sleep(rng.uniform(delay / 2, delay))
        if not rounds[i]:
            order = list(range(len(fleet.addrs)))
            rng.shuffle(order)
            if len(order) > 1 and order[0] == fleet.addr[i]:
                order[0], order[1] = order[1], order[0]
            rounds[i] = order
        fleet.addr[i] = rounds[i].pop(0)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("addresses", help="PORT, or PORT/HOST:PORT comma-separated (agent i starts on address i mod N)")
    p.add_argument("count", type=int)
    p.add_argument("services", type=int)
    p.add_argument("eds", type=int)
    p.add_argument("mode", nargs="?", choices=("sotw", "delta"), default="sotw")
    p.add_argument("--failover", action="store_true", help="reconnect to the next address (real agent's backoff)")
    p.add_argument("--register", metavar="GROUP", default="", help="auto-register into this WorkloadGroup")
    p.add_argument("--control", action="store_true", help="stdin commands: 'dump' prints the state as JSON")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    fleet = Fleet(args)
    rng = random.Random(args.seed)

    async def supervised(i: int) -> None:
        try:
            await agent(i, fleet, rng)
        except Exception as e:  # a lost agent would leave the benchmark waiting: say so and stop
            print(f"agent {i} failed: {e!r}", file=sys.stderr, flush=True)
            print("failed", flush=True)

    def start(i: int) -> None:
        assert len(fleet.tasks) == i
        fleet.tasks.append(asyncio.ensure_future(supervised(i)))

    fleet.start = start
    for i in range(fleet.initial):
        start(i)
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # connect in waves, as a fleet would
    await fleet.ready.wait()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    if args.control:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            if line.strip():
                print(json.dumps(await fleet.command(line)), flush=True)
    else:
        await loop.run_in_executor(None, sys.stdin.read)
    for i, t in enumerate(fleet.tasks):
        fleet.stopped[i] = True
        t.cancel()


if __name__ == "__main__":
    asyncio.run(main())
