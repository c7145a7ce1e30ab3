"""The agent's side of workload mTLS (issue 7): the PeerAuthentication mode it
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
from agent_helpers import ScriptedAds, make_agent, wait_until, write_vm_files
from cp_helpers import free_port
from envoy.config.listener.v3.listener_pb2 import Listener
from google.protobuf import any_pb2

from pymesh.agent.errors import XdsClientError
from pymesh.agent.mtls import LDS, inbound_mode, set_identity
from pymesh.controlplane import ControlPlane
from pymesh.controlplane.peerauth import virtual_inbound


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


class Refusing:
    """Stands in only for what this layer decides: a relay that refuses a certificate."""

    def __init__(self) -> None:
        self.calls = 0

    def set_identity(self, *args: Any) -> None:
        self.calls += 1
        raise ValueError("tls identity: cert_chain_pem: not PEM certificates")


def test_a_refused_certificate_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    relay = Refusing()
    with caplog.at_level(logging.ERROR, logger="pymesh.agent"):
        ok = set_identity([("outbound proxy", relay), ("inbound listener", None)], b"x", b"y", b"z", "cluster.local")
    assert ok is False and relay.calls == 1
    assert "outbound proxy refused the workload certificate" in caplog.text


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
        assert agent.plan()["control_plane"]["subscriptions"][-1] == "LDS virtualInbound"
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
            assert list(sub.resource_names) == ["virtualInbound"]
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
