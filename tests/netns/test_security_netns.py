"""Workload mTLS between two network namespaces linked by a veth pair, with
tcpdump on the veth: the payload never crosses in plaintext, while the
same capture does show it for a plaintext (PERMISSIVE) exchange, so the
check can fail.

Needs root (two network namespaces, tcpdump on the veth), iproute2 and tcpdump:
without them it is skipped with the reason, or fails when PYMESH_REQUIRE_ROOT_TESTS
is set (CI)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from pymesh.controlplane.ca.ca import CertificateAuthority
from support.netns import NET4, lab, require_root_tools
from support.peers import NETNS_MTLS_PEER
from support.sec import workload

PEER = NETNS_MTLS_PEER
PRODUCT = "spiffe://cluster.local/ns/default/sa/product"
MARKER = "MESH-PAYLOAD-" + "z" * 40


def test_no_plaintext_on_the_veth_with_mtls(tmp_path: Path) -> None:
    require_root_tools("tcpdump")
    ca = CertificateAuthority(tmp_path / "ca")
    server = workload(ca, tmp_path / "server", "product")
    client = workload(ca, tmp_path / "client", "reviews")
    with lab() as lb:
        strict = lb.procs
        for port, mode in ((15006, "STRICT"), (15007, "PERMISSIVE")):
            p = subprocess.Popen(
                lb.cmd(lb.net, sys.executable, PEER, "inbound", str(server), NET4, str(port), mode),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=lb.env,
            )  # fmt: skip
            strict.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.stderr.read() if p.stderr else ""
        pcap = tmp_path / "veth.pcap"
        dump = subprocess.Popen(
            lb.cmd(lb.vm, "tcpdump", "-Z", "root", "-i", "v" + lb.vm[2:], "-U", "-s", "0", "-w", str(pcap), "tcp"),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        lb.procs.append(dump)
        assert dump.stderr is not None
        line = dump.stderr.readline()  # "listening on ...": attached
        assert "listening on" in line, line
        import json

        got = json.loads(lb.run(lb.vm, sys.executable, PEER, "client", str(client), NET4, "15006", PRODUCT, MARKER))
        assert got == {"echo": MARKER, "refused": 0}
        deadline = time.monotonic() + 10
        while len(pcap.read_bytes()) < 2 * len(MARKER) and time.monotonic() < deadline:
            time.sleep(0.1)
        mtls_bytes = pcap.read_bytes()
        assert len(mtls_bytes) > 2 * len(MARKER)  # the exchange was captured
        assert MARKER.encode() not in mtls_bytes
        # The control case: plaintext to the PERMISSIVE port shows up in the same capture.
        plain = json.loads(lb.run(lb.vm, sys.executable, PEER, "plain", NET4, "15007", MARKER))
        assert plain == {"echo": MARKER}
        time.sleep(1.0)
        dump.terminate()
        dump.wait(10)
        assert MARKER.encode() in pcap.read_bytes()
        # And the STRICT port refuses the same plaintext.
        refused = json.loads(lb.run(lb.vm, sys.executable, PEER, "plain", NET4, "15006", MARKER))
        assert refused == {"echo": ""}
