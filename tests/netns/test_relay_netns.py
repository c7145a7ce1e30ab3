"""The outbound proxy end to end in network namespaces: an app's TCP is
redirected by real nftables rules to the proxy (running as the proxy uid
the rules exclude), which reads the original destination, routes service
VIPs to cluster endpoints by policy, passes everything else through, retries
and reports connect failures, and relays large streams intact with
half-close.

Needs root (network namespaces, nftables rules, the app and the proxy as fixed uids
via setpriv), iproute2 and nft: without them it is skipped with the reason, or
fails when PYMESH_REQUIRE_ROOT_TESTS is set (CI)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.netns import APP_UID, EXTRA4, EXTRA6, PROXY_UID, VM4, Lab, lab, require_root_tools

VIP4, VIP6 = "10.96.0.10", "fd96::10"
BAD_VIP = "10.96.0.11"
CLUSTER = "outbound|80||svc.default.svc.cluster.local"
BAD = "outbound|80||flaky.default.svc.cluster.local"


def ep(addr: str, port: int, weight: int = 1) -> dict[str, Any]:
    return {
        "endpoint": {"address": {"socket_address": {"address": addr, "port_value": port}}},
        "load_balancing_weight": weight,
    }


def cluster(name: str, eps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"endpoints": [{"lb_endpoints": eps}]},
        **extra,
    }


CONFIG: dict[str, Any] = {
    "seed": 7,
    "clusters": [
        # Weighted round robin 1:3 (Envoy's EDF scheduler).
        cluster(CLUSTER, [ep(EXTRA4[0], 8080, 1), ep(EXTRA4[1], 8080, 3)]),
        # One endpoint refuses connections; outlier detection ejects it after
        # two consecutive local-origin failures (mapped to 503, Envoy's default).
        cluster(
            BAD,
            [ep(EXTRA4[2], 8081), ep(EXTRA4[0], 8080)],
            outlier_detection={"consecutive_5xx": 2, "max_ejection_percent": 100, "interval": "60s"},
        ),
    ],
    "redirect": {
        "services": [
            {"address": VIP4, "port": 80, "cluster": CLUSTER},
            {"address": VIP6, "port": 80, "cluster": CLUSTER},
            {"address": VIP4, "port": 9000, "cluster": "sink"},
            {"address": BAD_VIP, "port": 80, "cluster": BAD},
            {"address": VIP4, "port": 9001, "cluster": "outbound|9001||missing"},
        ],
        "include_ip_ranges": ["*"],
    },
    # 2.5 s: above the 1 s SYN retransmission, so a first SYN lost while the
    # veth's neighbours are resolved does not fail a connect.
    "options": {"listen": ["127.0.0.1:15001", "[::1]:15001"], "connect_timeout": 2.5},
}
CONFIG["clusters"].append(cluster("sink", [ep(EXTRA4[0], 9000)]))
# Consistent hashing: a TCP connection's key is its source address.
HASH_VIP, HASHED = "10.96.0.14", "outbound|80||sticky.default.svc.cluster.local"
CONFIG["clusters"].append({**cluster(HASHED, [ep(EXTRA4[0], 8080), ep(EXTRA4[1], 8080)]), "lb_policy": "MAGLEV"})
CONFIG["redirect"]["services"].append({"address": HASH_VIP, "port": 80, "cluster": HASHED})
# An endpoint whose SYNs are dropped (nothing routes 10.78.0.9): connects time out.
SLOW_VIP, SLOW = "10.96.0.13", "outbound|80||slow.default.svc.cluster.local"
CONFIG["clusters"].append(cluster(SLOW, [ep("10.78.0.9", 8080), ep(EXTRA4[1], 8080)]))
CONFIG["redirect"]["services"].append({"address": SLOW_VIP, "port": 80, "cluster": SLOW})
# A DNS ServiceEntry's LOGICAL_DNS cluster: resolved by name per connection.
EXT_VIP, EXT = "10.96.0.12", "outbound|80||ext.example.com"
CONFIG["redirect"]["services"].append({"address": EXT_VIP, "port": 80, "cluster": EXT})
CONFIG["logical_dns"] = {EXT: ["ext.example.com", 8080]}


class Proxy:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        result: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return result


@pytest.fixture(scope="module")
def mesh() -> Iterator[tuple[Lab, Proxy]]:
    require_root_tools("nft")
    with lab() as lb:
        lb.serve(lb.net, "ep1", [f"tcp:{EXTRA4[0]}:8080", f"sink:{EXTRA4[0]}:9000"])
        lb.serve(lb.net, "ep2", [f"tcp:{EXTRA4[1]}:8080"])
        lb.serve(lb.net, "direct", [f"tcp:{EXTRA4[3]}:80", f"tcp:[{EXTRA6[0]}]:80"])
        lb.etc(lb.vm, "hosts", f"127.0.0.1 localhost\n{EXTRA4[1]} ext.example.com\n")
        lb.capture("nftables", proxy_uid=PROXY_UID, name="pmrelay")
        path = Path("/tmp") / f"{lb.vm}-relay.json"
        path.write_text(json.dumps(CONFIG))
        proc = lb.start(lb.vm, "relay", str(path), uid=PROXY_UID)
        assert json.loads(proc.first_line)["addresses"] == ["127.0.0.1:15001", "[::1]:15001"]  # type: ignore[attr-defined]
        yield lb, Proxy(proc)


def test_service_connections_follow_the_cluster_policy(mesh: tuple[Lab, Proxy]) -> None:
    lb, proxy = mesh
    before = proxy.stats()["stats"]
    counts = lb.peer(lb.vm, "tcpmany", VIP4, "80", "200", uid=APP_UID)
    # Weights 1:3 under weighted round robin: exact proportions per cycle.
    assert counts == {"ep1": 50, "ep2": 150}
    after = proxy.stats()["stats"]
    assert after["cluster"] - before["cluster"] == 200
    assert after["connect_failures"] == before["connect_failures"]


def test_ipv6_service_vip(mesh: tuple[Lab, Proxy]) -> None:
    lb, _ = mesh
    counts = lb.peer(lb.vm, "tcpmany", VIP6, "80", "8", uid=APP_UID)
    assert counts == {"ep1": 2, "ep2": 6}


def test_unknown_destinations_pass_through_where_they_were_going(mesh: tuple[Lab, Proxy]) -> None:
    lb, proxy = mesh
    before = proxy.stats()["stats"]["passthrough"]
    # The server sees a plain connection (no redirect on its side): the proxy
    # connected to the original destination, and was not captured itself.
    assert lb.tcp(EXTRA4[3], 80) == f"direct {EXTRA4[3]}:80 -"
    assert lb.tcp(EXTRA6[0], 80) == f"direct {EXTRA6[0]}:80 -"
    assert proxy.stats()["stats"]["passthrough"] - before == 2
    # A passthrough destination that refuses: the app sees the connection fail.
    r = lb.peer(lb.vm, "tcp", EXTRA4[3], "81", uid=APP_UID)
    assert r.get("error") in ("ConnectionResetError",) or r.get("reply") == "eof", r


def test_connect_failures_are_retried_reported_and_eject(mesh: tuple[Lab, Proxy]) -> None:
    lb, proxy = mesh
    before = proxy.stats()["stats"]
    counts = lb.peer(lb.vm, "tcpmany", BAD_VIP, "80", "10", uid=APP_UID)
    # Every connection still reaches the healthy endpoint: a refused connect
    # is retried on another endpoint.
    assert counts == {"ep1": 10}
    s = proxy.stats()
    st = s["stats"]
    assert st["connect_failures"] - before["connect_failures"] >= 2
    assert st["retries"] - before["retries"] == st["connect_failures"] - before["connect_failures"]
    eps = {e["address"]: e for e in s["endpoints"][BAD]}
    # Two consecutive failures ejected it: later connections no longer try it.
    assert eps[f"{EXTRA4[2]}:8081"]["ejected"] and eps[f"{EXTRA4[2]}:8081"]["ejections"] == 1
    assert not eps[f"{EXTRA4[0]}:8080"]["ejected"]
    assert st["connect_failures"] - before["connect_failures"] == 2


def test_connect_timeouts_are_reported_as_timeouts_and_retried(mesh: tuple[Lab, Proxy]) -> None:
    lb, proxy = mesh
    before = proxy.stats()["stats"]
    # Round robin alternates, so one of two connections tries the dropped endpoint first.
    counts = lb.peer(lb.vm, "tcpmany", SLOW_VIP, "80", "2", uid=APP_UID)
    assert counts == {"ep2": 2}
    st = proxy.stats()["stats"]
    assert st["connect_timeouts"] - before["connect_timeouts"] == 1
    assert st["connect_failures"] - before["connect_failures"] == 1
    assert st["retries"] - before["retries"] == 1


def test_hashing_policies_keep_a_client_on_one_endpoint(mesh: tuple[Lab, Proxy]) -> None:
    from pymesh.lbtable import LbTable

    lb, _ = mesh
    counts = lb.peer(lb.vm, "tcpmany", HASH_VIP, "80", "30", uid=APP_UID)
    # Random picks would split 30 connections over both endpoints.
    assert len(counts) == 1, counts
    # The same endpoint LbTable.pick gives for the client's address as key.
    table = LbTable(seed=CONFIG["seed"])  # the proxy's table has this seed
    table.load(CONFIG["clusters"])
    want = {f"{EXTRA4[0]}:8080": "ep1", f"{EXTRA4[1]}:8080": "ep2"}[str(table.pick(HASHED, VM4))]
    assert counts == {want: 30}


def test_large_upload_with_half_close_arrives_intact(mesh: tuple[Lab, Proxy]) -> None:
    lb, _ = mesh
    size = 48 << 20
    r = lb.peer(lb.vm, "upload", VIP4, "9000", str(size), uid=APP_UID)
    # The sink replies after our FIN: the proxy passed the half-close on and
    # kept relaying the other direction.
    assert r["reply"] == [str(size), r["sha256"]]


def test_large_echo_both_directions_arrives_intact(mesh: tuple[Lab, Proxy]) -> None:
    lb, proxy = mesh
    r = lb.peer(lb.vm, "echo", VIP4, "80", str(24 << 20), uid=APP_UID)
    assert r["intact"] and r["header"].split()[0] in ("ep1", "ep2")
    st = proxy.stats()["stats"]
    assert st["bytes_sent"] >= 24 << 20 and st["bytes_received"] >= 24 << 20


def test_connections_end_cleanly_and_nothing_leaks(mesh: tuple[Lab, Proxy]) -> None:
    lb, proxy = mesh
    lb.peer(lb.vm, "tcpmany", VIP4, "80", "20", uid=APP_UID)
    deadline = time.monotonic() + 5
    while proxy.stats()["stats"]["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    s = proxy.stats()
    assert s["stats"]["active"] == 0
    # LEAST_REQUEST's active-request counts return to zero with the connections.
    assert all(e["active_requests"] == 0 for eps in s["endpoints"].values() for e in eps)


def test_logical_dns_clusters_connect_to_the_resolved_host(mesh: tuple[Lab, Proxy]) -> None:
    lb, proxy = mesh
    before = proxy.stats()["stats"]["cluster"]
    # ext.example.com resolves (the namespace's /etc/hosts) to ep2's address.
    assert lb.tcp(EXT_VIP, 80).startswith(f"ep2 {EXTRA4[1]}:8080")
    assert proxy.stats()["stats"]["cluster"] - before == 1


def test_a_service_whose_cluster_is_unknown_is_refused(mesh: tuple[Lab, Proxy]) -> None:
    lb, proxy = mesh
    before = proxy.stats()["stats"]["unknown_cluster"]
    # VIP:9001 names a cluster the table lacks.
    r = lb.peer(lb.vm, "tcp", VIP4, "9001", uid=APP_UID)
    assert r.get("error") == "ConnectionResetError" or r.get("reply") == "eof", r
    assert proxy.stats()["stats"]["unknown_cluster"] - before == 1


def test_stop_ends_open_connections_and_a_restart_serves_again() -> None:
    require_root_tools("nft")
    with lab() as lb:
        lb.serve(lb.net, "ep1", [f"tcp:{EXTRA4[0]}:8080"])
        lb.serve(lb.net, "ep2", [f"tcp:{EXTRA4[1]}:8080"])
        lb.capture("nftables", proxy_uid=PROXY_UID, name="pmrelay", ipv6=False)
        path = Path("/tmp") / f"{lb.vm}-relay.json"
        path.write_text(json.dumps({**CONFIG, "logical_dns": {}}))
        relay = lb.start(lb.vm, "relay", str(path), uid=PROXY_UID)
        client = lb.start(lb.vm, "hold", VIP4, "80", uid=APP_UID)
        assert json.loads(client.first_line)["header"].startswith("ep")  # type: ignore[attr-defined]
        assert relay.stdin is not None and relay.stdout is not None
        relay.stdin.write("quit\n")
        relay.stdin.flush()
        assert json.loads(relay.stdout.readline()) == {"stopped": True}
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write("go\n")
        client.stdin.flush()
        # The relayed connection was reset by stop, not left half-alive.
        assert json.loads(client.stdout.readline())["after"] in ("eof", "ConnectionResetError", "BrokenPipeError")
        relay.wait(timeout=10)
        # The listeners are released: a new proxy binds the same ports and serves.
        lb.start(lb.vm, "relay", str(path), uid=PROXY_UID)
        assert lb.tcp(VIP4, 80).startswith("ep")


def test_inbound_passthrough_delivers_captured_inbound_connections_to_the_local_app() -> None:
    require_root_tools("nft")
    with lab() as lb:
        lb.serve(lb.vm, "app", ["tcp:0.0.0.0:8000"], uid=APP_UID)
        lb.capture(
            "nftables", proxy_uid=PROXY_UID, name="pmin", inbound_ports="*", inbound_exclude_ports=[22], ipv6=False
        )
        # Captured to 15006 with nothing there: refused.
        assert lb.peer(lb.net, "tcp", VM4, "8000") == {"error": "ConnectionRefusedError", "errno": 111}
        proxy = lb.start(lb.vm, "inbound", "0.0.0.0:15006", uid=PROXY_UID)
        # Through the passthrough to the app, whose address it was; the
        # proxy's own connection (from 127.0.0.6) was not captured again.
        assert lb.peer(lb.net, "tcp", VM4, "8000")["reply"].startswith(f"app {VM4}:8000")
        assert proxy.stdin is not None and proxy.stdout is not None
        proxy.stdin.write("stats\n")
        proxy.stdin.flush()
        st = json.loads(proxy.stdout.readline())
        assert st["passthrough"] == 1 and st["cluster"] == 0 and st["connect_failures"] == 0


def test_idle_connections_are_closed_after_the_idle_timeout() -> None:
    require_root_tools("nft")
    with lab() as lb:
        lb.serve(lb.net, "ep1", [f"tcp:{EXTRA4[0]}:8080"])
        lb.serve(lb.net, "ep2", [f"tcp:{EXTRA4[1]}:8080"])
        lb.capture("nftables", proxy_uid=PROXY_UID, name="pmidle", ipv6=False)
        path = Path("/tmp") / f"{lb.vm}-relay.json"
        cfg = {**CONFIG, "logical_dns": {}, "options": {**CONFIG["options"], "idle_timeout": 0.6}}
        path.write_text(json.dumps(cfg))
        relay = Proxy(lb.start(lb.vm, "relay", str(path), uid=PROXY_UID))
        client = lb.start(lb.vm, "hold", VIP4, "80", uid=APP_UID)
        assert json.loads(client.first_line)["header"].startswith("ep")  # type: ignore[attr-defined]
        time.sleep(1.5)
        st = relay.stats()["stats"]
        assert st["idle_timeouts"] == 1 and st["active"] == 0 and st["resets"] == 0
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write("go\n")
        client.stdin.flush()
        assert json.loads(client.stdout.readline())["after"] in ("eof", "ConnectionResetError", "BrokenPipeError")
