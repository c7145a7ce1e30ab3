"""Auto-allocated VIPs never block a push ("One object can block every
push"): an entry whose hosts cannot get addresses is rejected alone with its
file, object and field while everything else is served and later changes are
pushed; the addresses of deleted hosts return to the pool only after a
quarantine, and a host that comes back gets its own address again."""

from __future__ import annotations

from pathlib import Path

import pytest

from pymesh.controlplane import ControlPlane
from pymesh.controlplane.store import Store
from pymesh.controlplane.vips import VipAllocator
from support.wait import wait_until


def entry(name: str, *hosts: str) -> str:
    return (
        f"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\n"
        f"spec: {{hosts: [{', '.join(hosts)}], resolution: DNS, ports: [{{number: 80, name: http}}]}}\n"
    )


def service(name: str) -> str:
    return (
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n"
        "spec: {ports: [{name: http, port: 80}]}\n"
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_with_65535_hosts_is_rejected_alone_and_pushes_go_on(tmp_path: Path) -> None:
    cfg = tmp_path / "mesh"
    cfg.mkdir()
    (cfg / "ok.yaml").write_text(entry("ok", "ok.example.com"))
    (cfg / "many.yaml").write_text(entry("many", *(f"h{i}.example.com" for i in range(65535))))
    cp = ControlPlane(cfg, xds_listen="127.0.0.1:0", data_dir=tmp_path / "data", debounce=0.02, watch_interval=0.1)
    cp.start()
    try:
        assert "ok.example.com" in cp.snapshot.registry.by_host
        assert "h1.example.com" not in cp.snapshot.registry.by_host
        (err,) = cp.errors
        assert err.file.endswith("many.yaml") and err.obj == "ServiceEntry default/many" and "spec.hosts" in err.field
        (cfg / "later.yaml").write_text(service("later"))
        wait_until(lambda: "later.default.svc.cluster.local" in cp.snapshot.registry.by_host, timeout=15)
    finally:
        cp.stop()


def test_exhaustion_rejects_the_entry_that_does_not_fit_and_keeps_the_rest(tmp_path: Path) -> None:
    cfg = tmp_path / "mesh"
    cfg.mkdir()
    (cfg / "a.yaml").write_text(entry("a", "a1.example.com", "a2.example.com"))
    (cfg / "b.yaml").write_text(entry("b", "b1.example.com", "b2.example.com"))
    cp = ControlPlane(cfg, xds_listen="127.0.0.1:0", persist=False, debounce=0.02, watch_interval=0.1)
    cp.vips = VipAllocator(capacity=3)  # a range of three pairs, exhausted by the second entry
    cp.start()
    try:
        reg = cp.snapshot.registry
        assert reg.by_host["a1.example.com"].auto_addresses == ("240.240.0.1", "2001:2::1")
        assert "b1.example.com" not in reg.by_host and "b2.example.com" not in reg.by_host
        (err,) = cp.errors
        assert err.file.endswith("b.yaml") and err.obj == "ServiceEntry default/b" and err.field == "spec.hosts[1]"
        assert "no auto-allocated VIP is free" in str(err)
        # An edit that cannot fit either keeps the served version of a.
        (cfg / "a.yaml").write_text(entry("a", "a1.example.com", "a2.example.com", "a3.example.com", "a4.example.com"))
        wait_until(lambda: any(e.file.endswith("a.yaml") for e in cp.errors), timeout=10)
        assert cp.snapshot.registry.by_host["a2.example.com"].auto_addresses == ("240.240.0.2", "2001:2::2")
        (cfg / "later.yaml").write_text(service("later"))
        wait_until(lambda: "later.default.svc.cluster.local" in cp.snapshot.registry.by_host, timeout=10)
    finally:
        cp.stop()


def test_released_addresses_wait_out_their_quarantine() -> None:
    from pymesh.controlplane.vips import VipError

    clock = Clock()
    alloc = VipAllocator(capacity=2, quarantine=3600, clock=clock)
    alloc.reserve(["old.example.com", "keep.example.com"])
    assert alloc.release_unused({"keep.example.com"}) == ["old.example.com"]
    with pytest.raises(VipError) as e:
        alloc.reserve(["new.example.com"])
    assert e.value.host == "new.example.com" and "quarantine" in str(e.value)
    clock.now += 3599
    with pytest.raises(VipError):
        alloc.reserve(["new.example.com"])
    clock.now += 2
    alloc.reserve(["new.example.com"])
    assert alloc.get("new.example.com") == ("240.240.0.1", "2001:2::1")  # the released pair, reclaimed
    assert alloc.get("old.example.com") is None


def test_a_host_that_comes_back_gets_its_own_address() -> None:
    clock = Clock()
    alloc = VipAllocator(capacity=10, quarantine=0, clock=clock)
    alloc.reserve(["a.example.com", "b.example.com"])
    alloc.release_unused({"b.example.com"})
    alloc.reserve(["c.example.com"])  # the never-used part of the range comes first
    alloc.reserve(["a.example.com"])
    assert alloc.get("a.example.com") == ("240.240.0.1", "2001:2::1")
    assert alloc.get("c.example.com") == ("240.240.0.3", "2001:2::3")


def test_protected_hosts_are_never_reclaimed() -> None:
    from pymesh.controlplane.vips import VipError

    clock = Clock()
    alloc = VipAllocator(capacity=1, quarantine=0, clock=clock)
    alloc.reserve(["a.example.com"])
    alloc.release_unused(set())
    with pytest.raises(VipError):
        alloc.reserve(["b.example.com"], protected={"a.example.com"}.__contains__)


def test_addresses_are_canonical() -> None:
    import ipaddress

    from pymesh.controlplane.vips import V4_PREFIX, V6_PREFIX, _pair

    for offset in (1, 255, 256, 4097, 65534):
        assert _pair(offset) == (str(V4_PREFIX.network_address + offset), str(V6_PREFIX.network_address + offset))
    assert ipaddress.ip_address(_pair(65534)[1]) in V6_PREFIX


def test_releases_survive_a_restart(tmp_path: Path) -> None:
    from pymesh.controlplane.vips import VipError

    clock = Clock()
    store = Store(tmp_path)
    alloc = VipAllocator(store.vip_records(), capacity=1, quarantine=3600, clock=clock)
    alloc.reserve(["a.example.com"])
    alloc.release_unused(set())
    store.put_vips(*alloc.take_changes())
    store.close()
    store = Store(tmp_path)
    again = VipAllocator(store.vip_records(), capacity=1, quarantine=3600, clock=clock)
    assert again.released() == {"a.example.com": 1000.0}
    with pytest.raises(VipError):
        again.reserve(["b.example.com"])  # still in quarantine after the restart
    clock.now += 3601
    again.reserve(["b.example.com"])
    store.put_vips(*again.take_changes())
    assert set(store.vip_records()) == {"b.example.com"}
    store.close()
