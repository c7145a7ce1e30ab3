"""Benchmark setup: sizes follow PYMESH_BENCH_SHORT (CI) or full mode."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The pure-Python reference model lives with the tests (it is their oracle).
sys.path.insert(0, str(ROOT / "tests"))

SHORT = os.environ.get("PYMESH_BENCH_SHORT") == "1"
