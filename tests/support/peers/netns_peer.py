"""Programs the capture and relay tests run inside network namespaces
(``ip netns exec NS python tests/support/peers/netns_peer.py ...``), optionally as
another user (``setpriv``). Each prints one JSON line per result.

Subcommands:
  serve TAG SPEC...      TCP listeners ("tcp:ADDR:PORT") answer each
                         connection with one line "TAG <local> <orig>" (orig
                         from SO_ORIGINAL_DST, "-" if none) then echo;
                         UDP ("udp:ADDR:PORT") answer "TAG <local>".
                         "sink:ADDR:PORT": TCP, reads to EOF, replies the
                         byte count and SHA-256, closes. Prints "ready".
  tcp HOST PORT          connect, print the first line (or the error).
  udp HOST PORT          one datagram, print the reply (or "timeout").
  tcpmany HOST PORT N    N connections: counts of each reply's first word.
  upload HOST PORT SIZE  SIZE bytes to a sink, half-close, its checksum.
  echo HOST PORT SIZE    SIZE bytes through an echo server, both ways.
  hold HOST PORT         connect; after a line on stdin, is it still open?
  relay CONFIG.json      run an OutboundProxy (with "http_routes": HTTP routes);
                         stdin commands: "stats", "quit".
  inbound ADDR:PORT      run the inbound passthrough; a stdin line prints stats.
  capture CONFIG.json    install (argv[3] == "install") or remove capture rules.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import threading
from typing import Any


def _addr(spec: str) -> tuple[str, str, int]:
    kind, rest = spec.split(":", 1)
    host, port = rest.rsplit(":", 1)
    return kind, host.strip("[]"), int(port)


def _orig(conn: socket.socket) -> str:
    from pymesh.relay import original_destination

    try:
        return original_destination(conn.fileno(), conn.family == socket.AF_INET6)
    except Exception:
        return "-"


def _tcp_conn(conn: socket.socket, tag: str) -> None:
    with conn:
        local = conn.getsockname()
        conn.sendall(f"{tag} {local[0]}:{local[1]} {_orig(conn)}\n".encode())
        while data := conn.recv(65536):
            conn.sendall(data)


def _sink_conn(conn: socket.socket) -> None:
    with conn:
        h = hashlib.sha256()
        n = 0
        buf = bytearray(1 << 20)
        while k := conn.recv_into(buf):
            h.update(memoryview(buf)[:k])
            n += k
        conn.sendall(f"{n} {h.hexdigest()}\n".encode())


def _serve_tcp(host: str, port: int, handler: Any) -> None:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port))
    s.listen(256)

    def loop() -> None:
        while True:
            c, _ = s.accept()
            threading.Thread(target=handler, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def _serve_udp(host: str, port: int, tag: str) -> None:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port))

    def loop() -> None:
        while True:
            _, peer = s.recvfrom(2048)
            s.sendto(f"{tag} {host}:{port}".encode(), peer)

    threading.Thread(target=loop, daemon=True).start()


def serve(tag: str, specs: list[str]) -> None:
    for spec in specs:
        kind, host, port = _addr(spec)
        if kind == "tcp":
            _serve_tcp(host, port, lambda c: _tcp_conn(c, tag))
        elif kind == "sink":
            _serve_tcp(host, port, _sink_conn)
        elif kind == "udp":
            _serve_udp(host, port, tag)
        else:
            raise SystemExit(f"unknown listener kind {kind!r}")
    print("ready", flush=True)
    sys.stdin.read()


def tcp(host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            f = s.makefile("rb")
            line = f.readline().decode().strip()
            print(json.dumps({"reply": line or "eof"}))
    except OSError as e:
        print(json.dumps({"error": type(e).__name__, "errno": e.errno}))


def udp(host: str, port: int) -> None:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(b"query", (host, port))
        try:
            data, peer = s.recvfrom(2048)
            print(json.dumps({"reply": data.decode(), "from": f"{peer[0]}:{peer[1]}"}))
        except TimeoutError:
            print(json.dumps({"reply": "timeout"}))


def tcp_many(host: str, port: int, n: int) -> None:
    """n connections; counts of the first word of each reply."""
    counts: dict[str, int] = {}
    for _ in range(n):
        try:
            with socket.create_connection((host, port), timeout=5) as s:
                word = (s.makefile("rb").readline().decode().split() or ["eof"])[0]
        except OSError as e:
            word = type(e).__name__
        counts[word] = counts.get(word, 0) + 1
    print(json.dumps(counts))


def _payload(size: int) -> bytes:
    # Deterministic, incompressible-looking bytes.
    out = bytearray()
    block = hashlib.sha256(b"pymesh").digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 128
    return bytes(out[:size])


def upload(host: str, port: int, size: int) -> None:
    """Sends size bytes, half-closes, reads the sink's "count sha256" reply."""
    data = _payload(size)
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = s.makefile("rb").readline().decode().split()
    print(json.dumps({"sent": size, "sha256": hashlib.sha256(data).hexdigest(), "reply": reply}))


def echo(host: str, port: int, size: int) -> None:
    """Sends size bytes to an echo server while reading them back; after the
    last byte, half-closes and reads to EOF. Reports what came back."""
    data = _payload(size)
    with socket.create_connection((host, port), timeout=30) as s:
        f = s.makefile("rb")
        header = f.readline().decode().strip()

        def send() -> None:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=send)
        t.start()
        h = hashlib.sha256()
        n = 0
        while chunk := f.read1(1 << 20):
            h.update(chunk)
            n += len(chunk)
        t.join()
    ok = n == size and h.hexdigest() == hashlib.sha256(data).hexdigest()
    print(json.dumps({"header": header, "received": n, "intact": ok}))


def hold(host: str, port: int) -> None:
    """Connects, prints the header, waits for a line on stdin, then reports
    whether the connection is still usable (echo) or was ended."""
    with socket.create_connection((host, port), timeout=5) as s:
        f = s.makefile("rb")
        print(json.dumps({"header": f.readline().decode().strip()}), flush=True)
        sys.stdin.readline()
        try:
            s.sendall(b"ping\n")
            line = f.readline().decode().strip()
            print(json.dumps({"after": line or "eof"}), flush=True)
        except OSError as e:
            print(json.dumps({"after": type(e).__name__}), flush=True)


def relay(path: str) -> None:
    from pymesh.lbtable import LbTable, RedirectTable
    from pymesh.relay import OutboundProxy

    with open(path) as f:
        cfg = json.load(f)
    lb = LbTable(seed=cfg.get("seed", 1))
    lb.load(cfg["clusters"])
    logical = {k: tuple(v) for k, v in cfg.get("logical_dns", {}).items()}
    proxy = OutboundProxy(RedirectTable.from_dict(cfg["redirect"]), lb, logical_dns=logical, **cfg.get("options", {}))
    if "http_routes" in cfg:
        # [port, RouteConfiguration as proto3 JSON (a dict)] pairs.
        proxy.set_http_routes([(p, json.dumps(rc)) for p, rc in cfg["http_routes"]], cfg.get("http_tcp", []))
    print(json.dumps({"addresses": proxy.start()}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "stats":
            eps = {c: lb.endpoints(c) for c in lb.clusters()}
            print(json.dumps({"stats": proxy.stats(), "http": proxy.http_stats(), "endpoints": eps}), flush=True)
        elif cmd == "quit":
            break
    proxy.stop()
    print(json.dumps({"stopped": True}), flush=True)


def inbound(listen: str) -> None:
    from pymesh.relay import start_inbound_passthrough

    proxy = start_inbound_passthrough(listen=[listen])
    print(json.dumps({"addresses": proxy.addresses}), flush=True)
    sys.stdin.readline()
    print(json.dumps(proxy.stats()), flush=True)
    proxy.stop()


def capture(path: str, action: str) -> None:
    from pymesh.capture import Capture, CaptureConfig

    with open(path) as f:
        cfg = json.load(f)
    backend = cfg.pop("backend")
    cap = Capture(CaptureConfig(**cfg), backend=backend)
    if action == "install":
        cap.install()
    else:
        print(json.dumps({"removed": cap.remove()}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        serve(args[0], args[1:])
    elif cmd == "tcp":
        tcp(args[0], int(args[1]))
    elif cmd == "udp":
        udp(args[0], int(args[1]))
    elif cmd == "tcpmany":
        tcp_many(args[0], int(args[1]), int(args[2]))
    elif cmd == "upload":
        upload(args[0], int(args[1]), int(args[2]))
    elif cmd == "echo":
        echo(args[0], int(args[1]), int(args[2]))
    elif cmd == "hold":
        hold(args[0], int(args[1]))
    elif cmd == "relay":
        relay(args[0])
    elif cmd == "inbound":
        inbound(args[0])
    elif cmd == "capture":
        capture(args[0], args[1])
    else:
        raise SystemExit(f"unknown command {cmd!r}")
