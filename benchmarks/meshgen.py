"""Synthetic name tables shaped like a real mesh (the same generator as
native/benches/names.rs and the DNS benchmark): N Kubernetes services over
100 namespaces, one IPv4 each, every 5th also an IPv6."""

from __future__ import annotations

import random
from typing import Any

NAMESPACE = "ns-0"
SEARCH = ("ns-0.svc.cluster.local", "svc.cluster.local", "cluster.local")


def entries(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        ns = f"ns-{i % 100}"
        ips = [f"10.{96 + (i >> 16) % 16}.{(i >> 8) & 255}.{i & 255}"]
        if i % 5 == 0:
            ips.append(f"fd00:10:96::{i >> 16:x}:{i & 0xFFFF:x}")
        out.append(
            {
                "hostname": f"svc-{i}.{ns}.svc.cluster.local",
                "ips": ips,
                "registry": "Kubernetes",
                "shortname": f"svc-{i}",
                "namespace": ns,
            }
        )
    return out


def queries(n: int, count: int, seed: int = 42) -> dict[str, list[str]]:
    """Query mixes over a table of n names: FQDN hits, short forms,
    search-expanded forms, and misses."""
    rng = random.Random(seed)
    picks = [rng.randrange(n) for _ in range(count)]
    return {
        "fqdn": [f"svc-{i}.ns-{i % 100}.svc.cluster.local" for i in picks],
        "short": [f"svc-{i}.ns-{i % 100}" for i in picks],
        "search": [f"svc-{i}.ns-{i % 100}.ns-0.svc.cluster.local" for i in picks],
        "miss": [f"svc-{i + n}.ns-{i % 100}.svc.cluster.local" for i in picks],
    }
