"""Policy losses (ops.losses): hand-worked numbers, references, invariances (aggregation:
test_aggregate.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from entropy_rl.ops.losses import (
    AGG_MODES,
    POLICY_LOSSES,
    LossTerms,
    available_policy_losses,
    policy_loss,
    register_policy_loss,
)

F64 = torch.float64
ALL_LOSSES = ("cispo", "clip_cov", "entropic", "gpg", "gspo", "kl_cov", "ppo")
# Hyperparameters that make the batch-statistics losses actually select tokens in small tests.
ACTIVE: dict[str, dict[str, Any]] = {
    "clip_cov": {"clip_ratio": 0.25, "cov_lower": 0.0, "cov_upper": 10.0},
    "kl_cov": {"kl_cov_frac": 0.2},
    "gspo": {"eps": 0.05},
    "entropic": {"pos_weight": 1.5, "neg_weight": 0.5, "prob_threshold": 0.2},
}
SHARED_METRICS = {
    "clip/upper_frac",
    "clip/lower_frac",
    "clip/dual_frac",
    "clip/upper_old_prob",
    "ratio/mean",
    "ratio/max",
    "ratio/abs_dev",
    "kl/old_approx",
    "loss/policy",
    "_count/tokens",
    "_count/upper_clipped",
}


def _hparams(name: str, seed: int = 0) -> dict[str, Any]:
    h = dict(ACTIVE.get(name, {}))
    if name == "clip_cov":
        h["generator"] = torch.Generator().manual_seed(seed)
    return h


def _batch(b: int = 4, t: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lp = -3 * torch.rand(b, t, generator=g, dtype=F64)
    old = lp + 0.4 * torch.randn(b, t, generator=g, dtype=F64)
    adv = torch.randn(b, t, generator=g, dtype=F64)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return {"logprobs": lp, "old_logprobs": old, "advantages": adv, "mask": mask}


def _ratio_case(log_r: list[float], adv: list[float], old_p: float = 0.5) -> dict[str, Any]:
    old = torch.full((1, len(log_r)), math.log(old_p), dtype=F64)
    lp = (old + torch.tensor([log_r], dtype=F64)).requires_grad_(True)
    return {
        "logprobs": lp,
        "old_logprobs": old,
        "advantages": torch.tensor([adv], dtype=F64),
        "mask": torch.ones(1, len(log_r), dtype=torch.bool),
    }


# ---- hand-worked losses ------------------------------------------------------------------------


def test_ppo_hand_worked_clip_higher() -> None:
    # token 0: r = 1.5, A = 1, eps_high 0.28: -min(1.5*1, 1.28*1) = -1.28, clipped -> grad 0
    # token 1: r = 0.5, A = -1, eps_low 0.2: -min(-0.5, -0.8) = 0.8, clipped -> grad 0
    # token 2: r = 1.1, A = 1: -min(1.1, 1.1) = -1.1, grad d(-r*A)/dlogp = -r*A = -1.1
    # token-mean = (-1.28 + 0.8 - 1.1) / 3 = -0.526667; each gradient is divided by 3
    case = _ratio_case([math.log(1.5), math.log(0.5), math.log(1.1)], [1.0, -1.0, 1.0])
    loss, m = policy_loss("ppo", **case, eps_low=0.2, eps_high=0.28)
    assert loss.item() == pytest.approx((-1.28 + 0.8 - 1.1) / 3)
    loss.backward()
    torch.testing.assert_close(
        case["logprobs"].grad, torch.tensor([[0.0, 0.0, -1.1 / 3]], dtype=F64)
    )
    assert m["clip/upper_frac"] == pytest.approx(1 / 3)
    assert m["clip/lower_frac"] == pytest.approx(1 / 3)
    assert m["loss/policy"] == pytest.approx(loss.item())


def test_ppo_dual_clip() -> None:
    # eps 0.2, c = 3:
    # token 0: r = 4, A = -1: ppo term max(4, 1.2) = 4, capped at -c*A = 3 -> grad 0, dual
    # token 1: r = 2, A = -1: max(2, 1.2) = 2 < 3 -> not capped, grad -A*r = 2
    # token 2: r = 4, A = +1: -min(4, 1.2) = -1.2, upper clip (the dual clip is for A < 0)
    # mean = (3 + 2 - 1.2) / 3 = 1.266667; without the dual clip (4 + 2 - 1.2) / 3 = 1.6
    log_r, adv = [math.log(4.0), math.log(2.0), math.log(4.0)], [-1.0, -1.0, 1.0]
    case = _ratio_case(log_r, adv)
    loss, m = policy_loss("ppo", **case, dual_clip_c=3.0)
    assert loss.item() == pytest.approx(3.8 / 3)
    loss.backward()
    torch.testing.assert_close(case["logprobs"].grad, torch.tensor([[0.0, 2 / 3, 0.0]], dtype=F64))
    assert m["clip/dual_frac"] == pytest.approx(1 / 3)
    assert m["clip/upper_frac"] == pytest.approx(1 / 3)
    assert m["clip/lower_frac"] == 0.0
    loss, m = policy_loss("ppo", **_ratio_case(log_r, adv))
    assert loss.item() == pytest.approx(1.6)
    assert m["clip/dual_frac"] == 0.0


def test_clip_metrics_on_constructed_ratios() -> None:
    # r = [1.5, 1.5, 0.5, 0.5, 1.0], A = [1, -1, -1, 1, 1], eps 0.2, pi_old = 0.1 everywhere
    # upper: token 0 only (r > 1.2 and A > 0) -> 1/5; lower: token 2 only -> 1/5
    # upper_old_prob = 0.1; ratio/mean = 5/5 = 1.0; max 1.5; abs_dev = 4 * 0.5 / 5 = 0.4
    # kl/old_approx = mean(r - 1 - log r)
    #   = (2 * (0.5 - 0.405465) + 2 * (-0.5 + 0.693147) + 0) / 5 = 0.575364 / 5 = 0.115073
    log_r = [math.log(1.5), math.log(1.5), math.log(0.5), math.log(0.5), 0.0]
    _, m = policy_loss("ppo", **_ratio_case(log_r, [1.0, -1.0, -1.0, 1.0, 1.0], old_p=0.1))
    kl = (2 * (0.5 - math.log(1.5)) + 2 * (-0.5 + math.log(2.0))) / 5
    expected = {
        "clip/upper_frac": 0.2,
        "clip/lower_frac": 0.2,
        "clip/dual_frac": 0.0,
        "clip/upper_old_prob": 0.1,
        "ratio/mean": 1.0,
        "ratio/max": 1.5,
        "ratio/abs_dev": 0.4,
        "kl/old_approx": kl,
        "_count/tokens": 5.0,
        "_count/upper_clipped": 1.0,
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key
    assert kl == pytest.approx(0.115073, abs=1e-6)


def test_cispo_hand_worked_keeps_gradient_of_clipped_tokens() -> None:
    # log pi = -1 for both tokens.
    # token 0: r = 1.5, A = 1, eps_high 0.28 -> weight sg(1.28): L = -1.28 * 1 * (-1) = 1.28,
    #          dL/dlogpi = -1.28 (PPO would give 0 here)
    # token 1: r = 0.5, A = -1, default eps_low = 1 (floor 0) -> weight 0.5:
    #          L = -0.5 * (-1) * (-1) = -0.5, dL/dlogpi = 0.5
    # token-mean = (1.28 - 0.5) / 2 = 0.39
    lp = torch.tensor([[-1.0, -1.0]], dtype=F64, requires_grad=True)
    old = lp.detach() - torch.tensor([[math.log(1.5), math.log(0.5)]], dtype=F64)
    adv = torch.tensor([1.0, -1.0], dtype=F64)[None]
    loss, m = policy_loss(
        "cispo", logprobs=lp, old_logprobs=old, advantages=adv, mask=torch.ones(1, 2)
    )
    assert loss.item() == pytest.approx(0.39)
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-1.28 / 2, 0.5 / 2]], dtype=F64))
    assert m["clip/upper_frac"] == pytest.approx(0.5)  # token 0; no lower bound -> 0
    assert m["clip/lower_frac"] == 0.0


def test_gspo_sequence_ratio_hand_value() -> None:
    # row: log r = [0.1, -0.3] (third token padding) -> mean -0.1 -> s = exp(-0.1) = 0.904837
    # A = 1: -min(0.904837, clip(0.904837, 0.9997, 1.0004) = 0.9997) = -0.904837 per token
    # A = -1: -min(-0.904837, -0.9997) = 0.9997 per token, lower clip on both tokens
    for adv, expected, lower in ((1.0, -math.exp(-0.1), 0.0), (-1.0, 1 - 3e-4, 1.0)):
        case = _ratio_case([0.1, -0.3, 5.0], [adv, adv, adv])
        case["mask"] = torch.tensor([[1, 1, 0]])
        case["advantages"] = torch.tensor([adv], dtype=F64)
        loss, m = policy_loss("gspo", **case)
        assert loss.item() == pytest.approx(expected, abs=1e-12)
        assert m["clip/lower_frac"] == lower
    assert math.exp(-0.1) == pytest.approx(0.904837, abs=1e-6)


def test_gpg_hand_value() -> None:
    # L = -A log pi: tokens (A 2, log pi -0.5) -> 1.0 ; (A -1, log pi -2) -> -2.0; mean -0.5
    lp = torch.tensor([[-0.5, -2.0]], dtype=F64, requires_grad=True)
    loss, m = policy_loss(
        "gpg",
        logprobs=lp,
        old_logprobs=lp.detach(),
        advantages=torch.tensor([[2.0, -1.0]], dtype=F64),
        mask=torch.ones(1, 2),
    )
    assert loss.item() == pytest.approx(-0.5)
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-1.0, 0.5]], dtype=F64))
    assert m["clip/upper_frac"] == m["clip/lower_frac"] == m["clip/dual_frac"] == 0.0


def test_kl_cov_hand_worked() -> None:
    # log pi = [-1, -2, -3, -4] (mean -2.5), A = [2, 0, 0, -1] (mean 0.25)
    # cov = [1.5*1.75, 0.5*-0.25, -0.5*-0.25, -1.5*-1.25] = [2.625, -0.125, 0.125, 1.875]
    # frac 0.25 -> k = round(1) = 1 token: token 0. r = e^0.1 = 1.105171 everywhere.
    # L = -A r + [0.1, 0, 0, 0] = [-2.210342 + 0.1, 0, 0, 1.105171]; mean = -1.005171/4
    lp = torch.tensor([[-1.0, -2.0, -3.0, -4.0]], dtype=F64, requires_grad=True)
    kwargs = {
        "logprobs": lp,
        "old_logprobs": lp.detach() - 0.1,
        "advantages": torch.tensor([[2.0, 0.0, 0.0, -1.0]], dtype=F64),
        "mask": torch.ones(1, 4),
    }
    loss, m = policy_loss("kl_cov", **kwargs, kl_cov_frac=0.25)
    r = math.exp(0.1)
    assert loss.item() == pytest.approx((-2 * r + 0.1 + r) / 4, abs=1e-12)
    assert m["clip/kl_cov_frac"] == 0.25
    loss.backward()
    # grad: d(-A r)/dlogpi = -A r; token 0 also + coef * sign(log r) = +1
    torch.testing.assert_close(
        lp.grad, torch.tensor([[(-2 * r + 1) / 4, 0.0, 0.0, r / 4]], dtype=F64)
    )


# ---- references ----------------------------------------------------------------------------------


def _textbook_ppo(lp, old, adv, mask, eps_low, eps_high):  # type: ignore[no-untyped-def]
    # Written independently: the PPO objective E[min(r A, clip(r) A)], masked token mean.
    ratio = torch.exp(lp - old)
    objective = torch.min(ratio * adv, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv)
    return -(objective * mask).sum() / mask.sum()


@pytest.mark.parametrize(("eps_low", "eps_high"), [(0.2, 0.2), (0.2, 0.28), (0.1, 0.5)])
def test_ppo_equals_textbook(eps_low: float, eps_high: float) -> None:
    b = _batch(6, 8, seed=1)
    lp1 = b["logprobs"].clone().requires_grad_(True)
    lp2 = b["logprobs"].clone().requires_grad_(True)
    kw = {"old_logprobs": b["old_logprobs"], "advantages": b["advantages"], "mask": b["mask"]}
    loss, m = policy_loss("ppo", logprobs=lp1, **kw, eps_low=eps_low, eps_high=eps_high)
    ref = _textbook_ppo(lp2, *kw.values(), eps_low, eps_high)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-14)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(lp1.grad, lp2.grad, rtol=1e-12, atol=1e-14)
    assert 0 < m["clip/upper_frac"] + m["clip/lower_frac"] < 1  # the clip acts on some tokens
    if eps_low == eps_high:
        lp3 = b["logprobs"].clone().requires_grad_(True)
        loss_eps, _ = policy_loss("ppo", logprobs=lp3, **kw, eps=eps_low)
        assert torch.equal(loss_eps, loss)


def test_gspo_matches_sequence_level_objective() -> None:
    # GSPO-token with [B] advantages + seq-mean-token-mean == sequence-level GSPO, value & grad.
    b = _batch(5, 7, seed=2)
    adv = torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(9))
    eps_low, eps_high = 0.05, 0.08
    lp1 = b["logprobs"].clone().requires_grad_(True)
    lp2 = b["logprobs"].clone().requires_grad_(True)
    loss, _ = policy_loss(
        "gspo",
        logprobs=lp1,
        old_logprobs=b["old_logprobs"],
        advantages=adv,
        mask=b["mask"],
        agg="seq-mean-token-mean",
        eps_low=eps_low,
        eps_high=eps_high,
    )
    w = b["mask"].double()
    s = torch.exp(((lp2 - b["old_logprobs"]) * w).sum(1) / w.sum(1))  # (B,), with gradient
    clipped = (s < 1 - eps_low) | (s > 1 + eps_high)
    assert bool(clipped.any()) and not bool(clipped.all())
    ref = -torch.min(s * adv, s.clamp(1 - eps_low, 1 + eps_high) * adv).mean()
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-14)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(lp1.grad, lp2.grad, rtol=1e-10, atol=1e-14)


def _token_cov(lp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    v = mask.bool()
    return (lp - lp[v].mean()) * (adv - adv[v].mean())


def test_clip_cov_detaches_only_in_bounds_unclipped_tokens() -> None:
    b = _batch(4, 50, seed=3)
    b["advantages"] = 2 * b["advantages"]
    lower, upper, eps = 0.5, 3.0, 0.2
    cov = _token_cov(b["logprobs"], b["advantages"], b["mask"])
    ratio = (b["logprobs"] - b["old_logprobs"]).exp()
    valid = b["mask"]
    clipped = ((ratio > 1 + eps) & (b["advantages"] > 0)) | (
        (ratio < 1 - eps) & (b["advantages"] < 0)
    )
    in_bounds = valid & (cov > lower) & (cov < upper)
    candidates = in_bounds & ~clipped
    assert int((in_bounds & clipped).sum()) > 0  # some in-bounds tokens are already clipped
    n_valid, n_cand = int(valid.sum()), int(candidates.sum())

    def grads(name: str, **h: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        lp = b["logprobs"].clone().requires_grad_(True)
        kw = {k: v for k, v in b.items() if k != "logprobs"}
        loss, m = policy_loss(name, logprobs=lp, **kw, eps=eps, **h)
        loss.backward()
        assert lp.grad is not None
        return loss.detach(), lp.grad, m

    ppo_loss, ppo_grad, _ = grads("ppo")
    for clip_ratio, seed in ((0.05, 0), (0.05, 1), (1.0, 0)):
        g = torch.Generator().manual_seed(seed)
        loss, grad, m = grads(
            "clip_cov", clip_ratio=clip_ratio, cov_lower=lower, cov_upper=upper, generator=g
        )
        detached = (grad == 0) & (ppo_grad != 0)
        k = min(math.floor(clip_ratio * n_valid + 0.5), n_cand)
        assert int(detached.sum()) == k > 0
        assert bool((detached <= candidates).all())  # only in-bounds, not-clipped tokens
        torch.testing.assert_close(grad[~detached], ppo_grad[~detached])
        torch.testing.assert_close(loss, ppo_loss)  # detaching keeps the value
        assert m["clip/cov_frac"] == pytest.approx(k / n_valid)
        if clip_ratio == 1.0:
            assert torch.equal(detached, candidates)  # every candidate
    # same seed -> same tokens
    g1, g2 = (torch.Generator().manual_seed(7) for _ in range(2))
    h = {"clip_ratio": 0.05, "cov_lower": lower, "cov_upper": upper}
    assert torch.equal(
        grads("clip_cov", **h, generator=g1)[1], grads("clip_cov", **h, generator=g2)[1]
    )


def test_kl_cov_penalises_top_covariance_tokens_only() -> None:
    b = _batch(4, 25, seed=4)
    frac, coef = 0.1, 0.7
    valid = b["mask"]
    cov = _token_cov(b["logprobs"], b["advantages"], valid).masked_fill(~valid, -math.inf)
    k = math.floor(frac * int(valid.sum()) + 0.5)
    top = torch.zeros(cov.numel(), dtype=torch.bool)
    top[cov.flatten().topk(k).indices] = True
    top = top.view_as(cov)
    lp1 = b["logprobs"].clone().requires_grad_(True)
    lp2 = b["logprobs"].clone().requires_grad_(True)
    kw = {k_: v for k_, v in b.items() if k_ != "logprobs"}
    loss, m = policy_loss("kl_cov", logprobs=lp1, **kw, kl_cov_frac=frac, kl_cov_coef=coef)
    log_r = lp2 - b["old_logprobs"]
    per_tok = -b["advantages"] * log_r.exp() + coef * log_r.abs() * top
    ref = (per_tok * valid).sum() / valid.sum()
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-14)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(lp1.grad, lp2.grad, rtol=1e-12, atol=1e-14)
    assert m["clip/kl_cov_frac"] == pytest.approx(k / int(valid.sum()))
    assert m["clip/upper_frac"] == m["clip/lower_frac"] == 0.0  # no ratio clip


# ---- invariances ---------------------------------------------------------------------------------


def _pad(b: dict[str, torch.Tensor], rows: int, cols: int) -> dict[str, torch.Tensor]:
    # Padding full of garbage: NaN / inf must never reach the loss, metrics or gradients.
    out = {}
    for key, fill in (("logprobs", math.nan), ("old_logprobs", math.inf), ("advantages", math.nan)):
        x = torch.full((b[key].shape[0] + rows, b[key].shape[1] + cols), fill, dtype=F64)
        x[: b[key].shape[0], : b[key].shape[1]] = b[key]
        out[key] = x
    mask = torch.zeros(out["logprobs"].shape, dtype=torch.bool)
    mask[: b["mask"].shape[0], : b["mask"].shape[1]] = b["mask"]
    out["mask"] = mask
    return out


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_padding_invariance_every_loss_and_agg(name: str) -> None:
    b = _batch(3, 5, seed=5)
    padded = _pad(b, rows=2, cols=3)
    for agg in AGG_MODES:
        results = []
        for inputs in (b, padded):
            lp = inputs["logprobs"].clone().requires_grad_(True)
            rest = {k: v for k, v in inputs.items() if k != "logprobs"}
            loss, m = policy_loss(name, logprobs=lp, **rest, agg=agg, max_len=16, **_hparams(name))
            loss.backward()
            assert lp.grad is not None
            results.append((loss.detach(), lp.grad, m))
        (l0, g0, m0), (l1, g1, m1) = results
        torch.testing.assert_close(l1, l0, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(g1[:3, :5], g0, rtol=1e-12, atol=1e-14)
        assert torch.count_nonzero(g1[3:]) == 0 and torch.count_nonzero(g1[:, 5:]) == 0
        assert m1 == pytest.approx(m0, rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("name", ["ppo", "cispo", "gspo", "gpg"])
@pytest.mark.parametrize("agg", AGG_MODES)
def test_micro_batch_accumulation_equals_whole(name: str, agg: str) -> None:
    # Two unequal micro-batches with the global counts: summed loss and grads == whole batch.
    # (clip_cov / kl_cov use batch statistics; call them on the whole mini-batch.)
    b = _batch(5, 6, seed=6)
    counts = {"num_tokens": float(b["mask"].sum()), "num_seqs": 5.0, "max_len": 6}

    def run(rows: slice, **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
        lp = b["logprobs"][rows].clone().requires_grad_(True)
        rest = {k: v[rows] for k, v in b.items() if k != "logprobs"}
        loss, _ = policy_loss(name, logprobs=lp, **rest, agg=agg, **kw, **_hparams(name))
        loss.backward()
        assert lp.grad is not None
        return loss.detach(), lp.grad

    whole, g_whole = run(slice(None), **counts)
    (l_a, g_a), (l_b, g_b) = run(slice(0, 2), **counts), run(slice(2, 5), **counts)
    torch.testing.assert_close(l_a + l_b, whole, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.cat([g_a, g_b]), g_whole, rtol=1e-12, atol=1e-14)
    if agg == "token-mean":  # without the global count the halves are reweighted
        (l_a, _), (l_b, _) = run(slice(0, 2)), run(slice(2, 5))
        assert not torch.allclose(0.5 * (l_a + l_b), whole)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_fully_masked_row_and_batch_are_finite(name: str) -> None:
    b = _batch(3, 4, seed=7)
    b["mask"][1] = False
    for mask in (b["mask"], torch.zeros_like(b["mask"])):
        lp = b["logprobs"].clone().requires_grad_(True)
        rest = {"old_logprobs": b["old_logprobs"], "advantages": b["advantages"], "mask": mask}
        loss, m = policy_loss(name, logprobs=lp, **rest, **_hparams(name))
        loss.backward()
        assert lp.grad is not None and bool(torch.isfinite(lp.grad).all())
        assert torch.count_nonzero(lp.grad[1]) == 0
        assert math.isfinite(loss.item()) and all(math.isfinite(v) for v in m.values())
    assert loss.item() == 0.0 and m["_count/tokens"] == 0.0 and m["ratio/max"] == 0.0


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 3),
    t=st.integers(1, 5),
    data=st.data(),
)
def test_every_loss_finite_for_finite_inputs(b: int, t: int, data: st.DataObject) -> None:
    def floats(lo: float, hi: float) -> list[list[float]]:
        row = st.lists(st.floats(lo, hi, width=32), min_size=t, max_size=t)
        return data.draw(st.lists(row, min_size=b, max_size=b))

    lp = torch.tensor(floats(-20.0, 0.0))
    old = torch.tensor(floats(-20.0, 0.0))
    adv = torch.tensor(floats(-10.0, 10.0))
    mask = torch.tensor(
        data.draw(st.lists(st.lists(st.booleans(), min_size=t, max_size=t), min_size=b, max_size=b))
    )
    for name in ALL_LOSSES:
        for agg in AGG_MODES:
            x = lp.clone().requires_grad_(True)
            loss, m = policy_loss(
                name,
                logprobs=x,
                old_logprobs=old,
                advantages=adv,
                mask=mask,
                agg=agg,
                max_len=t,
                **_hparams(name),
            )
            loss.backward()
            assert x.grad is not None
            assert math.isfinite(loss.item()), (name, agg)
            assert bool(torch.isfinite(x.grad).all()), (name, agg)
            assert all(math.isfinite(v) for v in m.values()), (name, agg, m)


def test_low_precision_inputs_are_upcast() -> None:
    b = _batch(2, 3, seed=8)
    lp = b["logprobs"].to(torch.bfloat16).requires_grad_(True)
    loss, _ = policy_loss(
        "ppo",
        logprobs=lp,
        old_logprobs=b["old_logprobs"].to(torch.bfloat16),
        advantages=b["advantages"].to(torch.bfloat16),
        mask=b["mask"],
    )
    assert loss.dtype == torch.float32
    loss.backward()
    assert lp.grad is not None and lp.grad.dtype == torch.bfloat16


# ---- registry and errors -------------------------------------------------------------------------


def test_registry_and_uniform_metric_stream() -> None:
    assert available_policy_losses() == ALL_LOSSES
    assert set(POLICY_LOSSES) == set(ALL_LOSSES)
    extras = {
        "clip_cov": {"clip/cov_frac"},
        "kl_cov": {"clip/kl_cov_frac"},
        "entropic": {"prob/confident_frac"},
    }
    for name in ALL_LOSSES:
        _, m = policy_loss(name, **_batch(), **_hparams(name))
        assert set(m) == SHARED_METRICS | extras.get(name, set()), name
        assert all(isinstance(v, float) for v in m.values())


def test_register_errors() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_policy_loss("ppo")(POLICY_LOSSES["ppo"])

    def bad(logprobs, old_logprobs, advantages, valid, eps):  # type: ignore[no-untyped-def]
        return LossTerms(logprobs)

    with pytest.raises(ValueError, match="must have signature"):
        register_policy_loss("bad_loss")(bad)
    assert "bad_loss" not in POLICY_LOSSES


BAD_HPARAMS = [
    ("ppo", {"eps": -0.1}, r"eps_low must be in \[0, 1\)"),
    ("ppo", {"eps_low": 1.0}, r"eps_low must be in \[0, 1\)"),
    ("ppo", {"eps_high": -0.01}, r"eps_high must be in \[0, inf\)"),
    ("ppo", {"eps_high": math.inf}, r"eps_high must be in \[0, inf\)"),
    ("ppo", {"eps": 0.2, "eps_high": 0.28}, "either eps"),
    ("ppo", {"dual_clip_c": 1.0}, "dual_clip_c must be > 1"),
    ("gspo", {"eps_low": 1.0}, r"eps_low must be in \[0, 1\)"),
    ("cispo", {"eps_low": 1.5}, r"eps_low must be in \[0, 1\]"),
    ("clip_cov", {"clip_ratio": 0.0}, r"clip_ratio is a fraction and must be in \(0, 1\]"),
    ("clip_cov", {"clip_ratio": 1.5}, r"clip_ratio is a fraction"),
    ("clip_cov", {"cov_lower": 5.0, "cov_upper": 1.0}, "cov_lower must be a number below"),
    ("kl_cov", {"kl_cov_frac": 0.0}, r"kl_cov_frac is a fraction"),
    ("kl_cov", {"kl_cov_frac": 2.0}, r"kl_cov_frac is a fraction"),
    ("kl_cov", {"kl_cov_coef": -1.0}, "kl_cov_coef must be a finite number >= 0"),
]


@pytest.mark.parametrize(("name", "hparams", "message"), BAD_HPARAMS)
def test_bad_hyperparameter_values(name: str, hparams: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        policy_loss(name, **_batch(), **hparams)


def test_bad_names_and_shapes() -> None:
    b = _batch(2, 3)
    with pytest.raises(ValueError, match=r"unknown policy loss 'grpo'; available: cispo, clip_cov"):
        policy_loss("grpo", **b)
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) eps for policy loss 'gpg'"):
        policy_loss("gpg", **b, eps=0.2)
    with pytest.raises(
        ValueError, match=r"clip_eps .*allowed: eps, eps_low, eps_high, dual_clip_c"
    ):
        policy_loss("ppo", **b, clip_eps=0.2)
    with pytest.raises(ValueError, match="unknown aggregation mode 'sum'"):
        policy_loss("ppo", **b, agg="sum")
    with pytest.raises(ValueError, match="needs max_len"):
        policy_loss("ppo", **b, agg="seq-mean-token-sum-norm")
    bad = {
        "logprobs": b["logprobs"][0],
        "old_logprobs": b["old_logprobs"][:1],
        "mask": b["mask"][:, :2],
        "advantages": b["advantages"][:, :2],
    }
    messages = {
        "logprobs": "logprobs must be",
        "old_logprobs": "old_logprobs must have the shape",
        "mask": "mask must have the shape",
        "advantages": "advantages must be",
    }
    for key, value in bad.items():
        with pytest.raises(ValueError, match=messages[key]):
            policy_loss("ppo", **{**b, key: value})
