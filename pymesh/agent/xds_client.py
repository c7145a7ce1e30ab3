"""An ADS client over grpcio, state-of-the-world or (``delta=True``)
incremental; plaintext, or mTLS through ``channel_factory`` (the agent
sets :meth:`pymesh.agent.certs.WorkloadCerts.channel`).

Protocol (Envoy's xDS protocol: https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol,
"ACK/NACK and resource type instance version", "Resource updates"):
- One stream at a time. Its first request carries the node; then one
  request per subscribed type, each with the last version this client
  applied (the version is a property of the resources, not the stream).
- Each response goes to the type's handler (run in this client's thread,
  off every serving path; the handlers build native tables, which release
  the GIL). Success: ACK = same type, ``response_nonce``, the new
  ``version_info``. A handler exception: NACK = ``error_detail`` with the
  error text and ``version_info`` = the last good version; the handler
  must have left the serving tables untouched.
- Subscriptions change with :meth:`subscribe` (e.g. the EDS names after a
  CDS push): the full desired name set, with the type's latest nonce.
- ``istio.v1.HealthInformation``: :meth:`send_health` sends a request of
  that type (healthy: no ``error_detail``; unhealthy: code 13 and the probe
  message) and remembers it; the remembered state is re-sent on every new
  stream after the subscriptions (never as the first request, which istiod
  drops) — so a report lost with a stream is repeated (istio/istio#29741).
- ``delta=True`` speaks incremental ADS instead (``DeltaAggregatedResources``,
  what newer istio-agents use): subscriptions as ``resource_names_subscribe`` /
  ``_unsubscribe`` (``*`` for wildcard), the held resources' versions as
  ``initial_resource_versions`` on a new stream, and each response merged
  (``resources`` replaced, ``removed_resources`` dropped) into the held state
  before the handler sees the type's whole state — so handlers are the same
  for both variants. A NACK leaves the held state as it was.
- Reconnects: exponential backoff with jitter — the n-th consecutive failed
  attempt waits a random time in [d/2, d], d = min(max, base * 2^n); a
  stream that delivered a response resets n.
- Several control-plane replicas: ``target`` may list addresses
  (``host:port,host:port``), and a host name is resolved at connect time to
  every address DNS (or /etc/hosts) gives it. Each new stream goes to the
  next address, round robin from a random start (so a fleet given the same
  list spreads over the replicas). A stream that ends for any reason (a
  killed replica, a refusal such as RESOURCE_EXHAUSTED "control plane busy")
  is retried after one backoff step at the next address, so a dead replica
  costs one step, not a wait for it to return. The rotation is this client's
  own rather than gRPC's ``pick_first`` over a ``dns:///`` or ``ipv4:a,b``
  target: a fresh channel per stream with pick_first would always start at
  the first address (every agent on one replica, and one that refuses
  streams chosen again each time), and ``round_robin`` balances calls of one
  channel, not the one long-lived stream of a new channel. Names are
  re-resolved once per round, so a changed A record set is followed. Envoy
  reaches several management servers alike: one ``xds_cluster`` (STRICT_DNS,
  several hosts), each new ADS stream taking a host from the cluster's load
  balancer, and keeps its last configuration while it retries
  (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol, "Management Server
  Unreachable").
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pymesh.mesh.xds import CDS, CODE_INTERNAL, EDS, HEALTH, LDS, NDS, SHORT, metric_type

log = logging.getLogger(__name__)

__all__ = [
    "CDS",
    "CODE_INTERNAL",
    "EDS",
    "HEALTH",
    "LDS",
    "NDS",
    "SHORT",
    "XdsClient",
    "resolve_target",
    "split_target",
]

HEALTH_HOLD = 3.0  # seconds a stream's first health report waits for the first responses at most

# (type_url, resources as google.protobuf.Any, version_info) -> None; raise to NACK.
Handler = Callable[[str, list[Any], str], object]
# gRPC's own target URIs (grpc/grpc doc/naming.md): passed through whole, never split or resolved here.
GRPC_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")
Resolver = Callable[[str, int], list[str]]


def split_target(target: str) -> list[str]:
    """``host:port,host:port`` as a list (blanks dropped); a gRPC URI target stays one entry."""
    t = target.strip()
    if t.startswith(GRPC_SCHEMES):
        return [t]
    return [a.strip() for a in t.split(",") if a.strip()]


def _dns(host: str, port: int) -> list[str]:
    """Every address of ``host`` from the system resolver (the hosts file, then DNS), in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def resolve_target(target: str, resolve: Resolver = _dns) -> list[str]:
    """The addresses to rotate over: each entry of ``target``; an entry naming a host (not
    an IP literal) becomes one ``ip:port`` per address the resolver gives it. A name with
    one address, or none (resolution failed), stays as written: gRPC resolves it as it
    always did and reports its own error."""
    out: list[str] = []
    for entry in split_target(target):
        host, port = _host_port(entry)
        if host is None:
            out.append(entry)
            continue
        try:
            ips = list(dict.fromkeys(resolve(host, port)))
        except OSError:
            ips = []
        if len(ips) <= 1:
            out.append(entry)
        else:
            out.extend(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips)
    return list(dict.fromkeys(out))


def _host_port(entry: str) -> tuple[str | None, int]:
    """(host name, port) of a ``name:port`` entry; (None, 0) for IP literals, URIs, anything else."""
    if entry.startswith(GRPC_SCHEMES) or entry.startswith("[") or entry.count(":") != 1:
        return None, 0
    host, _, port = entry.partition(":")
    try:
        ipaddress.ip_address(host)
        return None, 0
    except ValueError:
        pass
    if not port.isdigit() or not host:
        return None, 0
    return host, int(port)


class XdsClient:
    def __init__(
        self,
        target: str,
        node: Any,
        handlers: Mapping[str, Handler],
        *,
        subscriptions: Mapping[str, Iterable[str] | None] | None = None,
        versions: Mapping[str, str] | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        on_state: Callable[[str, str], None] | None = None,
        rng: random.Random | None = None,
        delta: bool = False,
        resolve: Resolver = _dns,
    ) -> None:
        self.target = target  # one address, or several (see the module doc)
        self.node = node
        self.handlers = dict(handlers)
        # None = wildcard. Order of the dict = order of the first requests.
        self._subs: dict[str, set[str] | None] = {}
        for t, names in (subscriptions or {t: None for t in handlers}).items():
            self._subs[t] = None if names is None else set(names)
        self.versions: dict[str, str] = dict(versions or {})
        self.delta = delta
        # delta: the resources held per type (name -> envoy Resource), across streams.
        self._held: dict[str, dict[str, Any]] = {}
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.on_state = on_state
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._q: queue.Queue[Any] | None = None  # requests of the current stream
        self._nonces: dict[str, str] = {}
        self._health: tuple[bool, str] | None = None
        self._health_held = False  # the stream has not had its first responses yet
        self._awaiting: set[str] = set()  # types asked for on this stream, not answered yet
        self._stop = threading.Event()
        self._call: Any = None
        self._thread: threading.Thread | None = None
        self.state = "idle"
        self.last_error = ""
        self.attempt = 0  # consecutive failed attempts
        self.stats = {"streams": 0, "responses": 0, "acks": 0, "nacks": 0, "failures": 0, "health_reports": 0}
        self.last_nack: tuple[str, str] | None = None  # (type, message)
        # Per type, keyed by Istio's metric type label (cds, eds, lds, rds, nds): responses
        # received, responses NACKed, Unix time of the last one applied (the status port's metrics).
        self.pushes: dict[str, int] = {}
        self.rejects: dict[str, int] = {}
        self.last_push: dict[str, float] = {}
        self.next_retry: float | None = None  # seconds of the current backoff wait
        self.waits: list[float] = []  # the last backoff waits, oldest first (status, tests)
        # (target, options) -> grpc.Channel for each new stream; None: plaintext. pymesh.agent.certs
        # sets an mTLS one, which reads the current certificate per stream (rotation never
        # touches an open stream).
        self.channel_factory: Callable[[str, list[tuple[str, Any]]], Any] | None = None
        # Round robin over the control-plane addresses: the current round (re-resolved when it
        # ends), the position in it, and the address of the current or last stream.
        self._resolve = resolve
        self._round: list[str] = []
        self._turn = 0
        self.address = ""
        self.switches = 0  # streams opened at another address than the previous one

    # --- public ------------------------------------------------------------------------

    def start(self) -> XdsClient:
        self._thread = threading.Thread(target=self._run, name="pymesh-agent-xds", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            call, q = self._call, self._q
        if q is not None:
            q.put(None)
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self._set_state("stopped", "")

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def subscribe(self, type_url: str, names: Iterable[str] | None) -> None:
        """Sets the type's wanted names (None: wildcard) and, if they changed
        and a stream is up, tells the server."""
        new = None if names is None else set(names)
        with self._lock:
            if type_url in self._subs and self._subs[type_url] == new:
                return
            old = self._subs.get(type_url, set())
            self._subs[type_url] = new
            if new is not None and type_url in self._held:
                # Unsubscribed names are no longer held (nor claimed on the next stream).
                self._held[type_url] = {n: r for n, r in self._held[type_url].items() if n in new}
            if self._q is None:
                return
            if self.delta:
                from envoy.service.discovery.v3 import discovery_pb2

                if new is None:
                    add, drop = ["*"], []
                elif old is None:
                    add, drop = sorted(new), ["*"]
                else:
                    add, drop = sorted(new - old), sorted(old - new)
                self._q.put(
                    discovery_pb2.DeltaDiscoveryRequest(
                        type_url=type_url, resource_names_subscribe=add, resource_names_unsubscribe=drop
                    )
                )
            else:
                self._q.put(self._request(type_url))

    def send_health(self, healthy: bool, message: str = "") -> None:
        """Reports health now if a stream is up (and past its first responses);
        remembered for every new stream."""
        with self._lock:
            self._health = (healthy, message)
            if self._q is not None and not self._health_held:
                self._q.put(self._health_request())
                self.stats["health_reports"] += 1

    def resend_health(self) -> None:
        with self._lock:
            if self._health is not None and self._q is not None and not self._health_held:
                self._q.put(self._health_request())
                self.stats["health_reports"] += 1

    def type_stats(self) -> dict[str, dict[str, Any]]:
        """Per type (Istio's metric label: cds, eds...): responses received, NACKed, and the
        Unix time of the last one applied (None: none yet)."""
        with self._lock:
            return {
                t: {
                    "pushes": self.pushes.get(t, 0),
                    "rejects": self.rejects.get(t, 0),
                    "last_push": self.last_push.get(t),
                }
                for t in sorted(set(self.pushes) | set(self.rejects))
            }

    # --- requests ----------------------------------------------------------------------

    def _request(self, type_url: str, *, nonce: str | None = None, error: str | None = None) -> Any:
        from envoy.service.discovery.v3 import discovery_pb2

        names = self._subs.get(type_url)
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            version_info=self.versions.get(type_url, ""),
            response_nonce=self._nonces.get(type_url, "") if nonce is None else nonce,
            resource_names=sorted(names) if names is not None else [],
        )
        if error is not None:
            req.error_detail.code = CODE_INTERNAL
            req.error_detail.message = error
        return req

    def _delta_request(self, type_url: str, *, first: bool = False, nonce: str = "", error: str | None = None) -> Any:
        from envoy.service.discovery.v3 import discovery_pb2

        req = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=nonce)
        if first:
            names = self._subs.get(type_url)
            req.resource_names_subscribe.extend(["*"] if names is None else sorted(names))
            for name, res in self._held.get(type_url, {}).items():
                req.initial_resource_versions[name] = res.version
        if error is not None:
            req.error_detail.code = CODE_INTERNAL
            req.error_detail.message = error
        return req

    def _health_request(self) -> Any:
        from envoy.service.discovery.v3 import discovery_pb2

        assert self._health is not None
        req = (discovery_pb2.DeltaDiscoveryRequest if self.delta else discovery_pb2.DiscoveryRequest)(type_url=HEALTH)
        healthy, message = self._health
        if not healthy:
            req.error_detail.code = CODE_INTERNAL
            req.error_detail.message = message or "unhealthy"
        return req

    # --- the stream loop ---------------------------------------------------------------

    def _set_state(self, state: str, detail: str) -> None:
        if state == self.state:
            return
        self.state = state
        if self.on_state is not None:
            try:
                self.on_state(state, detail)
            except Exception:
                log.exception("xDS state handler failed")

    def _run(self) -> None:
        while not self._stop.is_set():
            got_response = self._stream_once()
            if self._stop.is_set():
                break
            if got_response:
                self.attempt = 0
            delay = min(self.backoff_max, self.backoff_base * (2**self.attempt))
            wait = self._rng.uniform(delay / 2, delay)
            self.attempt += 1
            self.stats["failures"] += 1
            self.next_retry = wait
            self.waits = [*self.waits[-19:], wait]
            self._set_state("backoff", self.last_error)
            log.info("xDS stream to %s ended (%s); retrying in %.2fs", self.address, self.last_error, wait)
            if self._stop.wait(wait):
                break
            self.next_retry = None

    def addresses(self) -> list[str]:
        """The addresses this client rotates over, resolved now."""
        return resolve_target(self.target, self._resolve)

    def _next_address(self) -> str:
        """The address of the next stream: the next of the round; once a round is used up, a new
        one (names resolved again) in a random order that does not start with the address just
        left. Random rounds spread the agents of a replica that went away over the others; a
        fixed order sent them all to the same next one, whose admission bound then turned most
        of them away (benchmarks/ha_bench.py)."""
        if self._turn >= len(self._round):
            self._round = list(resolve_target(self.target, self._resolve) or [self.target])
            self._rng.shuffle(self._round)
            if len(self._round) > 1 and self._round[0] == self.address:
                self._round[0], self._round[1] = self._round[1], self._round[0]
            self._turn = 0
        addr = self._round[self._turn]
        self._turn += 1
        if self.address and addr != self.address:
            self.switches += 1
        self.address = addr
        return addr

    def _stream_once(self) -> bool:
        import grpc
        from envoy.service.discovery.v3 import ads_pb2_grpc

        addr = self._next_address()
        self._set_state("connecting", addr)
        options = [
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.max_receive_message_length", 64 << 20),
        ]
        if self.channel_factory is None:
            channel = grpc.insecure_channel(addr, options=options)
        else:
            try:
                channel = self.channel_factory(addr, options)
            except Exception as e:  # no certificate yet (CA unreachable, token refused): back off, retry
                self.last_error = f"{type(e).__name__}: {e}"
                return False
        q: queue.Queue[Any] = queue.Queue()
        got = False
        try:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            with self._lock:
                self._nonces = {}
                first = True
                for t, names in self._subs.items():
                    if names is not None and not names:
                        continue  # nothing wanted yet (EDS before CDS): ask when there is
                    req = self._delta_request(t, first=True) if self.delta else self._request(t, nonce="")
                    if first:
                        req.node.CopyFrom(self.node)
                        first = False
                    q.put(req)
                # Health goes out once the first response of every type asked for has arrived
                # (or HEALTH_HOLD seconds after the stream opened): never first, since istiod
                # drops a first-request report, and after the configuration, since istiod 1.29
                # without Kubernetes dies on a report (docs/istiod-interop.md §6) and a VM that
                # reported first would have nothing to serve from.
                self._awaiting = {t for t, names in self._subs.items() if names is None or names}
                self._health_held = True
                timer = threading.Timer(HEALTH_HOLD, self._release_health, args=(q,))
                timer.daemon = True
                timer.start()
                rpc = stub.DeltaAggregatedResources if self.delta else stub.StreamAggregatedResources
                call = rpc(iter(q.get, None))
                self._call, self._q = call, q
            if self._stop.is_set():
                call.cancel()
            self.stats["streams"] += 1
            for resp in call:
                if not got:
                    got = True
                    self._set_state("connected", addr)
                self._on_response(resp, q)
            self.last_error = "stream closed by the server"
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = e.details() if hasattr(e, "details") else str(e)
            self.last_error = f"{getattr(code, 'name', code)}: {details}"
        except Exception as e:  # never let the client thread die
            log.exception("xDS stream failed")
            self.last_error = f"{type(e).__name__}: {e}"
        finally:
            with self._lock:
                self._call, self._q = None, None
            q.put(None)
            channel.close()
        return got

    def _release_health(self, q: queue.Queue[Any]) -> None:
        with self._lock:
            if not self._health_held or self._q is not q:
                return
            self._health_held = False
            if self._health is not None:
                q.put(self._health_request())
                self.stats["health_reports"] += 1

    def _on_response(self, resp: Any, q: queue.Queue[Any]) -> None:
        t = resp.type_url
        self.stats["responses"] += 1
        handler = self.handlers.get(t)
        error: str | None = None
        held: dict[str, Any] = {}
        if self.delta:
            version = resp.system_version_info
            held = dict(self._held.get(t, {}))
            for r in resp.resources:
                held[r.name] = r
            for name in resp.removed_resources:
                held.pop(name, None)
            resources = [held[n].resource for n in sorted(held) if held[n].HasField("resource")]
        else:
            version = resp.version_info
            resources = list(resp.resources)
        if handler is not None:
            started = time.monotonic()
            try:
                handler(t, resources, version)
            except Exception as e:  # any failure to apply is a NACK, with its text
                error = str(e) or type(e).__name__
            took = (time.monotonic() - started) * 1000
            log.debug("%s v%s: %d resources in %.1f ms", SHORT.get(t, t), version, len(resources), took)
        mt = metric_type(t)
        with self._lock:
            self._nonces[t] = resp.nonce
            self.pushes[mt] = self.pushes.get(mt, 0) + 1
            if error is None:
                self.versions[t] = version
                self.last_push[mt] = time.time()
                self.stats["acks"] += 1
                if self.delta:
                    self._held[t] = held
                    q.put(self._delta_request(t, nonce=resp.nonce))
                else:
                    q.put(self._request(t))
            else:
                self.stats["nacks"] += 1
                self.rejects[mt] = self.rejects.get(mt, 0) + 1
                self.last_nack = (t, error)
                kept = self.versions.get(t, "")
                log.warning("NACK %s version %s (keeping %r): %s", SHORT.get(t, t), version, kept, error)
                if self.delta:
                    q.put(self._delta_request(t, nonce=resp.nonce, error=error))
                else:
                    q.put(self._request(t, error=error))
            self._awaiting.discard(t)
            if self._health_held and not self._awaiting:
                self._health_held = False
                if self._health is not None:
                    q.put(self._health_request())
                    self.stats["health_reports"] += 1
