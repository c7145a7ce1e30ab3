"""OutboundProxy's Python surface on loopback (no root needed): lifecycle,
table swaps, settings errors, and a connection that was not redirected."""

from __future__ import annotations

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
