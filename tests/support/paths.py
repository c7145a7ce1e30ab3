"""Where things are: the repository, the shared case files, the shipped example mesh."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
# Read by the Rust (native/tests/*.rs), Python (tests/conformance/) and C (tests/c/) drivers.
CASES = TESTS / "cases"
EXAMPLE_MESH = ROOT / "pymesh" / "examples" / "mesh"
