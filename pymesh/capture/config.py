"""The capture settings: istio-iptables' flags and environment, validated.

Defaults follow istio-iptables (``tools/istio-iptables``; the table in
``istio-vm-workloads.md`` §5.6) with one VM-friendly difference stated where
it applies. Every field is validated here, once; the backends only render.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from pymesh._native import PymeshError

__all__ = [
    "DNS_PORT",
    "INBOUND_PORT",
    "OUTBOUND_PORT",
    "TUNNEL_PORT",
    "CaptureConfig",
    "CaptureError",
]

OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
TUNNEL_PORT = 15008
DNS_PORT = 15053

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class CaptureError(PymeshError):
    """Capture settings are invalid, or installing/removing the rules failed."""


def _split(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [x.strip() for x in value.split(",") if x.strip()]
    return [str(x).strip() for x in value if str(x).strip()]


def _cidrs(name: str, value: str | Iterable[str] | None) -> tuple[str, ...] | Literal["*"]:
    items = _split(value)
    if "*" in items:
        return "*"
    out = []
    for i, s in enumerate(items):
        try:
            out.append(str(ipaddress.ip_network(s, strict=True)))
        except ValueError as e:
            raise CaptureError(f"{name}[{i}]: {s!r} is not a CIDR: {e}") from None
    return tuple(out)


def _ports(name: str, value: str | Iterable[str | int] | None, *, star: bool = False) -> tuple[int, ...] | Literal["*"]:
    items = _split([str(v) for v in value] if value is not None and not isinstance(value, str) else value)
    if "*" in items:
        if not star:
            raise CaptureError(f"{name}: '*' is not allowed here")
        return "*"
    out = []
    for i, s in enumerate(items):
        if not s.isdigit() or not 0 < int(s) < 65536:
            raise CaptureError(f"{name}[{i}]: {s!r} is not a port 1-65535")
        out.append(int(s))
    return tuple(sorted(set(out)))


def _port(name: str, v: int) -> int:
    if not isinstance(v, int) or not 0 < v < 65536:
        raise CaptureError(f"{name}: {v!r} is not a port 1-65535")
    return v


def _id(name: str, v: int) -> int:
    if not isinstance(v, int) or not 0 <= v < 2**32 - 1:
        raise CaptureError(f"{name}: {v!r} is not a user/group id")
    return v


@dataclass(frozen=True)
class CaptureConfig:
    """What to capture and where to send it.

    ``proxy_uid``/``proxy_gid``: traffic of this user/group (the agent and
    its proxies) is never captured — istio-iptables' owner-match RETURN
    rules, ordered before every redirect. ``dns_servers``: the resolv.conf
    nameservers whose port-53 traffic goes to ``dns_port`` when
    ``redirect_dns`` is on; ``capture_all_dns`` captures port 53 to any
    address instead. ``outbound_include``: CIDRs whose TCP goes to
    ``outbound_port`` (``"*"``: everything; empty: no outbound capture);
    ``outbound_exclude`` and ``outbound_exclude_ports`` are never captured;
    ``outbound_ports`` (istio-iptables ``-q``) are captured to any address
    not excluded, in addition to the included CIDRs.
    ``inbound_ports``: ``"*"`` or ports whose incoming TCP goes to
    ``inbound_port`` (empty: no inbound capture); with ``"*"``,
    ``inbound_exclude_ports`` are left alone (ssh!). ``mark``: packets
    carrying this fwmark are never captured (the proxy may mark its sockets
    instead of, or as well as, running as ``proxy_uid``). ``ipv6``: also
    install the IPv6 rules. ``name``: the nftables table / iptables chain
    prefix, so several instances (tests) can coexist.
    """

    proxy_uid: int = 1337
    proxy_gid: int | None = None
    outbound_port: int = OUTBOUND_PORT
    inbound_port: int = INBOUND_PORT
    tunnel_port: int = TUNNEL_PORT
    dns_port: int = DNS_PORT
    redirect_dns: bool = False
    capture_all_dns: bool = False
    dns_servers: tuple[str, ...] = ()
    # istio-iptables defaults to "" (no outbound capture); istioctl writes
    # ISTIO_SERVICE_CIDR='*' into a VM's cluster.env, so "*" is the default here.
    outbound_include: tuple[str, ...] | Literal["*"] = "*"
    outbound_exclude: tuple[str, ...] = ()
    outbound_exclude_ports: tuple[int, ...] = ()
    outbound_ports: tuple[int, ...] = ()
    inbound_ports: tuple[int, ...] | Literal["*"] = ()
    inbound_exclude_ports: tuple[int, ...] = ()
    mark: int | None = None
    ipv6: bool = True
    name: str = "pymesh"
    # Derived, validated views (filled in __post_init__).
    _dns4: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)
    _dns6: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        s = object.__setattr__
        _id("proxy_uid", self.proxy_uid)
        # istio-iptables: the GID defaults to the same number as the UID.
        s(self, "proxy_gid", self.proxy_uid if self.proxy_gid is None else _id("proxy_gid", self.proxy_gid))
        for f in ("outbound_port", "inbound_port", "tunnel_port", "dns_port"):
            _port(f, getattr(self, f))
        s(self, "outbound_include", _cidrs("outbound_include", self.outbound_include))
        exclude = _cidrs("outbound_exclude", self.outbound_exclude)
        if exclude == "*":
            raise CaptureError("outbound_exclude: '*' is not allowed (set outbound_include to () instead)")
        s(self, "outbound_exclude", exclude)
        s(self, "outbound_exclude_ports", _ports("outbound_exclude_ports", self.outbound_exclude_ports))
        s(self, "outbound_ports", _ports("outbound_ports", self.outbound_ports))
        s(self, "inbound_ports", _ports("inbound_ports", self.inbound_ports, star=True))
        s(self, "inbound_exclude_ports", _ports("inbound_exclude_ports", self.inbound_exclude_ports))
        dns4: list[str] = []
        dns6: list[str] = []
        for i, a in enumerate(_split(self.dns_servers)):
            try:
                ip = ipaddress.ip_address(a.split("%", 1)[0])
            except ValueError:
                raise CaptureError(f"dns_servers[{i}]: {a!r} is not an IP address") from None
            (dns6 if ip.version == 6 else dns4).append(str(ip))
        s(self, "dns_servers", tuple(dns4 + dns6))
        s(self, "_dns4", tuple(dns4))
        s(self, "_dns6", tuple(dns6))
        if self.mark is not None and not (isinstance(self.mark, int) and 0 < self.mark < 2**32):
            raise CaptureError(f"mark: {self.mark!r} is not a fwmark 1-4294967295")
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum() or len(self.name) > 16:
            raise CaptureError(f"name: {self.name!r} must be 1-16 letters, digits, '-' or '_'")

    # --- what the backends render -------------------------------------------------

    @property
    def dns_enabled(self) -> bool:
        """DNS capture is on and has something to capture. Like istio-iptables,
        resolv.conf mode without nameservers captures no DNS."""
        return self.redirect_dns and (self.capture_all_dns or bool(self.dns_servers))

    @property
    def inbound_enabled(self) -> bool:
        return self.inbound_ports == "*" or bool(self.inbound_ports)

    @property
    def outbound_enabled(self) -> bool:
        return self.outbound_include == "*" or bool(self.outbound_include) or bool(self.outbound_ports)

    def dns_servers_of(self, version: int) -> tuple[str, ...]:
        return self._dns4 if version == 4 else self._dns6

    def networks(self, which: Sequence[str] | Literal["*"], version: int) -> list[str]:
        if which == "*":
            return []
        return [c for c in which if ipaddress.ip_network(c).version == version]

    # --- construction ----------------------------------------------------------------

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> CaptureConfig:
        """Settings from istio-iptables' environment variables (what
        ``istio-start.sh`` passes after sourcing cluster.env): PROXY_UID,
        PROXY_GID, INBOUND_CAPTURE_PORT, INBOUND_TUNNEL_PORT,
        ISTIO_INBOUND_PORTS, ISTIO_LOCAL_EXCLUDE_PORTS, ISTIO_SERVICE_CIDR,
        ISTIO_SERVICE_EXCLUDE_CIDR, ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE,
        ISTIO_OUTBOUND_PORTS,
        REDIRECT_DNS or ISTIO_META_DNS_CAPTURE, CAPTURE_ALL_DNS. Keyword
        arguments override. DNS servers come from resolv.conf unless given.
        """
        e = dict(os.environ if env is None else env)
        truthy = {"1", "true", "yes", "on"}
        kw: dict[str, object] = {}

        def num(key: str, field_name: str) -> None:
            if e.get(key, "").strip():
                v = e[key].strip()
                if not v.isdigit():
                    raise CaptureError(f"{key}: {v!r} is not a number")
                kw[field_name] = int(v)

        num("PROXY_UID", "proxy_uid")
        num("PROXY_GID", "proxy_gid")
        num("INBOUND_CAPTURE_PORT", "inbound_port")
        num("INBOUND_TUNNEL_PORT", "tunnel_port")
        if "ISTIO_INBOUND_PORTS" in e:
            kw["inbound_ports"] = e["ISTIO_INBOUND_PORTS"]
        if "ISTIO_LOCAL_EXCLUDE_PORTS" in e:
            kw["inbound_exclude_ports"] = e["ISTIO_LOCAL_EXCLUDE_PORTS"]
        if "ISTIO_SERVICE_CIDR" in e:
            kw["outbound_include"] = e["ISTIO_SERVICE_CIDR"]
        if "ISTIO_SERVICE_EXCLUDE_CIDR" in e:
            kw["outbound_exclude"] = e["ISTIO_SERVICE_EXCLUDE_CIDR"]
        if "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE" in e:
            kw["outbound_exclude_ports"] = e["ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE"]
        if "ISTIO_OUTBOUND_PORTS" in e:
            kw["outbound_ports"] = e["ISTIO_OUTBOUND_PORTS"]
        dns = e.get("REDIRECT_DNS", e.get("ISTIO_META_DNS_CAPTURE", "")).strip().lower() in truthy
        kw["redirect_dns"] = dns
        kw["capture_all_dns"] = e.get("CAPTURE_ALL_DNS", "").strip().lower() in truthy
        kw.update(overrides)
        if dns and "dns_servers" not in kw:
            from pymesh.names import read_resolv_conf

            kw["dns_servers"] = read_resolv_conf().nameservers
        return cls(**kw)  # type: ignore[arg-type]

    def with_(self, **changes: object) -> CaptureConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]
