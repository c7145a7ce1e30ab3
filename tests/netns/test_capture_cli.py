"""``pymesh capture show|install|remove`` in a fresh network namespace.

Needs root (a network namespace to install rules in), iproute2, nft and iptables:
without them it is skipped with the reason, or fails when PYMESH_REQUIRE_ROOT_TESTS
is set (CI)."""

from __future__ import annotations

import json
import sys

from support.netns import lab, require_root_tools


def test_cli_show_install_and_remove_with_both_backends() -> None:
    require_root_tools("nft", "iptables")
    pymesh = [sys.executable, "-m", "pymesh", "capture"]
    with lab() as lb:
        shown = lb.run(lb.vm, *pymesh, "show", "--backend", "nftables", "--name", "pmcli", "-x", "10.0.0.0/8")
        assert "table inet pmcli" in shown and "ip daddr 10.0.0.0/8 return" in shown
        assert lb.ruleset() == "", "show must not install anything"
        lb.run(lb.vm, *pymesh, "install", "--backend", "nftables", "--name", "pmcli", "-u", "999")
        assert "meta skuid 999 return" in lb.ruleset()
        lb.run(lb.vm, *pymesh, "install", "--backend", "iptables", "--name", "pmcli", "-u", "999", "--no-ipv6")
        assert "-A OUTPUT -j PMCLI_OUTPUT" in lb.iptables_save()
        # One remove cleans both backends: after a crash nobody knows which was used.
        assert json.loads(lb.run(lb.vm, *pymesh, "remove", "--name", "pmcli", "--json")) == {"removed": True}
        assert "pmcli" not in lb.ruleset().lower()
        assert lb.iptables_save() == ""
        assert json.loads(lb.run(lb.vm, *pymesh, "remove", "--name", "pmcli", "--json")) == {"removed": False}
