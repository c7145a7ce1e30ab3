"""``pymesh gateway`` as a process on loopback: it joins the control plane as a
``router`` node , serves AUTO_PASSTHROUGH by SNI
from the clusters it is sent, passes a forwarded port through unchanged, answers
``/healthz/ready`` on its health port, counts refusals in its metrics, and its
dry run shows the network and the listeners. The three-network mesh through a
gateway is tests/e2e/test_multinetwork.py."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from pymesh.controlplane import ControlPlane
from support.agent import POD_IP, write_vm_files
from support.cp import example_config
from support.ports import free_port
from support.procs import Lines, reap
from support.wait import wait_until


def client_hello(sni: str) -> bytes:
    """The first flight of a real TLS client (Python's ssl) to ``sni``."""
    ctx = ssl.create_default_context()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def accept_first(listener: socket.socket, n: int, got: list[bytes]) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(5)
        data = b""
        while len(data) < n:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        got.append(data)
        conn.sendall(b"from-backend")


def refused(addr: tuple[str, int], payload: bytes) -> bool:
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(payload)
        try:
            return s.recv(16) == b""
        except OSError:
            return True


def test_gateway_routes_by_sni_forwards_and_reports_health(tmp_path: Path) -> None:
    svc_port = free_port(POD_IP, "127.0.0.1")
    cp = ControlPlane(
        example_config(tmp_path / "mesh", svc_port), xds_listen="127.0.0.1:0", data_dir=tmp_path / "cp"
    ).start()
    # The gateway's files: no auto-registration group (a gateway is no workload).
    files = write_vm_files(tmp_path / "gw", cp.port, group="", ip="127.0.0.1")
    sni_port, fwd_port, health_port = (free_port("127.0.0.1") for _ in range(3))
    fwd_target = socket.create_server(("127.0.0.1", 0))
    backend = socket.create_server((POD_IP, svc_port))
    cmd = [sys.executable, "-m", "pymesh", "gateway", "--config-dir", str(files), "--state-dir", str(tmp_path / "s")]
    cmd += ["--sni-listen", f"127.0.0.1:{sni_port}", "--status-listen", f"127.0.0.1:{health_port}"]
    cmd += ["--forward", f"127.0.0.1:{fwd_port}=127.0.0.1:{fwd_target.getsockname()[1]}", "--pod-name", "gw-1"]

    dry = subprocess.run([*cmd, "--dry-run", "-o", "json"], capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["node"]["id"].startswith("router~127.0.0.1~gw-1.default~")
    assert plan["network"]["name"] == ""
    assert plan["network"]["gateway"] == {
        "sni_listen": [f"127.0.0.1:{sni_port}"],
        "forward": [f"127.0.0.1:{fwd_port}=127.0.0.1:{fwd_target.getsockname()[1]}"],
    }
    assert plan["dns"]["enabled"] is False and plan["probe"] is None

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    saw = Lines(proc).saw
    try:
        wait_until(lambda: saw("xDS connected"), timeout=20)
        wait_until(lambda: saw("tables: 2 clusters"), timeout=10)
        assert saw("node router~127.0.0.1~gw-1.default~default.svc.cluster.local")
        assert saw(f"gateway on 127.0.0.1:{sni_port}")
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz/ready", timeout=5) as r:
            assert r.status == 200

        # A ClientHello for the product cluster reaches the pod unchanged, and the answer comes back.
        hello = client_hello(f"outbound_.{svc_port}_._.product.default.svc.cluster.local")
        got: list[bytes] = []
        t = threading.Thread(target=accept_first, args=(backend, len(hello), got))
        t.start()
        with socket.create_connection(("127.0.0.1", sni_port), timeout=5) as s:
            s.sendall(hello)
            assert s.recv(64) == b"from-backend"
        t.join(5)
        assert got == [hello]

        # Refused and counted: plaintext, a name not of Istio's form, an unknown cluster.
        assert refused(("127.0.0.1", sni_port), b"GET / HTTP/1.1\r\nHost: product\r\n\r\n")
        assert refused(("127.0.0.1", sni_port), client_hello("product.default.svc.cluster.local"))
        assert refused(("127.0.0.1", sni_port), client_hello("outbound_.1_._.nothing.default.svc.cluster.local"))

        # The forwarded port passes bytes both ways to its target.
        got2: list[bytes] = []
        t2 = threading.Thread(target=accept_first, args=(fwd_target, 5, got2))
        t2.start()
        with socket.create_connection(("127.0.0.1", fwd_port), timeout=5) as s:
            s.sendall(b"\x16\x03\x01hi")
            assert s.recv(64) == b"from-backend"
        t2.join(5)
        assert got2 == [b"\x16\x03\x01hi"]

        def metrics() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/stats/prometheus", timeout=5) as r:
                return str(r.read().decode())

        def counter(name: str, relay: str) -> float:
            for line in metrics().splitlines():
                if line.startswith(f'{name}{{relay="{relay}"}}'):
                    return float(line.rsplit(" ", 1)[1])
            return -1.0

        wait_until(lambda: counter("pymesh_agent_relay_not_tls_total", "gateway") == 1, timeout=5)
        assert counter("pymesh_agent_relay_sni_refused_total", "gateway") == 1
        assert counter("pymesh_agent_relay_unknown_cluster_total", "gateway") == 1
        assert counter("pymesh_agent_relay_cluster_total", "gateway") == 1
        assert counter("pymesh_agent_relay_passthrough_total", f"forward-{fwd_port}") == 1
        # Istio's TCP families per destination cluster, from the gateway's series.
        assert 'destination_service="product.default.svc.cluster.local"' in metrics()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        wait_until(lambda: saw("pymesh gateway: stopped"), timeout=5)
    finally:
        reap(proc)
        backend.close()
        fwd_target.close()
        cp.stop()
