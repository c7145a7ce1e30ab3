"""Health reports from VM agents (istio/istio ``pilot/pkg/xds/statusgen.go`` receives them,
``pilot/pkg/autoregistration/controller.go`` ``QueueWorkloadEntryHealth`` applies them).

The agent sends a ``DiscoveryRequest`` / ``DeltaDiscoveryRequest`` with type
``type.googleapis.com/istio.v1.HealthInformation`` and no resources:
``error_detail`` unset means healthy, set means unhealthy with its message.
istiod never answers it. The entry's ``Healthy`` condition is replaced
(``lastProbeTime`` and ``lastTransitionTime`` both the control plane's
clock, ``message`` only when False, no ``reason``), and only entries that
carry the ``proxy.istio.io/health-checks-enabled`` annotation are eligible.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping
from typing import Any

from pymesh.controlplane.registry import HEALTH_CHECKS_ANNOTATION


def rfc3339(ts: float) -> str:
    """Go's RFC3339Nano at microsecond precision (Istio writes its
    connect/disconnect annotations and condition times this way)."""
    t = dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)
    frac = f"{t.microsecond:06d}".rstrip("0")
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def parse_rfc3339(value: str) -> float | None:
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def eligible(doc: Mapping[str, Any]) -> bool:
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    return HEALTH_CHECKS_ANNOTATION in annotations


def with_health(doc: Mapping[str, Any], healthy: bool, message: str, now: float) -> dict[str, Any]:
    """A copy of the WorkloadEntry document with its Healthy condition set."""
    out = copy.deepcopy(dict(doc))
    status = dict(out.get("status") or {})
    conditions = [
        c for c in status.get("conditions") or [] if not (isinstance(c, Mapping) and c.get("type") == "Healthy")
    ]
    cond: dict[str, Any] = {
        "type": "Healthy",
        "status": "True" if healthy else "False",
        "lastProbeTime": rfc3339(now),
        "lastTransitionTime": rfc3339(now),
    }
    if not healthy and message:
        cond["message"] = message
    conditions.append(cond)
    status["conditions"] = conditions
    out["status"] = status
    return out


def without_health(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Cleanup of a health-checked (not auto-registered) entry removes its
    Healthy condition (as istiod's ``cleanupEntry`` does for entries it did not create),
    which makes it unhealthy."""
    out = copy.deepcopy(dict(doc))
    status = dict(out.get("status") or {})
    status["conditions"] = [
        c for c in status.get("conditions") or [] if not (isinstance(c, Mapping) and c.get("type") == "Healthy")
    ]
    out["status"] = status
    return out
