"""Entropy regularisers and the KL penalty (ops.regularizers): hand-worked numbers, references."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.ops.losses import policy_loss
from entropy_rl.ops.regularizers import (
    entropy_bonus,
    entropy_shaped_advantages,
    high_entropy_mask,
    kl_penalty,
)

F64 = torch.float64
H = torch.tensor([[1.0, 2.0], [3.0, math.nan]], dtype=F64)
M = torch.tensor([[1, 1], [1, 0]])


def test_entropy_bonus_hand_values_and_sign() -> None:
    # token-mean H = (1 + 2 + 3) / 3 = 2 -> bonus = -0.01 * 2 = -0.02
    # seq-mean-token-mean H = (1.5 + 3) / 2 = 2.25 -> -0.0225
    # num_tokens = 6: 6 / 6 = 1 -> -0.01
    h = H.clone().requires_grad_(True)
    bonus = entropy_bonus(h, M, coef=0.01)
    assert bonus.item() == pytest.approx(-0.02)
    assert entropy_bonus(H, M, coef=0.01, agg="seq-mean-token-mean").item() == pytest.approx(
        -0.0225
    )
    assert entropy_bonus(H, M, coef=0.01, num_tokens=6).item() == pytest.approx(-0.01)
    # d bonus / dH = -coef / 3 on valid tokens: a gradient step on the loss raises entropy
    bonus.backward()
    expected = torch.tensor([[-0.01 / 3, -0.01 / 3], [-0.01 / 3, 0.0]], dtype=F64)
    assert h.grad is not None
    torch.testing.assert_close(h.grad, expected)
    # a negative coefficient minimises entropy instead
    assert entropy_bonus(H, M, coef=-0.01).item() == pytest.approx(0.02)


def test_entropy_bonus_errors() -> None:
    for coef in (math.nan, math.inf):
        with pytest.raises(ValueError, match="coef must be a finite number"):
            entropy_bonus(H, M, coef=coef)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        entropy_bonus(H, M[:1], coef=0.01)
    with pytest.raises(ValueError, match="unknown aggregation mode"):
        entropy_bonus(H, M, coef=0.01, agg="mean")


def test_high_entropy_mask_hand_value() -> None:
    # valid H = 0.1, 0.2, ..., 1.0 (N = 10); rho = 0.2 -> 0.8 quantile, linear interpolation:
    # position 0.8 * 9 = 7.2 -> 0.8 + 0.2 * (0.9 - 0.8) = 0.82 -> keeps 0.9 and 1.0.
    # Masked tokens (H = 100) are never kept.
    h = torch.cat([torch.arange(1, 11, dtype=F64) / 10, torch.full((2,), 100.0, dtype=F64)])
    h = h.view(2, 6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    kept = high_entropy_mask(h, mask, rho=0.2)
    expected = torch.zeros(2, 6, dtype=torch.bool)
    expected[1, 2:4] = True  # 0.9 and 1.0
    assert torch.equal(kept, expected)


@pytest.mark.parametrize("rho", [0.05, 0.2, 0.5, 0.9, 1.0])
def test_high_entropy_mask_matches_torch_quantile(rho: float) -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.rand(8, 33, generator=g, dtype=F64) * 3
    mask = torch.rand(8, 33, generator=g) < 0.7
    threshold = torch.quantile(h[mask], 1 - rho)
    assert torch.equal(high_entropy_mask(h, mask, rho=rho), mask & (h >= threshold))
    if rho == 1.0:
        assert torch.equal(high_entropy_mask(h, mask, rho=rho), mask)


def test_high_entropy_mask_ties_empty_and_errors() -> None:
    flat = torch.ones(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(high_entropy_mask(flat, mask), mask.bool())  # ties at threshold kept
    assert not high_entropy_mask(flat, torch.zeros(2, 3)).any()
    for rho in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match=r"rho is the kept fraction and must be in \(0, 1\]"):
            high_entropy_mask(flat, mask, rho=rho)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        high_entropy_mask(flat, mask[:1])


def test_high_entropy_mask_loss_normalises_by_kept_tokens() -> None:
    # gpg with mask & kept: loss = -sum_kept(A log pi) / n_kept. Kept: tokens with H 0.9, 1.0.
    # A = 1, log pi = [-1, -3] there -> (1 + 3) / 2 = 2.0
    h = torch.tensor([[0.1, 0.9, 0.2, 1.0, 0.3]], dtype=F64)
    mask = torch.ones(1, 5, dtype=torch.bool)
    keep = mask & high_entropy_mask(h, mask, rho=0.4)
    lp = torch.tensor([[-5.0, -1.0, -5.0, -3.0, -5.0]], dtype=F64)
    loss, m = policy_loss(
        "gpg", logprobs=lp, old_logprobs=lp, advantages=torch.ones(1, dtype=F64), mask=keep
    )
    assert loss.item() == pytest.approx(2.0)
    assert m["_count/tokens"] == 2.0


def test_entropy_shaped_advantages_hand_values() -> None:
    # alpha 0.4, kappa 2: A' = A + min(0.4 H, |A| / 2)
    # (A 1, H 0.5): min(0.2, 0.5) = 0.2 -> 1.2
    # (A -1, H 2): min(0.8, 0.5) = 0.5 -> -0.5 (bonus capped: the sign never flips)
    # (A 0, H 3): min(1.2, 0) = 0 -> 0
    # (A 1, H 10): min(4, 0.5) = 0.5 -> 1.5
    adv = torch.tensor([[1.0, -1.0, 0.0, 1.0]], dtype=F64)
    h = torch.tensor([[0.5, 2.0, 3.0, 10.0]], dtype=F64, requires_grad=True)
    shaped = entropy_shaped_advantages(adv, h)
    torch.testing.assert_close(shaped, torch.tensor([[1.2, -0.5, 0.0, 1.5]], dtype=F64))
    assert not shaped.requires_grad  # sg(H): no gradient into the entropy
    # alpha 0.1 (their PPO setting): (A 1, H 0.5) -> 1 + min(0.05, 0.5) = 1.05
    assert entropy_shaped_advantages(adv, h, alpha=0.1)[0, 0].item() == pytest.approx(1.05)
    # [B] advantages broadcast over tokens
    torch.testing.assert_close(
        entropy_shaped_advantages(torch.tensor([1.0], dtype=F64), h.detach()),
        torch.tensor([[1.2, 1.5, 1.5, 1.5]], dtype=F64),
    )


def test_entropy_shaped_advantages_errors() -> None:
    adv, h = torch.ones(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        entropy_shaped_advantages(adv, h, alpha=-0.1)
    with pytest.raises(ValueError, match="kappa must be a finite number > 0"):
        entropy_shaped_advantages(adv, h, kappa=0.0)
    with pytest.raises(ValueError, match="advantages must be"):
        entropy_shaped_advantages(torch.ones(3), h)
    with pytest.raises(ValueError, match="entropy must be"):
        entropy_shaped_advantages(torch.ones(2), torch.ones(2))


def test_kl_penalty_hand_value_and_gradient() -> None:
    # tokens (pi .5, ref .25): k3 = 0.193147; (pi .25, ref .5): k3 = 0.306853; padding NaN/inf
    # token-mean = 0.25; coef 0.1 -> 0.025
    # dk3/dlogpi = 1 - exp(-d): 1 - 0.5 = 0.5 and 1 - 2 = -1; times coef / 2 tokens
    lp = torch.tensor([[math.log(0.5), math.log(0.25), math.nan]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[math.log(0.25), math.log(0.5), math.inf]], dtype=F64)
    mask = torch.tensor([[1, 1, 0]])
    penalty = kl_penalty(lp, ref, mask, coef=0.1)
    assert penalty.item() == pytest.approx(0.025)
    penalty.backward()
    assert lp.grad is not None
    torch.testing.assert_close(lp.grad, torch.tensor([[0.025, -0.05, 0.0]], dtype=F64))
    # k1 = (0.693147 - 0.693147) / 2 = 0
    assert kl_penalty(lp, ref, mask, coef=0.1, kind="k1").item() == pytest.approx(0.0, abs=1e-15)


def test_kl_penalty_errors() -> None:
    a, mask = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="coef must be a finite number >= 0"):
        kl_penalty(a, a, mask, coef=-1.0)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        kl_penalty(a, torch.zeros(2, 4), mask, coef=0.1)
    with pytest.raises(ValueError, match="unknown KL estimator kind"):
        kl_penalty(a, a, mask, coef=0.1, kind="k5")
