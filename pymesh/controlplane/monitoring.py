"""The control plane's monitoring port (istiod's 15014): ``/metrics`` and
``/debug/status``, on the one admin HTTP server (:mod:`pymesh.admin`).

``pymesh controlplane --monitoring-listen 127.0.0.1:15014``. ``/debug/status``
is :meth:`ControlPlane.status` as JSON; ``/metrics`` renders the same figures
with ``prometheus_client`` (``pymesh_controlplane_*``): the config watcher's
state (``pymesh_controlplane_config_watch_failing`` is 1 while config changes
are not being applied), rejected objects, xDS connections, NACKs, refused
nodes, dropped log lines, the TLS front's pending handshakes and evictions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pymesh.admin import JSON, PROMETHEUS_TEXT, AdminServer

if TYPE_CHECKING:
    from pymesh.controlplane.server import ControlPlane


class _Collector(Collector):
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def collect(self) -> Iterator[Metric]:
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
    registry = CollectorRegistry()
    registry.register(_Collector(cp))

    def metrics(_query: str) -> tuple[int, str, bytes]:
        return 200, PROMETHEUS_TEXT, generate_latest(registry)

    def status(_query: str) -> tuple[int, str, bytes]:
        body: Any = cp.status()
        return 200, JSON, json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"

    return AdminServer(listen, {"/metrics": metrics, "/debug/status": status}, name="pymesh-controlplane-monitoring")
