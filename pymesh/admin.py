"""One small HTTP server for pymesh's local admin ports: the agent's status
port (istio-agent's 15020) and ``pymesh dns serve --metrics``.

A route table (path → handler returning status, content type, body), one
bind (``host:port`` through :func:`pymesh.mesh.addr.parse_host_port`, IPv6 in
brackets, port 0 for any), a daemon thread, and ``stop()``. ztunnel keeps its
readiness and metrics servers on one ``hyper_util::Server::bind`` in the same
way (``src/readiness/server.rs``, ``src/metrics/server.rs``). The standard
library's ``ThreadingHTTPServer`` is enough for a handful of scrapes a
minute; nothing here is on the data path. Only GET and HEAD are served;
handler exceptions are answered with 500 and logged, never kill the thread.

:func:`prometheus_text` is the one Prometheus encoder both processes' ports
use: ``prometheus_client``'s, plus Istio's counter names (:class:`IstioCounter`).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from pymesh._native import PymeshError
from pymesh.mesh.addr import format_host_port, parse_host_port
from pymesh.mesh.errors import AddressError

log = logging.getLogger(__name__)

# A handler gets the query string ("" when none) and answers (status, content type, body); a
# body that is an iterable of byte chunks is streamed (chunked transfer encoding), so a large
# view (a million names) is never built whole in memory.
Body = bytes | Iterable[bytes]
Handler = Callable[[str], tuple[int, str, Body]]
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"


class IstioCounter(Metric):
    """A counter named as Istio names its sums: ``pilot_xds_pushes``, not
    ``pilot_xds_pushes_total``. Istio's exporter drops the suffix
    (``pkg/monitoring``: the OpenTelemetry Prometheus exporter with
    ``WithoutCounterSuffixes``), and dashboards query the bare name; the
    text format allows it, but ``prometheus_client`` suffixes every counter,
    so :func:`prometheus_text` renames this family's HELP and TYPE lines back.
    Samples carry the bare name."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> None:
        super().__init__(name, documentation, "counter")
        self.label_names = labels

    def add(self, values: tuple[str, ...], value: float) -> IstioCounter:
        self.add_sample(self.name, dict(zip(self.label_names, values, strict=True)), value)
        return self


class _Collected(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


def prometheus_text(collector: Collector) -> bytes:
    """``collector``'s families in the Prometheus text format (0.0.4), encoded by
    ``prometheus_client`` (HELP and TYPE on every family, label values escaped)."""
    metrics = list(collector.collect())
    out = generate_latest(_Collected(metrics)).decode()
    for m in metrics:
        if isinstance(m, IstioCounter):
            n = m.name
            out = out.replace(f"# HELP {n}_total ", f"# HELP {n} ", 1)
            out = out.replace(f"# TYPE {n}_total counter\n", f"# TYPE {n} counter\n", 1)
    return out.encode()


class AdminError(PymeshError):
    """The admin port cannot be bound (the address names what)."""


class AdminServer:
    def __init__(self, listen: str, routes: Mapping[str, Handler], *, name: str = "pymesh-admin") -> None:
        try:
            host, port = parse_host_port(listen, what=f"{name} listen address", listen=True)
        except AddressError as e:
            raise AdminError(str(e)) from None
        host = host or "127.0.0.1"
        table = dict(routes)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # chunked bodies need 1.1; every answer has a length or chunks
            timeout = 30  # an idle kept-alive connection is closed after this many seconds

            def _answer(self, body_too: bool) -> None:
                path, _, query = self.path.partition("?")
                handler = table.get(path)
                if handler is None:
                    self.send_error(404)
                    return
                try:
                    code, ctype, body = handler(query)
                except Exception:
                    log.exception("%s: %s failed", name, path)
                    code, ctype, body = 500, TEXT, b"internal error\n"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                if isinstance(body, bytes):
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if body_too:
                        self.wfile.write(body)
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                if not body_too:
                    return
                try:
                    for chunk in body:
                        if chunk:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away mid-stream

            def do_GET(self) -> None:
                self._answer(True)

            def do_HEAD(self) -> None:
                self._answer(False)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        try:
            self.server = Server((host, port), Handler)
        except OSError as e:
            raise AdminError(f"{name} {listen}: {e.strerror or e}") from e
        self.address = format_host_port(str(self.server.server_address[0]), int(self.server.server_address[1]))
        self._thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
