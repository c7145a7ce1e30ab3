"""Hostile pushes (ztunnel's xDS-to-internal fuzzing, as properties): any
bytes in a CDS, EDS or NDS resource are applied or rejected with a
``PymeshError`` — never another exception — and a rejected push leaves
every serving table exactly as it was."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from pymesh import PymeshError
from pymesh.agent import Agent
from pymesh.mesh.xds import CDS, EDS, NDS
from pymesh.proto.nds import TYPE_URL as NDS_TYPE
from support.agent import C1, HOST, cla, eds_cluster, make_agent, name_table, pack, write_vm_files

C2 = "outbound|9090||other.default.svc.cluster.local"


def fresh_agent() -> Agent:
    d = Path(tempfile.mkdtemp())
    vm = write_vm_files(d / "vm", 1)
    agent = make_agent(vm, d / "state", 1, persist=False)
    agent.mesh.on_cds(CDS, [pack(eds_cluster(C1)), pack(eds_cluster(C2))], "1")
    agent.mesh.on_eds(EDS, [pack(cla(C1, "10.0.0.1", "10.0.0.2")), pack(cla(C2, "10.0.1.1"))], "1")
    agent.mesh.on_nds(NDS, [pack(name_table("10.96.0.20"), NDS_TYPE)], "1")
    return agent


AGENT = fresh_agent()


def view(a: Agent) -> Any:
    lb = {c: sorted(e["address"] for e in a.lb.endpoints(c)) for c in a.lb.clusters()}
    names = sorted((e["hostname"], tuple(e["ips"])) for e in a.names) if a.names is not None else None
    return lb, names, a.redirect.classify("10.96.0.20", 8080), dict(a.mesh.versions)


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    return bytes(b[:cut] if cut is not None else b)


edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6)
cuts = st.one_of(st.none(), st.integers(0, 400))


def check(kind: str, resources: list[Any]) -> None:
    global AGENT
    agent = AGENT
    before = view(agent)
    apply = {CDS: agent.mesh.on_cds, EDS: agent.mesh.on_eds, NDS: agent.mesh.on_nds}[kind]
    try:
        apply(kind, resources, "fuzz", persist=False)
    except PymeshError:
        event("rejected")
        assert view(agent) == before  # rejected: nothing changed
        return
    event("accepted")
    # Accepted (the mutation kept it valid): the tables are consistent with
    # what was pushed; start the next example from the known-good state.
    assert set(agent.lb.clusters()) <= set(agent.mesh.clusters)
    AGENT = fresh_agent()


@settings(max_examples=150, deadline=None)
@given(edits, cuts)
def test_mutated_clusters(e: list[tuple[int, int]], cut: int | None) -> None:
    good = eds_cluster(C1).SerializeToString()
    a = pack(eds_cluster(C1))
    a.value = mutate(good, e, cut)
    check(CDS, [a, pack(eds_cluster(C2))])


@settings(max_examples=150, deadline=None)
@given(edits, cuts)
def test_mutated_assignments(e: list[tuple[int, int]], cut: int | None) -> None:
    a = pack(cla(C1, "10.0.0.7", "10.0.0.8"))
    a.value = mutate(a.value, e, cut)
    check(EDS, [a])


@settings(max_examples=150, deadline=None)
@given(edits, cuts)
def test_mutated_name_tables(e: list[tuple[int, int]], cut: int | None) -> None:
    a = pack(name_table("10.96.0.21"), NDS_TYPE)
    a.value = mutate(a.value, e, cut)
    check(NDS, [a])


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([CDS, EDS, NDS]), st.sampled_from([CDS, EDS, NDS_TYPE, "x"]))
def test_arbitrary_bytes_and_type_urls(value: bytes, kind: str, type_url: str) -> None:
    from google.protobuf import any_pb2

    check(kind, [any_pb2.Any(type_url=type_url, value=value)])


def test_the_baseline_is_what_the_properties_protect() -> None:
    a = fresh_agent()
    lb, names, route, versions = view(a)
    assert versions == {CDS: "1", EDS: "1", NDS: "1"}
    assert lb == {C1: ["10.0.0.1:8080", "10.0.0.2:8080"], C2: ["10.0.1.1:8080"]}
    assert names == [(HOST, ("10.96.0.20",))] and route == ("cluster", C1)
