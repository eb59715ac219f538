"""Two-sample statistics for seed-level comparisons: a permutation test and a bootstrap interval.

A setting run with n seeds gives n numbers (one per run: final entropy, P on the last
checkpoint, ...). Comparing two settings means comparing two small samples, n and m in 2..10,
with no reason to assume normality; so both tools here are distribution-free:

- `permutation_pvalue`: is the gap of means larger than relabelling the runs would give?
  Exact (every split enumerated) for the sizes that occur here.
- `bootstrap_interval`: how large is the gap, within what uncertainty?

Neither corrects for multiple comparisons: with many settings x metrics, some p < 0.05 will
occur by chance; read p-values per comparison, and prefer effects that also pass the range rule.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["bootstrap_interval", "permutation_pvalue"]


def _finite(xs: Sequence[float]) -> np.ndarray:
    return np.array([float(x) for x in xs if math.isfinite(float(x))], dtype=np.float64)


def permutation_pvalue(
    a: Sequence[float],
    b: Sequence[float],
    *,
    max_exact: int = 200_000,
    resamples: int = 20_000,
    seed: int = 0,
) -> float:
    """Two-sided permutation test of the difference of means (Fisher 1935; Good, "Permutation,
    Parametric and Bootstrap Tests of Hypotheses", 2005, ch. 3).

    H0: the n + m values are exchangeable between the two groups. With d(S) = mean of the
    values outside S minus mean of those in S, over the splits S of the pooled values into
    groups of sizes n and m (the observed split is S = a):

        p = #{S : |d(S)| >= |d(a)|} / C(n + m, n)

    Exact when C(n + m, n) <= `max_exact` (every split enumerated; the observed one counts, so
    p >= 1 / C(n + m, n)); else `resamples` seeded random splits give
    p = (1 + #{|d*| >= |d(a)|}) / (1 + resamples) (Phipson & Smyth 2010: never 0).

    Hand-worked: a complete separation of 3 vs 3 distinct values is reached only by the observed
    split and its mirror image: p = 2 / C(6, 3) = 2 / 20 = 0.1; 6 vs 6: 2 / 924 = 0.0022.

    Non-finite values are dropped; nan when either group is then empty.
    """
    x, y = _finite(a), _finite(b)
    n, m = len(x), len(y)
    if n == 0 or m == 0:
        return math.nan
    pooled = np.concatenate([x, y])
    total = pooled.sum()

    def gaps(sum_a: np.ndarray) -> np.ndarray:  # |mean(rest) - mean(group of size n)|
        return np.abs((total - sum_a) / m - sum_a / n)

    observed = gaps(np.array([x.sum()]))[0]
    tol = 1e-9 * (1.0 + np.abs(pooled).max())  # the same gap, up to rounding of the sums
    if math.comb(n + m, n) <= max_exact:
        combos = itertools.combinations(range(n + m), n)
        idx = np.fromiter(itertools.chain.from_iterable(combos), dtype=np.int64)
        sums = pooled[idx.reshape(-1, n)].sum(axis=1)  # (C(n+m, n),)
        return float(np.mean(gaps(sums) >= observed - tol))
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.tile(pooled, (resamples, 1)), axis=1)  # (R, n + m)
    hits = int(np.sum(gaps(perms[:, :n].sum(axis=1)) >= observed - tol))
    return (1 + hits) / (1 + resamples)


def bootstrap_interval(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(b) - mean(a) (Efron & Tibshirani, "An
    Introduction to the Bootstrap", 1993, ch. 13).

    Each group is resampled with replacement within itself (sizes kept), `resamples` times,
    with a seeded generator; the interval is the (1 - level) / 2 and (1 + level) / 2 quantiles
    of the resampled differences of means. With 2-3 seeds a group has only 3-10 distinct
    resamples, so the interval is coarse and too narrow: read it as a size, not a test.

    Non-finite values are dropped; (nan, nan) when either group is then empty.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    x, y = _finite(a), _finite(b)
    if len(x) == 0 or len(y) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    mean_x = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)  # (R,)
    mean_y = y[rng.integers(0, len(y), size=(resamples, len(y)))].mean(axis=1)
    lo, hi = np.quantile(mean_y - mean_x, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
