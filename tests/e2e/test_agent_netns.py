"""The agent with its data path in network namespaces: the control plane and
a pod backend in a "net" namespace, `pymesh agent --capture nftables
--outbound-listen ...` in a "vm" namespace as its own user (with
CAP_NET_ADMIN only), and an application user
there whose DNS and TCP are captured: the resolv.conf nameserver answers
mesh names, the service VIP reaches the pod and the VM's own registered
workload, and stopping the agent removes its rules.

Needs root (network namespaces, nftables capture rules, fixed uids and
CAP_NET_ADMIN via setpriv), iproute2, nft, dig and getent: without them it is
skipped with the reason, or fails when PYMESH_REQUIRE_ROOT_TESTS is set (CI)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.agent import write_vm_files
from support.netns import APP_UID, EXTRA4, NET4, VM4, fetch_status, lab, require_root_tools, start_agent, wait_said
from support.wait import wait_until

pytestmark = pytest.mark.netns

SVC_PORT = 18080
XDS_PORT = 15010
POD_IP = EXTRA4[0]


def mesh_config(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "product.yaml").write_text(
        f"""apiVersion: v1
kind: Service
metadata: {{name: product, namespace: default}}
spec:
  clusterIP: 10.96.0.20
  selector: {{app: product}}
  # tcp: the backends here speak first (a banner line), which an HTTP port would not carry.
  ports: [{{name: tcp, port: {SVC_PORT}, targetPort: {SVC_PORT}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: product-pod-0, namespace: default, labels: {{app: product}}}}
spec: {{containers: [{{name: product, ports: [{{name: tcp, containerPort: {SVC_PORT}}}]}}]}}
status:
  phase: Running
  podIP: {POD_IP}
  conditions: [{{type: Ready, status: "True"}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {{name: product-vm, namespace: default}}
spec:
  metadata: {{labels: {{app: product}}}}
  template: {{ports: {{tcp: {SVC_PORT}}}}}
"""
    )
    return d


def test_agent_captures_dns_and_routes_the_vip_to_pod_and_vm(shared_dir: Path) -> None:
    tmp_path = shared_dir
    require_root_tools("nft", "dig", "getent")
    with lab() as lb:
        lb.etc(lb.vm, "resolv.conf", f"nameserver {NET4}\nsearch default.svc.cluster.local svc.cluster.local\n")
        lb.serve(lb.net, "pod", [f"tcp:{POD_IP}:{SVC_PORT}"])
        lb.serve(lb.vm, "vm", [f"tcp:{VM4}:{SVC_PORT}"])
        # The cluster network's resolver (the VM's resolv.conf nameserver) knows one external name.
        (tmp_path / "upstream-hosts").write_text("192.0.2.99 www.external.test\n")
        dns_argv = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--pid-file=", "--user=root"]
        dns_argv += [f"--addn-hosts={tmp_path / 'upstream-hosts'}", f"--listen-address={NET4}", "--bind-interfaces"]
        dns_argv += ["--port=53", "--local=/external.test/"]
        dnsmasq = subprocess.Popen(lb.cmd(lb.net, *dns_argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lb.procs.append(dnsmasq)
        cp_argv = [sys.executable, "-m", "pymesh", "controlplane", "--config", str(mesh_config(tmp_path / "mesh"))]
        cp_argv += ["--xds-listen", f"{NET4}:{XDS_PORT}", "--insecure-xds", "--data-dir", str(tmp_path / "cp")]
        cp = subprocess.Popen(
            lb.cmd(lb.net, *cp_argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=lb.env,
        )
        lb.procs.append(cp)
        assert cp.stdout is not None and cp.stdout.readline().startswith("xds ")

        vm = write_vm_files(tmp_path / "vm", XDS_PORT, ip=VM4)
        (vm / "hosts").write_text(f"{NET4} istiod.istio-system.svc\n")
        argv = ["--config-dir", str(vm), "--capture", "nftables"]
        argv += ["--outbound-listen", "127.0.0.1:15001", "--dns-listen", "127.0.0.1:15053", "--no-probe"]
        argv += ["--status-listen", "127.0.0.1:15020", "--state-dir", str(tmp_path / "state"), "--pod-name", "vm-1"]
        state = tmp_path / "state"
        state.mkdir(mode=0o777)
        state.chmod(0o777)
        agent, out = start_agent(lb, *argv)
        try:
            wait_said(agent, out, "tables: 1 names, 1 clusters, 1 service", timeout=20)
            assert out.saw("capture rules installed (nftables)") and out.saw("outbound proxy on 127.0.0.1:15001")
            assert "pymesh" in lb.ruleset()
            ruleset_chains = lb.ruleset().count("chain ")

            # DNS to the resolv.conf nameserver (in the other namespace) is captured and answered here.
            dig = lb.run(
                lb.vm, "dig", "+short", "+timeout=2", "+tries=1", "product.default.svc.cluster.local", uid=APP_UID
            )
            assert dig.split() == ["10.96.0.20"]
            assert lb.run(lb.vm, "getent", "hosts", "product", uid=APP_UID).split()[0] == "10.96.0.20"  # search list
            # Other names: captured too, forwarded by the agent (not captured again) to the real resolver.
            ext = lb.run(lb.vm, "dig", "+short", "+timeout=2", "+tries=2", "www.external.test", uid=APP_UID)
            assert ext.split() == ["192.0.2.99"]
            metrics = fetch_status(lb, "/metrics")
            upstream = re.search(r"^istio_agent_dns_upstream_requests_total\S* (\d+)", metrics, re.M)
            assert upstream is not None and int(upstream.group(1)) >= 1, metrics

            # The VIP reaches the pod (other namespace) and the VM's own registered workload.
            counts: dict[str, Any] = {}

            def both() -> bool:
                counts.clear()
                counts.update(lb.peer(lb.vm, "tcpmany", "10.96.0.20", str(SVC_PORT), "40", uid=APP_UID))
                return set(counts) == {"pod", "vm"}

            try:
                wait_until(both, timeout=15)
            except AssertionError:
                clusters = fetch_status(lb, "/debug/clusters")
                raise AssertionError(f"replies {counts}; clusters {clusters}") from None
            # Round robin over two equally weighted endpoints: an even split.
            assert counts == {"pod": 20, "vm": 20}

            # The control plane dies, then the agent crashes and restarts while it is down:
            # DNS and routing serve from the saved tables; the rules are reinstalled, not doubled.
            cp.kill()
            cp.wait(10)
            agent.kill()
            agent.wait(10)
            assert "pymesh" in lb.ruleset()  # a crash leaves the rules
            agent, out = start_agent(lb, *argv)
            wait_until(lambda: out.saw("serving saved tables"), timeout=20)
            wait_until(lambda: out.saw("xDS backoff"), timeout=20)
            assert lb.ruleset().count("chain ") == ruleset_chains
            assert both() and counts == {"pod": 20, "vm": 20}
            # Istio's agent answers the bare service name in the VM's own namespace.
            dig = lb.run(lb.vm, "dig", "+short", "+timeout=2", "+tries=1", "product", uid=APP_UID)
            assert dig.split() == ["10.96.0.20"]
            assert lb.run(lb.vm, "getent", "hosts", "product.default", uid=APP_UID).split()[0] == "10.96.0.20"
        finally:
            agent.send_signal(signal.SIGTERM)
            rc = agent.wait(15)
        err = agent.stderr.read() if agent.stderr else ""
        assert rc == 0, err[-2000:]
        assert out.saw("pymesh agent: stopped")
        assert "pymesh" not in lb.ruleset()  # exactly what it added is gone
