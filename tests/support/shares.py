"""Traffic shares against two-sided p = 0.001 bounds: a correct split fails one of these checks
by chance about once in a thousand runs (the HTTP relay and VirtualService tests)."""

from __future__ import annotations

import math
from collections.abc import Mapping

# |z| above this (a chi-square of 10.828 with one degree of freedom) fails a proportion test by
# chance once in a thousand runs.
Z_001 = 3.29
CHI2_1DOF_001 = 10.828


def within_binomial(k: int, n: int, p: float) -> bool:
    """``k`` successes of ``n`` within the bound around the expected ``n * p``."""
    return abs(k - n * p) <= Z_001 * math.sqrt(n * p * (1 - p))


def chi_square(counts: Mapping[str, int], want: Mapping[str, float]) -> float:
    """Pearson's chi-square of ``counts`` against the expected counts ``want``."""
    return sum((counts.get(k, 0) - e) ** 2 / e for k, e in want.items())
