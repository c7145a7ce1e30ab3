"""The glibc resolver against the proxy: `getent ahosts` (AF_UNSPEC: A and
AAAA in parallel) and `getent ahostsv4` (AF_INET) inside a network namespace
whose resolv.conf points at the proxy on port 53 (Istio's VM mode without
iptables, reference §4.5). glibc rejected some of Istio's answers
(istio/istio#29681, #47264); these must pass through glibc's own checks.

Needs root (a network namespace whose /etc/resolv.conf `ip netns exec` replaces,
the proxy on port 53), iproute2 and getent: without them it is skipped with the
reason, or fails when PYMESH_REQUIRE_ROOT_TESTS is set (CI)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.dns import table_entries
from support.procs import reap
from support.system import require_root, require_tools

NS = f"pymesh-dns-{os.getpid()}"


def in_ns(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", NS, *cmd], capture_output=True, text=True, check=check, timeout=20)


@pytest.fixture(scope="module")
def netns_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    require_root("the glibc resolver tests run the proxy in a network namespace")
    require_tools("ip", "getent")
    tmp = tmp_path_factory.mktemp("netns")
    table = tmp / "table.json"
    doc = {"table": {e["hostname"]: {k: v for k, v in e.items() if k != "hostname"} for e in table_entries()}}
    table.write_text(json.dumps(doc))
    etc = Path("/etc/netns") / NS
    subprocess.run(["ip", "netns", "add", NS], check=True)
    proc = None
    try:
        etc.mkdir(parents=True)
        # `ip netns exec` bind-mounts this over /etc/resolv.conf for the commands it runs.
        (etc / "resolv.conf").write_text(
            "nameserver 127.0.0.1\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n"
            "options ndots:5 timeout:2 attempts:1\n"
        )
        in_ns("ip", "link", "set", "lo", "up")
        # getaddrinfo's AI_ADDRCONFIG (used by getent ahostsv4/v6) asks DNS for
        # a family only if a non-loopback address of it exists: a veth pair
        # inside the namespace provides one of each.
        in_ns("ip", "link", "add", "pm0", "type", "veth", "peer", "name", "pm1")
        in_ns("ip", "addr", "add", "10.200.0.1/24", "dev", "pm0")
        in_ns("ip", "-6", "addr", "add", "fd00:200::1/64", "dev", "pm0", "nodad")
        in_ns("ip", "link", "set", "pm1", "up")
        in_ns("ip", "link", "set", "pm0", "up")
        proc = subprocess.Popen(
            [
                *("ip", "netns", "exec", NS, sys.executable, "-m", "pymesh", "dns", "serve", "--table", str(table)),
                *("--listen", "127.0.0.1:53", "--listen", "[::1]:53", "--upstream", "127.0.0.1:5399"),
                *("--timeout", "0.2", "--workers", "1"),
                *("--search", "default.svc.cluster.local svc.cluster.local cluster.local"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "serving" in line, line + (proc.stderr.read() if proc.stderr else "")
        yield
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
            reap(proc)
        subprocess.run(["ip", "netns", "del", NS], check=False)
        shutil.rmtree(etc, ignore_errors=True)


def ahosts(kind: str, name: str) -> set[str]:
    r = in_ns("getent", kind, name, check=False)
    return {line.split()[0] for line in r.stdout.splitlines() if line.strip()}


def test_unspec_gets_both_families(netns_proxy: None) -> None:
    assert ahosts("ahosts", "reviews.bookinfo.svc.cluster.local") == {"10.96.0.30", "fd00:10:96::30"}
    assert ahosts("ahostsv6", "reviews.bookinfo.svc.cluster.local") == {"fd00:10:96::30"}


def test_unspec_on_a_v4_only_name_takes_the_nodata(netns_proxy: None) -> None:
    # The AAAA query gets NODATA with an SOA; glibc must still return the A.
    assert ahosts("ahosts", "product.default.svc.cluster.local") == {"10.96.0.20"}


def test_inet_path(netns_proxy: None) -> None:
    # AF_INET (Java's InetAddress, istio#29681) sends A only.
    assert ahosts("ahostsv4", "reviews.bookinfo.svc.cluster.local") == {"10.96.0.30"}
    assert ahosts("ahostsv4", "api.payments.example.com") == {"240.240.0.1", "240.240.0.2", "240.240.0.3"}


def test_search_list_and_short_names(netns_proxy: None) -> None:
    # ndots:5: "product" is tried as product.default.svc.cluster.local first.
    assert ahosts("ahosts", "product") == {"10.96.0.20"}
    assert ahosts("ahostsv4", "reviews.bookinfo") == {"10.96.0.30"}
    # A wildcard host answers under the asked name (glibc rejects `*` owners, istio#47264).
    assert ahosts("ahostsv4", "x.wild.example.com") == {"240.240.0.9"}


def test_unknown_name_fails_cleanly(netns_proxy: None) -> None:
    t0 = time.monotonic()
    assert ahosts("ahosts", "nothing.invalid") == set()
    assert time.monotonic() - t0 < 15
