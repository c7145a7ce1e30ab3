"""Log lines a remote peer can cause, rate-limited and summarised.

A client decides how often it NACKs, sends health reports before its node or
opens streams that fail: one stream wrote 286 MB of NACK log in 3.9 s. Each
such line goes through a :class:`LogLimiter`: per category, at most ``burst``
lines per ``interval`` seconds; past that the lines are counted and, when the
interval ends, one summary line says how many were dropped (and the last
one). Messages from peers are cut to ``max_chars``. The clock is an argument
so the policy is testable; the control plane's loop thread is the only
caller, so there is no lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_PEER_TEXT = 512


def clip(text: str, limit: int = MAX_PEER_TEXT) -> str:
    """A peer-supplied string as it may appear in a log line or a status."""
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


@dataclass
class _Window:
    start: float = 0.0
    lines: int = 0
    dropped: int = 0
    last: str = ""


class LogLimiter:
    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 10,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        self.dropped_total = 0

    def log(self, level: int, category: str, msg: str, *args: object) -> bool:
        """Logs ``msg % args`` unless ``category`` is over its budget; True when logged."""
        now = self.clock()
        w = self._windows.setdefault(category, _Window(start=now))
        if now - w.start >= self.interval:
            self._summarise(category, w, level)
            w.start, w.lines, w.dropped = now, 0, 0
        if w.lines < self.burst:
            w.lines += 1
            self.logger.log(level, msg, *args)
            return True
        w.dropped += 1
        w.last = msg % args if args else msg
        self.dropped_total += 1
        return False

    def _summarise(self, category: str, w: _Window, level: int) -> None:
        if w.dropped:
            self.logger.log(
                level,
                "%d more %s lines in the last %.0fs not logged (at most %d per %.0fs); the last: %s",
                w.dropped,
                category,
                self.interval,
                self.burst,
                self.interval,
                clip(w.last),
            )

    def tick(self, level: int = logging.WARNING) -> None:
        """Writes the summaries of windows that ended (called from a timer, so a
        flood that stopped is still summed up) and forgets idle categories."""
        now = self.clock()
        for category, w in list(self._windows.items()):
            if now - w.start >= self.interval:
                self._summarise(category, w, level)
                del self._windows[category]
