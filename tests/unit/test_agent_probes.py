"""Readiness probes of each kind against real local servers (HTTP, HTTPS,
TCP, exec, gRPC health), and the transition state machine with its timing
fields."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from pymesh.agent import Probe, Prober, parse_probe
from pymesh.agent.probes import decode_health_response, encode_health_request
from support.agent import HealthServer, Http, Req, Resp, TcpApp
from support.ports import free_port
from support.system import require_tools, unavailable
from support.wait import wait_until


@pytest.fixture
def http() -> Iterator[Http]:
    s = Http()
    yield s
    s.stop()


def check(probe: dict[str, Any], host: str = "127.0.0.1", local_ips: tuple[str, ...] = ()) -> tuple[bool, str]:
    return Probe(parse_probe(probe), default_host=host, local_ips=local_ips).check()


def test_http_probe_status_codes_headers_and_source(http: Http) -> None:
    probe = {
        "httpGet": {
            "port": http.port,
            "path": "health/ready",
            "httpHeaders": [{"name": "X-Probe", "value": "1"}, {"name": "X-Probe", "value": "2"}],
        }
    }
    assert check(probe) == (True, "")
    req = http.requests[-1]
    assert req["path"] == "/health/ready"
    assert req["headers"]["User-Agent"] == "istio-probe/1.0" and req["headers"]["Connection"] == "close"
    assert req["headers"]["Host"] == f"127.0.0.1:{http.port}"
    # A loopback destination is probed from 127.0.0.6, which istio-iptables returns before the inbound redirect.
    assert req["client"] == "127.0.0.6"
    http.status = 302
    assert check(probe)[0] is True  # 3xx is healthy (not followed)
    http.status = 503
    ok, msg = check(probe)
    assert not ok and "503" in msg and "[200,400)" in msg
    http.status = 200
    custom = {"httpGet": {"port": http.port, "httpHeaders": [{"name": "Host", "value": "app.local"}]}}
    custom["httpGet"]["httpHeaders"].append({"name": "User-Agent", "value": "mine"})
    assert check(custom)[0]
    assert http.requests[-1]["headers"]["Host"] == "app.local"
    assert http.requests[-1]["headers"]["User-Agent"] == "mine"


def test_http_probe_of_a_remote_address_is_not_bound_to_127_0_0_6() -> None:
    # 127.0.0.1 counts as remote when the probe is told the VM's IPs are others and it is not loopback:
    # use the host's real address if it has one.
    from pymesh.agent.node import host_ips

    addrs = [a for a in host_ips() if ":" not in a]
    if not addrs:
        unavailable("no non-loopback IPv4 address on this host")
    s = Http(host=addrs[0])
    try:
        assert check({"httpGet": {"port": s.port}}, host=addrs[0])[0]
        assert s.requests[-1]["client"] != "127.0.0.6"
        assert check({"httpGet": {"port": s.port}}, host=addrs[0], local_ips=(addrs[0],))[0]
        assert s.requests[-1]["client"] == "127.0.0.6"  # the VM's own IP: bound like loopback
    finally:
        s.stop()


def test_http_probe_connect_refused_and_timeout() -> None:
    ok, msg = check({"httpGet": {"port": free_port("127.0.0.1")}})
    assert not ok and "refused" in msg.lower()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never answers
    try:
        started = time.monotonic()
        ok, msg = check({"httpGet": {"port": silent.getsockname()[1]}, "timeoutSeconds": 0.3})
        assert not ok and "timed out" in msg.lower() and time.monotonic() - started < 2
    finally:
        silent.close()


def test_https_probe_skips_verification(tmp_path: Path) -> None:
    require_tools("openssl")
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)),
            *("-days", "1", "-subj", "/CN=untrusted"),
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    s = Http(tls=ctx)
    try:
        assert check({"httpGet": {"port": s.port, "scheme": "HTTPS"}}) == (True, "")
        assert s.requests[-1]["headers"]["User-Agent"] == "istio-probe/1.0"
        ok, _ = check({"httpGet": {"port": s.port, "scheme": "HTTP"}})
        assert not ok  # plain HTTP to a TLS port fails
    finally:
        s.stop()


def test_tcp_probe() -> None:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    port = lsock.getsockname()[1]
    assert check({"tcpSocket": {"port": port}}) == (True, "")
    conn, peer = lsock.accept()
    assert peer[0] == "127.0.0.6"
    conn.close()
    lsock.close()
    ok, msg = check({"tcpSocket": {"port": port}})
    assert not ok and "refused" in msg.lower()
    # host overrides the default host
    assert not check({"tcpSocket": {"port": port, "host": "127.0.0.1"}}, host="127.0.0.99")[0]


def test_exec_probe() -> None:
    assert check({"exec": {"command": ["/bin/true"]}}) == (True, "")
    ok, msg = check({"exec": {"command": ["/bin/false"]}})
    assert not ok and "exited with status 1" in msg
    ok, msg = check({"exec": {"command": ["/bin/sh", "-c", "echo broken >&2; exit 3"]}})
    assert not ok and "status 3: broken" in msg
    started = time.monotonic()
    ok, msg = check({"exec": {"command": ["/bin/sleep", "10"]}, "timeoutSeconds": 0.2})
    assert not ok and "timed out" in msg and time.monotonic() - started < 2
    ok, msg = check({"exec": {"command": ["/nonexistent/probe"]}})
    assert not ok and "could not run" in msg


def test_health_wire_encoding_matches_protobuf() -> None:
    for service in ("", "a", "x" * 200, "grpc.health.v1.Health"):
        assert encode_health_request(service) == Req(service=service).SerializeToString()
        assert Req.FromString(encode_health_request(service)).service == service
    for status in range(4):
        assert decode_health_response(Resp(status=status).SerializeToString()) == status
    with pytest.raises(ValueError):
        decode_health_response(b"\x08")  # truncated varint


def test_grpc_probe_against_the_standard_health_service() -> None:
    s = HealthServer()
    try:
        s.status.update({"product": 1, "draining": 2})
        assert check({"grpc": {"port": s.port}}) == (True, "")
        assert check({"grpc": {"port": s.port, "service": "product"}}) == (True, "")
        assert any(ua.startswith("istio-probe/1.0") for ua in s.user_agents)
        ok, msg = check({"grpc": {"port": s.port, "service": "draining"}})
        assert not ok and "NOT_SERVING" in msg
        ok, msg = check({"grpc": {"port": s.port, "service": "nope"}})
        assert not ok and "NOT_FOUND" in msg
    finally:
        s.stop()
    ok, msg = check({"grpc": {"port": s.port}, "timeoutSeconds": 0.5})
    assert not ok and ("UNAVAILABLE" in msg or "DEADLINE_EXCEEDED" in msg)


def test_grpc_probe_of_a_server_without_health_service() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        ok, msg = check({"grpc": {"port": port}})
        assert not ok and "UNIMPLEMENTED" in msg
    finally:
        server.stop(0)


# --- the state machine and timing ------------------------------------------------------------


def test_thresholds_emit_only_transitions() -> None:
    events: list[tuple[bool, str]] = []
    spec = parse_probe({"exec": {"command": ["x"]}, "successThreshold": 2, "failureThreshold": 3})
    p = Prober(spec, lambda ok, msg: events.append((ok, msg)))
    for ok in (True, False, True, True, True, False, False, True, False, False, False, False):
        p.record(ok, "" if ok else "bad")
    # healthy after 2 in a row; the single failure after it does not count; unhealthy after 3 in a row.
    assert events == [(True, ""), (False, "bad")]
    p.record(True, "")
    assert events[-1] == (False, "bad")  # one success below successThreshold 2
    p.record(True, "")
    assert events[-1] == (True, "")


def test_first_report_may_be_unhealthy() -> None:
    events: list[bool] = []
    p = Prober(parse_probe({"exec": {"command": ["x"]}}), lambda ok, msg: events.append(ok))
    p.record(False, "no")
    assert events == [False]


def test_prober_timing_initial_delay_and_period() -> None:
    events: list[tuple[float, bool]] = []
    started = time.monotonic()
    spec = parse_probe({"exec": {"command": ["/bin/true"]}, "initialDelaySeconds": 0.4, "periodSeconds": 0.1})
    p = Prober(spec, lambda ok, msg: events.append((time.monotonic() - started, ok))).start()
    try:
        wait_until(lambda: p.attempts >= 4, timeout=5)
    finally:
        p.stop()
    assert events[0][1] is True and events[0][0] >= 0.4
    assert len(events) == 1  # no repeats while the state holds


def test_prober_follows_a_real_listener() -> None:
    app = TcpApp("127.0.0.1")
    port = app.port
    events: list[bool] = []
    spec = parse_probe({"tcpSocket": {"port": port}, "periodSeconds": 0.05, "failureThreshold": 2})
    p = Prober(spec, lambda ok, msg: events.append(ok), default_host="127.0.0.1").start()
    try:
        wait_until(lambda: events == [True])
        assert wait_until(lambda: app.peers)[0] == "127.0.0.6"
        app.close()
        wait_until(lambda: events == [True, False])
        assert p.failures >= 2
    finally:
        p.stop()
