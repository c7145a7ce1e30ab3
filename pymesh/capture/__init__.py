"""Traffic capture: istio-iptables' rules, installed with nftables or iptables.

The agent describes what to capture once (``CaptureConfig``, from keyword
arguments or istio-iptables' environment variables) and installs it with
either backend::

    from pymesh.capture import Capture, CaptureConfig
    cfg = CaptureConfig(proxy_uid=999, redirect_dns=True, dns_servers=("10.0.0.53",))
    cap = Capture(cfg, backend="nftables")   # or "iptables", or "auto"
    cap.install()        # idempotent: converges to exactly one copy
    ...
    cap.remove()         # removes exactly what was added

``remove_capture(name)`` removes both backends' rules without any state, so
a restarted agent (or ``pymesh capture cleanup``) can clean up after a crash.
The same settings give the outbound proxy its redirection table
(``redirect_table``), so the proxy and the kernel agree on what is captured.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pymesh._native import RedirectTable
from pymesh.capture import iptables, nftables
from pymesh.capture.config import (
    DNS_PORT,
    INBOUND_PORT,
    OUTBOUND_PORT,
    TUNNEL_PORT,
    CaptureConfig,
    CaptureError,
)

__all__ = [
    "DNS_PORT",
    "INBOUND_PORT",
    "OUTBOUND_PORT",
    "TUNNEL_PORT",
    "Backend",
    "Capture",
    "CaptureConfig",
    "CaptureError",
    "redirect_table",
    "remove_capture",
]

Backend = Literal["auto", "nftables", "iptables"]


log = logging.getLogger(__name__)


def _pick(backend: Backend) -> Literal["nftables", "iptables"]:
    if backend in ("nftables", "iptables"):
        return backend
    if backend != "auto":
        raise CaptureError(f"backend: {backend!r} is not 'auto', 'nftables' or 'iptables'")
    if shutil.which("nft"):
        return "nftables"
    if shutil.which("iptables"):
        return "iptables"
    raise CaptureError("backend: neither nft (nftables) nor iptables is installed")


class Capture:
    """The capture rules of one ``CaptureConfig`` on one backend."""

    def __init__(self, config: CaptureConfig, backend: Backend = "auto") -> None:
        self.config = config
        self.backend = _pick(backend)

    def render(self) -> str:
        """The rules as the backend takes them (nft script / iptables-save text)."""
        if self.backend == "nftables":
            return nftables.render(self.config)
        text = iptables.render(self.config, 4)
        if self.config.ipv6:
            text += "# IPv6 (ip6tables)\n" + iptables.render(self.config, 6)
        return text

    def install(self) -> None:
        """Installs the rules, replacing any earlier copy of ours; nothing with
        ``custom_rules`` (the operator's own); TPROXY is refused."""
        if self.config.custom_rules:
            log.info("ISTIO_CUSTOM_IP_TABLES is set: no capture rules installed (the operator manages them)")
            return
        if self.config.interception_mode != "REDIRECT":
            raise CaptureError(
                f"interception mode {self.config.interception_mode}: pymesh installs REDIRECT rules only",
                key="ISTIO_INBOUND_INTERCEPTION_MODE",
            )
        # After a crash with the other backend (nftables <-> iptables), its stale rules would
        # still redirect traffic to a proxy that is not there: remove them first.
        other = "iptables" if self.backend == "nftables" else "nftables"
        if other == "iptables" and shutil.which("iptables"):
            if iptables.remove(self.config.name, ipv6=shutil.which("ip6tables") is not None):
                log.warning("removed stale iptables capture rules %r left by an earlier run", self.config.name)
        elif other == "nftables" and shutil.which("nft"):
            if nftables.remove(self.config.name):
                log.warning("removed stale nftables capture table %r left by an earlier run", self.config.name)
        if self.backend == "nftables":
            nftables.install(self.config)
        else:
            iptables.install(self.config)

    def remove(self) -> bool:
        """Removes exactly our rules; returns whether any were there."""
        if self.backend == "nftables":
            return nftables.remove(self.config.name)
        return iptables.remove(self.config.name, ipv6=self.config.ipv6)

    def installed(self) -> bool:
        if self.backend == "nftables":
            return nftables.installed(self.config.name)
        return bool(iptables.chains_present(self.config.name, ipv6=self.config.ipv6))

    def __enter__(self) -> Capture:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"Capture(backend={self.backend!r}, name={self.config.name!r})"


def remove_capture(name: str = "pymesh") -> bool:
    """Removes our rules from every backend installed on this host (after a
    crash nobody knows which one was used). Returns whether any were there."""
    found = False
    if shutil.which("nft"):
        found |= nftables.remove(name)
    if shutil.which("iptables"):
        found |= iptables.remove(name, ipv6=shutil.which("ip6tables") is not None)
    return found


def redirect_table(
    config: CaptureConfig,
    services: Iterable[Mapping[str, Any]] = (),
    *,
    port_clusters: Iterable[tuple[int, str]] = (),
    default_cluster: str | None = None,
) -> RedirectTable:
    """The outbound proxy's redirection table for these capture settings:
    ``services`` are ``{"address", "port", "cluster"}`` (a service VIP:port
    and its cluster); ``port_clusters`` ``(port, cluster)`` take a whole port
    (istiod's ``0.0.0.0_<port>`` TCP listeners); ``default_cluster`` takes the
    rest (BlackHoleCluster under ``REGISTRY_ONLY``; None: passthrough);
    include/exclude CIDRs and ports are the config's."""
    # With outbound_ports any address may be captured (on those ports); the
    # kernel decides what reaches the proxy, so the table includes everything.
    include = ["*"] if config.outbound_include == "*" or config.outbound_ports else list(config.outbound_include)
    return RedirectTable.from_dict(
        {
            "services": [dict(s) for s in services],
            "port_clusters": [{"port": p, "cluster": c} for p, c in port_clusters],
            "default_cluster": default_cluster,
            "include_ip_ranges": include,
            "exclude_ip_ranges": list(config.outbound_exclude),
            "exclude_ports": list(config.outbound_exclude_ports),
        }
    )
