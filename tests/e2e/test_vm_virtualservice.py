"""A VirtualService end to end on a VM: the real control plane reading a config
directory, the real agent capturing with nftables, the native outbound proxy
routing each request, in network namespaces built here (tests/support/netns.py):

    "cluster" namespace (lab.net, 10.77.0.1): the control plane (xDS on
        10.77.0.1:15010); product's pods v1 (10.78.0.1) and v2 (10.78.0.2),
        HTTP/1.1 backends that echo what they received (port 18080, named
        ``http``); greeter's two pods, gRPC servers on the same addresses
        (port 50051, named ``grpc``)
    "vm" namespace (lab.vm, 10.77.0.2): `pymesh agent --capture nftables` as its
        own user, auto-registered into WorkloadGroup greeter-vm, so the VM's own
        gRPC server (10.77.0.2:50051) is greeter's third endpoint; the clients
        (curl, grpcio) run as the application user

product has a DestinationRule with subsets v1/v2 (by the pods' ``version``
label) and a VirtualService (networking.istio.io/v1): ``end-user: jason`` to
v2; ``/fault`` aborted with 503 for half the requests; ``/slow`` with a 0.3 s
timeout; everything else 90/10 v1/v2 with retries. Then, as the application
user in the vm namespace:

1. one curl keep-alive connection carries 300 requests that split 90/10 (a
   chi-square test: split per connection they would all go one way); the
   canary header reaches v2 only; /fault answers 503 at the configured rate
   (a binomial bound); /slow answers 504 after about 0.3 s; every request
   reaches its backend with an ``x-request-id``;
2. gRPC: one grpcio channel to greeter's VIP makes 300 unary RPCs, and each of
   the three endpoints (two pods and the VM itself) serves about a third of
   them: balanced per RPC, which a per-connection (L4) proxy cannot do;
3. telemetry: the agent's ``:15020/stats/prometheus`` holds Istio's
   ``istio_requests_total`` with ``reporter="source"`` for product (200 and the
   fault's 503) and for greeter (``request_protocol="grpc"``), and a real
   Prometheus scraping it answers Kiali's HTTP graph query with the edge
   greeter-vm -> product, and the VM is one workload as source and as
   destination (its WorkloadGroup's name, as istiod names auto-registered entries);
4. the VirtualService file changes while everything runs (to v2 only): the
   routing follows within seconds (an RDS push, nothing restarted); an invalid
   edit is rejected by the control plane (``pymesh get`` names the field) and
   the previous routing keeps serving.

Shares are checked against two-sided p = 1e-6 bounds (support/shares.py), so a correct mesh
fails one by chance about once in a million runs.

Needs root (network namespaces, capture rules, fixed uids via setpriv), iproute2,
nft, curl, prometheus and grpcio: without them it is skipped with the reason, or
fails when PYMESH_REQUIRE_ROOT_TESTS is set (CI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from support.agent import write_vm_files
from support.curl import Reply, curl_runs
from support.e2e import SVC_PORT, VIP, XDS_PORT, Mesh, pod_yaml
from support.kiali import KIALI_HTTP_GROUP
from support.netns import APP_UID, EXTRA4, NET4, VM4, fetch_status, inside, lab, require_root_tools
from support.shares import CHI2_1DOF_BOUND, chi_square, within_binomial
from support.system import require_module
from support.wait import wait_until

pytestmark = pytest.mark.netns

A, B = EXTRA4[0], EXTRA4[1]
GRPC_VIP, GRPC_PORT = "10.96.0.21", 50051
PRODUCT = "product.default.svc.cluster.local"
GREETER = "greeter.default.svc.cluster.local"
GROUP = "greeter-vm"  # the VM's WorkloadGroup: its workload name in telemetry
URL = f"http://{VIP}:{SVC_PORT}"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def dest(subset: str, weight: int | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"destination": {"host": "product", "subset": subset}}
    if weight is not None:
        d["weight"] = weight
    return d


def virtual_service(default: list[dict[str, Any]], abort_percent: float = 50) -> str:
    """product's VirtualService; ``default``: the last (catch-all) rule's destinations."""
    return yaml.safe_dump(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "product", "namespace": "default"},
            "spec": {
                "hosts": ["product"],
                "http": [
                    {
                        "name": "canary",
                        "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                        "route": [dest("v2")],
                    },
                    {
                        "name": "fault",
                        "match": [{"uri": {"prefix": "/fault"}}],
                        "fault": {"abort": {"httpStatus": 503, "percentage": {"value": abort_percent}}},
                        "route": [dest("v1")],
                    },
                    {"name": "slow", "match": [{"uri": {"prefix": "/slow"}}], "timeout": "0.3s", "route": [dest("v1")]},
                    {
                        "name": "split",
                        "route": default,
                        "retries": {"attempts": 2, "perTryTimeout": "2s", "retryOn": "5xx,reset,connect-failure"},
                    },
                ],
            },
        }
    )


SPLIT_90_10 = [dest("v1", 90), dest("v2", 10)]


def mesh_config(d: Path) -> Path:
    d.mkdir(parents=True)
    product = f"""apiVersion: v1
kind: Service
metadata: {{name: product, namespace: default}}
spec: {{clusterIP: {VIP}, selector: {{app: product}}, ports: [{{name: http, port: {SVC_PORT}}}]}}
{pod_yaml("product-v1", "product", A, extra_labels=", version: v1")}\
{pod_yaml("product-v2", "product", B, extra_labels=", version: v2")}\
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: product, namespace: default}}
spec:
  host: {PRODUCT}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""
    greeter_pods = "".join(
        f"""---
apiVersion: v1
kind: Pod
metadata: {{name: greeter-{tag}, namespace: default, labels: {{app: greeter}}}}
spec: {{containers: [{{name: c, ports: [{{name: grpc, containerPort: {GRPC_PORT}}}]}}]}}
status: {{phase: Running, podIP: {ip}, conditions: [{{type: Ready, status: "True"}}]}}
"""
        for tag, ip in (("a", A), ("b", B))
    )
    greeter = f"""apiVersion: v1
kind: Service
metadata: {{name: greeter, namespace: default}}
spec: {{clusterIP: {GRPC_VIP}, selector: {{app: greeter}}, ports: [{{name: grpc, port: {GRPC_PORT}}}]}}
{greeter_pods}---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {{name: {GROUP}, namespace: default}}
spec:
  metadata: {{labels: {{app: greeter}}}}
  template: {{serviceAccount: greeter, ports: {{grpc: {GRPC_PORT}}}}}
"""
    (d / "product.yaml").write_text(product)
    (d / "greeter.yaml").write_text(greeter)
    (d / "virtualservice.yaml").write_text(virtual_service(SPLIT_90_10))
    return d


class Vm:
    """The running lab: the mesh's processes and the VM's clients."""

    def __init__(self, m: Mesh) -> None:
        self.m = m
        self.lb = m.lb

    def curl(self, *args: str) -> list[Reply]:
        """Every response of one curl run as the app (URLs and globs in ``args``), in order:
        one connection per host, kept alive, as curl does."""
        return curl_runs(self.lb, [args], timeout=60)[0]

    def ready(self) -> bool:
        """The agent's readiness (``:15020/healthz/ready``)."""
        cmd = ["curl", "-s", "--noproxy", "*", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}"]
        cmd = self.lb.cmd(self.lb.vm, *cmd, "http://127.0.0.1:15020/healthz/ready")
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False).stdout == "200"

    def routed(self) -> bool:
        """A request to product went through the HTTP path (its backend saw a request id)."""
        r = self.curl("-m", "2", f"{URL}/split/probe")[0]
        return r.code == 200 and "x-request-id" in r.json()["headers"]

    def tags(self, n: int, *headers: str) -> Counter[str]:
        """The backends' tags of ``n`` requests on one connection (``error <code>`` for others)."""
        hs = [x for h in headers for x in ("-H", h)]
        replies = self.curl(*hs, f"{URL}/split/[1-{n}]")
        return Counter(r.json()["tag"] if r.code == 200 else f"error {r.code}" for r in replies)

    def grpc(self, n: int) -> dict[str, Any]:
        """http_backend.py's gRPC client as the app: one channel, ``n`` unary RPCs to greeter."""
        return self.lb.http_client("grpc", f"{GRPC_VIP}:{GRPC_PORT}", str(n))

    def set_virtual_service(self, text: str) -> None:
        """Replaces the VirtualService file at once (a hidden temporary file renamed over
        it: the control plane never reads half a file, and skips hidden names)."""
        cfg = self.m.d / "mesh"
        tmp = cfg / ".virtualservice.yaml.tmp"
        tmp.write_text(text)
        os.replace(tmp, cfg / "virtualservice.yaml")

    def get(self, kind: str, name: str) -> subprocess.CompletedProcess[str]:
        """``pymesh get KIND NAME -o yaml`` on the control plane's store."""
        argv = [sys.executable, "-m", "pymesh", "get", kind, name, "-o", "yaml", "--data-dir", str(self.m.cp_dir)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=self.lb.env, check=False)

    def rds(self) -> dict[str, Any]:
        """The agent's RDS counters (``/debug/status``): responses received, rejected."""
        types: dict[str, Any] = json.loads(fetch_status(self.lb, "/debug/status"))["xds_types"]
        return {k: types.get("rds", {}).get(k, 0) for k in ("pushes", "rejects")}

    def requests_series(self) -> list[dict[str, str]]:
        """The labels of every ``istio_requests_total`` series the agent serves, with the value."""
        text = fetch_status(self.lb, "/stats/prometheus")
        out = []
        for fam in text_string_to_metric_families(text):
            if fam.name == "istio_requests":
                out += [{**s.labels, "value": str(int(s.value))} for s in fam.samples if s.name.endswith("_total")]
        return out


@pytest.fixture(scope="module")
def vm() -> Iterator[Vm]:
    require_root_tools("nft", "curl")
    require_module("grpc", "the gRPC client and servers")
    t0 = time.monotonic()
    d = Path(tempfile.mkdtemp(prefix="pymesh-test-"))
    d.chmod(0o755)  # the agent's and the app's uids read it
    try:
        with lab() as lb:
            m = Mesh(lb, d, "nftables")
            # The cluster: product v1/v2 (HTTP) and greeter's two pods (gRPC), one process.
            lb.http_backends(
                lb.net,
                f"http:v1:{A}:{SVC_PORT}",
                f"http:v2:{B}:{SVC_PORT}",
                f"grpc:pod-a:{A}:{GRPC_PORT}",
                f"grpc:pod-b:{B}:{GRPC_PORT}",
            )
            mesh_config(d / "mesh")
            m.start_cp()
            # The VM: greeter's third endpoint (as the app), then the agent, auto-registering into greeter-vm.
            lb.http_backends(lb.vm, f"grpc:vm:{VM4}:{GRPC_PORT}", uid=APP_UID)
            labels = json.dumps({"app": "greeter", "version": "vm"}, separators=(",", ":"))
            env = {"ISTIO_METAJSON_LABELS": labels, "CANONICAL_SERVICE": "greeter", "SERVICE_ACCOUNT": "greeter"}
            files = write_vm_files(d / "vm", XDS_PORT, ip=VM4, group=GROUP, extra_env=env)
            (files / "hosts").write_text(f"{NET4} istiod.istio-system.svc\n")
            (d / "state").mkdir(mode=0o777)
            (d / "state").chmod(0o777)
            m.start_agent()
            m.saw("capture rules installed (nftables)")
            m.saw("outbound proxy on 127.0.0.1:15001")
            v = Vm(m)
            # Ready once it holds the control plane's tables (until then a VIP is passed through to
            # where it points: nowhere); routed per request once it holds the routes (the proxy adds
            # a request id; the TCP path would not); the VM serves greeter once registered.
            wait_until(v.ready, timeout=20, interval=0.1)
            wait_until(v.routed, timeout=20, interval=0.1)
            wait_until(lambda: set(v.grpc(6)["counts"]) == {"pod-a", "pod-b", "vm"}, timeout=20)
            print(f"\nlab up in {time.monotonic() - t0:.1f} s")
            yield v
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.timeout(120)
def test_virtual_service_routes_each_request(vm: Vm) -> None:
    t0 = time.monotonic()
    # 90/10 over one keep-alive connection, each request routed on its own.
    n = 300
    replies = vm.curl(f"{URL}/split/[1-{n}]")
    assert len(replies) == n and {r.code for r in replies} == {200}, Counter(r.code for r in replies)
    assert sum(r.connects for r in replies) == 1  # curl connected once
    seen = [r.json() for r in replies]
    tags = Counter(s["tag"] for s in seen)
    assert set(tags) == {"v1", "v2"}, tags
    # Pearson's chi-square against 90/10, one degree of freedom; split per
    # connection, the one connection would have given 300/0 (chi-square 33.3 or 2700).
    chi2 = chi_square(tags, {"v1": 0.9 * n, "v2": 0.1 * n})
    assert chi2 < CHI2_1DOF_BOUND, (tags, chi2)
    # The proxy's request id reached the backend, a new one per request; the client's is kept.
    ids = [s["headers"].get("x-request-id", "") for s in seen]
    assert all(UUID4.match(i) for i in ids), ids[:5]
    assert len(set(ids)) == n
    own = vm.curl("-H", "x-request-id: vm-request-42", f"{URL}/split/own")[0].json()
    assert own["headers"]["x-request-id"] == "vm-request-42"

    # The canary user goes to v2 only; another user, or the name in another case, is split.
    canary = vm.curl("-H", "end-user: jason", f"{URL}/productpage/[1-40]")
    assert {(r.code, r.json()["tag"]) for r in canary} == {(200, "v2")}
    others = vm.tags(60, "end-user: Jason")
    assert set(others) == {"v1", "v2"}, others

    # /fault: 503 from the proxy for about half, the rest served by v1.
    n = 200
    faults = vm.curl(f"{URL}/fault/[1-{n}]")
    aborted = [r for r in faults if r.code == 503]
    assert {r.body for r in aborted} == {"fault filter abort"}
    assert {r.json()["tag"] for r in faults if r.code != 503} == {"v1"}
    assert len(aborted) + sum(r.code == 200 for r in faults) == n
    assert within_binomial(len(aborted), n, 0.5), len(aborted)

    # /slow: the backend answers after 2 s; the route's 0.3 s timeout answers 504 first.
    slow = vm.curl(f"{URL}/slow/sleep?ms=2000")[0]
    assert (slow.code, slow.body) == (504, "upstream request timeout")
    assert 0.29 <= slow.seconds < 0.9, slow.seconds
    fast = vm.curl(f"{URL}/slow/sleep?ms=20")[0]
    assert fast.code == 200 and fast.json()["tag"] == "v1"
    print(f"\nrouting checks in {time.monotonic() - t0:.1f} s: split {dict(tags)}, aborted {len(aborted)}/{n}")


@pytest.mark.timeout(120)
def test_grpc_one_channel_is_balanced_per_rpc_over_pods_and_the_vm(vm: Vm) -> None:
    t0 = time.monotonic()
    n = 300
    got = vm.grpc(n)
    counts = got["counts"]
    assert set(counts) == {"pod-a", "pod-b", "vm"} and sum(counts.values()) == n, counts
    # One HTTP/2 connection from the client, yet each endpoint serves about a third.
    for tag, k in counts.items():
        assert within_binomial(k, n, 1 / 3), (tag, counts)
    stream = got["stream"]
    assert [s.split()[1] for s in stream] == ["a", "b", "c"] and len({s.split()[0] for s in stream}) == 1
    print(f"\ngRPC in {time.monotonic() - t0:.1f} s: {counts}")


@pytest.mark.timeout(120)
def test_istio_request_metrics_and_kialis_graph_query(vm: Vm, tmp_path: Path) -> None:
    from support.prometheus import prometheus

    t0 = time.monotonic()
    # Traffic of its own: successes and aborts to product, RPCs to greeter.
    vm.curl(f"{URL}/fault/[1-30]", f"{URL}/split/[1-20]")
    vm.grpc(10)
    series = vm.requests_series()
    product = [s for s in series if s["destination_service"] == PRODUCT]
    assert product, series
    assert {s["reporter"] for s in series} == {"source"}
    assert {s["response_code"] for s in product} >= {"200", "503"}, product
    assert {s["request_protocol"] for s in product} == {"http"}
    greeter = [s for s in series if s["destination_service"] == GREETER]
    assert {s["request_protocol"] for s in greeter} == {"grpc"}, greeter
    assert {(s["response_code"], s["grpc_response_status"]) for s in greeter} >= {("200", "0")}, greeter
    # The source is this VM; the destination the pod of the subset (none for the proxy's aborts).
    for s in product + greeter:
        assert (s["source_workload"], s["source_workload_namespace"]) == (GROUP, "default"), s
        assert s["source_canonical_service"] == "greeter", s
    assert {s["destination_service_name"] for s in product} == {"product"}
    served = {
        (s["destination_workload"], s["destination_canonical_revision"]) for s in product if s["response_code"] == "200"
    }
    assert served == {("product-v1", "v1"), ("product-v2", "v2")}, product
    aborts = [s for s in product if s["response_code"] == "503"]
    assert {(s["response_flags"], s["destination_workload"]) for s in aborts} == {("FI", "unknown")}, aborts

    # A real Prometheus in the vm namespace scrapes the agent; Kiali's graph query sees the edge.
    with inside(vm.lb.vm), prometheus(tmp_path / "prom", {"vm": ("127.0.0.1:15020", "/stats/prometheus")}) as prom:
        wait_until(lambda: any(t["health"] == "up" for t in prom.targets()), timeout=20, interval=0.25)
        # rate() needs the counter to move between two scrapes: more traffic after the first.
        vm.curl(f"{URL}/split/[1-20]", f"{URL}/fault/[1-10]")
        by = KIALI_HTTP_GROUP
        sel = 'reporter="source",source_workload_namespace="default"'
        query = f"sum(rate(istio_requests_total{{{sel}}}[1m])) by ({by}) > 0"

        def edges() -> set[tuple[str, str, str]] | None:
            got = {
                (r["metric"]["source_workload"], r["metric"]["destination_service_name"], r["metric"]["response_code"])
                for r in prom.query(query)
                if r["metric"].get("destination_service") == PRODUCT
            }
            return got if {(GROUP, "product", "200"), (GROUP, "product", "503")} <= got else None

        found = wait_until(edges, timeout=30, interval=0.5)
        rows = [r["metric"] for r in prom.query(query) if r["metric"].get("destination_service") == PRODUCT]
        # Every group-by label on every row (Prometheus drops empty ones: gRPC's status on HTTP).
        assert all(set(by.split(",")) - {"grpc_response_status"} <= set(r) for r in rows), rows
    print(f"\ntelemetry in {time.monotonic() - t0:.1f} s: {sorted(found)}")


# istiod names an auto-registered WorkloadEntry's workload by its group (its
# istio.io/autoRegistrationGroup annotation, then the service.istio.io/workload-name
# label, then the entry's name: pkg/kube/labels WorkloadNameFromWorkloadEntry, used by
# pilot/pkg/serviceregistry/serviceentry/conversion.go convertWorkloadEntryToWorkloadInstance
# for the endpoint's istio.workload metadata). The agent reports itself as the group
# (pymesh.agent.config.local_workload) and the control plane's EDS names it so too: one
# VM is one workload in Kiali's graph, as source and as destination.
@pytest.mark.timeout(120)
def test_the_vm_is_one_workload_as_source_and_as_destination(vm: Vm) -> None:
    series = vm.requests_series()  # the fixture's RPCs reached every greeter endpoint, the VM too
    sources = {s["source_workload"] for s in series}
    destinations = {s["destination_workload"] for s in series if s["destination_service"] == GREETER}
    assert (sources, destinations) == ({GROUP}, {"greeter-a", "greeter-b", GROUP})


@pytest.mark.timeout(120)
def test_virtual_service_edits_apply_live_and_an_invalid_one_is_rejected(vm: Vm) -> None:
    agent = vm.m.agent
    assert agent is not None
    pid = agent.pid
    rds = vm.rds()
    # To v2 only: applied by an RDS push within seconds, nothing restarted.
    written = time.monotonic()
    vm.set_virtual_service(virtual_service([dest("v2")]))
    wait_until(lambda: vm.tags(10) == Counter({"v2": 10}), timeout=10, interval=0.1)
    applied = time.monotonic() - written
    assert applied < 5, applied
    assert vm.tags(100) == Counter({"v2": 100})
    assert agent.poll() is None and agent.pid == pid
    after = vm.rds()
    assert after["pushes"] > rds["pushes"] and after["rejects"] == rds["rejects"] == 0, (rds, after)

    # An invalid edit (an abort percentage over 100, with the default route back to v1): the
    # control plane rejects the object naming the field, and v2-only keeps serving.
    vm.set_virtual_service(virtual_service([dest("v1")], abort_percent=150))
    field = "spec.http[1].fault.abort.percentage.value"

    def rejected() -> str | None:
        err = vm.get("virtualservices", "product").stderr
        return err if field in err else None

    err = wait_until(rejected, timeout=10, interval=0.2)
    assert "rejected by the control plane" in err and "virtualservice.yaml" in err, err
    time.sleep(1.0)  # a push, had there been one, would have reached the agent by now
    assert vm.tags(100) == Counter({"v2": 100})
    # What the store serves is still the last good version.
    shown = yaml.safe_load(vm.get("virtualservices", "product").stdout)
    assert [r["destination"]["subset"] for r in shown["spec"]["http"][3]["route"]] == ["v2"], shown

    # Fixed: applied again.
    vm.set_virtual_service(virtual_service(SPLIT_90_10))
    wait_until(lambda: set(vm.tags(40)) == {"v1", "v2"}, timeout=10, interval=0.1)
    print(f"\nVirtualService change applied in {applied:.2f} s; {err.strip()}")
