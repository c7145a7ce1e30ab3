"""A two-namespace lab for the capture and relay tests: a "vm" namespace
(where rules are installed and clients run) linked by a veth pair to a
"net" namespace holding the servers.

    vm  veth 10.77.0.2/24  fd77::2/64   default routes via the net side
    net veth 10.77.0.1/24  fd77::1/64   + extra addresses on its loopback

Needs root and iproute2 (``require_root_tools``): without them a test is
skipped with the reason, or fails when PYMESH_REQUIRE_ROOT_TESTS is set (CI).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from support.paths import ROOT as _ROOT
from support.peers import HTTP_BACKEND, NETNS_PEER
from support.procs import Lines, reap
from support.system import require_root, require_tools
from support.wait import wait_until

PEER = NETNS_PEER
ROOT = str(_ROOT)
VM4, NET4 = "10.77.0.2", "10.77.0.1"
VM6, NET6 = "fd77::2", "fd77::1"
# Extra server addresses in the net namespace (on its loopback, routed via the veth).
EXTRA4 = ["10.78.0.1", "10.78.0.2", "10.78.0.3", "10.79.0.1"]
EXTRA6 = ["fd78::1", "fd78::2"]
APP_UID = 4242
PROXY_UID = 1337


def require_root_tools(*tools: str) -> None:
    """Root (with the capabilities namespaces need), iproute2, setpriv and ``tools``: else the
    test is skipped with the reason, or fails when PYMESH_REQUIRE_ROOT_TESTS is set (CI)."""
    require_root("network-namespace tests")
    require_tools("ip", "setpriv", *tools)


def sh(*cmd: str, check: bool = True, input: str | None = None, timeout: float = 30) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout, check=False)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


class Lab:
    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.vm = f"pmvm{tag}"
        self.net = f"pmnet{tag}"
        self.procs: list[subprocess.Popen[str]] = []
        self.env = {**os.environ, "PYTHONPATH": ROOT}

    def setup(self) -> None:
        vm, net = self.vm, self.net
        sh("ip", "netns", "add", vm)
        sh("ip", "netns", "add", net)
        sh("ip", "link", "add", "v" + vm[2:], "netns", vm, "type", "veth", "peer", "name", "v" + net[2:], "netns", net)
        for ns, dev, a4, a6 in ((vm, "v" + vm[2:], VM4, VM6), (net, "v" + net[2:], NET4, NET6)):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{a4}/24", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", f"{a6}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", vm, "route", "add", "default", "via", NET4)
        sh("ip", "-n", vm, "-6", "route", "add", "default", "via", NET6)
        for a in EXTRA4:
            sh("ip", "-n", net, "addr", "add", f"{a}/32", "dev", "lo")
        for a in EXTRA6:
            sh("ip", "-n", net, "addr", "add", f"{a}/128", "dev", "lo", "nodad")

    def etc(self, ns: str, name: str, text: str) -> None:
        """A file `ip netns exec` mounts over /etc/NAME in namespace `ns`."""
        d = Path("/etc/netns") / ns
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)

    def teardown(self) -> None:
        for p in self.procs:
            reap(p)  # one that does not exit in time: the namespaces below are deleted regardless
        for ns in (self.vm, self.net):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        for f in Path("/tmp").glob(f"{self.vm}-*.json"):
            f.unlink(missing_ok=True)

    # --- running things in a namespace --------------------------------------------

    def cmd(self, ns: str, *argv: str, uid: int | None = None) -> list[str]:
        prefix = ["ip", "netns", "exec", ns]
        if uid is not None:
            prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        return [*prefix, *argv]

    def run(self, ns: str, *argv: str, uid: int | None = None, input: str | None = None) -> str:
        p = subprocess.run(
            self.cmd(ns, *argv, uid=uid), capture_output=True, text=True, input=input, timeout=60, env=self.env
        )
        if p.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} in {ns} failed ({p.returncode}): {p.stderr.strip()}")
        return p.stdout

    def peer(self, ns: str, *args: str, uid: int | None = None) -> dict[str, Any]:
        out = self.run(ns, sys.executable, PEER, *args, uid=uid)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def http_client(self, *args: str, input: str | None = None) -> dict[str, Any]:
        """peers/http_backend.py's raw or gRPC client (``args``) as the app in the vm namespace:
        its JSON answer."""
        out = self.run(self.vm, sys.executable, HTTP_BACKEND, *args, uid=APP_UID, input=input)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def _launch(
        self, ns: str, argv: list[str], what: str, uid: int | None, ready: str | None = None
    ) -> subprocess.Popen[str]:
        """Starts ``argv`` in namespace ``ns`` until the teardown (its stdin a pipe: a peer serves
        until it closes, at the teardown's reap); returns once it printed its first line
        (``ready``, when given), kept as ``first_line``."""
        p = subprocess.Popen(
            self.cmd(ns, *argv, uid=uid),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        self.procs.append(p)
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line or (ready is not None and line.strip() != ready):
            # At EOF it has exited, so its stderr ends too.
            err = p.stderr.read() if p.stderr and not line else line
            raise AssertionError(f"{what} in {ns} did not start: {err}")
        p.first_line = line  # type: ignore[attr-defined]
        return p

    def start(self, ns: str, *args: str, uid: int | None = None) -> subprocess.Popen[str]:
        """Starts a long-running peer; returns once it printed its first line."""
        return self._launch(ns, [sys.executable, PEER, *args], f"peer {args[:2]}", uid)

    def serve(self, ns: str, tag: str, specs: Sequence[str], uid: int | None = None) -> subprocess.Popen[str]:
        return self.start(ns, "serve", tag, *specs, uid=uid)

    def http_backends(self, ns: str, *specs: str, uid: int | None = None) -> None:
        """peers/http_backend.py serving ``specs`` ("KIND:TAG:HOST:PORT": echoing HTTP/1.1, slow,
        resetting or gRPC listeners) in namespace ``ns`` until the teardown; returns once every
        listener is bound."""
        argv = [sys.executable, HTTP_BACKEND, "serve", *specs]
        self._launch(ns, argv, f"http_backend {specs}", uid, ready="ready")

    def tcp(self, host: str, port: int, uid: int = APP_UID) -> str:
        r = self.peer(self.vm, "tcp", host, str(port), uid=uid)
        return str(r.get("reply", r.get("error")))

    def udp(self, host: str, port: int, uid: int = APP_UID) -> str:
        return str(self.peer(self.vm, "udp", host, str(port), uid=uid)["reply"])

    def ruleset(self) -> str:
        return self.run(self.vm, "nft", "-s", "list", "ruleset")  # -s: without counter values

    def ruleset_without_empty_chains(self) -> str:
        return Lab.strip_empty(self.ruleset())

    @staticmethod
    def strip_empty(ruleset: str) -> str:
        """An nft ruleset without base chains that hold no rule and accept
        (what iptables-nft leaves after its last rule is deleted: iptables
        has no command to delete a built-in chain) and tables left empty."""
        lines = ruleset.splitlines()
        out: list[str] = []
        i = 0
        while i < len(lines):
            ln = lines[i]
            if ln.strip().startswith("chain ") and i + 2 < len(lines):
                body = lines[i + 1].strip()
                if body.startswith("type ") and body.endswith("policy accept;") and lines[i + 2].strip() == "}":
                    i += 3
                    continue
            out.append(ln)
            i += 1
        text = "\n".join(x for x in out if x.strip())
        # Tables with nothing left.
        return re.sub(r"table \S+ \S+ \{\n\}\n?", "", text + "\n")

    def iptables_save(self) -> str:
        """iptables-save + ip6tables-save without comments and counters, and
        without tables that hold nothing (no rules, no chains of their own,
        all policies ACCEPT): iptables cannot delete a table once it is
        loaded, and an empty one changes nothing."""
        out = []
        for tool in ("iptables-save", "ip6tables-save"):
            table: list[str] = []
            for ln in self.run(self.vm, tool).splitlines():
                if ln.startswith("#"):
                    continue
                if ln.startswith("*"):
                    table = [ln]
                elif ln == "COMMIT":
                    meaningful = [x for x in table[1:] if not (x.startswith(":") and x.split()[1] == "ACCEPT")]
                    if meaningful:
                        out += [*table, ln]
                else:
                    table.append(ln.rsplit(" [", 1)[0] if ln.startswith(":") else ln)
        return "\n".join(out)

    def capture(self, backend: str, action: str = "install", **cfg: Any) -> dict[str, Any] | None:
        path = Path("/tmp") / f"{self.vm}-capture.json"
        path.write_text(json.dumps({"backend": backend, **cfg}))
        out = self.run(self.vm, sys.executable, PEER, "capture", str(path), action)
        return json.loads(out) if out.strip() else None


def as_agent_user(cmd: list[str]) -> list[str]:
    """``ip netns exec NS ARGV`` run as the agent's own user (PROXY_UID) with
    the one capability installing rules needs, as pymesh-agent.service does."""
    caps = "+net_admin"
    priv = ["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups"]
    priv += [f"--inh-caps={caps}", f"--ambient-caps={caps}"]
    return [*cmd[:4], *priv, *cmd[4:]]


def start_agent(lb: Lab, *args: str) -> tuple[subprocess.Popen[str], Lines]:
    """``pymesh agent ARGS`` in the vm namespace as the agent's own user (``as_agent_user``),
    stopped at the lab's teardown; and its output lines."""
    argv = [sys.executable, "-m", "pymesh", "agent", *args]
    p = subprocess.Popen(
        as_agent_user(lb.cmd(lb.vm, *argv)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=lb.env
    )
    lb.procs.append(p)
    return p, Lines(p)


def wait_said(agent: subprocess.Popen[str], out: Lines, text: str, timeout: float) -> None:
    """Until ``agent`` (``start_agent``'s) said ``text``; else it is killed, and the failure
    shows what it printed."""
    try:
        wait_until(lambda: out.saw(text), timeout=timeout)
    except AssertionError:
        agent.kill()
        err = agent.stderr.read()[-3000:] if agent.stderr else ""
        raise AssertionError(f"agent output: {out.seen}\n{err}") from None


def fetch_status(lb: Lab, path: str) -> str:
    """GET the agent's status port (127.0.0.1:15020) inside the vm namespace."""
    code = f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:15020{path}', timeout=5).read().decode())"
    return str(lb.run(lb.vm, sys.executable, "-c", code))


@contextmanager
def lab() -> Iterator[Lab]:
    require_root_tools()
    lb = Lab()
    try:
        lb.setup()
        yield lb
    finally:
        lb.teardown()


# setns(2) flag for a network namespace (linux/sched.h).
CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


@contextmanager
def inside(name: str) -> Iterator[None]:
    """This thread (and the threads and sockets it creates meanwhile) in namespace ``name``.

    setns(2) moves only the calling thread, so the code inside runs in ``name`` without a
    subprocess; the thread always returns to its own namespace."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)
        os.close(target)


@contextmanager
def nft_netns(prefix: str, rules: str, needs: str) -> Iterator[str]:
    """A fresh network namespace ``<prefix><random>`` with loopback up and nftables ``rules``
    loaded; deleted afterwards. ``needs`` says why the caller needs root (in the skip or failure)."""
    require_root(needs)
    require_tools("ip", "nft")
    name = f"{prefix}{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", name, "nft", "-f", "-"], input=rules, text=True, check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
