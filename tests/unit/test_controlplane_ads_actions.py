"""Action sequences against the ADS state machine (requests with any type,
names, nonce, ACK/NACK; pushes of changed and unchanged snapshots), with
invariants checked after every step — the shape of Envoy's
load_balancer_fuzz, applied to the xDS server. In-process: the stream layer
is covered by the socket tests, this covers the protocol logic exhaustively."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from pymesh.controlplane.ads import AdsServer, Connection
from pymesh.controlplane.node import parse_node
from pymesh.controlplane.registry import build_registry
from pymesh.controlplane.resources import LoadResult, load_documents, load_path
from pymesh.controlplane.snapshot import FULL_STATE, HEALTH, XDS_TYPES, Snapshot, content_version
from support.paths import EXAMPLE_MESH

EXAMPLE = EXAMPLE_MESH
BASE = load_path(EXAMPLE).objects
EXTRA = LoadResult()
load_documents(
    "apiVersion: v1\nkind: Service\nmetadata: {name: extra}\n"
    "spec: {clusterIP: 10.96.7.7, ports: [{name: g, port: 81}]}\n"
    "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p2, labels: {app: product}}\nstatus: {podIP: 127.0.0.9}\n",
    "extra.yaml",
    EXTRA,
)
REGISTRIES = [build_registry(BASE), build_registry([*BASE, *EXTRA.objects])]


def resource_name(type_url: str, value: bytes) -> str:
    """The name of an encoded resource: field 1 of Listener, Cluster,
    RouteConfiguration and ClusterLoadAssignment; NDS is a nameless singleton."""
    if type_url.endswith("NameTable"):
        return ""
    assert value[0] == 0x0A
    length, i, shift = 0, 1, 0
    while True:
        b = value[i]
        length |= (b & 0x7F) << shift
        i += 1
        shift += 7
        if b < 0x80:
            break
    return value[i : i + length].decode()


class Hooks:
    async def on_connect(self, conn: Connection) -> None:
        return None

    async def on_disconnect(self, conn: Connection) -> None:
        return None

    async def on_health(self, conn: Connection, healthy: bool, message: str) -> None:
        return None


def proxy() -> Any:
    md = struct_pb2.Struct()
    md.update({"NAMESPACE": "default", "DNS_CAPTURE": "true"})
    return parse_node(base_pb2.Node(id="sidecar~10.0.0.1~a.default~default.svc.cluster.local", metadata=md))


PROXY = proxy()
ALL_NAMES = sorted({n for reg in REGISTRIES for t in XDS_TYPES for n in Snapshot(0, reg).for_proxy(t, PROXY)})
TYPES = [*XDS_TYPES, HEALTH, "type.googleapis.com/unknown.Type"]

request = st.fixed_dictionaries(
    {
        "kind": st.just("request"),
        "type": st.sampled_from(TYPES),
        "names": st.lists(st.sampled_from([*ALL_NAMES, "*", "no-such-resource"]), max_size=3),
        "nonce": st.sampled_from(["last", "stale", "none", "garbage"]),
        "error": st.booleans(),
    }
)
push = st.fixed_dictionaries({"kind": st.just("push"), "registry": st.sampled_from([0, 1])})
actions = st.lists(st.one_of(request, push), min_size=1, max_size=25)


class Harness:
    def __init__(self, delta: bool) -> None:
        self.server = AdsServer(Snapshot(1, REGISTRIES[0]), Hooks())
        self.conn = Connection("test", delta=delta)
        self.conn.proxy = PROXY
        self.server.connections[self.conn.id] = self.conn
        self.delta = delta
        self.version = 1
        self.seen_nonces: set[str] = set()
        self.last_nonce: dict[str, str] = {}
        # What the server has sent, applied as a client applies it: type -> name -> content hash.
        self.held: dict[str, dict[str, str]] = {}

    def drain(self) -> list[Any]:
        out = []
        while not self.conn.queue.empty():
            data = self.conn.queue.get_nowait()
            assert data is not None
            cls = discovery_pb2.DeltaDiscoveryResponse if self.delta else discovery_pb2.DiscoveryResponse
            out.append(cls.FromString(data))
        return out

    def apply(self, r: Any) -> None:
        held = self.held.setdefault(r.type_url, {})
        if self.delta:
            for x in r.resources:
                held[x.name] = x.version
            for gone in r.removed_resources:
                held.pop(gone, None)
            return
        w = self.conn.watches[r.type_url]
        if r.type_url in FULL_STATE and w.names is None:
            held.clear()  # SotW LDS/CDS/NDS: a response is the whole set
        for a in r.resources:
            held[resource_name(r.type_url, a.value)] = hashlib.blake2b(a.value, digest_size=8).hexdigest()

    def check_converged(self) -> None:
        """After a push the client holds the current version of every
        resource it subscribes to (and, for a wildcard, nothing else)."""
        snap = self.server.snapshot
        for t, w in self.conn.watches.items():
            current = snap.for_proxy(t, PROXY)
            held = self.held.get(t, {})
            wanted = set(current) if w.names is None else (w.names & set(current))
            for n in wanted:
                assert held.get(n) == current[n].version, (t, n)
            if w.names is None and (self.delta or t in FULL_STATE):
                assert set(held) == set(current), t

    def check(self, responses: list[Any]) -> None:
        snap = self.server.snapshot
        for r in responses:
            self.apply(r)
            assert r.type_url in XDS_TYPES and r.nonce
            # A nonce is unique within its stream.
            assert r.nonce not in self.seen_nonces
            self.seen_nonces.add(r.nonce)
            self.last_nonce[r.type_url] = r.nonce
            current = snap.for_proxy(r.type_url, PROXY)
            w = self.conn.watches[r.type_url]
            if self.delta:
                names = [x.name for x in r.resources]
                for x in r.resources:
                    assert x.name in current and x.version == current[x.name].version
                    assert x.resource.type_url == r.type_url
                assert len(set(names)) == len(names)
                for gone in r.removed_resources:
                    assert gone not in current or w.names is not None
            else:
                # The content's version: what any replica with this snapshot would send.
                body = discovery_pb2.DiscoveryResponse(resources=r.resources).SerializeToString()
                assert r.version_info == content_version(body)
                for a in r.resources:
                    assert a.type_url == r.type_url
                if r.type_url in FULL_STATE and w.names is None:
                    # SotW LDS/CDS/NDS: every resource of the view, each once.
                    assert len(r.resources) == len(current)
                    assert sorted(a.value for a in r.resources) == sorted(
                        discovery_pb2.DiscoveryResponse.FromString(e.sotw).resources[0].value for e in current.values()
                    )
        for w in self.conn.watches.values():
            assert w.version <= snap.version

    async def step(self, action: dict[str, Any]) -> None:
        if action["kind"] == "push":
            self.version += 1
            self.server.push(Snapshot(self.version, REGISTRIES[action["registry"]]))
            self.check(self.drain())
            # The invariant push() relies on: every watch ends at the new version.
            for t, w in self.conn.watches.items():
                assert w.version == self.version, (t, w)
            self.check_converged()
            return
        t = action["type"]
        nonce = {"last": self.last_nonce.get(t, ""), "stale": "0.0", "none": "", "garbage": "zz"}[action["nonce"]]
        if self.delta:
            req = discovery_pb2.DeltaDiscoveryRequest(
                type_url=t, response_nonce=nonce, resource_names_subscribe=action["names"]
            )
        else:
            req = discovery_pb2.DiscoveryRequest(
                type_url=t, response_nonce=nonce, resource_names=action["names"], version_info="1"
            )
        if action["error"]:
            req.error_detail.message = "rejected by the test"
        if self.delta:
            await self.server._on_delta(self.conn, req)
        else:
            await self.server._on_sotw(self.conn, req)
        responses = self.drain()
        if t == HEALTH or t not in XDS_TYPES:
            assert responses == []  # never answered
        if action["error"] and nonce and nonce == self.last_nonce.get(t) and not self.delta:
            assert responses == []  # a NACK is not answered: the client keeps its last good version
        self.check(responses)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
@given(actions)
def test_ads_action_sequences_keep_the_invariants(delta: bool, seq: list[dict[str, Any]]) -> None:
    h = Harness(delta)

    async def run() -> None:
        for a in seq:
            await h.step(a)

    asyncio.run(run())
