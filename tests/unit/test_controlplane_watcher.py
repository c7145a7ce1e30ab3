"""The config watcher never dies silently ("The config watcher can die
silently"): a symlink loop, a failing load and a locked database are reported
(the log, ``ControlPlane.status()``, ``pymesh get``) and the watcher goes on,
so later edits are applied; and a new file duplicating an object never takes
it over."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pymesh.cli import main
from pymesh.controlplane import ControlPlane
from pymesh.controlplane import resources as res
from support.wait import wait_until


def service(name: str, ip: str) -> str:
    return (
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n"
        f"spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}\n"
    )


def hosts(cp: ControlPlane) -> set[str]:
    return set(cp.snapshot.registry.by_host)


def served(cp: ControlPlane, name: str) -> bool:
    return f"{name}.default.svc.cluster.local" in hosts(cp)


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    d = tmp_path / "mesh"
    d.mkdir()
    (d / "base.yaml").write_text(service("base", "10.96.0.10"))
    return d


@pytest.fixture
def cp(cfg: Path, tmp_path: Path) -> Iterator[ControlPlane]:
    c = ControlPlane(
        cfg, xds_listen="127.0.0.1:0", data_dir=tmp_path / "data", debounce=0.02, watch_interval=0.1
    ).start()
    yield c
    c.stop()


def test_a_symlink_loop_is_a_rejected_file_not_a_frozen_watcher(cfg: Path, cp: ControlPlane) -> None:
    (cfg / "loop.yaml").symlink_to(cfg / "loop.yaml")
    wait_until(lambda: any(e.file.endswith("loop.yaml") for e in cp.errors), timeout=10)
    (err,) = [e for e in cp.errors if e.file.endswith("loop.yaml")]
    assert "symbolic links" in str(err)
    (cfg / "later.yaml").write_text(service("later", "10.96.0.11"))
    wait_until(lambda: served(cp, "later"), timeout=10)
    assert served(cp, "base")


def test_a_failing_load_is_reported_and_the_watcher_goes_on(
    cfg: Path, cp: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = res.load_documents
    broken = threading.Event()
    broken.set()

    def flaky(*args: Any, **kw: Any) -> None:
        if broken.is_set():
            raise RuntimeError("injected failure")
        real(*args, **kw)

    monkeypatch.setattr(res, "load_documents", flaky)
    caplog.set_level(logging.ERROR, "pymesh.controlplane")
    (cfg / "later.yaml").write_text(service("later", "10.96.0.11"))
    wait_until(lambda: cp.status()["config"]["watcher"]["state"] == "failing", timeout=10)
    assert "injected failure" in cp.status()["config"]["watcher"]["error"]
    assert any("config watcher" in r.getMessage() and "injected failure" in r.getMessage() for r in caplog.records)
    assert served(cp, "base") and not served(cp, "later")  # nothing applied from the failed attempt
    assert main(["get", "svc", "--data-dir", str(tmp_path / "data")]) == 0

    broken.clear()
    wait_until(lambda: served(cp, "later"), timeout=15)
    wait_until(lambda: cp.status()["config"]["watcher"]["state"] == "ok", timeout=10)


def test_pymesh_get_says_the_watcher_is_failing(
    cfg: Path, cp: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(*args: Any, **kw: Any) -> None:
        raise RuntimeError("injected failure")

    monkeypatch.setattr(res, "load_documents", boom)
    (cfg / "later.yaml").write_text(service("later", "10.96.0.11"))
    wait_until(lambda: cp.status()["config"]["watcher"]["state"] == "failing", timeout=10)
    capsys.readouterr()
    assert main(["get", "svc", "--data-dir", str(tmp_path / "data")]) == 0
    err = capsys.readouterr().err
    assert "config watcher is failing" in err and "injected failure" in err


def test_a_locked_database_is_reported_and_retried(cfg: Path, cp: ControlPlane, tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "data" / "controlplane.sqlite3", isolation_level=None, check_same_thread=False)
    db.execute("BEGIN EXCLUSIVE")  # every write of the control plane now fails after its busy timeout
    try:
        (cfg / "later.yaml").write_text(service("later", "10.96.0.11"))
        wait_until(lambda: cp.status()["config"]["watcher"]["state"] == "failing", timeout=20)
        assert "locked" in cp.status()["config"]["watcher"]["error"]
        wait_until(lambda: served(cp, "later"), timeout=10)  # the store is a mirror: serving goes on
    finally:
        db.execute("ROLLBACK")
        db.close()
    wait_until(lambda: cp.status()["config"]["watcher"]["state"] == "ok", timeout=20)
    (cfg / "later2.yaml").write_text(service("latertwo", "10.96.0.12"))
    wait_until(lambda: served(cp, "latertwo"), timeout=10)
    names = {n for _, _, n, _, _ in cp.store.configured()} if cp.store else set()
    assert {"later", "latertwo"} <= names


def test_a_new_file_duplicating_an_object_does_not_take_it_over(tmp_path: Path) -> None:
    cfg = tmp_path / "mesh"
    cfg.mkdir()
    (cfg / "z-existing.yaml").write_text(service("web", "10.96.0.20"))

    def start() -> ControlPlane:
        return ControlPlane(
            cfg, xds_listen="127.0.0.1:0", data_dir=tmp_path / "data", debounce=0.02, watch_interval=0.1
        ).start()

    def vip(cp: ControlPlane) -> tuple[str, ...]:
        return cp.snapshot.registry.by_host["web.default.svc.cluster.local"].addresses

    cp = start()
    try:
        assert vip(cp) == ("10.96.0.20",)
        (cfg / "a-new.yaml").write_text(service("web", "10.96.0.99"))  # sorts first
        wait_until(lambda: any("duplicate" in str(e) for e in cp.errors), timeout=10)
        (err,) = [e for e in cp.errors if "duplicate" in str(e)]
        assert err.file.endswith("a-new.yaml") and "z-existing.yaml" in str(err)
        time.sleep(0.3)
        assert vip(cp) == ("10.96.0.20",)
    finally:
        cp.stop()
    cp = start()  # across a restart too: the store knows which file held it
    try:
        assert vip(cp) == ("10.96.0.20",)
        assert any(e.file.endswith("a-new.yaml") for e in cp.errors)
    finally:
        cp.stop()


def test_a_duplicate_does_not_take_over_while_the_holders_file_is_broken(cfg: Path, cp: ControlPlane) -> None:
    (cfg / "z-holder.yaml").write_text(service("web", "10.96.0.20"))
    wait_until(lambda: served(cp, "web"), timeout=10)
    (cfg / "z-holder.yaml").write_text(service("web", "10.96.0.20") + "spec: [unbalanced\n")
    (cfg / "a-new.yaml").write_text(service("web", "10.96.0.99"))
    wait_until(lambda: any(e.file.endswith("a-new.yaml") for e in cp.errors), timeout=10)
    assert cp.snapshot.registry.by_host["web.default.svc.cluster.local"].addresses == ("10.96.0.20",)
    (err,) = [e for e in cp.errors if e.file.endswith("a-new.yaml")]
    assert "duplicate" in str(err) and "z-holder.yaml" in str(err)


def test_the_monitoring_port_reports_the_watcher(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import urllib.request

    c = ControlPlane(
        cfg, xds_listen="127.0.0.1:0", persist=False, watch_interval=0.1, monitoring_listen="127.0.0.1:0"
    ).start()
    try:
        base = f"http://{c.monitoring.address}"

        def get(path: str) -> str:
            with urllib.request.urlopen(base + path, timeout=5) as r:
                return str(r.read().decode())

        assert json.loads(get("/debug/status"))["config"]["watcher"]["state"] == "ok"
        assert "pymesh_controlplane_config_watch_failing 0.0" in get("/metrics")

        def boom(*args: Any, **kw: Any) -> None:
            raise RuntimeError("injected failure")

        monkeypatch.setattr(res, "load_documents", boom)
        (cfg / "later.yaml").write_text(service("later", "10.96.0.11"))
        wait_until(lambda: "pymesh_controlplane_config_watch_failing 1.0" in get("/metrics"), timeout=10)
        assert "injected failure" in json.loads(get("/debug/status"))["config"]["watcher"]["error"]
    finally:
        c.stop()
