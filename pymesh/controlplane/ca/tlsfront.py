"""TLS termination for the control plane's secure port (15012).

Why a front and not grpcio's own TLS: istiod's 15012 verifies a client
certificate *if one is given* (Go's ``tls.VerifyClientCertIfGiven``) — a VM
without a certificate yet authenticates its first CSR with its token, and
afterwards presents its certificate for xDS and renewals on the same port.
grpcio's server credentials either never request a client certificate or
require one. Python's ``ssl`` has exactly the needed mode (``CERT_OPTIONAL``:
a certificate is requested, verified against the mesh root when sent).

Each accepted TLS connection (TLS 1.2+, ALPN ``h2`` as gRPC requires) is
spliced byte for byte to the gRPC server's loopback listener. The front
records, under the local port of its own loopback connection, who the peer
is (address and the verified certificate's SPIFFE IDs) before forwarding a
byte; the gRPC handlers look the caller up by ``context.peer()``. A
connection to the loopback listener that the front did not make has no
record and is treated as unauthenticated.

Bounds (asyncio's ``start_server(ssl=...)`` has none): a connection that has
not finished its handshake is *pending*, and asyncio gives a TLS connection a
256 KiB buffer as soon as it is accepted, so 1,500 connections that never sent
a ClientHello cost 400 MB and, at a 1,024-fd limit, every descriptor. Here the
front accepts plain sockets itself and starts TLS only once the first byte
(the ClientHello) arrives, within ``hello_timeout`` (3 s: a client sends it
in its first round trip); at most ``max_pending`` connections are pending,
and when one more comes the *oldest* pending one is dropped (a real client
leaves that state within milliseconds, so the oldest is the one stalling).
The handshake as a whole must finish within ``handshake_timeout``.
Connections in all are capped from the descriptor budget (each costs three:
the client's, the splice to gRPC and gRPC's end of it), and on ``EMFILE``
the oldest pending connection is dropped to make room, so legitimate clients
keep getting in.

Certificates rotate without dropping anything: :meth:`reload` loads the new
chain into the same ``SSLContext``, which only new handshakes read.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import ssl
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from pymesh.controlplane.ca.ca import Leaf
from pymesh.controlplane.lograte import LogLimiter
from pymesh.mesh.errors import SecurityError
from pymesh.mesh.pki import spiffe_ids

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING = 128
DEFAULT_HELLO_TIMEOUT = 3.0
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
# Descriptors kept for everything else the process opens (gRPC, the store, config files).
FD_RESERVE = 256
TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def connection_budget() -> int:
    """Connections the front may hold: three descriptors each, out of the soft
    ``RLIMIT_NOFILE`` minus a reserve for the rest of the process."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, (soft - FD_RESERVE) // 3)


@dataclass(frozen=True)
class Peer:
    address: str
    spiffe_ids: tuple[str, ...] = field(default_factory=tuple)
    has_cert: bool = False
    leaf: Leaf | None = None  # the verified client certificate's serial and expiry


def server_context(cert_file: Path, key_file: Path, root_pem: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cadata=root_pem)
    ctx.load_cert_chain(str(cert_file), str(key_file))
    ctx.set_alpn_protocols(["h2"])
    return ctx


class TlsFront:
    def __init__(
        self,
        host: str,
        port: int,
        backend: tuple[str, int],
        ctx: ssl.SSLContext,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_connections: int | None = None,
        hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self.backend = backend
        self.ctx = ctx
        self.max_connections = max_connections if max_connections is not None else connection_budget()
        self.max_pending = max(1, min(max_pending, self.max_connections))
        self.hello_timeout = hello_timeout
        self.handshake_timeout = handshake_timeout
        # (address, port) of our own end of the loopback connection -> the TLS peer. The address
        # is part of the key: a local process connecting from 127.0.0.2:P must not pass for
        # the front's 127.0.0.1:P.
        self.peers: dict[tuple[str, int], Peer] = {}
        self._sock: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Every stream opened, so stop() can abort those still closing (a TLS close_notify
        # waiting for the peer's, a transport's close callback not yet run).
        self._writers: weakref.WeakSet[asyncio.StreamWriter] = weakref.WeakSet()
        # Connections that have not finished their handshake, oldest first.
        self._pending: OrderedDict[asyncio.Task[None], None] = OrderedDict()
        self.stats = {
            "accepted": 0,
            "with_cert": 0,
            "handshake_failures": 0,
            "hello_timeouts": 0,
            "evicted": 0,
            "refused": 0,
            "accept_errors": 0,
        }
        self._limiter = LogLimiter(log)

    async def start(self) -> int:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            sock = socket.create_server((self.host, self.port), family=family, backlog=1024)
        except OSError as e:
            raise SecurityError(f"cannot listen on {self.host}:{self.port} for TLS: {e.strerror}") from e
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._acceptor = asyncio.ensure_future(self._accept_loop())
        return self.port

    def reload(self, cert_file: Path, key_file: Path) -> None:
        self.ctx.load_cert_chain(str(cert_file), str(key_file))

    async def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acceptor
        if self._sock is not None:
            self._sock.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in list(self._writers):
            w.transport.abort()
        for _ in range(3):
            await asyncio.sleep(0)  # the transports' connection_lost callbacks close the sockets

    def lookup(self, grpc_peer: str) -> Peer | None:
        """``context.peer()`` (``ipv4:127.0.0.1:PORT`` / ``ipv6:[::1]:PORT``) → the TLS peer."""
        kind, _, rest = grpc_peer.partition(":")
        if kind not in ("ipv4", "ipv6"):
            return None
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        return self.peers.get((host, int(port))) if port.isdigit() else None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _evict_oldest(self) -> bool:
        if not self._pending:
            return False
        task = next(iter(self._pending))
        del self._pending[task]
        task.cancel()
        self.stats["evicted"] += 1
        return True

    async def _accept_loop(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(self._sock)
            except OSError as e:
                self.stats["accept_errors"] += 1
                self._limiter.log(logging.WARNING, "TLS accept error", "TLS front: accept failed: %s", e)
                # Out of descriptors (or memory): the oldest half-open connection makes room,
                # else wait a little (asyncio's own servers pause accepting for a second).
                if not (e.errno in TRANSIENT and self._evict_oldest()):
                    await asyncio.sleep(0.1)
                continue
            self.stats["accepted"] += 1
            if len(self._tasks) >= self.max_connections and not self._evict_oldest():
                self.stats["refused"] += 1
                conn.close()
                continue
            if len(self._pending) >= self.max_pending:
                self._evict_oldest()
            task = asyncio.ensure_future(self._serve(conn, addr))
            self._tasks.add(task)
            self._pending[task] = None
            task.add_done_callback(self._done)
            # sock_accept returns without yielding while connections are queued: yield, so evicted
            # connections close (their descriptors come back) and the rest of the loop runs.
            await asyncio.sleep(0)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._pending.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("TLS front: connection handler failed: %r", task.exception())

    async def _wait_hello(self, conn: socket.socket) -> bool:
        """Whether the client sent a first byte within ``hello_timeout`` (nothing is read)."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = conn.fileno()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await asyncio.wait_for(ready, self.hello_timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)

    async def _handshake(self, conn: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            if not await self._wait_hello(conn):
                self.stats["hello_timeouts"] += 1
                conn.close()
                return None
            reader = asyncio.StreamReader(limit=1 << 16)
            protocol = asyncio.StreamReaderProtocol(reader)
            remaining = max(0.1, self.handshake_timeout - (loop.time() - started))
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=self.ctx, ssl_handshake_timeout=remaining
            )
        except asyncio.CancelledError:
            conn.close()
            raise
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as e:
            self.stats["handshake_failures"] += 1
            log.debug("TLS front: handshake failed: %s", e)
            conn.close()
            return None
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        self._writers.add(writer)
        return reader, writer

    async def _serve(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        task = asyncio.current_task()
        got = await self._handshake(conn)
        if got is None:
            return
        assert task is not None
        self._pending.pop(task, None)
        reader, writer = got
        address = f"{addr[0]}:{addr[1]}"
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        ids: tuple[str, ...] = ()
        leaf = None
        if der:
            self.stats["with_cert"] += 1
            cert = x509.load_der_x509_certificate(der)
            ids, leaf = tuple(spiffe_ids(cert)), Leaf.of(cert)
        local: tuple[str, int] = ("", 0)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.backend)
            self._writers.add(up_writer)
        except OSError as e:
            self._limiter.log(
                logging.ERROR, "TLS backend", "TLS front: backend %s:%d unreachable: %s", *self.backend, e
            )
            writer.transport.abort()
            return
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        try:
            name = up_writer.get_extra_info("sockname")
            local = (str(name[0]), int(name[1]))
            self.peers[local] = Peer(address, ids, bool(der), leaf)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except asyncio.CancelledError:
            # stop(): the control plane's loop stops right after, so a graceful TLS close
            # (close_notify, then waiting for the peer's) never completes and the socket
            # stays open: a connected agent would only notice at its keepalive timeout
            # (~40 s). Aborting closes it now, so the agent reconnects at once.
            for w in (writer, up_writer):
                w.transport.abort()
        finally:
            self.peers.pop(local, None)
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await src.read(65536)
            if not data:
                break
            dst.write(data)
            await dst.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if dst.can_write_eof():
                dst.write_eof()
            else:
                dst.close()
