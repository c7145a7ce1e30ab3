"""Hostile load on the DNS proxy: floods from loopback clients against
``pymesh dns serve`` running in its own process, whose memory is read from
/proc/PID/status. The upstreams are the test's own sockets: one answers the names
under ``ok.test`` and ``www.upstream.test`` and stays silent for ``flood.test``,
the other never answers at all.

Each probe runs for well under a minute and sends traffic to loopback only. It
asserts on behaviour: the server's memory stays bounded, the load beyond the
limits is shed and counted, and legitimate clients (another loopback source
address, 127.0.0.2) keep being answered during the flood. The figures of each
probe are printed as one JSON line (``pytest -s``); running the same probes
against another build (``PYTHONPATH=<its tree> pytest tests/hostile -s``) gives
the before/after comparison."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rrset
import pytest

from support.dns import table_entries
from support.ports import free_port
from support.procs import Lines, reap
from support.wait import wait_until

FLOOD_SECONDS = 15.0
LEGIT = "127.0.0.2"  # a client other than the flooders: loopback has the whole 127/8
# Growth of the server's RSS over its idle size that a flood may cause at most. The
# limits bound what a flood can hold (1,024 pending forwards of a few KB each, 512 TCP
# connections with their buffers: it stays within ~10 MB); without them the same
# floods took it from ~40 MB past 600 MB, over UDP and over TCP, and it stayed there.
MAX_GROWTH_MB = 64


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Rss:
    """The RSS of a process, sampled every 100 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(OSError):
                self.samples.append(_rss_kb(self.pid))

    def now_mb(self) -> float:
        return _rss_kb(self.pid) / 1024

    def peak_mb(self) -> float:
        return max(self.samples, default=0) / 1024

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


@contextlib.contextmanager
def upstreams() -> Iterator[list[str]]:
    """An upstream answering ``ok.test`` and ``www.upstream.test`` names (A 192.0.2.77,
    TTL 300) and silent for everything else, then one that never answers."""
    answering = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    answering.bind(("127.0.0.1", 0))
    answering.settimeout(0.1)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                data, peer = answering.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            if b"\x05flood" in data:
                continue  # silent for the flood's names: cheap test before parsing
            try:
                q = dns.message.from_wire(data)
            except Exception:
                continue
            r = dns.message.make_response(q)
            r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A", "192.0.2.77"))
            with contextlib.suppress(OSError):
                answering.sendto(r.to_wire(), peer)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield [f"127.0.0.1:{answering.getsockname()[1]}", f"127.0.0.1:{silent.getsockname()[1]}"]
    finally:
        stop.set()
        t.join()
        answering.close()
        silent.close()


@dataclass
class Served:
    proc: subprocess.Popen[str]
    addr: tuple[str, int]
    metrics_url: str

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
        return out


@contextlib.contextmanager
def dns_serve(tmp: Path, ups: list[str]) -> Iterator[Served]:
    """``pymesh dns serve`` in its own process on 127.0.0.1, two UDP workers,
    default limits, metrics over HTTP."""
    doc = {"table": {e["hostname"]: {k: v for k, v in e.items() if k != "hostname"} for e in table_entries()}}
    table = tmp / "table.json"
    table.write_text(json.dumps(doc))
    port, mport = free_port(), free_port()
    args = ["--table", str(table), "--listen", f"127.0.0.1:{port}", "--workers", "2"]
    args += ["--metrics", f"127.0.0.1:{mport}", "--search", "default.svc.cluster.local"]
    for u in ups:
        args += ["--upstream", u]
    # Run from `tmp`: `-m` puts the working directory first on sys.path, and the
    # checkout's pymesh must not shadow the one PYTHONPATH names (before/after runs).
    cmd = [sys.executable, "-m", "pymesh", "dns", "serve", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=tmp)
    try:
        lines = Lines(proc)
        wait_until(lambda: lines.saw("metrics on"), timeout=30)
        yield Served(proc, ("127.0.0.1", port), f"http://127.0.0.1:{mport}/metrics")
    finally:
        proc.terminate()
        proc.wait(10)
        reap(proc)


def udp_ask(addr: tuple[str, int], name: str, source: str = LEGIT, tries: int = 3, timeout: float = 1.0) -> str | None:
    """A stub resolver's query: the rcode of the first reply, retried like glibc's; None if none came."""
    q = dns.message.make_query(name, "A")
    wire = q.to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(timeout)
        for _ in range(tries):
            s.sendto(wire, addr)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    data = s.recv(65535)
                except TimeoutError:
                    break
                r = dns.message.from_wire(data)
                if r.id == q.id:
                    return str(dns.rcode.to_text(r.rcode()))
    return None


def tcp_ask(addr: tuple[str, int], name: str, source: str = LEGIT, timeout: float = 3.0) -> str | None:
    """One query on a new TCP connection; the rcode, or None (refused, reset, timeout)."""
    q = dns.message.make_query(name, "A")
    wire = q.to_wire()
    try:
        with socket.create_connection(addr, timeout=timeout, source_address=(source, 0)) as s:
            s.sendall(struct.pack("!H", len(wire)) + wire)
            buf = b""
            while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                chunk = s.recv(65535)
                if not chunk:
                    return None
                buf += chunk
            return str(dns.rcode.to_text(dns.message.from_wire(buf[2:]).rcode()))
    except OSError:
        return None


@dataclass
class Legit:
    """Legitimate queries asked during a flood, by kind: how many, how many answered NOERROR."""

    asked: dict[str, int] = field(default_factory=dict)
    ok: dict[str, int] = field(default_factory=dict)

    def record(self, kind: str, rcode: str | None) -> None:
        self.asked[kind] = self.asked.get(kind, 0) + 1
        self.ok[kind] = self.ok.get(kind, 0) + (rcode == "NOERROR")

    def fraction(self, kind: str) -> float:
        return self.ok.get(kind, 0) / max(1, self.asked.get(kind, 0))


def legit_loop(stop: threading.Event, ask: Callable[[str], str | None], out: Legit) -> None:
    """Asks a local name, a cached forwarded name and a new forwarded name in turn until ``stop``."""
    i = 0
    while not stop.is_set():
        i += 1
        for kind, name in (("local", "product"), ("cached", "www.upstream.test"), ("new", f"q{i}.ok.test")):
            out.record(kind, ask(name))
        time.sleep(0.05)


def flood_name(i: int) -> bytes:
    return b"".join(bytes([len(x)]) + x for x in (b"%08x" % i, b"flood", b"test")) + b"\x00"


def flood_query(i: int) -> bytes:
    # ID, RD, one question; a fresh name each time so nothing is cached or coalesced.
    return struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + flood_name(i) + b"\x00\x01\x00\x01"


def udp_flood(addr: tuple[str, int], stop: threading.Event, sent: list[int], seed: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        i = seed << 28
        while not stop.is_set():
            for _ in range(256):
                i += 1
                with contextlib.suppress(BlockingIOError):
                    s.sendto(flood_query(i), addr)
            with contextlib.suppress(BlockingIOError, OSError):
                while True:
                    s.recv(65535)  # drain the SERVFAILs
            sent[0] += 256


def report(name: str, **figures: object) -> None:
    print(f"\nFIGURES {name} " + json.dumps(figures, sort_keys=True))


def _raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < n:
        pytest.skip(f"needs {n} file descriptors (RLIMIT_NOFILE)")


def _warm(served: Served) -> None:
    wait_until(lambda: udp_ask(served.addr, "www.upstream.test") == "NOERROR", timeout=10)
    assert udp_ask(served.addr, "product") == "NOERROR"


@pytest.mark.timeout(90)
def test_udp_flood_to_a_silent_upstream(tmp_path: Path) -> None:
    """Distinct names (nothing cached, nothing coalesced) sent as fast as Python can
    to names the upstreams never answer: the pending forwards are capped, the excess
    gets SERVFAIL at once, memory stays bounded, and another client's local, cached
    and new forwarded names are answered throughout."""
    with upstreams() as ups, dns_serve(tmp_path, ups) as served:
        _warm(served)
        rss = Rss(served.proc.pid)
        time.sleep(1.0)
        base = rss.now_mb()
        stop = threading.Event()
        sent = [0]
        legit = Legit()
        threads = [threading.Thread(target=udp_flood, args=(served.addr, stop, sent, 1))]
        threads.append(threading.Thread(target=legit_loop, args=(stop, lambda n: udp_ask(served.addr, n), legit)))
        for t in threads:
            t.start()
        time.sleep(FLOOD_SECONDS)
        during = served.metrics()
        stop.set()
        for t in threads:
            t.join()
        time.sleep(5.0)  # every attempt has timed out since
        after = rss.now_mb()
        rss.stop()
        m = served.metrics()
        figures = dict(
            rss_idle_mb=round(base, 1),
            rss_peak_mb=round(rss.peak_mb(), 1),
            rss_after_mb=round(after, 1),
            flood_sent=sent[0],
            legit_asked=legit.asked,
            legit_answered={k: round(legit.fraction(k), 3) for k in legit.asked},
            overloaded=m.get('pymesh_dns_queries_total{outcome="overloaded"}'),
            pending_during=during.get("pymesh_dns_forwards_pending"),
            pending_after=m.get("pymesh_dns_forwards_pending"),
        )
        report("udp_flood_silent_upstream", **figures)
        assert rss.peak_mb() - base < MAX_GROWTH_MB, figures
        assert m.get('pymesh_dns_queries_total{outcome="overloaded"}', 0) > 0, figures  # the flood hit the limit
        assert m.get("pymesh_dns_forwards_pending") == 0, figures  # every timed-out forward let go
        for kind in ("local", "cached", "new"):
            assert legit.fraction(kind) >= 0.95, (kind, figures)


async def _tcp_flooder(addr: tuple[str, int], source: str, stop: threading.Event, seed: int, sent: list[int]) -> None:
    """One connection pipelining distinct flood names, keeping 32 to 64 queries ahead of
    the answers it reads back (so the server always has more queued than it may take
    in flight); reconnects when the server closes it."""
    i = seed << 24
    while not stop.is_set():
        try:
            r, w = await asyncio.open_connection(addr[0], addr[1], local_addr=(source, 0))
        except OSError:
            await asyncio.sleep(0.05)
            continue
        ahead = [0]
        room = asyncio.Event()

        async def read_answers(
            r: asyncio.StreamReader = r, ahead: list[int] = ahead, room: asyncio.Event = room
        ) -> None:
            buf = b""
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    buf += data
                    while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                        buf = buf[2 + struct.unpack("!H", buf[:2])[0] :]
                        ahead[0] -= 1
                    if ahead[0] <= 32:
                        room.set()
            room.set()

        reader = asyncio.ensure_future(read_answers())
        try:
            while not stop.is_set() and not reader.done():
                if ahead[0] > 32:
                    room.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(room.wait(), 0.5)
                    continue
                batch = []
                for _ in range(32):
                    i += 1
                    q = flood_query(i)
                    batch.append(struct.pack("!H", len(q)) + q)
                w.write(b"".join(batch))
                ahead[0] += 32
                await w.drain()
                sent[0] += 32
        except (OSError, ConnectionError):
            pass
        finally:
            reader.cancel()
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()


def _run_async(coros: list[Coroutine[Any, Any, None]]) -> threading.Thread:
    def run() -> None:
        async def main() -> None:
            await asyncio.gather(*coros, return_exceptions=True)

        asyncio.run(main())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.timeout(90)
def test_tcp_pipelining_flood_to_a_silent_upstream(tmp_path: Path) -> None:
    """256 connections from 8 addresses pipeline distinct names to a silent upstream:
    in-flight queries per connection and pending forwards overall stay capped (the
    excess is SERVFAIL at once), memory stays bounded, and a new client's TCP and UDP
    queries are answered throughout."""
    _raise_nofile(4096)
    with upstreams() as ups, dns_serve(tmp_path, ups) as served:
        _warm(served)
        rss = Rss(served.proc.pid)
        time.sleep(1.0)
        base = rss.now_mb()
        stop = threading.Event()
        sent = [0]
        sources = [f"127.0.0.{10 + k}" for k in range(8)]
        flood = _run_async([_tcp_flooder(served.addr, sources[n % 8], stop, n, sent) for n in range(256)])
        legit_tcp, legit_udp = Legit(), Legit()
        threads = [
            threading.Thread(target=legit_loop, args=(stop, lambda n: tcp_ask(served.addr, n), legit_tcp)),
            threading.Thread(target=legit_loop, args=(stop, lambda n: udp_ask(served.addr, n), legit_udp)),
        ]
        for t in threads:
            t.start()
        time.sleep(FLOOD_SECONDS)
        during = served.metrics()
        stop.set()
        for t in threads:
            t.join()
        flood.join(15)
        time.sleep(5.0)
        after = rss.now_mb()
        rss.stop()
        m = served.metrics()
        figures = dict(
            rss_idle_mb=round(base, 1),
            rss_peak_mb=round(rss.peak_mb(), 1),
            rss_after_mb=round(after, 1),
            flood_sent=sent[0],
            legit_tcp_answered={k: round(legit_tcp.fraction(k), 3) for k in legit_tcp.asked},
            legit_udp_answered={k: round(legit_udp.fraction(k), 3) for k in legit_udp.asked},
            legit_asked=legit_tcp.asked,
            overloaded=m.get('pymesh_dns_queries_total{outcome="overloaded"}'),
            pending_during=during.get("pymesh_dns_forwards_pending"),
            tcp_open_during=during.get("pymesh_dns_tcp_connections"),
        )
        report("tcp_pipelining_flood_silent_upstream", **figures)
        assert rss.peak_mb() - base < MAX_GROWTH_MB, figures
        assert m.get('pymesh_dns_queries_total{outcome="overloaded"}', 0) > 0, figures
        assert m.get("pymesh_dns_forwards_pending") == 0, figures
        for kind in ("local", "cached", "new"):
            assert legit_tcp.fraction(kind) >= 0.95, ("tcp", kind, figures)
            assert legit_udp.fraction(kind) >= 0.95, ("udp", kind, figures)


async def _keepalive(addr: tuple[str, int], source: str, stop: threading.Event, opened: list[int]) -> None:
    """A connection kept alive with one query every 2 s (inside any idle timeout);
    opened again at once whenever the server closes it."""
    q = dns.message.make_query("product", "A").to_wire()
    frame = struct.pack("!H", len(q)) + q
    while not stop.is_set():
        try:
            r, w = await asyncio.open_connection(addr[0], addr[1], local_addr=(source, 0))
        except OSError:
            await asyncio.sleep(0.1)
            continue
        opened[0] += 1
        try:
            while not stop.is_set():
                w.write(frame)
                await w.drain()
                n = struct.unpack("!H", await asyncio.wait_for(r.readexactly(2), 5))[0]
                await asyncio.wait_for(r.readexactly(n), 5)
                await asyncio.sleep(2.0 + random.random() * 0.2)
        except (OSError, ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        finally:
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()


@pytest.mark.timeout(90)
def test_tcp_kept_alive_connections_do_not_starve_new_clients(tmp_path: Path) -> None:
    """600 connections from 20 addresses, each kept alive with a query every 2 s (more
    than the server's connection limit, within its idle timeout): a new client still
    gets its TCP queries answered, because the oldest idle connection makes room
    (and no address holds more than its share)."""
    _raise_nofile(4096)
    with upstreams() as ups, dns_serve(tmp_path, ups) as served:
        _warm(served)
        rss = Rss(served.proc.pid)
        base = rss.now_mb()
        stop = threading.Event()
        opened = [0]
        sources = [f"127.0.0.{20 + k}" for k in range(20)]
        flood = _run_async([_keepalive(served.addr, sources[n % 20], stop, opened) for n in range(600)])
        time.sleep(5.0)  # all of them connected (or turned away) and kept alive
        during = served.metrics()
        legit = Legit()
        deadline = time.monotonic() + FLOOD_SECONDS
        while time.monotonic() < deadline:
            legit.record("local", tcp_ask(served.addr, "product"))
            time.sleep(0.2)
        stop.set()
        flood.join(15)
        rss.stop()
        m = served.metrics()
        figures = dict(
            rss_idle_mb=round(base, 1),
            rss_peak_mb=round(rss.peak_mb(), 1),
            attacker_connections_opened=opened[0],
            legit_asked=legit.asked,
            legit_answered={k: round(legit.fraction(k), 3) for k in legit.asked},
            tcp_open_during=during.get("pymesh_dns_tcp_connections"),
            evicted=m.get("pymesh_dns_tcp_connections_evicted_total"),
        )
        report("tcp_keepalive_starvation", **figures)
        assert legit.fraction("local") >= 0.95, figures
        assert m.get("pymesh_dns_tcp_connections_evicted_total", 0) > 0, figures
        assert rss.peak_mb() - base < MAX_GROWTH_MB, figures
