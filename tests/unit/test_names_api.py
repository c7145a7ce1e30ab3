"""The Python API of the name table: inputs, errors, iteration, swapping."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

import pymesh
from pymesh import NameTable
from pymesh.proto import nds

PRODUCT = {
    "hostname": "product.default.svc.cluster.local",
    "ips": ["10.96.0.20", "fd00::20"],
    "registry": "Kubernetes",
    "shortname": "product",
    "namespace": "default",
}


def test_from_entries_and_lookup() -> None:
    t = NameTable.from_entries([PRODUCT], namespace="default", search=["default.svc.cluster.local"])
    m = t.lookup("Product.")
    assert m is not None
    assert (m.canonical, m.form, m.search_index) == ("product.default.svc.cluster.local", "name", None)
    assert m.ipv4 == ("10.96.0.20",) and m.ipv6 == ("fd00::20",)
    assert m.addresses("aaaa") == ("fd00::20",)
    assert t.lookup("product.default.default.svc.cluster.local").search_index == 0  # type: ignore[union-attr]
    assert t.lookup("nope") is None
    assert "product" in t and "nope" not in t
    assert len(t) == 1 and t.namespace == "default" and t.domain == "cluster.local"


def test_search_accepts_a_resolv_conf_style_string() -> None:
    t = NameTable.from_entries([PRODUCT], namespace="x", search="default.svc.cluster.local  svc.cluster.local")
    assert t.search == ["default.svc.cluster.local", "svc.cluster.local"]
    assert t.lookup("product.default.svc.svc.cluster.local") is not None


def test_lookup_many_keeps_order_and_reports_nodata() -> None:
    t = NameTable.from_entries([PRODUCT, {"hostname": "v4.example", "ips": ["192.0.2.1"]}], namespace="default")
    assert t.lookup_many(["product", "missing", "v4.example"]) == [("10.96.0.20",), None, ("192.0.2.1",)]
    assert t.lookup_many(("product", "v4.example"), "AAAA") == [("fd00::20",), ()]
    assert t.lookup_many(iter(["product"])) == [("10.96.0.20",)]
    with pytest.raises(pymesh.PymeshError):
        t.lookup_many(["product"], "MX")
    with pytest.raises(pymesh.PymeshError):
        t.lookup_many([b"product"])  # type: ignore[list-item]


def test_iteration_gives_entries_back() -> None:
    t = NameTable.from_entries([PRODUCT, {"hostname": "Empty.example", "ips": []}])
    assert list(t) == [
        {
            "hostname": "product.default.svc.cluster.local",
            "ips": ["10.96.0.20", "fd00::20"],
            "registry": "Kubernetes",
            "shortname": "product",
            "namespace": "default",
        }
    ]
    assert t.skipped == 1


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"hostname": "a.example", "ips": ["10.0.0.256"]}, 'entry "a.example": ips[0]: "10.0.0.256" is not an IPv4'),
        ({"hostname": "", "ips": ["10.0.0.1"]}, 'entry "#0": hostname: empty name'),
        ({"hostname": "a" * 64 + ".example", "ips": ["10.0.0.1"]}, "is 64 characters long, the limit is 63"),
        ({"hostname": ("abcdefghi." * 26) + "x", "ips": ["10.0.0.1"]}, "the limit is 253"),
        ({"hostname": "bücher.example", "ips": ["10.0.0.1"]}, "punycode"),
        ({"hostname": "a.example", "ips": "10.0.0.1"}, 'entry "a.example": ips: expected a list of strings, got str'),
        ({"hostname": "a.example", "ips": [10]}, 'entry "a.example": ips[0]: expected a string, got int'),
        ({"hostname": 5, "ips": []}, 'entry "#0": hostname: expected a string, got int'),
        ({"hostname": "a.example", "ipz": []}, 'entry "a.example": ipz: unknown field'),
        ("a.example", 'entry "#0": (entry): expected a dict, got str'),
    ],
)
def test_bad_entries_raise_pymesh_errors_naming_the_entry(entry: object, message: str) -> None:
    with pytest.raises(pymesh.InvalidEntryError) as e:
        NameTable.from_entries([{"hostname": "ok.example", "ips": ["10.0.0.1"]}, entry])  # type: ignore[list-item]
    assert message in str(e.value).replace('"#1"', '"#0"')
    assert isinstance(e.value, pymesh.PymeshError)


def test_bad_config_is_a_config_error() -> None:
    with pytest.raises(pymesh.ConfigError, match="namespace"):
        NameTable.from_entries([], namespace="a.b")
    with pytest.raises(pymesh.ConfigError, match=r"search\[0\]"):
        NameTable.from_entries([], search=["bad..domain"])
    with pytest.raises(pymesh.ConfigError, match="domain"):
        NameTable.from_entries([], domain="")


def test_files_json_and_yaml(tmp_path: Path) -> None:
    doc = {"table": {"product.default.svc.cluster.local": {k: v for k, v in PRODUCT.items() if k != "hostname"}}}
    (tmp_path / "t.json").write_text(json.dumps(doc))
    (tmp_path / "t.yaml").write_text(
        "table:\n  product.default.svc.cluster.local:\n    ips: [10.96.0.20, 'fd00::20']\n"
        "    registry: Kubernetes\n    shortname: product\n    namespace: default\n"
    )
    for name in ("t.json", "t.yaml"):
        t = pymesh.load_name_table(tmp_path / name, namespace="default")
        assert t.lookup("product").ipv6 == ("fd00::20",)  # type: ignore[union-attr]
    assert NameTable.from_document(doc, namespace="default").lookup("product") is not None
    assert len(NameTable.from_json(json.dumps(doc))) == 1


def test_file_errors_say_where(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"table": {"a.example": {"ips": ["10.0.0.1"],}}}')
    with pytest.raises(pymesh.ParseError, match=r"bad\.json: .*line 1 column"):
        pymesh.load_name_table(tmp_path / "bad.json")
    with pytest.raises(pymesh.FileError, match=r"missing\.json"):
        pymesh.load_name_table(tmp_path / "missing.json")
    (tmp_path / "typo.yaml").write_text("tables: {}\n")
    with pytest.raises(pymesh.ParseError, match="unknown top-level field"):
        pymesh.load_name_table(tmp_path / "typo.yaml")


def test_from_nds_message_bytes_and_any() -> None:
    from google.protobuf import any_pb2

    msg = nds.NameTable()
    info = msg.table["product.default.svc.cluster.local"]
    info.ips.extend(["10.96.0.20", "fd00::20"])
    info.registry, info.shortname, info.namespace = "Kubernetes", "product", "default"
    msg.table["legacy.example"].ips.append("192.0.2.9")
    msg.table["legacy.example"].alt_hosts.append("old.example")
    wrapped = any_pb2.Any()
    wrapped.Pack(msg)
    assert wrapped.type_url == nds.TYPE_URL
    for source in (msg, msg.SerializeToString(), wrapped):
        t = NameTable.from_nds(source, namespace="default")
        assert t.lookup("product").ipv4 == ("10.96.0.20",)  # type: ignore[union-attr]
        assert t.lookup("old.example").form == "alt_host"  # type: ignore[union-attr]
    with pytest.raises(pymesh.ParseError, match="byte"):
        NameTable.from_nds(msg.SerializeToString()[:-3])
    other = any_pb2.Any(type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster", value=b"")
    with pytest.raises(pymesh.ParseError, match="expected"):
        NameTable.from_nds(other)


def test_live_table_swaps_whole_tables_while_readers_read() -> None:
    live = pymesh.LiveNameTable()
    assert live.lookup("h0.example") is None and live.current is None
    assert live.lookup_many(["a", "b"]) == [None, None]

    def table(gen: int) -> NameTable:
        ip = f"10.{gen // 256}.{gen % 256}.1"
        return NameTable.from_entries([{"hostname": f"h{i}.example", "ips": [ip]} for i in range(2000)])

    live.swap(table(0))
    stop = threading.Event()
    mixed: list[list[tuple[str, ...] | None]] = []

    def reader() -> None:
        while not stop.is_set():
            answers = live.lookup_many(["h0.example", "h1999.example"])
            if answers[0] != answers[1] or answers[0] is None:
                mixed.append(answers)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for th in threads:
        th.start()
    for gen in range(1, 30):
        live.swap(table(gen))
    stop.set()
    for th in threads:
        th.join()
    assert mixed == []
    assert live.generation == 30
    assert live.current is not None and live.lookup("h5.example").ipv4 == ("10.0.29.1",)  # type: ignore[union-attr]


def test_a_failed_build_leaves_the_serving_table_alone() -> None:
    live = pymesh.LiveNameTable(NameTable.from_entries([PRODUCT], namespace="default"))
    with pytest.raises(pymesh.InvalidEntryError):
        live.swap(NameTable.from_entries([PRODUCT, {"hostname": "x.example", "ips": ["nope"]}]))
    assert live.lookup("product") is not None and live.generation == 1


def test_resolv_conf(tmp_path: Path) -> None:
    p = tmp_path / "resolv.conf"
    p.write_text(
        "# c\nnameserver 10.0.0.2\nnameserver fd00::53 ; x\ndomain a.b\n"
        "search ns1.svc.cluster.local c.d\noptions ndots:5 rotate\n"
    )
    rc = pymesh.read_resolv_conf(p)
    assert rc.nameservers == ("10.0.0.2", "fd00::53")
    assert rc.search == ("ns1.svc.cluster.local", "c.d") and rc.ndots == 5
    assert pymesh.read_resolv_conf(tmp_path / "none") == pymesh.ResolvConf()
