#!/usr/bin/env python3
"""Outbound proxy benchmark: throughput, added latency and connections per
second through pymesh's outbound proxy, against a direct connection and
against haproxy in TCP mode (``option splice-auto``), on the same path, in
one run.

The path (two network namespaces linked by a veth pair, like the tests)::

    vm namespace: client ──▶ 10.96.0.10:5001 (a service VIP)
                    │ nftables REDIRECT (pymesh.capture) ──▶ pymesh proxy 127.0.0.1:15001
                    │ ──(cluster pick)──▶ server 10.77.0.1:5001 over the veth
                  client ──▶ 10.77.0.1:5002 (excluded port: not captured)     = direct
                  client ──▶ 127.0.0.1:6002 haproxy ──▶ 10.77.0.1:5002        = haproxy
    net namespace: sink and echo servers

The client and the proxy run in this process (the proxy's threads are
native and never take the GIL); the proxy marks its sockets and the rules
exclude the mark. haproxy runs in the vm namespace. Servers run in the net
namespace as a separate process.

Reported (medians of several trials): MB/s for one bulk stream, round-trip
time of a 64-byte ping-pong on an open connection (added latency = median
RTT minus the direct path's median RTT), connections per second
(connect, 1-byte request/response, close), and the proxy's own CPU time
per GB relayed (pymesh's threads in this process, or the haproxy process):
on a shared machine MB/s and RTT move with the neighbours' load, CPU per
GB much less. Ratios against direct and
haproxy are printed; the targets: >= 90% of direct throughput,
>= haproxy's, <= 50 µs added median latency. The script reports, it does
not assert: machine noise is not a test failure.

Usage (root: it creates network namespaces):
    python benchmarks/relay_bench.py               # full run, ~1 minute
    PYMESH_BENCH_SHORT=1 python benchmarks/relay_bench.py   # CI smoke run
    python benchmarks/relay_bench.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import NetLab, accept_each, arguments, enter_netns, haproxy_cfg, tool

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VM4, NET4 = "10.77.0.2", "10.77.0.1"
VIP = "10.96.0.10"
SINK, ECHO, CONN = 5001, 5011, 5021  # captured (through the proxy)
DIRECT = 1  # +1: the same servers on excluded ports
HAPROXY = 6000  # haproxy front ends: HAPROXY + SINK etc. on 127.0.0.1
MARK = 0x539


# --- servers (run in the net namespace: `relay_bench.py --serve`) ------------------


def _sink(c: socket.socket) -> None:
    buf = bytearray(1 << 20)
    n = 0
    with c:
        while k := c.recv_into(buf):
            n += k
        c.sendall(n.to_bytes(8, "big"))


def _echo(c: socket.socket) -> None:
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with c:
        while data := c.recv(65536):
            c.sendall(data)


def serve() -> None:
    handlers = {SINK: _sink, ECHO: _echo, CONN: _echo}
    for port, h in list(handlers.items()):
        for p in (port, port + DIRECT):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((NET4, p))
            s.listen(1024)
            accept_each(s, h)
    print("ready", flush=True)
    sys.stdin.read()


# --- setup ------------------------------------------------------------------------------


class Env(NetLab):
    def __init__(self) -> None:
        super().__init__("pb", "relay-bench-")
        self.vm, self.net = self.ns("vm"), self.ns("net")
        self.haproxy_pid: int | None = None

    def up(self) -> None:
        self.link("vm", VM4, "net", NET4)
        self.server(self.net, __file__, "--serve")
        # This thread (and every thread it starts: the proxy's) now lives in the vm namespace.
        enter_netns(self.vm)

    def haproxy(self) -> bool:
        exe = tool("haproxy")
        if exe is None:
            return False
        sections = []
        for port in (SINK, ECHO, CONN):
            sections += [
                f"listen p{port}",
                f"  bind 127.0.0.1:{HAPROXY + port}",
                f"  server s {NET4}:{port + DIRECT}",
            ]
        cfg = haproxy_cfg("tcp", sections, splice=True)
        # Started from this (vm-namespace) thread, so haproxy runs in the vm namespace.
        self.haproxy_pid = self.start_haproxy(exe, cfg, ("127.0.0.1", HAPROXY + ECHO)).pid
        return True


def start_proxy() -> Any:
    from pymesh.capture import Capture, CaptureConfig, redirect_table
    from pymesh.lbtable import LbTable
    from pymesh.relay import start_outbound_proxy

    cfg = CaptureConfig(
        proxy_uid=1337,
        mark=MARK,
        outbound_exclude_ports=(SINK + DIRECT, ECHO + DIRECT, CONN + DIRECT),
        ipv6=False,
        name="pmbench",
    )
    Capture(cfg, backend="nftables").install()
    services, clusters = [], []
    for port in (SINK, ECHO, CONN):
        name = f"outbound|{port}||bench.default.svc.cluster.local"
        services.append({"address": VIP, "port": port, "cluster": name})
        ep = {"endpoint": {"address": {"socket_address": {"address": NET4, "port_value": port}}}}
        clusters.append(
            {"name": name, "lb_policy": "ROUND_ROBIN", "load_assignment": {"endpoints": [{"lb_endpoints": [ep]}]}}
        )
    lb = LbTable(seed=1)
    lb.load(clusters)
    return start_outbound_proxy(lb, redirect_table(cfg, services), listen=["127.0.0.1:15001"], mark=MARK)


# --- measurements -------------------------------------------------------------------------


def _ticks(stat: str) -> int:
    # utime + stime (fields 14 and 15; the command name may hold spaces).
    f = stat.rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


def proxy_cpu_seconds(haproxy_pid: int | None) -> float:
    """CPU time of the proxy: pymesh's threads in this process (every thread
    but the main one, which is the client), or the haproxy process."""
    hz = os.sysconf("SC_CLK_TCK")
    if haproxy_pid is not None:
        return _ticks(Path(f"/proc/{haproxy_pid}/stat").read_text()) / hz
    total = 0
    for task in Path("/proc/self/task").iterdir():
        if int(task.name) == os.getpid():
            continue
        try:
            total += _ticks((task / "stat").read_text())
        except OSError:  # a thread that just exited
            pass
    return total / hz


def throughput(addr: tuple[str, int], seconds: float) -> float:
    """MB/s of one bulk stream, until the sink has counted every byte."""
    chunk = memoryview(os.urandom(1 << 20))
    with socket.create_connection(addr) as s:
        start = time.perf_counter()
        sent = 0
        while time.perf_counter() - start < seconds:
            s.sendall(chunk)
            sent += len(chunk)
        s.shutdown(socket.SHUT_WR)
        got = int.from_bytes(s.recv(8), "big")
        elapsed = time.perf_counter() - start
    assert got == sent, f"sink counted {got} of {sent} bytes"
    return sent / elapsed / 1e6


def latency(addr: tuple[str, int], rounds: int) -> float:
    """Median round-trip time (µs) of a 64-byte ping-pong on one connection."""
    msg = b"x" * 64
    rtts = []
    with socket.create_connection(addr) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(50):  # warm up
            s.sendall(msg)
            s.recv(64)
        for _ in range(rounds):
            t = time.perf_counter_ns()
            s.sendall(msg)
            n = 0
            while n < 64:
                n += len(s.recv(64 - n))
            rtts.append(time.perf_counter_ns() - t)
    return statistics.median(rtts) / 1000


def cps(addr: tuple[str, int], seconds: float) -> float:
    """Connections per second: connect, 1-byte request and reply, close."""
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        with socket.create_connection(addr) as s:
            s.sendall(b"x")
            s.recv(1)
        n += 1
    return n / (time.perf_counter() - start)


def main() -> int:
    ap = arguments(__doc__)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve()
        return 0
    if os.geteuid() != 0:
        print("relay_bench: needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    trials, secs, rounds = (3, 0.3, 2000) if args.short else (7, 1.0, 20000)
    env = Env()
    proxy = None
    try:
        env.up()
        proxy = start_proxy()
        paths: dict[str, tuple[str, int]] = {"direct": (NET4, 0), "pymesh": (VIP, 0)}
        if env.haproxy():
            paths["haproxy"] = ("127.0.0.1", HAPROXY)
        else:
            print("relay_bench: haproxy not installed; comparing with direct only", file=sys.stderr)

        def at(path: str, port: int) -> tuple[str, int]:
            host, base = paths[path]
            if path == "direct":
                return host, port + DIRECT
            return host, base + port

        results: dict[str, dict[str, float]] = {p: {} for p in paths}
        # Interleave the paths trial by trial, so drift hits them alike.
        tp: dict[str, list[float]] = {p: [] for p in paths}
        lat: dict[str, list[float]] = {p: [] for p in paths}
        cp: dict[str, list[float]] = {p: [] for p in paths}
        cpu: dict[str, float] = {p: 0.0 for p in paths}
        mbytes: dict[str, float] = {p: 0.0 for p in paths}
        for _ in range(trials):
            for p in paths:
                pid = env.haproxy_pid if p == "haproxy" else None
                c0 = proxy_cpu_seconds(pid) if p != "direct" else 0.0
                t0 = time.perf_counter()
                tp[p].append(throughput(at(p, SINK), secs))
                mbytes[p] += tp[p][-1] * (time.perf_counter() - t0)
                cpu[p] += (proxy_cpu_seconds(pid) - c0) if p != "direct" else 0.0
                lat[p].append(latency(at(p, ECHO), rounds // trials))
                cp[p].append(cps(at(p, CONN), secs))
        for p in paths:
            results[p] = {
                "throughput_MBps": statistics.median(tp[p]),
                "rtt_us": statistics.median(lat[p]),
                "cps": statistics.median(cp[p]),
                # The proxy's own CPU per GB relayed: unlike MB/s, little
                # affected by what else the machine runs.
                "proxy_cpu_ms_per_GB": 1e3 * cpu[p] / (mbytes[p] / 1e3) if mbytes[p] else 0.0,
            }
        stats = proxy.stats()
    finally:
        if proxy is not None:
            proxy.stop()
        env.down()
    d = results["direct"]
    print(f"relay benchmark ({'short' if args.short else 'full'}; medians of {trials} trials)")
    print(f"{'path':<9} {'MB/s':>9} {'vs direct':>9} {'RTT µs':>8} {'added µs':>9} {'conn/s':>8} {'CPU ms/GB':>10}")
    for p, r in results.items():
        print(
            f"{p:<9} {r['throughput_MBps']:>9.0f} {r['throughput_MBps'] / d['throughput_MBps']:>9.2f} "
            f"{r['rtt_us']:>8.1f} {r['rtt_us'] - d['rtt_us']:>9.1f} {r['cps']:>8.0f} "
            f"{r['proxy_cpu_ms_per_GB']:>10.0f}"
        )
    m = results["pymesh"]
    summary = {
        "throughput_vs_direct": m["throughput_MBps"] / d["throughput_MBps"],
        "added_latency_us": m["rtt_us"] - d["rtt_us"],
        "cps_vs_direct": m["cps"] / d["cps"],
    }
    if "haproxy" in results:
        h = results["haproxy"]
        summary["throughput_vs_haproxy"] = m["throughput_MBps"] / h["throughput_MBps"]
        summary["haproxy_added_latency_us"] = h["rtt_us"] - d["rtt_us"]
        summary["cps_vs_haproxy"] = m["cps"] / h["cps"]
        if m["proxy_cpu_ms_per_GB"]:
            summary["haproxy_cpu_vs_pymesh"] = h["proxy_cpu_ms_per_GB"] / m["proxy_cpu_ms_per_GB"]
    print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items()))
    print(f"proxy counters: cluster {stats['cluster']}, resets {stats['resets']}, failures {stats['connect_failures']}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "summary": summary, "proxy": stats}, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
