"""The private network namespace ``pymesh up`` runs the real data path in.

As root: ``unshare --net`` (a network namespace; nothing on the host
changes). Without root: ``unshare --user --map-root-user --net`` (a user
namespace owning a network namespace, where the process has CAP_NET_ADMIN
over that namespace only: nftables and iptables rules, links and routes
work there, as ``unshare(1)`` and user_namespaces(7) describe). Where the
kernel forbids unprivileged user namespaces (``kernel.unprivileged_userns_clone``
= 0, or AppArmor's ``apparmor_restrict_unprivileged_userns``), ``pymesh up``
falls back to in-process routing and says so.

Inside, a client process stands in for the VM's application: it asks the
resolv.conf name server (captured to the agent's DNS proxy) and connects to
the VIP, each connection redirected by the rules to the outbound proxy. As
root the client runs as another user (uid 4242) and the agent's own user is
never captured; in a user namespace only one uid exists, so the client runs
as that uid and the proxy is exempted by its socket mark instead (a
``meta mark`` RETURN rule ahead of every redirect). DNS capture needs the
owner match (the conntrack zones that keep the agent's upstream flows apart
from the apps' queries, istio/istio#33572, are chosen by uid), so in a user
namespace DNS is not captured: the client asks the agent's DNS proxy
directly, and only its connections are captured.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from pymesh.up.peers import GET_METHOD, UpError

NAMESERVER = "10.99.0.53"  # the namespace's resolv.conf name server (captured, never reached)
APP_UID = 4242  # as root: the application user whose traffic is captured
PROXY_MARK = 0x539  # in a user namespace: the proxy's sockets carry this mark and are not captured
NOBODY_PROXY_UID = 1337  # in a user namespace: the rules' owner match names a uid nothing runs as
NETNS_ENV = "PYMESH_UP_NETNS"  # "root" or "user": this process is the re-executed child


def inside() -> str:
    """ "root" or "user" when this process runs in the namespace, else ""."""
    return os.environ.get(NETNS_ENV, "")


def can_enter() -> tuple[bool, str]:
    """Whether a namespace can be made here, and why not."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False, "the unshare command (util-linux) is not installed"
    argv = [unshare, "--net", "true"] if os.geteuid() == 0 else [unshare, "--user", "--map-root-user", "--net", "true"]
    p = subprocess.run(argv, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        return False, p.stderr.strip() or f"unshare exited with {p.returncode}"
    for tool in ("nft", "iptables"):
        if shutil.which(tool):
            return True, ""
    return False, "neither nft nor iptables is installed"


def reexec() -> int:
    """Runs this command again inside a new namespace (see the module doc)."""
    unshare = shutil.which("unshare")
    assert unshare is not None
    if os.geteuid() == 0:
        env = {**os.environ, NETNS_ENV: "root"}
        argv = [unshare, "--net", "--"]
    else:
        env = {**os.environ, NETNS_ENV: "user"}
        argv = [unshare, "--user", "--map-root-user", "--net", "--"]
    os.execve(unshare, [*argv, sys.executable, "-m", "pymesh", *sys.argv[1:]], env)


def setup() -> str:
    """Loopback up, and a link with a default route so connections to VIPs
    have a route to be captured from (nothing is at its other end)."""
    for argv in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "link", "add", "pm0", "type", "veth", "peer", "name", "pm1"],  # veth: no dummy module needed
        ["ip", "addr", "add", "10.99.0.1/24", "dev", "pm0"],
        ["ip", "link", "set", "pm1", "up"],
        ["ip", "link", "set", "pm0", "up"],
        ["ip", "route", "add", "default", "dev", "pm0"],
    ):
        p = subprocess.run(argv, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise UpError(f"network namespace setup: {' '.join(argv)}: {p.stderr.strip()}")
    kind = "unshare --net" if inside() == "root" else "unshare --user --map-root-user --net, unprivileged"
    return f"network namespace: private ({kind}): lo, pm0 10.99.0.1/24 (veth), default route via pm0"


def captures_dns() -> bool:
    return inside() == "root"


def client_description(dns_port: int) -> str:
    if captures_dns():
        return f"from a client running as uid {APP_UID}: it asks {NAMESERVER}:53 (captured)"
    return f"from a client process (the proxy's sockets are marked): it asks the agent's DNS 127.0.0.1:{dns_port}"


def send_captured(vip: str, port: int, n: int, service: str, dns_port: int) -> Counter[str]:
    ns, ns_port = (NAMESERVER, 53) if captures_dns() else ("127.0.0.1", dns_port)
    argv = [sys.executable, "-m", "pymesh.up.netns", "client", ns, str(ns_port), service, str(port), str(n)]
    if inside() == "root":
        argv = ["setpriv", f"--reuid={APP_UID}", f"--regid={APP_UID}", "--clear-groups", *argv]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd="/")
    if p.returncode != 0:
        raise UpError(f"the client failed: {p.stderr.strip()[-500:]}")
    got = json.loads(p.stdout.strip().splitlines()[-1])
    if got["vip"] != vip:
        raise UpError(f"the captured DNS answered {got['vip']!r}, the agent's DNS {vip!r}")
    return Counter(got["counts"])


def _client(nameserver: str, ns_port: int, name: str, port: int, n: int) -> dict[str, Any]:
    """The application side: DNS to the resolv.conf name server, then one
    connection (a new gRPC channel, its own subchannel) per call to the VIP."""
    import grpc

    from pymesh.up.dns import query

    rcode, records = query((nameserver, ns_port), name, "A")
    vip = next((r.split()[-1] for r in records if " IN A " in r), None)
    counts: Counter[str] = Counter()
    for _ in range(n if vip else 0):
        ch = grpc.insecure_channel(f"{vip}:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        try:
            reply: bytes = ch.unary_unary(GET_METHOD)(b"", timeout=5)
            counts[reply.decode()] += 1
        except grpc.RpcError as e:
            counts[f"failed: {e.code().name}"] += 1
        finally:
            ch.close()
    return {"rcode": rcode, "vip": vip, "counts": counts}


def resolv_conf(vm_dir: Path) -> None:
    text = (vm_dir / "resolv.conf").read_text()
    (vm_dir / "resolv.conf").write_text(f"nameserver {NAMESERVER}\n{text}")


if __name__ == "__main__" and sys.argv[1:2] == ["client"]:
    print(json.dumps(_client(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))))
