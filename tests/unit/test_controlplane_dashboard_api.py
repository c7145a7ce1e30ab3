"""The operators' JSON API on the control plane's monitoring port (``/api/v1/``,
docs/dashboard-api.md) and ``pymesh proxy-status``, against a real control plane
with real ADS streams on loopback: a VM that registers, ACKs and reports its probe,
a proxy that NACKs, and a config directory with an invalid file."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pymesh.agent.certs import Held, WorkloadCerts
from pymesh.controlplane import ControlPlane
from pymesh.controlplane.ca.service import SecurityOptions
from pymesh.mesh.pki import load_certs
from pymesh.mesh.xds import CDS, EDS, LDS
from support.cp import AdsStream, example_config, pymesh_cli, vm_node
from support.ports import free_port
from support.procs import reap
from support.sec import Stream
from support.wait import wait_until

PRODUCT = "product.default.svc.cluster.local"
ENTRY = "product-vm-127.0.0.3"
PROBE_FAILURE = "dial tcp 127.0.0.3:8080: connection refused"
BAD_PORT = """\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: bad, namespace: default}
spec: {address: 10.1.1.1, ports: {http: 99999}}
"""


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    cfg = example_config(tmp_path / "mesh", 8080)
    (cfg / "bad.yaml").write_text(BAD_PORT)
    (cfg / "broken.yaml").write_text("kind: [unclosed\n")
    c = ControlPlane(
        cfg,
        xds_listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        debounce=0.02,
        instance_id="replica-a",
        monitoring_listen="127.0.0.1:0",
    )
    c.start()
    yield c
    c.stop()


def api(cp: ControlPlane, path: str) -> Any:
    with urllib.request.urlopen(f"http://{cp.monitoring.address}/api/v1/{path}", timeout=10) as r:
        assert r.headers["Content-Type"] == "application/json"
        return json.loads(r.read())


def proxy(cp: ControlPlane, proxy_id: str) -> dict[str, Any]:
    rows = [p for p in api(cp, "proxies")["proxies"] if p["proxyId"] == proxy_id]
    assert len(rows) == 1, rows
    row: dict[str, Any] = rows[0]
    return row


def entry(cp: ControlPlane, name: str) -> dict[str, Any]:
    rows = [e for e in api(cp, "workloadentries")["workloadEntries"] if e["name"] == name]
    assert len(rows) == 1, rows
    row: dict[str, Any] = rows[0]
    return row


def service(cp: ControlPlane, hostname: str) -> dict[str, Any]:
    row: dict[str, Any] = next(s for s in api(cp, "services")["services"] if s["hostname"] == hostname)
    return row


@pytest.fixture
def vm(cp: ControlPlane) -> Iterator[AdsStream]:
    """A VM of product-vm that subscribes to CDS, LDS and product's EDS and ACKs each."""
    s = AdsStream(cp.port, vm_node("127.0.0.3", probe=True, extra={"ISTIO_VERSION": "1.29.0"}))
    for t, names in ((CDS, ()), (LDS, ()), (EDS, (f"outbound|8080||{PRODUCT}",))):
        s.send(t, names)
        s.ack(s.recv(), names)
    yield s
    s.close()


def test_proxies_synced_stale_and_not_sent_with_the_last_nack(cp: ControlPlane, vm: AdsStream) -> None:
    nacker = AdsStream(cp.port, vm_node("127.0.0.9", group="", name="nacker"))
    try:
        nacker.send(CDS)
        r = nacker.recv()
        nacker.send(CDS, version=r.version_info, nonce=r.nonce, error="cluster outbound|8080||x: bad")
        wait_until(lambda: proxy(cp, "nacker.default")["xds"]["CDS"].get("lastNack") is not None)

        body = api(cp, "proxies")
        assert body["replica"] == "replica-a"
        p = proxy(cp, "vm-1.default")
        assert p["nodeId"] == "sidecar~127.0.0.3~vm-1.default~default.svc.cluster.local"
        assert (p["type"], p["namespace"], p["stream"], p["replica"]) == ("sidecar", "default", "sotw", "replica-a")
        assert p["ipAddresses"] == ["127.0.0.3"] and p["istioVersion"] == "1.29.0"
        assert p["connectedAt"].endswith("Z") and p["peer"].startswith("ipv4:127.0.0.1:")
        assert p["certificate"] is None  # the plaintext listener: no client certificate
        wait_until(lambda: proxy(cp, "vm-1.default")["xds"]["EDS"]["status"] == "SYNCED")
        xds = proxy(cp, "vm-1.default")["xds"]
        assert set(xds) == {"CDS", "LDS", "EDS", "RDS", "NDS"}
        for short in ("CDS", "LDS", "EDS"):
            w = xds[short]
            assert w["status"] == "SYNCED", (short, w)
            assert w["nonceSent"] == w["nonceAcked"] != ""
            assert w["versionSent"] == w["versionAcked"] != ""
            assert w["lastNack"] is None and w["nacked"] is False
        assert xds["CDS"]["subscribed"] is None  # wildcard
        assert xds["EDS"]["subscribed"] == [f"outbound|8080||{PRODUCT}"]
        assert xds["RDS"] == {"status": "NOT SENT"} and xds["NDS"] == {"status": "NOT SENT"}

        n = proxy(cp, "nacker.default")["xds"]
        assert n["CDS"]["status"] == "STALE" and n["CDS"]["nacked"] is True
        assert n["CDS"]["nonceSent"] == r.nonce and n["CDS"]["nonceAcked"] == ""
        assert n["CDS"]["versionSent"] == r.version_info and n["CDS"]["versionAcked"] == ""
        nack = n["CDS"]["lastNack"]
        assert (nack["nonce"], nack["version"]) == (r.nonce, r.version_info)
        assert nack["message"] == "cluster outbound|8080||x: bad" and nack["at"].endswith("Z")
        assert n["LDS"] == {"status": "NOT SENT"}

        # A config change: the VM's EDS is sent again and is STALE until it ACKs.
        (cp.config_dir / "more.yaml").write_text(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: product-pod-1, namespace: default, labels: {app: product}}\n"
            "spec: {containers: [{name: p, ports: [{name: grpc, containerPort: 8080}]}]}\n"
            "status: {phase: Running, podIP: 127.0.0.4, conditions: [{type: Ready, status: 'True'}]}\n"
        )
        cp.reload()
        r = vm.recv()
        assert r.type_url == EDS
        wait_until(lambda: proxy(cp, "vm-1.default")["xds"]["EDS"]["nonceSent"] == r.nonce)
        assert proxy(cp, "vm-1.default")["xds"]["EDS"]["status"] == "STALE"
        vm.ack(r, (f"outbound|8080||{PRODUCT}",))
        wait_until(lambda: proxy(cp, "vm-1.default")["xds"]["EDS"]["status"] == "SYNCED")
    finally:
        nacker.close()


def test_a_delta_stream_is_synced_by_nonce(cp: ControlPlane) -> None:
    d = AdsStream(cp.port, vm_node("127.0.0.8", group="", name="delta"), delta=True)
    try:
        d.send(CDS)
        r = d.recv()
        wait_until(lambda: proxy(cp, "delta.default")["xds"]["CDS"].get("nonceSent") == r.nonce)
        w = proxy(cp, "delta.default")["xds"]["CDS"]
        assert w["status"] == "STALE" and w["nonceAcked"] == "" and w["versionSent"] == r.system_version_info
        d.ack(r)
        wait_until(lambda: proxy(cp, "delta.default")["xds"]["CDS"]["status"] == "SYNCED")
        w = proxy(cp, "delta.default")["xds"]["CDS"]
        assert w["nonceAcked"] == r.nonce and w["versionAcked"] == r.system_version_info
        assert proxy(cp, "delta.default")["stream"] == "delta"
    finally:
        d.close()


def test_workload_entries_connection_and_health(cp: ControlPlane, vm: AdsStream) -> None:
    name = "product-vm-127.0.0.3"
    wait_until(lambda: entry(cp, name)["streamsHere"] == 1)
    e = entry(cp, name)
    assert (e["namespace"], e["source"], e["workloadGroup"], e["autoRegistered"]) == (
        "default",
        "registered",
        "product-vm",
        True,
    )
    assert (e["address"], e["network"], e["serviceAccount"]) == ("127.0.0.3", "", "product")
    assert e["labels"] == {"app": "product", "version": "vm"}
    assert e["connected"] is True and e["controller"] == "replica-a" and e["connectedAt"].endswith("Z")
    assert e["disconnectedAt"] is None and e["connectedReplicas"] is None  # SQLite: no replicas
    assert e["certificate"] is None  # its stream is on the plaintext listener
    # Health-checked (the proxy has a readinessProbe) and not reported yet: not an endpoint.
    assert e["healthChecked"] is True and e["healthy"] is None and e["health"] is None
    assert e["services"] == []

    vm.health(True)
    wait_until(lambda: entry(cp, name)["healthy"] is True)
    wait_until(lambda: entry(cp, name)["services"] == [PRODUCT])
    vm.health(False, "dial tcp 127.0.0.3:8080: connection refused")
    wait_until(lambda: entry(cp, name)["healthy"] is False)
    h = entry(cp, name)["health"]
    assert h["status"] == "False" and h["message"] == "dial tcp 127.0.0.3:8080: connection refused"
    assert h["lastProbeTime"].endswith("Z") and h["lastTransitionTime"].endswith("Z")
    wait_until(lambda: entry(cp, name)["services"] == [])

    groups = api(cp, "workloadentries")["workloadGroups"]
    assert groups == [{"namespace": "default", "name": "product-vm", "configured": True, "entries": [name]}]

    vm.close()
    wait_until(lambda: entry(cp, name)["connected"] is False)
    e = entry(cp, name)
    assert e["disconnectedAt"].endswith("Z") and e["connectedAt"] is None and e["streamsHere"] == 0


def test_services_list_pods_and_vms_side_by_side(cp: ControlPlane, vm: AdsStream) -> None:
    vm.health(True)
    wait_until(lambda: [e["health"] for e in service(cp, PRODUCT)["endpoints"]] == ["HEALTHY", "HEALTHY"])
    body = api(cp, "services")
    assert body["replica"] == "replica-a" and body["version"] >= 1
    svc = next(s for s in body["services"] if s["hostname"] == PRODUCT)
    assert (svc["namespace"], svc["name"], svc["registry"], svc["resolution"]) == (
        "default",
        "product",
        "Kubernetes",
        "ClientSideLB",
    )
    assert svc["addresses"] == ["10.96.0.20"]
    assert svc["ports"] == [{"name": "grpc", "port": 8080, "protocol": "GRPC"}]
    pod, we = sorted(svc["endpoints"], key=lambda e: e["kind"])
    assert pod == {
        "kind": "Pod",
        "namespace": "default",
        "name": "product-pod-0",
        "address": "127.0.0.2",
        "port": 8080,
        "servicePort": 8080,
        "network": "",
        "locality": "",
        "health": "HEALTHY",
        "healthMessage": "",
        "tlsMode": "disabled",  # no security.istio.io/tlsMode label
        "serviceAccount": "spiffe://cluster.local/ns/default/sa/product",
        "weight": 1,
    }
    assert (we["kind"], we["name"], we["address"], we["tlsMode"]) == (
        "WorkloadEntry",
        "product-vm-127.0.0.3",
        "127.0.0.3",
        "istio",  # a serviceAccount and no label: istio
    )
    assert we["serviceAccount"] == "spiffe://cluster.local/ns/default/sa/product"
    ext = next(s for s in body["services"] if s["hostname"] == "api.payments.example.com")
    assert ext["registry"] == "External" and ext["addresses"] == ["240.240.0.1", "2001:2::1"]


def test_config_errors_name_file_object_and_field(cp: ControlPlane) -> None:
    body = api(cp, "config-errors")
    assert body["replica"] == "replica-a" and body["configDir"] == str(cp.config_dir)
    assert body["watcher"]["state"] == "ok" and body["pushError"] == ""
    by_file = {Path(e["file"]).name: e for e in body["errors"]}
    assert set(by_file) == {"bad.yaml", "broken.yaml"}
    bad = by_file["bad.yaml"]
    assert (bad["object"], bad["field"], bad["message"], bad["wholeFile"]) == (
        "WorkloadEntry default/bad",
        "spec.ports[http]",
        "must be <= 65535, got 99999",
        False,
    )
    assert bad["text"].endswith("WorkloadEntry default/bad: spec.ports[http]: must be <= 65535, got 99999")
    broken = by_file["broken.yaml"]
    assert broken["wholeFile"] is True and broken["message"].startswith("invalid YAML: line 2")
    # Fixed: gone at the next load.
    (cp.config_dir / "bad.yaml").unlink()
    cp.reload()
    assert {Path(e["file"]).name for e in api(cp, "config-errors")["errors"]} == {"broken.yaml"}


def test_proxy_status_cli(cp: ControlPlane, vm: AdsStream) -> None:
    nacker = AdsStream(cp.port, vm_node("127.0.0.9", group="", name="nacker"))
    try:
        nacker.send(CDS)
        r = nacker.recv()
        nacker.send(CDS, version=r.version_info, nonce=r.nonce, error="bad cluster")
        wait_until(lambda: proxy(cp, "nacker.default")["xds"]["CDS"]["nacked"])
        wait_until(lambda: proxy(cp, "vm-1.default")["xds"]["EDS"]["status"] == "SYNCED")
        url = f"http://{cp.monitoring.address}"
        out = subprocess.run(
            [*pymesh_cli(), "proxy-status", "--control-plane", url], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].split() == ["NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "NDS", "ISTIOD", "VERSION"]
        rows = {ln.split()[0]: ln for ln in lines[1:]}
        assert set(rows) == {"nacker.default", "vm-1.default"}
        assert rows["vm-1.default"].split() == [
            "vm-1.default", "-", "SYNCED", "SYNCED", "SYNCED", "NOT", "SENT", "NOT", "SENT", "replica-a", "1.29.0",
        ]  # fmt: skip
        assert rows["nacker.default"].split()[2:5] == ["STALE", "(NACK)", "NOT"]
        assert "nacker.default CDS NACK: bad cluster" in out.stderr

        # -o json: the API's document; the env var names the control plane when the flag is absent.
        out = subprocess.run(
            [*pymesh_cli(), "proxy-status", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYMESH_CONTROL_PLANE": url},
        )
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert {p["proxyId"] for p in doc["proxies"]} == {"nacker.default", "vm-1.default"}

        # Nothing listening: a clear error, exit 1.
        dead = f"http://127.0.0.1:{free_port()}"
        out = subprocess.run(
            [*pymesh_cli(), "proxy-status", "--control-plane", dead], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 1 and dead in out.stderr
    finally:
        nacker.close()


def test_page_at_root_references_the_api(cp: ControlPlane) -> None:
    with urllib.request.urlopen(f"http://{cp.monitoring.address}/", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/html")
        page = r.read().decode()
    for path in (
        "/api/v1/services",
        "/api/v1/workloadentries",
        "/api/v1/proxies",
        "/api/v1/config-errors",
        "/api/v1/graph",
    ):
        assert path in page
    assert "http://" not in page and "https://" not in page  # no external assets
    assert "<th>CERTIFICATE</th>" in page  # the workload entries' certificates
    # The inline script runs by its hash in the page's Content-Security-Policy, nothing else does.
    script = page[page.index("<script>") + len("<script>") : page.index("</script>")]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"default-src 'none'; connect-src 'self'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'" in page
    assert page.count("<script") == 1 and " on" + "click=" not in page


def test_unhealthy_entries_are_listed_under_their_services(cp: ControlPlane, vm: AdsStream) -> None:
    def vms() -> list[dict[str, Any]]:
        return [e for e in service(cp, PRODUCT)["endpoints"] if e["kind"] == "WorkloadEntry"]

    # Health-checked and not reported yet: left out of EDS, shown as UNHEALTHY without a message.
    wait_until(lambda: [(e["name"], e["health"], e["healthMessage"]) for e in vms()] == [(ENTRY, "UNHEALTHY", "")])
    vm.health(True)
    wait_until(lambda: [(e["health"], e["healthMessage"]) for e in vms()] == [("HEALTHY", "")])
    vm.health(False, PROBE_FAILURE)
    wait_until(lambda: [e["health"] for e in vms()] == ["UNHEALTHY"])
    (we,) = vms()
    assert we == {
        "kind": "WorkloadEntry",
        "namespace": "default",
        "name": ENTRY,
        "address": "127.0.0.3",
        "port": 8080,
        "servicePort": 8080,
        "network": "",
        "locality": "",
        "health": "UNHEALTHY",
        "healthMessage": PROBE_FAILURE,  # the probe's last failure, from the Healthy condition
        "tlsMode": "istio",
        "serviceAccount": "spiffe://cluster.local/ns/default/sa/product",
        "weight": 1,
    }
    # Listed after the served pod of the port, and still not served: not one of the entry's services.
    assert [e["health"] for e in service(cp, PRODUCT)["endpoints"]] == ["HEALTHY", "UNHEALTHY"]
    assert entry(cp, ENTRY)["services"] == []


# --- the Host header (DNS rebinding) -------------------------------------------------------------


def request(address: str, path: str, hosts: tuple[str, ...], method: str = "GET") -> tuple[int, str, str]:
    """One request to ``address`` (host:port) with exactly these Host headers (none, one, two):
    status, content type, body."""
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for h in hosts:
            conn.putheader("Host", h)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type") or "", r.read().decode()
    finally:
        conn.close()


def status(address: str, host: str, path: str = "/api/v1/proxies") -> int:
    return request(address, path, (host,))[0]


def test_only_local_and_bound_hosts_are_served(cp: ControlPlane) -> None:
    address = cp.monitoring.address
    port = address.rpartition(":")[2]
    for host in (address, f"localhost:{port}", "localhost", "LocalHost:1", f"[::1]:{port}", "[0:0::1]", "127.0.0.1"):
        for path in ("/", "/api/v1/services", "/metrics", "/debug/status"):
            assert status(address, host, path) == 200, (host, path)
    for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.2:{port}", "localhost.attacker.example"):
        code, ctype, body = request(address, "/api/v1/workloadentries", (host,))
        assert (code, ctype) == (403, "text/plain; charset=utf-8"), host
        assert body == f"Host {host!r} is not allowed on this admin port (DNS rebinding protection)\n"
        assert status(address, host, "/metrics") == 403 and status(address, host, "/no-such-page") == 403
        assert request(address, "/", (host,), "HEAD")[:2] == (403, "text/plain; charset=utf-8")
    # Not exactly one Host (RFC 9112 section 3.2), or not host[:port]: 400.
    assert request(address, "/", ())[0] == 400
    code, _, body = request(address, "/", (address, "attacker.example"))
    assert code == 400 and body.startswith("2 Host headers")
    assert request(address, "/", ("localhost:http",))[0] == 400


def test_allowed_hosts_from_the_command_line(tmp_path: Path) -> None:
    cfg = example_config(tmp_path / "mesh", 8080)
    proc = subprocess.Popen(
        [*pymesh_cli(), "controlplane", "--config", str(cfg), "--xds-listen", "127.0.0.1:0",
         "--data-dir", str(tmp_path / "data"), "--monitoring-listen", "127.0.0.1:0",
         "--monitoring-allowed-hosts", "Dash.example,[2001:db8::7]", "--monitoring-allowed-hosts", "cp.internal:15014"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        banner = dict(proc.stdout.readline().split(" ", 1) for _ in range(2))
        address = banner["monitoring"].strip()
        for host in ("dash.example:15014", "dash.example", "[2001:db8::7]:80", "cp.internal", address, "localhost"):
            assert status(address, host) == 200, host
        for host in ("attacker.example", "dash.example.attacker.example", "[2001:db8::8]"):
            assert status(address, host) == 403, host
    finally:
        proc.terminate()
        reap(proc, 10)


@pytest.mark.parametrize("allowed", [(), ("dash.example",)])
def test_a_wildcard_bind_serves_any_host_unless_names_are_given(tmp_path: Path, allowed: tuple[str, ...]) -> None:
    c = ControlPlane(
        example_config(tmp_path / "mesh", 8080),
        xds_listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        monitoring_listen="0.0.0.0:0",
        monitoring_allowed_hosts=allowed,
    ).start()
    try:
        address = f"127.0.0.1:{c.monitoring.address.rpartition(':')[2]}"
        for host in ("localhost", "0.0.0.0", *allowed):
            assert status(address, host) == 200, host
        assert status(address, "attacker.example") == (403 if allowed else 200)
    finally:
        c.stop()


# --- certificates ----------------------------------------------------------------------------------


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[ControlPlane]:
    """A control plane with its CA and TLS port only (no plaintext listener)."""
    c = ControlPlane(
        example_config(tmp_path / "mesh", 8080),
        xds_listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        security=SecurityOptions(secure_listen="127.0.0.1:0"),
        plaintext=False,
        debounce=0.02,
        monitoring_listen="127.0.0.1:0",
    ).start()
    yield c
    c.stop()


def workload_certs(cp: ControlPlane, d: Path, ttl: float, token: str | None = None) -> WorkloadCerts:
    return WorkloadCerts(f"127.0.0.1:{cp.secure_port}", cp.security.ca.root_pem, d, token=lambda: token, ttl=ttl)


def shows(cp: ControlPlane, held: Held) -> None:
    """The entry and its proxy show ``held``'s leaf, field by field."""
    leaf = load_certs(held.chain, "cert-chain.pem")[0]
    not_after = leaf.not_valid_after_utc
    serial = f"{leaf.serial_number:x}"  # lower-case hex, as Envoy's /certs

    def both() -> list[Any] | None:
        got = [entry(cp, ENTRY)["certificate"], proxy(cp, "vm-1.default")["certificate"]]
        return got if all(c is not None and c["serial"] == serial for c in got) else None

    for c in wait_until(both):
        assert set(c) == {"serial", "notAfter", "expiresInSeconds"}
        assert c["notAfter"] == not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
        left = not_after.timestamp() - time.time()
        assert left - 2 <= c["expiresInSeconds"] <= left + 1, (c, left)


def test_the_certificate_a_proxy_holds_from_its_csrs(secure: ControlPlane, tmp_path: Path) -> None:
    cp = secure
    # The first certificate, from a token; the VM's stream presents it.
    wc = workload_certs(cp, tmp_path / "certs", 3600, cp.security.tokens.create("default", "product"))
    first = wc.fetch()
    s = Stream(wc.channel(), vm_node("127.0.0.3"))
    try:
        s.send(CDS)
        assert s.recv().type_url == CDS
        shows(cp, first)
        assert 3500 < entry(cp, ENTRY)["certificate"]["expiresInSeconds"] <= 3600

        # Renewed over mTLS with it (as istio-agent renews): the same stream's proxy now holds the new one.
        renewed = wc.fetch()
        assert renewed.chain != first.chain
        shows(cp, renewed)

        # A renewal for a second only (same key holder, same directory): shown, then expired.
        short = workload_certs(cp, tmp_path / "certs", 1).fetch()
        shows(cp, short)
        wait_until(lambda: entry(cp, ENTRY)["certificate"]["expiresInSeconds"] < 0, timeout=5)
    finally:
        s.close()
    # Its stream gone, this replica knows no certificate of it.
    wait_until(lambda: entry(cp, ENTRY)["streamsHere"] == 0)
    assert entry(cp, ENTRY)["certificate"] is None
