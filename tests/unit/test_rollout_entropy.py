"""rollout_entropy: the token mean of the sampler's per-token entropies (hand-worked)."""

from __future__ import annotations

import pytest

from entropy_rl.train.rollout import rollout_entropy


def test_a_token_mean_over_every_row_not_a_mean_of_row_means() -> None:
    assert rollout_entropy([[1.0, 2.0], [3.0]]) == pytest.approx(2.0, abs=1e-15)  # 6 / 3
    assert rollout_entropy([[0.5], [0.25, 0.25, 0.25, 0.25]]) == pytest.approx(0.3, abs=1e-15)


def test_none_without_statistics_for_every_row() -> None:
    assert rollout_entropy([]) is None  # an engine that reports nothing
    assert rollout_entropy([[1.0], []]) is None  # a row without statistics
