"""Issue 6 end to end, in network namespaces built here (tests/netns_lab.py):

    "cluster" namespace (lab.net, 10.77.0.1): the control plane (pymesh
        controlplane, xDS on 10.77.0.1:15010), two pod backends (HTTP on
        10.78.0.1 and 10.78.0.2) and dnsmasq, the VM's resolv.conf name server
    "vm" namespace (lab.vm, 10.77.0.2): `pymesh agent --capture nftables` (and iptables)
        as its own user (uid 1337, CAP_NET_ADMIN only, excluded from capture
        by uid), the VM's own workload (HTTP on 10.77.0.2) and the clients,
        run as an application user (uid 4242)

and then, as the application user in the vm namespace: captured DNS (dig to
the resolv.conf name server on port 53, getent through the search list, an
external name forwarded to dnsmasq), the service VIP reaching both pods and
the VM in ROUND_ROBIN's thirds, the VM's WorkloadEntry registered, taken out
by a failing probe, serving without the control plane and across an agent
restart, re-registered when the control plane returns, and deleted one grace
period after the agent stops. Namespaces (and with them every rule and
route) are removed even when the test fails; the users are fixed uids given
with setpriv, so nothing is added to /etc/passwd.

Needs root, iproute2, nft, dig, getent, dnsmasq (fails, never skips, without them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import wait_until, write_vm_files
from netns_lab import APP_UID, EXTRA4, NET4, VM4, Lab, Lines, as_agent_user, lab, require_root_tools

SVC_PORT = 18080
XDS_PORT = 15010
VIP = "10.96.0.20"
PODS = {"pod-a": EXTRA4[0], "pod-b": EXTRA4[1]}
ENTRY = f"product-vm-{VM4}"
GRACE = 4.0
HTTP_PEER = str(Path(__file__).resolve().parent / "e2e_http.py")
PROBE = {"httpGet": {"path": "/healthz", "port": SVC_PORT}, "periodSeconds": 1, "timeoutSeconds": 1}


def mesh_config(d: Path) -> Path:
    d.mkdir(parents=True)
    pods = "".join(
        f"""---
apiVersion: v1
kind: Pod
metadata: {{name: product-{tag}, namespace: default, labels: {{app: product}}}}
spec: {{containers: [{{name: product, ports: [{{name: http, containerPort: {SVC_PORT}}}]}}]}}
status:
  phase: Running
  podIP: {ip}
  conditions: [{{type: Ready, status: "True"}}]
"""
        for tag, ip in PODS.items()
    )
    (d / "product.yaml").write_text(
        f"""apiVersion: v1
kind: Service
metadata: {{name: product, namespace: default}}
spec:
  clusterIP: {VIP}
  selector: {{app: product}}
  ports: [{{name: http, port: {SVC_PORT}, targetPort: {SVC_PORT}}}]
{pods}{vm_group_yaml()}"""
    )
    return d


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


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the agent's and the application's users can read (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="pymesh-e2e-vm-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


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

    # What a variant changes (test_e2e_vm_mtls.py): the control plane's
    # listeners and the lines it prints once each is up, and agent flags.
    cp_banners: tuple[str, ...] = ("xds ",)
    agent_flags: tuple[str, ...] = ()

    def cp_flags(self) -> list[str]:
        return ["--xds-listen", f"{NET4}:{XDS_PORT}", "--grace-period", str(GRACE)]

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
        argv = [sys.executable, "-m", "pymesh", "agent", "--config-dir", str(vm), "--capture", self.backend]
        argv += ["--outbound-listen", "127.0.0.1:15001", "--dns-listen", "127.0.0.1:15053"]
        argv += ["--status-listen", "127.0.0.1:15020", "--state-dir", str(self.d / "state"), "--pod-name", "vm-1"]
        argv += ["--backoff-max", "1", *self.agent_flags]
        self.agent = subprocess.Popen(
            as_agent_user(self.lb.cmd(self.lb.vm, *argv)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.lb.env,
        )
        self.lb.procs.append(self.agent)
        self.out = Lines(self.agent)

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


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_vm_joins_the_mesh_end_to_end(shared_dir: Path, backend: str) -> None:
    require_root_tools("nft" if backend == "nftables" else "iptables", "dig", "getent", "dnsmasq")
    t0 = time.monotonic()
    with lab() as lb:
        d = shared_dir
        m = Mesh(lb, d, backend)
        search = "default.svc.cluster.local svc.cluster.local cluster.local"
        lb.etc(lb.vm, "resolv.conf", f"nameserver {NET4}\nsearch {search}\n")
        # The cluster network: two pods, a real resolver for external names, the control plane.
        for tag, ip in PODS.items():
            m.http_server(lb.net, tag, f"{ip}:{SVC_PORT}")
        (d / "upstream-hosts").write_text("192.0.2.99 www.external.test\n")
        dns_argv = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--pid-file=", "--user=root"]
        dns_argv += [f"--addn-hosts={d / 'upstream-hosts'}", f"--listen-address={NET4}", "--bind-interfaces"]
        dns_argv += ["--port=53", "--local=/external.test/"]
        quiet = subprocess.DEVNULL
        lb.procs.append(subprocess.Popen(lb.cmd(lb.net, *dns_argv), stdout=quiet, stderr=quiet, text=True))
        mesh_config(d / "mesh")
        m.start_cp()

        # The VM: its workload (as the application user; its probe fails while the flag file exists)
        # and the agent from istioctl's files, probing the workload as the WorkloadGroup says.
        m.http_server(lb.vm, "vm", f"{VM4}:{SVC_PORT}", uid=APP_UID, failflag=str(m.failflag))
        vm = write_vm_files(d / "vm", XDS_PORT, ip=VM4, probe=PROBE)
        (vm / "hosts").write_text(f"{NET4} istiod.istio-system.svc\n")
        (d / "state").mkdir(mode=0o777)
        (d / "state").chmod(0o777)
        assert m.entry() is None
        m.start_agent()
        m.saw(f"capture rules installed ({backend})")
        m.saw("outbound proxy on 127.0.0.1:15001")
        assert "pymesh" in rules(lb, backend)

        # Registered when the agent starts, healthy once the probe passes.
        wait_until(m.entry, timeout=15)
        wait_until(lambda: m.healthy() is True, timeout=15)
        first = m.entry()
        assert first is not None and first["spec"]["address"] == VM4
        connected_at = first["metadata"]["annotations"]["istio.io/connectedAt"]

        # DNS to the resolv.conf name server on port 53 (another namespace) is captured and answered.
        assert m.dig("product.default.svc.cluster.local") == [VIP]
        assert lb.run(lb.vm, "getent", "hosts", "product", uid=APP_UID).split()[0] == VIP  # glibc + search list
        assert m.dig("www.external.test", tries=2) == ["192.0.2.99"]  # forwarded to dnsmasq

        # The VIP reaches both pods and the VM's own workload, in ROUND_ROBIN's thirds.
        wait_until(lambda: backends_are(m, {"pod-a", "pod-b", "vm"}), timeout=15)
        assert_thirds(m.requests(60), 60)

        # A failing probe takes the VM out of the endpoints; passing again brings it back.
        m.failflag.touch()
        wait_until(lambda: m.healthy() is False, timeout=15)
        wait_until(lambda: backends_are(m, {"pod-a", "pod-b"}), timeout=15)
        counts = m.requests(30)
        assert set(counts) == {"pod-a", "pod-b"} and sum(counts.values()) == 30, counts
        m.failflag.unlink()
        wait_until(lambda: m.healthy() is True, timeout=15)
        wait_until(lambda: backends_are(m, {"pod-a", "pod-b", "vm"}), timeout=15)

        # The control plane dies: DNS and routing keep serving from the agent's tables.
        assert m.cp is not None
        m.cp.kill()
        m.cp.wait(10)
        m.saw("xDS backoff")
        assert m.dig("product.default.svc.cluster.local") == [VIP]
        assert_thirds(m.requests(30), 30)

        # The agent restarts while the control plane is down: it serves its saved tables at once.
        m.stop_agent()
        assert "pymesh" not in rules(lb, backend)  # a clean stop removes its rules
        m.start_agent()
        m.saw("serving saved tables")
        m.saw(f"capture rules installed ({backend})")
        assert m.dig("product") == [VIP]
        assert lb.run(lb.vm, "getent", "hosts", "product.default", uid=APP_UID).split()[0] == VIP
        assert_thirds(m.requests(30), 30)

        # The control plane comes back (same data dir): the agent reconnects and re-registers.
        m.start_cp()

        def reregistered() -> bool:
            e = m.entry()
            ann = (e or {}).get("metadata", {}).get("annotations", {})
            return (
                ann.get("istio.io/connectedAt", connected_at) != connected_at and "istio.io/disconnectedAt" not in ann
            )

        wait_until(reregistered, timeout=20)
        wait_until(lambda: m.healthy() is True, timeout=15)
        assert_thirds(m.requests(30), 30)

        # The agent stops: its entry is kept for the grace period, then deleted.
        m.stop_agent()
        stopped = time.monotonic()
        assert "pymesh" not in rules(lb, backend)
        wait_until(lambda: "istio.io/disconnectedAt" in ((m.entry() or {}).get("metadata", {}).get("annotations", {})))
        assert time.monotonic() - stopped < GRACE, "deleted before the grace period"
        wait_until(lambda: m.entry() is None, timeout=GRACE + 10)
        assert time.monotonic() - stopped >= GRACE - 0.5
    assert not Path("/etc/netns", lb.vm).exists() and not os.path.exists(f"/run/netns/{lb.vm}")
    assert time.monotonic() - t0 < 90
