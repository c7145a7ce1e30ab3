"""The control plane's monitoring port (istiod's 15014): ``/metrics``,
``/debug/status`` and the operators' JSON API under ``/api/v1/``
(:mod:`pymesh.controlplane.adminapi`, ``docs/dashboard-api.md``), on the one
admin HTTP server (:mod:`pymesh.admin`). It shows the mesh's topology (every
service, workload address and identity): keep it on loopback, as by default.
A request whose ``Host`` is not a loopback name, the bound address or one of
``--monitoring-allowed-hosts`` is refused (DNS rebinding, :mod:`pymesh.admin`).

``pymesh controlplane --monitoring-listen 127.0.0.1:15014``. ``/debug/status``
is :meth:`ControlPlane.status` as JSON; ``/metrics`` renders the same figures
with ``prometheus_client`` (``pymesh_controlplane_*``): the config watcher's
state (``pymesh_controlplane_config_watch_failing`` is 1 while config changes
are not being applied), rejected objects, xDS connections, NACKs, refused
nodes, streams being set up and those refused at admission (busy), dropped
log lines, the TLS front's pending handshakes and evictions;
and istiod's own families where pymesh has the same fact, with istiod's
names, types and labels (``pilot/pkg/xds/monitoring.go``, ``pkg/xds/monitoring.go``,
``security/pkg/server/ca/monitoring.go``): ``pilot_xds{version}`` (connected
proxies by their ``ISTIO_VERSION``), ``pilot_xds_pushes{type}``,
``pilot_xds_push_time{type}``, ``pilot_xds_config_size_bytes{type}``,
``pilot_proxy_convergence_time``, ``pilot_total_xds_rejects{type}``,
``pilot_xds_{cds,eds,lds,rds}_reject{node,err}``, ``pilot_services``,
``pilot_virt_services`` and, with the
CA, ``citadel_server_*``. Istio's sums keep its bare names (no ``_total``:
:class:`pymesh.admin.IstioCounter`). What is counted, and where, is in
:mod:`pymesh.controlplane.xdsmetrics`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from pymesh.admin import JSON, PROMETHEUS_TEXT, AdminServer, IstioCounter, prometheus_text
from pymesh.controlplane.lograte import clip
from pymesh.controlplane.xdsmetrics import REJECT_GAUGES, Histogram, XdsMetrics
from pymesh.mesh.node import ISTIO_VERSION

if TYPE_CHECKING:
    from pymesh.controlplane.server import ControlPlane


# Distinct ``version`` label values of pilot_xds kept (a hostile node can claim any version);
# the rest are counted under "other".
MAX_VERSIONS = 32


def _xds_view(cp: ControlPlane) -> dict[str, Any]:
    """What the istiod families read, copied on the control plane's loop."""
    versions: dict[str, int] = {}
    for conn in cp.ads.connections.values():
        v = clip(str(conn.proxy.metadata.get(ISTIO_VERSION) or ""), 64) if conn.proxy is not None else ""
        versions[v] = versions.get(v, 0) + 1
    sec = cp.security
    return {
        "metrics": cp.ads.metrics.copy(),
        "versions": versions,
        "services": len(cp.ads.snapshot.registry.services),
        "virtual_services": cp.ads.snapshot.registry.virtual_services.total,
        "ca": None if sec is None else (dict(sec.stats), dict(sec.sign_errors), sec.expiry()),
    }


def _histogram(name: str, doc: str, by: dict[str, Histogram] | None = None, one: Histogram | None = None) -> Metric:
    h = HistogramMetricFamily(name, doc, labels=["type"] if by is not None else None)
    if by is not None:
        for key, hist in sorted(by.items()):
            h.add_metric([key], hist.buckets(), hist.sum)
    elif one is not None:
        h.add_metric([], one.buckets(), one.sum)
    return h


class _Collector(Collector):
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.versions_seen: set[str] = set()  # as istiod, a version once seen stays (at 0 when none is left)

    def collect(self) -> Iterator[Metric]:
        yield from self._pymesh()
        yield from self._istiod(self.cp.call_soon(lambda: _xds_view(self.cp)))

    def _istiod(self, view: dict[str, Any]) -> Iterator[Metric]:
        m: XdsMetrics = view["metrics"]
        versions: dict[str, int] = {}
        for v, n in view["versions"].items():
            if v not in self.versions_seen and len(self.versions_seen) >= MAX_VERSIONS:
                v = "other"
            self.versions_seen.add(v)
            versions[v] = versions.get(v, 0) + n
        g = GaugeMetricFamily("pilot_xds", "Number of endpoints connected to this pilot using XDS.", labels=["version"])
        for v in sorted(self.versions_seen):
            g.add_metric([v], versions.get(v, 0))
        yield g
        c = IstioCounter("pilot_xds_pushes", "Pilot build and send errors for lds, rds, cds and eds.", ("type",))
        for t, n in sorted(m.pushes.items()):
            c.add((t,), n)
        yield c
        yield _histogram(
            "pilot_xds_push_time", "Total time in seconds Pilot takes to push lds, rds, cds and eds.", m.push_time
        )
        yield _histogram(
            "pilot_xds_config_size_bytes", "Distribution of configuration sizes pushed to clients", m.config_size
        )
        yield _histogram(
            "pilot_proxy_convergence_time",
            "Delay in seconds between config change and a proxy receiving all required configuration.",
            one=m.convergence,
        )
        c = IstioCounter(
            "pilot_total_xds_rejects", "Total number of XDS responses from pilot rejected by proxy.", ("type",)
        )
        for t, n in sorted(m.rejects.items()):
            c.add((t,), n)
        yield c
        for short in REJECT_GAUGES.values():
            g = GaugeMetricFamily(
                f"pilot_xds_{short}_reject", f"Pilot rejected {short.upper()} configs.", labels=["node", "err"]
            )
            for (kind, node, err), n in sorted(m.reject_series.items()):
                if kind == short:
                    g.add_metric([node, err], n)
            yield g
        yield CounterMetricFamily(
            "pymesh_controlplane_xds_reject_series_dropped",
            "NACKs not recorded in pilot_xds_*_reject: their (node, err) label set was past the cap.",
            m.reject_series_dropped,
        )
        yield GaugeMetricFamily("pilot_services", "Total services known to pilot.", view["services"])
        yield GaugeMetricFamily(
            "pilot_virt_services", "Total virtual services known to pilot.", view["virtual_services"]
        )
        if view["ca"] is not None:
            stats, sign_errors, (root_expiry, chain_expiry) = view["ca"]
            for name, key, doc in (
                ("citadel_server_csr_count", "csr", "The number of CSRs received by Citadel server."),
                (
                    "citadel_server_authentication_failure_count",
                    "authn_failures",
                    "The number of authentication failures.",
                ),
                (
                    "citadel_server_success_cert_issuance_count",
                    "issued",
                    "The number of certificates issuances that have succeeded.",
                ),
            ):
                yield IstioCounter(name, doc).add((), stats[key])
            c = IstioCounter(
                "citadel_server_csr_sign_err_count", "The number of errors occurred when signing the CSR.", ("error",)
            )
            for kind, n in sorted(sign_errors.items()):
                c.add((kind,), n)
            yield c
            yield GaugeMetricFamily(
                "citadel_server_root_cert_expiry_timestamp",
                "The unix timestamp, in seconds, when Citadel root cert will expire.",
                root_expiry,
            )
            yield GaugeMetricFamily(
                "citadel_server_cert_chain_expiry_timestamp",
                "The unix timestamp, in seconds, when Citadel cert chain will expire.",
                chain_expiry,
            )

    def _pymesh(self) -> Iterator[Metric]:
        st = self.cp.status()
        cfg, xds = st["config"], st["xds"]
        watcher = cfg["watcher"]
        p = "pymesh_controlplane_"
        yield GaugeMetricFamily(
            p + "config_watch_failing",
            "1 while the config watcher fails (changes are not applied), else 0.",
            1 if watcher["state"] != "ok" else 0,
        )
        yield CounterMetricFamily(
            p + "config_watch_failures", "Failed attempts in the current failing period.", watcher["failures"]
        )
        yield GaugeMetricFamily(p + "config_objects", "Configured objects served.", cfg["objects"])
        yield GaugeMetricFamily(p + "config_rejected", "Objects or files rejected at the last load.", cfg["rejected"])
        yield GaugeMetricFamily(p + "push_version", "Version of the snapshot served.", st["push"]["version"])
        yield GaugeMetricFamily(p + "push_failing", "1 when the last push failed.", 1 if st["push"]["error"] else 0)
        yield GaugeMetricFamily(p + "xds_connections", "ADS streams open.", xds["connections"])
        yield CounterMetricFamily(p + "xds_nacks", "NACKs received.", xds["nacks"])
        yield CounterMetricFamily(
            p + "xds_nodes_refused", "Streams refused for an oversized node.", xds["nodes_refused"]
        )
        yield GaugeMetricFamily(
            p + "xds_streams_pending", "ADS streams being set up (first request to its answer).", xds["pending"]
        )
        yield CounterMetricFamily(
            p + "xds_streams_refused_busy",
            "ADS streams refused with RESOURCE_EXHAUSTED: --max-pending-streams were being set up.",
            xds["refused_busy"],
        )
        yield CounterMetricFamily(
            p + "log_lines_dropped", "Rate-limited log lines not written.", st["log_lines_dropped"]
        )
        yield GaugeMetricFamily(
            p + "vips_held", "Auto-allocated VIPs in use.", st["vips"]["held"] - st["vips"]["released"]
        )
        yield GaugeMetricFamily(
            p + "vips_released", "Auto-allocated VIPs released (quarantine).", st["vips"]["released"]
        )
        tls = st["tls"]
        if tls is not None:
            yield GaugeMetricFamily(
                p + "tls_pending", "TLS connections before the end of their handshake.", tls["pending"]
            )
            for key in ("accepted", "evicted", "hello_timeouts", "handshake_failures", "refused", "accept_errors"):
                yield CounterMetricFamily(p + f"tls_{key}", f"TLS front: {key.replace('_', ' ')}.", tls[key])


def serve(cp: ControlPlane, listen: str) -> AdminServer:
    """The port, serving only the Host names of :class:`pymesh.admin.AdminServer`'s check (DNS
    rebinding) and ``cp.monitoring_allowed_hosts``: Prometheus names its target in ``Host``,
    so a scrape of the bound address passes."""
    collector = _Collector(cp)

    def metrics(_query: str) -> tuple[int, str, bytes]:
        return 200, PROMETHEUS_TEXT, prometheus_text(collector)

    def status(_query: str) -> tuple[int, str, bytes]:
        body: Any = cp.status()
        return 200, JSON, json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"

    from pymesh.controlplane.adminapi import routes

    return AdminServer(
        listen,
        {"/metrics": metrics, "/debug/status": status, **routes(cp)},
        name="pymesh-controlplane-monitoring",
        allowed_hosts=cp.monitoring_allowed_hosts,
    )
