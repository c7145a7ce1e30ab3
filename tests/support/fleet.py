"""The simulated VM fleet (``peers/cp_agents.py --control``, one child process of real ADS
streams) driven from a test or a benchmark (tests/e2e/test_replicas_faults.py,
benchmarks/ha_bench.py): started, asked its commands, stopped."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from support.peers import CP_AGENTS


@contextlib.contextmanager
def watchdog(proc: subprocess.Popen[str], timeout: float) -> Iterator[None]:
    """Kills ``proc`` if the block takes longer than ``timeout`` (a blocking read then ends)."""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


class Agents:
    """``count`` agents over ``addresses`` (ports or host:port; agent i starts on address i mod N),
    reconnecting elsewhere with the real agent's backoff; auto-registering into WorkloadGroup
    ``register`` (namespace ``bench``) unless empty. One JSON answer per command (the commands
    are in peers/cp_agents.py); ``log``: where its stderr goes (default: inherited)."""

    def __init__(
        self,
        addresses: list[Any],
        count: int,
        services: int,
        eds: int,
        *,
        register: str = "",
        log: Path | None = None,
    ) -> None:
        argv = [sys.executable, CP_AGENTS, ",".join(map(str, addresses)), str(count), str(services), str(eds)]
        argv += ["--failover", "--control"] + (["--register", register] if register else [])
        self._err: IO[str] | None = open(log, "w") if log is not None else None  # closed in stop()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True)

    def wait_ready(self, timeout: float) -> None:
        assert self.proc.stdout is not None
        with watchdog(self.proc, timeout):
            line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"agents failed to start ({line!r}; see their stderr)")

    def ask(self, *words: object, timeout: float = 300.0) -> dict[str, Any]:
        """The answer to one command; the child is killed (and this raises) if none comes
        within ``timeout`` seconds."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(" ".join(map(str, words)) + "\n")
        self.proc.stdin.flush()
        with watchdog(self.proc, timeout):
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the agents' process exited")
        doc: dict[str, Any] = json.loads(line)
        return doc

    def stop(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._err is not None:
            self._err.close()
