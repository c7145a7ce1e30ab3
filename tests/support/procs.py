"""Processes the tests start: stopped and cleaned up the same way everywhere."""

from __future__ import annotations

import queue
import subprocess
import threading
from typing import Any


def reap(p: subprocess.Popen[Any], timeout: float = 10.0) -> int | None:
    """Kills ``p`` unless it has exited, waits up to ``timeout`` seconds and closes its pipes
    (a pipe left open is a ResourceWarning, an error under the suite's warnings policy).
    Returns its exit status, or None when it did not exit in time."""
    if p.poll() is None:
        p.kill()
    try:
        rc: int | None = p.wait(timeout)
    except subprocess.TimeoutExpired:
        rc = None
    for f in (p.stdin, p.stdout, p.stderr):
        if f is not None:
            try:
                f.close()
            except OSError:
                pass  # e.g. a broken pipe flushing stdin: nothing left to read or write
    return rc


class Lines:
    """A process's stdout lines, readable with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        try:
            for line in proc.stdout or ():
                self.q.put(line)
        except (ValueError, OSError):
            pass  # the pipe was closed under us (the process was reaped): nothing more to read

    def saw(self, text: str) -> bool:
        while not self.q.empty():
            self.seen.append(self.q.get())
        return any(text in x for x in self.seen)
