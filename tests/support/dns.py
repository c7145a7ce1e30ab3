"""Shared pieces of the DNS proxy tests: tables, a started proxy, real upstream resolvers
(unbound, dnsmasq) started on loopback with their own zone, and a scripted UDP upstream."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from pymesh import NameTable
from pymesh.dnsproxy import DnsServer
from support.ports import free_port
from support.procs import reap
from support.system import require_tools

NAMESPACE = "default"
SEARCH = ("default.svc.cluster.local", "svc.cluster.local", "cluster.local")
# Names of the upstream's own zone.
UPSTREAM_ZONE = "upstream.test"
MANY = 120  # A records of big.upstream.test: ~2 KB, truncated over UDP at 1232


def table_entries() -> list[dict[str, Any]]:
    return [
        {
            "hostname": "product.default.svc.cluster.local",
            "ips": ["10.96.0.20"],
            "registry": "Kubernetes",
            "shortname": "product",
            "namespace": "default",
        },
        {
            "hostname": "reviews.bookinfo.svc.cluster.local",
            "ips": ["10.96.0.30", "fd00:10:96::30"],
            "registry": "Kubernetes",
            "shortname": "reviews",
            "namespace": "bookinfo",
        },
        {
            "hostname": "headless.default.svc.cluster.local",
            "ips": [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(100)],
            "registry": "Kubernetes",
            "shortname": "headless",
            "namespace": "default",
        },
        {"hostname": "api.payments.example.com", "ips": ["240.240.0.1", "240.240.0.2", "240.240.0.3"]},
        {"hostname": "*.wild.example.com", "ips": ["240.240.0.9"]},
    ]


def make_table(generation_marker: str | None = None) -> NameTable:
    entries = table_entries()
    if generation_marker is not None:
        entries.append({"hostname": "marker.example.com", "ips": [generation_marker]})
    return NameTable.from_entries(entries, namespace=NAMESPACE, search=list(SEARCH))


def host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def query(
    addr: str, name: str, qtype: str = "A", *, tcp: bool = False, payload: int | None = None, timeout: float = 3.0
) -> dns.message.Message:
    host, port = host_port(addr)
    q = dns.message.make_query(name, qtype, use_edns=payload is not None, payload=payload or 512)
    if tcp:
        return dns.query.tcp(q, host, port=port, timeout=timeout)
    return dns.query.udp(q, host, port=port, timeout=timeout, ignore_trailing=False)


def addresses(m: dns.message.Message) -> list[str]:
    return [r.to_text() for rrset in m.answer for r in rrset if rrset.rdtype in (1, 28)]


def wait_answering(host: str, port: int, name: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            dns.query.udp(dns.message.make_query(name, "A"), host, port=port, timeout=0.3)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def unbound(tmp: Path, host: str, extra_local_data: Sequence[str] = ()) -> Iterator[int]:
    """unbound (1 thread) on host:port, authoritative for ``upstream.test``:
    ``www`` A 192.0.2.10 (TTL 300), ``big`` with MANY A records, NXDOMAIN
    with an SOA (negative TTL 60) for the rest of the zone."""
    require_tools("unbound")
    port = free_port(host)
    data = [
        f'local-data: "{UPSTREAM_ZONE}. 300 IN SOA ns.{UPSTREAM_ZONE}. h.{UPSTREAM_ZONE}. 1 3600 600 86400 60"',
        f'local-data: "www.{UPSTREAM_ZONE}. 300 IN A 192.0.2.10"',
        f"local-data: 'www.{UPSTREAM_ZONE}. 300 IN TXT \"hello\"'",
        *(f'local-data: "big.{UPSTREAM_ZONE}. 300 IN A 198.51.{i // 250}.{i % 250 + 1}"' for i in range(MANY)),
        *extra_local_data,
    ]
    conf = tmp / f"unbound-{host}.conf"
    conf.write_text(
        "server:\n"
        f'  interface: {host}\n  port: {port}\n  do-ip6: no\n  do-daemonize: no\n  username: ""\n'
        f'  chroot: ""\n  directory: "{tmp}"\n  pidfile: ""\n  use-syslog: no\n  logfile: ""\n  verbosity: 0\n'
        '  num-threads: 1\n  access-control: 127.0.0.0/8 allow\n  module-config: "iterator"\n'
        "  minimal-responses: yes\n"
        f'  local-zone: "{UPSTREAM_ZONE}." static\n'
        + "".join(f"  {d}\n" for d in data)
        + "remote-control:\n  control-enable: no\n"
    )
    with _serving(["unbound", "-d", "-c", str(conf)], host, port):
        yield port


@contextlib.contextmanager
def dnsmasq(tmp: Path, host: str) -> Iterator[int]:
    """dnsmasq on host:port answering ``www.upstream.test`` A 192.0.2.20 from a
    hosts file, NXDOMAIN locally for the rest of the zone."""
    require_tools("dnsmasq")
    port = free_port(host)
    hosts = tmp / f"hosts-{host}"
    hosts.write_text(f"192.0.2.20 www.{UPSTREAM_ZONE}\n")
    argv = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}"]
    argv += [f"--listen-address={host}", "--bind-interfaces", f"--port={port}", f"--local=/{UPSTREAM_ZONE}/"]
    argv += ["--local-ttl=30", "--pid-file=", "--user=root"]
    with _serving(argv, host, port):
        yield port


@contextlib.contextmanager
def _serving(argv: list[str], host: str, port: int) -> Iterator[None]:
    """The DNS server ``argv`` until the block ends, once it answers on host:port."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_answering(host, port, f"www.{UPSTREAM_ZONE}")
        yield
    finally:
        proc.terminate()
        proc.wait(5)
        reap(proc)


@contextlib.contextmanager
def responder(
    handler: Callable[[socket.socket, dns.message.Message, bytes, tuple[str, int]], None],
    host: str = "127.0.0.1",
) -> Iterator[tuple[str, list[dns.message.Message]]]:
    """A Python UDP 'upstream' calling `handler` (socket, query, its bytes, the client) for every
    query it gets, each in a thread of its own; yields its address and the queries seen."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(0.1)
    seen: list[dns.message.Message] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            q = dns.message.from_wire(data)
            seen.append(q)
            threading.Thread(target=quietly, args=(sock, q, data, peer), daemon=True).start()

    def quietly(*args: object) -> None:
        # A late answer after the test closed the socket is not an error.
        with contextlib.suppress(OSError):
            handler(*args)  # type: ignore[arg-type]

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield f"{host}:{sock.getsockname()[1]}", seen
    finally:
        stop.set()
        t.join()
        sock.close()


@contextlib.contextmanager
def proxy(
    table: NameTable | None = None, *, upstreams: Sequence[str] = (), **kw: Any
) -> Iterator[tuple[DnsServer, str]]:
    """A started DnsServer on a free loopback port; yields it and its address."""
    kw.setdefault("workers", 2)
    s = DnsServer(listen=["127.0.0.1:0"], upstreams=list(upstreams), **kw)
    if table is not None:
        s.swap_table(table)
    addr = s.start()[0]
    try:
        yield s, addr
    finally:
        s.stop()


def rcode_of(m: dns.message.Message) -> str:
    return str(dns.rcode.to_text(m.rcode()))


def rdtypes(m: dns.message.Message, section: str = "answer") -> list[str]:
    return [dns.rdatatype.to_text(r.rdtype) for r in getattr(m, section)]
