"""What the ADS server and the CA count for istiod's metric families: plain
integers and fixed-bucket histograms, updated on the control plane's loop
where the events happen and read by :mod:`pymesh.controlplane.monitoring`
at scrape time. No Prometheus here: recording is a dict update, a bisect
and two additions.

The families, their buckets and labels are istiod's:
``pilot/pkg/xds/monitoring.go`` (``pilot_xds_pushes``, ``pilot_xds_push_time``,
``pilot_proxy_convergence_time``, ``pilot_xds_config_size_bytes``) and
``pkg/xds/monitoring.go`` (``pilot_total_xds_rejects`` and the legacy
``pilot_xds_{cds,eds,lds,rds}_reject`` gauges, labelled ``node`` and ``err``,
the NACK's gRPC code name). Those legacy gauges have one series per proxy
and error code in istiod; here the distinct label sets are capped at
:data:`MAX_REJECT_SERIES`, and NACKs of a label set beyond the cap are
counted in :attr:`XdsMetrics.reject_series_dropped` instead, so a flood of
NACKs from made-up node ids cannot grow the scrape without bound.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from pymesh.mesh.xds import CDS, EDS, LDS, RDS, metric_type

# pilot/pkg/xds/monitoring.go
PUSH_TIME_BUCKETS = (0.01, 0.1, 1, 3, 5, 10, 20, 30)
CONVERGENCE_BUCKETS = (0.1, 0.5, 1, 3, 5, 10, 20, 30)
CONFIG_SIZE_BUCKETS = (1, 10_000, 1_000_000, 4_000_000, 10_000_000, 40_000_000)
# The types istiod keeps a per-node reject gauge for (pkg/xds/monitoring.go, IncrementXDSRejects).
REJECT_GAUGES = {CDS: "cds", EDS: "eds", LDS: "lds", RDS: "rds"}
MAX_REJECT_SERIES = 256

# google.golang.org/grpc/codes Code.String(): the ``err`` label istiod writes for a NACK's code.
GRPC_CODE_NAMES = (
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
)


def grpc_code_name(code: int) -> str:
    return GRPC_CODE_NAMES[code] if 0 <= code < len(GRPC_CODE_NAMES) else f"Code({code})"


class Histogram:
    """A Prometheus histogram's state: a count per bucket (not cumulative), sum, count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "le": a value equal to a bound belongs to that bound's bucket.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs ending with ``+Inf``, as ``HistogramMetricFamily`` takes them."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else _le(bound), float(total)))
        return out

    def copy(self) -> Histogram:
        h = Histogram(self.bounds)
        h.counts, h.sum, h.count = list(self.counts), self.sum, self.count
        return h


def _le(bound: float) -> str:
    return str(int(bound)) if bound.is_integer() else repr(bound)


class XdsMetrics:
    """istiod's xDS figures for one ADS server; every method runs on the control plane's loop."""

    def __init__(self) -> None:
        self.pushes: dict[str, int] = {}  # metric type -> responses sent
        self.push_time: dict[str, Histogram] = {}  # metric type -> build + queue time, seconds
        self.config_size: dict[str, Histogram] = {}  # full type URL (istiod's label) -> response bytes
        self.convergence = Histogram(CONVERGENCE_BUCKETS)
        self.rejects: dict[str, int] = {}  # metric type -> NACKs
        self.reject_series: dict[tuple[str, str, str], int] = {}  # (cds|eds|lds|rds, node, err) -> NACKs
        self.reject_series_dropped = 0

    def sent(self, type_url: str, size: int, seconds: float) -> None:
        t = metric_type(type_url)
        self.pushes[t] = self.pushes.get(t, 0) + 1
        h = self.push_time.get(t)
        if h is None:
            h = self.push_time[t] = Histogram(PUSH_TIME_BUCKETS)
        h.observe(seconds)
        s = self.config_size.get(type_url)
        if s is None:
            s = self.config_size[type_url] = Histogram(CONFIG_SIZE_BUCKETS)
        s.observe(size)

    def rejected(self, type_url: str, node: str, code: int) -> None:
        t = metric_type(type_url)
        self.rejects[t] = self.rejects.get(t, 0) + 1
        gauge = REJECT_GAUGES.get(type_url)
        if gauge is None:
            return
        key = (gauge, node, grpc_code_name(code))
        if key in self.reject_series:
            self.reject_series[key] += 1
        elif len(self.reject_series) < MAX_REJECT_SERIES:
            self.reject_series[key] = 1
        else:
            self.reject_series_dropped += 1

    def copy(self) -> XdsMetrics:
        """A consistent copy for a scrape (taken on the loop, rendered off it)."""
        m = XdsMetrics()
        m.pushes = dict(self.pushes)
        m.push_time = {k: h.copy() for k, h in self.push_time.items()}
        m.config_size = {k: h.copy() for k, h in self.config_size.items()}
        m.convergence = self.convergence.copy()
        m.rejects = dict(self.rejects)
        m.reject_series = dict(self.reject_series)
        m.reject_series_dropped = self.reject_series_dropped
        return m
