"""Confidence intervals for the accuracies geor1 reports."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def wilson_interval(k: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (95% by default); (0, 1) when n is 0. `k` may be an
    expected count (e.g. mean pass@k x n), not only a whole number.

    >>> tuple(round(x, 4) for x in wilson_interval(8, 10))
    (0.4902, 0.9433)
    """
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def median_interval(values: Sequence[float], z: float = 1.959964) -> tuple[float, float]:
    """Distribution-free 95% interval of the median: the order statistics of 1-based ranks floor(n/2 - z*sqrt(n)/2)
    and ceil(1 + n/2 + z*sqrt(n)/2) (the normal approximation of the binomial count of values below the median),
    clipped to the sample; (nan, nan) for none.

    >>> median_interval([float(i) for i in range(1, 101)])
    (40.0, 61.0)
    """
    v = np.sort(np.asarray(values, dtype=float))
    n = len(v)
    if n == 0:
        return math.nan, math.nan
    half = z * math.sqrt(n) / 2
    lo, hi = math.floor(n / 2 - half) - 1, math.ceil(1 + n / 2 + half) - 1  # 0-based ranks
    return float(v[max(lo, 0)]), float(v[min(hi, n - 1)])


def paired_bootstrap(
    first: Sequence[float],
    second: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.median,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """`statistic(second) - statistic(first)` over the same items (e.g. the median geolocation error of two models
    on the same places), with a percentile bootstrap 95% interval: items drawn with replacement, the same draw for
    both, `resamples` times, seeded.

    >>> d = paired_bootstrap([10.0, 20.0, 30.0, 40.0], [5.0, 10.0, 15.0, 20.0])
    >>> d["diff"], d["ci95_low"] <= d["diff"] <= d["ci95_high"] < 0
    (-12.5, True)
    """
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired_bootstrap needs two equally long, non-empty 1-d sequences, got {a.shape}, {b.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(resamples, len(a)))  # [resamples, n]
    diffs = np.array([statistic(b[i]) - statistic(a[i]) for i in idx])
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"diff": float(statistic(b) - statistic(a)), "ci95_low": float(lo), "ci95_high": float(hi)}
