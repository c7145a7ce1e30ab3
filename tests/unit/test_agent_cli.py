"""``pymesh agent`` as a process (steps printed, clean stop on SIGTERM), the
shipped systemd unit, and cluster.env parsing as sh reads it (property)."""

from __future__ import annotations

import configparser
import shlex
import signal
import subprocess
import sys
import urllib.request
from importlib import resources
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from pymesh.agent import BootstrapError
from pymesh.agent.bootstrap import parse_cluster_env
from pymesh.controlplane import ControlPlane
from support.agent import PRODUCT, VM_IP, resolve, write_vm_files
from support.cp import example_config
from support.ports import free_port
from support.procs import Lines, reap
from support.wait import wait_until


def test_agent_command_runs_reports_steps_and_stops_on_sigterm(tmp_path: Path) -> None:
    svc_port = free_port("127.0.0.2", VM_IP)
    cp = ControlPlane(
        example_config(tmp_path / "mesh", svc_port), xds_listen="127.0.0.1:0", data_dir=tmp_path / "cp"
    ).start()
    vm = write_vm_files(tmp_path / "vm", cp.port)
    dport = free_port("127.0.0.1")
    cmd = [sys.executable, "-m", "pymesh", "agent", "--config-dir", str(vm), "--dns-listen", f"127.0.0.1:{dport}"]
    cmd += ["--state-dir", str(tmp_path / "state"), "--pod-name", "vm-1", "--resolv-conf", str(tmp_path / "none")]
    sport = free_port("127.0.0.1")
    cmd += ["--status-listen", f"127.0.0.1:{sport}"]
    cmd += ["--no-dataplane"]  # on the host: DNS and xDS only, no capture rules
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    saw = Lines(proc).saw

    try:
        wait_until(lambda: saw("xDS connected"), timeout=15)
        wait_until(lambda: saw("tables: 2 names, 2 clusters"), timeout=10)
        assert saw(f"node sidecar~{VM_IP}~vm-1.default~default.svc.cluster.local")
        assert saw(f"DNS on 127.0.0.1:{dport}")
        assert cp.registered_entry("default", f"product-vm-{VM_IP}") is not None
        assert resolve(dport, PRODUCT) == ("NOERROR", ["10.96.0.20"])
        assert saw(f"status on http://127.0.0.1:{sport}/healthz/ready")
        with urllib.request.urlopen(f"http://127.0.0.1:{sport}/healthz/ready", timeout=5) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        wait_until(lambda: saw("pymesh agent: stopped"), timeout=5)
        assert (tmp_path / "state" / "nds.pb").exists()
    finally:
        reap(proc)
        cp.stop()


def test_systemd_unit_ships_with_the_package() -> None:
    unit = resources.files("pymesh.agent") / "pymesh-agent.service"
    text = unit.read_text()
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(text)
    assert cp["Service"]["ExecStart"].split()[1:3] == ["agent", "$PYMESH_AGENT_FLAGS"]
    assert cp["Service"]["Restart"] == "always" and cp["Service"]["RestartSec"] == "10"
    assert cp["Service"]["User"] and cp["Install"]["WantedBy"] == "multi-user.target"
    if sys.platform.startswith("linux"):
        sa = subprocess.run(["systemd-analyze", "--version"], capture_output=True)
        if sa.returncode == 0:  # only where systemd's own checker exists
            r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
            assert "Unknown key" not in r.stderr and "Invalid" not in r.stderr, r.stderr


values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\n\r"), max_size=40)


@given(st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,12}", fullmatch=True), values, max_size=6))
def test_cluster_env_reads_what_sh_quoting_wrote(env: dict[str, str]) -> None:
    text = "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items())
    assert {k: v.value for k, v in parse_cluster_env(text).items()} == env


@given(st.text(max_size=200))
def test_cluster_env_never_fails_other_than_by_bootstrap_error(text: str) -> None:
    try:
        parse_cluster_env(text, "f")
    except BootstrapError as e:
        assert str(e).startswith("f:")


@given(
    st.sampled_from(["cluster.env", "mesh.yaml", "root-cert.pem", "istio-token", "hosts"]),
    st.one_of(
        st.text(max_size=300),
        st.sampled_from(["defaultConfig:\n  readinessProbe:\n", "defaultConfig: {proxyMetadata: {A: {b: 1}}}"]).flatmap(
            lambda base: st.text(max_size=60).map(lambda t: base + t)
        ),
    ),
)
def test_any_file_content_gives_a_bootstrap_error_or_a_bootstrap(name: str, text: str) -> None:
    import tempfile

    from pymesh.agent import AgentOptions, load_bootstrap
    from pymesh.agent.config import capture_config

    with tempfile.TemporaryDirectory() as d:
        vm = write_vm_files(Path(d) / "vm", 15010)
        (vm / name).write_text(text)
        try:
            capture_config(load_bootstrap(vm), AgentOptions(), True, ())
        except BootstrapError as e:
            assert str(e).startswith(str(vm / name)) or str(e).startswith(str(vm / "cluster.env"))


def test_default_dns_listeners_follow_the_host() -> None:
    import socket

    from pymesh.agent.agent import default_dns_listen

    got = default_dns_listen(5353)
    assert got[0] == "127.0.0.1:5353"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        v6 = True
    except OSError:
        v6 = False
    assert got[1:] == (["[::1]:5353"] if v6 else [])
