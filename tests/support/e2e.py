"""The VM end-to-end mesh (tests/e2e/test_vm.py, test_vm_mtls.py, test_agent_root_change.py,
test_vm_virtualservice.py): the service and its ports, the configuration documents (Service, Pod,
the VM's WorkloadGroup), and the processes of a run in the two-namespace lab (support.netns): the
control plane, the agent as its own user, HTTP peers (http_backend.py's backends are the lab's:
``Lab.http_backends``), with the checks the tests share."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from support.netns import APP_UID, NET4, VM4, Lab, start_agent
from support.peers import E2E_HTTP
from support.procs import Lines
from support.wait import wait_until

SVC_PORT = 18080
XDS_PORT = 15010
VIP = "10.96.0.20"
ENTRY = f"product-vm-{VM4}"
GRACE = 4.0
HTTP_PEER = E2E_HTTP
PROBE = {"httpGet": {"path": "/healthz", "port": SVC_PORT}, "periodSeconds": 1, "timeoutSeconds": 1}


def vm_group_yaml(service_account: str | None = None) -> str:
    """The VM's WorkloadGroup (app: product, probed, with ``service_account`` when given) and
    product's ROUND_ROBIN DestinationRule."""
    sa = f"serviceAccount: {service_account}, " if service_account else ""
    return f"""---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {{name: product-vm, namespace: default}}
spec:
  metadata: {{labels: {{app: product}}}}
  template: {{{sa}ports: {{http: {SVC_PORT}}}}}
  probe: {json.dumps(PROBE)}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: product, namespace: default}}
spec:
  host: product.default.svc.cluster.local
  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}
"""


def pod_yaml(name: str, app: str, ip: str, sa: str = "product", extra_labels: str = "") -> str:
    return f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: {app}{extra_labels}}}}}
spec: {{serviceAccountName: {sa}, containers: [{{name: c, ports: [{{name: http, containerPort: {SVC_PORT}}}]}}]}}
status: {{phase: Running, podIP: {ip}, conditions: [{{type: Ready, status: "True"}}]}}
"""


def service_yaml(name: str, vip: str) -> str:
    return f"""---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{clusterIP: {vip}, selector: {{app: {name}}}, ports: [{{name: http, port: {SVC_PORT}}}]}}
"""


class Mesh:
    """The processes of the test, (re)started by name; all in ``lab.procs`` for teardown."""

    def __init__(self, lb: Lab, d: Path, backend: str) -> None:
        self.lb, self.d, self.backend = lb, d, backend
        self.cp_dir = d / "cp"
        self.failflag = d / "vm-probe-fails"
        self.cp: subprocess.Popen[str] | None = None
        self.agent: subprocess.Popen[str] | None = None
        self.out: Lines | None = None

    def http_server(self, ns: str, tag: str, addr: str, uid: int | None = None, failflag: str = "") -> None:
        argv = [sys.executable, HTTP_PEER, "serve", tag, addr, *([failflag] if failflag else [])]
        p = subprocess.Popen(self.lb.cmd(ns, *argv, uid=uid), stdout=subprocess.PIPE, text=True, env=self.lb.env)
        self.lb.procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", f"HTTP server {tag} did not start"

    # What a variant changes (tests/e2e/test_vm_mtls.py): the control plane's
    # listeners and the lines it prints once each is up, and agent flags.
    cp_banners: tuple[str, ...] = ("xds ",)
    agent_flags: tuple[str, ...] = ()

    def cp_flags(self) -> list[str]:
        # A plaintext listener on the lab's network, not loopback: the control plane wants it said.
        return ["--xds-listen", f"{NET4}:{XDS_PORT}", "--insecure-xds", "--grace-period", str(GRACE)]

    def start_cp(self) -> None:
        argv = [sys.executable, "-m", "pymesh", "controlplane", "--config", str(self.d / "mesh"), *self.cp_flags()]
        argv += ["--data-dir", str(self.cp_dir), "--debounce", "0.05"]
        self.cp = subprocess.Popen(
            self.lb.cmd(self.lb.net, *argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=self.lb.env,
        )
        self.lb.procs.append(self.cp)
        assert self.cp.stdout is not None
        for banner in self.cp_banners:
            assert self.cp.stdout.readline().startswith(banner)

    def start_agent(self) -> None:
        vm = self.d / "vm"
        argv = ["--config-dir", str(vm), "--capture", self.backend]
        argv += ["--outbound-listen", "127.0.0.1:15001", "--dns-listen", "127.0.0.1:15053"]
        argv += ["--status-listen", "127.0.0.1:15020", "--state-dir", str(self.d / "state"), "--pod-name", "vm-1"]
        argv += ["--backoff-max", "1", *self.agent_flags]
        self.agent, self.out = start_agent(self.lb, *argv)

    def stop_agent(self) -> None:
        assert self.agent is not None and self.out is not None
        self.agent.send_signal(signal.SIGTERM)
        rc = self.agent.wait(15)
        err = self.agent.stderr.read() if self.agent.stderr else ""
        assert rc == 0, err[-2000:]
        assert self.out.saw("pymesh agent: stopped")

    def saw(self, text: str, timeout: float = 20) -> None:
        assert self.agent is not None and self.out is not None
        try:
            wait_until(lambda: self.out is not None and self.out.saw(text), timeout=timeout)
        except AssertionError:
            raise AssertionError(f"agent never said {text!r}: {self.out.seen}") from None

    def entry(self) -> dict[str, Any] | None:
        """The VM's WorkloadEntry as the control plane stores it (`pymesh get`), or None."""
        argv = [sys.executable, "-m", "pymesh", "get", "workloadentries", ENTRY, "-o", "json"]
        p = subprocess.run([*argv, "--data-dir", str(self.cp_dir)], capture_output=True, text=True, env=self.lb.env)
        if p.returncode != 0:
            assert "NotFound" in p.stderr, p.stderr
            return None
        doc: dict[str, Any] = json.loads(p.stdout)
        return doc

    def healthy(self) -> bool | None:
        e = self.entry()
        conds = (e or {}).get("status", {}).get("conditions", [])
        return next((c["status"] == "True" for c in conds if c.get("type") == "Healthy"), None)

    def requests(self, n: int) -> dict[str, int]:
        """n HTTP requests to the VIP from the application user, one connection each."""
        out = self.lb.run(self.lb.vm, sys.executable, HTTP_PEER, "get", VIP, str(SVC_PORT), str(n), uid=APP_UID)
        counts: dict[str, int] = json.loads(out.strip().splitlines()[-1])
        return counts

    def dig(self, name: str, tries: int = 1) -> list[str]:
        out = self.lb.run(self.lb.vm, "dig", "+short", "+timeout=2", f"+tries={tries}", name, uid=APP_UID)
        return out.split()


def backends_are(m: Mesh, want: set[str], n: int = 12) -> bool:
    return set(m.requests(n)) == want


def assert_thirds(counts: dict[str, int], n: int) -> None:
    """ROUND_ROBIN over three equally weighted endpoints: each gets a third.
    The relay's round robin is exact for sequential connections; the bounds
    leave room for a connection retried on another endpoint."""
    assert sum(counts.values()) == n and set(counts) == {"pod-a", "pod-b", "vm"}, counts
    for tag, k in counts.items():
        assert abs(k - n / 3) <= n / 6, (tag, counts)


def rules(lb: Lab, backend: str) -> str:
    """The vm namespace's capture rules, lower-cased (ours are named pymesh / PYMESH_*)."""
    return (lb.ruleset() if backend == "nftables" else lb.iptables_save()).lower()
