"""Hypothesis: arbitrary bytes, and mutations of valid queries, through the
Python API (`dns_answer`, and a running server): never a crash, never a reply
larger than the client allows, every reply parses, and local answers agree
with the name table's own lookup (the oracle)."""

from __future__ import annotations

import socket

import dns.exception
import dns.flags
import dns.message
import dns.rdatatype
from hypothesis import given
from hypothesis import strategies as st

from pymesh.dnsproxy import dns_answer
from support.dns import host_port, make_table, proxy

TABLE = make_table()
NAMES = [
    "product",
    "product.default",
    "Product.Default.svc.cluster.local",
    "reviews.bookinfo",
    "headless.default.svc.cluster.local",
    "api.payments.example.com",
    "x.wild.example.com",
    "nope.example.org",
    "30.0.96.10.in-addr.arpa",
]
QTYPES = ["A", "AAAA", "PTR", "SRV", "TXT", "ANY", "MX", "HTTPS"]


def limit_of(packet: bytes, tcp: bool) -> int:
    if tcp:
        return 65535
    try:
        m = dns.message.from_wire(packet)
    except (dns.exception.DNSException, ValueError):
        return 512
    return max(512, m.payload) if m.edns >= 0 else 512


def check(packet: bytes, tcp: bool) -> None:
    out = dns_answer(TABLE, packet, tcp=tcp)
    if out is None or out == b"":
        return
    assert len(out) <= limit_of(packet, tcp)
    assert len(out) >= 12 and out[:2] == packet[:2] and out[2] & 0x80
    r = dns.message.from_wire(out)  # every reply parses
    if r.rcode() in (1, 4):  # FORMERR and NOTIMP are never larger than the query
        assert len(out) <= max(len(packet), 23)


@given(st.binary(max_size=600), st.booleans())
def test_arbitrary_bytes(packet: bytes, tcp: bool) -> None:
    check(packet, tcp)


@st.composite
def mutated_queries(draw: st.DrawFn) -> bytes:
    q = dns.message.make_query(
        draw(st.sampled_from(NAMES)),
        draw(st.sampled_from(QTYPES)),
        use_edns=draw(st.booleans()),
        payload=draw(st.integers(0, 65535)),
    )
    wire = bytearray(q.to_wire())
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(wire) - 1))
        wire[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        wire = wire[: draw(st.integers(0, len(wire)))]
    return bytes(wire)


@given(mutated_queries(), st.booleans())
def test_mutated_queries(packet: bytes, tcp: bool) -> None:
    check(packet, tcp)


@given(st.sampled_from(NAMES), st.sampled_from(["A", "AAAA"]), st.booleans())
def test_local_answers_match_the_table(name: str, qtype: str, tcp: bool) -> None:
    q = dns.message.make_query(name, qtype)
    out = dns_answer(TABLE, q.to_wire(), tcp=tcp)
    m = TABLE.lookup(name.lower())
    if m is None:
        if not name.endswith(".arpa"):
            assert out is None
        return
    assert out is not None
    r = dns.message.from_wire(out)
    got = sorted(x.to_text() for rr in r.answer for x in rr)
    want = sorted(m.addresses(qtype))
    if r.flags & dns.flags.TC:
        assert set(got) < set(want)
    else:
        assert got == want
        if not want:
            assert r.authority and r.authority[0].rdtype == dns.rdatatype.SOA


def test_server_survives_a_burst_of_garbage() -> None:
    import random

    rnd = random.Random(7)
    with proxy(TABLE) as (server, addr):
        host, port = host_port(addr)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.01)
            for _ in range(800):
                s.sendto(rnd.randbytes(rnd.randint(0, 700)), (host, port))
                try:
                    assert len(s.recv(65535)) <= 512
                except TimeoutError:
                    pass
        r = dns.message.from_wire(_ask(host, port, dns.message.make_query("product", "A").to_wire()))
        assert [x.to_text() for rr in r.answer for x in rr] == ["10.96.0.20"]
        assert server.running


def _ask(host: str, port: int, wire: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(wire, (host, port))
        return s.recv(65535)
