"""Workload mTLS end to end: the VM end-to-end test (test_vm.py)
(tests/e2e/test_vm.py) with mTLS on, in network namespaces built here:

    "cluster" namespace (lab.net, 10.77.0.1): the control plane with its CA and
        TLS port (xDS + CreateCertificate on 10.77.0.1:15012), two product pods
        (10.78.0.1/.2) that only speak STRICT mTLS with their own workload
        certificates (tests/support/peers/e2e_mtls_peer.py), a plaintext pod of another
        service (10.78.0.3, ``security.istio.io/tlsMode: disabled``) and a pod
        whose certificate is not the identity its Pod declares (10.79.0.1)
    "vm" namespace (lab.vm, 10.77.0.2): `pymesh agent --capture nftables
        --control-plane-auth MUTUAL_TLS` (and iptables) as uid 1337, its first certificate
        from an istio-token, then the native relay outbound (15001) and inbound
        (15006) with that certificate; the VM's app on 10.77.0.2:18080

and then: the service VIP reaches both pods and the VM's own workload (through
its STRICT/PERMISSIVE inbound) in ROUND_ROBIN's thirds over mTLS; tcpdump on the
VM's veth never sees the request's marker in plaintext, while the same capture
does see the marker of requests to the plaintext service (the control case); an
endpoint whose certificate is not the EDS ``service_account`` is refused by the
outbound relay; the PeerAuthentication (mesh PERMISSIVE, then namespace STRICT)
reaches the agent by a targeted LDS push: before it a plaintext client from the
cluster namespace reaches the VM app, after it the same client is refused while
an mTLS client with a mesh certificate gets through; ``openssl s_client`` with a
certificate of the wrong trust domain (signed by the mesh root) or from another
CA is refused by the VM's inbound, with a mesh certificate it gets the page.

Needs root (network namespaces, capture rules, tcpdump on the veth), iproute2, nft
(iptables for its variant), tcpdump and openssl: without them it is skipped with the
reason, or fails when PYMESH_REQUIRE_ROOT_TESTS is set (CI).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from pymesh.controlplane.ca.ca import CertificateAuthority
from pymesh.controlplane.ca.tokens import TokenAuthority
from support.agent import write_vm_files
from support.e2e import (
    HTTP_PEER,
    PROBE,
    SVC_PORT,
    VIP,
    Mesh,
    assert_thirds,
    backends_are,
    pod_yaml,
    rules,
    service_yaml,
    vm_group_yaml,
)
from support.netns import APP_UID, EXTRA4, NET4, VM4, Lab, lab, require_root_tools
from support.peers import E2E_MTLS_PEER
from support.sec import issue, workload
from support.wait import wait_until

pytestmark = pytest.mark.netns

PEER = E2E_MTLS_PEER
PODS = {"pod-a": EXTRA4[0], "pod-b": EXTRA4[1]}
PLAIN_POD, PLAIN_VIP = EXTRA4[2], "10.96.0.21"
GUARDED_POD, GUARDED_VIP = EXTRA4[3], "10.96.0.22"
PRODUCT = "spiffe://cluster.local/ns/default/sa/product"
SECURE_PORT = 15012
MARKER = "mtls-marker-" + uuid.uuid4().hex
PLAIN_MARKER = "plain-marker-" + uuid.uuid4().hex


def policy(ns: str, mode: str) -> str:
    return f"""apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: {ns}}}
spec: {{mtls: {{mode: {mode}}}}}
"""


def mesh_config(d: Path) -> Path:
    d.mkdir(parents=True)
    # Pods with a sidecar carry the injector's label; without it istiod takes a pod as plaintext.
    mesh = ", security.istio.io/tlsMode: istio"
    docs = [service_yaml("product", VIP)]
    docs += [pod_yaml(f"product-{t}", "product", ip, extra_labels=mesh) for t, ip in PODS.items()]
    docs += [
        service_yaml("plain", PLAIN_VIP),
        pod_yaml("plain-0", "plain", PLAIN_POD, extra_labels=", security.istio.io/tlsMode: disabled"),
    ]
    docs += [service_yaml("guarded", GUARDED_VIP), pod_yaml("guarded-0", "guarded", GUARDED_POD, extra_labels=mesh)]
    docs.append(vm_group_yaml(service_account="product"))
    (d / "services.yaml").write_text("".join(docs))
    (d / "mesh-policy.yaml").write_text(policy("istio-system", "PERMISSIVE"))
    return d


class MtlsMesh(Mesh):
    """tests/e2e/test_vm.py's processes with the control plane's TLS port and the agent on MUTUAL_TLS."""

    cp_banners = ("xds ", "xds-tls ")
    agent_flags = ("--control-plane-auth", "MUTUAL_TLS")

    def cp_flags(self) -> list[str]:
        return ["--xds-listen", f"{NET4}:15010", "--insecure-xds", "--secure-listen", f"{NET4}:{SECURE_PORT}"]

    def requests(self, n: int, vip: str = VIP, path: str = f"/{MARKER}") -> dict[str, int]:
        """n HTTP requests from the VM's application user, each on its own connection, the marker in the path."""
        out = self.lb.run(self.lb.vm, sys.executable, HTTP_PEER, "get", vip, str(SVC_PORT), str(n), path, uid=APP_UID)
        counts: dict[str, int] = json.loads(out.strip().splitlines()[-1])
        return counts


def cluster_get(lb: Lab, path: str, tls: tuple[Path, str] | None = None) -> dict[str, Any]:
    """One GET to the VM's app (10.77.0.2:18080) from the cluster namespace: plaintext or mTLS."""
    extra = [str(tls[0]), tls[1]] if tls else []
    out = lb.run(lb.net, sys.executable, PEER, "get", VM4, str(SVC_PORT), path, *extra)
    got: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return got


def s_client(lb: Lab, certs: Path) -> str:
    """``openssl s_client`` from the cluster namespace to the VM's app, presenting the certificate in ``certs``
    with Istio's ALPN, sending one HTTP/1.0 request; its output (the response, if any)."""
    argv = ["openssl", "s_client", "-connect", f"{VM4}:{SVC_PORT}", "-alpn", "istio"]  # no metadata exchange here
    argv += ["-cert", str(certs / "cert-chain.pem"), "-key", str(certs / "key.pem")]
    argv += ["-CAfile", str(certs / "root-cert.pem"), "-ign_eof", "-quiet"]
    p = subprocess.run(
        lb.cmd(lb.net, *argv), input="GET / HTTP/1.0\r\n\r\n", capture_output=True, text=True, timeout=30, check=False
    )
    return p.stdout + p.stderr


def foreign(d: Path, sa: str, trust_domain: str = "cluster.local", ca: CertificateAuthority | None = None) -> Path:
    """A workload certificate for default/<sa> in ``trust_domain``, from ``ca`` (else a CA of its own)."""
    ca = ca or CertificateAuthority(d.parent / f"{d.name}-ca", trust_domain=trust_domain)
    return issue(ca, d, sa, trust_domain=trust_domain).dir


def pcap_has(pcap: Path, marker: str) -> bool:
    return marker.encode() in pcap.read_bytes()


def packets(lb: Lab, pcap: Path, host: str) -> int:
    out = subprocess.run(
        ["tcpdump", "-nn", "-r", str(pcap), f"tcp and host {host} and port {SVC_PORT}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    return len(out.splitlines())


# Its own budget is 120 s (the last assertion); the timeout leaves room for that message.
@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_vm_end_to_end_with_mtls(shared_dir: Path, backend: str) -> None:
    require_root_tools("nft" if backend == "nftables" else "iptables", "tcpdump", "openssl")
    t0 = time.monotonic()
    with lab() as lb:
        d = shared_dir
        m = MtlsMesh(lb, d, backend)
        lb.etc(lb.vm, "resolv.conf", f"nameserver {NET4}\n")
        # The mesh CA and token keys live in the control plane's data directory (made here first,
        # as `pymesh token create --data-dir` would, so the test can issue the pods' certificates).
        ca = CertificateAuthority(m.cp_dir / "ca")
        token = TokenAuthority(m.cp_dir / "tokens").create("default", "product")
        for tag, ip in PODS.items():
            certs = workload(ca, d / tag, "product")
            p = subprocess.Popen(
                lb.cmd(lb.net, sys.executable, PEER, "pod", str(certs), tag, f"{ip}:{SVC_PORT}"),
                stdout=subprocess.PIPE, text=True, env=lb.env,
            )  # fmt: skip
            lb.procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", f"pod {tag} did not start"
        # guarded-0 declares serviceAccountName product but holds an "intruder" certificate.
        intruder = workload(ca, d / "guarded", "intruder")
        p = subprocess.Popen(
            lb.cmd(lb.net, sys.executable, PEER, "pod", str(intruder), "guarded", f"{GUARDED_POD}:{SVC_PORT}"),
            stdout=subprocess.PIPE, text=True, env=lb.env,
        )  # fmt: skip
        lb.procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        m.http_server(lb.net, "plain", f"{PLAIN_POD}:{SVC_PORT}")
        mesh_config(d / "mesh")
        m.start_cp()

        m.http_server(lb.vm, "vm", f"{VM4}:{SVC_PORT}", uid=APP_UID)
        vm = write_vm_files(d / "vm", SECURE_PORT, ip=VM4, probe=PROBE)
        (vm / "hosts").write_text(f"{NET4} istiod.istio-system.svc\n")
        (vm / "root-cert.pem").write_text(ca.root_pem)
        (vm / "istio-token").write_text(token + "\n")
        (d / "state").mkdir(mode=0o777)
        (d / "state").chmod(0o777)

        pcap = d / "veth.pcap"
        dump = subprocess.Popen(
            lb.cmd(lb.vm, "tcpdump", "-Z", "root", "-i", "v" + lb.vm[2:], "-U", "-s", "0", "-w", str(pcap), "tcp"),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        lb.procs.append(dump)
        assert dump.stderr is not None and "listening on" in dump.stderr.readline()

        m.start_agent()
        m.saw(f"capture rules installed ({backend})")
        m.saw(f"mTLS identity {PRODUCT}")
        m.saw("inbound peer authentication PERMISSIVE")
        wait_until(lambda: m.healthy() is True, timeout=20)

        # Over mTLS to both STRICT pods and (through its own inbound) the VM, in thirds.
        wait_until(lambda: backends_are(m, {"pod-a", "pod-b", "vm"}), timeout=20)
        assert_thirds(m.requests(60), 60)
        # An endpoint whose certificate is not its EDS service_account: refused, nothing served.
        guarded = m.requests(3, GUARDED_VIP)
        assert "guarded" not in guarded and sum(guarded.values()) == 3, guarded
        # The control case: a tlsMode=disabled service is reached in plaintext.
        assert m.requests(3, PLAIN_VIP, f"/{PLAIN_MARKER}") == {"plain": 3}
        # PERMISSIVE: a plaintext client from the cluster namespace reaches the VM app.
        assert cluster_get(lb, "/") == {"status": 200, "body": "vm"}

        time.sleep(1.0)  # -U: every packet is written; give the last ones time to land
        dump.terminate()
        dump.wait(10)
        for tag, ip in PODS.items():
            assert packets(lb, pcap, ip) > 40, f"no traffic to {tag} captured"
        assert not pcap_has(pcap, MARKER), "the request marker crossed the veth in plaintext"
        assert pcap_has(pcap, PLAIN_MARKER), "the capture does not see plaintext payloads (control case)"

        # The namespace goes STRICT: a targeted push; plaintext is refused, mesh mTLS gets through.
        (d / "mesh" / "ns-policy.yaml").write_text(policy("default", "STRICT"))
        m.saw("inbound peer authentication STRICT")
        refused = cluster_get(lb, "/")
        assert "error" in refused, refused
        reviews = workload(ca, d / "reviews", "reviews")
        assert cluster_get(lb, "/", (reviews, PRODUCT)) == {"status": 200, "body": "vm"}

        # openssl s_client: a mesh certificate gets the page; another trust domain or another CA does not.
        assert "200 OK" in s_client(lb, reviews) and "vm" in s_client(lb, reviews)
        evil = CertificateAuthority(m.cp_dir / "ca", trust_domain="evil.example")  # the mesh root, another domain
        other_td = foreign(d / "other-td", "product", "evil.example", evil)
        assert "200 OK" not in s_client(lb, other_td)
        assert "200 OK" not in s_client(lb, foreign(d / "other-ca", "product"))

        # The VM's own endpoint is still reached over mTLS through its now STRICT inbound.
        assert_thirds(m.requests(30), 30)

        m.stop_agent()
        assert "pymesh" not in rules(lb, backend)
    assert not Path("/etc/netns", lb.vm).exists() and not Path(f"/run/netns/{lb.vm}").exists()
    assert time.monotonic() - t0 < 120
