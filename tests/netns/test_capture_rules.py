"""Capture rules, both backends, proven with real packets in network
namespaces (see ``support.netns``): what is redirected where, what passes, and
that cleanup leaves the ruleset exactly as it found it.

Needs root (network namespaces, the rules themselves, clients and servers as fixed
uids via setpriv), iproute2, nft and iptables: without them it is skipped with the
reason, or fails when PYMESH_REQUIRE_ROOT_TESTS is set (CI)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

from pymesh.capture import CaptureConfig, CaptureError, redirect_table
from support.netns import APP_UID, EXTRA4, EXTRA6, NET4, NET6, PROXY_UID, VM4, Lab, lab, require_root_tools

BACKENDS = ["nftables", "iptables"]
SETTINGS: dict[str, Any] = {
    "proxy_uid": PROXY_UID,
    "redirect_dns": True,
    # 127.0.0.53: a loopback resolver, as systemd-resolved hosts have.
    "dns_servers": [NET4, NET6, "127.0.0.53"],
    "outbound_exclude": ["10.79.0.0/16"],
    "outbound_exclude_ports": [22],
    "inbound_ports": "*",
    "inbound_exclude_ports": [22],
    "name": "pmtest",
}


@pytest.fixture(params=BACKENDS)
def captured(request: pytest.FixtureRequest) -> Iterator[tuple[Lab, str]]:
    backend = request.param
    require_root_tools("nft" if backend == "nftables" else "iptables")
    with lab() as lb:
        lb.serve(
            lb.net,
            "server",
            [
                f"tcp:{NET4}:80",
                f"tcp:{NET4}:22",
                f"tcp:{EXTRA4[0]}:8080",
                f"tcp:{EXTRA4[3]}:80",
                f"tcp:[{EXTRA6[0]}]:80",
                f"udp:{NET4}:53",
                f"udp:[{NET6}]:53",
                f"udp:{EXTRA4[1]}:53",
            ],
        )
        lb.serve(
            lb.vm,
            "proxy",
            [
                "tcp:127.0.0.1:15001",
                "tcp:[::1]:15001",
                "udp:127.0.0.1:15053",
                "udp:[::1]:15053",
                "tcp:127.0.0.1:15053",
                "tcp:0.0.0.0:15006",
            ],
            # The agent's replies must come from the proxy uid: the raw rules
            # put them in conntrack zone 2, where the app's redirected query is.
            uid=PROXY_UID,
        )
        lb.serve(lb.vm, "vm-ssh", ["tcp:0.0.0.0:22"])
        lb.capture(backend, **SETTINGS)
        yield lb, backend


def test_outbound_tcp_from_an_app_lands_on_15001_with_its_original_destination(captured: tuple[Lab, str]) -> None:
    lb, _ = captured
    assert lb.tcp(EXTRA4[0], 8080) == f"proxy 127.0.0.1:15001 {EXTRA4[0]}:8080"
    assert lb.tcp(NET4, 80) == f"proxy 127.0.0.1:15001 {NET4}:80"
    assert lb.tcp(EXTRA6[0], 80) == f"proxy ::1:15001 [{EXTRA6[0]}]:80"


def test_the_proxy_users_traffic_is_never_captured(captured: tuple[Lab, str]) -> None:
    lb, _ = captured
    assert lb.tcp(EXTRA4[0], 8080, uid=PROXY_UID).startswith(f"server {EXTRA4[0]}:8080")
    assert lb.tcp(EXTRA6[0], 80, uid=PROXY_UID).startswith(f"server {EXTRA6[0]}:80")
    # Its DNS queries reach the real server too (the agent's upstream).
    assert lb.udp(NET4, 53, uid=PROXY_UID) == f"server {NET4}:53"


def test_excluded_cidrs_and_ports_pass_through(captured: tuple[Lab, str]) -> None:
    lb, _ = captured
    assert lb.tcp(EXTRA4[3], 80).startswith(f"server {EXTRA4[3]}:80")  # 10.79.0.0/16 excluded
    assert lb.tcp(NET4, 22).startswith(f"server {NET4}:22")  # port 22 excluded


def test_dns_to_the_resolv_conf_nameservers_lands_on_15053(captured: tuple[Lab, str]) -> None:
    lb, _ = captured
    r = lb.peer(lb.vm, "udp", NET4, "53", uid=APP_UID)
    # Answered by the listener on 15053, and the reply comes back from the
    # address the app asked (reverse NAT), so the app accepts it.
    assert r == {"reply": "proxy 127.0.0.1:15053", "from": f"{NET4}:53"}
    r6 = lb.peer(lb.vm, "udp", NET6, "53", uid=APP_UID)
    assert r6 == {"reply": "proxy ::1:15053", "from": f"{NET6}:53"}
    # DNS to an address that is not a nameserver is left alone.
    assert lb.udp(EXTRA4[1], 53) == f"server {EXTRA4[1]}:53"


def test_tcp_dns_and_a_loopback_resolver_are_captured(captured: tuple[Lab, str]) -> None:
    lb, _ = captured
    assert lb.tcp(NET4, 53) == f"proxy 127.0.0.1:15053 {NET4}:53"
    # Loopback TCP from apps is normally left alone, but not DNS (Istio's
    # `! --dport 53` exception), so a local resolver like 127.0.0.53 is caught.
    assert lb.tcp("127.0.0.53", 53) == "proxy 127.0.0.1:15053 127.0.0.53:53"
    assert lb.peer(lb.vm, "udp", "127.0.0.53", "53", uid=APP_UID) == {
        "reply": "proxy 127.0.0.1:15053",
        "from": "127.0.0.53:53",
    }
    # Other loopback TCP from apps is not captured: nothing listens on 127.0.0.1:8081.
    assert lb.tcp("127.0.0.1", 8081) == "ConnectionRefusedError"


def test_inbound_tcp_lands_on_15006_except_excluded_ports(captured: tuple[Lab, str]) -> None:
    lb, _ = captured
    r = lb.peer(lb.net, "tcp", VM4, "8000")
    assert r["reply"] == f"proxy {VM4}:15006 {VM4}:8000"
    r = lb.peer(lb.net, "tcp", VM4, "22")
    assert r["reply"].startswith(f"vm-ssh {VM4}:22")


@pytest.mark.parametrize("backend", BACKENDS)
def test_setup_is_idempotent_and_cleanup_restores_the_ruleset_exactly(backend: str) -> None:
    require_root_tools("nft" if backend == "nftables" else "iptables")
    with lab() as lb:
        # Someone else's rules are there before us and must survive.
        lb.run(lb.vm, "nft", "add", "table", "inet", "other")
        lb.run(lb.vm, "nft", "add", "chain", "inet", "other", "out", "{ type filter hook output priority 0; }")
        lb.run(lb.vm, "nft", "add", "rule", "inet", "other", "out", "tcp", "dport", "9", "counter")
        if backend == "iptables":
            lb.run(lb.vm, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "7", "-j", "RETURN")
        before_nft, before_ipt = lb.ruleset(), lb.iptables_save()
        lb.capture(backend, **SETTINGS)
        once_nft, once_ipt = lb.ruleset(), lb.iptables_save()
        assert once_nft != before_nft
        # Running setup again (a restart, or after a crash) converges to one copy.
        lb.capture(backend, **SETTINGS)
        lb.capture(backend, **SETTINGS)
        assert lb.ruleset() == once_nft
        assert lb.iptables_save() == once_ipt
        if backend == "iptables":
            lines = once_ipt.splitlines()
            # One jump per built-in chain, table and family.
            assert lines.count("-A OUTPUT -j PMTEST_OUTPUT") == 2
            assert lines.count("-A OUTPUT -j PMTEST_OUTPUT_DNS") == 2
            assert lines.count("-A PREROUTING -j PMTEST_INBOUND_DNS") == 2
        # Changed settings converge too: no DNS, no inbound -> those rules go.
        lb.capture(backend, **{**SETTINGS, "redirect_dns": False, "inbound_ports": []})
        changed = lb.ruleset() + lb.iptables_save()
        assert "15053" not in changed and "15006" not in changed
        assert lb.capture(backend, "remove", **SETTINGS) == {"removed": True}
        if backend == "nftables":
            assert lb.ruleset() == before_nft
        else:
            # iptables cannot delete built-in chains; iptables-nft leaves
            # them empty with policy accept, which filters nothing.
            assert lb.ruleset_without_empty_chains() == Lab.strip_empty(before_nft)
        assert lb.iptables_save() == before_ipt
        assert lb.capture(backend, "remove", **SETTINGS) == {"removed": False}


def test_capture_all_dns_captures_any_address() -> None:
    require_root_tools("nft")
    with lab() as lb:
        lb.serve(lb.net, "server", [f"udp:{EXTRA4[1]}:53"])
        lb.serve(lb.vm, "proxy", ["udp:127.0.0.1:15053"], uid=PROXY_UID)
        lb.capture("nftables", **{**SETTINGS, "dns_servers": [], "capture_all_dns": True})
        assert lb.udp(EXTRA4[1], 53) == "proxy 127.0.0.1:15053"


@pytest.mark.parametrize("backend", BACKENDS)
def test_outbound_ports_capture_those_ports_beyond_the_included_cidrs(backend: str) -> None:
    require_root_tools("nft" if backend == "nftables" else "iptables")
    with lab() as lb:
        lb.serve(lb.net, "server", [f"tcp:{EXTRA4[0]}:8080", f"tcp:{EXTRA4[0]}:9090", f"tcp:{EXTRA4[3]}:8080"])
        lb.serve(lb.vm, "proxy", ["tcp:127.0.0.1:15001"], uid=PROXY_UID)
        lb.capture(
            backend,
            **{
                **SETTINGS,
                "outbound_include": ["10.99.0.0/16"],
                "outbound_ports": [8080],
                "redirect_dns": False,
                "inbound_ports": [],
                "ipv6": False,
            },
        )
        assert lb.tcp(EXTRA4[0], 8080).startswith("proxy")  # a listed port
        assert lb.tcp(EXTRA4[0], 9090).startswith("server")  # neither port nor CIDR
        assert lb.tcp(EXTRA4[3], 8080).startswith("server")  # excluded CIDR still wins


def test_mark_excludes_marked_traffic() -> None:
    require_root_tools("nft")
    with lab() as lb:
        lb.serve(lb.net, "server", [f"tcp:{EXTRA4[0]}:8080"])
        lb.serve(lb.vm, "proxy", ["tcp:127.0.0.1:15001"])
        lb.capture("nftables", **{**SETTINGS, "mark": 0x539})
        assert lb.tcp(EXTRA4[0], 8080).startswith("proxy")
        # A marked socket (SO_MARK, what the relay sets with mark=) is not captured.
        code = (
            "import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,36,0x539);"
            f"s.connect(('{EXTRA4[0]}',8080));print(s.recv(100).decode())"
        )
        out = lb.run(lb.vm, sys.executable, "-c", code)
        assert out.startswith(f"server {EXTRA4[0]}:8080")


def test_invalid_settings_name_the_field() -> None:
    with pytest.raises(CaptureError, match=r"outbound_exclude\[1\]"):
        CaptureConfig(outbound_exclude=("10.0.0.0/8", "10.0.0.1/8"))
    with pytest.raises(CaptureError, match=r"inbound_exclude_ports\[0\]"):
        CaptureConfig(inbound_exclude_ports=("ssh",))  # type: ignore[arg-type]
    with pytest.raises(CaptureError, match="dns_servers"):
        CaptureConfig(dns_servers=("resolver.local",))
    with pytest.raises(CaptureError, match="name"):
        CaptureConfig(name="bad name")
    # Resolv.conf mode without nameservers captures no DNS (istio-iptables warns and skips).
    assert not CaptureConfig(redirect_dns=True).dns_enabled


def test_settings_from_istio_iptables_environment() -> None:
    env = {
        "PROXY_UID": "998",
        "ISTIO_INBOUND_PORTS": "*",
        "ISTIO_LOCAL_EXCLUDE_PORTS": "22,15090,15021,15020",
        "ISTIO_SERVICE_CIDR": "*",
        "ISTIO_SERVICE_EXCLUDE_CIDR": "10.0.0.0/8, fd00::/8",
        "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE": "5432",
        "ISTIO_META_DNS_CAPTURE": "true",
    }
    c = CaptureConfig.from_env(env, dns_servers=("127.0.0.53",))
    assert (c.proxy_uid, c.proxy_gid) == (998, 998)  # the GID defaults to the UID's number
    assert c.inbound_ports == "*" and c.inbound_exclude_ports == (22, 15020, 15021, 15090)
    assert c.outbound_exclude == ("10.0.0.0/8", "fd00::/8") and c.outbound_exclude_ports == (5432,)
    assert c.dns_enabled and c.dns_servers == ("127.0.0.53",)
    # The proxy's table agrees with the rules on what is captured.
    t = redirect_table(c, [{"address": "10.96.0.1", "port": 80, "cluster": "c"}])
    assert t.classify("10.1.2.3", 80) == ("bypass", None)
    assert t.classify("192.0.2.1", 5432) == ("bypass", None)
    assert t.classify("192.0.2.1", 80) == ("passthrough", None)
    assert t.classify("10.96.0.1", 80) == ("bypass", None)  # excluded range wins, as in iptables
