"""entropy_totals: the sums behind entropy/rollout, a token mean of the sampler's per-token
entropies (hand-worked)."""

from __future__ import annotations

from entropy_rl.train.rollout import entropy_totals


def test_sums_over_every_token_of_every_row() -> None:
    assert entropy_totals([[1.0, 2.0], [3.0]]) == (6.0, 3)  # token mean 2.0, row mean 1.75
    total, n = entropy_totals([[0.5], [0.25, 0.25, 0.25, 0.25]]) or (0.0, 0)
    assert (total, n) == (1.5, 5) and total / n == 0.3


def test_none_without_statistics_for_every_row() -> None:
    assert entropy_totals([]) is None  # an engine that reports nothing
    assert entropy_totals([[1.0], []]) is None  # a row without statistics
