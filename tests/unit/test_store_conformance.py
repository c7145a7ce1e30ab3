"""One suite for every control-plane store backend (pymesh.controlplane.backend.StoreBackend):
SQLite in a temporary directory and etcd on a real local 3-member cluster (tests/support/etcd.py).
Each test runs the same operations on each backend and asserts the same results; etcd's own
tests then kill members: one down (failover), two down (quorum lost: a clear error within the
deadline), and a restart (nothing written before is lost). Last, a ControlPlane on etcd
registers a VM and a second ControlPlane on the same etcd sees the entry after the first stops."""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pymesh.controlplane import ControlPlane, StoreError
from pymesh.controlplane.backend import EtcdOptions, StoreBackend, open_store
from pymesh.controlplane.etcdstore import EtcdStore
from pymesh.controlplane.store import Store
from support.cp import AdsStream, example_config, pymesh_cli, vm_node
from support.etcd import EtcdCluster
from support.wait import wait_until

_prefixes = itertools.count()


@pytest.fixture(params=["sqlite", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
    if request.param == "sqlite":
        s: StoreBackend = Store(tmp_path / "data")
    else:
        cluster: EtcdCluster = request.getfixturevalue("etcd")
        cluster.wait_healthy(range(3))  # a fault test before may have restarted members
        s = open_store(cluster.url(f"/pymesh/test-{next(_prefixes)}"))
    yield s
    s.close()


def doc(ns: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
            "metadata": {"namespace": ns, "name": name, "annotations": {"a": "b"}},
            "spec": {"address": "10.0.0.1", **extra}}  # fmt: skip


def test_registered_entries_round_trip_sorted_and_delete(store: StoreBackend) -> None:
    assert store.registered() == []
    store.put_registered(doc("b", "x"))
    store.put_registered(doc("a", "z"))
    store.put_registered(doc("a", "y/odd name%"))  # separators and escapes stay inside one key
    store.put_registered(doc("a", "z", weight=3))  # replaces
    assert [(d["metadata"]["namespace"], d["metadata"]["name"]) for d in store.registered()] == [
        ("a", "y/odd name%"),
        ("a", "z"),
        ("b", "x"),
    ]
    assert store.registered()[1] == doc("a", "z", weight=3)
    store.delete_registered("a", "z")
    store.delete_registered("a", "missing")  # deleting nothing is not an error
    assert [d["metadata"]["name"] for d in store.registered()] == ["y/odd name%", "x"]


def test_overlays_round_trip(store: StoreBackend) -> None:
    assert store.overlays() == {}
    body = {"metadata": {"annotations": {"istio.io/connectedAt": "t"}}, "status": {"conditions": [{"type": "Healthy"}]}}
    store.put_overlay("WorkloadEntry", "default", "vm", body)
    store.put_overlay("WorkloadEntry", "default", "vm2", {})
    store.put_overlay("WorkloadEntry", "default", "vm2", {"status": {}})
    assert store.overlays() == {
        ("WorkloadEntry", "default", "vm"): body,
        ("WorkloadEntry", "default", "vm2"): {"status": {}},
    }


def test_vip_records_with_release_times_and_deletions(store: StoreBackend) -> None:
    assert store.vips() == {} and store.vip_records() == {}
    store.add_vips({"a.example": ("240.240.0.1", "2001:2::1"), "b.example": ("240.240.0.2", "2001:2::2")})
    store.put_vips(
        {"b.example": ("240.240.0.2", "2001:2::2", 1700000000.25), "c.example": ("240.240.0.3", "2001:2::3", None)},
        ["a.example", "nothing"],
    )
    assert store.vip_records() == {
        "b.example": ("240.240.0.2", "2001:2::2", 1700000000.25),
        "c.example": ("240.240.0.3", "2001:2::3", None),
    }
    assert store.vips() == {"b.example": ("240.240.0.2", "2001:2::2"), "c.example": ("240.240.0.3", "2001:2::3")}
    # deleted and re-put in one call: the record stays (SQLite deletes, then inserts)
    store.put_vips({"c.example": ("240.240.0.9", "2001:2::9", None)}, ["c.example"])
    assert store.vip_records()["c.example"] == ("240.240.0.9", "2001:2::9", None)
    store.put_vips({}, [])


def test_configured_mirror_by_difference_and_rejected(store: StoreBackend) -> None:
    assert store.configured() == [] and store.rejected() == [] and store.configured_sources() == {}
    store.update_configured(
        [("Service", "default", "b", "svc.yaml", '{"spec": {"ports": [1]}}'),
         ("Service", "default", "a", "svc.yaml", '{"spec": {}}'),
         ("WorkloadGroup", "ns", "g", "wg.yaml", '{"x": "\\u00e9"}')],
        [],
        ["bad.yaml: Service default/c: spec.ports: required", "second"],
    )  # fmt: skip
    assert store.configured() == [
        ("Service", "default", "a", "svc.yaml", {"spec": {}}),
        ("Service", "default", "b", "svc.yaml", {"spec": {"ports": [1]}}),
        ("WorkloadGroup", "ns", "g", "wg.yaml", {"x": "é"}),
    ]
    assert store.rejected() == ["bad.yaml: Service default/c: spec.ports: required", "second"]
    store.update_configured([("Service", "default", "a", "other.yaml", '{"v": 2}')], [("Service", "default", "b")], [])
    assert store.configured_sources() == {
        ("Service", "default", "a"): "other.yaml",
        ("WorkloadGroup", "ns", "g"): "wg.yaml",
    }
    assert store.rejected() == []


def test_replace_configured_is_whole(store: StoreBackend) -> None:
    store.replace_configured([("Service", "default", "old", "a.yaml", {"k": 1})], ["r1"])
    store.replace_configured(
        [("Service", "default", "new", "b.yaml", {"k": 2}), ("Pod", "default", "p", "b.yaml", {"when": 1.5})], ["r2"]
    )
    assert store.configured() == [
        ("Pod", "default", "p", "b.yaml", {"when": 1.5}),
        ("Service", "default", "new", "b.yaml", {"k": 2}),
    ]
    assert store.rejected() == ["r2"]
    store.replace_configured([], [])
    assert store.configured() == [] and store.rejected() == []


def test_large_writes_span_etcd_txn_limits(store: StoreBackend) -> None:
    """300 objects: over etcd's 128 operations per txn, written in chunks; every one is there."""
    objects = [("Service", "default", f"s{i:03d}", "big.yaml", {"i": i, "pad": "x" * 2000}) for i in range(300)]
    store.replace_configured(objects, [f"r{i}" for i in range(200)])
    assert store.configured() == objects
    assert len(store.rejected()) == 200
    store.update_configured([], [("Service", "default", f"s{i:03d}") for i in range(0, 300, 2)], [])
    assert [o[2] for o in store.configured()] == [f"s{i:03d}" for i in range(1, 300, 2)]
    vips = {f"h{i}.example": (f"240.240.1.{i}", f"2001:2::1:{i:x}", None) for i in range(200)}
    store.put_vips(vips, [])
    assert store.vip_records() == vips


def test_applied_configuration_and_its_version(store: StoreBackend) -> None:
    """`pymesh apply`'s key space: upserts and deletes in one write, first-applied times kept as
    given, apart from the configured mirror; the version token changes with every change (puts,
    deletes, a delete alone) and only then."""
    v0 = store.applied_version()
    assert store.applied() == [] and store.applied_version() == v0
    store.put_applied(
        [("Service", "default", "b", 10.5, '{"spec": {"ports": [1]}}'),
         ("Service", "default", "a/odd%", 11.0, '{"spec": {}}'),
         ("WorkloadGroup", "ns", "g", 12.0, '{"x": "\u00e9"}')],
        [],
    )  # fmt: skip
    assert store.applied() == [
        ("Service", "default", "a/odd%", 11.0, {"spec": {}}),
        ("Service", "default", "b", 10.5, {"spec": {"ports": [1]}}),
        ("WorkloadGroup", "ns", "g", 12.0, {"x": "é"}),
    ]
    assert store.configured() == [] and store.configured_sources() == {}
    v1 = store.applied_version()
    assert v1 != v0 and store.applied_version() == v1
    store.update_configured([("Service", "default", "x", "f.yaml", "{}")], [], [])  # the mirror: not applied
    store.put_status("controlplane", {})
    assert store.applied_version() == v1
    store.put_applied([("Service", "default", "b", 10.5, '{"v": 2}')], [("Service", "default", "a/odd%")])
    v2 = store.applied_version()
    assert v2 not in (v0, v1)
    assert [(k, n, b) for k, _, n, _, b in store.applied()] == [
        ("Service", "b", {"v": 2}),
        ("WorkloadGroup", "g", {"x": "é"}),
    ]
    store.put_applied([], [("WorkloadGroup", "ns", "g"), ("Service", "default", "missing")])  # a delete alone
    v3 = store.applied_version()
    assert v3 not in (v0, v1, v2) and [r[2] for r in store.applied()] == ["b"]
    store.put_applied([], [("Service", "default", "b")])
    assert store.applied() == [] and store.applied_version() not in (v1, v2, v3)


def test_status_documents(store: StoreBackend) -> None:
    assert store.status("controlplane") is None
    store.put_status("controlplane", {"watcher": {"state": "failing", "since": 1.5}, "pid": 42})
    store.put_status("other", {})
    assert store.status("controlplane") == {"watcher": {"state": "failing", "since": 1.5}, "pid": 42}
    assert store.status("other") == {}


# etcd only ---------------------------------------------------------------------


def etcd_store(cluster: EtcdCluster, timeout: float = 5.0) -> EtcdStore:
    s = open_store(cluster.url(f"/pymesh/test-{next(_prefixes)}"), etcd=EtcdOptions(timeout=timeout))
    assert isinstance(s, EtcdStore)
    return s


def test_etcd_options_read_the_password_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYMESH_STORE_PASSWORD", "from-env")
    assert EtcdOptions.from_args(user="u").password == "from-env"
    (tmp_path / "pw").write_text("from-file\n")
    assert EtcdOptions.from_args(user="u", password_file=str(tmp_path / "pw")).password == "from-file"
    with pytest.raises(StoreError, match="--store-password-file"):
        EtcdOptions.from_args(password_file=str(tmp_path / "missing"))


def test_etcd_urls() -> None:
    s = EtcdStore.from_url("etcd://h1,h2:2380,[::1]:2381/pymesh/prod/", EtcdOptions())
    assert [str(e) for e in s.client.endpoints] == ["h1:2379", "h2:2380", "[::1]:2381"]
    assert s.prefix == "/pymesh/prod"
    assert EtcdStore.from_url("etcd://h1", EtcdOptions()).prefix == "/pymesh/default"
    for bad in ("etcd://", "etcd://h1:notaport", "zk://h1"):
        with pytest.raises(StoreError):
            open_store(bad)


@pytest.mark.timeout(180)
def test_etcd_one_member_down_then_two_then_back(etcd: EtcdCluster) -> None:
    etcd.wait_healthy(range(3))
    s = etcd_store(etcd, timeout=5.0)
    s.put_registered(doc("default", "before"))
    s.put_vips({"a.example": ("240.240.0.1", "2001:2::1", None)}, [])
    try:
        # The leader down, the worst member to lose: reads go on via the others at once (retried
        # through the election within the deadline); writes go on once a new leader is elected
        # (a write in flight during the election may fail as "may have been applied").
        leader = etcd.leader()
        etcd.kill(leader)
        t = time.monotonic()
        assert [d["metadata"]["name"] for d in s.registered()] == ["before"]
        wait_until(lambda: _writes(s, doc("default", "one-down")), timeout=10)
        s.update_configured([("Service", "default", "s", "f.yaml", "{}")], [], ["r"])
        assert [d["metadata"]["name"] for d in s.registered()] == ["before", "one-down"]
        assert time.monotonic() - t < 10.0

        # A follower down too: quorum lost. Every operation fails with a StoreError naming the
        # members, within the deadline (5 s) plus slack, never a hang.
        follower = next(i for i in range(3) if i != leader)
        etcd.kill(follower)
        survivor = next(i for i in range(3) if i not in (leader, follower))
        errors = []
        for op in (lambda: s.put_registered(doc("default", "lost")), s.registered, lambda: s.status("x")):
            t = time.monotonic()
            with pytest.raises(StoreError) as e:
                op()
            assert time.monotonic() - t < 5.0 + 2.0
            assert "etcd" in str(e.value) and etcd.endpoints[survivor] in str(e.value)
            errors.append(str(e.value))
        # The write either was refused (`no leader`: the survivor knew) or was proposed by a member
        # that did not know yet and got no answer: then it says so, and was not sent elsewhere.
        assert "no leader" in errors[0] or "may or may not have been applied" in errors[0], errors[0]

        # Members back: everything written before quorum was lost is there.
        etcd.start_member(leader, wait=False)
        etcd.start_member(follower, wait=False)
        etcd.wait_healthy(range(3), timeout=60)
        wait_until(lambda: _answers(s), timeout=30)
        names = [d["metadata"]["name"] for d in s.registered()]
        # "lost" is there only when its proposal sat in the survivor's log and was committed once
        # quorum came back: exactly why a write without an answer is never re-sent elsewhere.
        assert names in (["before", "one-down"], ["before", "lost", "one-down"]), errors[0]
        if "no leader" in errors[0]:
            assert "lost" not in names
        assert s.vip_records() == {"a.example": ("240.240.0.1", "2001:2::1", None)}
        assert s.configured() == [("Service", "default", "s", "f.yaml", {})] and s.rejected() == ["r"]
    finally:
        for i in range(3):
            if etcd.procs[i] is None:
                etcd.start_member(i, wait=False)
        etcd.wait_healthy(range(3), timeout=60)


def _writes(s: EtcdStore, d: dict[str, Any]) -> bool:
    try:
        s.put_registered(d)
        return True
    except StoreError:
        return False


def _answers(s: EtcdStore) -> bool:
    try:
        s.registered()
        return True
    except StoreError:
        return False


def test_etcd_too_large_value_is_a_clear_error(etcd: EtcdCluster) -> None:
    s = etcd_store(etcd)
    with pytest.raises(StoreError, match="over the"):
        s.put_vips({"x" * (2 << 20): ("240.240.0.1", "2001:2::1", None)}, [])
    # A single put: etcd's own answers, over --max-request-bytes (1.5 MiB) and over gRPC's limit.
    with pytest.raises(StoreError, match=r"request is too large.*--max-request-bytes"):
        s.put_registered(doc("default", "big", pad="x" * (1600 << 10)))
    with pytest.raises(StoreError, match=r"larger than max.*--max-request-bytes"):
        s.put_registered(doc("default", "big", pad="x" * (2 << 20)))
    assert s.registered() == []


# the control plane on etcd ---------------------------------------------------------

PORT = 18080
VM_IP = "127.0.0.3"
ENTRY = f"product-vm-{VM_IP}"


@pytest.mark.timeout(120)
def test_controlplane_on_etcd_keeps_registrations_across_instances(etcd: EtcdCluster, tmp_path: Path) -> None:
    etcd.wait_healthy(range(3))
    cfg = example_config(tmp_path / "mesh", PORT)
    url = etcd.url(f"/pymesh/cp-{next(_prefixes)}")

    def start() -> ControlPlane:
        return ControlPlane(
            cfg, xds_listen="127.0.0.1:0", data_dir=tmp_path / "data", store=url, grace_period=30, debounce=0.02
        ).start()

    cp1 = start()
    try:
        s = AdsStream(cp1.port, vm_node(VM_IP))
        from pymesh.mesh.xds import CDS

        s.send(CDS)
        s.ack(s.recv())
        entry = cp1.registered_entry("default", ENTRY)
        assert entry is not None
        uid = entry["metadata"]["uid"]
    finally:
        cp1.stop()
    s.close()
    # Nothing of the store is in the data directory: it is all in etcd.
    assert not (tmp_path / "data" / "controlplane.sqlite3").exists()

    cp2 = start()
    try:
        entry = cp2.registered_entry("default", ENTRY)
        assert entry is not None and entry["metadata"]["uid"] == uid
        # `pymesh get` reads the same etcd.
        out = subprocess.run(
            [*pymesh_cli(), "get", "workloadentries", "-o", "json", "--store", url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert [i["metadata"]["name"] for i in json.loads(out.stdout)["items"]] == [ENTRY]
        reader = open_store(url, readonly=True)
        assert ("WorkloadGroup", "default", "product-vm") in reader.configured_sources()
        assert (reader.status("controlplane") or {}).get("watcher", {}).get("state") == "ok"
    finally:
        cp2.stop()


def test_etcd_with_authentication() -> None:
    """etcd's users (https://etcd.io/docs/v3.4/op-guide/authentication/): with --store-user and its
    password the store works; without them etcd's refusal is the error. Its own one-member cluster:
    auth, once enabled, is cluster-wide."""
    cluster = EtcdCluster(size=1).start()
    try:
        admin = EtcdStore.from_url(cluster.url(), EtcdOptions()).client
        admin.call("/v3/auth/user/add", {"name": "root", "password": "pw"}, idempotent=False)
        admin.call("/v3/auth/role/add", {"name": "root"}, idempotent=False)
        admin.call("/v3/auth/user/grant", {"user": "root", "role": "root"}, idempotent=False)
        admin.call("/v3/auth/enable", {}, idempotent=False)
        s = open_store(cluster.url("/pymesh/auth"), etcd=EtcdOptions(user="root", password="pw"))
        s.put_status("controlplane", {"ok": True})
        assert s.status("controlplane") == {"ok": True}
        with pytest.raises(StoreError, match=cluster.endpoints[0]):
            open_store(cluster.url("/pymesh/auth")).status("controlplane")
        with pytest.raises(StoreError, match="authentication failed"):
            open_store(cluster.url("/pymesh/auth"), etcd=EtcdOptions(user="root", password="wrong")).registered()
    finally:
        cluster.stop()
