"""The capture settings: istio-iptables' flags and environment, validated.

Defaults follow istio-iptables (istio/istio ``tools/istio-iptables/pkg/config``
and ``pkg/constants``) with one VM-friendly difference stated where it
applies. Every field is validated here, once; the backends only render.
:meth:`CaptureConfig.from_env` is the one reader of istio-iptables'
environment in pymesh: the agent's redirection table, its ``--dry-run`` and
the kernel rules all come from the one object it returns.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from pymesh._native import PymeshError
from pymesh.mesh.defaults import DNS_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_UID, TUNNEL_PORT
from pymesh.mesh.values import truthy

__all__ = [
    "DNS_PORT",
    "INBOUND_PORT",
    "OUTBOUND_PORT",
    "TUNNEL_PORT",
    "CaptureConfig",
    "CaptureError",
]


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class CaptureError(PymeshError):
    """Capture settings are invalid, or installing/removing the rules failed.
    ``key`` names the istio-iptables environment variable at fault when the
    settings came from the environment ("" otherwise)."""

    def __init__(self, message: str, *, key: str = "") -> None:
        self.key = key
        self.reason = message
        super().__init__(f"{key}: {message}" if key else message)


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

    proxy_uid: int = PROXY_UID
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
    # Interfaces whose traffic is never captured, in either direction (ISTIO_EXCLUDE_INTERFACES).
    exclude_interfaces: tuple[str, ...] = ()
    # ISTIO_INBOUND_INTERCEPTION_MODE: REDIRECT (the rules pymesh installs) or TPROXY (refused at install).
    interception_mode: str = "REDIRECT"
    # ISTIO_CUSTOM_IP_TABLES=true: the operator manages the rules; install nothing.
    custom_rules: bool = False
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
        ifaces = tuple(_split(self.exclude_interfaces))
        for i, name in enumerate(ifaces):
            # IFNAMSIZ is 16 with the NUL; the characters the kernel allows in practice.
            if len(name) > 15 or not all(c.isascii() and (c.isalnum() or c in "-_.@") for c in name):
                raise CaptureError(f"exclude_interfaces[{i}]: {name!r} is not an interface name")
        s(self, "exclude_interfaces", ifaces)
        mode = str(self.interception_mode).upper()
        if mode not in ("REDIRECT", "TPROXY"):
            raise CaptureError(f"interception_mode: {self.interception_mode!r} is not REDIRECT or TPROXY")
        s(self, "interception_mode", mode)

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
        ISTIO_OUTBOUND_PORTS, ISTIO_EXCLUDE_INTERFACES,
        ISTIO_INBOUND_INTERCEPTION_MODE, ISTIO_CUSTOM_IP_TABLES, REDIRECT_DNS
        (else ISTIO_META_DNS_CAPTURE), CAPTURE_ALL_DNS. Keyword arguments
        override. DNS servers come from resolv.conf unless given. A bad value
        is a CaptureError whose ``key`` is the variable. CIDRs may have host
        bits set (``10.0.0.1/8``), as istio-iptables' ``netip.ParsePrefix``
        takes them; they are normalised to the network.
        """
        e = dict(os.environ if env is None else env)
        kw: dict[str, object] = {}

        def val(key: str) -> str | None:
            v = e.get(key)
            return None if v is None else v.strip()

        def num(key: str, field_name: str) -> None:
            v = val(key)
            if v:
                if not v.isdigit():
                    raise CaptureError(f"{v!r} is not a number", key=key)
                kw[field_name] = int(v)

        def ports(key: str, field_name: str, *, star: bool = False) -> None:
            v = val(key)
            if v is None:
                return
            for p in _split(v):
                if not (star and p == "*") and (not p.isdigit() or not 0 < int(p) < 65536):
                    raise CaptureError(f"{p!r} is not a port (1-65535)", key=key)
            kw[field_name] = v

        def cidrs(key: str, field_name: str) -> None:
            v = val(key)
            if v is None:
                return
            out = []
            for c in _split(v):
                if c == "*":
                    out.append(c)
                    continue
                try:
                    out.append(str(ipaddress.ip_network(c, strict=False)))
                except ValueError:
                    raise CaptureError(f"{c!r} is not an IP address or CIDR", key=key) from None
            kw[field_name] = ",".join(out)

        num("PROXY_UID", "proxy_uid")
        num("PROXY_GID", "proxy_gid")
        num("INBOUND_CAPTURE_PORT", "inbound_port")
        num("INBOUND_TUNNEL_PORT", "tunnel_port")
        ports("ISTIO_INBOUND_PORTS", "inbound_ports", star=True)
        ports("ISTIO_LOCAL_EXCLUDE_PORTS", "inbound_exclude_ports")
        cidrs("ISTIO_SERVICE_CIDR", "outbound_include")
        cidrs("ISTIO_SERVICE_EXCLUDE_CIDR", "outbound_exclude")
        ports("ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE", "outbound_exclude_ports")
        ports("ISTIO_OUTBOUND_PORTS", "outbound_ports")
        if val("ISTIO_EXCLUDE_INTERFACES"):
            kw["exclude_interfaces"] = tuple(_split(val("ISTIO_EXCLUDE_INTERFACES")))
        mode = (val("ISTIO_INBOUND_INTERCEPTION_MODE") or "REDIRECT").upper()
        if mode not in ("REDIRECT", "TPROXY"):
            raise CaptureError(f"{mode!r} is not REDIRECT or TPROXY", key="ISTIO_INBOUND_INTERCEPTION_MODE")
        kw["interception_mode"] = mode
        kw["custom_rules"] = truthy(val("ISTIO_CUSTOM_IP_TABLES"))
        # An explicit REDIRECT_DNS wins; else the agent's DNS_CAPTURE decides (istio-iptables'
        # --redirect-dns defaults to ISTIO_META_DNS_CAPTURE).
        redirect = val("REDIRECT_DNS")
        dns = truthy(redirect if redirect else val("ISTIO_META_DNS_CAPTURE"))
        kw["redirect_dns"] = dns
        kw["capture_all_dns"] = truthy(val("CAPTURE_ALL_DNS"))
        kw.update(overrides)
        if dns and "dns_servers" not in kw:
            from pymesh.names import read_resolv_conf

            kw["dns_servers"] = read_resolv_conf().nameservers
        return cls(**kw)  # type: ignore[arg-type]

    def with_(self, **changes: object) -> CaptureConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]
