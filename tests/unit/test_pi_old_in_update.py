"""pi_old from the update's own forward (update.pi_old_from_update): at one epoch of one
mini-batch the update takes the same step, reports the same pi_old statistics and the same TIS
weights as with a separate no-grad pi_old forward (the trainer's side:
tests/integration/test_kv_engine_train.py)."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest
import torch

from entropy_rl.tasks.model import build_tiny_model
from entropy_rl.train.batch import RolloutBatch, build_batch
from entropy_rl.train.token_weights import importance_weights, tis_weights
from entropy_rl.train.update import (
    UpdateSettings,
    pi_old_from_update,
    ppo_update,
    record_old_logprobs,
)


def _batch(seed: int = 0, rows: int = 10) -> RolloutBatch:
    """Rows with prompts of 3-5 and completions of 1-8 tokens (vocab 19), GRPO-like advantages,
    sampler log-probs near (not at) any policy's, as a low-precision or vLLM engine reports."""
    g = torch.Generator().manual_seed(seed)

    def toks(n: int) -> list[int]:
        return torch.randint(3, 19, (n,), generator=g).tolist()

    prompts = [toks(int(torch.randint(3, 6, (1,), generator=g))) for _ in range(rows)]
    comps = [toks(int(torch.randint(1, 9, (1,), generator=g))) for _ in range(rows)]
    sampler = [[-2.9 + 0.3 * float(torch.randn(1, generator=g)) for _ in c] for c in comps]
    adv = torch.randn(rows, generator=g)
    return build_batch(
        prompts, comps, rewards=adv.clone(), advantages=adv, pad_token_id=0,
        sampler_logprobs=sampler,
    )  # fmt: skip


def _settings(micro: int = 4, mode: str = "full", **kw: Any) -> UpdateSettings:
    base = UpdateSettings(
        loss="ppo", loss_kwargs={"eps_low": 0.2, "eps_high": 0.28}, agg="token-mean", epochs=1,
        mini_batches=1, micro_batch_size=micro, temperature=0.8, grad_clip=1.0,
        entropy_coef=0.01, kl_coef=0.0, kl_kind="k3", kl_in_loss=True, logits_mode=mode,
        chunk_size=7, max_len=8,
    )  # fmt: skip
    return replace(base, **kw)


def test_pi_old_from_update_only_at_one_epoch_of_one_mini_batch() -> None:
    s = _settings()
    assert pi_old_from_update(s, exact=False, needs_old_first=False)
    assert not pi_old_from_update(s, exact=True, needs_old_first=False)  # nothing to save
    assert not pi_old_from_update(s, exact=False, needs_old_first=True)  # shaping, reward KL
    assert not pi_old_from_update(replace(s, epochs=2), exact=False, needs_old_first=False)
    assert not pi_old_from_update(replace(s, mini_batches=2), exact=False, needs_old_first=False)


def test_ppo_update_refuses_pi_old_from_the_update_off_policy() -> None:
    model = build_tiny_model(19, layers=1, hidden=16, heads=2, kv_heads=1, mlp=32, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    s = _settings(old_in_update=True, epochs=2)
    with pytest.raises(AssertionError, match="1 x 1"):
        ppo_update(model, opt, _batch(), s, generator=torch.Generator().manual_seed(0))


def test_tis_weights_by_hand() -> None:
    # pi_old / pi_sampler = 1, 4 (capped at 2), 0.25; the fourth position is masked out
    old = torch.log(torch.tensor([[0.5, 0.8], [0.1, 0.3]]))
    sampler = torch.log(torch.tensor([[0.5, 0.2], [0.4, 0.9]]))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    w, out = tis_weights(old, sampler, mask, cap=2.0)
    assert w is not None
    torch.testing.assert_close(w, torch.tensor([[1.0, 2.0], [0.25, 0.0]]))
    assert out["tis/capped_frac"] == pytest.approx(1 / 3, abs=1e-7)
    assert out["tis/weight_mean"] == pytest.approx(3.25 / 3, abs=1e-6)
    # k3 = exp(-d) - 1 + d at d = 0, log 4, -log 4: 0, 1/4 - 1 + log 4, 4 - 1 - log 4 -> 2.25 / 3
    assert out["mismatch/k3"] == pytest.approx(0.75, abs=1e-6)
    none, only_k3 = tis_weights(old, sampler, mask, cap=None)
    assert none is None and only_k3.keys() == {"mismatch/k3"}


@pytest.mark.parametrize(("mode", "cap"), [("full", 2.0), ("fused", 2.0), ("full", None)])
def test_the_update_forward_as_pi_old_takes_the_same_step(mode: str, cap: float | None) -> None:
    """Reference: pi_old from record_old_logprobs' no-grad forward, TIS weights over the whole
    batch (importance_weights), then the update. Ours: no pi_old, the update's own forward.
    Same weights after the step (SGD, so a gradient difference shows one-to-one), the same
    metrics, and pi_old_out equal to the no-grad forward's statistics at completion tokens."""
    base = build_tiny_model(19, layers=2, hidden=32, heads=2, kv_heads=1, mlp=64, seed=0)
    s = _settings(mode=mode)
    ref_model, ours_model = copy.deepcopy(base), copy.deepcopy(base)

    ref_batch = _batch(seed=3)
    old = record_old_logprobs(ref_model, None, ref_batch, s)
    ref_batch.old_logprobs = old["logprobs"]
    ref_tis = importance_weights(ref_batch, cap=cap)
    opt = torch.optim.SGD(ref_model.parameters(), lr=0.5)
    ref_metrics, bad = ppo_update(ref_model, opt, ref_batch, s, generator=torch.Generator())
    assert bad == 0

    ours_batch = _batch(seed=3)
    assert ours_batch.old_logprobs is None
    out: dict[str, torch.Tensor] = {}
    opt = torch.optim.SGD(ours_model.parameters(), lr=0.5)
    s_ours = replace(s, old_in_update=True, tis_cap=cap)
    metrics, bad = ppo_update(
        ours_model, opt, ours_batch, s_ours, generator=torch.Generator(), pi_old_out=out
    )
    assert bad == 0

    seen = ref_batch.targets != -1
    for k in ("logprobs", "entropy", "top1"):
        assert out[k].shape == ref_batch.targets.shape
        torch.testing.assert_close(out[k][seen], old[k][seen], rtol=0, atol=2e-6)
    moved = 0.0
    for p, q, b0 in zip(
        ours_model.parameters(), ref_model.parameters(), base.parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, rtol=0, atol=2e-6)
        moved = max(moved, float((q - b0).detach().abs().max()))
    assert moved > 1e-3  # the step did move the weights: the comparison is not vacuous
    want = ref_metrics | ref_tis
    assert ("tis/weight_mean" in metrics) == (cap is not None)
    assert "mismatch/k3" in metrics and metrics["mismatch/k3"] > 0.01
    for k, v in want.items():
        assert metrics[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


def test_a_non_finite_loss_still_records_every_rows_pi_old() -> None:
    """A NaN advantage makes one micro-batch's loss non-finite: the step is skipped, and the
    forwards of the later micro-batches still run, so that pi_old_out holds every row (the
    monitor would otherwise read zeros as entropies)."""
    model = build_tiny_model(19, layers=2, hidden=32, heads=2, kv_heads=1, mlp=64, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    s = _settings()
    b = _batch(seed=5)
    want = record_old_logprobs(model, None, b, s)
    b.advantages[0] = float("nan")
    out: dict[str, torch.Tensor] = {}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        metrics, bad = ppo_update(
            model, opt, b, replace(s, old_in_update=True), generator=torch.Generator(),
            pi_old_out=out,
        )  # fmt: skip
    assert bad == 1 and metrics["update/optimizer_steps"] == 0
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)  # no step taken
    seen = b.targets != -1
    for k in ("logprobs", "entropy", "top1"):
        torch.testing.assert_close(out[k][seen], want[k][seen], rtol=0, atol=2e-6)
