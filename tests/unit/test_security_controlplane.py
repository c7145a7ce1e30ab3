"""The control plane's TLS port, CA service and identity checks over real
sockets: tokens in, certificates out, mTLS xDS, registration refused when the
identity contradicts the proxy, strangers and impostors kept out, and
certificates rotating under a long-lived stream."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from pymesh.agent.certs import WorkloadCerts
from pymesh.controlplane import ControlPlane
from pymesh.mesh.errors import AuthError
from pymesh.mesh.xds import CDS
from support.cp import vm_node
from support.sec import Stream, secure_cp, tls_channel
from support.wait import wait_until

ENTRY = "product-vm-127.0.0.3"


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    c = secure_cp(tmp_path)
    yield c
    c.stop()


def certs(cp: ControlPlane, tmp: Path, token: str | None, name: str = "certs", ttl: float = 3600) -> WorkloadCerts:
    return WorkloadCerts(
        f"127.0.0.1:{cp.secure_port}", cp.security.ca.root_pem, tmp / name, token=lambda: token, ttl=ttl
    )


def stream(cp: ControlPlane, wc: WorkloadCerts, **node: object) -> Stream:
    s = Stream(wc.channel(), vm_node("127.0.0.3", **node))  # type: ignore[arg-type]
    s.send(CDS)
    return s


def test_valid_token_gets_a_certificate_and_registers_over_mtls(cp: ControlPlane, tmp_path: Path) -> None:
    wc = certs(cp, tmp_path, cp.security.tokens.create("default", "product"))
    held = wc.fetch()
    assert held.spiffe_id == "spiffe://cluster.local/ns/default/sa/product"
    for f in ("cert-chain.pem", "key.pem", "root-cert.pem"):
        assert (tmp_path / "certs" / f).stat().st_mode & 0o077 == 0
    s = stream(cp, wc)
    assert s.recv().type_url == CDS
    assert cp.registered_entry("default", ENTRY) is not None
    s.close()


@pytest.mark.parametrize(
    "token_ns, token_sa, node_kw, message",
    [
        ("other", "product", {}, "does not match the proxy's metadata"),
        ("default", "wrong", {}, "is not service account 'product' required by WorkloadGroup default/product-vm"),
        ("default", "product", {"extra": {"SERVICE_ACCOUNT": "admin"}}, "service account 'admin'"),
    ],
)
def test_identity_contradicting_the_proxy_is_refused_and_nothing_registers(
    cp: ControlPlane, tmp_path: Path, token_ns: str, token_sa: str, node_kw: dict[str, object], message: str
) -> None:
    wc = certs(cp, tmp_path, cp.security.tokens.create(token_ns, token_sa))
    s = stream(cp, wc, **node_kw)
    err = s.failure()
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert message in (err.details() or "")
    assert cp.registered_entry("default", ENTRY) is None
    assert cp.call_soon(lambda: len(cp.ads.connections)) == 0
    s.close()


def test_expired_or_foreign_token_gets_no_certificate_and_no_entry(cp: ControlPlane, tmp_path: Path) -> None:
    expired = cp.security.tokens.create("default", "product", ttl=1)
    time.sleep(cp.security.tokens.leeway + 1.5)
    with pytest.raises(AuthError, match=r"UNAUTHENTICATED.*expired"):
        certs(cp, tmp_path, expired).fetch()
    from pymesh.controlplane.ca.tokens import TokenAuthority

    foreign = TokenAuthority(tmp_path / "foreign").create("default", "product")
    with pytest.raises(AuthError, match=r"does not verify|another key"):
        certs(cp, tmp_path, foreign, "c2").fetch()
    with pytest.raises(AuthError, match="no istio-token"):
        certs(cp, tmp_path, "", "c3").fetch()
    # A raw call without any credential: refused by the CA.
    from pymesh.mesh.pki import make_csr, new_key
    from pymesh.proto import ca as ca_pb

    with tls_channel(cp.secure_port, cp.security.ca.root_pem) as ch:
        call = ch.unary_unary(ca_pb.METHOD, request_serializer=lambda m: m.SerializeToString())
        with pytest.raises(grpc.RpcError) as e:
            call(ca_pb.IstioCertificateRequest(csr=make_csr(new_key()).decode()), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and "no credentials" in (e.value.details() or "")
    assert cp.security.stats["issued"] == 0 and cp.registered_entry("default", ENTRY) is None


def test_xds_without_a_client_certificate_or_with_a_foreign_one_is_refused(cp: ControlPlane, tmp_path: Path) -> None:
    # TLS but no certificate: refused by the control plane, even with a valid token (mTLS required).
    token = cp.security.tokens.create("default", "product")
    s = Stream(
        tls_channel(cp.secure_port, cp.security.ca.root_pem),
        vm_node("127.0.0.3"),
        metadata=(("authorization", f"Bearer {token}"),),
    )
    s.send(CDS)
    err = s.failure()
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "mTLS is required" in (err.details() or "")
    s.close()
    # A certificate from another CA: the handshake fails (the control plane verifies against its root).
    other = secure_cp(tmp_path, "other")
    try:
        wc = certs(other, tmp_path, other.security.tokens.create("default", "product"), "foreign")
        wc.fetch()
        assert wc.held is not None
        s = Stream(tls_channel(cp.secure_port, cp.security.ca.root_pem, wc.held.key, wc.held.chain), vm_node("x"))
        s.send(CDS)
        assert s.failure().code() == grpc.StatusCode.UNAVAILABLE
        s.close()
    finally:
        other.stop()
    assert cp.registered_entry("default", ENTRY) is None and cp.call_soon(lambda: len(cp.ads.connections)) == 0


def test_a_man_in_the_middle_with_its_own_ca_is_rejected_by_the_agent(cp: ControlPlane, tmp_path: Path) -> None:
    mitm = secure_cp(tmp_path, "mitm")  # same server name, another root
    try:
        token = cp.security.tokens.create("default", "product")
        wc = WorkloadCerts(
            f"127.0.0.1:{mitm.secure_port}", cp.security.ca.root_pem, tmp_path / "c", token=lambda: token
        )
        with pytest.raises(AuthError, match="UNAVAILABLE"):
            wc.fetch()
        # The impostor never saw a request (the token was not sent to it).
        assert mitm.security.stats == {
            "issued": 0,
            "refused": 0,
            "server_cert_renewals": 0,
            "csr": 0,
            "authn_failures": 0,
        }
        assert not (tmp_path / "c" / "cert-chain.pem").exists()
    finally:
        mitm.stop()


def test_renewal_uses_the_certificate_after_the_token_expired(cp: ControlPlane, tmp_path: Path) -> None:
    token = {"t": cp.security.tokens.create("default", "product", ttl=60)}
    wc = WorkloadCerts(f"127.0.0.1:{cp.secure_port}", cp.security.ca.root_pem, tmp_path / "c", token=lambda: token["t"])
    first = wc.fetch()
    token["t"] = None  # gone (reboot wiped /var/run, or it expired)
    again = WorkloadCerts(f"127.0.0.1:{cp.secure_port}", cp.security.ca.root_pem, tmp_path / "c")  # "reboot"
    assert again.held is not None and again.held.chain == first.chain
    renewed = again.fetch()
    assert renewed.chain != first.chain and renewed.spiffe_id == first.spiffe_id


def test_rotation_keeps_a_long_lived_stream(tmp_path: Path) -> None:
    """Workload and serving certificates of 4 s (renewed at half life): a stream
    opened before survives at least two rotations of each and still gets pushes."""
    cp = secure_cp(tmp_path, cert_ttl=4, server_cert_ttl=4)
    try:
        wc = certs(cp, tmp_path, cp.security.tokens.create("default", "product"), ttl=4)
        s = stream(cp, wc)
        r = s.recv()
        s.send(CDS, r.version_info, r.nonce)
        wc.start()
        wait_until(lambda: wc.renewals >= 2 and cp.security.stats["server_cert_renewals"] >= 2, timeout=20)
        # The first certificate has expired by now; the stream is the one opened with it.
        assert time.time() > (wc.held.not_before if wc.held else 0)
        mesh = cp.config_dir / "extra.yaml"
        mesh.write_text(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: default}\n"
            "spec: {hosts: [ext.example.com], ports: [{number: 443, name: tls, protocol: TLS}], resolution: DNS}\n"
        )
        cp.reload()
        pushed = s.recv()
        assert pushed.type_url == CDS and pushed.version_info != r.version_info
        assert s.error is None and cp.call_soon(lambda: len(cp.ads.connections)) == 1
        # A new connection made after the rotations works with the current certificate.
        s2 = Stream(wc.channel(), vm_node("127.0.0.4", name="vm-2"))
        s2.send(CDS)
        assert s2.recv().type_url == CDS
        s2.close()
        wc.stop()
        s.close()
    finally:
        cp.stop()


def test_plaintext_dev_listener_stays_unauthenticated_when_asked_for(tmp_path: Path) -> None:
    from support.cp import AdsStream

    cp = secure_cp(tmp_path, plaintext=True)
    try:
        s = AdsStream(cp.port, vm_node("127.0.0.3"))
        s.send(CDS)
        assert s.recv().type_url == CDS
        s.close()
    finally:
        cp.stop()


def test_token_mode_accepts_a_bearer_token_on_xds_and_still_checks_identity(tmp_path: Path) -> None:
    cp = secure_cp(tmp_path, xds_auth="token")
    try:
        good = cp.security.tokens.create("default", "product")
        s = Stream(
            tls_channel(cp.secure_port, cp.security.ca.root_pem),
            vm_node("127.0.0.3"),
            metadata=(("authorization", f"Bearer {good}"),),
        )
        s.send(CDS)
        assert s.recv().type_url == CDS
        assert cp.registered_entry("default", ENTRY) is not None
        s.close()
        other = cp.security.tokens.create("other", "product")
        s = Stream(
            tls_channel(cp.secure_port, cp.security.ca.root_pem),
            vm_node("127.0.0.4", name="vm-2"),
            metadata=(("authorization", f"Bearer {other}"),),
        )
        s.send(CDS)
        assert s.failure().code() == grpc.StatusCode.PERMISSION_DENIED
        assert cp.registered_entry("default", "product-vm-127.0.0.4") is None
        s.close()
        s = Stream(
            tls_channel(cp.secure_port, cp.security.ca.root_pem),
            vm_node("127.0.0.5", name="vm-3"),
            metadata=(("authorization", "Bearer not-a-token"),),
        )
        s.send(CDS)
        err = s.failure()
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "bearer token refused" in (err.details() or "")
        s.close()
    finally:
        cp.stop()


def test_root_change_the_agent_trusts_the_new_bundle_and_renews_at_once(tmp_path: Path) -> None:
    """Root A → plug-in CA B whose root-cert.pem bundles B and A: a workload
    holding an A certificate cannot verify the new control plane until its
    root-cert.pem lists B; when it does, it renews at once (authenticated by
    its A certificate, which the bundle still trusts) and then holds a B chain."""
    from pymesh.controlplane.ca.ca import CertificateAuthority
    from pymesh.mesh.pki import load_certs

    cp = secure_cp(tmp_path, "a")
    root_file = tmp_path / "root-cert.pem"
    root_file.write_text(cp.security.ca.root_pem)
    old_root = cp.security.ca.root_pem
    token = cp.security.tokens.create("default", "product")
    wc = WorkloadCerts(
        f"127.0.0.1:{cp.secure_port}",
        old_root,
        tmp_path / "certs",
        token=lambda: token,
        root_file=root_file,
        root_check=0.1,
    )
    first = wc.fetch()
    cp.stop()
    b = CertificateAuthority(tmp_path / "b-src")
    plug = tmp_path / "plugin"
    plug.mkdir()
    for f in ("ca-cert.pem", "ca-key.pem", "cert-chain.pem"):
        (plug / f).write_bytes((tmp_path / "b-src" / f).read_bytes())
    (plug / "root-cert.pem").write_text(b.root_pem + old_root)
    cp = secure_cp(tmp_path, "a", plugin_ca_dir=str(plug))  # same data dir: same token key, new CA
    try:
        wc.target = f"127.0.0.1:{cp.secure_port}"
        with pytest.raises(AuthError, match="UNAVAILABLE"):
            wc.fetch()  # still trusting only A: the B-signed control plane is not believed
        wc.start()
        root_file.write_text(b.root_pem + old_root)
        wait_until(lambda: wc.root_changes == 1 and wc.renewals >= 1, timeout=15)
        assert wc.held is not None and wc.held.chain != first.chain
        assert load_certs(wc.held.chain, "chain")[-1] == b.root
        assert wc.held.spiffe_id == first.spiffe_id
        s = Stream(wc.channel(), vm_node("127.0.0.3"))
        s.send(CDS)
        assert s.recv().type_url == CDS
        s.close()
        wc.stop()
    finally:
        cp.stop()


def test_front_peer_lookup_is_by_address_and_port(cp: ControlPlane, tmp_path: Path) -> None:
    """A local process connecting to the loopback listener from another address
    with the same port number must not inherit a TLS peer's identity."""
    wc = certs(cp, tmp_path, cp.security.tokens.create("default", "product"))
    s = stream(cp, wc)
    s.recv()
    front = cp.security.front
    ((host, port), peer) = next(iter(front.peers.items()))
    assert peer.spiffe_ids == ("spiffe://cluster.local/ns/default/sa/product",)
    assert front.lookup(f"ipv4:{host}:{port}") is peer
    assert front.lookup(f"ipv4:127.0.0.2:{port}") is None
    assert front.lookup(f"ipv6:[::1]:{port}") is None
    assert front.lookup(f"unix:/tmp/x:{port}") is None
    s.close()


def test_a_key_that_does_not_match_the_held_certificate_falls_back_to_the_token(
    cp: ControlPlane, tmp_path: Path
) -> None:
    from pymesh.mesh.pki import key_pem, new_key

    token = cp.security.tokens.create("default", "product")
    certs(cp, tmp_path, token, "c").fetch()
    (tmp_path / "c" / "key.pem").write_bytes(key_pem(new_key()))  # e.g. a crash between the two writes
    again = certs(cp, tmp_path, token, "c")
    assert again.held is None  # not presented: it would fail the handshake
    assert again.ensure().spiffe_id.endswith("/sa/product")  # recovered with the token


def test_a_token_request_for_another_cluster_is_refused(cp: ControlPlane, tmp_path: Path) -> None:
    token = cp.security.tokens.create("default", "product")
    wc = WorkloadCerts(
        f"127.0.0.1:{cp.secure_port}", cp.security.ca.root_pem, tmp_path / "c", token=lambda: token, cluster_id="east"
    )
    with pytest.raises(AuthError, match="ClusterID 'east'"):
        wc.fetch()
    wc.cluster_id = "Kubernetes"
    assert wc.fetch().spiffe_id.endswith("/sa/product")


def test_stopping_the_control_plane_ends_its_tls_streams_at_once(tmp_path: Path) -> None:
    """An embedded control plane's stop() closes the connections of its TLS port:
    a graceful TLS close would never finish once its loop stops, and the agent
    would sit on a dead stream until its keepalive timeout (~40 s) instead of
    reconnecting to the restarted control plane (tests/e2e/test_agent_root_change.py)."""
    cp = secure_cp(tmp_path)
    try:
        wc = certs(cp, tmp_path, cp.security.tokens.create("default", "product"))
        s = stream(cp, wc)
        assert s.recv().type_url == CDS
    finally:
        cp.stop()
    err = s.failure(timeout=5)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    s.close()
