"""The etcd store's calls for replicas (pymesh.controlplane.replicas) against a real 3-member
etcd: create-if-absent registration under concurrency, connection keys on leases, the sweeper's
election and its fenced delete (never while a connection key exists, never twice, never by a
deposed leader, never over a change it did not see), VIP claims (one address per host, one host
per address, under concurrency, as read back after a restart)."""

from __future__ import annotations

import copy
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pymesh.controlplane.backend import open_store
from pymesh.controlplane.etcdstore import EtcdStore, _prefix_end
from pymesh.controlplane.replicas import SWEEPER
from pymesh.controlplane.vips import VipAllocator
from support.etcd import EtcdCluster
from support.wait import wait_until

_prefixes = itertools.count()


@pytest.fixture
def store(etcd: EtcdCluster) -> Iterator[EtcdStore]:
    etcd.wait_healthy(range(3))
    s = open_store(etcd.url(f"/pymesh/store-replicas-{next(_prefixes)}"))
    assert isinstance(s, EtcdStore)
    yield s
    s.close()


def doc(name: str = "vm-127.0.0.5", uid: str = "u0") -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": "default", "uid": uid,
                     "annotations": {"istio.io/autoRegistrationGroup": "vm"}},
        "spec": {"address": "127.0.0.5"},
    }  # fmt: skip


def mod_revision(store: EtcdStore, name: str) -> int:
    _, rows = store.registered_at()
    return next(rev for d, rev in rows if d["metadata"]["name"] == name)


def test_concurrent_registration_of_one_vm_makes_one_entry(store: EtcdStore) -> None:
    n = 8
    leases = [store.lease_grant(30) for _ in range(n)]
    barrier = threading.Barrier(n)
    results: list[tuple[dict[str, Any], bool, int]] = [None] * n  # type: ignore[list-item]

    def claim(i: int) -> None:
        barrier.wait()
        results[i] = store.claim_registered(doc(uid=f"u{i}"), f"r{i}", leases[i])

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(created for _, created, _ in results) == 1
    stored = store.registered()
    assert len(stored) == 1
    assert all(d == stored[0] for d, _, _ in results)  # every replica got the one stored document
    assert store.connections() == {("default", "vm-127.0.0.5"): {f"r{i}" for i in range(n)}}
    for lease in leases:
        store.lease_revoke(lease)
    assert store.connections() == {}  # revoking a lease drops its replica's keys
    assert len(store.registered()) == 1  # never the entry


def test_fenced_delete(store: EtcdStore) -> None:
    la, lb = store.lease_grant(30), store.lease_grant(30)
    leader = store.campaign(SWEEPER, "a", la)
    assert leader is not None
    assert store.campaign(SWEEPER, "b", lb) is None
    assert store.campaign(SWEEPER, "a", la) == leader  # asking again confirms, does not re-create
    name = "vm-127.0.0.5"
    store.claim_registered(doc(), "b", lb)

    # Connected (B holds a key): not deleted.
    rev = mod_revision(store, name)
    assert not store.delete_registered_fenced("default", name, mod_revision=rev, leader_rev=leader)
    store.release_registered("default", name, "b")
    assert store.connections() == {}
    assert ("default", name) in store.released()

    # Changed since the sweeper read it (a health report): not deleted with the old revision.
    changed = copy.deepcopy(doc())
    changed["status"] = {"conditions": [{"type": "Healthy", "status": "True"}]}
    written = store.put_registered_if_exists(changed)
    assert not store.delete_registered_fenced("default", name, mod_revision=rev, leader_rev=leader)
    rev = mod_revision(store, name)
    # The write's revision: what a replica compares later reads against.
    assert written == rev

    # A deposed leader (its lease gone, B leads now): not deleted.
    store.lease_revoke(la)
    other = store.campaign(SWEEPER, "b", lb)
    assert other is not None and other != leader
    assert not store.delete_registered_fenced("default", name, mod_revision=rev, leader_rev=leader)

    # The leader, unchanged, disconnected: deleted once; the second attempt does nothing.
    assert store.delete_registered_fenced("default", name, mod_revision=rev, leader_rev=other)
    assert store.registered() == [] and store.released() == {}
    assert not store.delete_registered_fenced("default", name, mod_revision=rev, leader_rev=other)

    # A health write for a deleted entry never re-creates it; a connect does.
    assert store.put_registered_if_exists(changed) == 0
    assert store.registered() == []
    _, created, _ = store.claim_registered(doc(uid="again"), "b", lb)
    assert created and store.registered()[0]["metadata"]["uid"] == "again"
    store.lease_revoke(lb)


def test_lease_expiry_releases_connections_and_leadership(store: EtcdStore) -> None:
    lease = store.lease_grant(2)  # etcd's minimum
    assert store.campaign(SWEEPER, "a", lease) is not None
    store.claim_registered(doc(), "a", lease)
    assert store.lease_keepalive(lease) > 0
    started = time.monotonic()
    wait_until(lambda: store.connections() == {}, timeout=10, interval=0.2)
    assert time.monotonic() - started >= 1.0
    assert store.lease_keepalive(lease) == 0
    other = store.lease_grant(30)
    assert store.campaign(SWEEPER, "b", other) is not None  # the key went with the lease
    assert len(store.registered()) == 1  # the entry outlives the lease; the sweeper decides
    store.lease_revoke(other)
    store.lease_revoke(lease)  # already gone: not an error


def test_vip_claims_are_unique_under_concurrency_and_stable(store: EtcdStore) -> None:
    n = 6
    barrier = threading.Barrier(n)
    got: list[tuple[str, str] | None] = [None] * n

    def claim(i: int) -> None:  # n hosts, one candidate address
        barrier.wait()
        got[i] = store.claim_vip(f"h{i}.example.com", ("240.240.0.1", "2001:2::1"), None)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(g is not None for g in got) == 1
    winner = next(i for i, g in enumerate(got) if g is not None)
    # A host that holds a pair keeps it, whatever candidate it is offered.
    assert store.claim_vip(f"h{winner}.example.com", ("240.240.0.9", "2001:2::9"), None) == ("240.240.0.1", "2001:2::1")

    # Allocators of several replicas over the store, allocating at once: every address once,
    # a host they share gets one pair in all of them.
    allocators = [VipAllocator(store.vip_records(), claim=store.claim_vip) for _ in range(3)]
    barrier = threading.Barrier(len(allocators))

    def reserve(i: int) -> None:
        barrier.wait()
        allocators[i].reserve(["shared.example.com", *(f"r{i}-{j}.example.com" for j in range(10))])

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(len(allocators))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for a in allocators:
        store.put_vips(*a.take_changes())
    held = {h: pair for a in allocators for h, pair in a.allocations.items()}
    assert len(held) == 1 + 1 + 3 * 10  # the winner above, the shared host, ten each
    assert len({v4 for v4, _ in held.values()}) == len(held) and len({v6 for _, v6 in held.values()}) == len(held)
    assert len({a.get("shared.example.com") for a in allocators}) == 1
    # Stable across restarts: what a new process reads is what was given.
    assert {h: (v4, v6) for h, (v4, v6, _) in store.vip_records().items()} == held
    assert store.index_vips() == []


def test_replicas_must_share_one_ca(etcd: EtcdCluster, tmp_path: Any) -> None:
    """The first replica's root goes into the store (public material only); a replica with
    another CA refuses to start naming both roots; one with the same plug-in CA starts."""
    import shutil

    from pymesh.controlplane import ControlPlane, ControlPlaneError
    from pymesh.controlplane.ca.service import SecurityOptions
    from support.cp import example_config

    url = etcd.url(f"/pymesh/ca-{next(_prefixes)}")
    cfg = example_config(tmp_path / "mesh", 18080)

    def replica(name: str, plugin: Any = None) -> ControlPlane:
        sec = SecurityOptions(secure_listen="127.0.0.1:0", plugin_ca_dir=str(plugin) if plugin else None)
        return ControlPlane(cfg, xds_listen="127.0.0.1:0", data_dir=tmp_path / name, store=url, security=sec)

    first = replica("a")
    try:
        with pytest.raises(ControlPlaneError, match=r"sign with another CA .*--plugin-ca"):
            replica("b")  # a CA of its own, generated in its data directory
        # The operator's CA (Istio's cacerts layout) given to another replica: the same root.
        cacerts = tmp_path / "cacerts"
        cacerts.mkdir()
        for f in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"):
            shutil.copy(tmp_path / "a" / "ca" / f, cacerts / f)
        same = replica("c", cacerts)
        same.stop()
        stored = open_store(url)
        assert isinstance(stored, EtcdStore)
        assert stored.claim_ca_root("x") == first.security.ca.root_pem
        # What the store holds of the CA: the root, no key.
        everything = stored.client.range(stored.prefix.encode(), _prefix_end(stored.prefix.encode()))
        assert [k for k, _ in everything if b"/ca/" in k] == [stored._key("ca", "root")]
        assert not any(b"PRIVATE KEY" in v for _, v in everything)
    finally:
        first.stop()
