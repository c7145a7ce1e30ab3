"""Telemetry (``telemetry.istio.io`` v1, v1alpha1): which access log a workload
writes, and the mesh-wide default (meshConfig ``accessLogFile`` /
``accessLogEncoding``).

What pymesh applies, as istiod computes it (istio/istio
``pilot/pkg/model/telemetry.go``, ``computeAccessLogging``; the API in istio/api
``telemetry/v1alpha1/telemetry.proto``):

- the default: meshConfig's access log when ``--access-log-file`` is given, else none;
- then the levels, most general first: a Telemetry without selector in the root
  namespace (mesh), one without selector in the workload's namespace
  (namespace), one whose ``selector.matchLabels`` are among the workload's labels
  (workload); on each level the oldest object wins (``creationTimestamp``, then name);
- each ``accessLogging`` entry of a level overrides what came before: ``disabled:
  true`` turns the log off, ``providers`` turn it on with that provider.

Providers: ``envoy``, Istio's built-in file logger (meshConfig ``extensionProviders``
default: ``envoyFileAccessLog`` to ``/dev/stdout``; the meshConfig file and encoding
when they are set). Other providers, ``match.mode`` other than
``CLIENT_AND_SERVER``, ``filter`` expressions and ``targetRefs`` are refused with the
field named: pymesh's relays write one log for both directions and evaluate no CEL.
``metrics`` and ``tracing`` are kept but not applied (Istio's standard metrics are
always on, there is no tracing), and a warning says so.

Delivery: the access log goes out on the ``tcp_proxy`` filters of the VM's
``virtualInbound`` listener (:mod:`pymesh.mesh.inbound`), where istiod puts it too, so
the agent reads it the same way from either control plane.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pymesh.controlplane import validation as v

log = logging.getLogger(__name__)

ENVOY_PROVIDER = "envoy"
DEFAULT_FILE = "/dev/stdout"  # Istio's built-in envoy provider
ENCODINGS = ("TEXT", "JSON")


@dataclass(frozen=True)
class AccessLogging:
    providers: tuple[str, ...]
    disabled: bool


@dataclass(frozen=True)
class TelemetrySpec:
    selector: Mapping[str, str] | None
    access_logging: tuple[AccessLogging, ...]
    unapplied: tuple[str, ...]  # spec fields kept but not applied (metrics, tracing)


def parse_spec(spec: Mapping[str, Any]) -> TelemetrySpec:
    """Validates a Telemetry spec (ValidationError naming the field)."""
    for f in ("targetRef", "targetRefs"):
        if spec.get(f):
            raise v.fail(f"spec.{f}", "not supported: pymesh applies Telemetry to workloads by selector")
    selector = None
    if spec.get("selector") is not None:
        selector = v.labels(
            v.mapping(spec.get("selector"), "spec.selector").get("matchLabels"), "spec.selector.matchLabels"
        )
    entries: list[AccessLogging] = []
    raw = spec.get("accessLogging")
    if raw is not None and not isinstance(raw, list):
        raise v.fail("spec.accessLogging", "expected a list")
    for i, item in enumerate(raw or []):
        where = f"spec.accessLogging[{i}]"
        m = v.mapping(item, where)
        mode = v.mapping(m.get("match"), f"{where}.match").get("mode", "CLIENT_AND_SERVER")
        if mode != "CLIENT_AND_SERVER":
            raise v.fail(f"{where}.match.mode", f"{mode!r} not supported: pymesh writes one log for both directions")
        if m.get("filter"):
            raise v.fail(f"{where}.filter", "not supported: pymesh evaluates no CEL filter expressions")
        providers: list[str] = []
        raw_p = m.get("providers")
        if raw_p is not None and not isinstance(raw_p, list):
            raise v.fail(f"{where}.providers", "expected a list")
        for j, p in enumerate(raw_p or []):
            name = v.mapping(p, f"{where}.providers[{j}]").get("name")
            if not isinstance(name, str) or not name:
                raise v.fail(f"{where}.providers[{j}].name", "a provider name is required")
            if name != ENVOY_PROVIDER:
                raise v.fail(
                    f"{where}.providers[{j}].name",
                    f"unknown provider {name!r} (pymesh has Istio's built-in {ENVOY_PROVIDER!r} file logger)",
                )
            providers.append(name)
        disabled = m.get("disabled", False)
        if not isinstance(disabled, bool):
            raise v.fail(f"{where}.disabled", "expected true or false")
        entries.append(AccessLogging(tuple(providers), disabled))
    unapplied = tuple(f for f in ("metrics", "tracing") if spec.get(f))
    return TelemetrySpec(selector, tuple(entries), unapplied)


@dataclass(frozen=True)
class MeshAccessLog:
    """meshConfig's ``accessLogFile`` / ``accessLogEncoding``: the default, and where the
    ``envoy`` provider writes."""

    file: str = ""
    encoding: str = "TEXT"

    def provider(self) -> tuple[str, str]:
        return (self.file or DEFAULT_FILE, self.encoding)


@dataclass(frozen=True)
class Effective:
    access_log: tuple[str, str] | None  # (file, TEXT | JSON), or off
    telemetries: tuple[str, ...]  # "namespace/name" that decided it, mesh first


def index(
    objects: Iterable[tuple[Any, TelemetrySpec, float | None]],
) -> dict[str, tuple[tuple[Any, TelemetrySpec], ...]]:
    """(meta, spec, created) by namespace, oldest first (then by name)."""
    out: dict[str, list[tuple[Any, TelemetrySpec, float | None]]] = {}
    for meta, spec, created in objects:
        out.setdefault(meta.namespace, []).append((meta, spec, created))
    return {
        ns: tuple((m, s) for m, s, _ in sorted(xs, key=lambda x: (x[2] is None, x[2] or 0.0, x[0].name)))
        for ns, xs in out.items()
    }


def effective(
    by_namespace: Mapping[str, tuple[tuple[Any, TelemetrySpec], ...]],
    root_namespace: str,
    mesh: MeshAccessLog,
    namespace: str,
    labels: Mapping[str, str],
) -> Effective:
    levels: list[tuple[Any, TelemetrySpec]] = []
    root = next(((m, s) for m, s in by_namespace.get(root_namespace, ()) if not s.selector), None)
    if root is not None:
        levels.append(root)
    if namespace != root_namespace:
        ns_level = next(((m, s) for m, s in by_namespace.get(namespace, ()) if not s.selector), None)
        if ns_level is not None:
            levels.append(ns_level)
    workload = next(
        (
            (m, s)
            for m, s in by_namespace.get(namespace, ())
            if s.selector and all(labels.get(k) == val for k, val in s.selector.items())
        ),
        None,
    )
    if workload is not None:
        levels.append(workload)
    current = mesh.provider() if mesh.file else None
    used: list[str] = []
    for meta, spec in levels:
        if not spec.access_logging:
            continue
        used.append(f"{meta.namespace}/{meta.name}")
        for entry in spec.access_logging:
            if entry.disabled:
                current = None
            elif entry.providers:
                current = mesh.provider()
    return Effective(current, tuple(used))
