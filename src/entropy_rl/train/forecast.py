"""The entropy change of one update measured on its own batch, and its first-order account.

``entropy/actual_delta`` (control.monitor.EntropyDynamics) compares the entropy of one step's
prompts with the next step's: other prompts, so most of it is sampling noise. Here the same
positions are scored twice, before and after the update (every ``control.forecast_every`` RL
steps): ``capture_head_inputs`` before ``ppo_update``, ``same_batch_entropy_change`` after it.

Metrics, token means over the rollout's completion tokens (the tokens of ``entropy/mean``):

    entropy/after_update       (1/N) sum_t H'_t        the batch's entropy, updated policy
    entropy/delta_same_batch   (1/N) sum_t (H'_t - H_t)
    entropy/first_order_delta  (1/N) sum_t dH_1,t      dH_1 = -Cov_p(log p, d log p), exact over
                                                       the vocabulary (ops.entropy_change)

The predictors the report tests against ``entropy/delta_same_batch`` (report.forecast) are
``entropy/predicted_delta`` of the same row (-lr * optimizer steps * Cov(log pi, A), Cui et al.
2025) and ``entropy/first_order_delta``.

Cost: two no-grad forwards over the rollout, before and after the update (the update itself is
``ppo_epochs`` forward+backward passes). Memory between the two: the hidden states of the
completion positions (N x D) and a copy of the lm_head weight (and bias) with fused logits, or
the completion positions' logits (N x V, on the model's device) with ``model.logits=full``.
Not measured under FSDP sharding (the head's weight is sharded; the metrics are absent there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from entropy_rl.ops.entropy_change import EntropyChange, entropy_change, fused_entropy_change
from entropy_rl.train.batch import RolloutBatch, response_inputs
from entropy_rl.train.distributed import DistInfo, all_reduce
from entropy_rl.train.update import UpdateSettings

__all__ = ["HeadInputs", "capture_head_inputs", "forecast_due", "same_batch_entropy_change"]


@dataclass
class HeadInputs:
    """What the output head saw at the completion positions, before the update."""

    parts: list[Tensor]
    """Per micro-batch: (b, T_mb, D) hidden states (fused) or (b, T_mb, V) logits (full)."""
    weight: Tensor | None
    """(V, D) copy of the lm_head weight (fused only)."""
    bias: Tensor | None


def forecast_due(step: int, every: int, s: UpdateSettings) -> bool:
    """Measure at RL step ``step`` (1-based): every ``every`` steps, never for 0 or sharded."""
    return every > 0 and step % every == 0 and not s.sharded


def _chunks(batch: RolloutBatch, s: UpdateSettings) -> list[Tensor]:
    return list(torch.arange(len(batch)).split(s.micro_batch_size))


def _head_input(model: Any, mb: RolloutBatch, s: UpdateSettings) -> Tensor:
    """(b, T, D) last hidden states (``fused``) or (b, T, V) logits (``full``) at the positions
    that predict the completion tokens, computed as the update computes them
    (train.batch.response_inputs: no mask on right-padded rows, the shared-prompt layout where
    the update uses it), so the values are the update's."""
    return response_inputs(
        model, mb, logits=s.logits_mode != "fused", skip_pad_mask=True,
        shared_prompt=s.shared_prompt,
    )  # fmt: skip


@torch.no_grad()
def capture_head_inputs(model: Any, batch: RolloutBatch, s: UpdateSettings) -> HeadInputs:
    """One no-grad forward over ``batch`` with the current (pre-update) weights."""
    parts = [_head_input(model, batch.rows(idx), s) for idx in _chunks(batch, s)]
    if s.logits_mode != "fused":
        return HeadInputs(parts, None, None)
    head = model.get_output_embeddings()
    bias = getattr(head, "bias", None)
    return HeadInputs(
        parts, head.weight.detach().clone(), None if bias is None else bias.detach().clone()
    )


@torch.no_grad()
def same_batch_entropy_change(
    model: Any,
    batch: RolloutBatch,
    s: UpdateSettings,
    before: HeadInputs,
    *,
    info: DistInfo = DistInfo(),  # noqa: B008  (frozen dataclass: a safe default)
) -> dict[str, float]:
    """The three ``entropy/*`` metrics of the module docstring: one no-grad forward over
    ``batch`` with the updated weights, against ``before`` (``capture_head_inputs`` on the same
    batch). Token sums are reduced over ranks, so the means are global."""
    sums = torch.zeros(4, dtype=torch.float64)  # sum H, sum H', sum dH_1, N
    head = model.get_output_embeddings()
    for idx, x0 in zip(_chunks(batch, s), before.parts, strict=True):
        mb = batch.rows(idx)
        x1 = _head_input(model, mb, s)
        ch: EntropyChange
        if before.weight is not None:
            ch = fused_entropy_change(
                x0, before.weight, x1, head.weight, bias_before=before.bias,
                bias_after=getattr(head, "bias", None), temperature=s.temperature,
                chunk_size=s.chunk_size,
            )  # fmt: skip
        else:
            ch = entropy_change(x0, x1, temperature=s.temperature, chunk_size=s.chunk_size)
        m = (mb.targets != -1).to(ch.before.device, ch.before.dtype)  # (b, T) completion tokens
        terms = [(ch.before * m).sum(), (ch.after * m).sum(), (ch.first_order * m).sum(), m.sum()]
        sums += torch.stack(terms).double().cpu()
    all_reduce(sums, info)
    n = max(float(sums[3]), 1.0)
    return {
        "entropy/after_update": float(sums[1]) / n,
        "entropy/delta_same_batch": float(sums[1] - sums[0]) / n,
        "entropy/first_order_delta": float(sums[2]) / n,
    }
