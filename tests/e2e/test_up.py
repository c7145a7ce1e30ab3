"""``pymesh up``: the whole local mesh (control plane, agent, DNS, pod and VM
backends) run as a user runs it (a real subprocess), each run checked by what
it prints.

``test_up_takes_the_real_data_path_in_its_own_namespace`` needs root (as root
``pymesh up`` takes the real data path in a network namespace of its own, and the
test checks the host's ruleset after), unshare and nft: without them it is skipped
with the reason, or fails when PYMESH_REQUIRE_ROOT_TESTS is set (CI). The others
need no root (``pymesh up`` falls back to in-process routing and says so)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import dns.message
import dns.query
import pytest

from support.netns import require_root_tools
from support.procs import reap


def pymesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pymesh", *args], capture_output=True, text=True, timeout=60)


def _counts(out: str) -> dict[str, int]:
    """The per-backend answer counts of step 7."""
    tail = re.split(r"^\d+\. stopping", re.split(r"^\d+\. requests:", out, flags=re.M)[1], flags=re.M)[0]
    return {m.group(2): int(m.group(1)) for m in re.finditer(r"^\s+(\d+)  (\S+ \S+) \(", tail, re.M)}


def test_up_runs_the_whole_local_mesh_and_stops_cleanly() -> None:
    r = pymesh("up", "--in-process", "--requests", "40")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    steps = re.findall(r"^(\d+)\. ", out, re.M)
    assert steps == [str(i) for i in range(1, 9)], out
    assert "registered: WorkloadEntry default/product-vm-127.0.0.3" in out
    assert "probe grpc: Healthy=True" in out
    # A real DNS answer from the agent's server, not from a file.
    assert re.search(r"^\s+product\.default\.svc\.cluster\.local\. 30 IN A 10\.96\.0\.20$", out, re.M), out
    # Both backends answered (the text is what each server returned); round robin splits evenly.
    assert _counts(out) == {"pod product-pod-0": 20, "vm product-vm": 20}, out
    tmp = re.search(r"VM files \(istioctl's five\): (\S+)/vm/", out)
    assert tmp is not None and not Path(tmp.group(1)).exists()
    assert "   stopped; temp dir removed\n" in out
    # Nothing on stderr but the control plane's warning about its plaintext listener on loopback
    # (pymesh.controlplane.server: allowed for development, said once).
    loopback = r"plaintext, unauthenticated xDS on 127\.0\.0\.1:\d+ \(loopback only: development and tests\)"
    assert [line for line in r.stderr.splitlines() if not re.fullmatch(loopback, line)] == [], r.stderr


def test_up_answers_the_names_it_is_given_through_the_agents_dns() -> None:
    r = pymesh("up", "--requests", "2", "product.default", "api.payments.example.com")
    assert r.returncode == 0, r.stderr
    assert "product.default A: NOERROR\n     product.default. 30 IN A 10.96.0.20\n" in r.stdout, r.stdout
    # The ServiceEntry's auto-allocated VIP (class E range), pushed by the control plane over NDS.
    assert re.search(r"api\.payments\.example\.com\. 30 IN A 240\.240\.\d+\.\d+$", r.stdout, re.M), r.stdout
    r = pymesh("up", "--requests", "2", "--type", "aaaa", "product")
    assert r.returncode == 0, r.stderr
    assert "product AAAA: NOERROR (no records)" in r.stdout  # NODATA: the service has no IPv6 VIP


def test_up_moves_off_a_taken_port_8080() -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.2", 8080))
            s.listen()
        except OSError:
            pass  # taken already: the same situation
        r = pymesh("up", "--in-process", "--requests", "4")
    assert r.returncode == 0, r.stderr
    m = re.search(r"VIP 10\.96\.0\.20:(\d+);", r.stdout)
    assert m is not None and m.group(1) != "8080", r.stdout
    assert _counts(r.stdout) == {"pod product-pod-0": 2, "vm product-vm": 2}


def test_up_serve_keeps_dns_up_until_interrupted() -> None:
    p = subprocess.Popen(
        [sys.executable, "-m", "pymesh", "up", "--in-process", "--serve", "--requests", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        lines = []
        for line in p.stdout:
            lines.append(line)
            if line.startswith("serving until Ctrl-C"):
                break
        m = re.search(r"dig @127\.0\.0\.1 -p (\d+)", lines[-1])
        assert m is not None, "".join(lines)
        q = dns.message.make_query("product.default.svc.cluster.local", "A")
        reply = dns.query.udp(q, "127.0.0.1", port=int(m.group(1)), timeout=3)
        assert [str(rd) for rrset in reply.answer for rd in rrset] == ["10.96.0.20"]
        p.send_signal(signal.SIGINT)
        rest, err = p.communicate(timeout=20)
    finally:
        reap(p)
    assert p.returncode == 130, err
    assert "interrupted: everything stopped, temp dir removed" in rest
    tmp = re.search(r"VM files \(istioctl's five\): (\S+)/vm/", "".join(lines))
    assert tmp is not None and not Path(tmp.group(1)).exists()
    assert "Traceback" not in err


@pytest.mark.netns
def test_up_takes_the_real_data_path_in_its_own_namespace() -> None:
    """By default: capture rules and the outbound proxy, in a private network namespace."""

    require_root_tools("unshare", "nft")
    r = pymesh("up", "--requests", "20")
    assert r.returncode == 0, r.stderr + r.stdout
    out = r.stdout
    assert re.search(r"^   capture rules installed \((nftables|iptables)\)", out, re.M), out
    assert "from a client running as uid 4242: it asks 10.99.0.53:53 (captured)" in out
    assert _counts(out) == {"pod product-pod-0": 10, "vm product-vm": 10}, out
    # Every call was a connection the rules sent to the proxy, and a request its HTTP path
    # routed (the port is gRPC's).
    m = re.search(r"outbound proxy: (\d+) connections accepted, (\d+) routed to a cluster, (\d+) HTTP requests", out)
    assert m is not None and int(m.group(1)) >= 20 and int(m.group(3)) >= 20, out
    # Nothing of it is left on the host.
    assert "pymesh" not in subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    # Without root (uid 4242 in a user namespace of its own, the files still readable): the same
    # real data path, in an unprivileged user + network namespace; the proxy is exempted by its mark.
    argv = ["unshare", "--user", "--map-user=4242", "--map-group=4242", sys.executable, "-m", "pymesh", "up"]
    r = subprocess.run([*argv, "--requests", "10"], capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr + r.stdout
    out = r.stdout
    assert "network namespace: private (unshare --user --map-root-user --net, unprivileged)" in out, out
    assert re.search(r"^   capture rules installed \((nftables|iptables)\): outbound TCP", out, re.M), out
    assert _counts(out) == {"pod product-pod-0": 5, "vm product-vm": 5}, out
    m = re.search(r"outbound proxy: (\d+) connections accepted, (\d+) routed to a cluster, (\d+) HTTP requests", out)
    assert m is not None and int(m.group(3)) >= 10, out
