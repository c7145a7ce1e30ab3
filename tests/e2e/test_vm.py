"""A VM joins the mesh end to end, in network namespaces built here (tests/support/netns.py):

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

Needs root (network namespaces, capture rules, fixed uids via setpriv), iproute2,
nft (iptables for its variant), dig, getent and dnsmasq: without them it is skipped
with the reason, or fails when PYMESH_REQUIRE_ROOT_TESTS is set (CI).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from support.agent import write_vm_files
from support.e2e import GRACE, PROBE, SVC_PORT, VIP, XDS_PORT, Mesh, assert_thirds, backends_are, rules, vm_group_yaml
from support.netns import APP_UID, EXTRA4, NET4, VM4, lab, require_root_tools
from support.wait import wait_until

pytestmark = pytest.mark.netns

PODS = {"pod-a": EXTRA4[0], "pod-b": EXTRA4[1]}


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


# Its own budget is 90 s (the last assertion); the timeout leaves room for that message.
@pytest.mark.timeout(240)
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
