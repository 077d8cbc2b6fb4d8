"""pass@k from sampled completions: the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models
Trained on Code"), the probability that at least one of k completions drawn without replacement from the n sampled
ones is correct, averaged over problems."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k) for one problem with `c` correct completions among `n` (exact, integer binomials).

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 2), pass_at_k(4, 0, 4), pass_at_k(4, 1, 4)
    (0.25, 0.5, 0.0, 1.0)
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got k={k}, n={n}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_k_ks(n: int) -> list[int]:
    """The k reported for n samples: 1 and the powers of two up to n, and n itself.

    >>> pass_at_k_ks(1), pass_at_k_ks(8), pass_at_k_ks(6)
    ([1], [1, 2, 4, 8], [1, 2, 4, 6])
    """
    if n < 1:
        raise ValueError(f"pass_at_k_ks: need n >= 1, got {n}")
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else [*ks, n]


def mean_pass_at_k(correct_counts: Sequence[int], n: int, ks: Sequence[int]) -> dict[int, float]:
    """{k: mean over problems of pass_at_k(n, c, k)} for problems with `correct_counts` correct of `n` each."""
    if not correct_counts:
        raise ValueError("mean_pass_at_k: no problems")
    return {k: sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts) for k in ks}


__all__ = ["mean_pass_at_k", "pass_at_k", "pass_at_k_ks"]
