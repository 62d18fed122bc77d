"""Two-sample checks shared by the view-distribution tests (tests/test_fast_views.py, tests/test_gpu_views.py)."""

import math

import numpy as np
from scipy import stats

P_MIN = 1e-4  # KS p-value below which two samples are declared different


def same_rate(k1: int, n1: int, k2: float, n2: int) -> None:
    """k1 of n1 and k2 of n2 are the same proportion within 5 standard errors."""
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(max(p * (1 - p), 1e-12) * (1 / n1 + 1 / n2))
    assert abs(k1 / n1 - k2 / n2) <= 5 * se + 1e-9, (k1 / n1, k2 / n2)


def same_distribution(a, b, what: str) -> None:
    """Two samples (more than 50 values each) not told apart by a two-sample KS test at P_MIN."""
    assert len(a) > 50 and len(b) > 50, what
    p = stats.ks_2samp(np.asarray(a, float), np.asarray(b, float)).pvalue
    assert p > P_MIN, f"{what}: KS p = {p:.2g} (means {np.mean(a):.4g} vs {np.mean(b):.4g})"
