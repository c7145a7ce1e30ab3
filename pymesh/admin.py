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

``allowed_hosts`` turns on a check of the ``Host`` header (RFC 9110 §7.2)
against DNS rebinding: a page of another origin whose name the attacker
makes resolve to this address reaches the port, but its requests carry that
name as ``Host`` (NCC Group's "Preventing DNS Rebinding Attacks",
https://github.com/nccgroup/singularity/wiki/Preventing-DNS-Rebinding-Attacks).
Only ``localhost``, ``127.0.0.1``, ``[::1]``, the address the server is bound
to and the names given are served, whatever the port in the header; any
other gets 403 naming it. A request without exactly one ``Host`` gets 400
(RFC 9112 §3.2). A wildcard bind (``0.0.0.0``, ``::``) with no names given
serves any ``Host``: it is exposed on purpose.

:func:`prometheus_text` is the one Prometheus encoder both processes' ports
use: ``prometheus_client``'s, plus Istio's counter names (:class:`IstioCounter`).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
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


LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::")


def _host_key(host: str) -> str:
    """A host as compared: IP literals in one form (``[0:0::1]`` is ``::1``), names in lower case."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


def host_refusal(header: list[str], accepted: frozenset[str]) -> tuple[int, str] | None:
    """Why a request with these ``Host`` header values is refused (status, reason), or None."""
    if len(header) != 1:
        return 400, f"{len(header)} Host headers: exactly one expected (RFC 9112 section 3.2)"
    try:
        host = parse_host_port(header[0], default_port=0).host
    except AddressError:
        return 400, f"Host {header[0]!r} is not host[:port]"
    if _host_key(host) not in accepted:
        return 403, f"Host {header[0]!r} is not allowed on this admin port (DNS rebinding protection)"
    return None


class AdminServer:
    def __init__(
        self,
        listen: str,
        routes: Mapping[str, Handler],
        *,
        name: str = "pymesh-admin",
        allowed_hosts: Collection[str] | None = None,
    ) -> None:
        try:
            host, port = parse_host_port(listen, what=f"{name} listen address", listen=True)
        except AddressError as e:
            raise AdminError(str(e)) from None
        host = host or "127.0.0.1"
        table = dict(routes)
        # The Host values served, set once the bound address is known (below); None: any
        # (no check asked for, or a wildcard bind without names).
        accepted: frozenset[str] | None = None

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # chunked bodies need 1.1; every answer has a length or chunks
            timeout = 30  # an idle kept-alive connection is closed after this many seconds

            def _answer(self, body_too: bool) -> None:
                refused = None if accepted is None else host_refusal(self.headers.get_all("Host") or [], accepted)
                if refused is not None:
                    code, reason = refused
                    text = (reason + "\n").encode()
                    self.send_response(code)
                    self.send_header("Content-Type", TEXT)
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    if body_too:
                        self.wfile.write(text)
                    return
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
        bound = str(self.server.server_address[0])
        self.address = format_host_port(bound, int(self.server.server_address[1]))
        if allowed_hosts is not None and (allowed_hosts or bound not in WILDCARDS):
            accepted = frozenset(_host_key(h) for h in (*LOCAL_HOSTS, host, bound, *allowed_hosts))
        self._thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
