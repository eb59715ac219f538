"""Tests for entropy_rl.control.monitor: hand-worked numbers and numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from entropy_rl.control.monitor import (
    EntropyDynamics,
    entropy_by_position,
    entropy_stats,
    logp_adv_covariance,
)

# Two rows, T = 4; row 0 has 3 valid tokens, row 1 has 2. Padding holds junk (9.9) on purpose.
H = torch.tensor([[0.0, 0.5, 1.0, 9.9], [2.0, 0.005, 9.9, 9.9]])
P = torch.tensor([[0.5, 0.25, 1.0, 0.3], [0.125, 1.0, 0.3, 0.3]])
M = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


def test_entropy_stats_hand_worked() -> None:
    out = entropy_stats(H, P.log(), M, top1_prob=torch.full_like(H, 0.75))
    # valid H = {0, 0.5, 1, 2, 0.005}, N = 5; sorted 0, 0.005, 0.5, 1, 2
    assert out["entropy/mean"] == pytest.approx(3.505 / 5, abs=1e-7)
    # p10: position 0.1 * 4 = 0.4 -> 0 + 0.4 * 0.005 = 0.002
    assert out["entropy/p10"] == pytest.approx(0.002, abs=1e-7)
    assert out["entropy/p50"] == pytest.approx(0.5, abs=1e-7)  # position 2
    # p90: position 3.6 -> 1 + 0.6 * (2 - 1) = 1.6
    assert out["entropy/p90"] == pytest.approx(1.6, abs=1e-7)
    assert out["entropy/top20_mean"] == pytest.approx(2.0, abs=1e-7)  # ceil(0.2 * 5) = 1 token
    assert out["entropy/near_det_frac"] == pytest.approx(2 / 5)  # 0 and 0.005 are < 0.01
    # surprisal: (ln 2 + 2 ln 2 + 0 + 3 ln 2 + 0) / 5 = 6 ln 2 / 5
    assert out["entropy/surprisal"] == pytest.approx(6 * math.log(2) / 5, abs=1e-7)
    # (0.5 + 0.25 + 1 + 0.125 + 1) / 5 = 0.575
    assert out["prob/sampled_mean"] == pytest.approx(0.575, abs=1e-7)
    assert out["prob/top1_mean"] == pytest.approx(0.75, abs=1e-7)


def test_entropy_stats_without_top1_omits_key() -> None:
    assert "prob/top1_mean" not in entropy_stats(H, P.log(), M)


def test_entropy_stats_ignores_padding_values() -> None:
    h2 = H.clone()
    h2[~M.bool()] = -123.0
    p2 = P.clone()
    p2[~M.bool()] = 1e-9
    assert entropy_stats(h2, p2.log(), M) == entropy_stats(H, P.log(), M.bool())


def test_entropy_stats_matches_numpy_on_random_batch() -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.rand(6, 50, generator=g, dtype=torch.float64) * 3
    lp = -torch.rand(6, 50, generator=g, dtype=torch.float64) * 4
    m = torch.rand(6, 50, generator=g) > 0.3
    out = entropy_stats(h, lp, m)
    v = h[m].numpy()
    for q in (10, 50, 90):
        assert out[f"entropy/p{q}"] == pytest.approx(np.quantile(v, q / 100), abs=1e-12)
    k = math.ceil(0.2 * v.size)
    assert out["entropy/top20_mean"] == pytest.approx(np.sort(v)[-k:].mean(), abs=1e-12)
    assert out["entropy/mean"] == pytest.approx(v.mean(), abs=1e-12)
    assert out["prob/sampled_mean"] == pytest.approx(np.exp(lp[m].numpy()).mean(), abs=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mask": torch.zeros(2, 4)}, "no tokens"),
        ({"mask": torch.ones(2, 3)}, "must match"),
        ({"mask": torch.full((2, 4), 2)}, "0 and 1"),
        ({"logprobs": torch.zeros(2, 5)}, "logprobs"),
        ({"top1_prob": torch.zeros(3, 4)}, "top1_prob"),
    ],
)
def test_entropy_stats_bad_input(kwargs: dict, match: str) -> None:
    args = {"entropy": H, "logprobs": P.log(), "mask": M} | kwargs
    top1 = args.pop("top1_prob", None)
    with pytest.raises(ValueError, match=match):
        entropy_stats(args["entropy"], args["logprobs"], args["mask"], top1_prob=top1)


def test_entropy_by_position_hand_worked_and_left_padding() -> None:
    h = torch.arange(8, dtype=torch.float32)[None].repeat(2, 1)  # H_t = t
    m = torch.tensor([[1] * 8, [0, 0, 0, 0, 0, 1, 1, 1]])  # row 1: length 3, left-padded
    out = entropy_by_position(h, m)
    # quarters of 8: positions {0,1}, {2,3}, {4,5}, {6,7}.
    # bucket 0: row 0 H = 0, 1; row 1 positions 0,1 sit at t = 5, 6 -> mean (0+1+5+6)/4 = 3
    assert out["entropy/pos_0"] == pytest.approx(3.0)
    # bucket 1: row 0 H = 2, 3; row 1 position 2 at t = 7 -> (2 + 3 + 7) / 3 = 4
    assert out["entropy/pos_1"] == pytest.approx(4.0)
    assert out["entropy/pos_2"] == pytest.approx(4.5)
    assert out["entropy/pos_3"] == pytest.approx(6.5)


def test_entropy_by_position_empty_bucket_is_nan_and_max_len() -> None:
    h = torch.tensor([[1.0, 2.0, 3.0]])
    m = torch.ones(1, 3)
    out = entropy_by_position(h, m, buckets=2, max_len=8)
    # max_len 8, 2 buckets: positions 0-3 -> bucket 0 (all three tokens), 4-7 empty
    assert out["entropy/pos_0"] == pytest.approx(2.0)
    assert math.isnan(out["entropy/pos_1"])
    assert set(out) == {"entropy/pos_0", "entropy/pos_1"}
    with pytest.raises(ValueError, match="max_len"):
        entropy_by_position(h, m, max_len=2)
    with pytest.raises(ValueError, match="buckets"):
        entropy_by_position(h, m, buckets=0)


def test_logp_adv_covariance_hand_worked() -> None:
    lp = torch.tensor([[0.0, -1.0, -2.0, -3.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    # mean lp = -1.5, mean A = 0: (1.5*1 + 0.5*1 + (-0.5)(-1) + (-1.5)(-1)) / 4 = 4 / 4 = 1
    assert logp_adv_covariance(lp, adv, torch.ones(1, 4)) == pytest.approx(1.0)


def test_logp_adv_covariance_per_sequence_advantages_and_numpy() -> None:
    g = torch.Generator().manual_seed(1)
    lp = -torch.rand(4, 7, generator=g, dtype=torch.float64)
    adv_seq = torch.randn(4, generator=g, dtype=torch.float64)
    m = torch.rand(4, 7, generator=g) > 0.4
    m[:, 0] = True
    got = logp_adv_covariance(lp, adv_seq, m)
    ref = np.cov(lp[m].numpy(), adv_seq[:, None].expand(4, 7)[m].numpy(), bias=True)[0, 1]
    assert got == pytest.approx(ref, abs=1e-12)
    with pytest.raises(ValueError, match="advantages"):
        logp_adv_covariance(lp, torch.zeros(5), m)


def test_entropy_dynamics_pairs_prediction_with_next_change() -> None:
    dyn = EntropyDynamics(window=3)
    hs = [1.0, 0.9, 0.85, 0.7, 0.72]
    covs = [0.1, 0.05, 0.15, -0.02, 0.0]
    rows = [dyn.update(h, c, 1.0) for h, c in zip(hs, covs, strict=True)]
    assert rows[0]["entropy/predicted_delta"] == pytest.approx(-0.1)
    assert math.isnan(rows[0]["entropy/actual_delta"])
    assert rows[1]["entropy/actual_delta"] == pytest.approx(-0.1)
    assert math.isnan(rows[2]["entropy/pred_corr"])  # only 2 pairs so far
    # pairs (-0.1, -0.1), (-0.05, -0.05), (-0.15, -0.15): perfectly correlated
    assert rows[3]["entropy/pred_corr"] == pytest.approx(1.0)
    # window 3 now holds (-0.05,-0.05), (-0.15,-0.15), (0.02, 0.02): still exactly 1
    assert rows[4]["entropy/pred_corr"] == pytest.approx(1.0)
    # step 5 predicted -1 * 0.0 = 0; the change into step 6 is 0.5 - 0.72 = -0.22,
    # so the window becomes (-0.15,-0.15), (0.02,0.02), (0,-0.22): no longer a line
    row = dyn.update(0.5, 0.0, 2.0)
    assert row["entropy/predicted_delta"] == 0.0
    ref = np.corrcoef([-0.15, 0.02, 0.0], [-0.15, 0.02, -0.22])[0, 1]
    assert row["entropy/pred_corr"] == pytest.approx(ref, abs=1e-9)
    assert ref < 0.9


def test_entropy_dynamics_lr_scale_and_round_trip() -> None:
    with pytest.raises(ValueError, match="lr_scale"):
        EntropyDynamics().update(1.0, 0.1, -1.0)
    with pytest.raises(ValueError, match="window"):
        EntropyDynamics(window=2)
    a = EntropyDynamics(window=5)
    for k in range(6):
        a.update(1.0 - 0.1 * k + 0.01 * (k % 2), 0.05 * k, 0.5)
    b = EntropyDynamics()
    b.load_state_dict(a.state_dict())
    for k in range(6, 9):
        assert a.update(0.4 - 0.03 * k, 0.01, 0.5) == b.update(0.4 - 0.03 * k, 0.01, 0.5)
    with pytest.raises(ValueError, match="state"):
        b.load_state_dict({"window": 5})
