"""VirtualService in the control plane: validation as Istio's webhook (errors name the
file, the object and the field), which VirtualService a client gets (short names in the
VirtualService's namespace, ``gateways``, the oldest wins and the others are reported,
``exportTo``), the routes gRPC gets from it (matches, weighted subsets, timeout, retries,
fault), and a bad VirtualService rejected alone while the rest, and its own last good
version, keep serving. The parity with istiod's answer for the same VirtualService is
tests/unit/test_istiod_grpc_parity.py (scenario ``virtualservice``)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2

from pymesh.controlplane import ControlPlane
from pymesh.controlplane import generators as gen
from pymesh.controlplane.httproutes import DEFAULT_RETRY_ON, RouteView
from pymesh.controlplane.registry import Registry, build_registry
from pymesh.controlplane.resources import LoadResult, load_documents, parse_object
from pymesh.mesh.xds import LDS, RDS
from support.cp import AdsStream, pymesh_cli, vm_node
from support.istiod import SCENARIOS, _hcm
from support.wait import wait_until

HOST = "product.default.svc.cluster.local"
ROUTE = f"outbound|8080||{HOST}"
V1, V2 = f"outbound|8080|v1|{HOST}", f"outbound|8080|v2|{HOST}"
BASE = (
    (SCENARIOS / "base" / "services.yaml").read_text()
    + "---\n"
    + (SCENARIOS / "subsets" / "destinationrule.yaml").read_text()
)


def vs(
    name: str = "product",
    ns: str = "default",
    *,
    created: str = "",
    api: str = "networking.istio.io/v1",
    **spec: Any,
) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": ns}
    if created:
        md["creationTimestamp"] = created
    spec.setdefault("hosts", [HOST])
    spec.setdefault("http", [{"route": [{"destination": {"host": HOST, "subset": "v1"}}]}])
    return {"apiVersion": api, "kind": "VirtualService", "metadata": md, "spec": spec}


def registry_of(*docs: dict[str, Any]) -> Registry:
    res = LoadResult()
    load_documents(BASE + "".join("---\n" + yaml.safe_dump(d) for d in docs), "mesh.yaml", res)
    assert res.errors == []
    return build_registry(res.objects)


def routes(reg: Registry, ns: str = "default", labels: dict[str, str] | None = None) -> list[Any]:
    rc = gen.routes(reg, RouteView.of(ns, labels or {}))[ROUTE]
    (vh,) = rc.virtual_hosts
    return list(vh.routes)


def target(r: Any) -> Any:
    a = r.route
    return a.cluster or [(c.name, c.weight.value) for c in a.weighted_clusters.clusters]


# --- parsing and validation -------------------------------------------------------------


@pytest.mark.parametrize(
    "api", ["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"]
)
def test_every_api_version_parses(api: str) -> None:
    o = parse_object(vs(api=api, hosts=["Product"], gateways=["mesh"]))
    assert o.kind == "VirtualService"
    assert o.typed.hosts == ("product",)  # type: ignore[union-attr]
    assert o.typed.api_version == api.rpartition("/")[2]  # type: ignore[union-attr]


def test_weights_need_not_sum_to_100() -> None:
    # Istio dropped the sum-to-100 rule (1.15): weights are relative.
    o = parse_object(
        vs(
            http=[
                {
                    "route": [
                        {"destination": {"host": HOST}, "weight": 7},
                        {"destination": {"host": HOST, "subset": "v2"}, "weight": 2},
                    ]
                }
            ]
        )
    )
    assert [d.weight for d in o.typed.http[0].route] == [7, 2]  # type: ignore[union-attr]


DEST = {"destination": {"host": HOST}}


@pytest.mark.parametrize(
    ("spec", "field", "text"),
    [
        ({"hosts": []}, "spec.hosts", "delegate"),
        ({"hosts": ["*"]}, "spec.hosts[0]", "mesh"),
        ({"hosts": ["*.default.svc.cluster.local", HOST]}, "spec.hosts[1]", "overlaps"),
        ({"hosts": ["bad_host!"]}, "spec.hosts[0]", "host name"),
        ({"http": []}, "spec", "at least one of http"),
        ({"http": [{"route": [DEST], "redirect": {"uri": "/x"}}]}, "spec.http[0]", "exactly one"),
        ({"http": [{"match": [{"uri": {"prefix": "/"}}]}]}, "spec.http[0]", "exactly one"),
        (
            {
                "http": [
                    {"route": [{**DEST, "weight": 0}, {"destination": {"host": HOST, "subset": "v2"}, "weight": 0}]}
                ]
            },
            "spec.http[0].route",
            "must not all be 0",
        ),
        ({"http": [{"route": [{**DEST, "weight": -1}]}]}, "spec.http[0].route[0].weight", ""),
        ({"http": [{"route": [{"destination": {"host": "*"}}]}]}, "spec.http[0].route[0].destination.host", "'*'"),
        (
            {"http": [{"route": [{"destination": {"host": HOST, "subset": "V_1"}}]}]},
            "spec.http[0].route[0].destination.subset",
            "",
        ),
        (
            {"http": [{"route": [{"destination": {"host": HOST, "port": {"number": 70000}}}]}]},
            "spec.http[0].route[0].destination.port.number",
            "",
        ),
        ({"http": [{"route": [DEST], "timeout": "0.5ms"}]}, "spec.http[0].timeout", "1ms"),
        (
            {"http": [{"route": [DEST], "retries": {"attempts": 0, "perTryTimeout": "1s"}}]},
            "spec.http[0].retries",
            "attempts > 0",
        ),
        (
            {"http": [{"route": [DEST], "retries": {"attempts": 2, "retryOn": "5xx,sometimes"}}]},
            "spec.http[0].retries.retryOn",
            "sometimes",
        ),
        ({"http": [{"route": [DEST], "fault": {}}]}, "spec.http[0].fault", "abort or a delay"),
        (
            {"http": [{"route": [DEST], "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 150}}}}]},
            "spec.http[0].fault.abort.percentage.value",
            "100",
        ),
        (
            {"http": [{"route": [DEST], "fault": {"abort": {"httpStatus": 700}}}]},
            "spec.http[0].fault.abort.httpStatus",
            "",
        ),
        (
            {"http": [{"route": [DEST], "fault": {"abort": {"grpcStatus": "NOPE"}}}]},
            "spec.http[0].fault.abort.grpcStatus",
            "NOPE",
        ),
        (
            {"http": [{"route": [DEST], "fault": {"delay": {"percentage": {"value": 5}}}}]},
            "spec.http[0].fault.delay.fixedDelay",
            "required",
        ),
        (
            {"http": [{"match": [{"headers": {"X-User": {"exact": "a"}}}], "route": [DEST]}]},
            "spec.http[0].match[0].headers.X-User",
            "lower-case",
        ),
        (
            {"http": [{"match": [{"uri": {"regex": "(unclosed"}}], "route": [DEST]}]},
            "spec.http[0].match[0].uri.regex",
            "",
        ),
        (
            {"http": [{"match": [{"headers": {"x": {"prefix": ""}}}], "route": [DEST]}]},
            "spec.http[0].match[0].headers.x.prefix",
            "empty",
        ),
        (
            {"http": [{"redirect": {"uri": "/a"}, "fault": {"abort": {"httpStatus": 500}}}]},
            "spec.http[0].redirect",
            "fault",
        ),
        ({"http": [{"route": [DEST], "rewrite": {}}]}, "spec.http[0].rewrite", "at least one"),
        (
            {"http": [{"route": [DEST], "mirror": {"host": HOST}, "mirrors": [{"destination": {"host": HOST}}]}]},
            "spec.http[0]",
            "mirror",
        ),
        ({"http": [{"delegate": {"name": "x"}}]}, "spec.http[0].delegate", "not supported"),
        ({"exportTo": ["Bad Namespace"]}, "spec.exportTo[0]", ""),
        ({"tls": [{"route": [DEST]}], "http": []}, "spec.tls[0].match", "at least one match"),
        ({"http": [{"route": [DEST], "flavour": "x"}]}, "spec.http[0].flavour", ""),
    ],
)
def test_invalid_virtual_services_are_rejected_naming_file_object_and_field(
    spec: dict[str, Any], field: str, text: str
) -> None:
    res = LoadResult()
    load_documents(yaml.safe_dump(vs("bad", "ns1", **spec)), "vs.yaml", res)
    assert res.objects == []
    (err,) = res.errors
    assert err.file == "vs.yaml" and err.obj == "VirtualService ns1/bad"
    assert err.field == field, str(err)
    assert text in str(err)


def test_tcp_and_tls_routes_are_validated_and_kept() -> None:
    o = parse_object(
        vs(
            http=[],
            tcp=[{"route": [DEST]}],
            tls=[{"match": [{"sniHosts": [HOST]}], "route": [DEST]}],
        )
    )
    assert (o.typed.tcp_routes, o.typed.tls_routes) == (1, 1)  # type: ignore[union-attr]


# --- which VirtualService a client gets -------------------------------------------------


def test_without_a_virtual_service_the_default_route_carries_istiods_default_retries() -> None:
    (r,) = routes(registry_of())
    assert r.name == "default" and r.route.cluster == ROUTE
    assert r.route.retry_policy.retry_on == DEFAULT_RETRY_ON and r.route.retry_policy.num_retries.value == 2


def test_short_names_resolve_in_the_virtual_services_namespace() -> None:
    here = vs(hosts=["product"], http=[{"route": [{"destination": {"host": "product", "subset": "v2"}}]}])
    (r,) = routes(registry_of(here))
    assert r.route.cluster == V2
    # The same short name in another namespace is another host: product.other.svc.cluster.local.
    there = vs("p", "other", hosts=["product"], http=[{"route": [{"destination": {"host": HOST, "subset": "v2"}}]}])
    (r,) = routes(registry_of(there), ns="other")
    assert r.name == "default"


def test_a_virtual_service_bound_only_to_gateways_does_not_apply() -> None:
    (r,) = routes(registry_of(vs(gateways=["istio-system/ingress"])))
    assert r.name == "default"
    (r,) = routes(registry_of(vs(gateways=["istio-system/ingress", "mesh"])))
    assert r.route.cluster == V1


def test_the_oldest_wins_and_the_others_are_reported() -> None:
    old = vs("zzz-old", created="2024-01-01T00:00:00Z")
    new = vs(
        "aaa-new", created="2025-01-01T00:00:00Z", http=[{"route": [{"destination": {"host": HOST, "subset": "v2"}}]}]
    )
    reg = registry_of(new, old)
    (r,) = routes(reg)
    assert r.route.cluster == V1
    (conflict,) = reg.virtual_services.conflicts
    assert "default/aaa-new" in conflict and "default/zzz-old" in conflict and HOST in conflict
    # Same time (or none): namespace, then name.
    a, b = vs("a"), vs("b", http=[{"route": [{"destination": {"host": HOST, "subset": "v2"}}]}])
    (r,) = routes(registry_of(b, a))
    assert r.route.cluster == V1


def test_export_to_dot_is_seen_only_in_its_namespace() -> None:
    reg = registry_of(vs(exportTo=["."]))
    assert routes(reg, "default")[0].route.cluster == V1
    assert routes(reg, "other")[0].name == "default"
    reg = registry_of(vs(exportTo=["*"]))
    assert routes(reg, "other")[0].route.cluster == V1
    # Hidden from "other" by exportTo, so an older VirtualService there does not hide a newer one.
    private = vs("private", created="2024-01-01T00:00:00Z", exportTo=["."])
    public = vs(
        "public",
        "other",
        created="2025-01-01T00:00:00Z",
        exportTo=["other"],
        hosts=[HOST],
        http=[{"route": [{"destination": {"host": HOST, "subset": "v2"}}]}],
    )
    reg = registry_of(private, public)
    assert routes(reg, "default")[0].route.cluster == V1
    assert routes(reg, "other")[0].route.cluster == V2
    assert reg.virtual_services.conflicts == ()


# --- the routes ------------------------------------------------------------------------


def test_matches_in_order_up_to_the_first_catch_all() -> None:
    spec = vs(
        http=[
            {
                "name": "r",
                "match": [
                    {"name": "exact", "uri": {"exact": "/pkg.Svc/Get"}},
                    {
                        "uri": {"regex": "/pkg\\..*"},
                        "ignoreUriCase": True,
                        "headers": {"x-a": {}, "x-b": {"prefix": "p"}},
                    },
                    {"withoutHeaders": {"x-c": {"regex": "c.*"}}, "queryParams": {"q": {"exact": ""}}},
                    {"port": 9999, "uri": {"prefix": "/never"}},
                ],
                "route": [{"destination": {"host": HOST, "subset": "v2"}}],
            },
            {"route": [DEST]},
            {"name": "unreachable", "route": [DEST]},
        ]
    )
    rs = routes(registry_of(spec))
    assert [r.name for r in rs] == ["r.exact", "r", "r", ""]
    assert rs[0].match.path == "/pkg.Svc/Get" and rs[0].match.case_sensitive.value
    m = rs[1].match
    assert m.safe_regex.regex == "/pkg\\..*" and m.case_sensitive.value is False
    assert [(h.name, h.present_match, h.string_match.prefix) for h in m.headers] == [
        ("x-a", True, ""),
        ("x-b", False, "p"),
    ]
    (h,) = rs[2].match.headers
    assert h.invert_match and h.treat_missing_header_as_empty and h.string_match.safe_regex.regex == "c.*"
    assert rs[2].match.query_parameters[0].string_match.exact == ""
    assert rs[3].route.cluster == ROUTE  # a destination without subset: the service's cluster


def test_source_labels_select_the_client() -> None:
    spec = vs(
        http=[
            {
                "match": [{"sourceLabels": {"app": "canary"}}],
                "route": [{"destination": {"host": HOST, "subset": "v2"}}],
            },
            {"route": [DEST]},
        ]
    )
    reg = registry_of(spec)
    # For the canary, the match is a catch-all (no path, header or query matcher): istiod stops there.
    assert [target(r) for r in routes(reg, labels={"app": "canary", "x": "y"})] == [V2]
    assert [target(r) for r in routes(reg, labels={"app": "other"})] == [ROUTE]


def test_weights_timeout_retries_and_fault() -> None:
    spec = vs(
        http=[
            {
                "route": [
                    {"destination": {"host": HOST, "subset": "v1"}, "weight": 9},
                    {"destination": {"host": HOST, "subset": "v2"}, "weight": 0},
                    {"destination": {"host": HOST}, "weight": 1},
                ],
                "timeout": "1.5s",
                "retries": {"attempts": 4, "retryOn": "unavailable,503", "perTryTimeout": "100ms"},
                "fault": {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 0.5}}},
            }
        ]
    )
    (r,) = routes(registry_of(spec))
    assert target(r) == [(V1, 9), (ROUTE, 1)]  # the 0 weight is dropped
    assert r.route.max_stream_duration.max_stream_duration.ToMilliseconds() == 1500
    rp = r.route.retry_policy
    assert (rp.num_retries.value, rp.retry_on, list(rp.retriable_status_codes)) == (
        4,
        "unavailable,retriable-status-codes",
        [503],
    )
    assert rp.per_try_timeout.ToMilliseconds() == 100
    f = fault_pb2.HTTPFault()
    assert r.typed_per_filter_config["envoy.filters.http.fault"].Unpack(f)
    assert (f.abort.grpc_status, f.abort.percentage.numerator) == (14, 5000)


def test_attempts_zero_means_no_retry_policy_and_consistent_hashing_drops_the_predicate() -> None:
    spec = vs(
        http=[
            {"match": [{"headers": {"x": {"exact": "1"}}}], "route": [DEST], "retries": {"attempts": 0}},
            {"route": [{"destination": {"host": HOST, "subset": "v2"}}]},
        ]
    )
    first, second = routes(registry_of(spec))
    assert not first.route.HasField("retry_policy")
    # v2 hashes on x-user (the DestinationRule): no previous-hosts predicate, as istiod's.
    assert second.route.hash_policy[0].header.header_name == "x-user"
    assert second.route.retry_policy.num_retries.value == 2 and not second.route.retry_policy.retry_host_predicate


def test_the_fault_filter_is_in_the_listener_only_when_a_virtual_service_injects_faults() -> None:
    def filters(reg: Registry) -> list[str]:
        return [f.name for f in _hcm(gen.listeners(reg)[f"{HOST}:8080"]).http_filters]

    assert filters(registry_of(vs())) == ["envoy.filters.http.router"]
    faulty = vs(http=[{"route": [DEST], "fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 1}}}}])
    assert filters(registry_of(faulty)) == ["envoy.filters.http.fault", "envoy.filters.http.router"]


# --- in the running control plane -------------------------------------------------------


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    cfg = tmp_path / "mesh"
    cfg.mkdir()
    (cfg / "base.yaml").write_text(BASE)
    (cfg / "vs.yaml").write_text(yaml.safe_dump(vs()))
    c = ControlPlane(cfg, xds_listen="127.0.0.1:0", persist=False, debounce=0.02)
    c.start()
    yield c
    c.stop()


def grpc_routes(cp: ControlPlane, s: AdsStream) -> list[Any]:
    r = s.recv()
    assert r.type_url == RDS
    s.ack(r, (ROUTE,))
    (rc,) = [route_pb2.RouteConfiguration.FromString(a.value) for a in r.resources]
    return list(rc.virtual_hosts[0].routes)


def test_a_bad_virtual_service_is_rejected_alone_and_the_last_good_one_keeps_serving(cp: ControlPlane) -> None:
    s = AdsStream(cp.port, vm_node("127.0.0.21", group="", extra={"GENERATOR": "grpc"}))
    try:
        s.send(RDS, (ROUTE,))
        assert [target(r) for r in grpc_routes(cp, s)] == [V1]
        # Another, bad VirtualService: rejected alone, naming file, object and field.
        bad = vs("other", hosts=["reviews.default.svc.cluster.local"], http=[{"route": [DEST], "timeout": "soon"}])
        (cp.config_dir / "other.yaml").write_text(yaml.safe_dump(bad))
        # A valid edit of the served one is pushed...
        split = [
            {"destination": {"host": HOST, "subset": "v1"}, "weight": 90},
            {"destination": {"host": HOST, "subset": "v2"}, "weight": 10},
        ]
        (cp.config_dir / "vs.yaml").write_text(yaml.safe_dump(vs(http=[{"route": split}])))
        cp.reload()
        assert [target(r) for r in grpc_routes(cp, s)] == [[(V1, 90), (V2, 10)]]
        (err,) = cp.errors
        assert err.file.endswith("other.yaml") and err.obj == "VirtualService default/other"
        assert err.field == "spec.http[0].timeout"
        # ...an invalid one is not: the last good version keeps serving.
        (cp.config_dir / "vs.yaml").write_text(
            yaml.safe_dump(vs(http=[{"route": [{**DEST, "weight": 0}, {**DEST, "weight": 0}]}]))
        )
        cp.reload()
        assert s.no_response(0.3)
        assert any(e.file.endswith("vs.yaml") and e.field == "spec.http[0].route" for e in cp.errors)
        assert [target(r) for r in routes(cp.snapshot.registry)] == [[(V1, 90), (V2, 10)]]
    finally:
        s.close()


def test_conflicts_are_in_the_status(cp: ControlPlane) -> None:
    (cp.config_dir / "later.yaml").write_text(yaml.safe_dump(vs("later", created="2999-01-01T00:00:00Z")))
    (cp.config_dir / "vs.yaml").write_text(yaml.safe_dump(vs(created="2020-01-01T00:00:00Z")))
    cp.reload()
    (conflict,) = cp.status()["virtual_service_conflicts"]
    assert "VirtualService default/later" in conflict


def test_the_listener_names_the_route_and_carries_no_fault_filter_without_faults(cp: ControlPlane) -> None:
    s = AdsStream(cp.port, vm_node("127.0.0.22", group="", extra={"GENERATOR": "grpc"}))
    try:
        s.send(LDS, (f"{HOST}:8080",))
        r = s.recv()
        lis = [listener_pb2.Listener.FromString(a.value) for a in r.resources]
        assert [_hcm(x).rds.route_config_name for x in lis if x.name == f"{HOST}:8080"] == [ROUTE]
        assert [f.name for f in _hcm(lis[0]).http_filters] == ["envoy.filters.http.router"]
    finally:
        s.close()


def test_pymesh_get_lists_virtual_services(tmp_path: Path) -> None:
    cfg, data = tmp_path / "mesh", tmp_path / "data"
    cfg.mkdir()
    (cfg / "vs.yaml").write_text(yaml.safe_dump(vs(gateways=["mesh"])))
    c = ControlPlane(cfg, xds_listen="127.0.0.1:0", data_dir=data)
    c.start()
    try:

        def table() -> str:
            out = subprocess.run(
                [*pymesh_cli(), "get", "vs", "--data-dir", str(data)], capture_output=True, text=True, timeout=60
            )
            return out.stdout if out.returncode == 0 and "product" in out.stdout else ""

        lines = wait_until(table, timeout=30).splitlines()
        assert lines[0].split() == ["NAME", "GATEWAYS", "HOSTS", "AGE"]
        assert lines[1].split()[:3] == ["product", "mesh", HOST]
    finally:
        c.stop()
