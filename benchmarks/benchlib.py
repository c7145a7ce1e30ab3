"""What the benchmark scripts share: thread CPU from /proc and medians with ranges."""

from __future__ import annotations

import contextlib
import statistics
from pathlib import Path


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
