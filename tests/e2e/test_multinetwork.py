"""The seed's second topology end to end: the VM on another network, every
pod <-> VM connection through an east-west gateway, and the VM's control-plane
traffic (xDS and certificate signing) through the gateway's 15012. Three
network namespaces built here, with no route between the two networks:

    "a" (network-a, 10.80.0.1): the control plane (xDS 15010 plaintext for the
        gateways, 15012 TLS); pods product-a/-b (10.81.0.1/.2, STRICT mTLS),
        reviews-0 (10.81.0.4, mTLS, only on network-a), plain-0 (10.81.0.3, no
        sidecar); a pod sidecar: `pymesh agent` capturing the service VIPs
        (10.96.0.0/16) of an app user, on network-a
    "gw" (10.80.0.254 on a's side, 10.90.0.254 on b's; IP forwarding off):
        `pymesh gateway --network network-a` on 10.90.0.254 (15443, and 15012
        forwarded to the control plane) and `pymesh gateway --network network-b`
        on 10.80.0.254 (15443)
    "b" (network-b, 10.90.0.1): the VM: `pymesh agent --capture nftables
        --control-plane-auth MUTUAL_TLS` whose discoveryAddress is the gateway,
        ISTIO_META_NETWORK=network-b as istioctl's --network writes it; its app

meshNetworks: network-a (the registry's pods) is reached from b at 10.90.0.254:15443,
network-b (10.90.0.0/24) from a at 10.80.0.254:15443.

Checked: a direct connect between the networks fails; the VM bootstraps through
the gateway (certificate, xDS), auto-registers with network-b and passes its probe;
the VM's calls to product reach network-a through the gateway and its own endpoint
directly (a third per request), over mTLS (tcpdump on both gateway legs: the
request marker never in plaintext, the SNI outbound_.18080_._.product... in the
ClientHellos); the pod sidecar's calls reach the VM through the gateway; an endpoint
without mTLS across networks is not offered; stopping a gateway fails calls that
need it fast while same-network endpoints keep serving.

Needs root, iproute2, nft and tcpdump (else skipped with the reason; CI sets
PYMESH_REQUIRE_ROOT_TESTS and fails instead).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pymesh.controlplane.ca.ca import CertificateAuthority
from pymesh.controlplane.ca.tokens import TokenAuthority
from support.agent import write_vm_files
from support.e2e import HTTP_PEER, SVC_PORT, pod_yaml, service_yaml, vm_group_yaml
from support.netns import APP_UID, as_agent_user, require_root_tools, sh
from support.peers import E2E_MTLS_PEER
from support.procs import Lines, reap
from support.sec import workload
from support.wait import wait_until

pytestmark = pytest.mark.netns

A_IP, GW_A, GW_B, VM_IP = "10.80.0.1", "10.80.0.254", "10.90.0.254", "10.90.0.1"
PODS = {"pod-a": "10.81.0.1", "pod-b": "10.81.0.2"}
PLAIN_POD, REVIEWS_POD = "10.81.0.3", "10.81.0.4"
VIP, PLAIN_VIP, REVIEWS_VIP = "10.96.0.20", "10.96.0.21", "10.96.0.22"
PRODUCT = "spiffe://cluster.local/ns/default/sa/product"
SNI = f"outbound_.{SVC_PORT}_._.product.default.svc.cluster.local"
MARKER = "mnet-marker-" + uuid.uuid4().hex
PROBE = {"httpGet": {"path": "/healthz", "port": SVC_PORT}, "periodSeconds": 1, "timeoutSeconds": 1}
MESH = ", security.istio.io/tlsMode: istio"


class Lab:
    """Namespaces a, gw and b; processes started in them are reaped at teardown."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:5]
        self.a, self.gw, self.b = f"pma{tag}", f"pmg{tag}", f"pmb{tag}"
        self.procs: list[subprocess.Popen[str]] = []
        self.env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
        self.dev = {"a": f"va{tag}", "ga": f"ga{tag}", "gb": f"gb{tag}", "b": f"vb{tag}"}

    def setup(self) -> None:
        d = self.dev
        for ns in (self.a, self.gw, self.b):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # A new namespace forwards nothing (net.ipv4.ip_forward 0); said explicitly: the
        # gateway's proxies are the only way between the networks.
        sh("ip", "netns", "exec", self.gw, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward")
        sh("ip", "link", "add", d["a"], "netns", self.a, "type", "veth", "peer", "name", d["ga"], "netns", self.gw)
        sh("ip", "link", "add", d["b"], "netns", self.b, "type", "veth", "peer", "name", d["gb"], "netns", self.gw)
        for ns, dev, addr in (
            (self.a, d["a"], A_IP),
            (self.gw, d["ga"], GW_A),
            (self.gw, d["gb"], GW_B),
            (self.b, d["b"], VM_IP),
        ):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        for ip in (*PODS.values(), PLAIN_POD, REVIEWS_POD):
            sh("ip", "-n", self.a, "addr", "add", f"{ip}/32", "dev", "lo")
        sh("ip", "-n", self.gw, "route", "add", "10.81.0.0/24", "via", A_IP)
        sh("ip", "-n", self.a, "route", "add", "default", "via", GW_A)
        sh("ip", "-n", self.b, "route", "add", "default", "via", GW_B)

    def teardown(self) -> None:
        for p in self.procs:
            reap(p)
        for ns in (self.a, self.gw, self.b):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

    def cmd(self, ns: str, *argv: str, uid: int | None = None) -> list[str]:
        prefix = ["ip", "netns", "exec", ns]
        if uid is not None:
            prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        return [*prefix, *argv]

    def run(self, ns: str, *argv: str, uid: int | None = None, timeout: float = 60) -> str:
        p = subprocess.run(self.cmd(ns, *argv, uid=uid), capture_output=True, text=True, timeout=timeout, env=self.env)
        if p.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} in {ns} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
        return p.stdout

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[str]:
        p = subprocess.Popen(argv, text=True, env=self.env, **kw)
        self.procs.append(p)
        return p

    def ready_line(self, ns: str, *argv: str, uid: int | None = None) -> None:
        p = self.popen(self.cmd(ns, *argv, uid=uid), stdout=subprocess.PIPE)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", f"{argv[:3]} did not start"

    def requests(self, ns: str, vip: str, n: int, path: str = "/") -> dict[str, int]:
        """n HTTP requests from the app user of ``ns``, one connection each; counts by body."""
        out = self.run(ns, sys.executable, HTTP_PEER, "get", vip, str(SVC_PORT), str(n), path, uid=APP_UID)
        counts: dict[str, int] = json.loads(out.strip().splitlines()[-1])
        return counts

    def connect_fails(self, ns: str, host: str) -> bool:
        code = (
            "import socket,sys\n"
            f"try: socket.create_connection(({host!r}, {SVC_PORT}), timeout=2)\n"
            "except OSError: sys.exit(0)\n"
            "sys.exit(1)\n"
        )
        return subprocess.run(self.cmd(ns, sys.executable, "-c", code), env=self.env, timeout=30).returncode == 0


@contextmanager
def lab() -> Iterator[Lab]:
    require_root_tools("nft", "tcpdump")
    lb = Lab()
    try:
        lb.setup()
        yield lb
    finally:
        lb.teardown()


def mesh_config(d: Path) -> Path:
    d.mkdir(parents=True)
    docs = [service_yaml("product", VIP)]
    docs += [pod_yaml(f"product-{t}", "product", ip, extra_labels=MESH) for t, ip in PODS.items()]
    docs += [service_yaml("plain", PLAIN_VIP), pod_yaml("plain-0", "plain", PLAIN_POD)]
    docs += [service_yaml("reviews", REVIEWS_VIP), pod_yaml("reviews-0", "reviews", REVIEWS_POD, extra_labels=MESH)]
    docs.append(vm_group_yaml(service_account="product"))
    (d / "services.yaml").write_text("".join(docs))
    return d


NETWORKS = f"""networks:
  network-a:
    endpoints: [{{fromRegistry: Kubernetes}}]
    gateways: [{{address: {GW_B}, port: 15443}}]
  network-b:
    endpoints: [{{fromCidr: "10.90.0.0/24"}}]
    gateways: [{{address: {GW_A}, port: 15443}}]
"""


def assert_thirds(counts: dict[str, int], n: int, tags: set[str]) -> None:
    assert sum(counts.values()) == n and set(counts) == tags, counts
    for tag, k in counts.items():
        assert abs(k - n / 3) <= n / 6, (tag, counts)


def entry(lb: Lab, cp_dir: Path) -> dict[str, Any] | None:
    argv = [sys.executable, "-m", "pymesh", "get", "workloadentries", f"product-vm-{VM_IP}-network-b", "-o", "json"]
    p = subprocess.run([*argv, "--data-dir", str(cp_dir)], capture_output=True, text=True, env=lb.env)
    if p.returncode != 0:
        return None
    doc: dict[str, Any] = json.loads(p.stdout)
    return doc


def healthy(doc: dict[str, Any] | None) -> bool:
    conds = (doc or {}).get("status", {}).get("conditions", [])
    return any(c.get("type") == "Healthy" and c.get("status") == "True" for c in conds)


class Agent:
    """A `pymesh agent` as the agent user with its printed lines."""

    def __init__(self, lb: Lab, ns: str, files: Path, state: Path, extra: list[str]) -> None:
        state.mkdir(mode=0o777)
        state.chmod(0o777)
        argv = [sys.executable, "-m", "pymesh", "agent", "--config-dir", str(files), "--capture", "nftables"]
        argv += ["--outbound-listen", "127.0.0.1:15001", "--dns-listen", "127.0.0.1:15053", "--backoff-max", "1"]
        argv += ["--state-dir", str(state), "--control-plane-auth", "MUTUAL_TLS", *extra]
        self.log = state.parent / f"{state.name}.log"
        with self.log.open("w") as err:  # the agent's log, read when something fails
            self.proc = lb.popen(as_agent_user(lb.cmd(ns, *argv)), stdout=subprocess.PIPE, stderr=err)
        self.out = Lines(self.proc)

    def saw(self, text: str, timeout: float = 30) -> None:
        try:
            wait_until(lambda: self.out.saw(text), timeout=timeout)
        except AssertionError:
            log = self.log.read_text()[-3000:]
            raise AssertionError(f"agent never said {text!r}: {self.out.seen}\n{log}") from None


def gateway(lb: Lab, d: Path, network: str, at: str, forward: str) -> tuple[subprocess.Popen[str], Lines]:
    files = write_vm_files(d / f"gw-{network}", 15010, group="", ip=at)
    argv = [sys.executable, "-m", "pymesh", "gateway", "--config-dir", str(files), "--network", network]
    argv += ["--xds-address", f"{A_IP}:15010", "--control-plane-auth", "NONE", "--pod-name", f"gw-{network}"]
    argv += ["--sni-listen", f"{at}:15443", "--forward", forward, "--status-listen", f"{at}:15021"]
    argv += ["--state-dir", str(d / f"gw-{network}-state")]
    log = d / f"gw-{network}.log"
    with log.open("w") as err:
        p = lb.popen(lb.cmd(lb.gw, *argv), stdout=subprocess.PIPE, stderr=err)
    out = Lines(p)
    try:
        wait_until(lambda: out.saw("tables: 3 clusters"), timeout=30)
    except AssertionError:
        raise AssertionError(f"gateway {network}: {out.seen}\n{log.read_text()[-3000:]}") from None
    code = f"import urllib.request as u; print(u.urlopen('http://{at}:15021/healthz/ready', timeout=5).status)"
    ready = lb.run(lb.gw, sys.executable, "-c", code).strip()
    assert ready == "200", ready
    return p, out


def pcap_bytes(pcap: Path) -> bytes:
    return pcap.read_bytes() if pcap.exists() else b""


@pytest.mark.timeout(300)
def test_vm_on_another_network_through_the_east_west_gateway(shared_dir: Path) -> None:
    require_root_tools("nft", "tcpdump")
    with lab() as lb:
        d = shared_dir
        cp_dir = d / "cp"
        ca = CertificateAuthority(cp_dir / "ca")
        tokens = TokenAuthority(cp_dir / "tokens")
        mesh_config(d / "mesh")
        (d / "networks.yaml").write_text(NETWORKS)

        # Pods on network-a.
        for tag, ip in PODS.items():
            lb.ready_line(lb.a, sys.executable, E2E_MTLS_PEER, "pod", str(workload(ca, d / tag, "product")), tag,
                          f"{ip}:{SVC_PORT}")  # fmt: skip
        lb.ready_line(lb.a, sys.executable, E2E_MTLS_PEER, "pod", str(workload(ca, d / "reviews", "reviews")),
                      "reviews", f"{REVIEWS_POD}:{SVC_PORT}")  # fmt: skip
        lb.ready_line(lb.a, sys.executable, HTTP_PEER, "serve", "plain", f"{PLAIN_POD}:{SVC_PORT}")

        # The control plane on network-a.
        argv = [sys.executable, "-m", "pymesh", "controlplane", "--config", str(d / "mesh"), "--data-dir", str(cp_dir)]
        argv += ["--xds-listen", f"{A_IP}:15010", "--insecure-xds", "--secure-listen", f"{A_IP}:15012"]
        argv += ["--mesh-networks", str(d / "networks.yaml"), "--debounce", "0.05", "--grace-period", "4"]
        cp = lb.popen(lb.cmd(lb.a, *argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert cp.stdout is not None
        for banner in ("xds ", "xds-tls "):
            assert cp.stdout.readline().startswith(banner)

        # No way between the networks but the gateway's proxies.
        assert lb.connect_fails(lb.b, PODS["pod-a"])
        assert lb.connect_fails(lb.a, VM_IP)

        # The gateways: network-a's on b's side (with the control plane's 15012), network-b's on a's side.
        gw_a, gw_a_out = gateway(lb, d, "network-a", GW_B, f"{GW_B}:15012={A_IP}:15012")
        gateway(lb, d, "network-b", GW_A, "")
        assert gw_a_out.saw(f"forward-15012 on {GW_B}:15012")

        # Capture on both gateway legs while the VM joins and calls.
        pcaps = {leg: d / f"{leg}.pcap" for leg in ("ga", "gb")}
        for leg, pcap in pcaps.items():
            dump = lb.popen(
                lb.cmd(lb.gw, "tcpdump", "-Z", "root", "-i", lb.dev[leg], "-U", "-s", "0", "-w", str(pcap), "tcp"),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            assert dump.stderr is not None and "listening on" in dump.stderr.readline()

        # The VM on network-b: discoveryAddress is the gateway (istioctl's files with --network).
        lb.ready_line(lb.b, sys.executable, HTTP_PEER, "serve", "vm", f"{VM_IP}:{SVC_PORT}", uid=APP_UID)
        vm = write_vm_files(d / "vm", 15012, ip=VM_IP, probe=PROBE, extra_env={"ISTIO_META_NETWORK": "network-b"})
        (vm / "hosts").write_text(f"{GW_B} istiod.istio-system.svc\n")
        (vm / "root-cert.pem").write_text(ca.root_pem)
        (vm / "istio-token").write_text(tokens.create("default", "product") + "\n")
        dry = json.loads(lb.run(lb.b, sys.executable, "-m", "pymesh", "agent", "--config-dir", str(vm),
                                "--dry-run", "-o", "json"))  # fmt: skip
        assert dry["network"]["name"] == "network-b"
        assert dry["network"]["control_plane_via"] == "istiod.istio-system.svc:15012"
        agent = Agent(lb, lb.b, vm, d / "vm-state", ["--pod-name", "vm-1", "--status-listen", "127.0.0.1:15020"])
        agent.saw("capture rules installed (nftables)")
        agent.saw(f"mTLS identity {PRODUCT}")  # signed through the gateway's 15012
        agent.saw("xDS connected")
        try:
            wait_until(lambda: healthy(entry(lb, cp_dir)), timeout=30)
        except AssertionError:
            raise AssertionError(
                f"not healthy: {entry(lb, cp_dir)}\n{agent.out.seen}\n{agent.log.read_text()[-3000:]}"
            ) from None
        doc = entry(lb, cp_dir)
        assert doc is not None and doc["spec"]["network"] == "network-b", doc

        # VM -> product: network-a's pods through the gateway, its own endpoint directly, over
        # mTLS. The VM's HTTP path balances per request over its endpoint and the gateway
        # (weight 2: two pods behind it), so a third stays on the VM; the gateway balances per
        # connection and the HTTP path keeps its connection to it, so which pod answers is the
        # gateway's pick for that connection (as with Envoy through an east-west gateway).
        wait_until(lambda: {"vm"} < set(lb.requests(lb.b, VIP, 12)) <= {"pod-a", "pod-b", "vm"}, timeout=30)
        counts = lb.requests(lb.b, VIP, 30, f"/{MARKER}")
        assert sum(counts.values()) == 30 and set(counts) <= {"pod-a", "pod-b", "vm"}, counts
        assert abs(counts.get("vm", 0) - 10) <= 5, counts
        # Without mTLS an endpoint is not offered across networks: plain-0 is unreachable from b.
        plain = lb.requests(lb.b, PLAIN_VIP, 2)
        assert "plain" not in plain and all(k.startswith("error") for k in plain), plain

        # A pod sidecar on network-a (capturing the service VIPs only) -> product: the VM through
        # the other gateway.
        side = write_vm_files(
            d / "sidecar", 15012, group="", ip=A_IP,
            extra_env={"ISTIO_META_NETWORK": "network-a", "ISTIO_SERVICE_CIDR": "10.96.0.0/16",
                       "ISTIO_INBOUND_PORTS": "", "ISTIO_META_DNS_CAPTURE": "false", "SERVICE_ACCOUNT": "sleep"},
        )  # fmt: skip
        (side / "hosts").write_text(f"{A_IP} istiod.istio-system.svc\n")
        (side / "root-cert.pem").write_text(ca.root_pem)
        (side / "istio-token").write_text(tokens.create("default", "sleep") + "\n")
        sidecar = Agent(lb, lb.a, side, d / "sidecar-state", ["--pod-name", "sleep-0", "--status-listen", ""])
        sidecar.saw("capture rules installed (nftables)")
        sidecar.saw("mTLS identity spiffe://cluster.local/ns/default/sa/sleep")
        wait_until(lambda: set(lb.requests(lb.a, VIP, 12)) == {"pod-a", "pod-b", "vm"}, timeout=30)
        assert_thirds(lb.requests(lb.a, VIP, 30, f"/{MARKER}"), 30, {"pod-a", "pod-b", "vm"})

        time.sleep(1.0)
        for leg, pcap in pcaps.items():
            data = pcap_bytes(pcap)
            assert SNI.encode() in data, f"no ClientHello for {SNI} on the gateway's {leg} leg"
            assert MARKER.encode() not in data, f"the request marker crossed the gateway's {leg} leg in plaintext"

        # The gateway to network-a stops: calls needing it fail fast, same-network ones keep serving.
        gw_a.send_signal(signal.SIGTERM)
        assert gw_a.wait(15) == 0
        assert lb.requests(lb.b, VIP, 9) == {"vm": 9}
        t0 = time.monotonic()
        failed = lb.requests(lb.b, REVIEWS_VIP, 3)
        elapsed = time.monotonic() - t0
        assert all(k.startswith("error") for k in failed), failed
        # Refused at once (no listener), not the 10 s connect timeout per attempt.
        assert elapsed < 8, elapsed
        # The pod sidecar keeps reaching product (its pods directly, the VM through network-b's gateway).
        assert set(lb.requests(lb.a, VIP, 12)) == {"pod-a", "pod-b", "vm"}
