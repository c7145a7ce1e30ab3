"""Python driver of the shared conformance cases (tests/cases/names.cases),
run against the native module through every Python input path."""

from __future__ import annotations

import json

import pytest

import pymesh
from pymesh import NameTable
from pymesh.proto import nds
from support.cases import Case, load_cases, result_tokens

CASES = load_cases()


def build(case: Case, via: str) -> NameTable:
    cfg = case.config
    if via == "json":
        return NameTable.from_json(case.table, **cfg)
    doc = json.loads(case.table)
    if via == "document":
        return NameTable.from_document(doc, **cfg)
    if via == "entries":
        entries = [{"hostname": h, **info} for h, info in sorted(doc["table"].items())]
        return NameTable.from_entries(entries, **cfg)
    msg = nds.NameTable()
    for host, info in sorted(doc["table"].items()):
        target = msg.table[host]
        for k, v in info.items():
            if k in REPEATED:
                getattr(target, k).extend(v)
            else:
                setattr(target, k, v)
    return NameTable.from_nds(msg, **cfg)


REPEATED = ("ips", "alt_hosts")


def protobuf_can_hold(case: Case) -> bool:
    """Wrong-type cases (a string where a list belongs) have no protobuf form."""
    doc = json.loads(case.table)
    return all(isinstance(v, list) == (k in REPEATED) for info in doc["table"].values() for k, v in info.items())


PARAMS = [
    pytest.param(case, via, id=f"{case.title}-{via}")
    for case in CASES
    for via in ("json", "document", "entries", "nds")
    if via != "nds" or protobuf_can_hold(case)
]


@pytest.mark.parametrize(("case", "via"), PARAMS)
def test_case(case: Case, via: str) -> None:
    if case.error is not None:
        with pytest.raises(pymesh.PymeshError) as e:
            build(case, via)
        assert case.error in str(e.value)
        return
    table = build(case, via)
    for x in case.expects:
        m = table.lookup(x.query)
        got = ["unknown"] if m is None else result_tokens(m.canonical, m.form, m.search_index, m.ipv4, m.ipv6, x.qtype)
        assert got == x.tokens, f"{x.query} {x.qtype}"
        many = table.lookup_many([x.query], x.qtype)[0]
        assert many == (None if m is None else tuple(got[2:]))


def test_the_cases_file_covers_every_form() -> None:
    forms = {t.split("@")[0] for c in CASES for x in c.expects for t in x.tokens[1:2]}
    assert forms >= {"hostname", "alt_host", "name.namespace.svc", "name.namespace", "name", "wildcard"}
    assert sum(1 for c in CASES if c.error) >= 5
