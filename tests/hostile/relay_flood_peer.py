"""A relay in its own process for the relay floods (tests/hostile/test_relay_floods.py),
run inside the test's network namespace: ``relay_flood_peer.py CONFIG.json``.

CONFIG: ``nofile`` (the soft and hard RLIMIT_NOFILE to run with: 1,024 is what a
systemd unit without LimitNOFILE gives, the setting the issue-17 floods broke),
``inbound`` (run the inbound passthrough instead of the outbound proxy), ``clusters`` and
``redirect`` (the outbound's tables, the dict forms), ``options`` (OutboundProxy keyword
arguments), ``identity`` ([chain, key, roots] file paths, or absent) and
``peer_authentication``.

Prints one JSON line when serving ({"addresses", "pid"}), then answers each stdin line:
``stats`` -> {"stats", "tls", "limits", "fds", "threads", "rss_kb"} (descriptors, threads and
resident memory of this process, from /proc), ``quit`` -> stops and exits."""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path
from typing import Any


def counts() -> dict[str, int]:
    rss = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return {"fds": len(os.listdir("/proc/self/fd")), "threads": len(os.listdir("/proc/self/task")), "rss_kb": rss}


def main(path: str) -> None:
    cfg: dict[str, Any] = json.loads(Path(path).read_text())
    nofile = int(cfg.get("nofile", 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    from pymesh.lbtable import LbTable, RedirectTable
    from pymesh.relay import OutboundProxy

    lb = LbTable(seed=1)
    lb.load(cfg.get("clusters", []))
    redirect = RedirectTable.from_dict(cfg.get("redirect", {}))
    options = dict(cfg.get("options", {}))
    if cfg.get("inbound"):
        options.update(inbound=True, connect_attempts=1)
    proxy = OutboundProxy(redirect, lb, **options)
    if cfg.get("peer_authentication"):
        proxy.set_peer_authentication(cfg["peer_authentication"])
    if cfg.get("identity"):
        chain, key, roots = (Path(p).read_text() for p in cfg["identity"])
        proxy.set_identity(chain, key, roots)
    addrs = proxy.start()
    print(json.dumps({"addresses": addrs, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "stats":
            out: dict[str, Any] = {"stats": proxy.stats(), "tls": proxy.tls_stats(), **counts()}
            if hasattr(proxy, "limits"):  # older relays had none
                out["limits"] = proxy.limits()
            print(json.dumps(out), flush=True)
        elif cmd == "quit":
            break
    proxy.stop()


if __name__ == "__main__":
    main(sys.argv[1])
