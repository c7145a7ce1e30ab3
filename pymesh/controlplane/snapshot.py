"""Immutable push snapshots and their pre-encoded xDS resources.

A :class:`Snapshot` is built once per (debounced) change from the registry.
The resources a proxy receives depend only on a small *view* of the proxy
(its client type for CDS, network and locality for EDS, DNS capture and IP
families for NDS, namespace and labels for a sidecar's LDS — its
PeerAuthentication — and namespace and labels for RDS: VirtualService exportTo
and source matches; the RDS view holds both gRPC's ``outbound|<port>||<host>``
and a sidecar's ``"<port>"`` configurations, each client subscribing to its
own names), so each (type, view) is generated
once per snapshot and shared by every connection with that view — where a
naive server regenerates per connection (istiod caches the same way, keyed
by the parts of the proxy a generator reads).

Each resource is kept encoded: the ``Any`` bytes, a content hash (the delta
``Resource.version``; stable across restarts since it is content-derived)
and the wire bytes of a ``DiscoveryResponse`` / ``DeltaDiscoveryResponse``
holding only that resource. Protobuf messages concatenate (repeated fields
append, scalars take the last value), so a response for a connection is a
header plus a join of these byte strings plus its nonce: no message is
built or serialised per connection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from pymesh.controlplane import generators as gen
from pymesh.controlplane.httproutes import RouteView
from pymesh.controlplane.nametable import NdsView, build_name_table
from pymesh.controlplane.node import Proxy
from pymesh.controlplane.peerauth import VIRTUAL_INBOUND, PolicyView, virtual_inbound
from pymesh.controlplane.registry import Registry
from pymesh.mesh import xds
from pymesh.mesh.xds import NDS

LDS, RDS, CDS, EDS, HEALTH = xds.LDS, xds.RDS, xds.CDS, xds.EDS, xds.HEALTH
XDS_TYPES = (LDS, RDS, CDS, EDS, NDS)
# SotW: a response of these types must carry every subscribed resource (LDS
# and CDS per the xDS spec; NDS is a singleton table).
FULL_STATE = frozenset((LDS, CDS, NDS))
# Types where a first request naming nothing means "everything" (legacy wildcard).
WILDCARD_TYPES = FULL_STATE
SHORT = xds.SHORT


@dataclass(frozen=True)
class Encoded:
    name: str
    version: str  # content hash
    sotw: bytes  # DiscoveryResponse{resources: [any]} wire bytes
    delta: bytes  # DeltaDiscoveryResponse{resources: [Resource{name, version, any}]} wire bytes


def encode(type_url: str, name: str, msg: Any) -> Encoded:
    value = msg.SerializeToString(deterministic=True)
    version = hashlib.blake2b(value, digest_size=8).hexdigest()
    a = any_pb2.Any(type_url=type_url, value=value)
    sotw = discovery_pb2.DiscoveryResponse(resources=[a]).SerializeToString()
    res = discovery_pb2.Resource(name=name, version=version, resource=a)
    delta = discovery_pb2.DeltaDiscoveryResponse(resources=[res]).SerializeToString()
    return Encoded(name, version, sotw, delta)


def view_key(type_url: str, proxy: Proxy) -> Hashable:
    if type_url == CDS:
        return proxy.generator
    if type_url == EDS:
        # A network's gateway splices to its own network's endpoints only (never on to another
        # gateway): the AUTO_PASSTHROUGH port is where other networks' traffic comes in.
        local = proxy.type == "router" and bool(proxy.network)
        return gen.EdsView(network=proxy.network, locality=proxy.locality, local_only=local)
    if type_url == NDS:
        return NdsView(dns_capture=proxy.dns_capture, families=proxy.ip_families, network=proxy.network)
    if type_url == RDS:
        # VirtualService exportTo, sourceNamespace and sourceLabels (pymesh.controlplane.httproutes).
        return RouteView.of(proxy.namespace, proxy.labels)
    if type_url == LDS and proxy.type == "sidecar" and proxy.generator != gen.GRPC:
        # Sidecars (the VM agent) also get the virtualInbound listener, which carries their
        # PeerAuthentication mode, and istiod's outbound HTTP listeners (0.0.0.0_<port>, whose
        # routes are the "<port>" RDS names); proxyless gRPC clients keep the shared API listeners.
        return PolicyView.of(proxy.namespace, proxy.labels)
    return None


# LDS view of what every sidecar shares: the API listeners and the outbound HTTP listeners
# (a PolicyView adds its virtualInbound listener to it).
SIDECAR_LISTENERS = "sidecar"


def generate(registry: Registry, type_url: str, key: Hashable) -> dict[str, Any]:
    """The resources of one type for one view, as messages by name."""
    if type_url == LDS:
        if isinstance(key, PolicyView):
            return {**generate(registry, LDS, SIDECAR_LISTENERS), VIRTUAL_INBOUND: inbound_listener(registry, key)}
        if key == SIDECAR_LISTENERS:
            return {**gen.listeners(registry), **gen.sidecar_listeners(registry)}
        return gen.listeners(registry)
    if type_url == RDS:
        # Both naming families, so a gRPC client and a sidecar with the same view share it: gRPC
        # asks for ``outbound|<port>||<host>``, a sidecar for ``"<port>"`` (what its listeners name).
        assert key is None or isinstance(key, RouteView)
        return {**gen.routes(registry, key), **gen.sidecar_routes(registry, key)}
    if type_url == CDS:
        assert isinstance(key, str)
        return gen.clusters(registry, key)
    if type_url == EDS:
        assert isinstance(key, gen.EdsView)
        return gen.endpoints(registry, key)
    if type_url == NDS:
        assert isinstance(key, NdsView)
        return {"": build_name_table(registry, key)}
    return {}


def inbound_listener(registry: Registry, view: PolicyView) -> Any:
    labels = dict(view.labels)
    return virtual_inbound(
        registry.peer_authentication(view.namespace, labels),
        access_log=registry.access_log(view.namespace, labels),
    )


@dataclass(frozen=True)
class Diff:
    changed: frozenset[str]  # added or modified
    removed: frozenset[str]

    def __bool__(self) -> bool:
        return bool(self.changed or self.removed)


class Snapshot:
    """One version of everything the control plane serves. Immutable once
    published; the memo tables only ever gain entries computed from the
    immutable registry, so concurrent readers see the same values."""

    def __init__(self, version: int, registry: Registry) -> None:
        self.version = version
        self.registry = registry
        self._resources: dict[tuple[str, Hashable], Mapping[str, Encoded]] = {}
        self._diffs: dict[tuple[str, Hashable, int], Diff] = {}
        self._bodies: dict[tuple[str, Hashable], bytes] = {}
        self._pushes: dict[tuple[str, Hashable, str], bytes] = {}
        self._versions: dict[tuple[str, Hashable], str] = {}

    def resources(self, type_url: str, key: Hashable) -> Mapping[str, Encoded]:
        got = self._resources.get((type_url, key))
        if got is None and isinstance(key, PolicyView):
            # The other listeners are the same for every sidecar: encoded once, shared.
            vi = encode(type_url, VIRTUAL_INBOUND, inbound_listener(self.registry, key))
            got = dict(sorted({**self.resources(type_url, SIDECAR_LISTENERS), VIRTUAL_INBOUND: vi}.items()))
            self._resources[(type_url, key)] = got
        if got is None and type_url == LDS and key == SIDECAR_LISTENERS:
            # The API listeners are gRPC's (view None), encoded once for both.
            extra = gen.sidecar_listeners(self.registry)
            shared = {name: encode(type_url, name, m) for name, m in extra.items()}
            got = dict(sorted({**self.resources(type_url, None), **shared}.items()))
            self._resources[(type_url, key)] = got
        if got is None:
            msgs = generate(self.registry, type_url, key)
            got = {name: encode(type_url, name, m) for name, m in sorted(msgs.items())}
            self._resources[(type_url, key)] = got
        return got

    def for_proxy(self, type_url: str, proxy: Proxy) -> Mapping[str, Encoded]:
        return self.resources(type_url, view_key(type_url, proxy))

    def diff(self, older: Snapshot, type_url: str, key: Hashable) -> Diff:
        memo = (type_url, key, older.version)
        got = self._diffs.get(memo)
        if got is None:
            new = self.resources(type_url, key)
            old = older.resources(type_url, key)
            changed = frozenset(n for n, e in new.items() if (o := old.get(n)) is None or o.version != e.version)
            removed = frozenset(n for n in old if n not in new)
            got = Diff(changed, removed)
            self._diffs[memo] = got
        return got

    def sotw_body(self, type_url: str, key: Hashable) -> bytes:
        """Every resource of (type, view), joined once: the body of each
        wildcard SotW response (2,000 agents share one 300 KB CDS body)."""
        body = self._bodies.get((type_url, key))
        if body is None:
            body = b"".join(e.sotw for e in self.resources(type_url, key).values())
            self._bodies[(type_url, key)] = body
        return body

    def shared_push(self, type_url: str, key: Hashable, nonce: str) -> bytes:
        """The whole SotW response for every wildcard subscriber of (type,
        view) in a push: built once, the same bytes object queued to each."""
        memo = (type_url, key, nonce)
        got = self._pushes.get(memo)
        if got is None:
            got = sotw_response(type_url, nonce, self.sotw_body(type_url, key), self.body_version(type_url, key))
            self._pushes[memo] = got
        return got

    def body_version(self, type_url: str, key: Hashable) -> str:
        """The ``version_info`` of :meth:`sotw_body`'s response, hashed once per (type, view)."""
        got = self._versions.get((type_url, key))
        if got is None:
            got = content_version(self.sotw_body(type_url, key))
            self._versions[(type_url, key)] = got
        return got

    def has_view(self, type_url: str, key: Hashable) -> bool:
        return (type_url, key) in self._resources


def empty_route(name: str) -> Encoded:
    """The answer to a route configuration name the snapshot does not have (SotW RDS):
    an empty configuration of that name, as istiod sends, so a listener waiting for it
    (no initial fetch timeout) is not left warming."""
    return encode(RDS, name, gen.empty_route_configuration(name))


def content_version(body: bytes) -> str:
    """A state-of-the-world response's ``version_info``: the hash of the resources it carries
    (their encoded bytes, in the snapshot's order). Replicas that build the same snapshot send
    the same version, and an agent that moves to another replica with nothing changed is told
    the version it already holds; a process-local counter would differ per replica."""
    return hashlib.blake2b(body, digest_size=8).hexdigest()


def sotw_response(type_url: str, nonce: str, items: list[Encoded] | bytes, version: str | None = None) -> bytes:
    """``items``: the resources, or an already joined body (``Snapshot.sotw_body``); the
    version is their content's (:func:`content_version`; ``version`` when the caller has it)."""
    body = items if isinstance(items, bytes) else b"".join(e.sotw for e in items)
    if version is None:
        version = content_version(body)
    head = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url).SerializeToString()
    tail = discovery_pb2.DiscoveryResponse(nonce=nonce).SerializeToString()
    return b"".join((head, body, tail))


def delta_response(type_url: str, version: str, nonce: str, items: list[Encoded], removed: list[str]) -> bytes:
    head = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=version, type_url=type_url, removed_resources=removed
    ).SerializeToString()
    tail = discovery_pb2.DeltaDiscoveryResponse(nonce=nonce).SerializeToString()
    return b"".join([head, *(e.delta for e in items), tail])
