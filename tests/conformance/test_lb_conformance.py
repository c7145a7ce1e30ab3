"""The shared lbtable conformance cases (tests/cases/lb.cases) through the
Python API, each priority case also checked against the pure-Python oracle
and each classification against the oracle's istio-iptables model."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from pymesh import PymeshError, load_clusters
from pymesh.lbtable import RedirectTable
from support.oracles.lb import classify, priority_load
from support.paths import CASES


@dataclass
class Case:
    name: str
    line: int
    clusters: Any = None
    redirect: Any = None
    checks: list[tuple[int, str]] = field(default_factory=list)


def parse_cases() -> list[Case]:
    cases: list[Case] = []
    for n, raw in enumerate((CASES / "lb.cases").read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word == "case":
            cases.append(Case(rest, n))
        elif word == "clusters":
            cases[-1].clusters = json.loads(rest)
        elif word == "redirect":
            cases[-1].redirect = json.loads(rest)
        elif word in ("load", "pick", "error", "classify", "assign"):
            cases[-1].checks.append((n, line))
        else:
            raise AssertionError(f"lb.cases:{n}: unknown directive {word!r}")
    return cases


CASE_LIST = parse_cases()


def _counts(cluster: dict[str, Any]) -> list[tuple[int, int, int]]:
    """(total, healthy, degraded) per priority from the cluster's endpoints."""
    per: dict[int, list[int]] = {}
    for g in cluster.get("load_assignment", {}).get("endpoints", []):
        c = per.setdefault(g.get("priority", 0), [0, 0, 0])
        for e in g.get("lb_endpoints", []):
            h = e.get("health_status", "UNKNOWN")
            c[0] += 1
            c[1] += h in ("UNKNOWN", "HEALTHY")
            c[2] += h == "DEGRADED"
    top = max(per, default=0)
    return [tuple(per.get(p, [0, 0, 0])) for p in range(top + 1)]  # type: ignore[misc]


def _threshold(cluster: dict[str, Any]) -> int:
    v = cluster.get("common_lb_config", {}).get("healthy_panic_threshold")
    return 50 if v is None else round(v.get("value", 0))


def _opf(cluster: dict[str, Any]) -> int:
    return int(cluster.get("load_assignment", {}).get("policy", {}).get("overprovisioning_factor", 140))


def _ranges(doc: dict[str, Any], key: str, default: list[str]) -> list[str]:
    v = doc.get(key, default)
    return [x.strip() for x in v.split(",")] if isinstance(v, str) else list(v)


@pytest.mark.parametrize("case", CASE_LIST, ids=[c.name for c in CASE_LIST])
def test_case(case: Case) -> None:
    errors = [line for _, line in case.checks if line.startswith("error ")]
    if errors:
        want = errors[0][len("error ") :]
        with pytest.raises(PymeshError) as exc:
            if case.clusters is not None:
                load_clusters(case.clusters, seed=1)
            else:
                RedirectTable.from_dict(case.redirect)
        assert want in str(exc.value)
        return
    table = load_clusters(case.clusters, seed=1) if case.clusters is not None else None
    redirect = RedirectTable.from_dict(case.redirect) if case.redirect is not None else None
    by_name = {c["name"]: c for c in case.clusters or []}
    for n, line in case.checks:
        if line.startswith("assign "):
            assert table is not None
            assignments = json.loads(line[len("assign ") :])
            table.load_assignments(assignments)
            # The oracle follows: each cluster now has the assignment's endpoints.
            for a in assignments:
                by_name[a["cluster_name"]] = {**by_name[a["cluster_name"]], "load_assignment": a}
            continue
        lhs, _, rhs = line.partition(" -> ")
        words = lhs.split()
        if words[0] == "load":
            assert table is not None
            got = table.priority_load(words[1])
            parts = rhs.split()
            want = {
                "healthy": [int(x) for x in parts[1].split(",")],
                "degraded": [int(x) for x in parts[3].split(",")],
                "panic": [x == "yes" for x in parts[5].split(",")],
            }
            assert {k: got[k] for k in want} == want, f"lb.cases:{n}"
            c = by_name[words[1]]
            oracle = priority_load(_counts(c), _opf(c), _threshold(c))
            assert {k: oracle[k] for k in want} == want, f"lb.cases:{n}: the oracle disagrees"
        elif words[0] == "pick":
            assert table is not None
            key = words[2] if len(words) > 2 else None
            got_pick = table.pick(words[1], key)
            assert (got_pick or "none") == rhs, f"lb.cases:{n}"
        elif words[0] == "classify":
            assert redirect is not None
            verdict, name = redirect.classify(words[1], int(words[2]))
            want_v, _, want_name = rhs.partition(" ")
            assert (verdict, name) == (want_v, want_name or None), f"lb.cases:{n}"
            doc = case.redirect
            services = [(s["address"], s["port"], s["cluster"]) for s in doc.get("services", [])]
            assert classify(
                services,
                _ranges(doc, "include_ip_ranges", ["*"]),
                _ranges(doc, "exclude_ip_ranges", []),
                doc.get("exclude_ports", []),
                words[1],
                int(words[2]),
            ) == (verdict, name), f"lb.cases:{n}: the oracle disagrees"


def test_every_directive_kind_is_covered() -> None:
    kinds = {line.split()[0] for c in CASE_LIST for _, line in c.checks}
    assert kinds == {"load", "pick", "error", "classify", "assign"}
