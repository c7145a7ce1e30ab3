"""Hostile configuration: any document (mutated from valid ones or built at
random) is either accepted or rejected with a ValidationError naming where;
nothing else escapes, and whatever is accepted can be associated and turned
into xDS without error."""

from __future__ import annotations

import copy
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from pymesh.controlplane import ValidationError
from pymesh.controlplane import generators as gen
from pymesh.controlplane.nametable import NdsView, build_name_table
from pymesh.controlplane.registry import build_registry
from pymesh.controlplane.resources import parse_object
from pymesh.controlplane.vips import VipAllocator
from support.paths import EXAMPLE_MESH

EXAMPLE = EXAMPLE_MESH
SEEDS = [d for f in sorted(EXAMPLE.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
SEEDS += [
    {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "x"},
        "spec": {
            "host": "product",
            "trafficPolicy": {
                "loadBalancer": {
                    "localityLbSetting": {"distribute": [{"from": "r1/*", "to": {"r1/*": 80, "r2/*": 20}}]}
                },
                "outlierDetection": {"consecutive5xxErrors": 3, "interval": "1s"},
            },
            "subsets": [{"name": "v1", "labels": {"version": "v1"}}],
        },
    },
    {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "ServiceEntry",
        "metadata": {"name": "se", "namespace": "default"},
        "spec": {
            "hosts": ["a.example.com"],
            "resolution": "STATIC",
            "ports": [{"number": 80, "name": "http", "targetPort": 8080}],
            "endpoints": [{"address": "10.0.0.1", "ports": {"http": 9090}, "weight": 2, "locality": "r/z"}],
        },
    },
    {
        # What only sidecars get translated: rewrite, headers, mirrors, redirect ports.
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "vs", "namespace": "default"},
        "spec": {
            "hosts": ["product"],
            "http": [
                {
                    "match": [{"uri": {"exact": "/a"}}],
                    "rewrite": {"uri": "/b", "authority": "x.example"},
                    "headers": {"request": {"set": {"x-a": "1"}, "remove": ["x-b"]}, "response": {"add": {"x-c": "2"}}},
                    "mirror": {"host": "product", "subset": "v1"},
                    "mirrorPercentage": {"value": 5},
                    "route": [{"destination": {"host": "product"}, "headers": {"request": {"add": {"x-d": "3"}}}}],
                },
                {"match": [{"uri": {"prefix": "/r"}}], "redirect": {"uri": "/s", "derivePort": "FROM_REQUEST_PORT"}},
                {
                    "mirrors": [{"destination": {"host": "product"}, "percentage": {"value": 1}}],
                    "route": [
                        {"destination": {"host": "product", "subset": "v1"}, "weight": 3},
                        {"destination": {"host": "product"}, "weight": 1},
                    ],
                },
            ],
        },
    },
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["None", "8080", "grpc", "10.0.0.1", "*", "unix:///x", "1s", "ROUND_ROBIN", "DNS", "STATIC"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


def check(doc: Any) -> None:
    try:
        obj = parse_object(doc, source="fuzz.yaml")
    except ValidationError as e:
        assert str(e).startswith("fuzz.yaml: ")
        return
    reg = build_registry([obj, *[parse_object(s) for s in SEEDS[:3]]], vips=VipAllocator())
    for generator in ("grpc", "envoy"):
        gen.clusters(reg, generator)
    gen.endpoints(reg, gen.EdsView(network="n", locality="r1/z1"))
    gen.listeners(reg)
    gen.routes(reg)
    gen.sidecar_listeners(reg)
    gen.sidecar_routes(reg)
    build_name_table(reg, NdsView(dns_capture=True, families=frozenset({4}), network=""))


@given(st.sampled_from(range(len(SEEDS))), st.data())
def test_mutated_valid_objects_never_escape_as_other_errors(seed: int, data: st.DataObject) -> None:
    doc = copy.deepcopy(SEEDS[seed])
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths(doc)))
        if not path:
            continue
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        parent[path[-1]] = data.draw(values)
    check(doc)


@given(values)
def test_random_documents_never_escape_as_other_errors(doc: Any) -> None:
    check(doc)
