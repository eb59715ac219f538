"""`ops.aggregate.aggregate`: hand-worked values of the four modes, padding, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.ops.aggregate import AGG_MODES, aggregate

F64 = torch.float64

L = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [7.0, 7.0, 7.0]], dtype=F64)
M = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])  # row 2 is padding


def test_aggregate_hand_values() -> None:
    # token-mean: (1 + 2 + 3 + 4) / 4 = 2.5
    assert float(aggregate(L, M, "token-mean")) == pytest.approx(2.5)
    # seq-mean-token-mean: (6/3 + 4/1) / 2 non-empty rows = 3.0
    assert float(aggregate(L, M, "seq-mean-token-mean")) == pytest.approx(3.0)
    # seq-mean-token-sum: (6 + 4) / 2 = 5.0
    assert float(aggregate(L, M, "seq-mean-token-sum")) == pytest.approx(5.0)
    # seq-mean-token-sum-norm: 10 / (2 * 4) = 1.25
    assert float(aggregate(L, M, "seq-mean-token-sum-norm", max_len=4)) == pytest.approx(1.25)
    # overrides: token-mean 10 / 8; seq modes with num_seqs = 5: 6/5, 10/5, 10/(5*4)
    assert float(aggregate(L, M, "token-mean", num_tokens=8)) == pytest.approx(1.25)
    assert float(aggregate(L, M, "seq-mean-token-mean", num_seqs=5)) == pytest.approx(1.2)
    assert float(aggregate(L, M, "seq-mean-token-sum", num_seqs=5)) == pytest.approx(2.0)
    norm = aggregate(L, M, "seq-mean-token-sum-norm", num_seqs=5, max_len=4)
    assert float(norm) == pytest.approx(0.5)
    # arguments a mode does not use are ignored
    assert float(aggregate(L, M, "token-mean", num_seqs=99, max_len=1)) == pytest.approx(2.5)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregate_empty_batch_is_zero_and_padding_never_leaks(mode: str) -> None:
    x = torch.full((2, 3), math.nan, dtype=F64, requires_grad=True)
    out = aggregate(x, torch.zeros(2, 3), mode, max_len=3)
    out.backward()
    assert float(out.detach()) == 0.0
    assert x.grad is not None and torch.equal(x.grad, torch.zeros(2, 3, dtype=F64))
    zero_counts = aggregate(x, torch.zeros(2, 3), mode, num_tokens=0, num_seqs=0, max_len=3)
    assert float(zero_counts.detach()) == 0.0


def test_aggregate_gradient_weights() -> None:
    # token-mean: every valid token weighs 1/4; seq-mean-token-mean: 1/(2*3) in row 0, 1/2 in row 1
    x = L.clone().requires_grad_(True)
    aggregate(x, M, "seq-mean-token-mean").backward()
    expected = torch.tensor([[1 / 6, 1 / 6, 1 / 6], [1 / 2, 0, 0], [0, 0, 0]], dtype=F64)
    assert x.grad is not None
    torch.testing.assert_close(x.grad, expected)


def test_aggregate_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown aggregation mode 'mean'.*token-mean"):
        aggregate(L, M, "mean")
    with pytest.raises(ValueError, match=r"needs max_len"):
        aggregate(L, M, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match=r"needs max_len"):
        aggregate(L, M, "seq-mean-token-sum-norm", max_len=0)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        aggregate(L, M[:2], "token-mean")
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        aggregate(L[0], M[0], "token-mean")
    with pytest.raises(ValueError, match="num_tokens must be a finite number >= 0"):
        aggregate(L, M, "token-mean", num_tokens=-1)
    with pytest.raises(ValueError, match="num_seqs must be a finite number >= 0"):
        aggregate(L, M, "seq-mean-token-mean", num_seqs=math.nan)
