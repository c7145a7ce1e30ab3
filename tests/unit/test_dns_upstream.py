"""Forwarding through the proxy to real upstreams started by the tests:
unbound and dnsmasq with their own zone on 127.0.0.x, plus Python
responders that are slow, dead, or forge answers.

The unbound and dnsmasq tests need those servers installed (no root): without
them they are skipped with the reason, or fail when PYMESH_REQUIRE_ROOT_TESTS is
set (CI)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rrset
import pytest

from support.dns import MANY, UPSTREAM_ZONE, addresses, dnsmasq, make_table, proxy, query, rcode_of, responder, unbound

WWW = f"www.{UPSTREAM_ZONE}"


@pytest.fixture
def dead() -> Iterator[socket.socket]:
    """A bound UDP socket nobody reads: an upstream that never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


def answer_for(q: dns.message.Message, ip: str, ttl: int = 300) -> dns.message.Message:
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(q.question[0].name, ttl, "IN", "A", ip))
    return r


def test_forwarding_to_unbound(tmp_path: Path) -> None:
    with unbound(tmp_path, "127.0.0.2") as port, proxy(make_table(), upstreams=[f"127.0.0.2:{port}"]) as (s, addr):
        m = query(addr, "WWW.Upstream.Test")
        assert addresses(m) == ["192.0.2.10"] and m.answer[0].name.to_text() == "WWW.Upstream.Test."
        m = query(addr, WWW, "TXT")
        assert m.answer[0][0].to_text() == '"hello"'
        m = query(addr, f"nope.{UPSTREAM_ZONE}")
        assert rcode_of(m) == "NXDOMAIN" and m.authority[0].rdtype == dns.rdatatype.SOA
        # Mesh names are still local.
        assert addresses(query(addr, "product")) == ["10.96.0.20"]
        st = s.stats()
        assert st["outcomes"]["forwarded"] == 3 and st["upstream_requests"] == 3


def test_tcp_retry_of_truncated_answers(tmp_path: Path) -> None:
    with unbound(tmp_path, "127.0.0.2") as port, proxy(make_table(), upstreams=[f"127.0.0.2:{port}"]) as (s, addr):
        big = f"big.{UPSTREAM_ZONE}"
        # Our EDNS0 1232 query is truncated by unbound; the proxy retries over TCP.
        m = query(addr, big, tcp=True)
        assert len(addresses(m)) == MANY and not m.flags & dns.flags.TC
        assert s.stats()["tcp_retries"] == 1
        # Relayed to each client at its own limit, TC set when cut.
        m = query(addr, big)
        assert m.flags & dns.flags.TC and len(m.to_wire()) <= 512
        m = query(addr, big, payload=1232)
        assert m.flags & dns.flags.TC and len(m.to_wire()) <= 1232
        # No UDP reply above 1232 bytes, whatever the client advertises.
        for payload in (4096, 65535):
            m = query(addr, big, payload=payload)
            assert m.flags & dns.flags.TC and len(m.to_wire()) <= 1232 and 0 < len(addresses(m)) < MANY


def test_cache_positive_negative_and_off(tmp_path: Path) -> None:
    ctx = unbound(tmp_path, "127.0.0.2")
    port = ctx.__enter__()
    up = [f"127.0.0.2:{port}"]
    with (
        proxy(make_table(), upstreams=up, timeout=0.5) as (s, addr),
        proxy(make_table(), upstreams=up, timeout=0.5, cache_size=0) as (_, nocache),
    ):
        assert addresses(query(addr, WWW)) == ["192.0.2.10"]
        assert rcode_of(query(addr, f"nx.{UPSTREAM_ZONE}")) == "NXDOMAIN"
        assert addresses(query(nocache, WWW)) == ["192.0.2.10"]
        assert s.stats()["cache_entries"] == 2
        ctx.__exit__(None, None, None)  # the upstream is gone from here on
        time.sleep(1.1)
        m = query(addr, "www.UPSTREAM.test")
        assert addresses(m) == ["192.0.2.10"] and m.answer[0].ttl < 300  # TTL decremented
        assert m.answer[0].name.to_text() == "www.UPSTREAM.test."  # this client's case
        m = query(addr, f"nx.{UPSTREAM_ZONE}")
        assert rcode_of(m) == "NXDOMAIN" and m.authority[0].ttl < 60  # RFC 2308: min(SOA TTL, MINIMUM)
        st = s.stats()
        assert st["upstream_requests"] == 2 and st["outcomes"]["cache_hit"] == 2, st
        assert rcode_of(query(nocache, WWW)) == "SERVFAIL"


def test_hedging_past_a_dead_and_a_slow_upstream(tmp_path: Path, dead: socket.socket) -> None:

    def slow(sock: socket.socket, q: dns.message.Message, _: bytes, peer: tuple[str, int]) -> None:
        time.sleep(0.8)
        sock.sendto(answer_for(q, "203.0.113.99").to_wire(), peer)

    with responder(slow) as (slow_addr, _), dnsmasq(tmp_path, "127.0.0.3") as port:
        ups = [f"127.0.0.1:{dead.getsockname()[1]}", slow_addr, f"127.0.0.3:{port}"]
        with proxy(make_table(), upstreams=ups, timeout=1.0, hedge_delay=0.05) as (s, addr):
            t0 = time.monotonic()
            m = query(addr, WWW)
            took = time.monotonic() - t0
            # dnsmasq, asked third after two hedge delays, answers first.
            assert addresses(m) == ["192.0.2.20"] and took < 0.6, took
            assert s.stats()["hedged"] >= 2
            # Attempts that lost the race were timed too: the fastest server goes
            # first now, and answers before any hedge.
            hedged = s.stats()["hedged"]
            t0 = time.monotonic()
            assert rcode_of(query(addr, f"fresh.{UPSTREAM_ZONE}")) == "NXDOMAIN"
            assert time.monotonic() - t0 < 0.05 and s.stats()["hedged"] == hedged
            srtt = {u["address"]: u["srtt_ms"] for u in s.stats()["upstreams"]}
            assert srtt[ups[2]] < srtt[ups[1]] and srtt[ups[2]] < srtt[ups[0]]


def test_failing_upstream_is_ranked_last(tmp_path: Path, dead: socket.socket) -> None:
    with dnsmasq(tmp_path, "127.0.0.3") as port:
        ups = [f"127.0.0.1:{dead.getsockname()[1]}", f"127.0.0.3:{port}"]
        with proxy(make_table(), upstreams=ups, timeout=0.2, hedge_delay=5.0) as (s, addr):
            t0 = time.monotonic()
            assert addresses(query(addr, WWW)) == ["192.0.2.20"]  # after the dead one timed out
            assert 0.2 <= time.monotonic() - t0 < 1.0
            state = {u["address"]: u for u in s.stats()["upstreams"]}
            assert state[ups[0]]["consecutive_failures"] == 1
            t0 = time.monotonic()
            assert rcode_of(query(addr, f"other.{UPSTREAM_ZONE}")) == "NXDOMAIN"
            assert time.monotonic() - t0 < 0.1


def test_all_upstreams_dead_is_servfail_within_the_timeout() -> None:
    dead = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for d in dead:
        d.bind(("127.0.0.1", 0))
    ups = [f"127.0.0.1:{d.getsockname()[1]}" for d in dead]
    with proxy(make_table(), upstreams=ups, timeout=0.3, hedge_delay=0.05) as (s, addr):
        t0 = time.monotonic()
        assert rcode_of(query(addr, "x.example")) == "SERVFAIL"
        assert time.monotonic() - t0 < 1.0
        assert s.stats()["upstream_failures"] == 1
    for d in dead:
        d.close()


@pytest.mark.parametrize("honest_after", [False, True])
def test_forged_answers_are_never_accepted(honest_after: bool) -> None:
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))

    def forger(sock: socket.socket, q: dns.message.Message, raw: bytes, peer: tuple[str, int]) -> None:
        wrong_id = answer_for(q, "6.6.6.1")
        wrong_id.id = (q.id + 1) % 65536
        sock.sendto(wrong_id.to_wire(), peer)
        wrong_case = answer_for(q, "6.6.6.2")
        name = q.question[0].name.to_text()
        flipped = dns.name.from_text(name.swapcase())
        wrong_case.question[0] = dns.rrset.RRset(flipped, q.question[0].rdclass, q.question[0].rdtype)
        wrong_case.answer[0].name = flipped
        sock.sendto(wrong_case.to_wire(), peer)
        wrong_name = answer_for(dns.message.make_query("other.example.", "A", id=q.id), "6.6.6.3")
        sock.sendto(wrong_name.to_wire(), peer)
        other.sendto(answer_for(q, "6.6.6.4").to_wire(), peer)  # right answer, wrong source
        sock.sendto(b"\x00" * 3, peer)  # garbage
        if honest_after:
            time.sleep(0.05)
            sock.sendto(answer_for(q, "192.0.2.77").to_wire(), peer)

    with responder(forger) as (up, seen), proxy(make_table(), upstreams=[up], timeout=0.5) as (s, addr):
        m = query(addr, "Mixed.Case.Example")
        st = s.stats()
        if honest_after:
            assert addresses(m) == ["192.0.2.77"]
        else:
            assert rcode_of(m) == "SERVFAIL" and not m.answer
        assert st["outcomes"]["dropped_spoof"] == 5
        # The proxy asked with a random ID, its own EDNS0, and the client's case.
        assert seen[0].question[0].name.to_text() == "Mixed.Case.Example."
        assert seen[0].edns == 0 and seen[0].payload == 1232
    other.close()


def test_identical_concurrent_queries_are_coalesced() -> None:
    def slowish(sock: socket.socket, q: dns.message.Message, _: bytes, peer: tuple[str, int]) -> None:
        time.sleep(0.3)
        sock.sendto(answer_for(q, "192.0.2.55").to_wire(), peer)

    with responder(slowish) as (up, seen), proxy(make_table(), upstreams=[up], hedge_delay=5.0) as (s, addr):
        results: list[list[str]] = []
        threads = [
            threading.Thread(target=lambda: results.append(addresses(query(addr, "same.example")))) for _ in range(10)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [["192.0.2.55"]] * 10
        assert len(seen) == 1
        assert s.stats()["coalesced"] == 9
