"""Inbound capture by the agent in network namespaces: with cluster.env's
ISTIO_INBOUND_PORTS="*" (as istioctl writes it), `pymesh agent --capture
nftables` in the "vm" namespace starts the inbound passthrough on 15006
before installing the rules. A client in the cluster ("net") namespace
connecting to the VM's IP reaches the VM's application through 15006 (the
application sees the connection from 127.0.0.6, as behind Istio's inbound
passthrough); a port in ISTIO_LOCAL_EXCLUDE_PORTS (22) is not captured; on
stop the rules and the listener are gone and connections reach the app
directly again.

Needs root (network namespaces, nftables capture rules, the agent's user and
CAP_NET_ADMIN via setpriv), iproute2 and nft: without them it is skipped with the
reason, or fails when PYMESH_REQUIRE_ROOT_TESTS is set (CI)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support.agent import write_vm_files
from support.netns import NET4, VM4, lab, require_root_tools, start_agent, wait_said

APP_PORT = 18080
SSH_PORT = 22  # in the default ISTIO_LOCAL_EXCLUDE_PORTS

# The VM's application: answers each connection with the address it was
# accepted on and the peer it came from.
APP = """
import socket, sys, threading
def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    def loop():
        while True:
            c, peer = s.accept()
            here = c.getsockname()
            c.sendall(f"app {here[0]}:{here[1]} from {peer[0]}\\n".encode())
            c.close()
    threading.Thread(target=loop, daemon=True).start()
for p in sys.argv[1:]:
    serve(int(p))
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("inbound_port", [None, 15106], ids=["default-15006", "inbound-port-flag"])
def test_agent_captures_inbound_to_the_passthrough_and_leaves_excluded_ports(
    shared_dir: Path, inbound_port: int | None
) -> None:
    require_root_tools("nft")
    with lab() as lb:
        app = subprocess.Popen(
            lb.cmd(lb.vm, sys.executable, "-c", APP, str(APP_PORT), str(SSH_PORT)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=lb.env,
        )
        lb.procs.append(app)
        assert app.stdout is not None and app.stdout.readline().strip() == "ready"

        def connect(port: int) -> str:
            r = lb.peer(lb.net, "tcp", VM4, str(port))
            return str(r.get("reply", r.get("error")))

        # Without the agent: straight to the app, from the cluster side's address.
        assert connect(APP_PORT) == f"app {VM4}:{APP_PORT} from {NET4}"

        vm = write_vm_files(shared_dir / "vm", 1, ip=VM4)
        env = (vm / "cluster.env").read_text()
        assert 'ISTIO_INBOUND_PORTS="*"' in env or "ISTIO_INBOUND_PORTS='*'" in env or "ISTIO_INBOUND_PORTS=*" in env
        argv = ["--config-dir", str(vm), "--capture", "nftables"]
        argv += ["--no-dns", "--no-probe", "--no-persist", "--status-listen", "", "--pod-name", "vm-1"]
        argv += ["--xds-address", "127.0.0.1:1", "--backoff-max", "1"]
        if inbound_port is not None:
            argv += ["--inbound-port", str(inbound_port)]
        port = inbound_port or 15006
        agent, out = start_agent(lb, *argv)
        try:
            wait_said(agent, out, "capture rules installed (nftables)", timeout=15)
            assert out.saw(f"inbound passthrough on 0.0.0.0:{port}")
            ruleset = lb.ruleset()
            assert f"redirect to :{port}" in ruleset, ruleset
            # Captured: through the inbound port, handed to the app from 127.0.0.6.
            assert connect(APP_PORT) == f"app {VM4}:{APP_PORT} from 127.0.0.6"
            # Excluded (ISTIO_LOCAL_EXCLUDE_PORTS): not captured, the client's own address.
            assert connect(SSH_PORT) == f"app {VM4}:{SSH_PORT} from {NET4}"
        finally:
            agent.send_signal(signal.SIGTERM)
            rc = agent.wait(15)
        err = agent.stderr.read() if agent.stderr else ""
        assert rc == 0, err[-2000:]
        assert out.saw("pymesh agent: stopped")
        assert "pymesh" not in lb.ruleset()  # the rules are removed
        # And the listener with them: straight to the app again.
        assert connect(APP_PORT) == f"app {VM4}:{APP_PORT} from {NET4}"
