"""Hypothesis property tests: the native name table answers exactly as the
pure-Python reference model (tests/support/oracles/names.py) on random tables built
from a small alphabet, so collisions, search expansions and wildcards meet."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

import pymesh
from pymesh import NameTable
from support.oracles.names import OracleNameTable

LABELS = ["a", "b", "db", "svc", "ns1", "ns2", "cluster", "local", "corp", "example", "x-1", "A", "_srv"]
NAMESPACES = ["ns1", "ns2", "default"]
SEARCH = ["ns1.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example", "example"]
IPS = ["10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2", "192.0.2.7", "2001:db8::7"]

label = st.sampled_from(LABELS)
name = st.lists(label, min_size=1, max_size=5).map(".".join)
maybe_dot = st.sampled_from(["", "."])


@st.composite
def entries(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["k8s", "k8s", "external", "wildcard", "junk"]))
    ns = draw(st.sampled_from(NAMESPACES))
    short = draw(st.sampled_from(["a", "b", "db", "db.a"]))
    if kind == "k8s":
        host = f"{short}.{ns}.svc.cluster.local" + draw(maybe_dot)
        e: dict[str, Any] = {"hostname": host, "registry": "Kubernetes", "shortname": short, "namespace": ns}
    elif kind == "wildcard":
        e = {"hostname": "*." + draw(name), "registry": "External"}
    else:
        e = {
            "hostname": draw(name) + draw(maybe_dot),
            "registry": draw(st.sampled_from(["External", "", "Kubernetes"])),
        }
        if e["registry"] == "Kubernetes" and draw(st.booleans()):
            e.update(shortname=short, namespace=ns)
    e["ips"] = draw(st.lists(st.sampled_from(IPS), max_size=3))
    if draw(st.integers(0, 5)) == 0:
        e["alt_hosts"] = draw(st.lists(name | name.map(lambda n: "*." + n), max_size=2))
    if kind == "junk" and draw(st.integers(0, 9)) == 0:
        e["ips"] = [*e["ips"], draw(st.sampled_from(["10.0.0.300", "", "fd00::g"]))]
    return e


config = st.fixed_dictionaries(
    {
        "namespace": st.sampled_from(["", *NAMESPACES]),
        "domain": st.sampled_from(["cluster.local", "corp.example"]),
        "search": st.lists(st.sampled_from(SEARCH), max_size=4),
    }
)


def native_answer(t: NameTable, q: str) -> tuple[Any, ...] | None:
    m = t.lookup(q)
    return None if m is None else (m.canonical, m.form, m.search_index, m.ipv4, m.ipv6)


def queries_for(es: list[dict[str, Any]], search: list[str], extra: list[str]) -> list[str]:
    qs = list(extra)
    for e in es:
        host = str(e["hostname"]).rstrip(".").replace("*", "w")
        forms = [host]
        if e.get("shortname"):
            forms += [e["shortname"], f"{e['shortname']}.{e.get('namespace', '')}"]
        for f in forms:
            qs.append(f.upper())
            qs += [f"{f}.{s}" for s in search[:2]]
    return qs


@given(st.lists(entries(), max_size=12), config, st.lists(name, max_size=8))
def test_native_matches_the_reference_model(es: list[dict[str, Any]], cfg: dict[str, Any], extra: list[str]) -> None:
    try:
        oracle = OracleNameTable(es, **cfg)
    except ValueError as e:
        try:
            NameTable.from_entries(es, **cfg)
        except pymesh.PymeshError as n:
            assert str(n) == str(e)
            return
        raise AssertionError(f"native accepted what the oracle rejected: {e}") from None
    table = NameTable.from_entries(es, **cfg)
    assert len(table) == len(oracle) and table.skipped == oracle.skipped
    qs = queries_for(es, cfg["search"], extra)
    for q in qs:
        assert native_answer(table, q) == oracle.lookup(q), q
    batch = table.lookup_many(qs, "AAAA")
    assert batch == [None if (r := oracle.lookup(q)) is None else r[4] for q in qs]


@given(st.text(max_size=80) | st.binary(max_size=80).map(lambda b: b.decode("latin-1")))
def test_arbitrary_query_strings_never_crash_and_agree(q: str) -> None:
    es = [
        {
            "hostname": "a.ns1.svc.cluster.local",
            "ips": ["10.0.0.1"],
            "registry": "Kubernetes",
            "shortname": "a",
            "namespace": "ns1",
        },
        {"hostname": "*.example", "ips": ["10.0.0.2"]},
    ]
    table = NameTable.from_entries(es, namespace="ns1", search=["ns1.svc.cluster.local"])
    oracle = OracleNameTable(es, namespace="ns1", search=["ns1.svc.cluster.local"])
    assert native_answer(table, q) == oracle.lookup(q)
