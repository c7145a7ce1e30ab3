"""The traffic graph behind ``/api/v1/graph`` (``docs/dashboard-api.md``): edges
workload → service and service → workload, from Istio's standard metrics as the
source proxy reports them (``reporter="source"``).

Two sources, as the control plane is configured:

- **Prometheus** (``prometheus_url``): Kiali's queries, a rate over a window of
  ``istio_requests_total`` (requests/s and the 5xx share), ``histogram_quantile``
  over ``istio_request_duration_milliseconds_bucket`` (p50, p99) and
  ``istio_tcp_{sent,received}_bytes_total`` (bytes/s), summed by the source
  workload, the destination service and the destination workload (Kiali
  ``graph/telemetry/istio/istio.go``, ``buildNamespaceTrafficMap``;
  ``graph/telemetry/istio/appender/response_time.go``, ``throughput.go``). The
  reliable mode: Prometheus already scrapes every proxy wherever its port is
  reachable, and keeps the counters across a proxy's restart.
- **The agents** (no Prometheus): the control plane scrapes
  ``http://<address>:15020/stats/prometheus`` (istio-agent's merged endpoint, the
  port by Istio's convention) of every proxy with an ADS stream here, the address
  being the first of the node's ``INSTANCE_IPS``, and takes rates between two of
  its own scrapes (at least ``MIN_INTERVAL`` apart). Best effort: an agent's
  status port is often bound to localhost (pymesh's default, like
  istio-agent's), a proxy connected to another replica is not seen, and a
  restarted agent's counters start again (that interval is dropped). Each
  proxy that could not be read is listed in ``unreachable``.

mTLS on an edge: the source proxy reports ``connection_security_policy="unknown"``,
so, as Kiali's security appender (``graph/telemetry/istio/appender/security_policy.go``)
does with destination-reported ``mutual_tls``, an edge is mTLS when the traffic on it
carries a peer identity: ``source_principal`` other than ``unknown`` or the policy
``mutual_tls``.
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from pymesh.mesh.defaults import STATUS_PORT

# The labels an edge is summed by (Kiali's, without the cluster and canonical names).
KEY = (
    "source_workload_namespace",
    "source_workload",
    "destination_service",
    "destination_workload_namespace",
    "destination_workload",
)
HTTP_KEY = (*KEY, "request_protocol")
SECURITY = ("source_principal", "connection_security_policy")
UNKNOWN = "unknown"
WINDOW = "1m"  # Kiali's default graph duration
MIN_INTERVAL = 1.0  # seconds between two scrapes of the agents a rate is taken over
TIMEOUT = 2.0  # per query
AGENT_TIMEOUT = 1.0  # per agent scrape
RETRY_FAILED = 10.0  # seconds before an agent that could not be read is tried again
MAX_AGENTS = 256  # agents scraped per graph (a hostile node can claim any address)


def _secure(labels: Mapping[str, str]) -> bool:
    principal = labels.get("source_principal", "") or UNKNOWN
    return principal != UNKNOWN or labels.get("connection_security_policy") == "mutual_tls"


@dataclass
class _Edge:
    """One (source workload, service, destination workload, protocol)'s figures."""

    rps: float = 0.0
    errors: float = 0.0
    p50: float | None = None
    p99: float | None = None
    sent: float = 0.0
    received: float = 0.0
    secure: float = 0.0  # traffic (requests or bytes per second) carrying a peer identity
    total: float = 0.0  # the same, all of it


@dataclass
class Graph:
    edges: dict[tuple[str, ...], _Edge] = field(default_factory=dict)  # KEY + (protocol,)

    def edge(self, labels: Mapping[str, str], protocol: str) -> _Edge:
        key = (*(labels.get(k, "") or UNKNOWN for k in KEY), protocol)
        return self.edges.setdefault(key, _Edge())

    def document(self) -> dict[str, Any]:
        """``{"nodes", "edges"}``: workload → service edges summed over destination workloads,
        and service → workload edges where the destination workload is known."""
        nodes: dict[str, dict[str, Any]] = {}
        out: dict[tuple[str, str, str], _Edge] = {}

        def node(kind: str, namespace: str, name: str) -> str:
            nid = f"{kind}:{namespace}/{name}" if kind == "workload" else f"service:{name}"
            nodes.setdefault(nid, {"id": nid, "kind": kind, "namespace": namespace, "name": name})
            return nid

        def add(src: str, dst: str, protocol: str, e: _Edge) -> None:
            acc = out.setdefault((src, dst, protocol), _Edge())
            # Quantiles cannot be summed: the busiest part's stands (one destination workload
            # is the common case, where it is exact).
            if e.p50 is not None and (acc.p50 is None or e.rps > acc.rps):
                acc.p50, acc.p99 = e.p50, e.p99
            acc.rps += e.rps
            acc.errors += e.errors
            acc.sent += e.sent
            acc.received += e.received
            acc.secure += e.secure
            acc.total += e.total

        for (sns, swl, svc, dns, dwl, protocol), e in self.edges.items():
            svc_ns = svc.split(".")[1] if svc.count(".") >= 2 else ""
            s = node("service", svc_ns, svc)
            add(node("workload", sns, swl), s, protocol, e)
            if dwl != UNKNOWN:
                add(s, node("workload", dns, dwl), protocol, e)
        edges = []
        for (src, dst, protocol), e in sorted(out.items()):
            row: dict[str, Any] = {"source": src, "target": dst, "protocol": protocol}
            row["mtls"] = e.total > 0 and e.secure >= e.total / 2
            if protocol == "tcp":
                row.update(bytesPerSecond=_round(e.sent + e.received), sentBytesPerSecond=_round(e.sent))
                row["receivedBytesPerSecond"] = _round(e.received)
            else:
                row.update(requestsPerSecond=_round(e.rps), errorRate=_round(e.errors / e.rps) if e.rps else 0.0)
                row.update(p50Ms=_round(e.p50), p99Ms=_round(e.p99))
            edges.append(row)
        return {"nodes": sorted(nodes.values(), key=lambda n: n["id"]), "edges": edges}


def _round(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else round(v, 3)


def _protocol(labels: Mapping[str, str]) -> str:
    return "grpc" if labels.get("request_protocol") == "grpc" else "http"


# --- Prometheus ---------------------------------------------------------------------------


class PrometheusSource:
    def __init__(self, url: str, window: str = WINDOW) -> None:
        self.url = url.rstrip("/")
        self.window = window

    def _query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        q = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=TIMEOUT) as r:
            body = json.loads(r.read(64 << 20))
        if body.get("status") != "success":
            raise ValueError(f"{expr}: {body.get('error') or body}")
        return [(dict(s["metric"]), float(s["value"][1])) for s in body["data"]["result"]]

    def graph(self) -> Graph:
        w = self.window
        by = ",".join(HTTP_KEY)
        sec = ",".join((*HTTP_KEY, *SECURITY))
        g = Graph()
        req = 'istio_requests_total{reporter="source"}'
        for labels, v in self._query(f"sum by ({sec}) (rate({req}[{w}]))"):
            e = g.edge(labels, _protocol(labels))
            e.rps += v
            e.total += v
            e.secure += v if _secure(labels) else 0.0
        err = 'istio_requests_total{reporter="source",response_code=~"5.."}'
        for labels, v in self._query(f"sum by ({by}) (rate({err}[{w}]))"):
            g.edge(labels, _protocol(labels)).errors += v
        bucket = 'istio_request_duration_milliseconds_bucket{reporter="source"}'
        for q, attr in ((0.5, "p50"), (0.99, "p99")):
            expr = f"histogram_quantile({q}, sum by ({by},le) (rate({bucket}[{w}])))"
            for labels, v in self._query(expr):
                if not math.isnan(v):
                    setattr(g.edge(labels, _protocol(labels)), attr, v)
        tcp_by = ",".join((*KEY, *SECURITY))
        for family, attr in (("sent", "sent"), ("received", "received")):
            expr = f'sum by ({tcp_by}) (rate(istio_tcp_{family}_bytes_total{{reporter="source"}}[{w}]))'
            for labels, v in self._query(expr):
                e = g.edge(labels, "tcp")
                setattr(e, attr, getattr(e, attr) + v)
                e.total += v
                e.secure += v if _secure(labels) else 0.0
        return g


# --- the agents' own endpoints --------------------------------------------------------------


@dataclass
class _Counts:
    """What one scrape of one agent holds, summed per edge: cumulative counters."""

    requests: dict[tuple[str, ...], float] = field(default_factory=dict)  # HTTP_KEY + SECURITY
    errors: dict[tuple[str, ...], float] = field(default_factory=dict)  # HTTP_KEY
    buckets: dict[tuple[str, ...], dict[float, float]] = field(default_factory=dict)  # HTTP_KEY: le -> count
    tcp: dict[tuple[str, ...], float] = field(default_factory=dict)  # KEY + SECURITY + (sent|received,)


def _values(labels: Mapping[str, str], keys: Iterable[str]) -> tuple[str, ...]:
    return tuple(labels.get(k, "") for k in keys)


def parse(text: str) -> _Counts:
    """The ``reporter="source"`` series of one scrape, parsed by ``prometheus_client``."""
    c = _Counts()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            lb = s.labels
            if lb.get("reporter") != "source":
                continue
            if s.name == "istio_requests_total":
                k = _values(lb, (*HTTP_KEY, *SECURITY))
                c.requests[k] = c.requests.get(k, 0.0) + s.value
                if lb.get("response_code", "").startswith("5"):
                    k = _values(lb, HTTP_KEY)
                    c.errors[k] = c.errors.get(k, 0.0) + s.value
            elif s.name == "istio_request_duration_milliseconds_bucket":
                b = c.buckets.setdefault(_values(lb, HTTP_KEY), {})
                le = float(lb["le"])
                b[le] = b.get(le, 0.0) + s.value
            elif s.name in ("istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total"):
                k = (*_values(lb, (*KEY, *SECURITY)), s.name.split("_")[2])
                c.tcp[k] = c.tcp.get(k, 0.0) + s.value
    return c


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus's ``histogram_quantile`` (``promql/quantile.go``, ``bucketQuantile``) over
    cumulative bucket counts: linear within the bucket holding the rank; the +Inf bucket
    answers the highest finite bound."""
    bounds = sorted(buckets)
    if not bounds or bounds[-1] != math.inf or buckets[math.inf] <= 0:
        return None
    total = buckets[math.inf]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        count = buckets[b]
        if count >= rank:
            if b == math.inf:
                return prev_bound
            if count == prev_count:
                return b
            return prev_bound + (b - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = b, count
    return prev_bound


def _delta(now: Mapping[Any, float], before: Mapping[Any, float]) -> dict[Any, float]:
    return {k: v - before.get(k, 0.0) for k, v in now.items()}


def rates(now: _Counts, before: _Counts, seconds: float, g: Graph) -> None:
    """Adds to ``g`` the rates between two scrapes of one agent ``seconds`` apart."""
    labels: dict[str, str]
    for k, v in _delta(now.requests, before.requests).items():
        labels = dict(zip((*HTTP_KEY, *SECURITY), k, strict=True))
        e = g.edge(labels, _protocol(labels))
        e.rps += v / seconds
        e.total += v / seconds
        e.secure += v / seconds if _secure(labels) else 0.0
    for k, v in _delta(now.errors, before.errors).items():
        labels = dict(zip(HTTP_KEY, k, strict=True))
        g.edge(labels, _protocol(labels)).errors += v / seconds
    for k, b in now.buckets.items():
        d = _delta(b, before.buckets.get(k, {}))
        labels = dict(zip(HTTP_KEY, k, strict=True))
        e = g.edge(labels, _protocol(labels))
        e.p50, e.p99 = quantile(0.5, d), quantile(0.99, d)
    for k, v in _delta(now.tcp, before.tcp).items():
        labels = dict(zip((*KEY, *SECURITY), k[:-1], strict=True))
        e = g.edge(labels, "tcp")
        setattr(e, k[-1], getattr(e, k[-1]) + v / seconds)
        e.total += v / seconds
        e.secure += v / seconds if _secure(labels) else 0.0


def _regressed(now: _Counts, before: _Counts) -> bool:
    """A counter went down: the agent restarted between the scrapes."""
    return any(
        v < before_map.get(k, 0.0)
        for now_map, before_map in ((now.requests, before.requests), (now.tcp, before.tcp))
        for k, v in now_map.items()
    )


class AgentSource:
    """Scrapes the agents' status ports, keeping the last scrape of each for the next rate."""

    def __init__(self, port: int = STATUS_PORT) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.last: dict[str, tuple[float, _Counts]] = {}  # address -> (time, counts)
        self.previous: dict[str, tuple[float, _Counts]] = {}
        self.errors: dict[str, tuple[float, str]] = {}  # address -> (when, why) of its last failure

    def _scrape(self, address: str) -> tuple[float, _Counts] | str:
        host = f"[{address}]" if ":" in address else address
        try:
            with urllib.request.urlopen(f"http://{host}:{self.port}/stats/prometheus", timeout=AGENT_TIMEOUT) as r:
                text = r.read(64 << 20).decode("utf-8", "replace")
            return time.monotonic(), parse(text)
        except (OSError, ValueError) as e:
            return f"{type(e).__name__}: {e}"

    def graph(self, addresses: Iterable[str]) -> tuple[Graph, dict[str, str], dict[str, int]]:
        """The rates between each agent's last two scrapes; the agents that could not be read
        (with why); the agents read, with their number of source-reported series."""
        wanted = sorted(set(addresses))[:MAX_AGENTS]
        with self.lock:
            now = time.monotonic()
            # An agent that failed waits RETRY_FAILED (each try may take AGENT_TIMEOUT), the others
            # MIN_INTERVAL since their last scrape.
            due = [
                a
                for a in wanted
                if (a not in self.errors or now - self.errors[a][0] >= RETRY_FAILED)
                and (a not in self.last or now - self.last[a][0] >= MIN_INTERVAL)
            ]
            if due:
                with ThreadPoolExecutor(max_workers=min(16, len(due))) as pool:
                    for a, got in zip(due, pool.map(self._scrape, due), strict=True):
                        if isinstance(got, str):
                            # Kept: the next good scrape's rate is taken over the longer interval.
                            self.errors[a] = (time.monotonic(), got)
                            continue
                        self.errors.pop(a, None)
                        if a in self.last:
                            self.previous[a] = self.last[a]
                        self.last[a] = got
            for a in (set(self.last) | set(self.errors)) - set(wanted):  # gone: forget it
                self.last.pop(a, None)
                self.previous.pop(a, None)
                self.errors.pop(a, None)
            g = Graph()
            for a, (t1, counts) in self.last.items():
                if a in self.previous:
                    t0, before = self.previous[a]
                    if not _regressed(counts, before) and t1 > t0:
                        rates(counts, before, t1 - t0, g)
            read = {a: len(c.requests) + len(c.tcp) for a, (_t, c) in self.last.items()}
            return g, {a: self.errors[a][1] for a in wanted if a in self.errors}, read
