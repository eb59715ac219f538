"""Rows without a gradient left out of the update (UpdateSettings.skip_zero_advantage): the same
optimizer step as with every row, less work (the trainer's default: algo.skip_zero_advantage)."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest
import torch

from entropy_rl.ops.aggregate import AGG_MODES
from entropy_rl.tasks.model import build_tiny_model
from entropy_rl.train.batch import RolloutBatch, build_batch
from entropy_rl.train.update import (
    ADVANTAGE_WEIGHTED_LOSSES,
    UpdateSettings,
    ppo_update,
    record_old_logprobs,
    rows_without_gradient,
)


def _batch(advantages: list[float], seed: int = 0, sampler: bool = False) -> RolloutBatch:
    """One row per advantage: prompts of 3-5 and completions of 1-8 tokens (vocab 19)."""
    g = torch.Generator().manual_seed(seed)

    def toks(n: int) -> list[int]:
        return torch.randint(3, 19, (n,), generator=g).tolist()

    rows = len(advantages)
    prompts = [toks(int(torch.randint(3, 6, (1,), generator=g))) for _ in range(rows)]
    comps = [toks(int(torch.randint(1, 9, (1,), generator=g))) for _ in range(rows)]
    lps = [[-2.9 + 0.3 * float(torch.randn(1, generator=g)) for _ in c] for c in comps]
    adv = torch.tensor(advantages)
    return build_batch(
        prompts, comps, rewards=adv.clone(), advantages=adv, pad_token_id=0,
        sampler_logprobs=lps if sampler else None,
    )  # fmt: skip


def _settings(**kw: Any) -> UpdateSettings:
    base = UpdateSettings(
        loss="ppo", loss_kwargs={"eps_low": 0.2, "eps_high": 0.28}, agg="token-mean", epochs=2,
        mini_batches=2, micro_batch_size=3, temperature=0.8, grad_clip=1.0, entropy_coef=0.0,
        kl_coef=0.0, kl_kind="k3", kl_in_loss=True, logits_mode="full", chunk_size=7, max_len=8,
        skip_zero_advantage=True,
    )  # fmt: skip
    return replace(base, **kw)


def test_rows_without_gradient_by_hand() -> None:
    b = _batch([0.0, 1.5, 0.0, -0.5])
    silent = rows_without_gradient(b, _settings())
    assert silent is not None and silent.tolist() == [True, False, True, False]
    # token advantages (entropy-shaped): a row is silent only when 0 at every response token
    b.token_advantages = torch.zeros_like(b.mask)
    b.token_advantages[1] = 0.3 * b.mask[1]
    silent = rows_without_gradient(b, _settings())
    assert silent is not None and silent.tolist() == [True, False, True, True]


@pytest.mark.parametrize(
    "change",
    [
        {"skip_zero_advantage": False},
        {"entropy_coef": 0.01},  # the bonus has a gradient at A = 0
        {"kl_coef": 0.1, "kl_in_loss": True},  # so has the KL penalty
        {"loss": "clip_cov"},  # chooses tokens by a covariance over the micro-batch
        {"loss": "kl_cov"},
        {"sharded": True},  # FSDP ranks run the same passes
    ],
)
def test_no_row_is_left_out_where_its_gradient_may_not_be_zero(change: dict[str, Any]) -> None:
    assert rows_without_gradient(_batch([0.0, 1.0]), _settings(**change)) is None


def test_a_kl_penalty_in_the_reward_leaves_rows_in() -> None:
    # kl_in=reward folds the KL into the advantages (trainer), which are then not 0
    s = _settings(kl_coef=0.1, kl_in_loss=False)
    silent = rows_without_gradient(_batch([0.0, 1.0, 0.0]), s)
    assert silent is not None and silent.tolist() == [True, False, True]


def _forwarded_rows(model: torch.nn.Module) -> list[int]:
    rows: list[int] = []
    model.register_forward_hook(lambda _m, args, kwargs, _o: rows.append(
        int((args[0] if args else kwargs["input_ids"]).shape[0])), with_kwargs=True)  # fmt: skip
    return rows


@pytest.mark.parametrize("loss", ["ppo", "gspo", "cispo"])
def test_the_same_steps_with_rows_left_out(loss: str) -> None:
    """Two updates of 2 epochs x 2 mini-batches with AdamW and weight decay: the first with 5 of
    10 rows silent, the second with every row silent (the optimizer still steps: Adam's momentum
    and the decay move the weights). Weights, the loss and the gradient norm equal the
    every-row update's (float64: only the order of additions differs, which Adam's
    normalisation would magnify in float32); fewer rows are run; the left-out share is
    reported."""
    kw = {} if loss == "ppo" else {"loss_kwargs": {}}
    base = build_tiny_model(19, layers=2, hidden=32, heads=2, kv_heads=1, mlp=64, seed=0).double()
    adv = [0.0, 1.2, 0.0, -0.7, 0.0, 0.4, 0.0, -1.1, 0.0, 0.9]
    results = []
    for skip in (False, True):
        model = copy.deepcopy(base)
        rows = _forwarded_rows(model)
        opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
        s = _settings(skip_zero_advantage=skip, loss=loss, **kw)
        out = []
        for advantages in (adv, [0.0] * 10):
            b = _batch(advantages, seed=4)
            b.old_logprobs = record_old_logprobs(model, None, b, s)["logprobs"]
            rows.clear()
            metrics, bad = ppo_update(model, opt, b, s, generator=torch.Generator().manual_seed(1))
            assert bad == 0 and metrics["update/optimizer_steps"] == 4
            out.append((metrics, sum(rows)))
        results.append((model, out))
    (ref_model, ref_out), (model, out) = results
    for p, q, b0 in zip(model.parameters(), ref_model.parameters(), base.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-10)
        assert float((q - b0).detach().abs().max()) > 0.05  # both updates moved the weights
    for (m_ref, n_ref), (m, n), silent in zip(ref_out, out, (5, 10), strict=True):
        assert n_ref == 2 * 10  # 2 epochs, every row
        left_out = 2 * (silent - (silent == 10) * 2)  # all silent: one row per mini-batch runs
        assert n == 20 - left_out
        assert m["update/zero_adv_rows_frac"] == pytest.approx(left_out / 20, abs=1e-12)
        assert "update/zero_adv_rows_frac" not in m_ref
        # the head's log-probs are float32 (policy_token_stats): the loss rounds at 1e-7
        assert m["loss/policy"] == pytest.approx(m_ref["loss/policy"], rel=1e-6, abs=1e-9)
        assert m["grad/norm"] == pytest.approx(m_ref["grad/norm"], rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("loss", ADVANTAGE_WEIGHTED_LOSSES)
def test_every_loss_and_aggregation_takes_the_same_step(loss: str, agg: str) -> None:
    """One update (2 epochs x 2 mini-batches, SGD, float64), 4 of 8 rows silent, for every
    loss that may leave rows out and every aggregation (the seq-mean modes read the sequence
    count, which must still count the left-out rows). The clip fractions stay fractions of
    every response token (the left-out ones count as unclipped), except cispo's."""
    kw: dict[str, Any] = {"ppo": {"eps_low": 0.2, "eps_high": 0.28, "dual_clip_c": 3.0},
                          "entropic": {"pos_weight": 1.3, "neg_weight": 0.7,
                                       "prob_threshold": 0.0}}.get(loss, {})  # fmt: skip
    base = build_tiny_model(19, layers=1, hidden=16, heads=2, kv_heads=1, mlp=32, seed=1).double()
    adv = [0.0, 1.3, -0.6, 0.0, 0.0, 0.8, -1.4, 0.0]
    out = []
    for skip in (False, True):
        model = copy.deepcopy(base)
        s = _settings(skip_zero_advantage=skip, loss=loss, loss_kwargs=kw, agg=agg)
        b = _batch(adv, seed=8)
        b.old_logprobs = record_old_logprobs(model, None, b, s)["logprobs"]
        opt = torch.optim.SGD(model.parameters(), lr=2.0)
        metrics, bad = ppo_update(model, opt, b, s, generator=torch.Generator().manual_seed(2))
        assert bad == 0
        out.append((model, metrics))
    (ref_model, ref_m), (model, m) = out
    # gspo's sequence ratio sums a row's float32 log-probs over its micro-batch's padded
    # width, which the left-out rows change: float32 summation order, amplified by lr 2
    atol = 1e-7 if loss == "gspo" else 1e-10
    moved = 0.0
    for p, q, b0 in zip(model.parameters(), ref_model.parameters(), base.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=atol)
        moved = max(moved, float((q - b0).detach().abs().max()))
    assert moved > 1e-2
    assert m["update/zero_adv_rows_frac"] == pytest.approx(0.5, abs=1e-12)
    shared = ("clip/upper_frac", "clip/lower_frac") if loss != "cispo" else ()
    for k in ("grad/norm", "loss/policy", *shared):  # float32 sums over other micro-batches
        assert m[k] == pytest.approx(ref_m[k], rel=1e-5, abs=1e-9), k
    assert sum(ref_m[k] for k in ("clip/upper_frac", "clip/lower_frac")) > 0 or loss == "gpg"


def test_pi_old_from_the_update_covers_the_rows_left_out() -> None:
    """pi_old from the update's forward (1 x 1): the silent rows still get their pi_old
    statistics (a no-grad forward) and their share of the TIS metrics; the step is the same."""
    base = build_tiny_model(19, layers=2, hidden=32, heads=2, kv_heads=1, mlp=64, seed=0)
    adv = [0.0, 1.2, 0.0, 0.0, -0.7, 0.0, 0.5]
    results = []
    for skip in (False, True):
        model = copy.deepcopy(base)
        s = _settings(skip_zero_advantage=skip, epochs=1, mini_batches=1, old_in_update=True,
                      tis_cap=2.0)  # fmt: skip
        out: dict[str, torch.Tensor] = {}
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        b = _batch(adv, seed=6, sampler=True)
        metrics, bad = ppo_update(model, opt, b, s, generator=torch.Generator(), pi_old_out=out)
        assert bad == 0
        results.append((model, out, metrics, b.targets != -1))
    (ref_model, ref_out, ref_m, seen), (model, out, m, _) = results
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=2e-6)
    for k in ("logprobs", "entropy", "top1"):
        torch.testing.assert_close(out[k][seen], ref_out[k][seen], rtol=0, atol=2e-6)
    assert m["update/zero_adv_rows_frac"] == pytest.approx(4 / 7, abs=1e-12)
    for k in ("mismatch/k3", "tis/weight_mean", "tis/capped_frac"):
        assert m[k] == pytest.approx(ref_m[k], rel=1e-5, abs=1e-7), k
