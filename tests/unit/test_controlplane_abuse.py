"""What a client can make the control plane hold, log or accept (the weak
spots): the node's size per stream, NACK logging, the addresses a VM may
register, the plaintext listener off loopback, the TLS port's pending
handshakes, and revoking bootstrap tokens with ``pymesh token rotate-key``."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pymesh.cli import main
from pymesh.controlplane import ControlPlane, ControlPlaneError
from pymesh.controlplane.ca.service import SecurityOptions
from pymesh.mesh.pki import make_csr, new_key
from pymesh.mesh.xds import CDS
from pymesh.proto import ca as ca_pb
from support.cp import AdsStream, example_config, pymesh_cli, vm_node
from support.sec import SERVER_NAME
from support.wait import wait_until

PORT = 18080


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    c = ControlPlane(
        example_config(tmp_path / "mesh", PORT), xds_listen="127.0.0.1:0", data_dir=tmp_path / "data", debounce=0.02
    ).start()
    yield c
    c.stop()


def refused(stream: AdsStream) -> grpc.RpcError:
    err = stream.wait_closed()
    assert err is not None, "the stream was not refused"
    return err


def test_a_node_larger_than_the_limit_is_refused_before_it_is_kept(cp: ControlPlane) -> None:
    big = AdsStream(cp.port, vm_node("127.0.0.3", group="", extra={"BLOB": "x" * 100_000}))
    big.send(CDS)
    err = refused(big)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "65536-byte limit" in (err.details() or "")
    big.close()
    assert cp.ads.connections == {} and cp.ads.stats["nodes_refused"] == 1
    ok = AdsStream(cp.port, vm_node("127.0.0.3", group="", extra={"BLOB": "x" * 10_000}))
    ok.send(CDS)
    assert ok.recv().resources
    ok.close()


def test_a_nack_flood_is_logged_once_and_summed_up(cp: ControlPlane, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "pymesh.controlplane")
    s = AdsStream(cp.port, vm_node("127.0.0.3", group=""))
    s.send(CDS)
    r = s.recv()
    for _ in range(300):
        s.send(CDS, version="", nonce=r.nonce, error="x" * 10_000)
    wait_until(lambda: cp.ads.stats["nacks"] + cp.ads.stats["repeated_nacks"] == 300, timeout=15)
    nack_lines = [rec.getMessage() for rec in caplog.records if "NACK" in rec.getMessage()]
    assert len(nack_lines) == 1 and len(nack_lines[0]) < 1000  # one per response, its text cut
    assert cp.ads.stats["repeated_nacks"] == 299
    assert all(len(n.message) < 1000 for n in cp.ads.nacks)
    s.close()


def test_nack_lines_over_the_budget_are_dropped_and_summed_up(cp: ControlPlane) -> None:
    lines: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    limiter = cp.ads.limiter
    limiter.logger = logging.getLogger("test-limiter")
    limiter.logger.addHandler(Grab())
    clock = [0.0]
    limiter.clock = lambda: clock[0]
    for i in range(1000):
        limiter.log(logging.WARNING, "NACK", "NACK %d", i)
    assert len(lines) == limiter.burst
    clock[0] += limiter.interval
    limiter.tick()
    assert len(lines) == limiter.burst + 1 and "990 more NACK lines" in lines[-1] and "NACK 999" in lines[-1]


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("255.255.255.255", "broadcast"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("240.240.0.7", "reserved"),
        ("10.96.0.20", "VIP of Kubernetes service product.default.svc.cluster.local"),
        ("127.0.0.7", "loopback"),
    ],
)
def test_registration_refuses_addresses_no_workload_can_have(tmp_path: Path, ip: str, why: str) -> None:
    # Listening on every address (not loopback), so a loopback registration is refused too.
    c = ControlPlane(
        example_config(tmp_path / "mesh", PORT),
        xds_listen="0.0.0.0:0",
        insecure_xds=True,
        persist=False,
        debounce=0.02,
    ).start()
    try:
        s = AdsStream(c.port, vm_node(ip))
        s.send(CDS)
        err = refused(s)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ip in (err.details() or "") and why in (err.details() or "")
        s.close()
        assert c.registrations.entries == {}
        ok = AdsStream(c.port, vm_node("10.1.2.3"))
        ok.send(CDS)
        assert ok.recv().resources
        ok.close()
    finally:
        c.stop()


def test_loopback_registration_is_for_a_loopback_control_plane() -> None:
    from pymesh.controlplane.autoregistration import unusable_address

    assert unusable_address("127.0.0.3", allow_loopback=True) is None
    assert "loopback" in (unusable_address("::1") or "")
    assert "link-local" in (unusable_address("::ffff:169.254.169.254") or "")  # v4-mapped


def test_plaintext_off_loopback_needs_the_insecure_flag(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = example_config(tmp_path / "mesh", PORT)
    with pytest.raises(ControlPlaneError, match="--insecure-xds"):
        ControlPlane(cfg, xds_listen="0.0.0.0:0", persist=False)
    caplog.set_level(logging.WARNING, "pymesh.controlplane")
    c = ControlPlane(cfg, xds_listen="0.0.0.0:0", persist=False, insecure_xds=True).start()
    c.stop()
    insecure = [r.getMessage() for r in caplog.records if r.getMessage().startswith("INSECURE")]
    assert len(insecure) >= 3 and "any WorkloadGroup" in " ".join(insecure)
    caplog.clear()
    ControlPlane(cfg, xds_listen="127.0.0.1:0", persist=False).start().stop()
    assert any("loopback only" in r.getMessage() for r in caplog.records)
    out = subprocess.run(
        [*pymesh_cli(), "controlplane", "--config", str(cfg), "--xds-listen", "0.0.0.0:0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "--insecure-xds" in out.stderr


def secure(tmp_path: Path, **opts: Any) -> ControlPlane:
    return ControlPlane(
        example_config(tmp_path / "mesh", PORT),
        xds_listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        security=SecurityOptions(secure_listen="127.0.0.1:0", **opts),
        plaintext=False,
        debounce=0.02,
    ).start()


def certificate(cp: ControlPlane, token: str, timeout: float = 5.0) -> grpc.RpcError | None:
    creds = grpc.ssl_channel_credentials(cp.security.ca.root_pem.encode())
    ch = grpc.secure_channel(
        f"127.0.0.1:{cp.secure_port}", creds, options=[("grpc.ssl_target_name_override", SERVER_NAME)]
    )
    try:
        call = ch.unary_unary(
            ca_pb.METHOD,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=ca_pb.IstioCertificateResponse.FromString,
        )
        call(
            ca_pb.IstioCertificateRequest(csr=make_csr(new_key()).decode(), validity_duration=3600),
            timeout=timeout,
            metadata=(("authorization", f"Bearer {token}"),),
        )
        return None
    except grpc.RpcError as e:
        return e
    finally:
        ch.close()


def test_silent_connections_cannot_hold_the_tls_port(tmp_path: Path) -> None:
    cp = secure(tmp_path, tls_max_pending=8, tls_hello_timeout=0.5)
    socks = []
    try:
        token = cp.security.tokens.create("default", "product")
        for _ in range(60):  # never send a ClientHello
            s = socket.create_connection(("127.0.0.1", cp.secure_port))
            socks.append(s)
        started = time.monotonic()
        assert certificate(cp, token) is None
        assert time.monotonic() - started < 3
        front = cp.security.front
        wait_until(lambda: front.pending == 0, timeout=5)
        assert front.stats["evicted"] + front.stats["hello_timeouts"] >= 60
        for s in socks:  # each one was closed by the server: at its deadline or evicted
            s.settimeout(5)
            assert s.recv(1) == b""
    finally:
        for s in socks:
            s.close()
        cp.stop()


def test_rotate_key_revokes_tokens_in_the_running_control_plane(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cp = secure(tmp_path)
    try:
        old = cp.security.tokens.create("default", "product")
        assert certificate(cp, old) is None
        assert main(["token", "rotate-key", "--data-dir", str(tmp_path / "data")]) == 0
        kid = capsys.readouterr().out.strip()
        err = certificate(cp, old)
        assert (
            err is not None and err.code() == grpc.StatusCode.UNAUTHENTICATED and "another key" in (err.details() or "")
        )
        assert main(["token", "create", "-n", "default", "-s", "product", "--data-dir", str(tmp_path / "data")]) == 0
        new = capsys.readouterr().out.strip()
        assert certificate(cp, new) is None and cp.security.tokens.kid == kid
    finally:
        cp.stop()
