"""Auto-allocated VIPs for ServiceEntries without addresses.

Istio's current allocator (``pilot/pkg/controllers/ipallocate``, v2, default
since 1.25) hands out one IPv4 from 240.240.0.0/16 and one IPv6 from
2001:2::/48 per host, sequentially from the first address, and records them
in the ServiceEntry's status so they survive istiod restarts. We keep the
same ranges and order and persist the allocations in the store instead of a
status field; an allocation is never reused for another host, so a name
keeps its address across restarts and edits (the v4 range holds 65,534).
Not allocated: resolution NONE, spec.addresses set, label
``networking.istio.io/enable-autoallocate-ip: "false"``, wildcard hosts
unless resolution is DYNAMIC_DNS.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from pymesh.controlplane.errors import ControlPlaneError
from pymesh.controlplane.resources import ServiceEntry

V4_PREFIX = ipaddress.IPv4Network("240.240.0.0/16")
V6_PREFIX = ipaddress.IPv6Network("2001:2::/48")
DISABLE_LABEL = "networking.istio.io/enable-autoallocate-ip"


def wants_vip(se: ServiceEntry, host: str) -> bool:
    if se.resolution == "NONE" or se.addresses:
        return False
    if se.meta.labels.get(DISABLE_LABEL) == "false":
        return False
    return not (host.startswith("*") and se.resolution != "DYNAMIC_DNS")


class VipAllocator:
    """Host -> (IPv4, IPv6). ``allocate`` returns the new allocations so the
    caller can persist them."""

    def __init__(self, existing: Mapping[str, tuple[str, str]] | None = None) -> None:
        self._by_host: dict[str, tuple[str, str]] = dict(existing or {})
        used4 = [int(ipaddress.IPv4Address(v4)) for v4, _ in self._by_host.values()]
        used6 = [int(ipaddress.IPv6Address(v6)) for _, v6 in self._by_host.values()]
        self._next4 = max(used4, default=int(V4_PREFIX.network_address)) + 1
        self._next6 = max(used6, default=int(V6_PREFIX.network_address)) + 1

    def get(self, host: str) -> tuple[str, str] | None:
        return self._by_host.get(host)

    @property
    def allocations(self) -> Mapping[str, tuple[str, str]]:
        return self._by_host

    def allocate(self, hosts: Iterable[str]) -> dict[str, tuple[str, str]]:
        new: dict[str, tuple[str, str]] = {}
        # Sorted, so a first start allocates the same way whatever the file order.
        for host in sorted(set(hosts)):
            if host in self._by_host:
                continue
            if self._next4 >= int(V4_PREFIX.broadcast_address):
                raise ControlPlaneError(f"auto-allocated VIP range {V4_PREFIX} is exhausted (host {host})")
            pair = (str(ipaddress.IPv4Address(self._next4)), str(ipaddress.IPv6Address(self._next6)))
            self._next4 += 1
            self._next6 += 1
            self._by_host[host] = pair
            new[host] = pair
        return new
