#!/usr/bin/env python3
"""HTTP/1.1 and HTTP/2 through pymesh's outbound proxy (its HTTP-aware path,
``OutboundProxy.set_http_routes``) against a direct connection, haproxy in
``mode http`` and nginx as a reverse proxy, on the same path, in one run.

The path (two network namespaces linked by a veth pair, as in
relay_bench.py)::

    vm namespace:  client ──▶ 10.77.0.1:8080 / :8081 (excluded ports)          = direct
                   client ──▶ 127.0.0.1:6080 / :6081 haproxy (mode http)    ─┐
                   client ──▶ 127.0.0.1:7080 / :7081 nginx (proxy_pass)     ─┼──▶ 10.77.0.1:8080 / :8081
                   client ──▶ 10.96.0.10:80 / :81 (a service VIP)           ─┘     over the veth
                     │ nftables REDIRECT (pymesh.capture) ──▶ pymesh 127.0.0.1:15001
                     │ (route: virtual host "*", prefix "/" ──▶ outbound|80||bench.default.svc.cluster.local)
    net namespace: nginx serving HTTP/1.1 on :8080 and h2c (prior knowledge) on :8081

Each workload is one protocol and one response: HTTP/1.1 (``wrk``, keep-alive
connections) or HTTP/2 cleartext with prior knowledge (``h2load``, streams
multiplexed on a few connections), and ``/ok`` (nginx ``return 200 "ok\\n"``)
or ``/1k`` (a 1 KiB static file). How each proxy talks to the backend:

- haproxy 2.x: HTTP/1.1 keep-alive to :8080, and h2 to :8081 for HTTP/2
  clients (``bind ... proto h2`` and ``server ... proto h2``; haproxy
  configuration.html, 5.1 "proto" and 5.2 "proto");
- nginx: HTTP/1.1 keep-alive (``upstream { keepalive }``, ``proxy_http_version
  1.1``) to :8080 for both, because nginx's proxy module speaks only HTTP/1.x
  to upstreams (nginx.org/en/docs/http/ngx_http_proxy_module.html#proxy_http_version);
- pymesh: pooled HTTP/1.1 keep-alive to :8080, h2 multiplexed to :8081 when the
  client spoke h2 (the route's cluster per service port);
- pm-off: the same pymesh proxy with Istio's metrics off during its trials
  (``set_tcp_metrics_enabled(False)``), so what the telemetry costs per request
  (the target: at most 5% above off) is measured in the same run.

Every proxy gets one worker (``workers=1``, ``nbthread 1``,
``worker_processes 1``) pinned to the same core (the last this process may
use); the load generator, the backend and this script stay on the others.
With 2 cores the proxy owns one, and the client and the backend share the
other: requests/s then says how much a proxy slows a client that is already
busy, and the proxy's CPU per request (which moves much less with what runs
beside it) what the proxy itself costs.

Reported per workload and path, as median [min-max] of interleaved trials:
requests/s under load (``wrk -t1 -c16``; ``h2load -t1 -c4 -m16``) and its
ratio to direct; the connections the backend accepted per 1000 requests
(``conn/1k``, from the backend namespace's Tcp PassiveOpens: a working
keep-alive pool shows ~0, a proxy that dials per request 1000); the
proxy's CPU time per request under that load (pymesh's
native threads in this process, from /proc/self/task/<tid>/schedstat, or
every thread of the haproxy process, or the nginx master and its workers;
system time included: on loopback and veth that holds much of the receiving
side's TCP work, alike for every proxy); and p50/p99 latency of a low-load
probe (``h2load -c1 -m1``, ``--h1`` for HTTP/1.1: one request at a time on
one keep-alive connection; per-request times from ``--log-file``) with the
added p50/p99 over direct. For the probe the proxy is moved onto the client's
and the backend's core: split over two cores each request would pay four
cross-core wake-ups (tens of µs each in a VM whose idle core halts), alike
for every proxy, hiding what the proxy itself adds; ``--probe-split`` keeps
the load's layout. Then the ratios: pymesh CPU per request against
haproxy's, nginx's and Envoy's published Istio figure (0.35 vCPU per 1000
requests per second, i.e. 350 µs per request:
https://istio.io/latest/docs/ops/deployment/performance-and-scalability/),
pymesh requests/s against direct. The script reports, it does not assert:
machine noise is not a test failure. A missing tool (or a pymesh without
``set_http_routes``) skips just its rows, saying so.

Usage (root: it creates network namespaces and nftables rules):
    python benchmarks/l7_bench.py               # full run, ~4 minutes
    python benchmarks/l7_bench.py --short       # CI smoke run, < 40 s (or PYMESH_BENCH_SHORT=1)
    python benchmarks/l7_bench.py --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import NetLab, arguments, cpu_ns, enter_netns, haproxy_cfg, spread, thread_ids, tool

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VM4, NET4 = "10.77.0.2", "10.77.0.1"
VIP = "10.96.0.10"
HOST = "bench.default.svc.cluster.local"
PROTOS = ("h1", "h2")
METRICS_OFF = "pm-off"  # the pymesh path again, Istio's metrics off during its trials
SVC = {"h1": 80, "h2": 81}  # service ports on the VIP (captured)
BACKEND = {"h1": 8080, "h2": 8081}  # nginx in the net namespace; excluded from capture
HAPROXY = {"h1": 6080, "h2": 6081}
NGINX = {"h1": 7080, "h2": 7081}
BODIES = {"ok": "/ok", "1k": "/1k"}
PYMESH_PORT = 15001
MARK = 0x539
WORKERS = 1
ENVOY_US_PER_REQ = 350.0  # Istio's figure: 0.35 vCPU per 1000 rps through the sidecar
WRK_CONNS = 16
H2_CONNS, H2_STREAMS = 4, 16

# wrk's own summary as one line: requests, µs elapsed, its error counters
# (``status`` counts responses that are not 2xx/3xx).
WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("L7BENCH %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def version(cmd: list[str]) -> str:
    """A tool's first line of version output (wrk -v exits 1)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    return "?"


# --- setup -------------------------------------------------------------------------------------


def cpu_sets() -> tuple[set[int], set[int]]:
    """(the client's cores, the proxy's core): the proxy gets the last core
    this process may use, everything else the rest; one core: shared."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    return set(cpus[:-1]), {cpus[-1]}


def nginx_conf(tmp: Path, name: str, http: list[str], workers: int = 1, master: bool = True) -> Path:
    """An nginx configuration whose every path is under `tmp` (the Debian
    build's temp paths under /var/lib/nginx may not exist)."""
    d = tmp / name
    d.mkdir()
    lines = [
        f"worker_processes {workers};",
        f"pid {d}/nginx.pid;",
        f"error_log {d}/error.log warn;",
        "daemon off;",
        *([] if master else ["master_process off;"]),
        "events { worker_connections 4096; }",
        "http {",
        "  access_log off;",
        "  default_type text/plain;",
        # The default (1000) would reconnect every 1000 requests on each path.
        "  keepalive_requests 1000000;",
        *(f"  {k}_temp_path {d}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
        *("  " + x for x in http),
        "}",
    ]
    (d / "nginx.conf").write_text("\n".join(lines) + "\n")
    return d


class Env(NetLab):
    def __init__(self) -> None:
        super().__init__("pl", "l7-bench-")
        self.vm, self.net = self.ns("vm"), self.ns("net")
        self.client_cpus, self.proxy_cpus = cpu_sets()
        self.nginx_pid: int | None = None
        self.haproxy_pid: int | None = None
        self.backend_pid = 0

    def up(self) -> None:
        self.link("vm", VM4, "net", NET4)
        # This thread and what it starts from now on (the backend, the load
        # generators; the proxies are pinned on their own) stays off the proxy's core.
        os.sched_setaffinity(0, self.client_cpus)
        # This thread (and every thread and process it starts: the proxies,
        # the load generators) now lives in the vm namespace.
        enter_netns(self.vm)
        self.backend()

    def backend(self) -> None:
        """nginx in the net namespace: HTTP/1.1 on :8080, h2c on :8081 (nginx
        1.22's ``listen ... http2`` without ssl is prior-knowledge h2 only)."""
        exe = tool("nginx")
        if exe is None:
            raise RuntimeError("nginx is not installed: it is the backend of every path")
        www = self.tmp / "www"
        www.mkdir()
        (www / "1k").write_bytes(b"x" * 1023 + b"\n")
        loc = f'location = /ok {{ return 200 "ok\\n"; }} location / {{ root {www}; }}'
        d = nginx_conf(
            self.tmp,
            "backend",
            [
                "http2_max_concurrent_streams 256;",
                f"server {{ listen {NET4}:{BACKEND['h1']}; {loc} }}",
                f"server {{ listen {NET4}:{BACKEND['h2']} http2; {loc} }}",
            ],
            master=False,
        )
        cmd = ["ip", "netns", "exec", self.net, exe, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "err")]
        # `ip netns exec` execs nginx: the same pid, in the net namespace.
        self.backend_pid = self.start(cmd, (NET4, BACKEND["h2"]), "the backend (nginx)", self.client_cpus).pid

    def haproxy(self) -> bool:
        exe = tool("haproxy")
        if exe is None:
            print("l7_bench: haproxy not installed; skipping its rows", file=sys.stderr)
            return False
        sections = []
        for proto in PROTOS:
            h2 = " proto h2" if proto == "h2" else ""
            sections += [
                f"frontend f{proto}",
                f"  bind 127.0.0.1:{HAPROXY[proto]}{h2}",
                f"  default_backend b{proto}",
                f"backend b{proto}",
                f"  server s {NET4}:{BACKEND[proto]}{h2}",
            ]
        cfg = haproxy_cfg("http", sections, threads=WORKERS)
        try:
            p = self.start_haproxy(exe, cfg, ("127.0.0.1", HAPROXY["h2"]), self.proxy_cpus)
        except RuntimeError as e:
            print(f"l7_bench: {e}; skipping haproxy's rows", file=sys.stderr)
            return False
        self.haproxy_pid = p.pid
        return True

    def nginx(self) -> bool:
        exe = tool("nginx")
        if exe is None:
            print("l7_bench: nginx not installed; skipping its rows", file=sys.stderr)
            return False
        proxy = 'location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }'
        d = nginx_conf(
            self.tmp,
            "proxy",
            [
                f"upstream b {{ server {NET4}:{BACKEND['h1']}; keepalive 64; keepalive_requests 1000000; }}",
                f"server {{ listen 127.0.0.1:{NGINX['h1']}; {proxy} }}",
                f"server {{ listen 127.0.0.1:{NGINX['h2']} http2; {proxy} }}",
            ],
            workers=WORKERS,
        )
        cmd = [exe, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "err")]
        try:
            p = self.start(cmd, ("127.0.0.1", NGINX["h2"]), "nginx (reverse proxy)", self.proxy_cpus)
        except RuntimeError as e:
            print(f"l7_bench: {e}; skipping nginx's rows", file=sys.stderr)
            return False
        self.nginx_pid = p.pid
        return True


def route_json(port: int, cluster: str) -> str:
    """The RDS RouteConfiguration istiod would push for service port `port`
    (one virtual host for every name, prefix "/" to the port's cluster), as
    proto3 JSON, the form ``set_http_routes`` takes."""
    from envoy.config.route.v3 import route_components_pb2 as rc
    from envoy.config.route.v3 import route_pb2
    from google.protobuf import json_format

    vhost = rc.VirtualHost(
        name=f"{HOST}:{port}",
        domains=["*"],
        routes=[rc.Route(match=rc.RouteMatch(prefix="/"), route=rc.RouteAction(cluster=cluster))],
    )
    return str(json_format.MessageToJson(route_pb2.RouteConfiguration(name=str(port), virtual_hosts=[vhost])))


@dataclass
class Pymesh:
    proxy: Any
    capture: Any
    threads_before: set[int]

    def threads(self) -> set[int]:
        """The proxy's threads: every thread start() or the proxy itself added
        since (the script starts none of its own)."""
        return thread_ids() - self.threads_before


def start_pymesh() -> Pymesh | str:
    """The capture rules and the native outbound proxy with the HTTP routes;
    or why it cannot run."""
    try:
        from pymesh._native import OutboundProxy
        from pymesh.capture import Capture, CaptureConfig, redirect_table
        from pymesh.lbtable import LbTable
    except ImportError as e:
        return f"pymesh is not built ({e})"
    if not hasattr(OutboundProxy, "set_http_routes"):
        return "this pymesh build has no OutboundProxy.set_http_routes (the HTTP path)"
    try:
        import envoy.config.route.v3.route_pb2  # noqa: F401
    except ImportError as e:
        return f"xds-protos is not installed ({e})"
    cfg = CaptureConfig(
        proxy_uid=1337,
        mark=MARK,
        outbound_exclude_ports=tuple(BACKEND.values()),
        ipv6=False,
        name="pml7bench",
    )
    services, clusters, routes = [], [], []
    for proto in PROTOS:
        port = SVC[proto]
        name = f"outbound|{port}||{HOST}"  # istio BuildSubsetKey
        services.append({"address": VIP, "port": port, "cluster": name})
        ep = {"endpoint": {"address": {"socket_address": {"address": NET4, "port_value": BACKEND[proto]}}}}
        cluster = {"name": name, "lb_policy": "ROUND_ROBIN", "load_assignment": {"endpoints": [{"lb_endpoints": [ep]}]}}
        if proto == "h2":
            # istiod's CDS for an http2 port (setH2Options): HTTP/2 to the h2c backend.
            t = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
            opts = {"@type": f"type.googleapis.com/{t}", "explicitHttpConfig": {"http2ProtocolOptions": {}}}
            cluster["typedExtensionProtocolOptions"] = {t: opts}
        clusters.append(cluster)
        routes.append((port, route_json(port, name)))
    lb = LbTable(seed=1)
    lb.load(clusters)
    capture = Capture(cfg, backend="nftables")
    capture.install()
    before = thread_ids()
    proxy = None
    try:
        proxy = OutboundProxy(
            redirect_table(cfg, services),
            lb,
            listen=[f"127.0.0.1:{PYMESH_PORT}"],
            mark=MARK,
            workers=WORKERS,
            auto_mtls=False,
        )
        proxy.start()
        proxy.set_http_routes(routes)
    except Exception:
        if proxy is not None:
            with contextlib.suppress(Exception):
                proxy.stop()
        capture.remove()
        raise
    return Pymesh(proxy, capture, before)


def tids_of(pid: int) -> list[int]:
    """The threads of process `pid`."""
    with contextlib.suppress(OSError):
        return [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    return []


def accepts(pid: int) -> int:
    """TCP connections accepted in the network namespace of `pid` (the
    backend's: its only server), Tcp PassiveOpens of /proc/<pid>/net/snmp."""
    names, values = [
        line.split() for line in Path(f"/proc/{pid}/net/snmp").read_text().splitlines() if line.startswith("Tcp:")
    ]
    return int(values[names.index("PassiveOpens")])


def children(pid: int) -> list[int]:
    """The child processes of `pid` (nginx's workers)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


# --- load and latency ------------------------------------------------------------------------


class ToolError(RuntimeError):
    pass


@dataclass
class Load:
    ok: int  # 2xx responses
    seconds: float
    errors: int  # everything else: other statuses, connect/read/write errors, resets, timeouts

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def _run(cmd: list[str], timeout: float) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise ToolError(f"{Path(cmd[0]).name} did not finish within {timeout:.0f} s") from e
    if r.returncode != 0:
        raise ToolError(f"{Path(cmd[0]).name} exited {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}")
    return r.stdout


def wrk(exe: str, lua: Path, url: str, secs: int) -> Load:
    """HTTP/1.1 keep-alive load: one wrk thread, WRK_CONNS connections."""
    out = _run([exe, "-t1", f"-c{WRK_CONNS}", f"-d{secs}s", "--timeout", "5s", "-s", str(lua), url], secs + 30)
    m = re.search(r"^L7BENCH (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$", out, re.M)
    if m is None:
        raise ToolError(f"wrk: no summary in {out.strip()[-300:]!r}")
    n, us, connect, read, write, status, timeout = map(int, m.groups())
    return Load(ok=n - status, seconds=us / 1e6, errors=connect + read + write + status + timeout)


def h2load(exe: str, url: str, secs: int) -> Load:
    """HTTP/2 load: one h2load thread, H2_CONNS connections of H2_STREAMS
    concurrent streams each (h2c with prior knowledge for http:// URIs)."""
    out = _run([exe, "-t1", f"-c{H2_CONNS}", f"-m{H2_STREAMS}", "-D", str(secs), url], secs + 30)
    fin = re.search(r"finished in ([\d.]+)(us|ms|s),", out)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    if fin is None or req is None or codes is None:
        raise ToolError(f"h2load: no summary in {out.strip()[-300:]!r}")
    secs_f = float(fin.group(1)) / {"us": 1e6, "ms": 1e3, "s": 1.0}[fin.group(2)]
    done, failed, ok = int(req.group(3)), int(req.group(5)), int(codes.group(1))
    return Load(ok=ok, seconds=secs_f, errors=max(done - ok, failed))


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted `xs`."""
    return xs[max(0, min(len(xs) - 1, int(q * len(xs) + 0.5) - 1))]


def probe(exe: str, proto: str, url: str, n: int, log: Path) -> tuple[float, float, int]:
    """p50 and p99 (µs) of `n` requests sent one at a time on one connection
    (``h2load -c1 -m1``, ``--h1`` for HTTP/1.1), the first ones (connection
    setup, cold pools) left out; and how many were not 200."""
    h1 = ["--h1"] if proto == "h1" else []
    log.unlink(missing_ok=True)  # h2load appends to it
    _run([exe, *h1, "-t1", "-c1", "-m1", "-n", str(n), "--log-file", str(log), url], 60)
    rows = sorted(tuple(map(int, line.split("\t")[:3])) for line in log.read_text().splitlines() if line)
    warm = min(50, n // 10)
    lat = sorted(float(d) for _, status, d in rows[warm:] if status == 200)
    bad = n - warm - len(lat)
    if not lat:
        raise ToolError(f"h2load: no 200 among {len(rows)} requests")
    return percentile(lat, 0.50), percentile(lat, 0.99), bad


# --- the run ---------------------------------------------------------------------------------


def main() -> int:
    ap = arguments(__doc__)
    ap.add_argument("--trials", type=int, help="interleaved trials (default 5, short 2)")
    ap.add_argument("--seconds", type=int, help="load per path and trial, whole seconds (default 2, short 1)")
    ap.add_argument("--probe", type=int, help="latency-probe requests per path and trial (default 5000, short 1000)")
    ap.add_argument(
        "--probe-split", action="store_true", help="latency probe with the proxy on its own core (as under load)"
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("l7_bench: needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    trials = args.trials or (2 if args.short else 5)
    secs = args.seconds or (1 if args.short else 2)
    probe_n = args.probe or (1000 if args.short else 5000)
    bodies = ["ok"] if args.short else list(BODIES)
    wrk_exe, h2load_exe = tool("wrk"), tool("h2load")
    if wrk_exe is None:
        print("l7_bench: wrk not installed; skipping the HTTP/1.1 load", file=sys.stderr)
    if h2load_exe is None:
        print("l7_bench: h2load not installed; skipping the HTTP/2 load and every latency probe", file=sys.stderr)

    # SIGTERM/SIGHUP unwind through the finally below (namespaces, children, rules).
    def _exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGHUP, _exit)

    env = Env()
    lua = env.tmp / "report.lua"
    lua.write_text(WRK_LUA)
    loaders: dict[str, Callable[[str], Load] | None] = {"h1": None, "h2": None}
    if wrk_exe is not None:
        w_exe = wrk_exe
        loaders["h1"] = lambda url: wrk(w_exe, lua, url, secs)
    if h2load_exe is not None:
        h_exe = h2load_exe
        loaders["h2"] = lambda url: h2load(h_exe, url, secs)
    pm: Pymesh | None = None
    skipped: dict[str, str] = {}
    failures: dict[str, list[str]] = {}
    pid = os.getpid()
    try:
        env.up()
        # The baselines first: no native threads yet when they fork.
        paths: dict[str, dict[str, str]] = {"direct": {p: f"http://{NET4}:{BACKEND[p]}" for p in PROTOS}}
        meters: dict[str, Callable[[], int] | None] = {"direct": None}
        tasks: dict[str, Callable[[], list[int]]] = {}
        toggles: dict[str, Callable[[bool], None]] = {}  # a path's setting, on for its trials only
        if env.haproxy():
            paths["haproxy"] = {p: f"http://127.0.0.1:{HAPROXY[p]}" for p in PROTOS}
            hp = env.haproxy_pid
            assert hp is not None
            meters["haproxy"] = lambda: cpu_ns(hp)
            tasks["haproxy"] = lambda: tids_of(hp)
        else:
            skipped["haproxy"] = "not installed or did not start"
        if env.nginx():
            paths["nginx"] = {p: f"http://127.0.0.1:{NGINX[p]}" for p in PROTOS}
            ng = env.nginx_pid
            assert ng is not None
            meters["nginx"] = lambda: cpu_ns(ng) + sum(cpu_ns(c) for c in children(ng))
            tasks["nginx"] = lambda: [t for q in (ng, *children(ng)) for t in tids_of(q)]
        else:
            skipped["nginx"] = "not installed or did not start"
        try:
            got = start_pymesh()
        except Exception as e:  # the HTTP path refused its configuration: a failure, not a skip
            failures["pymesh start"] = [f"{type(e).__name__}: {e}"]
            got = f"did not start ({type(e).__name__}: {e})"
        if isinstance(got, str):
            print(f"l7_bench: {got}; skipping pymesh's rows", file=sys.stderr)
            skipped["pymesh"] = got
        else:
            pm = got
            paths["pymesh"] = {p: f"http://{VIP}:{SVC[p]}" for p in PROTOS}
            meters["pymesh"] = lambda: cpu_ns(pid, pm.threads()) if pm else 0
            tasks["pymesh"] = lambda: sorted(pm.threads()) if pm else []
            # The same proxy with Istio's metrics off: what the telemetry costs per request.
            paths[METRICS_OFF] = paths["pymesh"]
            meters[METRICS_OFF], tasks[METRICS_OFF] = meters["pymesh"], tasks["pymesh"]
            toggles[METRICS_OFF] = lambda off: pm.proxy.set_tcp_metrics_enabled(not off) if pm else None

        def place(name: str, cpus: set[int]) -> None:
            # Every thread of the proxy, including any it started lazily.
            for t in tasks[name]() if name in tasks else ():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(t, cpus)

        # The latency probe's layout: by default the proxy joins the client
        # and the backend on their core, so the probe measures the proxy's
        # own work per request, not 4 cross-core wake-ups (each tens of µs
        # in a VM whose idle core halts); --probe-split keeps the load layout.
        probe_cpus = env.proxy_cpus if args.probe_split else env.client_cpus

        workloads = [(p, b) for p in PROTOS for b in bodies if loaders[p] is not None]
        log = env.tmp / "probe.log"
        sent = dict.fromkeys(paths, 0)  # requests answered 2xx, per path
        for name, urls in paths.items():  # warm up: connections, pools, caches
            place(name, env.proxy_cpus)
            for proto in PROTOS:
                if h2load_exe is None:
                    break
                try:
                    probe(h2load_exe, proto, urls[proto] + BODIES["ok"], 300, log)
                    sent[name] += 300
                except ToolError as e:
                    failures.setdefault(f"{proto} warm-up {name}", []).append(str(e))

        samples: dict[str, dict[str, dict[str, list[float]]]] = {
            f"{p} {b}": {
                n: {"rps": [], "cpu_us_per_req": [], "conns_per_1k": [], "p50_us": [], "p99_us": []} for n in paths
            }
            for p, b in workloads
        }
        errors: dict[str, dict[str, int]] = {w: dict.fromkeys(paths, 0) for w in samples}
        # Interleave the paths trial by trial, so drift hits them alike.
        for _ in range(trials):
            for proto, body in workloads:
                wl = f"{proto} {body}"
                load = loaders[proto]
                assert load is not None
                for name, urls in paths.items():
                    s, meter, url = samples[wl][name], meters[name], urls[proto] + BODIES[body]
                    place(name, env.proxy_cpus)
                    if name in toggles:
                        toggles[name](True)
                    try:
                        a0, c0 = accepts(env.backend_pid), meter() if meter else 0
                        r = load(url)
                        c1, a1 = meter() if meter else 0, accepts(env.backend_pid)
                        s["rps"].append(r.rps)
                        sent[name] += r.ok
                        # Upstream connections opened per 1000 requests: a
                        # pool that keeps its connections opens a handful.
                        s["conns_per_1k"].append(1e3 * (a1 - a0) / max(r.ok, 1))
                        errors[wl][name] += r.errors
                        if meter and r.ok:
                            s["cpu_us_per_req"].append((c1 - c0) / 1e3 / r.ok)
                        if h2load_exe is not None:
                            place(name, probe_cpus)
                            p50, p99, bad = probe(h2load_exe, proto, url, probe_n, log)
                            sent[name] += probe_n - bad
                            s["p50_us"].append(p50)
                            s["p99_us"].append(p99)
                            errors[wl][name] += bad
                    except ToolError as e:
                        failures.setdefault(f"{wl} {name}", []).append(str(e))
                    finally:
                        if name in toggles:
                            toggles[name](False)
        stats = {**pm.proxy.stats(), **pm.proxy.http_stats()} if pm else {}
        pm_info = {"threads_measured": len(pm.threads()), "client_2xx": sent["pymesh"]} if pm else {}
    finally:
        if pm is not None:
            with contextlib.suppress(Exception):
                pm.proxy.stop()
            with contextlib.suppress(Exception):
                pm.capture.remove()
        env.down()

    return report(args, trials, secs, probe_n, samples, errors, failures, skipped, stats, pm_info)


def report(
    args: argparse.Namespace,
    trials: int,
    secs: int,
    probe_n: int,
    samples: dict[str, dict[str, dict[str, list[float]]]],
    errors: dict[str, dict[str, int]],
    failures: dict[str, list[str]],
    skipped: dict[str, str],
    stats: dict[str, int],
    pm_info: dict[str, int],
) -> int:
    results = {w: {n: {k: spread(v) for k, v in m.items() if v} for n, m in by.items()} for w, by in samples.items()}

    def med(w: str, n: str, k: str) -> float | None:
        r = results[w].get(n, {}).get(k)
        return r["median"] if r else None

    def cell(w: str, n: str, k: str, fmt: str) -> str:
        r = results[w][n].get(k)
        return f"{r['median']:{fmt}} [{r['min']:{fmt}}-{r['max']:{fmt}}]" if r else "-"

    print(
        f"L7 benchmark ({'short' if args.short else 'full'}): median [min-max] of {trials} interleaved trials; "
        f"{secs} s of load per path and trial; latency: {probe_n} sequential requests per path and trial"
    )
    print(
        f"load: HTTP/1.1 wrk -t1 -c{WRK_CONNS}, HTTP/2 h2load -t1 -c{H2_CONNS} -m{H2_STREAMS}; "
        f"every proxy {WORKERS} worker on one pinned core; CPU: the proxy's own (user + system); "
        f"latency probe with the proxy {'on its own core' if args.probe_split else 'on the client and backend core'}"
    )
    print("conn/1k: connections the backend accepted per 1000 requests under load (the proxy's pool at work)")
    print(f"{METRICS_OFF}: pymesh with Istio's metrics off (set_tcp_metrics_enabled(False)), the same proxy")
    summary: dict[str, float] = {}
    for w, by in results.items():
        proto, body = w.split()
        print(f"\n{'HTTP/1.1' if proto == 'h1' else 'HTTP/2 (h2c)'} GET {BODIES[body]}")
        print(
            f"{'path':<8}{'req/s':>22}{'vs direct':>10}{'CPU µs/req':>20}{'conn/1k':>8}{'p50 µs':>18}"
            f"{'p99 µs':>20}{'+p50':>8}{'+p99':>8}{'errors':>8}"
        )
        d_rps, d50, d99 = med(w, "direct", "rps"), med(w, "direct", "p50_us"), med(w, "direct", "p99_us")
        for n in by:
            rps, p50, p99 = med(w, n, "rps"), med(w, n, "p50_us"), med(w, n, "p99_us")
            vs = f"{rps / d_rps:.2f}" if rps and d_rps else "-"
            a50 = f"{p50 - d50:.0f}" if p50 is not None and d50 is not None and n != "direct" else "-"
            a99 = f"{p99 - d99:.0f}" if p99 is not None and d99 is not None and n != "direct" else "-"
            c1k = med(w, n, "conns_per_1k")
            conns = "-" if c1k is None else f"{c1k:.1f}"
            print(
                f"{n:<8}{cell(w, n, 'rps', '.0f'):>22}{vs:>10}{cell(w, n, 'cpu_us_per_req', '.1f'):>20}{conns:>8}"
                f"{cell(w, n, 'p50_us', '.0f'):>18}{cell(w, n, 'p99_us', '.0f'):>20}{a50:>8}{a99:>8}{errors[w][n]:>8}"
            )
        w_ = w.replace(" ", "_")
        for n in by:
            if n == "direct":
                continue
            rps, p50, p99 = med(w, n, "rps"), med(w, n, "p50_us"), med(w, n, "p99_us")
            if rps is not None and d_rps:
                summary[f"{w_}_{n}_rps_vs_direct"] = rps / d_rps
            if p50 is not None and d50 is not None and p99 is not None and d99 is not None:
                summary[f"{w_}_{n}_added_p50_us"] = p50 - d50
                summary[f"{w_}_{n}_added_p99_us"] = p99 - d99
        cpu = med(w, "pymesh", "cpu_us_per_req")
        if cpu is not None:
            for other in ("haproxy", "nginx"):
                if o := med(w, other, "cpu_us_per_req"):
                    summary[f"{w_}_pymesh_cpu_vs_{other}"] = cpu / o
            summary[f"{w_}_pymesh_cpu_vs_envoy_350us"] = cpu / ENVOY_US_PER_REQ
            if off := med(w, METRICS_OFF, "cpu_us_per_req"):
                summary[f"{w_}_pymesh_cpu_metrics_on_vs_off"] = cpu / off
        parts = [
            f"{k.removeprefix(w_ + '_pymesh_').replace('_', ' ')} {v:.2f}"
            for k, v in summary.items()
            if k.startswith(w_ + "_pymesh_") and "added" not in k
        ]
        if parts:
            print("pymesh: " + ", ".join(parts))
    for n, why in skipped.items():
        print(f"skipped {n}: {why}")
    for k, msgs in failures.items():
        print(f"FAILED {k} ({len(msgs)}x): {msgs[0]}")
    if stats:
        # Every request the clients had answered through pymesh should be
        # one of its http_requests: fewer means some went around the HTTP path.
        print(
            f"pymesh: {pm_info['threads_measured']} threads measured; the clients had {pm_info['client_2xx']} "
            f"2xx answers through it (at least; in-flight ones at a load's end not counted); counters: "
            + ", ".join(f"{k} {v}" for k, v in stats.items() if v or k.startswith("http_"))
        )
    if args.json:
        doc = {
            "config": {
                "short": args.short,
                "trials": trials,
                "load_seconds": secs,
                "probe_requests": probe_n,
                "wrk_connections": WRK_CONNS,
                "h2load_connections": H2_CONNS,
                "h2load_streams": H2_STREAMS,
                "workers": WORKERS,
                "envoy_us_per_request": ENVOY_US_PER_REQ,
                "tools": {
                    "nginx": version([tool("nginx") or "nginx", "-v"]),
                    "haproxy": version([tool("haproxy") or "haproxy", "-v"]),
                    "wrk": version([tool("wrk") or "wrk", "-v"]),
                    "h2load": version([tool("h2load") or "h2load", "--version"]),
                },
            },
            "results": results,
            "samples": samples,
            "errors": errors,
            "summary": summary,
            "failures": failures,
            "skipped": skipped,
            "pymesh_stats": stats,
            "pymesh": pm_info,
        }
        args.json.write_text(json.dumps(doc, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
