"""Configuration input is bounded the way the Kubernetes API server bounds it
("YAML alias bomb" and the weak spots of the config loader): the
alias budget of go-yaml's decoder, duplicate keys, recursive structures,
object and file sizes, and unknown fields against Istio's CRD schemas (core
kinds pruned, never persisted)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pymesh.controlplane.resources import LoadResult, load_documents, load_path
from pymesh.controlplane.store import Store

SERVICE = (
    "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns1}\nspec: {ports: [{name: http, port: 80}]}\n"
)


def bomb(levels: int = 9) -> str:
    """go-yaml's test bomb (goyaml.v2/decode_test.go): 9 lines of 9 aliases stand for 9^9 values."""
    lines = [
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata: {name: bomb, namespace: default}",
        "spec:",
        "  hosts: [bomb.example.com]",
        "  resolution: DNS",
        "  ports: [{number: 80, name: http}]",
        "  x:",
    ]
    prev = ""
    for c in "abcdefghijkl"[:levels]:
        items = ",".join(["x0"] * 9) if not prev else ",".join([f"*{prev}"] * 9)
        lines.append(f"    {c}: &{c} [{items}]")
        prev = c
    return "\n".join(lines) + "\n"


def load(text: str, source: str = "conf/t.yaml", **limits: int) -> LoadResult:
    r = LoadResult()
    if limits:
        from pymesh.controlplane.resources import Limits

        load_documents(text, source, r, Limits(**limits))
    else:
        load_documents(text, source, r)
    return r


def test_an_alias_bomb_is_refused_before_anything_expands_it() -> None:
    started = time.monotonic()
    r = load(bomb() + "---\n" + SERVICE)
    assert time.monotonic() - started < 1.0
    assert [o.key for o in r.objects] == [("Service", "ns1", "web")]  # its neighbour is loaded
    (err,) = r.errors
    assert err.file == "conf/t.yaml" and "excessive aliasing" in str(err) and "line" in str(err)


def test_ordinary_anchors_and_merges_are_accepted() -> None:
    r = load(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns1, labels: &l {app: web}}\n"
        "spec:\n  selector: *l\n  ports:\n    - &p {name: http, port: 80}\n    - {<<: *p, name: alt, port: 81}\n"
    )
    assert r.errors == []
    (svc,) = r.objects
    assert svc.raw["spec"]["selector"] == {"app": "web"}
    assert [p["port"] for p in svc.raw["spec"]["ports"]] == [80, 81]
    assert svc.raw["spec"]["selector"] is not svc.raw["metadata"]["labels"]  # kept as a tree, not a graph


def test_go_yaml_alias_ratio() -> None:
    from pymesh.controlplane.yamlsafe import allowed_alias_ratio

    assert allowed_alias_ratio(1000) == 0.99 and allowed_alias_ratio(4_000_000) == 0.10
    assert 0.10 < allowed_alias_ratio(2_000_000) < 0.99


def test_a_recursive_alias_and_non_json_tags_are_refused() -> None:
    r = load("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: &s {x: *s}\n")
    assert r.objects == [] and "recursive" in str(r.errors[0])
    r = load("apiVersion: v1\nkind: Service\nmetadata: {name: a, annotations: {k: !!binary aGk=}}\nspec: {}\n")
    assert r.objects == [] and "binary" in str(r.errors[0])


def test_duplicate_keys_are_refused_naming_file_line_and_key() -> None:
    text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: ns1\n  name: other\nspec: {}\n"
    r = load(text, "conf/dup.yaml")
    assert r.objects == []
    (err,) = r.errors
    msg = str(err)
    assert err.file == "conf/dup.yaml" and "line 6" in msg and "duplicate key 'name'" in msg and "line 4" in msg


def test_a_duplicate_key_in_one_list_item_rejects_that_item_only() -> None:
    text = (
        "apiVersion: v1\nkind: List\nitems:\n"
        "- {apiVersion: v1, kind: Service, metadata: {name: a}, spec: {}}\n"
        "- {apiVersion: v1, kind: Service, metadata: {name: b, name: c}, spec: {}}\n"
    )
    r = load(text)
    assert [o.key for o in r.objects] == [("Service", "default", "a")]
    assert len(r.errors) == 1 and "duplicate key 'name'" in str(r.errors[0])


def test_object_and_file_sizes_are_bounded(tmp_path: Path) -> None:
    big = SERVICE.replace("spec: {", "spec: {externalName: " + "x" * 5000 + ", ")
    r = load(big + "---\n" + SERVICE.replace("web", "small"), max_object_bytes=4096)
    assert [o.key[2] for o in r.objects] == ["small"]
    assert "more than the 4096-byte limit" in str(r.errors[0])

    (tmp_path / "huge.yaml").write_text(SERVICE * 1)
    os.truncate(tmp_path / "huge.yaml", 50_000_000)  # sparse: 50 MB that must never be read
    (tmp_path / "ok.yaml").write_text(SERVICE.replace("web", "ok"))
    started = time.monotonic()
    res = load_path(tmp_path)
    assert time.monotonic() - started < 1.0
    assert [o.key[2] for o in res.objects] == ["ok"]
    (err,) = res.errors
    assert err.file.endswith("huge.yaml") and err.whole_file and "not read" in str(err)


def test_unknown_fields_of_istio_kinds_are_rejected_with_their_path() -> None:
    se = (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se, namespace: ns1}\n"
        "spec: {hosts: [a.example.com], resolution: DNS, ports: [{number: 80, name: http}], hostz: [b]}\n"
    )
    r = load(se)
    assert r.objects == [] and r.errors[0].field == "spec.hostz" and "unknown field" in str(r.errors[0])
    dr = (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: dr, namespace: ns1}\n"
        "spec: {host: a.example.com, trafficPolicy: {connectionPool: {tcp: {maxConnectionz: 5}}}}\n"
    )
    r = load(dr)
    assert r.objects == [] and r.errors[0].field == "spec.trafficPolicy.connectionPool.tcp.maxConnectionz"
    r = load(se.replace("hostz: [b]", "ports2: 1").replace("metadata: {", "metadata: {clusterNam: x, "))
    assert r.objects == [] and r.errors[0].field == "metadata.clusterNam"


def test_istio_fields_pymesh_does_not_model_are_kept() -> None:
    dr = (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: dr, namespace: ns1}\n"
        "spec:\n  host: a.example.com\n  exportTo: ['.']\n  trafficPolicy:\n"
        "    connectionPool: {tcp: {maxConnections: 5}, http: {http2MaxRequests: 10}}\n"
        "    tls: {mode: ISTIO_MUTUAL}\n"
    )
    r = load(dr)
    assert r.errors == []
    assert r.objects[0].raw["spec"]["trafficPolicy"]["connectionPool"]["tcp"] == {"maxConnections": 5}


def test_crd_limits_hold_for_every_field() -> None:
    hosts = ", ".join(f"h{i}.example.com" for i in range(257))
    r = load(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: many, namespace: ns1}\n"
        f"spec: {{hosts: [{hosts}], resolution: DNS, ports: [{{number: 80, name: http}}]}}\n---\n" + SERVICE
    )
    assert [o.key[0] for o in r.objects] == ["Service"]
    assert r.errors[0].field == "spec.hosts" and "at most 256 items" in str(r.errors[0])


def test_core_kinds_keep_only_what_pymesh_models(tmp_path: Path) -> None:
    pod = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ns1, labels: {app: web}, managedFields: [{}]}\n"
        "spec: {nodeName: n1, volumes: [{name: v}], containers: [{name: c, image: i, args: [x]}]}\n"
        "status: {podIP: 10.0.0.1, hostIP: 192.0.2.1}\n"
    )
    (obj,) = load(pod).objects
    assert obj.raw == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns1", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
        "status": {"podIP": "10.0.0.1"},
    }
    store = Store(tmp_path)
    store.update_configured([(*obj.key, "t.yaml", obj.body)], [], [])
    ((_, _, _, _, body),) = store.configured()
    assert "nodeName" not in str(body) and "hostIP" not in str(body) and "managedFields" not in str(body)
    store.close()
