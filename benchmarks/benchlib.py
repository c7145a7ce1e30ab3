"""What the benchmark scripts share: their common options, thread CPU from /proc, medians with
ranges, the length-prefixed bulk stream (sink and client), network namespaces linked by a veth pair
and this thread moved into one, child processes (pinned to cores, killed with the script) started
and waited for, and haproxy's common configuration."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

CLONE_NEWNET = 0x40000000  # setns(2)'s network namespace flag (linux/sched.h)
PR_SET_PDEATHSIG = 1  # prctl(2) (linux/prctl.h)


def arguments(doc: str) -> argparse.ArgumentParser:
    """A comparison script's parser (`doc` its help) with the options they all take: ``--short``,
    CI's smoke run (also PYMESH_BENCH_SHORT=1), and ``--json FILE`` for the figures."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", default=os.environ.get("PYMESH_BENCH_SHORT") == "1")
    ap.add_argument("--json", type=Path)
    return ap


def thread_ids() -> set[int]:
    """This process's threads now (so a proxy's can be told apart: the ones start() added)."""
    return {int(t.name) for t in Path("/proc/self/task").iterdir()}


def cpu_ns(pid: int, tids: set[int] | None = None) -> int:
    """CPU time (ns) of the given threads of `pid`, or of all of them: the
    first field of /proc/<pid>/task/<tid>/schedstat (proc(5))."""
    base = Path(f"/proc/{pid}/task")
    total = 0
    for t in tids if tids is not None else [int(p.name) for p in base.iterdir()]:
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that just exited
            total += int((base / str(t) / "schedstat").read_text().split()[0])
    return total


def spread(xs: list[float]) -> dict[str, float]:
    """Median and range: machines here are noisy."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


# --- the bulk stream ------------------------------------------------------------------------
# One connection carries an 8-byte big-endian length, then that many bytes; the sink answers one
# byte ("k") once it has them all, so the client's clock stops when the last byte arrived.


def accept_each(srv: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    """Serves the listening `srv` from a daemon thread: `handle` runs in a daemon thread of its own
    for each connection, until `srv` is closed."""

    def loop() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def sink_sized(c: socket.socket, chunk: int = 1 << 20) -> None:
    """The sink's side on the accepted (or TLS-wrapped) `c`: the length, the bytes, the answer."""
    buf = bytearray(chunk)
    hdr = b""
    while len(hdr) < 8 and (part := c.recv(8 - len(hdr))):
        hdr += part
    want = int.from_bytes(hdr, "big") if len(hdr) == 8 else 0
    got = 0
    while got < want and (k := c.recv_into(buf, min(len(buf), want - got))):
        got += k
    c.sendall(b"k")


def send_sized(s: socket.socket, size: int, chunk: int = 1 << 20) -> float:
    """The client's side on the connected (or TLS-wrapped) `s`: `size` bytes in writes of
    `chunk`; MB/s from the length sent to the sink's answer."""
    block = memoryview(b"x" * chunk)
    started = time.perf_counter()
    s.sendall(size.to_bytes(8, "big"))
    left = size
    while left > 0:
        n = min(left, len(block))
        s.sendall(block[:n])
        left -= n
    if s.recv(1) != b"k":
        raise RuntimeError("the sink did not get every byte")
    return size / (time.perf_counter() - started) / 1e6


# --- namespaces and processes --------------------------------------------------------------


def sh(*cmd: str, input: str | None = None) -> None:
    """Runs `cmd`; a failure raises with its stderr."""
    r = subprocess.run(cmd, capture_output=True, text=True, input=input)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()}")


def tool(name: str) -> str | None:
    """`name` on PATH, or in /usr/sbin (not on a Debian user's PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


def enter_netns(ns: str) -> None:
    """Moves this thread, and every thread and process it starts from now on, into network
    namespace `ns` (setns(2) moves only the calling thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


def child_setup(cpus: set[int] | None = None) -> Callable[[], None]:
    """A `preexec_fn`: the child is killed with this process even when it is SIGKILLed
    (PR_SET_PDEATHSIG, prctl(2)) and, given `cpus`, runs on those cores only."""

    def setup() -> None:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    return setup


def haproxy_cfg(mode: str, sections: list[str], threads: int | None = None, splice: bool = False) -> str:
    """An haproxy configuration in `mode` (tcp or http) with the benchmarks' limits and timeouts,
    `threads` worker threads when given (``nbthread``), ``option splice-auto`` when `splice`, then
    `sections` (frontends, backends, listeners)."""
    lines = ["global", "  maxconn 4000", *([f"  nbthread {threads}"] if threads else [])]
    lines += ["defaults", f"  mode {mode}", *(["  option splice-auto"] if splice else [])]
    lines += ["  timeout connect 5s", "  timeout client 60s", "  timeout server 60s", *sections]
    return "\n".join(lines) + "\n"


class NetLab:
    """A run's network namespaces (``<prefix><role><tag>``, one random tag per run), the
    processes it starts and a temporary directory; `down` undoes all of it."""

    def __init__(self, prefix: str, tmp_prefix: str) -> None:
        self.prefix, self.tag = prefix, uuid.uuid4().hex[:6]
        self.made: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix))

    def ns(self, role: str) -> str:
        return f"{self.prefix}{role}{self.tag}"

    def add_netns(self, role: str) -> str:
        """A new namespace with its loopback up; its name."""
        ns = self.ns(role)
        sh("ip", "netns", "add", ns)
        self.made.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def link(self, a: str, a4: str, b: str, b4: str, route: bool = True) -> None:
        """Namespaces for roles `a` and `b` linked by a veth pair (each end named ``v<namespace>``),
        at `a4`/24 and `b4`/24; with `route`, `a`'s default route goes via `b4`."""
        na, nb = self.add_netns(a), self.add_netns(b)
        sh("ip", "link", "add", "v" + na, "netns", na, "type", "veth", "peer", "name", "v" + nb, "netns", nb)
        for ns, addr in ((na, a4), (nb, b4)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "v" + ns)
            sh("ip", "-n", ns, "link", "set", "v" + ns, "up")
        if route:
            sh("ip", "-n", na, "route", "add", "default", "via", b4)

    def start(
        self, cmd: list[str], ready: tuple[str, int], what: str, cpus: set[int] | None = None
    ) -> subprocess.Popen[str]:
        """Starts `cmd` (on `cpus` when given, killed with this process); returns once `ready`
        accepts connections."""
        # Its output to a file: a pipe nobody reads would block it once full.
        out = self.tmp / f"{len(self.procs)}.out"
        with out.open("w") as f:
            p = subprocess.Popen(cmd, stdout=f, stderr=f, text=True, preexec_fn=child_setup(cpus))
        self.procs.append(p)
        for _ in range(250):
            if p.poll() is not None:
                break
            try:
                socket.create_connection(ready, timeout=1).close()
                return p
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"{what} did not start: {out.read_text().strip() or p.poll()}")

    def start_haproxy(
        self, exe: str, cfg: str, ready: tuple[str, int], cpus: set[int] | None = None
    ) -> subprocess.Popen[str]:
        """haproxy (`exe`, in the foreground) with the configuration `cfg`, in this thread's
        namespace; returns once `ready` accepts connections."""
        path = self.tmp / "haproxy.cfg"
        path.write_text(cfg)
        return self.start([exe, "-db", "-f", str(path)], ready, "haproxy", cpus)

    def server(self, ns: str, *argv: str) -> subprocess.Popen[str]:
        """``python ARGV`` (a benchmark script's own servers) in namespace `ns`, killed with this
        process; returns once it printed "ready". It serves until its stdin closes."""
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=child_setup(),
        )
        self.procs.append(p)
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{' '.join(argv[:2])} in {ns} did not start")
        return p

    def down(self) -> None:
        # nginx's workers are its master's children, not ours: stop the masters first (SIGTERM:
        # fast shutdown, the workers go with them).
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            for f in (p.stdin, p.stdout):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
