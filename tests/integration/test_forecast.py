"""train.forecast in the trainer: the same-batch entropy change is the one a separate forward
after the update measures, it appears every control.forecast_every steps, and measuring it does
not change training."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from entropy_rl.train.batch import RolloutBatch, policy_token_stats
from entropy_rl.train.config import ConfigError, build_config
from entropy_rl.train.forecast import forecast_due
from entropy_rl.train.update import UpdateSettings

pytest.importorskip("transformers")

KEYS = ("entropy/after_update", "entropy/delta_same_batch", "entropy/first_order_delta")


def _trainer(model_dir: Path, out: Path, steps: int, **extra: object) -> Any:
    from entropy_rl.train.trainer import Trainer

    base: dict[str, object] = {
        "model.path": str(model_dir), "run.out_dir": str(out), "run.steps": steps,
        "run.progress": False, "run.save_every": 0, "rollout.prompts_per_step": 4,
        "rollout.group_size": 4, "algo.micro_batch_size": 8, "algo.warmup_steps": 1,
        "algo.lr": 1e-2, "eval.every": 0, "rollout.dynamic_sampling": False,
    }  # fmt: skip
    base.update(extra)
    overrides = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in base.items()]
    return Trainer(build_config(preset="dapo", overrides=overrides))


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _mean_entropy(model: Any, batch: RolloutBatch, s: UpdateSettings) -> float:
    """A separate forward: mean entropy over the batch's completion tokens."""
    with torch.no_grad():
        _, ent, _ = policy_token_stats(
            model, batch, temperature=s.temperature, mode=s.logits_mode, chunk_size=s.chunk_size
        )
    m = (batch.targets != -1).double()
    return float((ent.double() * m).sum() / m.sum())


@pytest.mark.parametrize("logits", ["full", "fused"])
def test_same_batch_delta_is_a_separate_forward_after_the_update(
    tiny_model_dir: Path, tmp_path: Path, logits: str
) -> None:
    tr = _trainer(tiny_model_dir, tmp_path / "run", 1, **{"control.forecast_every": 1,
                  "model.logits": logits})  # fmt: skip
    start = copy.deepcopy(tr.model)  # the weights before the one update
    seen: list[RolloutBatch] = []
    update = tr.update
    tr.update = lambda batch: (seen.append(batch), update(batch))[1]
    row = tr.fit()
    s = tr.settings()
    assert s.logits_mode == logits
    h_before = _mean_entropy(start, seen[0], s)
    h_after = _mean_entropy(tr.model, seen[0], s)
    assert abs(h_after - h_before) > 1e-4  # lr 1e-2 moved the entropy: the check has teeth
    assert row["entropy/after_update"] == pytest.approx(h_after, rel=1e-6, abs=1e-7)
    assert row["entropy/delta_same_batch"] == pytest.approx(h_after - h_before, rel=1e-4, abs=1e-7)
    # first order, written out on the two models' logits at the completion positions:
    # -sum_v p_v (log p_v + H)(log p'_v - log p_v), averaged over completion tokens
    lp0, lp1 = _completion_logp(start, seen[0], s), _completion_logp(tr.model, seen[0], s)
    p0 = lp0.exp()
    h0 = -(p0 * lp0).sum(-1, keepdim=True)
    fo = -(p0 * (lp0 + h0) * (lp1 - lp0)).sum(-1)  # (B, T)
    m = (seen[0].targets != -1).double()
    want = float((fo * m).sum() / m.sum())
    assert row["entropy/first_order_delta"] == pytest.approx(want, rel=1e-4, abs=1e-7)
    assert want != pytest.approx(h_after - h_before, rel=1e-2)  # a part of the change, not all


def _completion_logp(model: Any, batch: RolloutBatch, s: UpdateSettings) -> torch.Tensor:
    """(B, T, V) float64 log softmax(logits / T) at the positions predicting completion tokens."""
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    t = batch.targets.shape[1]
    pos = batch.prompt_lens[:, None] - 1 + torch.arange(t)[None, :]  # (B, T)
    pos = pos.clamp(max=batch.input_ids.shape[1] - 1)
    z = logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1])).double()
    return torch.log_softmax(z / s.temperature, -1)


def test_every_n_steps_and_training_unchanged(tiny_model_dir: Path, tmp_path: Path) -> None:
    _trainer(tiny_model_dir, tmp_path / "on", 4, **{"control.forecast_every": 2}).fit()
    _trainer(tiny_model_dir, tmp_path / "off", 4, **{"control.forecast_every": 0}).fit()
    on, off = _rows(tmp_path / "on"), _rows(tmp_path / "off")
    assert [all(k in r for k in KEYS) for r in on] == [False, True, False, True]  # steps 1..4
    assert not any(k in r for r in off for k in KEYS)
    for a, b in zip(on, off, strict=True):  # no RNG drawn, no weight touched by the measurement
        for k in ("entropy/mean", "reward/mean", "cov/logp_adv", "loss/total", "grad/norm"):
            assert a[k] == b[k], k


def test_forecast_due_and_config() -> None:
    s = UpdateSettings(
        loss="ppo", loss_kwargs={}, agg="token-mean", epochs=1, mini_batches=1,
        micro_batch_size=1, temperature=1.0, grad_clip=1.0, entropy_coef=0.0, kl_coef=0.0,
        kl_kind="k3", kl_in_loss=True, logits_mode="full", chunk_size=8, max_len=4,
    )  # fmt: skip
    assert [forecast_due(k, 3, s) for k in range(1, 7)] == [False, False, True] * 2
    assert not forecast_due(4, 0, s)
    s.sharded = True
    assert not forecast_due(3, 3, s)
    assert build_config(overrides=[]).control.forecast_every == 4
    with pytest.raises(ConfigError, match=r"control\.forecast_every must be >= 0"):
        build_config(overrides=["control.forecast_every=-1"])
