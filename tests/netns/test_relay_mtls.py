"""mTLS in the native relay, end to end with real capture: in a private
network namespace, nftables REDIRECTs service VIPs (127.1.0.0/16:80) to the
outbound proxy (15001) and the app ports (8000, 8001) to the inbound
(15006), so  client -> VIP -> native outbound -(mTLS)-> captured endpoint
-> native inbound -> app (from 127.0.0.6). Certificates come from our own
CA (pymesh.controlplane.ca). Interoperability with the Python datapath
(OpenSSL) both ways, openssl s_client as a hostile client, identity checks
on both sides, PeerAuthentication modes, rotation under a live connection,
bad PEM, half-close and a large checksummed transfer.

The test thread joins the namespace with setns(2) for each test (threads
and sockets created meanwhile stay in it).

Needs root (a network namespace, setns(2), nftables REDIRECT rules), iproute2,
nft and openssl: without them it is skipped with the reason, or fails when
PYMESH_REQUIRE_ROOT_TESTS is set (CI)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from pymesh._native import tcp_metrics_text
from pymesh.controlplane.ca.ca import CertificateAuthority
from pymesh.relay import OutboundProxy, TlsConfigError, start_inbound_passthrough
from pymesh.relay.pytls import InboundMtls, MtlsOriginator
from support import sec
from support.netns import inside, nft_netns
from support.relays import Apps, echo, exchange, settled, tables
from support.sec import Workload, issue

PRODUCT = "spiffe://cluster.local/ns/default/sa/product"
CLIENT = "spiffe://cluster.local/ns/default/sa/client"
APP = "127.0.0.3"  # the local app's address (captured ports 8000 echo, 8001 sink, 8002 HTTP)
PY_INBOUND = ("127.0.0.4", 9443)  # the Python InboundMtls (not captured)
WRONG_EP = "127.0.0.5"  # captured too, but EDS says its account is "reviews"
WEB = "outbound|80||web.default.svc.cluster.local"
RULES = """
table ip pmmtls {
  chain output {
    type nat hook output priority -100; policy accept;
    ip daddr 127.1.0.0/16 tcp dport 80 redirect to :15001
    ip saddr 127.0.0.6 return
    ip daddr 127.0.0.0/8 tcp dport { 8000, 8001, 8002 } redirect to :15006
  }
}
"""


def cluster(name: str, eps: list[tuple[str, int, dict[str, Any]]]) -> dict[str, Any]:
    def ep(addr: str, port: int, meta: dict[str, Any]) -> dict[str, Any]:
        e: dict[str, Any] = {"endpoint": {"address": {"socket_address": {"address": addr, "port_value": port}}}}
        if meta:
            e["metadata"] = {"filter_metadata": meta}
        return e

    return {
        "name": name,
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"endpoints": [{"lb_endpoints": [ep(*x) for x in eps]}]},
    }


def istio(sa: str, workload: str = "app-v1;default;app;v1;Kubernetes") -> dict[str, Any]:
    return {
        "envoy.transport_socket_match": {"tlsMode": "istio"},
        "istio": {"service_account": sa, "workload": workload},
    }


# VIP -> cluster. Bare "product" + the workload's namespace, a full URI, an
# empty account (any identity of the trust domain), a wrong account, no tlsMode.
CLUSTERS = {
    "127.1.0.1": cluster("outbound|80||echo.default.svc.cluster.local", [(APP, 8000, istio("product"))]),
    "127.1.0.2": cluster("outbound|80||sink.default.svc.cluster.local", [(APP, 8001, istio(PRODUCT))]),
    "127.1.0.3": cluster("outbound|80||py.default.svc.cluster.local", [(*PY_INBOUND, istio(""))]),
    "127.1.0.4": {
        **cluster(
            "outbound|80||wrong.default.svc.cluster.local",
            [(WRONG_EP, 8000, istio("reviews")), (APP, 8000, istio("product"))],
        ),
        # Two consecutive local-origin failures (503 to Envoy) eject.
        "outlier_detection": {"consecutive_5xx": 2, "max_ejection_percent": 100, "interval": "60s"},
    },
    "127.1.0.5": cluster("outbound|80||plain.default.svc.cluster.local", [(APP, 8000, {})]),
    # An HTTP app (8002) behind the inbound, reached through the outbound's HTTP path.
    "127.1.0.6": cluster(WEB, [(APP, 8002, istio("product"))]),
}


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    with nft_netns("pmtls", RULES, "the relay mTLS tests capture in a network namespace") as name:
        yield name


def sink(c: socket.socket) -> None:
    """The app on :8001: after the client's FIN, answers "<bytes> <sha256>" and closes."""
    h, n = hashlib.sha256(), 0
    with c, contextlib.suppress(OSError):
        while data := c.recv(1 << 18):
            h.update(data)
            n += len(data)
        c.sendall(f"{n} {h.hexdigest()}".encode())


def local_apps() -> Apps:
    """The local app: an echo server on :8000 and ``sink`` on :8001."""
    return Apps({8000: echo, 8001: sink})


@dataclass
class Mesh:
    ca: CertificateAuthority
    tmp: Path
    outbound: OutboundProxy
    inbound: OutboundProxy
    client: Workload  # the outbound's identity
    product: Workload  # the inbound's identity
    apps: Apps


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("ca") / "ca")


@pytest.fixture
def mesh(netns: str, ca: CertificateAuthority, tmp_path: Path) -> Iterator[Mesh]:
    with inside(netns):
        apps = local_apps()
        lb, redirect = tables(CLUSTERS)
        outbound = OutboundProxy(redirect, lb, listen=["127.0.0.1:15001"], connect_timeout=3.0, seed=1)
        outbound.start()
        inbound = start_inbound_passthrough(listen=["127.0.0.1:15006"], connect_timeout=3.0)
        client = issue(ca, tmp_path / "client", "client")
        product = issue(ca, tmp_path / "product", "product")
        outbound.set_identity(*client.args())
        inbound.set_identity(*product.args())
        try:
            yield Mesh(ca, tmp_path, outbound, inbound, client, product, apps)
        finally:
            outbound.stop()
            inbound.stop()
            apps.close()


def roundtrip(host: str, port: int, payload: bytes) -> bytes:
    """Sends and reads the echo without half-closing: the Python datapath
    (asyncio SSL) closes both directions at a close_notify."""
    out = bytearray()
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(payload)
        with contextlib.suppress(ConnectionResetError):
            while len(out) < len(payload) and (data := s.recv(1 << 16)):
                out += data
    return bytes(out)


def wait_idle(mesh: Mesh) -> None:
    settled(mesh.outbound, mesh.inbound)


def tls_client(w: Workload, host: str = APP, port: int = 8000, alpn: tuple[str, ...] = ("istio",)) -> ssl.SSLSocket:
    """A mesh client with Python's OpenSSL, for looking at what the inbound serves; it offers
    ``alpn`` (by default no metadata exchange: it does not speak it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=w.root)
    ctx.load_cert_chain(w.dir / "cert-chain.pem", w.dir / "key.pem")
    ctx.set_alpn_protocols(list(alpn))
    return ctx.wrap_socket(socket.create_connection((host, port), timeout=10))


def served_serial(w: Workload) -> int:
    with tls_client(w) as s:
        der = s.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


def test_native_outbound_to_native_inbound_is_mtls_end_to_end(mesh: Mesh) -> None:
    # STRICT: the inbound would close a plaintext connection, so a reply proves TLS.
    mesh.inbound.set_peer_authentication("STRICT")
    assert exchange("127.1.0.1", 80, b"hello through mTLS") == b"hello through mTLS"
    assert exchange("127.1.0.2", 80, b"abc") == f"3 {hashlib.sha256(b'abc').hexdigest()}".encode()
    out, inn = mesh.outbound.tls_stats(), mesh.inbound.tls_stats()
    assert out["handshakes"] == 2 and out["handshake_failures"] == 0
    assert inn["handshakes"] == 2 and inn["plaintext_passthrough"] == 0 and inn["plaintext_refused"] == 0
    # The app saw the inbound's passthrough source, as for plaintext.
    assert mesh.apps.peers == ["127.0.0.6", "127.0.0.6"]
    st = mesh.outbound.stats()
    assert st["cluster"] == 2 and st["connect_failures"] == 0
    assert mesh.outbound.identity == CLIENT and mesh.inbound.identity == PRODUCT
    # A client offering `istio` only gets it (and no metadata-exchange frame).
    with tls_client(mesh.client) as t:
        assert t.selected_alpn_protocol() == "istio"
        assert t.version() in ("TLSv1.3", "TLSv1.2")


def test_large_transfer_and_half_close_through_two_tls_hops(mesh: Mesh) -> None:
    size = 64 << 20
    block = os.urandom(1 << 20)
    want = hashlib.sha256(block * (size // len(block))).hexdigest()
    with socket.create_connection(("127.1.0.2", 80), timeout=30) as s:
        for _ in range(size // len(block)):
            s.sendall(block)
        # Our FIN travels as close_notify and comes out as a FIN at the sink,
        # which only then answers: the other direction still works.
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while data := s.recv(4096):
            reply += data
    assert reply.decode() == f"{size} {want}"
    # Both directions at once (echo), checksummed.
    payload = os.urandom(8 << 20)
    got = bytearray()
    with socket.create_connection(("127.1.0.1", 80), timeout=30) as s:
        t = threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)))
        t.start()
        while data := s.recv(1 << 16):
            got += data
        t.join()
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    st = mesh.outbound.stats()
    assert st["bytes_sent"] == size + len(payload) and st["bytes_received"] >= len(payload)
    wait_idle(mesh)
    assert mesh.outbound.stats()["resets"] == 0 and mesh.inbound.stats()["resets"] == 0
    assert mesh.outbound.stats()["active"] == 0 and mesh.inbound.stats()["active"] == 0


def test_native_outbound_to_the_python_inbound_openssl(mesh: Mesh) -> None:
    peer = InboundMtls(mesh.product.dir, (APP, 8000), listen=PY_INBOUND, mode="STRICT", allowed=[CLIENT])
    peer.start()
    try:
        # The Python inbound's target is the app port, captured again by the
        # rules into the native inbound, which passes plaintext (PERMISSIVE).
        assert roundtrip("127.1.0.3", 80, b"rustls -> OpenSSL") == b"rustls -> OpenSSL"
        assert peer.stats["refused"] == 0 and peer.stats["connections"] == 1
        assert mesh.outbound.tls_stats()["handshakes"] == 1
    finally:
        peer.stop()


def test_python_originator_to_the_native_inbound(mesh: Mesh) -> None:
    mesh.inbound.set_peer_authentication("STRICT")
    orig = MtlsOriginator(mesh.client.dir, (APP, 8000), [PRODUCT]).start()
    try:
        with socket.create_connection(("127.0.0.1", orig.port), timeout=10) as s:
            s.sendall(b"OpenSSL -> rustls")
            assert s.recv(100) == b"OpenSSL -> rustls"
        assert orig.stats["refused"] == 0
        assert mesh.inbound.tls_stats()["handshakes"] == 1
        # The Python originator checks the native inbound's identity too.
        wrong = MtlsOriginator(mesh.client.dir, (APP, 8000), [CLIENT]).start()
        try:
            with socket.create_connection(("127.0.0.1", wrong.port), timeout=10) as s:
                s.sendall(b"x")
                try:
                    got = s.recv(100)
                except ConnectionResetError:
                    got = b""  # the refusal as a reset rather than a FIN: the same outcome
                assert got == b""
            assert wrong.stats["refused"] == 1
        finally:
            wrong.stop()
    finally:
        orig.stop()


def test_an_endpoint_with_the_wrong_identity_is_a_connect_failure_and_another_is_tried(mesh: Mesh) -> None:
    for i in range(6):
        assert exchange("127.1.0.4", 80, b"ping %d" % i) == b"ping %d" % i
    st, tls = mesh.outbound.stats(), mesh.outbound.tls_stats()
    # Round robin sends first attempts to the impostor too; each is refused
    # by the identity check, reported to outlier detection as a connect
    # failure and retried on the right endpoint, until the impostor is ejected.
    assert st["connect_failures"] == 2 and st["retries"] == 2
    assert tls["peer_rejected"] == 2 == tls["handshake_failures"]
    wait_idle(mesh)
    eps = {e["address"]: e for e in mesh.outbound.tables[1].endpoints("outbound|80||wrong.default.svc.cluster.local")}
    assert eps[f"{WRONG_EP}:8000"]["ejected"] and eps[f"{WRONG_EP}:8000"]["ejections"] == 1
    assert not eps[f"{APP}:8000"]["ejected"] and eps[f"{APP}:8000"]["active_requests"] == 0
    assert eps[f"{APP}:8000"]["tls_mode"] == "istio"


def test_without_an_identity_tls_mode_istio_endpoints_are_never_sent_plaintext(mesh: Mesh) -> None:
    # mTLS once failed open: before any identity, or after it was
    # cleared, a tlsMode: istio endpoint waits for one (the connect timeout,
    # 3 s here) and is then refused: it never gets plaintext.
    mesh.outbound.clear_identity()
    assert mesh.outbound.identity is None
    assert exchange("127.1.0.1", 80, b"must not leak") == b""
    tls, st = mesh.outbound.tls_stats(), mesh.outbound.stats()
    assert tls["identity_waits"] == 1 and tls["no_identity"] == 1 and tls["handshakes"] == 0
    # Nothing was even connected to: the inbound and the app saw nothing.
    assert st["connect_attempts"] == 0 and st["upstream_failed"] == 1
    assert mesh.inbound.tls_stats()["plaintext_passthrough"] == 0 and mesh.apps.peers == []
    # Not the endpoint's fault: outlier detection was not told.
    (ep,) = mesh.outbound.tables[1].endpoints("outbound|80||echo.default.svc.cluster.local")
    assert not ep["ejected"] and ep["ejections"] == 0
    # An endpoint without tlsMode: istio is plaintext as ever.
    assert exchange("127.1.0.5", 80, b"plain is fine") == b"plain is fine"
    # An identity published while a connection waits: it goes on, in mTLS.
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.append(exchange("127.1.0.1", 80, b"after the wait")))
    t.start()
    deadline = time.monotonic() + 5
    while mesh.outbound.tls_stats()["identity_waits"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    mesh.outbound.set_identity(*mesh.client.args())
    t.join()
    assert got == [b"after the wait"]
    assert mesh.outbound.tls_stats()["handshakes"] == 1 and mesh.inbound.tls_stats()["handshakes"] == 1


def test_auto_mtls_off_reaches_tls_mode_istio_endpoints_in_plaintext(mesh: Mesh) -> None:
    # Istio's enableAutoMtls: false, for a mesh without workload identities at all: an
    # explicit setting, never a fallback. The outbound on 15001 replaced by one without it.
    mesh.outbound.stop()
    lb, redirect = tables(CLUSTERS)
    plain = OutboundProxy(redirect, lb, listen=["127.0.0.1:15001"], connect_timeout=3.0, auto_mtls=False)
    plain.start()
    try:
        assert exchange("127.1.0.1", 80, b"plaintext by choice") == b"plaintext by choice"
        assert plain.tls_stats()["handshakes"] == 0 and plain.tls_stats()["identity_waits"] == 0
        # The inbound (PERMISSIVE) saw plaintext and passed it on.
        assert mesh.inbound.tls_stats()["plaintext_passthrough"] == 1
    finally:
        plain.stop()


def s_client(
    w: Workload | None,
    root: str,
    tmp: Path,
    *extra: str,
    alpn: str | None = "istio",
    verbose: bool = False,
) -> str:
    """support.sec.s_client to the app's captured port, trusting ``root``, as ``w`` (if any)."""
    (tmp / "root.pem").write_text(root)
    return sec.s_client(APP, 8000, tmp / "root.pem", w.dir if w else None, *extra, alpn=alpn, verbose=verbose)


def test_openssl_s_client_with_a_wrong_identity_or_another_ca_is_refused(mesh: Mesh) -> None:
    mesh.inbound.set_peer_authentication("STRICT")
    mesh.inbound.set_allowed_identities([CLIENT])
    root = mesh.product.root
    assert "PING-THROUGH-MTLS" in s_client(mesh.client, root, mesh.tmp)
    assert "PING-THROUGH-MTLS" in s_client(mesh.client, root, mesh.tmp, "-tls1_2"), "TLS 1.2 too"
    wrong = issue(mesh.ca, mesh.tmp / "intruder", "intruder")
    assert "PING-THROUGH-MTLS" not in s_client(wrong, root, mesh.tmp)
    foreign = CertificateAuthority(mesh.tmp / "foreign-ca")
    impostor = issue(foreign, mesh.tmp / "impostor", "client")  # the right name, the wrong CA
    assert "PING-THROUGH-MTLS" not in s_client(impostor, root, mesh.tmp)
    assert "PING-THROUGH-MTLS" not in s_client(None, root, mesh.tmp)
    tls = mesh.inbound.tls_stats()
    assert tls["handshakes"] == 2 and tls["handshake_failures"] == 3
    assert tls["peer_rejected"] == 2  # the third sent no certificate at all
    mesh.inbound.set_allowed_identities(None)
    assert "PING-THROUGH-MTLS" in s_client(wrong, root, mesh.tmp), "any identity of the trust domain again"


def test_openssl_s_client_offering_only_unknown_alpn_gets_through_without_alpn(mesh: Mesh) -> None:
    # Envoy's inbound answers an ALPN offer with none of its protocols by
    # negotiating none (BoringSSL SSL_TLSEXT_ERR_NOACK), not with a
    # no_application_protocol alert; STRICT, so the echo proves mTLS.
    mesh.inbound.set_peer_authentication("STRICT")
    root = mesh.product.root
    for extra in [(), ("-tls1_2",)]:
        out = s_client(mesh.client, root, mesh.tmp, *extra, alpn="foo", verbose=True)
        assert "PING-THROUGH-MTLS" in out and "No ALPN negotiated" in out, out
    out = s_client(mesh.client, root, mesh.tmp, alpn=None, verbose=True)
    assert "PING-THROUGH-MTLS" in out and "No ALPN negotiated" in out, out
    # One of ours among unknown ones is negotiated, by our order.
    for offer in ["istio", "foo,istio"]:
        out = s_client(mesh.client, root, mesh.tmp, alpn=offer, verbose=True)
        assert "PING-THROUGH-MTLS" in out and "ALPN protocol: istio\n" in out, out
    tls = mesh.inbound.tls_stats()
    assert tls["handshakes"] == 5 and tls["handshake_failures"] == 0 and tls["plaintext_refused"] == 0
    assert mesh.apps.peers == ["127.0.0.6"] * 5, (mesh.apps.peers, tls)
    # Unknown ALPN relaxes nothing else: no client certificate is still refused.
    assert "PING-THROUGH-MTLS" not in s_client(None, root, mesh.tmp, alpn="foo", verbose=True)
    assert mesh.inbound.tls_stats()["handshake_failures"] == 1


def test_peer_authentication_modes(mesh: Mesh) -> None:
    inbound = mesh.inbound
    assert inbound.peer_authentication == "PERMISSIVE"
    # A plaintext client of the app (captured to the inbound) and a plaintext cluster.
    assert exchange(APP, 8000, b"plain") == b"plain"
    assert exchange("127.1.0.5", 80, b"plain via outbound") == b"plain via outbound"
    assert exchange("127.1.0.1", 80, b"tls") == b"tls"
    inbound.set_peer_authentication("STRICT")
    assert exchange(APP, 8000, b"plain") == b""
    assert exchange("127.1.0.5", 80, b"plain via outbound") == b""
    assert exchange("127.1.0.1", 80, b"tls") == b"tls"
    assert inbound.tls_stats()["plaintext_refused"] == 2
    inbound.set_peer_authentication("DISABLE")
    assert exchange(APP, 8000, b"plain") == b"plain"
    assert inbound.tls_stats()["plaintext_passthrough"] == 3
    # STRICT without an identity refuses everything (fail closed); PERMISSIVE
    # without one is the plain passthrough of old.
    inbound.set_peer_authentication("STRICT")
    inbound.clear_identity()
    assert inbound.identity is None
    assert exchange(APP, 8000, b"plain") == b""
    assert exchange("127.1.0.1", 80, b"tls") == b""
    inbound.set_peer_authentication("PERMISSIVE")
    assert exchange(APP, 8000, b"plain") == b"plain"
    with pytest.raises(TlsConfigError, match="STRICT, PERMISSIVE or DISABLE"):
        inbound.set_peer_authentication("strict")
    with pytest.raises(ValueError):
        inbound.set_peer_authentication("MUTUAL")
    assert inbound.peer_authentication == "PERMISSIVE"


def test_rotation_keeps_a_long_lived_connection_and_new_ones_get_the_new_certificate(mesh: Mesh) -> None:
    assert served_serial(mesh.client) == mesh.product.serial
    with socket.create_connection(("127.1.0.1", 80), timeout=10) as s:
        s.sendall(b"one")
        assert s.recv(10) == b"one"
        for n in range(2):
            product = issue(mesh.ca, mesh.tmp / f"product{n}", "product", kind="rsa" if n else "ec")
            client = issue(mesh.ca, mesh.tmp / f"client{n}", "client")
            mesh.inbound.set_identity(*product.args())
            mesh.outbound.set_identity(*client.args())
            # The open connection goes on with its sessions...
            s.sendall(b"after %d" % n)
            assert s.recv(10) == b"after %d" % n
            # ...and a new handshake gets the new certificate.
            assert served_serial(client) == product.serial
            assert exchange("127.1.0.1", 80, b"new") == b"new"
    assert mesh.inbound.tls_stats()["identity_updates"] == 3
    assert mesh.outbound.stats()["resets"] == 0


def test_bad_pem_is_a_value_error_naming_it_and_the_old_identity_still_serves(mesh: Mesh) -> None:
    p = mesh.product
    other = issue(mesh.ca, mesh.tmp / "other", "other")
    foreign = CertificateAuthority(mesh.tmp / "foreign-ca")
    cases = [
        (("garbage", p.key, p.root), "cert_chain_pem"),
        ((p.chain, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", p.root), "key_pem"),
        ((p.chain, other.key, p.root), "key_pem: does not match"),
        ((p.chain, p.key, ""), "roots_pem"),
        ((p.chain, p.key, foreign.root_pem), "does not verify against roots_pem"),
    ]
    for args, what in cases:
        with pytest.raises(ValueError, match=what):
            mesh.inbound.set_identity(*args)
    assert issubclass(TlsConfigError, ValueError)
    assert mesh.inbound.identity == PRODUCT
    assert served_serial(mesh.client) == p.serial
    assert mesh.inbound.tls_stats()["identity_updates"] == 1


def test_stop_ends_open_tls_connections_and_idle_ones_time_out(
    netns: str, ca: CertificateAuthority, tmp_path: Path
) -> None:
    with inside(netns):
        apps = local_apps()
        lb, redirect = tables(CLUSTERS)
        outbound = OutboundProxy(redirect, lb, listen=["127.0.0.1:15001"], idle_timeout=0.5)
        outbound.start()
        inbound = start_inbound_passthrough(listen=["127.0.0.1:15006"])
        outbound.set_identity(*issue(ca, tmp_path / "client", "client").args())
        inbound.set_identity(*issue(ca, tmp_path / "product", "product").args())
        try:
            with socket.create_connection(("127.1.0.1", 80), timeout=10) as s:
                s.sendall(b"x")
                assert s.recv(1) == b"x"
                time.sleep(1.2)
                # Closed by the outbound's idle timeout (with close_notify to the inbound).
                assert s.recv(1) == b""
            st = outbound.stats()
            assert st["idle_timeouts"] == 1 and st["resets"] == 0
            with socket.create_connection(("127.1.0.1", 80), timeout=10) as s:
                s.sendall(b"y")
                assert s.recv(1) == b"y"
                inbound.stop()  # resets its open connections, the TLS one included
                try:
                    assert s.recv(1) == b""
                except ConnectionResetError:
                    pass
            assert inbound.stats()["active"] == 0
        finally:
            outbound.stop()
            inbound.stop()
            apps.close()


def test_sessions_resume_and_resumption_can_be_turned_off(mesh: Mesh) -> None:
    for _ in range(3):
        assert exchange("127.1.0.1", 80, b"again") == b"again"
    out, inn = mesh.outbound.tls_stats(), mesh.inbound.tls_stats()
    # The first connection's tickets let the next two resume, on both sides.
    assert out["handshakes"] == 3 and out["resumed"] == 2 and inn["resumed"] == 2
    mesh.outbound.set_session_resumption(False)
    for _ in range(2):
        assert exchange("127.1.0.1", 80, b"full") == b"full"
    assert mesh.outbound.tls_stats()["resumed"] == 2 and mesh.outbound.tls_stats()["handshakes"] == 5


# --- Istio's TCP metadata exchange (istio-peer-exchange) ----------------------------------------

CLIENT_WL = {"workload": "client-vm", "namespace": "default", "app": "client", "version": "v7",
             "canonical_service": "client", "canonical_revision": "v7", "cluster": "Kubernetes",
             "name": "client-0", "node_id": "sidecar~127.0.0.1~client-0.default~default.svc.cluster.local"}  # fmt: skip
PRODUCT_WL = {"workload": "product-vm", "namespace": "default", "app": "product", "version": "vm",
              "canonical_service": "product", "canonical_revision": "vm", "cluster": "Kubernetes",
              "name": "vm-1", "node_id": "sidecar~127.0.0.3~vm-1.default~default.svc.cluster.local"}  # fmt: skip


def series(proxy: OutboundProxy, reporter: str) -> list[dict[str, str]]:
    return [labels for labels, _ in proxy.tcp_metrics() if labels["reporter"] == reporter]


def test_native_relays_exchange_metadata_so_both_reporters_know_their_peer(mesh: Mesh) -> None:
    mesh.outbound.set_local_workload(CLIENT_WL)
    mesh.inbound.set_local_workload(PRODUCT_WL)
    mesh.inbound.set_peer_authentication("STRICT")
    # The frames are stripped: the app sees exactly what the client sent, both ways.
    assert exchange("127.1.0.1", 80, b"hello with peer metadata") == b"hello with peer metadata"
    wait_idle(mesh)
    (inb,) = series(mesh.inbound, "destination")
    assert (inb["source_workload"], inb["source_app"], inb["source_version"]) == ("client-vm", "client", "v7")
    assert (inb["source_canonical_service"], inb["source_canonical_revision"]) == ("client", "v7")
    assert inb["source_principal"] == CLIENT and inb["connection_security_policy"] == "mutual_tls"
    (out,) = series(mesh.outbound, "source")
    assert (out["destination_workload"], out["destination_app"], out["destination_version"]) == (
        "product-vm",
        "product",
        "vm",
    )
    # Bytes are the application's (the frames not counted), opened and closed once.
    values = {labels["reporter"]: v for labels, v in mesh.inbound.tcp_metrics() + mesh.outbound.tcp_metrics()}
    for v in values.values():
        assert (v["connections_opened"], v["connections_closed"]) == (1, 1), values
        assert v["received_bytes"] == v["sent_bytes"] == len(b"hello with peer metadata"), values


def envoy_frame(md: dict[str, Any], node_id: str) -> bytes:
    """A frame as Envoy's metadata_exchange writes it: Python's protobuf, deterministic."""
    from google.protobuf import any_pb2, struct_pb2

    payload = struct_pb2.Struct()
    payload.update({"x-envoy-peer-metadata": md, "x-envoy-peer-metadata-id": node_id})
    any_msg = any_pb2.Any(type_url="type.googleapis.com/google.protobuf.Struct", value=payload.SerializeToString())
    data = any_msg.SerializeToString(deterministic=True)
    return (0x3D230467).to_bytes(4, "big") + len(data).to_bytes(4, "big") + data


def read_exactly(s: ssl.SSLSocket, n: int) -> bytes:
    out = b""
    while len(out) < n and (data := s.recv(n - len(out))):
        out += data
    return out


def test_an_envoy_peer_exchange_client_is_understood_and_answered(mesh: Mesh) -> None:
    from pymesh._native import mx_parse

    mesh.inbound.set_local_workload(PRODUCT_WL)
    mesh.inbound.set_peer_authentication("STRICT")
    md = {
        "NAME": "reviews-v2-abc",
        "NAMESPACE": "bookinfo",
        "WORKLOAD_NAME": "reviews-v2",
        "CLUSTER_ID": "east",
        "ISTIO_VERSION": "1.29.0",  # older proxies send more; it is ignored
        "LABELS": {"app": "reviews", "app.kubernetes.io/name": "reviews-k8s", "version": "v2",
                   "service.istio.io/canonical-name": "reviews", "service.istio.io/canonical-revision": "v2"},
    }  # fmt: skip
    with tls_client(mesh.client, alpn=("istio-peer-exchange", "istio")) as t:
        assert t.selected_alpn_protocol() == "istio-peer-exchange"
        t.sendall(envoy_frame(md, "sidecar~10.1.2.3~reviews-v2-abc.bookinfo~bookinfo.svc.cluster.local") + b"ping")
        header = read_exactly(t, 8)
        assert header[:4] == (0x3D230467).to_bytes(4, "big")
        payload = read_exactly(t, int.from_bytes(header[4:], "big"))
        got = mx_parse(header + payload)
        assert (got["workload"], got["name"], got["app"], got["version"]) == ("product-vm", "vm-1", "product", "vm")
        assert got["id"] == PRODUCT_WL["node_id"]
        assert read_exactly(t, 4) == b"ping"
    wait_idle(mesh)
    (inb,) = series(mesh.inbound, "destination")
    # app.kubernetes.io/name wins over app, as Envoy reads it.
    assert (inb["source_workload"], inb["source_workload_namespace"], inb["source_app"]) == (
        "reviews-v2",
        "default",  # the certificate's namespace comes first
        "reviews-k8s",
    )
    assert (inb["source_cluster"], inb["source_canonical_revision"]) == ("east", "v2")


def test_a_client_whose_first_bytes_are_no_frame_still_gets_through_unknown(mesh: Mesh) -> None:
    mesh.inbound.set_local_workload(PRODUCT_WL)
    mesh.inbound.set_peer_authentication("STRICT")
    with tls_client(mesh.client, alpn=("istio-peer-exchange",)) as t:
        t.sendall(b"GE")  # shorter than a header, then the rest: no frame, all of it application data
        time.sleep(0.1)
        t.sendall(b"T / HTTP/1.0\r\n")
        header = read_exactly(t, 8)
        read_exactly(t, int.from_bytes(header[4:], "big"))
        assert read_exactly(t, 16) == b"GET / HTTP/1.0\r\n"
    wait_idle(mesh)
    (inb,) = series(mesh.inbound, "destination")
    assert inb["source_workload"] == "unknown" and inb["source_principal"] == CLIENT


# --- Envoy's access log in Istio's formats --------------------------------------------------------


def test_access_log_lines_in_istios_text_and_json_formats(mesh: Mesh) -> None:
    import json
    import re

    out_log, in_log = mesh.tmp / "outbound.log", mesh.tmp / "inbound.log"
    mesh.outbound.set_access_log(str(out_log))
    mesh.inbound.set_access_log(str(in_log), "json")
    mesh.inbound.set_peer_authentication("STRICT")
    assert exchange("127.1.0.1", 80, b"logged bytes") == b"logged bytes"
    # The wrong-identity endpoint fails its handshake, the other one serves: UF on the line.
    for _ in range(2):
        assert exchange("127.1.0.4", 80, b"x") == b"x"
    wait_idle(mesh)
    mesh.outbound.set_access_log(None)  # written out and closed
    mesh.inbound.set_access_log(None)
    lines = out_log.read_text().splitlines()
    assert len(lines) == 3, lines
    text = re.compile(
        r'^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] "- - -" 0 (\S+) - - "-" (\d+) (\d+) (\d+) - "-" "-" "-" "-" '
        r'"(\S+)" (\S+) (\S+) (\S+) (\S+) - -$'
    )
    m = text.match(lines[0])
    assert m, lines[0]
    _, flags, rx, tx, _, host, cluster, up_local, down_local, down_remote = m.groups()
    assert (flags, rx, tx) == ("-", "12", "12")
    assert (host, cluster, down_local) == (f"{APP}:8000", "outbound|80||echo.default.svc.cluster.local", "127.1.0.1:80")
    assert down_remote.startswith("127.0.0.1:") and up_local.split(":")[0] == "127.0.0.1"
    flagged = [text.match(line) for line in lines[1:]]
    assert all(flagged) and any(f.group(2) == "UF" for f in flagged if f), lines
    assert mesh.outbound.stats()["access_log_lines"] == 0  # the log was closed: the counters went with it
    records = [json.loads(line) for line in in_log.read_text().splitlines()]
    assert len(records) == 3, records
    r = records[0]
    assert list(r)[:3] == ["start_time", "route_name", "method"] and r["method"] is None
    assert (r["upstream_cluster"], r["response_flags"], r["response_code"]) == ("InboundPassthroughCluster", "-", 0)
    assert r["requested_server_name"] == "outbound_.80_._.echo.default.svc.cluster.local"
    assert (r["bytes_received"], r["bytes_sent"], r["upstream_host"]) == (12, 12, f"{APP}:8000")
    assert r["downstream_local_address"] == f"{APP}:8000"


def test_a_bad_access_log_path_or_encoding_is_an_error_and_nothing_changes(mesh: Mesh, tmp_path: Path) -> None:
    from pymesh import PymeshError
    from pymesh._native import ConfigError

    with pytest.raises(PymeshError, match="no-such-dir"):
        mesh.outbound.set_access_log(str(tmp_path / "no-such-dir" / "a.log"))
    with pytest.raises(ConfigError, match="TEXT or JSON"):
        mesh.outbound.set_access_log(str(tmp_path / "a.log"), "yaml")
    assert exchange("127.1.0.1", 80, b"still serving") == b"still serving"
    assert not (tmp_path / "a.log").exists()


def test_http_requests_ride_pooled_mtls_connections_to_the_inbound(mesh: Mesh) -> None:
    """The HTTP path originates the same Istio mTLS (identity checked) to a `tlsMode:
    istio` endpoint, offering Istio's HTTP ALPN, and keeps the connection for the next
    requests, from any client connection: one handshake for all of them."""
    import http.client
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[tuple[str, str]] = []

    class Web(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append((self.client_address[0], self.path))
            body = f"web {self.path}".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    srv = ThreadingHTTPServer((APP, 8002), Web)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        mesh.inbound.set_peer_authentication("STRICT")  # plaintext would be refused
        rc = {
            "name": "80",
            "virtualHosts": [
                {"name": "web", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": WEB}}]}
            ],
        }
        mesh.outbound.set_http_routes([(80, json.dumps(rc))])
        log = mesh.tmp / "http-access.log"
        mesh.outbound.set_access_log(str(log), "JSON")
        got = []
        for _ in range(2):  # two client connections, five requests each
            c = http.client.HTTPConnection("127.1.0.6", 80, timeout=10)
            for i in range(5):
                c.request("GET", f"/r{i}")
                r = c.getresponse()
                got.append((r.status, r.read().decode()))
            c.close()
        assert got == [(200, f"web /r{i}") for i in range(5)] * 2
        assert [p for _, p in seen] == [f"/r{i}" for i in range(5)] * 2
        assert {a for a, _ in seen} == {"127.0.0.6"}  # through the inbound's passthrough
        out = mesh.outbound.tls_stats()
        assert out["handshakes"] == 1 and out["handshake_failures"] == 0, out
        h = mesh.outbound.http_stats()
        assert h["http_requests"] == 10 and h["http_pool_reused"] == 9, h
        assert mesh.inbound.tls_stats()["handshakes"] == 1
        # Istio's HTTP metrics, reporter source, with both identities of the handshake.
        text = tcp_metrics_text([mesh.outbound])
        line = next(x for x in text.splitlines() if x.startswith("istio_requests_total{"))
        assert line.endswith(" 10"), line
        for label in (
            'reporter="source"',
            f'source_principal="{CLIENT}"',
            f'destination_principal="{PRODUCT}"',
            'destination_workload="app-v1"',
            'destination_service="web.default.svc.cluster.local"',
            'destination_service_name="web"',
            'request_protocol="http"',
            'response_code="200"',
            'grpc_response_status=""',
            'response_flags="-"',
        ):
            assert label in line, (label, line)
        assert 'istio_request_duration_milliseconds_count{reporter="source"' in text
        # Envoy's access log: a line per request (none for the connections), Istio's JSON keys.
        mesh.outbound.set_access_log(None)
        lines = [json.loads(x) for x in log.read_text().splitlines()]
        assert [(x["method"], x["path"], x["response_code"]) for x in lines] == [
            ("GET", f"/r{i}", 200) for i in range(5)
        ] * 2, lines
        first = lines[0]
        assert first["protocol"] == "HTTP/1.1" and first["response_code_details"] == "via_upstream"
        assert first["upstream_cluster"] == WEB and first["upstream_host"] == f"{APP}:8002"
        assert first["authority"] == "127.1.0.6" and first["downstream_local_address"] == "127.1.0.6:80"
        assert len({x["request_id"] for x in lines}) == 10 and first["response_flags"] == "-"
        assert first["bytes_sent"] == len("web /r0")
    finally:
        srv.shutdown()
        srv.server_close()
