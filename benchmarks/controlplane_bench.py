"""Control-plane push convergence and footprint, beside a naive baseline.

    .venv/bin/python benchmarks/controlplane_bench.py            # 1,000 services, 2,000 agents
    .venv/bin/python benchmarks/controlplane_bench.py --short    # 100 services, 200 agents (CI)

The mesh: SERVICES Kubernetes Services in namespace ``bench``, each with two
ready pods. AGENTS simulated VM agents (tests/support/peers/cp_agents.py, a separate
process) hold one ADS stream each on loopback, subscribing CDS (all
clusters), NDS (the name table) and EDS for 20 clusters.

Measured in the control plane's process, for two changes:
- ``endpoints``: one pod of one service changes its IP (an EDS change for the
  agents watching that cluster);
- ``new-service``: a Service with a pod is added (CDS and NDS for every agent);
the time from the change (the config file written, then the reload call the
file watcher makes) to the last ACK received by the server, the responses
sent, and the resident memory: with the mesh loaded, with all agents
connected, per connected agent.

Two implementations, each in a fresh child process of this script:
- ``incremental`` (pymesh): resources generated once per snapshot and
  client view, pre-encoded, pushed only to connections whose subscribed
  resources changed;
- the same with delta ADS agents (``pymesh delta`` column);
- ``naive`` (baseline): every change regenerates every subscribed type for
  every connection and resends it (what a control plane without a cache or
  push targeting does). Its cost grows with agents x mesh size, so in full
  mode it runs with --baseline-agents (default 200) and the comparison is
  per agent.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from support.peers import CP_AGENTS  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def service_yaml(i: int, pod_ip_override: str = "") -> str:
    ip1 = pod_ip_override or f"10.{100 + i // 250}.{i % 250}.1"
    ip2 = f"10.{100 + i // 250}.{i % 250}.2"
    name = f"svc-{i:04d}"
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: bench}}
spec:
  clusterIP: 10.96.{i // 250}.{i % 250 + 1}
  selector: {{app: {name}}}
  ports: [{{name: grpc, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}-a, namespace: bench, labels: {{app: {name}}}}}
status: {{podIP: {ip1}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}-b, namespace: bench, labels: {{app: {name}}}}}
status: {{podIP: {ip2}}}
---
"""


def write_mesh(cfg: Path, services: int) -> None:
    cfg.mkdir(parents=True, exist_ok=True)
    for start in range(0, services, 100):
        text = "".join(service_yaml(i) for i in range(start, min(services, start + 100)))
        (cfg / f"services-{start // 100:03d}.yaml").write_text(text)


def wait_converged(cp: Any, since: float, timeout: float = 600.0) -> float:
    """Seconds from ``since`` to the last ACK, once nothing is unanswered."""
    deadline = time.monotonic() + timeout
    while True:
        quiet = cp.call_soon(lambda: (cp.ads.unanswered(), cp.ads.last_answer), timeout)
        if quiet[0] == 0:
            return max(0.0, quiet[1] - since)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{quiet[0]} responses still unanswered after {timeout}s")
        time.sleep(0.005)


def one(strategy: str, services: int, agents: int, eds: int, delta: bool = False) -> dict[str, Any]:
    from pymesh.controlplane import ControlPlane

    out: dict[str, Any] = {"strategy": strategy, "services": services, "agents": agents, "delta": delta}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "mesh"
        write_mesh(cfg, services)
        gc.collect()
        base = rss_mb()
        t = time.monotonic()
        cp = ControlPlane(
            cfg,
            xds_listen="127.0.0.1:0",
            data_dir=Path(tmp) / "data",
            debounce=0.01,
            watch_interval=0,
            strategy=strategy,
        ).start()
        out["load_s"] = time.monotonic() - t
        gc.collect()
        out["rss_mesh_mb"] = rss_mb() - base
        proc = subprocess.Popen(
            [sys.executable, CP_AGENTS, str(cp.port), str(agents), str(services), str(eds)]
            + (["delta"] if delta else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            t = time.monotonic()
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("agents failed to start (see their stderr)")
            wait_converged(cp, t)
            out["connect_all_s"] = time.monotonic() - t
            gc.collect()
            rss_all = rss_mb() - base
            out["rss_total_mb"] = rss_mb()
            out["rss_per_agent_kb"] = (rss_all - out["rss_mesh_mb"]) * 1024 / agents
            for label, change in (
                ("endpoints", lambda: (cfg / "services-000.yaml").write_text(
                    "".join(service_yaml(i, "10.250.0.9" if i == 0 else "") for i in range(min(services, 100))))),
                ("new-service", lambda: (cfg / "zz-new.yaml").write_text(service_yaml(services))),
            ):  # fmt: skip
                before = cp.ads.stats["responses"]
                t0 = time.monotonic()
                change()
                cp.reload(wait=True, timeout=1800)  # the naive baseline's push takes long
                out[f"{label}_s"] = wait_converged(cp, t0)
                out[f"{label}_responses"] = cp.ads.stats["responses"] - before
                out[f"{label}_queue_ms"] = cp.ads.stats["last_push_ms"]
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(30)
            cp.stop()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--short", action="store_true", help="CI size: 100 services, 200 agents")
    p.add_argument("--services", type=int)
    p.add_argument("--agents", type=int)
    p.add_argument(
        "--baseline-agents", type=int, help="agents for the naive baseline (default: all in short mode, else 200)"
    )
    p.add_argument("--eds", type=int, default=20, help="EDS clusters per agent (default: %(default)s)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--delta", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    a = p.parse_args()
    services = a.services or (100 if a.short else 1000)
    agents = a.agents or (200 if a.short else 2000)
    if a.one:
        print(json.dumps(one(a.one, services, agents, min(a.eds, services), a.delta)))
        return 0
    base_agents = a.baseline_agents or (agents if a.short else min(agents, 200))
    results = []
    for strategy, n, delta in (
        ("incremental", agents, False),
        ("naive", base_agents, False),
        ("incremental", agents, True),
    ):
        cmd = [sys.executable, __file__, "--one", strategy, "--services", str(services), "--agents", str(n)]
        cmd += ["--eds", str(a.eds)] + (["--delta"] if delta else [])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if r.returncode != 0:
            err = r.stderr
            print(err if len(err) < 6000 else err[:3000] + "\n...\n" + err[-3000:], file=sys.stderr)
            return 1
        results.append(json.loads(r.stdout.strip().splitlines()[-1]))
    inc, naive, inc_delta = results
    if a.json:
        print(json.dumps({"incremental": inc, "naive": naive, "incremental_delta": inc_delta}, indent=2))
        return 0
    print(f"control plane: {services} services (2 pods each), ADS agents on loopback (CDS + NDS + {a.eds} EDS each)\n")
    rows = [
        ("agents", "agents", "{:.0f}"),
        ("mesh loaded + served, RSS MB", "rss_mesh_mb", "{:.1f}"),
        ("process RSS with all agents, MB", "rss_total_mb", "{:.1f}"),
        ("RSS per connected agent, KB", "rss_per_agent_kb", "{:.1f}"),
        ("all agents connected + ACKed, s", "connect_all_s", "{:.2f}"),
        ("endpoint change -> last ACK, s", "endpoints_s", "{:.3f}"),
        ("  responses sent", "endpoints_responses", "{:.0f}"),
        ("new service -> last ACK, s", "new-service_s", "{:.3f}"),
        ("  responses sent", "new-service_responses", "{:.0f}"),
        ("  server time to queue them, ms", "new-service_queue_ms", "{:.0f}"),
    ]
    print(f"{'':36}{'pymesh SotW':>14}{'naive SotW':>14}{'naive/pymesh':>14}{'pymesh delta':>14}")
    print(f"{'':36}{'':>14}{'(baseline)':>14}{'per agent':>14}")
    for title, key, fmt in rows:
        ratio = ""
        if key.endswith("_s") and inc[key] > 0:
            ratio = f"{(naive[key] / naive['agents']) / (inc[key] / inc['agents']):.1f}x"
        cells = (fmt.format(inc[key]), fmt.format(naive[key]), ratio, fmt.format(inc_delta[key]))
        print(f"{title:36}" + "".join(f"{c:>14}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
