#!/usr/bin/env python3
"""mTLS in the native relay against plaintext on the same path, in one run.

The path (one private network namespace, loopback, real capture rules)::

    client ──▶ VIP 127.1.0.x:80 ── nftables REDIRECT ──▶ native outbound 127.0.0.1:15001
           ──(cluster pick)──▶ 127.0.0.3:5001 ── REDIRECT ──▶ native inbound 127.0.0.1:15006
           ──(from 127.0.0.6)──▶ server 0.0.0.0:5001

- ``native plaintext``: the endpoint has no ``tlsMode``: splice on both
  hops (the inbound, PERMISSIVE with an identity set, peeks the first bytes
  and passes plaintext on);
- ``native mTLS``: the same endpoint with ``tlsMode: istio``: the outbound
  originates Istio mTLS (rustls, AES-128-GCM), the inbound terminates it;
  sessions resume after the first connection (as Envoy's do);
- ``native mTLS full``: the same with session resumption off: every
  connection pays two full handshakes (ECDHE + certificate signatures and
  chain checks on both sides);
- ``python mTLS`` (named baseline, pymesh.relay.pytls, OpenSSL):
  client → MtlsOriginator → mTLS → InboundMtls (STRICT) → the same server;
- ``direct``: client → server, no relay (context only).

The servers run in a separate process (no GIL shared with the client); the
relays' threads are native. Reported, medians of several runs: MB/s of one
bulk stream (8-byte length header, then the bytes; the server answers one
byte when all arrived), connections per second (sequential: connect, 1-byte
request, 1-byte answer, close), and the ratios mTLS / plaintext (the
target: throughput >= 0.80). Nothing is asserted: 2 shared cores are noisy.

Usage (root: it creates a network namespace):
    .venv/bin/python benchmarks/relay_mtls_bench.py            # 256 MiB x 5, 300 connections x 5
    .venv/bin/python benchmarks/relay_mtls_bench.py --short    # CI smoke run
    .venv/bin/python benchmarks/relay_mtls_bench.py --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import NetLab, accept_each, enter_netns, send_sized, sh, sink_sized

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the tests' `support` package
APP, PORT = "127.0.0.3", 5001
VIP_PLAIN, VIP_MTLS = "127.1.0.1", "127.1.0.2"
PY_INBOUND = ("127.0.0.4", 9443)
RULES = f"""
table ip pmbench {{
  chain output {{
    type nat hook output priority -100; policy accept;
    ip daddr 127.1.0.0/16 tcp dport 80 redirect to :15001
    ip saddr 127.0.0.6 return
    ip daddr {APP} tcp dport {PORT} redirect to :15006
  }}
}}
"""


def serve() -> None:
    """The server (run in the namespace as its own process): length-prefixed sink."""
    srv = socket.create_server(("0.0.0.0", PORT), backlog=1024)

    def one(c: socket.socket) -> None:
        with c, contextlib.suppress(OSError):
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sink_sized(c)

    accept_each(srv, one)
    print("ready", flush=True)
    sys.stdin.read()


def bulk(host: str, port: int, size: int) -> float:
    with socket.create_connection((host, port)) as s:
        return send_sized(s, size)


def conns(host: str, port: int, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        with socket.create_connection((host, port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall((1).to_bytes(8, "big") + b"x")
            assert s.recv(1) == b"k"
    return n / (time.perf_counter() - started)


def cluster(name: str, meta: dict[str, Any] | None) -> dict[str, Any]:
    ep: dict[str, Any] = {"endpoint": {"address": {"socket_address": {"address": APP, "port_value": PORT}}}}
    if meta:
        ep["metadata"] = {"filter_metadata": meta}
    return {"name": name, "load_assignment": {"endpoints": [{"lb_endpoints": [ep]}]}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--short", action="store_true")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--runs", type=int, help="runs per path (default 5, short 3)")
    ap.add_argument("--size-mib", type=int, help="bulk stream size (default 256, short 32)")
    args = ap.parse_args()
    if args.serve:
        serve()
        return 0
    # The Python baseline's stop() cancels its tasks; asyncio would log each.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    if os.geteuid() != 0:
        print("relay_mtls_bench: needs root (network namespace)", file=sys.stderr)
        return 1
    size = (args.size_mib or (32 if args.short else 256)) << 20
    runs = args.runs or (3 if args.short else 5)
    n_conn = 40 if args.short else 300

    from pymesh.controlplane.ca.ca import CertificateAuthority
    from pymesh.lbtable import LbTable, RedirectTable
    from pymesh.relay import OutboundProxy, start_inbound_passthrough
    from pymesh.relay.pytls import InboundMtls, MtlsOriginator
    from support.sec import issue

    lab = NetLab("pmtb", "relay-mtls-bench-")
    tmp = lab.tmp
    try:
        ns = lab.add_netns("")
        sh("ip", "netns", "exec", ns, "nft", "-f", "-", input=RULES)
        lab.server(ns, __file__, "--serve")
        # This thread, and every thread it starts (the relays'), joins the namespace.
        enter_netns(ns)

        ca = CertificateAuthority(tmp / "ca")

        client, server = issue(ca, tmp / "client", "client"), issue(ca, tmp / "server", "server")
        server_uri = "spiffe://cluster.local/ns/default/sa/server"
        lb = LbTable(seed=1)
        tls_meta = {"envoy.transport_socket_match": {"tlsMode": "istio"}, "istio": {"service_account": server_uri}}
        lb.load([cluster("outbound|80||plain.bench", None), cluster("outbound|80||mtls.bench", tls_meta)])
        redirect = RedirectTable.from_dict(
            {
                "services": [
                    {"address": VIP_PLAIN, "port": 80, "cluster": "outbound|80||plain.bench"},
                    {"address": VIP_MTLS, "port": 80, "cluster": "outbound|80||mtls.bench"},
                ],
                "include_ip_ranges": ["*"],
            }
        )
        outbound = OutboundProxy(redirect, lb, listen=["127.0.0.1:15001"])
        outbound.start()
        inbound = start_inbound_passthrough(listen=["127.0.0.1:15006"])
        outbound.set_identity(*client.args())
        inbound.set_identity(*server.args())
        # The Python baseline's inbound goes straight to the server's port on
        # another address of lo (not captured).
        py_in = InboundMtls(server.dir, ("127.0.0.9", PORT), listen=PY_INBOUND).start()
        py_out = MtlsOriginator(client.dir, PY_INBOUND, [server_uri]).start()
        paths: dict[str, tuple[str, int]] = {
            "direct": ("127.0.0.9", PORT),
            "native plaintext": (VIP_PLAIN, 80),
            "native mTLS": (VIP_MTLS, 80),
            "native mTLS full": (VIP_MTLS, 80),  # session resumption off: a full handshake per connection
            "python mTLS": ("127.0.0.1", py_out.port),
        }
        results: dict[str, dict[str, float]] = {}
        for host, port in paths.values():
            bulk(host, port, 1 << 20)  # warm up (threads, session caches)
            conns(host, port, 5)
        # Interleaved rounds, so a noisy neighbour hits every path alike.
        samples: dict[str, dict[str, list[float]]] = {n: {"mbps": [], "cps": []} for n in paths}
        for _ in range(runs):
            for name, (host, port) in paths.items():
                outbound.set_session_resumption(name != "native mTLS full")
                samples[name]["mbps"].append(bulk(host, port, size))
                samples[name]["cps"].append(conns(host, port, n_conn))
            outbound.set_session_resumption(True)
        for name in paths:
            results[name] = {k: statistics.median(v) for k, v in samples[name].items()}
        tls_out, tls_in = outbound.tls_stats(), inbound.tls_stats()
        py_in.stop()
        py_out.stop()
        outbound.stop()
        inbound.stop()
    finally:
        lab.down()

    print(f"client -> outbound -> inbound -> server; one bulk stream of {size >> 20} MiB and")
    print(f"{n_conn} sequential connections per run, medians of {runs} interleaved runs")
    print(f"{'path':<20}{'MB/s':>10}{'conn/s':>10}")
    for name, r in results.items():
        print(f"{name:<20}{r['mbps']:>10.0f}{r['cps']:>10.0f}")
    plain, mtls, py = results["native plaintext"], results["native mTLS"], results["python mTLS"]
    full = results["native mTLS full"]
    ratios = {
        "mtls_over_plaintext_throughput": mtls["mbps"] / plain["mbps"],
        "mtls_over_plaintext_conn_rate": mtls["cps"] / plain["cps"],
        "mtls_full_handshake_over_plaintext_conn_rate": full["cps"] / plain["cps"],
        "native_over_python_mtls_throughput": mtls["mbps"] / py["mbps"],
        "native_over_python_mtls_conn_rate": mtls["cps"] / py["cps"],
    }
    print(f"native mTLS / native plaintext throughput: {ratios['mtls_over_plaintext_throughput']:.2f} (target >= 0.80)")
    print(
        f"native mTLS / native plaintext conn/s:     {ratios['mtls_over_plaintext_conn_rate']:.2f} (resumed sessions)"
    )
    print(f"  the same, full handshakes:               {ratios['mtls_full_handshake_over_plaintext_conn_rate']:.2f}")
    print(f"native mTLS / python mTLS throughput:      {ratios['native_over_python_mtls_throughput']:.2f}")
    print(f"native mTLS / python mTLS conn/s:          {ratios['native_over_python_mtls_conn_rate']:.2f}")
    print(f"handshakes: outbound {tls_out['handshakes']} (resumed {tls_out['resumed']}, failed "
          f"{tls_out['handshake_failures']}), inbound {tls_in['handshakes']} (resumed {tls_in['resumed']}, "
          f"failed {tls_in['handshake_failures']})")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
