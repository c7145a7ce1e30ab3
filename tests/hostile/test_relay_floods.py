"""Hostile load on the native relay ("Broken" 5 and 6): floods of idle and
half-handshaken connections, a backend that never answers, and a mesh endpoint before
any identity exists.

The relay runs in its own process (``relay_flood_peer.py``) with RLIMIT_NOFILE at
1,024, what a systemd unit without ``LimitNOFILE`` gives: the setting in which ~170
idle connections used to deny all captured egress. It serves inside a network
namespace of the test's own, where nftables REDIRECTs 127.1.0.0/16:80 to the outbound
(15001) and 127.0.0.3:8443 to the inbound (15006). Backends and clients are this
process's threads and sockets in that namespace; nothing leaves it.

Each probe runs well under a minute and asserts on behaviour: legitimate connections
are relayed (all of them) during the flood, the relay's threads do not grow with
connections, its descriptors stay within its budget, no plaintext byte reaches a
``tlsMode: istio`` endpoint. Each prints its figures as one JSON line (``pytest -s``);
``PYTHONPATH=<another tree> pytest tests/hostile/test_relay_floods.py -s`` runs the same
probes against another build for the before/after comparison.

Needs root (a network namespace, setns(2), nftables), iproute2 and nft: without them
skipped with the reason, or failing when PYMESH_REQUIRE_ROOT_TESTS is set (CI)."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pymesh.controlplane.ca.ca import CertificateAuthority
from support.netns import inside, nft_netns
from support.procs import reap
from support.sec import workload
from support.wait import wait_until

pytestmark = pytest.mark.netns

PEER = str(Path(__file__).with_name("relay_flood_peer.py"))
NOFILE = 1024
APP = "127.0.0.3"  # the backends: echo :8000, silent :8002, recorder :9000, inbound app :8443
VIP_ECHO, VIP_SILENT, VIP_ISTIO = "127.1.0.1", "127.1.0.2", "127.1.0.3"
RULES = """
table ip pmflood {
  chain output {
    type nat hook output priority -100; policy accept;
    ip daddr 127.1.0.0/16 tcp dport 80 redirect to :15001
    ip saddr 127.0.0.6 return
    ip daddr 127.0.0.3 tcp dport 8443 redirect to :15006
  }
}
"""
# The first 11 bytes of a TLS 1.2 ClientHello: record header, handshake type, length, version.
PARTIAL_HELLO = bytes([0x16, 0x03, 0x01, 0x00, 0xC8, 0x01, 0x00, 0x00, 0xC4, 0x03, 0x03])
SERVICE_ACCOUNT = "spiffe://cluster.local/ns/default/sa/product"


def cluster(name: str, port: int, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    ep: dict[str, Any] = {"endpoint": {"address": {"socket_address": {"address": APP, "port_value": port}}}}
    if meta:
        ep["metadata"] = {"filter_metadata": meta}
    return {"name": name, "lb_policy": "ROUND_ROBIN", "load_assignment": {"endpoints": [{"lb_endpoints": [ep]}]}}


ISTIO = {"envoy.transport_socket_match": {"tlsMode": "istio"}, "istio": {"service_account": SERVICE_ACCOUNT}}
CLUSTERS = {
    VIP_ECHO: cluster("outbound|80||echo.default.svc.cluster.local", 8000),
    VIP_SILENT: cluster("outbound|80||silent.default.svc.cluster.local", 8002),
    VIP_ISTIO: cluster("outbound|80||mesh.default.svc.cluster.local", 9000, ISTIO),
}
OUTBOUND = {
    "clusters": list(CLUSTERS.values()),
    "redirect": {
        "services": [{"address": v, "port": 80, "cluster": c["name"]} for v, c in CLUSTERS.items()],
        "include_ip_ranges": ["*"],
    },
}


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    with nft_netns("pmflood", RULES, "the relay floods capture in a network namespace") as name:
        yield name


class Backends:
    """In the namespace, on one thread (a selector, so floods cost no thread per
    connection here either): echo servers on :8000 and :8443, a backend on :8002 that
    accepts and never reads nor answers, and on :9000 a plaintext-only listener that
    records every connection and byte it receives."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.recorded = bytearray()
        self.recorder_connections = 0
        self.silent: list[socket.socket] = []
        self.socks: list[socket.socket] = []
        for port, kind in ((8000, "echo"), (8443, "echo"), (8002, "silent"), (9000, "record")):
            s = socket.create_server((APP, port), backlog=4096)
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, ("listen", kind))
            self.socks.append(s)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            for key, _ in self.sel.select(0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                role, kind = key.data
                if role == "listen":
                    with contextlib.suppress(OSError):
                        c, _ = sock.accept()
                        if kind == "silent":
                            self.silent.append(c)  # held, never read
                            continue
                        if kind == "record":
                            self.recorder_connections += 1
                        c.setblocking(False)
                        self.sel.register(c, selectors.EVENT_READ, ("conn", kind))
                    continue
                try:
                    data = sock.recv(1 << 16)
                except OSError:
                    data = b""
                if not data:
                    self.sel.unregister(sock)
                    sock.close()
                elif kind == "record":
                    self.recorded += data
                else:
                    with contextlib.suppress(OSError):
                        sock.setblocking(True)
                        sock.sendall(data)
                        sock.setblocking(False)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        for s in self.silent:
            s.close()
        self.sel.close()


@pytest.fixture
def backends(netns: str) -> Iterator[Backends]:
    with inside(netns):
        b = Backends()
    try:
        yield b
    finally:
        b.close()


@dataclass
class Relay:
    proc: subprocess.Popen[str]
    pid: int
    tmp: Path
    figures: dict[str, Any] = field(default_factory=dict)

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the relay process died"
        out: dict[str, Any] = json.loads(line)
        return out


@contextlib.contextmanager
def relay(netns: str, tmp: Path, config: dict[str, Any]) -> Iterator[Relay]:
    """The relay process in the namespace, with RLIMIT_NOFILE at NOFILE. It imports
    pymesh from wherever this process would (PYTHONPATH included), for before/after runs."""
    path = tmp / "relay.json"
    path.write_text(json.dumps({"nofile": NOFILE, **config}))
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, PEER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first, "the relay did not start"
        yield Relay(proc, json.loads(first)["pid"], tmp)
    finally:
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.write("quit\n")
            proc.stdin.flush()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        reap(proc)


def echo_once(host: str, port: int, payload: bytes, source: str = "", timeout: float = 10.0) -> bool:
    """One connection, one request, its echo: True when it all came back."""
    try:
        with socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        ) as s:
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                data = s.recv(1 << 16)
                if not data:
                    return False
                got += data
            return got == payload
    except OSError:
        return False


def report(name: str, figures: dict[str, Any]) -> None:
    print(json.dumps({"probe": name, **figures}))


@pytest.mark.timeout(90)
def test_idle_connections_from_one_local_source_leave_legitimate_traffic_relayed(
    netns: str, backends: Backends, tmp_path: Path
) -> None:
    with relay(netns, tmp_path, OUTBOUND) as r, inside(netns):
        base = r.stats()
        # 400 connections from one local source (127.0.0.1, as every local process's
        # connection to a loopback-captured VIP is), relayed to the echo backend and then
        # left idle.
        held: list[socket.socket] = []
        for _ in range(400):
            with contextlib.suppress(OSError):
                held.append(socket.create_connection((VIP_ECHO, 80), timeout=5))
        wait_until(lambda: r.stats()["stats"]["accepted"] >= base["stats"]["accepted"] + 400, timeout=20)
        time.sleep(0.5)  # the admitted ones connect upstream
        flood = r.stats()
        active = flood["stats"]["active"]
        assert active > 0
        per_conn_fds = (flood["fds"] - base["fds"]) / active
        per_conn_kb = (flood["rss_kb"] - base["rss_kb"]) / active
        extra_threads = flood["threads"] - base["threads"]
        # Idle long enough to be evictable (a second without a byte), while the attacker
        # keeps opening more: legitimate connections must still get through, every one.
        time.sleep(1.2)
        stop = threading.Event()

        def attacker() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    held.append(socket.create_connection((VIP_ECHO, 80), timeout=5))
                time.sleep(0.002)

        t = threading.Thread(target=attacker)
        t.start()
        try:
            ok = sum(echo_once(VIP_ECHO, 80, b"legitimate %d" % i) for i in range(60))
        finally:
            stop.set()
            t.join()
        end = r.stats()
        for s in held:
            s.close()
        report(
            "relay idle flood (outbound, 400+ idle connections from one source, RLIMIT_NOFILE 1024)",
            {
                "legitimate_ok": ok,
                "legitimate": 60,
                "held_by_relay": active,
                "fds_per_idle_connection": round(per_conn_fds, 2),
                "rss_kb_per_idle_connection": round(per_conn_kb, 1),
                "threads_added_by_flood": extra_threads,
                "evicted": end["stats"].get("evicted"),
                "refused": end["stats"]["overflow"],
                "limits": end.get("limits"),
            },
        )
    assert ok == 60
    # No thread per connection (the event loop's own may have been started lazily),
    # and the two sockets of a connection and nothing else.
    assert extra_threads <= 2, extra_threads
    assert per_conn_fds <= 2.05, per_conn_fds
    assert end["stats"]["evicted"] > 0
    assert end["stats"]["active"] <= end["limits"]["max_connections"] + 8


@pytest.mark.timeout(90)
def test_partial_client_hellos_do_not_keep_mtls_clients_out(
    netns: str, backends: Backends, tmp_path: Path, ca: CertificateAuthority
) -> None:
    product = workload(ca, tmp_path / "product", "product")
    client = workload(ca, tmp_path / "client", "client")
    ident = [str(product / f) for f in ("cert-chain.pem", "key.pem", "root-cert.pem")]
    config = {
        "inbound": True,
        "identity": ident,
        "peer_authentication": "STRICT",
        "options": {"listen": ["0.0.0.0:15006"]},
    }
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=client / "root-cert.pem")
    ctx.load_cert_chain(client / "cert-chain.pem", client / "key.pem")
    ctx.set_alpn_protocols(["istio"])  # this client does not speak the metadata exchange

    def mtls_echo(i: int) -> bool:
        src = "127.0.0.1" if i % 2 else "127.0.0.2"
        try:
            with (
                socket.create_connection((APP, 8443), timeout=15, source_address=(src, 0)) as raw,
                ctx.wrap_socket(raw) as s,
            ):
                msg = b"mtls %d" % i
                s.sendall(msg)
                got = b""
                while len(got) < len(msg) and (data := s.recv(100)):
                    got += data
                return got == msg
        except OSError:
            return False

    with relay(netns, tmp_path, config) as r, inside(netns):
        assert mtls_echo(0), "mTLS through the inbound works before the flood"
        base = r.stats()
        # 4,096 connections that send 11 bytes of a ClientHello and then nothing, from 8
        # source addresses, while legitimate mTLS clients come and go.
        attackers: list[socket.socket] = []
        stop = threading.Event()

        tried = [0]

        def flood() -> None:
            for i in range(4096):
                if stop.is_set():
                    return
                tried[0] += 1
                with contextlib.suppress(OSError):
                    s = socket.create_connection((APP, 8443), timeout=5, source_address=(f"127.0.0.{10 + i % 8}", 0))
                    attackers.append(s)  # closed at the end, sent or not
                    s.sendall(PARTIAL_HELLO)

        # The legitimate clients, one after another for as long as the flood lasts.
        outcomes: list[bool] = []
        done = threading.Event()

        def legitimate() -> None:
            i = 1
            while not done.is_set() or len(outcomes) < 30:
                outcomes.append(mtls_echo(i))
                i += 1

        t = threading.Thread(target=flood)
        legit = threading.Thread(target=legitimate)
        t.start()
        legit.start()
        try:
            t.join(60)
        finally:
            stop.set()
            done.set()
            t.join()
            legit.join()
        ok = sum(outcomes)
        end = r.stats()
        sent = tried[0]
        for s in attackers:
            s.close()
        report(
            "relay partial-ClientHello flood (inbound STRICT, 4,096 connections, RLIMIT_NOFILE 1024)",
            {
                "legitimate_ok": ok,
                "legitimate": len(outcomes),
                "flood_connections": sent,
                "evicted": end["stats"].get("evicted"),
                "hello_timeouts": end["stats"].get("hello_timeouts"),
                "refused": end["stats"]["overflow"] + end["stats"].get("source_overflow", 0),
                "handshakes": end["tls"]["handshakes"] - base["tls"]["handshakes"],
                "threads_added": end["threads"] - base["threads"],
                "limits": end.get("limits"),
            },
        )
    assert sent == 4096
    assert ok == len(outcomes) >= 30
    assert end["stats"]["evicted"] + end["stats"]["hello_timeouts"] > 0
    assert end["threads"] - base["threads"] <= 2


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("ca") / "ca")


@pytest.mark.timeout(90)
def test_a_backend_that_accepts_and_never_answers_is_reclaimed(netns: str, backends: Backends, tmp_path: Path) -> None:
    config = {**OUTBOUND, "options": {"listen": ["127.0.0.1:15001"], "idle_timeout": 1.0}}
    with relay(netns, tmp_path, config) as r, inside(netns):
        base = r.stats()
        limits = base["limits"]
        # Clients whose requests go to a backend that accepts and never reads: 8 MB each
        # fills its socket buffers, so the relay holds bytes (pipes) it cannot deliver.
        stuck: list[socket.socket] = []
        blob = b"x" * (8 << 20)

        def push(s: socket.socket) -> None:
            with contextlib.suppress(OSError):
                s.sendall(blob)

        pushers = []
        for _ in range(40):
            s = socket.create_connection((VIP_SILENT, 80), timeout=10)
            stuck.append(s)
            pushers.append(threading.Thread(target=push, args=(s,), daemon=True))
            pushers[-1].start()
        wait_until(lambda: r.stats()["stats"]["active"] >= 40, timeout=20)
        time.sleep(0.5)
        during = r.stats()
        # Bounded: the relay's descriptors stay within its budget (2 sockets a
        # connection, pipes at most max_pipes), whatever the backend does not read.
        assert during["limits"]["pipes_open"] <= limits["max_pipes"]
        assert during["fds"] - base["fds"] <= 2 * 40 + 2 * limits["max_pipes"]
        # Nothing moves: the idle timeout reclaims every one of them, and the clients see it.
        wait_until(lambda: r.stats()["stats"]["active"] == 0, timeout=20)
        end = r.stats()
        closed = 0
        for s in stuck:
            s.settimeout(5)
            try:
                closed += s.recv(1) == b""
            except OSError:
                closed += 1
            s.close()
        # Relaying goes on normally afterwards.
        ok = sum(echo_once(VIP_ECHO, 80, b"after %d" % i) for i in range(20))
        report(
            "relay stuck backend (outbound, 40 connections to a backend that never reads, idle timeout 1 s)",
            {
                "reclaimed": end["stats"]["idle_timeouts"] - base["stats"]["idle_timeouts"],
                "clients_closed": closed,
                "fds_during": during["fds"] - base["fds"],
                "fds_after": end["fds"] - base["fds"],
                "pipes_open_during": during["limits"]["pipes_open"],
                "legitimate_ok_after": ok,
            },
        )
    assert end["stats"]["idle_timeouts"] - base["stats"]["idle_timeouts"] == 40
    assert closed == 40 and ok == 20
    # Their descriptors came back (pooled pipes aside).
    assert end["fds"] - base["fds"] <= 2 * min(64, limits["max_pipes"]) + 2


@pytest.mark.timeout(90)
def test_stuck_connections_are_evicted_for_new_ones_when_the_relay_is_full(
    netns: str, backends: Backends, tmp_path: Path
) -> None:
    config = {**OUTBOUND, "options": {"listen": ["127.0.0.1:15001"], "max_connections": 64}}
    with relay(netns, tmp_path, config) as r, inside(netns):
        # The relay full of connections stuck on the silent backend (the hour-long idle
        # timeout would keep them): each sent its request and waits forever.
        stuck = []
        for _ in range(64):
            s = socket.create_connection((VIP_SILENT, 80), timeout=10)
            stuck.append(s)
            s.sendall(b"GET / HTTP/1.1\r\nHost: silent\r\n\r\n")
        wait_until(lambda: r.stats()["stats"]["active"] == 64, timeout=20)
        time.sleep(1.2)
        ok = sum(echo_once(VIP_ECHO, 80, b"fresh %d" % i) for i in range(20))
        end = r.stats()
        for s in stuck:
            s.close()
    report("relay full of stuck connections (max_connections 64)", {"legitimate_ok": ok, **end["stats"]})
    assert ok == 20
    # Each fresh connection found the relay full and took the place of a stuck one.
    assert end["stats"]["evicted"] >= 1 and end["stats"]["overflow"] == 0


@pytest.mark.timeout(60)
def test_no_plaintext_byte_reaches_a_tls_mode_istio_endpoint_before_any_identity(
    netns: str, backends: Backends, tmp_path: Path
) -> None:
    config = {**OUTBOUND, "options": {"listen": ["127.0.0.1:15001"], "connect_timeout": 1.0}}
    with relay(netns, tmp_path, config) as r, inside(netns):
        # No identity: the capture rules are in, the first certificate has not come (or
        # the agent restarted with an expired one and the control plane is down).
        secret = b"GET /secret HTTP/1.1\r\nHost: mesh\r\nAuthorization: Bearer hunter2\r\n\r\n"
        results = []
        for _ in range(5):
            try:
                with socket.create_connection((VIP_ISTIO, 80), timeout=10) as s:
                    s.sendall(secret)
                    s.settimeout(10)
                    results.append(s.recv(100))
            except OSError as e:
                results.append(type(e).__name__.encode())
        st = r.stats()
        # A plaintext endpoint next to it is still served.
        assert echo_once(VIP_ECHO, 80, b"plaintext service")
    report(
        "tlsMode istio before any identity (outbound)",
        {
            "recorded_bytes": len(backends.recorded),
            "recorded_connections": backends.recorder_connections,
            "no_identity": st["tls"].get("no_identity"),
            "client_saw": [x.decode(errors="replace") for x in results],
        },
    )
    assert backends.recorded == b"" and backends.recorder_connections == 0
    assert all(x in (b"", b"ConnectionResetError") for x in results), results
    assert st["tls"]["no_identity"] == 5 and st["stats"]["connect_attempts"] == 0
