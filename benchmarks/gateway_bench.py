#!/usr/bin/env python3
"""East-west gateway benchmark: pymesh's SNI passthrough gateway against
haproxy routing on ``req.ssl_sni`` to the same TLS backend, and the plain
splice path (one forward address, no ClientHello read) of both as the
second reference, in one run.

Istio's ``AUTO_PASSTHROUGH`` (the ``Gateway`` resource's ``tls.mode``,
https://istio.io/latest/docs/reference/config/networking/gateway/): the
gateway reads the client's ClientHello without answering it, maps its
server name ``outbound_.5001_._.svc.ns.svc.cluster.local`` to the cluster
``outbound|5001||svc.ns.svc.cluster.local``, picks an endpoint and splices
the still-encrypted bytes. haproxy does the same with ``tcp-request
inspect-delay`` and ``req.ssl_sni`` in ``mode tcp``
(https://docs.haproxy.org/2.6/configuration.html#7.3.5-req.ssl_sni).

The path (two network namespaces linked by a veth pair, as in
relay_bench.py)::

    gw namespace:  client ──▶ 10.77.0.1:5001                           = direct
                   client ──▶ 127.0.0.1:15443 pymesh gateway (sni)  ─┐
                   client ──▶ 127.0.0.1:6443  haproxy (req.ssl_sni)  ─┤
                   client ──▶ 127.0.0.1:15444 pymesh forward         ─┼──▶ 10.77.0.1:5001
                   client ──▶ 127.0.0.1:6444  haproxy (plain backend)─┘     over the veth
    net namespace: the TLS backend (its own process)

Every path crosses the veth once and, but for ``direct``, loopback once;
every path's client speaks the same TLS to the same backend with the same
server name. The backend terminates TLS 1.3 with a self-signed ECDSA
P-256 certificate (made here with ``cryptography``) and sends no session
tickets, and the client never offers a session: every connection is a full
handshake on every path. The client (one Python thread, one reused
SSLContext) and the pymesh proxies run in this process (the proxies'
threads are native and never take the GIL); haproxy runs in the gw
namespace; the backend is a threaded Python server in the net namespace.
Both proxies get 2 worker threads (``workers=2``, ``nbthread 2``), both
splice (``option splice-auto``).

Reported, as the median and [min-max] of several interleaved trials:
MB/s of one bulk TLS stream (8-byte length, then the bytes; the backend
answers one byte when all arrived), connections per second (TLS handshake,
a 64-byte request, a 1-byte answer, close; sequential), and each proxy's
own CPU time per MB relayed and per connection: pymesh's threads (the
``pymesh-gateway`` runtime threads each proxy started, from
/proc/self/task/<tid>/schedstat) or every thread of the haproxy process.
Then the ratios pymesh gateway / haproxy SNI and pymesh gateway / pymesh
forward. The client, the backend and both proxies share the machine's
cores (2 in CI): TLS in the Python client and backend dominates, so MB/s
and conn/s say how much a proxy slows what runs beside it, and CPU per MB
and per connection, which move much less with the neighbours' load, say
what the proxy itself costs. A proxy's CPU includes the kernel's work in
its system calls, which on loopback and veth includes much of the
receiving side's TCP processing: alike for both proxies. The script
reports, it does not assert.

Usage (root: it creates network namespaces):
    python benchmarks/gateway_bench.py               # full run, ~70 s
    python benchmarks/gateway_bench.py --short       # CI smoke run (or PYMESH_BENCH_SHORT=1)
    python benchmarks/gateway_bench.py --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import (
    NetLab,
    accept_each,
    arguments,
    cpu_ns,
    enter_netns,
    haproxy_cfg,
    send_sized,
    sh,
    sink_sized,
    spread,
    thread_ids,
    tool,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GW4, NET4 = "10.77.0.2", "10.77.0.1"
PORT = 5001
HOST = "svc.ns.svc.cluster.local"
SNI = f"outbound_.{PORT}_._.{HOST}"  # istio BuildDNSSrvSubsetKey, empty subset
CLUSTER = f"outbound|{PORT}||{HOST}"  # istio BuildSubsetKey
PYMESH_SNI, PYMESH_FWD = 15443, 15444
HAPROXY_SNI, HAPROXY_FWD = 6443, 6444
WORKERS = 2
REQUEST = (64).to_bytes(8, "big") + b"x" * 64


# --- the TLS backend (runs in the net namespace: `gateway_bench.py --serve DIR`) ------------


def serve(certs: Path) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs / "cert.pem", certs / "key.pem")
    # No session tickets: the clients never resume, and tickets would cost
    # the backend work no path needs.
    ctx.num_tickets = 0
    ctx.options |= ssl.OP_NO_TICKET
    srv = socket.create_server((NET4, PORT), backlog=1024)

    def one(c: socket.socket) -> None:
        # Readiness probes and refused handshakes end here quietly.
        with c, contextlib.suppress(OSError):
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with ctx.wrap_socket(c, server_side=True) as t:
                sink_sized(t)

    accept_each(srv, one)
    print("ready", flush=True)
    sys.stdin.read()  # until the parent exits


# --- setup ----------------------------------------------------------------------------------


def make_cert(d: Path) -> bytes:
    """A self-signed ECDSA P-256 certificate for the server name; its PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SNI), x509.DNSName(HOST)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (d / "cert.pem").write_bytes(pem)
    (d / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return pem


class Env(NetLab):
    def __init__(self) -> None:
        super().__init__("pg", "gateway-bench-")
        self.gw, self.net = self.ns("gw"), self.ns("net")
        self.haproxy_pid: int | None = None

    def up(self) -> bytes:
        gw, net = self.gw, self.net
        self.link("gw", GW4, "net", NET4, route=False)
        # Tens of thousands of short connections from one address to one
        # backend within a minute: a wide port range, and TIME_WAIT ports
        # reused (both per namespace; ip-sysctl.rst in the kernel docs).
        sh("ip", "netns", "exec", gw, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000")
        sh("ip", "netns", "exec", gw, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
        pem = make_cert(self.tmp)
        self.server(net, __file__, "--serve", str(self.tmp))
        # This thread (and every thread it starts: the proxies', haproxy) now
        # lives in the gw namespace.
        enter_netns(gw)
        return pem

    def haproxy(self) -> bool:
        exe = tool("haproxy")
        if exe is None:
            return False
        sections = [
            # SNI routing as haproxy documents it for TLS passthrough
            # (configuration.html, req.ssl_hello_type and req.ssl_sni).
            "frontend sni",
            f"  bind 127.0.0.1:{HAPROXY_SNI}",
            "  tcp-request inspect-delay 5s",
            "  tcp-request content accept if { req_ssl_hello_type 1 }",
            f"  use_backend b if {{ req.ssl_sni -m str {SNI} }}",
            "frontend fwd",
            f"  bind 127.0.0.1:{HAPROXY_FWD}",
            "  default_backend b",
            "backend b",
            f"  server s {NET4}:{PORT}",
        ]
        cfg = haproxy_cfg("tcp", sections, threads=WORKERS, splice=True)
        # Started from this (gw-namespace) thread, so haproxy runs in the gw namespace.
        self.haproxy_pid = self.start_haproxy(exe, cfg, ("127.0.0.1", HAPROXY_SNI)).pid
        return True


def _comm(tid: int) -> str:
    try:
        return Path(f"/proc/self/task/{tid}/comm").read_text().strip()
    except OSError:
        return ""


def start_proxy(mode: str, port: int) -> tuple[Any, set[int]]:
    """A native gateway listener and the threads it started (its tokio
    runtime's workers, all spawned by start())."""
    from pymesh._native import LbTable, OutboundProxy, RedirectTable

    lb = LbTable(seed=1)
    ep = {"endpoint": {"address": {"socket_address": {"address": NET4, "port_value": PORT}}}}
    lb.load([{"name": CLUSTER, "lb_policy": "ROUND_ROBIN", "load_assignment": {"endpoints": [{"lb_endpoints": [ep]}]}}])
    kw: dict[str, Any] = {"mode": mode}
    if mode == "forward":
        kw["forward_to"] = f"{NET4}:{PORT}"
    before = thread_ids()
    proxy = OutboundProxy(
        RedirectTable.from_dict({}), lb, listen=[f"127.0.0.1:{port}"], auto_mtls=False, workers=WORKERS, **kw
    )
    proxy.start()
    return proxy, thread_ids() - before


# --- measurements ---------------------------------------------------------------------------


def client_context(pem: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=pem.decode())
    return ctx


def bulk(ctx: ssl.SSLContext, addr: tuple[str, int], size: int) -> float:
    """MB/s of one TLS stream of `size` bytes, until the backend has them all."""
    with socket.create_connection(addr) as raw, ctx.wrap_socket(raw, server_hostname=SNI) as s:
        return send_sized(s, size)


def conns(ctx: ssl.SSLContext, addr: tuple[str, int], seconds: float) -> int:
    """Sequential connections for `seconds`: full TLS handshake, a 64-byte
    request, a 1-byte answer, close; how many."""
    n = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        with socket.create_connection(addr) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with ctx.wrap_socket(raw, server_hostname=SNI) as s:
                s.sendall(REQUEST)
                if s.recv(1) != b"k":
                    raise RuntimeError(f"{addr}: no answer")
        n += 1
    return n


def main() -> int:
    ap = arguments(__doc__)
    ap.add_argument("--trials", type=int, help="interleaved trials (default 7, short 3)")
    ap.add_argument("--size-mib", type=int, help="bulk stream per trial (default 256, short 32)")
    ap.add_argument("--conn-seconds", type=float, help="connection loop per trial (default 1.5, short 0.4)")
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    if os.geteuid() != 0:
        print("gateway_bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    trials = args.trials or (3 if args.short else 7)
    size = (args.size_mib or (32 if args.short else 256)) << 20
    secs = args.conn_seconds or (0.4 if args.short else 1.5)

    # SIGTERM/SIGHUP unwind through the finally below (namespaces, children).
    def _exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGHUP, _exit)

    env = Env()
    proxies: dict[str, tuple[Any, set[int]]] = {}
    pid = os.getpid()
    try:
        pem = env.up()
        # haproxy first: no native threads yet when it forks.
        have_haproxy = env.haproxy()
        proxies["pymesh sni"] = start_proxy("sni", PYMESH_SNI)
        proxies["pymesh forward"] = start_proxy("forward", PYMESH_FWD)
        paths: dict[str, tuple[str, int]] = {
            "direct": (NET4, PORT),
            "pymesh sni": ("127.0.0.1", PYMESH_SNI),
            "pymesh forward": ("127.0.0.1", PYMESH_FWD),
        }
        if have_haproxy:
            paths["haproxy sni"] = ("127.0.0.1", HAPROXY_SNI)
            paths["haproxy forward"] = ("127.0.0.1", HAPROXY_FWD)
        else:
            print("gateway_bench: haproxy not installed; comparing with pymesh forward only", file=sys.stderr)

        meters: dict[str, Callable[[], int] | None] = {"direct": None}
        for name, (_, tids) in proxies.items():
            meters[name] = lambda tids=tids: cpu_ns(pid, tids)
        if env.haproxy_pid is not None:
            hp = env.haproxy_pid
            meters["haproxy sni"] = meters["haproxy forward"] = lambda: cpu_ns(hp)

        ctx = client_context(pem)
        sent_sni = 0
        for name, addr in paths.items():  # warm up: threads, pipes, caches
            bulk(ctx, addr, 1 << 20)
            k = conns(ctx, addr, 0.05)
            sent_sni += (1 + k) if name == "pymesh sni" else 0

        samples: dict[str, dict[str, list[float]]] = {
            p: {"MBps": [], "cps": [], "cpu_us_per_MB": [], "cpu_us_per_conn": []} for p in paths
        }
        # Interleave the paths trial by trial, so drift hits them alike.
        for _ in range(trials):
            for name, addr in paths.items():
                meter, s = meters[name], samples[name]
                c0 = meter() if meter else 0
                s["MBps"].append(bulk(ctx, addr, size))
                c1 = meter() if meter else 0
                t0 = time.perf_counter()
                n = conns(ctx, addr, secs)
                s["cps"].append(n / (time.perf_counter() - t0))
                c2 = meter() if meter else 0
                if meter:
                    s["cpu_us_per_MB"].append((c1 - c0) / 1e3 / (size / 1e6))
                    s["cpu_us_per_conn"].append((c2 - c1) / 1e3 / n)
                sent_sni += (1 + n) if name == "pymesh sni" else 0
        # Threads of the gateway runtimes started after start() returned
        # would escape the CPU figures; count them.
        known = set().union(*(t for _, t in proxies.values()))
        late = [t for t in thread_ids() - known if _comm(t) == "pymesh-gateway"]
        gw_stats = proxies["pymesh sni"][0].stats()
        fwd_stats = proxies["pymesh forward"][0].stats()
    finally:
        for proxy, _ in proxies.values():
            with contextlib.suppress(Exception):
                proxy.stop()
        env.down()

    results = {p: {k: spread(v) for k, v in m.items() if v} for p, m in samples.items()}

    def med(p: str, k: str) -> float:
        return results[p][k]["median"]

    def cell(p: str, k: str, fmt: str) -> str:
        if k not in results[p]:
            return "-"
        r = results[p][k]
        return f"{r['median']:{fmt}} [{r['min']:{fmt}}-{r['max']:{fmt}}]"

    print(
        f"gateway benchmark ({'short' if args.short else 'full'}): TLS 1.3 through each path; "
        f"median [min-max] of {trials} interleaved trials"
    )
    print(f"bulk: one {size >> 20} MiB stream per trial; conn/s: {secs:g} s of sequential full handshakes per trial")
    print("proxy CPU: pymesh's runtime threads or the haproxy process (client and backend share the same cores)")
    cols = (("MBps", "MB/s", ".0f"), ("cps", "conn/s", ".0f"), ("cpu_us_per_MB", "CPU µs/MB", ".0f"))
    cols += (("cpu_us_per_conn", "CPU µs/conn", ".1f"),)
    print(f"{'path':<16}" + "".join(f"{h:>22}" for _, h, _ in cols))
    for p in results:
        print(f"{p:<16}" + "".join(f"{cell(p, k, f):>22}" for k, _, f in cols))

    summary: dict[str, float] = {}

    def ratios(label: str, a: str, b: str) -> None:
        for k, short in (("MBps", "MBps"), ("cps", "cps"), ("cpu_us_per_MB", "cpu_per_MB")):
            if med(b, k):
                summary[f"{label}_{short}"] = med(a, k) / med(b, k)
        if med(b, "cpu_us_per_conn"):
            summary[f"{label}_cpu_per_conn"] = med(a, "cpu_us_per_conn") / med(b, "cpu_us_per_conn")

    if "haproxy sni" in results:
        ratios("gateway_vs_haproxy_sni", "pymesh sni", "haproxy sni")
    ratios("gateway_vs_forward", "pymesh sni", "pymesh forward")
    if "haproxy sni" in results:
        ratios("haproxy_sni_vs_haproxy_forward", "haproxy sni", "haproxy forward")
    summary["gateway_MBps_vs_direct"] = med("pymesh sni", "MBps") / med("direct", "MBps")
    summary["gateway_cps_vs_direct"] = med("pymesh sni", "cps") / med("direct", "cps")
    print("ratios of medians (MB/s, conn/s: higher is better; CPU: lower is better):")
    for label in ("gateway_vs_haproxy_sni", "gateway_vs_forward", "haproxy_sni_vs_haproxy_forward"):
        parts = [f"{k.removeprefix(label + '_')} {v:.2f}" for k, v in summary.items() if k.startswith(label + "_")]
        if parts:
            print(f"  {label.replace('_', ' ')}: " + ", ".join(parts))
    print(
        f"  gateway vs direct: MB/s {summary['gateway_MBps_vs_direct']:.2f}, "
        f"conn/s {summary['gateway_cps_vs_direct']:.2f}"
    )
    print(
        f"gateway counters: cluster {gw_stats['cluster']} (client opened {sent_sni}), "
        f"not_tls {gw_stats['not_tls']}, sni_refused {gw_stats['sni_refused']}, "
        f"unknown_cluster {gw_stats['unknown_cluster']}, hello_timeouts {gw_stats['hello_timeouts']}, "
        f"resets {gw_stats['resets']}, connect_failures {gw_stats['connect_failures']}; "
        f"forward: passthrough {fwd_stats['passthrough']}, connect_failures {fwd_stats['connect_failures']}"
    )
    threads = {name: len(t) for name, (_, t) in proxies.items()}
    print(
        "threads measured: "
        + ", ".join(f"{name} {n}" for name, n in threads.items())
        + (f"; {len(late)} pymesh-gateway threads started later, not measured" if late else "")
    )
    if args.json:
        doc = {
            "config": {"trials": trials, "bulk_bytes": size, "conn_seconds": secs, "workers": WORKERS, "sni": SNI},
            "results": results,
            "samples": samples,
            "summary": summary,
            "gateway_stats": gw_stats,
            "forward_stats": fwd_stats,
            "gateway_connections_opened": sent_sni,
            "threads_measured": threads,
            "threads_unmeasured": len(late),
        }
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
