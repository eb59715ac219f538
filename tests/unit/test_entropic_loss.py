"""The ``entropic`` policy loss (EntroPIC's advantage-sign weights) on hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.ops.losses import policy_loss

# five response tokens of one sequence, float64 so that the hand arithmetic is exact
NEW = torch.tensor([[0.96, 0.97, 0.5, 0.99, 0.96]], dtype=torch.float64)
OLD = torch.tensor([[0.96, 0.97, 0.5, 0.99, 0.6]], dtype=torch.float64)
ADV = torch.tensor([[1.0, -1.0, 2.0, 0.0, 1.0]], dtype=torch.float64)
MASK = torch.ones(1, 5)


def _loss(**hp: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    lp = NEW.log().requires_grad_(True)
    loss, metrics = policy_loss(
        "entropic", logprobs=lp, old_logprobs=OLD.log(), advantages=ADV, mask=MASK, **hp
    )
    loss.backward()
    assert lp.grad is not None
    return loss.detach(), lp.grad, metrics


def test_entropic_weights_confident_tokens_by_advantage_sign() -> None:
    loss, grad, m = _loss(pos_weight=1.5, neg_weight=0.5, eps=0.2)
    # token: pi_new, pi_old, A -> PPO loss -> weight -> weighted (N = 5 valid tokens)
    # t0: .96 .96 +1 -> -r*A = -1            confident, A > 0 -> x1.5 -> -1.5
    # t1: .97 .97 -1 -> +1                   confident, A < 0 -> x0.5 -> +0.5
    # t2: .50 .50 +2 -> -2                   not confident (.5 < .95) -> x1 -> -2
    # t3: .99 .99  0 -> 0                    confident, A = 0 -> x1 -> 0
    # t4: .96 .60 +1 -> r = 1.6 > 1.2, clipped: -1.2 * 1 = -1.2, confident -> x1.5 -> -1.8
    # token-mean: (-1.5 + 0.5 - 2 + 0 - 1.8) / 5 = -4.8 / 5 = -0.96
    assert loss.item() == pytest.approx(-0.96, abs=1e-12)
    # d/d log pi = -w * A * r / N where unclipped: t0 -1.5/5 = -0.3, t1 +0.5/5 = 0.1,
    # t2 -2/5 = -0.4, t3 0, t4 clipped -> 0
    assert grad[0].tolist() == pytest.approx([-0.3, 0.1, -0.4, 0.0, 0.0], abs=1e-12)
    assert m["prob/confident_frac"] == pytest.approx(4 / 5)  # t0, t1, t3, t4
    assert m["clip/upper_frac"] == pytest.approx(1 / 5)  # t4


def test_entropic_with_unit_weights_is_ppo_and_threshold_zero_weights_all() -> None:
    loss, grad, _ = _loss(eps=0.2)
    lp = NEW.log().requires_grad_(True)
    ppo, _ = policy_loss("ppo", logprobs=lp, old_logprobs=OLD.log(), advantages=ADV, mask=MASK)
    ppo.backward()
    assert loss.item() == ppo.item()  # (-1 + 1 - 2 + 0 - 1.2) / 5 = -0.64
    assert loss.item() == pytest.approx(-0.64, abs=1e-12)
    assert torch.equal(grad, lp.grad)
    # prob_threshold 0: every token is "confident"; t2 now also x1.5 -> -3:
    # (-1.5 + 0.5 - 3 + 0 - 1.8) / 5 = -5.8 / 5 = -1.16
    loss0, _, m0 = _loss(pos_weight=1.5, neg_weight=0.5, prob_threshold=0.0)
    assert loss0.item() == pytest.approx(-1.16, abs=1e-12)
    assert m0["prob/confident_frac"] == 1.0


def test_entropic_threshold_uses_the_current_probability() -> None:
    # t4's old probability is 0.6 (< 0.95) but its current one 0.96 (> 0.95): it is weighted
    # (x0 here, so its -1.2 vanishes): (0 + 1 - 2 + 0 + 0) / 5 = -0.2 with pos 0, neg 1.
    # Selected by the old probability it would keep its -1.2: (0 + 1 - 2 + 0 - 1.2) / 5 = -0.44
    loss, _, _ = _loss(pos_weight=0.0, neg_weight=1.0)
    assert loss.item() == pytest.approx(-0.2, abs=1e-12)


@pytest.mark.parametrize(
    ("hp", "match"),
    [
        ({"pos_weight": -0.1}, "pos_weight"),
        ({"neg_weight": math.inf}, "neg_weight"),
        ({"prob_threshold": 1.0}, "prob_threshold"),
        ({"eps": 0.2, "eps_high": 0.3}, "either eps"),
    ],
)
def test_entropic_validation(hp: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _loss(**hp)
