"""The native relays on loopback inside a capture namespace (support.netns.nft_netns), as the relay
mTLS and metrics tests run them: their tables built from a VIP -> cluster map, local apps behind
the inbound, a client that half-closes, and waiting until the relays are idle."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pymesh.lbtable import LbTable, RedirectTable


def tables(clusters: Mapping[str, dict[str, Any]]) -> tuple[LbTable, RedirectTable]:
    """The lbtable of ``clusters`` (VIP -> cluster) and the redirection of each VIP:80 to its cluster."""
    lb = LbTable(seed=1)
    lb.load(list(clusters.values()))
    services = [{"address": vip, "port": 80, "cluster": c["name"]} for vip, c in clusters.items()]
    return lb, RedirectTable.from_dict({"services": services, "include_ip_ranges": ["*"]})


def exchange(host: str, port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """Sends, half-closes, reads until EOF (or a reset: what a refusal looks like)."""
    out = bytearray()
    try:
        s = socket.create_connection((host, port), timeout=timeout)
    except ConnectionResetError:
        return b""  # on loopback the relay's reset can beat the end of connect()
    with s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while data := s.recv(1 << 16):
                out += data
        except OSError:
            pass  # refused: reset (ENOTCONN if it came before our shutdown)
    return bytes(out)


def settled(*relays: Any) -> None:
    """Until the relays' connection threads have finished (they outlive the client's socket
    briefly), for at most 5 s."""
    deadline = time.monotonic() + 5
    while any(r.stats()["active"] for r in relays) and time.monotonic() < deadline:
        time.sleep(0.02)


def echo(c: socket.socket) -> None:
    """An echo app's connection: every byte back, then FIN after the client's."""
    with c, contextlib.suppress(OSError):
        while data := c.recv(1 << 16):
            c.sendall(data)
        c.shutdown(socket.SHUT_WR)


class Apps:
    """The local apps behind the inbound: a server on 0.0.0.0:PORT for each of ``handlers``
    (PORT -> what serves one connection, in a thread of its own); ``peers``: the source address
    of every connection accepted."""

    def __init__(self, handlers: Mapping[int, Callable[[socket.socket], None]]) -> None:
        self.socks = [socket.create_server(("0.0.0.0", p), reuse_port=True) for p in handlers]
        self.peers: list[str] = []
        for s, fn in zip(self.socks, handlers.values(), strict=True):
            threading.Thread(target=self._accept, args=(s, fn), daemon=True).start()

    def _accept(self, s: socket.socket, fn: Callable[[socket.socket], None]) -> None:
        while True:
            try:
                c, peer = s.accept()
            except OSError:
                return
            self.peers.append(peer[0])
            threading.Thread(target=fn, args=(c,), daemon=True).start()

    def close(self) -> None:
        for s in self.socks:
            # shutdown wakes the thread blocked in accept(); close() alone
            # would leave the socket listening in the reuse_port group,
            # taking a share of the next test's connections.
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
