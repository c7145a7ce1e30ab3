"""OutboundProxy's Python surface on loopback (no root needed): lifecycle,
table swaps, settings errors, and a connection that was not redirected."""

from __future__ import annotations

import contextlib
import socket

import pytest

from pymesh import ConfigError, PymeshError
from pymesh.capture import CaptureConfig, redirect_table
from pymesh.lbtable import LbTable, RedirectTable
from pymesh.relay import OutboundProxy, original_destination, start_outbound_proxy


def tables() -> tuple[RedirectTable, LbTable]:
    return redirect_table(CaptureConfig()), LbTable(seed=1)


def test_lifecycle_addresses_and_not_redirected_connections() -> None:
    redirect, lb = tables()
    proxy = start_outbound_proxy(lb, redirect, listen=["127.0.0.1:0"])
    try:
        assert proxy.running
        (addr,) = proxy.addresses
        host, port = addr.rsplit(":", 1)
        # A connection straight to the proxy has no original destination
        # elsewhere: it is closed, never relayed back into the proxy.
        # (The reset may even beat the end of a non-blocking connect.)
        try:
            with socket.create_connection((host, int(port)), timeout=5) as s:
                assert s.recv(10) == b""
        except ConnectionResetError:
            pass
        st = proxy.stats()
        assert st["accepted"] == 1 and st["no_original_dst"] == 1 and st["connect_attempts"] == 0
    finally:
        proxy.stop()
    assert not proxy.running and proxy.addresses == []
    proxy.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=1)


def test_swap_tables_replaces_what_new_connections_use() -> None:
    redirect, lb = tables()
    proxy = OutboundProxy(redirect, lb, listen=["127.0.0.1:0"])
    other = RedirectTable.from_dict({"services": [{"address": "10.0.0.1", "port": 80, "cluster": "c"}]})
    lb2 = LbTable(seed=2)
    proxy.swap_tables(redirect=other)
    assert proxy.tables[0] is other and proxy.tables[1] is lb
    proxy.swap_tables(lb=lb2)
    assert proxy.tables == (other, lb2)


def test_invalid_settings_are_config_errors_naming_the_field() -> None:
    redirect, lb = tables()
    with pytest.raises(ConfigError, match=r"listen\[1\]"):
        OutboundProxy(redirect, lb, listen=["127.0.0.1:0", "localhost"])
    with pytest.raises(ConfigError, match="connect_timeout"):
        OutboundProxy(redirect, lb, connect_timeout=0)
    with pytest.raises(PymeshError, match="connect_attempts"):
        OutboundProxy(redirect, lb, connect_attempts=0)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    p = OutboundProxy(redirect, lb, listen=[f"127.0.0.1:{busy.getsockname()[1]}"])
    with pytest.raises(PymeshError, match=r"listen\[0\]"):
        p.start()
    busy.close()


def test_original_destination_of_a_plain_socket_is_an_error() -> None:
    a, b = socket.socketpair()
    with a, b, pytest.raises(PymeshError, match="original destination"):
        original_destination(a.fileno(), False)


def test_limits_come_from_the_descriptor_budget_and_settings_are_checked() -> None:
    import resource

    redirect, lb = tables()
    proxy = OutboundProxy(redirect, lb, listen=["127.0.0.1:0"])
    limits = proxy.limits()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Two relays share the budget, 2.5 descriptors a connection, a reserve kept back.
    assert 16 <= limits["max_connections"] <= soft // 5
    assert limits["max_connections_per_source"] == limits["max_connections"]  # outbound: local sources
    assert limits["max_pipes"] == max(4, limits["max_connections"] // 4)
    assert limits["fd_limit"] in (soft, -1)
    inbound = OutboundProxy(redirect, lb, listen=["127.0.0.1:0"], inbound=True, max_connections=400)
    assert inbound.limits()["max_connections"] == min(400, limits["max_connections"])
    assert inbound.limits()["max_connections_per_source"] == inbound.limits()["max_connections"] // 4
    capped = OutboundProxy(redirect, lb, max_connections=10, max_connections_per_source=3)
    assert (capped.limits()["max_connections"], capped.limits()["max_connections_per_source"]) == (10, 3)
    for kwargs, field in [
        ({"hello_timeout": 0}, "hello_timeout"),
        ({"keepalive": -1.0}, "keepalive"),
        ({"keepalive": 0.2}, "keepalive"),
        ({"max_connections": 0}, "max_connections"),
        ({"max_connections_per_source": 0}, "max_connections_per_source"),
    ]:
        with pytest.raises(PymeshError, match=field):
            OutboundProxy(redirect, lb, **kwargs)  # type: ignore[arg-type]
    # Keepalive off is allowed.
    OutboundProxy(redirect, lb, keepalive=None)


def test_counters_include_admission_and_identity_waits() -> None:
    redirect, lb = tables()
    proxy = OutboundProxy(redirect, lb, listen=["127.0.0.1:0"])
    assert {"evicted", "source_overflow", "hello_timeouts", "overflow", "active"} <= set(proxy.stats())
    assert {"identity_waits", "no_identity", "handshakes"} <= set(proxy.tls_stats())
    assert all(v == 0 for v in proxy.stats().values())


def test_connections_cost_no_thread_of_their_own() -> None:
    import os
    import time

    def relay_threads() -> int:
        n = 0
        for t in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{t}/comm") as f:
                    n += f.read().strip() == "pymesh-relay-in"
            except OSError:
                pass
        return n

    redirect, lb = tables()
    proxy = OutboundProxy(redirect, lb, listen=["127.0.0.1:0"], inbound=True, workers=2)
    proxy.start()
    try:
        host, port = proxy.addresses[0].rsplit(":", 1)
        deadline = time.monotonic() + 5
        while relay_threads() != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert relay_threads() == 2
        held: list[socket.socket] = []
        try:
            for _ in range(300):
                s = socket.socket()
                held.append(s)
                # The relay's reset (no original destination) may beat the end of connect().
                with contextlib.suppress(ConnectionResetError):
                    s.connect((host, int(port)))
            deadline = time.monotonic() + 10
            while proxy.stats()["accepted"] < 300 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert proxy.stats()["accepted"] == 300
            # 300 connections (not redirected, so each is closed at once; a redirected one
            # waits on the same event loop): still the event loop's two threads.
            assert relay_threads() == 2
        finally:
            for s in held:
                s.close()
    finally:
        proxy.stop()
