"""Telemetry (telemetry.istio.io) access logging in the control plane: parsing and
its errors (file, object, field), Istio's precedence (workload > namespace > mesh,
``disabled`` turns the log off, oldest wins, meshConfig's access log as the
default and as where the ``envoy`` provider writes), and delivery over LDS on the
``virtualInbound`` listener's ``tcp_proxy`` filters, as istiod puts it, read back
with the agent's reader, pushed only to the sidecars a change concerns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.config.listener.v3.listener_pb2 import Listener

from pymesh.controlplane import ControlPlane
from pymesh.controlplane.registry import build_registry
from pymesh.controlplane.resources import LoadResult, load_documents
from pymesh.controlplane.telemetry import MeshAccessLog
from pymesh.mesh.accesslog import access_log_of
from pymesh.mesh.xds import LDS
from support.cp import AdsStream, vm_node

STDOUT = ("/dev/stdout", "TEXT")


def tel(
    name: str, ns: str, logging: str = "[{providers: [{name: envoy}]}]", selector: str = "", created: str = ""
) -> str:
    md = f"{{name: {name}, namespace: {ns}" + (f", creationTimestamp: '{created}'" if created else "") + "}"
    sel = f"selector: {{matchLabels: {selector}}}, " if selector else ""
    return (
        f"apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {md}\nspec: {{{sel}accessLogging: {logging}}}\n"
    )


def registry_of(*docs: str, mesh: MeshAccessLog | None = None) -> Any:
    res = LoadResult()
    load_documents("---\n".join(docs), "telemetry.yaml", res)
    assert res.errors == [], [str(e) for e in res.errors]
    return build_registry(res.objects, mesh_access_log=mesh)


def access_log(reg: Any, ns: str = "default", labels: dict[str, str] | None = None) -> tuple[str, str] | None:
    result: tuple[str, str] | None = reg.access_log(ns, labels or {})
    return result


@pytest.mark.parametrize(
    ("spec", "field", "text"),
    [
        ("{accessLogging: [{providers: [{name: otel}]}]}", "accessLogging[0].providers[0].name", "unknown provider"),
        ("{accessLogging: [{match: {mode: CLIENT}}]}", "spec.accessLogging[0].match.mode", "not supported"),
        ("{accessLogging: [{filter: {expression: 'response.code >= 400'}}]}", "spec.accessLogging[0].filter", "CEL"),
        ("{targetRefs: [{kind: Gateway, name: g}]}", "spec.targetRefs", "not supported"),
        ("{accessLogging: [{disabled: maybe}]}", "spec.accessLogging[0].disabled", ""),
        ("{accessLogging: [{providers: [{nam: envoy}]}]}", "spec.accessLogging[0].providers[0].nam", ""),
    ],
)  # fmt: skip
def test_invalid_telemetry_is_rejected_naming_file_object_and_field(spec: str, field: str, text: str) -> None:
    res = LoadResult()
    head = "apiVersion: telemetry.istio.io/v1alpha1\nkind: Telemetry\nmetadata: {name: t, namespace: default}\n"
    doc = f"{head}spec: {spec}\n"
    load_documents(doc, "bad.yaml", res)
    assert res.objects == [] and len(res.errors) == 1
    msg = str(res.errors[0])
    assert "bad.yaml" in msg and "Telemetry default/t" in msg and field in msg and text in msg, msg


def test_off_by_default_and_meshconfig_is_the_default() -> None:
    assert access_log(registry_of()) is None
    mesh = MeshAccessLog("/var/log/istio/access.log", "JSON")
    assert access_log(registry_of(mesh=mesh)) == ("/var/log/istio/access.log", "JSON")
    # The envoy provider writes where meshConfig says, else to stdout.
    assert access_log(registry_of(tel("mesh", "istio-system"), mesh=mesh)) == ("/var/log/istio/access.log", "JSON")
    assert access_log(registry_of(tel("mesh", "istio-system"))) == STDOUT


def test_workload_then_namespace_then_mesh_and_disabled_turns_it_off() -> None:
    reg = registry_of(
        tel("mesh", "istio-system"),
        tel("quiet", "default", "[{disabled: true}]"),
        tel("product", "default", selector="{app: product}"),
    )
    assert access_log(reg, "other") == STDOUT  # mesh-wide
    assert access_log(reg, "default", {"app": "reviews"}) is None  # the namespace turned it off
    assert access_log(reg, "default", {"app": "product"}) == STDOUT  # the workload turned it back on
    # A level without accessLogging changes nothing; metrics are kept, not applied.
    reg = registry_of(
        tel("mesh", "istio-system"),
        tel("m", "default", "[]").replace("accessLogging: []", "metrics: [{providers: [{name: prometheus}]}]"),
    )
    assert access_log(reg, "default") == STDOUT


def test_oldest_telemetry_wins_on_one_level() -> None:
    reg = registry_of(
        tel("b-new", "default", "[{disabled: true}]", created="2026-01-02T00:00:00Z"),
        tel("a-old", "default", created="2026-01-01T00:00:00Z"),
    )
    assert access_log(reg) == STDOUT


# --- over LDS -------------------------------------------------------------------------------


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    cfg = tmp_path / "mesh"
    cfg.mkdir()
    (cfg / "placeholder.yaml").write_text("")
    c = ControlPlane(cfg, xds_listen="127.0.0.1:0", persist=False, debounce=0.02)
    c.start()
    yield c
    c.stop()


def pushed_log(s: AdsStream) -> tuple[str, str] | None:
    r = s.recv()
    lis = Listener.FromString(r.resources[0].value)
    assert lis.name == "virtualInbound"
    s.ack(r, ("virtualInbound",))
    return access_log_of({lis.name: lis})


def sidecar(cp: ControlPlane, ip: str, labels: dict[str, str]) -> AdsStream:
    s = AdsStream(cp.port, vm_node(ip, group="", namespace="default", name=ip, extra={"LABELS": labels}))
    s.send(LDS, ("virtualInbound",))
    return s


def test_the_access_log_reaches_the_sidecars_it_concerns(cp: ControlPlane) -> None:
    product = sidecar(cp, "127.0.0.21", {"app": "product"})
    reviews = sidecar(cp, "127.0.0.22", {"app": "reviews"})
    assert pushed_log(product) is None and pushed_log(reviews) is None
    (cp.config_dir / "product.yaml").write_text(tel("product", "default", selector="{app: product}"))
    cp.reload()
    assert pushed_log(product) == STDOUT
    assert reviews.no_response(0.3)
    # An invalid edit keeps the last good version.
    (cp.config_dir / "product.yaml").write_text(tel("product", "default", "[{providers: [{name: zipkin}]}]"))
    cp.reload()
    assert product.no_response(0.3) and any("zipkin" in str(e) for e in cp.errors)
    (cp.config_dir / "product.yaml").unlink()
    cp.reload()
    assert pushed_log(product) is None
    for s in (product, reviews):
        s.close()
