"""The agent against the real control plane on loopback: auto-registration,
NDS into its DNS server, CDS/EDS into the lbtable, the probe moving the
VM's endpoint, and surviving the control plane's absence (including an
agent restart from persisted tables) until it comes back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pymesh.controlplane import ControlPlane
from support.agent import PRODUCT, VM_IP, HealthServer, Http, TcpApp, make_agent, resolve, write_vm_files
from support.cp import example_config
from support.ports import free_port
from support.wait import wait_until

ENTRY = f"product-vm-{VM_IP}"


DELTA = False


@pytest.fixture(params=["sotw", "delta"], autouse=True)
def xds_variant(request: pytest.FixtureRequest) -> str:
    """Every test runs with both ADS variants the control plane serves."""
    global DELTA
    DELTA = request.param == "delta"
    return str(request.param)


def agent_for(vm: Path, state: Path, dns_port: int, **options: Any) -> Any:
    return make_agent(vm, state, dns_port, xds_delta=DELTA, **options)


@pytest.fixture
def svc_port() -> int:
    return free_port("127.0.0.2", VM_IP)


@pytest.fixture
def cfg(tmp_path: Path, svc_port: int) -> Path:
    return example_config(tmp_path / "mesh", svc_port)


def start_cp(cfg: Path, data: Path, port: int = 0, grace: float = 1.0) -> ControlPlane:
    return ControlPlane(cfg, xds_listen=f"127.0.0.1:{port}", data_dir=data, grace_period=grace, debounce=0.02).start()


@pytest.fixture
def cp(cfg: Path, tmp_path: Path) -> Iterator[ControlPlane]:
    c = start_cp(cfg, tmp_path / "cp")
    yield c
    c.stop()


def entry_of(cp: ControlPlane) -> dict[str, Any] | None:
    return cp.registered_entry("default", ENTRY)


def cluster(port: int) -> str:
    return f"outbound|{port}||{PRODUCT}"


def addresses(agent: object, name: str) -> list[str]:
    if name not in agent.lb:  # type: ignore[attr-defined]
        return []
    return sorted(e["address"] for e in agent.lb.endpoints(name))  # type: ignore[attr-defined]


def test_agent_registers_serves_dns_and_picks_real_endpoints(cp: ControlPlane, tmp_path: Path, svc_port: int) -> None:
    vm = write_vm_files(tmp_path / "vm", cp.port)
    dport = free_port("127.0.0.1")
    agent = agent_for(vm, tmp_path / "state", dport)
    assert agent.target == f"127.0.0.1:{cp.port}"  # discoveryAddress resolved through the hosts file
    with agent:
        entry = wait_until(lambda: cp.registered_entry("default", ENTRY))
        assert entry["spec"]["address"] == VM_IP
        assert entry["metadata"]["labels"] == {"app": "product", "version": "vm"}
        assert "istio.io/connectedAt" in entry["metadata"]["annotations"]
        # No probe in mesh.yaml: the entry is not health-checked and serves at once.
        assert "proxy.istio.io/health-checks-enabled" not in entry["metadata"]["annotations"]

        wait_until(lambda: resolve(dport, PRODUCT) == ("NOERROR", ["10.96.0.20"]))
        assert resolve(dport, "product")[1] == ["10.96.0.20"]  # short name in the VM's namespace
        assert resolve(dport, "product.default")[1] == ["10.96.0.20"]

        name = cluster(svc_port)
        wait_until(lambda: addresses(agent, name) == [f"127.0.0.2:{svc_port}", f"{VM_IP}:{svc_port}"])
        picks = agent.lb.pick_counts(name, 200)
        assert set(picks) == {f"127.0.0.2:{svc_port}", f"{VM_IP}:{svc_port}"}
        # The redirection table maps the service VIP to the cluster; other addresses pass through.
        r = agent.route("10.96.0.20", svc_port)
        assert r.verdict == "cluster" and r.cluster == name and r.endpoint in picks
        assert agent.route("192.0.2.7", 443).verdict == "passthrough"
        assert agent.route("127.0.0.1", svc_port).verdict == "bypass"
        st = agent.status()
        assert st["xds"] == "connected" and st["stats"]["nacks"] == 0
        conns = cp.call_soon(lambda: [c.delta for c in cp.ads.connections.values()])
        assert conns == [DELTA]  # the variant under test is what went over the wire
        assert cp.ads.stats["nacks"] == 0
    # Disconnected: the control plane removes the entry after its grace period.
    wait_until(lambda: cp.registered_entry("default", ENTRY) is None, timeout=10)


class App:
    """The VM's application for one probe kind, switchable healthy/unhealthy."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.flag = tmp / "healthy"
        self.tcp: TcpApp | None = None
        self.http: Http | None = None
        self.grpc: HealthServer | None = None
        if kind == "tcpSocket":
            self.port = free_port(VM_IP)
            self.tcp = TcpApp(VM_IP, self.port)
        elif kind == "httpGet":
            self.http = Http(VM_IP)
            self.port = self.http.port
        elif kind == "grpc":
            self.grpc = HealthServer(VM_IP)
            self.port = self.grpc.port
        else:
            self.port = 0
            self.flag.touch()

    def probe(self) -> dict[str, Any]:
        timing = {"periodSeconds": 0.1, "timeoutSeconds": 0.5}
        if self.kind == "exec":
            return {"exec": {"command": ["/bin/test", "-e", str(self.flag)]}, **timing}
        if self.kind == "httpGet":
            return {"httpGet": {"port": self.port, "path": "/ready"}, **timing}
        return {self.kind: {"port": self.port}, **timing}

    def set(self, healthy: bool) -> None:
        if self.tcp is not None and not healthy:
            self.tcp.close()
        elif self.tcp is not None:
            self.tcp = TcpApp(VM_IP, self.port)
        elif self.http is not None:
            self.http.status = 200 if healthy else 503
        elif self.grpc is not None:
            self.grpc.status[""] = 1 if healthy else 2
        elif healthy:
            self.flag.touch()
        else:
            self.flag.unlink()

    def stop(self) -> None:
        for s in (self.tcp, self.http, self.grpc):
            if s is not None:
                s.close() if isinstance(s, TcpApp) else s.stop()


@pytest.mark.parametrize("kind", ["httpGet", "tcpSocket", "exec", "grpc"])
def test_probe_moves_the_vm_endpoint_in_and_out(cp: ControlPlane, tmp_path: Path, svc_port: int, kind: str) -> None:
    app = App(kind, tmp_path)
    vm = write_vm_files(tmp_path / "vm", cp.port, probe=app.probe())
    agent = agent_for(vm, tmp_path / "state", free_port("127.0.0.1"))
    name = cluster(svc_port)
    try:
        with agent:
            entry = wait_until(lambda: cp.registered_entry("default", ENTRY))
            assert entry["metadata"]["annotations"]["proxy.istio.io/health-checks-enabled"] == "true"
            # Healthy: the control plane adds the VM, and the agent's own EDS follows.
            wait_until(lambda: f"{VM_IP}:{svc_port}" in addresses(agent, name))
            cond = cp.registered_entry("default", ENTRY)["status"]["conditions"][0]  # type: ignore[index]
            assert cond["type"] == "Healthy" and cond["status"] == "True"

            app.set(False)
            wait_until(lambda: addresses(agent, name) == [f"127.0.0.2:{svc_port}"])
            cond = cp.registered_entry("default", ENTRY)["status"]["conditions"][0]  # type: ignore[index]
            assert cond["status"] == "False" and cond["message"]

            app.set(True)
            wait_until(lambda: f"{VM_IP}:{svc_port}" in addresses(agent, name))
    finally:
        app.stop()


def test_health_is_resent_on_a_new_stream(cfg: Path, tmp_path: Path, svc_port: int) -> None:
    """A report lost with the control plane (istio/istio#29741) is repeated on
    the next stream: a control plane started with a fresh store learns the
    VM is healthy without any new transition."""
    port = free_port("127.0.0.1")
    cp = start_cp(cfg, tmp_path / "cp1", port)
    probe = {"exec": {"command": ["/bin/true"]}, "periodSeconds": 30}
    vm = write_vm_files(tmp_path / "vm", port, probe=probe)
    agent = agent_for(vm, tmp_path / "state", free_port("127.0.0.1"))
    try:
        with agent:
            wait_until(lambda: (cp.registered_entry("default", ENTRY) or {}).get("status"))
            cp.stop()
            cp = start_cp(cfg, tmp_path / "cp2", port)  # fresh store: knows nothing of the VM
            entry = wait_until(lambda: (cp.registered_entry("default", ENTRY) or {}).get("status") and entry_of(cp))
            assert entry["status"]["conditions"][0]["status"] == "True"
            assert agent.prober is not None and agent.prober.attempts == 1  # no new probe ran
    finally:
        cp.stop()


def test_control_plane_down_dns_and_routing_keep_serving_across_agent_restart(
    cfg: Path, tmp_path: Path, svc_port: int
) -> None:
    port = free_port("127.0.0.1")
    cp = start_cp(cfg, tmp_path / "cp", port)
    vm = write_vm_files(tmp_path / "vm", port)
    dport = free_port("127.0.0.1")
    state = tmp_path / "state"
    name = cluster(svc_port)
    agent = agent_for(vm, state, dport)
    agent.start()
    try:
        wait_until(lambda: resolve(dport, PRODUCT)[1] == ["10.96.0.20"])
        wait_until(lambda: len(addresses(agent, name)) == 2)

        cp.stop()  # the control plane dies
        wait_until(lambda: agent.status()["xds"] in ("backoff", "connecting"))
        assert resolve(dport, PRODUCT) == ("NOERROR", ["10.96.0.20"])
        assert agent.route("10.96.0.20", svc_port).endpoint is not None

        agent.stop()  # and the agent restarts while it is down
        agent = agent_for(vm, state, dport)
        agent.start()
        # The tables, the virtualInbound listener (the PeerAuthentication mode, Istio's default here)
        # and the outbound HTTP listener with its route configuration (the service port is HTTP).
        assert sorted(agent.loaded_from_disk) == [
            "Cluster",
            "ClusterLoadAssignment",
            "Listener",
            "NameTable",
            "RouteConfiguration",
        ]
        assert agent.peer_authentication == "PERMISSIVE"
        assert resolve(dport, PRODUCT) == ("NOERROR", ["10.96.0.20"])
        assert addresses(agent, name) == [f"127.0.0.2:{svc_port}", f"{VM_IP}:{svc_port}"]
        r = agent.route("10.96.0.20", svc_port)
        assert r.cluster == name and r.endpoint is not None
        assert agent.status()["xds"] != "connected"

        # The control plane comes back with an empty store: the agent reconnects and registers again.
        cp = start_cp(cfg, tmp_path / "cp-new", port)
        entry = wait_until(lambda: cp.registered_entry("default", ENTRY), timeout=10)
        assert "istio.io/connectedAt" in entry["metadata"]["annotations"]
        wait_until(lambda: agent.status()["xds"] == "connected")
        assert resolve(dport, PRODUCT) == ("NOERROR", ["10.96.0.20"])
    finally:
        agent.stop()
        cp.stop()


def test_health_checks_a_pre_created_entry(cfg: Path, tmp_path: Path, svc_port: int) -> None:
    """Istio's undocumented health-only mode (reference §2.2, §7.4) as a
    first-class one: ISTIO_META_WORKLOAD_ENTRY names a configured entry and
    the probe drives its endpoint, with no auto-registration."""
    ip = "127.0.0.4"
    (cfg / "static-vm.yaml").write_text(
        f"""apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: vm-static
  namespace: default
  annotations:
    proxy.istio.io/health-checks-enabled: "true"
spec:
  address: {ip}
  labels:
    app: product
  ports:
    grpc: {svc_port}
"""
    )
    cp = start_cp(cfg, tmp_path / "cp")
    flag = tmp_path / "ok"
    flag.touch()
    probe = {"exec": {"command": ["/bin/test", "-e", str(flag)]}, "periodSeconds": 0.1}
    vm = write_vm_files(
        tmp_path / "vm", cp.port, probe=probe, group="", ip=ip, extra_env={"ISTIO_META_WORKLOAD_ENTRY": "vm-static"}
    )
    agent = agent_for(vm, tmp_path / "state", free_port("127.0.0.1"))
    name = cluster(svc_port)
    try:
        with agent:
            wait_until(lambda: f"{ip}:{svc_port}" in addresses(agent, name))
            flag.unlink()
            wait_until(lambda: f"{ip}:{svc_port}" not in addresses(agent, name))
            assert cp.registered_entry("default", f"product-vm-{ip}") is None  # nothing was registered
    finally:
        cp.stop()


def test_unknown_group_is_reported_and_retried(cp: ControlPlane, tmp_path: Path) -> None:
    vm = write_vm_files(tmp_path / "vm", cp.port, group="no-such-group")
    agent = agent_for(vm, tmp_path / "state", free_port("127.0.0.1"))
    with agent:
        wait_until(lambda: agent.client is not None and len(agent.client.waits) >= 2)
        st = agent.status()
        assert st["xds"] in ("backoff", "connecting")
        assert "FAILED_PRECONDITION" in st["last_error"] and "no-such-group" in st["last_error"]
        assert cp.registered_entry("default", "no-such-group-127.0.0.3") is None
