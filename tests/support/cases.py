"""Parser of the shared name table conformance cases (``tests/cases/names.cases``).

The format is described at the top of that file. This module only reads it:
it knows nothing of the native module or the reference model, so every
Python driver (the oracle's, the native module's) can share it. It parses the
way ``native/tests/conformance/names.rs`` does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypedDict

from support.paths import CASES

CASES_FILE = CASES / "names.cases"

QTYPES = ("A", "AAAA")


class Expect(NamedTuple):
    """``expect QUERY TYPE -> TOKENS``: ``tokens`` is ``["unknown"]``, or the
    canonical name, the form (``FORM`` or ``FORM@SEARCH_INDEX``) and the
    addresses of ``qtype`` in table order (none: NODATA)."""

    query: str
    qtype: str
    tokens: list[str]


class CaseConfig(TypedDict):
    """The table's configuration; pass it on as keyword arguments."""

    namespace: str
    domain: str
    search: list[str]


def _default_config() -> CaseConfig:
    return {"namespace": "", "domain": "cluster.local", "search": []}


@dataclass
class Case:
    title: str
    line: int
    config: CaseConfig = field(default_factory=_default_config)
    # The NDS NameTable in proto3 JSON, as written in the file.
    table: str = ""
    expects: list[Expect] = field(default_factory=list)
    # A substring of the build error, for cases whose table must be rejected.
    error: str | None = None


class CasesFormatError(ValueError):
    """The cases file itself is malformed."""


def parse_cases(text: str, source: str = "names.cases") -> list[Case]:
    cases: list[Case] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        directive, _, rest = line.partition(" ")

        def fail(msg: str, lineno: int = lineno) -> CasesFormatError:
            return CasesFormatError(f"{source}:{lineno}: {msg}")

        if directive == "case":
            cases.append(Case(title=rest, line=lineno))
            continue
        if not cases:
            raise fail("directive before the first case")
        case = cases[-1]
        if directive == "config":
            for kv in rest.split():
                key, sep, value = kv.partition("=")
                if not sep:
                    raise fail(f"config expects KEY=VALUE, got {kv!r}")
                if key == "namespace":
                    case.config["namespace"] = value
                elif key == "domain":
                    case.config["domain"] = value
                elif key == "search":
                    case.config["search"] = value.split(",")
                else:
                    raise fail(f"unknown config key {key!r}")
        elif directive == "table":
            case.table = rest
        elif directive == "expect":
            lhs, sep, rhs = rest.partition(" -> ")
            query, sep2, qtype = lhs.partition(" ")
            if not sep or not sep2:
                raise fail("expect QUERY TYPE -> RESULT")
            if qtype not in QTYPES:
                raise fail(f"unknown query type {qtype!r}")
            case.expects.append(Expect(query, qtype, rhs.split()))
        elif directive == "error":
            case.error = rest
        else:
            raise fail(f"unknown directive {directive!r}")
    return cases


def load_cases(path: Path = CASES_FILE) -> list[Case]:
    return parse_cases(path.read_text(encoding="utf-8"), source=path.name)


def result_tokens(
    canonical: str, form: str, search_index: int | None, ipv4: Iterable[str], ipv6: Iterable[str], qtype: str
) -> list[str]:
    """A lookup result as the tokens an ``expect`` line lists."""
    tag = form if search_index is None else f"{form}@{search_index}"
    addrs: Iterable[str]
    if qtype == "A":
        addrs = ipv4
    elif qtype == "AAAA":
        addrs = ipv6
    else:
        raise ValueError(f"unknown query type {qtype!r}")
    return [canonical, tag, *addrs]
