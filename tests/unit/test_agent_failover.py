"""The agent's several control-plane addresses: ``--xds-address`` lists and host names with
several addresses (hosts file, DNS), every address once per round in a random order, across
reconnects with the backoff, a busy
replica's refusal treated as a failure (next address), certificates requested from the next
address after a failure, and ``--dry-run`` showing the addresses. Control planes are real
(in-process :class:`ControlPlane` on loopback); dead addresses are free ports."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2

from pymesh.agent import BootstrapError, load_bootstrap
from pymesh.agent.certs import WorkloadCerts
from pymesh.agent.config import AgentOptions, resolve
from pymesh.agent.xds_client import CDS, EDS, NDS, XdsClient, resolve_target, split_target
from pymesh.controlplane import ControlPlane
from pymesh.mesh.errors import AuthError
from support.agent import write_vm_files
from support.cp import example_config, vm_node
from support.ports import free_port
from support.sec import secure_cp
from support.wait import wait_until

NODE = base_pb2.Node(id="sidecar~127.0.0.9~x.default~default.svc.cluster.local")


def test_targets_split_and_names_resolve_to_every_address() -> None:
    names = {"cp.example": ["10.0.0.1", "10.0.0.2", "10.0.0.1"], "one.example": ["10.0.0.9"], "v6.example": ["fd00::1"]}

    def fake(host: str, port: int) -> list[str]:
        if host not in names:
            raise OSError("no such host")
        return names[host]

    assert split_target(" a:1 , ,b:2 ") == ["a:1", "b:2"]
    assert split_target("ipv4:10.0.0.1:1,10.0.0.2:1") == ["ipv4:10.0.0.1:1,10.0.0.2:1"]  # gRPC's own URI
    got = resolve_target("cp.example:15012,10.0.0.3:15012,[fd00::2]:15012,v6.example:1,x.example:7", fake)
    # Several addresses: each one; IP literals as given; one address or none: the name, for gRPC.
    assert got == [
        "10.0.0.1:15012",
        "10.0.0.2:15012",
        "10.0.0.3:15012",
        "[fd00::2]:15012",
        "v6.example:1",
        "x.example:7",
    ]
    assert resolve_target("one.example:15012", fake) == ["one.example:15012"]


def test_each_reconnect_goes_to_the_next_address_with_the_backoff() -> None:
    dead = [f"127.0.0.1:{free_port('127.0.0.1')}" for _ in range(3)]
    tried: list[str] = []
    client = XdsClient(
        ",".join(dead),
        NODE,
        {},
        subscriptions={CDS: None},
        backoff_base=0.01,
        backoff_max=0.08,
        on_state=lambda state, detail: tried.append(detail) if state == "connecting" else None,
        rng=random.Random(3),
    ).start()
    try:
        wait_until(lambda: len(tried) >= 7, timeout=10)
    finally:
        client.stop()
    # Rounds in a random order: each round tries every address once, never the same one twice
    # in a row, and the orders are not all the same (the rng is seeded).
    rounds = [tried[i : i + 3] for i in range(0, 6, 3)]
    assert all(sorted(r) == sorted(dead) for r in rounds), tried
    assert all(a != b for a, b in itertools.pairwise(tried[:7])), tried
    for n, w in enumerate(client.waits[:6]):  # the backoff runs across addresses as before
        d = min(0.08, 0.01 * 2**n)
        assert d / 2 <= w <= d, (n, w)
    assert client.switches >= 6


def test_a_busy_replica_is_left_for_the_next_within_one_backoff_step(tmp_path: Path) -> None:
    busy = ControlPlane(
        example_config(tmp_path / "busy-mesh", 18080),
        xds_listen="127.0.0.1:0",
        data_dir=tmp_path / "busy",
        max_pending_streams=1,
    ).start()
    good = ControlPlane(example_config(tmp_path / "mesh", 18080), xds_listen="127.0.0.1:0", data_dir=tmp_path / "good")
    good.start()
    try:
        busy.call_soon(lambda: setattr(busy.ads, "pending", 1))  # its one setup slot taken
        addrs = [f"127.0.0.1:{busy.port}", f"127.0.0.1:{good.port}"]

        class InOrder(random.Random):
            def shuffle(self, x: Any) -> None:
                pass  # the round as given: the busy replica first

        errors: list[str] = []
        client = XdsClient(
            ",".join(addrs),
            vm_node("127.0.0.5", group=""),
            {CDS: lambda *_: None, EDS: lambda *_: None, NDS: lambda *_: None},
            subscriptions={CDS: None, NDS: None},
            backoff_base=0.2,
            backoff_max=1.0,
            on_state=lambda state, detail: errors.append(detail) if state == "backoff" else None,
            rng=InOrder(11),
        ).start()
        try:
            wait_until(lambda: client.connected, timeout=10)
            assert client.address == f"127.0.0.1:{good.port}"
            assert errors == ["RESOURCE_EXHAUSTED: control plane busy: 1 streams being set up, retry"]
            assert len(client.waits) == 1 and client.waits[0] <= 0.2  # one backoff step
            wait_until(lambda: client.versions.get(CDS) and client.versions.get(NDS), timeout=5)
            assert busy.status()["xds"]["refused_busy"] == 1 and busy.status()["xds"]["connections"] == 0
        finally:
            client.stop()
    finally:
        busy.stop()
        good.stop()


def test_certificates_come_from_the_next_address_after_a_failure(tmp_path: Path) -> None:
    cp = secure_cp(tmp_path)
    try:
        token = cp.security.tokens.create("default", "product")
        dead = f"127.0.0.1:{free_port('127.0.0.1')}"
        wc = WorkloadCerts(
            f"{dead},127.0.0.1:{cp.secure_port}", cp.security.ca.root_pem, tmp_path / "certs", token=lambda: token
        )
        assert wc.address() == dead
        with pytest.raises(AuthError, match=f"CreateCertificate at {dead}: UNAVAILABLE"):
            wc.fetch()
        assert wc.fetch().spiffe_id == "spiffe://cluster.local/ns/default/sa/product"
    finally:
        cp.stop()


def _hosts_vm(tmp_path: Path, *ips: str) -> Path:
    vm = write_vm_files(tmp_path / "vm", 15012)
    (vm / "hosts").write_text("".join(f"{ip} istiod.istio-system.svc\n" for ip in ips))
    return vm


def test_addresses_from_the_hosts_file_and_the_flag(tmp_path: Path) -> None:
    vm = _hosts_vm(tmp_path, "10.0.0.1", "10.0.0.2", "10.0.0.1")
    c = resolve(load_bootstrap(vm), AgentOptions(extra_ips=[]))
    assert c.targets == ("10.0.0.1:15012", "10.0.0.2:15012") and c.target == "10.0.0.1:15012,10.0.0.2:15012"
    one = resolve(load_bootstrap(_hosts_vm(tmp_path / "one", "10.0.0.1")), AgentOptions(extra_ips=[]))
    assert one.target == "10.0.0.1:15012"  # one address: as before
    flag = resolve(load_bootstrap(vm), AgentOptions(extra_ips=[], xds_address="10.1.0.1:15010, [fd00::1]:15010,cp"))
    assert flag.targets == ("10.1.0.1:15010", "[fd00::1]:15010", "cp:15012")
    with pytest.raises(BootstrapError) as e:
        resolve(load_bootstrap(vm), AgentOptions(extra_ips=[], xds_address="10.1.0.1:15010,10.1.0.1:x"))
    assert str(e.value).startswith("key --xds-address: --xds-address '10.1.0.1:x'")


def test_dry_run_lists_the_addresses(tmp_path: Path) -> None:
    vm = _hosts_vm(tmp_path, "10.0.0.1", "10.0.0.2")
    cmd = [sys.executable, "-m", "pymesh", "agent", "--config-dir", str(vm), "--dry-run", "-o", "json"]
    cmd += ["--no-dataplane", "--dns-listen", "127.0.0.1:5353"]
    plan = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)["control_plane"]
    assert plan["addresses"] == ["10.0.0.1:15012", "10.0.0.2:15012"]
    flag = subprocess.run([*cmd, "--xds-address", "10.1.0.1:1,10.1.0.2:2"], capture_output=True, text=True, check=True)
    assert json.loads(flag.stdout)["control_plane"]["addresses"] == ["10.1.0.1:1", "10.1.0.2:2"]
