"""Control-plane replicas on etcd beside one control plane on SQLite, in the same run.

    .venv/bin/python benchmarks/ha_bench.py                  # 1,000 services, 2,000 agents
    .venv/bin/python benchmarks/ha_bench.py --short          # 100 services, 200 agents (CI)
    .venv/bin/python benchmarks/ha_bench.py --json out.json  # the table, and every figure as JSON

Two set-ups, each a fresh set of processes on loopback:

- ``sqlite`` (baseline): one ``pymesh controlplane --config DIR --data-dir D`` with its embedded
  SQLite store, the default;
- ``etcd``: a 3-member etcd (Debian's etcd 3.4, started as tests/support/etcd.py does: tmpfs data,
  ``--unsafe-no-fsync``, default election timing) and three ``pymesh controlplane --store
  etcd://...`` replicas, each its own process and xDS port, on the same config directory.

Both with the control plane's default flags (debounce, lease TTL, grace period, admission
bound); both keep their data in /dev/shm when it exists, so neither waits on a disk.

The load: the mesh of benchmarks/controlplane_bench.py (SERVICES Services with two pods each),
plus one WorkloadGroup no Service selects, and AGENTS simulated agents (tests/support/peers/cp_agents.py
through support.fleet, one child process, real ADS streams: CDS, NDS and EDS for 20 clusters each) that auto-register
into it. Every agent is given every replica's address and starts on address i mod N (an even
spread); a stream that ends is opened again on the next address with the real agent's backoff
(pymesh/agent/xds_client.py).

Measured:

- resident memory (VmRSS, proc(5)) of each control-plane process with the mesh loaded and
  with its agents, and of the etcd members;
- writes to etcd per registration: etcd revisions (one per committed write transaction) and
  raft proposals (``etcd_server_proposals_committed_total`` on a member's /metrics) while the
  agents connect, less the idle rate measured just before;
- for an endpoint change (one pod of one Service changes its IP: EDS for the agents watching
  that cluster) and a new Service (CDS and NDS for every agent): the time from the config file
  being written to the last ACK of any agent on any replica, and from the first ACK to the last
  (the fan-out; the rest is the config watcher's 0.5 s poll and the debounce). The agents' child
  stamps each ACK with CLOCK_MONOTONIC, the clock this process reads, and says when every
  agent concerned has ACKed a newer response. The change is applied as one would without an
  orchestrator: each replica reads the same directory;
- failover (etcd only): ``kill -9`` of one replica (not the sweeper leader); for each of its
  agents, the time from the kill to its new stream on another replica having ACKed CDS, NDS and
  EDS: p50, p95, max; other agents that lost their stream; admission refusals (busy) met on the
  way; etcd revisions per moved agent until all are back.

Goals (reported, not asserted): push to the last ACK <= 1 s; failover p95 <= 3 s, max <= 10 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from benchmarks.benchlib import spread  # noqa: E402
from benchmarks.controlplane_bench import service_yaml, write_mesh  # noqa: E402
from support.fleet import Agents, watchdog  # noqa: E402

GROUP = "bench-vm"
# A WorkloadGroup no Service selects: registrations cost what they cost in the store, without
# also changing the endpoints every agent is sent.
WORKLOAD_GROUP = f"""apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {{name: {GROUP}, namespace: bench}}
spec:
  metadata: {{labels: {{app: {GROUP}}}}}
  template: {{ports: {{grpc: 8080}}}}
"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pymesh_cli() -> list[str]:
    exe = shutil.which("pymesh", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "pymesh"]


class Replica:
    """One ``pymesh controlplane`` process; its xDS and monitoring addresses from its stdout."""

    def __init__(self, name: str, cfg: Path, tmp: Path, store: str | None) -> None:
        self.name = name
        self.log = tmp / f"{name}.log"
        argv = [
            *pymesh_cli(), "controlplane", "--config", str(cfg), "--xds-listen", "127.0.0.1:0",
            "--data-dir", str(tmp / name), "--monitoring-listen", "127.0.0.1:0",
        ] + (["--store", store] if store else [])  # fmt: skip
        self.started = time.monotonic()
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True)

    def wait_serving(self, timeout: float = 300) -> None:
        assert self.proc.stdout is not None
        lines = {}
        with watchdog(self.proc, timeout):
            while len(lines) < 2:
                line = self.proc.stdout.readline()  # the process prints both lines once it serves
                if not line:
                    raise RuntimeError(f"replica {self.name} exited: {self.log.read_text()[-3000:]}")
                kind, addr = line.split()
                lines[kind] = addr
        self.start_s = time.monotonic() - self.started
        self.port = int(lines["xds"].rsplit(":", 1)[1])
        self.monitoring = lines["monitoring"]

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{self.monitoring}/debug/status", timeout=10) as r:
            doc: dict[str, Any] = json.loads(r.read())
        return doc

    def rss(self) -> float:
        return rss_mb(self.proc.pid)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# --- etcd: revisions and raft proposals, from any member (v3 JSON gateway and /metrics) ----------


def etcd_counts(endpoints: list[str]) -> tuple[int, int]:
    """(store revision, proposals committed) from the first member that answers."""
    for ep in endpoints:
        try:
            req = urllib.request.Request(f"http://{ep}/v3/kv/range", data=b'{"key": "AA=="}', method="POST")
            with urllib.request.urlopen(req, timeout=5) as r:
                revision = int(json.loads(r.read())["header"]["revision"])
            with urllib.request.urlopen(f"http://{ep}/metrics", timeout=5) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith("etcd_server_proposals_committed_total "):
                        return revision, int(float(line.split()[1]))
        except (OSError, ValueError, KeyError):
            continue
    raise RuntimeError("no etcd member answered")


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))]


# --- one set-up ---------------------------------------------------------------------------------


def push(agents: Agents, label: str, change: Any, types: str, service: int | None) -> dict[str, float]:
    """Applies ``change`` and waits for every agent concerned to ACK ``types``; then a quiet
    half second, so the last ACK counted is the last one that change caused."""
    t0 = time.monotonic()
    change()
    got = agents.ask("acked", t0, 120, types, *([] if service is None else [service]))
    if not got["ok"]:
        raise RuntimeError(f"{label}: {got['pending']} of {got['targets']} agents did not ACK in 120 s")
    time.sleep(0.5)
    got = agents.ask("acked", t0, 0, types, *([] if service is None else [service]))
    # Per replica: its first ACK is when it noticed the change (the directory poll, the debounce,
    # the rebuild); its first to last ACK is its own fan-out, what controlplane_bench measures.
    spans = got["by_addr"].values()
    return {
        "s": got["last"] - t0,
        "fanout_s": got["last"] - got["first"],
        "replica_fanout_s": max(last - first for first, last in spans),
        "replica_first_s": [first - t0 for first, _ in spans],
        "targets": got["targets"],
    }


def quiet(agents: Agents, seconds: float = 1.0, timeout: float = 60.0) -> None:
    """Waits until no agent has ACKed anything for ``seconds``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        since = time.monotonic() - seconds
        if agents.ask("acked", since, 0, "cds", 0)["last"] == 0.0:
            return
        time.sleep(0.2)


def run(kind: str, a: argparse.Namespace, tmp: Path, cleanup: contextlib.ExitStack) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": kind}
    cfg = tmp / f"mesh-{kind}"
    write_mesh(cfg, a.services)
    if a.register:
        (cfg / "zz-group.yaml").write_text(WORKLOAD_GROUP)
    endpoints: list[str] = []
    store = None
    if kind == "etcd":
        from support.etcd import EtcdCluster

        etcd = EtcdCluster()
        cleanup.callback(etcd.stop)
        etcd.start()
        endpoints = etcd.endpoints
        store = etcd.url("/pymesh/bench")
    names = ["a", "b", "c"] if kind == "etcd" else ["solo"]
    replicas: list[Replica] = []
    for n in names:  # one at a time: the first creates the store's content, as an operator would
        r = Replica(n, cfg, tmp, store)
        cleanup.callback(r.stop)
        r.wait_serving()
        replicas.append(r)
    out["replicas"] = len(replicas)
    out["start_s"] = [r.start_s for r in replicas]
    time.sleep(2)  # first store writes and watcher tick settle
    out["rss_mesh_mb"] = [r.rss() for r in replicas]
    if endpoints:
        idle0, t_idle = etcd_counts(endpoints), time.monotonic()
        time.sleep(3)
        idle1 = etcd_counts(endpoints)
        idle_s = time.monotonic() - t_idle
        rates = [(idle1[k] - idle0[k]) / idle_s for k in (0, 1)]

    before = etcd_counts(endpoints) if endpoints else (0, 0)
    t = time.monotonic()
    agents = Agents([r.port for r in replicas], a.agents, a.services, a.eds, register=GROUP if a.register else "")
    cleanup.callback(agents.stop)
    agents.wait_ready(timeout=300)
    out["connect_all_s"] = time.monotonic() - t
    quiet(agents)  # a registration is written before the stream's first answer: all are done
    if endpoints:
        after, dt = etcd_counts(endpoints), time.monotonic() - t
        out["etcd_revisions_per_agent"] = (after[0] - before[0] - rates[0] * dt) / a.agents
        out["etcd_proposals_per_agent"] = (after[1] - before[1] - rates[1] * dt) / a.agents
        out["etcd_idle_revisions_per_s"] = rates[0]
    out["agents_per_replica"] = agents.ask("mark")["agents"]
    out["rss_agents_mb"] = [r.rss() for r in replicas]
    if endpoints:
        out["rss_etcd_mb"] = [rss_mb(p.pid) for p in etcd.procs if p is not None]

    moved: dict[int, str] = {}  # Service -> its first pod's new IP, kept across trials

    def endpoint_change(trial: int) -> Any:
        svc = (trial * 37) % a.services  # a different Service each time, inside the mesh

        def change() -> None:
            moved[svc] = f"10.250.{trial // 250}.{trial % 250 + 1}"
            start = svc - svc % 100
            text = "".join(service_yaml(i, moved.get(i, "")) for i in range(start, min(a.services, start + 100)))
            (cfg / f"services-{start // 100:03d}.yaml").write_text(text)

        return svc, change

    def new_service(trial: int) -> Any:
        return lambda: (cfg / f"zz-new-{trial:03d}.yaml").write_text(service_yaml(a.services + trial))

    eps: list[dict[str, float]] = []
    news: list[dict[str, float]] = []
    for trial in range(a.trials):
        svc, change = endpoint_change(trial)
        eps.append(push(agents, "endpoint change", change, "eds", svc))
        quiet(agents)
        news.append(push(agents, "new service", new_service(trial), "cds,nds", None))
        quiet(agents)
    out["endpoints"] = eps
    out["new_service"] = news

    if kind == "etcd":
        statuses = [r.status()["replica"] for r in replicas]
        victim = next(k for k, s in enumerate(statuses) if not s["leader"])
        out["failover_victim"] = names[victim]
        mark = agents.ask("mark")
        c0 = etcd_counts(endpoints)
        t_kill = time.monotonic()
        replicas[victim].kill()
        got = agents.ask("recovered", victim, 60)
        c1 = etcd_counts(endpoints)
        times = [x - t_kill for x in got["established_at"]]
        out["failover"] = {
            "victims": got["victims"],
            "recovered": len(times),
            "pending": got["pending"],
            "p50_s": statistics.median(times) if times else None,
            "p95_s": percentile(times, 95) if times else None,
            "max_s": max(times) if times else None,
            "others_lost": got["others_lost"],
            "busy_refusals": got["busy_refusals"],
            "agents_before": mark["agents"],
            "agents_after": got["agents"],
            "etcd_revisions_per_moved_agent": (c1[0] - c0[0]) / max(1, got["victims"]),
            "times_s": sorted(times),
        }
    agents.stop()
    for r in replicas:
        r.stop()
    return out


# --- the table ----------------------------------------------------------------------------------


def cell(xs: list[float], fmt: str) -> str:
    """One figure, or the median with its range across trials."""
    if not xs:
        return "-"
    if len(xs) == 1:
        return fmt.format(xs[0])
    s = spread(xs)
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def per_replica(xs: list[float], fmt: str) -> str:
    return "/".join(fmt.format(x) for x in xs)


def table(res: dict[str, Any], a: argparse.Namespace) -> str:
    sq, et = res["sqlite"], res["etcd"]
    lines = [
        f"control plane HA: {a.services} services (2 pods each), {a.agents} ADS agents on loopback "
        f"(CDS + NDS + {a.eds} EDS each{', auto-registering' if a.register else ''}); "
        f"{a.trials} trials of each change: median (min-max)",
        "",
        f"{'':44}{'1 replica, SQLite':>26}{'3 replicas, etcd':>26}",
    ]

    def row(title: str, f: Any) -> None:
        lines.append(f"{title:44}" + "".join(f"{f(r):>26}" for r in (sq, et)))

    row("agents per replica", lambda r: per_replica(r["agents_per_replica"], "{}"))
    row("replica start to serving, s", lambda r: per_replica(r["start_s"], "{:.1f}"))
    row("RSS per replica, mesh loaded, MB", lambda r: per_replica(r["rss_mesh_mb"], "{:.0f}"))
    row("RSS per replica with agents, MB", lambda r: per_replica(r["rss_agents_mb"], "{:.0f}"))
    row("RSS, all replicas, MB", lambda r: f"{sum(r['rss_agents_mb']):.0f}")
    row("RSS, etcd members, MB", lambda r: per_replica(r.get("rss_etcd_mb", []), "{:.0f}") or "-")
    row("all agents connected + ACKed, s", lambda r: f"{r['connect_all_s']:.1f}")
    if a.register:
        row("etcd revisions per registration", lambda r: cell(_opt(r, "etcd_revisions_per_agent"), "{:.2f}"))
        row("etcd raft proposals per registration", lambda r: cell(_opt(r, "etcd_proposals_per_agent"), "{:.2f}"))
    for change, title in (("endpoints", "endpoint change"), ("new_service", "new service")):
        for label, field, fmt in (
            (f"{title} -> last ACK, s", "s", "{:.2f}"),
            ("  first ACK -> last ACK, s", "fanout_s", "{:.2f}"),
            ("  slowest replica's own fan-out, s", "replica_fanout_s", "{:.2f}"),
            ("  agents concerned", "targets", "{:.0f}"),
        ):
            row(label, lambda r, c=change, k=field, f=fmt: cell([x[k] for x in r[c]], f))
    f = et.get("failover")
    if f:
        lines.append("")
        lines.append(
            f"failover: kill -9 of replica {et['failover_victim']} (not the sweeper leader); agents per replica "
            f"{per_replica(f['agents_before'], '{}')} -> {per_replica(f['agents_after'], '{}')}; "
            f"{f['recovered']}/{f['victims']} back"
        )
        lines.append(
            f"  kill -> re-ACKed CDS+NDS+EDS elsewhere: p50 {f['p50_s']:.2f} s, p95 {f['p95_s']:.2f} s, "
            f"max {f['max_s']:.2f} s (goal p95 <= 3 s, max <= 10 s)"
        )
        lines.append(
            f"  other agents that lost their stream: {f['others_lost']}; busy refusals met: {f['busy_refusals']}; "
            f"etcd revisions per moved agent: {f['etcd_revisions_per_moved_agent']:.2f}"
        )
    return "\n".join(lines)


def _opt(r: dict[str, Any], key: str) -> list[float]:
    return [r[key]] if key in r else []


@contextlib.contextmanager
def terminated_cleanly() -> Iterator[None]:
    """SIGTERM (CI timeouts, make) unwinds like Ctrl-C, so every process started is stopped."""

    def raise_exit(*_: object) -> None:
        raise SystemExit(143)

    old = signal.signal(signal.SIGTERM, raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--short", action="store_true", help="CI size: 100 services, 200 agents, 2 trials")
    p.add_argument("--services", type=int)
    p.add_argument("--agents", type=int)
    p.add_argument("--eds", type=int, default=20, help="EDS clusters per agent (default: %(default)s)")
    p.add_argument("--trials", type=int, help="trials of each change (default: 3, or 2 with --short)")
    p.add_argument("--no-register", dest="register", action="store_false", help="agents do not auto-register")
    p.add_argument("--only", choices=("sqlite", "etcd"), help=argparse.SUPPRESS)
    p.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    a = p.parse_args()
    a.services = a.services or (100 if a.short else 1000)
    a.agents = a.agents or (200 if a.short else 2000)
    a.trials = a.trials or (2 if a.short else 3)
    a.eds = min(a.eds, a.services)
    if (a.only or "etcd") == "etcd" and shutil.which("etcd") is None:
        print("etcd not found (Debian: apt-get install etcd-server)", file=sys.stderr)
        return 1
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    results: dict[str, Any] = {}
    with terminated_cleanly(), tempfile.TemporaryDirectory(prefix="pymesh-ha-bench-", dir=base) as tmp:
        for kind in ("sqlite", "etcd") if a.only is None else (a.only,):
            with contextlib.ExitStack() as cleanup:
                try:
                    results[kind] = run(kind, a, Path(tmp), cleanup)
                except Exception:
                    for log in sorted(Path(tmp).glob("*.log")):
                        print(f"--- {log.name} (tail)\n{log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
                    raise
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), **results}, indent=2) + "\n")
    if len(results) == 2:
        print(table(results, a))
    else:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
