"""HTTP and gRPC backends, and the raw and gRPC clients, of the HTTP relay tests
(``ip netns exec NS python tests/support/peers/http_backend.py ...``, optionally as
another user). Each prints JSON lines.

Subcommands:
  serve SPEC...          listeners "KIND:TAG:HOST:PORT" until stdin closes; prints
                         "ready" once every one is bound. KIND:
                         http   HTTP/1.1 (keep-alive) replying to every request with one
                                JSON line: tag, method, path (as received, query
                                included), host, headers (lowercased names), peer
                                (the client's ip:port: which connection), body_len;
                                ``.../sleep?ms=N`` answers after N ms, ``.../status?code=N``
                                with that status; ``/_log`` answers the requests seen so
                                far (``/_log?clear=1`` forgets them), itself unlogged;
                         slow   as http, every answer 2 s late;
                         reset  reads a request's head, then resets the connection (RST);
                         grpc   a gRPC server (grpcio, generic handlers, bytes):
                                /test.Echo/Unary answers "TAG <request>",
                                /test.Echo/Stream answers "TAG <message>" per message.
  raw HOST PORT          connects, sends the bytes given in hex on stdin, reads until
                         EOF or silence (3 s before the first byte, 0.5 s after):
                         {"reply": latin-1 text, "eof": bool, "first": seconds to
                         the first byte or null} (or the error).
  grpc TARGET N          one channel: N unary RPCs (the count of each reply's tag),
                         one bidi stream of three messages, one RPC to
                         /test.Abort/Unary (its status code name and details).
"""

from __future__ import annotations

import http.server
import json
import socket
import struct
import sys
import threading
import time
import urllib.parse
from typing import Any

SLOW_SECONDS = 2.0


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog (5) drops SYNs under a burst of parallel clients.
    request_queue_size = 512

    def __init__(self, host: str, port: int, tag: str, slow: bool) -> None:
        self.address_family = _family(host)
        self.tag, self.slow = tag, slow
        self.log: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        super().__init__((host, port), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body are two writes: without TCP_NODELAY the body waits
    # for the client's delayed ACK (40 ms a request).
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # stderr is a pipe nobody reads: stay silent

    def _reply(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-backend", self.server.tag)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        srv = self.server
        if url.path == "/_log":
            with srv.lock:
                log = list(srv.log)
                if query.get("clear"):
                    srv.log.clear()
            self._reply(200, json.dumps(log).encode() + b"\n")
            return
        headers: dict[str, str] = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = f"{headers[k]},{v}" if k in headers else v
        seen: dict[str, Any] = {
            "tag": srv.tag,
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("host", ""),
            "headers": headers,
            "peer": f"{self.client_address[0]}:{self.client_address[1]}",
            "body_len": len(body),
        }
        with srv.lock:
            srv.log.append(seen)
        if srv.slow:
            time.sleep(SLOW_SECONDS)
        last = url.path.rsplit("/", 1)[-1]
        code = 200
        if last == "sleep":
            time.sleep(int(query.get("ms", "0")) / 1000)
        elif last == "status":
            code = int(query.get("code", "200"))
        self._reply(code, json.dumps(seen).encode() + b"\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve


def _serve_http(host: str, port: int, tag: str, slow: bool) -> None:
    srv = _Server(host, port, tag, slow)
    threading.Thread(target=srv.serve_forever, daemon=True).start()


def _reset_conn(conn: socket.socket) -> None:
    conn.settimeout(5)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    # SO_LINGER with a zero timeout: close sends RST, not FIN.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _serve_reset(host: str, port: int) -> None:
    s = socket.socket(_family(host), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(512)

    def loop() -> None:
        while True:
            c, _ = s.accept()
            threading.Thread(target=_reset_conn, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def _serve_grpc(host: str, port: int, tag: str) -> Any:
    from concurrent import futures

    import grpc

    prefix = tag.encode() + b" "

    def unary(req: bytes, ctx: Any) -> bytes:
        return prefix + req

    def stream(reqs: Any, ctx: Any) -> Any:
        for m in reqs:
            yield prefix + m

    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.stream_stream_rpc_method_handler(stream),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if server.add_insecure_port(addr) != port:
        raise SystemExit(f"grpc: cannot bind {addr}")
    server.start()
    return server


def serve(specs: list[str]) -> None:
    keep: list[Any] = []
    for spec in specs:
        kind, tag, rest = spec.split(":", 2)
        host, port_s = rest.rsplit(":", 1)
        host, port = host.strip("[]"), int(port_s)
        if kind in ("http", "slow"):
            _serve_http(host, port, tag, kind == "slow")
        elif kind == "reset":
            _serve_reset(host, port)
        elif kind == "grpc":
            keep.append(_serve_grpc(host, port, tag))
        else:
            raise SystemExit(f"unknown listener kind {kind!r}")
    print("ready", flush=True)
    sys.stdin.read()


def raw(host: str, port: int, data: bytes) -> None:
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            got, eof, first = b"", False, None
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                # The proxy answered and closed before reading it all (a head too large):
                # what it said is still in the receive queue, or the connection is just over.
                eof = True
            s.settimeout(3)  # the first answer may wait for the proxy's protocol detection
            start = time.monotonic()
            try:
                while chunk := s.recv(65536):
                    if first is None:
                        first = round(time.monotonic() - start, 3)
                    got += chunk
                    s.settimeout(0.5)
                else:
                    eof = True
            except TimeoutError:
                pass
            except ConnectionResetError:
                eof = True
        print(json.dumps({"reply": got.decode("latin-1"), "eof": eof, "first": first}))
    except OSError as e:
        print(json.dumps({"error": type(e).__name__}))


def grpc_client(target: str, n: int) -> None:
    import grpc

    # No HTTP CONNECT proxy from the environment: the capture rules are the proxy.
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as ch:
        unary = ch.unary_unary("/test.Echo/Unary")
        counts: dict[str, int] = {}
        for i in range(n):
            tag = unary(f"r{i}".encode(), timeout=10).decode().split()[0]
            counts[tag] = counts.get(tag, 0) + 1
        stream = ch.stream_stream("/test.Echo/Stream")
        replies = [m.decode() for m in stream(iter([b"a", b"b", b"c"]), timeout=10)]
        try:
            ch.unary_unary("/test.Abort/Unary")(b"x", timeout=10)
            abort: dict[str, str] = {"code": "OK"}
        except grpc.RpcError as e:
            abort = {"code": e.code().name, "details": e.details() or ""}
    print(json.dumps({"counts": counts, "stream": replies, "abort": abort}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        serve(args)
    elif cmd == "raw":
        raw(args[0], int(args[1]), bytes.fromhex(sys.stdin.read().strip()))
    elif cmd == "grpc":
        grpc_client(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown command {cmd!r}")
