"""A mesh root change on the VM's data path ("certificates rotate
before expiry (and after a root change) without dropping established
connections"), with the real agent, the control plane's real CA and the
native relay:

    host loopback: the control plane (CA + TLS port) and the agent's
        control-plane side (xDS, CreateCertificate), as in tests/unit/test_agent_mtls.py
    a private network namespace: the agent's outbound relay (127.0.0.1:15001)
        and inbound listener (15006), nftables REDIRECTing the service VIPs
        (127.1.0.0/16:18080) to the first and the VM's app (127.0.0.3:18080,
        a plaintext echo) to the second, and two pods that speak STRICT mTLS
        (Python ssl, so another TLS stack than the relay's rustls): "legacy"
        with a certificate from the first root, trusting the old + new bundle;
        "fresh" with a certificate from the new root, trusting only that root

The root change is done as an operator does it with this codebase: a new
root and an intermediate under it are made outside the mesh and plugged in
(Istio's cacerts layout, ``SecurityOptions.plugin_ca_dir`` / ``pymesh
controlplane --plugin-ca``) with root-cert.pem holding the new root first
and the old one after it (the trust bundle: workloads still holding a
certificate from the old root can authenticate to renew); the control plane
restarts on the same port with them, and the VM's root-cert.pem is replaced
by the same bundle. The agent notices the new roots, renews at once and
hands the new identity to the relay. Checked: the agent's ``root_changes``;
the certificate the relay serves (inbound) and presents (outbound) in new
handshakes (serial, issuer = the new intermediate); peers trusting only the
new root refusing the VM before and accepting it after, both ways; the
legacy pod (not renewed) still reached; connections opened before the
change (outbound and inbound) still carrying data both ways; xDS back on
the restarted control plane; and the agent's certificate directory keeping
the whole bundle as root-cert.pem (what ``--inbound-mtls`` verifies peers
with).

Needs root (a network namespace for the relay and its nftables REDIRECT rules) and nft:
without them it is skipped with the reason, or fails when PYMESH_REQUIRE_ROOT_TESTS is
set (CI)."""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from pymesh.agent import Agent
from pymesh.controlplane import ControlPlane
from pymesh.controlplane.ca.ca import CertificateAuthority
from pymesh.controlplane.ca.service import SecurityOptions
from pymesh.mesh.pki import SigningKey, cert_pem, key_pem, load_certs, new_key
from pymesh.relay import start_inbound_passthrough
from pymesh.relay.pytls import ALPN_TCP, InboundMtls
from support.agent import make_agent
from support.e2e import SVC_PORT, pod_yaml, service_yaml
from support.netns import inside, nft_netns
from support.ports import free_port
from support.sec import Echo, secure_vm_files, workload
from support.wait import wait_until

pytestmark = pytest.mark.netns

PRODUCT = "spiffe://cluster.local/ns/default/sa/product"
PODS = {"legacy": ("127.0.0.21", "127.1.0.1"), "fresh": ("127.0.0.22", "127.1.0.2")}  # name: (pod IP, VIP)
VM_APP = ("127.0.0.3", SVC_PORT)  # the VM's own application, reached through the inbound listener
# Outbound: the VIPs to the relay's 15001. Inbound: the VM's app port to 15006, except the
# inbound listener's own connections to the app (from 127.0.0.6, as Istio's passthrough).
RULES = f"""
table ip pmroot {{
  chain output {{
    type nat hook output priority -100; policy accept;
    ip daddr 127.1.0.0/16 tcp dport {SVC_PORT} redirect to :15001
    ip saddr 127.0.0.6 return
    ip daddr {VM_APP[0]} tcp dport {SVC_PORT} redirect to :15006
  }}
}}
"""


# --- the namespace -----------------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    with nft_netns("pmroot", RULES, "the root change test runs the relay in a network namespace") as name:
        yield name


# --- the peers ----------------------------------------------------------------------------


class Pod:
    """A pod's sidecar inbound: STRICT mTLS on ``ip:SVC_PORT`` in namespace ``ns``
    with the workload certificate in ``certs``, client certificates verified
    against that directory's root-cert.pem only; echoes what it receives.
    Records the leaf certificate of every client that completed a handshake
    and counts the refused handshakes. Without ``certs``: a plaintext echo app."""

    def __init__(self, ns: str, certs: Path | None, ip: str) -> None:
        self.ctx: ssl.SSLContext | None = None
        if certs is not None:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_cert_chain(certs / "cert-chain.pem", certs / "key.pem")
            self.ctx.load_verify_locations(cafile=str(certs / "root-cert.pem"))
            self.ctx.set_alpn_protocols(list(ALPN_TCP))
        with inside(ns):
            self.sock = socket.create_server((ip, SVC_PORT))
        self.clients: list[x509.Certificate] = []
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        tls = conn
        if self.ctx is not None:
            try:
                tls = self.ctx.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                self.refused += 1
                conn.close()
                return
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            self.clients.append(x509.load_der_x509_certificate(der))
        with tls:
            try:
                while data := tls.recv(65536):
                    tls.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


def exchange(conn: socket.socket, payload: bytes) -> bytes:
    """Sends ``payload`` and reads until as many bytes came back (or the connection ended)."""
    conn.sendall(payload)
    out = b""
    while len(out) < len(payload):
        try:
            data = conn.recv(65536)
        except OSError:
            break
        if not data:
            break
        out += data
    return out


def mtls(ns: str | None, certs: Path, addr: tuple[str, int]) -> ssl.SSLSocket:
    """An mTLS connection as a mesh workload makes it, with the certificate in ``certs``,
    the server verified against that directory's root-cert.pem (SPIFFE: no host name)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(certs / "root-cert.pem"))
    ctx.load_cert_chain(certs / "cert-chain.pem", certs / "key.pem")
    ctx.set_alpn_protocols(list(ALPN_TCP))
    with inside(ns) if ns is not None else contextlib.nullcontext():
        sock = socket.create_connection(addr, timeout=10)
    return ctx.wrap_socket(sock)


def served(tls: ssl.SSLSocket) -> x509.Certificate:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def once(ns: str, vip: str, payload: bytes) -> bytes:
    """One connection to ``vip`` through the relay: what came back for ``payload``."""
    with inside(ns):
        conn = socket.create_connection((vip, SVC_PORT), timeout=10)
    with conn:
        return exchange(conn, payload)


# --- the operator's new PKI ----------------------------------------------------------------


def new_plugin_ca(d: Path, old_root_pem: str) -> tuple[x509.Certificate, x509.Certificate]:
    """A new root and an intermediate signed by it, as files for ``--plugin-ca`` (Istio's
    cacerts: ca-cert/ca-key = the intermediate, cert-chain = intermediate + root,
    root-cert = the new root first, then the old one: the trust bundle of the change)."""

    def ca_cert(name: str, key: SigningKey, issuer: x509.Name | None, signer: SigningKey) -> x509.Certificate:
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer or subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(signer, hashes.SHA256())
        )

    root_key, int_key = new_key(), new_key()
    root = ca_cert("pymesh root 2", root_key, None, root_key)
    intermediate = ca_cert("pymesh intermediate 2", int_key, root.subject, root_key)
    d.mkdir(parents=True)
    (d / "ca-cert.pem").write_bytes(cert_pem(intermediate))
    (d / "ca-key.pem").write_bytes(key_pem(int_key))
    (d / "cert-chain.pem").write_bytes(cert_pem(intermediate) + cert_pem(root))
    (d / "root-cert.pem").write_bytes(cert_pem(root) + old_root_pem.encode())
    return root, intermediate


def start_cp(tmp: Path, port: int, plugin: Path | None = None) -> ControlPlane:
    sec = SecurityOptions(secure_listen=f"127.0.0.1:{port}", plugin_ca_dir=str(plugin) if plugin else None)
    return ControlPlane(
        tmp / "mesh", xds_listen="127.0.0.1:0", data_dir=tmp / "cp-data", security=sec, plaintext=False, debounce=0.02
    ).start()


def leaf(agent: Agent) -> x509.Certificate:
    return load_certs(agent.certs.held.chain, "held")[0]


def test_a_root_change_reaches_the_relay_and_keeps_established_connections(tmp_path: Path, netns: str) -> None:
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    # The pods speak mTLS: they carry the sidecar injector's label, which is what makes istiod
    # (and pymesh) give their endpoints tlsMode istio.
    sidecar = ", security.istio.io/tlsMode: istio"
    (mesh / "services.yaml").write_text(
        "".join(
            service_yaml(name, vip) + pod_yaml(f"{name}-0", name, ip, extra_labels=sidecar)
            for name, (ip, vip) in PODS.items()
        )
    )
    port = free_port("127.0.0.1")
    cp = start_cp(tmp_path, port)
    old_ca = cp.security.ca
    old_root = old_ca.root
    new_root, intermediate = new_plugin_ca(tmp_path / "cacerts", old_ca.root_pem)
    # The pods: legacy with a certificate from the first root, already trusting the bundle
    # (roots are distributed before the switch); fresh with one from the operator's new CA.
    new_ca = CertificateAuthority(tmp_path / "operator-ca", plugin_dir=tmp_path / "cacerts")
    legacy_certs = workload(old_ca, tmp_path / "legacy", "product")
    (legacy_certs / "root-cert.pem").write_bytes((tmp_path / "cacerts" / "root-cert.pem").read_bytes())
    legacy = Pod(netns, legacy_certs, PODS["legacy"][0])
    fresh_certs = workload(new_ca, tmp_path / "fresh", "product")
    (fresh_certs / "root-cert.pem").write_bytes(cert_pem(new_root))  # the new root only
    fresh = Pod(netns, fresh_certs, PODS["fresh"][0])
    app = Pod(netns, None, VM_APP[0])

    vm = secure_vm_files(
        tmp_path / "vm", port, old_ca.root_pem, cp.security.tokens.create("default", "product"), group=""
    )
    agent = make_agent(
        vm,
        tmp_path / "state",
        free_port("127.0.0.1"),
        control_plane_auth="MUTUAL_TLS",
        outbound_listen=["127.0.0.1:15001"],
    )
    # The relay (its listeners and threads, so its upstream connections too) in the namespace;
    # the control-plane side (gRPC) stays on the host's loopback with the control plane. The
    # inbound listener is started as the agent starts it with --capture, whose rules would
    # exempt the agent's uid (root here, so this test's connections too): RULES stand in.
    start_data_path = agent.data.start

    def data_path_in_netns(tables: Any, mode: str | None) -> None:
        with inside(netns):
            start_data_path(tables, mode)
            agent.data.inbound = start_inbound_passthrough(listen=["0.0.0.0:15006"])

    agent.data.start = data_path_in_netns  # type: ignore[method-assign]
    agent.start()
    held: socket.socket | None = None
    inbound_held: ssl.SSLSocket | None = None
    try:
        agent.certs.root_check = 0.2  # root-cert.pem re-read often (the default is 5 s)
        wait_until(lambda: agent.proxy.identity == PRODUCT, timeout=20)
        first = leaf(agent)
        first.verify_directly_issued_by(old_root)

        # 1. A long-lived connection over mTLS to the legacy pod, with the first root.
        wait_until(lambda: once(netns, PODS["legacy"][1], b"warm-up") == b"warm-up", timeout=20)
        with inside(netns):
            held = socket.create_connection((PODS["legacy"][1], SVC_PORT), timeout=10)
        assert exchange(held, b"before the change") == b"before the change"
        handshakes = len(legacy.clients)
        assert {c.serial_number for c in legacy.clients} == {first.serial_number}
        # And one into the VM's app through the inbound listener, from a legacy peer.
        inbound_held = mtls(netns, legacy_certs, VM_APP)
        assert served(inbound_held).serial_number == first.serial_number
        assert exchange(inbound_held, b"inbound before the change") == b"inbound before the change"
        # A peer trusting only the new root does not accept the VM yet.
        with pytest.raises(ssl.SSLCertVerificationError):
            mtls(netns, fresh_certs, VM_APP)
        # The fresh pod's certificate is from the new root, which the relay does not trust yet.
        failures = agent.proxy.tls_stats()["handshake_failures"]
        assert once(netns, PODS["fresh"][1], b"too early") == b""
        assert agent.proxy.tls_stats()["handshake_failures"] > failures and not fresh.clients
        updates = agent.proxy.tls_stats()["identity_updates"]

        # 2. The root change: the control plane restarts on its port with the plugged-in CA,
        #    then the VM's root-cert.pem becomes the bundle (new root, old root).
        cp.stop()
        cp = start_cp(tmp_path, port, tmp_path / "cacerts")
        assert cp.security.ca.root == new_root
        (vm / "root-cert.pem").write_text(cp.security.ca.trust_pem)

        # 3. The agent counted it, renewed under the new root and gave the relay the new identity.
        wait_until(lambda: agent.certs.root_changes == 1, timeout=15)
        wait_until(lambda: agent.proxy.tls_stats()["identity_updates"] > updates, timeout=15)
        now = leaf(agent)
        now.verify_directly_issued_by(intermediate)
        assert now.issuer == intermediate.subject and now.serial_number != first.serial_number
        assert agent.proxy.identity == PRODUCT and agent.certs.root_changes == 1
        # xDS is back too: the restarted control plane's certificate verifies under the bundle.
        wait_until(lambda: cp.call_soon(lambda: len(cp.ads.connections)) == 1, timeout=15)

        # New handshakes: a peer trusting only the new root accepts the VM's inbound, which
        # serves the renewed certificate (serial, issuer); and the fresh pod accepts the
        # VM's outbound, which presented the renewed certificate too.
        with mtls(netns, fresh_certs, VM_APP) as tls:
            assert served(tls).serial_number == now.serial_number and served(tls).issuer == intermediate.subject
            assert exchange(tls, b"inbound after the change") == b"inbound after the change"
        assert once(netns, PODS["fresh"][1], b"after the change") == b"after the change"
        assert fresh.clients and fresh.clients[-1].serial_number == now.serial_number
        assert fresh.clients[-1].issuer == intermediate.subject

        # The established connections still carry data both ways, on their first handshakes.
        payload = os.urandom(16384)
        assert exchange(held, payload) == payload
        assert len(legacy.clients) == handshakes
        assert exchange(inbound_held, payload) == payload
        # The old root stays trusted by the relay: a peer that has not renewed yet is reached.
        assert once(netns, PODS["legacy"][1], b"not renewed yet") == b"not renewed yet"
        assert len(legacy.clients) == handshakes + 1 and legacy.clients[-1].serial_number == now.serial_number

        # The Python data path (`pymesh agent --inbound-mtls`) reads the agent's certificate
        # directory: its root-cert.pem is the trust bundle too, so a peer still holding a
        # certificate from the old root (and trusting the bundle) is accepted until it renews.
        echo = Echo()
        inbound = InboundMtls(agent.certs.dir, ("127.0.0.1", echo.server_address[1]), listen=("127.0.0.1", 0)).start()
        try:
            with mtls(None, legacy_certs, ("127.0.0.1", inbound.port)) as tls:
                assert exchange(tls, b"an old-root peer") == b"an old-root peer"
        finally:
            inbound.stop()
            echo.shutdown()
            echo.server_close()
    finally:
        for conn in (held, inbound_held):
            if conn is not None:
                conn.close()
        agent.stop()
        cp.stop()
        for pod in (legacy, fresh, app):
            pod.close()
