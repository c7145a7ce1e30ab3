"""``pymesh dns lookup``, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.paths import ROOT

TABLE = ROOT / "examples" / "nametable.json"
SEARCH = "default.svc.cluster.local svc.cluster.local cluster.local"


def pymesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pymesh", *args], capture_output=True, text=True, timeout=60)


def test_lookup_known_name_exits_0_and_prints_records() -> None:
    r = pymesh("dns", "lookup", "--table", str(TABLE), "--search", SEARCH, "Product")
    assert r.returncode == 0, r.stderr
    assert "Product.\t30\tIN\tA\t10.96.0.20" in r.stdout
    assert "product.default.svc.cluster.local." in r.stdout


def test_lookup_unknown_name_exits_2() -> None:
    r = pymesh("dns", "lookup", "--table", str(TABLE), "www.example.org")
    assert r.returncode == 2
    assert "not in the name table" in r.stdout


def test_lookup_json_nodata_and_search_expansion() -> None:
    r = pymesh(
        "dns", "lookup", "--table", str(TABLE), "--search", SEARCH, "--type", "aaaa", "--json",
        "product.default.svc.cluster.local.svc.cluster.local",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["known"] is True and out["rcode"] == "NOERROR" and out["answers"] == []
    assert (out["canonical"], out["form"], out["search_index"]) == ("product.default.svc.cluster.local", "hostname", 1)


def test_namespace_decides_bare_names() -> None:
    assert pymesh("dns", "lookup", "--table", str(TABLE), "--namespace", "bookinfo", "reviews").returncode == 0
    assert pymesh("dns", "lookup", "--table", str(TABLE), "--namespace", "default", "reviews").returncode == 2


def test_bad_table_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("table:\n  x.example:\n    ips: [not-an-ip]\n")
    r = pymesh("dns", "lookup", "--table", str(bad), "x.example")
    assert r.returncode == 1
    assert 'pymesh: error: entry "x.example": ips[0]: "not-an-ip" is not an IPv4 or IPv6 address' in r.stderr
    assert "Traceback" not in r.stderr
