"""The agent under hostile or unlucky conditions (the agent items):
one certificate issuance at start, not two; a state entry replaced by a
directory; a huge name table on /debug/ndsz. Each failed on the agent before
its fix (two CreateCertificate calls 55 ms apart; the agent exiting; a 140 MB
reply built whole in memory)."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from pathlib import Path

import pytest

from pymesh.mesh.xds import CDS, NDS
from pymesh.proto.nds import NameTable
from support.agent import ScriptedAds, eds_cluster, make_agent, pack, write_vm_files
from support.ports import free_port
from support.sec import secure_cp, secure_vm_files
from support.wait import wait_until


def test_one_certificate_issuance_at_start(tmp_path: Path) -> None:
    """The renewal loop and the first xDS channel both want a certificate when
    none is held: exactly one CreateCertificate happens."""
    cp = secure_cp(tmp_path)
    try:
        vm = secure_vm_files(
            tmp_path / "vm", cp.secure_port, cp.security.ca.root_pem, cp.security.tokens.create("default", "product")
        )
        for attempt in range(3):  # the race is timing-dependent: start fresh agents a few times
            agent = make_agent(
                vm, tmp_path / f"state-{attempt}", free_port("127.0.0.1"), control_plane_auth="MUTUAL_TLS"
            )
            before = cp.security.stats["issued"]
            agent.start()
            try:
                wait_until(lambda a=agent: a.synced and a.certs is not None and a.certs.held is not None)
                time.sleep(0.5)  # let a second, duplicate request land if there were one
                assert cp.security.stats["issued"] - before == 1
                assert agent.certs.renewals == 0
            finally:
                agent.stop()
    finally:
        cp.stop()


def test_a_first_issuance_failure_is_reported_as_such(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cp = secure_cp(tmp_path)
    try:
        # A token for another audience: the CA refuses the first issuance.
        bad = cp.security.tokens.create("default", "product", audience="other")
        vm = secure_vm_files(tmp_path / "vm", cp.secure_port, cp.security.ca.root_pem, bad)
        agent = make_agent(vm, tmp_path / "state", free_port("127.0.0.1"), control_plane_auth="MUTUAL_TLS")
        with caplog.at_level(logging.WARNING, logger="pymesh.agent"):
            agent.start()
            try:
                wait_until(lambda: "certificate first issuance failed" in caplog.text, timeout=10)
                assert "certificate renewal failed" not in caplog.text
            finally:
                agent.stop()
    finally:
        cp.stop()


@pytest.mark.parametrize("entry", ["cds.pb", "nds.pb", "identity.json"])
def test_a_state_entry_that_is_a_directory_is_set_aside(
    tmp_path: Path, entry: str, caplog: pytest.LogCaptureFixture
) -> None:
    ads = ScriptedAds()
    try:
        vm = write_vm_files(tmp_path / "vm", ads.port)
        (vm / "resolv.conf").write_text("")
        state = tmp_path / "state"
        (state / entry).mkdir(parents=True)
        agent = make_agent(vm, state, free_port("127.0.0.1"))
        with caplog.at_level(logging.WARNING, logger="pymesh.agent"), agent:
            ads.request(CDS)
            n = ads.push(CDS, "1", [pack(eds_cluster("outbound|8080||product.default.svc.cluster.local"))])
            assert not ads.request(CDS, nonce=n).HasField("error_detail")
            assert agent.synced
            wait_until(lambda: (state / "cds.pb").is_file())  # persisted again, as a file
        assert "is not a regular file; moved to" in caplog.text
        assert [p.name for p in state.iterdir() if p.name.startswith(f"{entry}.unusable-")]
    finally:
        ads.stop()


def test_ndsz_streams_a_large_table_and_pages(tmp_path: Path) -> None:
    ads = ScriptedAds()
    sport = free_port("127.0.0.1")
    try:
        vm = write_vm_files(tmp_path / "vm", ads.port)
        (vm / "resolv.conf").write_text("")
        agent = make_agent(vm, tmp_path / "state", free_port("127.0.0.1"), status_listen=f"127.0.0.1:{sport}")
        with agent:
            ads.request(CDS)
            table = NameTable()
            for i in range(20_000):
                table.table[f"svc-{i}.ns.svc.cluster.local"].ips.append(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
            n = ads.push(NDS, "1", [pack(table, NDS)])
            assert not ads.request(NDS, nonce=n).HasField("error_detail")
            with urllib.request.urlopen(f"http://127.0.0.1:{sport}/debug/ndsz", timeout=10) as r:
                assert r.headers["Transfer-Encoding"] == "chunked" and r.headers["Content-Length"] is None
                everything = json.load(r)
            assert len(everything) == 20_000
            with urllib.request.urlopen(f"http://127.0.0.1:{sport}/debug/ndsz?offset=100&limit=5", timeout=10) as r:
                page = json.load(r)
            assert page == everything[100:105]
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"http://127.0.0.1:{sport}/debug/ndsz?limit=-1", timeout=10)
            assert e.value.code == 400
            e.value.close()
    finally:
        ads.stop()
