"""The DNS proxy's limits, over real loopback sockets: one UDP reply
size rule on every answer path, the allow-list of a listener off loopback,
SERVFAIL at once beyond the pending-forward limits, and TCP admission that
closes the oldest idle connection rather than turning newcomers away. The
floods themselves are in tests/hostile/test_dns_floods.py."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import dns.rrset
import pytest

from pymesh import ConfigError
from pymesh.cli import build_parser
from pymesh.dnsproxy import DnsProxy, DnsServer
from support.dns import addresses, host_port, make_table, proxy, query, rcode_of, responder
from support.wait import wait_until

CAP = 1232


@contextlib.contextmanager
def big_upstream(records: int = 300, delay: float = 0.0) -> Iterator[str]:
    """A UDP upstream answering every A query with ``records`` addresses after ``delay``
    seconds, in one datagram whatever size was asked for (as a careless server would)."""

    def answer(sock: socket.socket, q: dns.message.Message, data: bytes, peer: tuple[str, int]) -> None:
        time.sleep(delay)
        r = dns.message.make_response(q)
        ips = [f"198.51.{i // 250}.{i % 250 + 1}" for i in range(records)]
        r.answer.append(dns.rrset.from_text_list(q.question[0].name, 60, "IN", "A", ips))
        sock.sendto(r.to_wire(max_size=65535), peer)

    with responder(answer) as (addr, _):
        yield addr


def _udp(addr: str, name: str, payload: int, source: str = "127.0.0.1") -> tuple[int, dns.message.Message]:
    host, port = host_port(addr)
    q = dns.message.make_query(name, "A", use_edns=0, payload=payload)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(3)
        s.sendto(q.to_wire(), (host, port))
        data = s.recv(65535)
    return len(data), dns.message.from_wire(data)


def test_no_udp_reply_exceeds_1232_bytes_on_any_path() -> None:
    """Local, forwarded, coalesced and cached answers to a client advertising 65,535
    bytes: at most 1232 over UDP, cut with TC; over TCP the whole answer."""
    with big_upstream(delay=0.3) as up, proxy(make_table(), upstreams=[up]) as (server, addr):
        size, m = _udp(addr, "headless.default.svc.cluster.local", 65535)  # 100 local addresses
        assert size <= CAP and m.flags & dns.flags.TC and 0 < len(addresses(m)) < 100
        got: list[tuple[int, dns.message.Message]] = []
        threads = [threading.Thread(target=lambda: got.append(_udp(addr, "big.example.org", 65535))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 4 and server.stats()["coalesced"] == 3  # one upstream query, four clients
        for size, m in got:
            assert size <= CAP and m.flags & dns.flags.TC and 0 < len(addresses(m)) < 300
        size, m = _udp(addr, "big.example.org", 65535)
        assert server.stats()["outcomes"]["cache_hit"] == 1
        assert size <= CAP and m.flags & dns.flags.TC
        assert len(addresses(query(addr, "big.example.org", tcp=True))) == 300
        assert len(addresses(query(addr, "headless.default.svc.cluster.local", tcp=True, payload=65535))) == 100
        stats = server.stats()
        assert stats["udp_truncated"] == 6
        assert "\npymesh_dns_udp_truncated_total 6\n" in server.metrics_text()


def test_over_the_pending_limits_servfail_comes_at_once_and_slots_come_back() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
        dead.bind(("127.0.0.1", 0))
        up = f"127.0.0.1:{dead.getsockname()[1]}"
        with proxy(None, upstreams=[up], timeout=2.0, max_pending=4, max_pending_per_client=3) as (server, addr):
            assert server.stats()["forwards_limit"] == 4
            host, port = host_port(addr)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.settimeout(1.0)  # well inside the 2 s attempt timeout: only shed replies come this soon
                for i in range(5):
                    c.sendto(dns.message.make_query(f"n{i}.example.org", "A").to_wire(), (host, port))
                shed = [dns.message.from_wire(c.recv(1500)) for _ in range(2)]
                assert [rcode_of(m) for m in shed] == ["SERVFAIL", "SERVFAIL"]
                wait_until(lambda: server.stats()["forwards_pending"] == 3)
                stats = server.stats()
                assert stats["forwards_rejected"] == {"total": 0, "client": 2}
                assert stats["outcomes"]["overloaded"] == 2 and stats["rcodes"]["SERVFAIL"] == 2
                # The three admitted end with the attempt timeout, and give their slots back.
                c.settimeout(5)
                assert [rcode_of(dns.message.from_wire(c.recv(1500))) for _ in range(3)] == ["SERVFAIL"] * 3
            wait_until(lambda: server.stats()["forwards_pending"] == 0)
            assert server.stats()["outcomes"]["upstream_failure"] == 3
            text = server.metrics_text()
            assert "\npymesh_dns_forwards_pending 0\n" in text
            assert 'pymesh_dns_forwards_rejected_total{limit="client"} 2\n' in text


def _tcp_connect(addr: str, source: str = "127.0.0.1") -> socket.socket:
    host, port = host_port(addr)
    s = socket.create_connection((host, port), timeout=3, source_address=(source, 0))
    return s


def _tcp_ask(s: socket.socket, name: str) -> dns.message.Message:
    w = dns.message.make_query(name, "A").to_wire()
    s.sendall(struct.pack("!H", len(w)) + w)
    buf = b""
    while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
        chunk = s.recv(65535)
        assert chunk, "closed by the server"
        buf += chunk
    return dns.message.from_wire(buf[2:])


def _closed(s: socket.socket) -> bool:
    """Whether the server closed ``s`` (it does so at once when it evicts it)."""
    s.settimeout(2)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_tcp_at_its_limits_the_oldest_idle_connection_makes_room() -> None:
    with proxy(make_table(), tcp_max_connections=3, tcp_max_connections_per_client=2) as (server, addr):

        def ask(s: socket.socket) -> bool:
            return addresses(_tcp_ask(s, "product")) == ["10.96.0.20"]

        idle = _tcp_connect(addr)
        active = _tcp_connect(addr)
        assert ask(active)
        # A client at its share of 2: its own oldest idle connection is closed for the new one.
        x = _tcp_connect(addr)
        assert ask(x) and _closed(idle) and ask(active)
        # At the total of 3: the least recently active idle connection of anyone (x).
        y = _tcp_connect(addr, "127.0.0.2")
        assert ask(y)
        z = _tcp_connect(addr, "127.0.0.2")
        assert ask(z) and _closed(x)
        assert ask(active) and ask(y)
        stats = server.stats()
        assert stats["tcp_evicted"] == 2 and stats["tcp_connections"] == 3
        assert "\npymesh_dns_tcp_connections_evicted_total 2\n" in server.metrics_text()
        for s in (idle, active, x, y, z):
            s.close()


def _non_loopback_ipv4() -> str | None:
    """An IPv4 address of this host off loopback (on an interface that is up), to be
    a client from "elsewhere" without any packet leaving the host."""
    try:
        out = subprocess.run(
            ["ip", "-4", "-o", "addr", "show", "scope", "global", "up"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            return fields[fields.index("inet") + 1].split("/")[0]
    return None


def test_a_listener_off_loopback_refuses_clients_outside_its_allow_list(caplog: pytest.LogCaptureFixture) -> None:
    outside = _non_loopback_ipv4()
    if outside is None:
        pytest.skip("this host has no IPv4 address off loopback to be a client from")
    s = DnsServer(listen=["0.0.0.0:0"], workers=1)
    s.swap_table(make_table())
    with caplog.at_level(logging.WARNING, logger="pymesh.dnsproxy"):
        port = int(s.start()[0].rsplit(":", 1)[1])
    try:
        assert any("0.0.0.0" in r.getMessage() and "no client allow-list" in r.getMessage() for r in caplog.records)
        assert s.warnings() and "refused" in s.warnings()[0]
        # Loopback clients are served; another address gets REFUSED, with its question, no larger.
        _, m = _udp(f"127.0.0.1:{port}", "product", 1232)
        assert addresses(m) == ["10.96.0.20"]
        q = dns.message.make_query("product", "A")
        r = dns.query.udp(q, outside, port=port, source=outside, timeout=3)
        assert rcode_of(r) == "REFUSED" and not r.answer and r.question == q.question
        assert len(r.to_wire()) <= len(q.to_wire())
        assert s.stats()["outcomes"]["refused"] == 1 and s.stats()["rcodes"]["REFUSED"] == 1
        # Over TCP the connection is closed at once.
        c = _tcp_connect(f"{outside}:{port}", outside)
        assert _closed(c)
        c.close()
        wait_until(lambda: s.stats()["tcp_rejected"]["not_allowed"] == 1)
    finally:
        s.stop()
    # Listed, it is served, and nothing is logged.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pymesh.dnsproxy"):
        p = DnsProxy(None, listen=["0.0.0.0:0"], upstreams=[], allow=[f"{outside}/32"], workers=1)
        p.server.swap_table(make_table())
        port = int(p.start()[0].rsplit(":", 1)[1])
    try:
        assert not caplog.records
        r = dns.query.udp(dns.message.make_query("product", "A"), outside, port=port, source=outside, timeout=3)
        assert addresses(r) == ["10.96.0.20"]
    finally:
        p.stop()
    # A loopback listener checks nobody: a captured query (REDIRECT to 127.0.0.1)
    # keeps its own source address and must be answered.
    with proxy(make_table()) as (server, addr):
        host, lport = host_port(addr)
        r = dns.query.udp(dns.message.make_query("product", "A"), host, port=lport, source=outside, timeout=3)
        assert addresses(r) == ["10.96.0.20"] and server.warnings() == []


def test_limit_and_allow_list_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"allow\[1\]: .*not an IP address"):
        DnsServer(allow=["10.0.0.0/8", "ten"])
    with pytest.raises(ConfigError, match=r"allow\[0\]: .*past the prefix length"):
        DnsServer(allow=["10.0.0.1/8"])
    with pytest.raises(ConfigError, match="max_pending: must be at least 1"):
        DnsServer(max_pending=0)
    with pytest.raises(ConfigError, match="max_pending_per_client"):
        DnsServer(max_pending_per_client=0)
    with pytest.raises(ConfigError, match="tcp_max_connections: "):
        DnsServer(tcp_max_connections=0)
    with pytest.raises(ConfigError, match="tcp_max_connections_per_client"):
        DnsServer(tcp_max_connections_per_client=0)
    with pytest.raises(ConfigError, match="tcp_max_inflight"):
        DnsServer(tcp_max_inflight=0)
    open_to_all = DnsServer(listen=["0.0.0.0:0"], allow=["0.0.0.0/0"])
    assert "open resolver" in open_to_all.warnings()[0]


def test_cli_dns_serve_takes_allow() -> None:
    args = build_parser().parse_args(
        ["dns", "serve", "--table", "t.json", "--listen", "0.0.0.0:53", "--allow", "10.0.0.0/8", "--allow", "fd00::/8"]
    )
    assert args.allow == ["10.0.0.0/8", "fd00::/8"]
    assert build_parser().parse_args(["dns", "serve", "--table", "t.json"]).allow == []


def test_pending_forwards_are_counted_over_tcp_too() -> None:
    """TCP forwards take the same slots: over the total, SERVFAIL at once on the stream."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
        dead.bind(("127.0.0.1", 0))
        up = f"127.0.0.1:{dead.getsockname()[1]}"
        with proxy(None, upstreams=[up], timeout=2.0, max_pending=1, max_pending_per_client=1) as (server, addr):
            c = _tcp_connect(addr)
            w = b"".join(
                struct.pack("!H", len(x)) + x
                for x in (dns.message.make_query(f"t{i}.example.org", "A").to_wire() for i in range(3))
            )
            c.sendall(w)
            c.settimeout(1.0)  # inside the 2 s attempt timeout: only shed replies come this soon
            buf = b""
            while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                buf += c.recv(65535)
            first = dns.message.from_wire(buf[2 : 2 + struct.unpack("!H", buf[:2])[0]])
            assert rcode_of(first) == "SERVFAIL"
            wait_until(lambda: server.stats()["outcomes"]["overloaded"] == 2)
            assert server.stats()["forwards_pending"] == 1
            assert server.stats()["forwards_rejected"]["client"] == 2
            c.close()
