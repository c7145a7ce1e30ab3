"""``host:port`` addresses, parsed once for everything that takes one
(listen flags, discovery addresses, upstreams): IPv6 literals in brackets
(``[::1]:15053``, RFC 3986 §3.2.2), ports 1-65535, a default port where the
caller has one. linkerd keeps the same in ``linkerd/addr``."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

from pymesh.mesh.errors import AddressError


class HostPort(NamedTuple):
    host: str  # a name or an IP literal, without brackets
    port: int

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)


def format_host_port(host: str, port: int) -> str:
    """``host:port``, IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(
    text: str, *, default_port: int | None = None, what: str = "address", listen: bool = False
) -> HostPort:
    """Parses ``host:port``, ``[v6]:port``, and (with ``default_port``)
    ``host``, ``[v6]`` or a bare IPv6 literal. ``listen`` also takes port 0
    (any free port). AddressError names ``what``."""
    a = text.strip()
    if a.startswith("["):
        host, close, rest = a[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise AddressError(f"{what} {text!r}: expected [IPv6]:PORT")
        port = rest[1:]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise AddressError(f"{what} {text!r}: {host!r} in brackets is not an IPv6 address") from None
    elif a.count(":") == 1:
        host, _, port = a.partition(":")
    elif a.count(":") > 1:
        # A bare IPv6 literal has no port (the last group is not one).
        try:
            ipaddress.IPv6Address(a.split("%", 1)[0])
        except ValueError:
            raise AddressError(f"{what} {text!r}: an IPv6 address with a port needs brackets: [ADDR]:PORT") from None
        host, port = a, ""
    else:
        host, port = a, ""
    if not host:
        raise AddressError(f"{what} {text!r}: no host")
    if not port:
        if default_port is None:
            raise AddressError(f"{what} {text!r}: expected HOST:PORT")
        return HostPort(host, default_port)
    lowest = 0 if listen else 1
    if not (port.isascii() and port.isdigit()) or not lowest <= int(port) < 65536:
        raise AddressError(f"{what} {text!r}: bad port {port!r} ({lowest}-65535)")
    return HostPort(host, int(port))


def port_of(addresses: Iterable[str], default: int) -> int:
    """The port of the first address that has a valid one, else ``default``
    (the capture rules' target port from a listener list)."""
    for a in addresses:
        try:
            return parse_host_port(a).port
        except AddressError:
            continue
    return default
