"""``pymesh apply -f`` / ``pymesh delete -f``: configuration whose source of truth is the store
(pymesh.controlplane.applied). On SQLite and on a real 3-member etcd: an applied directory is
served over xDS by a running control plane within its watch interval; a file with one invalid
object is refused naming file, object and field, and nothing changes (store, serving); delete
takes objects off xDS; ``pymesh get`` shows each object's source; a conflict with the config
directory is a duplicate; two control planes on one etcd prefix both serve what was applied once."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster

from pymesh.cli import main
from pymesh.controlplane import ControlPlane
from pymesh.controlplane.backend import StoreBackend, open_store
from pymesh.controlplane.store import Store
from pymesh.mesh.xds import CDS
from support.cp import AdsStream, pymesh_cli, vm_node
from support.etcd import EtcdCluster
from support.wait import wait_until

_prefixes = itertools.count()
WATCH = 0.1


def service(name: str, ip: str, port: int = 80) -> str:
    return (
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n"
        f"spec: {{clusterIP: {ip}, ports: [{{name: http, port: {port}}}]}}\n"
    )


def cluster(name: str, port: int = 80) -> str:
    return f"outbound|{port}||{name}.default.svc.cluster.local"


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    c = EtcdCluster().start()
    yield c
    c.stop()


class Where:
    """A store location as the CLI takes it (``--data-dir`` or ``--store``) and as a control plane does."""

    def __init__(self, flags: list[str], store: str | None, data: Path) -> None:
        self.flags, self.store, self.data = flags, store, data

    def open(self) -> StoreBackend:
        return open_store(self.store) if self.store else Store(self.data)

    def controlplane(self, cfg: Path, data: Path | None = None) -> ControlPlane:
        return ControlPlane(
            cfg, xds_listen="127.0.0.1:0", data_dir=data or self.data, store=self.store, debounce=0.02,
            watch_interval=WATCH,
        ).start()  # fmt: skip


@pytest.fixture(params=["sqlite", "etcd"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Where:
    if request.param == "sqlite":
        return Where(["--data-dir", str(tmp_path / "data")], None, tmp_path / "data")
    cluster_: EtcdCluster = request.getfixturevalue("etcd")
    cluster_.wait_healthy(range(3))
    url = cluster_.url(f"/pymesh/apply-{next(_prefixes)}")
    return Where(["--store", url], url, tmp_path / "data")


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    d = tmp_path / "mesh"
    d.mkdir()
    (d / "base.yaml").write_text(service("base", "10.96.0.10"))
    return d


def cds_names(stream: AdsStream, timeout: float = 10.0) -> set[str]:
    r = stream.recv(timeout)
    assert r.type_url == CDS
    stream.ack(r)
    out = set()
    for a in r.resources:
        c = Cluster()
        a.Unpack(c)
        out.add(c.name)
    return out


def wait_cds(stream: AdsStream, want: set[str], absent: frozenset[str] = frozenset()) -> set[str]:
    """CDS pushes (each ACKed) until one holds every name of ``want`` and none of ``absent``."""
    deadline = time.monotonic() + 15
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = cds_names(stream, timeout=max(0.1, deadline - time.monotonic()))
        if want <= seen and not (absent & seen):
            return seen
    raise AssertionError(f"CDS never held {sorted(want)} without {sorted(absent)}; last: {sorted(seen)}")


def test_apply_serve_refuse_get_delete(
    where: Where, cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    apply_dir = tmp_path / "applied"
    (apply_dir / "sub").mkdir(parents=True)
    (apply_dir / "a.yaml").write_text(service("alpha", "10.96.1.1"))
    (apply_dir / "sub" / "b.yaml").write_text(service("beta", "10.96.1.2", 81))
    cp = where.controlplane(cfg)
    stream = AdsStream(cp.port, vm_node("127.0.0.7", group=""))
    try:
        stream.send(CDS)
        assert cds_names(stream) == {cluster("base")}

        # apply a directory: in the store, then served within the watch interval
        assert main(["apply", "-f", str(apply_dir), *where.flags]) == 0
        out = capsys.readouterr().out
        assert "service/alpha created" in out and "service/beta created" in out
        store = where.open()
        assert [(k, ns, n) for k, ns, n, _, _ in store.applied()] == [
            ("Service", "default", "alpha"),
            ("Service", "default", "beta"),
        ]
        wait_cds(stream, {cluster("base"), cluster("alpha"), cluster("beta", 81)})
        sources = {o.key: o.source for o in cp.objects()}
        assert sources[("Service", "default", "alpha")] == "store:applied/Service/default/alpha"
        assert sources[("Service", "default", "base")].endswith("base.yaml")

        # the same again: unchanged, nothing written
        version = store.applied_version()
        assert main(["apply", "-f", str(apply_dir), *where.flags]) == 0
        assert "service/alpha unchanged" in capsys.readouterr().out
        assert store.applied_version() == version

        # one invalid object among valid ones: refused whole, naming file/object/field; nothing changes
        bad = tmp_path / "bad.yaml"
        bad.write_text(
            service("gamma", "10.96.1.3")
            + "---\n"
            + "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: default}\n"
            + "spec: {clusterIP: 10.96.1.4, ports: [{name: http, port: 70000}]}\n"
        )
        before = store.applied()
        assert main(["apply", "-f", str(bad), *where.flags]) == 1
        err = capsys.readouterr().err
        assert f"{bad}: Service default/broken: spec.ports[0].port" in err and "nothing applied" in err
        assert store.applied() == before and store.applied_version() == version
        assert stream.no_response(wait=WATCH * 5)
        assert not any(o.key[2] in ("gamma", "broken") for o in cp.objects())

        # pymesh get: the applied objects with their source
        assert main(["get", "svc", "-o", "wide", *where.flags]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split()[-1] == "SOURCE"
        rows = {line.split()[0]: line.split()[-1] for line in table[1:]}
        assert rows["alpha"] == "applied" and rows["beta"] == "applied"
        assert rows["base"] == f"file:{cfg / 'base.yaml'}"
        got = subprocess.run(
            [*pymesh_cli(), "get", "svc", "alpha", "-o", "json", *where.flags],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["metadata"]["annotations"]["pymesh.io/source"] == "applied"
        # `pymesh get -o yaml | pymesh apply -f -`: the source annotation is not stored, so unchanged
        got = subprocess.run(
            [*pymesh_cli(), "get", "svc", "alpha", "-o", "yaml", *where.flags],
            capture_output=True,
            text=True,
            timeout=60,
        )
        again = subprocess.run(
            [*pymesh_cli(), "apply", "-f", "-", *where.flags],
            input=got.stdout,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 0 and again.stdout.strip() == "service/alpha unchanged", again.stderr
        assert store.applied_version() == version

        # delete -f: gone from the store and from xDS; deleting again is NotFound
        assert main(["delete", "-f", str(apply_dir / "a.yaml"), *where.flags]) == 0
        assert "service/alpha deleted" in capsys.readouterr().out
        wait_cds(stream, {cluster("base"), cluster("beta", 81)}, absent=frozenset({cluster("alpha")}))
        assert main(["delete", "-f", str(apply_dir / "a.yaml"), *where.flags]) == 1
        assert "NotFound" in capsys.readouterr().err
        assert main(["delete", "-f", str(apply_dir / "a.yaml"), "--ignore-not-found", *where.flags]) == 0
        store.close()
    finally:
        stream.close()
        cp.stop()


def port_of(cp: ControlPlane, name: str) -> int:
    (o,) = [o for o in cp.objects() if o.key == ("Service", "default", name)]
    return int(o.raw["spec"]["ports"][0]["port"])


def test_applied_objects_are_read_at_start_and_conflicts_are_duplicates(
    where: Where, cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Applied before any control plane runs: served from its start. The same object in the config
    directory and applied: the one held first stays, the other is reported as a duplicate."""
    f = tmp_path / "svc.yaml"
    f.write_text(service("alpha", "10.96.1.1") + "---\n" + service("base", "10.96.9.9", 99))
    assert main(["apply", "-f", str(f), *where.flags]) == 0
    capsys.readouterr()
    # The directory's copy newer than the applied one (set, not touched: the file system's clock is
    # coarser than time.time(), so a touch right after the apply may stamp an earlier time).
    store = where.open()
    at = {n: t for _, _, n, t, _ in store.applied()}["base"]
    store.close()
    os.utime(cfg / "base.yaml", (at + 1, at + 1))
    cp = where.controlplane(cfg)
    try:
        held = {o.key: o for o in cp.objects()}
        assert held[("Service", "default", "alpha")].source == "store:applied/Service/default/alpha"
        assert held[("Service", "default", "base")].source == "store:applied/Service/default/base"
        (dup,) = [e for e in cp.errors if "duplicate" in str(e)]
        assert dup.file == str(cfg / "base.yaml") and dup.obj == "Service default/base"
        # Re-applied with a change: the applied copy still holds the key, the change is served.
        f.write_text(service("base", "10.96.9.9", 98))
        assert main(["apply", "-f", str(f), *where.flags]) == 0
        assert "service/base configured" in capsys.readouterr().out
        wait_until(lambda: port_of(cp, "base") == 98, timeout=15)
    finally:
        cp.stop()


def test_two_control_planes_on_one_etcd_prefix_serve_an_object_applied_once(etcd: EtcdCluster, tmp_path: Path) -> None:
    etcd.wait_healthy(range(3))
    url = etcd.url(f"/pymesh/apply-{next(_prefixes)}")
    where = Where(["--store", url], url, tmp_path / "data")
    cfg = tmp_path / "mesh"
    cfg.mkdir()
    cps = [where.controlplane(cfg, tmp_path / f"data{i}") for i in range(2)]
    streams = [AdsStream(cp.port, vm_node("127.0.0.7", group="")) for cp in cps]
    try:
        for s in streams:
            s.send(CDS)
            assert cds_names(s) == set()
        (tmp_path / "one.yaml").write_text(service("shared", "10.96.2.1"))
        assert main(["apply", "-f", str(tmp_path / "one.yaml"), *where.flags]) == 0
        for s in streams:
            wait_cds(s, {cluster("shared")})
        assert main(["delete", "-f", str(tmp_path / "one.yaml"), *where.flags]) == 0
        for s in streams:
            wait_cds(s, set(), absent=frozenset({cluster("shared")}))
    finally:
        for s in streams:
            s.close()
        for cp in cps:
            cp.stop()


def test_merge_rule_held_wins_else_the_older() -> None:
    from pymesh.controlplane.applied import merge, source_of
    from pymesh.controlplane.resources import LoadResult, load_documents

    def result(source: str) -> LoadResult:
        r = LoadResult()
        load_documents(service("x", "10.96.3.1"), source, r)
        return r

    key = ("Service", "default", "x")
    applied_src = source_of(key)
    for owners, applied_at, mtime_ns, winner in (
        ({}, 10.0, 20 * 10**9, applied_src),  # applied first
        ({}, 30.0, 20 * 10**9, "f.yaml"),  # the file first
        ({key: "f.yaml"}, 10.0, 20 * 10**9, "f.yaml"),  # held wins over older
        ({key: applied_src}, 30.0, 20 * 10**9, applied_src),
    ):
        out = merge(result("f.yaml"), result(applied_src), {key: applied_at}, {"f.yaml": mtime_ns}, owners)
        assert [o.source for o in out.objects] == [winner]
        (err,) = out.errors
        assert err.file == ("f.yaml" if winner == applied_src else applied_src) and winner in str(err)
