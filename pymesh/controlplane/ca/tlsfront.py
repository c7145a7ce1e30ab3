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

Certificates rotate without dropping anything: :meth:`reload` loads the new
chain into the same ``SSLContext``, which only new handshakes read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from pymesh.mesh.errors import SecurityError
from pymesh.mesh.pki import spiffe_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Peer:
    address: str
    spiffe_ids: tuple[str, ...] = field(default_factory=tuple)
    has_cert: bool = False


def server_context(cert_file: Path, key_file: Path, root_pem: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cadata=root_pem)
    ctx.load_cert_chain(str(cert_file), str(key_file))
    ctx.set_alpn_protocols(["h2"])
    return ctx


class TlsFront:
    def __init__(self, host: str, port: int, backend: tuple[str, int], ctx: ssl.SSLContext) -> None:
        self.host = host
        self.port = port
        self.backend = backend
        self.ctx = ctx
        # (address, port) of our own end of the loopback connection -> the TLS peer. The address
        # is part of the key: a local process connecting from 127.0.0.2:P must not pass for
        # the front's 127.0.0.1:P.
        self.peers: dict[tuple[str, int], Peer] = {}
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = {"accepted": 0, "with_cert": 0, "handshake_failures": 0}

    async def start(self) -> int:
        try:
            self._server = await asyncio.start_server(
                self._handle, self.host, self.port, ssl=self.ctx, ssl_handshake_timeout=10.0
            )
        except OSError as e:
            raise SecurityError(f"cannot listen on {self.host}:{self.port} for TLS: {e.strerror}") from e
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def reload(self, cert_file: Path, key_file: Path) -> None:
        self.ctx.load_cert_chain(str(cert_file), str(key_file))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def lookup(self, grpc_peer: str) -> Peer | None:
        """``context.peer()`` (``ipv4:127.0.0.1:PORT`` / ``ipv6:[::1]:PORT``) → the TLS peer."""
        kind, _, rest = grpc_peer.partition(":")
        if kind not in ("ipv4", "ipv6"):
            return None
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        return self.peers.get((host, int(port))) if port.isdigit() else None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.stats["accepted"] += 1
        peername = writer.get_extra_info("peername")
        addr = f"{peername[0]}:{peername[1]}" if peername else "?"
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        ids: tuple[str, ...] = ()
        if der:
            self.stats["with_cert"] += 1
            ids = tuple(spiffe_ids(x509.load_der_x509_certificate(der)))
        local: tuple[str, int] = ("", 0)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.backend)
        except OSError as e:
            log.error("TLS front: backend %s:%d unreachable: %s", *self.backend, e)
            writer.close()
            self._tasks.discard(task)
            return
        try:
            name = up_writer.get_extra_info("sockname")
            local = (str(name[0]), int(name[1]))
            self.peers[local] = Peer(addr, ids, bool(der))
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
            self._tasks.discard(task)


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
