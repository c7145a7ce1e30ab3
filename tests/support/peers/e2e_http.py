"""HTTP peers for the VM end-to-end test, run inside network namespaces
(``ip netns exec NS [setpriv ...] python tests/support/peers/e2e_http.py ...``).

Subcommands:
  serve TAG ADDR:PORT [FAILFLAG]   HTTP/1.1 server: ``GET /healthz`` is 200,
                                   or 503 while the file FAILFLAG exists (a
                                   probe the test can fail); any other path
                                   answers 200 with the body TAG. Prints "ready".
  get HOST PORT N [PATH]           N requests ``GET PATH`` (default /), one
                                   connection each (so each is routed anew);
                                   prints the JSON counts of the bodies
                                   ("error: ..." for failures).
"""

from __future__ import annotations

import http.client
import json
import os
import sys
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def handler(tag: str, failflag: str | None) -> type[BaseHTTPRequestHandler]:
    """The request handler of :func:`serve` (also used in-process by e2e_mtls_peer.py)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == "/healthz":
                code, body = (503, b"failing\n") if failflag and os.path.exists(failflag) else (200, b"ok\n")
            else:
                code, body = 200, tag.encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    return Handler


def serve(tag: str, addr: str, failflag: str | None) -> None:
    host, port = addr.rsplit(":", 1)
    srv = ThreadingHTTPServer((host.strip("[]"), int(port)), handler(tag, failflag))
    srv.daemon_threads = True
    print("ready", flush=True)
    srv.serve_forever()


def get(host: str, port: int, n: int, path: str = "/") -> None:
    counts: Counter[str] = Counter()
    for _ in range(n):
        c = http.client.HTTPConnection(host, port, timeout=5)
        try:
            c.request("GET", path, headers={"Connection": "close"})
            r = c.getresponse()
            counts[r.read().decode() if r.status == 200 else f"error: HTTP {r.status}"] += 1
        except OSError as e:
            counts[f"error: {type(e).__name__}"] += 1
        finally:
            c.close()
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        serve(args[0], args[1], args[2] if len(args) > 2 else None)
    elif cmd == "get":
        get(args[0], int(args[1]), int(args[2]), *args[3:4])
    else:
        sys.exit(f"unknown command {cmd!r}")
