"""Free ports for servers the tests start on fixed addresses."""

from __future__ import annotations

import socket


def free_port(*hosts: str) -> int:
    """A port free for both TCP and UDP on every one of ``hosts`` (default 127.0.0.1) at once.

    One check for every use (an xDS or HTTP server binds TCP, a DNS server both), so no caller
    gets a port another kind of socket already holds."""
    hosts = hosts or ("127.0.0.1",)
    for _ in range(50):
        socks: list[socket.socket] = []
        try:
            first = socket.socket()
            socks.append(first)
            first.bind((hosts[0], 0))
            port = int(first.getsockname()[1])
            for h in hosts:
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    if h == hosts[0] and kind == socket.SOCK_STREAM:
                        continue
                    s = socket.socket(socket.AF_INET, kind)
                    socks.append(s)
                    s.bind((h, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no port free on all of {hosts}")
