"""The agent's side of workload mTLS: the PeerAuthentication mode it
reads from the control plane's ``virtualInbound`` listener (a real control
plane, a scripted one for malformed pushes, and across a restart without the
control plane), and the workload certificate it hands to the native relay
(``set_identity``) at start and after renewals, a refused certificate leaving
the previous identity serving."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.config.listener.v3.listener_pb2 import Listener
from google.protobuf import any_pb2

from pymesh.agent.dataplane import set_identity
from pymesh.agent.errors import XdsClientError
from pymesh.agent.state import inbound_mode
from pymesh.controlplane import ControlPlane
from pymesh.controlplane.ca.ca import CertificateAuthority
from pymesh.controlplane.peerauth import virtual_inbound
from pymesh.lbtable import LbTable, RedirectTable
from pymesh.mesh.xds import LDS
from pymesh.relay import start_outbound_proxy
from support.agent import ScriptedAds, make_agent, write_vm_files
from support.ports import free_port
from support.sec import secure_cp, secure_vm_files, workload
from support.wait import wait_until

PRODUCT = "spiffe://cluster.local/ns/default/sa/product"


def pack(msg: Any) -> Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def policy(ns: str, mode: str, name: str = "default") -> str:
    return (
        f"apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\n"
        f"metadata: {{name: {name}, namespace: {ns}}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
    )


@pytest.mark.parametrize("mode", ["STRICT", "PERMISSIVE", "DISABLE"])
def test_mode_read_from_the_listener(mode: str) -> None:
    other = Listener(name="product.default.svc.cluster.local:80")
    assert inbound_mode([pack(other), pack(virtual_inbound(mode))]) == mode
    assert inbound_mode([pack(other)]) is None  # not there: the mode in force stays


def test_unreadable_listeners_are_errors_for_a_nack() -> None:
    with pytest.raises(XdsClientError, match="no filter chain"):
        inbound_mode([pack(Listener(name="virtualInbound"))])
    with pytest.raises(XdsClientError, match="does not decode"):
        inbound_mode([any_pb2.Any(type_url=LDS, value=b"\xff\xff\xff")])
    with pytest.raises(XdsClientError, match="resource of type"):
        inbound_mode([pack(any_pb2.Any())])


def test_a_refused_certificate_is_logged_and_the_previous_identity_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    good = workload(ca, tmp_path / "good", "product")
    other = workload(CertificateAuthority(tmp_path / "other-ca"), tmp_path / "other", "product")
    proxy = start_outbound_proxy(LbTable(), RedirectTable.from_dict({}), listen=["127.0.0.1:0"])
    try:
        files = [(good / f).read_bytes() for f in ("cert-chain.pem", "key.pem", "root-cert.pem")]
        assert set_identity([("outbound proxy", proxy), ("inbound listener", None)], *files, "cluster.local")
        assert proxy.identity == PRODUCT
        bad = [(other / "cert-chain.pem").read_bytes(), (other / "key.pem").read_bytes(), files[2]]
        with caplog.at_level(logging.ERROR, logger="pymesh.agent"):
            assert not set_identity([("outbound proxy", proxy)], *bad, "cluster.local")  # not under our roots
            assert not set_identity([("outbound proxy", proxy)], b"junk", b"junk", files[2], "cluster.local")
        assert caplog.text.count("outbound proxy refused the workload certificate") == 2
        assert proxy.identity == PRODUCT and proxy.tls_stats()["identity_updates"] == 1
    finally:
        proxy.stop()


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    d = tmp_path / "mesh"
    d.mkdir()
    (d / "mesh.yaml").write_text(policy("istio-system", "STRICT"))
    return d


@pytest.fixture
def cp(cfg: Path, tmp_path: Path) -> Iterator[ControlPlane]:
    c = ControlPlane(cfg, xds_listen="127.0.0.1:0", data_dir=tmp_path / "cp", debounce=0.02).start()
    yield c
    c.stop()


@pytest.mark.parametrize("delta", [False, True])
def test_agent_follows_the_policy_and_keeps_it_across_a_restart(
    cp: ControlPlane, cfg: Path, tmp_path: Path, delta: bool
) -> None:
    vm = write_vm_files(tmp_path / "vm", cp.port, group="")
    (vm / "resolv.conf").write_text("")
    state = tmp_path / "state"
    agent = make_agent(vm, state, free_port("127.0.0.1"), xds_delta=delta)
    agent.start()
    try:
        # LDS as a sidecar subscribes (wildcard); the mode comes from the virtualInbound listener.
        assert "LDS" in agent.plan()["control_plane"]["subscriptions"]
        wait_until(lambda: agent.peer_authentication == "STRICT", timeout=10)
        # A workload policy for the VM's labels (app=product from ISTIO_METAJSON_LABELS) wins.
        (cfg / "vm.yaml").write_text(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
            "metadata: {name: product, namespace: default}\n"
            "spec: {selector: {matchLabels: {app: product}}, mtls: {mode: DISABLE}}\n"
        )
        cp.reload()
        wait_until(lambda: agent.peer_authentication == "DISABLE", timeout=10)
        assert agent.status()["peer_authentication"] == "DISABLE"
    finally:
        agent.stop()
    cp.stop()  # the control plane is gone: the saved listener still says DISABLE
    again = make_agent(vm, state, free_port("127.0.0.1"), xds_delta=delta)
    again.start()
    try:
        assert "Listener" in again.loaded_from_disk
        assert again.peer_authentication == "DISABLE"
    finally:
        again.stop()


def test_a_malformed_listener_is_nacked_and_the_mode_stays(tmp_path: Path) -> None:
    ads = ScriptedAds()
    try:
        vm = write_vm_files(tmp_path / "vm", ads.port)
        (vm / "resolv.conf").write_text("")
        agent = make_agent(vm, tmp_path / "state", free_port("127.0.0.1"))
        with agent:
            sub = ads.request(LDS)
            assert list(sub.resource_names) == []  # wildcard, as a sidecar asks
            n = ads.push(LDS, "1", [pack(virtual_inbound("STRICT"))])
            assert not ads.request(LDS, nonce=n).HasField("error_detail")
            assert agent.peer_authentication == "STRICT"
            odd = Listener(name="virtualInbound")
            odd.filter_chains.add().filter_chain_match.transport_protocol = "quic"
            n = ads.push(LDS, "2", [pack(odd)])
            nack = ads.request(LDS, nonce=n)
            assert "quic" in nack.error_detail.message and nack.version_info == "1"
            assert agent.peer_authentication == "STRICT"
    finally:
        ads.stop()


def test_the_agent_hands_its_certificate_to_the_relay_and_again_after_each_renewal(tmp_path: Path) -> None:
    cp = secure_cp(tmp_path)
    try:
        vm = secure_vm_files(
            tmp_path / "vm", cp.secure_port, cp.security.ca.root_pem, cp.security.tokens.create("default", "product")
        )
        agent = make_agent(
            vm,
            tmp_path / "state",
            free_port("127.0.0.1"),
            control_plane_auth="MUTUAL_TLS",
            cert_ttl=4,
            outbound_listen=["127.0.0.1:0"],
        )
        agent.start()
        try:
            wait_until(lambda: agent.proxy.identity == PRODUCT, timeout=20)  # the first, token-issued certificate
            assert agent.data_path_identity == PRODUCT
            first = agent.proxy.tls_stats()["identity_updates"]
            wait_until(lambda: agent.certs.renewals >= 2, timeout=20)  # renewed at half of 4 s, twice
            wait_until(lambda: agent.proxy.tls_stats()["identity_updates"] >= first + 2, timeout=5)
            assert agent.proxy.identity == PRODUCT
        finally:
            agent.stop()
        # Restart: the valid certificate on disk is on the data path before any CA call.
        issued = cp.security.stats["issued"]
        again = make_agent(
            vm,
            tmp_path / "state",
            free_port("127.0.0.1"),
            control_plane_auth="MUTUAL_TLS",
            outbound_listen=["127.0.0.1:0"],
        )
        again.start()
        try:
            assert again.proxy.identity == PRODUCT and cp.security.stats["issued"] == issued
        finally:
            again.stop()
    finally:
        cp.stop()


def test_a_certificate_on_disk_the_relay_refuses_does_not_stop_the_agent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cp = secure_cp(tmp_path)
    try:
        vm = secure_vm_files(tmp_path / "vm", cp.secure_port, cp.security.ca.root_pem)
        # A well-formed certificate and key from another CA where the agent keeps its own.
        certs = workload(CertificateAuthority(tmp_path / "other-ca"), tmp_path / "state" / "certs", "product")
        certs.chmod(0o700)
        agent = make_agent(
            vm,
            tmp_path / "state",
            free_port("127.0.0.1"),
            control_plane_auth="MUTUAL_TLS",
            outbound_listen=["127.0.0.1:0"],
        )
        with caplog.at_level(logging.ERROR, logger="pymesh.agent"):
            agent.start()
        try:
            assert "outbound proxy refused the workload certificate" in caplog.text
            assert agent.proxy.identity is None and agent.data_path_identity == ""
            assert agent.proxy.running and agent.started
        finally:
            agent.stop()
    finally:
        cp.stop()
