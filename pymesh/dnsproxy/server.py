"""Running the DNS proxy: the native server plus what a host adds around it.

The serving loop is native (``pymesh._native.DnsServer``: UDP workers and a
TCP/forwarding runtime that never take the GIL). This module:

- picks upstreams from resolv.conf when none are given (Istio reads the
  ``nameserver`` lines once at start: istio/istio ``pkg/dns/client/dns.go``,
  ``NewLocalDNSServer`` → ``dns.ClientConfigFromFile``);
- reloads the table file when it changes and swaps the new table in
  atomically; a file that fails to load leaves the serving table in place;
- serves the Prometheus metrics over HTTP (``/metrics``, also ``/stats/prometheus``).

Clients: a loopback listener (the default, as Istio's ``localhost:15053``) serves
this host only; a listener on any other address serves loopback clients and the
networks given as ``allow`` (CIDRs) and answers REFUSED to everyone else, with a
warning at start when no ``allow`` is given (``DnsServer.start`` logs it).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from pymesh._native import DnsServer, NameTable, PymeshError
from pymesh.admin import PROMETHEUS_TEXT, AdminServer
from pymesh.mesh.addr import format_host_port
from pymesh.mesh.defaults import DNS_LISTEN_V4, DNS_LISTEN_V6
from pymesh.names import DEFAULT_DOMAIN, load_name_table, read_resolv_conf

log = logging.getLogger(__name__)

DEFAULT_LISTEN = (DNS_LISTEN_V4, DNS_LISTEN_V6)


def upstreams_from_resolv_conf(path: str = "/etc/resolv.conf", *, exclude: Sequence[str] = ()) -> list[str]:
    """The resolv.conf name servers as ``ADDR:53``, minus our own listen
    addresses (forwarding to ourselves would loop)."""
    out = []
    for ns in read_resolv_conf(path).nameservers:
        addr = format_host_port(ns, 53)
        if addr not in exclude:
            out.append(addr)
    return out


@dataclass
class TableSource:
    """A table file and the proxy settings its table is built for."""

    path: str
    namespace: str = ""
    domain: str = DEFAULT_DOMAIN
    search: tuple[str, ...] = ()
    _stamp: tuple[int, int, int] | None = field(default=None, repr=False)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self) -> NameTable:
        stamp = self._stat()
        table = load_name_table(self.path, namespace=self.namespace, domain=self.domain, search=list(self.search))
        self._stamp = stamp
        return table

    def changed(self) -> bool:
        return self._stat() != self._stamp


class DnsProxy:
    """A DNS proxy serving a table file, reloading it when it changes."""

    def __init__(
        self,
        source: TableSource | None,
        *,
        listen: Sequence[str] = DEFAULT_LISTEN,
        upstreams: Sequence[str] | None = None,
        workers: int = 0,
        ttl: int = 30,
        zones: Sequence[str] = (),
        cache_size: int = 10_000,
        timeout: float = 1.0,
        hedge_delay: float = 0.15,
        reload_interval: float = 0.5,
        allow: Sequence[str] = (),
    ) -> None:
        if upstreams is None:
            upstreams = upstreams_from_resolv_conf(exclude=listen)
        self.source = source
        self.server = DnsServer(
            listen=list(listen),
            upstreams=list(upstreams),
            workers=workers,
            ttl=ttl,
            zones=list(zones),
            cache_size=cache_size,
            timeout=timeout,
            hedge_delay=hedge_delay,
            allow=list(allow),
        )
        self.reload_interval = reload_interval
        self.reloads = 0
        self.reload_errors = 0
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._metrics: AdminServer | None = None

    def start(self) -> list[str]:
        """Loads the table (an error here is raised: nothing would be served
        right), starts the listeners and the file watcher."""
        if self.source is not None:
            self.server.swap_table(self.source.load())
        addrs = self.server.start()
        if self.source is not None:
            self._watcher = threading.Thread(target=self._watch, name="pymesh-dns-reload", daemon=True)
            self._watcher.start()
        return addrs

    def reload(self) -> bool:
        """Loads the table file again and swaps it in; on error keeps serving
        the current table and logs why."""
        if self.source is None:
            return False
        try:
            table = self.source.load()
        except PymeshError as e:
            self.reload_errors += 1
            log.error("name table reload failed, keeping the current table: %s", e)
            return False
        gen = self.server.swap_table(table)
        self.reloads += 1
        log.info("name table reloaded: %d names (generation %d)", len(table), gen)
        return True

    def _watch(self) -> None:
        assert self.source is not None
        while not self._stop.wait(self.reload_interval):
            if self.source.changed():
                self.reload()

    def serve_metrics(self, addr: str) -> str:
        """Serves ``/metrics`` (Prometheus text) on ``addr``; returns the bound address."""
        server = self.server

        def prom(_: str) -> tuple[int, str, bytes]:
            return 200, PROMETHEUS_TEXT, server.metrics_text().encode()

        self._metrics = AdminServer(addr, {"/metrics": prom, "/stats/prometheus": prom}, name="pymesh-dns-metrics")
        return self._metrics.address

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        if self._metrics is not None:
            self._metrics.stop()
        self.server.stop()

    def __enter__(self) -> DnsProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
