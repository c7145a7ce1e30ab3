#!/usr/bin/env python3
"""DNS proxy benchmark: server-core time per answered query, pymesh against
unbound (1 thread), dnsmasq and a trivial C echo responder, same table, same
client, same run (the method below; `make bench` prints the figures).

Each server is pinned with taskset to one core (``--server-cpus``, default 1)
and driven by dnsperf pinned to another (``--client-cpus``, default 0). On a
2-core machine dnsperf itself saturates near 100-130k queries/s, so QPS does
not separate the servers; the comparable figure is the server's time per
answered query: its process CPU (all threads, /proc/PID/stat) plus the
softirq time of its core (/proc/stat; on loopback the packets' receive path).
The whole core's busy time is shown too, but it also counts whatever else
runs on that core. The echo responder does no DNS work at all: its cost is
the kernel's floor for one UDP answer, and "above echo" is a server's cost
minus the echo's in the same run.

Reported per server: QPS, lost queries, server-core µs/query, µs/query above
the echo floor, the ratio of unbound's work to pymesh's, pymesh's cost for
forwarded names answered from its cache, and average latency with one query
in flight (``-c 1 -q 1``).

Usage:
    python benchmarks/dns_bench.py             # full run, ~2 minutes
    python benchmarks/dns_bench.py --short     # CI smoke run (make bench-short)
    python benchmarks/dns_bench.py --json out.json

Worker scaling on a larger machine (pymesh's UDP workers share the port with
SO_REUSEPORT, one per core by default): give the server N cores and the
client enough cores and threads to saturate it, e.g. on 16 cores

    python benchmarks/dns_bench.py --only pymesh,unbound --workers 4 \\
        --server-cpus 1-4 --client-cpus 8-15 --dnsperf-threads 8 --clients 64

and repeat with --workers 1/2/4 (and unbound with --unbound-threads N):
QPS should grow with the workers until the client saturates, while
µs/query (now summed over the server cores) stays flat. dnsperf's source
ports spread the queries over the workers' sockets by the kernel's
SO_REUSEPORT hash, so use many clients (-c).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_NAMES = 10_000
N_EXT = 1_000
SEED = 42
HZ = os.sysconf("SC_CLK_TCK")


def cpu_list(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += range(int(a), int(b or a) + 1)
    return out


def core_busy(cpus: list[int]) -> int:
    """Busy jiffies of `cpus`: user, nice, system, irq and softirq (not idle,
    iowait or steal). Softirq counts because on loopback each packet's receive
    path runs on the sending core."""
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+) (.*)", line)
            if m and int(m.group(1)) in cpus:
                v = [int(x) for x in m.group(2).split()]
                total += v[0] + v[1] + v[2] + v[5] + v[6]
    return total


def core_softirq(cpus: list[int]) -> int:
    """Softirq jiffies of `cpus` (the packets' receive path on loopback)."""
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+) (.*)", line)
            if m and int(m.group(1)) in cpus:
                total += int(m.group(2).split()[6])
    return total


def proc_cpu(pid: int) -> int:
    """utime + stime of a process (all threads), in jiffies."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def free_port(host: str) -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
            u.bind((host, 0))
            port = int(u.getsockname()[1])
            try:
                t.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def ask(host: str, port: int, name: str, qtype: int = 1, timeout: float = 0.3) -> bytes | None:
    q = random.getrandbits(16).to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    q += b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\x00"
    q += qtype.to_bytes(2, "big") + b"\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q, (host, port))
        try:
            return s.recv(4096)
        except TimeoutError:
            return None


def wait_answering(host: str, port: int, name: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while ask(host, port, name) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{host}:{port} does not answer")
        time.sleep(0.05)


# --- the table and the query files -------------------------------------------------------


@dataclass(frozen=True)
class Name:
    host: str
    v4: str
    v6: str | None


def names() -> list[Name]:
    out = []
    for i in range(N_NAMES):
        v4 = f"10.{96 + i // 65536}.{(i // 256) % 256}.{i % 256}"
        v6 = f"fd00:10:96::{i:x}" if i % 5 == 0 else None
        out.append(Name(f"svc-{i}.ns-{i % 100}.svc.cluster.local", v4, v6))
    return out


def query_file(path: Path, table: list[Name], lines: int = 100_000) -> None:
    """80 % A of existing names, 10 % AAAA of v4-only names (NODATA), 10 %
    AAAA of dual-stack names, as in the reference measurements."""
    rnd = random.Random(SEED)
    v4only = [n for n in table if n.v6 is None]
    dual = [n for n in table if n.v6 is not None]
    with path.open("w") as f:
        for _ in range(lines):
            r = rnd.random()
            if r < 0.8:
                f.write(f"{rnd.choice(table).host} A\n")
            elif r < 0.9:
                f.write(f"{rnd.choice(v4only).host} AAAA\n")
            else:
                f.write(f"{rnd.choice(dual).host} AAAA\n")


def ext_file(path: Path) -> None:
    rnd = random.Random(SEED)
    with path.open("w") as f:
        for _ in range(100_000):
            f.write(f"x-{rnd.randrange(N_EXT)}.ext.test A\n")


# --- servers -----------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    cmd: list[str]
    host: str
    port: int
    probe: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self, cpus: str) -> None:
        self.proc = subprocess.Popen(
            ["taskset", "-c", cpus, *self.cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_answering(self.host, self.port, self.probe)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def pymesh_server(tmp: Path, table: list[Name], host: str, workers: int, upstream: str | None) -> Server:
    doc = {
        "table": {
            n.host: {
                "ips": [n.v4] + ([n.v6] if n.v6 else []),
                "registry": "Kubernetes",
                "shortname": n.host.split(".")[0],
                "namespace": n.host.split(".")[1],
            }
            for n in table
        }
    }
    path = tmp / "table.json"
    path.write_text(json.dumps(doc))
    port = free_port(host)
    cmd = [sys.executable, "-m", "pymesh", "dns", "serve", "--table", str(path), "--listen", f"{host}:{port}"]
    cmd += ["--workers", str(workers), "--namespace", "ns-0"]
    cmd += ["--upstream", upstream or "127.0.0.1:9"]
    return Server("pymesh", cmd, host, port, table[0].host)


def unbound_server(tmp: Path, table: list[Name], host: str, threads: int, ext: bool = False) -> Server:
    port = free_port(host)
    lines = []
    if ext:
        zone = "ext.test"
        lines += [f'  local-data: "x-{i}.{zone}. 3600 IN A 192.0.{i // 256}.{i % 256}"' for i in range(N_EXT)]
    else:
        zone = "cluster.local"
        for n in table:
            lines.append(f'  local-data: "{n.host}. 30 IN A {n.v4}"')
            if n.v6:
                lines.append(f'  local-data: "{n.host}. 30 IN AAAA {n.v6}"')
    conf = tmp / f"unbound-{host}.conf"
    conf.write_text(
        "server:\n"
        f'  interface: {host}\n  port: {port}\n  do-ip6: no\n  do-daemonize: no\n  username: ""\n'
        f'  chroot: ""\n  directory: "{tmp}"\n  pidfile: ""\n  use-syslog: no\n  logfile: ""\n  verbosity: 0\n'
        f"  num-threads: {threads}\n  so-reuseport: yes\n  access-control: 127.0.0.0/8 allow\n"
        '  module-config: "iterator"\n'
        f'  local-zone: "{zone}." static\n' + "\n".join(lines) + "\nremote-control:\n  control-enable: no\n"
    )
    probe = "x-0.ext.test" if ext else table[0].host
    return Server(
        "unbound-1t" if threads == 1 else f"unbound-{threads}t", ["unbound", "-d", "-c", str(conf)], host, port, probe
    )


def dnsmasq_server(tmp: Path, table: list[Name], host: str) -> Server:
    port = free_port(host)
    hosts = tmp / "hosts"
    hosts.write_text("".join(f"{n.v4} {n.host}\n" + (f"{n.v6} {n.host}\n" if n.v6 else "") for n in table))
    cmd = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}"]
    cmd += [f"--listen-address={host}", "--bind-interfaces", f"--port={port}", "--local=/cluster.local/"]
    cmd += ["--local-ttl=30", "--pid-file=", "--user=root", "--cache-size=0"]
    return Server("dnsmasq", cmd, host, port, table[0].host)


def echo_server(tmp: Path, host: str) -> Server:
    exe = tmp / "dns_echo"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / "dns_echo.c")], check=True)
    port = free_port(host)
    return Server("echo-c", [str(exe), host, str(port)], host, port, "probe.example")


# --- measuring -----------------------------------------------------------------------------------


@dataclass
class Run:
    server: str
    load: str
    qps: float = 0.0
    completed: int = 0
    lost: int = 0
    avg_latency_ms: float = 0.0
    # The headline: the server process (all threads) plus the softirq time of
    # its core, per answered query. Unlike the whole core's busy time it does
    # not count other processes that happen to run on that core.
    us_per_query: float = 0.0
    core_us_per_query: float = 0.0
    proc_us_per_query: float = 0.0
    rcodes: dict[str, int] = field(default_factory=dict)


def dnsperf(
    s: Server, qfile: Path, seconds: float, clients: int, outstanding: int, cpus: str, threads: int
) -> dict[str, float | dict[str, int]]:
    cmd = ["taskset", "-c", cpus, "dnsperf", "-s", s.host, "-p", str(s.port), "-d", str(qfile)]
    cmd += ["-l", str(seconds), "-c", str(clients), "-q", str(outstanding), "-T", str(threads), "-t", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    def num(label: str) -> float:
        m = re.search(rf"{label}:\s+([\d.]+)", out)
        return float(m.group(1)) if m else 0.0

    rcodes = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s+([A-Z]+) (\d+) \(", out, re.M)}
    return {
        "completed": num("Queries completed"),
        "lost": num("Queries lost"),
        "qps": num("Queries per second"),
        "latency": num("Average Latency \\(s\\)"),
        "rcodes": rcodes,
    }


def measure(s: Server, load: str, qfile: Path, seconds: float, args: argparse.Namespace, lat: bool = False) -> Run:
    assert s.proc is not None
    server_cpus = cpu_list(args.server_cpus)
    c, q = (1, 1) if lat else (args.clients, args.outstanding)
    busy0, soft0, p0 = core_busy(server_cpus), core_softirq(server_cpus), proc_cpu(s.proc.pid)
    r = dnsperf(s, qfile, seconds, c, q, args.client_cpus, 1 if lat else args.dnsperf_threads)
    busy1, soft1, p1 = core_busy(server_cpus), core_softirq(server_cpus), proc_cpu(s.proc.pid)
    done = int(r["completed"])  # type: ignore[arg-type]
    per = (1e6 / HZ) / max(done, 1)
    return Run(
        server=s.name,
        load=load,
        qps=float(r["qps"]),  # type: ignore[arg-type]
        completed=done,
        lost=int(r["lost"]),  # type: ignore[arg-type]
        avg_latency_ms=float(r["latency"]) * 1e3,  # type: ignore[arg-type]
        us_per_query=(p1 - p0 + soft1 - soft0) * per,
        core_us_per_query=(busy1 - busy0) * per,
        proc_us_per_query=(p1 - p0) * per,
        rcodes=r["rcodes"],  # type: ignore[arg-type]
    )


def check_semantics(s: Server, table: list[Name]) -> None:
    """Each server must answer like a DNS server would before it is timed:
    an A answer, and NODATA (NOERROR, no answer) for AAAA of a v4-only name."""
    if s.name == "echo-c":
        return
    a = ask(s.host, s.port, table[1].host, 1)
    assert a is not None and a[3] & 0xF == 0 and int.from_bytes(a[6:8], "big") == 1, f"{s.name}: A"
    aaaa = ask(s.host, s.port, table[1].host, 28)
    assert aaaa is not None and aaaa[3] & 0xF == 0 and int.from_bytes(aaaa[6:8], "big") == 0, f"{s.name}: NODATA"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="CI smoke run: 1 s loads")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each loaded run")
    p.add_argument("--rounds", type=int, default=2, help="rounds over all servers; the report shows medians")
    p.add_argument("--server-cpus", default="1")
    p.add_argument("--client-cpus", default="0")
    p.add_argument("--workers", type=int, default=1, help="pymesh UDP workers")
    p.add_argument("--unbound-threads", type=int, default=1)
    p.add_argument("--dnsperf-threads", type=int, default=1)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--outstanding", type=int, default=64)
    p.add_argument("--only", default="echo-c,pymesh,unbound,dnsmasq")
    p.add_argument("--json", help="write the runs here")
    args = p.parse_args(argv)
    missing = [t for t in ("dnsperf", "taskset", "gcc", "unbound", "dnsmasq") if shutil.which(t) is None]
    if missing:
        print(f"dns_bench: skipped, missing {', '.join(missing)}")
        return 0
    if args.short:
        args.seconds, args.rounds = 1.0, 1
    ncpu = os.cpu_count() or 1
    if max(cpu_list(args.server_cpus) + cpu_list(args.client_cpus)) >= ncpu:
        args.server_cpus, args.client_cpus = "0", "0"
        print("dns_bench: one core only; server and client share it (figures not comparable)")
    only = args.only.split(",")
    table = names()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="pymesh-dnsbench-") as d:
        tmp = Path(d)
        qfile, xfile = tmp / "queries-found.txt", tmp / "queries-ext.txt"
        query_file(qfile, table)
        ext_file(xfile)
        servers: list[Server] = []
        if "echo-c" in only:
            servers.append(echo_server(tmp, "127.0.0.2"))
        if "pymesh" in only:
            servers.append(pymesh_server(tmp, table, "127.0.0.3", args.workers, None))
        if "unbound" in only:
            servers.append(unbound_server(tmp, table, "127.0.0.4", args.unbound_threads))
        if "dnsmasq" in only:
            servers.append(dnsmasq_server(tmp, table, "127.0.0.5"))
        # Rounds: every server once per round, so a noisy minute hits all of
        # them; the report takes the median of the rounds.
        for _ in range(args.rounds):
            for s in servers:
                s.start(args.server_cpus)
                try:
                    check_semantics(s, table)
                    dnsperf(s, qfile, min(2.0, args.seconds), args.clients, args.outstanding, args.client_cpus, 1)
                    runs.append(measure(s, "found", qfile, args.seconds, args))
                    runs.append(measure(s, "lat", qfile, max(1.0, args.seconds / 2), args, lat=True))
                finally:
                    s.stop()
            if "pymesh" in only:
                # Forwarded names answered from pymesh's cache: upstream unbound on
                # the client's core (it only sees the warm-up), pymesh on the server core.
                up = unbound_server(tmp, table, "127.0.0.6", 1, ext=True)
                up.start(args.client_cpus)
                pm = pymesh_server(tmp, table, "127.0.0.7", args.workers, f"{up.host}:{up.port}")
                pm.name = "pymesh-cache"
                try:
                    pm.start(args.server_cpus)
                    dnsperf(pm, xfile, min(2.0, args.seconds), args.clients, args.outstanding, args.client_cpus, 1)
                    runs.append(measure(pm, "cache-hit", xfile, args.seconds, args))
                finally:
                    pm.stop()
                    up.stop()
    report(runs)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in runs], indent=2))
    lost = sum(r.lost for r in runs)
    return 1 if lost and not args.short else 0


def median_runs(runs: list[Run]) -> list[Run]:
    """One row per (server, load): the median of its rounds, field by field."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.server, r.load), []).append(r)
    out = []
    for (server, load), rs in groups.items():

        def med(f: str, rs: list[Run] = rs) -> float:
            v = sorted(float(getattr(r, f)) for r in rs)
            return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2

        out.append(
            Run(
                server=server,
                load=load,
                qps=med("qps"),
                completed=int(med("completed")),
                lost=max(r.lost for r in rs),
                avg_latency_ms=med("avg_latency_ms"),
                us_per_query=med("us_per_query"),
                core_us_per_query=med("core_us_per_query"),
                proc_us_per_query=med("proc_us_per_query"),
                rcodes=rs[0].rcodes,
            )
        )
    return out


def report(all_runs: list[Run]) -> None:
    runs = median_runs(all_runs)
    rounds = max(sum(1 for r in all_runs if (r.server, r.load) == (x.server, x.load)) for x in runs) if runs else 0
    print(f"\n(median of {rounds} round(s); lost = the worst round)")
    by = {(r.server, r.load): r for r in runs}
    echo = by.get(("echo-c", "found"))
    print()
    print(
        "| server | load | QPS | lost | proc+softirq µs/q | above echo | server core busy µs/q | proc µs/q "
        "| avg latency ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        loaded = r.load != "lat"
        above = f"{r.us_per_query - echo.us_per_query:+.2f}" if echo and loaded else "-"
        cells = [f"{v:.2f}" if loaded else "-" for v in (r.us_per_query, r.core_us_per_query, r.proc_us_per_query)]
        print(
            f"| {r.server} | {r.load} | {r.qps:,.0f} | {r.lost} | {cells[0]} | {above} | {cells[1]} | {cells[2]} "
            f"| {r.avg_latency_ms:.3f} |"
        )
    pm, ub = by.get(("pymesh", "found")), by.get(("unbound-1t", "found"))
    if echo and pm:
        work = pm.us_per_query - echo.us_per_query
        print(f"\npymesh DNS work above the echo floor: {work:.2f} µs/query (target <= 0.5)")
        if ub:
            ub_work = ub.us_per_query - echo.us_per_query
            ratio = (
                f"{ub_work / work:.1f}x"
                if work > 0.05
                else f">= {ub_work / 0.05:.0f}x (pymesh within noise of the floor)"
            )
            print(f"unbound DNS work above the floor: {ub_work:.2f} µs/query; unbound / pymesh: {ratio} (target >= 4x)")
            print(f"per query, unbound / pymesh: {ub.us_per_query / pm.us_per_query:.2f}x")
    pc = by.get(("pymesh-cache", "cache-hit"))
    if echo and pc:
        cache_work = pc.us_per_query - echo.us_per_query
        print(f"pymesh forwarded name from the cache: {cache_work:.2f} µs/query above the floor (target <= 1)")
    pl, el = by.get(("pymesh", "lat")), by.get(("echo-c", "lat"))
    if pl and el:
        print(
            f"latency, one query in flight: pymesh {pl.avg_latency_ms * 1e3:.0f} µs, "
            f"echo {el.avg_latency_ms * 1e3:.0f} µs "
            f"(difference {1e3 * (pl.avg_latency_ms - el.avg_latency_ms):+.0f} µs, target <= 10)"
        )


if __name__ == "__main__":
    sys.exit(main())
