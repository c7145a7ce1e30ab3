"""Workload-to-workload mTLS as Istio sidecars speak it (Python ``ssl``): the
reference implementation the native relay's mTLS is tested against, and the
``--inbound-mtls`` listener of agents whose native module lacks TLS.

Where the TLS should live — measured (benchmarks/mtls_bench.py, loopback,
2 shared cores, 256 MiB streams): through this module's two-hop asyncio
relay one bulk stream runs at ~550 MB/s with mTLS against ~660 MB/s for the
same code without TLS (0.84; 0.54-0.61 in noisy short runs) but a direct
connection carries ~2.4 GB/s and the native splice relay several GB/s; the
cipher is not the limit (AES-128-GCM ~5 GB/s per core) — the Python copies
are. Connection setup: ~275 mTLS connections/s here (OpenSSL 3.0 handshakes
cost ~2 ms even with blocking sockets both sides) against ~830 plaintext.
So the decision: the data path's TLS belongs in the native relay (rustls,
or kernel TLS so ``splice`` keeps working), and this module is the reference
implementation of the wire conventions and the policy (identities, ALPN,
STRICT/PERMISSIVE) that the native one must match and is tested against.
The native one now exists: ``native/src/relay/tls/`` (rustls; kernel TLS is
unavailable here), driven by ``OutboundProxy.set_identity`` and
``set_peer_authentication``; ``tests/netns/test_relay_mtls.py`` runs it against
this module both ways, and ``benchmarks/relay_mtls_bench.py`` measures it
against plaintext on the same path with this module as the baseline.

Wire conventions (Envoy/Istio ``ISTIO_MUTUAL``): TLS 1.2 or newer, both
sides present their workload certificate, the peer is verified against the
mesh root and then by its SPIFFE URI SAN (no host name check: workload
certificates have no DNS names), ALPN offered by the client as Istio's
sidecars do (``istio-peer-exchange``, ``istio`` for TCP; ``istio-http/1.0``,
``istio-http/1.1``, ``istio-h2`` for HTTP), and the server's inbound filter
chain accepting those values.

- :class:`InboundMtls` (the 15006 listener): terminates mTLS and hands the
  plaintext to the local application; a connection whose first byte is not
  a TLS handshake record (0x16) is passed through as plaintext when
  ``mode="PERMISSIVE"`` (Istio's PeerAuthentication default) and closed in
  ``STRICT``. ``allowed`` restricts the peer identities (None: any identity
  of the trust domain).
- :class:`MtlsOriginator`: a local plaintext listener whose connections are
  carried over mTLS to one endpoint, the endpoint's identity checked against
  the service accounts it may have (the EDS endpoint's ``tlsMode: istio``).

Both read the certificate files again for every new connection's context
only when they changed (the agent rotates them), so rotation never touches an
open connection. One event-loop thread each; the bytes cross Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import threading
import weakref
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509

from pymesh.mesh import alpn
from pymesh.mesh.defaults import DEFAULT_TRUST_DOMAIN, INBOUND_PORT
from pymesh.mesh.errors import AuthError, SecurityError
from pymesh.mesh.pki import spiffe_ids

log = logging.getLogger(__name__)

ALPN_TCP = alpn.PYTLS_TCP
ALPN_HTTP = alpn.MTLS_HTTP
ALPN_INBOUND = alpn.INBOUND_SERVER
TLS_HANDSHAKE = 0x16
BUF = 1 << 18


class _Files:
    """The workload cert files, reloaded into a fresh context when they change."""

    def __init__(self, cert_dir: str | os.PathLike[str], server: bool, alpn: Iterable[str]) -> None:
        self.dir = Path(cert_dir)
        self.server = server
        self.alpn = list(alpn)
        self._stamp: tuple[int, ...] = ()
        self._ctx: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    def context(self) -> ssl.SSLContext:
        files = [self.dir / f for f in ("cert-chain.pem", "key.pem", "root-cert.pem")]
        try:
            stamp = tuple(p.stat().st_mtime_ns for p in files)
        except OSError as e:
            raise SecurityError(f"{self.dir}: workload certificate files missing: {e}") from e
        with self._lock:
            if stamp != self._stamp or self._ctx is None:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if self.server else ssl.PROTOCOL_TLS_CLIENT)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                ctx.check_hostname = False  # SPIFFE identities, checked after the handshake
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(cafile=str(files[2]))
                ctx.load_cert_chain(str(files[0]), str(files[1]))
                if self.alpn:
                    ctx.set_alpn_protocols(self.alpn)
                self._ctx, self._stamp = ctx, stamp
            return self._ctx


def peer_identity(sslobj: ssl.SSLObject | ssl.SSLSocket | None) -> list[str]:
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    return spiffe_ids(x509.load_der_x509_certificate(der)) if der else []


def check_peer(ids: list[str], allowed: Iterable[str] | None, trust_domain: str) -> str:
    """The peer's identity if it is allowed; AuthError naming it otherwise."""
    allowed_set = set(allowed) if allowed is not None else None
    for uri in ids:
        if allowed_set is None and uri.startswith(f"spiffe://{trust_domain}/"):
            return uri
        if allowed_set is not None and uri in allowed_set:
            return uri
    want = ", ".join(sorted(allowed_set)) if allowed_set is not None else f"any identity of {trust_domain}"
    raise AuthError(f"peer identity {', '.join(ids) or '(none)'} is not {want}", code="PERMISSION_DENIED")


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, stats: dict[str, int]) -> None:
    try:
        while data := await src.read(BUF):
            stats["bytes"] += len(data)
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


async def _close(w: asyncio.StreamWriter, timeout: float = 2.0) -> None:
    """Closes a stream and waits until its socket is closed: a TLS stream first
    exchanges close_notify, which a peer that never answers would hold open for
    asyncio's 30 s shutdown timeout, so after ``timeout`` it is aborted."""
    w.close()
    try:
        await asyncio.wait_for(w.wait_closed(), timeout)
    except asyncio.CancelledError:
        w.transport.abort()
        raise
    except Exception:
        w.transport.abort()


async def _relay(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    stats: dict[str, int],
) -> None:
    pipes = [asyncio.ensure_future(_pipe(a[0], b[1], stats)), asyncio.ensure_future(_pipe(b[0], a[1], stats))]
    try:
        done, _ = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        # A TLS side has no half-close (close_notify ends both directions): once one
        # direction ends into it, the other is over too.
        ended_into = b[1] if pipes[0] in done else a[1]
        if not ended_into.can_write_eof():
            for p in pipes:
                p.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
    except asyncio.CancelledError:
        for p in pipes:
            p.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)  # stop(): the connection goes with the listener
    finally:
        await asyncio.gather(_close(a[1]), _close(b[1]), return_exceptions=True)


class _LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.server: asyncio.base_events.Server | None = None
        self.stats = {"connections": 0, "refused": 0, "plaintext": 0, "bytes": 0}
        # Every stream this loop opened: stop() aborts what is still open or still
        # shutting down (a TLS close_notify in flight) before the loop closes.
        self._writers: weakref.WeakSet[asyncio.StreamWriter] = weakref.WeakSet()
        self._live: set[asyncio.Task[None]] = set()

    def _keep(
        self, streams: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self._writers.add(streams[1])
        return streams

    def run(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)  # type: ignore[arg-type]

    def stop(self) -> None:
        """Closes the listener, cancels every connection and waits for their
        clean-up (each closes its sockets and streams), then closes the loop:
        nothing is left to the garbage collector."""

        async def close() -> None:
            if self.server is not None:
                self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in list(self._writers):
                w.transport.abort()
            if self.server is not None:
                await self.server.wait_closed()
            for _ in range(3):
                await asyncio.sleep(0)  # the transports' connection_lost callbacks

        if self.thread.is_alive():
            self.run(close())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        if not self.thread.is_alive() and not self.loop.is_closed():
            # The loop has stopped: what started in its last turns (a connection accepted as
            # the listener closed) is finished here, on this thread, before the loop closes.
            for _ in range(10):
                tasks = asyncio.all_tasks(self.loop)
                if not tasks:
                    break
                for t in tasks:
                    t.cancel()
                self.loop.run_until_complete(asyncio.wait(tasks, timeout=2))
            for w in list(self._writers):
                w.transport.abort()
            for _ in range(3):
                self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()


class InboundMtls(_LoopThread):
    def __init__(
        self,
        cert_dir: str | os.PathLike[str],
        target: tuple[str, int],
        *,
        listen: tuple[str, int] = ("0.0.0.0", INBOUND_PORT),
        mode: str = "STRICT",
        allowed: Iterable[str] | None = None,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
    ) -> None:
        super().__init__("pymesh-inbound-mtls")
        if mode not in ("STRICT", "PERMISSIVE"):
            raise SecurityError(f"mode {mode!r}: expected STRICT or PERMISSIVE")
        self.files = _Files(cert_dir, True, ALPN_INBOUND)
        self.files.context()  # fail now, not on the first connection
        self.target = target
        self.listen = listen
        self.mode = mode
        self.allowed = list(allowed) if allowed is not None else None
        self.trust_domain = trust_domain
        self.port = 0

    def start(self) -> InboundMtls:
        self.thread.start()
        self.port = int(self.run(self._start()))  # type: ignore[call-overload]
        return self

    async def _start(self) -> int:
        sock = socket.create_server(self.listen)
        sock.setblocking(False)
        self._lsock = sock
        self._tasks: set[asyncio.Future[None]] = set()
        self._accept_task = asyncio.ensure_future(self._accept_loop(sock))
        return int(sock.getsockname()[1])

    def stop(self) -> None:
        super().stop()
        with contextlib.suppress(Exception):
            self._lsock.close()

    async def _accept_loop(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(lsock)
            # Envoy sets TCP_NODELAY on every socket; without it the TLS handshake's small
            # records meet delayed ACKs (measured: 22 -> 220 mTLS connections/s).
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.ensure_future(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _peek(self, conn: socket.socket) -> int | None:
        """The first byte, left in the socket (MSG_PEEK) for the TLS layer to read."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(conn.fileno(), readable)
        try:
            await asyncio.wait_for(ready, 10)
            data = conn.recv(1, socket.MSG_PEEK)
        except (asyncio.TimeoutError, OSError):
            return None
        finally:
            loop.remove_reader(conn.fileno())
        return data[0] if data else None

    async def _streams(
        self, conn: socket.socket, ctx: ssl.SSLContext | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=BUF)
        proto = asyncio.StreamReaderProtocol(reader)
        kw = {"ssl": ctx, "ssl_handshake_timeout": 10.0} if ctx is not None else {}
        transport, _ = await loop.connect_accepted_socket(lambda: proto, conn, **kw)  # type: ignore[arg-type]
        return self._keep((reader, asyncio.StreamWriter(transport, proto, reader, loop)))

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self._serve_one(conn)
        except asyncio.CancelledError:
            conn.close()  # stop(): before the streams own it, the raw socket is ours to close
            raise

    async def _serve_one(self, conn: socket.socket) -> None:
        self.stats["connections"] += 1
        # The first byte decides (Envoy's TLS inspector): a handshake record means TLS.
        first = await self._peek(conn)
        if first is None:
            conn.close()
            return
        if first != TLS_HANDSHAKE:
            if self.mode != "PERMISSIVE":
                self.stats["refused"] += 1
                log.warning("inbound: plaintext connection refused (STRICT mTLS)")
                conn.close()
                return
            self.stats["plaintext"] += 1
            down = await self._streams(conn, None)
        else:
            try:
                down = await self._streams(conn, self.files.context())
            except (ssl.SSLError, ConnectionError, OSError, asyncio.TimeoutError) as e:
                self.stats["refused"] += 1
                log.warning("inbound mTLS handshake failed: %s", e)
                conn.close()
                return
            try:
                ident = check_peer(peer_identity(down[1].get_extra_info("ssl_object")), self.allowed, self.trust_domain)
            except AuthError as e:
                self.stats["refused"] += 1
                log.warning("inbound mTLS refused: %s", e)
                await _close(down[1])
                return
            log.debug("inbound mTLS from %s", ident)
        try:
            up = self._keep(await asyncio.open_connection(*self.target))
        except OSError:
            await _close(down[1])
            return
        except asyncio.CancelledError:
            down[1].transport.abort()
            raise
        await _relay(down, up, self.stats)


class MtlsOriginator(_LoopThread):
    """Plaintext in on ``listen``, mTLS out to ``endpoint`` whose identity must be in ``identities``."""

    def __init__(
        self,
        cert_dir: str | os.PathLike[str],
        endpoint: tuple[str, int],
        identities: Iterable[str],
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        alpn: Iterable[str] = ALPN_TCP,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
    ) -> None:
        super().__init__("pymesh-outbound-mtls")
        self.files = _Files(cert_dir, False, alpn)
        self.files.context()
        self.endpoint = endpoint
        self.identities = list(identities)
        self.listen = listen
        self.trust_domain = trust_domain
        self.port = 0

    def start(self) -> MtlsOriginator:
        self.thread.start()
        self.port = int(self.run(self._start()))  # type: ignore[call-overload]
        return self

    async def _start(self) -> int:
        self.server = await asyncio.start_server(self._accept, *self.listen)
        return int(self.server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The loop holds tasks weakly: a connection whose both directions wait is kept here.
        task = asyncio.current_task()
        assert task is not None
        self._live.add(task)
        try:
            await self._accept_one(reader, writer)
        finally:
            self._live.discard(task)

    async def _accept_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats["connections"] += 1
        self._keep((reader, writer))
        up = None
        try:
            up = self._keep(
                await asyncio.open_connection(*self.endpoint, ssl=self.files.context(), ssl_handshake_timeout=10)
            )
            ident = check_peer(peer_identity(up[1].get_extra_info("ssl_object")), self.identities, self.trust_domain)
        except (ssl.SSLError, ConnectionError, OSError, AuthError, asyncio.TimeoutError) as e:
            self.stats["refused"] += 1
            log.warning("outbound mTLS to %s:%d refused: %s", *self.endpoint, e)
            await _close(writer)
            if up is not None:
                await _close(up[1])
            return
        log.debug("outbound mTLS to %s", ident)
        await _relay((reader, writer), up, self.stats)
