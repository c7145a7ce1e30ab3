"""Traffic shares against two-sided p = 1e-6 bounds: a correct split fails one of these checks
by chance about once in a million runs (the HTTP relay and VirtualService tests). The suite makes
a few dozen such checks per run; at p = 0.001 one of them failed CI by chance (125 of 200 aborted
at 50 %, z = 3.5), while a split made per connection instead of per request still lands far
outside these bounds (the tests say by how much)."""

from __future__ import annotations

import math
from collections.abc import Mapping

# |z| above this (a chi-square of 23.93 with one degree of freedom) fails a proportion test by
# chance once in a million runs.
Z_BOUND = 4.89
CHI2_1DOF_BOUND = 23.93


def within_binomial(k: int, n: int, p: float) -> bool:
    """``k`` successes of ``n`` within the bound around the expected ``n * p``."""
    return abs(k - n * p) <= Z_BOUND * math.sqrt(n * p * (1 - p))


def chi_square(counts: Mapping[str, int], want: Mapping[str, float]) -> float:
    """Pearson's chi-square of ``counts`` against the expected counts ``want``."""
    return sum((counts.get(k, 0) - e) ** 2 / e for k, e in want.items())
