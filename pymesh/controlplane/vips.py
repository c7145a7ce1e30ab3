"""Auto-allocated VIPs for ServiceEntries without addresses.

Istio's current allocator (``pilot/pkg/controllers/ipallocate``, v2, default
since 1.25) hands out one IPv4 from 240.240.0.0/16 and one IPv6 from
2001:2::/48 per host, next-fit from the first address, and records them in
the ServiceEntry's status so they survive istiod restarts. We keep the same
ranges and order and persist the allocations in the store instead of a
status field, so a name keeps its address across restarts and edits (the v4
range holds 65,534). Not allocated: resolution NONE, spec.addresses set,
label ``networking.istio.io/enable-autoallocate-ip: "false"``, wildcard hosts
unless resolution is DYNAMIC_DNS.

Reclaiming (istiod never does: "TODO: we never actually remove IP right now,
likely this should be done a little more slowly anyway to prevent reuse if we
are too fast", ``IPAllocate.reconcile``): a host no configured object wants
any more is *released*, keeping its pair; it gets the same pair back if it
returns. A released pair is given to another host only once the never-used
part of the range is exhausted, oldest release first, and only after a
quarantine (default one hour: nscd's default positive TTL for hosts, longer
than every DNS answer the mesh serves), so a client that still caches the old
name's address does not reach a new service through it.

When nothing is free the *object* asking is refused (the control plane names
its file, object and host) and everything else keeps being served; nothing
here raises into a push.

Several replicas on one etcd (``claim``, :meth:`pymesh.controlplane.etcdstore.EtcdStore.claim_vip`):
no leader allocates. Every address a replica gives a host is first claimed in the store with a
create-if-absent txn on two keys, the host's record and an index key per IPv4 address, so two
replicas never give one address to two hosts. A replica that finds the host already holds an
address (another replica allocated it) takes that one; one that finds the address taken tries
the next. Reclaiming a released pair is conditional on the index key still naming the released
host. The store is read at start only, so the pairs are as stable across restarts as in one
process. Releases assume the replicas serve one configuration (the applied one, or the same
directory): a replica that does not serve a host marks it released, and once the never-used
range is exhausted and the quarantine is over, its pair may be reclaimed.
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from pymesh.controlplane.resources import ServiceEntry

log = logging.getLogger("pymesh.controlplane")

V4_PREFIX = ipaddress.IPv4Network("240.240.0.0/16")
V6_PREFIX = ipaddress.IPv6Network("2001:2::/48")
DISABLE_LABEL = "networking.istio.io/enable-autoallocate-ip"
DEFAULT_QUARANTINE = 3600.0
# Offsets 1 .. 65534 of the v4 range (not the network or the broadcast address); the v6
# address of a pair has the same offset.
FIRST, END = 1, V4_PREFIX.num_addresses - 1

Record = tuple[str, str, float | None]  # v4, v6, released at (None: in use)
# (host, candidate pair, the released host it is reclaimed from or None) -> the pair the host
# holds in the shared store (the candidate, or one given to it before), or None: taken.
Claim = Callable[[str, tuple[str, str], str | None], tuple[str, str] | None]


def wants_vip(se: ServiceEntry, host: str) -> bool:
    if se.resolution == "NONE" or se.addresses:
        return False
    if se.meta.labels.get(DISABLE_LABEL) == "false":
        return False
    return not (host.startswith("*") and se.resolution != "DYNAMIC_DNS")


def _pair(offset: int) -> tuple[str, str]:
    # Formatted directly (ipaddress's arithmetic and str() cost ~15 us a pair, 1 s at 65k hosts):
    # 240.240.0.0/16 + offset, and 2001:2::/48 + offset, whose canonical form has the offset
    # (< 2^16) as its last group. test_controlplane_vips checks both against ipaddress.
    return (f"240.240.{offset >> 8}.{offset & 0xFF}", f"2001:2::{offset:x}")


class VipError(Exception):
    """No address is free for ``host``."""

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        super().__init__(message)


class VipAllocator:
    """Host -> (IPv4, IPv6), with releases and quarantine. Changes since the last
    :meth:`take_changes` are what the caller persists."""

    def __init__(
        self,
        existing: Mapping[str, tuple[str, str] | Record] | None = None,
        *,
        quarantine: float = DEFAULT_QUARANTINE,
        clock: Callable[[], float] = time.time,
        capacity: int = END - FIRST,
        claim: Claim | None = None,
    ) -> None:
        self.quarantine = quarantine
        self._claim = claim
        # Pairs the range holds (a smaller number lets a test exhaust it quickly).
        self.capacity = min(capacity, END - FIRST)
        self._end = FIRST + self.capacity
        self._clock = clock
        self._by_host: dict[str, tuple[str, str]] = {}
        self._released: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []  # (released at, host); stale items skipped
        used = [0]
        for host, rec in (existing or {}).items():
            self._by_host[host] = (rec[0], rec[1])
            used.append(int(ipaddress.IPv4Address(rec[0])) - int(V4_PREFIX.network_address))
            released = rec[2] if len(rec) > 2 else None
            if released is not None:
                self._released[host] = float(released)
                heapq.heappush(self._heap, (float(released), host))
        self._next = max(used) + 1
        self._changed: set[str] = set()
        self._deleted: set[str] = set()

    def get(self, host: str) -> tuple[str, str] | None:
        return self._by_host.get(host)

    def holds(self, host: str) -> bool:
        return host in self._by_host

    @property
    def allocations(self) -> Mapping[str, tuple[str, str]]:
        return self._by_host

    def released(self) -> Mapping[str, float]:
        return self._released

    def _take_free(self, new_host: str, protected: Callable[[str], bool], now: float) -> tuple[str, str] | None:
        while self._next < self._end:
            pair = _pair(self._next)
            self._next += 1
            if self._claim is None:
                return pair
            got = self._claim(new_host, pair, None)
            if got is None:
                continue  # another replica gave this address to another host
            if got != pair:
                self._next -= 1  # the host holds one already (another replica's): the candidate stays free
            return got
        skipped: list[tuple[float, str]] = []
        found: tuple[str, str] | None = None
        while self._heap:
            at, host = self._heap[0]
            if self._released.get(host) != at:
                heapq.heappop(self._heap)  # un-released or reclaimed since: stale
                continue
            if at + self.quarantine > now:
                break  # the oldest release is still in quarantine, so every other one is
            heapq.heappop(self._heap)
            if protected(host):
                skipped.append((at, host))
                continue
            if self._claim is not None:
                got = self._claim(new_host, self._by_host[host], host)
                if got is None:  # another replica reclaimed it first: not ours to give any more
                    del self._by_host[host]
                    del self._released[host]
                    continue
                if got != self._by_host[host]:  # the host holds one already (another replica's)
                    skipped.append((at, host))
                    found = got
                    break
            found = self._by_host.pop(host)
            del self._released[host]
            self._deleted.add(host)
            self._changed.discard(host)
            log.info("VIP %s/%s of %s (released %.0fs ago) reclaimed", *found, host, now - at)
            break
        for item in skipped:
            heapq.heappush(self._heap, item)
        return found

    def _free_message(self, now: float) -> str:
        waiting = [at for at in self._released.values() if at + self.quarantine > now]
        msg = f"no auto-allocated VIP is free ({V4_PREFIX} holds {self.capacity} addresses"
        if waiting:
            first = min(waiting) + self.quarantine - now
            msg += f"; {len(waiting)} released ones are free after their quarantine, the first in {first:.0f}s"
        return msg + ")"

    def _available(self, protected: Callable[[str], bool], now: float, need: int) -> int:
        free = max(0, self._end - self._next)
        if free >= need:
            return free
        return free + sum(1 for h, at in self._released.items() if at + self.quarantine <= now and not protected(h))

    def reserve(self, hosts: Iterable[str], *, protected: Callable[[str], bool] = lambda h: False) -> None:
        """Gives every host an address (its own if it holds one, released or not),
        all or none; VipError naming the first host that cannot get one.
        ``protected`` hosts' released addresses are never reclaimed (another
        object wants them)."""
        now = self._clock()
        hosts = list(dict.fromkeys(hosts))
        new = [h for h in hosts if h not in self._by_host]
        available = self._available(protected, now, len(new))
        if len(new) > available:
            raise VipError(new[available], self._free_message(now))
        for host in hosts:
            if host in self._by_host:
                if self._released.pop(host, None) is not None:
                    self._changed.add(host)
                continue
            pair = self._take_free(host, protected, now)
            if pair is None:  # counted above, but other replicas took addresses since
                raise VipError(host, self._free_message(now))
            self._by_host[host] = pair
            self._changed.add(host)
            self._deleted.discard(host)

    def release_unused(self, wanted: set[str]) -> list[str]:
        """Releases every held host not in ``wanted``; returns them."""
        now = self._clock()
        out = []
        for host in self._by_host:
            if host not in wanted and host not in self._released:
                self._released[host] = now
                heapq.heappush(self._heap, (now, host))
                self._changed.add(host)
                out.append(host)
        return out

    def allocate(self, hosts: Iterable[str]) -> dict[str, tuple[str, str]]:
        """Addresses for the hosts that hold none yet, in sorted order (so a first
        start allocates the same way whatever the file order); a host that gets
        none is skipped and logged, never raised (the control plane refuses the
        object before it gets here: :meth:`reserve`)."""
        new: dict[str, tuple[str, str]] = {}
        for host in sorted(set(hosts)):
            if host in self._by_host:
                continue
            try:
                self.reserve([host])
            except VipError as e:
                log.error("ServiceEntry host %s: %s", host, e)
                continue
            new[host] = self._by_host[host]
        return new

    def requeue(self, changed: Mapping[str, Record], deleted: set[str]) -> None:
        """Changes taken but not persisted: taken again by the next :meth:`take_changes`."""
        self._changed.update(h for h in changed if h in self._by_host)
        self._deleted.update(h for h in deleted if h not in self._by_host)

    def take_changes(self) -> tuple[dict[str, Record], set[str]]:
        """(host -> record to write, hosts to delete) since the last call."""
        changed = {h: (*self._by_host[h], self._released.get(h)) for h in self._changed if h in self._by_host}
        deleted = set(self._deleted)
        self._changed.clear()
        self._deleted.clear()
        return changed, deleted
