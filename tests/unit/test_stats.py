"""experiments.stats: the exact permutation test and the percentile bootstrap, hand-worked."""

from __future__ import annotations

import math

import pytest

from entropy_rl.experiments.stats import bootstrap_interval, permutation_pvalue


def test_complete_separation_p_values():
    # 3 vs 3: only the observed split and its mirror reach the gap: 2 / C(6, 3) = 2 / 20
    assert permutation_pvalue([0.1, 0.2, 0.3], [0.5, 0.6, 0.7]) == pytest.approx(0.1, abs=1e-15)
    assert permutation_pvalue([0.5, 0.6, 0.7], [0.1, 0.2, 0.3]) == pytest.approx(0.1, abs=1e-15)
    # 6 vs 6: 2 / C(12, 6) = 2 / 924
    ref = [0.31, 0.39, 0.42, 0.46, 0.35, 0.44]
    other = [0.55, 0.58, 0.60, 0.79, 0.50, 0.70]
    assert permutation_pvalue(ref, other) == pytest.approx(2 / 924, abs=1e-15)


def test_small_cases_by_hand():
    # {0, 1} vs {2, 3}: |d| = 2 for {0,1} and {2,3}; {0,2}: 1, {0,3}: 0, {1,2}: 0, {1,3}: 1
    assert permutation_pvalue([0, 1], [2, 3]) == pytest.approx(2 / 6, abs=1e-15)
    # {0} vs {1, 2}: S = {0}: 1.5 - 0; S = {1}: 1 - 1 = 0; S = {2}: 0.5 - 2 = -1.5 -> 2 of 3
    assert permutation_pvalue([0], [1, 2]) == pytest.approx(2 / 3, abs=1e-15)
    # a single outlier: eleven 0s and one 1; every split has |d| = 1/6 -> p = 1
    assert permutation_pvalue([0.0] * 6, [0.0] * 5 + [1.0]) == 1.0
    assert math.isnan(permutation_pvalue([math.nan], [1.0]))
    assert permutation_pvalue([0.1, math.nan, 0.2, 0.3], [0.5, 0.6, 0.7]) == pytest.approx(0.1)


def test_realistic_outlier_is_not_significant():
    # the gap of means (0.083) comes from one seed: about 3 splits in 4 reach it
    ref = [0.40, 0.41, 0.42, 0.43, 0.44, 0.45]
    assert permutation_pvalue(ref, [0.40, 0.41, 0.42, 0.43, 0.44, 0.95]) > 0.5


def test_monte_carlo_fallback():
    # forced: 3 vs 3 separation by random splits estimates 0.1 (sd sqrt(.1 * .9 / 20000) = .002)
    p = permutation_pvalue([0, 1, 2], [3, 4, 5], max_exact=1, resamples=20_000, seed=1)
    assert abs(p - 0.1) < 0.01
    # 12 vs 12 (C(24, 12) = 2.7M splits): exact p is 2 / 2.7M, no random split reaches the
    # observed one, and the estimate never reads 0: (1 + 0) / (1 + 20000)
    assert permutation_pvalue(list(range(12)), list(range(12, 24))) == pytest.approx(1 / 20_001)


def test_bootstrap_by_hand():
    # constant groups: every resample gives 3 - 1
    assert bootstrap_interval([1.0, 1.0, 1.0], [3.0, 3.0]) == (2.0, 2.0)
    # b = [0], a = [0, 1]: the difference is -mean(a*) in {0, -0.5, -1} with probabilities
    # 1/4, 1/2, 1/4, so the 2.5% and 97.5% quantiles are -1 and 0
    assert bootstrap_interval([0.0, 1.0], [0.0]) == (-1.0, 0.0)
    lo, hi = bootstrap_interval([0.31, 0.39, 0.42, 0.46, 0.35, 0.44],
                                [0.55, 0.58, 0.60, 0.79, 0.50, 0.70])  # fmt: skip
    assert 0.0 < lo < 0.225 < hi  # the gap of means is 0.62 - 0.395 = 0.225
    a, b = [0.1, 0.5, 0.2, 0.8, 0.3, 0.6], [0.4, 0.9, 0.7, 0.2, 0.5, 1.0]  # 462 resamples each
    assert bootstrap_interval(a, b, seed=3) == bootstrap_interval(a, b, seed=3)
    assert bootstrap_interval(a, b, seed=3) != bootstrap_interval(a, b, seed=4)
    assert all(math.isnan(x) for x in bootstrap_interval([], [1.0]))
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval([1.0], [2.0], level=1.0)
