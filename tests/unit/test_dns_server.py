"""The DNS proxy serving local answers to real clients (dig, dnspython) over
real loopback sockets: answers, NODATA with SOA, PTR, truncation and the TCP
retry, malformed packets, and table swaps under load."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import dns.resolver
import pytest

from pymesh import NameTable
from support.dns import addresses, host_port, make_table, proxy, query, rcode_of, rdtypes, table_entries
from support.procs import reap


def dig(addr: str, *args: str) -> str:
    host, port = host_port(addr)
    out = subprocess.run(
        ["dig", "+tries=1", "+time=3", f"@{host}", "-p", str(port), *args], capture_output=True, text=True, check=True
    )
    return out.stdout


def test_dig_local_answers() -> None:
    with proxy(make_table()) as (_, addr):
        out = dig(addr, "Product.Default.svc.cluster.local", "A")
        assert "status: NOERROR" in out
        assert re.search(r"flags: qr aa rd ra", out)
        # The owner echoes the question's letter case; TTL 30.
        assert re.search(r"^Product\.Default\.svc\.cluster\.local\.\s+30\s+IN\s+A\s+10\.96\.0\.20$", out, re.M)
        # Short names: namespace forms and the bare name in our namespace.
        assert dig(addr, "+short", "product").split() == ["10.96.0.20"]
        assert dig(addr, "+short", "reviews.bookinfo", "AAAA").split() == ["fd00:10:96::30"]
        # Known name, other family: NODATA with SOA, never NXDOMAIN.
        out = dig(addr, "product.default.svc.cluster.local", "AAAA")
        assert "status: NOERROR" in out and "ANSWER: 0" in out
        assert re.search(r"^cluster\.local\.\s+30\s+IN\s+SOA", out, re.M)
        # PTR for table addresses.
        assert dig(addr, "+short", "-x", "10.96.0.30").split() == ["reviews.bookinfo.svc.cluster.local."]
        assert dig(addr, "+short", "-x", "fd00:10:96::30").split() == ["reviews.bookinfo.svc.cluster.local."]
        # Over TCP too.
        assert dig(addr, "+tcp", "+short", "product").split() == ["10.96.0.20"]


def test_dnspython_types_rotation_and_wildcards() -> None:
    with proxy(make_table()) as (_, addr):
        m = query(addr, "reviews.bookinfo.svc.cluster.local", "SRV")
        assert rcode_of(m) == "NOERROR" and not m.answer and rdtypes(m, "authority") == ["SOA"]
        assert m.flags & dns.flags.AA
        # A ServiceEntry host's other types are the upstream's: none here, SERVFAIL.
        m = query(addr, "api.payments.example.com", "MX")
        assert rcode_of(m) == "SERVFAIL"
        # Several addresses rotate: every address comes first sometimes.
        firsts = {addresses(query(addr, "api.payments.example.com"))[0] for _ in range(12)}
        assert firsts == {"240.240.0.1", "240.240.0.2", "240.240.0.3"}
        # A wildcard host answers under the asked name, never with a `*`.
        m = query(addr, "x.Wild.example.com")
        assert m.answer[0].name.to_text() == "x.Wild.example.com." and addresses(m) == ["240.240.0.9"]
        # EDNS queries get an OPT back.
        assert query(addr, "product", payload=1232).edns == 0


def test_truncation_and_tcp_retry() -> None:
    with proxy(make_table()) as (_, addr):
        m = query(addr, "headless.default.svc.cluster.local")
        assert m.flags & dns.flags.TC and len(m.to_wire()) <= 512 and 0 < len(m.answer[0]) < 100
        m = query(addr, "headless.default.svc.cluster.local", payload=1232)
        assert m.flags & dns.flags.TC and len(m.to_wire()) <= 1232
        m = query(addr, "headless.default.svc.cluster.local", tcp=True)
        assert not m.flags & dns.flags.TC and len(m.answer[0]) == 100
        # dig retries over TCP by itself on TC and gets all 100.
        assert len(dig(addr, "+short", "+noedns", "headless.default.svc.cluster.local").split()) == 100
        # The resolver of dnspython does the same.
        r = dns.resolver.Resolver(configure=False)
        host, port = host_port(addr)
        r.nameservers, r.port = [host], port
        assert len(r.resolve("headless.default.svc.cluster.local", "A")) == 100


def _raw(addr: str, payload: bytes, timeout: float = 0.3) -> bytes | None:
    host, port = host_port(addr)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, (host, port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def test_malformed_packets_never_crash_or_amplify() -> None:
    with proxy(make_table()) as (server, addr):
        good = query(addr, "product").to_wire()
        q = dns.message.make_query("product", "A").to_wire()
        assert _raw(addr, b"\x01\x02\x03") is None  # runt: dropped
        response = bytearray(q)
        response[2] |= 0x80
        assert _raw(addr, bytes(response)) is None  # a response: dropped (no reflection)
        two_questions = bytearray(q)
        two_questions[5] = 2
        r = _raw(addr, bytes(two_questions))
        assert r is not None and len(r) <= len(two_questions) and r[3] & 0xF == 1  # FORMERR
        notify = bytearray(q)
        notify[2] = (notify[2] & 0x87) | (5 << 3)  # UPDATE
        r = _raw(addr, bytes(notify))
        assert r is not None and r[3] & 0xF == 4 and len(r) <= len(notify)  # NOTIMP
        loop = q[:12] + b"\xc0\x0c\x00\x01\x00\x01"  # the question points at itself
        r = _raw(addr, loop)
        assert r is not None and r[3] & 0xF == 1 and len(r) <= len(loop)
        for junk in (os.urandom(n) for n in (12, 40, 300, 1500)):
            r = _raw(addr, junk, timeout=0.05)
            assert r is None or len(r) <= 512
        # Still serving, same answer.
        assert query(addr, "product").to_wire()[2:] == good[2:]
        assert server.stats()["outcomes"]["malformed"] >= 3


def test_swap_under_load_loses_nothing_and_never_mixes() -> None:
    """Clients query nonstop while tables alternate; every query is answered
    and each answer comes from one table: the marker name and the product
    address always agree on the generation."""
    tables = {i: NameTable.from_entries(_entries_for(i), namespace="default") for i in range(1, 9)}
    with proxy(tables[1]) as (server, addr):
        stop = threading.Event()
        errors: list[str] = []
        answered = [0]

        def client() -> None:
            while not stop.is_set():
                m = query(addr, "marker.example.com", timeout=2.0)
                a = addresses(m)
                # Rotation changes the order; the generation must agree.
                if len(a) != 2 or len({x.split(".")[-1] for x in a}) != 1:
                    errors.append(repr(a))
                answered[0] += 1

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        for i in list(range(2, 9)) * 5:
            server.swap_table(tables[i])
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[:5]
        assert answered[0] > 100
        assert server.generation == 36
        assert server.stats()["outcomes"]["dropped"] == 0


def _entries_for(i: int) -> list[dict[str, object]]:
    # Two addresses, both naming generation i: a mixed answer would show.
    return [{"hostname": "marker.example.com", "ips": [f"192.0.2.{i}", f"198.51.100.{i}"]}]


def test_before_the_first_table_everything_is_forwarded() -> None:
    with proxy(None) as (server, addr):
        # No upstreams either: SERVFAIL from the forwarding path, not a local answer.
        m = query(addr, "product.default.svc.cluster.local")
        assert rcode_of(m) == "SERVFAIL"
        assert server.stats()["outcomes"]["upstream_failure"] == 1
        server.swap_table(make_table())
        assert addresses(query(addr, "product")) == ["10.96.0.20"]


def test_authoritative_zone_nxdomain_and_metrics() -> None:
    with proxy(make_table(), zones=["svc.cluster.local"]) as (server, addr):
        m = query(addr, "nope.default.svc.cluster.local")
        assert rcode_of(m) == "NXDOMAIN" and m.authority[0].name.to_text() == "svc.cluster.local."
        text = server.metrics_text()
        assert "\nistio_agent_dns_requests_total 1\n" in text
        assert 'pymesh_dns_queries_total{outcome="nxdomain"} 1' in text


def test_tcp_slow_client_is_cut_and_others_are_served() -> None:
    with proxy(make_table(), tcp_idle_timeout=0.5, tcp_read_timeout=0.3) as (_, addr):
        host, port = host_port(addr)
        silent = socket.create_connection((host, port))
        half = socket.create_connection((host, port))
        half.sendall(b"\x00\x30\x12")  # a length, then one byte of 48
        # Others are served meanwhile.
        assert addresses(query(addr, "product", tcp=True)) == ["10.96.0.20"]
        time.sleep(1.0)
        for s in (silent, half):
            s.settimeout(1.0)
            assert s.recv(10) == b""  # closed by the server
            s.close()
        # Pipelining: three queries in one write, three answers.
        c = socket.create_connection((host, port))
        msgs = [dns.message.make_query(n, "A") for n in ("product", "reviews.bookinfo", "api.payments.example.com")]
        c.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (m.to_wire() for m in msgs)))
        got = set()
        c.settimeout(3)
        buf = b""
        while len(got) < 3:
            buf += c.recv(4096)
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                n = struct.unpack("!H", buf[:2])[0]
                got.add(dns.message.from_wire(buf[2 : 2 + n]).id)
                buf = buf[2 + n :]
        assert got == {m.id for m in msgs}
        c.close()


def test_cli_serve_reloads_the_table_and_serves_metrics(tmp_path: Path) -> None:
    import json

    from support.ports import free_port

    tfile = tmp_path / "table.json"

    def write(ip: str) -> None:
        doc = {"table": {e["hostname"]: {k: v for k, v in e.items() if k != "hostname"} for e in table_entries()}}
        doc["table"]["marker.example.com"] = {"ips": [ip]}
        tmp = tmp_path / "t.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.replace(tfile)

    write("192.0.2.1")
    port, mport = free_port(), free_port()
    addr = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "pymesh", "dns", "serve", "--table", str(tfile), "--listen", addr),
            *("--upstream", "127.0.0.1:9", "--metrics", f"127.0.0.1:{mport}", "--search", "default.svc.cluster.local"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "serving 127.0.0.1:" in proc.stdout.readline()
        assert addresses(query(addr, "marker.example.com")) == ["192.0.2.1"]
        assert addresses(query(addr, "product")) == ["10.96.0.20"]
        write("192.0.2.2")
        deadline = time.monotonic() + 5
        while addresses(query(addr, "marker.example.com")) != ["192.0.2.2"]:
            assert time.monotonic() < deadline, "table file change not picked up"
            time.sleep(0.1)
        # A broken file keeps the serving table.
        (tmp_path / "t.tmp").write_text("{not json")
        (tmp_path / "t.tmp").replace(tfile)
        time.sleep(1.2)
        assert addresses(query(addr, "marker.example.com")) == ["192.0.2.2"]
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=3) as r:
            text = r.read().decode()
        assert re.search(r"^istio_agent_dns_requests_total [1-9]", text, re.M)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        reap(proc)
    assert proc.returncode == 0


@pytest.mark.parametrize("family", ["127.0.0.1", "::1"])
def test_default_listeners_both_loopbacks(family: str) -> None:
    from pymesh.dnsproxy import DnsServer

    s = DnsServer(listen=["127.0.0.1:0", "[::1]:0"], workers=1)
    s.swap_table(make_table())
    addrs = s.start()
    try:
        addr = next(a for a in addrs if (":" in family) == a.startswith("["))
        assert addresses(query(addr, "product")) == ["10.96.0.20"]
    finally:
        s.stop()


def test_reconfigure_while_serving_and_config_errors() -> None:
    from pymesh import ConfigError, PymeshError
    from pymesh.dnsproxy import DnsServer

    with proxy(make_table()) as (server, addr):
        assert query(addr, "product").answer[0].ttl == 30
        server.reconfigure(ttl=7, zones=["svc.cluster.local"])
        assert query(addr, "product").answer[0].ttl == 7
        assert rcode_of(query(addr, "nope.default.svc.cluster.local")) == "NXDOMAIN"
        server.reconfigure(zones=[])
        assert rcode_of(query(addr, "nope.default.svc.cluster.local")) == "SERVFAIL"  # forwarded, no upstream
        with pytest.raises(ConfigError, match=r"upstreams\[0\]"):
            server.reconfigure(upstreams=["not an address"])
        stats = server.stats()
        assert stats["outcomes"]["local"] == 2 and stats["qtypes"]["A"] == 4 and stats["rcodes"]["NXDOMAIN"] == 1
    with pytest.raises(ConfigError, match=r"listen\[0\]"):
        DnsServer(listen=["127.0.0.1"])
    with pytest.raises(ConfigError, match="zones"):
        DnsServer(zones=["a..b"])
    # A port already taken: the error names the address, nothing is left running.
    with proxy(make_table()) as (_, addr):
        s = DnsServer(listen=[addr], workers=1)
        with pytest.raises(PymeshError, match=addr.split(":")[0]):
            s.start()
        assert not s.running


def test_stop_and_start_again_keeps_the_table() -> None:
    from pymesh.dnsproxy import DnsServer

    s = DnsServer(listen=["127.0.0.1:0"], workers=1)
    s.swap_table(make_table())
    for _ in range(2):
        addr = s.start()[0]
        assert s.start() == [addr]  # idempotent while running
        assert addresses(query(addr, "product")) == ["10.96.0.20"]
        s.stop()
        assert not s.running and s.addresses == []
    s.stop()  # idempotent
