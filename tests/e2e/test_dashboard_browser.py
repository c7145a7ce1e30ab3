"""The dashboard in a real browser: Debian's Chromium, headless, driven by selenium through
Debian's chromedriver (nothing downloaded), against the VM end-to-end mesh of
tests/support/e2e.py in its two namespaces:

    "cluster" namespace (10.77.0.1): the control plane with its CA and TLS port, its
        monitoring port (the dashboard) on 10.77.0.1:15014, one pod backend that only speaks
        STRICT mTLS; the browser runs here too (support.netns.inside)
    "vm" namespace (10.77.0.2): `pymesh agent --capture nftables --control-plane-auth
        MUTUAL_TLS` with its status port on 10.77.0.2:15020 (so the control plane can read its
        metrics: no Prometheus here) and the VM's workload, probed

The page shows the VM with Healthy=True, then unhealthy within the refresh interval once its
probe fails; a proxy that NACKs (an ADS stream opened by a subprocess in the cluster
namespace) with its message; an invalid file with its field; and, after requests from the VM,
an edge VM → product in the traffic graph, marked mTLS. Screenshots go to build/ (CI's artifacts).

Needs root (network namespaces, capture rules, fixed uids via setpriv), iproute2, nft,
chromium, chromedriver and selenium: without them it is skipped with the reason, or fails
when PYMESH_REQUIRE_ROOT_TESTS is set (CI).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pymesh.controlplane.ca.ca import CertificateAuthority
from pymesh.controlplane.ca.tokens import TokenAuthority
from support.agent import write_vm_files
from support.e2e import ENTRY, PROBE, SVC_PORT, VIP, XDS_PORT, Mesh, vm_group_yaml
from support.netns import APP_UID, EXTRA4, NET4, VM4, Lab, inside, lab, require_root_tools
from support.paths import ROOT, TESTS
from support.peers import E2E_MTLS_PEER
from support.sec import workload
from support.system import require_module, require_tools

pytestmark = pytest.mark.netns

MONITORING = f"{NET4}:15014"
SECURE_PORT = 15012  # the control plane's TLS port: xDS and certificates for MUTUAL_TLS agents
REFRESH = 2.0  # the page's REFRESH_MS
PRODUCT = "product.default.svc.cluster.local"
NACK = "cluster outbound|18080||product.default.svc.cluster.local: bad circuit breaker"
BAD_PORT = """\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: typo, namespace: default}
spec: {address: 10.1.1.1, ports: {http: 99999}}
"""
# A proxy in the cluster namespace that asks for clusters and NACKs them, then holds its stream.
NACKER = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from support.cp import AdsStream, vm_node
from pymesh.mesh.xds import CDS
s = AdsStream({XDS_PORT}, vm_node("10.77.0.9", group="", name="nacker"), host={NET4!r})
s.send(CDS)
r = s.recv()
s.send(CDS, version=r.version_info, nonce=r.nonce, error={NACK!r})
print("nacked", flush=True)
sys.stdin.read()
"""


class DashboardMesh(Mesh):
    """The control plane with its CA and TLS port (tests/e2e/test_vm_mtls.py's) and the
    dashboard; the agent on MUTUAL_TLS, so its relay holds a workload identity and speaks mTLS
    to the STRICT pod."""

    cp_banners = ("xds ", "xds-tls ", "monitoring ")
    # istio-agent's status port on the VM's address: the control plane scrapes it for the graph.
    agent_flags = ("--status-listen", f"{VM4}:15020", "--control-plane-auth", "MUTUAL_TLS")

    def cp_flags(self) -> list[str]:
        tls = ["--secure-listen", f"{NET4}:{SECURE_PORT}"]
        return [*super().cp_flags(), *tls, "--monitoring-listen", MONITORING]


def mesh_config(d: Path) -> None:
    """product on a TCP port (its pod and the VM behind it, both with tlsMode istio and the
    product account): the relays count TCP connections (istio_tcp_*), an edge in bytes/s."""
    d.mkdir(parents=True)
    group = vm_group_yaml(service_account="product").replace(
        f"ports: {{http: {SVC_PORT}}}", f"ports: {{tcp: {SVC_PORT}}}"
    )
    assert f"tcp: {SVC_PORT}" in group
    (d / "product.yaml").write_text(
        f"""apiVersion: v1
kind: Service
metadata: {{name: product, namespace: default}}
spec: {{clusterIP: {VIP}, selector: {{app: product}}, ports: [{{name: tcp, port: {SVC_PORT}}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: product-pod, namespace: default, labels: {{app: product, security.istio.io/tlsMode: istio}}}}
spec: {{serviceAccountName: product, containers: [{{name: c, ports: [{{name: tcp, containerPort: {SVC_PORT}}}]}}]}}
status: {{phase: Running, podIP: {EXTRA4[0]}, conditions: [{{type: Ready, status: "True"}}]}}
{group}"""
    )
    (d / "typo.yaml").write_text(BAD_PORT)


@contextmanager
def browser(lb: Lab) -> Iterator[Any]:
    """Headless Chromium in the cluster namespace: chromedriver is started from this thread
    while it is in the namespace, so the driver, the browser and selenium's own connections
    to the driver are all there."""
    require_tools("chromium", "chromedriver")
    webdriver = require_module("selenium.webdriver", "the dashboard's browser test")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        opts.add_argument(a)
    with inside(lb.net):
        driver = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
        try:
            yield driver
        finally:
            driver.quit()


def rows(driver: Any, table: str) -> list[list[str]]:
    """The table's body as the page shows it, cell by cell."""
    got: list[list[str]] = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(r => [...r.cells].map(c => c.textContent));",
        f"#{table} tbody tr",
    )
    return got


def shows(
    driver: Any, what: str, predicate: Callable[[], bool], timeout: float, detail: Callable[[], str] = str
) -> float:
    """Waits until the page shows it (the page refreshes itself: nothing is reloaded here);
    returns how long it took."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            shot(driver, "failed")
            raise AssertionError(f"the page never showed {what} in {timeout} s {detail()}")
        time.sleep(0.1)
    return time.monotonic() - t0


def shot(driver: Any, name: str) -> None:
    build = ROOT / "build"
    build.mkdir(exist_ok=True)
    driver.save_screenshot(str(build / f"dashboard-{name}.png"))


def entry_row(driver: Any) -> list[str] | None:
    return next((r for r in rows(driver, "workloadentries") if r[0] == f"default/{ENTRY}"), None)


def healthy_is(driver: Any, value: str) -> bool:
    r = entry_row(driver)
    return r is not None and r[8] == value


@pytest.mark.timeout(120)
def test_dashboard_in_a_browser(shared_dir: Path) -> None:
    require_root_tools("nft")
    require_tools("chromium", "chromedriver")
    require_module("selenium", "the dashboard's browser test")
    t0 = time.monotonic()
    with lab() as lb:
        d = shared_dir
        m = DashboardMesh(lb, d, "nftables")
        # The mesh CA and token keys in the control plane's data directory (as `pymesh token
        # create --data-dir` makes them); the pod terminates STRICT mTLS with its certificate.
        ca = CertificateAuthority(m.cp_dir / "ca")
        token = TokenAuthority(m.cp_dir / "tokens").create("default", "product")
        pod = subprocess.Popen(
            lb.cmd(lb.net, sys.executable, E2E_MTLS_PEER, "pod", str(workload(ca, d / "pod", "product")), "pod",
                   f"{EXTRA4[0]}:{SVC_PORT}"),
            stdout=subprocess.PIPE, text=True, env=lb.env,
        )  # fmt: skip
        lb.procs.append(pod)
        assert pod.stdout is not None and pod.stdout.readline().strip() == "ready", "the pod did not start"
        mesh_config(d / "mesh")
        m.start_cp()
        m.http_server(lb.vm, "vm", f"{VM4}:{SVC_PORT}", uid=APP_UID, failflag=str(m.failflag))
        vm = write_vm_files(d / "vm", SECURE_PORT, ip=VM4, probe=PROBE)
        (vm / "hosts").write_text(f"{NET4} istiod.istio-system.svc\n")
        (vm / "root-cert.pem").write_text(ca.root_pem)
        (vm / "istio-token").write_text(token + "\n")
        (d / "state").mkdir(mode=0o777)
        (d / "state").chmod(0o777)
        m.start_agent()
        nacker = subprocess.Popen(
            lb.cmd(lb.net, sys.executable, "-c", NACKER),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=lb.env,
        )
        lb.procs.append(nacker)
        assert nacker.stdout is not None and nacker.stdout.readline().strip() == "nacked"

        with browser(lb) as driver:
            driver.get(f"http://{MONITORING}/")
            assert driver.title == "pymesh"

            # The VM, registered and healthy.
            shows(driver, "the VM healthy", lambda: healthy_is(driver, "True"), timeout=20)
            r = entry_row(driver)
            assert r is not None and r[1] == "product-vm (auto)" and r[2] == VM4 and r[4] == "yes", r
            shows(driver, "the VM serving product", lambda: (entry_row(driver) or [""] * 11)[10] == PRODUCT, timeout=10)
            vm_endpoint = [s for s in rows(driver, "services") if s[0] == PRODUCT and s[3] == f"default/{ENTRY}"]
            assert vm_endpoint and vm_endpoint[0][2] == "WorkloadEntry" and vm_endpoint[0][7] == "HEALTHY"

            # The NACKing proxy with its message; the VM's proxy synced.
            nack_row = lambda: next((p for p in rows(driver, "proxies") if p[0] == "nacker.default"), None)  # noqa: E731
            shows(driver, "the NACK", lambda: nack_row() is not None, timeout=10)
            p = nack_row()
            assert p is not None and p[2] == "STALE (NACK)" and p[9] == f"CDS: {NACK}", p
            vm_proxy = next(p for p in rows(driver, "proxies") if p[0] == "vm-1.default")
            assert vm_proxy[2] == "SYNCED", vm_proxy

            # The invalid file, with its object and field.
            errors = rows(driver, "config-errors")
            assert [(Path(e[0]).name, e[1], e[2], e[3]) for e in errors] == [
                ("typo.yaml", "WorkloadEntry default/typo", "spec.ports[http]", "must be <= 65535, got 99999")
            ], errors

            # Traffic from the VM to product: an edge VM → product in the graph (the relays'
            # istio_tcp_* series, read from the agent's status port).
            # A rate needs two scrapes of the agent: the first one before the traffic.
            def graph_doc() -> str:  # for a failure's message
                code = (
                    f"import urllib.request as u; print(u.urlopen('http://{MONITORING}/api/v1/graph').read().decode())"
                )
                return lb.run(lb.net, sys.executable, "-c", code)

            source = lambda: driver.find_element("id", "graph-source").text  # noqa: E731
            # The NACKing proxy's address does not exist: that agent is unreachable.
            shows(driver, "the agent read", lambda: "(1 read, 1 unreachable)" in source(), timeout=15, detail=graph_doc)
            counts = m.requests(20)
            # Both endpoints served over mTLS: the pod (its certificate is its Pod's account) and the VM.
            assert sum(counts.values()) == 20 and set(counts) == {"pod", "vm"}, counts

            def vm_to_product() -> list[str] | None:
                return next(
                    (
                        e
                        for e in rows(driver, "graph-edges")
                        if len(e) == 7 and e[1] == PRODUCT and e[2] == "tcp" and not e[3].startswith("0 ")
                    ),
                    None,
                )

            shows(driver, "an edge to product", lambda: vm_to_product() is not None, timeout=10, detail=graph_doc)
            edge = vm_to_product()
            assert edge is not None and edge[0] == "default/product-vm", edge
            # Over mTLS (the VM's relay held its identity): marked so, in the table and the drawing.
            assert edge[6] == "yes", edge
            drawn = driver.execute_script(
                "return [...document.querySelectorAll('#graph g.edge')].map(g => [g.dataset.source, g.dataset.target,"
                " g.textContent]);"
            )
            vm_node = "workload:default/product-vm"
            assert any(
                s == vm_node and t == f"service:{PRODUCT}" and label.startswith("mTLS ") and "B/s" in label
                for s, t, label in drawn
            ), drawn
            shot(driver, "healthy")

            # The probe fails: unhealthy on the page within the probe's failures (1 s period) and
            # one refresh of the page.
            m.failflag.touch()
            took = shows(driver, "the VM unhealthy", lambda: healthy_is(driver, "False"), timeout=10)
            r = entry_row(driver)
            assert r is not None and r[9] != "-" and r[10] == "-", r  # the probe's message; no longer serving
            shot(driver, "unhealthy")
            print(f"unhealthy on the page {took:.1f} s after the probe started failing")
    assert time.monotonic() - t0 < 60
