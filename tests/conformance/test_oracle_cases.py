"""The shared conformance cases (tests/cases/names.cases) run through the
pure-Python reference model, so the oracle the property tests trust is held
to the same list as the native table."""

from __future__ import annotations

import ipaddress
import json

import pytest

from support.cases import Case, load_cases, result_tokens
from support.oracles.names import OracleNameTable, format_ipv6, normalize_query_name, rust_debug_str

CASES = load_cases()


def test_cases_file_is_complete() -> None:
    assert len(CASES) > 20, "cases file looks truncated"
    assert all(c.table for c in CASES), [c.title for c in CASES if not c.table]
    assert all(c.expects or c.error for c in CASES), "a case checks nothing"


@pytest.mark.parametrize("case", CASES, ids=[c.title for c in CASES])
def test_case(case: Case) -> None:
    doc = json.loads(case.table)
    if case.error is not None:
        with pytest.raises(ValueError) as err:
            OracleNameTable.from_document(doc, source_name="<case>", **case.config)
        assert case.error in str(err.value)
        return
    table = OracleNameTable.from_document(doc, source_name="<case>", **case.config)
    failures = []
    for query, qtype, want in case.expects:
        hit = table.lookup(query)
        got = ["unknown"] if hit is None else result_tokens(*hit, qtype=qtype)
        if got != want:
            failures.append(f"{query} {qtype}: want {want}, got {got}")
    assert not failures, "\n".join(failures)


# Checks of the oracle's own emulation of Rust behaviour, with the values the
# native code produces (std's Display and Debug, checked against rustc 1.95).


@pytest.mark.parametrize(
    ("text", "rust"),
    [
        ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
        ("::1.2.3.4", "::102:304"),
        ("1:0:0:1:0:0:0:1", "1:0:0:1::1"),
        ("1:0:0:1:0:0:1:1", "1::1:0:0:1:1"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
        ("FD00::1", "fd00::1"),
        ("1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"),
        ("::ffff:0:1.2.3.4", "::ffff:0:102:304"),
        ("64:ff9b::1.2.3.4", "64:ff9b::102:304"),
    ],
)
def test_ipv6_text_matches_rust_display(text: str, rust: str) -> None:
    assert format_ipv6(ipaddress.IPv6Address(text)) == rust


@pytest.mark.parametrize("bad", ["fe80::1%eth0", "01.2.3.4", "1.2.3.4/32", "1.2.3.4.", "::ffff:1.2.3"])
def test_addresses_rust_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match=r'ips\[0\]: ".*" is not an IPv4 or IPv6 address'):
        OracleNameTable([{"hostname": "x.example", "ips": [bad]}])


def test_addresses_are_trimmed_like_rust() -> None:
    t = OracleNameTable([{"hostname": "x.example", "ips": ["\u00a010.0.0.1 \t"]}])
    assert t.lookup("x.example") == ("x.example", "hostname", None, ("10.0.0.1",), ())
    with pytest.raises(ValueError, match=r'"\\u\{1f\}10.0.0.1" is not'):  # Rust's trim keeps U+001F
        OracleNameTable([{"hostname": "x.example", "ips": ["\x1f10.0.0.1"]}])


def test_rust_debug_strings() -> None:
    assert (
        rust_debug_str("a'b\"c\\d\te\x01\u0301x\u00fc\u00a0\u00ad")
        == '"a\'b\\"c\\\\d\\te\\u{1}\\u{301}xü\\u{a0}\\u{ad}"'
    )


def test_query_names() -> None:
    assert normalize_query_name("FoO.Bar.") == "foo.bar"
    for bad in ["", ".", "a..b", ".a", "a.b..", "*.a", "ü.a", "a" * 254, "a" * 64 + ".b"]:
        assert normalize_query_name(bad) is None, bad


def test_entry_without_hostname_is_named_by_position() -> None:
    with pytest.raises(ValueError, match=r'^entry "#1": hostname: empty name$'):
        OracleNameTable([{"hostname": "a.example", "ips": ["10.0.0.1"]}, {"ips": ["10.0.0.2"]}])


def test_identical_hostnames_are_rejected() -> None:
    e = {"hostname": "x.example", "ips": ["10.0.0.1"]}
    with pytest.raises(ValueError, match=r'entry "x.example": hostname: duplicate entry for this hostname'):
        OracleNameTable([e, e])


def test_search_indices_count_the_list_without_repeats() -> None:
    t = OracleNameTable(
        [{"hostname": "db.internal", "ips": ["10.0.0.1"]}], search=["a.example", "a.example.", "b.example"]
    )
    assert t.search == ("a.example", "b.example")
    assert t.lookup("db.internal.b.example") == ("db.internal", "hostname", 1, ("10.0.0.1",), ())


def test_len_and_skipped() -> None:
    t = OracleNameTable([{"hostname": "a.example", "ips": ["10.0.0.1"]}, {"hostname": "b.example"}])
    assert (len(t), t.skipped) == (1, 1)
