"""Where workload mTLS should live: one bulk stream and connection setup
through the same two-hop Python relay path with and without TLS, beside the
raw cost of the cipher, in one run.

    .venv/bin/python benchmarks/mtls_bench.py           # 256 MiB per stream, 200 connections
    .venv/bin/python benchmarks/mtls_bench.py --short   # 16 MiB, 20 (CI)

Paths (loopback; a sink server counts bytes and answers one byte at the end):
- ``direct``: client → sink;
- ``python plaintext``: client → asyncio forwarder → InboundMtls (PERMISSIVE,
  plaintext passthrough) → sink — the relay code without TLS;
- ``python mTLS``: client → MtlsOriginator → mTLS → InboundMtls (STRICT) → sink
  (pymesh.relay.pytls: Python ``ssl``, OpenSSL's AES-GCM);
- ``openssl speed``: ``openssl speed -evp aes-128-gcm`` at 16 KiB blocks,
  one core: the encryption ceiling any userspace TLS (rustls included)
  shares, since each byte is encrypted once and decrypted once.

Reported: MB/s, the mTLS / plaintext ratio (the issue's target is >= 80%),
and connections per second (connect + 1-byte request/response + close).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import accept_each, send_sized, sink_sized

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' `support` package
CHUNK = 1 << 18  # the client's writes, the sink's reads


def sink() -> tuple[socket.socket, int]:
    srv = socket.create_server(("127.0.0.1", 0))

    def serve(c: socket.socket) -> None:
        with c, contextlib.suppress(OSError):
            sink_sized(c, CHUNK)

    accept_each(srv, serve)
    return srv, srv.getsockname()[1]


class Forwarder:
    """The plaintext twin of MtlsOriginator: the same asyncio relay, no TLS."""

    def __init__(self, target: tuple[str, int]) -> None:
        from pymesh.relay.pytls import _relay

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        stats = {"bytes": 0}

        async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            up = await asyncio.open_connection(*target)
            await _relay((r, w), up, stats)

        async def start() -> int:
            self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
            return int(self.server.sockets[0].getsockname()[1])

        self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result()


def bulk(port: int, size: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as s:
        return send_sized(s, size, CHUNK)


def conns(port: int, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall((1).to_bytes(8, "big") + b"x")
            assert s.recv(1) == b"k"
    return n / (time.perf_counter() - started)


def openssl_speed() -> float | None:
    try:
        out = subprocess.run(
            ["openssl", "speed", "-evp", "aes-128-gcm", "-bytes", "16384", "-seconds", "1"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^AES-128-GCM\s+([\d.]+)k", out, re.M | re.I)
    return float(m.group(1)) * 1000 / 1e6 if m else None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--short", action="store_true")
    args = ap.parse_args()
    size = (16 if args.short else 256) << 20
    n_conn = 20 if args.short else 200

    from pymesh.controlplane.ca.ca import CertificateAuthority
    from pymesh.relay.pytls import InboundMtls, MtlsOriginator
    from support.sec import workload

    tmp = Path(tempfile.mkdtemp(prefix="mtls-bench-"))
    ca = CertificateAuthority(tmp / "ca")
    srv, sink_port = sink()
    target = ("127.0.0.1", sink_port)
    server_dir = workload(ca, tmp / "server", "server")
    strict = InboundMtls(server_dir, target, listen=("127.0.0.1", 0)).start()
    permissive = InboundMtls(server_dir, target, listen=("127.0.0.1", 0), mode="PERMISSIVE").start()
    plain = Forwarder(("127.0.0.1", permissive.port))
    mtls = MtlsOriginator(
        workload(ca, tmp / "client", "client"),
        ("127.0.0.1", strict.port),
        ["spiffe://cluster.local/ns/default/sa/server"],
    ).start()
    paths = {"direct": sink_port, "python plaintext": plain.port, "python mTLS": mtls.port}
    results: dict[str, tuple[float, float]] = {}
    for name, port in paths.items():
        bulk(port, 1 << 20)  # warm up
        mbps = sorted(bulk(port, size) for _ in range(3))[1]
        results[name] = (mbps, conns(port, n_conn))
    strict.stop()
    permissive.stop()
    mtls.stop()
    srv.close()
    print(f"one bulk stream of {size >> 20} MiB (median of 3), {n_conn} connections")
    print(f"{'path':<20}{'MB/s':>10}{'conn/s':>10}")
    for name, (mbps, cps) in results.items():
        print(f"{name:<20}{mbps:>10.0f}{cps:>10.0f}")
    ratio = results["python mTLS"][0] / results["python plaintext"][0]
    print(f"mTLS / plaintext throughput (same relay code): {ratio:.2f} (target >= 0.80)")
    print(f"mTLS / direct throughput: {results['python mTLS'][0] / results['direct'][0]:.2f}")
    speed = openssl_speed()
    if speed is not None:
        print(f"openssl speed aes-128-gcm, 16 KiB blocks, one core: {speed:.0f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
