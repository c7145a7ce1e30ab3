"""curl as the application in the two-namespace lab (support.netns): every response of a run,
with its status, time and the connections curl opened (the HTTP relay and VirtualService tests)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from support.netns import APP_UID, Lab

# As the app: never through a proxy from the environment.
CURL = ("curl", "-sS", "--noproxy", "*", "-m", "10")
# After each response's body (curl's --write-out): its status, seconds and connections opened.
WRITE_OUT = "\n@@@ %{http_code} %{time_total} %{num_connects}\n"
_SPLIT = re.compile(r"\n@@@ (\d+) ([0-9.]+) (\d+)\n")


@dataclass
class Reply:
    code: int
    seconds: float
    connects: int
    body: str

    def json(self) -> dict[str, Any]:
        seen: dict[str, Any] = json.loads(self.body)
        return seen


def _replies(stdout: str) -> list[Reply]:
    """The responses of one curl run with ``-w WRITE_OUT``, in order."""
    parts = _SPLIT.split(stdout)
    return [
        Reply(int(parts[i + 1]), float(parts[i + 2]), int(parts[i + 3]), parts[i].strip())
        for i in range(0, len(parts) - 1, 4)
    ]


def curl_runs(lb: Lab, runs: Sequence[Sequence[str]], timeout: float = 30) -> list[list[Reply]]:
    """curl runs as the app in the vm namespace, at the same time (URLs and globs in each run's
    arguments): every response of each, in order; one connection per host, kept alive, as curl
    does. (curl 7.88's ``--parallel`` writes no ``-w`` output, so parallel clients are separate
    processes.)"""
    procs = [
        subprocess.Popen(
            lb.cmd(lb.vm, *CURL, "-w", WRITE_OUT, *args, uid=APP_UID),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=lb.env,
        )
        for args in runs
    ]
    out = []
    for args, p in zip(runs, procs, strict=True):
        stdout, stderr = p.communicate(timeout=timeout)
        got = _replies(stdout)
        assert got, f"curl {list(args)[:4]}: {stderr.strip()}"
        out.append(got)
    return out
