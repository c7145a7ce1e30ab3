"""The NDS name table a proxy receives, built as istiod builds it
(istio/istio ``pkg/dns/server/name_table.go``, ``BuildNameTable``).

- Addresses: the service's VIPs (ClusterIPs / ServiceEntry addresses); else
  its auto-allocated VIPs, only when the proxy captures DNS
  (``DNS_CAPTURE=true``); VIPs are filtered to the proxy's IP families
  unless that leaves none. CIDR addresses are dropped.
- Headless (``clusterIP: None`` / ServiceEntry ``resolution: NONE``) with
  ports: the healthy endpoint IPs of all ports on the proxy's network
  (deduplicated, first seen order), plus ``<hostname>.<subdomain>.<ns>.svc...``
  per pod that sets both.
- No usable address: no entry (the agent forwards the query upstream).
- Kubernetes entries carry ``shortname`` and ``namespace``; a Kubernetes
  service replaces a ServiceEntry for the same host; two ServiceEntries
  append their IPs.
- The proxy's namespace does not change the table (the agent derives the
  short forms); it is part of the cache key only through the flags above.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from pymesh.controlplane.registry import Registry
from pymesh.proto.nds import NameTable


@dataclass(frozen=True)
class NdsView:
    """What of a proxy shapes its table (the cache key of a generated table)."""

    dns_capture: bool
    families: frozenset[int]  # the proxy's IP families; empty = unknown (no filtering)
    network: str


def _is_plain_ip(a: str) -> bool:
    try:
        ipaddress.ip_address(a)
    except ValueError:
        return False
    return True


def _filter_families(addresses: list[str], families: frozenset[int]) -> list[str]:
    if not families:
        return addresses
    kept = [a for a in addresses if ipaddress.ip_address(a).version in families]
    return kept or addresses


def build_name_table(registry: Registry, view: NdsView) -> Any:
    """Returns an ``istio.networking.nds.v1.NameTable`` message."""
    table = NameTable()
    for svc in registry.services:
        ips: list[str] = []
        if svc.resolution == "Passthrough" and not svc.addresses:
            if not svc.ports:
                continue
            seen: set[str] = set()
            for port in svc.ports:
                for ep in registry.endpoints.get((svc.hostname, port.number), ()):
                    if not _is_plain_ip(ep.address) or ep.address in seen:
                        continue
                    if view.network and ep.network and ep.network != view.network:
                        continue
                    seen.add(ep.address)
                    ips.append(ep.address)
                    if ep.hostname and ep.subdomain and svc.registry == "Kubernetes":
                        rest = svc.hostname.split(".", 1)[1]
                        pod_host = f"{ep.hostname}.{ep.subdomain}.{rest}"
                        if pod_host not in table.table:
                            info = table.table[pod_host]
                            info.ips.append(ep.address)
                            info.registry = svc.registry
                            info.shortname = f"{ep.hostname}.{ep.subdomain}"
                            info.namespace = svc.namespace
        else:
            ips = [a for a in svc.addresses if _is_plain_ip(a)]
            if not ips and svc.auto_addresses and view.dns_capture:
                ips = list(svc.auto_addresses)
            ips = _filter_families(ips, view.families)
        if not ips:
            continue
        host = svc.hostname
        if host in table.table:
            existing = table.table[host]
            if existing.registry == "Kubernetes":
                continue
            if svc.registry != "Kubernetes":
                existing.ips.extend(ips)
                continue
            del table.table[host]
        info = table.table[host]
        info.ips.extend(ips)
        info.registry = svc.registry
        if svc.registry == "Kubernetes" and not host.endswith(".clusterset.local"):
            info.shortname = svc.name
            info.namespace = svc.namespace
    return table
