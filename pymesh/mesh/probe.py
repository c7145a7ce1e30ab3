"""The WorkloadGroup readiness probe: one model for the control plane, which
validates it in a WorkloadGroup, and the agent, which runs it from mesh.yaml
``defaultConfig.readinessProbe`` (istioctl copies the group's ``probe``
there; istiod never pushes it).

The schema is istio/api ``networking/v1alpha3/workload_group.proto``
(``ReadinessProbe``): exactly one of ``httpGet`` {path, port, host, scheme,
httpHeaders}, ``tcpSocket`` {host, port}, ``exec`` {command}, ``grpc``
{port, service}; ``initialDelaySeconds``, ``timeoutSeconds``,
``periodSeconds``, ``successThreshold``, ``failureThreshold``.

Rules, the same on both sides: ports 1-65535; ``scheme`` HTTP or HTTPS in
any case (Kubernetes writes ``HTTP``/``HTTPS``, istioctl passes what it was
given); header names ``[-_A-Za-z0-9]+``; a non-empty command of non-empty
strings. Defaults are istio-agent's effective ones (``fillInDefaults`` in
``pkg/istio-agent/health/health_check.go``): timeout 1 s, period 10 s,
success threshold 1, failure threshold **1** (the code's, not the documented
3). Seconds are int32 in the resource, so the control plane requires
integers (``integral_seconds=True``); the agent also takes fractions in
mesh.yaml (a pymesh extension tests use for short periods).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pymesh.mesh.errors import ProbeError

KINDS = ("httpGet", "tcpSocket", "exec", "grpc")
HEADER_NAME = re.compile(r"^[-_A-Za-z0-9]+$")
INT32_MAX = 2**31 - 1
SECONDS_FIELDS = ("initialDelaySeconds", "timeoutSeconds", "periodSeconds")
COUNT_FIELDS = ("successThreshold", "failureThreshold")


@dataclass(frozen=True)
class ProbeSpec:
    kind: str  # one of KINDS
    initial_delay: float = 0.0
    timeout: float = 1.0
    period: float = 10.0
    success_threshold: int = 1
    failure_threshold: int = 1
    port: int = 0
    host: str = ""
    path: str = "/"
    scheme: str = "http"
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    service: str = ""

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "initialDelaySeconds": self.initial_delay,
            "timeoutSeconds": self.timeout,
            "periodSeconds": self.period,
            "successThreshold": self.success_threshold,
            "failureThreshold": self.failure_threshold,
        }
        if self.kind == "httpGet":
            d.update(port=self.port, host=self.host, path=self.path, scheme=self.scheme.upper())
            if self.headers:
                d["httpHeaders"] = [{"name": n, "value": v} for n, v in self.headers]
        elif self.kind == "tcpSocket":
            d.update(port=self.port, host=self.host)
        elif self.kind == "exec":
            d["command"] = list(self.command)
        else:
            d.update(port=self.port, service=self.service)
        return d


def _seconds(d: Mapping[str, Any], key: str, default: float, integral: bool) -> float:
    v = d.get(key)
    if v is None:
        return default
    if integral:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= INT32_MAX:
            raise ProbeError(key, f"expected an integer number of seconds >= 0 (at most {INT32_MAX}), got {v!r}")
    elif isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
        raise ProbeError(key, f"expected a number of seconds >= 0, got {v!r}")
    return default if v == 0 else float(v)


def _count(d: Mapping[str, Any], key: str, default: int) -> int:
    v = d.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= INT32_MAX:
        raise ProbeError(key, f"expected an integer >= 0 (at most {INT32_MAX}), got {v!r}")
    return default if v == 0 else v


def _port(d: Mapping[str, Any], where: str) -> int:
    p = d.get("port")
    if isinstance(p, bool) or not isinstance(p, int) or not 0 < p < 65536:
        raise ProbeError(f"{where}.port", f"expected a port 1-65535, got {p!r}")
    return p


def _str(d: Mapping[str, Any], key: str, where: str) -> str:
    v = d.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise ProbeError(f"{where}.{key}", f"expected a string, got {type(v).__name__}")
    return v


def parse_probe(d: Any, *, integral_seconds: bool = False) -> ProbeSpec:
    """Validates a ``readinessProbe`` mapping (JSON field names); a
    :class:`ProbeError` carries the offending field in ``.field``."""
    if not isinstance(d, Mapping):
        raise ProbeError("", f"expected a mapping, got {type(d).__name__}")
    kinds = [k for k in KINDS if d.get(k) is not None]
    if len(kinds) != 1:
        raise ProbeError(
            "", "exactly one of httpGet, tcpSocket, exec, grpc must be set" + (f" (got {kinds})" if kinds else "")
        )
    kind = kinds[0]
    body = d[kind]
    if not isinstance(body, Mapping):
        raise ProbeError(kind, f"expected a mapping, got {type(body).__name__}")
    common: dict[str, Any] = {
        "initial_delay": _seconds(d, "initialDelaySeconds", 0.0, integral_seconds),
        "timeout": _seconds(d, "timeoutSeconds", 1.0, integral_seconds),
        "period": _seconds(d, "periodSeconds", 10.0, integral_seconds),
        "success_threshold": _count(d, "successThreshold", 1),
        "failure_threshold": _count(d, "failureThreshold", 1),
    }
    if kind == "httpGet":
        scheme = _str(body, "scheme", kind) or "HTTP"
        if scheme.upper() not in ("HTTP", "HTTPS"):
            raise ProbeError(f"{kind}.scheme", f"{scheme!r} is not HTTP or HTTPS")
        headers = []
        raw = body.get("httpHeaders") or []
        if not isinstance(raw, list):
            raise ProbeError(f"{kind}.httpHeaders", "expected a list of {name, value}")
        for i, h in enumerate(raw):
            if not isinstance(h, Mapping) or not isinstance(h.get("name"), str) or not HEADER_NAME.match(h["name"]):
                raise ProbeError(f"{kind}.httpHeaders[{i}].name", "expected a header name ([-_A-Za-z0-9]+)")
            headers.append((h["name"], str(h.get("value") or "")))
        path = _str(body, "path", kind) or "/"
        if not path.startswith("/"):
            path = "/" + path
        return ProbeSpec(
            kind=kind,
            port=_port(body, kind),
            host=_str(body, "host", kind),
            path=path,
            scheme=scheme.lower(),
            headers=tuple(headers),
            **common,
        )
    if kind == "tcpSocket":
        return ProbeSpec(kind=kind, port=_port(body, kind), host=_str(body, "host", kind), **common)
    if kind == "exec":
        cmd = body.get("command")
        if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) and c for c in cmd):
            raise ProbeError(f"{kind}.command", "expected a non-empty list of non-empty strings")
        return ProbeSpec(kind=kind, command=tuple(cmd), **common)
    return ProbeSpec(kind=kind, port=_port(body, kind), service=_str(body, "service", kind), **common)
