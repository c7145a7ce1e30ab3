"""The agent's local status port (istio-agent's 15020, localhost only), on
:class:`pymesh.admin.AdminServer`.

- ``GET /healthz/ready``: 200 once the agent holds a cluster set to route
  with (a CDS push applied, from the control plane or the saved state) and its
  DNS proxy runs when enabled; 503 with the reason otherwise. Istio answers
  this for Envoy's readiness; here it says the data path has tables.
- ``GET /debug/ndsz``: the name table as JSON (istio-agent's debug view).
- ``GET /debug/clusters``: every cluster's endpoints as the lbtable sees them.
- ``GET /debug/status``: :meth:`Agent.status`.
- ``GET /metrics`` (also ``/stats/prometheus``, istio-agent's merged
  endpoint): the agent's own metrics (rendered by ``prometheus_client``
  through :func:`pymesh.admin.prometheus_text`: HELP and TYPE on every
  family, label values escaped) followed by the DNS proxy's (rendered
  natively, per-query counters kept in the serving loop: Istio's
  ``istio_agent_dns_*`` and ``pymesh_dns_*``). The agent's own: the ADS
  stream (up, responses, ACKs, NACKs, failures; per type, with Istio's
  ``type`` label: pushes, rejects, the time of the last applied push),
  tables held, the readiness probe, capture, the workload certificate
  (istio-agent's ``istio_agent_cert_expiry_seconds{resource_name="default"}``,
  the seconds left, from ``pkg/security`` ``CertExpirySeconds``, beside
  ``pymesh_agent_certificate_expiry_seconds``, the Unix time) and the
  relays' counters (``pymesh_agent_relay_*{relay="outbound"|"inbound"}``),
  and Istio's TCP families from the relays' per-connection series
  (``istio_tcp_connections_opened_total``, ``istio_tcp_connections_closed_total``,
  ``istio_tcp_sent_bytes_total``, ``istio_tcp_received_bytes_total``; the
  outbound reports ``reporter="source"``, the inbound ``reporter="destination"``,
  every label of Istio's TCP set present; see ``native/src/relay/metrics.rs``).
  These take the place of Envoy's ``:15090`` section in istio-agent's merged
  endpoint; the app's own metrics follow when cluster.env's
  ``ISTIO_PROMETHEUS_ANNOTATIONS`` asks for them (fetched at each scrape, a
  failure counted in ``istio_agent_scrape_failures_total{type="application"}``).
  ``istio_requests_total`` (HTTP) is not served: the relays do not parse HTTP.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pymesh.admin import JSON, PROMETHEUS_TEXT, TEXT, AdminServer, Body, prometheus_text

if TYPE_CHECKING:
    from pymesh.agent.agent import Agent


NDSZ_CHUNK = 512  # names per chunk of the /debug/ndsz stream


def _page(query: str) -> tuple[int, int | None]:
    params = dict(urllib.parse.parse_qsl(query))
    offset = int(params.get("offset", "0"))
    limit = int(params["limit"]) if "limit" in params else None
    if offset < 0 or (limit is not None and limit < 0):
        raise ValueError("offset and limit must be >= 0")
    return offset, limit


def _stream_names(names: Any, offset: int, limit: int | None) -> Iterator[bytes]:
    """The name table as a JSON list, NDSZ_CHUNK entries per chunk."""
    yield b"["
    first = True
    batch: list[str] = []
    for i, entry in enumerate(names if names is not None else ()):
        if i < offset:
            continue
        if limit is not None and i >= offset + limit:
            break
        batch.append(json.dumps(entry))
        if len(batch) >= NDSZ_CHUNK:
            yield (b"" if first else b",\n") + ",\n".join(batch).encode()
            first, batch = False, []
    if batch:
        yield (b"" if first else b",\n") + ",\n".join(batch).encode()
    yield b"]\n"


def ready(agent: Agent) -> tuple[bool, str]:
    if not agent.synced:
        return False, "no clusters yet (no push from the control plane and no saved state)"
    if agent.dns_enabled and (agent.dns is None or not agent.dns.server.running):
        return False, "DNS proxy not running"
    return True, "ready"


class AgentCollector(Collector):
    """The agent's state as Prometheus families, read at scrape time."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        st = self.agent.status()
        stats = st["stats"]
        yield GaugeMetricFamily(
            "pymesh_agent_xds_connected", "1 while an ADS stream to the control plane is up.", st["xds"] == "connected"
        )
        for key, help_text in (
            ("responses", "xDS responses received."),
            ("acks", "xDS responses applied and acknowledged."),
            ("nacks", "xDS responses rejected (NACKed) with their error."),
            ("failures", "ADS streams that failed or could not be opened."),
        ):
            name = "stream_failures" if key == "failures" else key
            yield CounterMetricFamily(f"pymesh_agent_xds_{name}", help_text, stats.get(key, 0))
        yield GaugeMetricFamily("pymesh_agent_clusters", "Clusters held.", st["clusters"])
        yield GaugeMetricFamily("pymesh_agent_endpoints", "Endpoints held, over every cluster.", st["endpoints"])
        yield GaugeMetricFamily("pymesh_agent_names", "Names in the NDS table.", st["names"])
        health = st["health"]
        yield GaugeMetricFamily(
            "pymesh_agent_healthy",
            "The readiness probe's last state (1 healthy, 0 unhealthy, -1 none yet).",
            -1 if health is None else int(bool(health[0])),
        )
        capture = st["capture"]
        yield GaugeMetricFamily(
            "pymesh_agent_capture_installed", "1 while the agent's capture rules are installed.", capture["installed"]
        )
        not_after = st["certificates"]["not_after"]
        if not_after is not None:
            yield GaugeMetricFamily(
                "pymesh_agent_certificate_expiry_seconds",
                "Unix time the workload certificate expires.",
                not_after,
            )
            g = GaugeMetricFamily(
                "istio_agent_cert_expiry_seconds",
                "The time remaining, in seconds, before the certificate chain will expire. "
                "A negative value indicates the cert is expired.",
                labels=["resource_name"],
            )
            g.add_metric(["default"], not_after - time.time())
            yield g
        yield from _per_type(st["xds_types"])
        running = self.agent.data.relays()
        yield from _relays(running)


def _per_type(types: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    pushes = CounterMetricFamily("pymesh_agent_xds_pushes", "xDS responses received, by type.", labels=["type"])
    rejects = CounterMetricFamily(
        "pymesh_agent_xds_rejects", "xDS responses rejected (NACKed), by type.", labels=["type"]
    )
    last = GaugeMetricFamily(
        "pymesh_agent_xds_last_push_timestamp_seconds",
        "Unix time the last response of the type was applied.",
        labels=["type"],
    )
    for t, v in sorted(types.items()):
        pushes.add_metric([t], v["pushes"])
        rejects.add_metric([t], v["rejects"])
        if v["last_push"] is not None:
            last.add_metric([t], v["last_push"])
    yield from (pushes, rejects, last)


# Relay counters that are levels, not totals (pymesh.relay.OutboundProxy.stats()).
_RELAY_GAUGES = {"active": "Connections open."}


def _relays(relays: list[tuple[str, Any]]) -> Iterator[Metric]:
    """One family per counter, a ``relay`` label per running relay."""
    families: dict[str, Any] = {}
    for relay, proxy in relays:
        for source, prefix, values in (
            ("relay", "pymesh_agent_relay_", proxy.stats()),
            ("TLS", "pymesh_agent_relay_tls_", proxy.tls_stats()),
        ):
            for key, value in sorted(values.items()):
                name = prefix + key
                fam = families.get(name)
                if fam is None:
                    if key in _RELAY_GAUGES:
                        fam = GaugeMetricFamily(name, _RELAY_GAUGES[key], labels=["relay"])
                    else:
                        fam = CounterMetricFamily(name, f"{source}: {key.replace('_', ' ')}.", labels=["relay"])
                    families[name] = fam
                fam.add_metric([relay], value)
    yield from families.values()


def istio_tcp(relays: Iterable[Any]) -> str:
    """Istio's four TCP counter families over the relays' series, rendered natively
    (``pymesh._native.tcp_metrics_text``: each family once, HELP and TYPE even before its
    first series; 10,000 series are 40,000 lines, too many to build as Python objects
    at every scrape)."""
    from pymesh._native import tcp_metrics_text

    return tcp_metrics_text(list(relays))


class Scrapes:
    """istio-agent's own scrape counters: ``istio_agent_scrapes_total`` and
    ``istio_agent_scrape_failures_total{type}`` (``application`` here: the app's endpoint
    did not answer)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scrapes = 0
        self.failures = 0

    def family_text(self) -> str:
        with self.lock:
            n, f = self.scrapes, self.failures
        return (
            "# HELP istio_agent_scrapes_total The total number of scrapes.\n"
            "# TYPE istio_agent_scrapes_total counter\n"
            f"istio_agent_scrapes_total {n}\n"
            "# HELP istio_agent_scrape_failures_total The total number of failed scrapes.\n"
            "# TYPE istio_agent_scrape_failures_total counter\n"
            f'istio_agent_scrape_failures_total{{type="application"}} {f}\n'
        )


def app_metrics(targets: Iterable[tuple[int, str]], scrapes: Scrapes, timeout: float = 2.0) -> str:
    """The app's own metrics (``ISTIO_PROMETHEUS_ANNOTATIONS``), each target fetched now from
    loopback; a target that fails is left out and counted, never failing the scrape. A trailing
    OpenMetrics ``# EOF`` is dropped (the merged page is the text format)."""
    out = []
    for port, path in targets:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
                body = r.read(64 << 20).decode("utf-8", "replace")
        except (OSError, ValueError):
            with scrapes.lock:
                scrapes.failures += 1
            continue
        lines = [ln for ln in body.splitlines() if ln.strip() != "# EOF"]
        out.append("\n".join(lines) + ("\n" if lines else ""))
    return "".join(out)


def metrics(agent: Agent, scrapes: Scrapes | None = None) -> str:
    """The merged page, as istio-agent's: the agent's own families, the proxy's (the relays'
    ``istio_tcp_*`` and the DNS proxy's, where Envoy's 15090 would be), then the app's."""
    scrapes = scrapes or Scrapes()
    with scrapes.lock:
        scrapes.scrapes += 1
    app = app_metrics(agent.config.app_metrics, scrapes)
    out = prometheus_text(AgentCollector(agent)).decode() + scrapes.family_text()
    out += istio_tcp(proxy for _, proxy in agent.data.relays())
    if agent.dns is not None:
        out += agent.dns.server.metrics_text()
    return out + app


class StatusServer(AdminServer):
    def __init__(self, agent: Agent, listen: str) -> None:
        def healthz(_: str) -> tuple[int, str, bytes]:
            ok, why = ready(agent)
            return (200 if ok else 503), TEXT, why.encode()

        def ndsz(query: str) -> tuple[int, str, Body]:
            # Streamed (a million names would otherwise be one huge reply built in memory);
            # ?offset=N&limit=M pages through it.
            try:
                offset, limit = _page(query)
            except ValueError as e:
                return 400, TEXT, f"{e}\n".encode()
            return 200, JSON, _stream_names(agent.names, offset, limit)

        def clusters(_: str) -> tuple[int, str, bytes]:
            data: dict[str, Any] = agent.endpoints()
            return 200, JSON, json.dumps(data, indent=1).encode()

        def status(_: str) -> tuple[int, str, bytes]:
            return 200, JSON, json.dumps(agent.status(), indent=1, default=str).encode()

        scrapes = Scrapes()

        def prom(_: str) -> tuple[int, str, bytes]:
            return 200, PROMETHEUS_TEXT, metrics(agent, scrapes).encode()

        super().__init__(
            listen,
            {
                "/healthz/ready": healthz,
                "/debug/ndsz": ndsz,
                "/debug/clusters": clusters,
                "/debug/status": status,
                "/metrics": prom,
                "/stats/prometheus": prom,
            },
            name="pymesh-agent-status",
        )
