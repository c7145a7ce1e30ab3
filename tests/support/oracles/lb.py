"""Small, obviously-correct Python models of the lbtable's math, used as
oracles by the tests and as the same-process baselines of the benchmarks.

- ``priority_load``: Envoy's integer priority-load and panic arithmetic,
  transcribed from ``load_balancer_impl.cc`` (recalculatePerPriorityState,
  distributeLoad, recalculatePerPriorityPanic, recalculateLoadInTotalPanic).
- ``xxh64``: xxHash64 (the hash Envoy's ring hash and Maglev use).
- ``maglev_counts``: Envoy's weighted Maglev fill, slot by slot.
- ``RingHash``: Envoy's ketama ring with ``bisect`` lookups.
- ``EdfScheduler``: Envoy's EDF weighted round robin (a heap).
- ``classify``: istio-iptables capture rules with ``ipaddress``, a linear scan.
"""

from __future__ import annotations

import bisect
import heapq
import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

# ---------------------------------------------------------------- priorities


def priority_load(
    counts: Sequence[tuple[int, int, int]], opf: int = 140, panic_threshold: int = 50
) -> dict[str, list[int] | list[bool]]:
    """counts: (total, healthy, degraded) per priority."""
    n = max(len(counts), 1)
    health = [0] * n
    degraded_av = [0] * n
    for i, (total, healthy, degraded) in enumerate(counts):
        if total > 0:
            health[i] = min(100, opf * healthy // total)
            degraded_av[i] = min(100, opf * degraded // total)
    nta = min(100, sum(health) + sum(degraded_av))
    hl = [0] * n
    dl = [0] * n

    def distribute(load: list[int], avail: list[int], total: int) -> tuple[int, int]:
        first = -1
        for i, a in enumerate(avail):
            if first < 0 and a > 0:
                first = i
            load[i] = min(total, a * 100 // nta)
            total -= load[i]
        return first, total

    if nta > 0:
        fh, left = distribute(hl, health, 100)
        fd, left = distribute(dl, degraded_av, left)
        if left:
            if fh >= 0:
                hl[fh] += left
            else:
                dl[fd] += left
    panic = [False] * n
    threshold = min(100, panic_threshold)
    if threshold == 0 and nta == 0:
        hl = [0] * n
        dl = [0] * n
        hl[0] = 100
        return {"healthy": hl, "degraded": dl, "panic": panic, "health": health, "degraded_availability": degraded_av}
    for i, (total, healthy, degraded) in enumerate(counts):
        pct = 0.0 if total == 0 else 100.0 * (healthy + degraded) / total
        panic[i] = nta != 100 and pct < threshold
    if not counts:
        panic[0] = nta != 100 and threshold > 0
    if all(panic):
        all_hosts = sum(c[0] for c in counts)
        hl = [0] * n
        dl = [0] * n
        if all_hosts == 0:
            hl[0] = 100
        else:
            left = 100
            first = -1
            for i, c in enumerate(counts):
                if first < 0 and c[0] != 0:
                    first = i
                hl[i] = 100 * c[0] // all_hosts
                left -= hl[i]
            hl[first] += left
    return {"healthy": hl, "degraded": dl, "panic": panic, "health": health, "degraded_availability": degraded_av}


# ---------------------------------------------------------------- xxHash64

_P1 = 0x9E3779B185EBCA87
_P2 = 0xC2B2AE3D27D4EB4F
_P3 = 0x165667B19E3779F9
_P4 = 0x85EBCA77C2B2AE63
_P5 = 0x27D4EB2F165667C5
_M = (1 << 64) - 1


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * _P2) & _M, 31) * _P1) & _M


def _merge(acc: int, val: int) -> int:
    return ((acc ^ _round(0, val)) * _P1 + _P4) & _M


def xxh64(data: bytes, seed: int = 0) -> int:
    n = len(data)
    i = 0
    if n >= 32:
        v = [(seed + _P1 + _P2) & _M, (seed + _P2) & _M, seed & _M, (seed - _P1) & _M]
        while i + 32 <= n:
            for j in range(4):
                v[j] = _round(v[j], int.from_bytes(data[i + 8 * j : i + 8 * j + 8], "little"))
            i += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M
        for x in v:
            h = _merge(h, x)
    else:
        h = (seed + _P5) & _M
    h = (h + n) & _M
    while i + 8 <= n:
        h ^= _round(0, int.from_bytes(data[i : i + 8], "little"))
        h = (_rotl(h, 27) * _P1 + _P4) & _M
        i += 8
    if i + 4 <= n:
        h ^= (int.from_bytes(data[i : i + 4], "little") * _P1) & _M
        h = (_rotl(h, 23) * _P2 + _P3) & _M
        i += 4
    while i < n:
        h ^= (data[i] * _P5) & _M
        h = (_rotl(h, 11) * _P1) & _M
        i += 1
    h ^= h >> 33
    h = (h * _P2) & _M
    h ^= h >> 29
    h = (h * _P3) & _M
    h ^= h >> 32
    return h


# ---------------------------------------------------------------- Maglev


def maglev_table(keys: Sequence[str], weights: Sequence[float], m: int = 65537) -> list[int]:
    """Envoy's weighted Maglev fill; returns the host index of each slot."""
    total = sum(weights)
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    entries = [
        [i, xxh64(keys[i].encode()) % m, xxh64(keys[i].encode(), 1) % (m - 1) + 1, weights[i] / total, 0.0, 0]
        for i in order
    ]
    max_w = max(e[3] for e in entries)
    table = [-1] * m
    filled = 0
    iteration = 1
    while filled < m:
        for e in entries:
            if filled >= m:
                break
            if iteration * e[3] < e[4]:
                continue
            e[4] += max_w
            c = (e[1] + e[2] * e[5]) % m
            while table[c] >= 0:
                e[5] += 1
                c = (e[1] + e[2] * e[5]) % m
            table[c] = e[0]
            e[5] += 1
            filled += 1
        iteration += 1
    return table


def maglev_counts(keys: Sequence[str], weights: Sequence[float], m: int = 65537) -> list[int]:
    out = [0] * len(keys)
    for h in maglev_table(keys, weights, m):
        out[h] += 1
    return out


# ---------------------------------------------------------------- ring hash


class RingHash:
    """Envoy's ketama ring; ``pick`` is a bisect on the sorted hashes."""

    def __init__(self, keys: Sequence[str], weights: Sequence[float], min_size: int = 1024, max_size: int = 8 << 20):
        total = sum(weights)
        norm = [w / total for w in weights]
        min_w = min(norm)
        scale = min(math.ceil(min_w * min_size) / min_w, float(max_size))
        entries: list[tuple[int, int]] = []
        current = target = 0.0
        for i in sorted(range(len(keys)), key=lambda i: keys[i]):
            target += scale * norm[i]
            k = 0
            while current < target:
                entries.append((xxh64(f"{keys[i]}_{k}".encode()), i))
                k += 1
                current += 1
        entries.sort()
        self.hashes = [h for h, _ in entries]
        self.hosts = [i for _, i in entries]

    def pick(self, h: int) -> int:
        p = bisect.bisect_left(self.hashes, h)
        return self.hosts[0 if p == len(self.hashes) else p]


# ---------------------------------------------------------------- EDF


@dataclass
class EdfScheduler:
    """Envoy's EDF scheduler: a heap of (deadline, order, host)."""

    weights: Sequence[float]
    heap: list[tuple[float, int, int]] = field(default_factory=list)
    now: float = 0.0
    order: int = 0

    def __post_init__(self) -> None:
        for i, w in enumerate(self.weights):
            self.heap.append((1.0 / w, i, i))
        self.order = len(self.weights)
        heapq.heapify(self.heap)

    def pick(self) -> int:
        deadline, _, host = heapq.heappop(self.heap)
        self.now = deadline
        heapq.heappush(self.heap, (self.now + 1.0 / self.weights[host], self.order, host))
        self.order += 1
        return host


# ---------------------------------------------------------------- redirection


def classify(
    services: Sequence[tuple[str, int, str]],
    include: Sequence[str],
    exclude: Sequence[str],
    exclude_ports: Sequence[int],
    ip: str,
    port: int,
) -> tuple[str, str | None]:
    """istio-iptables' ISTIO_OUTPUT rules in order, then the sidecar's VIP listeners."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if port in exclude_ports:
        return ("bypass", None)

    def nets(cidrs: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for c in cidrs:
            if c == "*":
                out += [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
            else:
                out.append(ipaddress.ip_network(c))
        return out

    loopback = ["127.0.0.1/32", "::1/128"]
    if any(addr in n for n in nets([*exclude, *loopback]) if n.version == addr.version):
        return ("bypass", None)
    if not any(addr in n for n in nets(include) if n.version == addr.version):
        return ("bypass", None)
    for vip, p, cluster in services:
        v = ipaddress.ip_address(vip)
        if isinstance(v, ipaddress.IPv6Address) and v.ipv4_mapped is not None:
            v = v.ipv4_mapped
        if v == addr and p == port:
            return ("cluster", cluster)
    return ("passthrough", None)
