"""The control plane's store on etcd v3: :class:`EtcdStore`, the same interface as the SQLite
:class:`~pymesh.controlplane.store.Store` (:class:`~pymesh.controlplane.backend.StoreBackend`).

Several control planes ("replicas") may share one prefix: what they coordinate through etcd
(connection keys on each replica's lease, create-if-absent registration, the sweeper's election
and its fenced deletes) is described in :mod:`pymesh.controlplane.replicas`; the calls it needs
are the "replicas" section at the end of :class:`EtcdStore`, with the VIP claims
(:meth:`EtcdStore.claim_vip`, used by :mod:`pymesh.controlplane.vips`).

Decisions, and why:

- **Transport: etcd's JSON gRPC gateway over the standard library** (``http.client``), not a
  gRPC client. The gateway serves ``POST /v3/kv/range``, ``/v3/kv/put``, ``/v3/kv/deleterange``,
  ``/v3/kv/txn`` and ``/v3/auth/authenticate`` on the client port of etcd 3.4+, keys and values
  base64 in JSON (https://etcd.io/docs/v3.4/dev-guide/api_grpc_gateway/). PyPI's choices are
  thin: ``etcd3`` is unmaintained and pins an old protobuf; ``aetcd`` has one maintainer and its
  generated stubs tie us to a protobuf range. This store needs a handful of unary calls, a few
  hundred lines. Leases use the same gateway: ``/v3/lease/grant``, ``/v3/lease/revoke`` and
  ``/v3/lease/keepalive`` (a bidirectional stream in gRPC; one request body of one message gets
  one ``{"result": {"TTL": ...}}`` answer, TTL absent once expired: zalando/patroni
  ``patroni/dcs/etcd3.py`` ``Etcd3Client.lease_keepalive`` refreshes its leases the same way).
- **Endpoints and failover.** A request goes to the member that last answered, else the next one
  in the list. A connection that cannot be made (refused, or not within ``CONNECT_TIMEOUT``) moves
  on to the next member: nothing was sent. A request that was sent but got no answer (timeout,
  reset) moves on only when it is a read; a write is reported as "may have been applied", never
  re-sent elsewhere, since a late apply of the first copy could land after a later write. The
  control plane retries its writes itself (the mirror at the next tick, VIPs with the next change).
  An etcd ``no leader`` answer (nothing was proposed) moves on for reads and writes.
- **Never hang.** One deadline per operation (``EtcdOptions.timeout``, 5 s by default, below etcd's
  own 7 s request timeout: 5 s + 2 x election, ``etcdserver/config.go: ReqTimeout``) covers every
  member tried. Each request carries ``hasleader`` metadata (the gateway forwards
  ``Grpc-Metadata-*`` headers as gRPC metadata), so a member that knows it has no leader fails at
  once with ``no leader`` instead of queueing the proposal (``etcdserver/api/v3rpc/rpctypes/md.go``,
  ``v3rpc/interceptor.go``). Quorum lost: every operation raises :class:`StoreError` within the
  deadline, naming each member and what it answered.
- **Keys: one per object** under a prefix (``/pymesh/default`` unless the URL has a path):
  ``<prefix>/registered/<ns>/<name>``, ``<prefix>/overlays/<kind>/<ns>/<name>``,
  ``<prefix>/vips/<host>``, ``<prefix>/configured/<kind>/<ns>/<name>`` (``{"source", "body"}``),
  ``<prefix>/status/<key>``, ``<prefix>/applied/<kind>/<ns>/<name>`` (``{"applied_at", "body"}``,
  what ``pymesh apply`` wrote); for replicas ``<prefix>/conn/<ns>/<name>/<replica>`` (on the
  replica's lease), ``<prefix>/released/<ns>/<name>``, ``<prefix>/leader/sweeper`` (on the
  leader's lease) and the VIP index ``<prefix>/vipip/<IPv4>`` (= host); each component
  percent-encoded so a ``/`` in one cannot collide.
  Values are JSON, as the SQLite columns hold. Prefixes end with ``/`` so ``a/b/`` never matches
  ``a/bc`` (etcd's key-layout advice; Kubernetes uses ``/registry/<resource>/<ns>/<name>``).
  The rejected list is one key, ``<prefix>/rejected``: it is always replaced and read whole, so
  one document keeps that atomic without a read before each write (etcd refuses a txn that puts
  a key inside a range it deletes, ``etcdserver/api/v3rpc/key.go: checkIntervals``).
- **Multi-key writes are one ``txn``** (``put_vips``, ``update_configured``, ``replace_configured``)
  up to etcd's default ``--max-txn-ops`` of 128 operations and below ``--max-request-bytes``
  (1.5 MiB; we stay under 1 MiB per txn) (https://etcd.io/docs/v3.4/dev-guide/limit/). Beyond
  that the write is **chunked** into several txns, in order, the rejected list in the last one.
  What is lost: a reader (``pymesh get``) may see a mirror half-way through a large reload, and a
  crash between chunks leaves it half-written. Each key is still whole, and the mirror converges:
  the control plane rewrites every mirrored object at its first load after a start and resends a
  failed difference at its next tick. A single snapshot document would keep the mirror atomic but
  is rewritten whole on every edit and would hit the 1.5 MiB request limit at a few thousand
  objects; one key per object is also what etcd watches would need.
  ``replace_configured`` reads the keys it replaces first (keys only) and deletes those not
  rewritten, for the same ``checkIntervals`` reason.
- **Applied configuration changes** are found by polling, at the control plane's watch interval,
  one range over ``<prefix>/applied/`` that returns no values and at most one key: sorted by
  ``mod_revision`` descending with ``limit`` 1 and ``keys_only``, its answer carries the number of
  keys in the whole range (``count``) and the newest ``mod_revision``
  (https://etcd.io/docs/v3.4/learning/api/, "Range"). Any put raises the newest ``mod_revision``
  past every earlier one, and a delete alone lowers the count, so the pair changes whenever the
  applied set does; the cluster's header revision would change on every write under the prefix
  (the mirror, registrations) and cause needless reloads. Real watches (``/v3/watch``) are a
  later step, with the replicas.
- **Where the calls run.** The mirror and VIP record writes on the control plane's worker
  thread; registration writes (claims, releases, health) on the replica's io threads, the lease,
  the sweeper and the poll of registrations on the replica's own thread
  (:mod:`pymesh.controlplane.replicas`). VIP claims run where VIPs are allocated, while a
  configuration change is applied on the event loop: one txn per newly allocated host (a
  millisecond or two on a LAN; a failing cluster fails the reload within one deadline, and the
  watcher retries it).
- **Errors** are :class:`StoreError` naming the endpoint and the operation: cannot connect,
  no answer within the deadline, and etcd's own errors (``no leader``, ``request is too large``,
  ``too many operations in txn request``, ``database space exceeded``) with a hint.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pymesh.controlplane.backend import EtcdOptions
from pymesh.controlplane.errors import StoreError
from pymesh.mesh.addr import HostPort, parse_host_port
from pymesh.mesh.errors import AddressError

DEFAULT_PORT = 2379
DEFAULT_PREFIX = "/pymesh/default"
CONNECT_TIMEOUT = 1.0  # loopback or a LAN: a member that does not accept within this is down
MAX_TXN_OPS = 128  # etcd's --max-txn-ops default (embed/config.go: DefaultMaxTxnOps)
MAX_TXN_BYTES = 1 << 20  # under --max-request-bytes' 1.5 MiB default, with room for framing
RETRY_PAUSE = 0.2  # between rounds over every member, while the deadline allows
MAX_REJECTED_BYTES = 256 << 10  # the rejected list is one key: cap it well under the request limit

# etcd errors a read can be retried after (etcdserver/api/v3rpc/rpctypes/error.go).
_READ_RETRY = ("leader changed", "request timed out", "timed out", "not capable", "too many requests")
_HINTS = {
    "no leader": "the cluster has lost quorum or is electing a leader",
    "request is too large": "a value is over etcd's --max-request-bytes",
    "larger than max": "a value is over etcd's --max-request-bytes (plus gRPC's 512 KiB)",
    "too many operations": "a txn is over etcd's --max-txn-ops",
    "database space exceeded": "etcd's --quota-backend-bytes is reached: compact and defragment it",
    "leader changed": "a leader election happened: the write may or may not have been applied",
    "request timed out": "the cluster did not commit in time (quorum lost or overloaded)",
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with ``prefix`` (clientv3's
    ``GetPrefixRangeEnd``)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"  # every key


def _part(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def _unpart(s: str) -> str:
    return urllib.parse.unquote(s)


class EtcdClient:
    """The few etcd v3 calls the store makes, over the JSON gateway, with failover and a deadline."""

    def __init__(self, endpoints: list[HostPort], options: EtcdOptions, *, tls: bool = False) -> None:
        if not endpoints:
            raise StoreError("etcd: no endpoints")
        self.endpoints = endpoints
        self.timeout = options.timeout
        self._user = options.user
        self._password = options.password or ""
        self._ssl: ssl.SSLContext | None = None
        if tls or options.ca or options.cert:
            try:
                self._ssl = ssl.create_default_context(cafile=options.ca)
                if options.cert:
                    self._ssl.load_cert_chain(options.cert, options.key)
            except (OSError, ssl.SSLError) as e:
                raise StoreError(f"etcd TLS files (--store-ca/--store-cert/--store-key): {e}") from e
        self._lock = threading.Lock()
        self._preferred = 0
        self._token: str | None = None

    def _order(self) -> Iterator[int]:
        with self._lock:
            first = self._preferred
        n = len(self.endpoints)
        return ((first + i) % n for i in range(n))

    def call(self, path: str, body: Mapping[str, Any], *, idempotent: bool) -> dict[str, Any]:
        """POST ``body`` to ``path`` on one member; see the module docstring for the failover rules."""
        if self._user and self._token is None and path != "/v3/auth/authenticate":
            self._authenticate()
        try:
            return self._call(path, body, idempotent=idempotent)
        except _InvalidToken:
            self._authenticate()
            return self._call(path, body, idempotent=idempotent)

    def _authenticate(self) -> None:
        doc = self._call("/v3/auth/authenticate", {"name": self._user, "password": self._password}, idempotent=True)
        token = doc.get("token")
        if not token:
            raise StoreError(f"etcd: authentication as {self._user!r} returned no token")
        self._token = str(token)

    def _call(self, path: str, body: Mapping[str, Any], *, idempotent: bool) -> dict[str, Any]:
        data = json.dumps(body).encode()
        deadline = time.monotonic() + self.timeout
        failures: dict[str, str] = {}  # the last reason per member
        while True:
            for i in self._order():
                if time.monotonic() >= deadline:
                    break
                doc = self._one(i, path, data, deadline, idempotent, failures)
                if doc is not None:
                    with self._lock:
                        self._preferred = i
                    return doc
            # Every member refused for a reason that may pass (down, electing a leader): again
            # until the deadline, so a leader election (1-2 s with etcd's defaults) is waited out.
            if time.monotonic() + RETRY_PAUSE >= deadline:
                reasons = "; ".join(f"{ep}: {why}" for ep, why in failures.items())
                raise StoreError(f"etcd {path}: no member answered within {self.timeout:g}s ({reasons})")
            time.sleep(RETRY_PAUSE)

    def _one(
        self, i: int, path: str, data: bytes, deadline: float, idempotent: bool, failures: dict[str, str]
    ) -> dict[str, Any] | None:
        """The answer of member ``i``; None (with the reason in ``failures``) when the next may be tried."""
        ep = self.endpoints[i]
        conn: http.client.HTTPConnection
        ctimeout = max(0.001, min(CONNECT_TIMEOUT, deadline - time.monotonic()))
        if self._ssl is not None:
            conn = http.client.HTTPSConnection(ep.host, ep.port, timeout=ctimeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(ep.host, ep.port, timeout=ctimeout)
        try:
            try:
                conn.connect()
            except (OSError, ssl.SSLError) as e:
                failures[str(ep)] = f"cannot connect: {e}"  # nothing sent: any request may go elsewhere
                return None
            if conn.sock is not None:  # the rest of the operation's deadline for the answer
                conn.sock.settimeout(max(0.001, deadline - time.monotonic()))
            # hasleader: a member without a leader answers `no leader` at once (rpctypes/md.go).
            headers = {"Content-Type": "application/json", "Grpc-Metadata-hasleader": "true"}
            if self._token:
                headers["Authorization"] = self._token
            try:
                conn.request("POST", path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException) as e:
                what = "no answer within the deadline" if isinstance(e, socket.timeout) else f"no answer: {e}"
                if idempotent:
                    failures[str(ep)] = what
                    return None
                raise StoreError(
                    f"etcd {ep} {path}: {what}; the write may or may not have been applied "
                    "(not re-sent to another member)"
                ) from e
        finally:
            conn.close()
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError as e:
            raise StoreError(f"etcd {ep} {path}: HTTP {status}, not JSON: {raw[:200]!r}") from e
        if status == 200 and "error" not in doc:
            return dict(doc)
        message = str(doc.get("error") or doc.get("message") or f"HTTP {status}")
        if "invalid auth token" in message and self._user:
            raise _InvalidToken(message)
        hint = next((h for k, h in _HINTS.items() if k in message), "")
        # `no leader` is refused before any proposal: any request may go elsewhere. A read may
        # also go elsewhere after an answer that says it was not served (election, timeout).
        if "no leader" in message or (idempotent and any(k in message for k in _READ_RETRY)):
            failures[str(ep)] = message + (f" ({hint})" if hint else "")
            return None
        raise StoreError(f"etcd {ep} {path}: {message}" + (f" ({hint})" if hint else ""))

    # the calls ---------------------------------------------------------------------

    def range(self, key: bytes, end: bytes | None = None, *, keys_only: bool = False) -> list[tuple[bytes, bytes]]:
        req: dict[str, Any] = {"key": _b64(key)}
        if end is not None:
            req["range_end"] = _b64(end)
        if keys_only:
            req["keys_only"] = True
        doc = self.call("/v3/kv/range", req, idempotent=True)
        return [(_unb64(kv["key"]), _unb64(kv.get("value", ""))) for kv in doc.get("kvs") or ()]

    def put(self, key: bytes, value: bytes) -> None:
        self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)}, idempotent=False)

    def delete(self, key: bytes, end: bytes | None = None) -> None:
        req: dict[str, Any] = {"key": _b64(key)}
        if end is not None:
            req["range_end"] = _b64(end)
        self.call("/v3/kv/deleterange", req, idempotent=False)

    def txn(self, ops: list[dict[str, Any]], compare: list[dict[str, Any]] | None = None) -> bool:
        doc = self.call("/v3/kv/txn", {"compare": compare or [], "success": ops}, idempotent=False)
        return bool(doc.get("succeeded"))

    def txn_full(
        self, compare: list[dict[str, Any]], success: list[dict[str, Any]], failure: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """A txn's whole answer: ``succeeded``, ``responses`` (of the branch taken), ``header``."""
        return self.call(
            "/v3/kv/txn", {"compare": compare, "success": success, "failure": failure or []}, idempotent=False
        )


class _InvalidToken(Exception):
    pass


def _put_op(key: bytes, value: bytes) -> dict[str, Any]:
    return {"request_put": {"key": _b64(key), "value": _b64(value)}}


def _delete_op(key: bytes) -> dict[str, Any]:
    return {"request_delete_range": {"key": _b64(key)}}


def _compare(key: bytes, target: str, result: str, value: int, end: bytes | None = None) -> dict[str, Any]:
    """A txn compare on ``CREATE``/``MOD``/``LEASE``; with ``end`` it holds for every key of the
    range, and an empty range compares as one absent key (revision 0): ``CREATE == 0`` over a
    prefix means "no key under it" (``etcdserver/apply.go: applyCompare``)."""
    field = {"CREATE": "create_revision", "MOD": "mod_revision", "LEASE": "lease"}[target]
    c: dict[str, Any] = {"key": _b64(key), "target": target, "result": result, field: str(value)}
    if end is not None:
        c["range_end"] = _b64(end)
    return c


def _range_op(key: bytes) -> dict[str, Any]:
    return {"request_range": {"key": _b64(key)}}


def _first_kv(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    for r in doc.get("responses") or ():
        kvs = (r.get("response_range") or {}).get("kvs") or ()
        if kvs:
            return dict(kvs[0])
    return None


def _revision(doc: Mapping[str, Any]) -> int:
    return int((doc.get("header") or {}).get("revision", 0))


def _configured_value(source: str, body_json: str) -> bytes:
    """``{"source": ..., "body": ...}`` around a body already JSON (the server encodes it off the loop)."""
    return f'{{"source": {json.dumps(source)}, "body": {body_json}}}'.encode()


class EtcdStore:
    """The control plane's store in etcd (see the module docstring)."""

    def __init__(
        self,
        client: EtcdClient,
        prefix: str = DEFAULT_PREFIX,
        *,
        max_txn_ops: int = MAX_TXN_OPS,
        max_txn_bytes: int = MAX_TXN_BYTES,
    ) -> None:
        self.client = client
        self.prefix = prefix.rstrip("/")
        self.max_txn_ops = max_txn_ops
        self.max_txn_bytes = max_txn_bytes
        self.path = f"etcd://{','.join(str(e) for e in client.endpoints)}{self.prefix}"  # for messages

    @classmethod
    def from_url(cls, url: str, options: EtcdOptions) -> EtcdStore:
        """``etcd://h1:2379,h2:2379[/prefix]`` (``etcds://`` for TLS)."""
        scheme, _, rest = url.partition("://")
        hosts, slash, path = rest.partition("/")
        try:
            endpoints = [
                parse_host_port(h, default_port=DEFAULT_PORT, what="etcd endpoint") for h in hosts.split(",") if h
            ]
        except AddressError as e:
            raise StoreError(f"--store {url}: {e}") from e
        if not endpoints:
            raise StoreError(f"--store {url}: no etcd endpoints (etcd://HOST:PORT,HOST:PORT,...)")
        prefix = "/" + path.strip("/") if slash and path.strip("/") else DEFAULT_PREFIX
        return cls(EtcdClient(endpoints, options, tls=scheme == "etcds"), prefix)

    def close(self) -> None:
        pass  # no connection is kept between requests

    # keys --------------------------------------------------------------------------

    def _key(self, table: str, *parts: str) -> bytes:
        return "/".join((self.prefix, table, *(_part(p) for p in parts))).encode()

    def _scan(self, table: str, *, keys_only: bool = False) -> list[tuple[tuple[str, ...], bytes]]:
        start = f"{self.prefix}/{table}/".encode()
        rows = self.client.range(start, _prefix_end(start), keys_only=keys_only)
        return [(tuple(_unpart(p) for p in k[len(start) :].decode().split("/")), v) for k, v in rows]

    def _write(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        """Puts (value) and deletes (None) in as few txns as etcd's limits allow, in order."""
        chunk: list[dict[str, Any]] = []
        size = 0
        for key, value in ops:
            op_size = len(key) + (len(value) if value is not None else 0) + 16
            if op_size > self.max_txn_bytes:
                raise StoreError(
                    f"{self.path}: {key.decode(errors='replace')}: {op_size} bytes, over the "
                    f"{self.max_txn_bytes} a write may carry (etcd's --max-request-bytes)"
                )
            if chunk and (len(chunk) >= self.max_txn_ops or size + op_size > self.max_txn_bytes):
                self.client.txn(chunk)
                chunk, size = [], 0
            chunk.append(_put_op(key, value) if value is not None else _delete_op(key))
            size += op_size
        if chunk:
            self.client.txn(chunk)

    # registered entries ----------------------------------------------------------

    def registered(self) -> list[dict[str, Any]]:
        return [json.loads(v) for _, v in sorted(self._scan("registered"))]

    def put_registered(self, doc: Mapping[str, Any]) -> None:
        md = doc["metadata"]
        self.client.put(self._key("registered", md["namespace"], md["name"]), json.dumps(doc, sort_keys=True).encode())

    def delete_registered(self, namespace: str, name: str) -> None:
        self.client.delete(self._key("registered", namespace, name))

    # overlays on configured objects ------------------------------------------------

    def overlays(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        return {(k[0], k[1], k[2]): json.loads(v) for k, v in self._scan("overlays")}

    def put_overlay(self, kind: str, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        self.client.put(self._key("overlays", kind, namespace, name), json.dumps(body, sort_keys=True).encode())

    # VIPs ----------------------------------------------------------------------

    def vip_records(self) -> dict[str, tuple[str, str, float | None]]:
        out: dict[str, tuple[str, str, float | None]] = {}
        for (host,), v in self._scan("vips"):
            r = json.loads(v)
            out[host] = (r["v4"], r["v6"], r.get("released"))
        return out

    def vips(self) -> dict[str, tuple[str, str]]:
        return {h: (v4, v6) for h, (v4, v6, _) in self.vip_records().items()}

    def add_vips(self, allocations: Mapping[str, tuple[str, str]]) -> None:
        self.put_vips({h: (v4, v6, None) for h, (v4, v6) in allocations.items()}, ())

    def put_vips(self, records: Mapping[str, tuple[str, str, float | None]], deleted: Iterable[str]) -> None:
        """Each record also (re)writes its address's index key ``vipip/<v4>`` = host, which
        :meth:`claim_vip` compares; a deleted host's index key is left to its address's next
        owner (a deletion only ever comes from a reclaim, which writes the new owner's)."""
        ops: list[tuple[bytes, bytes | None]] = [(self._key("vips", h), None) for h in deleted if h not in records]
        for h, (v4, v6, released) in records.items():
            ops.append((self._key("vips", h), json.dumps({"v4": v4, "v6": v6, "released": released}).encode()))
            ops.append((self._key("vipip", v4), h.encode()))
        self._write(ops)

    def claim_vip(self, host: str, pair: tuple[str, str], previous: str | None) -> tuple[str, str] | None:
        """Gives ``pair`` to ``host`` unless the host holds a pair already or the address is
        another host's (``previous``: a released host whose pair is reclaimed, which must still
        be the index's owner). Returns the pair the host holds now, or None when the address is
        taken. One txn: two replicas never give one address to two hosts."""
        rec = self._key("vips", host)
        index = self._key("vipip", pair[0])
        compare = [_compare(rec, "CREATE", "EQUAL", 0)]
        if previous is None:
            compare.append(_compare(index, "CREATE", "EQUAL", 0))
        else:
            compare.append({"key": _b64(index), "target": "VALUE", "result": "EQUAL", "value": _b64(previous.encode())})
        success = [
            _put_op(rec, json.dumps({"v4": pair[0], "v6": pair[1], "released": None}).encode()),
            _put_op(index, host.encode()),
        ]
        if previous is not None:
            success.append(_delete_op(self._key("vips", previous)))
        r = self.client.txn_full(compare, success, [_range_op(rec)])
        if r.get("succeeded"):
            return pair
        kv = _first_kv(r)
        if kv is None:
            return None
        held = json.loads(_unb64(kv.get("value", "")))
        return str(held["v4"]), str(held["v6"])

    def claim_ca_root(self, pem: str) -> str:
        """The mesh's root certificate as the store holds it: ``pem`` when no replica stored one
        yet (create-if-absent), else the first one stored. Public material only: a replica's
        signing key never leaves its own data directory (Istio's plug-in CA layout, ``cacerts``)."""
        key = self._key("ca", "root")
        r = self.client.txn_full([_compare(key, "CREATE", "EQUAL", 0)], [_put_op(key, pem.encode())], [_range_op(key)])
        if r.get("succeeded"):
            return pem
        kv = _first_kv(r)
        return _unb64(kv.get("value", "")).decode() if kv is not None else pem

    def index_vips(self) -> list[str]:
        """Writes the missing index keys of stored VIP records (written before the index existed),
        each only if absent. Returns the conflicts found: an address two hosts' records name."""
        owners = {_unpart(k[0]): v.decode() for k, v in self._scan("vipip")}
        conflicts = []
        for host, (v4, _, _) in sorted(self.vip_records().items()):
            owner = owners.get(v4)
            if owner is None:
                index = self._key("vipip", v4)
                if self.client.txn([_put_op(index, host.encode())], [_compare(index, "CREATE", "EQUAL", 0)]):
                    owners[v4] = host
                    continue
                rows = self.client.range(index)
                owner = owners[v4] = rows[0][1].decode() if rows else ""
            if owner != host:
                conflicts.append(f"{v4}: {host} and {owner}")
        return conflicts

    # the configured mirror --------------------------------------------------------

    def _rejected_op(self, rejected: Iterable[str]) -> tuple[bytes, bytes]:
        kept: list[str] = []
        size = 0
        messages = list(rejected)
        for m in messages:
            size += len(m.encode()) + 4
            if size > MAX_REJECTED_BYTES:
                kept.append(f"... and {len(messages) - len(kept)} more rejected objects (list truncated)")
                break
            kept.append(m)
        return f"{self.prefix}/rejected".encode(), json.dumps(kept).encode()

    def replace_configured(
        self, objects: Iterable[tuple[str, str, str, str, Mapping[str, Any]]], rejected: Iterable[str]
    ) -> None:
        rows = {
            self._key("configured", kind, ns, name): _configured_value(
                source, json.dumps(body, sort_keys=True, default=str)
            )
            for kind, ns, name, source, body in objects
        }
        existing = [self._key("configured", *k) for k, _ in self._scan("configured", keys_only=True)]
        ops: list[tuple[bytes, bytes | None]] = [(k, v) for k, v in rows.items()]
        ops += [(k, None) for k in existing if k not in rows]
        ops.append(self._rejected_op(rejected))
        self._write(ops)

    def update_configured(
        self,
        upserts: Iterable[tuple[str, str, str, str, str]],
        deleted: Iterable[tuple[str, str, str]],
        rejected: Iterable[str],
    ) -> None:
        """The mirror by difference: ``upserts`` (kind, namespace, name, source, JSON body),
        ``deleted`` keys; the rejected list is replaced whole."""
        rows = {
            self._key("configured", kind, ns, name): _configured_value(source, body)
            for kind, ns, name, source, body in upserts
        }
        ops: list[tuple[bytes, bytes | None]] = [
            (k, None) for k in (self._key("configured", *key) for key in deleted) if k not in rows
        ]
        ops += list(rows.items())
        ops.append(self._rejected_op(rejected))
        self._write(ops)

    def configured_sources(self) -> dict[tuple[str, str, str], str]:
        """(kind, namespace, name) -> the file it came from. etcd has no projection: the bodies
        are read too (once, at start)."""
        return {(k[0], k[1], k[2]): str(json.loads(v)["source"]) for k, v in self._scan("configured")}

    def configured(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        out = []
        for k, v in sorted(self._scan("configured")):
            row = json.loads(v)
            out.append((k[0], k[1], k[2], str(row["source"]), dict(row["body"])))
        return out

    def rejected(self) -> list[str]:
        rows = self.client.range(f"{self.prefix}/rejected".encode())
        return [str(m) for m in json.loads(rows[0][1])] if rows else []

    # applied configuration ---------------------------------------------------------

    def applied(self) -> list[tuple[str, str, str, float, dict[str, Any]]]:
        out = []
        for k, v in sorted(self._scan("applied")):
            row = json.loads(v)
            out.append((k[0], k[1], k[2], float(row["applied_at"]), dict(row["body"])))
        return out

    def put_applied(
        self, upserts: Iterable[tuple[str, str, str, float, str]], deleted: Iterable[tuple[str, str, str]]
    ) -> None:
        """One txn while the write fits etcd's limits (``_write``: chunked beyond, in order)."""
        rows = {
            self._key("applied", kind, ns, name): f'{{"applied_at": {json.dumps(at)}, "body": {body}}}'.encode()
            for kind, ns, name, at, body in upserts
        }
        ops: list[tuple[bytes, bytes | None]] = [
            (k, None) for k in (self._key("applied", *key) for key in deleted) if k not in rows
        ]
        ops += list(rows.items())
        self._write(ops)

    def applied_version(self) -> str:
        """``count:newest mod_revision`` of the applied keys (see the module docstring)."""
        return self._version_of("applied")

    # status ----------------------------------------------------------------------

    def put_status(self, key: str, value: Mapping[str, Any]) -> None:
        self.client.put(self._key("status", key), json.dumps(value).encode())

    def status(self, key: str) -> dict[str, Any] | None:
        rows = self.client.range(self._key("status", key))
        return dict(json.loads(rows[0][1])) if rows else None

    # replicas (pymesh.controlplane.replicas) -----------------------------------------------
    #
    # <prefix>/conn/<ns>/<name>/<replica>  on that replica's lease: it holds a stream of the entry
    # <prefix>/leader/sweeper              on the leader's lease: who runs the grace-period sweep

    def _conn_prefix(self, namespace: str, name: str) -> bytes:
        return self._key("conn", namespace, name) + b"/"

    def lease_grant(self, ttl: int) -> int:
        doc = self.client.call("/v3/lease/grant", {"TTL": str(ttl)}, idempotent=False)
        return int(doc["ID"])

    def lease_keepalive(self, lease: int) -> int:
        """The lease's remaining TTL after a refresh; 0 when it has expired (or was revoked)."""
        doc = self.client.call("/v3/lease/keepalive", {"ID": str(lease)}, idempotent=True)
        return int((doc.get("result") or {}).get("TTL", 0))

    def lease_revoke(self, lease: int) -> None:
        try:
            self.client.call("/v3/lease/revoke", {"ID": str(lease)}, idempotent=False)
        except StoreError as e:
            if "lease not found" not in str(e):
                raise

    def claim_registered(
        self, doc: Mapping[str, Any], replica: str, lease: int, *, attempts: int = 5
    ) -> tuple[dict[str, Any], bool, int]:
        """Creates the entry unless it exists and marks ``replica``'s connection to it on
        ``lease``, atomically with the entry's existence: (the stored entry, whether this call
        created it, the store revision). Two replicas creating the same entry at once make one."""
        md = doc["metadata"]
        key = self._key("registered", md["namespace"], md["name"])
        conn = self._conn_prefix(md["namespace"], md["name"]) + _part(replica).encode()
        conn_put = {"request_put": {"key": _b64(conn), "value": _b64(b"{}"), "lease": str(lease)}}
        body = json.dumps(doc, sort_keys=True).encode()
        for _ in range(attempts):
            # T1: create if absent, with the connection key.
            r = self.client.txn_full(
                [_compare(key, "CREATE", "EQUAL", 0)], [_put_op(key, body), conn_put], [_range_op(key)]
            )
            if r.get("succeeded"):
                return dict(doc), True, _revision(r)
            kv = _first_kv(r)
            if kv is None:
                continue  # deleted between the compare and the read: cannot happen in one txn; retry
            # T2: the connection key, only while the same incarnation of the entry exists (a sweep
            # that deleted it meanwhile makes this fail, and T1 creates it again).
            r2 = self.client.txn_full([_compare(key, "CREATE", "EQUAL", int(kv["create_revision"]))], [conn_put])
            if r2.get("succeeded"):
                return dict(json.loads(_unb64(kv.get("value", "")))), False, _revision(r2)
        raise StoreError(f"{self.path}: registering {md['namespace']}/{md['name']}: {attempts} conflicting attempts")

    def release_registered(self, namespace: str, name: str, replica: str) -> None:
        """This replica no longer holds a stream of the entry (only it writes its key). The same
        txn rewrites ``released/<ns>/<name>``, whose mod revision tells the sweeper that a
        disconnect happened even when the connection came and went between two of its reads."""
        self.client.txn(
            [
                _delete_op(self._conn_prefix(namespace, name) + _part(replica).encode()),
                _put_op(self._key("released", namespace, name), b"{}"),
            ]
        )

    def released(self) -> dict[tuple[str, str], int]:
        """(namespace, name) -> mod revision of its last release marker."""
        start = f"{self.prefix}/released/".encode()
        doc = self.client.call(
            "/v3/kv/range", {"key": _b64(start), "range_end": _b64(_prefix_end(start)), "keys_only": True},
            idempotent=True,
        )  # fmt: skip
        out = {}
        for kv in doc.get("kvs") or ():
            parts = _unb64(kv["key"])[len(start) :].decode().split("/")
            if len(parts) == 2:
                out[(_unpart(parts[0]), _unpart(parts[1]))] = int(kv["mod_revision"])
        return out

    def put_registered_if_exists(self, doc: Mapping[str, Any]) -> int:
        """Rewrites an entry (its health) only if it still exists: never re-creates a swept one.
        The store revision of the write, 0 when the entry was gone (nothing written)."""
        md = doc["metadata"]
        key = self._key("registered", md["namespace"], md["name"])
        body = json.dumps(doc, sort_keys=True).encode()
        answer = self.client.txn_full([_compare(key, "CREATE", "GREATER", 0)], [_put_op(key, body)])
        return _revision(answer) if answer.get("succeeded") else 0

    def registered_at(self) -> tuple[int, list[tuple[dict[str, Any], int]]]:
        """(store revision, [(entry, its mod revision)]), read at one revision."""
        start = f"{self.prefix}/registered/".encode()
        doc = self.client.call(
            "/v3/kv/range", {"key": _b64(start), "range_end": _b64(_prefix_end(start))}, idempotent=True
        )
        rows = sorted(doc.get("kvs") or (), key=lambda kv: str(kv["key"]))
        return _revision(doc), [(json.loads(_unb64(kv.get("value", ""))), int(kv["mod_revision"])) for kv in rows]

    def registered_version(self) -> str:
        """Changes whenever the registered entries do (``applied_version``'s method)."""
        return self._version_of("registered")

    def _version_of(self, table: str) -> str:
        """``count:newest mod_revision`` of a table's keys: one range read, keys only, limit 1."""
        start = f"{self.prefix}/{table}/".encode()
        req = {
            "key": _b64(start),
            "range_end": _b64(_prefix_end(start)),
            "keys_only": True,
            "limit": 1,
            "sort_order": "DESCEND",
            "sort_target": "MOD",
        }
        doc = self.client.call("/v3/kv/range", req, idempotent=True)
        kvs = doc.get("kvs") or [{}]
        return f"{doc.get('count', 0)}:{kvs[0].get('mod_revision', 0)}"

    def connections(self) -> dict[tuple[str, str], set[str]]:
        """(namespace, name) -> the replicas holding a stream of it."""
        out: dict[tuple[str, str], set[str]] = {}
        for parts, _ in self._scan("conn", keys_only=True):
            if len(parts) == 3:
                out.setdefault((parts[0], parts[1]), set()).add(parts[2])
        return out

    def _leader_key(self, role: str) -> bytes:
        return self._key("leader", role)

    def campaign(self, role: str, replica: str, lease: int) -> int | None:
        """Leads ``role`` if nobody does (the key on ``lease``): the leader key's create revision
        when this replica leads (the fencing token of its writes), else None."""
        key = self._leader_key(role)
        r = self.client.txn_full(
            [_compare(key, "CREATE", "EQUAL", 0)],
            [{"request_put": {"key": _b64(key), "value": _b64(replica.encode()), "lease": str(lease)}}],
            [_range_op(key)],
        )
        if r.get("succeeded"):
            return _revision(r)
        kv = _first_kv(r)
        if kv is not None and int(kv.get("lease", 0)) == lease:
            return int(kv["create_revision"])  # ours already (a campaign repeated after an unanswered one)
        return None

    def resign(self, role: str, leader_rev: int) -> None:
        key = self._leader_key(role)
        self.client.txn([_delete_op(key)], [_compare(key, "CREATE", "EQUAL", leader_rev)])

    def delete_registered_fenced(
        self, namespace: str, name: str, *, mod_revision: int | None, leader_rev: int, require_disconnected: bool = True
    ) -> bool:
        """Deletes an entry only if it is unchanged since it was read (``mod_revision``; None:
        whatever it holds, but it must exist), the caller still leads the sweeper (its key's
        create revision is ``leader_rev``) and, with ``require_disconnected``, no replica holds a
        stream of it. True when this call deleted it: a second sweeper, a deposed leader or a
        reconnected VM make it fail, so an entry is deleted once."""
        key = self._key("registered", namespace, name)
        conns = self._conn_prefix(namespace, name)
        compare = [
            _compare(key, "MOD", "EQUAL", mod_revision) if mod_revision else _compare(key, "CREATE", "GREATER", 0),
            _compare(self._leader_key("sweeper"), "CREATE", "EQUAL", leader_rev),
        ]
        if require_disconnected:
            compare.append(_compare(conns, "CREATE", "EQUAL", 0, _prefix_end(conns)))
        return self.client.txn([_delete_op(key), _delete_op(self._key("released", namespace, name))], compare)
