"""Simulated VM agents for benchmarks/controlplane_bench.py: COUNT ADS
streams (SotW or delta), each on its own TCP connection, each subscribing like an
istio-agent sidecar scoped to a few services: CDS (wildcard), NDS, and EDS
for EDS_PER_AGENT clusters; every response is ACKed at once.

    cp_agents.py PORT COUNT SERVICES EDS_PER_AGENT [sotw|delta]

Prints ``ready`` once every agent has ACKed its first CDS, NDS and EDS
response, then runs until stdin closes."""

from __future__ import annotations

import asyncio
import sys
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


async def agent(
    i: int, port: int, services: int, eds: int, delta: bool, ready: asyncio.Event, counter: list[int], total: int
) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
    request: Any = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
    # wait_for_ready: a fleet connecting at once may find the listen backlog full; retry, do not fail.
    call = channel.stream_stream(
        DELTA if delta else SOTW, request_serializer=request.SerializeToString, response_deserializer=HEADER.FromString
    )(wait_for_ready=True)
    md = struct_pb2.Struct()
    md.update({"NAMESPACE": "bench", "DNS_CAPTURE": "true", "INSTANCE_IPS": f"10.200.{i // 250}.{i % 250 + 1}"})
    node = base_pb2.Node(
        id=f"sidecar~10.200.{i // 250}.{i % 250 + 1}~agent-{i}.bench~bench.svc.cluster.local", metadata=md
    )
    names = {EDS: [cluster((i * 7 + k) % services) for k in range(eds)], CDS: [], NDS: []}
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
            return
        if delta:
            await call.write(request(type_url=r.type_url, response_nonce=r.nonce))
        else:
            ack = request(type_url=r.type_url, version_info=r.version_info, response_nonce=r.nonce)
            ack.resource_names.extend(names[r.type_url])
            await call.write(ack)
        if first:
            first.discard(r.type_url)
            if not first:
                counter[0] += 1
                if counter[0] == total:
                    ready.set()


async def main() -> None:
    port, count, services, eds = (int(a) for a in sys.argv[1:5])
    delta = sys.argv[5:6] == ["delta"]
    ready = asyncio.Event()
    counter = [0]
    tasks = []

    async def supervised(i: int) -> None:
        try:
            await agent(i, port, services, eds, delta, ready, counter, count)
        except Exception as e:  # a lost agent would leave the benchmark waiting: say so and stop
            print(f"agent {i} failed: {e!r}", file=sys.stderr, flush=True)
            print("failed", flush=True)

    for i in range(count):
        tasks.append(asyncio.ensure_future(supervised(i)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # connect in waves, as a fleet would
    await ready.wait()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for t in tasks:
        t.cancel()


if __name__ == "__main__":
    asyncio.run(main())
