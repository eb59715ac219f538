"""Truncated importance sampling against the rollout engine's own log-probs."""

from __future__ import annotations

import math

import torch

from entropy_rl.train.batch import build_batch
from entropy_rl.train.token_weights import importance_weights


def _batch(sampler: list[list[float]]):
    b = build_batch(
        [[1, 5], [1, 6]], [[7, 2], [8]], rewards=torch.tensor([1.0, 0.0]),
        advantages=torch.tensor([1.0, -1.0]), pad_token_id=0, sampler_logprobs=sampler,
    )  # fmt: skip
    return b


def test_weights_are_capped_ratios_on_valid_tokens():
    b = _batch([[math.log(0.5), math.log(0.2)], [math.log(0.4)]])
    # trainer's old probabilities: 0.5 (same), 0.8 (ratio 4 -> capped at 2), 0.1 (ratio 0.25)
    b.old_logprobs = torch.log(torch.tensor([[0.5, 0.8], [0.1, 1.0]]))
    out = importance_weights(b, cap=2.0)
    assert b.token_weights is not None
    torch.testing.assert_close(b.token_weights, torch.tensor([[1.0, 2.0], [0.25, 0.0]]))
    assert abs(out["tis/capped_frac"] - 1 / 3) < 1e-7
    assert abs(out["tis/weight_mean"] - (1.0 + 2.0 + 0.25) / 3) < 1e-6
    # k3 of log(pi_old / pi_sampler) = d: exp(-d) - 1 + d, d = (0, log 4, log 0.25)
    d = [0.0, math.log(4), math.log(0.25)]
    want = sum(math.exp(-x) - 1 + x for x in d) / 3
    assert abs(out["mismatch/k3"] - want) < 1e-6


def test_no_sampler_logprobs_no_weights():
    b = build_batch([[1]], [[2]], rewards=torch.ones(1), advantages=torch.ones(1), pad_token_id=0)
    b.old_logprobs = torch.zeros(1, 1)
    assert importance_weights(b, cap=2.0) == {}
    assert b.token_weights is None
