"""Workload mTLS over real loopback sockets: an app's bytes go plaintext →
originator → mTLS (Istio ALPN, SPIFFE check) → inbound 15006-style listener →
app; the wire between carries no plaintext; openssl s_client with a wrong
identity or without a certificate is refused; STRICT vs PERMISSIVE; a
certificate rotation leaves an open connection running."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymesh.controlplane.ca.ca import CertificateAuthority
from pymesh.relay.pytls import InboundMtls, MtlsOriginator
from support.sec import Echo, s_client, workload
from support.wait import wait_until

PRODUCT = "spiffe://cluster.local/ns/default/sa/product"
CLIENT = "spiffe://cluster.local/ns/default/sa/client"
SECRET = b"very-secret-payload-" * 50


class Tap:
    """A TCP forwarder recording every byte it carries (the "veth" between two hosts)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.seen = bytearray()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.target = target
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        for s in (self.sock, *self.conns):
            s.close()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(self.target)
            self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                self.seen += data
                b.sendall(data)
        except OSError:
            pass
        finally:
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def roundtrip(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """Sends, reads the echo (or EOF), closes. No half-close: a TLS hop has none
    (close_notify ends both directions), so the relays close both ways at an EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        out = bytearray()
        try:
            while len(out) < len(payload) and (data := s.recv(65536)):
                out += data
        except ConnectionResetError:
            pass  # refused: closed with our unread bytes pending (RST)
        return bytes(out)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[tuple[CertificateAuthority, Echo, InboundMtls, Path]]:
    ca = CertificateAuthority(tmp_path / "ca")
    app = Echo()
    inbound = InboundMtls(
        workload(ca, tmp_path / "product", "product"), app.server_address[:2], listen=("127.0.0.1", 0)
    ).start()
    yield ca, app, inbound, tmp_path
    inbound.stop()
    app.shutdown()
    app.server_close()


def test_bytes_cross_the_wire_only_encrypted(mesh: tuple[CertificateAuthority, Echo, InboundMtls, Path]) -> None:
    ca, _, inbound, tmp = mesh
    tap = Tap(("127.0.0.1", inbound.port))
    out = MtlsOriginator(workload(ca, tmp / "client", "client"), ("127.0.0.1", tap.port), [PRODUCT]).start()
    try:
        assert roundtrip(out.port, SECRET) == SECRET
        assert len(tap.seen) > len(SECRET) * 2 and b"very-secret-payload" not in tap.seen
        assert tap.seen[0] == 0x16  # a TLS handshake record opened the connection
        # Istio's ALPN offer (the ClientHello is cleartext): `istio` alone, as this reference
        # data path does not speak the metadata exchange.
        assert b"\x05istio" in tap.seen and b"istio-peer-exchange" not in tap.seen
        wait_until(lambda: inbound.stats["bytes"] >= 2 * len(SECRET))
        assert inbound.stats["refused"] == 0
    finally:
        out.stop()
        tap.close()


def test_originator_refuses_an_endpoint_with_another_identity(
    mesh: tuple[CertificateAuthority, Echo, InboundMtls, Path],
) -> None:
    ca, _, inbound, tmp = mesh
    out = MtlsOriginator(workload(ca, tmp / "client", "client"), ("127.0.0.1", inbound.port), [CLIENT]).start()
    try:
        assert roundtrip(out.port, b"hello") == b""
        assert out.stats["refused"] == 1
    finally:
        out.stop()


def test_openssl_s_client_with_the_wrong_identity_or_none_is_refused(
    mesh: tuple[CertificateAuthority, Echo, InboundMtls, Path],
) -> None:
    ca, app, _, tmp = mesh
    only_client = InboundMtls(
        tmp / "product", app.server_address[:2], listen=("127.0.0.1", 0), allowed=[CLIENT]
    ).start()
    try:
        root = tmp / "product" / "root-cert.pem"
        good = s_client("127.0.0.1", only_client.port, root, workload(ca, tmp / "client", "client"))
        assert "PING-THROUGH-MTLS" in good
        wrong = s_client("127.0.0.1", only_client.port, root, workload(ca, tmp / "other", "intruder"))
        assert "PING-THROUGH-MTLS" not in wrong
        none = s_client("127.0.0.1", only_client.port, root, None)
        assert "PING-THROUGH-MTLS" not in none
        foreign = CertificateAuthority(tmp / "foreign-ca")
        impostor = s_client("127.0.0.1", only_client.port, root, workload(foreign, tmp / "impostor", "client"))
        assert "PING-THROUGH-MTLS" not in impostor
        # A failed handshake closes the connection before the listener's task resumes to count
        # it: the client may be gone (and this thread here) before the last refusal is counted.
        wait_until(lambda: only_client.stats["refused"] >= 3, timeout=5)
        assert only_client.stats["refused"] == 3
    finally:
        only_client.stop()


def test_strict_refuses_plaintext_and_permissive_passes_it(
    mesh: tuple[CertificateAuthority, Echo, InboundMtls, Path],
) -> None:
    _, app, inbound, tmp = mesh
    assert roundtrip(inbound.port, b"plain") == b""
    assert inbound.stats["refused"] == 1
    permissive = InboundMtls(tmp / "product", app.server_address[:2], listen=("127.0.0.1", 0), mode="PERMISSIVE")
    permissive.start()
    try:
        assert roundtrip(permissive.port, b"plain") == b"plain"
        assert permissive.stats["plaintext"] == 1
    finally:
        permissive.stop()


def test_rotation_keeps_an_open_connection(mesh: tuple[CertificateAuthority, Echo, InboundMtls, Path]) -> None:
    ca, _, inbound, tmp = mesh
    client_dir = workload(ca, tmp / "client", "client", ttl=3600)
    out = MtlsOriginator(client_dir, ("127.0.0.1", inbound.port), [PRODUCT]).start()
    try:
        with socket.create_connection(("127.0.0.1", out.port), timeout=10) as s:
            s.sendall(b"before")
            assert s.recv(100) == b"before"
            before = (tmp / "product" / "cert-chain.pem").read_bytes()
            for _ in range(2):  # two rotations of both sides' files
                time.sleep(0.01)
                workload(ca, tmp / "product", "product")
                workload(ca, client_dir, "client")
            assert (tmp / "product" / "cert-chain.pem").read_bytes() != before
            s.sendall(b"after")
            assert s.recv(100) == b"after"
        assert roundtrip(out.port, b"new") == b"new"  # a new connection uses the new files
    finally:
        out.stop()
