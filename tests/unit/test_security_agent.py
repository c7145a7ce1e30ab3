"""The VM agent with MUTUAL_TLS to a control plane on its TLS port: its first
certificate from the istio-token, xDS over mTLS and auto-registration, a
"reboot" without the token keeping the identity, and a man in the middle
(another CA under istiod's name) getting nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

from support.agent import make_agent
from support.ports import free_port
from support.sec import secure_cp, secure_vm_files
from support.wait import wait_until

ENTRY = "product-vm-127.0.0.3"


def test_agent_joins_over_mtls_and_keeps_its_identity_without_the_token(tmp_path: Path) -> None:
    cp = secure_cp(tmp_path)
    try:
        vm = secure_vm_files(
            tmp_path / "vm", cp.secure_port, cp.security.ca.root_pem, cp.security.tokens.create("default", "product")
        )
        agent = make_agent(vm, tmp_path / "state", free_port("127.0.0.1"), control_plane_auth="MUTUAL_TLS")
        assert agent.plan()["control_plane"]["transport"] == "mtls"
        agent.start()
        try:
            wait_until(lambda: agent.client is not None and agent.client.connected and agent.synced, timeout=20)
            assert cp.registered_entry("default", ENTRY) is not None
            certs = tmp_path / "state" / "certs"
            assert {p.name for p in certs.iterdir()} >= {"cert-chain.pem", "key.pem", "root-cert.pem"}
            assert agent.certs.held.spiffe_id == "spiffe://cluster.local/ns/default/sa/product"
        finally:
            agent.stop()
        # Reboot: /var/run is gone, so is the token; the persistent certificate is enough.
        (vm / "istio-token").unlink()
        issued = cp.security.stats["issued"]
        again = make_agent(vm, tmp_path / "state", free_port("127.0.0.1"), control_plane_auth="MUTUAL_TLS")
        again.start()
        try:
            wait_until(lambda: again.client is not None and again.client.connected, timeout=20)
            assert cp.registered_entry("default", ENTRY) is not None
            assert cp.security.stats["issued"] == issued  # no new token-based issuance was needed
        finally:
            again.stop()
    finally:
        cp.stop()


def test_agent_refuses_a_control_plane_signed_by_another_root(tmp_path: Path) -> None:
    cp = secure_cp(tmp_path)
    mitm = secure_cp(tmp_path, "mitm")
    try:
        # The hosts file sends istiod.istio-system.svc to the impostor's port.
        vm = secure_vm_files(
            tmp_path / "vm", mitm.secure_port, cp.security.ca.root_pem, cp.security.tokens.create("default", "product")
        )
        agent = make_agent(vm, tmp_path / "state", free_port("127.0.0.1"), control_plane_auth="MUTUAL_TLS")
        agent.start()
        try:
            wait_until(lambda: agent.client is not None and agent.client.stats["failures"] >= 2, timeout=20)
            assert not agent.client.connected
            assert "UNAVAILABLE" in agent.client.last_error
            assert mitm.security.stats["issued"] == 0 and mitm.security.stats["refused"] == 0
            assert mitm.call_soon(lambda: len(mitm.ads.connections)) == 0
            assert not (tmp_path / "state" / "certs" / "cert-chain.pem").exists()
        finally:
            agent.stop()
    finally:
        mitm.stop()
        cp.stop()
        shutil.rmtree(tmp_path / "vm", ignore_errors=True)


def test_vm_to_vm_over_mesh_certificates_through_the_agent_inbound_listener(tmp_path: Path) -> None:
    """VM 1's agent holds product's certificate and terminates mTLS in front of
    its app; VM 2 (another identity, its certificate from the same control
    plane with its own token) originates mTLS checking it reaches product."""
    import socket
    import threading

    from pymesh.agent.certs import WorkloadCerts
    from pymesh.agent.dataplane import start_inbound_mtls
    from pymesh.relay.pytls import MtlsOriginator

    app = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                c, _ = app.accept()
            except OSError:
                return
            with c:
                c.sendall(b"product says hi to " + c.recv(100))

    threading.Thread(target=serve, daemon=True).start()
    cp = secure_cp(tmp_path)
    try:
        vm = secure_vm_files(
            tmp_path / "vm", cp.secure_port, cp.security.ca.root_pem, cp.security.tokens.create("default", "product")
        )
        agent = make_agent(vm, tmp_path / "state", free_port("127.0.0.1"), control_plane_auth="MUTUAL_TLS")
        agent.start()
        inbound = start_inbound_mtls(agent.config, agent.certs, f"127.0.0.1:0=127.0.0.1:{app.getsockname()[1]}")
        token2 = cp.security.tokens.create("default", "reviews")
        vm2 = WorkloadCerts(
            f"127.0.0.1:{cp.secure_port}", cp.security.ca.root_pem, tmp_path / "vm2", token=lambda: token2
        )
        vm2.ensure()
        out = MtlsOriginator(
            vm2.dir, ("127.0.0.1", inbound.port), ["spiffe://cluster.local/ns/default/sa/product"]
        ).start()
        try:
            with socket.create_connection(("127.0.0.1", out.port), timeout=10) as s:
                s.sendall(b"reviews")
                assert s.recv(100) == b"product says hi to reviews"
            assert inbound.stats["refused"] == 0 and out.stats["refused"] == 0
        finally:
            out.stop()
            inbound.stop()
            agent.stop()
    finally:
        cp.stop()
        app.close()


def test_agent_rotates_its_certificate_twice_on_one_stream(tmp_path: Path) -> None:
    """A 4-second certificate (renewed at half life): two rotations, the xDS stream
    opened with the first certificate is still the only one and still connected."""
    cp = secure_cp(tmp_path, server_cert_ttl=4)
    try:
        vm = secure_vm_files(
            tmp_path / "vm", cp.secure_port, cp.security.ca.root_pem, cp.security.tokens.create("default", "product")
        )
        agent = make_agent(vm, tmp_path / "state", free_port("127.0.0.1"), control_plane_auth="MUTUAL_TLS", cert_ttl=4)
        agent.start()
        try:
            wait_until(lambda: agent.client is not None and agent.client.connected, timeout=20)
            first = agent.certs.held.chain
            wait_until(lambda: agent.certs.renewals >= 2 and cp.security.stats["server_cert_renewals"] >= 2, timeout=20)
            assert agent.certs.held.chain != first
            assert agent.client.connected and agent.client.stats["streams"] == 1
            assert cp.call_soon(lambda: len(cp.ads.connections)) == 1
        finally:
            agent.stop()
    finally:
        cp.stop()
