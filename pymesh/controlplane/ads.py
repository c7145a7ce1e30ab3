"""The gRPC Aggregated Discovery Service: state-of-the-world and delta.

Protocol handling (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol; the same
structure as go-control-plane ``pkg/server/sotw/v3`` and ``pkg/server/delta/v3``):
- The first request of a stream must carry the node (a health report that
  arrives first is dropped, as istiod drops it); the node is parsed like
  istiod parses it and the connect hook runs before anything is answered
  (auto-registration; an error fails the stream with its gRPC code).
- Per connection and type: the last nonce sent, the snapshot version the
  connection holds, the last ACKed version and the last NACK. A request
  whose nonce is not the last one sent is stale and not answered (SotW);
  an ``error_detail`` is a NACK: logged with its detail, nothing is resent,
  so the client stays on its last good version. Delta applies subscription
  changes even from stale requests, as the spec requires.
- ``istio.v1.HealthInformation`` requests go to the health hook and are
  never answered.
- Bounds on what a client can make the server hold or write: the node of the
  first request is at most ``max_node_bytes`` (default 64 KiB; an Envoy or
  istio-agent node is a few KB) or the stream fails with INVALID_ARGUMENT
  before anything is parsed or kept (100 streams with 3.5 MB of metadata
  each took the control plane from 85 to 789 MB); a NACK is logged once per
  response it answers (a repeat of the same nonce is counted, not logged),
  its message cut to 512 characters, and NACK and other peer-caused log
  lines are rate-limited per category with a summary of what was dropped
  (:mod:`pymesh.controlplane.lograte`).
- Admission: at most ``max_pending_streams`` streams are being set up at once
  (from their first request to its answer: node parsing, authorization, the
  registration that writes to the store, the first response). A stream whose
  first request finds them all taken is refused at once with
  RESOURCE_EXHAUSTED "control plane busy: N streams being set up, retry",
  counted (``refused_busy``): in a reconnect flood the client backs off and
  tries its next address (another replica) instead of queueing here behind
  the store. istiod refuses the same way with a rate limit
  (``pilot/pkg/xds/ads.go`` and ``delta.go``: ``WaitForRequestLimit``, then
  ``codes.ResourceExhausted``); here the bound is on work in flight, not a rate, so
  a fast store admits as fast as it answers. ``0`` turns admission off, for
  clients behind one load-balanced address that cannot choose another replica
  (hashicorp/consul#22299). Without an awaiting registration (SQLite) a setup
  never yields to the loop, so the bound only bites where setups overlap (etcd).
- istiod's metrics (:mod:`pymesh.controlplane.xdsmetrics`) are counted
  where they happen: every response sent (type, size, and the time from
  the start of building it to its queueing: istiod's ``pilot_xds_push_time``
  also covers the send, which here happens later on the stream's writer),
  every NACK, and per push, for each connection sent something, the time
  since the change that caused it (``pilot_proxy_convergence_time``).
- Pushes: a new snapshot is compared, per (type, view), with the previous
  one; a connection gets a response only if a resource it subscribes to
  changed (LDS/CDS/NDS: the full set; EDS/RDS: only the changed ones).
  Every connection is always at the latest snapshot after a push (either
  sent or, when unaffected, advanced without sending), so one diff per
  view is enough.
- SotW RDS: a subscribed route configuration the snapshot does not have is
  answered with an empty one of that name, when asked and when it goes away,
  as istiod answers a sidecar (``pilot/pkg/networking/core/httproute.go``
  ``BuildHTTPRoutes``): Envoy waits for every route its listeners name (no
  initial fetch timeout) and never hears "does not exist" over SotW. Delta
  keeps reporting such a name in ``removed_resources``.

``strategy="naive"`` turns all of this off — every change regenerates every
subscribed type per connection and resends it — and exists as the baseline
for benchmarks/controlplane_bench.py.

Size: SotW and delta ADS over one connection model (subscriptions, nonces, ACK/NACK,
push targeting); splitting them would duplicate that model.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError

from pymesh._native import PymeshError
from pymesh.controlplane.defaults import DEFAULT_MAX_PENDING_STREAMS
from pymesh.controlplane.errors import ControlPlaneError, NodeError, RegistrationError
from pymesh.controlplane.lograte import LogLimiter, clip
from pymesh.controlplane.node import Proxy, parse_node
from pymesh.controlplane.snapshot import (
    FULL_STATE,
    HEALTH,
    RDS,
    SHORT,
    WILDCARD_TYPES,
    XDS_TYPES,
    Encoded,
    Snapshot,
    content_version,
    delta_response,
    empty_route,
    encode,
    generate,
    sotw_response,
    view_key,
)
from pymesh.controlplane.xdsmetrics import XdsMetrics

log = logging.getLogger("pymesh.controlplane")

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
DEFAULT_MAX_NODE_BYTES = 64 * 1024


class Hooks(Protocol):
    async def on_connect(self, conn: Connection) -> None: ...
    async def on_disconnect(self, conn: Connection) -> None: ...
    async def on_health(self, conn: Connection, healthy: bool, message: str) -> None: ...


@dataclass(frozen=True)
class Nack:
    conn_id: int
    node_id: str
    type_url: str
    version: str
    nonce: str
    message: str
    at: float = 0.0  # time.time() it arrived


@dataclass
class Watch:
    names: set[str] | None  # None: wildcard
    nonce: str = ""
    version: int = -1  # snapshot version the connection holds for this type
    acked: str = ""  # last ACKed version_info (delta: the system_version_info of the response ACKed)
    nack: str = ""  # last NACK's error message ("" after an ACK)
    answered: str = ""  # nonce of the last response the client ACKed or NACKed
    known: set[str] = field(default_factory=set)  # delta: names the client holds
    # For the admin API's sync state (pymesh.controlplane.adminapi), as istiod keeps them in
    # its WatchedResource (pilot/pkg/model/context.go: NonceSent, NonceAcked, NonceNacked):
    sent_version: str = ""  # version of the last response sent (SotW version_info; delta system_version_info)
    acked_nonce: str = ""  # nonce of the last response ACKed (a NACK leaves it)
    last_nack: Nack | None = None  # kept after a later ACK, for operators


class Connection:
    """One ADS stream."""

    _ids = itertools.count(1)

    def __init__(self, peer: str, delta: bool) -> None:
        self.id = next(self._ids)
        self.peer = peer
        self.delta = delta
        self.proxy: Proxy | None = None
        self.connected_at = time.time()
        self.watches: dict[str, Watch] = {}
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._nonces = itertools.count(1)
        self.abort: tuple[grpc.StatusCode, str] | None = None
        self.attrs: dict[str, Any] = {}  # for hooks (e.g. the registration key)

    def next_nonce(self) -> str:
        return f"{self.id}.{next(self._nonces)}"

    def __repr__(self) -> str:
        node = self.proxy.node_id if self.proxy else "?"
        return f"<connection {self.id} {node} from {self.peer}>"


_CODES = {
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
}


class AdsServer:
    def __init__(
        self,
        snapshot: Snapshot,
        hooks: Hooks,
        *,
        strategy: str = "incremental",
        max_node_bytes: int = DEFAULT_MAX_NODE_BYTES,
        max_pending_streams: int = DEFAULT_MAX_PENDING_STREAMS,
    ) -> None:
        if strategy not in ("incremental", "naive"):
            raise ControlPlaneError(f"unknown push strategy {strategy!r}")
        if max_pending_streams < 0:
            raise ControlPlaneError(f"max_pending_streams {max_pending_streams}: expected 0 (off) or more")
        self.snapshot = snapshot
        self.hooks = hooks
        self.naive = strategy == "naive"
        self.max_node_bytes = max_node_bytes
        self.max_pending_streams = max_pending_streams
        self.pending = 0  # streams between their first request and its answer (admission)
        self.connections: dict[int, Connection] = {}
        self.nacks: list[Nack] = []
        self.stats = {
            "responses": 0,
            "pushes": 0,
            "push_rounds": 0,
            "nacks": 0,
            "acks": 0,
            "nodes_refused": 0,
            "repeated_nacks": 0,
            "refused_busy": 0,
        }
        self.metrics = XdsMetrics()
        self.limiter = LogLimiter(log)
        self.on_nack: Callable[[Nack], Awaitable[None] | None] | None = None
        self.last_answer = 0.0  # time.monotonic() of the last ACK/NACK received
        # Security hooks (pymesh.controlplane.ca.service; None: no checks, plaintext dev mode).
        # ``authenticate(conn, context)`` runs when a stream opens and records the caller's
        # authenticated identities in ``conn.attrs``; it raises a PymeshError with a ``code``
        # (gRPC status name) to reject the stream. ``authorize(conn)`` runs once the node is
        # parsed and before registration (istiod's xDS authorization, pilot/pkg/xds/auth.go);
        # it raises RegistrationError to reject it.
        self.authenticate: Callable[[Connection, Any], None] | None = None
        self.authorize: Callable[[Connection], None] | None = None

    def unanswered(self) -> int:
        """Responses not yet ACKed or NACKed (the last one per connection and type)."""
        return sum(
            1 for c in self.connections.values() for w in c.watches.values() if w.nonce and w.nonce != w.answered
        )

    # --- gRPC plumbing --------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        ident: Callable[[bytes], bytes] = lambda b: b  # noqa: E731 - responses are pre-encoded bytes
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._sotw_stream,
                    request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                    response_serializer=ident,
                ),
                "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._delta_stream,
                    request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                    response_serializer=ident,
                ),
            },
        )

    async def _sotw_stream(self, requests: AsyncIterator[Any], context: Any) -> None:
        await self._serve(Connection(context.peer(), delta=False), requests, context)

    async def _delta_stream(self, requests: AsyncIterator[Any], context: Any) -> None:
        await self._serve(Connection(context.peer(), delta=True), requests, context)

    async def _serve(self, conn: Connection, requests: AsyncIterator[Any], context: Any) -> None:
        if self.authenticate is not None:
            try:
                self.authenticate(conn, context)
            except PymeshError as e:
                self.limiter.log(logging.WARNING, "stream refusal", "stream from %s rejected: %s", conn.peer, e)
                code = _CODES.get(getattr(e, "code", ""), grpc.StatusCode.UNAUTHENTICATED)
                await context.abort(code, str(e))
                return
        reader = asyncio.ensure_future(self._read(conn, requests))
        try:
            while True:
                item = await conn.queue.get()
                if item is None:
                    break
                await context.write(item)
        finally:
            reader.cancel()
            await self._close(conn)
        if conn.abort is not None:
            await context.abort(*conn.abort)

    async def _read(self, conn: Connection, requests: AsyncIterator[Any]) -> None:
        try:
            async for req in requests:
                if conn.proxy is None:
                    if req.type_url == HEALTH:
                        self.limiter.log(
                            logging.WARNING, "early health", "%r: health report before the node is known; dropped", conn
                        )
                        continue
                    await self._admit(conn, req)
                    if conn.abort is not None:
                        return
                    continue
                if conn.delta:
                    await self._on_delta(conn, req)
                else:
                    await self._on_sotw(conn, req)
        except asyncio.CancelledError:
            raise
        except DecodeError as e:  # hostile or broken client: its stream fails, nothing else
            self.limiter.log(logging.WARNING, "undecodable request", "%r: undecodable request: %s", conn, e)
            conn.abort = (grpc.StatusCode.INVALID_ARGUMENT, f"undecodable request: {e}")
        except Exception as e:  # a bug must fail this stream, not the server
            log.exception("%r: request handling failed", conn)
            conn.abort = (grpc.StatusCode.INTERNAL, f"pymesh control plane: {e}")
        finally:
            conn.queue.put_nowait(None)

    async def _admit(self, conn: Connection, req: Any) -> None:
        """The stream's first request (opening and its first answer) under the admission bound."""
        limit = self.max_pending_streams
        if limit and self.pending >= limit:
            self.stats["refused_busy"] += 1
            self.limiter.log(
                logging.WARNING, "busy refusal", "stream from %s refused: %d streams being set up", conn.peer, limit
            )
            conn.abort = (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"control plane busy: {limit} streams being set up, retry",
            )
            return
        self.pending += 1
        try:
            await self._open(conn, req)
            if conn.abort is None:
                await (self._on_delta if conn.delta else self._on_sotw)(conn, req)
        finally:
            self.pending -= 1

    async def _open(self, conn: Connection, req: Any) -> None:
        if not req.HasField("node") or not req.node.id:
            conn.abort = (grpc.StatusCode.INVALID_ARGUMENT, "the first request of a stream must carry the node")
            return
        size = req.node.ByteSize()
        if size > self.max_node_bytes:
            # Refused before parsing: nothing of it is kept for the stream's lifetime.
            self.stats["nodes_refused"] += 1
            conn.abort = (
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the node (id and metadata) is {size} bytes, more than this control plane's "
                f"{self.max_node_bytes}-byte limit",
            )
            self.limiter.log(
                logging.WARNING, "oversized node", "stream from %s refused: node of %d bytes", conn.peer, size
            )
            return
        try:
            conn.proxy = parse_node(req.node)
            if self.authorize is not None:
                self.authorize(conn)
            await self.hooks.on_connect(conn)
        except NodeError as e:
            conn.abort = (grpc.StatusCode.INVALID_ARGUMENT, str(e))
            conn.proxy = None
            return
        except RegistrationError as e:
            self.limiter.log(logging.WARNING, "registration refusal", "%r rejected: %s", conn, e)
            conn.abort = (_CODES.get(e.code, grpc.StatusCode.FAILED_PRECONDITION), str(e))
            conn.proxy = None
            return
        self.connections[conn.id] = conn
        log.info("%r connected (%s)", conn, "delta" if conn.delta else "sotw")

    async def _close(self, conn: Connection) -> None:
        if self.connections.pop(conn.id, None) is not None:
            log.info("%r disconnected", conn)
            try:
                await self.hooks.on_disconnect(conn)
            except Exception:
                log.exception("%r: disconnect hook failed", conn)

    # --- resources ----------------------------------------------------------------

    def _current(self, conn: Connection, type_url: str) -> dict[str, Encoded] | Any:
        assert conn.proxy is not None
        if self.naive:
            key = view_key(type_url, conn.proxy)
            return {n: encode(type_url, n, m) for n, m in generate(self.snapshot.registry, type_url, key).items()}
        return self.snapshot.for_proxy(type_url, conn.proxy)

    @staticmethod
    def _select(resources: Any, names: AbstractSet[str] | None, type_url: str = "") -> list[Encoded]:
        """The subscribed resources; for SotW RDS (``type_url``) an unknown name gets an
        empty configuration of that name (:func:`empty_route`), as istiod answers."""
        if names is None:
            return list(resources.values())
        if type_url == RDS:
            return [resources[n] if n in resources else empty_route(n) for n in sorted(names) if n]
        return [resources[n] for n in sorted(names) if n in resources]

    def _send(self, conn: Connection, type_url: str, data: bytes, started: float) -> None:
        """Queues a response; ``started`` is the ``perf_counter()`` from before it was built."""
        conn.queue.put_nowait(data)
        self.stats["responses"] += 1
        self.metrics.sent(type_url, len(data), time.perf_counter() - started)

    def _nack(self, conn: Connection, type_url: str, version: str, nonce: str, message: str, code: int) -> None:
        assert conn.proxy is not None
        n = Nack(conn.id, clip(conn.proxy.node_id), type_url, clip(version), nonce, clip(message), time.time())
        w = conn.watches.get(type_url)
        if w is not None:
            w.last_nack = n
        self.nacks.append(n)
        del self.nacks[:-100]
        self.stats["nacks"] += 1
        self.metrics.rejected(type_url, n.node_id, code)
        self.limiter.log(
            logging.WARNING,
            "NACK",
            "NACK from %s for %s (staying on version %r, nonce %s): %s",
            n.node_id,
            SHORT.get(type_url, type_url),
            n.version,
            nonce,
            n.message,
        )
        if self.on_nack is not None:
            self.on_nack(n)

    # --- state of the world -------------------------------------------------------

    async def _on_sotw(self, conn: Connection, req: Any) -> None:
        t = req.type_url
        if t == HEALTH:
            healthy = not req.HasField("error_detail")
            await self.hooks.on_health(conn, healthy, "" if healthy else req.error_detail.message)
            return
        if t not in XDS_TYPES:
            log.debug("%r: unsupported type %s ignored", conn, t)
            return
        w = conn.watches.get(t)
        names = set(req.resource_names)
        wildcard = "*" in names or (not names and t in WILDCARD_TYPES and (w is None or w.names is None))
        requested: set[str] | None = None if wildcard else names - {"*"}
        if req.response_nonce:
            if w is None or req.response_nonce != w.nonce:
                log.debug("%r: stale nonce %s for %s ignored", conn, req.response_nonce, SHORT[t])
                return
            if req.HasField("error_detail") and w.answered == req.response_nonce and w.nack:
                # The same response NACKed again: counted, not logged or kept again.
                self.stats["repeated_nacks"] += 1
                return
            w.answered = req.response_nonce
            self.last_answer = time.monotonic()
            if req.HasField("error_detail"):
                w.nack = clip(req.error_detail.message) or "(no message)"
                self._nack(
                    conn, t, req.version_info, req.response_nonce, req.error_detail.message, req.error_detail.code
                )
                return
            w.acked = req.version_info
            w.acked_nonce = req.response_nonce
            w.nack = ""
            self.stats["acks"] += 1
            if requested == w.names:
                return  # a plain ACK
            w.names = requested
        else:
            w = Watch(names=requested)
            conn.watches[t] = w
        self._respond_sotw(conn, t, w, None)

    def _respond_sotw(self, conn: Connection, t: str, w: Watch, only: list[Encoded] | None) -> None:
        started = time.perf_counter()
        body: bytes
        if only is None and w.names is None and not self.naive:
            assert conn.proxy is not None
            key = view_key(t, conn.proxy)
            body = self.snapshot.sotw_body(t, key)
            version = self.snapshot.body_version(t, key)  # hashed once per (type, view)
        else:
            items = only if only is not None else self._select(self._current(conn, t), w.names, t)
            body = b"".join(e.sotw for e in items)
            version = content_version(body)
        w.nonce = conn.next_nonce()
        w.version = self.snapshot.version
        w.sent_version = version
        self._send(conn, t, sotw_response(t, w.nonce, body, w.sent_version), started)

    # --- delta --------------------------------------------------------------------

    async def _on_delta(self, conn: Connection, req: Any) -> None:
        t = req.type_url
        if t == HEALTH:
            healthy = not req.HasField("error_detail")
            await self.hooks.on_health(conn, healthy, "" if healthy else req.error_detail.message)
            return
        if t not in XDS_TYPES:
            return
        started = time.perf_counter()
        w = conn.watches.get(t)
        first = w is None
        if w is None:
            w = Watch(names=set())
            conn.watches[t] = w
        if req.response_nonce and req.response_nonce == w.nonce:
            repeated = req.HasField("error_detail") and w.answered == req.response_nonce and bool(w.nack)
            w.answered = req.response_nonce
            self.last_answer = time.monotonic()
            if repeated:
                self.stats["repeated_nacks"] += 1
            elif req.HasField("error_detail"):
                w.nack = clip(req.error_detail.message) or "(no message)"
                self._nack(conn, t, "", req.response_nonce, req.error_detail.message, req.error_detail.code)
            else:
                w.nack = ""
                w.acked = w.sent_version
                w.acked_nonce = req.response_nonce
                self.stats["acks"] += 1
        # Subscription changes apply even with a stale nonce (xDS spec, delta).
        subscribe = set(req.resource_names_subscribe)
        unsubscribe = set(req.resource_names_unsubscribe)
        if not first and not subscribe and not unsubscribe:
            return
        if first and not subscribe and t in WILDCARD_TYPES:
            subscribe = {"*"}
        added: set[str] = set()
        if "*" in subscribe:
            if w.names is not None:
                added = {"*"}
            w.names = None
            subscribe.discard("*")
        if "*" in unsubscribe and w.names is None:
            # Leaving the wildcard: the client holds everything it was sent; keep that explicitly.
            w.names = set(self._current(conn, t))
            w.known = set(w.names)
            unsubscribe.discard("*")
        if w.names is not None:
            added |= subscribe - w.names
            w.names |= subscribe
            w.names -= unsubscribe
        else:
            added |= subscribe
        w.known -= unsubscribe
        resources = self._current(conn, t)
        initial = dict(req.initial_resource_versions) if first else {}
        if "*" in added or first:
            candidates = set(resources) if w.names is None else set(w.names)
        else:
            candidates = added
        items = [
            resources[n]
            for n in sorted(candidates)
            if n in resources and initial.get(n) != resources[n].version and n not in (w.known - added)
        ]
        # Explicitly subscribed names that do not exist are reported as removed ("does not exist").
        missing = sorted(n for n in candidates if n not in resources and w.names is not None)
        if w.names is not None:
            # A wildcard watch tracks no names: the client holds every resource of its version
            # (saves a set of ~1,000 names per agent at 1,000 services).
            w.known |= {e.name for e in items} | {n for n in initial if n in resources}
        w.version = self.snapshot.version
        if items or missing or first:
            w.nonce = conn.next_nonce()
            w.sent_version = str(self.snapshot.version)
            self._send(conn, t, delta_response(t, str(self.snapshot.version), w.nonce, items, missing), started)

    # --- pushes -------------------------------------------------------------------

    def push(self, snapshot: Snapshot, changed_at: float | None = None) -> int:
        """Publishes ``snapshot`` and sends what changed to the connections it
        concerns. Returns the number of responses queued. Synchronous: no
        request is processed between the swap and the last queued response,
        so every connection ends at the new version. ``changed_at``: the
        ``time.monotonic()`` of the first change the snapshot holds (istiod's
        push request start), for ``pilot_proxy_convergence_time``."""
        started = time.monotonic()
        old, self.snapshot = self.snapshot, snapshot
        self.stats["push_rounds"] += 1
        sent = 0
        for conn in list(self.connections.values()):
            if conn.proxy is None:
                continue
            before = sent
            for t, w in conn.watches.items():
                t0 = time.perf_counter()
                if self.naive:
                    if conn.delta:
                        items = self._select(self._current(conn, t), w.names)
                        w.nonce = conn.next_nonce()
                        w.sent_version = str(snapshot.version)
                        self._send(conn, t, delta_response(t, str(snapshot.version), w.nonce, items, []), t0)
                    else:
                        self._respond_sotw(conn, t, w, None)
                    sent += 1
                    continue
                key = view_key(t, conn.proxy)
                if w.version != old.version:
                    # Not at the previous snapshot (cannot happen through push(); kept for safety): full resend.
                    if conn.delta:
                        w.version = snapshot.version
                        continue
                    self._respond_sotw(conn, t, w, None)
                    sent += 1
                    continue
                d = snapshot.diff(old, t, key)
                if conn.delta:
                    sent += self._push_delta(conn, t, w, d.changed, d.removed)
                    continue
                if w.names is None:
                    affected = bool(d)
                else:
                    # A subscribed route configuration that is gone becomes an empty one (_select).
                    full = t in FULL_STATE or t == RDS
                    affected = bool(w.names & d.changed) or (full and bool(w.names & d.removed))
                if not affected:
                    w.version = snapshot.version
                    continue
                if t in FULL_STATE and w.names is None:
                    # Identical bytes for every wildcard connection of this view, nonce included:
                    # a nonce need only be unique within its stream, and a push happens once per
                    # snapshot version and type ("p<version>.<type>" never collides with "<conn>.<n>").
                    w.nonce = f"p{snapshot.version}.{SHORT[t]}"
                    w.version = snapshot.version
                    w.sent_version = snapshot.body_version(t, key)
                    self._send(conn, t, snapshot.shared_push(t, key, w.nonce), t0)
                elif t in FULL_STATE:
                    self._respond_sotw(conn, t, w, None)
                else:
                    resources = snapshot.for_proxy(t, conn.proxy)
                    names = d.changed if w.names is None else (w.names & d.changed)
                    if t == RDS and w.names is not None:
                        names |= w.names & d.removed
                    self._respond_sotw(conn, t, w, self._select(resources, names, t))
                sent += 1
            if changed_at is not None and sent > before:
                # istiod records it once the proxy's push is sent (pilot/pkg/xds/ads.go, pushConnection).
                self.metrics.convergence.observe(max(0.0, time.monotonic() - changed_at))
        self.stats["pushes"] += sent
        self.stats["last_push_ms"] = round((time.monotonic() - started) * 1000)
        return sent

    def _push_delta(self, conn: Connection, t: str, w: Watch, changed: frozenset[str], removed: frozenset[str]) -> int:
        assert conn.proxy is not None
        started = time.perf_counter()
        names = changed if w.names is None else (changed & w.names)
        gone = sorted(removed if w.names is None else (removed & w.known))
        w.version = self.snapshot.version
        if not names and not gone:
            return 0
        resources = self.snapshot.for_proxy(t, conn.proxy)
        items = [resources[n] for n in sorted(names)]
        if w.names is not None:
            w.known |= names
            w.known -= set(gone)
        w.nonce = conn.next_nonce()
        w.sent_version = str(self.snapshot.version)
        self._send(conn, t, delta_response(t, str(self.snapshot.version), w.nonce, items, gone), started)
        return 1
